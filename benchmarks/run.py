"""Benchmarks: what b24-telephony-mcp costs on top of the official MCP SDK's own floor.

    make bench      (or: .venv/bin/python benchmarks/run.py)
    .venv/bin/python benchmarks/run.py --cold-only --cold-runs 30     (part 1 alone, more runs; prints only)

Measures, in one run and all on loopback:
1. cold start: spawn to the first `tools/list` response over stdio, ours vs a one-tool `MCPServer`;
2. the size of the `tools/list` answer (compact JSON of the tools array);
3. per-call round trip over stdio: `list_external_lines` vs the same REST call made directly, and our
   overhead vs the SDK's trivial-tool round trip;
4. the same over streamable HTTP;
5. the shared service (replicas.py): the Redis store's per-call overhead, and calls/s through 1 and 3 replicas.

Prints a table and writes `benchmarks/results/latest.json`. Machines here are shared and small, so
every figure is a median and the ratios matter more than the absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from replicas import measure_replicas  # puts tests/ on the path: its helpers are shared with the benchmarks
from replicas import rows as replica_rows
from support import app_variables

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE_SCRIPT = str(HERE / "baseline_server.py")
RESULTS_FILE = HERE / "results" / "latest.json"
OUR_ARGS = ("-m", "b24_telephony_mcp")

COLD_RUNS = 7
CALLS = 300
WARMUP = 30
# Calls per measurement per round. Rounds rotate through the measurements so a noisy neighbour on the
# shared cores slows all of them alike instead of skewing whichever happened to run at that moment.
BLOCK = 25
# A fresh sandbox has no lines, and an empty list would spare the JSON and schema-validation paths.
SEED_LINES = 5

OVERALL_TIMEOUT = 480.0
SPAWN_TIMEOUT = 30.0
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# Port 9 (discard) on loopback: nothing answers, so a startup that contacted the portal would fail loudly.
BENCH_WEBHOOK = "http://127.0.0.1:9/rest/1/benchcode/"
URL_LINE = re.compile(r"serving MCP over http at (http://\S+)")
STDERR_KEEP = 64 * 1024

Call = Callable[[], Awaitable[None]]


# ---------------------------------------------------------------------------------------------------------
# statistics and output


def summary(samples: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """Median and spread of `samples`, multiplied by `scale` (1000 turns seconds into ms)."""
    cuts = statistics.quantiles(samples, n=10) if len(samples) > 1 else [samples[0]] * 9
    return {
        "n": len(samples),
        "median": statistics.median(samples) * scale,
        "p10": cuts[0] * scale,
        "p90": cuts[-1] * scale,
        "min": min(samples) * scale,
    }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "s":
        return f"{value:.3f} s"
    if unit != "ms":
        return f"{value:,.1f} {unit}"
    return f"{value:.2f} ms"


def render_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ("measurement", "ours", "baseline", "ratio")
    body = [
        (
            row["what"],
            fmt(row["ours"], row["unit"]),
            f"{fmt(row['baseline'], row['unit'])}  ({row['baseline_is']})" if row["baseline"] is not None else "—",
            f"{row['ratio']:.2f}×" if row["ratio"] is not None else "—",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def row(
    what: str, unit: str, ours: float | None, baseline: float | None, baseline_is: str, ratio: float | None
) -> dict[str, Any]:
    return {"what": what, "unit": unit, "ours": ours, "baseline": baseline, "baseline_is": baseline_is, "ratio": ratio}


def progress(message: str) -> None:
    # Progress on stderr so stdout carries only the table.
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# environments


def clean_env() -> dict[str, str]:
    # The caller's own B24_* settings (say, a real webhook) must never reach a benchmarked server. Nor may
    # PYTHONDONTWRITEBYTECODE: an installed copy has its bytecode (pip compiles it, or the first start writes it),
    # so the unmeasured first start must leave it for the measured ones, or each start recompiles the sources.
    skip = ("B24_", "PYTHONDONTWRITEBYTECODE")
    return {key: value for key, value in os.environ.items() if not key.startswith(skip)}


def webhook_env() -> dict[str, str]:
    return {**clean_env(), "B24_WEBHOOK_URL": BENCH_WEBHOOK, "B24_LOG_LEVEL": "WARNING"}


def app_env(sandbox: RunningSandbox, token_file: Path) -> dict[str, str]:
    return {
        **clean_env(),
        **app_variables(sandbox),
        "B24_TOKEN_FILE": str(token_file),
        "B24_RATE_LIMIT": "10000",
        "B24_RATE_BURST": "100000",
        "B24_LOG_LEVEL": "WARNING",
    }


def stdio_params(args: Sequence[str], env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=list(args), env=env, cwd=str(REPO))


def mcp_client(server: Any) -> Client:
    # cache=None: every request must reach the server, or we would time the client's cache.
    return Client(server, mode="legacy", cache=None, read_timeout_seconds=CALL_TIMEOUT)


def tools_json(tools: Sequence[Any]) -> list[dict[str, Any]]:
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


def compact_size(data: Any) -> int:
    return len(json.dumps(data, separators=(",", ":")).encode())


# ---------------------------------------------------------------------------------------------------------
# child processes


async def stop_process(process: anyio.abc.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; shielded so a timeout or Ctrl-C cannot skip it."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await process.aclose()


class StderrLog:
    """A child's stderr: the lines up to its announcement, then (bounded) whatever it wrote during the run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.head: list[str] = []
        self.after_announce = bytearray()

    def text(self) -> str:
        return self.after_announce.decode(errors="replace")


