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

CALL_ID_DESC = "CALL_ID returned by register_external_call."
USER_ID_DESC = "Bitrix24 user ID. USER_ID or USER_PHONE_INNER is required."
USER_PHONE_INNER_DESC = "The user's internal extension. USER_ID or USER_PHONE_INNER is required."


class SearchCrmParams(RestParams):
    PHONE_NUMBER: str = Field(description="The client's phone number.")


class AssignedUser(RestResult):
    ID: int | str
    TIMEMAN_STATUS: str | None = None
    USER_PHONE_INNER: str | None = None
    WORK_PHONE: str | None = None
    PERSONAL_PHONE: str | None = None
    PERSONAL_MOBILE: str | None = None


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
    PHONE_NUMBER: str = Field(description="The client's phone number.")
    TYPE: int_choice(1, 2, 3, 4, 5) = Field(  # type: ignore[valid-type]
        description="1 outgoing, 2 incoming, 3 incoming with redirection, 4 callback, 5 informational."
    )
    CALL_START_DATE: str | None = Field(
        None, description="ISO-8601 start time with timezone, e.g. 2026-03-07T10:20:30+03:00. Default: now."
    )
    CRM_CREATE: int_choice(0, 1) | None = Field(  # type: ignore[valid-type]
        None, description="1: create a lead when no CRM record matches the number. Default 0."
    )
    CRM_SOURCE: str | None = Field(None, description="CRM source STATUS_ID for a created lead.")
    CRM_ENTITY_TYPE: CrmEntityType | None = Field(None, description="CRM record type to bind the call to.")
    CRM_ENTITY_ID: int | None = Field(None, description="ID of the CRM record of CRM_ENTITY_TYPE.")
    SHOW: int_choice(0, 1) | None = Field(  # type: ignore[valid-type]
        None, description="1 (default): show the call card to the user."
    )
    ADD_TO_CHAT: int_choice(0, 1) | None = Field(  # type: ignore[valid-type]
        None, description="1 (default): post a message about the call to the user's chat."
    )
    CALL_LIST_ID: int | None = Field(None, description="Call list ID (from the ONEXTERNALCALLSTART event).")
    LINE_NUMBER: str | None = Field(None, description="External line number; recommended, binds the call.")
    EXTERNAL_CALL_ID: str | None = Field(
        None,
        description="Your PBX's unique ID of this call. Without it, a repeat registration within "
        "30 minutes returns the existing CALL_ID.",
    )


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
    USER_ID: int | None = Field(None, description=USER_ID_DESC + " Made responsible for created CRM records.")
    USER_PHONE_INNER: str | None = Field(None, description=USER_PHONE_INNER_DESC)
    DURATION: int | None = Field(None, description="Call duration in seconds. Default 0.")
    COST: float | None = Field(None, description="Call cost. Default 0.")
    COST_CURRENCY: str | None = Field(None, description="Currency of COST, e.g. USD.")
    STATUS_CODE: StatusCode | None = Field(
        None,
        description="200 success, 304 missed, 603 declined, 603-S cancelled, 403 forbidden, 404 invalid "
        "number, 486 busy, 484/503 direction unavailable, 480 temporarily unavailable, 402 insufficient "
        "funds, 423 blocked, OTHER. Default 200 if DURATION > 0, else 304.",
    )
    FAILED_REASON: str | None = Field(None, description="Why the call failed, as text.")
    RECORD_URL: str | None = Field(None, description="Deprecated: use attach_external_call_record.")
    VOTE: int_choice(1, 2, 3, 4, 5) | None = Field(None, description="Call rating 1-5.")  # type: ignore[valid-type]
    ADD_TO_CHAT: int_choice(0, 1) | None = Field(  # type: ignore[valid-type]
        None, description="1 (default): post a message about the call to the user's chat."
    )


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
    USER_ID: int | list[int] | None = Field(None, description="User ID or IDs. Default: the call's user.")


