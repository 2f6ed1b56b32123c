"""The command line: setup mistakes explained in one paragraph, `--help`, the `sandbox` command, and a
stdout that carries nothing but protocol messages."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, clean_env, server_command

SCRIPT = shutil.which("b24-telephony-mcp", path=str(Path(sys.executable).parent))
APP = {
    "B24_PORTAL_URL": "https://portal.example.com",
    "B24_CLIENT_ID": "local.0123456789abcd.01234567",
    "B24_CLIENT_SECRET": "s3cr3t-client-secret-value",
    "B24_ACCESS_TOKEN": "access-token-value-0123456789",
    "B24_REFRESH_TOKEN": "refresh-token-value-0123456789",
}
WEBHOOK = "https://portal.example.com/rest/1/abcdef0123456789/"


def user_env(**variables: str) -> dict[str, str]:
    """What a user's MCP client config would pass: no B24_* but these, default log level."""
    env = clean_env(**variables)
    if "B24_LOG_LEVEL" not in variables:
        del env["B24_LOG_LEVEL"]
    return env


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args), env=env, input=stdin, capture_output=True, text=True, timeout=60)


def without(mapping: dict[str, str], *names: str) -> dict[str, str]:
    return {key: value for key, value in mapping.items() if key not in names}


CONFIG_ERRORS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "nothing set": (
        {},
        ("B24_WEBHOOK_URL", "B24_PORTAL_URL", "B24_CLIENT_ID", "B24_CLIENT_SECRET", "B24_ACCESS_TOKEN", "--sandbox"),
    ),
    "webhook and application": (
        {"B24_WEBHOOK_URL": WEBHOOK, **APP},
        ("B24_WEBHOOK_URL", "B24_PORTAL_URL", "B24_CLIENT_SECRET", "Unset one"),
    ),
    "plain http portal": ({**APP, "B24_PORTAL_URL": "http://portal.example.com"}, ("B24_PORTAL_URL", "https://")),
    "plain http webhook": ({"B24_WEBHOOK_URL": WEBHOOK.replace("https", "http")}, ("B24_WEBHOOK_URL", "https://")),
    "plain http token url": (
        {**APP, "B24_OAUTH_TOKEN_URL": "http://oauth.example.com/oauth/token/"},
        ("B24_OAUTH_TOKEN_URL", "https://"),
    ),
    "access token only": (without(APP, "B24_REFRESH_TOKEN"), ("B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN")),
    "refresh token only": (without(APP, "B24_ACCESS_TOKEN"), ("B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN")),
    "client secret missing": (without(APP, "B24_CLIENT_SECRET"), ("B24_CLIENT_SECRET",)),
    "webhook without /rest/": ({"B24_WEBHOOK_URL": "https://portal.example.com/1/abc/"}, ("B24_WEBHOOK_URL", "/rest/")),
    "rate not a number": ({"B24_WEBHOOK_URL": WEBHOOK, "B24_RATE_LIMIT": "fast"}, ("B24_RATE_LIMIT",)),
    "unknown log level": ({"B24_WEBHOOK_URL": WEBHOOK, "B24_LOG_LEVEL": "LOUD"}, ("B24_LOG_LEVEL", "DEBUG")),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_are_one_clear_paragraph(case: str, tmp_path: Path) -> None:
    variables, phrases = CONFIG_ERRORS[case]
    process = run(user_env(XDG_STATE_HOME=str(tmp_path), **variables))
    message = process.stderr.strip()
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert "Traceback" not in message
    assert "\n" not in message, f"one paragraph expected, got:\n{message}"
    assert message.startswith("b24-telephony-mcp: ")
    for phrase in phrases:
        assert phrase in message
    # The message names variables, never their values.
    for secret in ("s3cr3t-client-secret-value", "access-token-value", "refresh-token-value", "abcdef0123456789"):
        assert secret not in message
    assert not list(tmp_path.iterdir()), "a refused start must not create a token file"


def test_help_and_version() -> None:
    help_run = run(user_env(), "--help")
    assert help_run.returncode == 0
    assert help_run.stdout.startswith("usage: b24-telephony-mcp")
    for option in ("--transport", "--host", "--port", "--sandbox", "sandbox", "B24_WEBHOOK_URL"):
        assert option in help_run.stdout
    version_run = run(user_env(), "--version")
    assert version_run.returncode == 0
    assert version_run.stdout.startswith("b24-telephony-mcp ")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_sandbox_command_serves_until_terminated() -> None:
    assert SCRIPT, "the console script should be installed beside the interpreter"
    port = free_port()
    process = subprocess.Popen(
        [SCRIPT, "sandbox", "--port", str(port)],
        env=user_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        announcement: dict[str, str] = {}
        for line in process.stderr:
            if line.startswith("Press Ctrl-C"):
                break
            key, sep, value = line.strip().partition(": ")
            if sep:
                announcement[key] = value.strip()
        base = f"http://127.0.0.1:{port}"
        assert announcement["portal (app mode)"] == f"{base}/rest/"
        stats = httpx2.get(f"{base}/_sandbox/stats", timeout=10)
        assert stats.status_code == 200
        assert stats.json() == {"requests": {}, "refreshes": 0}
        # The announced credentials work.
        lines = httpx2.post(
            f"{base}/rest/telephony.externalLine.get", json={"auth": announcement["access_token"]}, timeout=10
        )
        assert lines.status_code == 200, lines.text
        assert lines.json()["result"] == []
    finally:
        process.terminate()
        stdout, _ = process.communicate(timeout=10)
    assert stdout == ""


def rpc(request_id: int, method: str, params: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n"


@pytest.mark.parametrize("args", [(), ("--sandbox",)], ids=["configured", "--sandbox"])
def test_stdio_stdout_is_silent_without_input(sandbox: RunningSandbox, token_file: Path, args: tuple[str, ...]) -> None:
    process = run(app_env(sandbox, token_file) if not args else clean_env(), *args)
    assert process.returncode == 0, process.stderr
    assert process.stdout == ""
    assert " DEBUG " in process.stderr, "logs are on, and they go to stderr"


def test_stdio_stdout_carries_only_protocol_messages(sandbox: RunningSandbox, token_file: Path) -> None:
    process = subprocess.Popen(
        server_command(),
        env=app_env(sandbox, token_file),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        info = {"name": "raw", "version": "1"}
        process.stdin.write(
            rpc(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info})
        )
        process.stdin.flush()
        answers = [json.loads(process.stdout.readline())]
        process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        for request_id, (tool, arguments) in enumerate(
            [("add_external_line", {"NUMBER": "100"}), ("add_external_line", {"NUMBER": "100"}), ("nope", {})], 2
        ):
            process.stdin.write(rpc(request_id, "tools/call", {"name": tool, "arguments": arguments}))
            process.stdin.flush()
            answers.append(json.loads(process.stdout.readline()))
        process.stdin.close()
        rest = process.stdout.read()
        stderr = process.stderr.read() if process.stderr else ""
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert rest == ""
    assert [answer["id"] for answer in answers] == [1, 2, 3, 4]
    assert all(answer["jsonrpc"] == "2.0" and "result" in answer for answer in answers)
    assert answers[0]["result"]["serverInfo"]["name"] == "b24-telephony-mcp"
    assert [answer["result"].get("isError", False) for answer in answers[1:]] == [False, True, True]
    assert " DEBUG " in stderr, "the session's logs went to stderr"
