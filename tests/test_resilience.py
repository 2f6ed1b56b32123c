"""What the server does when the portal misbehaves: limits, 5xx, gateway pages, an unreachable host.

Faults are canned responses the sandbox serves instead of running the method (`/_sandbox/faults`);
its per-method request counts show how often the server really asked.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp_types import CallToolResult

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from support import app_env, error_of, ok, stdio_session, text_of

pytestmark = pytest.mark.anyio

ADD, GET, SEARCH = (
    "telephony.externalLine.add",
    "telephony.externalLine.get",
    "telephony.externalCall.searchCrmEntities",
)
JOHN_DOE = "+1 906 219 5047"
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def envelope(code: str, description: str) -> str:
    return json.dumps({"error": code, "error_description": description})


QUERY_LIMIT = envelope("QUERY_LIMIT_EXCEEDED", "Too many requests")
INTERNAL = envelope("INTERNAL_SERVER_ERROR", "Internal server error")
TIME_LIMIT = envelope("OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.")


def fault(
    sandbox: RunningSandbox, method: str, status: int, body: str, content_type: str = "application/json", count: int = 1
) -> None:
    spec = {"method": method, "status": status, "body": body, "content_type": content_type, "count": count}
    response = httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=spec)
    assert response.status_code == 200, response.text


def requests_seen(sandbox: RunningSandbox, reset: bool = True) -> dict[str, int]:
    """Requests per REST method since the last reset (lower-cased names, as the sandbox counts them)."""
    counts: dict[str, int] = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()["requests"]
    if reset:
        httpx2.post(f"{sandbox.base_url}/_sandbox/reset-stats")
    return {method: n for method, n in counts.items() if n}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_what_is_repeated_depends_on_the_failure_and_the_method(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    async with stdio_session(app_env(sandbox, token_file)) as client:
        # 503 QUERY_LIMIT_EXCEEDED: the portal refused before running anything, so even a write is repeated.
        fault(sandbox, ADD, 503, QUERY_LIMIT, count=2)
        assert ok(await client.call_tool("add_external_line", {"NUMBER": "100", "NAME": "PBX"}))["ID"]
        assert requests_seen(sandbox) == {ADD.lower(): 3}

        # 500 on a write: it may have run, so it is reported, not repeated.
        fault(sandbox, ADD, 500, INTERNAL)
        error = error_of(await client.call_tool("add_external_line", {"NUMBER": "200", "NAME": "Second"}))
        assert (error["code"], error["http_status"], error["retryable"]) == ("INTERNAL_SERVER_ERROR", 500, False)
        assert error["method"] == ADD
        assert requests_seen(sandbox) == {ADD.lower(): 1}

        # 500 on a read: repeated, and the repeat's answer is the result.
        fault(sandbox, GET, 500, INTERNAL)
        assert ok(await client.call_tool("list_external_lines", {})) == [
            {"NUMBER": "100", "NAME": "PBX", "CRM_AUTO_CREATE": "Y"}
        ]
        assert requests_seen(sandbox) == {GET.lower(): 2}

        # A read that keeps failing is repeated a bounded number of times, then reported as retryable.
        fault(sandbox, GET, 500, INTERNAL, count=3)
        error = error_of(await client.call_tool("list_external_lines", {}))
        assert (error["code"], error["http_status"], error["retryable"]) == ("INTERNAL_SERVER_ERROR", 500, True)
        assert requests_seen(sandbox) == {GET.lower(): 3}


async def test_gateway_page_and_operation_time_limit(sandbox: RunningSandbox, token_file: Path) -> None:
    async with stdio_session(app_env(sandbox, token_file)) as client:
        # A proxy's HTML page: named by its <title>, without the markup.
        fault(sandbox, ADD, 502, BAD_GATEWAY_PAGE, content_type="text/html")
        result = await client.call_tool("add_external_line", {"NUMBER": "100"})
        error = error_of(result)
        assert error["code"] == "UNEXPECTED_RESPONSE"
        assert "502 Bad Gateway" in error["description"]
        assert (error["http_status"], error["retryable"]) == (502, False)
        assert "proxy" in error["hint"]
        assert not any(mark in text_of(result) for mark in ("<", ">", "nginx"))
        assert requests_seen(sandbox) == {ADD.lower(): 1}

        # OPERATION_TIME_LIMIT carries the reset time of the failing answer itself, never a stale one from an
        # earlier success (whose `time.operating_reset_at` the sandbox sets to the request start + 600 s).
        assert ok(await client.call_tool("list_external_lines", {})) == []
        reset = int(time.time()) + 90
        blocked = json.dumps({**json.loads(TIME_LIMIT), "time": {"operating_reset_at": reset, "operating": 480.5}})
        fault(sandbox, GET, 429, blocked)
        result = await client.call_tool("list_external_lines", {})
        error = error_of(result)
        assert (error["code"], error["http_status"]) == ("OPERATION_TIME_LIMIT", 429)
        assert "reset" in error["hint"]
        reset_at = datetime.strptime(error["reset_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        assert reset_at == reset
        assert f"a retry can help after {error['reset_at']}" in text_of(result)
        assert requests_seen(sandbox) == {GET.lower(): 2}, "a 429 is not repeated"
        # Until the reset time the method is refused here, with the same error, without a request.
        again = error_of(await client.call_tool("list_external_lines", {}))
        assert (again["code"], again["reset_at"]) == ("OPERATION_TIME_LIMIT", error["reset_at"])
        assert requests_seen(sandbox) == {}, "refused without a request"
        # Other methods are not held back.
        assert ok(await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": "+1 000 000 0000"})) == []

        # An answer without a time block has no reset time to report, and nothing is held back.
        fault(sandbox, SEARCH, 429, TIME_LIMIT)
        error = error_of(await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": JOHN_DOE}))
        assert error["code"] == "OPERATION_TIME_LIMIT"
        assert "reset_at" not in error
        assert ok(await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": "+1 000 000 0000"})) == []


async def test_portal_leaky_bucket_503s_are_absorbed(token_file: Path) -> None:
    # The portal's bucket is tiny; ours (support.FAST_LIMITS) is far above it, so the portal answers 503s.
    with start_sandbox(SandboxConfig(rate_limit=20.0, rate_burst=2)) as portal:
        async with stdio_session(app_env(portal, token_file)) as client:
            results: list[CallToolResult] = []

            async def search() -> None:
                results.append(await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": JOHN_DOE}))

            async with anyio.create_task_group() as group:
                for _ in range(16):
                    group.start_soon(search)
            matches = [ok(result) for result in results]
        assert len(matches) == 16
        assert all([match["CRM_ENTITY_ID"] for match in found] == [651, 201, 643] for found in matches)
        sent = requests_seen(portal)[SEARCH.lower()]
        assert sent > 16, "the portal should have refused some requests with 503 QUERY_LIMIT_EXCEEDED"


async def test_unreachable_portal_is_a_network_error(
    sandbox: RunningSandbox, token_file: Path, closed_port: int, tmp_path: Path
) -> None:
    env = app_env(sandbox, token_file)
    env["B24_PORTAL_URL"] = f"http://127.0.0.1:{closed_port}"
    errlog_path = tmp_path / "stderr.log"
    with errlog_path.open("w", encoding="utf-8") as errlog:
        async with stdio_session(env, errlog=errlog) as client:
            errors: list[dict[str, Any]] = []
            for tool, arguments in (("list_external_lines", {}), ("add_external_line", {"NUMBER": "100"})):
                result = await client.call_tool(tool, arguments)
                errors.append(error_of(result))
                assert "Traceback" not in text_of(result)
    for error in errors:
        assert error["code"] == "NETWORK_ERROR"
        assert error["description"].startswith("ConnectError while calling telephony.externalLine.")
        assert "B24_PORTAL_URL" in error["hint"]
        assert error["http_status"] is None
        # The connection was never established, so nothing ran: a retry is safe even for the write.
        assert error["retryable"] is True
    assert "Traceback" not in errlog_path.read_text(encoding="utf-8")
