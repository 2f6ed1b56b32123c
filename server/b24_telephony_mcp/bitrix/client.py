"""The async Bitrix24 REST client: one pooled HTTP client per portal, paced, retried with care.

Retry policy, in one place:
- `expired_token`: refresh the OAuth pair once, repeat the call once.
- `invalid_token`: a refresh by a concurrent call or another process revokes the old access
  token; if a newer pair exists (in memory or in the token file), repeat the call once with it.
- 503 `QUERY_LIMIT_EXCEEDED`: the portal refused before running the method, so any call is
  repeated, with bounded exponential backoff and jitter.
- 5xx and network failures: repeated only for read-only methods. A write that may have run is
  never repeated blindly; the one exception is a connection that was never established.
- 429 `OPERATION_TIME_LIMIT`: not repeated; reported with the reset time of that answer, and until then
  further calls of that method are refused here without a request.
- A 3xx redirect (the portal changed its address): the request is repeated once at the new address.

REST 2 (`/rest/`) and REST 3.0 (`/rest/api/`) differ in the URL and the error envelope only; auth,
limits and retries are the same, and `parse_response` reads both envelopes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

from b24_telephony_mcp import __version__
from b24_telephony_mcp.bitrix.auth import Auth
from b24_telephony_mcp.bitrix.errors import (
    NETWORK_ERROR,
    OPERATION_TIME_LIMIT,
    QUERY_LIMIT_EXCEEDED,
    UNEXPECTED_RESPONSE,
    BitrixError,
    error_from_envelope,
)
from b24_telephony_mcp.bitrix.limits import DEFAULT_BURST, DEFAULT_RATE, LeakyBucket, RequestBucket, backoff_delay
from b24_telephony_mcp.common import metrics
from b24_telephony_mcp.common.net import is_loopback_host

log = logging.getLogger(__name__)

EXPIRED_TOKEN = "expired_token"
INVALID_TOKEN = "invalid_token"
OPERATION_BLOCKED = "Method is blocked due to operation time limit (refused here until the reset time)."

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


def http_pool(timeout: httpx2.Timeout) -> httpx2.AsyncClient:
    """The HTTP client REST requests go through: our User-Agent, JSON, no redirects followed."""
    return httpx2.AsyncClient(
        timeout=timeout,
        headers={"User-Agent": f"b24-telephony-mcp/{__version__}", "Accept": "application/json"},
        follow_redirects=False,  # a followed redirect would turn the POST into a GET and drop the body
    )


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
        bucket: RequestBucket | None = None,
        http: httpx2.AsyncClient | None = None,
    ) -> None:
        """`bucket` paces the requests (a shared one for replicas); by default a `LeakyBucket(rate, burst)`. `http`:
        a connection pool shared with other clients (remote mode makes a client per request), which `aclose` leaves
        open; by default the client makes its own on first use."""
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self._bucket = bucket or LeakyBucket(rate, burst)
        self._timeout = httpx2.Timeout(timeout, connect=connect_timeout)
        self._pool: httpx2.AsyncClient | None = http
        self._owns_pool = http is None
        self._blocked_until: dict[str, float] = {}
        """Methods the portal blocked with OPERATION_TIME_LIMIT, until their reset time: refused here meanwhile."""

    @property
    def _http(self) -> httpx2.AsyncClient:
        # Created on first use: building it (TLS context, CA bundle) costs ~35 ms that a client waiting for
        # the first tools/list should not pay.
        if self._pool is None:
            self._pool = http_pool(self._timeout)
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None and self._owns_pool:
            await self._pool.aclose()

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        read_only: bool = False,
        rest_api: int = 2,
    ) -> BitrixResponse:
        """Call a REST method (REST 2, or REST 3.0 with `rest_api=3`); raise `BitrixError` on any failure."""
        blocked = self._blocked_until.get(method)
        if blocked is not None:
            if blocked > time.time():
                raise BitrixError(OPERATION_TIME_LIMIT, OPERATION_BLOCKED, 429, True, method=method, reset_at=blocked)
            del self._blocked_until[method]
        params = dict(params or {})
        refreshed = redirected = False
        limit_retries = transient_retries = 0
        url: str | None = None
        while True:
            waited = await self._bucket.acquire()
            if waited > 0:
                metrics.limiter_wait(waited)
            body, credential = self.auth.sign(params)
            url = url if redirected else self.auth.url_for(method, rest_api)
            sent = time.perf_counter()
            try:
                response = await self._http.post(url, json=body)
            except httpx2.HTTPError as exc:
                metrics.rest_request(method, None, time.perf_counter() - sent)
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
            metrics.rest_request(method, response.status_code, time.perf_counter() - sent)
            if response.status_code in _REDIRECTS and not redirected:
                # A portal whose address changed answers 302 to the new one (change-domen.md): repeat the POST
                # there once, body and all; a followed redirect would have turned it into a GET.
                url = _redirect_target(response, url, method)
                redirected = True
                continue
            try:
                return parse_response(response, method, read_only)
            except BitrixError as error:
                if error.code in (EXPIRED_TOKEN, INVALID_TOKEN) and credential is not None and not refreshed:
                    renew = error.code == EXPIRED_TOKEN
                    if await self.auth.refresh(self._http, credential, renew=renew):
                        refreshed = True
                        continue
                if error.code == QUERY_LIMIT_EXCEEDED and limit_retries < self.retry.limit_retries:
                    metrics.limit_retry(method)
                    await self._backoff(limit_retries, method, error.code)
                    limit_retries += 1
                    continue
                transient = error.http_status is not None and error.http_status >= 500
                if transient and read_only and transient_retries < self.retry.transient_retries:
                    await self._backoff(transient_retries, method, f"HTTP {error.http_status}")
                    transient_retries += 1
                    continue
                if error.code == OPERATION_TIME_LIMIT and error.reset_at is not None:
                    self._blocked_until[method] = error.reset_at
                raise

    async def _backoff(self, attempt: int, method: str, reason: str) -> None:
        delay = backoff_delay(attempt, self.retry.backoff_base, self.retry.backoff_cap)
        log.info("%s: %s, retrying in %.2fs", method, reason, delay)
        await anyio.sleep(delay)


_REDIRECTS = (301, 302, 303, 307, 308)


def _redirect_target(response: httpx2.Response, url: str, method: str) -> str:
    location = response.headers.get("location", "")
    target = str(httpx2.URL(url).join(location)) if location else ""
    parts = urlsplit(target)
    # The same rule as for configured URLs: https, or plain http to a loopback host only.
    if not (parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))) or not (
        parts.hostname
    ):
        raise BitrixError(
            UNEXPECTED_RESPONSE,
            f"HTTP {response.status_code} redirect to a refused address while calling {method}",
            response.status_code,
            method=method,
            hint="The portal answered with a redirect to a non-https address; check the portal URL.",
        )
    log.warning("%s: the portal moved to %s; repeating the request there (update the portal URL)", method, parts.netloc)
    return target


def parse_response(response: httpx2.Response, method: str, read_only: bool) -> BitrixResponse:
    """The result of a REST 2 or REST 3.0 answer, or the `BitrixError` it carries. Pure: no client state."""
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
    timing = body.get("time")
    reset_at = timing.get("operating_reset_at") if isinstance(timing, dict) else None
    reset_at = float(reset_at) if isinstance(reset_at, int | float) else None
    if "error" in body:
        # A 503 refuses before the method runs, so repeating it is safe for writes too (as for LIMIT_CODES).
        error = error_from_envelope(body, status, method, retryable=repeatable or status == 503)
        if error.code == OPERATION_TIME_LIMIT:
            error.reset_at = reset_at  # from this answer only, never a stale one from an earlier success
        raise error
    if status >= 300 or "result" not in body:
        raise BitrixError(
            UNEXPECTED_RESPONSE,
            f"HTTP {status} without a result or an error",
            status,
            retryable=repeatable,
            method=method,
        )
    return BitrixResponse(body["result"], body.get("total"), body.get("next"))


def _page_title(text: str) -> str:
    """A gateway's HTML page usually names the failure in its <title> (e.g. '502 Bad Gateway')."""
    match = _TITLE.search(text[:4096])
    return f": {match.group(1)[:120]}" if match else ""
