"""`list_tts_voices` and `get_telephony_urls` through the real server over stdio against the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, stdio_session, webhook_env
from test_tools import ToolCaller

pytestmark = pytest.mark.anyio


async def test_tts_voices_and_telephony_urls(sandbox: RunningSandbox, token_file: Path) -> None:
    async with stdio_session(app_env(sandbox, token_file), "--toolsets", "reference") as client:
        listed = (await client.list_tools()).tools
        assert [tool.name for tool in listed] == ["list_tts_voices", "get_telephony_urls", "run_batch"]
        tools = ToolCaller(client, {tool.name: tool.output_schema for tool in listed if tool.output_schema})
        voices = await tools.ok("list_tts_voices", {})
        assert voices["usenglishfemale"] == "American English (Female) (Default)"
        assert voices["eurgermanmale"] == "German (Male) (Default)"
        assert len(voices) >= 40 and all(isinstance(name, str) for name in voices.values())
        urls = await tools.ok("get_telephony_urls", {})
        assert urls == {
            "detail_statistics": f"{sandbox.base_url}/telephony/detail.php",
            "buy_connector": f"{sandbox.base_url}/settings/license_phone_sip.php",
            "edit_config": f"{sandbox.base_url}/telephony/edit.php?ID=#CONFIG_ID#",
            "lines": f"{sandbox.base_url}/telephony/lines.php",
        }
        refused = await tools.error("list_tts_voices", {"LANGUAGE": "en"})
        assert refused["code"] == "INVALID_ARGUMENTS" and "none" in refused["description"]
    assert sandbox.portal.stats.requests["voximplant.tts.voices.get"] == 1  # the refusal sent nothing


async def test_reference_works_with_a_webhook(sandbox: RunningSandbox) -> None:
    async with stdio_session(webhook_env(sandbox), "--toolsets", "reference") as client:
        result = await client.call_tool("get_telephony_urls", {})
    assert not result.is_error and result.structured_content is not None
    assert result.structured_content["result"]["lines"].endswith("/telephony/lines.php")
