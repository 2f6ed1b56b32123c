"""The Redis state store seen from one server: start-up refusals, Redis going away mid-run and coming back.

A real redis-server over a real socket; the server is the real subprocess over streamable HTTP.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import anyio
import httpx2
import pytest

from b24_telephony_mcp.bitrix.redis_state import RedisState
from b24_telephony_mcp.config import ConfigError, load_settings
from b24_telephony_mcp.sandbox import RunningSandbox
from redis_server import RedisServer, free_port
from support import app_env, clean_env, error_of, http_server, http_session, ok, server_command

pytestmark = pytest.mark.anyio

LIST = "list_external_lines"
WEBHOOK = "http://127.0.0.1:9/rest/1/abcdef0123456789/"  # never called: start-up fails first
PASSWORD = "s3cret-redis-passw0rd"


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command(), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )


def refusal(env: dict[str, str]) -> str:
    """The one-paragraph start-up error of a server that must not start."""
    process = start(env)
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert "Traceback" not in process.stderr
    assert PASSWORD not in process.stderr
    message = process.stderr.strip().splitlines()[-1]
    assert message.startswith("b24-telephony-mcp: ")
    return message


@pytest.mark.parametrize(
    ("url", "phrases"),
    [
        ("http://127.0.0.1:6379/0", ("redis://", "rediss://")),
        ("redis:///0", ("no host",)),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/cache", ("database number",)),
        (f"redis://:{PASSWORD}@[::1/0", ("not a valid URL",)),
        ("redis://127.0.0.1:0/0", ("port 0",)),
    ],
)
def test_bad_redis_url_is_refused(url: str, phrases: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(clean_env(B24_WEBHOOK_URL=WEBHOOK, B24_REDIS_URL=url))
    message = str(caught.value)
    assert message.startswith("B24_REDIS_URL")
    assert PASSWORD not in message
    for phrase in phrases:
        assert phrase in message


def test_bad_redis_url_is_a_startup_error() -> None:
    message = refusal(clean_env(B24_WEBHOOK_URL=WEBHOOK, B24_REDIS_URL=f"http://:{PASSWORD}@127.0.0.1:6379/0"))
    assert message == "b24-telephony-mcp: B24_REDIS_URL must start with redis:// or rediss:// (TLS)."


def test_unreachable_redis_is_a_startup_error() -> None:
    port = free_port()
    message = refusal(clean_env(B24_WEBHOOK_URL=WEBHOOK, B24_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{port}/0"))
    assert f"redis://127.0.0.1:{port}/0 could not be reached" in message
    assert "B24_REDIS_URL" in message


def test_wrong_redis_password_is_a_startup_error(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="the-right-one") as redis:
        url = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"
        message = refusal(clean_env(B24_WEBHOOK_URL=WEBHOOK, B24_REDIS_URL=url))
    assert "refused the credentials in B24_REDIS_URL" in message


async def test_redis_outage_mid_run_then_recovery(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Redis stops: calls answer STATE_STORE_UNAVAILABLE (retryable) without reaching the portal; Redis is back
    (AOF on, so its data too): calls succeed again, with no restart of the server."""
    token = secrets.token_urlsafe(32)
    with RedisServer(tmp_path / "redis", persistent=True) as redis:
        env = app_env(sandbox, tmp_path / "tokens.json", B24_MCP_AUTH_TOKEN=token, B24_REDIS_URL=redis.url)
        with http_server(env) as server:
            async with http_session(server.url, token) as client:
                assert ok(await client.call_tool(LIST, {})) == []
                before = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()

                readyz = f"{server.origin}/readyz"
                assert httpx2.get(readyz).json() == {"status": "ready"}
                redis.stop()
                answer = httpx2.get(readyz)
                assert (answer.status_code, answer.json()) == (503, {"status": "not ready"})
                error = error_of(await client.call_tool(LIST, {}))
                assert error["code"] == "STATE_STORE_UNAVAILABLE"
                assert error["retryable"] is True
                assert f"redis://127.0.0.1:{redis.port}/0" in error["description"]
                assert httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json() == before, "nothing reached the portal"

                redis.start()
                assert httpx2.get(readyz).json() == {"status": "ready"}
                assert ok(await client.call_tool(LIST, {})) == []
    assert "STATE_STORE_UNAVAILABLE" in server.stderr
    assert "Traceback" not in server.stderr


async def test_two_buckets_on_one_key_are_one_bucket(redis_server: RedisServer) -> None:
    """Two replicas' buckets for one portal share the level: the burst is spent once, then each waits its turn."""
    rate, burst = 20.0, 3
    portal = f"https://bucket-{secrets.token_hex(4)}.example.com"
    first, second = RedisState(redis_server.url), RedisState(redis_server.url)
    try:
        buckets = [first.bucket(portal, rate, burst), second.bucket(portal + "/rest/1/x/", rate, burst)]
        assert buckets[0].key == buckets[1].key, "one key per portal host, whatever the path"
        waits: list[float] = []

        async def acquire(index: int) -> None:
            waits.append(await buckets[index % 2].acquire())

        async with anyio.create_task_group() as group:  # five requests at once, from both "replicas"
            for index in range(burst + 2):
                group.start_soon(acquire, index)
        waits.sort()
        assert waits[:burst] == [0.0] * burst
        # Past the burst each request reserves the next slot: one and two drain intervals away.
        assert 0 < waits[burst] <= 1 / rate < waits[burst + 1] <= 2 / rate
        other = first.bucket("https://other.example.com", rate, burst)
        assert await other.acquire() == 0.0, "another portal has its own bucket"
    finally:
        await first.aclose()
        await second.aclose()