async def drain(stream: BufferedByteReceiveStream, log: StderrLog) -> None:
    # Keep reading so the pipe never fills and blocks the server mid-benchmark.
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        while True:
            chunk = await stream.receive()
            if len(log.after_announce) < STDERR_KEEP:
                log.after_announce += chunk[: STDERR_KEEP - len(log.after_announce)]


@asynccontextmanager
async def http_server(name: str, args: Sequence[str], env: dict[str, str]) -> AsyncIterator[tuple[str, StderrLog]]:
    """Spawn a server that announces `serving MCP over http at URL` on stderr; yield the URL."""
    process = await anyio.open_process(
        [sys.executable, *args],
        env=env,
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log = StderrLog(name)
    try:
        assert process.stderr is not None
        lines = BufferedByteReceiveStream(process.stderr)
        url = None
        with anyio.fail_after(SPAWN_TIMEOUT):
            while url is None:
                try:
                    raw = await lines.receive_until(b"\n", 1 << 20)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    await process.wait()
                    raise RuntimeError(
                        f"{name} exited ({process.returncode}) before announcing its URL:\n" + "\n".join(log.head)
                    ) from None
                text = raw.decode(errors="replace")
                log.head.append(text)
                if match := URL_LINE.search(text):
                    url = match.group(1)
        async with anyio.create_task_group() as group:
            group.start_soon(drain, lines, log)
            try:
                yield url, log
            finally:
                group.cancel_scope.cancel()
    finally:
        await stop_process(process)


# ---------------------------------------------------------------------------------------------------------
# measurements


async def cold_start_once(params: StdioServerParameters) -> tuple[float, list[dict[str, Any]]]:
    with anyio.fail_after(SPAWN_TIMEOUT):
        started = time.perf_counter()
        async with mcp_client(params) as client:
            result = await client.list_tools()
            elapsed = time.perf_counter() - started
            return elapsed, tools_json(result.tools)


async def measure_cold_start(runs: int = COLD_RUNS) -> dict[str, Any]:
    contenders = {
        "ours": stdio_params(OUR_ARGS, webhook_env()),
        "baseline": stdio_params([BASELINE_SCRIPT], clean_env()),
        # Our command pauses the garbage collector for start-up (b24_telephony_mcp/__main__.py); the SDK's server
        # started the same way says how much of the ratio that pause is, and how much our own start-up work.
        "baseline_collector_paused": stdio_params([BASELINE_SCRIPT, "--collector-paused"], clean_env()),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    tools: dict[str, list[dict[str, Any]]] = {}
    # One unmeasured start each first: it pays for cold page caches and any .pyc compilation.
    for index in range(runs + 1):
        # Rotate who goes first, so none always runs right after the same one's teardown.
        order = list(contenders.items())
        for name, params in order[index % len(order) :] + order[: index % len(order)]:
            elapsed, listed = await cold_start_once(params)
            tools[name] = listed
            if index:
                times[name].append(elapsed)
        progress(f"cold start {index}/{runs}")
    result = {name: summary(samples) for name, samples in times.items()}
    result["ratio"] = result["ours"]["median"] / result["baseline"]["median"]
    result["ratio_collector_paused"] = result["ours"]["median"] / result["baseline_collector_paused"]["median"]
    result["samples_s"] = times
    return {"cold_start_s": result, "tools": tools}


def tools_list_size(tools: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    ours, baseline = tools["ours"], tools["baseline"]
    total = compact_size(ours)
    per_tool = {tool["name"]: compact_size(tool) for tool in ours}
    return {
        "ours_tools": len(ours),
        "ours_total_bytes": total,
        "ours_per_tool_mean_bytes": total / len(ours),
        "ours_per_tool_bytes": dict(sorted(per_tool.items(), key=lambda item: -item[1])),
        "baseline_tools": len(baseline),
        "baseline_total_bytes": compact_size(baseline),
    }


def tool_call(client: Client, name: str) -> Call:
    async def call() -> None:
        result = await client.call_tool(name, {})
        if result.is_error:
            texts = [block.text for block in result.content if block.type == "text"]
            raise RuntimeError(f"{name} failed: {' '.join(texts)}")

    return call


def direct_rest(http: httpx2.AsyncClient, sandbox: RunningSandbox) -> Call:
    url = f"{sandbox.base_url}/rest/telephony.externalLine.get"
    body = {"auth": sandbox.access_token}

    async def call() -> None:
        response = await http.post(url, json=body)
        if response.status_code != 200 or "result" not in response.json():
            raise RuntimeError(f"direct REST call failed: HTTP {response.status_code} {response.text[:200]}")

    return call


async def sample_interleaved(calls: Mapping[str, Call]) -> dict[str, list[float]]:
    names = list(calls)
    for name in names:
        progress(f"warm-up: {name}")
        for _ in range(WARMUP):
            await calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = CALLS // BLOCK
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            call, out = calls[name], samples[name]
            for _ in range(BLOCK):
                started = time.perf_counter()
                await call()
                out.append(time.perf_counter() - started)
        if (index + 1) % 4 == 0:
            progress(f"per-call round {index + 1}/{rounds}")
    return samples


def http_mcp_client(url: str, token: str | None, stack: AsyncExitStack) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The SDK's own defaults for MCP clients: a long read timeout, since the GET stream idles between events.
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
    stack.push_async_callback(http.aclose)  # a client we pass in is ours to close, not the transport's
    return mcp_client(streamable_http_client(url, http_client=http))


async def seed_lines(http: httpx2.AsyncClient, sandbox: RunningSandbox) -> None:
    for index in range(SEED_LINES):
        body = {"auth": sandbox.access_token, "NUMBER": f"7495000{index:04d}", "NAME": f"Bench line {index}"}
        response = await http.post(f"{sandbox.base_url}/rest/telephony.externalLine.add", json=body)
        if response.status_code != 200 or "result" not in response.json():
            raise RuntimeError(f"could not seed a line: HTTP {response.status_code} {response.text[:200]}")


async def measure_calls(stack: AsyncExitStack) -> tuple[dict[str, Any], list[StderrLog]]:
    sandbox = stack.enter_context(start_sandbox(SandboxConfig(rate_limit=10000, rate_burst=100000)))
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="b24-bench-")))
    mcp_token = secrets.token_urlsafe(32)
    logs: list[StderrLog] = []
    rest = httpx2.AsyncClient(timeout=CALL_TIMEOUT)
    stack.push_async_callback(rest.aclose)
    await seed_lines(rest, sandbox)

    progress("starting servers for the per-call measurements")
    ours_stdio = await stack.enter_async_context(
        mcp_client(stdio_params(OUR_ARGS, app_env(sandbox, tmp / "tokens-stdio.json")))
    )
    floor_stdio = await stack.enter_async_context(mcp_client(stdio_params([BASELINE_SCRIPT], clean_env())))

    http_env = {**app_env(sandbox, tmp / "tokens-http.json"), "B24_MCP_AUTH_TOKEN": mcp_token}
    ours_url, ours_log = await stack.enter_async_context(
        http_server("ours (http)", [*OUR_ARGS, "--transport", "http", "--host", "127.0.0.1", "--port", "0"], http_env)
    )
    floor_url, floor_log = await stack.enter_async_context(
        http_server("baseline (http)", [BASELINE_SCRIPT, "--http", "--port", "0"], clean_env())
    )
    json_url, json_log = await stack.enter_async_context(
        http_server(
            "baseline (http, JSON responses)", [BASELINE_SCRIPT, "--http", "--json", "--port", "0"], clean_env()
        )
    )
    logs += [ours_log, floor_log, json_log]
    ours_http = await stack.enter_async_context(http_mcp_client(ours_url, mcp_token, stack))
    floor_http = await stack.enter_async_context(http_mcp_client(floor_url, None, stack))
    floor_http_json = await stack.enter_async_context(http_mcp_client(json_url, None, stack))

    samples = await sample_interleaved(
        {
            "direct_rest": direct_rest(rest, sandbox),
            "ours_stdio": tool_call(ours_stdio, "list_external_lines"),
            "floor_stdio": tool_call(floor_stdio, "ping"),
            "ours_http": tool_call(ours_http, "list_external_lines"),
            "floor_http": tool_call(floor_http, "ping"),
            "floor_http_json": tool_call(floor_http_json, "ping"),
        }
    )
    stats = {name: summary(values, scale=1000.0) for name, values in samples.items()}

    async def start_server(name: str, env: dict[str, str]) -> str:
        args = [*OUR_ARGS, "--transport", "http", "--host", "127.0.0.1", "--port", "0"]
        url, log = await stack.enter_async_context(http_server(name, args, env))
        logs.append(log)
        return url

    async def connect(url: str) -> Client:
        return await stack.enter_async_context(http_mcp_client(url, mcp_token, stack))

    shared = await measure_replicas(
        stack,
        app_env(sandbox, tmp / "tokens-shared.json"),
        mcp_token,
        start_server,
        connect,
        sample_interleaved,
        tool_call,
        progress,
    )
    direct = stats["direct_rest"]["median"]
    derived: dict[str, Any] = {}
    # Each transport is compared with the SDK floor in the same response mode: our HTTP transport answers
    # with plain JSON (json_response=True), so its floor is the baseline served the same way.
    for transport, floor_name in (("stdio", "floor_stdio"), ("http", "floor_http_json")):
        ours = stats[f"ours_{transport}"]["median"]
        floor = stats[floor_name]["median"]
        derived[transport] = {
            "direct_rest_ms": direct,
            "ours_ms": ours,
            "overhead_ms": ours - direct,
            "sdk_floor_ms": floor,
            "overhead_vs_floor": (ours - direct) / floor,
            "ours_vs_direct": ours / direct,
        }
    return {"per_call_ms": stats, "per_call": derived, "shared_service": shared}, logs


