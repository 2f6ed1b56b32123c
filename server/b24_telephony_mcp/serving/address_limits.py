"""Per-client-IP limits on the OAuth endpoints anyone may call without a token (`/register`, `/token`), so one
address cannot fill the store with registrations or guess at codes and refresh tokens.

Each (path, address) has a leaky bucket: on Redis when the replicas share one (so the limit behind a balancer
is the limit, not its sum over replicas), else in this process. A request over the limit gets 429 with
`Retry-After`, before the SDK's handler reads it; when the shared store cannot be reached, 503 (the limit fails
closed: these endpoints write to the store anyway).
The address is the connection's (uvicorn takes it from `X-Forwarded-For` only for a trusted proxy, loopback by
default).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from b24_telephony_mcp.bitrix.errors import BitrixError
from b24_telephony_mcp.bitrix.locations import digest

if TYPE_CHECKING:
    from b24_telephony_mcp.bitrix.redis_state import RedisState

MAX_ADDRESSES = 10_000
"""Buckets kept per path; the least recently used go first (an idle address's bucket is full again anyway)."""


@dataclass(frozen=True)
class Limit:
    per_minute: float
    burst: int


DEFAULT_LIMITS: Mapping[str, Limit] = {"/register": Limit(10, 10), "/token": Limit(60, 30)}


class PerAddressLimit:
    """ASGI middleware: `limits` per path, per client address, kept in `shared` when given."""

    def __init__(
        self, app: ASGIApp, limits: Mapping[str, Limit] = DEFAULT_LIMITS, shared: RedisState | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self.shared = shared
        self._levels: dict[str, OrderedDict[str, tuple[float, float]]] = {path: OrderedDict() for path in limits}

    def _wait(self, path: str, address: str, now: float) -> float:
        """Seconds until this request would fit; 0 when it fits (and is counted)."""
        limit = self.limits[path]
        levels = self._levels[path]
        rate = limit.per_minute / 60
        level, then = levels.pop(address, (0.0, now))
        level = max(0.0, level - (now - then) * rate)
        if level + 1 > limit.burst:
            levels[address] = (level, now)
            return (level + 1 - limit.burst) / rate
        levels[address] = (level + 1, now)
        while len(levels) > MAX_ADDRESSES:
            levels.popitem(last=False)
        return 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.limits or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else ""
        if self.shared is None:
            wait = self._wait(path, address, time.monotonic())
        else:
            limit, name = self.limits[path], f"{path.strip('/')}:{digest(address)}"
            try:
                wait = await self.shared.admit(name, limit.per_minute / 60, limit.burst)
            except BitrixError:
                await _refuse(send, 503, "temporarily_unavailable", "the request limits cannot be checked now", 1)
                return
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        await _refuse(send, 429, "slow_down", "too many requests from this address", wait)


async def _refuse(send: Send, status: int, error: str, description: str, retry_after: float) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(max(1, round(retry_after))).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
