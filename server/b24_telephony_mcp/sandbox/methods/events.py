"""event.bind / unbind / get, events, and the offline queue (event.offline.get / clear / error / list).

Application context only (AuthTypeException otherwise, whatever ``webhook_app_only`` says: the rest module checks
it itself); the offline queue is for administrators. Order of checks, messages and casts follow the rest module's
``Bitrix\\Rest\\Api\\Event`` and ``EventOfflineTable``; the messages are also in the docs' error tables.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ..calls import BASIC_SCOPE, LIST_LIMIT, Caller, Page, Params
from ..errors import ACCESS_DENIED, WRONG_AUTH_TYPE, ErrorSpec, SandboxRestError
from ..events import CATALOGUE
from ..php import isset, php_int, php_str, php_strtotime, upper_keys
from ..records import EventHandler, OfflineEvent
from ..state import Method, PortalState, method_table

ONLINE, OFFLINE = "online", "offline"
#: Fields event.offline.get filters and sorts by; event.offline.list adds PROCESS_ID and ERROR.
GET_FIELDS = ("ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID")
LIST_FIELDS = (*GET_FIELDS, "PROCESS_ID", "ERROR")
#: IRestService::sanitizeFilter's operations ('@': in a list, '%': substring).
FILTER_OPERATIONS = ("", "=", ">", "<", ">=", "<=", "@", "%")
_KEY = re.compile(r"^([^a-zA-Z]*)(.*)$", re.DOTALL)

EVENT_NOT_FOUND = ErrorSpec("ERROR_EVENT_NOT_FOUND", "Event not found", 400)
WRONG_HANDLER_URL = ErrorSpec("ERROR_WRONG_HANDLER_URL", "Wrong handler URL", 400)
UNSUPPORTED_PROTOCOL = ErrorSpec("ERROR_UNSUPPORTED_PROTOCOL", "Unsupported handler protocol", 400)
# RestException::ERROR_CORE named explicitly, so the code is ERROR_CORE whatever config.error_core_code says.
ALREADY_BOUND = ErrorSpec("ERROR_CORE", "Unable to set event handler: Handler already binded", 400)
OFFLINE_BIND_NEEDS_ADMIN = ErrorSpec(
    "ACCESS_DENIED", "Access denied! Offline events binding requires administrator access rights", 403
)
AUTH_TYPE_BIND_NEEDS_ADMIN = ErrorSpec(
    "ACCESS_DENIED", "Access denied! Event binding with AUTH_TYPE requires administrator access rights", 403
)
OFFLINE_UNBIND_NEEDS_ADMIN = ErrorSpec(
    "ACCESS_DENIED", "Access denied! Offline events unbinding requires administrator access rights", 403
)
AUTH_TYPE_UNBIND_NEEDS_ADMIN = ErrorSpec(
    "ACCESS_DENIED", "Access denied! Event unbinding with AUTH_TYPE requires administrator access rights", 403
)


class Msg:
    """Texts of this toolset's ERROR_ARGUMENT errors (Rest\\Exceptions\\Argument*Exception, IRestService)."""

    NULL = "Argument '{name}' is null or empty"
    EVENT_TYPE = "Value must be one of {online|offline}"
    OFFLINE_NOT_ALLOWED = "Offline event cannot be registered for this event."
    LIMIT = "Value must be positive integer"
    FILTER_NOT_ARRAY = "The filter is not an array."
    ORDER_NOT_ARRAY = "The order is not an array."
    FILTER_OPERATION = "Filter operation not allowed: {operation}"
    FILTER_FIELD = "Filter field not allowed: {field}"
    ORDER_FIELD = "Order field not allowed: {field}"
    ORDER_DIRECTION = "Order direction should be one of {ASC|DESC}"
    INVALID_TYPE = "The value of an argument '{key}' has an invalid type"
    MESSAGE_IDS = "Value must be array of MESSAGE_ID values"
    IDS = "Value must be array of integers"


def _argument(template: str, **fmt: Any) -> SandboxRestError:
    # Rest\Exceptions\ArgumentException and friends; the main module's ones the few methods throw are sent the
    # same way here.
    return SandboxRestError("ERROR_ARGUMENT", template.format(**fmt) if fmt else template, 400)


