"""Toolset `reference`: text-to-speech voices and the portal's telephony page URLs."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import READS, NoParams, RestResult, Toolset, ToolSpec


class TelephonyUrls(RestResult):
    detail_statistics: str
    buy_connector: str
    edit_config: str
    lines: str


TOOLSET = Toolset(
    name="reference",
    description="Reference data: text-to-speech voices, telephony settings page URLs.",
    tools=(
        ToolSpec(
            name="list_tts_voices",
            method="voximplant.tts.voices.get",
            title="List TTS voices",
            description="Text-to-speech voices (voice id: name), e.g. for an info call's VOICE.",
            params=NoParams,
            result=dict[str, str],
            effect=READS,
        ),
        ToolSpec(
            name="get_telephony_urls",
            method="voximplant.url.get",
            title="Get telephony page URLs",
            description="Links to the portal's telephony pages: call statistics, lines, a line's settings "
            "(replace #CONFIG_ID#), SIP connector purchase.",
            params=NoParams,
            result=TelephonyUrls,
            effect=READS,
        ),
    ),
)
