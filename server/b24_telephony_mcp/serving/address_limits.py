"""Per-client-IP limits on the OAuth endpoints anyone may call without a token (`/register`, `/token`), so one
address cannot fill the store with registrations or guess at codes and refresh tokens.

Each (path, address) has a leaky bucket in this process (replicas each keep their own, so the limit behind a
balancer is the sum); a request over the limit gets 429 with `Retry-After`, before the SDK's handler reads it.
The address is the connection's (uvicorn takes it from `X-Forwarded-For` only for a trusted proxy, loopback by
default).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

MAX_ADDRESSES = 10_000
"""Buckets kept per path; the least recently used go first (an idle address's bucket is full again anyway)."""


@dataclass(frozen=True)
class Limit:
    per_minute: float
    burst: int


DEFAULT_LIMITS: Mapping[str, Limit] = {"/register": Limit(10, 10), "/token": Limit(60, 30)}


class PerAddressLimit:
    """ASGI middleware: `limits` per path, per client address."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, Limit] = DEFAULT_LIMITS) -> None:
        self.app = app
        self.limits = limits
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
        wait = self._wait(path, client[0] if client else "", time.monotonic())
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "slow_down", "error_description": "too many requests from this address"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(max(1, round(wait))).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
