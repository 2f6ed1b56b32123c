"""Benchmark: the sandbox's call history, seeded and served by voximplant.statistic.get, in process.

    .venv/bin/python benchmarks/statistics_seed.py [rows ...]      (default: 300 20000)

For each history size: the time to seed it (what `SandboxConfig(seed_calls=N)` costs on the first statistic.get),
and one statistic.get page counted (start=0, the whole history filtered for `total`), one keyset page
(start=-1 with >ID, which stops at 50 rows), and one filtered and sorted page. CPU time is shown beside wall time:
machines here are shared, and CPU time is what another run on a quiet machine would see. Medians of 5 runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from b24_telephony_mcp.sandbox import Caller, SandboxConfig, SandboxPortal
from b24_telephony_mcp.sandbox.methods.statistics import history, seed_history

RUNS = 5
ADMIN = Caller("oauth", 1, client_id="bench", app_id=1)


def timed(action: Callable[[], Any]) -> tuple[float, float]:
    """Median (wall ms, CPU ms) of RUNS runs."""
    walls, cpus = [], []
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def measure(size: int) -> list[tuple[str, float, float]]:
    portal = SandboxPortal(SandboxConfig(seed_calls=size))
    seeding = timed(lambda: seed_history(size, time.time(), portal.crm))
    history(portal)  # seeded once for the pages below

    def call(params: dict[str, Any]) -> Any:
        return portal.call("voximplant.statistic.get", params, ADMIN)

    keyset = {"start": -1, "SORT": "ID", "ORDER": "ASC", "FILTER": {">ID": max(size - 60, 0)}}
    filtered = {"FILTER": {"CALL_TYPE": [2, 3], ">=CALL_DURATION": 30}, "SORT": "CALL_START_DATE", "ORDER": "DESC"}
    return [
        (f"seed {size:,} rows", *seeding),
        (f"{size:,} rows: page with total (start=0)", *timed(lambda: call({"start": 0}))),
        (f"{size:,} rows: keyset page (start=-1, >ID)", *timed(lambda: call(keyset))),
        (f"{size:,} rows: filtered, sorted page", *timed(lambda: call(filtered))),
    ]


def main(sizes: list[int]) -> None:
    rows = [line for size in sizes for line in measure(size)]
    width = max(len(what) for what, _, _ in rows)
    print(f"{'measurement'.ljust(width)}  {'wall ms':>9}  {'CPU ms':>9}")
    for what, wall, cpu in rows:
        print(f"{what.ljust(width)}  {wall:9.1f}  {cpu:9.1f}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [300, 20_000])
