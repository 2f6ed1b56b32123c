"""No credential ever leaves the server in a tool result or on stderr (DEBUG logs included).

The flows include a token refresh, ordinary errors, and a portal (or something in front of it) that
echoes credentials back, in a failure and in a success. The secrets checked are every one the run
involved: the client secret, every access and refresh token the sandbox issued (the installation
pair and each rotation), the webhook code, and the MCP bearer token.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp_types import CallToolResult

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxPortal
from b24_telephony_mcp.sandbox.portal import TokenPair as IssuedPair
from support import app_env, error_of, http_server, http_session, ok, stdio_session, text_of, webhook_env

pytestmark = pytest.mark.anyio

ADD, GET = "telephony.externalLine.add", "telephony.externalLine.get"


def record_issued_tokens(portal: SandboxPortal) -> list[str]:
    """Every access and refresh token the portal issues from now on (white-box instrumentation)."""
    issued: list[str] = []
    issue = portal.issue_tokens

    def recording_issue(user_id: int = 1) -> IssuedPair:
        pair = issue(user_id)
        issued.extend((pair.access_token, pair.refresh_token))
        return pair

    portal.issue_tokens = recording_issue  # type: ignore[method-assign]
    return issued


def fault(sandbox: RunningSandbox, method: str, status: int, body: object) -> None:
    spec = {"method": method, "status": status, "body": json.dumps(body), "content_type": "application/json"}
    assert httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=spec).status_code == 200


def expire_tokens(sandbox: RunningSandbox) -> None:
    assert httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens").status_code == 200


async def echo_round(client: Client, sandbox: RunningSandbox, echoed: Iterable[str]) -> list[CallToolResult]:
    """The portal sends the credentials back, once in an error and once in a result."""
    echo = " ".join(echoed)
    fault(sandbox, ADD, 403, {"error": "ACCESS_DENIED", "error_description": f"Access denied! {echo}"})
    failure = await client.call_tool("add_external_line", {"NUMBER": "300"})
    assert error_of(failure)["code"] == "ACCESS_DENIED"
    fault(sandbox, GET, 200, {"result": [{"NUMBER": echo, "NAME": f"echo {echo}", "CRM_AUTO_CREATE": "Y"}]})
    success = await client.call_tool("list_external_lines", {})
    assert "***" in ok(success)[0]["NAME"]
    return [failure, success]


async def app_flow(
    client: Client, sandbox: RunningSandbox, issued: list[str], *extra_secrets: str
) -> list[CallToolResult]:
    results = [await client.call_tool("list_external_lines", {})]
    expire_tokens(sandbox)
    results.append(await client.call_tool("add_external_line", {"NUMBER": "100", "NAME": "PBX"}))  # refreshes
    assert len(issued) == 2, "the flow must have rotated the tokens"
    results.append(await client.call_tool("add_external_line", {"NUMBER": "100"}))
    assert error_of(results[-1])["code"] == "ERROR_CORE"
    known = [sandbox.access_token, sandbox.refresh_token, *issued, sandbox.config.client_secret, *extra_secrets]
    results += await echo_round(client, sandbox, known)
    return results


def app_secrets(sandbox: RunningSandbox, issued: list[str]) -> list[str]:
    return [sandbox.config.client_secret, sandbox.access_token, sandbox.refresh_token, *issued]


def assert_nothing_leaked(secret_values: list[str], results: list[CallToolResult], stderr: str) -> None:
    assert all(len(value) >= 16 for value in secret_values)
    outputs = [text_of(result) for result in results]
    outputs += [json.dumps(result.structured_content, ensure_ascii=False) for result in results]
    for value in secret_values:
        for output in outputs:
            assert value not in output
        leaked = [line for line in stderr.splitlines() if value in line]
        assert not leaked, leaked
    assert "***" in "".join(outputs), "the echo round should have shown redaction at work"


async def test_stdio_app_flow_with_refresh_leaks_nothing(
    sandbox: RunningSandbox, token_file: Path, tmp_path: Path
) -> None:
    issued = record_issued_tokens(sandbox.portal)
    errlog_path = tmp_path / "stderr.log"
    with errlog_path.open("w", encoding="utf-8") as errlog:
        async with stdio_session(app_env(sandbox, token_file), errlog=errlog) as client:
            results = await app_flow(client, sandbox, issued)
    stderr = errlog_path.read_text(encoding="utf-8")
    assert " DEBUG " in stderr and "OAuth tokens refreshed" in stderr, "the logs checked must be the talkative ones"
    assert_nothing_leaked(app_secrets(sandbox, issued), results, stderr)


async def test_stdio_webhook_flow_leaks_nothing(sandbox: RunningSandbox, tmp_path: Path) -> None:
    errlog_path = tmp_path / "stderr.log"
    with errlog_path.open("w", encoding="utf-8") as errlog:
        async with stdio_session(webhook_env(sandbox), errlog=errlog) as client:
            results = [await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": "+1 906 219 5047"})]
            assert ok(results[0])
            results.append(await client.call_tool("add_external_line", {"NUMBER": "100"}))
            assert error_of(results[-1])["code"] == "WRONG_AUTH_TYPE"
            results += await echo_round(client, sandbox, [sandbox.webhook_url, sandbox.config.webhook_code])
    stderr = errlog_path.read_text(encoding="utf-8")
    assert " DEBUG " in stderr
    assert_nothing_leaked([sandbox.config.webhook_code], results, stderr)


async def test_http_flows_leak_nothing(sandbox: RunningSandbox, token_file: Path) -> None:
    issued = record_issued_tokens(sandbox.portal)
    bearer = secrets.token_urlsafe(32)
    with http_server(app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=bearer)) as server:
        async with http_session(server.url, bearer) as client:
            results = await app_flow(client, sandbox, issued, bearer)
        argv = " ".join(server.process.args)  # type: ignore[arg-type]
    assert "OAuth tokens refreshed" in server.stderr
    every_secret = [*app_secrets(sandbox, issued), bearer, sandbox.config.webhook_code]
    assert_nothing_leaked(every_secret, results, server.stderr)
    assert not [value for value in every_secret if value in argv]

    # Without B24_MCP_AUTH_TOKEN the generated token is shown once, deliberately, and nowhere else.
    with http_server(app_env(sandbox, token_file)) as server:
        match = re.search(r"Authorization: Bearer (\S+)", server.stderr)
        assert match, server.stderr
        generated = match.group(1)
        async with http_session(server.url, generated) as client:
            results = await echo_round(client, sandbox, [generated, *app_secrets(sandbox, issued)])
        argv = " ".join(server.process.args)  # type: ignore[arg-type]
    lines = [line for line in server.stderr.splitlines() if generated in line]
    assert lines == [f"  Authorization: Bearer {generated}"]
    deliberate = "".join(line + "\n" for line in lines)
    assert_nothing_leaked([generated], results, server.stderr.replace(deliberate, "", 1))
    assert generated not in argv
