"""How requests are addressed and signed: an incoming webhook, or an OAuth application.

Only the OAuth application can renew itself. It refreshes *on demand* (after the portal says
`expired_token`), never on a schedule, as the Bitrix24 docs require.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

import anyio
import httpx2

from b24_telephony_mcp.bitrix.errors import TOKEN_REFRESH_FAILED, BitrixError
from b24_telephony_mcp.bitrix.pair_store import PairStore, StalePairError
from b24_telephony_mcp.bitrix.token_store import TokenPair
from b24_telephony_mcp.common import metrics
from b24_telephony_mcp.common.redact import register_secret

log = logging.getLogger(__name__)

_SAVE_ATTEMPTS = 3
_SAVE_RETRY_DELAY = 0.5


def rest_url(base: str, method: str, rest_api: int) -> str:
    """`<base>/rest/[...]<method>`; REST 3.0 lives under `/rest/api/` (webhook path included)."""
    if rest_api == 3:
        head, _, tail = base.partition("/rest/")
        base = f"{head}/rest/api/{tail}"
    return base + method


class Auth(Protocol):
    def url_for(self, method: str, rest_api: int = 2) -> str: ...

    def sign(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Return the request body and the credential it was signed with (None if not refreshable)."""
        ...

    async def refresh(self, http: httpx2.AsyncClient, used_credential: str, *, renew: bool = True) -> bool:
        """Make a credential newer than `used_credential` current; False if none exists and `renew` is off."""
        ...