# ---------------------------------------------------------------------------------------------------------
# the run


def build_rows(cold: Mapping[str, Any], size: Mapping[str, Any], per_call: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = [
        row(
            "cold start: spawn → first tools/list (stdio)",
            "s",
            cold["ours"]["median"],
            cold["baseline"]["median"],
            "one-tool MCPServer",
            cold["ratio"],
        ),
        row(
            "cold start, the SDK's server also started with the collector paused",
            "s",
            cold["ours"]["median"],
            cold["baseline_collector_paused"]["median"],
            "one-tool MCPServer, collector paused",
            cold["ratio_collector_paused"],
        ),
        row(
            f"tools/list size, all {size['ours_tools']} tools",
            "B",
            size["ours_total_bytes"],
            size["baseline_total_bytes"],
            "one-tool MCPServer",
            size["ours_total_bytes"] / size["baseline_total_bytes"],
        ),
        row(
            "tools/list size, per tool (mean)",
            "B",
            size["ours_per_tool_mean_bytes"],
            size["baseline_total_bytes"] / size["baseline_tools"],
            "one-tool MCPServer",
            size["ours_per_tool_mean_bytes"] / (size["baseline_total_bytes"] / size["baseline_tools"]),
        ),
    ]
    for transport, label in (("stdio", "stdio"), ("http", "streamable HTTP")):
        numbers = per_call[transport]
        rows += [
            row(
                f"{label}: list_external_lines round trip",
                "ms",
                numbers["ours_ms"],
                numbers["direct_rest_ms"],
                "direct REST",
                numbers["ours_vs_direct"],
            ),
            row(
                f"{label}: our overhead (ours − direct REST)",
                "ms",
                numbers["overhead_ms"],
                numbers["sdk_floor_ms"],
                "SDK trivial call",
                numbers["overhead_vs_floor"],
            ),
        ]
    return rows


def environment() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mcp": version("mcp"),
        "b24_telephony_mcp": version("b24-telephony-mcp"),
        "settings": {"cold_runs": COLD_RUNS, "calls": CALLS, "warmup": WARMUP, "block": BLOCK},
    }


