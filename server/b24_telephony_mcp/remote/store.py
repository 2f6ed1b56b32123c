"""What remote mode keeps: registered clients, pending sign-ins, authorization codes, MCP tokens, grants, portals and
the Bitrix24 token pair of each (portal, user).

Two backends behind one protocol (`RemoteStore`): an embedded SQLite file in the state directory (mode 0600) for a
single process, and Redis (B24_REDIS_URL) for replicas. Nothing secret is kept in clear by either: MCP access and
refresh tokens, authorization codes and sign-in states only as hashes (`token_hash`); Bitrix24 pairs and registered
clients' secrets sealed with AES-GCM (`TokenCipher`), bound to their owner; a portal's `application_token` as a
hash. A pair read under an old key (B24_TOKEN_KEY rotated) is sealed again under the current one.

A grant is (MCP client, portal `member_id`, Bitrix24 user); the pair belongs to (portal, user) and is shared by that
user's grants, so one user with two assistants has one refresh chain. `GrantPairStore` shows one such pair as the
`PairStore` the OAuth refresh sequence runs on (lock, re-read, compare, renew, save before use), unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from b24_telephony_mcp.bitrix.pair_store import StalePairError
from b24_telephony_mcp.bitrix.token_store import TokenPair
from b24_telephony_mcp.remote.crypto import SealError, TokenCipher, key_file_keys, token_hash
from b24_telephony_mcp.state.sqlite_file import SqliteFile

if TYPE_CHECKING:
    import sqlite3

    from b24_telephony_mcp.bitrix.redis_state import RedisState
    from b24_telephony_mcp.config.settings import RemoteConfig

STORE_NAME = "remote.sqlite3"
T = TypeVar("T")


@dataclass(frozen=True)
class Portal:
    member_id: str
    domain: str
    client_endpoint: str
    """The portal's REST base (`https://portal/rest/`), from the token response."""
    token_url: str
    """The token endpoint its pairs are refreshed at: one of the configured ones, chosen at sign-in."""


@dataclass(frozen=True)
class Grant:
    grant_id: str
    client_id: str
    client_name: str
    member_id: str
    user_id: int
    user_name: str
    toolsets: tuple[str, ...] | None
    """What the user allowed on the sign-in page (None: what the server offers)."""
    read_only: bool
    created: float
    last_used: float | None = None


@dataclass(frozen=True)
class StoredToken:
    kind: str
    """"access" or "refresh"."""
    grant_id: str
    client_id: str
    scopes: tuple[str, ...]
    resource: str | None
    expires: float | None
    used: bool = False


@dataclass(frozen=True)
class StoredCode:
    grant_id: str
    record: dict[str, Any]
    """What the token endpoint checks: client, redirect URI, PKCE challenge, scopes, resource, expiry."""
    used: bool


