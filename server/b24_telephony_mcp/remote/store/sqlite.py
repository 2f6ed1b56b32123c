"""The embedded backend: one SQLite file (mode 0600) in the state directory, for a single process."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

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
from b24_telephony_mcp.state.sqlite_file import SqliteFile

if TYPE_CHECKING:
    import sqlite3


T = TypeVar("T")

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
_GRANT_WIDTH = len(_GRANT_COLUMNS.split(","))
_TOKEN_COLUMNS = "kind, grant_id, client_id, scopes, resource, expires, used"
_TOKEN_WIDTH = len(_TOKEN_COLUMNS.split(","))
_TOKEN_COLUMNS_OF_T = ", ".join(f"t.{column.strip()}" for column in _TOKEN_COLUMNS.split(","))
# A grant with its portal and its user's pair: what `Access` holds, in one statement (completed by WHERE, or by a
# JOIN of the tokens table `t`).
_ACCESS = (
    ", ".join(f"g.{column.strip()}" for column in _GRANT_COLUMNS.split(","))
    + ", p.domain, p.client_endpoint, p.token_url, s.sealed FROM grants g"
    " JOIN portals p ON p.member_id = g.member_id"
    " JOIN pairs s ON s.member_id = g.member_id AND s.user_id = g.user_id"
)
_LOCK_STRIPES = 64


class SqliteRemoteStore:
    """The embedded store: one SQLite file (`SqliteFile`), each operation one transaction in a worker thread, but
    for the reads every request makes (`token_access`, `grant_access`), on its own thread."""

    def __init__(self, path: Path, cipher: TokenCipher, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.where = f"the remote store {path}"
        self._sealing = Sealing(cipher)
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

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` (one SELECT on a request's path) on this thread: `SqliteFile.read`."""
        return self._file.read(work)

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
            db.execute("INSERT INTO signins VALUES (?, ?, ?)", (token_hash(state), dumps(record), now + ttl))

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
        return await self._open_pair(member_id, user_id, row[0]) if row is not None else None

    async def _open_pair(self, member_id: str, user_id: int, sealed: str) -> TokenPair:
        pair, stale = self._sealing.open_pair(member_id, user_id, sealed)
        if stale:  # read under an old key: sealed again under the current one, unless a newer pair came meanwhile
            again = self._sealing.seal_pair(member_id, user_id, pair)
            await self._run(
                lambda db: db.execute(
                    "UPDATE pairs SET sealed = ? WHERE member_id = ? AND user_id = ? AND sealed = ?",
                    (again, member_id, user_id, sealed),
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

    async def grant_access(self, grant_id: str) -> Access | None:
        row = self._read(lambda db: db.execute(f"SELECT {_ACCESS} WHERE g.grant_id = ?", (grant_id,)).fetchone())
        return await self._access(row) if row is not None else None

    async def token_access(self, token: str) -> tuple[StoredToken, Access] | None:
        row = self._read(
            lambda db: db.execute(
                f"SELECT {_TOKEN_COLUMNS_OF_T}, {_ACCESS} JOIN tokens t ON t.grant_id = g.grant_id "
                "WHERE t.token_hash = ?",
                (token_hash(token),),
            ).fetchone()
        )
        if row is None:
            return None
        return _stored_token(row[:_TOKEN_WIDTH]), await self._access(row[_TOKEN_WIDTH:])

    async def _access(self, row: tuple[Any, ...]) -> Access:
        grant = _sqlite_grant(row[:_GRANT_WIDTH])
        domain, client_endpoint, token_url, sealed = row[_GRANT_WIDTH:]
        pair = await self._open_pair(grant.member_id, grant.user_id, sealed)
        return Access(grant, Portal(grant.member_id, domain, client_endpoint, token_url), pair)

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
            db.execute("INSERT INTO codes VALUES (?, ?, ?, ?, 0)", (token_hash(code), grant_id, dumps(record), expires))

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
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash(token),)
            ).fetchone()
        )
        return _stored_token(row) if row is not None else None

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


def _stored_token(row: tuple[Any, ...]) -> StoredToken:
    kind, grant_id, client_id, scopes, resource, expires, used = row
    return StoredToken(kind, grant_id, client_id, tuple(scopes.split()), resource, expires, bool(used))


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
