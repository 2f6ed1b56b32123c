"""Toolset `call_placement`: `voximplant.callback.start` and `voximplant.infocall.*`, which ring real phones.

Every call is billed, so the toolset is off by default, and each tool declares `confirm`: the server asks the
user to approve the line, the number and what will be said (or played) before anything is sent to the portal
(see `b24_telephony_mcp.serving.confirmation`). The server source registers all three methods under the `call` scope
only; the docs say `telephony` (disagreements.md #4), so a token without `call` gets insufficient_scope.
"""

from __future__ import annotations

from pydantic import Field

from b24_telephony_mcp.tools.base import Effect, RestParams, RestResult, Toolset, ToolSpec

PLACES_BILLED_CALL = Effect(read_only=False, destructive=True, idempotent=False)
"""Rings a real phone and costs money: it cannot be undone, and a repeat places a second call. methods.json says
destructive=false for these methods; issue 5 overrides it, since a placed call is irreversible."""

FROM_LINE_DESC = "Outgoing line ID to call from, e.g. reg151083 (voximplant.line.get lists them)."
TO_NUMBER_DESC = "Number to call."
VOICE_DESC = "TTS voice ID (voximplant.tts.voices.get). Default: the portal language's voice."


class CallbackParams(RestParams):
    FROM_LINE: str = Field(description=FROM_LINE_DESC)
    TO_NUMBER: str = Field(description="The client's number, called once the employee answers.")
    TEXT_TO_PRONOUNCE: str = Field(description="Said to the employee before the client is connected.")
    VOICE: str | None = Field(None, description=VOICE_DESC)


class InfocallTextParams(RestParams):
    FROM_LINE: str = Field(description=FROM_LINE_DESC)
    TO_NUMBER: str = Field(description=TO_NUMBER_DESC)
    TEXT_TO_PRONOUNCE: str = Field(description="Text spoken to whoever answers.")
    VOICE: str | None = Field(None, description=VOICE_DESC)


class InfocallSoundParams(RestParams):
    FROM_LINE: str = Field(description=FROM_LINE_DESC)
    TO_NUMBER: str = Field(description=TO_NUMBER_DESC)
    URL: str = Field(description="Public URL of the MP3 file played to whoever answers.")


class CallbackStarted(RestResult):
    RESULT: bool
    CALL_ID: str | None = None  # None when FROM_LINE is an application's line: the application places the call


class InfocallStarted(RestResult):
    RESULT: bool
    CALL_ID: str


def _voice(params: CallbackParams | InfocallTextParams) -> str:
    return f" (voice {params.VOICE})" if params.VOICE else ""


def confirm_callback(params: CallbackParams) -> str:
    return (
        f"Place a billed callback from line {params.FROM_LINE} to {params.TO_NUMBER}? The employee on the line "
        f'first hears{_voice(params)}: "{params.TEXT_TO_PRONOUNCE}"'
    )


def confirm_infocall_text(params: InfocallTextParams) -> str:
    return (
        f"Place a billed automated call from line {params.FROM_LINE} to {params.TO_NUMBER}? Whoever answers "
        f'hears{_voice(params)}: "{params.TEXT_TO_PRONOUNCE}"'
    )


def confirm_infocall_sound(params: InfocallSoundParams) -> str:
    return (
        f"Place a billed automated call from line {params.FROM_LINE} to {params.TO_NUMBER}? Whoever answers "
        f"hears the recording {params.URL}"
    )


LINE_HINT = (
    "FROM_LINE must be the ID of one of the portal's outgoing lines (rented number, regNNN or sipNNN), as "
    "listed by voximplant.line.get (toolset outgoing_lines)."
)
COMMON_HINTS: tuple[tuple[str, str], ...] = (
    ("Could not find line", LINE_HINT),
    ("Could not find config for number", LINE_HINT),
    ("Phone number is not correct", "TO_NUMBER must contain digits (a leading + is fine)."),
    (
        "ACCESS_DENIED",
        "The Bitrix24 user behind these credentials lacks the telephony permission 'Outgoing call - Execute'; "
        "a portal administrator grants it under Telephony > Access permissions.",
    ),
)
INFOCALL_HINTS: tuple[tuple[str, str], ...] = (
    *COMMON_HINTS,
    (
        "LINK_BASE_NUMBER",
        "Info-calls cannot use the portal's linked base number; choose a rented number or a SIP line.",
    ),
    (
        "Infocall limit for this month is exceeded",
        "The portal's monthly info-call allowance is used up; it renews next month or with a higher plan. "
        "Do not retry now.",
    ),
    (
        "Infocall failure",
        "The telephony provider refused the call: most often the Bitrix24 telephony balance is too low "
        "(Telephony > Balance) or the line cannot call out. Do not retry before that is fixed.",
    ),
)


TOOLSET = Toolset(
    name="call_placement",
    description="Place real, billed calls: callback and info-calls (text-to-speech or a sound file). Off by default.",
    instructions=(
        "start_callback, start_infocall_with_text and start_infocall_with_sound ring real phones and are billed: "
        "use them only for a call the user asked for."
    ),
    tools=(
        ToolSpec(
            name="start_callback",
            method="voximplant.callback.start",
            title="Start callback (billed)",
            description="Billed: ring an employee on FROM_LINE, say TEXT_TO_PRONOUNCE, then call the client and "
            "connect them.",
            params=CallbackParams,
            result=CallbackStarted,
            effect=PLACES_BILLED_CALL,
            scopes=("call",),
            hints=COMMON_HINTS,
            confirm=confirm_callback,
        ),
        ToolSpec(
            name="start_infocall_with_sound",
            method="voximplant.infocall.startwithsound",
            title="Start info-call with a recording (billed)",
            description="Billed: call TO_NUMBER from FROM_LINE and play the MP3 at URL.",
            params=InfocallSoundParams,
            result=InfocallStarted,
            effect=PLACES_BILLED_CALL,
            scopes=("call",),
            hints=INFOCALL_HINTS,
            confirm=confirm_infocall_sound,
        ),
        ToolSpec(
            name="start_infocall_with_text",
            method="voximplant.infocall.startwithtext",
            title="Start info-call with speech (billed)",
            description="Billed: call TO_NUMBER from FROM_LINE and speak TEXT_TO_PRONOUNCE.",
            params=InfocallTextParams,
            result=InfocallStarted,
            effect=PLACES_BILLED_CALL,
            scopes=("call",),
            hints=INFOCALL_HINTS,
            confirm=confirm_infocall_text,
        ),
    ),
)