class RemoteStore(Protocol):
    where: str

    async def save_client(self, client_id: str, info: dict[str, Any]) -> None: ...
    async def client(self, client_id: str) -> dict[str, Any] | None: ...

    async def put_signin(self, state: str, record: dict[str, Any], ttl: float) -> None: ...
    async def signin(self, state: str) -> dict[str, Any] | None:
        """The sign-in in progress, left in place (the consent page shows it)."""
        ...

    async def take_signin(self, state: str) -> dict[str, Any] | None:
        """The sign-in in progress, removed: a state is good for one answer."""
        ...

    async def save_portal(self, portal: Portal) -> None: ...
    async def portal(self, member_id: str) -> Portal | None: ...
    async def install(self, portal: Portal, application_token: str) -> None: ...
    async def installed(self, member_id: str, application_token: str) -> bool:
        """Whether `application_token` is the one the installation on portal `member_id` gave (a known portal
        installed, and the right token)."""
        ...

    async def uninstall(self, member_id: str, application_token: str) -> bool:
        """Every pair, grant and token of the portal deleted, if `application_token` is the installation's."""
        ...

    async def load_pair(self, member_id: str, user_id: int) -> TokenPair | None: ...
    async def save_pair(self, member_id: str, user_id: int, pair: TokenPair, spent: str | None) -> None:
        """`spent`: the refresh token the new pair renewed, which the stored pair must hold (StalePairError
        otherwise); None: a sign-in's pair, which replaces any."""
        ...

    def pair_lock(self, member_id: str, user_id: int) -> AbstractAsyncContextManager[None]: ...

    async def add_grant(self, grant: Grant) -> None: ...
    async def grant(self, grant_id: str) -> Grant | None: ...
    async def grants(self, member_id: str | None = None) -> list[Grant]: ...
    async def touch_grant(self, grant_id: str) -> None: ...
    async def revoke_grant(self, grant_id: str) -> bool:
        """The grant and its tokens and codes; the (portal, user) pair too when no other grant uses it."""
        ...

    async def put_code(self, code: str, grant_id: str, record: dict[str, Any], expires: float) -> None: ...
    async def code(self, code: str) -> StoredCode | None: ...
    async def spend_code(self, code: str) -> bool:
        """Mark the code used; False when it already was (a replay)."""
        ...

    async def put_token(self, token: str, stored: StoredToken) -> None: ...
    async def token(self, token: str) -> StoredToken | None: ...
    async def spend_refresh_token(self, token: str) -> bool:
        """Mark a refresh token used (it rotates) and drop its grant's access tokens; False when it already was
        used: a reuse."""
        ...

    async def delete_token(self, token: str) -> None: ...

    async def aclose(self) -> None: ...


def pair_owner(member_id: str, user_id: int) -> str:
    """The associated data a pair is sealed with: a sealed value copied to another row does not open."""
    return f"pair|{member_id}|{user_id}"


def client_owner(client_id: str) -> str:
    return f"client|{client_id}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class _Sealing:
    """What both backends do with the cipher."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher

    def seal_pair(self, member_id: str, user_id: int, pair: TokenPair) -> str:
        return self._cipher.seal(_dumps(asdict(pair)).encode(), pair_owner(member_id, user_id))

    def open_pair(self, member_id: str, user_id: int, sealed: str) -> tuple[TokenPair, bool]:
        """The pair, and whether it was sealed under an old key."""
        opened = self._cipher.open(sealed, pair_owner(member_id, user_id))
        try:
            return TokenPair(**json.loads(opened.plaintext)), opened.stale
        except (TypeError, ValueError):
            raise SealError("a sealed pair is not a token pair") from None

    def seal_client(self, client_id: str, info: dict[str, Any]) -> str:
        record = dict(info)
        if record.get("client_secret"):
            record["client_secret"] = self._cipher.seal(str(record["client_secret"]).encode(), client_owner(client_id))
        return _dumps(record)

    def open_client(self, client_id: str, text: str) -> tuple[dict[str, Any], bool]:
        record: dict[str, Any] = json.loads(text)
        stale = False
        if record.get("client_secret"):
            opened = self._cipher.open(record["client_secret"], client_owner(client_id))
            record["client_secret"], stale = opened.plaintext.decode(), opened.stale
        return record, stale


# --- the embedded store ---

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, info TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS signins (state_hash TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS codes (
    code_hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, record TEXT NOT NULL, expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS codes_by_grant ON codes (grant_id);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, grant_id TEXT NOT NULL, client_id TEXT NOT NULL,
    scopes TEXT NOT NULL, resource TEXT, expires REAL, used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS tokens_by_grant ON tokens (grant_id);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, client_name TEXT NOT NULL, member_id TEXT NOT NULL,
    user_id INTEGER NOT NULL, user_name TEXT NOT NULL, toolsets TEXT, read_only INTEGER NOT NULL,
    created REAL NOT NULL, last_used REAL);
CREATE INDEX IF NOT EXISTS grants_by_user ON grants (member_id, user_id);
CREATE TABLE IF NOT EXISTS portals (
    member_id TEXT PRIMARY KEY, domain TEXT NOT NULL, client_endpoint TEXT NOT NULL, token_url TEXT NOT NULL,
    application_token_hash TEXT);
CREATE TABLE IF NOT EXISTS pairs (
    member_id TEXT NOT NULL, user_id INTEGER NOT NULL, sealed TEXT NOT NULL, refresh_hash TEXT NOT NULL,
    PRIMARY KEY (member_id, user_id));
"""
_GRANT_COLUMNS = (
    "grant_id, client_id, client_name, member_id, user_id, user_name, toolsets, read_only, created, last_used"
)
_LOCK_STRIPES = 64


