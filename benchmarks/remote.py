"""Remote mode's per-call overhead (issue 12): a tool call through remote mode (the MCP access token's hash looked
up, its grant and portal read, the user's pair opened and decrypted, a connection built) against the same call
through the static-bearer HTTP server, both against one sandbox portal, both on the embedded stores.

    .venv/bin/python benchmarks/remote.py            (part of make bench)

Calls alternate in blocks between the two servers (A B B A ...) so a noisy neighbour or a drift slows both alike;
the ratio is the median of each round's pair of blocks; goal <= 1.10x.

Then at scale, on Redis, the same way: one signed-in user's calls to a server whose Redis holds that grant alone,
against a second one whose Redis holds 10,000 more grants on 5,000 portals (goal: flat, <= 1.05x); the second
server's memory before and after (nothing is kept per grant between requests), and Redis bytes per grant (its
used_memory grown, over the grants added).
"""

from __future__ import annotations

import base64
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import Client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the servers, the sign-in and the clients the tests use

from b24_telephony_mcp.bitrix import TokenPair  # noqa: E402
from b24_telephony_mcp.bitrix.redis_state import RedisState  # noqa: E402
from b24_telephony_mcp.remote.crypto import TokenCipher  # noqa: E402
from b24_telephony_mcp.remote.store import Grant, Portal, RedisRemoteStore  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from support import app_env, http_server, http_session  # noqa: E402
from test_remote_signin import Browser, MemoryStorage, Remote, remote_server, signed_in_session  # noqa: E402

ROUNDS = 30
BLOCK = 20
WARMUP = 20
TOOL = "list_external_lines"
GOAL = 1.10
GRANTS = 10_000
PORTALS = 5_000
SCALE_GOAL = 1.05
QUIET = {"B24_LOG_LEVEL": "WARNING"}  # both servers alike: the cost measured is the work, not the log lines


async def block(client: Client) -> float:
    """Seconds per call over one block."""
    started = time.perf_counter()
    for _ in range(BLOCK):
        result = await client.call_tool(TOOL, {})
        assert not result.is_error, result
    return (time.perf_counter() - started) / BLOCK


async def alternate(first: Client, second: Client) -> tuple[float, float, float]:
    """(s/call of `first`, of `second`, the median ratio second/first over rounds), after a warm-up of both."""
    for client in (first, second):
        for _ in range(WARMUP):
            await client.call_tool(TOOL, {})
    firsts: list[float] = []
    seconds: list[float] = []
    for round_number in range(ROUNDS):
        if round_number % 2:
            seconds.append(await block(second))
            firsts.append(await block(first))
        else:
            firsts.append(await block(first))
            seconds.append(await block(second))
    ratios = [b / a for a, b in zip(firsts, seconds, strict=True)]
    return statistics.median(firsts), statistics.median(seconds), statistics.median(ratios)


async def measure() -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="b24-bench-remote-") as scratch:
        directory = Path(scratch)
        token = secrets.token_urlsafe(32)
        with remote_server(directory, **QUIET) as remote:
            static_env = app_env(
                remote.sandbox, directory / "static" / "tokens.json", B24_MCP_AUTH_TOKEN=token, **QUIET
            )
            with http_server(static_env) as static:
                access_token = await signed_in_token(remote)
                async with AsyncExitStack() as stack:
                    # Both with a plain bearer header: the client's own OAuth bookkeeping is not the server's cost.
                    ours = await stack.enter_async_context(http_session(static.url, token))
                    theirs = await stack.enter_async_context(http_session(remote.mcp_url, access_token))
                    return await alternate(ours, theirs)


