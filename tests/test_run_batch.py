"""run_batch through the real server over stdio against the sandbox: how many REST requests 0, 1, 50, 51 and 500
items take, invalid items, halt, per-command errors shaped as the tools' own, log_external_call items, progress
notifications, cancellation between requests, and which selections offer it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.tools import select_tools
from support import app_env, error_of, http_server, http_session, ok, stdio_session
from test_http import INITIALIZE, MCP_HEADERS, bearer, initialize
from test_log_external_call import call, fault, registrations, seen
from test_tools import ToolCaller

pytestmark = pytest.mark.anyio

JOHN_DOE = "+1 906 219 5047"
SEARCH = "telephony.externalcall.searchcrmentities"
SEARCH_ITEM = {"tool": "search_crm_entities_by_phone", "arguments": {"PHONE_NUMBER": JOHN_DOE}}


@asynccontextmanager
async def batch_session(
    sandbox: RunningSandbox, state: Path, *args: str, mode: str = "legacy", **env: str
) -> AsyncIterator[ToolCaller]:
    environment = {**app_env(sandbox, state / "tokens.json", XDG_STATE_HOME=str(state)), **env}
    async with stdio_session(environment, *args, mode=mode) as client:
        listed = (await client.list_tools()).tools
        yield ToolCaller(client, {tool.name: tool.output_schema or {} for tool in listed})


def items_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = result["items"]
    assert result["failed"] == sum("error" in item for item in items)
    return items


async def test_requests_per_item_count(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with batch_session(sandbox, tmp_path) as tools:
        alone = await tools.ok("search_crm_entities_by_phone", {"PHONE_NUMBER": JOHN_DOE})
        for count, requests in ((0, 0), (1, 1), (50, 1), (51, 2), (500, 10)):
            seen(sandbox)
            result = await tools.ok("run_batch", {"items": [SEARCH_ITEM] * count})
            assert items_of(result) == [{"result": alone}] * count, count
            assert seen(sandbox) == {
                "requests": {"batch": requests} if requests else {},
                "batched": {SEARCH: count} if count else {},
            }, count


async def test_invalid_items_mixed_errors_and_halt(sandbox: RunningSandbox, tmp_path: Path) -> None:
    unknown_call = {"CALL_ID": "externalCall.unknown", "USER_ID": 2}
    items = [
        SEARCH_ITEM,
        {"tool": "finish_external_call", "arguments": unknown_call},  # a per-command error inside HTTP 200
        {"tool": "search_crm_entities_by_phone", "arguments": {"PHONE": JOHN_DOE}},  # invalid
        {"tool": "no_such_tool", "arguments": {}},  # invalid
        {"tool": "run_batch", "arguments": {"items": []}},  # a batch does not nest
        {"tool": "list_external_lines"},
    ]
    async with batch_session(sandbox, tmp_path) as tools:
        alone = await tools.error("finish_external_call", unknown_call)
        invalid_alone = await tools.error("search_crm_entities_by_phone", {"PHONE": JOHN_DOE})
        seen(sandbox)
        result = items_of(await tools.ok("run_batch", {"items": items}))
        assert seen(sandbox)["requests"] == {"batch": 1}, "the valid items still run, together"
        assert "result" in result[0] and result[5] == {"result": []}
        # Shaped exactly as the tool alone answers (inside a batch the portal's HTTP status is the batch's 200).
        assert {**result[1]["error"], "http_status": 400} == alone
        assert result[2]["error"] == invalid_alone
        assert result[3]["error"]["code"] == result[4]["error"]["code"] == "UNKNOWN_TOOL"
        assert "log_external_call" in result[3]["error"]["description"]  # what it can run

        # halt with an invalid item: nothing is sent.
        halted = items_of(await tools.ok("run_batch", {"items": items, "halt": True}))
        assert seen(sandbox)["requests"] == {}
        assert [item["error"]["code"] for item in halted if "error" in item][:1] == ["NOT_RUN"]
        assert halted[2]["error"] == invalid_alone

        # halt at a portal failure: the rest of that request and every later request are not run.
        failing = [SEARCH_ITEM] * 10 + [items[1]] + [SEARCH_ITEM] * 100
        halted = items_of(await tools.ok("run_batch", {"items": failing, "halt": True}))
        assert seen(sandbox) == {"requests": {"batch": 1}, "batched": {SEARCH: 10, "telephony.externalcall.finish": 1}}
        assert all("result" in item for item in halted[:10]) and halted[10]["error"]["code"] == "ERROR_CORE"
        assert {item["error"]["code"] for item in halted[11:]} == {"NOT_RUN"}


async def test_log_external_call_items_share_requests(sandbox: RunningSandbox, tmp_path: Path) -> None:
    items = [{"tool": "log_external_call", "arguments": call(f"bulk-{n}")} for n in range(30)]
    async with batch_session(sandbox, tmp_path) as tools:
        fault(sandbox, "telephony.externalCall.finish")  # the first finish fails; its call resumes later
        seen(sandbox)
        first = items_of(await tools.ok("run_batch", {"items": items}))
        # 4 commands a call, kept together: 12 calls (48 commands) a request.
        assert seen(sandbox)["requests"] == {"batch": 3}
        assert first[0]["error"]["steps"] == {
            "register": "done",
            "finish": "failed",
            "record": "not run",
            "transcript": "not run",
        }
        assert all(set(item["result"]["steps"]) == {"register", "finish", "record", "transcript"} for item in first[1:])
        again = items_of(await tools.ok("run_batch", {"items": items}))
        assert seen(sandbox) == {
            "requests": {"batch": 1},
            "batched": {
                "telephony.externalcall.finish": 1,
                "telephony.externalcall.attachrecord": 1,
                "telephony.call.attachtranscription": 1,
            },
        }
        assert again[1:] == first[1:], "the others answered from the journal"
        assert "result" in again[0]
    assert all(registrations(sandbox, f"bulk-{n}") == 1 for n in range(30))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_is_reported_per_request(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    async with batch_session(sandbox, tmp_path, mode=mode) as tools:
        result = await tools.client.call_tool(
            "run_batch", {"items": [SEARCH_ITEM] * 120}, progress_callback=on_progress
        )
        assert len(items_of(ok(result))) == 120
    assert [(progress, total) for progress, total, _ in reports] == [(50, 120), (100, 120), (120, 120)]
    assert reports[-1][2] == "120/120 items"


async def test_cancellation_stops_between_requests(tmp_path: Path) -> None:
    items = [{"tool": "log_external_call", "arguments": call(f"cancel-{n}")} for n in range(120)]
    first_progress = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_progress.set()

    # The server's own limiter spaces its requests 0.5 s apart, so the cancellation lands between two of them.
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as sandbox:
        async with batch_session(sandbox, tmp_path, B24_RATE_LIMIT="2", B24_RATE_BURST="1") as tools:
            client: Client = tools.client
            async with anyio.create_task_group() as group:

                async def run() -> None:
                    await client.call_tool("run_batch", {"items": items}, progress_callback=on_progress)

                group.start_soon(run)
                await first_progress.wait()
                group.cancel_scope.cancel()
            await anyio.sleep(1.5)  # long enough for two more paced requests, had it not stopped
            sent = seen(sandbox)["requests"].get("batch", 0)
            assert 1 <= sent < 10, sent
            logged = sum(registrations(sandbox, f"cancel-{n}") for n in range(120))
            assert logged == 12 * sent, "every request sent was finished and recorded"
            assert not sandbox.portal.calls, "each of those calls was finished, none left half-logged"
            # Nothing is left claimed: the same batch again logs the rest, never a call twice.
            result = items_of(await tools.ok("run_batch", {"items": items}))
            assert result[0]["result"]["CALL_ID"] and not [item for item in result if "error" in item]
        assert all(registrations(sandbox, f"cancel-{n}") == 1 for n in range(120))


async def test_selections_and_read_only_mode(sandbox: RunningSandbox, tmp_path: Path) -> None:
    assert select_tools()[-1].name == "run_batch"
    assert "run_batch" not in [spec.name for spec in select_tools(tools=["list_external_lines"])]
    assert [spec.name for spec in select_tools(tools=["run_batch", "list_external_lines"])] == [
        "list_external_lines",
        "run_batch",
    ]
    read_only = select_tools(read_only=True)
    assert read_only[-1].name == "run_batch" and all(spec.effect.read_only for spec in read_only)
    async with batch_session(sandbox, tmp_path, "--read-only") as tools:
        listed = {tool.name: tool for tool in (await tools.client.list_tools()).tools}
        assert listed["run_batch"].annotations is not None and listed["run_batch"].annotations.read_only_hint
        seen(sandbox)
        result = items_of(
            await tools.ok(
                "run_batch",
                {"items": [SEARCH_ITEM, {"tool": "add_external_line", "arguments": {"NUMBER": "1", "NAME": "x"}}]},
            )
        )
        assert "result" in result[0] and result[1]["error"]["code"] == "UNKNOWN_TOOL"
        assert seen(sandbox)["batched"] == {SEARCH: 1}
        error = error_of(await tools.client.call_tool("add_external_line", {"NUMBER": "1", "NAME": "x"}))
        assert error["code"] == "UNKNOWN_TOOL"
    # A tool that places a billed call asks the user first, one call at a time: never from a batch.
    async with batch_session(sandbox, tmp_path, "--toolsets", "all") as tools:
        callback = {
            "tool": "start_callback",
            "arguments": {"FROM_LINE": "reg1", "TO_NUMBER": "1", "TEXT_TO_PRONOUNCE": "x"},
        }
        refused = items_of(await tools.ok("run_batch", {"items": [callback]}))[0]["error"]
        assert refused["code"] == "UNKNOWN_TOOL" and "start_callback" not in refused["description"].split(": ")[-1]
        # `all` offers the events, whose offline queue is drained beside the tools: only those requests went out.
        assert {method for method in seen(sandbox)["requests"] if not method.startswith("event.")} == set()


async def test_progress_over_streamable_http_streams_only_that_request(sandbox: RunningSandbox, tmp_path: Path) -> None:
    token = "progress-test-token"
    env = app_env(sandbox, tmp_path / "tokens.json", B24_MCP_AUTH_TOKEN=token, XDG_STATE_HOME=str(tmp_path))
    with http_server(env) as server:
        reports: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reports.append(progress)

        for mode in ("legacy", "auto"):
            reports.clear()
            async with http_session(server.url, token, mode=mode) as client:
                result = await client.call_tool(
                    "run_batch", {"items": [SEARCH_ITEM] * 60}, progress_callback=on_progress
                )
                assert len(items_of(ok(result))) == 60
                assert ok(await client.call_tool("list_external_lines", {})) == []
            assert reports == [50, 60], mode

        # On the wire: a call that asks for progress is answered with an SSE stream, any other with plain JSON.
        headers = {**MCP_HEADERS, **bearer(token)}
        async with httpx2.AsyncClient(timeout=10) as http:
            opened = await initialize(http, server.url, bearer(token))
            session_headers = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(server.url, json=initialized, headers=session_headers)).status_code == 202
            call = {"name": "run_batch", "arguments": {"items": [SEARCH_ITEM]}}
            plain = await http.post(
                server.url,
                json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
                headers=session_headers,
            )
            assert plain.headers["content-type"].startswith("application/json")
            assert not plain.json()["result"]["isError"]
            streamed = await http.post(
                server.url,
                json={
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {**call, "_meta": {"progressToken": 7}},
                },
                headers=session_headers,
            )
            assert streamed.headers["content-type"].startswith("text/event-stream")
            events = [
                json.loads(line[5:])
                for line in streamed.text.splitlines()
                if line.startswith("data:") and line[5:].strip()
            ]
            assert events[0] == {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": 7, "progress": 1, "total": 1, "message": "1/1 items"},
            }
            assert events[-1]["id"] == 3 and not events[-1]["result"]["isError"]
            # A client that accepts only JSON keeps getting JSON, even for initialize.
            json_only = {"Accept": "application/json", "Content-Type": "application/json", **bearer(token)}
            opened = await http.post(server.url, json=INITIALIZE, headers=json_only)
            assert opened.status_code == 200 and opened.headers["content-type"].startswith("application/json")


async def test_an_item_error_is_hinted_as_the_tool_alone_would_be(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """The hint of a failed item names no tool the server leaves out, as the same tool's own error does."""
    missing = {"NUMBER": "no-such-line", "NAME": "x"}
    async with batch_session(sandbox, tmp_path, "--tools", "update_external_line,run_batch") as tools:
        item = items_of(
            await tools.ok("run_batch", {"items": [{"tool": "update_external_line", "arguments": missing}]})
        )
        alone = error_of(await tools.client.call_tool("update_external_line", missing))
    assert item[0]["error"]["hint"] == alone["hint"]
    assert "list_external_lines" not in alone["hint"]
    assert "not offered by this server" in alone["hint"]
