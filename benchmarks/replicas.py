"""The shared-service measurements of `make bench`: what the Redis state store costs a tool call over HTTP.

- per-call round trip, one client calling one after another: one server on the file store against one replica
  on Redis (the bucket is then a Lua script in Redis instead of a lock in memory; the ratio is the store's
  overhead for a call that needs no refresh, target <= 1.15x);
- throughput, `WORKERS` clients calling at once: one process on the file store, one replica on Redis, three
  replicas on Redis with the clients spread over them as a round-robin balancer would.

Every server runs stateless streamable HTTP (what replicas need), so the store is the only difference. The
Redis is a real `redis-server` on loopback, started the way the tests start theirs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # one way to run redis-server, shared with the tests

from redis_server import RedisServer  # noqa: E402

WORKERS = 12
THROUGHPUT_CALLS = 600
TOOL = "list_external_lines"


async def measure_replicas(
    stack: AsyncExitStack,
    base_env: dict[str, str],
    mcp_token: str,
    start_server: Any,
    connect: Any,
    sample: Any,
    tool_call: Any,
    progress: Any,
) -> dict[str, Any]:
    """`start_server(name, env)` -> url, `connect(url)` -> client, `sample(calls)` -> per-call samples; all from
    run.py, so these numbers are taken exactly like the others."""
    redis = stack.enter_context(RedisServer(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "redis"))
    file_env = {**base_env, "B24_MCP_AUTH_TOKEN": mcp_token, "B24_MCP_STATELESS": "1"}
    redis_env = {**file_env, "B24_REDIS_URL": redis.url}
    progress("starting servers for the shared-service measurements")
    file_url = await start_server("file store", file_env)
    replica_urls = [await start_server(f"redis replica {index}", redis_env) for index in range(3)]
    file_client = await connect(file_url)
    replica_clients = [await connect(url) for url in replica_urls]

    samples = await sample(
        {"file_store": tool_call(file_client, TOOL), "redis_store": tool_call(replica_clients[0], TOOL)}
    )
    per_call = {name: statistics.median(values) * 1000 for name, values in samples.items()}

    throughput: dict[str, float] = {}
    for name, clients in (
        ("file_store_1", [file_client]),
        ("redis_store_1", replica_clients[:1]),
        ("redis_store_3", replica_clients),
    ):
        progress(f"throughput: {name}")
        throughput[name] = await calls_per_second([tool_call(client, TOOL) for client in clients])
    return {
        "per_call_ms": per_call,
        "overhead_ratio": per_call["redis_store"] / per_call["file_store"],
        "calls_per_second": throughput,
        "workers": WORKERS,
        "throughput_calls": THROUGHPUT_CALLS,
    }


async def calls_per_second(calls: list[Any]) -> float:
    """THROUGHPUT_CALLS calls by WORKERS concurrent workers, spread round robin over `calls` (one per replica)."""
    for call in calls:  # warm each server's pools
        for _ in range(10):
            await call()
    remaining = THROUGHPUT_CALLS

    async def worker(index: int) -> None:
        nonlocal remaining
        call = calls[index % len(calls)]
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for index in range(WORKERS):
            group.start_soon(worker, index)
    return THROUGHPUT_CALLS / (time.perf_counter() - started)


def rows(result: Mapping[str, Any], row: Any) -> list[dict[str, Any]]:
    per_call, throughput = result["per_call_ms"], result["calls_per_second"]
    file_rate = throughput["file_store_1"]
    return [
        row(
            "HTTP round trip, Redis store (1 replica)",
            "ms",
            per_call["redis_store"],
            per_call["file_store"],
            "file store, 1 process",
            result["overhead_ratio"],
        ),
        row(
            f"HTTP calls/s, {result['workers']} clients, Redis store, 1 replica",
            "calls/s",
            throughput["redis_store_1"],
            file_rate,
            "file store, 1 process",
            throughput["redis_store_1"] / file_rate,
        ),
        row(
            f"HTTP calls/s, {result['workers']} clients, Redis store, 3 replicas",
            "calls/s",
            throughput["redis_store_3"],
            file_rate,
            "file store, 1 process",
            throughput["redis_store_3"] / file_rate,
        ),
    ]
