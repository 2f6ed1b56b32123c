"""OAuth token rotation end to end: the real server over stdio, the sandbox's single-use refresh tokens.

The sandbox revokes a pair's access token the moment its refresh token is spent, as Bitrix24 does,
so a request still carrying the old token after someone else's refresh meets `invalid_token`.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp_types import CallToolResult

from b24_telephony_mcp.bitrix import TokenPair, TokenStore
from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, error_of, ok, stdio_session, text_of

pytestmark = pytest.mark.anyio

LIST = "list_external_lines"
GET_METHOD = "telephony.externalline.get"


def hook(sandbox: RunningSandbox, verb: str, path: str) -> Any:
    response = httpx2.request(verb, f"{sandbox.base_url}/_sandbox/{path}")
    assert response.status_code == 200, response.text
    return response.json()


def expire_and_reset(sandbox: RunningSandbox) -> None:
    hook(sandbox, "POST", "expire-tokens")
    hook(sandbox, "POST", "reset-stats")


async def call_all(calls: list[tuple[Client, str]]) -> list[CallToolResult]:
    """Run the tool calls concurrently and return their results in order."""
    results: list[CallToolResult | None] = [None] * len(calls)

    async def one(index: int, client: Client, tool: str) -> None:
        results[index] = await client.call_tool(tool, {})

    async with anyio.create_task_group() as group:
        for index, (client, tool) in enumerate(calls):
            group.start_soon(one, index, client, tool)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def read_pair(token_file: Path) -> dict[str, Any] | None:
    if not token_file.exists():
        return None
    data: dict[str, Any] = json.loads(token_file.read_text(encoding="utf-8"))
    return data


def file_modes_and_neighbours(token_file: Path) -> tuple[int, int, list[str]]:
    """The token file's mode, its directory's mode, and every name in that directory."""
    names = sorted(path.name for path in token_file.parent.iterdir())
    return stat.S_IMODE(token_file.stat().st_mode), stat.S_IMODE(token_file.parent.stat().st_mode), names


async def test_concurrent_expiry_one_refresh_persisted_and_file_wins_on_restart(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    env = app_env(sandbox, token_file)
    async with stdio_session(env) as client:
        assert ok(await client.call_tool(LIST, {})) == []
        assert read_pair(token_file) is None, "tokens must not be rotated before the portal says they expired"

        expire_and_reset(sandbox)
        results = await call_all([(client, LIST)] * 16)
        assert [ok(result) for result in results] == [[]] * 16

        stats = hook(sandbox, "GET", "stats")
        assert stats["refreshes"] == 1
        # Every call met the expired token at most once and was repeated at most once.
        assert 16 < stats["requests"][GET_METHOD] <= 32

    # The rotated pair is on disk, is what the portal now accepts, and replaced the installation pair.
    saved = read_pair(token_file)
    assert saved is not None
    assert saved["access_token"] != sandbox.access_token
    assert saved["refresh_token"] != sandbox.refresh_token
    caller = sandbox.portal.authenticate_token(saved["access_token"])  # raises if the portal refuses it
    assert caller.auth_type == "oauth"
    assert saved["refresh_token"] in sandbox.portal._refresh_tokens  # white-box: still unspent
    # Private, and the atomic replace left no temp file: only the inter-process lock file sits beside it.
    assert file_modes_and_neighbours(token_file) == (0o600, 0o700, ["tokens.json", "tokens.json.lock"])

    # Restart with the same environment, whose installation pair is dead by now: the token file wins.
    hook(sandbox, "POST", "reset-stats")
    async with stdio_session(env) as client:
        assert ok(await client.call_tool(LIST, {})) == []
    stats = hook(sandbox, "GET", "stats")
    assert stats["refreshes"] == 0
    assert stats["requests"][GET_METHOD] == 1, "the stale environment token must not even be tried"
    assert read_pair(token_file) == saved


async def test_spent_refresh_token_reports_invalid_grant(
    sandbox: RunningSandbox, token_file: Path, tmp_path: Path
) -> None:
    # Spend the installation's refresh token elsewhere, as a second copy of the app would.
    spent = httpx2.get(
        sandbox.token_url,
        params={
            "grant_type": "refresh_token",
            "client_id": sandbox.config.client_id,
            "client_secret": sandbox.config.client_secret,
            "refresh_token": sandbox.refresh_token,
        },
    )
    assert spent.status_code == 200, spent.text
    # The token file holds a working access token beside that already-used refresh token.
    TokenStore(token_file).save(TokenPair(spent.json()["access_token"], sandbox.refresh_token))
    before = read_pair(token_file)
    expire_and_reset(sandbox)

    errlog_path = tmp_path / "stderr.log"
    with errlog_path.open("w", encoding="utf-8") as errlog:
        async with stdio_session(app_env(sandbox, token_file), errlog=errlog) as client:
            for _ in range(2):  # the server survives the failure and reports it the same way again
                result = await client.call_tool(LIST, {})
                error = error_of(result)
                assert error["code"] == "invalid_grant"
                assert error["description"] == "token refresh failed: Invalid refresh token"
                assert "B24_TOKEN_FILE" in error["hint"]
                assert error["http_status"] == 400
                assert error["retryable"] is False
                assert "Hint: " in text_of(result)
                assert "Traceback" not in text_of(result)

    stats = hook(sandbox, "GET", "stats")
    assert stats["refreshes"] == 0
    assert stats["requests"][GET_METHOD] == 2, "one request per call: a dead refresh token is not retried"
    assert read_pair(token_file) == before, "a failed refresh must not touch the token file"
    assert "Traceback" not in errlog_path.read_text(encoding="utf-8")


async def test_two_processes_sharing_a_token_file_spend_one_refresh(sandbox: RunningSandbox, token_file: Path) -> None:
    env = app_env(sandbox, token_file)
    async with stdio_session(env) as first, stdio_session(env) as second:
        for client in (first, second):
            assert ok(await client.call_tool(LIST, {})) == []

        # Both meet the expired token at once: the file lock lets one refresh, the other re-reads the file.
        # Whichever interleaving happens (both see expired_token, or one sees the token the other's
        # refresh revoked), every call must succeed on one refresh.
        expire_and_reset(sandbox)
        results = await call_all([(first, LIST), (second, LIST)] * 4)
        assert [ok(result) for result in results] == [[]] * 8
        assert hook(sandbox, "GET", "stats")["refreshes"] == 1

        # One process alone meets the next expiry and refreshes; the other, which never saw an expired
        # token, meets the revoked one and picks the new pair up from the shared file.
        expire_and_reset(sandbox)
        assert ok(await first.call_tool(LIST, {})) == []
        assert ok(await second.call_tool(LIST, {})) == []
        stats = hook(sandbox, "GET", "stats")
        assert stats["refreshes"] == 1
        assert stats["requests"][GET_METHOD] == 4  # expired + repeat, revoked + repeat

    final = read_pair(token_file)
    assert final is not None
    assert sandbox.portal.authenticate_token(final["access_token"]).auth_type == "oauth"