class AttachRecordParams(RestParams):
    CALL_ID: str = Field(description=CALL_ID_DESC + " The call must be finished.")
    RECORD_URL: str | None = Field(None, description="URL Bitrix24 downloads the recording from.")
    FILENAME: str | None = Field(None, description="Recording file name, .wav or .mp3.")
    FILE_CONTENT: str | None = Field(None, description="Recording, base64. Prefer file_path.")
    file_path: str | None = Field(
        None,
        description="Path of a local .wav/.mp3 under B24_FILES_DIR; this server reads and encodes it. "
        "Give one of RECORD_URL, file_path, or FILENAME with FILE_CONTENT.",
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
    SIDE: Literal["User", "Client"] = Field(description="User (the employee) or Client.")
    START_TIME: int = Field(ge=0, description="Start, seconds from the call start.")
    STOP_TIME: int = Field(gt=0, description="End, seconds from the call start.")
    MESSAGE: str = Field(description="What was said.")


class AttachTranscriptionParams(RestParams):
    CALL_ID: str = Field(description=CALL_ID_DESC + " The call must be finished.")
    MESSAGES: list[TranscriptMessage] = Field(description="The utterances, in order.")
    COST: float | None = Field(None, description="Transcription cost.")
    COST_CURRENCY: str | None = Field(None, description="Currency of COST.")


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
FINISH_FIELDS = ("USER_ID", "USER_PHONE_INNER", "DURATION", "COST", "COST_CURRENCY", "STATUS_CODE", "FAILED_REASON")
FINISH_FIELDS += ("VOTE", "ADD_TO_CHAT")


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
        steps = [
            Step(
                "register",
                SPECS["register_external_call"],
                RegisterCallParams(**register).to_rest(),
                fingerprint(register),
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
        EXTERNAL_CALL_ID=(str, Field(description="Your PBX's unique ID of the call: a repeat never logs it twice.")),
        SHOW=(int_choice(0, 1), Field(0, description="1: show the call card (default 0: the call is over).")),
    ),
    **_reused(FinishCallParams, *FINISH_FIELDS[2:-1]),
    **_reused(
        AttachRecordParams,
        *RECORD_FIELDS,
        RECORD_URL=(str | None, Field(None, description="Recording: RECORD_URL, file_path, or FILENAME+FILE_CONTENT.")),
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
    default=True,
    instructions="A finished call: log_external_call, once (a repeat with its EXTERNAL_CALL_ID is safe). A call in "
    "progress: register_external_call (keep CALL_ID), search_crm_entities_by_phone to identify the client, "
    "finish_external_call, then attach_external_call_record and attach_call_transcription.",
    tools=(
        ToolSpec(
            name="register_external_call",
            method="telephony.externalCall.register",
            title="Register external call",
            description="Register the start of a call made through an external PBX; returns CALL_ID and the "
            "CRM record the number matched. Then finish_external_call.",
            params=RegisterCallParams,
            result=RegisteredCall,
            effect=CREATES,
            app_only=True,
        ),
        ToolSpec(
            name="finish_external_call",
            method="telephony.externalCall.finish",
            title="Finish external call",
            description="End a registered call: writes call statistics and the CRM call activity. Once per CALL_ID.",
            params=FinishCallParams,
            result=FinishedCall,
            effect=CONSUMES,
            app_only=True,
        ),
        ToolSpec(
            name="show_external_call",
            method="telephony.externalCall.show",
            title="Show call card",
            description="Open the call card of an active call for users. False if the call is not active.",
            params=CallCardParams,
            result=bool,
            effect=SIGNALS,
        ),
        ToolSpec(
            name="hide_external_call",
            method="telephony.externalCall.hide",
            title="Hide call card",
            description="Hide the call card of an active call for users. False if the call is not active.",
            params=CallCardParams,
            result=bool,
            effect=SIGNALS,
        ),
        ToolSpec(
            name="attach_external_call_record",
            method="telephony.externalCall.attachRecord",
            title="Attach call recording",
            description="Attach a recording (.wav/.mp3) to a finished call; replaces an earlier one.",
            params=AttachRecordParams,
            result=AttachedFile,
            effect=CONSUMES,
            prepare=record_params,
        ),
        ToolSpec(
            name="search_crm_entities_by_phone",
            method="telephony.externalCall.searchCrmEntities",
            title="Find CRM client by phone",
            description="Find CRM contacts, leads and companies with this phone number, with their responsible users.",
            params=SearchCrmParams,
            result=list[CrmMatch],
            effect=READS,
        ),
        ToolSpec(
            name="attach_call_transcription",
            method="telephony.call.attachTranscription",
            title="Attach call transcript",
            description="Attach a transcript (who said what, when) to a finished call.",
            params=AttachTranscriptionParams,
            result=Transcript,
            effect=CREATES,
        ),
        ToolSpec(
            name="log_external_call",
            method="telephony.externalCall.register",
            title="Log finished call",
            description="Log a finished call in one step: register, finish, recording, transcript (fields as in "
            "those tools). Idempotent per EXTERNAL_CALL_ID: a repeat never logs twice, and resumes a partial failure.",
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
