"""telephony.externalCall.*, telephony.call.attachTranscription and the ``upload`` pseudo-method behind
attachRecord's uploadUrl: registering, finishing, showing calls, their records and transcripts.

A new call fires OnVoximplantCallInit and OnVoximplantCallStart, a finished one OnVoximplantCallEnd (helper
registerExternalCall / finishExternalCall)."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from ..calls import Caller, Params
from ..errors import ErrorSpec
from ..events import Trigger, fire
from ..php import isset, normalize_phone, php_bool, php_float, php_int, php_str, php_strtotime
from ..records import (
    ActiveCall,
    ExternalLine,
    SandboxFile,
    StatisticRecord,
    Transcript,
    UploadedFile,
)
from ..state import Method, PortalState, method_table
from .external_lines import Msg as LineMsg

DEDUPE_WINDOW = 30 * 60.0
CALL_TYPES = range(1, 6)
RECORD_EXTENSIONS = ("wav", "mp3")

CALL_ID_NOT_STRING = ErrorSpec("INVALID_ARGUMENT", "CALL_ID must be a string", 400)


class Msg:
    """Texts of this toolset's errors (sent with ``config.error_core_code``).

    Where the docs and the server source word a message differently, the source wording is used, because
    that is what a live portal sends (methods.json ``source_description``); the docs variant is noted.
    """

    PHONE_EMPTY = "PHONE_NUMBER is empty"
    USER_NOT_SET = "USER_ID or USER_PHONE_INNER should be set"  # docs add a trailing "."
    UNKNOWN_TYPE = "Unknown TYPE"  # docs: "Unknown TYPE."
    BAD_START_DATE = "CALL_START_DATE should be in the ISO-8601 format"  # docs add "."
    BAD_PHONE = "Unsupported phone number format"  # docs add "."
    USER_INACTIVE = "User is not found or is not active"  # docs (register) add "."
    # sic: no closing parenthesis in source; a live portal sends exactly this (b24-rest-docs issue #175).
    CALL_NOT_REGISTERED = "Call is not found (call should be registered prior to finishing"
    # docs: "...should contain either URL or FILENAME parameter"
    RECORD_PARAMS_MISSING = "Required parameters are not set. Request should contain or URL or FILENAME parameter"
    # docs: "...It looks like it is not finished yet."
    CALL_NOT_FINISHED = "Call is not found in the statistic table. Looks like it is not finished yet."
    FILE_NAME_EMPTY = "File name is empty"
    BAD_EXTENSION = "Wrong file extension. Only wav and mp3 are allowed"
    FILE_CONTENT_EMPTY = "File content is empty."
    FILE_NOT_BASE64 = "File content is not properly encoded. Base64 encoding is expected."
    UPLOAD_NO_FILE = "Error: required parameter file is not found"
    UPLOAD_BAD_TOKEN = "Upload token is not valid"
    CALL_ID_NOT_SET = "CALL_ID should be set"
    MESSAGES_NOT_ARRAY = "MESSAGES should be an array"
    BAD_SIDE = "MESSAGES[{k}][SIDE] should be either Client or User"
    BAD_START_TIME = "MESSAGES[{k}][START_TIME] should be greater or equal to zero"
    BAD_STOP_TIME = "MESSAGES[{k}][STOP_TIME] should be greater than zero"
    EMPTY_MESSAGE = "MESSAGES[{k}][MESSAGE] is empty"
    TRANSCRIPT_CALL_NOT_FOUND = "Call {call_id} is not found. Is it finished?"


@dataclass
class UploadTokens:
    """Upload tokens handed out in attachRecord's uploadUrl: token -> CALL_ID."""

    by_token: dict[str, str] = field(default_factory=dict)


def _require_active_user(portal: PortalState, user_id: int) -> None:
    user = portal.users.get(user_id)
    if user is None or not user.active:
        raise portal.core(Msg.USER_INACTIVE)


def search_crm_entities(portal: PortalState, params: Params, caller: Caller) -> list[dict[str, Any]]:
    phone = php_str(params.get("PHONE_NUMBER"))
    if phone == "":
        raise portal.core(Msg.PHONE_EMPTY)
    result = []
    for entity in portal.find_crm(phone):
        user = portal.users.get(entity.assigned_by_id)
        result.append(
            {
                "CRM_ENTITY_TYPE": entity.type,
                "CRM_ENTITY_ID": entity.id,
                "ASSIGNED_BY_ID": entity.assigned_by_id,
                "NAME": entity.name,
                "ASSIGNED_BY": {
                    "ID": str(entity.assigned_by_id),  # a DB string, unlike ASSIGNED_BY_ID (docs example)
                    "TIMEMAN_STATUS": user.timeman_status if user else None,
                    "USER_PHONE_INNER": user.phone_inner if user else None,
                    "WORK_PHONE": user.work_phone if user else None,
                    "PERSONAL_PHONE": user.personal_phone if user else None,
                    "PERSONAL_MOBILE": user.personal_mobile if user else None,
                },
            }
        )
    return result


