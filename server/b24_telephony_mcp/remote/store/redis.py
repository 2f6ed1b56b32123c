"""The Redis backend (B24_REDIS_URL), shared by replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from b24_telephony_mcp.bitrix.pair_store import StalePairError
from b24_telephony_mcp.bitrix.token_store import TokenPair
from b24_telephony_mcp.remote.crypto import TokenCipher, token_hash
from b24_telephony_mcp.remote.store.base import (
    Access,
    Grant,
    Portal,
    Sealing,
    StoredCode,
    StoredToken,
    dumps,
    pair_owner,
)

if TYPE_CHECKING:
    from b24_telephony_mcp.bitrix.redis_state import RedisState

# KEYS[1]: a hash {sealed, refresh_hash}. ARGV: the spent refresh token's hash ('' for a sign-in, which replaces
# any), the new sealed value, the new refresh token's hash.
_SAVE_SEALED_PAIR = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'refresh_hash') ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'sealed', ARGV[2], 'refresh_hash', ARGV[3])
return 1
"""
# KEYS[1]: a hash; field ARGV[1] is replaced by ARGV[3] only while it still holds ARGV[2] (re-sealing).
_REPLACE_FIELD = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    return 1
end
return 0
"""
# KEYS[1]: a portal's hash. An installation's token belongs to the address it was verified at: a new domain drops it.
_SAVE_PORTAL = """
local domain = redis.call('HGET', KEYS[1], 'domain')
if domain and domain ~= ARGV[1] then redis.call('HDEL', KEYS[1], 'application_token_hash') end
redis.call('HSET', KEYS[1], 'domain', ARGV[1], 'client_endpoint', ARGV[2], 'token_url', ARGV[3])
return 1
"""
# KEYS[1]: a code or token hash; its `used` goes 0 -> 1 once (and, for a refresh token, kind must be 'refresh').
_SPEND = """
if redis.call('HGET', KEYS[1], 'used') ~= '0' then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'kind') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'used', '1')
return 1
"""


class RedisRemoteStore:
    """The store in Redis, shared by replicas: one key per record under `b24-telephony-mcp:remote:`, sets indexing
    the grants by portal and user and the tokens and codes by grant; codes, sign-ins and access tokens expire on
    their own. The refresh lock of a (portal, user) is the lease lock of the single-portal pair store."""

    def __init__(self, state: RedisState, cipher: TokenCipher, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self._redis = state.redis
        self._sealing = Sealing(cipher)
        self._clock = clock
        self.where = f"Redis at {state.where}"
        self._save_sealed_pair = self._redis.register_script(_SAVE_SEALED_PAIR)
        self._replace_field = self._redis.register_script(_REPLACE_FIELD)
        self._spend = self._redis.register_script(_SPEND)
        self._save_portal = self._redis.register_script(_SAVE_PORTAL)

    def _key(self, *parts: str) -> str:
        return self._state.key("remote", *parts)

    def _pair_base(self, member_id: str, user_id: int) -> str:
        return self._key("pair", token_hash(pair_owner(member_id, user_id))[:32])

    async def aclose(self) -> None:
        return None  # the connection is the RedisState's

    # --- registered clients ---

    def _client_key(self, client_id: str) -> str:
        return self._key("client", token_hash(client_id)[:32])

    async def save_client(self, client_id: str, info: dict[str, Any]) -> None:
        text = self._sealing.seal_client(client_id, info)
        async with self._state.failures("saving a registered client"):
            await self._redis.hset(self._client_key(client_id), mapping={"info": text, "created": repr(self._clock())})

    async def client(self, client_id: str) -> dict[str, Any] | None:
        key = self._client_key(client_id)
        async with self._state.failures("reading a registered client"):
            text = await self._redis.hget(key, "info")
        if text is None:
            return None
        record, stale = self._sealing.open_client(client_id, text)
        if stale:
            again = self._sealing.seal_client(client_id, record)
            async with self._state.failures("re-sealing a registered client"):
                await self._replace_field(keys=[key], args=["info", text, again])
        return record

    # --- sign-ins ---

    async def put_signin(self, state: str, record: dict[str, Any], ttl: float) -> None:
        async with self._state.failures("saving a sign-in"):
            await self._redis.set(self._key("signin", token_hash(state)), dumps(record), px=int(ttl * 1000))

    async def signin(self, state: str) -> dict[str, Any] | None:
        async with self._state.failures("reading a sign-in"):
            text = await self._redis.get(self._key("signin", token_hash(state)))
        if text is None:
            return None
        record: dict[str, Any] = json.loads(text)
        return record

    async def take_signin(self, state: str) -> dict[str, Any] | None:
        async with self._state.failures("reading a sign-in"):
            text = await self._redis.getdel(self._key("signin", token_hash(state)))
        if text is None:
            return None
        record: dict[str, Any] = json.loads(text)
        return record

    # --- portals ---

    async def save_portal(self, portal: Portal) -> None:
        key = self._key("portal", portal.member_id)
        async with self._state.failures("saving a portal"):
            await self._save_portal(keys=[key], args=[portal.domain, portal.client_endpoint, portal.token_url])

    async def portal(self, member_id: str) -> Portal | None:
        async with self._state.failures("reading a portal"):
            record = await self._redis.hgetall(self._key("portal", member_id))
        return _redis_portal(member_id, record)

    async def install(self, portal: Portal, application_token: str) -> None:
        await self.save_portal(portal)
        async with self._state.failures("saving an installation"):
            await self._redis.hset(
                self._key("portal", portal.member_id), "application_token_hash", token_hash(application_token)
            )

    async def installed(self, member_id: str, application_token: str) -> bool:
        async with self._state.failures("reading an installation"):
            stored = await self._redis.hget(self._key("portal", member_id), "application_token_hash")
        return stored is not None and stored == token_hash(application_token)

    async def uninstall(self, member_id: str, application_token: str) -> bool:
        if not await self.installed(member_id, application_token):
            return False
        async with self._state.failures("reading a portal's grants"):
            grant_ids = await self._redis.smembers(self._key("portal-grants", member_id))
            pairs = await self._redis.smembers(self._key("portal-pairs", member_id))
        for grant_id in grant_ids:
            await self.revoke_grant(grant_id)
        async with self._state.failures("deleting a portal"):
            await self._redis.delete(
                *(f"{base}:sealed" for base in pairs),
                self._key("portal-pairs", member_id),
                self._key("portal-grants", member_id),
                self._key("portal", member_id),
            )
        return True

    # --- pairs ---

    async def load_pair(self, member_id: str, user_id: int) -> TokenPair | None:
        async with self._state.failures("reading a token pair"):
            sealed = await self._redis.hget(self._sealed_key(member_id, user_id), "sealed")
        return await self._open_pair(member_id, user_id, sealed) if sealed is not None else None

    def _sealed_key(self, member_id: str, user_id: int) -> str:
        return f"{self._pair_base(member_id, user_id)}:sealed"

    async def _open_pair(self, member_id: str, user_id: int, sealed: str) -> TokenPair:
        pair, stale = self._sealing.open_pair(member_id, user_id, sealed)
        if stale:
            again = self._sealing.seal_pair(member_id, user_id, pair)
            async with self._state.failures("re-sealing a token pair"):
                await self._replace_field(keys=[self._sealed_key(member_id, user_id)], args=["sealed", sealed, again])
        return pair

    async def save_pair(self, member_id: str, user_id: int, pair: TokenPair, spent: str | None) -> None:
        base = self._pair_base(member_id, user_id)
        sealed = self._sealing.seal_pair(member_id, user_id, pair)
        args = ["" if spent is None else token_hash(spent), sealed, token_hash(pair.refresh_token)]
        async with self._state.failures("saving a token pair"):
            saved = await self._save_sealed_pair(keys=[f"{base}:sealed"], args=args)
            await self._redis.sadd(self._key("portal-pairs", member_id), base)
        if not saved:
            raise StalePairError(f"{self.where} holds another pair for this user")

    def pair_lock(self, member_id: str, user_id: int) -> AbstractAsyncContextManager[None]:
        from b24_telephony_mcp.bitrix.redis_state import RedisPairStore

        # The single-portal store's lease lock (renewed while held, expiring when its holder dies), on this pair.
        return RedisPairStore(self._state, self._pair_base(member_id, user_id)).lock()

    # --- grants ---

    async def add_grant(self, grant: Grant) -> None:
        mapping = {
            "client_id": grant.client_id,
            "client_name": grant.client_name,
            "member_id": grant.member_id,
            "user_id": str(grant.user_id),
            "user_name": grant.user_name,
            "toolsets": "" if grant.toolsets is None else dumps(list(grant.toolsets)),
            "read_only": "1" if grant.read_only else "0",
            "created": repr(grant.created),
            "last_used": "" if grant.last_used is None else repr(grant.last_used),
        }
        async with self._state.failures("saving a grant"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("grant", grant.grant_id), mapping=mapping)
            pipe.sadd(self._key("grants"), grant.grant_id)
            pipe.sadd(self._key("portal-grants", grant.member_id), grant.grant_id)
            pipe.sadd(self._key("user-grants", grant.member_id, str(grant.user_id)), grant.grant_id)
            await pipe.execute()

    async def grant(self, grant_id: str) -> Grant | None:
        async with self._state.failures("reading a grant"):
            record = await self._redis.hgetall(self._key("grant", grant_id))
        return _redis_grant(grant_id, record) if record else None

    async def grant_access(self, grant_id: str) -> Access | None:
        grant = await self.grant(grant_id)
        if grant is None:
            return None
        async with self._state.failures("reading a sign-in"), self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key("portal", grant.member_id))
            pipe.hget(self._sealed_key(grant.member_id, grant.user_id), "sealed")
            record, sealed = await pipe.execute()
        portal = _redis_portal(grant.member_id, record)
        if portal is None or sealed is None:
            return None
        return Access(grant, portal, await self._open_pair(grant.member_id, grant.user_id, sealed))

    async def token_access(self, token: str) -> tuple[StoredToken, Access] | None:
        stored = await self.token(token)
        access = await self.grant_access(stored.grant_id) if stored is not None else None
        return (stored, access) if stored is not None and access is not None else None

    async def grants(self, member_id: str | None = None) -> list[Grant]:
        index = self._key("grants") if member_id is None else self._key("portal-grants", member_id)
        async with self._state.failures("listing grants"):
            ids = sorted(await self._redis.smembers(index))
        found = [grant for grant_id in ids if (grant := await self.grant(grant_id)) is not None]
        return sorted(found, key=lambda grant: grant.created)

    async def touch_grant(self, grant_id: str) -> None:
        async with self._state.failures("recording a grant's use"):
            # Only an existing grant: a revoked one must not come back as a husk.
            if await self._redis.exists(self._key("grant", grant_id)):
                await self._redis.hset(self._key("grant", grant_id), "last_used", repr(self._clock()))

    async def revoke_grant(self, grant_id: str) -> bool:
        grant = await self.grant(grant_id)
        if grant is None:
            return False
        user_index = self._key("user-grants", grant.member_id, str(grant.user_id))
        async with self._state.failures("revoking a grant"):
            tokens = await self._redis.smembers(self._key("grant-tokens", grant_id))
            codes = await self._redis.smembers(self._key("grant-codes", grant_id))
            async with self._redis.pipeline(transaction=True) as pipe:
                for hashed in tokens:
                    pipe.delete(self._key("token", hashed))
                for hashed in codes:
                    pipe.delete(self._key("code", hashed))
                pipe.delete(self._key("grant-tokens", grant_id), self._key("grant-codes", grant_id))
                pipe.delete(self._key("grant", grant_id))
                pipe.srem(self._key("grants"), grant_id)
                pipe.srem(self._key("portal-grants", grant.member_id), grant_id)
                pipe.srem(user_index, grant_id)
                await pipe.execute()
            if not await self._redis.scard(user_index):
                base = self._pair_base(grant.member_id, grant.user_id)
                await self._redis.delete(f"{base}:sealed")
                await self._redis.srem(self._key("portal-pairs", grant.member_id), base)
        return True

    # --- authorization codes and MCP tokens (hashes only) ---

    async def put_code(self, code: str, grant_id: str, record: dict[str, Any], expires: float) -> None:
        hashed = token_hash(code)
        key = self._key("code", hashed)
        mapping = {"grant_id": grant_id, "record": dumps(record), "used": "0"}
        async with self._state.failures("saving an authorization code"), self._redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expireat(key, int(expires) + 3600)  # kept an hour past its expiry, to recognise a replay
            pipe.sadd(self._key("grant-codes", grant_id), hashed)
            await pipe.execute()

    async def code(self, code: str) -> StoredCode | None:
        async with self._state.failures("reading an authorization code"):
            record = await self._redis.hgetall(self._key("code", token_hash(code)))
        if not record:
            return None
        return StoredCode(record["grant_id"], json.loads(record["record"]), record["used"] != "0")

    async def spend_code(self, code: str) -> bool:
        async with self._state.failures("spending an authorization code"):
            return bool(await self._spend(keys=[self._key("code", token_hash(code))], args=[""]))

    async def put_token(self, token: str, stored: StoredToken) -> None:
        hashed = token_hash(token)
        key = self._key("token", hashed)
        mapping = {
            "kind": stored.kind,
            "grant_id": stored.grant_id,
            "client_id": stored.client_id,
            "scopes": " ".join(stored.scopes),
            "resource": stored.resource or "",
            "expires": "" if stored.expires is None else repr(stored.expires),
            "used": "1" if stored.used else "0",
        }
        async with self._state.failures("saving a token"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            if stored.expires is not None:
                pipe.expireat(key, int(stored.expires) + 1)
            pipe.sadd(self._key("grant-tokens", stored.grant_id), hashed)
            await pipe.execute()

    async def token(self, token: str) -> StoredToken | None:
        async with self._state.failures("reading a token"):
            record = await self._redis.hgetall(self._key("token", token_hash(token)))
        if not record:
            return None
        return StoredToken(
            record["kind"],
            record["grant_id"],
            record["client_id"],
            tuple(record["scopes"].split()),
            record["resource"] or None,
            float(record["expires"]) if record["expires"] else None,
            record["used"] != "0",
        )

    async def spend_refresh_token(self, token: str) -> bool:
        key = self._key("token", token_hash(token))
        async with self._state.failures("spending a refresh token"):
            if not await self._spend(keys=[key], args=["refresh"]):
                return False
            grant_id = await self._redis.hget(key, "grant_id")
            if grant_id is not None:
                index = self._key("grant-tokens", grant_id)
                for hashed in await self._redis.smembers(index):
                    if await self._redis.hget(self._key("token", hashed), "kind") != "refresh":
                        await self._redis.delete(self._key("token", hashed))
                        await self._redis.srem(index, hashed)
        return True

    async def delete_token(self, token: str) -> None:
        hashed = token_hash(token)
        async with self._state.failures("deleting a token"):
            grant_id = await self._redis.hget(self._key("token", hashed), "grant_id")
            await self._redis.delete(self._key("token", hashed))
            if grant_id is not None:
                await self._redis.srem(self._key("grant-tokens", grant_id), hashed)


def _redis_portal(member_id: str, record: dict[str, str]) -> Portal | None:
    if not record or "domain" not in record:
        return None
    return Portal(member_id, record["domain"], record["client_endpoint"], record["token_url"])


def _redis_grant(grant_id: str, record: dict[str, str]) -> Grant:
    return Grant(
        grant_id,
        record["client_id"],
        record["client_name"],
        record["member_id"],
        int(record["user_id"]),
        record["user_name"],
        tuple(json.loads(record["toolsets"])) if record.get("toolsets") else None,
        record.get("read_only") == "1",
        float(record["created"]),
        float(record["last_used"]) if record.get("last_used") else None,
    )
