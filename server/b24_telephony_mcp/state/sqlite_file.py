"""One SQLite file in the state directory, opened the way every store here needs it: created 0600 in a 0700
directory (the rows hold phone numbers), WAL, one connection per process kept open, used from worker threads one
at a time; and, for the reads on a request's path, a second connection used on the caller's own thread (a thread hop
costs more than the read, and under WAL a reader never waits for a writer).

The connection is kept because closing the last connection to a WAL database checkpoints it, which would cost a
few fsyncs per operation. Each statement commits on its own (fully synced), so a store whose writes are single
statements is safe for several processes sharing the file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import sqlite3

T = TypeVar("T")

BUSY_TIMEOUT = 10.0
"""Seconds a statement waits for another process's write (and the file's setup for another's)."""

READ_TIMEOUT = 1.0
"""Seconds a read on the caller's thread may wait: only a WAL recovery by another process makes a reader wait."""


class SqliteFile:
    """The file at `path`; `prepare` (creating tables, a first clean-up) runs once per process, on first use."""

    def __init__(self, path: Path, prepare: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self._prepare = prepare
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread until the block ends (opened on first use)."""
        with self._lock:
            if self._db is None:
                self._db = self._open()
            yield self._db

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` (SELECTs only) on the caller's thread, on the reading connection: the file's last commit."""
        if self._reader is None:
            import sqlite3

            with self.connection():  # the file exists, in WAL, its tables made
                pass
            self._reader = sqlite3.connect(
                self.path, timeout=READ_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._reader.execute("PRAGMA query_only = ON")
        return work(self._reader)

    def _open(self) -> sqlite3.Connection:
        import sqlite3  # here, so a server that never writes a row does not load it at start

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                self._prepare(db)
                return db
            except sqlite3.OperationalError as exc:
                # Two processes opening a new file both switch it to WAL: SQLite refuses one at once, without
                # waiting (it would deadlock), so the loser tries again. Nothing is written until this passes.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None