def rest_trigger(params: Params, caller: Caller) -> Trigger:
    """What a REST call's events say caused them: the caller's user, app and ``auth_connector``."""
    return Trigger(caller.user_id, caller.client_id, php_str(params.get("auth_connector")))


def external_call_register(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    return register_call(portal, params, caller, rest_trigger(params, caller))


def register_call(portal: PortalState, params: Params, caller: Caller, trigger: Trigger) -> dict[str, Any]:
    """Helper::registerExternalCall, behind the REST method and the portal's own click-to-call."""
    # Validation order is the source's (methods.json source_notes).
    user_id = portal.resolve_user_id(params)
    if not user_id:
        raise portal.core(Msg.USER_NOT_SET)
    call_type = _call_type(params.get("TYPE"))
    if call_type is None:
        raise portal.core(Msg.UNKNOWN_TYPE)
    now = portal.clock()
    start_date = datetime.fromtimestamp(now, UTC)
    raw_date = params.get("CALL_START_DATE")
    if raw_date is not None and raw_date != "":
        parsed = php_strtotime(raw_date, now)  # the source checks strtotime() only, despite its message
        if parsed is None:
            raise portal.core(Msg.BAD_START_DATE)
        start_date = parsed
    phone = normalize_phone(params.get("PHONE_NUMBER"))
    if not phone:
        raise portal.core(Msg.BAD_PHONE)
    _require_active_user(portal, user_id)
    line = _line_for_call(portal, params, caller)
    external_call_id = php_str(params["EXTERNAL_CALL_ID"]) if isset(params, "EXTERNAL_CALL_ID") else None
    show = php_bool(params["SHOW"]) if isset(params, "SHOW") else True

    duplicate = _find_duplicate(portal, user_id, phone, call_type, caller.app_id, line, external_call_id, now)
    if duplicate is not None:
        if show:
            duplicate.shown_to.add(duplicate.user_id)
        return {
            "CALL_ID": duplicate.call_id,
            "CRM_CREATED_LEAD": duplicate.created_lead,
            "CRM_CREATED_ENTITIES": list(duplicate.created_entities),
            # On a hit source returns the raw primary type (null when none), not the (string) cast below.
            "CRM_ENTITY_TYPE": duplicate.crm_entity_type,
            "CRM_ENTITY_ID": duplicate.crm_entity_id or None,
        }

    inner_user = portal.user_by_inner_phone(phone)  # a call to a colleague: no CRM
    call = ActiveCall(
        call_id=f"externalCall.{secrets.token_hex(16)}.{int(now)}",
        user_id=user_id,
        caller_id=phone,
        incoming=call_type,
        date_create=start_date,  # so a back-dated call falls outside the dedupe window at once
        rest_app_id=caller.app_id,
        external_line_id=line.id if line else None,
        external_call_id=external_call_id,
        portal_number=line.number if line else f"REST_APP:{caller.app_id or ''}",
        portal_user_id=inner_user.id if inner_user else None,
        crm_enabled=inner_user is None,
    )
    _bind_crm(portal, call, params)
    if call.crm_entity_id is None and call.crm_enabled and _crm_create_requested(params):
        _create_lead(portal, call, params)
    if show:
        call.shown_to.add(user_id)
    portal.calls[call.call_id] = call
    init = {
        "CALL_ID": call.call_id,
        "CALL_TYPE": str(call_type),
        "CALLER_ID": phone,
        "REST_APP_ID": str(caller.app_id or ""),
    }
    fire(portal, "OnVoximplantCallInit", init, trigger)
    # The source sends the start at once for an external call, not when someone answers (disagreements.md #9).
    fire(portal, "OnVoximplantCallStart", {"CALL_ID": call.call_id, "USER_ID": str(user_id)}, trigger)
    return {
        "CALL_ID": call.call_id,
        "CRM_CREATED_LEAD": call.created_lead,
        "CRM_CREATED_ENTITIES": list(call.created_entities),
        "CRM_ENTITY_TYPE": call.crm_entity_type or "",
        "CRM_ENTITY_ID": call.crm_entity_id or None,
    }


def _call_type(value: Any) -> int | None:
    """in_array(TYPE, [1..5]) with PHP loose comparison: 2 and "2" match, "2x" does not."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return int(number) if number.is_integer() and int(number) in CALL_TYPES else None


def _line_for_call(portal: PortalState, params: Params, caller: Caller) -> ExternalLine | None:
    if not isset(params, "LINE_NUMBER"):
        return None
    number = php_str(params["LINE_NUMBER"]).strip()[:50]
    if not number:
        return None
    line = portal.find_line(number, caller.app_id)
    if line is None:
        if not portal.config.unknown_line_autocreate:
            raise portal.core(LineMsg.LINE_NOT_FOUND, number=number)
        line = ExternalLine(portal.next_id("line"), number, "", "Y", caller.app_id)
        portal.lines[line.id] = line
    return line


def _find_duplicate(
    portal: PortalState,
    user_id: int,
    phone: str,
    call_type: int,
    app_id: int | None,
    line: ExternalLine | None,
    external_call_id: str | None,
    now: float,
) -> ActiveCall | None:
    """The source's dedupe filter on the ACTIVE-call table (disagreements.md #6)."""
    for call in portal.calls.values():
        if (
            call.user_id == user_id
            and call.caller_id == phone
            and call.incoming == call_type
            and call.rest_app_id == app_id
            and call.date_create.timestamp() > now - DEDUPE_WINDOW
            and (line is None or call.external_line_id == line.id)
            and (external_call_id is None or call.external_call_id == external_call_id)
        ):
            return call
    return None


def _bind_crm(portal: PortalState, call: ActiveCall, params: Params) -> None:
    if isset(params, "CRM_ENTITY_TYPE") and isset(params, "CRM_ENTITY_ID"):
        call.crm_entity_type = php_str(params["CRM_ENTITY_TYPE"])
        call.crm_entity_id = php_int(params["CRM_ENTITY_ID"]) or None
    elif call.crm_enabled:
        found = portal.find_crm(call.caller_id)
        if found:
            call.crm_entity_type, call.crm_entity_id = found[0].type, found[0].id


def _create_lead(portal: PortalState, call: ActiveCall, params: Params) -> None:
    direction = "Outgoing" if call.incoming == 1 else "Incoming"
    lead = portal.add_lead(
        f"+{call.caller_id} - {direction} call",
        f"+{call.caller_id}",
        assigned_by_id=call.user_id,
        source_id=php_str(params.get("CRM_SOURCE")) or "CALL",
        call_id=call.call_id,
    )
    call.created_lead = lead.id
    call.created_entities.append({"ENTITY_TYPE": "LEAD", "ENTITY_ID": lead.id})
    call.crm_entity_type, call.crm_entity_id = "LEAD", lead.id


def external_call_finish(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    user_id = portal.resolve_user_id(params)
    if not user_id:  # checked before CALL_ID in source
        raise portal.core(Msg.USER_NOT_SET)
    call_id = params.get("CALL_ID")
    if not isinstance(call_id, str):
        raise CALL_ID_NOT_STRING.exc()
    call = portal.calls.get(call_id)
    if call is None:
        raise portal.core(Msg.CALL_NOT_REGISTERED)
    _require_active_user(portal, user_id)

    duration = php_int(params.get("DURATION"))
    activity_id = None
    if call.crm_entity_type and call.crm_entity_id:
        activity_id = portal.next_id("activity")
        portal.activities[activity_id] = {
            "CALL_ID": call_id,
            "OWNER_TYPE": call.crm_entity_type,
            "OWNER_ID": call.crm_entity_id,
        }
    for created in call.created_entities:  # auto-created entities go to the finishing user
        entity = portal.crm.get((created["ENTITY_TYPE"], created["ENTITY_ID"]))
        if entity:
            entity.assigned_by_id = user_id
    record = StatisticRecord(
        id=portal.next_id("stat"),
        call_id=call_id,
        external_call_id=call.external_call_id,
        portal_user_id=user_id,
        phone_number=call.caller_id,
        portal_number=call.portal_number,
        incoming=call.incoming,
        call_duration=duration,
        call_start_date=call.date_create,
        call_status=1 if duration > 0 else 0,
        call_vote=php_int(params["VOTE"]) if isset(params, "VOTE") else None,
        cost=php_float(params.get("COST")),
        cost_currency=php_str(params.get("COST_CURRENCY")),
        call_failed_code=_status_code(params.get("STATUS_CODE"), duration),
        call_failed_reason=php_str(params.get("FAILED_REASON")),
        rest_app_id=call.rest_app_id,
        crm_activity_id=activity_id,
        crm_entity_type=call.crm_entity_type,
        crm_entity_id=call.crm_entity_id,
        record_url=php_str(params.get("RECORD_URL")),
    )
    portal.statistics[call_id] = record
    del portal.calls[call_id]  # finished calls leave the active table, hence no dedupe after finish
    fire(portal, "OnVoximplantCallEnd", _call_end_data(record), rest_trigger(params, caller))
    return record.as_result()


def _call_end_data(record: StatisticRecord) -> dict[str, str]:
    """OnVoximplantCallEnd's data (CVoxImplantHistory::sendCallEndEvent), strings as the handler receives them."""
    return {
        "CALL_ID": record.call_id,
        "CALL_TYPE": str(record.incoming),
        "PHONE_NUMBER": record.phone_number,
        "PORTAL_NUMBER": record.portal_number,
        "PORTAL_USER_ID": str(record.portal_user_id),
        "CALL_DURATION": str(record.call_duration),
        "CALL_START_DATE": record.call_start_date.astimezone().isoformat(timespec="seconds"),
        "COST": f"{record.cost:.14g}",  # (string) of a PHP float: 0.0 -> "0", 1.5 -> "1.5"
        "COST_CURRENCY": record.cost_currency,
        "CALL_FAILED_CODE": record.call_failed_code,
        "CALL_FAILED_REASON": record.call_failed_reason,
        "CRM_ACTIVITY_ID": "" if record.crm_activity_id is None else str(record.crm_activity_id),
    }


def external_call_show(portal: PortalState, params: Params, caller: Caller) -> bool:
    call = portal.calls.get(php_str(params.get("CALL_ID")))
    if call is None:
        return False
    call.shown_to.update(_target_users(params, call))
    return True


def external_call_hide(portal: PortalState, params: Params, caller: Caller) -> bool:
    call = portal.calls.get(php_str(params.get("CALL_ID")))
    if call is None:
        return False
    call.shown_to.difference_update(_target_users(params, call))
    return True


def external_call_attach_record(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    call_id = php_str(params.get("CALL_ID"))
    if isset(params, "RECORD_URL"):
        record = _finished_call(portal, call_id)
        url = php_str(params["RECORD_URL"])
        # The sandbox never fetches the URL, so the "Server returns HTTP error code" branch cannot happen.
        name = php_str(params.get("FILENAME")) or urlsplit(url).path.rsplit("/", 1)[-1] or url
        return {"FILE_ID": _store_file(portal, record, name, None, source_url=url)}
    if not isset(params, "FILENAME"):
        raise portal.core(Msg.RECORD_PARAMS_MISSING)
    record = _finished_call(portal, call_id)
    if not isset(params, "FILE_CONTENT"):
        # Source returns the upload URL before looking at the file name (disagreements.md #16).
        return {"uploadUrl": _upload_url(portal, call_id, caller), "fieldName": "file"}
    name = php_str(params["FILENAME"])
    if name == "":
        raise portal.core(Msg.FILE_NAME_EMPTY)
    _check_extension(portal, name)
    return {"FILE_ID": _store_file(portal, record, name, _decode_content(portal, params["FILE_CONTENT"]))}


def upload(portal: PortalState, params: Params, caller: Caller) -> dict[str, int]:
    """The pseudo-method behind attachRecord's uploadUrl (multipart field "file")."""
    call_id = portal.state(UploadTokens).by_token.get(php_str(params.get("token")))
    if call_id is None:
        raise portal.core(Msg.UPLOAD_BAD_TOKEN)
    upload = params.get("file")
    if not isinstance(upload, UploadedFile):
        raise portal.core(Msg.UPLOAD_NO_FILE)
    _check_extension(portal, upload.filename)
    record = _finished_call(portal, call_id)
    return {"FILE_ID": _store_file(portal, record, upload.filename, upload.content)}


def _finished_call(portal: PortalState, call_id: str) -> StatisticRecord:
    record = portal.statistic(call_id)
    if record is None:
        raise portal.core(Msg.CALL_NOT_FINISHED)
    return record


def _check_extension(portal: PortalState, name: str) -> None:
    _, dot, extension = name.rpartition(".")
    if not dot or extension.lower() not in RECORD_EXTENSIONS:
        raise portal.core(Msg.BAD_EXTENSION)


def _decode_content(portal: PortalState, content: Any) -> bytes:
    """CRestUtil::saveFile: empty content and non-base64 content are different errors."""
    text = php_str(content)
    if text == "":
        raise portal.core(Msg.FILE_CONTENT_EMPTY)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise portal.core(Msg.FILE_NOT_BASE64) from None
    if not data:
        raise portal.core(Msg.FILE_CONTENT_EMPTY)
    return data


def _store_file(
    portal: PortalState, record: StatisticRecord, name: str, content: bytes | None, source_url: str | None = None
) -> int:
    # A repeated attach replaces the record; the old file stays (source deletes it in a background job).
    file = SandboxFile(portal.next_id("file"), record.call_id, name, content, source_url)
    portal.files[file.id] = file
    record.call_record_id = file.id
    return file.id


def _upload_url(portal: PortalState, call_id: str, caller: Caller) -> str:
    token = secrets.token_urlsafe(24)
    portal.state(UploadTokens).by_token[token] = call_id
    if caller.auth_type == "webhook":
        prefix = f"{portal.base_url}/rest/{portal.config.webhook_user_id}/{portal.config.webhook_code}/upload.json?"
    else:
        prefix = f"{portal.base_url}/rest/upload.json?auth={quote(caller.access_token or '')}&"
    return f"{prefix}token={quote(token)}"


def call_attach_transcription(portal: PortalState, params: Params, caller: Caller) -> dict[str, int]:
    if not isset(params, "CALL_ID"):
        raise portal.core(Msg.CALL_ID_NOT_SET)
    messages = params.get("MESSAGES")
    if not isinstance(messages, list | dict):
        raise portal.core(Msg.MESSAGES_NOT_ARRAY)
    items = messages.items() if isinstance(messages, dict) else enumerate(messages)
    parsed = [_transcript_message(portal, k, message) for k, message in items]
    call_id = php_str(params["CALL_ID"])
    record = portal.statistic(call_id)
    if record is None:
        raise portal.core(Msg.TRANSCRIPT_CALL_NOT_FOUND, call_id=call_id)
    cost = php_float(params.get("COST")) if php_bool(params.get("COST")) else None
    currency = php_str(params.get("COST_CURRENCY")) if cost is not None and isset(params, "COST_CURRENCY") else None
    transcript = Transcript(portal.next_id("transcript"), call_id, parsed, cost, currency)
    portal.transcripts[transcript.id] = transcript
    record.transcript_id, record.transcript_pending = transcript.id, "N"
    return {"TRANSCRIPT_ID": transcript.id}


def _transcript_message(portal: PortalState, k: Any, message: Any) -> dict[str, Any]:
    fields: Mapping[str, Any] = message if isinstance(message, dict) else {}
    side = fields.get("SIDE")
    if side not in ("Client", "User"):  # strict comparison in source
        raise portal.core(Msg.BAD_SIDE, k=k)
    start, stop = php_int(fields.get("START_TIME")), php_int(fields.get("STOP_TIME"))
    if start < 0:
        raise portal.core(Msg.BAD_START_TIME, k=k)
    if stop <= 0:
        raise portal.core(Msg.BAD_STOP_TIME, k=k)
    text = php_str(fields.get("MESSAGE"))
    if text == "":
        raise portal.core(Msg.EMPTY_MESSAGE, k=k)
    return {"SIDE": side, "START_TIME": start, "STOP_TIME": stop, "MESSAGE": text}


def _crm_create_requested(params: Params) -> bool:
    # CRM is an undocumented legacy alias of CRM_CREATE. The line's CRM_AUTO_CREATE is not consulted here:
    # in source it only feeds click-to-call (OnExternalCallStart), not REST register.
    return php_bool(params.get("CRM_CREATE")) or php_bool(params.get("CRM"))


def _status_code(value: Any, duration: int) -> str:
    # STATUS_CODE ?: default, so PHP-falsy values ("" and "0") fall back too.
    return php_str(value) if php_bool(value) else ("200" if duration > 0 else "304")


def _target_users(params: Params, call: ActiveCall) -> set[int]:
    value = params.get("USER_ID")
    if value is None:
        return {call.user_id}
    if isinstance(value, list | dict):
        return {php_int(v) for v in (value.values() if isinstance(value, dict) else value)}
    return {php_int(value)}


METHODS = method_table(
    {
        "telephony.externalCall.searchCrmEntities": Method(search_crm_entities),
        "telephony.externalCall.register": Method(external_call_register, app_only=True),
        "telephony.externalCall.finish": Method(external_call_finish, app_only=True),
        "telephony.externalCall.show": Method(external_call_show),
        "telephony.externalCall.hide": Method(external_call_hide),
        "telephony.externalCall.attachRecord": Method(external_call_attach_record),
        # Not a REST method of its own: the target of attachRecord's uploadUrl, under attachRecord's scope.
        "upload": Method(upload),
        "telephony.call.attachTranscription": Method(call_attach_transcription),
    }
)
