"""Benchmark: get_call_analytics over 10,000+ calls against paging get_call_statistics one page per request.

    .venv/bin/python benchmarks/analytics.py

One sandbox of 12,000 seeded calls with its limiter at the default 2 requests/s and burst 50 (the server's client
paced the same way), one server over stdio. The period holds the oldest 10,049 calls. Ours: one get_call_analytics
call (a counted page, then batch requests of 50 keyset pages). Baseline: get_call_statistics over the same period,
start=0, 50, 100... (what a model or a script without analytics would do), 201 requests at the limiter's pace.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.methods.statistics import history
from run import OUR_ARGS, app_env, mcp_client, progress, render_table, row, stdio_params

RATE, BURST = 2.0, 50
SEEDED, ROWS = 12_000, 10_049
TIMEOUT = 600.0


def requests_seen(sandbox: RunningSandbox) -> int:
    counts: dict[str, int] = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()["requests"]
    httpx2.post(f"{sandbox.base_url}/_sandbox/reset-stats")
    return sum(counts.values())


async def measure(state: Path) -> dict[str, Any]:
    with start_sandbox(SandboxConfig(seed_calls=SEEDED, rate_limit=RATE, rate_burst=BURST)) as sandbox:
        calls = history(sandbox.portal)
        start, end = calls[0].call_start_date.isoformat(), calls[ROWS].call_start_date.isoformat()
        env = {**app_env(sandbox, state / "tokens.json"), "XDG_STATE_HOME": str(state)}
        env |= {"B24_RATE_LIMIT": str(RATE), "B24_RATE_BURST": str(BURST)}
        async with mcp_client(stdio_params(OUR_ARGS, env)) as client:
            await client.list_tools()
            requests_seen(sandbox)
            progress(f"get_call_analytics over {ROWS:,} calls")
            began = time.perf_counter()
            result = await client.call_tool(
                "get_call_analytics",
                {"from": start, "to": end, "group_by": ["line"]},
                read_timeout_seconds=TIMEOUT,
            )
            ours_s = time.perf_counter() - began
            if result.is_error:
                raise RuntimeError(f"get_call_analytics failed: {str(result.content)[:300]}")
            rows = (result.structured_content or {})["result"]["rows"]
            ours_requests = requests_seen(sandbox)
            await anyio.sleep(BURST / RATE)  # the bucket drains: the baseline starts with the same burst
            requests_seen(sandbox)
            progress(f"get_call_statistics page by page over the same {rows:,} calls at {RATE:g} requests/s")
            began, read, page_start = time.perf_counter(), 0, 0
            while True:
                page = await client.call_tool(
                    "get_call_statistics",
                    {"FILTER": {">=CALL_START_DATE": start, "<CALL_START_DATE": end}, "start": page_start},
                    read_timeout_seconds=TIMEOUT,
                )
                answer = page.structured_content or {}
                if page.is_error:
                    raise RuntimeError(f"get_call_statistics failed: {str(page.content)[:300]}")
                read += len(answer["result"])
                if "next" not in answer:
                    break
                page_start = answer["next"]
            baseline_s = time.perf_counter() - began
            baseline_requests = requests_seen(sandbox)
    if read != rows:
        raise RuntimeError(f"the baseline read {read} rows, analytics {rows}")
    return {"rows": rows, "ours": (ours_requests, ours_s), "baseline": (baseline_requests, baseline_s)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="b24-bench-analytics-") as state:
        numbers = anyio.run(measure, Path(state))
    (ours_requests, ours_s), (base_requests, base_s) = numbers["ours"], numbers["baseline"]
    baseline_is = "get_call_statistics page by page"
    print(f"\nget_call_analytics over {numbers['rows']:,} calls, sandbox limiter {RATE:g}/s burst {BURST}")
    print(
        render_table(
            [
                row(
                    "analytics: REST requests",
                    "req",
                    ours_requests,
                    base_requests,
                    baseline_is,
                    ours_requests / base_requests,
                ),
                row("analytics: wall time", "s", ours_s, base_s, baseline_is, ours_s / base_s),
            ]
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
