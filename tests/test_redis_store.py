"""The Redis state store seen from one server: start-up refusals, Redis going away mid-run and coming back.

A real redis-server over a real socket; the server is the real subprocess over streamable HTTP.
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
from pathlib import Path

import anyio
import httpx2
import pytest
from starlette.types import Message, Receive, Scope, Send

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, OAuthAuth, StalePairError, TokenPair, TokenStore
from b24_telephony_mcp.bitrix.redis_state import RedisState
from b24_telephony_mcp.commands.doctor import doctor_command
from b24_telephony_mcp.commands.store import run_store_command
from b24_telephony_mcp.config.settings import ConfigError, load_settings
from b24_telephony_mcp.config.wiring import build_client, open_state
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.serving.address_limits import PerAddressLimit
from redis_server import RedisServer, free_port
from support import app_env, clean_env, error_of, http_server, http_session, ok, server_command
from test_onboarding import installed_profile, profile_file

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

                # Ready also means a token pair to serve with: without one in Redis, not ready.
                state = RedisState(redis.url)
                store = state.pair_store(sandbox.base_url, sandbox.config.client_id)
                try:
                    kept = await store.load()
                    assert kept is not None, "AOF kept the pair across the restart"
                    await state.redis.delete(store.key)
                    assert httpx2.get(readyz).status_code == 503
                    await store.save(kept, None)
                    assert httpx2.get(readyz).status_code == 200
                finally:
                    await state.aclose()
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


def pair(expires: float) -> TokenPair:
    return TokenPair(secrets.token_hex(16), secrets.token_hex(16), expires)


def test_store_import_and_export(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither direction overwrites a newer pair (a later expiry), unless forced; files stay mode 0600."""
    token_file = tmp_path / "state" / "tokens.json"
    for name, value in app_env(sandbox, token_file, B24_REDIS_URL=redis_server.url).items():
        monkeypatch.setenv(name, value)

    def run(action: str, force: bool = False) -> str:
        return anyio.run(run_store_command, action, None, force)

    def in_redis() -> TokenPair | None:
        async def load() -> TokenPair | None:
            state = RedisState(redis_server.url)
            try:
                return await state.pair_store(sandbox.base_url, sandbox.config.client_id).load()
            finally:
                await state.aclose()

        return anyio.run(load)

    with pytest.raises(ConfigError, match="holds no token pair to import"):
        run("import")
    with pytest.raises(ConfigError, match="holds no token pair to export"):
        run("export")

    older, newer = pair(1_800_000_000), pair(1_800_003_600)
    TokenStore(token_file).save(older)
    assert run("import").startswith(f"Imported the token pair from {token_file} into Redis at redis://127.0.0.1:")
    assert in_redis() == older
    assert "nothing changed" in run("import")

    # The replicas rotate the pair; the file's is now the older one, and importing it is refused.
    async def rotate() -> None:
        state = RedisState(redis_server.url)
        try:
            await state.pair_store(sandbox.base_url, sandbox.config.client_id).save(newer, older.refresh_token)
        finally:
            await state.aclose()

    anyio.run(rotate)
    with pytest.raises(ConfigError, match="at least as new") as caught:
        run("import")
    assert older.refresh_token not in str(caught.value) and newer.refresh_token not in str(caught.value)
    assert in_redis() == newer

    assert run("export").startswith("Exported the token pair")
    assert TokenStore(token_file).load() == newer
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    TokenStore(token_file).save(older)
    with pytest.raises(ConfigError, match="at least as new"):
        run("import")
    assert run("import", force=True).startswith("Imported")
    assert in_redis() == older


