"""`b24-telephony-mcp config CLIENT`: the exact snippet or command that adds this server to an MCP client.

The snippet goes to stdout (so `config claude-code | sh` works) and where to put it to stderr. With a
profile it names the profile and holds no secret. The command is the absolute path of the installed
script, so clients started with a small PATH (desktop apps) still find it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from b24_telephony_mcp import PROG
from b24_telephony_mcp.config.settings import CREDENTIAL_VARIABLES, ConfigError

SERVER_NAME = "bitrix24-telephony"
TOKEN_VARIABLE = "B24_MCP_AUTH_TOKEN"

# Where each client keeps the snippet (stderr hint).
_WHERE: dict[str, str] = {
    "claude-code": "Run it (for example `b24-telephony-mcp config claude-code | sh`); --scope user makes the server "
    "available in every project.",
    "claude-desktop": "Merge into claude_desktop_config.json (macOS: ~/Library/Application Support/Claude/, "
    "Windows: %APPDATA%\\Claude\\, Linux: ~/.config/Claude/), then restart Claude Desktop.",
    "cursor": "Merge into ~/.cursor/mcp.json (or .cursor/mcp.json in a project).",
    "vscode": "Merge into .vscode/mcp.json in your workspace (or the user mcp.json: MCP: Open User Configuration).",
    "codex": "Append to ~/.codex/config.toml.",
    "gemini": "Merge into ~/.gemini/settings.json (or .gemini/settings.json in a project).",
    "windsurf": "Merge into ~/.codeium/windsurf/mcp_config.json, then refresh the MCP servers.",
}


@dataclass(frozen=True)
class Local:
    """A server the client starts itself, over stdio."""

    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Remote:
    """A server already running on an HTTP transport; the client sends the bearer token from an env variable."""

    url: str


def installed_command() -> list[str]:
    """The absolute path of the installed script (beside this interpreter in a venv, pipx or uv tool env);
    `python -m b24_telephony_mcp` when there is none, as in a source checkout."""
    beside = Path(sys.executable).parent / PROG
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(PROG)
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "b24_telephony_mcp"]


def config_command(client: str, server: Local | Remote) -> int:
    """Print the snippet for `client`; 2 when the client cannot use this transport."""
    try:
        text = render(client, server)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.write(f"{_WHERE[client]}\n")
    if isinstance(server, Remote):
        sys.stderr.write(
            f"Start the server first, e.g. `{TOKEN_VARIABLE}=$(openssl rand -hex 32) {PROG} --transport http`, and "
            f"export the same {TOKEN_VARIABLE} where the client runs.\n"
        )
    elif CREDENTIAL_VARIABLES & set(server.env):
        sys.stderr.write(
            f"Note: this snippet holds the B24_* variables of your environment, credentials included; "
            f"`{PROG} login` keeps them out of client configs.\n"
        )
    return 0


def render(client: str, server: Local | Remote) -> str:
    if client == "claude-code":
        return _claude_code(server)
    if client == "codex":
        return _codex(server)
    if isinstance(server, Remote) and client == "claude-desktop":
        raise ConfigError(
            "Claude Desktop starts local servers from its config file and adds remote ones as connectors in its "
            "settings; use --transport stdio (the default)."
        )
    entry = _local_entry(server, client) if isinstance(server, Local) else _remote_entry(server, client)
    if client == "vscode":
        document: dict[str, object] = {"servers": {SERVER_NAME: entry}}
        if isinstance(server, Remote):
            document = {"inputs": [_VSCODE_TOKEN_INPUT], **document}
    else:
        document = {"mcpServers": {SERVER_NAME: entry}}
    return json.dumps(document, indent=2, ensure_ascii=False)


_VSCODE_TOKEN_INPUT = {
    "type": "promptString",
    "id": "b24-mcp-token",
    "description": f"{TOKEN_VARIABLE} of the {PROG} HTTP server",
    "password": True,
}

# How each JSON client reads an environment variable inside a header value.
_HEADER_TOKEN: dict[str, str] = {
    "cursor": f"${{env:{TOKEN_VARIABLE}}}",
    "windsurf": f"${{env:{TOKEN_VARIABLE}}}",
    "gemini": f"${TOKEN_VARIABLE}",
    "vscode": "${input:b24-mcp-token}",
}
# The key each JSON client expects for a remote server's address.
_URL_KEY: dict[str, str] = {"cursor": "url", "windsurf": "serverUrl", "gemini": "httpUrl", "vscode": "url"}


def _local_entry(server: Local, client: str) -> dict[str, object]:
    command, *args = server.command
    entry: dict[str, object] = {"type": "stdio"} if client == "vscode" else {}
    entry |= {"command": command, "args": args}
    if server.env:
        entry["env"] = dict(server.env)
    return entry


def _remote_entry(server: Remote, client: str) -> dict[str, object]:
    entry: dict[str, object] = {"type": "http"} if client == "vscode" else {}
    entry[_URL_KEY[client]] = server.url
    entry["headers"] = {"Authorization": f"Bearer {_HEADER_TOKEN[client]}"}
    return entry


def _claude_code(server: Local | Remote) -> str:
    add = ["claude", "mcp", "add", "--scope", "user"]
    if isinstance(server, Remote):
        # Double quotes: the shell puts the token in when the command runs; it is not in this output.
        header = f'"Authorization: Bearer ${{{TOKEN_VARIABLE}}}"'
        return shlex.join([*add, "--transport", "http", SERVER_NAME, server.url]) + f" --header {header}"
    env = [part for name, value in server.env.items() for part in ("-e", f"{name}={value}")]
    return shlex.join([*add, *env, SERVER_NAME, "--", *server.command])


def _codex(server: Local | Remote) -> str:
    lines = [f"[mcp_servers.{SERVER_NAME}]"]
    if isinstance(server, Remote):
        lines += [f"url = {_toml_string(server.url)}", f"bearer_token_env_var = {_toml_string(TOKEN_VARIABLE)}"]
        return "\n".join(lines)
    command, *args = server.command
    lines += [f"command = {_toml_string(command)}", f"args = [{', '.join(_toml_string(arg) for arg in args)}]"]
    if server.env:
        pairs = ", ".join(f"{name} = {_toml_string(value)}" for name, value in server.env.items())
        lines.append(f"env = {{ {pairs} }}")
    return "\n".join(lines)


def _toml_string(value: str) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)
