"""External calls: `telephony.externalCall.*` and `telephony.call.attachTranscription`.

A PBX or voice agent registers a call, finishes it, then attaches the recording and the transcript.
Field names are the REST parameter names verbatim; descriptions are condensed from the Bitrix24 docs tables.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from b24_telephony_mcp.tools import call_log
from b24_telephony_mcp.tools.base import (
    CONSUMES,
    CREATES,
    READS,
    SIGNALS,
    Effect,
    RestParams,
    RestResult,
    ToolContext,
    ToolRun,
    Toolset,
    ToolSpec,
    int_choice,
)
from b24_telephony_mcp.tools.call_log import Step, fingerprint
from b24_telephony_mcp.tools.files import RECORDING_EXTENSIONS

CrmEntityType = Literal["CONTACT", "COMPANY", "LEAD"]

CALL_ID_DESC = "From register_external_call."
USER_ID_DESC = "Or USER_PHONE_INNER."
USER_PHONE_INNER_DESC = "Extension; or USER_ID."
FINISHED_CALL_ID_DESC = "Of a finished call."
ADD_TO_CHAT_DESC = "1 (default): chat notice."

# Method-specific hints, one tool per sentence: a sentence naming a tool the server does not offer is left out.
USER_NOT_FOUND = ("User is not found", "Pass the USER_ID or USER_PHONE_INNER of an active Bitrix24 user.")
CRM_MISSING = ("CRM is not installed", "The portal has no CRM module, so calls cannot be matched to clients.")
REGISTER_HINTS = (
    USER_NOT_FOUND,
    ("Unsupported phone number format", "The number has no digits: pass its digits, e.g. +7 495 123-45-67."),
    ("ISO-8601", "Use a timestamp such as 2026-03-07T10:20:30+03:00."),
    CRM_MISSING,
)
FINISH_HINTS = (
    (
        "should be registered prior to finishing",
        "The CALL_ID is unknown or that call was already finished. A repeat registration within 30 minutes "
        "returns the same CALL_ID, so pass a unique EXTERNAL_CALL_ID per physical call.",
    ),
    USER_NOT_FOUND,
)
RECORD_HINTS = (
    ("not finished yet", "Finish the call with finish_external_call before attaching a recording."),
    ("Wrong file extension", "Only .wav and .mp3 recordings are accepted."),
)
TRANSCRIPT_HINTS = (("Is it finished?", "Finish the call with finish_external_call before attaching a transcript."),)


class SearchCrmParams(RestParams):
    PHONE_NUMBER: str = Field(description="Client's number.")


class AssignedUser(RestResult):
    # Also TIMEMAN_STATUS and the user's phones; named here: what routing a call needs.
    ID: int | str
    USER_PHONE_INNER: str | None = None


class CrmMatch(RestResult):
    CRM_ENTITY_TYPE: str
    CRM_ENTITY_ID: int
    ASSIGNED_BY_ID: int | None = None
    NAME: str | None = None
    ASSIGNED_BY: AssignedUser | None = None


class RegisterCallParams(RestParams):
    at_least_one_of = (("USER_ID", "USER_PHONE_INNER"),)

    USER_ID: int | None = Field(None, description=USER_ID_DESC)
    USER_PHONE_INNER: str | None = Field(None, description=USER_PHONE_INNER_DESC)
    PHONE_NUMBER: str = Field(description="Client's number.")
    TYPE: int_choice(1, 2, 3, 4, 5) = Field(  # type: ignore[valid-type]
        description="1 out, 2 in, 3 in redirected, 4 callback, 5 info."
    )
    CALL_START_DATE: str | None = Field(None, description="ISO 8601; default now.")
    CRM_CREATE: int_choice(0, 1) | None = Field(  # type: ignore[valid-type]
        None, description="1: create a lead for an unknown number."
    )
    CRM_SOURCE: str | None = Field(None, description="Lead source STATUS_ID.")
    CRM_ENTITY_TYPE: CrmEntityType | None = Field(None, description="Bind to this CRM record.")
    CRM_ENTITY_ID: int | None = Field(None)
    SHOW: int_choice(0, 1) | None = Field(None, description="1 (default): show the card.")  # type: ignore[valid-type]
    ADD_TO_CHAT: int_choice(0, 1) | None = Field(  # type: ignore[valid-type]
        None, description=ADD_TO_CHAT_DESC
    )
    CALL_LIST_ID: int | None = Field(None)
    LINE_NUMBER: str | None = Field(None, description="External line number (recommended).")
    EXTERNAL_CALL_ID: str | None = Field(None, description="Your PBX's call ID (dedupe key).")


class RegisteredCall(RestResult):
    CALL_ID: str
    CRM_CREATED_LEAD: int | None = None
    CRM_CREATED_ENTITIES: list[Any] | None = None
    CRM_ENTITY_TYPE: str | None = None
    CRM_ENTITY_ID: int | None = None
    LEAD_CREATION_ERROR: str | None = None


StatusCode = Literal["200", "304", "603", "603-S", "403", "404", "486", "484", "503", "480", "402", "423", "OTHER"]


class FinishCallParams(RestParams):
    at_least_one_of = (("USER_ID", "USER_PHONE_INNER"),)

    CALL_ID: str = Field(description=CALL_ID_DESC)
    USER_ID: int | None = Field(None, description=USER_ID_DESC)
    USER_PHONE_INNER: str | None = Field(None, description=USER_PHONE_INNER_DESC)
    DURATION: int | None = Field(None, description="Seconds.")
    COST: float | None = Field(None)
    COST_CURRENCY: str | None = Field(None)
    STATUS_CODE: StatusCode | None = Field(
        None,
        description="200 ok, 304 missed, 486 busy, 603 declined...; default by DURATION.",
    )
    FAILED_REASON: str | None = Field(None)
    RECORD_URL: str | None = Field(None, description="Deprecated. Use attach_external_call_record.")
    VOTE: int_choice(1, 2, 3, 4, 5) | None = Field(None)  # type: ignore[valid-type]
    ADD_TO_CHAT: int_choice(0, 1) | None = Field(None, description=ADD_TO_CHAT_DESC)  # type: ignore[valid-type]


class FinishedCall(RestResult):
    CALL_ID: str
    ID: int | None = None
    CALL_DURATION: int | None = None
    CALL_STATUS: int | None = None
    CALL_FAILED_CODE: str | None = None
    CRM_ACTIVITY_ID: int | None = None
    CRM_ENTITY_TYPE: str | None = None
    CRM_ENTITY_ID: int | None = None


class CallCardParams(RestParams):
    CALL_ID: str = Field(description=CALL_ID_DESC)
    USER_ID: int | list[int] | None = Field(None, description="Default: the call's user.")


class AttachRecordParams(RestParams):
    CALL_ID: str = Field(description=FINISHED_CALL_ID_DESC)
    RECORD_URL: str | None = Field(None, description="URL to download it from.")
    FILENAME: str | None = Field(None, description=".wav or .mp3 name.")
    FILE_CONTENT: str | None = Field(None, description="Base64; prefer file_path.")
    file_path: str | None = Field(
        None, description="Local file under B24_FILES_DIR; or RECORD_URL, or FILENAME+FILE_CONTENT."
    )

    @model_validator(mode="after")
    def _one_recording_source(self) -> AttachRecordParams:
        check_recording(self)
        return self


def check_recording(params: Any) -> None:
    """Exactly one recording source: RECORD_URL, FILENAME with FILE_CONTENT, or file_path."""
    given = [name for name in ("RECORD_URL", "FILE_CONTENT", "file_path") if getattr(params, name)]
    if len(given) != 1:
        problem = "no recording given" if not given else f"{' and '.join(given)} exclude each other"
        raise ValueError(f"{problem}: pass one of RECORD_URL, FILENAME with FILE_CONTENT, or file_path")
    if params.FILE_CONTENT and not params.FILENAME:
        raise ValueError("FILE_CONTENT needs FILENAME (.wav or .mp3)")


class AttachedFile(RestResult):
    # FILENAME without FILE_CONTENT would return {uploadUrl, fieldName} for a multipart upload, a step a
    # model cannot take; the input rules exclude that mode, so FILE_ID is what comes back.
    FILE_ID: int


class TranscriptMessage(RestParams):
    # START_TIME/STOP_TIME: seconds into the call (the item description says so once).
    SIDE: Literal["User", "Client"] = Field(description="User: the employee.")
    START_TIME: int = Field(ge=0)
    STOP_TIME: int = Field(gt=0)
    MESSAGE: str


class AttachTranscriptionParams(RestParams):
    CALL_ID: str = Field(description=FINISHED_CALL_ID_DESC)
    MESSAGES: list[TranscriptMessage] = Field(description="In order; times: seconds into the call.")
    COST: float | None = Field(None)
    COST_CURRENCY: str | None = Field(None)


class Transcript(RestResult):
    TRANSCRIPT_ID: int


async def record_params(params: AttachRecordParams, context: ToolContext) -> dict[str, Any]:
    """Read a local file into FILENAME + FILE_CONTENT; other sources pass through."""
    rest = params.to_rest()
    if params.file_path:
        name, content = await context.files.read_base64(rest.pop("file_path"), RECORDING_EXTENSIONS)
        rest.setdefault("FILENAME", name)
        rest["FILE_CONTENT"] = content
    return rest


# --- log_external_call: the four steps in one tool call (the machinery is in call_log.py) ---

RECORD_FIELDS = ("RECORD_URL", "FILENAME", "FILE_CONTENT", "file_path")
REGISTER_FIELDS = tuple(RegisterCallParams.model_fields)
# USER_ID, USER_PHONE_INNER and ADD_TO_CHAT are the register fields of the same name; finish's deprecated
# RECORD_URL is the recording here (attachRecord).
FINISH_ONLY_FIELDS = ("DURATION", "COST", "COST_CURRENCY", "STATUS_CODE", "FAILED_REASON", "VOTE")
FINISH_FIELDS = ("USER_ID", "USER_PHONE_INNER", *FINISH_ONLY_FIELDS, "ADD_TO_CHAT")


def _reused(model: type[BaseModel], *names: str, **overrides: Any) -> dict[str, Any]:
    """Fields of another input model with their types, enums and defaults but without their descriptions (the
    model reads those on the tool itself), unless overridden by a `(type, Field(...))`."""
    fields: dict[str, Any] = {}
    for name in names:
        info = model.model_fields[name]
        fields[name] = overrides.get(name) or (
            Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation,
            FieldInfo(default=info.default) if not info.is_required() else FieldInfo(),
        )
    return fields


class _LogCallBase(RestParams):
    at_least_one_of = (("USER_ID", "USER_PHONE_INNER"),)
    local_fields = frozenset({"file_path"})

    @model_validator(mode="after")
    def _recording(self) -> _LogCallBase:
        if any(getattr(self, name) for name in RECORD_FIELDS):
            check_recording(self)
        return self

    async def steps(self, run: ToolRun) -> list[Step]:
        """register, finish, then the recording and the transcript when given: each through its own tool's
        input model, so it is sent exactly as that tool would send it."""
        given: dict[str, Any] = self.model_dump(mode="json", exclude_none=True)

        def part(names: tuple[str, ...]) -> dict[str, Any]:
            return {name: given[name] for name in names if name in given}

        register, finish = part(REGISTER_FIELDS), part(FINISH_FIELDS)
        clicked = part(("CALL_ID",))  # the portal registered the call (click-to-call): its result is given
        steps = [
            Step(
                "register",
                SPECS["register_external_call"],
                RegisterCallParams(**register).to_rest(),
                fingerprint({**register, **clicked}),
                given=clicked or None,
            ),
            Step(
                "finish", SPECS["finish_external_call"], _without_call_id(FinishCallParams, finish), fingerprint(finish)
            ),
        ]
        if recording := part(RECORD_FIELDS):
            rest = await record_params(AttachRecordParams(CALL_ID="", **recording), run.context)
            rest.pop("CALL_ID")
            spec = SPECS["attach_external_call_record"]
            steps.append(Step("record", spec, rest, fingerprint(recording), uploads="FILE_CONTENT" in rest))
        if transcript := part(("MESSAGES",)):
            rest = _without_call_id(AttachTranscriptionParams, transcript)
            steps.append(Step("transcript", SPECS["attach_call_transcription"], rest, fingerprint(transcript)))
        return steps


def _without_call_id(model: type[RestParams], arguments: dict[str, Any]) -> dict[str, Any]:
    rest = model.model_validate({**arguments, "CALL_ID": ""}).to_rest()
    rest.pop("CALL_ID")
    return rest


# The transcript's items without their descriptions (attach_call_transcription carries them).
_LoggedMessage = create_model(
    "LoggedMessage", __base__=RestParams, **_reused(TranscriptMessage, *TranscriptMessage.model_fields)
)

LogCallParams = create_model(
    "LogCallParams",
    __base__=_LogCallBase,
    **_reused(
        RegisterCallParams,
        *REGISTER_FIELDS,
        EXTERNAL_CALL_ID=(str, Field(description="Your PBX's call ID: a repeat never logs twice.")),
        SHOW=(int_choice(0, 1), Field(0, description="Default 0: the call is over.")),
    ),
    CALL_ID=(str | None, Field(None, description="OnExternalCallStart's: not registered again.")),
    **_reused(FinishCallParams, *FINISH_ONLY_FIELDS),
    **_reused(
        AttachRecordParams,
        *RECORD_FIELDS,
        RECORD_URL=(str | None, Field(None, description="Or file_path, or FILENAME+FILE_CONTENT.")),
    ),
    **_reused(
        AttachTranscriptionParams,
        "MESSAGES",
        MESSAGES=(list[_LoggedMessage] | None, Field(None, description="Transcript.")),
    ),
)


class LoggedCall(RestResult):
    CALL_ID: str
    steps: dict[str, dict[str, Any]] = Field(
        description="register, finish, record, transcript: each step's result, as its own tool returns it."
    )


TOOLSET = Toolset(
    name="external_calls",
    description="Calls through an external PBX or voice agent: register, finish, call card, recording, transcript, "
    "CRM lookup by phone.",
    instructions="A finished call: log_external_call, once (a repeat with its EXTERNAL_CALL_ID is safe). A call in "
    "progress: register_external_call (keep CALL_ID), search_crm_entities_by_phone to identify the client, "
    "finish_external_call, then attach_external_call_record and attach_call_transcription.",
    tools=(
        ToolSpec(
            name="register_external_call",
            method="telephony.externalCall.register",
            title="Register external call",
            description="Call start from your PBX; returns CALL_ID and the CRM match.",
            params=RegisterCallParams,
            result=RegisteredCall,
            effect=CREATES,
            app_only=True,
            hints=REGISTER_HINTS,
        ),
        ToolSpec(
            name="finish_external_call",
            method="telephony.externalCall.finish",
            title="Finish external call",
            description="End a registered call, once: writes statistics and the CRM activity.",
            params=FinishCallParams,
            result=FinishedCall,
            effect=CONSUMES,
            app_only=True,
            hints=FINISH_HINTS,
        ),
        ToolSpec(
            name="show_external_call",
            method="telephony.externalCall.show",
            title="Show call card",
            description="Show an active call's card; false if not active.",
            params=CallCardParams,
            result=bool,
            effect=SIGNALS,
        ),
        ToolSpec(
            name="hide_external_call",
            method="telephony.externalCall.hide",
            title="Hide call card",
            description="Hide an active call's card; false if not active.",
            params=CallCardParams,
            result=bool,
            effect=SIGNALS,
        ),
        ToolSpec(
            name="attach_external_call_record",
            method="telephony.externalCall.attachRecord",
            title="Attach call recording",
            description="Attach a .wav/.mp3 to a finished call (replaces one).",
            params=AttachRecordParams,
            result=AttachedFile,
            effect=CONSUMES,
            prepare=record_params,
            hints=RECORD_HINTS,
        ),
        ToolSpec(
            name="search_crm_entities_by_phone",
            method="telephony.externalCall.searchCrmEntities",
            title="Find CRM client by phone",
            description="CRM contacts, leads, companies with this number, and their owners.",
            params=SearchCrmParams,
            result=list[CrmMatch],
            effect=READS,
            hints=(CRM_MISSING,),
        ),
        ToolSpec(
            name="attach_call_transcription",
            method="telephony.call.attachTranscription",
            title="Attach call transcript",
            description="Attach a transcript to a finished call.",
            params=AttachTranscriptionParams,
            result=Transcript,
            effect=CREATES,
            hints=TRANSCRIPT_HINTS,
        ),
        ToolSpec(
            name="log_external_call",
            method="telephony.externalCall.register",
            title="Log finished call",
            description="Register, finish, recording, transcript in one step (fields as in those tools); a repeat "
            "never logs twice, and resumes a failure.",
            params=LogCallParams,
            result=LoggedCall,
            # Repeating it changes nothing more (the journal answers), and it removes nothing.
            effect=Effect(read_only=False, destructive=False, idempotent=True),
            app_only=True,
            run=call_log.run_alone,
            plan=call_log.plan,
            other_methods=(
                "telephony.externalCall.finish",
                "telephony.externalCall.attachRecord",
                "telephony.call.attachTranscription",
                "batch",
                call_log.STATISTICS_METHOD,
            ),
        ),
    ),
)
SPECS = {spec.name: spec for spec in TOOLSET.tools}
