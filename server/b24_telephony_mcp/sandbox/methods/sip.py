"""voximplant.sip.*: SIP connections, their registrations with the telephony backend, and the SIP connector.

A *cloud* connection is registered by the telephony backend at SERVER (it gets a REG_ID; its line is ``reg<REG_ID>``);
an *office* PBX calls in with the INCOMING_* credentials the portal hands out (its line is ``sip<CONFIG_ID>``).
This module also keeps the portal's line configurations (rented numbers and SIP connections) and the default
outgoing line, which ``outgoing_lines.py`` reads and sets.

Behaviour follows vi_rest.php / vi_sip.php (methods.json ``source_notes``): every method needs the telephony
permission "Manage numbers - modify" (here: portal administrators; a non-admin gets ACCESS_DENIED); params are
upper-cased; sip.get, sip.update and sip.delete see only the calling application's connections (APP_ID, none for a
webhook), sip.status and line.outgoing.sip.set any (disagreements.md #28); MAX_CLOUD_PBX counts cloud connections
portal-wide (#27); sip.update without TITLE/SERVER/LOGIN/PASSWORD answers 1 and changes nothing (#13); sip.get
with no rows answers a bare ``[]`` without ``total`` (#14).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..calls import Caller, Page, Params
from ..errors import ACCESS_DENIED, SandboxRestError
from ..php import isset, php_float, php_int, php_str, upper_keys
from ..records import APP_ID
from ..state import Method, PortalState, method_table

CLOUD = "cloud"
OFFICE = "office"
MAX_CLOUD_PBX = 10
FIELD_MAX = 100
LINK_BASE_NUMBER = "LINK_BASE_NUMBER"
"""The default outgoing line when none of the portal's lines is set: the portal's linked number."""
INCOMING_SERVER = "ip.b24-sandbox.bitrixphone.com"
CHECK_FIELDS_ERROR = "CHECK_FIELDS_ERROR"
REG_ID_NOT_FOUND = "REG_ID_NOT_FOUND"


class Msg:
    """Texts of this toolset's errors; docs wording where documented, else the sandbox's own (marked)."""

    CONFIG_NOT_FOUND = "Specified CONFIG_ID is not found"
    SERVER_EMPTY = "Server address not specified"
    SERVER_LONG = "Server address cannot exceed 100 characters"  # sandbox wording (VI_SIP_SERVER_100)
    LOGIN_EMPTY = "Login for connecting to the server not specified"
    LOGIN_LONG = "Login for connecting to the server cannot exceed 100 characters"  # sandbox wording
    PASSWORD_LONG = "Password for connecting to the server cannot exceed 100 characters"
    TYPE_WRONG = "Unknown PBX type"  # sandbox wording (VI_SIP_TYPE_ERR)
    TITLE_EXISTS = "The specified connection name is already registered in the system"
    MAX_CLOUD = "You cannot connect more than 10 virtual PBXs."
    SETTINGS_NOT_FOUND = "Settings not found"
    # The ORM's SystemException for a FILTER key naming no field; CRestServer sends it as ERROR_CORE.
    UNKNOWN_FIELD = "Unknown field definition `{field}` ({field}) for Sip Entity."


@dataclass
class SipConnection:
    """A SipTable row joined with its line configuration (TITLE is the config's PHONE_NAME). ID == CONFIG_ID here."""

    config_id: int
    type: str
    title: str
    server: str
    login: str
    password: str | None
    app_id: int | None
    """The application that created it; None: created in the portal's UI or through a webhook."""
    reg_id: int | None = None
    incoming_server: str | None = None
    incoming_login: str | None = None
    incoming_password: str | None = None
    auth_user: str | None = None
    outbound_proxy: str | None = None
    detect_line_number: str = "N"
    line_detect_header_order: str = "diversion;to"
    registration_status_code: int | None = None
    registration_error_message: str | None = None

    @property
    def line_id(self) -> str:
        """The config's SEARCH_ID: the LINE_ID of voximplant.line.*."""
        if self.type == CLOUD:
            return f"reg{self.reg_id}"
        return self.incoming_login or f"sip{self.config_id}"

    @property
    def line_name(self) -> str:
        """PHONE_NAME, or the system name the portal shows for an untitled connection."""
        return self.title or f"{'Cloud' if self.type == CLOUD else 'Office'} PBX ({self.config_id})"

    def columns(self, portal: PortalState) -> dict[str, Any]:
        """The row as the ORM returns it with TITLE selected (numbers as DB strings); FILTER and SORT see these."""
        return {
            "ID": str(self.config_id),
            "APP_ID": portal.config.client_id if self.app_id == APP_ID else None,
            "TYPE": self.type,
            "CONFIG_ID": str(self.config_id),
            "REG_ID": None if self.reg_id is None else str(self.reg_id),
            "SERVER": self.server,
            "LOGIN": self.login,
            "PASSWORD": self.password,
            "INCOMING_SERVER": self.incoming_server,
            "INCOMING_LOGIN": self.incoming_login,
            "INCOMING_PASSWORD": self.incoming_password,
            "AUTH_USER": self.auth_user,
            "OUTBOUND_PROXY": self.outbound_proxy,
            "DETECT_LINE_NUMBER": self.detect_line_number,
            "LINE_DETECT_HEADER_ORDER": self.line_detect_header_order,
            "REGISTRATION_STATUS_CODE": None
            if self.registration_status_code is None
            else str(self.registration_status_code),
            "REGISTRATION_ERROR_MESSAGE": self.registration_error_message,
            "TITLE": self.title,
        }

    def shown(self, columns: dict[str, Any], *hidden: str) -> dict[str, Any]:
        """``columns`` minus APP_ID, ``hidden`` and what the type lacks: INCOMING_* (cloud) or REG_ID (office)."""
        by_type = ("INCOMING_SERVER", "INCOMING_LOGIN", "INCOMING_PASSWORD") if self.type == CLOUD else ("REG_ID",)
        dropped = {"APP_ID", *hidden, *by_type}
        return {key: value for key, value in columns.items() if key not in dropped}


@dataclass
class Registration:
    """The telephony backend's registration of a cloud connection (what voximplant.sip.status reports)."""

    status_code: int
    result: str  # success | error | in_progress | wait
    error_message: str
    last_updated: str


@dataclass
class RentedNumber:
    config_id: int
    number: str
    name: str  # formatted international, as the portal shows it


def _seed_connections() -> dict[int, SipConnection]:
    # The docs' examples: two cloud and one office connection of the app, plus two made in the portal's UI (not
    # the app's: invisible to sip.get/update/delete, but lines all the same).
    # fmt: off
    rows = [
        SipConnection(
            3, CLOUD, "SIP line", "sipnet.com", "0045281811", "N7K4mCG9", APP_ID, reg_id=150907, auth_user="",
            outbound_proxy="", registration_status_code=200, registration_error_message="",
        ),
        SipConnection(
            7, OFFICE, "Office PBX 1", "office.provider.local", "office_user", "0ff1ce-Pbx-Secret", APP_ID,
            incoming_server=INCOMING_SERVER, incoming_login="sip7",
            incoming_password="71747523265mb091225eb31996a4a225", registration_status_code=0,
        ),
        SipConnection(
            9, CLOUD, "", "sip.provider.com", "sip_user", "Cl0ud-Pbx-Secret", APP_ID, reg_id=151083,
            registration_status_code=502, registration_error_message="Unable to resolve hostname",
        ),
        SipConnection(
            11, OFFICE, "", "pbx.branch.local", "branch", "Br4nch-Pbx-Secret", None, incoming_server=INCOMING_SERVER,
            incoming_login="sip11", incoming_password="5f0e9d33a6c1b2e4f7a8091c2d3e4f50",
        ),
        SipConnection(
            13, CLOUD, "SIP line 2", "sip.other-provider.net", "trunk2", "Tr2nk-Pbx-Secret", None, reg_id=151085,
            registration_status_code=200, registration_error_message="",
        ),
    ]
    # fmt: on
    return {row.config_id: row for row in rows}


def _seed_registrations() -> dict[int, Registration]:
    return {
        150907: Registration(200, "success", "", "2026-03-12 09:10:51"),
        151083: Registration(502, "error", "Unable to resolve hostname", "2026-03-12 09:11:02"),
        151085: Registration(200, "success", "", "2026-03-12 09:12:40"),
    }


@dataclass
class LineConfigs:
    """The portal's line configurations (rented numbers, SIP connections), the backend's SIP registrations, the
    default outgoing line and the SIP connector's state."""

    rented: dict[int, RentedNumber] = field(
        default_factory=lambda: {1: RentedNumber(1, "74951234567", "+7 495 123-45-67")}
    )
    connections: dict[int, SipConnection] = field(default_factory=_seed_connections)
    registrations: dict[int, Registration] = field(default_factory=_seed_registrations)
    default_line: str = "reg150907"
    connector_free_minutes: int = 60
    connector_paid_until: str | None = None
    """ISO date the paid SIP connector runs until; None: not paid."""
    last_config_id: int = 13
    last_reg_id: int = 151085

    def lines(self) -> dict[str, str]:
        """LINE_ID -> name of every line (CVoxImplantConfig::GetLines: rented numbers, then SIP configs by ID)."""
        lines = {rented.number: rented.name for rented in self.rented.values()}
        lines.update({conn.line_id: conn.line_name for _, conn in sorted(self.connections.items())})
        return lines

    def current_line(self) -> str:
        """GetPortalNumber(): the stored default if it is still a line, else LINK_BASE_NUMBER."""
        return self.default_line if self.default_line in self.lines() else LINK_BASE_NUMBER

    def line_of_config(self, config_id: int) -> str | None:
        """The SEARCH_ID of any line configuration (rented or SIP, of any app)."""
        if config_id in self.rented:
            return self.rented[config_id].number
        conn = self.connections.get(config_id)
        return conn.line_id if conn else None


def line_configs(portal: PortalState) -> LineConfigs:
    return portal.state(LineConfigs)


def require_line_modify(portal: PortalState, caller: Caller) -> None:
    """Security\\Permissions::canPerform(ENTITY_LINE, ACTION_MODIFY), which every voximplant.sip/line method checks
    first."""
    user = portal.users.get(caller.user_id)
    if user is None or not user.is_admin:
        raise ACCESS_DENIED.exc()


def _own(portal: PortalState, raw_config_id: Any, caller: Caller, status: int) -> SipConnection:
    """The caller's connection with this CONFIG_ID (SipTable::getCount by CONFIG_ID and APP_ID), else ERROR_NOT_FOUND
    (404 in sip.update, 400 in sip.delete)."""
    conn = line_configs(portal).connections.get(php_int(raw_config_id)) if raw_config_id is not None else None
    if conn is None or conn.app_id != caller.app_id:
        raise SandboxRestError("ERROR_NOT_FOUND", Msg.CONFIG_NOT_FOUND, status)
    return conn


def _checked_fields(params: Params, sip_type: str, *, adding: bool) -> dict[str, str]:
    """CVoxImplantSip::PrepareFields: the fields to store, or CHECK_FIELDS_ERROR with every message joined."""
    fields: dict[str, str] = {}
    errors: list[str] = []
    if isset(params, "TITLE"):
        fields["title"] = php_str(params["TITLE"]).strip()
    if sip_type not in (OFFICE, CLOUD):
        errors.append(Msg.TYPE_WRONG)
    for name, empty, long in (
        ("SERVER", Msg.SERVER_EMPTY, Msg.SERVER_LONG),
        ("LOGIN", Msg.LOGIN_EMPTY, Msg.LOGIN_LONG),
    ):
        if isset(params, name):
            value = php_str(params[name]).strip()
            if name == "SERVER":
                value = value.replace("http://", "").replace("https://", "")
            if len(value) > FIELD_MAX:
                errors.append(long)
            elif value == "":
                errors.append(empty)
            fields[name.lower()] = value
        elif adding:
            errors.append(empty)
    if isset(params, "PASSWORD"):
        fields["password"] = php_str(params["PASSWORD"]).strip()
        if len(php_str(params["PASSWORD"])) > FIELD_MAX:  # measured before trimming, as in source
            errors.append(Msg.PASSWORD_LONG)
    if errors:
        raise SandboxRestError(CHECK_FIELDS_ERROR, "<br> ".join(errors), 400)
    return fields


def _title_taken(configs: LineConfigs, title: str, config_id: int | None = None) -> bool:
    """Another line configuration already has this PHONE_NAME (compared as MySQL does, case-insensitively)."""
    names = [(conn.config_id, conn.title) for conn in configs.connections.values()]
    names += [(rented.config_id, "") for rented in configs.rented.values()]
    return any(other != config_id and name.casefold() == title.casefold() for other, name in names)


def _register(portal: PortalState, conn: SipConnection) -> Registration:
    """The backend registers at SERVER: the sandbox's provider accepts any login with a password, refuses one
    without (the docs: the password is "necessary for working registration with the operator")."""
    now = datetime.fromtimestamp(portal.clock()).strftime("%Y-%m-%d %H:%M:%S")
    if conn.password:
        return Registration(200, "success", "", now)
    return Registration(401, "error", "Unauthorized", now)


def sip_add(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    require_line_modify(portal, caller)
    params = upper_keys(params)
    sip_type = php_str(params["TYPE"]).lower() if isset(params, "TYPE") else CLOUD
    fields = _checked_fields(params, sip_type, adding=True)
    configs = line_configs(portal)
    if sip_type == CLOUD and sum(conn.type == CLOUD for conn in configs.connections.values()) >= MAX_CLOUD_PBX:
        raise SandboxRestError("MAX_CLOUD_PBX", Msg.MAX_CLOUD, 400)
    title = fields.get("title", "")
    if title and _title_taken(configs, title):
        raise SandboxRestError("TITLE_EXISTS", Msg.TITLE_EXISTS, 400)
    configs.last_config_id += 1
    conn = SipConnection(
        configs.last_config_id,
        sip_type,
        title,
        fields["server"],
        fields["login"],
        fields.get("password"),
        caller.app_id,
    )
    if sip_type == CLOUD:
        configs.last_reg_id += 1
        conn.reg_id = configs.last_reg_id
        configs.registrations[conn.reg_id] = _register(portal, conn)
    else:
        conn.incoming_server = INCOMING_SERVER
        conn.incoming_login = f"sip{conn.config_id}"
        conn.incoming_password = secrets.token_hex(16)
    configs.connections[conn.config_id] = conn
    if configs.current_line() == LINK_BASE_NUMBER:  # the first real line becomes the default
        configs.default_line = conn.line_id
    result = conn.shown(conn.columns(portal))
    if conn.reg_id is not None:
        result["REG_ID"] = conn.reg_id  # fresh from the backend: a number, unlike the DB strings around it
    return result


def sip_update(portal: PortalState, params: Params, caller: Caller) -> int:
    require_line_modify(portal, caller)
    params = upper_keys(params)
    conn = _own(portal, params.get("CONFIG_ID"), caller, 404)
    if not any(isset(params, name) for name in ("TITLE", "SERVER", "LOGIN", "PASSWORD")):
        return 1  # no error and no change (disagreements.md #13)
    # TYPE is only validated (default cloud, not lower-cased here); the connection keeps its type.
    fields = _checked_fields(params, php_str(params["TYPE"]) if isset(params, "TYPE") else CLOUD, adding=False)
    configs = line_configs(portal)
    if "title" in fields:
        if _title_taken(configs, fields["title"], conn.config_id):
            raise SandboxRestError("TITLE_EXISTS", Msg.TITLE_EXISTS, 400)
        conn.title = fields.pop("title")
    if fields:
        for name, value in fields.items():
            setattr(conn, name, value)
        conn.registration_status_code = 0
        if conn.reg_id in configs.registrations:  # changed credentials: the backend registers again
            configs.registrations[conn.reg_id] = _register(portal, conn)
    return 1


def sip_delete(portal: PortalState, params: Params, caller: Caller) -> int:
    require_line_modify(portal, caller)
    conn = _own(portal, upper_keys(params).get("CONFIG_ID"), caller, 400)
    configs = line_configs(portal)
    # The backend registration goes first; without it nothing is deleted.
    if conn.reg_id is not None and configs.registrations.pop(conn.reg_id, None) is None:
        raise SandboxRestError(REG_ID_NOT_FOUND, Msg.SETTINGS_NOT_FOUND, 400)
    del configs.connections[conn.config_id]
    return 1


def sip_status(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    require_line_modify(portal, caller)
    reg_id = php_int(upper_keys(params).get("REG_ID"))
    configs = line_configs(portal)
    registration = configs.registrations.get(reg_id)  # any connection's, not only the caller's (#28)
    if registration is None:
        raise SandboxRestError(REG_ID_NOT_FOUND, Msg.SETTINGS_NOT_FOUND, 400)
    # Side effect of the source: the status is cached into the connection's row when it changed.
    for conn in configs.connections.values():
        if conn.reg_id == reg_id and php_int(conn.registration_status_code) != registration.status_code:
            conn.registration_status_code = registration.status_code
            conn.registration_error_message = registration.error_message
    return {
        "REG_ID": reg_id,
        "LAST_UPDATED": registration.last_updated,
        "ERROR_MESSAGE": registration.error_message,
        "STATUS_CODE": registration.status_code,
        "STATUS_RESULT": registration.result,
    }


def sip_connector_status(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    require_line_modify(portal, caller)
    configs = line_configs(portal)
    result: dict[str, Any] = {
        "FREE_MINUTES": configs.connector_free_minutes,
        "PAID": configs.connector_paid_until is not None,
    }
    if configs.connector_paid_until is not None:
        result["PAID_DATE_END"] = configs.connector_paid_until
    return result


# --- voximplant.sip.get: FILTER, SORT/ORDER, pages ---

_NUMERIC_COLUMNS = frozenset({"ID", "CONFIG_ID", "REG_ID", "REGISTRATION_STATUS_CODE"})
# The fields FILTER and SORT may name: SipTable's, plus TITLE (the keys of SipConnection.columns).
_COLUMNS = _NUMERIC_COLUMNS | {
    "APP_ID",
    "TYPE",
    "SERVER",
    "LOGIN",
    "PASSWORD",
    "INCOMING_SERVER",
    "INCOMING_LOGIN",
    "INCOMING_PASSWORD",
    "AUTH_USER",
    "OUTBOUND_PROXY",
    "DETECT_LINE_NUMBER",
    "LINE_DETECT_HEADER_ORDER",
    "REGISTRATION_ERROR_MESSAGE",
    "TITLE",
}
# The documented operators, plus the ORM's @ / !@ (in / not in). A key is the operator, then the field name.
_OPERATORS = frozenset({"", "=", "!", "!=", "@", "!@", ">", ">=", "<", "<=", "><", "!><", "%", "!%", "?"})


def sip_get(portal: PortalState, params: Params, caller: Caller) -> Page | list[Any]:
    require_line_modify(portal, caller)
    start = params.get("start")  # the page offset is read apart from the method's params, in lower case
    params = upper_keys(params)
    raw_filter = params.get("FILTER")
    conditions = _conditions(raw_filter if isinstance(raw_filter, dict) else {})
    connections = sorted(line_configs(portal).connections.values(), key=lambda conn: conn.config_id)
    rows = [(conn, conn.columns(portal)) for conn in connections if conn.app_id == caller.app_id]
    rows = [
        (conn, columns)
        for conn, columns in rows
        if all(_condition(operator, column, columns[column], wanted) for operator, column, wanted in conditions)
    ]
    if not rows:
        return []  # a bare [] without total (disagreements.md #14)
    sort, order = params.get("SORT"), params.get("ORDER")
    # Applied only when both are given; an unknown field or an ORDER other than exactly ASC/DESC is ignored.
    if isinstance(sort, str) and sort in _COLUMNS and order in ("ASC", "DESC"):
        rows.sort(key=lambda row: _sort_key(sort, row[1][sort]), reverse=order == "DESC")
    return Page.slice([conn.shown(columns, "ID") for conn, columns in rows], start)


def _sort_key(column: str, value: Any) -> tuple[bool, Any]:
    if value is None:
        return (False, 0)
    return (True, php_float(value) if column in _NUMERIC_COLUMNS else php_str(value).casefold())


def _conditions(raw_filter: dict[Any, Any]) -> list[tuple[str, str, Any]]:
    """(operator, field, value) per FILTER key, upper-cased; the key APP_ID is replaced by the caller's own."""
    conditions = []
    for raw_key, wanted in raw_filter.items():
        key = php_str(raw_key).upper()
        if key == "APP_ID":
            continue
        # The operator is everything before the first letter (splitToOperationAndField).
        split = next((index for index, char in enumerate(key) if char.isascii() and char.isalpha()), len(key))
        operator, column = key[:split], key[split:]
        if operator not in _OPERATORS or column not in _COLUMNS:
            raise SandboxRestError("ERROR_CORE", Msg.UNKNOWN_FIELD.format(field=key), 400)
        conditions.append((operator, column, wanted))
    return conditions


def _condition(operator: str, column: str, actual: Any, wanted: Any) -> bool:
    numeric = column in _NUMERIC_COLUMNS
    values = list(wanted.values()) if isinstance(wanted, dict) else wanted if isinstance(wanted, list) else [wanted]
    negated = operator.startswith("!")
    operator = operator.removeprefix("!") or "="
    if operator in ("=", "@"):
        found = any(_equal(numeric, actual, value) for value in values)
    elif operator in ("%", "?"):
        found = actual is not None and any(php_str(value).casefold() in php_str(actual).casefold() for value in values)
    elif operator == "><":
        low, high = [*values, None, None][:2]
        found = actual is not None and _compare(numeric, actual, low) >= 0 and _compare(numeric, actual, high) <= 0
    else:  # > >= < <=
        if actual is None:
            return False
        difference = _compare(numeric, actual, values[0] if values else None)
        found = {">": difference > 0, ">=": difference >= 0, "<": difference < 0, "<=": difference <= 0}[operator]
    return not found if negated else found


def _equal(numeric: bool, actual: Any, value: Any) -> bool:
    if value is None or value == "":
        return actual in (None, "")
    if actual is None:
        return False
    if numeric:
        return php_float(actual) == php_float(value)
    return php_str(actual).casefold() == php_str(value).casefold()


def _compare(numeric: bool, actual: Any, value: Any) -> int:
    left: Any = php_float(actual) if numeric else php_str(actual).casefold()
    right: Any = php_float(value) if numeric else php_str(value).casefold()
    return (left > right) - (left < right)


METHODS = method_table(
    {
        "voximplant.sip.add": Method(sip_add),
        "voximplant.sip.update": Method(sip_update),
        "voximplant.sip.get": Method(sip_get),
        "voximplant.sip.delete": Method(sip_delete),
        "voximplant.sip.status": Method(sip_status),
        "voximplant.sip.connector.status": Method(sip_connector_status),
    }
)
