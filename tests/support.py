"""Shared test plumbing: the real server as a subprocess, reached by the SDK's own client.

Nothing here mocks our code: each helper spawns `python -m b24_telephony_mcp` and talks MCP to it
over stdio, streamable HTTP or SSE, while it talks HTTP to a sandbox portal on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from b24_telephony_mcp.sandbox import RunningSandbox

# Generous limits so ordinary tests never wait on the leaky bucket; limit tests set their own.
FAST_LIMITS = {"B24_RATE_LIMIT": "1000", "B24_RATE_BURST": "10000"}


# A profiles directory that never exists, so a developer's own `login` profile is never picked up.
NO_PROFILES = "/nonexistent/b24-telephony-mcp-tests"
# One schema cache for the servers of a test run, never the developer's: the first start writes it, the rest
# read it, so the suite runs the warm path a user's every start after the first takes.
TEST_CACHE = tempfile.mkdtemp(prefix="b24-telephony-mcp-cache-")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus any real B24_* credentials or profiles a developer may have."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("B24_")}
    env["B24_LOG_LEVEL"] = "DEBUG"  # the most talkative logs are the ones to check for secrets
    env["XDG_CONFIG_HOME"] = NO_PROFILES
    env["XDG_CACHE_HOME"] = TEST_CACHE
    env.update(extra)
    return env


def app_variables(sandbox: RunningSandbox) -> dict[str, str]:
    """The application `sandbox` installed: portal, client, its first token pair and the OAuth server."""
    return sandbox.app_variables()


def app_env(sandbox: RunningSandbox, token_file: Path, **extra: str) -> dict[str, str]:
    """App-mode settings for `sandbox`; the state directory (log_external_call's journal) beside the token file,
    never the developer's own."""
    extra = {"XDG_STATE_HOME": str(token_file.parent), **extra}
    return clean_env(**app_variables(sandbox), B24_TOKEN_FILE=str(token_file), **FAST_LIMITS, **extra)


def webhook_env(sandbox: RunningSandbox, **extra: str) -> dict[str, str]:
    return clean_env(B24_WEBHOOK_URL=sandbox.webhook_url, **FAST_LIMITS, **extra)


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "b24_telephony_mcp", *args]


@asynccontextmanager
async def stdio_session(
    env: Mapping[str, str], *args: str, errlog: IO[str] | None = None, mode: str = "legacy", **client_options: Any
) -> AsyncIterator[Client]:
    """The server spawned over stdio exactly as an MCP client config would; stderr to `errlog`. `client_options`
    go to `Client` (`logging_callback`, `log_level`, `message_handler`...)."""
    params = StdioServerParameters(command=sys.executable, args=server_command(*args)[1:], env=dict(env))
    transport = stdio_client(params, errlog=errlog if errlog is not None else sys.stderr)
    async with Client(transport, mode=mode, **client_options) as client:
        yield client


@dataclass
class HttpServer:
    """A server subprocess on an HTTP transport; `url` is read from its stderr announcement."""

    process: subprocess.Popen[str]
    url: str
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return self.url.rsplit("/", 1)[0]

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)


@contextmanager
def http_server(env: Mapping[str, str], transport: str = "http", *args: str) -> Iterator[HttpServer]:
    with http_servers([env], transport, *args) as servers:
        yield servers[0]


@contextmanager
def http_servers(envs: Sequence[Mapping[str, str]], transport: str = "http", *args: str) -> Iterator[list[HttpServer]]:
    """One server process per environment (replicas), all spawned before any is waited for."""
    processes = [
        subprocess.Popen(
            server_command("--transport", transport, "--port", "0", *args),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    servers: list[HttpServer] = []
    drains: list[threading.Thread] = []
    try:
        for process in processes:
            server = _announced(process)
            # Keep draining stderr so the child never blocks on a full pipe; tests read the lines afterwards.
            drain = threading.Thread(target=lambda s=server: s.stderr_lines.extend(s.process.stderr or ()), daemon=True)
            drain.start()
            servers.append(server)
            drains.append(drain)
        yield servers
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for drain in drains:
            drain.join(5)


def _announced(process: subprocess.Popen[str]) -> HttpServer:
    """The server once it announced its URL on stderr, or AssertionError with what it wrote instead."""
    assert process.stderr is not None
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line)
        if "serving MCP over" in line:
            return HttpServer(process, line.rsplit(" at ", 1)[1].strip(), lines)
    process.wait(5)
    raise AssertionError(f"server did not start: {''.join(lines)}")


@asynccontextmanager
async def http_session(url: str, token: str, mode: str = "legacy", **client_options: Any) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, **client_options) as client,
    ):
        yield client


@asynccontextmanager
async def sse_session(url: str, token: str) -> AsyncIterator[Client]:
    async with Client(sse_client(url, headers={"Authorization": f"Bearer {token}"}), mode="legacy") as client:
        yield client


def json_objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in a JSON document, depth first (schemas, results)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from json_objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from json_objects(item)


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def ok(result: CallToolResult) -> Any:
    """The REST result of a successful call, after checking text and structure agree."""
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert json.loads(text_of(result)) == result.structured_content
    return result.structured_content["result"]


def error_of(result: CallToolResult) -> dict[str, Any]:
    """The structured error of a failed call, after checking the text leads with its code."""
    assert result.is_error, text_of(result)
    assert result.structured_content is not None
    error = result.structured_content["error"]
    assert text_of(result).startswith(f"{error['code']}: {error['description']}")
    return error


@contextmanager
def loopback_site(port: int, page: Callable[[str], tuple[str, bytes] | None]) -> Iterator[None]:
    """A plain HTTP server on 127.0.0.1:`port` (another party's site: a client's landing page, its metadata
    document) answering each GET with `page(path)`: its content type and body, or 404 for None."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = page(self.path)
            if found is None:
                self.send_error(404)
                return
            content_type, body = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