def _require_app(caller: Caller) -> None:
    if caller.auth_type != "oauth":
        raise WRONG_AUTH_TYPE.exc()


def _is_admin(portal: PortalState, caller: Caller) -> bool:
    user = portal.users.get(caller.user_id)
    return user is not None and user.is_admin


def _require_admin(portal: PortalState, caller: Caller) -> None:
    if not _is_admin(portal, caller):
        raise ACCESS_DENIED.exc()


def _process_id(query: Params) -> str | None:
    """The request's ``process_id`` (keys already lower-cased), trimmed; None when not given."""
    return php_str(query["process_id"]).strip() if isset(query, "process_id") else None


def _auth_connector(params: Params) -> str:
    """The request's ``auth_connector`` (the source key an offline handler and its queue are tied to)."""
    return php_str(params.get("auth_connector"))


def _lower_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key.lower() if isinstance(key, str) else key: value for key, value in params.items()}


# --- handlers ---


def events_list(portal: PortalState, params: Params, caller: Caller) -> list[str]:
    _require_app(caller)
    query = upper_keys(params)
    if isset(query, "SCOPE") and php_str(query["SCOPE"]) != "":
        scopes = {php_str(query["SCOPE"])}
    elif php_int(query.get("FULL")):
        scopes = {info.scope for info in CATALOGUE.values()}
    else:
        scopes = portal.granted_scopes(caller) | {BASIC_SCOPE}
    return [name for name, info in CATALOGUE.items() if info.scope in scopes]


def event_bind(portal: PortalState, params: Params, caller: Caller) -> bool:
    _require_app(caller)
    query = upper_keys(params)
    name = php_str(query.get("EVENT")).upper()
    event_type = php_str(query.get("EVENT_TYPE")).lower()
    user_id = php_int(query.get("AUTH_TYPE"))
    handler_url = php_str(query.get("HANDLER"))
    admin = _is_admin(portal, caller)
    if user_id > 0:
        if not admin and user_id != caller.user_id:
            raise AUTH_TYPE_BIND_NEEDS_ADMIN.exc()
    elif not admin:
        user_id = caller.user_id  # a user's own handlers carry that user's token
    if name == "":
        raise _argument(Msg.NULL, name="EVENT")
    event_type = _event_type(event_type)
    if event_type == OFFLINE:
        if not admin:
            raise OFFLINE_BIND_NEEDS_ADMIN.exc()
        handler_url, user_id = "", 0
    elif handler_url == "":
        raise _argument(Msg.NULL, name="HANDLER")
    else:
        _check_handler_url(handler_url)
    info = CATALOGUE.get(name)
    if info is None or (info.scope != BASIC_SCOPE and info.scope not in portal.granted_scopes(caller)):
        raise EVENT_NOT_FOUND.exc()
    if handler_url == "" and not info.offline_allowed:
        raise _argument(Msg.OFFLINE_NOT_ALLOWED)
    handler = EventHandler(
        portal.next_id("event_handler"), name, handler_url, user_id, _auth_connector(params), caller.app_id or 0
    )
    if any(_same_binding(handler, bound) for bound in portal.event_handlers.values()):
        raise ALREADY_BOUND.exc()
    portal.event_handlers[handler.id] = handler
    return True


def _event_type(value: str) -> str:
    if value == "":
        return ONLINE
    if value not in (ONLINE, OFFLINE):
        raise _argument(Msg.EVENT_TYPE)
    return value


def _check_handler_url(url: str) -> None:
    """HandlerHelper::checkCallback for a local app (no app URL to match): http(s), and a host with a dot."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise UNSUPPORTED_PROTOCOL.exc()
    if "." not in (parts.hostname or ""):
        raise WRONG_HANDLER_URL.exc()


def _same_binding(new: EventHandler, bound: EventHandler) -> bool:
    """EventTable's uniqueness: one row per app, event, handler URL, user and source key."""
    key = (new.app_id, new.event, new.handler, new.user_id, new.connector_id)
    return key == (bound.app_id, bound.event, bound.handler, bound.user_id, bound.connector_id)