class WebhookAuth:
    """`https://portal/rest/<user_id>/<code>/`: the secret lives in the URL, the body is unsigned."""

    def __init__(self, webhook_url: str) -> None:
        self._base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
        register_secret(self._base.rstrip("/").rsplit("/", 1)[-1])

    def url_for(self, method: str, rest_api: int = 2) -> str:
        return rest_url(self._base, method, rest_api)

    def sign(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        return params, None

    async def refresh(self, http: httpx2.AsyncClient, used_credential: str, *, renew: bool = True) -> bool:
        raise AssertionError("webhooks are never refreshed")


class OAuthAuth:
    """An application's token pair, persisted in a `PairStore` (a file, or Redis for replicas) and rotated on
    expiry. Start one with `open`, which reads the store."""

    def __init__(
        self,
        portal_url: str,
        client_id: str,
        client_secret: str,
        token_url: str,
        store: PairStore,
        pair: TokenPair,
    ) -> None:
        self._rest_base = portal_url.rstrip("/") + "/rest/"
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_url = token_url
        self._store = store
        self._lock = anyio.Lock()
        register_secret(client_secret)
        self._use(pair)

    @classmethod
    async def open(
        cls,
        portal_url: str,
        client_id: str,
        client_secret: str,
        token_url: str,
        store: PairStore,
        initial: TokenPair | None,
    ) -> OAuthAuth:
        """Start from the stored pair, or from `initial` (environment, profile) when the store has none yet.

        The store wins over `initial`: after a rotation the environment's pair is dead. ValueError when there
        is no pair at all, or the stored one cannot be read.
        """
        register_secret(client_secret)
        if initial is not None:
            _register_pair(initial)  # stale once the store wins, but still credentials
        pair = await store.seed(initial)
        if pair is None:
            raise ValueError(f"no OAuth tokens: set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN, or provide {store.where}")
        return cls(portal_url, client_id, client_secret, token_url, store, pair)

    @property
    def store(self) -> PairStore:
        return self._store

    @property
    def tokens(self) -> TokenPair:
        return self._pair

    def url_for(self, method: str, rest_api: int = 2) -> str:
        return rest_url(self._rest_base, method, rest_api)

    def sign(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        token = self._pair.access_token
        return {**params, "auth": token}, token

    async def refresh(self, http: httpx2.AsyncClient, used_credential: str, *, renew: bool = True) -> bool:
        """Renew the pair unless someone already did since `used_credential` was sent.

        Concurrent calls that all met `expired_token` queue on one lock; the first refreshes, the
        rest find a newer token and just retry. The store's lock extends that to other processes (the file)
        or replicas (Redis). With `renew=False` (after `invalid_token`: a refresh elsewhere revokes the old
        access token) only a newer pair, in memory or in the store, is adopted; returns whether there was one.
        """
        async with self._lock:
            if self._pair.access_token != used_credential:
                return True
            async with self._store.lock():
                stored = await self._load_store()
                if stored is not None and stored.access_token != used_credential:
                    self._use(stored)  # another process refreshed first
                    metrics.refresh("adopted")
                    return True
                if not renew:
                    return False
                try:
                    new_pair = await self._request_new_pair(http)
                except BitrixError:
                    metrics.refresh("failed")
                    raise
                metrics.refresh("refreshed")
                # Persist before use: the old refresh token is already spent.
                await self._save(new_pair, spent=self._pair.refresh_token)
                self._use(new_pair)
                return True

    async def _save(self, pair: TokenPair, spent: str) -> None:
        for attempt in range(_SAVE_ATTEMPTS):
            try:
                await self._store.save(pair, spent)
            except StalePairError:
                # Someone wrote another pair while this process held the lock (an import, say): never overwrite
                # it. Both pairs were issued by the portal; this process goes on with the one it just got.
                log.error(
                    "OAuth tokens refreshed but NOT saved: %s holds a pair written meanwhile by someone else; "
                    "this process keeps its own",
                    self._store.where,
                )
                return
            except (OSError, BitrixError) as exc:
                if isinstance(exc, BitrixError) and exc.retryable and attempt + 1 < _SAVE_ATTEMPTS:
                    await anyio.sleep(_SAVE_RETRY_DELAY)  # the state store blinked: the pair is too precious to drop
                    continue
                # Dropping the pair would lock the application out for good; keep serving from memory and say
                # loudly that the store needs fixing.
                reason = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else exc.code
                log.error(
                    "OAuth tokens refreshed but NOT saved to %s (%s); they live only in this process "
                    "until a later refresh can save them",
                    self._store.where,
                    reason,
                )
                return
            log.info("OAuth tokens refreshed and saved to %s", self._store.where)
            return

    def _use(self, pair: TokenPair) -> None:
        _register_pair(pair)
        self._pair = pair

    async def _load_store(self) -> TokenPair | None:
        try:
            return await self._store.load()
        except ValueError as exc:
            raise BitrixError(
                TOKEN_REFRESH_FAILED,
                str(exc),
                hint=f"Restore {self._store.where} or write a fresh token pair into it, then call again.",
            ) from None

    async def _request_new_pair(self, http: httpx2.AsyncClient) -> TokenPair:
        query = {
            "grant_type": "refresh_token",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "refresh_token": self._pair.refresh_token,
        }
        pair, _ = await request_tokens(http, self._token_url, query, "token refresh")
        return pair


class AccessTokenAuth:
    """A bare access token that is never refreshed: for checking a freshly issued pair before it is saved."""

    def __init__(self, portal_url: str, access_token: str) -> None:
        self._rest_base = portal_url.rstrip("/") + "/rest/"
        self._token = access_token
        register_secret(access_token)

    def url_for(self, method: str, rest_api: int = 2) -> str:
        return rest_url(self._rest_base, method, rest_api)

    def sign(self, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        return {**params, "auth": self._token}, None

    async def refresh(self, http: httpx2.AsyncClient, used_credential: str, *, renew: bool = True) -> bool:
        raise AssertionError("a bare access token is never refreshed")


async def request_tokens(
    http: httpx2.AsyncClient, token_url: str, query: dict[str, str], purpose: str
) -> tuple[TokenPair, dict[str, Any]]:
    """One GET to the OAuth server's token endpoint (any grant); the new pair and the whole answer.

    Failures are `BitrixError`s carrying the OAuth server's code (`invalid_grant`, `invalid_client`...),
    their description prefixed with `purpose` ("token refresh failed: ...").
    """
    try:
        response = await http.get(token_url, params=query)
    except httpx2.HTTPError as exc:
        raise BitrixError(
            TOKEN_REFRESH_FAILED,
            f"{purpose} failed: could not reach the OAuth server ({type(exc).__name__})",
            retryable=True,
        ) from None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or "access_token" not in body or "refresh_token" not in body:
        code = str(body.get("error")) if isinstance(body, dict) and body.get("error") else TOKEN_REFRESH_FAILED
        description = (
            str(body.get("error_description") or code)
            if isinstance(body, dict)
            else f"the OAuth server answered HTTP {response.status_code} without a JSON object"
        )
        raise BitrixError(code, f"{purpose} failed: {description}", response.status_code)
    expires = body.get("expires")
    if not isinstance(expires, int | float) and isinstance(body.get("expires_in"), int | float):
        expires = time.time() + body["expires_in"]  # the code exchange answers with a lifetime only
    pair = TokenPair(str(body["access_token"]), str(body["refresh_token"]), expires)
    _register_pair(pair)  # before anything (a failed save's log line, say) could mention it
    return pair, body


def _register_pair(pair: TokenPair) -> None:
    register_secret(pair.access_token)
    register_secret(pair.refresh_token)
