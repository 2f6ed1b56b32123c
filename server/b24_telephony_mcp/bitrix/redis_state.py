"""State shared by every replica of the server, in Redis (`B24_REDIS_URL`).

One connection pool serves everything a replica shares with the others: the rate-limit bucket of each portal
(and the token pair, see `RedisPairStore`). Every Redis failure while serving becomes a `BitrixError` with
`STATE_STORE_UNAVAILABLE` (retryable), raised before anything is sent to the portal.

`redis` is imported only here, and this module only when B24_REDIS_URL is set: it costs ~0.3 s of start-up.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import anyio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

from b24_telephony_mcp.bitrix.errors import STATE_STORE_UNAVAILABLE, BitrixError
from b24_telephony_mcp.redact import register_secret

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

KEY_PREFIX = "b24-telephony-mcp"
SCHEMES = ("redis", "rediss")

# A stored bucket's level, 1 per request, drains at `rate` per second from the moment it was last updated.
# Each call reserves the next free slot: the level may rise above `burst` (requests waiting for their slot),
# and the caller sleeps the returned seconds, so waiters on every replica go in the order they reserved.
# Redis's own clock (TIME) is the one clock all replicas share.
_RESERVE_SLOT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'updated')
local level = tonumber(state[1]) or 0
local updated = tonumber(state[2]) or now
level = math.max(0, level - (now - updated) * rate)
local wait = math.max(0, (level + 1 - burst) / rate)
level = level + 1
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level), 'updated', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(level / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


def check_redis_url(url: str) -> str | None:
    """What is wrong with `url` as B24_REDIS_URL, or None. Never quotes the URL: it may hold a password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "B24_REDIS_URL is not a valid URL (expected redis://[user:password@]host[:port][/db])."
    if parts.scheme not in SCHEMES:
        return "B24_REDIS_URL must start with redis:// or rediss:// (TLS)."
    if not parts.hostname:
        return "B24_REDIS_URL names no host (expected redis://[user:password@]host[:port][/db])."
    if port == 0:
        return "B24_REDIS_URL has port 0."
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"B24_REDIS_URL's path must be a database number, got /{db}."
    return None


def redis_location(url: str) -> str:
    """`redis://host:port/db` without credentials: what messages and logs may show."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"


def digest(*parts: str) -> str:
    """A short stable name for a portal (and application) in key names and file names."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class RedisState:
    """The replica's connection to Redis; hands out the shared objects, each under its own key."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        for secret in (parts.password, parts.password and unquote(parts.password)):
            register_secret(secret)
        self.where = redis_location(url)
        self.redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            # One immediate retry on a fresh connection (Redis restarted); beyond that the call fails fast with
            # STATE_STORE_UNAVAILABLE instead of hanging the tool call in backoff.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._reserve_slot: AsyncScript = self.redis.register_script(_RESERVE_SLOT)

    def key(self, *parts: str) -> str:
        return ":".join((KEY_PREFIX, *parts))

    async def ping(self) -> None:
        async with self.failures("connecting"):
            await self.redis.ping()

    def bucket(self, portal_url: str, rate: float, burst: int) -> RedisBucket:
        """The bucket of this portal (by scheme and host), shared with every replica calling it."""
        parts = urlsplit(portal_url)
        return RedisBucket(self, self.key("bucket", digest(f"{parts.scheme}://{parts.netloc}")), rate, burst)

    @asynccontextmanager
    async def failures(self, doing: str) -> AsyncIterator[None]:
        """Turn any Redis failure inside into STATE_STORE_UNAVAILABLE, naming what was being done."""
        try:
            yield
        except AuthenticationError:
            raise BitrixError(
                STATE_STORE_UNAVAILABLE,
                f"the state store at {self.where} refused the credentials in B24_REDIS_URL",
                hint="Fix the user name or password in B24_REDIS_URL.",
            ) from None
        except (RedisError, OSError) as exc:
            # The model needs only "unreachable, retry"; the operator gets the driver's reason in the log.
            log.warning("state store at %s failed while %s: %s", self.where, doing, exc)
            raise BitrixError(
                STATE_STORE_UNAVAILABLE,
                f"the state store at {self.where} could not be reached while {doing} ({type(exc).__name__})",
                retryable=True,
            ) from None

    async def aclose(self) -> None:
        await self.redis.aclose()


class RedisBucket:
    """A portal's leaky bucket in Redis: the same rate and burst as `LeakyBucket`, for all replicas together."""

    def __init__(self, state: RedisState, key: str, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._state = state
        self.key = key
        self.rate = rate
        self.burst = burst

    async def acquire(self) -> float:
        async with self._state.failures("pacing the request"):
            wait = float(await self._state._reserve_slot(keys=[self.key], args=[self.rate, self.burst]))
        if wait > 0:
            await anyio.sleep(wait)
        return wait