def test_store_command_through_the_cli(sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    TokenStore(token_file).save(TokenPair(sandbox.access_token, sandbox.refresh_token))
    env = app_env(sandbox, token_file, B24_REDIS_URL=redis_server.url)
    imported = subprocess.run(
        server_command("store", "import"), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("Imported the token pair")
    refused = subprocess.run(
        server_command("store", "export", "--file", str(tmp_path / "other.json")),
        env={**env, "B24_REDIS_URL": "http://x"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("B24_REDIS_URL must start with redis:// or rediss:// (TLS).")
    for output in (imported.stdout, imported.stderr, refused.stderr):
        assert sandbox.access_token not in output and sandbox.refresh_token not in output


async def test_redis_pair_store_compare_and_set_seed_and_lock(redis_server: RedisServer) -> None:
    state = RedisState(redis_server.url)
    portal = f"https://cas-{secrets.token_hex(4)}.example.com"
    store = state.pair_store(portal, "local.app", lease=1.0)  # renewed every 1/3 s: room for a loaded machine
    try:
        first, second, third = pair(1), pair(2), pair(3)
        # Seeding fills only an empty store; the store wins over any later seed (the environment's stale pair).
        assert await store.seed(first) == first
        assert await store.seed(second) == first
        auth = await OAuthAuth.open(portal, "local.app", secrets.token_hex(8), "https://o.example/", store, third)
        assert auth.tokens == first

        # A new pair replaces the stored one only when it renewed exactly that one.
        await store.save(second, first.refresh_token)
        with pytest.raises(StalePairError):
            await store.save(third, first.refresh_token)  # a slow replica that spent the same (older) token
        with pytest.raises(StalePairError):
            await store.save(third, None)
        assert await store.load() == second

        # One holder at a time; a holder that dies (never releases, never renews) loses the lock with its lease.
        order: list[str] = []

        async def hold(name: str, seconds: float) -> None:
            async with store.lock():
                order.append(f"{name} in")
                await anyio.sleep(seconds)
                order.append(f"{name} out")

        async with anyio.create_task_group() as group:
            group.start_soon(hold, "a", 1.5)  # longer than the lease: it stays held because it is renewed
            await anyio.sleep(0.1)
            group.start_soon(hold, "b", 0)
        assert order == ["a in", "a out", "b in", "b out"]

        dead = await state.redis.set(store.lock_key, "a killed replica", px=300)
        assert dead
        with anyio.fail_after(5):
            async with store.lock():
                assert await state.redis.get(store.lock_key) != "a killed replica"
        assert await state.redis.get(store.lock_key) is None, "released"

        await state.redis.hset(store.key, "refresh_token", "")
        await state.redis.hdel(store.key, "access_token")
        with pytest.raises(ValueError, match="does not hold a valid token pair"):
            await store.load()
    finally:
        await state.aclose()


async def test_no_refresh_while_the_store_is_unreachable(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """The access token expired and Redis is gone: the call fails retryably without going near the OAuth
    server, so no refresh token is spent that could not be saved; once Redis is back, one refresh."""
    with RedisServer(tmp_path / "redis", persistent=True) as redis:
        state = RedisState(redis.url)
        store = state.pair_store(sandbox.base_url, sandbox.config.client_id)
        auth = await OAuthAuth.open(
            sandbox.base_url,
            sandbox.config.client_id,
            sandbox.config.client_secret,
            sandbox.token_url,
            store,
            TokenPair(sandbox.access_token, sandbox.refresh_token),
        )
        client = BitrixClient(auth, rate=1000, burst=10000)  # this process's own bucket: the portal is reached
        try:
            assert httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens").status_code == 200
            redis.stop()
            with pytest.raises(BitrixError) as caught:
                await client.call("telephony.externalLine.get", read_only=True)
            assert (caught.value.code, caught.value.retryable) == ("STATE_STORE_UNAVAILABLE", True)
            stats = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()
            assert (stats["token_requests"], stats["refreshes"]) == (0, 0)

            redis.start()
            assert (await client.call("telephony.externalLine.get", read_only=True)).result == []
            assert httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()["refreshes"] == 1
            assert await store.load() == auth.tokens
        finally:
            await client.aclose()
            await state.aclose()


async def test_an_empty_redis_is_seeded_from_the_token_file_first(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Moving one server to Redis: its token file (or profile), holding the rotated pair, seeds Redis, not the
    environment's stale installation pair; once seeded, Redis wins over both."""
    token_file = tmp_path / "tokens.json"
    rotated = pair(1_800_000_000)
    TokenStore(token_file).save(rotated)
    env = app_env(sandbox, token_file, B24_REDIS_URL=redis_server.url)
    env["B24_PORTAL_URL"] = f"http://127.0.0.1:{free_port()}"  # a portal of its own: its own Redis key
    state = await open_state(load_settings(env))
    assert state is not None
    try:
        client = await build_client(load_settings(env), state)
        assert isinstance(client.auth, OAuthAuth)
        assert client.auth.tokens == rotated
        assert await client.auth.store.load() == rotated
        await client.aclose()

        TokenStore(token_file).save(pair(1_800_000_001))  # the file moves on; Redis is the store now
        client = await build_client(load_settings(env), state)
        assert isinstance(client.auth, OAuthAuth) and client.auth.tokens == rotated
        await client.aclose()
    finally:
        await state.aclose()


def test_doctor_uses_the_shared_store(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With B24_REDIS_URL, doctor checks what the replicas use: Redis (seeded from the profile), and a refresh it
    causes lands there; an unreachable Redis is a failed check, not a silent fall back to the profile file."""
    saved = installed_profile(sandbox, tmp_path)
    httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")  # doctor's first call refreshes
    settings = load_settings({"XDG_CONFIG_HOME": str(tmp_path), "B24_REDIS_URL": redis_server.url})
    assert doctor_command(settings, settings.selection.tool_specs(), as_json=True) == 0, capsys.readouterr().out
    checks = {check["name"]: check["status"] for check in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["credentials"] == "ok" and "token store" not in checks

    async def stored() -> TokenPair | None:
        state = RedisState(redis_server.url)
        try:
            return await state.pair_store(sandbox.base_url, sandbox.config.client_id).load()
        finally:
            await state.aclose()

    in_redis = anyio.run(stored)
    assert in_redis is not None and in_redis.access_token != saved["access_token"], "refreshed into Redis"
    assert TokenStore(profile_file(tmp_path, "default")).load() == TokenPair(
        saved["access_token"], saved["refresh_token"], saved["expires"]
    ), "the profile file is not the store"

    settings = load_settings({"XDG_CONFIG_HOME": str(tmp_path), "B24_REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    assert doctor_command(settings, settings.selection.tool_specs(), as_json=True) == 1
    checks = {check["name"]: check["status"] for check in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["state store"] == "fail"


async def test_a_yes_is_spent_once_across_replicas(redis_server: RedisServer) -> None:
    first, second = RedisState(redis_server.url), RedisState(redis_server.url)
    try:
        one, other = await first.approvals(), await second.approvals()
        assert one.key == other.key and len(one.key) == 32, "every replica seals with the same key"
        question = secrets.token_hex(8)
        assert await one.spend(question, 60)
        assert not await other.spend(question, 60), "the same yes on another replica places nothing more"
        assert await other.spend(secrets.token_hex(8), 60)
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_shared_address_limit_fails_closed_while_redis_is_away(tmp_path: Path) -> None:
    """/register and /token are limited on Redis: while it is gone they answer 503 (retry in a second) without
    reaching the handler, and serve again once it is back."""
    reached: list[str] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def post(app: PerAddressLimit, path: str) -> tuple[int, dict[bytes, bytes]]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        await app({"type": "http", "path": path, "method": "POST", "client": ("203.0.113.7", 5000)}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    with RedisServer(tmp_path / "redis", persistent=True) as redis:
        state = RedisState(redis.url)
        app = PerAddressLimit(handler, shared=state)
        try:
            assert (await post(app, "/register"))[0] == 201
            redis.stop()
            status, headers = await post(app, "/token")
            assert (status, headers[b"retry-after"]) == (503, b"1")
            assert reached == ["/register"]
            redis.start()
            assert (await post(app, "/token"))[0] == 201
            assert reached == ["/register", "/token"]
        finally:
            await state.aclose()
