"""Benchmarks of batching: bulk logging through run_batch against the limiter's ceiling, and log_external_call
against the four single tools.

    make bench      (or: .venv/bin/python benchmarks/batching.py)

1. Bulk logging: finished calls logged per second through run_batch, with the sandbox portal's leaky bucket on
   (2 requests/s, burst 2: the cloud rate, a small burst so the steady state shows within seconds) and the
   server's own limiter set the same. The ceiling is what that limit allows: 50 commands per request × 2
   requests/s; the ratio is the commands per second achieved over that (target ≥ 0.9). Measured between the
   progress notifications that follow each batch request, after the burst is spent. Twice: calls of two steps
   (register, finish: 25 calls a request) and of four (with a recording URL and a transcript: 12 a request).
2. log_external_call against register → finish → attach record → attach transcript as four tool calls: REST
   requests per call (the sandbox counts them) and wall time per call, over stdio, limits off.

Prints a table and writes `benchmarks/results/batching.json`. Shared machines: medians, and ratios matter more.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx2

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from run import OUR_ARGS, RESULTS_FILE, app_env, mcp_client, progress, render_table, row, stdio_params, summary

RESULTS = RESULTS_FILE.with_name("batching.json")
RATE, BURST = 2.0, 2
BULK_REQUESTS = {2: 40, 4: 20}  # batch requests per run, by steps per call: ~20 s and ~10 s at 2/s
COMPARE_CALLS, COMPARE_WARMUP = 30, 5
TIMEOUT = 300.0
CALLER = "+1 906 219 5047"
MESSAGES = [{"SIDE": "Client", "START_TIME": 0, "STOP_TIME": 3, "MESSAGE": "Hello"}]


def finished_call(steps: int, index: int) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "USER_ID": 2,
        "PHONE_NUMBER": f"+7 900 {index:07d}",
        "TYPE": 2,
        "EXTERNAL_CALL_ID": f"bench-{uuid.uuid4().hex}",
        "DURATION": 30,
    }
    if steps == 4:
        arguments |= {"RECORD_URL": "https://pbx.example.com/r/1.mp3", "MESSAGES": MESSAGES}
    return arguments


def requests_seen(sandbox: RunningSandbox) -> dict[str, int]:
    counts: dict[str, int] = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()["requests"]
    httpx2.post(f"{sandbox.base_url}/_sandbox/reset-stats")
    return counts


async def bulk_logging(steps: int, state: Path) -> dict[str, Any]:
    per_request = 50 // steps
    requests = BULK_REQUESTS[steps]
    items = [{"tool": "log_external_call", "arguments": finished_call(steps, n)} for n in range(per_request * requests)]
    with start_sandbox(SandboxConfig(rate_limit=RATE, rate_burst=BURST)) as sandbox:
        env = {**app_env(sandbox, state / f"tokens-{steps}.json"), "XDG_STATE_HOME": str(state)}
        env |= {"B24_RATE_LIMIT": str(RATE), "B24_RATE_BURST": str(BURST)}
        async with mcp_client(stdio_params(OUR_ARGS, env)) as client:
            stamps: list[tuple[float, float]] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                stamps.append((time.perf_counter(), done))

            progress(f"bulk logging: {len(items)} calls of {steps} steps through run_batch at {RATE:g} requests/s")
            started = time.perf_counter()
            result = await client.call_tool(
                "run_batch", {"items": items}, progress_callback=on_progress, read_timeout_seconds=TIMEOUT
            )
            elapsed = time.perf_counter() - started
        outcome = (result.structured_content or {}).get("result", {})
        if result.is_error or outcome.get("failed"):
            raise RuntimeError(f"bulk logging failed: {str(result.content)[:300]}")
        sent = requests_seen(sandbox)
    # The steady state: from the notification after the burst's requests to the last one.
    (first_at, first_done), (last_at, last_done) = stamps[BURST], stamps[-1]
    calls_per_s = (last_done - first_done) / (last_at - first_at)
    ceiling = 50 * RATE
    return {
        "calls": len(items),
        "steps": steps,
        "requests": sent,
        "wall_s": elapsed,
        "calls_per_s": calls_per_s,
        "commands_per_s": calls_per_s * steps,
        "ceiling_commands_per_s": ceiling,
        "ratio": calls_per_s * steps / ceiling,
    }


async def log_vs_single_tools(state: Path) -> dict[str, Any]:
    with start_sandbox(SandboxConfig(rate_limit=10000, rate_burst=100000)) as sandbox:
        env = {**app_env(sandbox, state / "tokens-compare.json"), "XDG_STATE_HOME": str(state)}
        async with mcp_client(stdio_params(OUR_ARGS, env)) as client:

            async def one_tool(index: int) -> None:
                result = await client.call_tool("log_external_call", finished_call(4, index))
                if result.is_error:
                    raise RuntimeError(f"log_external_call failed: {result.content}")

            async def four_tools(index: int) -> None:
                arguments = finished_call(4, index)
                register = {k: arguments[k] for k in ("USER_ID", "PHONE_NUMBER", "TYPE", "EXTERNAL_CALL_ID")}
                registered = await client.call_tool("register_external_call", {**register, "SHOW": 0})
                call_id = (registered.structured_content or {})["result"]["CALL_ID"]
                for tool, extra in (
                    ("finish_external_call", {"USER_ID": 2, "DURATION": 30}),
                    ("attach_external_call_record", {"RECORD_URL": arguments["RECORD_URL"]}),
                    ("attach_call_transcription", {"MESSAGES": MESSAGES}),
                ):
                    result = await client.call_tool(tool, {"CALL_ID": call_id, **extra})
                    if result.is_error:
                        raise RuntimeError(f"{tool} failed: {result.content}")

            measured: dict[str, Any] = {}
            for name, body in (("log_external_call", one_tool), ("four_tools", four_tools)):
                progress(f"per call: {name}")
                for index in range(COMPARE_WARMUP):
                    await body(index)
                requests_seen(sandbox)
                samples = []
                for index in range(COMPARE_CALLS):
                    started = time.perf_counter()
                    await body(index)
                    samples.append(time.perf_counter() - started)
                sent = requests_seen(sandbox)
                measured[name] = {
                    "ms": summary(samples, scale=1000.0),
                    "requests_per_call": sum(sent.values()) / COMPARE_CALLS,
                    "requests": sent,
                }
    return measured


def build_rows(bulk: dict[int, dict[str, Any]], compare: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for steps, numbers in bulk.items():
        rows.append(
            row(
                f"bulk logging, {steps}-step calls via run_batch: commands/s",
                "cmd/s",
                numbers["commands_per_s"],
                numbers["ceiling_commands_per_s"],
                f"ceiling 50 × {RATE:g}/s",
                numbers["ratio"],
            )
        )
    one, four = compare["log_external_call"], compare["four_tools"]
    rows += [
        row(
            "log_external_call: REST requests per call",
            "req",
            one["requests_per_call"],
            four["requests_per_call"],
            "four single tools",
            one["requests_per_call"] / four["requests_per_call"],
        ),
        row(
            "log_external_call: wall time per call (stdio)",
            "ms",
            one["ms"]["median"],
            four["ms"]["median"],
            "four single tools",
            one["ms"]["median"] / four["ms"]["median"],
        ),
    ]
    return rows


async def run() -> dict[str, Any]:
    with anyio.fail_after(TIMEOUT), tempfile.TemporaryDirectory(prefix="b24-bench-batch-") as directory:
        state = Path(directory)
        bulk = {steps: await bulk_logging(steps, state) for steps in BULK_REQUESTS}
        compare = await log_vs_single_tools(state)
    return {"bulk_logging": bulk, "log_vs_single_tools": compare, "table": build_rows(bulk, compare)}


def main() -> int:
    report = anyio.run(run)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(render_table(report["table"]))
    for steps, numbers in report["bulk_logging"].items():
        print(
            f"note: {numbers['calls']} {steps}-step calls logged in {numbers['wall_s']:.1f} s with "
            f"{numbers['requests']} REST requests; steady {numbers['calls_per_s']:.1f} calls/s"
        )
    one = report["log_vs_single_tools"]["log_external_call"]["ms"]
    print(f"note: log_external_call p10/p90 {one['p10']:.1f}/{one['p90']:.1f} ms; median of {COMPARE_CALLS} calls")
    print(f"\nwritten: {RESULTS.relative_to(Path(__file__).resolve().parent.parent)}")
    return 0 if all(numbers["ratio"] >= 0.9 for numbers in report["bulk_logging"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
