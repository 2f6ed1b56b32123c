"""State shared by every replica of the server, in Redis (`B24_REDIS_URL`).

One connection pool serves everything a replica shares with the others: the token pair of each portal and
application (`RedisPairStore`) and the rate-limit bucket of each portal (`RedisBucket`). Every Redis failure
while serving becomes a `BitrixError` with `STATE_STORE_UNAVAILABLE` (retryable), raised before anything is
sent to the portal.

`redis` is imported only here, and this module only when B24_REDIS_URL is set: it costs ~0.3 s of start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import anyio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

from b24_telephony_mcp.bitrix.errors import STATE_STORE_UNAVAILABLE, TOKEN_REFRESH_FAILED, BitrixError
from b24_telephony_mcp.bitrix.locations import digest, redis_location
from b24_telephony_mcp.bitrix.pair_store import StalePairError
from b24_telephony_mcp.bitrix.token_store import TokenPair
from b24_telephony_mcp.common.redact import register_secret

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

KEY_PREFIX = "b24-telephony-mcp"

# A stored bucket's level, 1 per request, drains at `rate` per second from the moment it was last updated.
# Each call reserves the next free slot: the level may rise above `burst` (requests waiting for their slot),
# and the caller sleeps the returned seconds, so waiters on every replica go in the order they reserved. With
# ARGV[3] = '1' a request that does not fit now is refused instead: not counted, only told how long to wait.
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
if wait == 0 or ARGV[3] ~= '1' then
    level = level + 1
end
redis.call('HSET', KEYS[1], 'level', string.format('%.6f', level), 'updated', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(level / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


# The pair is a hash {access_token, refresh_token, expires, saved_at}. A new pair replaces the stored one only if
# the stored refresh token is the one that was spent to get it (ARGV[1]; '' for a seed, which only fills an empty
# key). A missing key accepts any pair: Redis lost its data, and the pair being written is the newest there is.
_SAVE_PAIR = """
local stored = redis.call('HGET', KEYS[1], 'refresh_token')
if stored and stored ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'access_token', ARGV[2], 'refresh_token', ARGV[3], 'expires', ARGV[4], 'saved_at', ARGV[5])
return 1
"""

# The refresh lock: a random owner token with a lease, renewed by its live holder and released only by it.
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

LOCK_LEASE = 5.0
"""Seconds a refresh lock outlives its holder's last renewal: how long replicas wait for a killed one."""
LOCK_WAIT = 30.0
"""Seconds a replica waits for another one's refresh before giving up on this call."""
_LOCK_POLL = 0.05


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
        self._save_pair: AsyncScript = self.redis.register_script(_SAVE_PAIR)
        self._renew_lock: AsyncScript = self.redis.register_script(_RENEW_LOCK)
        self._release_lock: AsyncScript = self.redis.register_script(_RELEASE_LOCK)

    def key(self, *parts: str) -> str:
        return ":".join((KEY_PREFIX, *parts))

    async def ping(self) -> None:
        async with self.failures("connecting"):
            await self.redis.ping()

    def bucket(self, portal_url: str, rate: float, burst: int) -> RedisBucket:
        """The bucket of this portal (by scheme and host), shared with every replica calling it."""
        parts = urlsplit(portal_url)
        return RedisBucket(self, self.key("bucket", digest(f"{parts.scheme}://{parts.netloc}")), rate, burst)

    async def admit(self, name: str, rate: float, burst: int) -> float:
        """A request under the leaky bucket `name` (shared by every replica), refused rather than queued: 0 when it
        fits now (and is counted), else the seconds until it would."""
        async with self.failures("checking a request limit"):
            return float(await self._reserve_slot(keys=[self.key("limit", name)], args=[rate, burst, "1"]))

    def pair_store(self, portal_url: str, client_id: str, lease: float = LOCK_LEASE) -> RedisPairStore:
        """The token pair of this portal and application, shared with every replica serving them."""
        return RedisPairStore(self, self.key("app", digest(portal_url, client_id)), lease)

    def lease(self, *name: str) -> RedisLease:
        """A lease one replica at a time holds (draining a portal's events), under `name`."""
        return RedisLease(self, self.key("lease", *name))

    async def approvals(self) -> RedisApprovals:
        """What confirmations need across replicas: one sealing key for all (made by whichever replica asks first)
        and the record of each yes spent."""
        key_name = self.key("request-state-key")
        async with self.failures("reading the request-state key"):
            await self.redis.set(key_name, secrets.token_hex(32), nx=True)
            key = await self.redis.get(key_name)
        assert key is not None
        return RedisApprovals(self, bytes.fromhex(key))

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
            wait = float(await self._state._reserve_slot(keys=[self.key], args=[self.rate, self.burst, "0"]))
        if wait > 0:
            await anyio.sleep(wait)
        return wait


