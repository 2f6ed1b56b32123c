"""Streamable HTTP and SSE: the SDK's clients through the Host/Origin/bearer guard, and raw refusals.

Every request goes to 127.0.0.1; a foreign Host or Origin is only ever a header value.
"""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, error_of, http_server, http_session, ok, server_command, sse_session

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LINE = {"NUMBER": "100200", "NAME": "PBX", "CRM_AUTO_CREATE": "Y"}


def host_port(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def initialize(http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> httpx2.Response:
    return await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})


def assert_refused(response: httpx2.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": message}


async def test_streamable_http_clients_and_guard(sandbox: RunningSandbox, token_file: Path) -> None:
    token = secrets.token_urlsafe(32)
    with http_server(app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=token)) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/mcp", server.url)
        assert "B24_MCP_AUTH_TOKEN is not set" not in server.stderr

        async with http_session(server.url, token) as client:
            assert ok(await client.call_tool("add_external_line", {"NUMBER": "100200", "NAME": "PBX"}))["ID"]
            assert error_of(await client.call_tool("add_external_line", {"NUMBER": "100200"}))["code"] == "ERROR_CORE"
        async with http_session(server.url, token, mode="auto") as client:  # negotiates the newest protocol
            assert ok(await client.call_tool("list_external_lines", {})) == [LINE]

        hostport = host_port(server.url)
        port = hostport.rsplit(":", 1)[1]
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await initialize(http, server.url, {})
            assert_refused(response, 401, "Missing or wrong bearer token")
            assert response.headers["www-authenticate"].startswith("Bearer ")
            for wrong in (
                bearer(token + "x"),
                {"Authorization": "Bearer"},
                {"Authorization": f"Basic {token}"},
                {"Authorization": token},
            ):
                assert_refused(await initialize(http, server.url, wrong), 401, "Missing or wrong bearer token")
            # A web page in the user's browser: refused even with the right token.
            for origin in ("https://evil.example", f"http://evil.example:{port}", "null"):
                response = await initialize(http, server.url, {**bearer(token), "Origin": origin})
                assert_refused(response, 403, "Origin not allowed")
            # DNS rebinding: a foreign Host is refused before anything else is looked at.
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", "localhost"):
                assert_refused(
                    await initialize(http, server.url, {**bearer(token), "Host": host}), 421, "Host not allowed"
                )
            assert_refused(await initialize(http, server.url, {"Host": "evil.example"}), 421, "Host not allowed")
            # The local names of this server, as Host and as Origin, are let through.
            for headers in (
                {"Origin": f"http://{hostport}"},
                {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
            ):
                response = await initialize(http, server.url, {**bearer(token), **headers})
                assert response.status_code == 200, response.text
                assert '"serverInfo"' in response.text


async def test_sse_clients_and_guard(sandbox: RunningSandbox, token_file: Path) -> None:
    token = secrets.token_urlsafe(32)
    with http_server(app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=token), "sse") as server:
        assert server.url.endswith("/sse")
        async with sse_session(server.url, token) as client:
            assert ok(await client.call_tool("add_external_line", {"NUMBER": "100200", "NAME": "PBX"}))["ID"]
            assert ok(await client.call_tool("list_external_lines", {})) == [LINE]

        messages = f"{server.origin}/messages/?session_id=0123456789abcdef0123456789abcdef"
        async with httpx2.AsyncClient(timeout=10) as http:
            assert_refused(await http.get(server.url), 401, "Missing or wrong bearer token")
            assert_refused(await http.get(server.url, headers=bearer("wrong")), 401, "Missing or wrong bearer token")
            assert_refused(await http.post(messages, json=INITIALIZE), 401, "Missing or wrong bearer token")
            response = await http.get(server.url, headers={**bearer(token), "Origin": "https://evil.example"})
            assert_refused(response, 403, "Origin not allowed")
            response = await http.get(server.url, headers={**bearer(token), "Host": "evil.example"})
            assert_refused(response, 421, "Host not allowed")


async def test_generated_token_on_loopback(sandbox: RunningSandbox, token_file: Path) -> None:
    with http_server(app_env(sandbox, token_file)) as server:
        match = re.search(r"^  Authorization: Bearer (\S+)$", server.stderr, re.MULTILINE)
        assert match, server.stderr
        token = match.group(1)
        assert len(token) >= 32
        async with http_session(server.url, token) as client:
            assert ok(await client.call_tool("list_external_lines", {})) == []
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await initialize(http, server.url, {})).status_code == 401
            assert (await initialize(http, server.url, bearer(token[:-1]))).status_code == 401

        # A malformed request makes uvicorn log; that line too goes through the server's redacting formatter.
        host, port = host_port(server.url).rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"NOT HTTP\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
    assert " WARNING uvicorn.error: Invalid HTTP request received." in server.stderr


def run_server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command(*args), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )


def assert_clean_refusal(process: subprocess.CompletedProcess[str], *phrases: str) -> str:
    message = process.stderr.strip()
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert "Traceback" not in message
    assert "\n" not in message, "one paragraph"
    assert message.startswith("b24-telephony-mcp: ")
    for phrase in phrases:
        assert phrase in message
    return message


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_non_loopback_bind_without_token_is_refused(sandbox: RunningSandbox, token_file: Path, transport: str) -> None:
    env = app_env(sandbox, token_file)
    env.pop("B24_LOG_LEVEL")
    process = run_server(env, "--transport", transport, "--host", "0.0.0.0", "--port", "0")
    assert_clean_refusal(process, "0.0.0.0", "B24_MCP_AUTH_TOKEN")
    assert "Authorization: Bearer" not in process.stderr, "no token is generated for a non-loopback bind"


def test_busy_port_is_a_clean_error(sandbox: RunningSandbox, token_file: Path) -> None:
    env: dict[str, Any] = app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=secrets.token_urlsafe(32))
    env.pop("B24_LOG_LEVEL")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        process = run_server(env, "--transport", "http", "--port", str(port))
    assert_clean_refusal(process, f"127.0.0.1:{port}", "--port")


async def test_allowed_hosts_extend_the_guard(sandbox: RunningSandbox, token_file: Path) -> None:
    """Behind a TLS proxy the Host is the public name: B24_MCP_ALLOWED_HOSTS admits exactly those values."""
    token = secrets.token_urlsafe(32)
    env = app_env(
        sandbox, token_file, B24_MCP_AUTH_TOKEN=token, B24_MCP_ALLOWED_HOSTS="mcp.example.test, Other.test:8443"
    )
    with http_server(env) as server:
        async with httpx2.AsyncClient(timeout=10) as http:
            for headers in (
                {"Host": "mcp.example.test"},
                {"Host": "other.test:8443", "Origin": "https://other.test:8443"},
            ):
                response = await initialize(http, server.url, {**bearer(token), **headers})
                assert response.status_code == 200, response.text
            for host in ("mcp.example.test:1", "evil.example"):
                response = await initialize(http, server.url, {**bearer(token), "Host": host})
                assert_refused(response, 421, "Host not allowed")