class SqliteRemoteStore:
    """The embedded store: one SQLite file (`SqliteFile`), each operation one transaction in a worker thread."""

    def __init__(self, path: Path, cipher: TokenCipher, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.where = f"the remote store {path}"
        self._sealing = _Sealing(cipher)
        self._clock = clock
        self._file = SqliteFile(path, self._prepare)
        # Refreshes of one (portal, user) in this process queue on one of these; striped, so nothing is kept per
        # grant. One process only serves an embedded store, so no lock across processes is needed.
        self._refresh_locks = tuple(anyio.Lock() for _ in range(_LOCK_STRIPES))

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.executescript(_SCHEMA)
        now = self._clock()
        db.execute("DELETE FROM signins WHERE expires < ?", (now,))
        db.execute("DELETE FROM codes WHERE expires < ?", (now - 3600,))
        db.execute("DELETE FROM tokens WHERE expires IS NOT NULL AND expires < ?", (now,))

    async def aclose(self) -> None:
        self._file.close()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one transaction, in a worker thread."""

        def transaction() -> T:
            with self._file.connection() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result

        return await anyio.to_thread.run_sync(transaction)

    # --- registered clients ---

    async def save_client(self, client_id: str, info: dict[str, Any]) -> None:
        text = self._sealing.seal_client(client_id, info)
        await self._run(
            lambda db: db.execute("INSERT OR REPLACE INTO clients VALUES (?, ?, ?)", (client_id, text, self._clock()))
        )

    async def client(self, client_id: str) -> dict[str, Any] | None:
        row = await self._run(
            lambda db: db.execute("SELECT info FROM clients WHERE client_id = ?", (client_id,)).fetchone()
        )
        if row is None:
            return None
        record, stale = self._sealing.open_client(client_id, row[0])
        if stale:
            again = self._sealing.seal_client(client_id, record)
            await self._run(
                lambda db: db.execute(
                    "UPDATE clients SET info = ? WHERE client_id = ? AND info = ?", (again, client_id, row[0])
                )
            )
        return record

    # --- sign-ins in progress (consent page -> Bitrix24 -> callback) ---

    async def put_signin(self, state: str, record: dict[str, Any], ttl: float) -> None:
        now = self._clock()

        def put(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM signins WHERE expires < ?", (now,))
            db.execute("INSERT INTO signins VALUES (?, ?, ?)", (token_hash(state), _dumps(record), now + ttl))

        await self._run(put)

    async def signin(self, state: str) -> dict[str, Any] | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT record, expires FROM signins WHERE state_hash = ?", (token_hash(state),)
            ).fetchone()
        )
        if row is None or row[1] < self._clock():
            return None
        record: dict[str, Any] = json.loads(row[0])
        return record

    async def take_signin(self, state: str) -> dict[str, Any] | None:
        def take(db: sqlite3.Connection) -> tuple[str, float] | None:
            row: tuple[str, float] | None = db.execute(
                "SELECT record, expires FROM signins WHERE state_hash = ?", (token_hash(state),)
            ).fetchone()
            db.execute("DELETE FROM signins WHERE state_hash = ?", (token_hash(state),))
            return row

        row = await self._run(take)
        if row is None or row[1] < self._clock():
            return None
        record: dict[str, Any] = json.loads(row[0])
        return record

    # --- portals ---

    async def save_portal(self, portal: Portal) -> None:
        await self._run(lambda db: self._save_portal(db, portal))

    @staticmethod
    def _save_portal(db: sqlite3.Connection, portal: Portal) -> None:
        # The portal as its latest sign-in saw it (its domain may change; `member_id` does not).
        db.execute(
            "INSERT INTO portals (member_id, domain, client_endpoint, token_url) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (member_id) DO UPDATE SET domain = excluded.domain, "
            "client_endpoint = excluded.client_endpoint, token_url = excluded.token_url, "
            # An installation's token belongs to the address it was verified at.
            "application_token_hash = CASE WHEN portals.domain = excluded.domain "
            "THEN portals.application_token_hash END",
            (portal.member_id, portal.domain, portal.client_endpoint, portal.token_url),
        )

    async def portal(self, member_id: str) -> Portal | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT member_id, domain, client_endpoint, token_url FROM portals WHERE member_id = ?", (member_id,)
            ).fetchone()
        )
        return Portal(*row) if row is not None else None

    async def install(self, portal: Portal, application_token: str) -> None:
        def install(db: sqlite3.Connection) -> None:
            self._save_portal(db, portal)
            db.execute(
                "UPDATE portals SET application_token_hash = ? WHERE member_id = ?",
                (token_hash(application_token), portal.member_id),
            )

        await self._run(install)

    @staticmethod
    def _installed(db: sqlite3.Connection, member_id: str, application_token: str) -> bool:
        row = db.execute("SELECT application_token_hash FROM portals WHERE member_id = ?", (member_id,)).fetchone()
        return row is not None and row[0] is not None and row[0] == token_hash(application_token)

    async def installed(self, member_id: str, application_token: str) -> bool:
        return await self._run(lambda db: self._installed(db, member_id, application_token))

    async def uninstall(self, member_id: str, application_token: str) -> bool:
        def uninstall(db: sqlite3.Connection) -> bool:
            if not self._installed(db, member_id, application_token):
                return False
            for (grant_id,) in db.execute("SELECT grant_id FROM grants WHERE member_id = ?", (member_id,)).fetchall():
                self._delete_grant(db, grant_id)
            db.execute("DELETE FROM pairs WHERE member_id = ?", (member_id,))
            db.execute("DELETE FROM portals WHERE member_id = ?", (member_id,))
            return True

        return await self._run(uninstall)

    # --- pairs ---

    async def load_pair(self, member_id: str, user_id: int) -> TokenPair | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT sealed FROM pairs WHERE member_id = ? AND user_id = ?", (member_id, user_id)
            ).fetchone()
        )
        if row is None:
            return None
        pair, stale = self._sealing.open_pair(member_id, user_id, row[0])
        if stale:  # read under an old key: sealed again under the current one, unless a newer pair came meanwhile
            again = self._sealing.seal_pair(member_id, user_id, pair)
            await self._run(
                lambda db: db.execute(
                    "UPDATE pairs SET sealed = ? WHERE member_id = ? AND user_id = ? AND sealed = ?",
                    (again, member_id, user_id, row[0]),
                )
            )
        return pair

    async def save_pair(self, member_id: str, user_id: int, pair: TokenPair, spent: str | None) -> None:
        sealed = self._sealing.seal_pair(member_id, user_id, pair)
        refresh_hash = token_hash(pair.refresh_token)

        def save(db: sqlite3.Connection) -> bool:
            if spent is None:
                db.execute(
                    "INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?)", (member_id, user_id, sealed, refresh_hash)
                )
                return True
            cursor = db.execute(
                "UPDATE pairs SET sealed = ?, refresh_hash = ? "
                "WHERE member_id = ? AND user_id = ? AND refresh_hash = ?",
                (sealed, refresh_hash, member_id, user_id, token_hash(spent)),
            )
            return cursor.rowcount == 1

        if not await self._run(save):
            raise StalePairError(f"{self.where} holds another pair for this user")

    @asynccontextmanager
    async def pair_lock(self, member_id: str, user_id: int) -> AsyncIterator[None]:
        stripe = int(token_hash(pair_owner(member_id, user_id))[:8], 16) % _LOCK_STRIPES
        async with self._refresh_locks[stripe]:
            yield

    # --- grants ---

    async def add_grant(self, grant: Grant) -> None:
        row = (
            grant.grant_id,
            grant.client_id,
            grant.client_name,
            grant.member_id,
            grant.user_id,
            grant.user_name,
            ",".join(grant.toolsets) if grant.toolsets is not None else None,
            int(grant.read_only),
            grant.created,
            grant.last_used,
        )
        await self._run(
            lambda db: db.execute(f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES ({', '.join('?' * 10)})", row)
        )

    async def grant(self, grant_id: str) -> Grant | None:
        row = await self._run(
            lambda db: db.execute(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
        )
        return _sqlite_grant(row) if row is not None else None

    async def grants(self, member_id: str | None = None) -> list[Grant]:
        def select(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if member_id is None:
                return db.execute(f"SELECT {_GRANT_COLUMNS} FROM grants ORDER BY created").fetchall()
            return db.execute(
                f"SELECT {_GRANT_COLUMNS} FROM grants WHERE member_id = ? ORDER BY created", (member_id,)
            ).fetchall()

        return [_sqlite_grant(row) for row in await self._run(select)]

    async def touch_grant(self, grant_id: str) -> None:
        now = self._clock()
        await self._run(lambda db: db.execute("UPDATE grants SET last_used = ? WHERE grant_id = ?", (now, grant_id)))

    async def revoke_grant(self, grant_id: str) -> bool:
        def revoke(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT member_id, user_id FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
            if row is None:
                return False
            self._delete_grant(db, grant_id)
            others = db.execute("SELECT COUNT(*) FROM grants WHERE member_id = ? AND user_id = ?", row).fetchone()[0]
            if not others:
                db.execute("DELETE FROM pairs WHERE member_id = ? AND user_id = ?", row)
            return True

        return await self._run(revoke)

    @staticmethod
    def _delete_grant(db: sqlite3.Connection, grant_id: str) -> None:
        db.execute("DELETE FROM tokens WHERE grant_id = ?", (grant_id,))
        db.execute("DELETE FROM codes WHERE grant_id = ?", (grant_id,))
        db.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,))

    # --- authorization codes and MCP tokens (hashes only) ---

    async def put_code(self, code: str, grant_id: str, record: dict[str, Any], expires: float) -> None:
        def put(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM codes WHERE expires < ?", (self._clock() - 3600,))
            db.execute(
                "INSERT INTO codes VALUES (?, ?, ?, ?, 0)", (token_hash(code), grant_id, _dumps(record), expires)
            )

        await self._run(put)

    async def code(self, code: str) -> StoredCode | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT grant_id, record, used FROM codes WHERE code_hash = ?", (token_hash(code),)
            ).fetchone()
        )
        return StoredCode(row[0], json.loads(row[1]), bool(row[2])) if row is not None else None

    async def spend_code(self, code: str) -> bool:
        changed = await self._run(
            lambda db: (
                db.execute("UPDATE codes SET used = 1 WHERE code_hash = ? AND used = 0", (token_hash(code),)).rowcount
            )
        )
        return changed == 1

    async def put_token(self, token: str, stored: StoredToken) -> None:
        row = (
            token_hash(token),
            stored.kind,
            stored.grant_id,
            stored.client_id,
            " ".join(stored.scopes),
            stored.resource,
            stored.expires,
            int(stored.used),
        )
        await self._run(lambda db: db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))

    async def token(self, token: str) -> StoredToken | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT kind, grant_id, client_id, scopes, resource, expires, used FROM tokens WHERE token_hash = ?",
                (token_hash(token),),
            ).fetchone()
        )
        if row is None:
            return None
        kind, grant_id, client_id, scopes, resource, expires, used = row
        return StoredToken(kind, grant_id, client_id, tuple(scopes.split()), resource, expires, bool(used))

    async def spend_refresh_token(self, token: str) -> bool:
        def spend(db: sqlite3.Connection) -> bool:
            hashed = token_hash(token)
            changed = db.execute(
                "UPDATE tokens SET used = 1 WHERE token_hash = ? AND kind = 'refresh' AND used = 0", (hashed,)
            ).rowcount
            if changed == 1:  # the access tokens issued before this refresh go with it
                (grant_id,) = db.execute("SELECT grant_id FROM tokens WHERE token_hash = ?", (hashed,)).fetchone()
                db.execute("DELETE FROM tokens WHERE kind = 'access' AND grant_id = ?", (grant_id,))
            return changed == 1

        return await self._run(spend)

    async def delete_token(self, token: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM tokens WHERE token_hash = ?", (token_hash(token),)))


def _sqlite_grant(row: tuple[Any, ...]) -> Grant:
    grant_id, client_id, client_name, member_id, user_id, user_name, toolsets, read_only, created, last_used = row
    return Grant(
        grant_id,
        client_id,
        client_name,
        member_id,
        int(user_id),
        user_name,
        tuple(toolsets.split(",")) if toolsets is not None else None,
        bool(read_only),
        created,
        last_used,
    )


# --- Redis ---

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
        self._sealing = _Sealing(cipher)
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
            await self._redis.set(self._key("signin", token_hash(state)), _dumps(record), px=int(ttl * 1000))

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
        if not record or "domain" not in record:
            return None
        return Portal(member_id, record["domain"], record["client_endpoint"], record["token_url"])

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
        key = f"{self._pair_base(member_id, user_id)}:sealed"
        async with self._state.failures("reading a token pair"):
            sealed = await self._redis.hget(key, "sealed")
        if sealed is None:
            return None
        pair, stale = self._sealing.open_pair(member_id, user_id, sealed)
        if stale:
            again = self._sealing.seal_pair(member_id, user_id, pair)
            async with self._state.failures("re-sealing a token pair"):
                await self._replace_field(keys=[key], args=["sealed", sealed, again])
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
            "toolsets": "" if grant.toolsets is None else _dumps(list(grant.toolsets)),
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
        mapping = {"grant_id": grant_id, "record": _dumps(record), "used": "0"}
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


# --- one user's pair as a PairStore ---


class GrantPairStore:
    """The (portal, user) pair of a remote store as the `PairStore` `OAuthAuth` refreshes through; one is made per
    request, so nothing is kept per grant between requests."""

    def __init__(self, store: RemoteStore, member_id: str, user_id: int) -> None:
        self._store = store
        self.member_id = member_id
        self.user_id = user_id
        self.where = f"{store.where} (portal {member_id}, user {user_id})"

    async def load(self) -> TokenPair | None:
        try:
            return await self._store.load_pair(self.member_id, self.user_id)
        except SealError as exc:
            raise ValueError(f"{self.where}: {exc}") from None

    async def save(self, pair: TokenPair, spent: str | None) -> None:
        if spent is None and await self.load() is not None:
            raise StalePairError(f"{self.where} already holds a pair")
        await self._store.save_pair(self.member_id, self.user_id, pair, spent)

    def lock(self) -> AbstractAsyncContextManager[None]:
        return self._store.pair_lock(self.member_id, self.user_id)

    async def seed(self, initial: TokenPair | None) -> TokenPair | None:
        return await self.load() or initial


def open_sqlite_store(directory: Path, cipher: TokenCipher) -> SqliteRemoteStore:
    return SqliteRemoteStore(directory / STORE_NAME, cipher)


def open_store(config: RemoteConfig, state: RedisState | None) -> RemoteStore:
    """Redis when replicas share it (B24_TOKEN_KEY required, checked with the settings), else the embedded store in
    the state directory, whose key is B24_TOKEN_KEY or a key file generated once beside it."""
    if state is not None:
        return RedisRemoteStore(state, TokenCipher(config.token_keys))
    keys = config.token_keys or key_file_keys(config.store_dir)
    return open_sqlite_store(config.store_dir, TokenCipher(keys))
