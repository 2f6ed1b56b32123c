"""In-memory state of the sandbox portal: users, CRM, external lines, calls, statistics, files, tokens.

Pure Python, no HTTP. Every REST method takes the decoded params dict and the :class:`Caller` and returns
the ``result`` value or raises :class:`SandboxRestError`. Behaviour follows the server source as recorded in
``bitrix24-facts/methods.json`` (``source_notes``): validation order, messages, PHP-style casts.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple
from urllib.parse import quote, urlsplit

Params = dict[str, Any]

#: Scopes granted to the sandbox app's tokens.
SANDBOX_SCOPE = "telephony,call,crm,user"
APP_ID = 1
APP_NAME = "Sandbox telephony app"
DEDUPE_WINDOW = 30 * 60.0
CALL_TYPES = range(1, 6)
RECORD_EXTENSIONS = ("wav", "mp3")


@dataclass
class SandboxConfig:
    """Knobs of the emulated portal; the defaults mirror a cloud portal on a non-Enterprise plan."""

    client_id: str = "local.sandbox0000000000.00000001"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    webhook_user_id: int = 1
    webhook_code: str = field(default_factory=lambda: secrets.token_hex(8))
    access_token_ttl: float = 3600.0
    rate_limit: float = 2.0
    rate_burst: int = 50
    # The docs call method-specific failures ERROR_CORE; the server throws them without a code (""), as seen
    # on a live portal (disagreements.md #1).
    error_core_code: str = ""
    # Docs: externalLine.* and externalCall.register/finish are app-only. Source: webhooks are accepted
    # (disagreements.md #2).
    webhook_app_only: bool = True
    # Newest source auto-creates an unknown LINE_NUMBER on register; older source errors (disagreements.md #5).
    unknown_line_autocreate: bool = True


class SandboxRestError(Exception):
    """A REST error as it goes on the wire: ``{"error": code, "error_description": description}``."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(f"{code or '<empty>'}: {description}")
        self.code = code
        self.description = description
        self.status = status

    def payload(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


class ErrorSpec(NamedTuple):
    """An error with a fixed code and HTTP status (auth, platform and OAuth errors)."""

    code: str
    description: str
    status: int

    def exc(self) -> SandboxRestError:
        return SandboxRestError(self.code, self.description, self.status)


# Auth-stage errors are OAuthException in source, which is always 401 (disagreements.md #7).
NO_AUTH_FOUND = ErrorSpec("NO_AUTH_FOUND", "Wrong authorization data", 401)
INVALID_TOKEN = ErrorSpec("invalid_token", "Unable to get application by token", 401)
EXPIRED_TOKEN = ErrorSpec("expired_token", "The access token provided has expired", 401)
INVALID_CREDENTIALS = ErrorSpec("INVALID_CREDENTIALS", "Invalid request credentials", 401)
WRONG_AUTH_TYPE = ErrorSpec("WRONG_AUTH_TYPE", "Current authorization type is denied for this method", 403)
METHOD_NOT_FOUND = ErrorSpec("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
QUERY_LIMIT_EXCEEDED = ErrorSpec("QUERY_LIMIT_EXCEEDED", "Too many requests", 503)
CALL_ID_NOT_STRING = ErrorSpec("INVALID_ARGUMENT", "CALL_ID must be a string", 400)
OAUTH_INVALID_REQUEST = ErrorSpec("invalid_request", "Unsupported grant_type, only refresh_token is supported", 400)
OAUTH_INVALID_CLIENT = ErrorSpec("invalid_client", "Invalid client_id or client_secret", 401)
OAUTH_INVALID_GRANT = ErrorSpec("invalid_grant", "Invalid refresh token", 400)


class Msg:
    """Texts of method-specific errors (sent with ``config.error_core_code``).

    Where the docs and the server source word a message differently, the source wording is used, because
    that is what a live portal sends (methods.json ``source_description``); the docs variant is noted.
    """

    NUMBER_EMPTY = "NUMBER should not be empty"
    LINE_EXISTS = "Line already exists"
    NO_FIELDS_TO_UPDATE = "There are no fields to update"
    LINE_NOT_FOUND = "Could not find line with number {number}"
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


# --- PHP-style casts: the server casts params loosely, and clients send strings over form encoding. ---

_NUMERIC_PREFIX = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def php_float(value: Any) -> float:
    """``(float)$value``: leading numeric prefix of a string, 0 for non-numeric."""
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        match = _NUMERIC_PREFIX.match(value)
        return float(match.group()) if match else 0.0
    if isinstance(value, list | dict):
        return 1.0 if value else 0.0
    return 0.0


def php_int(value: Any) -> int:
    """``(int)$value``."""
    number = php_float(value)
    return int(number) if number == number and abs(number) != float("inf") else 0


def php_str(value: Any) -> str:
    """``(string)$value`` (arrays become "Array", like PHP with a notice)."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, list | dict):
        return "Array"
    return str(value)


def php_bool(value: Any) -> bool:
    """``(bool)$value``: "0" and "" are false."""
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def isset(params: Mapping[str, Any], key: str) -> bool:
    return params.get(key) is not None


def normalize_phone(raw: Any) -> str | None:
    """Digits of a client number with an optional leading "+"; spaces, dashes and parens are ignored.

    Returns the digits (how the portal stores CALLER_ID) or None when the format is unsupported.
    """
    cleaned = re.sub(r"[\s\-()]", "", php_str(raw))
    if not re.fullmatch(r"\+?\d+", cleaned):
        return None
    return cleaned.lstrip("+")


def _digits(raw: Any) -> str:
    return re.sub(r"\D", "", php_str(raw))


# --- Records ---


@dataclass
class SandboxUser:
    id: int
    name: str
    last_name: str
    active: bool = True
    is_admin: bool = False
    phone_inner: str | None = None
    work_phone: str | None = None
    personal_phone: str | None = None
    personal_mobile: str | None = None
    timeman_status: str = "CLOSED"


@dataclass
class CrmEntity:
    type: Literal["CONTACT", "COMPANY", "LEAD"]
    id: int
    name: str
    phones: list[str]
    assigned_by_id: int
    source_id: str | None = None
    created_by_call: str | None = None


@dataclass
class ExternalLine:
    id: int
    number: str
    name: str
    crm_auto_create: str
    app_id: int | None  # None: created through a webhook (REST_APP_ID NULL)


@dataclass
class ActiveCall:
    call_id: str
    user_id: int
    caller_id: str
    incoming: int
    date_create: datetime
    rest_app_id: int | None
    external_line_id: int | None
    external_call_id: str | None
    portal_number: str
    portal_user_id: int | None
    crm_enabled: bool
    crm_entity_type: str | None = None
    crm_entity_id: int | None = None
    created_entities: list[dict[str, Any]] = field(default_factory=list)
    created_lead: int | None = None
    shown_to: set[int] = field(default_factory=set)


@dataclass
class StatisticRecord:
    id: int
    call_id: str
    external_call_id: str | None
    portal_user_id: int
    phone_number: str
    portal_number: str
    incoming: int
    call_duration: int
    call_start_date: datetime
    call_status: int
    call_vote: int | None
    cost: float
    cost_currency: str
    call_failed_code: str
    call_failed_reason: str
    rest_app_id: int | None
    crm_activity_id: int | None
    crm_entity_type: str | None
    crm_entity_id: int | None
    record_url: str = ""
    call_record_id: int | None = None
    transcript_id: int | None = None
    transcript_pending: str = "N"

    def as_result(self) -> dict[str, Any]:
        """The row as telephony.externalCall.finish returns it (methods.json result_example)."""
        result: dict[str, Any] = {
            "CALL_ID": self.call_id,
            "EXTERNAL_CALL_ID": self.external_call_id,
            "PORTAL_USER_ID": self.portal_user_id,
            "PHONE_NUMBER": self.phone_number,
            "PORTAL_NUMBER": self.portal_number,
            "INCOMING": str(self.incoming),  # DB string, as in the docs example
            "CALL_DURATION": self.call_duration,
            # A PHP DateTime object json-encodes as {} (docs example); the real server sends no date here.
            "CALL_START_DATE": {},
            "CALL_STATUS": self.call_status,
            "CALL_VOTE": self.call_vote,
            "COST": self.cost,
            "COST_CURRENCY": self.cost_currency,
            "CALL_FAILED_CODE": self.call_failed_code,
            "CALL_FAILED_REASON": self.call_failed_reason,
            "REST_APP_ID": None if self.rest_app_id is None else str(self.rest_app_id),
            # getRestAppName() returns false when there is no app (webhook calls).
            "REST_APP_NAME": APP_NAME if self.rest_app_id == APP_ID else False,
            "CRM_ACTIVITY_ID": self.crm_activity_id,
            "COMMENT": None,
        }
        # Source adds the CRM keys only when the call has a primary entity.
        if self.crm_entity_type and self.crm_entity_id:
            result["CRM_ENTITY_TYPE"] = self.crm_entity_type
            result["CRM_ENTITY_ID"] = self.crm_entity_id
        result["ID"] = self.id
        return result


@dataclass
class SandboxFile:
    id: int
    call_id: str
    name: str
    content: bytes | None  # None: RECORD_URL mode, the sandbox never downloads
    source_url: str | None = None


@dataclass
class Transcript:
    id: int
    call_id: str
    messages: list[dict[str, Any]]
    cost: float | None
    cost_currency: str | None


@dataclass
class UploadedFile:
    """A multipart file part, handed over by the HTTP layer."""

    filename: str
    content: bytes


@dataclass(frozen=True)
class Caller:
    """Who is calling: an app token (client_id/app_id set) or the incoming webhook (no app context)."""

    auth_type: Literal["oauth", "webhook"]
    user_id: int
    client_id: str | None = None
    app_id: int | None = None
    access_token: str | None = None


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: float
    user_id: int


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "refreshes": self.refreshes}


# A REST method implementation: (portal, params, caller) -> result.
Handler = Callable[["SandboxPortal", Params, Caller], Any]


@dataclass
class _MethodSpec:
    handler: Handler
    app_only: bool  # docs: "works only in the context of an application"


_METHODS: dict[str, _MethodSpec] = {}


def _rest_method(name: str, *, app_only: bool = False) -> Callable[[Handler], Handler]:
    """Register a portal method under its REST name (matched case-insensitively, like CRestServer)."""

    def register(fn: Handler) -> Handler:
        _METHODS[name.lower()] = _MethodSpec(fn, app_only)
        return fn

    return register


def _seed_users() -> dict[int, SandboxUser]:
    users = [
        SandboxUser(1, "Admin", "Sandbox", is_admin=True, phone_inner="100", work_phone="+1 555 0100"),
        SandboxUser(2, "Olivia", "Operator", phone_inner="101", personal_mobile="+1 555 0101", timeman_status="OPENED"),
        SandboxUser(3, "Ian", "Inactive", active=False, phone_inner="102"),
    ]
    return {user.id: user for user in users}


def _seed_crm() -> dict[tuple[str, int], CrmEntity]:
    entities = [
        CrmEntity("CONTACT", 651, "John Doe", ["+1 906 219 5047"], assigned_by_id=2),
        CrmEntity("COMPANY", 643, "Daisy LLC", ["+1 906 219 5047"], assigned_by_id=2),
        CrmEntity("LEAD", 201, "Website enquiry", ["+1 906 219 5047"], assigned_by_id=1),
        CrmEntity("CONTACT", 652, "Jane Roe", ["+44 20 7946 0958"], assigned_by_id=1),
        CrmEntity("COMPANY", 644, "Acme GmbH", ["+49 30 901820"], assigned_by_id=1),
        CrmEntity("LEAD", 202, "Trade fair contact", ["+33 1 70 36 39 50"], assigned_by_id=2),
    ]
    return {(entity.type, entity.id): entity for entity in entities}


# searchCrmEntities returns CONTACT, then LEAD, then COMPANY; register picks its primary entity the same way.
_CRM_SEARCH_ORDER = ("CONTACT", "LEAD", "COMPANY")


class SandboxPortal:
    """The emulated portal. Thread-safe: every public entry point holds ``lock``."""

    def __init__(self, config: SandboxConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config or SandboxConfig()
        #: Wall clock; tests may replace it to move time forward (token expiry, the 30-minute window).
        self.clock = clock
        #: "http://host:port", set by the runner once the port is known (or by the app on first request).
        self.base_url = ""
        self.member_id = secrets.token_hex(16)
        self.lock = threading.RLock()
        self.stats = Stats()
        self.users = _seed_users()
        self.crm = _seed_crm()
        self.lines: dict[int, ExternalLine] = {}
        self.calls: dict[str, ActiveCall] = {}
        self.statistics: dict[str, StatisticRecord] = {}
        self.files: dict[int, SandboxFile] = {}
        self.transcripts: dict[int, Transcript] = {}
        self.activities: dict[int, dict[str, Any]] = {}
        self._upload_tokens: dict[str, str] = {}
        self._access_tokens: dict[str, TokenPair] = {}
        self._refresh_tokens: dict[str, TokenPair] = {}
        self._ids: Counter[str] = Counter({"line": 0, "stat": 0, "file": 9000, "transcript": 0, "activity": 7900})

    # --- infrastructure ---

    def _next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    def _core(self, template: str, **fmt: Any) -> SandboxRestError:
        return SandboxRestError(self.config.error_core_code, template.format(**fmt), 400)

    def call(self, method: str, params: Params, caller: Caller) -> Any:
        """Run a REST method by (case-insensitive) name."""
        spec = _METHODS.get(method.lower())
        if spec is None:
            raise METHOD_NOT_FOUND.exc()
        if spec.app_only and self.config.webhook_app_only and caller.auth_type != "oauth":
            raise WRONG_AUTH_TYPE.exc()
        with self.lock:
            return spec.handler(self, params, caller)

    @staticmethod
    def method_names() -> list[str]:
        return sorted(_METHODS)

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = Stats()

    # --- OAuth ---

    def issue_tokens(self, user_id: int = 1) -> TokenPair:
        """Issue a fresh token pair to the app (what installation or a refresh hands out)."""
        with self.lock:
            pair = TokenPair(
                access_token=secrets.token_hex(35),
                refresh_token=secrets.token_hex(35),
                expires_at=self.clock() + self.config.access_token_ttl,
                user_id=user_id,
            )
            self._access_tokens[pair.access_token] = pair
            self._refresh_tokens[pair.refresh_token] = pair
            return pair

    def authenticate_token(self, token: str | None) -> Caller:
        if not token:
            raise NO_AUTH_FOUND.exc()
        with self.lock:
            pair = self._access_tokens.get(token)
            if pair is None:
                raise INVALID_TOKEN.exc()
            if self.clock() >= pair.expires_at:
                raise EXPIRED_TOKEN.exc()
        return Caller("oauth", pair.user_id, client_id=self.config.client_id, app_id=APP_ID, access_token=token)

    def authenticate_webhook(self, user_id: str, code: str) -> Caller:
        expected = (str(self.config.webhook_user_id), self.config.webhook_code)
        if (user_id, code) != expected:
            raise INVALID_CREDENTIALS.exc()
        return Caller("webhook", self.config.webhook_user_id)

    def expire_all_tokens(self) -> int:
        """Make every issued access token expired; returns how many there were."""
        with self.lock:
            past = self.clock() - 1
            for token, pair in self._access_tokens.items():
                expired = TokenPair(pair.access_token, pair.refresh_token, past, pair.user_id)
                self._access_tokens[token] = expired
                self._refresh_tokens[pair.refresh_token] = expired
            return len(self._access_tokens)

    def oauth_token(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The /oauth/token/ endpoint. Refresh tokens are single-use: using one revokes it and its access token."""
        if params.get("grant_type") != "refresh_token":
            raise OAUTH_INVALID_REQUEST.exc()
        if params.get("client_id") != self.config.client_id or params.get("client_secret") != self.config.client_secret:
            raise OAUTH_INVALID_CLIENT.exc()
        with self.lock:
            used = self._refresh_tokens.pop(php_str(params.get("refresh_token")), None)
            if used is None:
                raise OAUTH_INVALID_GRANT.exc()
            self._access_tokens.pop(used.access_token, None)
            pair = self.issue_tokens(used.user_id)
            self.stats.refreshes += 1
        return self.token_response(pair)

    def token_response(self, pair: TokenPair) -> dict[str, Any]:
        return {
            "access_token": pair.access_token,
            "expires_in": int(self.config.access_token_ttl),
            "expires": int(pair.expires_at),
            "refresh_token": pair.refresh_token,
            "scope": SANDBOX_SCOPE,
            "domain": urlsplit(self.base_url).netloc,
            "server_endpoint": f"{self.base_url}/rest/",
            "client_endpoint": f"{self.base_url}/rest/",
            "member_id": self.member_id,
            "status": "L",
            "user_id": pair.user_id,
        }

    # --- lookups ---

    def _user_by_inner_phone(self, phone: Any) -> SandboxUser | None:
        """Helper::getUserByPhone: only active users match."""
        wanted = php_str(phone)
        if not wanted:
            return None
        return next((u for u in self.users.values() if u.active and u.phone_inner == wanted), None)

    def _resolve_user_id(self, params: Params) -> int:
        """(int)USER_ID, else the active user with USER_PHONE_INNER; 0 when neither resolves."""
        user_id = php_int(params.get("USER_ID"))
        if user_id:
            return user_id
        user = self._user_by_inner_phone(params.get("USER_PHONE_INNER"))
        return user.id if user else 0

    def _require_active_user(self, user_id: int) -> None:
        user = self.users.get(user_id)
        if user is None or not user.active:
            raise self._core(Msg.USER_INACTIVE)

    def _find_line(self, number: str, app_id: int | None) -> ExternalLine | None:
        return next((ln for ln in self.lines.values() if ln.number == number and ln.app_id == app_id), None)

    def _find_crm(self, phone: Any) -> list[CrmEntity]:
        digits = _digits(phone)
        if not digits:
            return []
        found = [e for e in self.crm.values() if any(_digits(p) == digits for p in e.phones)]
        return sorted(found, key=lambda e: (_CRM_SEARCH_ORDER.index(e.type), e.id))

    def _statistic(self, call_id: Any) -> StatisticRecord | None:
        return self.statistics.get(call_id) if isinstance(call_id, str) else None

    # --- telephony.externalLine.* ---

    @_rest_method("telephony.externalLine.add", app_only=True)
    def external_line_add(self, params: Params, caller: Caller) -> dict[str, int]:
        number = php_str(params.get("NUMBER")).strip()
        raw_auto_create = params.get("CRM_AUTO_CREATE")  # (CRM_AUTO_CREATE ?? "Y") === "Y"
        crm_auto_create = "N" if raw_auto_create is not None and raw_auto_create != "Y" else "Y"
        if not number:
            raise self._core(Msg.NUMBER_EMPTY)
        if self._find_line(number, caller.app_id):
            raise self._core(Msg.LINE_EXISTS)
        line = ExternalLine(self._next_id("line"), number, php_str(params.get("NAME")), crm_auto_create, caller.app_id)
        self.lines[line.id] = line
        return {"ID": line.id}

    @_rest_method("telephony.externalLine.update", app_only=True)
    def external_line_update(self, params: Params, caller: Caller) -> dict[str, int]:
        changes: dict[str, str] = {}
        if isset(params, "NAME"):
            changes["name"] = php_str(params["NAME"])
        if isset(params, "CRM_AUTO_CREATE"):
            changes["crm_auto_create"] = "Y" if params["CRM_AUTO_CREATE"] == "Y" else "N"
        if not changes:  # checked before NUMBER in source
            raise self._core(Msg.NO_FIELDS_TO_UPDATE)
        line = self._line_for_change(params, caller)
        for attr, value in changes.items():
            setattr(line, attr, value)
        return {"ID": line.id}

    @_rest_method("telephony.externalLine.delete", app_only=True)
    def external_line_delete(self, params: Params, caller: Caller) -> list[Any]:
        line = self._line_for_change(params, caller)
        del self.lines[line.id]
        return []  # an empty Result serialises as []

    def _line_for_change(self, params: Params, caller: Caller) -> ExternalLine:
        number = php_str(params.get("NUMBER")).strip()
        if not number:
            raise self._core(Msg.NUMBER_EMPTY)
        line = self._find_line(number, caller.app_id)
        if line is None:
            raise self._core(Msg.LINE_NOT_FOUND, number=number)
        return line

    @_rest_method("telephony.externalLine.get", app_only=True)
    def external_line_get(self, params: Params, caller: Caller) -> list[dict[str, str]]:
        return [
            {"NUMBER": ln.number, "NAME": ln.name, "CRM_AUTO_CREATE": ln.crm_auto_create}
            for ln in self.lines.values()
            if ln.app_id == caller.app_id
        ]

    # --- telephony.externalCall.* ---

    @_rest_method("telephony.externalCall.searchCrmEntities")
    def search_crm_entities(self, params: Params, caller: Caller) -> list[dict[str, Any]]:
        phone = php_str(params.get("PHONE_NUMBER"))
        if phone == "":
            raise self._core(Msg.PHONE_EMPTY)
        result = []
        for entity in self._find_crm(phone):
            user = self.users.get(entity.assigned_by_id)
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

    @_rest_method("telephony.externalCall.register", app_only=True)
    def external_call_register(self, params: Params, caller: Caller) -> dict[str, Any]:
        # Validation order is the source's (methods.json source_notes).
        user_id = self._resolve_user_id(params)
        if not user_id:
            raise self._core(Msg.USER_NOT_SET)
        call_type = self._call_type(params.get("TYPE"))
        if call_type is None:
            raise self._core(Msg.UNKNOWN_TYPE)
        now = self.clock()
        start_date = datetime.fromtimestamp(now, UTC)
        raw_date = params.get("CALL_START_DATE")
        if raw_date is not None and raw_date != "":
            parsed = _parse_iso8601(raw_date)
            if parsed is None:
                raise self._core(Msg.BAD_START_DATE)
            start_date = parsed
        phone = normalize_phone(params.get("PHONE_NUMBER"))
        if not phone:
            raise self._core(Msg.BAD_PHONE)
        self._require_active_user(user_id)
        line = self._line_for_call(params, caller)
        external_call_id = php_str(params["EXTERNAL_CALL_ID"]) if isset(params, "EXTERNAL_CALL_ID") else None
        show = php_bool(params["SHOW"]) if isset(params, "SHOW") else True

        duplicate = self._find_duplicate(user_id, phone, call_type, caller.app_id, line, external_call_id, now)
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

        inner_user = self._user_by_inner_phone(phone)  # a call to a colleague: no CRM
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
        self._bind_crm(call, params)
        if call.crm_entity_id is None and call.crm_enabled and _crm_create_requested(params):
            self._create_lead(call, params)
        if show:
            call.shown_to.add(user_id)
        self.calls[call.call_id] = call
        return {
            "CALL_ID": call.call_id,
            "CRM_CREATED_LEAD": call.created_lead,
            "CRM_CREATED_ENTITIES": list(call.created_entities),
            "CRM_ENTITY_TYPE": call.crm_entity_type or "",
            "CRM_ENTITY_ID": call.crm_entity_id or None,
        }

    @staticmethod
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

    def _line_for_call(self, params: Params, caller: Caller) -> ExternalLine | None:
        if not isset(params, "LINE_NUMBER"):
            return None
        number = php_str(params["LINE_NUMBER"]).strip()[:50]
        if not number:
            return None
        line = self._find_line(number, caller.app_id)
        if line is None:
            if not self.config.unknown_line_autocreate:
                raise self._core(Msg.LINE_NOT_FOUND, number=number)
            line = ExternalLine(self._next_id("line"), number, "", "Y", caller.app_id)
            self.lines[line.id] = line
        return line

    def _find_duplicate(
        self,
        user_id: int,
        phone: str,
        call_type: int,
        app_id: int | None,
        line: ExternalLine | None,
        external_call_id: str | None,
        now: float,
    ) -> ActiveCall | None:
        """The source's dedupe filter on the ACTIVE-call table (disagreements.md #6)."""
        for call in self.calls.values():
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

    def _bind_crm(self, call: ActiveCall, params: Params) -> None:
        if isset(params, "CRM_ENTITY_TYPE") and isset(params, "CRM_ENTITY_ID"):
            call.crm_entity_type = php_str(params["CRM_ENTITY_TYPE"])
            call.crm_entity_id = php_int(params["CRM_ENTITY_ID"]) or None
        elif call.crm_enabled:
            found = self._find_crm(call.caller_id)
            if found:
                call.crm_entity_type, call.crm_entity_id = found[0].type, found[0].id

    def _create_lead(self, call: ActiveCall, params: Params) -> None:
        lead_id = max((e.id for e in self.crm.values() if e.type == "LEAD"), default=200) + 1
        direction = "Outgoing" if call.incoming == 1 else "Incoming"
        lead = CrmEntity(
            "LEAD",
            lead_id,
            f"+{call.caller_id} - {direction} call",
            [f"+{call.caller_id}"],
            assigned_by_id=call.user_id,
            source_id=php_str(params.get("CRM_SOURCE")) or "CALL",
            created_by_call=call.call_id,
        )
        self.crm[("LEAD", lead_id)] = lead
        call.created_lead = lead_id
        call.created_entities.append({"ENTITY_TYPE": "LEAD", "ENTITY_ID": lead_id})
        call.crm_entity_type, call.crm_entity_id = "LEAD", lead_id

    @_rest_method("telephony.externalCall.finish", app_only=True)
    def external_call_finish(self, params: Params, caller: Caller) -> dict[str, Any]:
        user_id = self._resolve_user_id(params)
        if not user_id:  # checked before CALL_ID in source
            raise self._core(Msg.USER_NOT_SET)
        call_id = params.get("CALL_ID")
        if not isinstance(call_id, str):
            raise CALL_ID_NOT_STRING.exc()
        call = self.calls.get(call_id)
        if call is None:
            raise self._core(Msg.CALL_NOT_REGISTERED)
        self._require_active_user(user_id)

        duration = php_int(params.get("DURATION"))
        activity_id = None
        if call.crm_entity_type and call.crm_entity_id:
            activity_id = self._next_id("activity")
            self.activities[activity_id] = {
                "CALL_ID": call_id,
                "OWNER_TYPE": call.crm_entity_type,
                "OWNER_ID": call.crm_entity_id,
            }
        for created in call.created_entities:  # auto-created entities go to the finishing user
            entity = self.crm.get((created["ENTITY_TYPE"], created["ENTITY_ID"]))
            if entity:
                entity.assigned_by_id = user_id
        record = StatisticRecord(
            id=self._next_id("stat"),
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
        self.statistics[call_id] = record
        del self.calls[call_id]  # finished calls leave the active table, hence no dedupe after finish
        return record.as_result()

    @_rest_method("telephony.externalCall.show")
    def external_call_show(self, params: Params, caller: Caller) -> bool:
        call = self.calls.get(php_str(params.get("CALL_ID")))
        if call is None:
            return False
        call.shown_to.update(_target_users(params, call))
        return True

    @_rest_method("telephony.externalCall.hide")
    def external_call_hide(self, params: Params, caller: Caller) -> bool:
        call = self.calls.get(php_str(params.get("CALL_ID")))
        if call is None:
            return False
        call.shown_to.difference_update(_target_users(params, call))
        return True

    @_rest_method("telephony.externalCall.attachRecord")
    def external_call_attach_record(self, params: Params, caller: Caller) -> dict[str, Any]:
        call_id = php_str(params.get("CALL_ID"))
        if isset(params, "RECORD_URL"):
            record = self._finished_call(call_id)
            url = php_str(params["RECORD_URL"])
            # The sandbox never fetches the URL, so the "Server returns HTTP error code" branch cannot happen.
            name = php_str(params.get("FILENAME")) or urlsplit(url).path.rsplit("/", 1)[-1] or url
            return {"FILE_ID": self._store_file(record, name, None, source_url=url)}
        if not isset(params, "FILENAME"):
            raise self._core(Msg.RECORD_PARAMS_MISSING)
        record = self._finished_call(call_id)
        if not isset(params, "FILE_CONTENT"):
            # Source returns the upload URL before looking at the file name (disagreements.md #16).
            return {"uploadUrl": self._upload_url(call_id, caller), "fieldName": "file"}
        name = php_str(params["FILENAME"])
        if name == "":
            raise self._core(Msg.FILE_NAME_EMPTY)
        self._check_extension(name)
        return {"FILE_ID": self._store_file(record, name, self._decode_content(params["FILE_CONTENT"]))}

    @_rest_method("upload")
    def upload(self, params: Params, caller: Caller) -> dict[str, int]:
        """The pseudo-method behind attachRecord's uploadUrl (multipart field "file")."""
        call_id = self._upload_tokens.get(php_str(params.get("token")))
        if call_id is None:
            raise self._core(Msg.UPLOAD_BAD_TOKEN)
        upload = params.get("file")
        if not isinstance(upload, UploadedFile):
            raise self._core(Msg.UPLOAD_NO_FILE)
        self._check_extension(upload.filename)
        record = self._finished_call(call_id)
        return {"FILE_ID": self._store_file(record, upload.filename, upload.content)}

    def _finished_call(self, call_id: str) -> StatisticRecord:
        record = self._statistic(call_id)
        if record is None:
            raise self._core(Msg.CALL_NOT_FINISHED)
        return record

    def _check_extension(self, name: str) -> None:
        _, dot, extension = name.rpartition(".")
        if not dot or extension.lower() not in RECORD_EXTENSIONS:
            raise self._core(Msg.BAD_EXTENSION)

    def _decode_content(self, content: Any) -> bytes:
        """CRestUtil::saveFile: empty content and non-base64 content are different errors."""
        text = php_str(content)
        if text == "":
            raise self._core(Msg.FILE_CONTENT_EMPTY)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise self._core(Msg.FILE_NOT_BASE64) from None
        if not data:
            raise self._core(Msg.FILE_CONTENT_EMPTY)
        return data

    def _store_file(
        self, record: StatisticRecord, name: str, content: bytes | None, source_url: str | None = None
    ) -> int:
        # A repeated attach replaces the record; the old file stays (source deletes it in a background job).
        file = SandboxFile(self._next_id("file"), record.call_id, name, content, source_url)
        self.files[file.id] = file
        record.call_record_id = file.id
        return file.id

    def _upload_url(self, call_id: str, caller: Caller) -> str:
        token = secrets.token_urlsafe(24)
        self._upload_tokens[token] = call_id
        if caller.auth_type == "webhook":
            prefix = f"{self.base_url}/rest/{self.config.webhook_user_id}/{self.config.webhook_code}/upload.json?"
        else:
            prefix = f"{self.base_url}/rest/upload.json?auth={quote(caller.access_token or '')}&"
        return f"{prefix}token={quote(token)}"

    # --- telephony.call.attachTranscription ---

    @_rest_method("telephony.call.attachTranscription")
    def call_attach_transcription(self, params: Params, caller: Caller) -> dict[str, int]:
        if not isset(params, "CALL_ID"):
            raise self._core(Msg.CALL_ID_NOT_SET)
        messages = params.get("MESSAGES")
        if not isinstance(messages, list | dict):
            raise self._core(Msg.MESSAGES_NOT_ARRAY)
        items = messages.items() if isinstance(messages, dict) else enumerate(messages)
        parsed = [self._transcript_message(k, message) for k, message in items]
        call_id = php_str(params["CALL_ID"])
        record = self._statistic(call_id)
        if record is None:
            raise self._core(Msg.TRANSCRIPT_CALL_NOT_FOUND, call_id=call_id)
        cost = php_float(params.get("COST")) if php_bool(params.get("COST")) else None
        currency = php_str(params.get("COST_CURRENCY")) if cost is not None and isset(params, "COST_CURRENCY") else None
        transcript = Transcript(self._next_id("transcript"), call_id, parsed, cost, currency)
        self.transcripts[transcript.id] = transcript
        record.transcript_id, record.transcript_pending = transcript.id, "N"
        return {"TRANSCRIPT_ID": transcript.id}

    def _transcript_message(self, k: Any, message: Any) -> dict[str, Any]:
        fields: Mapping[str, Any] = message if isinstance(message, dict) else {}
        side = fields.get("SIDE")
        if side not in ("Client", "User"):  # strict comparison in source
            raise self._core(Msg.BAD_SIDE, k=k)
        start, stop = php_int(fields.get("START_TIME")), php_int(fields.get("STOP_TIME"))
        if start < 0:
            raise self._core(Msg.BAD_START_TIME, k=k)
        if stop <= 0:
            raise self._core(Msg.BAD_STOP_TIME, k=k)
        text = php_str(fields.get("MESSAGE"))
        if text == "":
            raise self._core(Msg.EMPTY_MESSAGE, k=k)
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


def _parse_iso8601(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    # A date without an offset is read in the portal's time zone; the sandbox portal runs on UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
