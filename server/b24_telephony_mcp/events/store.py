"""Where the events are kept until they are read, whichever way they came: SQLite in the state directory, or
Redis with B24_REDIS_URL (replicas see the same events). Per portal, in arrival order, each event once (by
`TelephonyEvent.key`), for `retention` seconds.

A cursor is opaque to the reader: the SQLite row number, or the Redis stream entry ID, as text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread

from b24_telephony_mcp.events import RETENTION_DAYS
from b24_telephony_mcp.events.records import StoredEvent, TelephonyEvent
from b24_telephony_mcp.state.sqlite_file import SqliteFile

if TYPE_CHECKING:
    import sqlite3

    from b24_telephony_mcp.bitrix.redis_state import RedisState

DAY = 24 * 3600.0


class BadCursorError(ValueError):
    """A cursor this store never handed out."""


class EventStore(Protocol):
    async def add(self, portal: str, events: Sequence[TelephonyEvent]) -> list[StoredEvent]:
        """Keep the events not kept yet, in order; returns those (a repeat of a kept one is dropped)."""
        ...

    async def read(
        self, portal: str, after: str | None, names: Collection[str] | None = None, limit: int = 50
    ) -> list[StoredEvent]:
        """Up to `limit` events after the cursor `after` (None: the oldest kept), oldest first, of `names` only if
        given. Raises `BadCursorError` for a cursor that is not one of this store's."""
        ...

    async def latest(self, portal: str, limit: int) -> list[StoredEvent]:
        """The newest `limit` events, oldest first."""
        ...

    async def expire(self) -> int:
        """Drop the events older than the retention; returns how many."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    portal TEXT NOT NULL,
    key TEXT NOT NULL,
    event TEXT NOT NULL,
    ts INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (portal, key)
)
"""


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class SqliteEventStore:
    """The events in an SQLite file of the state directory. The row number is the cursor (AUTOINCREMENT: never
    reused, so a cursor stays valid after older rows expire); several processes may share the file."""

    def __init__(self, path: Path, retention: float = RETENTION_DAYS * DAY, clock: Any = time.time) -> None:
        self.path = path
        self.retention = retention
        self._clock = clock
        self._file = SqliteFile(path, self._prepare)

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(_SCHEMA)
        self._expire(db)

    def close(self) -> None:
        self._file.close()

    async def add(self, portal: str, events: Sequence[TelephonyEvent]) -> list[StoredEvent]:
        return await anyio.to_thread.run_sync(self._add, portal, list(events)) if events else []

    async def read(
        self, portal: str, after: str | None, names: Collection[str] | None = None, limit: int = 50
    ) -> list[StoredEvent]:
        start = _row_number(after)
        return await anyio.to_thread.run_sync(self._read, portal, start, tuple(names or ()), limit)

    async def latest(self, portal: str, limit: int) -> list[StoredEvent]:
        return await anyio.to_thread.run_sync(self._latest, portal, limit)

    async def expire(self) -> int:
        return await anyio.to_thread.run_sync(self._expire_now)

    def _add(self, portal: str, events: list[TelephonyEvent]) -> list[StoredEvent]:
        now = self._clock()
        added: list[StoredEvent] = []
        with self._file.connection() as db:
            db.execute("BEGIN IMMEDIATE")  # all or none: a crash leaves the batch to be read again, not half
            try:
                for event in events:
                    row = db.execute(
                        "INSERT INTO events (portal, key, event, ts, stored_at, data) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (portal, key) DO NOTHING RETURNING cursor",
                        (portal, event.key, event.event, event.ts, now, _text(event.data)),
                    ).fetchone()
                    if row is not None:
                        added.append(StoredEvent(str(row[0]), event.event, event.ts, event.data))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return added

    def _read(self, portal: str, start: int, names: tuple[str, ...], limit: int) -> list[StoredEvent]:
        query = "SELECT cursor, event, ts, data FROM events WHERE portal = ? AND cursor > ?"
        args: list[Any] = [portal, start]
        if names:
            query += f" AND event IN ({','.join('?' * len(names))})"
            args += names
        with self._file.connection() as db:
            rows = db.execute(f"{query} ORDER BY cursor LIMIT ?", (*args, limit)).fetchall()
        return [_stored(row) for row in rows]

    def _latest(self, portal: str, limit: int) -> list[StoredEvent]:
        with self._file.connection() as db:
            rows = db.execute(
                "SELECT cursor, event, ts, data FROM events WHERE portal = ? ORDER BY cursor DESC LIMIT ?",
                (portal, limit),
            ).fetchall()
        return [_stored(row) for row in reversed(rows)]

    def _expire_now(self) -> int:
        with self._file.connection() as db:
            return self._expire(db)

    def _expire(self, db: sqlite3.Connection) -> int:
        return db.execute("DELETE FROM events WHERE stored_at <= ?", (self._clock() - self.retention,)).rowcount