def event_unbind(portal: PortalState, params: Params, caller: Caller) -> dict[str, int]:
    _require_app(caller)
    query = upper_keys(params)
    name = php_str(query.get("EVENT")).upper()
    handler_url = php_str(query.get("HANDLER"))
    # Source requires EVENT (and HANDLER for online ones); the docs' "no parameters: all handlers" is not so.
    if name == "":
        raise _argument(Msg.NULL, name="EVENT")
    event_type = _event_type(php_str(query.get("EVENT_TYPE")).lower())
    admin = _is_admin(portal, caller)
    if event_type == OFFLINE:
        if not admin:
            raise OFFLINE_UNBIND_NEEDS_ADMIN.exc()
        handler_url = ""
    elif handler_url == "":
        raise _argument(Msg.NULL, name="HANDLER")

    # Offline handlers are told apart by source key, online ones by user (a non-admin's are their own).
    connector: str | None = None
    user_id: int | None = None
    if event_type == OFFLINE:
        connector = _auth_connector(params)
    elif isset(query, "AUTH_TYPE"):
        user_id = php_int(query["AUTH_TYPE"])
        if not admin and user_id != caller.user_id:
            raise AUTH_TYPE_UNBIND_NEEDS_ADMIN.exc()
    elif not admin:
        user_id = caller.user_id
    gone = [
        handler.id
        for handler in portal.event_handlers.values()
        if (handler.app_id, handler.event, handler.handler) == (caller.app_id, name, handler_url)
        and connector in (None, handler.connector_id)
        and user_id in (None, handler.user_id)
    ]
    for handler_id in gone:
        del portal.event_handlers[handler_id]
    return {"count": len(gone)}


def event_get(portal: PortalState, params: Params, caller: Caller) -> list[dict[str, Any]]:
    _require_app(caller)
    admin = _is_admin(portal, caller)
    rows: list[dict[str, Any]] = []
    for handler in sorted(portal.event_handlers.values(), key=lambda h: h.id):
        if handler.app_id != caller.app_id or (not admin and handler.user_id != caller.user_id):
            continue
        if handler.offline:
            rows.append({"event": handler.event, "connector_id": handler.connector_id, "offline": 1})
        else:
            # USER_ID comes from the DB as a string (docs example: "auth_type": "0").
            rows.append(
                {"event": handler.event, "handler": handler.handler, "auth_type": str(handler.user_id), "offline": 0}
            )
    return rows


# --- the offline queue ---


Condition = Callable[[OfflineEvent], bool]


