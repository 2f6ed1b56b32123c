"""log_external_call's journal in Redis: a call that failed part way on one replica resumes on another.

Each replica runs as if on its own machine (its own state directory, so no SQLite file or token file is shared);
only B24_REDIS_URL joins them. A real redis-server (tests/redis_server.py) and the sandbox over real sockets.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from b24_telephony_mcp.bitrix.redis_state import RedisState
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.state.journal import TTL, RedisCallJournal
from redis_server import RedisServer
from support import app_env, stdio_session
from test_log_external_call import FINISH, RECORD, TRANSCRIPT, call, fault, registrations, seen
from test_tools import ToolCaller

pytestmark = pytest.mark.anyio


async def test_a_call_failed_on_one_replica_resumes_on_another(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    def replica(name: str) -> dict[str, str]:
        home = tmp_path / name
        return app_env(
            sandbox, home / "tokens.json", XDG_STATE_HOME=str(home), HOME=str(home), B24_REDIS_URL=redis_server.url
        )

    async with stdio_session(replica("a")) as client:
        tools = ToolCaller(client, {tool.name: tool.output_schema or {} for tool in (await client.list_tools()).tools})
        fault(sandbox, FINISH)
        assert (await tools.error("log_external_call", call("pbx-replica")))["steps"]["register"] == "done"
    seen(sandbox)
    async with stdio_session(replica("b")) as client:
        tools = ToolCaller(client, {tool.name: tool.output_schema or {} for tool in (await client.list_tools()).tools})
        logged = await tools.ok("log_external_call", call("pbx-replica"))
        # A repeat after success is answered from the shared journal, without a request.
        assert await tools.ok("log_external_call", call("pbx-replica")) == logged
    assert seen(sandbox)["batched"] == {FINISH: 1, RECORD: 1, TRANSCRIPT: 1}
    assert registrations(sandbox, "pbx-replica") == 1
    assert not list((tmp_path / "b").rglob("*.sqlite3")), "with Redis the journal is not a local file"


async def test_redis_journal_compare_and_set_and_expiry(redis_server: RedisServer) -> None:
    state = RedisState(redis_server.url)
    try:
        journal = RedisCallJournal(state, ttl=TTL)
        assert await journal.load("app-cas", "call-1") is None
        assert await journal.save("app-cas", "call-1", {"steps": ["register"]}, 0)
        assert not await journal.save("app-cas", "call-1", {"steps": ["other"]}, 0), "a second claim loses"
        record = await journal.load("app-cas", "call-1")
        assert record is not None and (record.entry, record.revision) == ({"steps": ["register"]}, 1)
        assert await journal.save("app-cas", "call-1", {"steps": ["register", "finish"]}, 1)
        assert not await journal.save("app-cas", "call-1", {"steps": []}, 1), "a stale revision loses"
        key = journal._key("app-cas", "call-1")
        assert 0 < await state.redis.pttl(key) <= TTL * 1000  # Redis forgets it a week after the last save
        short = RedisCallJournal(state, ttl=0.05)
        assert await short.save("app-cas", "call-2", {"steps": []}, 0)
        await anyio.sleep(0.2)
        assert await short.load("app-cas", "call-2") is None
    finally:
        await state.aclose()
