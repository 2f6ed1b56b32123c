"""What the remote store keeps (clients, sign-ins, codes, tokens, grants, portals, pairs), the protocol both
backends follow, the sealing both do with the cipher, and one user's pair shown as a `PairStore`."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from b24_telephony_mcp.bitrix.pair_store import StalePairError
from b24_telephony_mcp.bitrix.token_store import TokenPair
from b24_telephony_mcp.remote.crypto import SealError, TokenCipher

STORE_NAME = "remote.sqlite3"


@dataclass(frozen=True)
class Portal:
    member_id: str
    domain: str
    client_endpoint: str
    """The portal's REST base (`https://portal/rest/`), from the token response."""
    token_url: str
    """The token endpoint its pairs are refreshed at: one of the configured ones, chosen at sign-in."""


@dataclass(frozen=True)
class Grant:
    grant_id: str
    client_id: str
    client_name: str
    member_id: str
    user_id: int
    user_name: str
    toolsets: tuple[str, ...] | None
    """What the user allowed on the sign-in page (None: what the server offers)."""
    read_only: bool
    created: float
    last_used: float | None = None


@dataclass(frozen=True)
class StoredToken:
    kind: str
    """"access" or "refresh"."""
    grant_id: str
    client_id: str
    scopes: tuple[str, ...]
    resource: str | None
    expires: float | None
    used: bool = False


@dataclass(frozen=True)
class Access:
    """What a signed-in user's request is served with, read together: the grant, its portal, the user's pair."""

    grant: Grant
    portal: Portal
    pair: TokenPair


@dataclass(frozen=True)
class StoredCode:
    grant_id: str
    record: dict[str, Any]
    """What the token endpoint checks: client, redirect URI, PKCE challenge, scopes, resource, expiry."""
    used: bool


class RemoteStore(Protocol):
    where: str

    async def save_client(self, client_id: str, info: dict[str, Any]) -> None: ...
    async def client(self, client_id: str) -> dict[str, Any] | None: ...

    async def put_signin(self, state: str, record: dict[str, Any], ttl: float) -> None: ...
    async def signin(self, state: str) -> dict[str, Any] | None:
        """The sign-in in progress, left in place (the consent page shows it)."""
        ...

    async def take_signin(self, state: str) -> dict[str, Any] | None:
        """The sign-in in progress, removed: a state is good for one answer."""
        ...

    async def save_portal(self, portal: Portal) -> None: ...
    async def portal(self, member_id: str) -> Portal | None: ...
    async def install(self, portal: Portal, application_token: str) -> None: ...
    async def installed(self, member_id: str, application_token: str) -> bool:
        """Whether `application_token` is the one the installation on portal `member_id` gave (a known portal
        installed, and the right token)."""
        ...

    async def uninstall(self, member_id: str, application_token: str) -> bool:
        """Every pair, grant and token of the portal deleted, if `application_token` is the installation's."""
        ...

    async def load_pair(self, member_id: str, user_id: int) -> TokenPair | None: ...
    async def save_pair(self, member_id: str, user_id: int, pair: TokenPair, spent: str | None) -> None:
        """`spent`: the refresh token the new pair renewed, which the stored pair must hold (StalePairError
        otherwise); None: a sign-in's pair, which replaces any."""
        ...

    def pair_lock(self, member_id: str, user_id: int) -> AbstractAsyncContextManager[None]: ...

    async def add_grant(self, grant: Grant) -> None: ...
    async def grant(self, grant_id: str) -> Grant | None: ...
    async def grant_access(self, grant_id: str) -> Access | None:
        """The grant with its portal and its user's pair, in one read; None when any of them is gone (revoked,
        uninstalled). SealError when the pair opens under no configured key."""
        ...

    async def token_access(self, token: str) -> tuple[StoredToken, Access] | None:
        """The MCP token's record with its grant's `Access`, in one read (what each request is served with); None
        as `grant_access`, or for an unknown token."""
        ...

    async def grants(self, member_id: str | None = None) -> list[Grant]: ...
    async def touch_grant(self, grant_id: str) -> None: ...
    async def revoke_grant(self, grant_id: str) -> bool:
        """The grant and its tokens and codes; the (portal, user) pair too when no other grant uses it."""
        ...

    async def put_code(self, code: str, grant_id: str, record: dict[str, Any], expires: float) -> None: ...
    async def code(self, code: str) -> StoredCode | None: ...
    async def spend_code(self, code: str) -> bool:
        """Mark the code used; False when it already was (a replay)."""
        ...

    async def put_token(self, token: str, stored: StoredToken) -> None: ...
    async def token(self, token: str) -> StoredToken | None: ...
    async def spend_refresh_token(self, token: str) -> bool:
        """Mark a refresh token used (it rotates) and drop its grant's access tokens; False when it already was
        used: a reuse."""
        ...

    async def delete_token(self, token: str) -> None: ...

    async def aclose(self) -> None: ...


def pair_owner(member_id: str, user_id: int) -> str:
    """The associated data a pair is sealed with: a sealed value copied to another row does not open."""
    return f"pair|{member_id}|{user_id}"


def client_owner(client_id: str) -> str:
    return f"client|{client_id}"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Sealing:
    """What both backends do with the cipher."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher

    def seal_pair(self, member_id: str, user_id: int, pair: TokenPair) -> str:
        return self._cipher.seal(dumps(asdict(pair)).encode(), pair_owner(member_id, user_id))

    def open_pair(self, member_id: str, user_id: int, sealed: str) -> tuple[TokenPair, bool]:
        """The pair, and whether it was sealed under an old key."""
        opened = self._cipher.open(sealed, pair_owner(member_id, user_id))
        try:
            return TokenPair(**json.loads(opened.plaintext)), opened.stale
        except (TypeError, ValueError):
            raise SealError("a sealed pair is not a token pair") from None

    def seal_client(self, client_id: str, info: dict[str, Any]) -> str:
        record = dict(info)
        if record.get("client_secret"):
            record["client_secret"] = self._cipher.seal(str(record["client_secret"]).encode(), client_owner(client_id))
        return dumps(record)

    def open_client(self, client_id: str, text: str) -> tuple[dict[str, Any], bool]:
        record: dict[str, Any] = json.loads(text)
        stale = False
        if record.get("client_secret"):
            opened = self._cipher.open(record["client_secret"], client_owner(client_id))
            record["client_secret"], stale = opened.plaintext.decode(), opened.stale
        return record, stale


class GrantPairStore:
    """The (portal, user) pair of a remote store as the `PairStore` `OAuthAuth` refreshes through; one is made per
    request, so nothing is kept per grant between requests."""

    def __init__(self, store: RemoteStore, member_id: str, user_id: int) -> None:
        self._store = store
        self.member_id = member_id
        self.user_id = user_id
        self.where = f"{store.where} (portal {member_id}, user {user_id})"

    async def load(self) -> TokenPair | None:
        try:
            return await self._store.load_pair(self.member_id, self.user_id)
        except SealError as exc:
            raise ValueError(f"{self.where}: {exc}") from None

    async def save(self, pair: TokenPair, spent: str | None) -> None:
        if spent is None and await self.load() is not None:
            raise StalePairError(f"{self.where} already holds a pair")
        await self._store.save_pair(self.member_id, self.user_id, pair, spent)

    def lock(self) -> AbstractAsyncContextManager[None]:
        return self._store.pair_lock(self.member_id, self.user_id)

    async def seed(self, initial: TokenPair | None) -> TokenPair | None:
        return await self.load() or initial
