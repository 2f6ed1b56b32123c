"""Client-side pacing that mirrors the portal's own leaky bucket, and retry backoff."""

from __future__ import annotations

import random
import time
from typing import Protocol

import anyio

# Bitrix24 cloud plans: a bucket of 50 drained at 2 requests/s; Enterprise: 250 at 5/s.
DEFAULT_RATE = 2.0
DEFAULT_BURST = 50


class RequestBucket(Protocol):
    """Paces requests to one portal: `acquire` returns once one more request may go, with the seconds it waited.

    `LeakyBucket` paces one process; a shared store's bucket (`RedisBucket`) paces every replica together.
    """

    async def acquire(self) -> float: ...


class LeakyBucket:
    """Admits a request when one more unit fits in the bucket, else waits until it drains enough.

    Keeping our own bucket a little below the portal's means a burst of tool calls is slowed
    down here instead of being refused there with 503 QUERY_LIMIT_EXCEEDED.
    """

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._level = 0.0
        self._updated = time.monotonic()
        self._lock = anyio.Lock()

    async def acquire(self) -> float:
        started = time.monotonic()
        queued = self._lock.locked()  # behind a request that is sleeping for its slot
        async with self._lock:
            now = time.monotonic()
            self._level = max(0.0, self._level - (now - self._updated) * self.rate)
            self._updated = now
            overflow = self._level + 1 - self.burst
            if overflow > 0:
                # Holding the lock while sleeping keeps waiters in arrival order.
                await anyio.sleep(overflow / self.rate)
                self._level -= overflow
                self._updated = time.monotonic()
            self._level += 1
        return time.monotonic() - started if queued or overflow > 0 else 0.0


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (0-based)."""
    return random.uniform(0, min(cap, base * 2**attempt))
