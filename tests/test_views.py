"""The call dashboard over MCP (MCP Apps, `io.modelcontextprotocol/ui`): what a client sees with and without it.

A client that negotiates the extension (declares it with the `text/html;profile=mcp-app` MIME type, over either
protocol generation) sees `_meta.ui.resourceUri` on the tools that carry a view, the page in resources/list, and
reads it with its CSP; every other client sees tools/list exactly as the snapshots of test_tools_list.py hold it.
With the extension, every other tool is checked equal to those snapshots, and the tools that carry a view have a
snapshot of their own (`tests/snapshots/apps/tools.json`; UPDATE_SNAPSHOTS=1 accepts a change, as there). The page
itself is checked in a browser by test_dashboard.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client import advertise
from mcp.client.session import IncomingMessage
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp_types import INVALID_PARAMS, ResourceListChangedNotification
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.tools.call_analytics import CALL_DASHBOARD
from support import app_env, ok, stdio_session
from test_tools_list import SNAPSHOTS, check_snapshot, compact_size

pytestmark = pytest.mark.anyio

VIEW_TOOLS = {"get_call_analytics", "get_call_statistics"}
PAGE = CALL_DASHBOARD.uri


def apps() -> list[Any]:
    """What a client declares to negotiate MCP Apps (the ext-apps spec's `McpUiClientCapabilities`)."""
    return [advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})]


def dumped(tools: list[Any]) -> list[dict[str, Any]]:
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]


async def listing(client: Client) -> list[dict[str, Any]]:
    return dumped((await client.list_tools()).tools)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_only_a_client_that_negotiated_sees_the_view(
    module_sandbox: RunningSandbox, tmp_path: Path, mode: str
) -> None:
    env = app_env(module_sandbox, tmp_path / "tokens.json")
    async with stdio_session(env, mode=mode) as plain:
        without = await listing(plain)
        assert (await plain.list_resources()).resources == []
    async with stdio_session(env, mode=mode, extensions=apps()) as client:
        assert (client.protocol_version in MODERN_PROTOCOL_VERSIONS) is (mode == "auto")
        with_view = await listing(client)
        resources = (await client.list_resources()).resources
        page = (await client.read_resource(PAGE)).contents
        if mode == "auto":  # the 2025-11-25 wire has no `extensions` in server capabilities; the SDK drops it there
            assert client.server_capabilities.extensions == {EXTENSION_ID: {}}
        assert client.server_capabilities.resources is not None

    # Byte for byte today's list for a client without the extension (the snapshots of test_tools_list.py).
    by_name = {tool["name"]: tool for tool in without}
    for tool in with_view:
        plain_tool = by_name[tool["name"]]
        if tool["name"] in VIEW_TOOLS:
            assert tool["_meta"] == {**plain_tool["_meta"], "ui": {"resourceUri": PAGE}}
            assert {**tool, "_meta": plain_tool["_meta"]} == plain_tool
        else:
            assert tool == plain_tool
    assert [tool["name"] for tool in with_view] == list(by_name)
    sizes = compact_size({"tools": without}), compact_size({"tools": with_view})
    print(f"{mode}: tools/list {sizes[0]} B, with MCP Apps {sizes[1]} B")

    # One page, served as an MCP App, with a CSP that names no domain: it loads and reaches nothing.
    assert [(str(r.uri), r.mime_type, r.name) for r in resources] == [(PAGE, APP_MIME_TYPE, CALL_DASHBOARD.title)]
    [content] = page
    assert (str(content.uri), content.mime_type) == (PAGE, APP_MIME_TYPE)
    assert content.meta == {"ui": {"csp": {"connectDomains": [], "resourceDomains": []}, "prefersBorder": False}}
    assert resources[0].meta == content.meta
    html = getattr(content, "text", "")
    assert html == CALL_DASHBOARD.html() and html.startswith("<!doctype html>")
    for remote in ("http://", "https://", "//cdn", "src=", "@import", "fetch(", "XMLHttpRequest", "WebSocket"):
        # The only URL in the page is the SVG namespace, which is a name, not a request.
        assert html.replace('"http://www.w3.org/2000/svg"', "").count(remote) == 0, remote
    print(f"page: {len(html.encode())} B")


async def test_the_tools_with_a_view_are_snapshotted(module_sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with stdio_session(app_env(module_sandbox, tmp_path / "tokens.json"), extensions=apps()) as client:
        tools = [tool for tool in await listing(client) if tool["name"] in VIEW_TOOLS]
    current = json.dumps(tools, indent=2, ensure_ascii=False) + "\n"
    diff = check_snapshot(SNAPSHOTS / "apps" / "tools.json", current)
    if diff:
        pytest.fail(f"tools/list with MCP Apps changed (UPDATE_SNAPSHOTS=1 accepts it after review):\n{diff}", False)


class ResourceListChanges:
    def __init__(self) -> None:
        self.arrived = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, ResourceListChangedNotification):
            self.arrived.set()


async def test_enabling_the_statistics_toolset_brings_the_view(module_sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = app_env(module_sandbox, tmp_path / "tokens.json")
    changes = ResourceListChanges()
    args = ("--toolsets", "external_lines", "--dynamic-toolsets")
    async with stdio_session(env, *args, extensions=apps(), message_handler=changes) as client:
        resources = client.server_capabilities.resources
        assert resources is not None and resources.list_changed is True
        assert not any("ui" in tool.get("_meta", {}) for tool in await listing(client))
        assert (await client.list_resources()).resources == []
        with pytest.raises(MCPError) as refused:  # no tool offered names it, so there is no such page
            await client.read_resource(PAGE)
        assert refused.value.code == INVALID_PARAMS and PAGE in refused.value.message

        ok(await client.call_tool("enable_toolset", {"toolset": "statistics"}))
        with anyio.fail_after(10):  # the page is a new resource: the client is told
            await changes.arrived.wait()
        tools = {tool["name"]: tool for tool in await listing(client)}
        assert {name for name, tool in tools.items() if "ui" in tool.get("_meta", {})} == VIEW_TOOLS
        assert [str(resource.uri) for resource in (await client.list_resources()).resources] == [PAGE]
        assert (await client.read_resource(PAGE)).contents[0].mime_type == APP_MIME_TYPE
