"""The logging capability: the server's own warnings reach the client as `notifications/message`, at the level the
client asked for, redacted, over both protocol generations (and still go to stderr).

The warning staged here is a portal that moved: the sandbox answers 302 with a Location (carrying the access token,
as a careless proxy might), the client repeats the call there and logs it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp_types import LoggingMessageNotificationParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, error_of, http_server, http_session, ok, stdio_session

pytestmark = [
    pytest.mark.anyio,
    # The SDK marks logging deprecated as of 2026-07-28; handshake-era clients (today's) still use it.
    pytest.mark.filterwarnings("ignore:The logging capability is deprecated"),
]

LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"


class Received:
    """The client's logging callback: every log message, and a way to wait for the n-th."""

    def __init__(self) -> None:
        self.messages: list[LoggingMessageNotificationParams] = []
        self._more = anyio.Event()

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        self.messages.append(params)
        self._more.set()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.messages) < count:
                await self._more.wait()
                self._more = anyio.Event()

    def text(self) -> str:
        return "\n".join(str(message.data) for message in self.messages)


def stage_a_moved_portal(sandbox: RunningSandbox) -> None:
    """The next externalLine.get answers 302 to the same portal, the token in the URL."""
    location = f"{sandbox.base_url}/rest/telephony.externalLine.get?auth={sandbox.access_token}"
    fault = {"method": "telephony.externalLine.get", "status": 302, "headers": {"Location": location}}
    httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=fault).raise_for_status()


def assert_nothing_secret(sandbox: RunningSandbox, text: str) -> None:
    for secret in (sandbox.access_token, sandbox.refresh_token, sandbox.config.client_secret):
        assert secret not in text


async def test_handshake_protocol_clients_get_warnings_at_the_level_they_set(
    sandbox: RunningSandbox, token_file: Path, tmp_path: Path
) -> None:
    received = Received()
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as errlog:
        async with stdio_session(app_env(sandbox, token_file), logging_callback=received, errlog=errlog) as client:
            assert client.protocol_version not in MODERN_PROTOCOL_VERSIONS
            assert client.server_capabilities.logging is not None

            await client.set_logging_level("warning")
            stage_a_moved_portal(sandbox)
            assert ok(await client.call_tool("list_external_lines", {})) == []
            await received.wait_for(1)
            moved = received.messages[0]
            assert (moved.level, moved.logger) == ("warning", "b24_telephony_mcp.bitrix.client")
            host = sandbox.base_url.split("//", 1)[1]
            assert moved.data == (
                f"telephony.externalLine.get: the portal moved to {host}; repeating the request there (update the "
                "portal URL)"
            )

            # Above the level: nothing. A failed call logs at info, below warning: nothing either.
            await client.set_logging_level("error")
            stage_a_moved_portal(sandbox)
            assert ok(await client.call_tool("list_external_lines", {})) == []
            await client.set_logging_level("warning")
            error_of(await client.call_tool("delete_external_line", {"NUMBER": "404"}))

            # Down to info: the failure's info line arrives, and it is the next message after the first.
            await client.set_logging_level("info")
            error_of(await client.call_tool("delete_external_line", {"NUMBER": "404"}))
            await received.wait_for(2)
            failed = received.messages[1]
            assert (failed.level, failed.logger) == ("info", "b24_telephony_mcp.serving.server")
            assert str(failed.data).startswith("delete_external_line failed: ERROR_CORE Could not find line")
    assert len(received.messages) == 2, received.text()
    assert_nothing_secret(sandbox, received.text())
    assert "the portal moved to" in stderr.read_text(), "stderr keeps getting them"


async def test_2026_07_28_clients_get_warnings_for_requests_that_opt_in(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    received = Received()
    async with stdio_session(app_env(sandbox, token_file), mode="auto", logging_callback=received) as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        assert client.server_capabilities.logging is not None
        # No opt-in on the request: the protocol forbids sending it any log message.
        stage_a_moved_portal(sandbox)
        assert ok(await client.call_tool("list_external_lines", {})) == []
        stage_a_moved_portal(sandbox)
        assert ok(await client.call_tool("list_external_lines", {}, meta={LOG_LEVEL_KEY: "warning"})) == []
        await received.wait_for(1)
    assert [(message.level, message.logger) for message in received.messages] == [
        ("warning", "b24_telephony_mcp.bitrix.client")
    ]
    assert "the portal moved to" in received.text()
    assert_nothing_secret(sandbox, received.text())


async def test_streamable_http_sessions_get_them_too(sandbox: RunningSandbox, token_file: Path) -> None:
    # On the session's standalone stream. The POST answers are plain JSON, which carries no notifications, so
    # 2026-07-28 requests over this HTTP transport get none (client_log.py says so).
    received = Received()
    token = secrets.token_urlsafe(32)
    with http_server(app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=token)) as server:
        async with http_session(server.url, token, logging_callback=received) as client:
            stage_a_moved_portal(sandbox)
            assert ok(await client.call_tool("list_external_lines", {})) == []
            await received.wait_for(1)  # warning is the level until a logging/setLevel
    assert [(message.level, message.logger) for message in received.messages] == [
        ("warning", "b24_telephony_mcp.bitrix.client")
    ]
    assert_nothing_secret(sandbox, received.text())