class Terminated(Exception):
    """Ctrl-C or SIGTERM arrived; the children have been stopped."""


async def measure_all() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[StderrLog]]:
    with anyio.fail_after(OVERALL_TIMEOUT):
        progress("cold start")
        cold = await measure_cold_start()
        size = tools_list_size(cold["tools"])
        async with AsyncExitStack() as stack:
            calls, logs = await measure_calls(stack)
        progress("servers stopped")
    return cold, size, calls, logs


async def run() -> dict[str, Any]:
    started = time.perf_counter()
    meta = environment()
    # Ctrl-C and SIGTERM (say, a CI timeout) cancel the measurement the way a timeout does, so every child is
    # stopped on the way out. asyncio's own Ctrl-C handling (cancelling the main task from outside anyio's
    # scopes) was seen to leave the loop spinning at 100% CPU in anyio's task bookkeeping instead.
    loop = asyncio.get_running_loop()
    with anyio.CancelScope() as scope:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, scope.cancel)
        try:
            outcome = await measure_all()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    if scope.cancelled_caught:
        raise Terminated
    cold, size, calls, logs = outcome
    json_floor, sse_floor = (
        calls["per_call_ms"]["floor_http_json"]["median"],
        calls["per_call_ms"]["floor_http"]["median"],
    )
    notes = [
        f"SDK trivial call over streamable HTTP with json_response=True (as our server answers): {json_floor:.2f} ms "
        f"vs {sse_floor:.2f} ms with SSE responses (the SDK default) = {json_floor / sse_floor:.2f}×",
        f"list_external_lines answers {SEED_LINES} seeded lines; cold start min: ours "
        f"{cold['cold_start_s']['ours']['min']:.3f} s, baseline {cold['cold_start_s']['baseline']['min']:.3f} s",
    ]
    notes += [
        f"{log.name} wrote to stderr during the run:\n{log.text().rstrip()}" for log in logs if log.text().strip()
    ]
    report = {
        "meta": {**meta, "duration_s": time.perf_counter() - started},
        "cold_start_s": cold["cold_start_s"],
        "tools_list": size,
        **calls,
        "notes": notes,
    }
    report["table"] = build_rows(report["cold_start_s"], size, report["per_call"]) + replica_rows(
        report["shared_service"], row
    )
    return report


