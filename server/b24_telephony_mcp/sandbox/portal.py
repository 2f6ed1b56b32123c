"""The emulated portal: config, clock, lock, tokens and OAuth, authentication, scopes, dispatch, shared lookups.

Pure Python, no HTTP. A REST method is a :class:`Method`: a handler ``(portal, params, caller) -> result`` that
returns the ``result`` value (a :class:`Page` for a paged list) or raises :class:`SandboxRestError`, plus how it
is registered (app-only, scope, REST version). The handlers live in ``methods/<toolset>.py``;
``methods/__init__.py`` holds the registry.
Shared tables (users, CRM, lines, calls, statistics, files, transcripts) are attributes of the portal; a toolset
keeps its own tables in a dataclass fetched with :meth:`SandboxPortal.state`. Behaviour follows the server
source as recorded in ``bitrix24-facts/methods.json`` (``source_notes``): validation order, messages, casts.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from .calls import BASIC_SCOPE, Caller, Fault, Params
from .config import SandboxConfig
from .errors import (
    APP_NOT_INSTALLED,
    EXPIRED_TOKEN,
    INSUFFICIENT_SCOPE,
    INSUFFICIENT_SCOPE_WEBHOOK,
    INVALID_CREDENTIALS,
    INVALID_TOKEN,
    METHOD_NOT_FOUND,
    NO_AUTH_FOUND,
    OAUTH_INVALID_CLIENT,
    OAUTH_INVALID_CODE,
    OAUTH_INVALID_GRANT,
    OAUTH_INVALID_REQUEST,
    V3_INSUFFICIENT_SCOPE,
    WRONG_AUTH_TYPE,
    ApiVersion,
    SandboxRestError,
)
from .php import digits, php_int, php_str
from .records import (
    APP_ID,
    ActiveCall,
    CrmEntity,
    ExternalLine,
    SandboxFile,
    SandboxUser,
    StatisticRecord,
    Transcript,
    seed_crm,
    seed_users,
)

T = TypeVar("T")

#: Lifetime of an authorization code (settings/oauth/index.md: "The lifetime of the authorization code is 30 s").
AUTH_CODE_TTL = 30.0


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: float
    user_id: int


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    """HTTP requests per lower-cased method (a batch counts once, under ``batch``)."""
    batched: Counter[str] = field(default_factory=Counter)
    """Commands run inside batches, per lower-cased method."""
    refreshes: int = 0
    limited: int = 0
    """REST requests the leaky bucket refused (503 QUERY_LIMIT_EXCEEDED)."""
    token_requests: int = 0
    """Requests that reached the OAuth token endpoint, granted or not."""

    def as_dict(self) -> dict[str, Any]:
        # "batched" only once a batch ran, so the stats of a portal never sent one read as before.
        batched = {"batched": dict(self.batched)} if self.batched else {}
        return {
            "requests": dict(self.requests),
            **batched,
            "refreshes": self.refreshes,
            "limited": self.limited,
            "token_requests": self.token_requests,
        }


# A REST method implementation: (portal, params, caller) -> result (a Page for list methods).
Handler = Callable[["SandboxPortal", Params, Caller], Any]


@dataclass(frozen=True)
class Method:
    """How a REST method is registered on the portal."""

    handler: Handler
    app_only: bool = False  # docs: "works only in the context of an application"
    scope: str = "telephony"  # the scope it is registered under in OnRestServiceBuildDescription
    api: ApiVersion = 2  # 2: served at /rest/...; 3: REST 3.0, served at /rest/api/...


def method_table(methods: Mapping[str, Method]) -> dict[str, Method]:
    """A module's methods keyed by lower-cased REST name (CRestServer matches names case-insensitively)."""
    table = {name.lower(): method for name, method in methods.items()}
    if len(table) != len(methods):
        raise ValueError("two method names differ only in case")
    return table


# searchCrmEntities returns CONTACT, then LEAD, then COMPANY; register picks its primary entity the same way.
_CRM_SEARCH_ORDER = ("CONTACT", "LEAD", "COMPANY")