async def signed_in_token(remote: Remote) -> str:
    """A user signed in through the SDK's OAuth client: its MCP access token."""
    storage, browser = MemoryStorage(), Browser()
    try:
        async with signed_in_session(remote, storage, browser) as signing_in:
            await signing_in.call_tool(TOOL, {})
    finally:
        await browser.aclose()
    assert storage.tokens is not None
    return storage.tokens.access_token


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def fill(redis_url: str, key: bytes) -> None:
    """GRANTS grants (two users per portal) on PORTALS portals, each user with a sealed pair, as sign-ins leave."""
    state = RedisState(redis_url)
    store = RedisRemoteStore(state, TokenCipher((key,)))
    try:
        for number in range(GRANTS):
            portal = number % PORTALS
            member_id, user_id = f"bench{portal:05d}", 1 + number // PORTALS
            if user_id == 1:
                domain = f"p{portal:05d}.bitrix24.com"
                await store.save_portal(
                    Portal(member_id, domain, f"https://{domain}/rest/", "https://oauth.bitrix.info/oauth/token/")
                )
            pair = TokenPair(secrets.token_hex(16), secrets.token_hex(16), time.time() + 3600)
            await store.save_pair(member_id, user_id, pair, None)
            grant = Grant(
                f"g{number:05d}" + secrets.token_hex(8),
                "client",
                "Bench",
                member_id,
                user_id,
                "User",
                None,
                False,
                time.time(),
            )
            await store.add_grant(grant)
    finally:
        await state.aclose()


async def used_memory(state: RedisState) -> int:
    info = await state.redis.info("memory")
    return int(info["used_memory"])


async def measure_scale() -> tuple[float, float, float, int, int, float]:
    """(s/call with 1 grant, s/call with GRANTS more, their median ratio, the crowded server's RSS KiB before the
    grants were added and after the calls, Redis bytes per grant)."""
    with tempfile.TemporaryDirectory(prefix="b24-bench-scale-") as scratch:
        directory = Path(scratch)
        key = os.urandom(32)
        async with AsyncExitStack() as stack:
            servers: list[tuple[Remote, RedisServer, str]] = []
            for name in ("alone", "crowded"):
                redis = stack.enter_context(RedisServer(directory / name / "redis"))
                env = {"B24_REDIS_URL": redis.url, "B24_TOKEN_KEY": base64.b64encode(key).decode(), **QUIET}
                remote = stack.enter_context(remote_server(directory / name, **env))
                servers.append((remote, redis, await signed_in_token(remote)))
            (alone, _, alone_token), (crowded, crowded_redis, crowded_token) = servers
            one = await stack.enter_async_context(http_session(alone.mcp_url, alone_token))
            many = await stack.enter_async_context(http_session(crowded.mcp_url, crowded_token))
            for _ in range(WARMUP):  # the session's own allocations are not the grants'
                await many.call_tool(TOOL, {})
            probe = RedisState(crowded_redis.url)
            stack.push_async_callback(probe.aclose)
            rss_before = rss_kib(crowded.server.process.pid)
            memory_before = await used_memory(probe)
            await fill(crowded_redis.url, key)
            per_grant = (await used_memory(probe) - memory_before) / GRANTS
            few_seconds, many_seconds, ratio = await alternate(one, many)
            rss_after = rss_kib(crowded.server.process.pid)
            return few_seconds, many_seconds, ratio, rss_before, rss_after, per_grant


def main() -> None:
    fixed, signed, ratio = anyio.run(measure)
    print("remote mode (issue 12): per-call round trip over streamable HTTP, sandbox portal")
    print(f"  static bearer  {fixed * 1000:7.2f} ms")
    print(f"  remote mode    {signed * 1000:7.2f} ms   {ratio:.3f}x  (goal <= {GOAL:.2f}x)")
    alone, crowded, scale_ratio, rss_before, rss_after, per_grant = anyio.run(measure_scale)
    print(f"remote mode on Redis, one user's calls with 1 grant stored and with {GRANTS:,} more on {PORTALS:,} portals")
    print(f"  1 grant        {alone * 1000:7.2f} ms")
    print(f"  {GRANTS + 1:,} grants {crowded * 1000:7.2f} ms   {scale_ratio:.3f}x  (goal <= {SCALE_GOAL:.2f}x)")
    print(f"  server memory  {rss_before:,} KiB before, {rss_after:,} KiB after ({rss_after - rss_before:+,} KiB)")
    print(f"  Redis          {per_grant:,.0f} bytes per grant (its pair and portal share included)")


if __name__ == "__main__":
    main()