def innermost(exc: BaseException) -> BaseException:
    # anyio task groups wrap errors in exception groups; the one real error reads better on its own.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def cold_only(runs: int) -> int:
    """Only the cold start, with as many runs as asked: for work on start-up, where the rest is noise."""
    cold = anyio.run(measure_cold_start, runs)["cold_start_s"]
    ours, baseline, paused = cold["ours"], cold["baseline"], cold["baseline_collector_paused"]
    print(
        f"cold start, {runs} interleaved runs: ours median {ours['median']:.3f} s (min {ours['min']:.3f}), "
        f"baseline median {baseline['median']:.3f} s (min {baseline['min']:.3f}); ratio {cold['ratio']:.3f}×; "
        f"baseline with the collector paused {paused['median']:.3f} s: ratio {cold['ratio_collector_paused']:.3f}×"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-only", action="store_true", help="measure only the cold start; write no results file")
    parser.add_argument(
        "--cold-runs",
        type=int,
        default=COLD_RUNS,
        help=f"cold-start runs, with --cold-only (default {COLD_RUNS})",
    )
    args = parser.parse_args()
    if args.cold_only:
        return cold_only(args.cold_runs)
    try:
        report = anyio.run(run)
    except BaseException as exc:
        error = innermost(exc)
        if isinstance(error, KeyboardInterrupt | Terminated):
            print("interrupted; child processes stopped", file=sys.stderr)
            return 130
        if isinstance(error, TimeoutError):
            print(
                f"timed out: a server took over {SPAWN_TIMEOUT:.0f} s to start, a call over {CALL_TIMEOUT:.0f} s, "
                f"or the run over {OVERALL_TIMEOUT:.0f} s; child processes stopped",
                file=sys.stderr,
            )
            return 1
        if error is exc:
            raise
        raise error from None
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    meta = report["meta"]
    print(
        f"b24-telephony-mcp {meta['b24_telephony_mcp']} ({meta['git_commit']}{'+dirty' if meta['git_dirty'] else ''}), "
        f"mcp {meta['mcp']}, Python {meta['python']}, {meta['cpus']} CPUs; medians; run took {meta['duration_s']:.0f} s"
    )
    print()
    print(render_table(report["table"]))
    print()
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"\nwritten: {RESULTS_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