class SandboxPortal:
    """The emulated portal. Thread-safe: every public entry point holds ``lock``."""

    def __init__(self, config: SandboxConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        from .methods import METHODS  # the method modules import this module

        # A copy: settings change at run time (handler path, scopes), and two portals made from one config object
        # must not change each other's.
        self.config = replace(config) if config else SandboxConfig()
        #: Wall clock; tests may replace it to move time forward (token expiry, the 30-minute window).
        self.clock = clock
        #: The registry this portal dispatches to (lower-cased REST name -> Method).
        self.methods: Mapping[str, Method] = METHODS
        #: "http://host:port", set by the runner once the port is known (or by the app on first request).
        self.base_url = ""
        self.member_id = secrets.token_hex(16)
        self.lock = threading.RLock()
        self.stats = Stats()
        #: Canned answers queued through /_sandbox/faults (see app.py); taken under ``lock``.
        self.faults: list[Fault] = []
        self.users = seed_users()
        self.crm = seed_crm()
        self.lines: dict[int, ExternalLine] = {}
        self.calls: dict[str, ActiveCall] = {}
        self.statistics: dict[str, StatisticRecord] = {}
        self.files: dict[int, SandboxFile] = {}
        self.transcripts: dict[int, Transcript] = {}
        self.activities: dict[int, dict[str, Any]] = {}
        self._toolset_state: dict[type[Any], Any] = {}
        self._access_tokens: dict[str, TokenPair] = {}
        self._refresh_tokens: dict[str, TokenPair] = {}
        self._auth_codes: dict[str, tuple[float, int]] = {}  # code -> (expires at, user id)
        # Statistic ids 1..seed_calls belong to the seeded call history (methods/statistics.py, made on first use).
        self._ids: Counter[str] = Counter(
            {"line": 0, "stat": self.config.seed_calls, "file": 9000, "transcript": 0, "activity": 7900}
        )

    # --- infrastructure ---

    def state(self, kind: type[T]) -> T:
        """The portal's one instance of a toolset's own tables, created with ``kind()`` on first use."""
        with self.lock:
            if kind not in self._toolset_state:
                self._toolset_state[kind] = kind()
            instance: T = self._toolset_state[kind]
            return instance

    def reset_state(self, kind: type[Any]) -> None:
        """Drop a toolset's tables: the next :meth:`state` starts from the seeds again (tests sharing a portal)."""
        with self.lock:
            self._toolset_state.pop(kind, None)

    def next_id(self, kind: str) -> int:
        """The next id of a kind of record; a new kind starts at 1."""
        self._ids[kind] += 1
        return self._ids[kind]

    def core(self, template: str, **fmt: Any) -> SandboxRestError:
        """A method-specific error (sent with ``config.error_core_code``, HTTP 400)."""
        return SandboxRestError(self.config.error_core_code, template.format(**fmt), 400)

    def scope_list(self, caller: Caller) -> list[str]:
        """The scopes the caller's application (or webhook) was granted, in the configured order."""
        granted = self.config.scopes if caller.auth_type == "oauth" else self.config.webhook_scopes
        return [scope.strip() for scope in granted.split(",") if scope.strip()]

    def granted_scopes(self, caller: Caller) -> frozenset[str]:
        return frozenset(self.scope_list(caller))

    def call(self, method: str, params: Params, caller: Caller, api: ApiVersion = 2) -> Any:
        """Run a REST method by (case-insensitive) name, as called at the route of REST version ``api``."""
        spec = self.methods.get(method.lower())
        if spec is None or spec.api != api:
            raise METHOD_NOT_FOUND.exc()
        if spec.scope != BASIC_SCOPE and spec.scope not in self.granted_scopes(caller):
            if api == 3:
                raise V3_INSUFFICIENT_SCOPE.exc()
            raise (INSUFFICIENT_SCOPE if caller.auth_type == "oauth" else INSUFFICIENT_SCOPE_WEBHOOK).exc()
        if spec.app_only and self.config.webhook_app_only and caller.auth_type != "oauth":
            raise WRONG_AUTH_TYPE.exc()
        with self.lock:
            return spec.handler(self, params, caller)

    def take_fault(self, method: str, *, in_batch: bool = False) -> Fault | None:
        """The first queued fault for ``method`` (lower-cased), counted down; None when none applies."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, in_batch=in_batch):
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def method_names(self) -> list[str]:
        return sorted(self.methods)

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

    def authorize(self, params: Mapping[str, Any], user_id: int = 1) -> str:
        """/oauth/authorize/: the user (already signed in, approving at once) is sent back to the app's handler
        path with a single-use code that lives 30 s. Returns that redirect address."""
        if params.get("client_id") != self.config.client_id:
            raise OAUTH_INVALID_CLIENT.exc()
        if not self.config.app_installed:
            raise APP_NOT_INSTALLED.exc()
        code = secrets.token_hex(16)
        with self.lock:
            self._auth_codes[code] = (self.clock() + AUTH_CODE_TTL, user_id)
        answer = {
            "code": code,
            "state": php_str(params.get("state")),
            "domain": urlsplit(self.base_url).netloc,
            "member_id": self.member_id,
            "scope": self.config.scopes,
            "server_domain": urlsplit(self.base_url).netloc,
        }
        separator = "&" if "?" in self.config.handler_url else "?"
        return f"{self.config.handler_url}{separator}{urlencode(answer)}"

    def oauth_token(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The /oauth/token/ endpoint: `authorization_code` (a code works once, within 30 s) and `refresh_token`
        (single-use: using one revokes it and its access token)."""
        grant = params.get("grant_type")
        if grant not in ("refresh_token", "authorization_code"):
            raise OAUTH_INVALID_REQUEST.exc()
        if params.get("client_id") != self.config.client_id or params.get("client_secret") != self.config.client_secret:
            raise OAUTH_INVALID_CLIENT.exc()
        if not self.config.app_installed:
            raise OAUTH_INVALID_CLIENT.exc()  # error-codes.md: "The application may not be installed"
        with self.lock:
            if grant == "authorization_code":
                expires_at, user_id = self._auth_codes.pop(php_str(params.get("code")), (0.0, 0))
                if self.clock() >= expires_at:
                    raise OAUTH_INVALID_CODE.exc()
                return self.token_response(self.issue_tokens(user_id))
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
            "scope": self.config.scopes,
            "domain": urlsplit(self.base_url).netloc,
            "server_endpoint": f"{self.base_url}/rest/",
            "client_endpoint": f"{self.base_url}/rest/",
            "member_id": self.member_id,
            "status": "L",
            "user_id": pair.user_id,
        }

    # --- shared lookups ---

    def user_by_inner_phone(self, phone: Any) -> SandboxUser | None:
        """Helper::getUserByPhone: only active users match."""
        wanted = php_str(phone)
        if not wanted:
            return None
        return next((u for u in self.users.values() if u.active and u.phone_inner == wanted), None)

    def resolve_user_id(self, params: Params) -> int:
        """(int)USER_ID, else the active user with USER_PHONE_INNER; 0 when neither resolves."""
        user_id = php_int(params.get("USER_ID"))
        if user_id:
            return user_id
        user = self.user_by_inner_phone(params.get("USER_PHONE_INNER"))
        return user.id if user else 0

    def find_line(self, number: str, app_id: int | None) -> ExternalLine | None:
        """The external line with this number, as seen by this app (None: created through a webhook)."""
        return next((ln for ln in self.lines.values() if ln.number == number and ln.app_id == app_id), None)

    def find_crm(self, phone: Any) -> list[CrmEntity]:
        """CRM entities with this phone, in searchCrmEntities order."""
        wanted = digits(phone)
        if not wanted:
            return []
        found = [e for e in self.crm.values() if any(digits(p) == wanted for p in e.phones)]
        return sorted(found, key=lambda e: (_CRM_SEARCH_ORDER.index(e.type), e.id))

    def statistic(self, call_id: Any) -> StatisticRecord | None:
        """The finished call's statistic row (CALL_ID must be a string, as in source)."""
        return self.statistics.get(call_id) if isinstance(call_id, str) else None
