"""Per-connection tool selection: X-MCP-Toolsets and X-MCP-Readonly narrow what one HTTP connection is offered
and may call, within the server's offer; a name the server does not serve is a 400 naming those it does."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.tools.catalogue import TOOLSET_TOOL_NAMES
from support import HttpServer, app_env, error_of, http_server, ok

pytestmark = pytest.mark.anyio

TOKEN = secrets.token_urlsafe(32)
LINES = set(TOOLSET_TOOL_NAMES["external_lines"])


@pytest.fixture
def server(sandbox: RunningSandbox, token_file: Path) -> Iterator[HttpServer]:
    env = app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=TOKEN, B24_TOOLSETS="external_lines,external_calls,reference")
    with http_server(env) as started:
        yield started


def session(server: HttpServer, mode: str = "legacy", **headers: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}", **headers}, timeout=30)
    return Client(streamable_http_client(server.url, http_client=http), mode=mode)


async def names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_headers_narrow_one_connection_and_not_another(server: HttpServer, mode: str) -> None:
    async with (
        session(server, mode) as whole,
        session(server, mode, **{"X-MCP-Toolsets": "external_lines", "X-MCP-Readonly": "true"}) as narrowed,
    ):
        everything = await names(whole)
        assert everything > LINES and "run_batch" in everything and "list_tts_voices" in everything
        assert await names(narrowed) == {"list_external_lines", "run_batch"}
        batch = next(tool for tool in (await narrowed.list_tools()).tools if tool.name == "run_batch")
        assert batch.annotations is not None and batch.annotations.read_only_hint is True

        refused = error_of(await narrowed.call_tool("add_external_line", {"NUMBER": "100200"}))
        assert refused["code"] == "UNKNOWN_TOOL"
        assert "available: list_external_lines, run_batch" in refused["description"]
        write = {"tool": "add_external_line", "arguments": {"NUMBER": "1"}}
        (item,) = ok(await narrowed.call_tool("run_batch", {"items": [write]}))["items"]
        assert item["error"]["code"] == "UNKNOWN_TOOL", item
        assert ok(await narrowed.call_tool("list_external_lines", {})) == []

        assert ok(await whole.call_tool("add_external_line", {"NUMBER": "100200", "NAME": "PBX"}))["ID"]
        assert [line["NUMBER"] for line in ok(await narrowed.call_tool("list_external_lines", {}))] == ["100200"]


async def test_all_and_read_only_alone(server: HttpServer) -> None:
    async with session(server) as whole, session(server, **{"X-MCP-Toolsets": "all"}) as every:
        assert await names(every) == await names(whole)
    async with session(server, **{"X-MCP-Readonly": "1"}) as reading:
        offered = await names(reading)
        assert "list_external_lines" in offered and "list_tts_voices" in offered
        assert not offered & {"add_external_line", "delete_external_line", "register_external_call"}


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"X-MCP-Toolsets": "external_lines,sip"}, "unknown toolset 'sip'; this server serves: external_lines, "),
        ({"X-MCP-Toolsets": "nonsense"}, "unknown toolset 'nonsense'"),
        ({"X-MCP-Toolsets": ",,"}, "no toolset"),
        ({"X-MCP-Readonly": "maybe"}, "X-MCP-Readonly: 'maybe' is not true, 1, false or 0"),
    ],
)
async def test_what_the_server_does_not_serve_is_a_400_naming_what_it_does(
    server: HttpServer, headers: dict[str, str], said: str
) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(
            server.url,
            json=initialize,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
                **headers,
            },
        )
    assert answer.status_code == 400
    assert said in answer.json()["error"]
    assert "reference" in answer.json()["error"] or "X-MCP-Readonly" in said
