"""Several replicas on one Redis, each started as if on its own machine (own HOME, so own state directory and
own file lock), over streamable HTTP against the sandbox portal and a real redis-server.

What one machine's file lock would hide is exactly what these tests look for: a refresh token spent twice, a
rate limit multiplied by the number of replicas.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ElicitationFnT
from mcp.client.streamable_http import streamable_http_client

from b24_telephony_mcp.bitrix import TokenPair
from b24_telephony_mcp.bitrix.redis_state import RedisState
from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from redis_server import RedisServer
from support import FAST_LIMITS, HttpServer, app_variables, clean_env, http_servers, http_session, ok
from test_tools_call_placement import CALLBACK, User, placed

pytestmark = pytest.mark.anyio

LIST = "list_external_lines"
GET_METHOD = "telephony.externalline.get"
MCP_TOKEN = secrets.token_urlsafe(32)
PUBLIC_HOST = "mcp.example.test"


def replica_envs(
    sandbox: RunningSandbox, redis_url: str, tmp_path: Path, count: int = 3, **extra: str
) -> list[dict[str, str]]:
    """One environment per replica: the same portal, application, Redis and bearer token; its own HOME."""
    envs = []
    for index in range(count):
        home = tmp_path / f"replica-{index}"
        home.mkdir()
        env = clean_env(
            HOME=str(home),
            **app_variables(sandbox),
            B24_REDIS_URL=redis_url,
            B24_MCP_AUTH_TOKEN=MCP_TOKEN,
            B24_MCP_ALLOWED_HOSTS=PUBLIC_HOST,
            **{**FAST_LIMITS, **extra},
        )
        env.pop("XDG_STATE_HOME", None)
        envs.append(env)
    return envs


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without session affinity, as a client transport: each HTTP request goes to the next
    replica over loopback, keeping the public `Host` (which the replicas admit via B24_MCP_ALLOWED_HOSTS)."""

    def __init__(self, servers: list[HttpServer]) -> None:
        self._targets = itertools.cycle([httpx2.URL(server.url) for server in servers])
        self._inner = httpx2.AsyncHTTPTransport()
        self.sent: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        target = next(self._targets)
        assert target.port is not None
        self.sent[target.port] += 1
        request.url = request.url.copy_with(host=target.host, port=target.port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@asynccontextmanager
async def balanced_session(
    balancer: RoundRobin, mode: str = "legacy", elicitation_callback: ElicitationFnT | None = None
) -> AsyncIterator[Client]:
    """An MCP client of `http://PUBLIC_HOST/mcp`, every request of which the balancer sends to the next replica."""
    headers = {"Authorization": f"Bearer {MCP_TOKEN}"}
    async with (
        httpx2.AsyncClient(transport=balancer, headers=headers, timeout=30) as http,
        Client(
            streamable_http_client(f"http://{PUBLIC_HOST}/mcp", http_client=http),
            mode=mode,
            elicitation_callback=elicitation_callback,
        ) as client,
    ):
        yield client


def portal_stats(sandbox: RunningSandbox) -> dict[str, Any]:
    response = httpx2.get(f"{sandbox.base_url}/_sandbox/stats")
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


async def flat_out(clients: Mapping[str, Client], seconds: float, workers: int) -> dict[str, int]:
    """Every client calls as fast as it can, `workers` calls at a time, for `seconds`; successes per client."""
    done = dict.fromkeys(clients, 0)
    deadline = time.monotonic() + seconds

    async def worker(name: str) -> None:
        while time.monotonic() < deadline:
            ok(await clients[name].call_tool(LIST, {}))
            done[name] += 1

    async with anyio.create_task_group() as group:
        for name in clients:
            for _ in range(workers):
                group.start_soon(worker, name)
    return done


async def sessions(servers: list[HttpServer], stack: AsyncExitStack) -> dict[str, Client]:
    return {
        f"replica-{index}": await stack.enter_async_context(http_session(server.url, MCP_TOKEN))
        for index, server in enumerate(servers)
    }


async def test_replicas_share_one_rate_limit(redis_server: RedisServer, tmp_path: Path) -> None:
    """3 replicas flat out: together they stay within the portal's rate and burst, so the portal refuses nothing.

    Each replica alone would send burst + rate x t; three separate buckets would send three times the limit.
    """
    rate, burst = 10.0, 5
    # The portal's bucket has a little headroom over ours for requests admitted close together that arrive
    # even closer (loopback and scheduling jitter), as the client-side default does against a real portal.
    with start_sandbox(SandboxConfig(rate_limit=rate, rate_burst=burst + 3)) as sandbox:
        envs = replica_envs(sandbox, redis_server.url, tmp_path, B24_RATE_LIMIT=str(rate), B24_RATE_BURST=str(burst))
        with http_servers(envs) as servers:
            async with AsyncExitStack() as stack:
                clients = await sessions(servers, stack)
                started = time.monotonic()
                done = await flat_out(clients, seconds=3.0, workers=3)
                elapsed = time.monotonic() - started
        stats = portal_stats(sandbox)
    sent = stats["requests"][GET_METHOD]
    assert stats["limited"] == 0, f"the portal refused {stats['limited']} of {sent} requests with 503"
    assert sum(done.values()) == sent, "every request the portal saw was one successful call: no retries"
    assert all(count > 0 for count in done.values()), done
    assert sent <= burst + rate * elapsed + 1, (sent, elapsed)
    # Flat out means the bucket, not the callers, set the pace: close to the most it admits.
    assert sent >= burst + rate * (elapsed - 1.0), (sent, elapsed)


async def test_any_replica_serves_any_request(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Behind a round-robin balancer without affinity: the handshake lands on one replica, the calls on the
    others, and every one is answered (streamable HTTP is stateless with B24_REDIS_URL). Both protocol eras:
    the 2025-11-25 handshake today's assistants speak, and the session-less 2026-07-28 protocol."""
    with http_servers(replica_envs(sandbox, redis_server.url, tmp_path)) as servers:
        for mode in ("legacy", "auto"):
            balancer = RoundRobin(servers)
            async with balanced_session(balancer, mode) as client:
                assert ok(await client.call_tool("add_external_line", {"NUMBER": f"1{len(mode)}", "NAME": mode}))
                for _ in range(5):
                    assert ok(await client.call_tool(LIST, {}))[-1]["NAME"] == mode
                assert len((await client.list_tools()).tools) > 0
            assert len(balancer.sent) == 3 and min(balancer.sent.values()) >= 2, (mode, balancer.sent)


def files_under(directory: Path, pattern: str) -> list[Path]:
    return [path for path in directory.glob(f"{pattern}/**/*") if path.is_file()]


def expire_tokens(sandbox: RunningSandbox) -> None:
    assert httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens").status_code == 200
    assert httpx2.post(f"{sandbox.base_url}/_sandbox/reset-stats").status_code == 200


async def stored_pair(redis_url: str, sandbox: RunningSandbox) -> TokenPair | None:
    state = RedisState(redis_url)
    try:
        return await state.pair_store(sandbox.base_url, sandbox.config.client_id).load()
    finally:
        await state.aclose()


def works_at_the_portal(sandbox: RunningSandbox, pair: TokenPair) -> bool:
    response = httpx2.post(f"{sandbox.base_url}/rest/telephony.externalLine.get", json={"auth": pair.access_token})
    return response.status_code == 200


async def call_many(client: Client, count: int) -> list[Any]:
    results: list[Any] = []

    async def one() -> None:
        results.append(ok(await client.call_tool(LIST, {})))

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return results


async def test_concurrent_expiry_across_replicas_refreshes_once(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    """60 calls spread over 3 replicas while the access token expires: one refresh at the portal, every call
    succeeds, and Redis holds the newest pair (the one the portal now accepts)."""
    installation = TokenPair(sandbox.access_token, sandbox.refresh_token)
    with http_servers(replica_envs(sandbox, redis_server.url, tmp_path)) as servers:
        balancer = RoundRobin(servers)
        async with balanced_session(balancer) as client:
            assert await call_many(client, 3) == [[]] * 3  # every replica has served a call with the first pair
            assert await stored_pair(redis_server.url, sandbox) == installation, "the environment seeded Redis"

            expire_tokens(sandbox)
            assert await call_many(client, 60) == [[]] * 60
            stats = portal_stats(sandbox)
            assert stats["refreshes"] == 1, stats
            assert stats["token_requests"] == 1, "no replica even tried a second refresh"
            newest = await stored_pair(redis_server.url, sandbox)
            assert newest is not None and newest != installation
            assert works_at_the_portal(sandbox, newest)
            # A second expiry: the replicas that adopted the pair refresh it again, once.
            expire_tokens(sandbox)
            assert await call_many(client, 30) == [[]] * 30
            assert portal_stats(sandbox)["refreshes"] == 1
            assert await stored_pair(redis_server.url, sandbox) not in (None, newest, installation)
        assert min(balancer.sent.values()) >= 30, balancer.sent
    for server in servers:
        assert "NOT saved" not in server.stderr
        assert "Traceback" not in server.stderr
    # Each replica kept its state in Redis only: nothing under its own HOME.
    assert files_under(tmp_path, "replica-*") == []


async def test_replica_killed_mid_refresh_others_recover(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A replica is SIGKILLed while its refresh request waits at the OAuth server (holding the refresh lock):
    its lock expires with its lease, another replica refreshes with the still unspent refresh token, and every
    replica serves again. No lockout, one refresh."""
    with http_servers(replica_envs(sandbox, redis_server.url, tmp_path)) as servers:
        victim = servers[0]
        async with AsyncExitStack() as stack:
            survivors = list((await sessions(servers[1:], stack)).values())
            for client in survivors:
                assert ok(await client.call_tool(LIST, {})) == []
            set_oauth_delay(sandbox, 3.0)
            expire_tokens(sandbox)

            async def doomed_call() -> None:
                with contextlib.suppress(Exception):  # its server dies under it
                    async with http_session(victim.url, MCP_TOKEN) as client:
                        await client.call_tool(LIST, {})

            async with anyio.create_task_group() as group:
                group.start_soon(doomed_call)
                await until(
                    lambda: portal_stats(sandbox)["token_requests"] > 0
                )  # the victim's refresh is at the portal
                victim.process.kill()
                victim.process.wait(10)
                set_oauth_delay(sandbox, 0.0)
                results = []
                for client in survivors:
                    results.append(await call_many(client, 5))
                group.cancel_scope.cancel()
    assert results == [[[]] * 5] * 2
    stats = portal_stats(sandbox)
    assert stats["refreshes"] == 1, stats
    newest = await stored_pair(redis_server.url, sandbox)
    assert newest is not None and newest.access_token != sandbox.access_token
    assert works_at_the_portal(sandbox, newest)


def set_oauth_delay(sandbox: RunningSandbox, seconds: float) -> None:
    response = httpx2.post(f"{sandbox.base_url}/_sandbox/oauth-delay", json={"seconds": seconds})
    assert response.status_code == 200


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(20):
        for _ in itertools.count():
            if condition():
                return
            await anyio.sleep(0.02)


async def test_confirmation_asked_by_one_replica_is_honoured_by_another(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A billed call behind the round-robin balancer: on the 2026-07-28 protocol the question comes from one
    replica and the retry carrying the user's yes lands on another, which places the call exactly once (the
    sealing key and the spent yes live in Redis). On 2025-11-25 the question would need the first request's
    stream, which a stateless replica cannot keep open for the answer: refused, nothing placed."""
    envs = replica_envs(sandbox, redis_server.url, tmp_path, count=2)
    with http_servers(envs, "http", "--toolsets", "call_placement") as servers:
        user = User("accept")
        async with balanced_session(RoundRobin(servers), mode="auto", elicitation_callback=user) as client:
            result = await client.call_tool("start_callback", CALLBACK)
            assert not result.is_error, result
        assert len(user.questions) == 1
        assert [call.method for call in placed(sandbox)] == ["voximplant.callback.start"]

        legacy_user = User("accept")
        async with balanced_session(RoundRobin(servers), elicitation_callback=legacy_user) as client:
            result = await client.call_tool("start_callback", CALLBACK)
        assert result.is_error and result.structured_content is not None
        assert result.structured_content["error"]["code"] == "CONFIRMATION_UNAVAILABLE"
        assert len(placed(sandbox)) == 1, "nothing more was placed"
