"""What `log_external_call` remembers between attempts: per application and EXTERNAL_CALL_ID, which steps are done
and their results, so a repeat resumes instead of registering the call twice.

`CallJournal` is the interface (`load`, `save`, `expire`); `SqliteCallJournal` keeps it in one SQLite file in the
state directory, which survives restarts and is safe for several server processes on one machine (WAL, and
`save` is a compare-and-set on a revision number, so two attempts at the same call cannot both claim it).
`RedisCallJournal` keeps the same three operations in Redis, for replicas on several machines.
Entries are opaque JSON objects to the journal; they expire `TTL` seconds after their last save.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread

from b24_telephony_mcp.state.sqlite_file import SqliteFile

if TYPE_CHECKING:
    import sqlite3

    from b24_telephony_mcp.bitrix.redis_state import RedisState

TTL = 7 * 24 * 3600.0
"""Entries are forgotten a week after their last change (the issue's retention; longer than any retry)."""


@dataclass(frozen=True)
class JournalRecord:
    entry: dict[str, Any]
    revision: int
    """Pass it back to `save`: the save succeeds only if nobody saved in between; after it, the stored revision
    is `revision + 1`."""


class CallJournal(Protocol):
    async def load(self, application: str, external_call_id: str) -> JournalRecord | None:
        """The entry, or None when there is none (or it expired)."""
        ...

    async def save(self, application: str, external_call_id: str, entry: Mapping[str, Any], revision: int) -> bool:
        """Store `entry` if the stored revision is still `revision` (0: no entry yet); False if another attempt
        saved first (then load again)."""
        ...

    async def expire(self) -> int:
        """Drop entries older than `TTL`; returns how many."""
        ...

    def close(self) -> None:
        """Let go of what it holds open (the server closes it on the way out)."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    application TEXT NOT NULL,
    external_call_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    saved_at REAL NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (application, external_call_id)
)
"""


class SqliteCallJournal:
    """The journal in an SQLite file of the state directory (`SqliteFile`). The compare-and-set is a single
    statement, so processes sharing the file never both win."""

    def __init__(self, path: Path, ttl: float = TTL, clock: Any = time.time) -> None:
        self.path = path
        self.ttl = ttl
        self._clock = clock
        self._file = SqliteFile(path, self._prepare)

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(_SCHEMA)
        self._expire(db)  # once per process: old entries never pile up

    def close(self) -> None:
        self._file.close()

    async def load(self, application: str, external_call_id: str) -> JournalRecord | None:
        return await anyio.to_thread.run_sync(self._load, application, external_call_id)

    async def save(self, application: str, external_call_id: str, entry: Mapping[str, Any], revision: int) -> bool:
        return await anyio.to_thread.run_sync(self._save, application, external_call_id, dict(entry), revision)

    async def expire(self) -> int:
        return await anyio.to_thread.run_sync(self._expire_now)

    def _load(self, application: str, external_call_id: str) -> JournalRecord | None:
        with self._file.connection() as db:
            row = db.execute(
                "SELECT entry, revision FROM calls WHERE application = ? AND external_call_id = ? AND saved_at > ?",
                (application, external_call_id, self._clock() - self.ttl),
            ).fetchone()
        return None if row is None else JournalRecord(json.loads(row[0]), row[1])

    def _save(self, application: str, external_call_id: str, entry: dict[str, Any], revision: int) -> bool:
        text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        now = self._clock()
        with self._file.connection() as db:
            if revision == 0:
                # An expired entry counts as none: replace it.
                cursor = db.execute(
                    "INSERT INTO calls VALUES (?, ?, 1, ?, ?) ON CONFLICT (application, external_call_id) DO UPDATE "
                    "SET revision = 1, saved_at = excluded.saved_at, entry = excluded.entry WHERE saved_at <= ?",
                    (application, external_call_id, now, text, now - self.ttl),
                )
            else:
                cursor = db.execute(
                    "UPDATE calls SET revision = revision + 1, saved_at = ?, entry = ? "
                    "WHERE application = ? AND external_call_id = ? AND revision = ?",
                    (now, text, application, external_call_id, revision),
                )
            return cursor.rowcount == 1

    def _expire_now(self) -> int:
        with self._file.connection() as db:
            return self._expire(db)

    def _expire(self, db: sqlite3.Connection) -> int:
        return db.execute("DELETE FROM calls WHERE saved_at <= ?", (self._clock() - self.ttl,)).rowcount


# Store `entry` under KEYS[1] if its revision is still ARGV[1] (0: none), bump the revision, renew the expiry.
_SAVE_ENTRY = """
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'revision', current + 1, 'entry', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisCallJournal:
    """The journal in Redis (B24_REDIS_URL), so a repeated call resumes on whichever replica it reaches: one hash
    per application and EXTERNAL_CALL_ID (`revision`, `entry`), saved by a compare-and-set script, expired by
    Redis itself `TTL` after its last save."""

    def __init__(self, state: RedisState, ttl: float = TTL) -> None:
        self._state = state
        self._ttl_ms = int(ttl * 1000)
        self._save_entry = state.redis.register_script(_SAVE_ENTRY)

    def _key(self, application: str, external_call_id: str) -> str:
        return self._state.key("journal", hashlib.sha256(f"{application}|{external_call_id}".encode()).hexdigest())

    async def load(self, application: str, external_call_id: str) -> JournalRecord | None:
        async with self._state.failures("reading the call journal"):
            revision, entry = await self._state.redis.hmget(
                self._key(application, external_call_id), "revision", "entry"
            )
        return None if entry is None else JournalRecord(json.loads(entry), int(revision))

    async def save(self, application: str, external_call_id: str, entry: Mapping[str, Any], revision: int) -> bool:
        text = json.dumps(dict(entry), ensure_ascii=False, separators=(",", ":"))
        async with self._state.failures("writing the call journal"):
            saved = await self._save_entry(
                keys=[self._key(application, external_call_id)], args=[revision, text, self._ttl_ms]
            )
        return bool(saved)

    async def expire(self) -> int:
        return 0  # Redis expires each entry itself

    def close(self) -> None:
        return None