def event_offline_get(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    _require_app(caller)
    _require_admin(portal, caller)
    query = _lower_keys(params)
    clear = php_int(query["clear"]) if isset(query, "clear") else 1
    process_id = _process_id(query)
    limit = php_int(query["limit"]) if isset(query, "limit") else LIST_LIMIT
    errors = 1 if isset(query, "error") and php_int(query["error"]) == 1 else 0
    connector = _auth_connector(params)
    if limit <= 0:
        raise _argument(Msg.LIMIT)
    filter_value = query["filter"] if isset(query, "filter") else {}
    conditions = _filter(portal, filter_value, GET_FIELDS)
    order = _order(query["order"] if isset(query, "order") else {"TIMESTAMP_X": "ASC"}, GET_FIELDS)

    def queued(record: OfflineEvent, reserved_by: str) -> bool:
        return (record.app_id, record.connector_id, record.error, record.process_id) == (
            caller.app_id,
            connector,
            errors,
            reserved_by,
        ) and all(condition(record) for condition in conditions)

    return_process_id = not clear
    if process_id is None:
        # EventOfflineTable::markEvents: reserve the first `limit` free records for a new process; rejects
        # array values that the read below would accept.
        _reject_array_values(filter_value)
        process_id = secrets.token_hex(16)
        for record in _sorted([r for r in portal.offline_events.values() if queued(r, "")], order)[:limit]:
            record.process_id = process_id
    else:
        return_process_id = True  # re-reading a reserved batch
    records = _sorted([r for r in portal.offline_events.values() if queued(r, process_id)], order)[:limit]
    if clear and records:
        # clearEvents without ids: every record of the process goes, also those beyond this read's limit.
        _delete(portal, lambda r: (r.process_id, r.app_id, r.connector_id) == (process_id, caller.app_id, connector))
    return {
        "process_id": process_id if return_process_id else None,
        "events": [_row(record) for record in records],
    }


def _reservation(portal: PortalState, params: Params, caller: Caller) -> tuple[Params, str, str]:
    """What .clear and .error act on: the query (keys lower-cased), its required process_id, its auth_connector."""
    _require_app(caller)
    _require_admin(portal, caller)
    query = _lower_keys(params)
    process_id = _process_id(query)
    if process_id is None:
        raise _argument(Msg.NULL, name="PROCESS_ID")
    return query, process_id, _auth_connector(params)


def event_offline_clear(portal: PortalState, params: Params, caller: Caller) -> bool:
    query, process_id, connector = _reservation(portal, params, caller)

    def reserved(record: OfflineEvent) -> bool:
        return (record.process_id, record.app_id, record.connector_id) == (process_id, caller.app_id, connector)

    if isset(query, "message_id"):  # message_id wins over id
        message_ids = _message_ids(query["message_id"])
        _delete(portal, lambda r: reserved(r) and r.message_id in message_ids)
    elif isset(query, "id"):
        ids = _ids(query["id"])
        _delete(portal, lambda r: reserved(r) and r.id in ids)
    else:
        _delete(portal, reserved)
    return True


def event_offline_error(portal: PortalState, params: Params, caller: Caller) -> bool:
    query, process_id, connector = _reservation(portal, params, caller)
    raw = query.get("message_id")
    if not isinstance(raw, list | dict):
        raise _argument(Msg.MESSAGE_IDS)
    message_ids = {php_str(value) for value in (raw.values() if isinstance(raw, dict) else raw)}
    # EventOfflineTable::markError: the process's own records become error records, free again (PROCESS_ID '');
    # other unmarked copies of those messages are dropped.
    for record in list(portal.offline_events.values()):
        if (record.app_id, record.connector_id, record.error) != (caller.app_id, connector, 0):
            continue
        if record.message_id not in message_ids:
            continue
        if record.process_id == process_id:
            record.error, record.process_id = 1, ""
        else:
            del portal.offline_events[record.id]
    return True


def event_offline_list(portal: PortalState, params: Params, caller: Caller) -> Page:
    _require_app(caller)
    _require_admin(portal, caller)
    query = _lower_keys(params)
    conditions = _filter(portal, query["filter"] if isset(query, "filter") else {}, LIST_FIELDS)
    order = _order(query["order"] if isset(query, "order") else {"ID": "ASC"}, LIST_FIELDS)
    connector = _auth_connector(params)
    records = [
        record
        for record in portal.offline_events.values()
        if (record.app_id, record.connector_id) == (caller.app_id, connector)
        and all(condition(record) for condition in conditions)
    ]
    rows = [
        {**_row(record), "PROCESS_ID": record.process_id, "ERROR": str(record.error)}
        for record in _sorted(records, order)
    ]
    return Page.slice(rows, params.get("start"))


# --- queue helpers ---


def _row(record: OfflineEvent) -> dict[str, Any]:
    """A record as event.offline.get sends it (DB strings for ID and MESSAGE_ID, the user in EVENT_ADDITIONAL)."""
    return {
        "ID": str(record.id),
        "TIMESTAMP_X": datetime.fromtimestamp(record.timestamp).astimezone().isoformat(timespec="seconds"),
        "EVENT_NAME": record.event_name,
        "EVENT_DATA": record.event_data or False,  # an event without data reads back as false (docs example)
        "EVENT_ADDITIONAL": {"user_id": record.user_id},
        "MESSAGE_ID": record.message_id,
    }


_COLUMNS: dict[str, Callable[[OfflineEvent], Any]] = {
    "ID": lambda r: r.id,
    "TIMESTAMP_X": lambda r: r.timestamp,
    "EVENT_NAME": lambda r: r.event_name,
    "MESSAGE_ID": lambda r: r.message_id,
    "PROCESS_ID": lambda r: r.process_id,
    "ERROR": lambda r: r.error,
}


def _filter(portal: PortalState, value: Any, fields: tuple[str, ...]) -> list[Condition]:
    """IRestService::sanitizeFilter, then the ORM's reading of each ``<operation><FIELD>`` key."""
    if not isinstance(value, dict | list):
        raise _argument(Msg.FILTER_NOT_ARRAY)
    items = value.items() if isinstance(value, dict) else enumerate(value)
    conditions = []
    for key, wanted in items:
        operation, field = _KEY.match(str(key).upper()).groups()  # type: ignore[union-attr]  # always matches
        if operation not in FILTER_OPERATIONS:
            raise _argument(Msg.FILTER_OPERATION, operation=operation)
        if field not in fields:
            raise _argument(Msg.FILTER_FIELD, field=field)
        conditions.append(_condition(portal, field, operation, wanted))
    return conditions


def _condition(portal: PortalState, field: str, operation: str, wanted: Any) -> Condition:
    column = _COLUMNS[field]

    def cast(value: Any) -> Any:
        if field in ("ID", "ERROR"):
            return php_int(value)
        if field == "TIMESTAMP_X":
            moment = php_strtotime(value, portal.clock())
            return moment.timestamp() if moment else float("nan")  # an unreadable date matches nothing
        return php_str(value)

    if operation == "@":
        values = wanted.values() if isinstance(wanted, dict) else wanted if isinstance(wanted, list) else [wanted]
        allowed = {cast(value) for value in values}
        return lambda record: column(record) in allowed
    if operation == "%":
        part = php_str(wanted)
        return lambda record: part in str(column(record))
    target = cast(wanted)
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "": lambda a, b: a == b,
        "=": lambda a, b: a == b,
        ">": lambda a, b: a > b,
        "<": lambda a, b: a < b,
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
    }
    test = compare[operation]
    return lambda record: test(column(record), target)