class RedisPairStore:
    """The token pair in a Redis hash; a refresh lock with a lease beside it."""

    def __init__(self, state: RedisState, key_base: str, lease: float = LOCK_LEASE) -> None:
        self._state = state
        self.key = f"{key_base}:tokens"
        self.lock_key = f"{key_base}:refresh-lock"
        self.lease = lease
        self.where = f"Redis at {state.where} (key {self.key})"

    async def load(self) -> TokenPair | None:
        async with self._state.failures("reading the token pair"):
            record = await self._state.redis.hgetall(self.key)
        if not record:
            return None
        try:
            return _pair_from(record)
        except (KeyError, ValueError):
            raise ValueError(f"{self.where} does not hold a valid token pair") from None

    async def save(self, pair: TokenPair, spent: str | None) -> None:
        expires = "" if pair.expires is None else repr(float(pair.expires))
        args = [spent or "", pair.access_token, pair.refresh_token, expires, repr(time.time())]
        async with self._state.failures("saving the token pair"):
            saved = await self._state._save_pair(keys=[self.key], args=args)
        if not saved:
            raise StalePairError(f"{self.where} holds another pair")

    async def seed(self, initial: TokenPair | None) -> TokenPair | None:
        stored = await self.load()
        if stored is not None or initial is None:
            return stored
        with contextlib.suppress(StalePairError):  # another replica seeded first: its pair is the same or newer
            await self.save(initial, None)
        return await self.load()

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        owner = secrets.token_hex(16)
        lease_ms = int(self.lease * 1000)
        deadline = time.monotonic() + LOCK_WAIT
        async with self._state.failures("taking the refresh lock"):
            while not await self._state.redis.set(self.lock_key, owner, nx=True, px=lease_ms):
                if time.monotonic() > deadline:
                    raise BitrixError(
                        TOKEN_REFRESH_FAILED,
                        f"another replica has been renewing the token for over {LOCK_WAIT:.0f} s",
                        retryable=True,
                        hint="Call again; if this persists, check the other replicas' logs.",
                    )
                await anyio.sleep(_LOCK_POLL * (0.5 + random.random()))
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._keep_lease, owner, lease_ms)
                try:
                    yield
                finally:
                    group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(BitrixError):
                async with self._state.failures("releasing the refresh lock"):
                    await self._state._release_lock(keys=[self.lock_key], args=[owner])

    async def _keep_lease(self, owner: str, lease_ms: int) -> None:
        """Renew the lease while the holder lives; a killed holder stops renewing and its lock expires."""
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                async with self._state.failures("renewing the refresh lock"):
                    if not await self._state._renew_lock(keys=[self.lock_key], args=[owner, lease_ms]):
                        log.warning("the refresh lock at %s expired while held", self._state.where)
                        return
            except BitrixError:
                return  # the save will meet the same failure and keep the pair in memory


def _pair_from(record: dict[str, str]) -> TokenPair:
    expires = record.get("expires")
    return TokenPair(record["access_token"], record["refresh_token"], float(expires) if expires else None)


class RedisApprovals:
    """A yes to a confirmation question counts once across every replica (`confirmation.SharedApprovals`)."""

    def __init__(self, state: RedisState, key: bytes) -> None:
        self._state = state
        self.key = key

    async def spend(self, question_id: str, seconds: float) -> bool:
        name = self._state.key("approval", hashlib.sha256(question_id.encode()).hexdigest()[:32])
        async with self._state.failures("recording the user's confirmation"):
            return bool(await self._state.redis.set(name, "1", nx=True, px=int(seconds * 1000)))


class RedisLease:
    """Held by one replica until it stops renewing it: `hold` takes it when free, or renews it when this replica
    holds it; a killed holder's lease expires, and another replica takes it on its next `hold`."""

    def __init__(self, state: RedisState, key: str) -> None:
        self._state = state
        self.key = key
        self._owner = secrets.token_hex(16)

    async def hold(self, seconds: float) -> bool:
        lease_ms = int(seconds * 1000)
        async with self._state.failures("taking a lease"):
            if await self._state.redis.set(self.key, self._owner, nx=True, px=lease_ms):
                return True
            return bool(await self._state._renew_lock(keys=[self.key], args=[self._owner, lease_ms]))

    async def release(self) -> None:
        with contextlib.suppress(BitrixError):  # unreleased, it expires
            async with self._state.failures("releasing a lease"):
                await self._state._release_lock(keys=[self.key], args=[self._owner])
