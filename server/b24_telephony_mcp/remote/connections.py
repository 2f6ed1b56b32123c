"""The seam of `tools/connection.py` in remote mode: the request's MCP access token -> its grant -> that Bitrix24
user's connection (their pair, their portal's rate bucket, their journal entries).

Nothing is kept per grant between requests: each request's grant, portal and pair come with its access token, read
in one store read by the bearer check (`SignedInToken`), and its connection is built from them (the pair's refresh
runs the one `OAuthAuth` sequence through `GrantPairStore`, single-flight per user); what is shared is the HTTP pool,
the journal, and one rate bucket per portal.

The events (with the events toolset) are kept per portal: each request's context gets its own portal's hub
(`EventHubs`, keyed by `portal_key`), never another's; an online post goes to the hub of the portal whose
installation token it carries; a portal's offline queue is drained with the connection of the signed-in user whose
request started the draining, opened again from their grant each round (revoked, it stops).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
from mcp.server.auth.middleware.auth_context import get_access_token

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, OAuthAuth
from b24_telephony_mcp.bitrix.errors import NOT_SIGNED_IN
from b24_telephony_mcp.bitrix.limits import LeakyBucket, RequestBucket
from b24_telephony_mcp.config.settings import RemoteConfig, Settings
from b24_telephony_mcp.remote.crypto import SealError
from b24_telephony_mcp.remote.provider import SignedInToken
from b24_telephony_mcp.remote.signed_out import signed_out
from b24_telephony_mcp.remote.store import Access, GrantPairStore, RemoteStore
from b24_telephony_mcp.state.journal import CallJournal
from b24_telephony_mcp.tools.base import ToolContext
from b24_telephony_mcp.tools.connection import Connection

if TYPE_CHECKING:  # the events floor is loaded only when the events are offered
    from b24_telephony_mcp.events.drain import ClientSource, Ingest, OfflineDrainer
    from b24_telephony_mcp.events.hub import EventHub, EventHubs

    DrainerMaker = Callable[[str, ClientSource, Ingest], OfflineDrainer]

log = logging.getLogger(__name__)


def user_key(member_id: str, user_id: int) -> str:
    """Whose journal entries and cached portal values these are: one Bitrix24 user of one portal."""
    return hashlib.sha256(f"remote|{member_id}|{user_id}".encode()).hexdigest()[:32]


def portal_key(member_id: str) -> str:
    """Whose events these are in the event store: one portal (all its users see them, no other portal does)."""
    return hashlib.sha256(f"remote-portal|{member_id}".encode()).hexdigest()[:32]


TOUCH_EVERY = 60.0
"""Seconds between writes of a grant's last use: `grants list` shows it to the minute, and a write per call would
cost every call a database write."""

REFUSED_REFRESH = frozenset({"invalid_grant"})
"""What Bitrix24's token endpoint answers for a refresh token that is dead for good: the user was deactivated, the
application reinstalled, or the token expired unused."""


class GrantAuth(OAuthAuth):
    """A signed-in user's pair: when Bitrix24 refuses its refresh token for good, the grant is revoked (every
    token of it dies) and the request answers 401 (`signed_out`), so the client signs in again."""

    grant_id = ""
    store: RemoteStore | None = None

    async def refresh(self, http: httpx2.AsyncClient, used_credential: str, *, renew: bool = True) -> bool:
        try:
            return await super().refresh(http, used_credential, renew=renew)
        except BitrixError as exc:
            if exc.code not in REFUSED_REFRESH or self.store is None:
                raise
            await self.store.revoke_grant(self.grant_id)
            log.warning("Bitrix24 refused a user's refresh token: the sign-in was revoked")
            signed_out("Bitrix24 refused this sign-in's tokens; sign in again")
            raise BitrixError(
                NOT_SIGNED_IN,
                "Bitrix24 refused this sign-in's tokens (the user may be deactivated or the application reinstalled); "
                "the sign-in was revoked",
                401,
                hint="Sign in again from your assistant.",
            ) from None


class RemoteConnections:
    """`Connections` resolving each request's connection from its access token."""

    def __init__(
        self,
        settings: Settings,
        config: RemoteConfig,
        store: RemoteStore,
        journal: CallJournal,
        http: httpx2.AsyncClient,
        bucket: Callable[[str], RequestBucket] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.store = store
        self.journal = journal
        self.http = http
        self._bucket = bucket
        self._buckets: dict[str, LeakyBucket] = {}
        """One bucket per portal (all its users share its limit); without Redis, this process's own."""
        self.hubs: EventHubs | None = None
        """Each portal's events, when the events may be offered (`hear`)."""

    @property
    def events(self) -> None:
        return None  # no one portal's events to serve as the resource

    def bucket(self, portal_url: str) -> RequestBucket:
        if self._bucket is not None:
            return self._bucket(portal_url)
        host = urlsplit(portal_url).netloc
        if host not in self._buckets:
            self._buckets[host] = LeakyBucket(self.settings.rate, self.settings.burst)
        return self._buckets[host]

    async def current(self) -> Connection:
        token = get_access_token()
        # Read with the token by the bearer check (`load_access_token`): this request costs the store one read.
        access = token.access if isinstance(token, SignedInToken) else None
        connection = self._connect(access)
        assert access is not None
        grant = access.grant
        if grant.last_used is None or time.time() - grant.last_used >= TOUCH_EVERY:
            await self.store.touch_grant(grant.grant_id)
        # Who each call (or completion) runs as: the portal, the user and the client, never a token.
        log.info("serving portal %s, user %s, client %r", access.portal.domain, grant.user_id, grant.client_name)
        return connection

    def _connect(self, access: Access | None) -> Connection:
        """The grant's connection: its user's pair, its portal's bucket and events; NOT_SIGNED_IN when it has none."""
        if access is None:
            raise BitrixError(NOT_SIGNED_IN, "this sign-in was revoked", 401, hint="Sign in again from your assistant.")
        grant, portal = access.grant, access.portal
        parts = urlsplit(portal.client_endpoint)
        portal_url = f"{parts.scheme}://{parts.netloc}"
        auth = GrantAuth(
            portal_url,
            self.config.client_id,
            self.config.client_secret,
            portal.token_url,
            GrantPairStore(self.store, grant.member_id, grant.user_id),
            access.pair,
        )
        auth.grant_id, auth.store = grant.grant_id, self.store
        key = user_key(grant.member_id, grant.user_id)
        client = BitrixClient(
            auth, rate=self.settings.rate, burst=self.settings.burst, bucket=self.bucket(portal_url), http=self.http
        )
        context = ToolContext(
            self.settings.files,
            reveal_sip_passwords=self.settings.reveal_sip_passwords,
            confirm_calls=self.settings.confirm_calls,
            journal=self.journal,
            application=key,
            events=self.hubs.hub(portal_key(grant.member_id)) if self.hubs is not None else None,
        )
        return Connection(client, context, key=key)

    def drainer_for(self, make: DrainerMaker) -> Callable[[str, BitrixClient, Ingest], OfflineDrainer]:
        """What `EventHubs` makes a portal's drainer with: `make`'s, draining with the grant of the request that
        activated it (the client's), opened again each round, so a revoked grant stops it."""

        def drainer(portal: str, client: BitrixClient, ingest: Ingest) -> OfflineDrainer:
            grant_id = client.auth.grant_id if isinstance(client.auth, GrantAuth) else ""

            async def connect() -> BitrixClient:
                try:
                    access = await self.store.grant_access(grant_id) if grant_id else None
                except SealError:
                    access = None
                if access is not None and portal_key(access.grant.member_id) != portal:
                    access = None  # never another portal's queue into this portal's events
                return self._connect(access).client

            return make(portal, connect, ingest)

        return drainer

    async def event_recipient(self, form: dict[str, Any]) -> EventHub:
        """The hub of the portal an online post names (`auth[member_id]`), once its `auth[application_token]` is
        the one that portal's installation gave (`Refusal` otherwise: an unknown portal, a wrong token)."""
        from b24_telephony_mcp.events.online import Refusal, posted_auth

        auth = posted_auth(form)
        member_id, application_token = auth.get("member_id", ""), auth.get("application_token", "")
        if self.hubs is None:
            raise Refusal(503, "this server keeps no events")
        if not member_id or not application_token or not await self.store.installed(member_id, application_token):
            raise Refusal(403, "unknown auth[member_id], or not the auth[application_token] of its installation")
        return self.hubs.hub(portal_key(member_id))
