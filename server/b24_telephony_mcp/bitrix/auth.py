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
import anyio.to_thread
import httpx2

from b24_telephony_mcp import metrics
from b24_telephony_mcp.bitrix.errors import TOKEN_REFRESH_FAILED, BitrixError
from b24_telephony_mcp.bitrix.token_store import TokenPair, TokenStore
from b24_telephony_mcp.redact import register_secret

log = logging.getLogger(__name__)


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
    """An application's token pair, persisted in a `TokenStore` and rotated on expiry."""

    def __init__(
        self,
        portal_url: str,
        client_id: str,
        client_secret: str,
        token_url: str,
        store: TokenStore,
        initial: TokenPair | None,
    ) -> None:
        self._rest_base = portal_url.rstrip("/") + "/rest/"
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_url = token_url
        self._store = store
        # The token file wins over the environment: after a rotation the environment's pair is dead.
        pair = store.load() or initial
        if pair is None:
            raise ValueError(f"no OAuth tokens: set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN, or provide {store.path}")
        self._lock = anyio.Lock()
        register_secret(client_secret)
        if initial is not None:
            _register_pair(initial)  # stale once the file wins, but still credentials
        self._use(pair)

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
        rest find a newer token and just retry. The file lock extends that to other processes.
        With `renew=False` (after `invalid_token`: a refresh elsewhere revokes the old access token)
        only a newer pair, in memory or in the token file, is adopted; returns whether there was one.
        """
        async with self._lock:
            if self._pair.access_token != used_credential:
                return True
            file_lock = self._store.lock()
            await anyio.to_thread.run_sync(file_lock.acquire)
            try:
                on_disk = self._load_store()
                if on_disk is not None and on_disk.access_token != used_credential:
                    self._use(on_disk)  # another process refreshed first
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
                try:
                    await anyio.to_thread.run_sync(self._store.save, new_pair)
                    log.info("OAuth tokens refreshed and saved to %s", self._store.path)
                except OSError as exc:
                    # Dropping the pair would lock the application out for good; keep serving from
                    # memory and say loudly that the file needs fixing.
                    log.error(
                        "OAuth tokens refreshed but NOT saved to %s (%s); they live only in this process "
                        "until a later refresh can save them",
                        self._store.path,
                        exc.strerror or type(exc).__name__,
                    )
                self._use(new_pair)
                return True
            finally:
                file_lock.release()

    def _use(self, pair: TokenPair) -> None:
        _register_pair(pair)
        self._pair = pair

    def _load_store(self) -> TokenPair | None:
        try:
            return self._store.load()
        except ValueError as exc:
            raise BitrixError(
                TOKEN_REFRESH_FAILED,
                str(exc),
                hint=f"Restore {self._store.path} or write a fresh token pair into it, then call again.",
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