def _row_number(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit():
        raise BadCursorError(cursor)
    return int(cursor)


def _stored(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(str(row[0]), row[1], row[2], json.loads(row[3]))


# Keep the event (ARGV[2]) unless its key (KEYS[2]) was seen within the retention (ARGV[1], ms): a stream entry
# whose ID is the cursor, the stream trimmed to the retention on the way.
_ADD_EVENT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return false end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id = redis.call('XADD', KEYS[1], 'MINID', '~', now - tonumber(ARGV[1]), '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
"""


class RedisEventStore:
    """The events in Redis: a stream per portal (its entry IDs are the cursors), and a key per event seen, which
    expires with the retention (Redis trims and expires by itself, so `expire` has nothing to do)."""

    def __init__(self, state: RedisState, retention: float = RETENTION_DAYS * DAY) -> None:
        self._state = state
        self._retention_ms = int(retention * 1000)
        self._add_event = state.redis.register_script(_ADD_EVENT)

    def _stream(self, portal: str) -> str:
        return self._state.key("events", portal)

    async def add(self, portal: str, events: Sequence[TelephonyEvent]) -> list[StoredEvent]:
        added: list[StoredEvent] = []
        async with self._state.failures("storing events"):
            for event in events:
                record = _text({"event": event.event, "ts": event.ts, "data": event.data})
                seen = self._state.key("event-seen", portal, event.key)
                entry_id = await self._add_event(keys=[self._stream(portal), seen], args=[self._retention_ms, record])
                if entry_id:
                    added.append(StoredEvent(str(entry_id), event.event, event.ts, event.data))
        return added

    async def read(
        self, portal: str, after: str | None, names: Collection[str] | None = None, limit: int = 50
    ) -> list[StoredEvent]:
        start = "-" if not after else f"({_entry_id(after)}"
        found: list[StoredEvent] = []
        async with self._state.failures("reading events"):
            while len(found) < limit:
                entries = await self._state.redis.xrange(self._stream(portal), start, "+", count=limit)
                if not entries:
                    break
                found += [event for event in map(_entry, entries) if not names or event.event in names]
                start = f"({entries[-1][0]}"
        return found[:limit]

    async def latest(self, portal: str, limit: int) -> list[StoredEvent]:
        async with self._state.failures("reading events"):
            entries = await self._state.redis.xrevrange(self._stream(portal), "+", "-", count=limit)
        return [_entry(entry) for entry in reversed(entries)]

    async def expire(self) -> int:
        return 0

    def close(self) -> None:
        return None


def _entry_id(cursor: str) -> str:
    milliseconds, _, sequence = cursor.partition("-")
    if not (milliseconds.isdigit() and sequence.isdigit()):
        raise BadCursorError(cursor)
    return cursor


def _entry(entry: tuple[str, dict[str, str]]) -> StoredEvent:
    record = json.loads(entry[1]["e"])
    return StoredEvent(entry[0], record["event"], record["ts"], record["data"])
