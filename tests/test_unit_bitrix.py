"""Unit tests of the REST client's parts, config, redaction and schemas, without subprocesses.

The last tests drive `BitrixClient` in-process against the sandbox over real HTTP, to pin down the
token hand-over between two clients sharing a token file.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import secrets
import stat
import sys
import traceback
from pathlib import Path
from typing import Literal

import anyio
import pytest
from pydantic import BaseModel, ConfigDict, Field

from b24_telephony_mcp.bitrix import BitrixError, FilePairStore, OAuthAuth, TokenPair, TokenStore
from b24_telephony_mcp.bitrix.client import _page_title
from b24_telephony_mcp.bitrix.errors import (
    ERROR_CORE,
    LOCAL_APP_HINT,
    error_from_envelope,
    hint_for,
)
from b24_telephony_mcp.common.net import is_loopback_host
from b24_telephony_mcp.common.redact import RedactingFormatter, redact, register_secret, request_secrets
from b24_telephony_mcp.config.settings import (
    AppConfig,
    ConfigError,
    WebhookConfig,
    check_url,
    default_token_file,
    load_settings,
)
from b24_telephony_mcp.config.wiring import build_client
from b24_telephony_mcp.tools import ALL_TOOLS, TOOLS_BY_NAME
from b24_telephony_mcp.tools.schema import lean_schema
from support import json_objects

# --- TokenStore ---------------------------------------------------------------------------------


def test_token_store_round_trip_mode_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tokens.json"
    store = TokenStore(path)
    assert store.load() is None

    first = TokenPair("access-1", "refresh-1", 1_800_000_000.5)
    store.save(first)
    assert store.load() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    inode = path.stat().st_ino

    second = TokenPair("access-2", "refresh-2")
    store.save(second)
    assert store.load() == second
    assert path.stat().st_ino != inode, "the file is replaced by a rename, never rewritten in place"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == ["tokens.json"]


def test_token_store_failed_save_keeps_the_old_pair_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    store.save(TokenPair("access-1", "refresh-1"))
    unserialisable = TokenPair("access-2", "refresh-2", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.save(unserialisable)
    assert store.load() == TokenPair("access-1", "refresh-1")
    assert [entry.name for entry in tmp_path.iterdir()] == ["tokens.json"]


@pytest.mark.parametrize(
    "content",
    [
        "not json {secret}",
        '{{"access_token": "{secret}"}}',
        '["{secret}", "{secret}"]',
        '"{secret}"',
    ],
)
def test_token_store_corrupt_file_is_refused_without_echoing_it(tmp_path: Path, content: str) -> None:
    secret = secrets.token_hex(16)
    path = tmp_path / "tokens.json"
    path.write_text(content.format(secret=secret), encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid token file") as caught:
        TokenStore(path).load()
    assert str(path) in str(caught.value)
    assert secret not in "".join(traceback.format_exception(caught.value))


def test_file_lock_excludes_other_holders(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    lock = store.lock()
    lock.acquire()
    probe = os.open(lock.path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.release()
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
        fcntl.flock(probe, fcntl.LOCK_UN)
    finally:
        os.close(probe)
    lock.release()  # a second release is harmless


# --- lean_schema ----------------------------------------------------------------------------------


class _Item(BaseModel):
    SIDE: Literal["User", "Client"]
    N: int | None = None


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    A: str = Field(description="a")
    B: int | None = Field(None, description="b")
    C: list[_Item]
    D: int | str
    E: _Item | None = None
    F: Literal["Y", "N"] | None = None
    G: str = "x"
    title: str | None = None  # a property *named* title is not the schema keyword


def test_lean_schema_for_inputs() -> None:
    original = _Params.model_json_schema()
    pristine = copy.deepcopy(original)
    item = {"properties": {"SIDE": {"enum": ["User", "Client"], "type": "string"}, "N": {"type": "integer"}}}
    assert lean_schema(original) == {
        "additionalProperties": False,
        "properties": {
            "A": {"description": "a", "type": "string"},
            "B": {"type": "integer", "description": "b"},
            "C": {"items": {**item, "required": ["SIDE"], "type": "object"}, "type": "array"},
            "D": {"type": ["integer", "string"]},
            "E": {**item, "required": ["SIDE"], "type": "object"},
            "F": {"enum": ["Y", "N"], "type": "string"},
            "G": {"default": "x", "type": "string"},
            "title": {"type": "string"},
        },
        "required": ["A", "C", "D"],
        "type": "object",
    }
    assert original == pristine, "the input schema is not modified"


def test_lean_schema_for_outputs_keeps_null() -> None:
    lean = lean_schema(_Params.model_json_schema(), keep_null=True)
    assert lean["properties"]["B"] == {"type": ["integer", "null"], "description": "b"}
    assert lean["properties"]["E"]["anyOf"][1] == {"type": "null"}
    assert lean["properties"]["C"]["items"]["properties"]["N"] == {"type": ["integer", "null"]}
    assert "$defs" not in lean


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def test_lean_schema_open_keeps_only_the_closing_of_an_empty_object() -> None:
    """`closed=False` (inputs): `additionalProperties: false` goes where properties are declared, stays where
    none are, since there it alone tells "no arguments" from "any"."""
    lean = lean_schema(_Params.model_json_schema(), closed=False)
    assert [node for node in json_objects(lean) if "additionalProperties" in node] == []
    assert lean_schema(_NoParams.model_json_schema(), closed=False) == {
        "additionalProperties": False,
        "properties": {},
        "type": "object",
    }


def test_lean_schema_drops_only_permissive_additional_properties() -> None:
    schema = {
        "type": "object",
        "additionalProperties": True,
        "properties": {"M": {"type": "object", "additionalProperties": {"type": "integer", "title": "V"}}},
    }
    assert lean_schema(schema) == {
        "type": "object",
        "properties": {"M": {"type": "object", "additionalProperties": {"type": "integer"}}},
    }


def test_every_tool_schema_is_lean() -> None:
    for spec in ALL_TOOLS:
        for schema in (spec.input_schema, spec.output_schema):
            for node in json_objects(schema):
                assert "$ref" not in node and "$defs" not in node, spec.name
                assert not isinstance(node.get("title"), str), spec.name
                assert node.get("additionalProperties") is not True, spec.name
        assert spec.params.model_config.get("extra") == "forbid", spec.name  # refused by the server, not the schema


# --- redaction ------------------------------------------------------------------------------------


def test_redact_replaces_registered_secrets_only() -> None:
    secret = secrets.token_hex(12)
    register_secret(secret)
    register_secret("abc12")  # too short to be told apart from ordinary words
    register_secret(None)
    register_secret("")
    assert redact(f"token={secret}&x={secret}") == "token=***&x=***"
    assert redact("abc12 stays") == "abc12 stays"


def test_redact_a_secret_containing_another_leaves_no_part_behind() -> None:
    nested = [secrets.token_hex(4)]
    for _ in range(5):
        nested.append(nested[-1] + secrets.token_hex(2))
    for value in nested:
        register_secret(value)
    assert redact(f"a {nested[-1]} b {nested[0]}") == "a *** b ***"


@pytest.mark.anyio
async def test_a_requests_secrets_are_redacted_in_it_and_the_tasks_it_starts_then_forgotten(tmp_path: Path) -> None:
    """Remote mode: a user's pair (registered as its connection is built) is redacted while that request (or a
    task it started) runs, and not kept after, so a server of many users keeps none of theirs."""
    process_secret = secrets.token_hex(12)
    register_secret(process_secret)
    pair = TokenPair(secrets.token_hex(16), secrets.token_hex(16), None)
    seen_in_task: list[str] = []
    with request_secrets():
        OAuthAuth(
            "https://p.bitrix24.com",
            "app",
            process_secret,
            "https://o/",
            FilePairStore(TokenStore(tmp_path / "t")),
            pair,
        )
        assert redact(f"{pair.access_token} {pair.refresh_token} {process_secret}") == "*** *** ***"
        async with anyio.create_task_group() as group:

            async def log_in_a_task() -> None:
                seen_in_task.append(redact(pair.access_token))

            group.start_soon(log_in_a_task)
        for number in range(100):  # one long task's rotations: only the newest are kept
            register_secret(f"rotated-{number:04d}")
        assert redact("rotated-0099") == "***" and redact("rotated-0000") == "rotated-0000"
    assert seen_in_task == ["***"]
    assert redact(pair.access_token) == pair.access_token  # forgotten with the request
    assert redact(process_secret) == "***"  # the process's own stay
    failing = secrets.token_hex(12)
    with pytest.raises(RuntimeError), request_secrets():
        register_secret(failing)
        raise RuntimeError("a failed request's exception may be logged after it")
    assert redact(failing) == "***"  # so its secrets are kept


def test_redacting_formatter_covers_message_args_and_tracebacks() -> None:
    secret = secrets.token_urlsafe(24)
    register_secret(secret)
    formatter = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise RuntimeError(f"portal said {secret}")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "calling %s", (secret,), sys.exc_info())
    text = formatter.format(record)
    assert secret not in text
    assert "calling ***" in text
    assert "RuntimeError: portal said ***" in text
    assert "Traceback" in text


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://portal.bitrix24.com",
        "https://portal.bitrix24.com/rest/1/x/",
        "http://127.0.0.1:8024",
        "http://localhost/",
        "http://[::1]:80/rest/",
    ],
)
def test_check_url_accepts_https_and_loopback_http(url: str) -> None:
    check_url("B24_PORTAL_URL", url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://portal.bitrix24.com", "https://"),
        ("http://10.0.0.5:8080", "https://"),
        ("http://localhost.evil.example", "https://"),
        ("ftp://portal.bitrix24.com", "not an http(s) URL"),
        ("portal.bitrix24.com", "not an http(s) URL"),
        ("https://", "not an http(s) URL"),
    ],
)
def test_check_url_refuses(url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="B24_PORTAL_URL") as caught:
        check_url("B24_PORTAL_URL", url)
    assert expected in str(caught.value)


def test_is_loopback_host() -> None:
    assert all(is_loopback_host(host) for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"))
    assert not any(is_loopback_host(host) for host in (None, "", "0.0.0.0", "10.0.0.1", "example.com", "::"))


APP_ENV = {
    "B24_PORTAL_URL": "https://portal.bitrix24.com/",
    "B24_CLIENT_ID": "local.app",
    "B24_CLIENT_SECRET": "client-secret-value",
    "B24_ACCESS_TOKEN": "access-token-value",
    "B24_REFRESH_TOKEN": "refresh-token-value",
}


def test_load_settings_application(tmp_path: Path) -> None:
    files_a, files_b = tmp_path / "a", tmp_path / "b"
    env = {
        **APP_ENV,
        "XDG_STATE_HOME": str(tmp_path / "xdg"),
        "B24_FILES_DIR": f"{files_a}{os.pathsep}{os.pathsep}{files_b}/../b",
        "B24_MAX_FILE_MB": "0.5",
        "B24_RATE_LIMIT": "5",
        "B24_RATE_BURST": "250",
    }
    settings = load_settings(env)
    portal = settings.portal
    assert isinstance(portal, AppConfig)
    assert portal.portal_url == "https://portal.bitrix24.com"
    assert portal.tokens == TokenPair("access-token-value", "refresh-token-value")
    assert portal.token_url == "https://oauth.bitrix.info/oauth/token/"
    assert portal.token_file == default_token_file("https://portal.bitrix24.com", "local.app", env)
    assert portal.token_file.parent == tmp_path / "xdg" / "b24-telephony-mcp"
    assert settings.files.allowed_dirs == (files_a.resolve(), files_b.resolve())
    assert settings.files.max_bytes == 512 * 1024
    assert (settings.rate, settings.burst) == (5.0, 250)
    assert "client-secret-value" not in repr(settings) and "token-value" not in repr(settings)
    other_app = default_token_file("https://portal.bitrix24.com", "local.other", env)
    other_portal = default_token_file("https://other.bitrix24.com", "local.app", env)
    assert len({portal.token_file, other_app, other_portal}) == 3


def test_load_settings_webhook_and_token_file_only(tmp_path: Path) -> None:
    webhook = load_settings({"B24_WEBHOOK_URL": " https://portal.bitrix24.com/rest/1/code123456 "}).portal
    assert webhook == WebhookConfig("https://portal.bitrix24.com/rest/1/code123456/")

    token_file = tmp_path / "tokens.json"
    no_tokens = {key: value for key, value in APP_ENV.items() if "TOKEN" not in key}
    with pytest.raises(ConfigError, match="B24_ACCESS_TOKEN and B24_REFRESH_TOKEN") as caught:
        load_settings({**no_tokens, "B24_TOKEN_FILE": str(token_file)})
    assert str(token_file) in str(caught.value)
    TokenStore(token_file).save(TokenPair("a" * 10, "r" * 10))
    portal = load_settings({**no_tokens, "B24_TOKEN_FILE": str(token_file)}).portal
    assert isinstance(portal, AppConfig)
    assert (portal.tokens, portal.token_file) == (None, token_file)


@pytest.mark.parametrize(
    ("env", "phrase"),
    [
        ({}, "No Bitrix24 credentials"),
        ({**APP_ENV, "B24_WEBHOOK_URL": "https://p.bitrix24.com/rest/1/x/"}, "both set"),
        ({**APP_ENV, "B24_ACCESS_TOKEN": ""}, "Set both B24_ACCESS_TOKEN and B24_REFRESH_TOKEN"),
        ({"B24_CLIENT_ID": "x"}, "B24_PORTAL_URL, B24_CLIENT_SECRET not set"),
        ({**APP_ENV, "B24_RATE_LIMIT": "fast"}, "B24_RATE_LIMIT must be a number"),
        ({**APP_ENV, "B24_RATE_BURST": "0"}, "B24_RATE_BURST must be greater than zero"),
        ({**APP_ENV, "B24_MAX_FILE_MB": "-1"}, "B24_MAX_FILE_MB must be greater than zero"),
    ],
)
def test_load_settings_refuses(env: dict[str, str], phrase: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_settings({"XDG_STATE_HOME": str(tmp_path), "B24_CONFIG_DIR": str(tmp_path / "profiles"), **env})


def test_build_client_with_a_corrupt_token_file_is_a_config_error(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    token_file.write_text("garbage-that-might-be-a-secret", encoding="utf-8")
    settings = load_settings({**APP_ENV, "B24_TOKEN_FILE": str(token_file)})
    with pytest.raises(ConfigError, match="not a valid token file") as caught:
        anyio.run(build_client, settings)
    assert "garbage" not in str(caught.value)


# --- errors and hints -----------------------------------------------------------------------------


def test_error_envelopes_and_hints() -> None:
    core = error_from_envelope({"error": "", "error_description": "Line already exists"}, 400, "m", retryable=False)
    assert (core.code, core.description, core.http_status, core.method) == (ERROR_CORE, "Line already exists", 400, "m")
    assert core.hint == ""  # the REST client knows no method's texts: the tool's own hints do (below)
    add_line = TOOLS_BY_NAME["add_external_line"]
    assert "update_external_line" in (add_line.hint_for(core.code, core.description) or "")
    assert TOOLS_BY_NAME["update_external_line"].hint_for(ERROR_CORE, "Could not find line with number 5")
    assert add_line.hint_for(ERROR_CORE, "Could not find line with number 5") is None  # not add's failure

    wrong_auth = error_from_envelope({"error": "WRONG_AUTH_TYPE"}, 403, "m", retryable=False)
    assert (wrong_auth.description, wrong_auth.hint) == ("WRONG_AUTH_TYPE", LOCAL_APP_HINT)
    bare = error_from_envelope({"error": None}, 502, "m", retryable=True)
    assert (bare.code, bare.description, bare.retryable) == (ERROR_CORE, "HTTP 502", True)

    assert "B24_TOKEN_FILE" in hint_for("invalid_grant")
    assert hint_for("SOMETHING_NEW") == ""
    assert BitrixError("X", "d", hint="mine").hint == "mine"

    limited = BitrixError("OPERATION_TIME_LIMIT", "blocked", 429, True, method="m", reset_at=1_800_000_000.9)
    assert limited.to_dict() == {
        "code": "OPERATION_TIME_LIMIT",
        "description": "blocked",
        "http_status": 429,
        "retryable": True,
        "hint": hint_for("OPERATION_TIME_LIMIT"),
        "method": "m",
        "reset_at": "2027-01-15T08:00:00Z",
    }
    assert "method" not in BitrixError("X", "d").to_dict() and "reset_at" not in BitrixError("X", "d").to_dict()


def test_page_title_of_gateway_pages() -> None:
    assert _page_title("<html><head><TITLE>\n 504 Gateway Time-out </TITLE>") == ": 504 Gateway Time-out"
    assert _page_title("plain text") == ""
    assert _page_title("x" * 5000 + "<title>late</title>") == "", "only the head of a page is searched"


def test_stale_environment_tokens_are_secrets_even_when_the_file_wins(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.save(TokenPair(secrets.token_hex(16), secrets.token_hex(16)))
    stale = TokenPair(secrets.token_hex(16), secrets.token_hex(16))
    auth = anyio.run(
        OAuthAuth.open,
        "https://p.bitrix24.com",
        "id",
        secrets.token_hex(16),
        "https://o.example/",
        FilePairStore(store),
        stale,
    )
    assert auth.tokens == store.load()
    assert redact(json.dumps([stale.access_token, stale.refresh_token])) == '["***", "***"]'
