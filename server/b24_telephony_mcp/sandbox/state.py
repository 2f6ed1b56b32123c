"""The portal as a REST method sees it: config, clock, lock, tables, ids, scopes, dispatch, shared lookups, and
the outbox online events leave through.

Pure Python, no HTTP. A REST method is a :class:`Method`: a handler ``(portal, params, caller) -> result`` that
returns the ``result`` value (a :class:`~.calls.Page` for a paged list) or raises :class:`SandboxRestError`, plus
how it is registered (app-only, scope, REST version). The handlers live in ``methods/<toolset>.py`` and receive a
:class:`PortalState`; ``methods/__init__.py`` holds the registry, which the portal (``portal.py``, tokens and
OAuth on top of this state) hands to :class:`PortalState` when it is made.
Shared tables (users, CRM, lines, calls, statistics, files, transcripts) are attributes of the portal; a toolset
keeps its own tables in a dataclass fetched with :meth:`PortalState.state`. Behaviour follows the server
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

from .calls import BASIC_SCOPE, Caller, Fault, Params
from .config import SandboxConfig
from .delivery import EventOutbox
from .errors import (
    INSUFFICIENT_SCOPE,
    INSUFFICIENT_SCOPE_WEBHOOK,
    METHOD_NOT_FOUND,
    V3_INSUFFICIENT_SCOPE,
    WRONG_AUTH_TYPE,
    ApiVersion,
    SandboxRestError,
)
from .php import digits, php_int, php_str
from .records import (
    ActiveCall,
    CrmEntity,
    EventHandler,
    ExternalLine,
    OfflineEvent,
    SandboxFile,
    SandboxUser,
    StatisticRecord,
    Transcript,
    seed_crm,
    seed_users,
)

T = TypeVar("T")


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
    callers: Counter[int] = field(default_factory=Counter)
    """REST requests an application's token made, per the user it was issued to (which user's rights a call ran
    with); in-process only, not in `/_sandbox/stats`."""

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
Handler = Callable[["PortalState", Params, Caller], Any]


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


class PortalState:
    """The emulated portal's state and dispatch, without its tokens. Thread-safe: every public entry point holds
    ``lock``."""

    def __init__(
        self, methods: Mapping[str, Method], config: SandboxConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        # A copy: settings change at run time (handler path, scopes), and two portals made from one config object
        # must not change each other's.
        self.config = replace(config) if config else SandboxConfig()
        #: Wall clock; tests may replace it to move time forward (token expiry, the 30-minute window).
        self.clock = clock
        #: The registry this portal dispatches to (lower-cased REST name -> Method).
        self.methods: Mapping[str, Method] = methods
        #: "http://host:port", set by the runner once the port is known (or by the app on first request).
        self.base_url = ""
        #: The portal's stable id (token responses, authorization redirects, every event's auth block).
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
        self.event_handlers: dict[int, EventHandler] = {}
        self.offline_events: dict[int, OfflineEvent] = {}
        self.outbox = EventOutbox()
        self._toolset_state: dict[type[Any], Any] = {}
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

    def event_access_token(self, user_id: int) -> str:
        """A fresh access token of the app acting as ``user_id``, for an online event's auth block. Tokens are
        issued by the portal on top of this state (portal.py), so a bare state has none to give."""
        raise NotImplementedError("tokens are issued by SandboxPortal")

    def method_names(self) -> list[str]:
        return sorted(self.methods)

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = Stats()

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

    def add_lead(
        self, name: str, phone: str, assigned_by_id: int, source_id: str, call_id: str | None = None
    ) -> CrmEntity:
        """A new CRM lead with this phone (a call's auto-created lead, a callback form's request)."""
        lead_id = max((e.id for e in self.crm.values() if e.type == "LEAD"), default=200) + 1
        lead = CrmEntity("LEAD", lead_id, name, [phone], assigned_by_id, source_id=source_id, created_by_call=call_id)
        self.crm[("LEAD", lead_id)] = lead
        return lead

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
