"""The async Bitrix24 REST client: one pooled HTTP client per portal, paced, retried with care.

Retry policy, in one place:
- `expired_token`: refresh the OAuth pair once, repeat the call once.
- `invalid_token`: a refresh by a concurrent call or another process revokes the old access
  token; if a newer pair exists (in memory or in the token file), repeat the call once with it.
- 503 `QUERY_LIMIT_EXCEEDED`: the portal refused before running the method, so any call is
  repeated, with bounded exponential backoff and jitter.
- 5xx and network failures: repeated only for read-only methods. A write that may have run is
  never repeated blindly; the one exception is a connection that was never established.
- 429 `OPERATION_TIME_LIMIT`: not repeated; reported with the reset time the portal last gave.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2

from b24_telephony_mcp import __version__
from b24_telephony_mcp.bitrix.auth import Auth
from b24_telephony_mcp.bitrix.errors import (
    NETWORK_ERROR,
    UNEXPECTED_RESPONSE,
    BitrixError,
    error_from_envelope,
)
from b24_telephony_mcp.bitrix.limits import DEFAULT_BURST, DEFAULT_RATE, LeakyBucket, backoff_delay

log = logging.getLogger(__name__)

QUERY_LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
OPERATION_TIME_LIMIT = "OPERATION_TIME_LIMIT"
EXPIRED_TOKEN = "expired_token"
INVALID_TOKEN = "invalid_token"

_TITLE = re.compile(r"<title>\s*(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class BitrixResponse:
    result: Any
    total: int | None = None
    next: int | None = None


@dataclass(frozen=True)
class RetryPolicy:
    limit_retries: int = 4
    """Extra attempts after 503 QUERY_LIMIT_EXCEEDED."""
    transient_retries: int = 2
    """Extra attempts after a 5xx or network failure (read-only methods only)."""
    backoff_base: float = 0.5
    backoff_cap: float = 8.0


class BitrixClient:
    def __init__(
        self,
        auth: Auth,
        *,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self._bucket = LeakyBucket(rate, burst)
        self._timeout = httpx2.Timeout(timeout, connect=connect_timeout)
        self._pool: httpx2.AsyncClient | None = None
        self._operating_reset_at: dict[str, float] = {}

    @property
    def _http(self) -> httpx2.AsyncClient:
        # Created on first use: building it (TLS context, CA bundle) costs ~35 ms that a client waiting for
        # the first tools/list should not pay.
        if self._pool is None:
            self._pool = httpx2.AsyncClient(
                timeout=self._timeout,
                headers={"User-Agent": f"b24-telephony-mcp/{__version__}"},
                follow_redirects=False,  # a followed redirect would turn the POST into a GET and drop the body
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, read_only: bool = False
    ) -> BitrixResponse:
        """Call a REST method; raise `BitrixError` on any failure."""
        params = dict(params or {})
        refreshed = False
        limit_retries = transient_retries = 0
        while True:
            await self._bucket.acquire()
            body, credential = self.auth.sign(params)
            try:
                response = await self._http.post(self.auth.url_for(method), json=body)
            except httpx2.HTTPError as exc:
                never_sent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout)
                safe = read_only or never_sent
                if safe and transient_retries < self.retry.transient_retries:
                    await self._backoff(transient_retries, method, type(exc).__name__)
                    transient_retries += 1
                    continue
                raise BitrixError(
                    NETWORK_ERROR,
                    f"{type(exc).__name__} while calling {method}",
                    retryable=safe,
                    method=method,
                ) from None
            try:
                return self._parse(response, method, read_only)
            except BitrixError as error:
                if error.code in (EXPIRED_TOKEN, INVALID_TOKEN) and credential is not None and not refreshed:
                    renew = error.code == EXPIRED_TOKEN
                    if await self.auth.refresh(self._http, credential, renew=renew):
                        refreshed = True
                        continue
                if error.code == QUERY_LIMIT_EXCEEDED and limit_retries < self.retry.limit_retries:
                    await self._backoff(limit_retries, method, error.code)
                    limit_retries += 1
                    continue
                transient = error.http_status is not None and error.http_status >= 500
                if transient and read_only and transient_retries < self.retry.transient_retries:
                    await self._backoff(transient_retries, method, f"HTTP {error.http_status}")
                    transient_retries += 1
                    continue
                if error.code == OPERATION_TIME_LIMIT:
                    error.reset_at = self._operating_reset_at.get(method)
                raise

    async def _backoff(self, attempt: int, method: str, reason: str) -> None:
        delay = backoff_delay(attempt, self.retry.backoff_base, self.retry.backoff_cap)
        log.info("%s: %s, retrying in %.2fs", method, reason, delay)
        await anyio.sleep(delay)

    def _parse(self, response: httpx2.Response, method: str, read_only: bool) -> BitrixResponse:
        status = response.status_code
        # A server-side failure may have happened after the method ran: only a read is safe to repeat.
        repeatable = status >= 500 and read_only
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise BitrixError(
                UNEXPECTED_RESPONSE,
                f"HTTP {status} with a non-JSON body{_page_title(response.text)}",
                status,
                retryable=repeatable,
                method=method,
            )
        if "error" in body:
            # Limits refuse before the method runs, so repeating those is safe for writes too.
            limited = status == 503 or body.get("error") in (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT)
            raise error_from_envelope(body, status, method, retryable=limited or repeatable)
        if status >= 300 or "result" not in body:
            raise BitrixError(
                UNEXPECTED_RESPONSE,
                f"HTTP {status} without a result or an error",
                status,
                retryable=repeatable,
                method=method,
            )
        reset_at = (body.get("time") or {}).get("operating_reset_at")
        if isinstance(reset_at, int | float):
            self._operating_reset_at[method] = float(reset_at)
        return BitrixResponse(body["result"], body.get("total"), body.get("next"))


def _page_title(text: str) -> str:
    """A gateway's HTML page usually names the failure in its <title> (e.g. '502 Bad Gateway')."""
    match = _TITLE.search(text[:4096])
    return f": {match.group(1)[:120]}" if match else ""