def _reject_array_values(value: Any) -> None:
    for key, wanted in value.items() if isinstance(value, dict) else enumerate(value):
        if isinstance(wanted, list | dict):
            raise _argument(Msg.INVALID_TYPE, key=key)


def _order(value: Any, fields: tuple[str, ...]) -> list[tuple[str, bool]]:
    """IRestService::sanitizeOrder: (field, descending) pairs."""
    if not isinstance(value, dict):
        raise _argument(Msg.ORDER_NOT_ARRAY)
    order = []
    for key, direction in upper_keys(value).items():
        if key not in fields:
            raise _argument(Msg.ORDER_FIELD, field=key)
        text = php_str(direction).upper()
        if text not in ("ASC", "DESC"):
            raise _argument(Msg.ORDER_DIRECTION)
        order.append((key, text == "DESC"))
    return order


def _sorted(records: list[OfflineEvent], order: list[tuple[str, bool]]) -> list[OfflineEvent]:
    # Ties (many events in one second) keep the insertion order, ID ascending, as the table's scan does.
    result = sorted(records, key=lambda r: r.id)
    for field, descending in reversed(order):
        result.sort(key=_COLUMNS[field], reverse=descending)
    return result


def _delete(portal: PortalState, condition: Condition) -> None:
    for record_id in [record.id for record in portal.offline_events.values() if condition(record)]:
        del portal.offline_events[record_id]


def _message_ids(value: Any) -> set[str]:
    if not isinstance(value, list | dict):
        raise _argument(Msg.MESSAGE_IDS)
    found = {php_str(item).strip() for item in (value.values() if isinstance(value, dict) else value)}
    if any(len(item) != 32 for item in found):
        raise _argument(Msg.MESSAGE_IDS)
    return found


def _ids(value: Any) -> set[int]:
    if not isinstance(value, list | dict):
        raise _argument(Msg.IDS)
    found = {php_int(item) for item in (value.values() if isinstance(value, dict) else value)}
    if any(item <= 0 for item in found):
        raise _argument(Msg.IDS)
    return found


METHODS = method_table(
    {
        "events": Method(events_list, scope=BASIC_SCOPE),
        "event.bind": Method(event_bind, scope=BASIC_SCOPE),
        "event.unbind": Method(event_unbind, scope=BASIC_SCOPE),
        "event.get": Method(event_get, scope=BASIC_SCOPE),
        "event.offline.get": Method(event_offline_get, scope=BASIC_SCOPE),
        "event.offline.clear": Method(event_offline_clear, scope=BASIC_SCOPE),
        "event.offline.error": Method(event_offline_error, scope=BASIC_SCOPE),
        "event.offline.list": Method(event_offline_list, scope=BASIC_SCOPE),
    }
)
