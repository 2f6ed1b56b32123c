"""The call journal's SQLite store: compare-and-set saves, expiry, restarts and several processes on one file."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from b24_telephony_mcp.state.journal import TTL, SqliteCallJournal

pytestmark = pytest.mark.anyio

APP, OTHER_APP = "app-1", "app-2"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_save_is_compare_and_set(tmp_path: Path) -> None:
    journal = SqliteCallJournal(tmp_path / "j.sqlite3")
    assert await journal.load(APP, "c1") is None
    assert await journal.save(APP, "c1", {"steps": {"register": {"state": "done"}}}, 0)
    assert not await journal.save(APP, "c1", {"steps": {}}, 0), "a second first save loses"
    record = await journal.load(APP, "c1")
    assert record is not None and record.revision == 1
    assert record.entry == {"steps": {"register": {"state": "done"}}}
    assert await journal.save(APP, "c1", {"steps": {"finish": {"state": "done"}}}, 1)
    assert not await journal.save(APP, "c1", {"steps": {}}, 1), "a stale revision loses"
    record = await journal.load(APP, "c1")
    assert record is not None and (record.revision, record.entry) == (2, {"steps": {"finish": {"state": "done"}}})
    assert await journal.load(OTHER_APP, "c1") is None, "entries belong to one application"


async def test_entries_expire_after_the_ttl(tmp_path: Path) -> None:
    clock = Clock()
    journal = SqliteCallJournal(tmp_path / "j.sqlite3", clock=clock)
    await journal.save(APP, "old", {"n": 1}, 0)
    clock.now += TTL - 1
    await journal.save(APP, "young", {"n": 2}, 0)
    assert await journal.load(APP, "old") is not None
    clock.now += 2
    assert await journal.load(APP, "old") is None, "past the TTL it reads as absent"
    assert await journal.save(APP, "old", {"n": 3}, 0), "and a new first save replaces it"
    record = await journal.load(APP, "old")
    assert record is not None and record.entry == {"n": 3}
    clock.now += TTL + 1
    assert await journal.expire() == 2
    assert await journal.load(APP, "young") is None


async def test_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "b24-telephony-mcp" / "j.sqlite3"
    await SqliteCallJournal(path).save(APP, "c1", {"steps": {"register": {"result": {"CALL_ID": "x"}}}}, 0)
    record = await SqliteCallJournal(path).load(APP, "c1")
    assert record is not None and record.entry["steps"]["register"]["result"]["CALL_ID"] == "x"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_only_one_of_many_processes_claims_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    script = (
        "import anyio, sys\n"
        "from pathlib import Path\n"
        "from b24_telephony_mcp.state.journal import SqliteCallJournal\n"
        "won = anyio.run(lambda: SqliteCallJournal(Path(sys.argv[1])).save('app', 'c1', {'by': sys.argv[2]}, 0))\n"
        "print('won' if won else 'lost')\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(path), str(n)], stdout=subprocess.PIPE, text=True)
        for n in range(6)
    ]
    outcomes = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]


def test_many_first_uses_of_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Opening a new file switches it to WAL; SQLite refuses one of two simultaneous switches without waiting,
    which once made a log_external_call answer JOURNAL_UNAVAILABLE. The loser now tries again."""
    failures: list[str] = []
    for trial in range(40):
        path = tmp_path / f"fresh-{trial}" / "j.sqlite3"
        start = threading.Barrier(4)

        def first_use(journal: SqliteCallJournal, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                journal._load(APP, "c1")  # the first statement opens and prepares the file
            except Exception as exc:
                failures.append(repr(exc))
            finally:
                journal.close()

        threads = [threading.Thread(target=first_use, args=(SqliteCallJournal(path),)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
