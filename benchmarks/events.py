"""Benchmark: hearing the portal. Click to get_telephony_events answer, offline and online; what the offline
queue's polling spends of the portal's rate budget, idle and while a reader waits.

    .venv/bin/python benchmarks/events.py

One sandbox portal; a manager's click is a POST to its `/_sandbox/click` (the portal registers the call and
fires OnExternalCallStart). A reader waits in get_telephony_events (wait_seconds) before each click; the time is
from the click's POST to the reader's answer. Offline: a server over stdio draining the queue at its default
pace (B24_EVENT_POLL_WAITING 1 s while a reader waits); online: a server over streamable HTTP whose
/bitrix24/events the portal posts to. Polling: the default idle interval (B24_EVENT_POLL_IDLE 30 s) read off the
portal's request counts, against the default budget of 2 requests a second. Goals (issue 13): p95 ≤ 3 s offline,
≤ 0.2 s online, idle polling ≤ 5% of the budget.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

from b24_telephony_mcp.bitrix.limits import DEFAULT_RATE
from b24_telephony_mcp.events import IDLE_SECONDS
from b24_telephony_mcp.sandbox import RunningSandbox, start_sandbox
from run import OUR_ARGS, app_env, http_mcp_client, http_server, mcp_client, progress, render_table, row, stdio_params

CLICKS = 20
TOOLSETS = ("--toolsets", "external_lines,external_calls,events")
TOKEN = "bench-events-bearer"
GOAL_OFFLINE_P95, GOAL_ONLINE_P95, GOAL_IDLE_SHARE = 3.0, 0.2, 0.05
BUDGET_PER_HOUR = DEFAULT_RATE * 3600
GETS = "event.offline.get"


async def ok(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, arguments, read_timeout_seconds=60)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {str(result.content)[:300]}")
    return (result.structured_content or {})["result"]


def gets(sandbox: RunningSandbox) -> int:
    return sandbox.portal.stats.requests[GETS]


async def click_to_answer(client: Client, sandbox: RunningSandbox, http: httpx2.AsyncClient) -> list[float]:
    """Seconds from each click's POST to the waiting reader's answer."""
    cursor = (await ok(client, "get_telephony_events", {}))["cursor"]
    samples: list[float] = []
    for n in range(CLICKS):
        answer: dict[str, Any] = {}

        async def wait(after: str | None, into: dict[str, Any]) -> None:
            into["page"] = await ok(client, "get_telephony_events", {"cursor": after, "wait_seconds": 30})
            into["at"] = time.perf_counter()

        async with anyio.create_task_group() as group:
            group.start_soon(wait, cursor, answer)
            await anyio.sleep(0.3 + random.random())  # the click comes at any point of the polling cycle
            clicked = time.perf_counter()
            reply = await http.post(f"{sandbox.base_url}/_sandbox/click", json={"phone": f"+7 903 {n:07d}"})
            reply.raise_for_status()
        if not answer["page"]["events"]:
            raise RuntimeError("no event within 30 s")
        cursor = answer["page"]["cursor"]
        samples.append(answer["at"] - clicked)
    return samples


async def prepare(client: Client, binding: dict[str, Any]) -> None:
    await ok(client, "add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"})
    await ok(client, "watch_telephony_events", {"event": ["OnExternalCallStart"], **binding})


async def until(condition: Callable[[], bool], within: float) -> None:
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110  # the portal's thread counts the requests
            await anyio.sleep(0.05)


async def offline(state: Path) -> dict[str, Any]:
    with start_sandbox() as sandbox:
        env = {**app_env(sandbox, state / "tokens.json"), "XDG_STATE_HOME": str(state)}
        async with mcp_client(stdio_params([*OUR_ARGS, *TOOLSETS], env)) as client, httpx2.AsyncClient() as http:
            await prepare(client, {})
            progress(f"offline: {CLICKS} clicks, each to a waiting reader")
            latency = await click_to_answer(client, sandbox, http)
            progress("offline: polling while a reader waits (10 s)")
            before, began = gets(sandbox), time.perf_counter()
            await ok(client, "get_telephony_events", {"cursor": "999999", "wait_seconds": 10})
            waiting_per_hour = (gets(sandbox) - before) / (time.perf_counter() - began) * 3600
            progress(f"offline: polling while idle (two reads of the queue, {IDLE_SECONDS:g} s apart)")
            await anyio.sleep(2.0)  # the fast pace's last nap ends
            first = gets(sandbox)
            await until(lambda: gets(sandbox) > first, IDLE_SECONDS + 10)
            began = time.perf_counter()
            await until(lambda: gets(sandbox) > first + 1, IDLE_SECONDS + 10)
            idle_per_hour = 3600 / (time.perf_counter() - began)
    return {"latency": latency, "waiting_per_hour": waiting_per_hour, "idle_per_hour": idle_per_hour}


async def online(state: Path) -> list[float]:
    with start_sandbox() as sandbox:
        env = {**app_env(sandbox, state / "tokens.json"), "XDG_STATE_HOME": str(state)}
        env |= {"B24_MCP_AUTH_TOKEN": TOKEN, "B24_APPLICATION_TOKEN": sandbox.config.application_token}
        args = [*OUR_ARGS, "--transport", "http", "--port", "0", *TOOLSETS]
        async with http_server("online", args, env) as (url, _log), AsyncExitStack() as stack:
            client = await stack.enter_async_context(http_mcp_client(url, TOKEN, stack))
            http = await stack.enter_async_context(httpx2.AsyncClient())
            handler = url.rsplit("/", 1)[0] + "/bitrix24/events"
            await prepare(client, {"event_type": "online", "handler": handler})
            progress(f"online: {CLICKS} clicks, each to a waiting reader")
            return await click_to_answer(client, sandbox, http)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def run_in(directory: str, measure: Callable[[Path], Awaitable[Any]]) -> Any:
    return anyio.run(measure, Path(directory))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="b24-bench-events-") as first, tempfile.TemporaryDirectory() as second:
        heard = run_in(first, offline)
        posted = run_in(second, online)
    off, on = heard["latency"], posted
    idle, waiting = heard["idle_per_hour"], heard["waiting_per_hour"]
    goal = "the goal"
    print(f"\nclick to get_telephony_events answer, {CLICKS} clicks each; polling against {BUDGET_PER_HOUR:,.0f} req/h")
    print(
        render_table(
            [
                row("offline click→answer median", "s", statistics.median(off), None, goal, None),
                row("offline click→answer p95", "s", p95(off), GOAL_OFFLINE_P95, goal, p95(off) / GOAL_OFFLINE_P95),
                row("online click→answer median", "s", statistics.median(on), None, goal, None),
                row("online click→answer p95", "s", p95(on), GOAL_ONLINE_P95, goal, p95(on) / GOAL_ONLINE_P95),
                row(
                    "idle polling, share of budget",
                    "%",
                    100 * idle / BUDGET_PER_HOUR,
                    100 * GOAL_IDLE_SHARE,
                    goal,
                    idle / BUDGET_PER_HOUR / GOAL_IDLE_SHARE,
                ),
                row("idle polling", "req/h", idle, None, goal, None),
                row("polling while a reader waits", "req/h", waiting, None, goal, None),
            ]
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
