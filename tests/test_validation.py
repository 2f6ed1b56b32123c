"""Arguments this server refuses before any request, local files, unknown tools and webhook callers.

"Before any request" is checked on the portal's side: the sandbox counts every REST request it
receives (`GET /_sandbox/stats`), so a refusal that leaked a request would show up there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp_types import CallToolResult

from b24_telephony_mcp.bitrix.errors import LOCAL_APP_HINT
from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, error_of, ok, stdio_session, text_of, webhook_env

pytestmark = pytest.mark.anyio

# What a pydantic error text carries that a model should never see.
PYDANTIC_LEAKS = ("errors.pydantic.dev", "Traceback", "input_value", "input_type", "For further information")
WAV = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00data\x00"


async def portal_requests(sandbox: RunningSandbox) -> dict[str, int]:
    """REST requests the sandbox portal has received, by lower-cased method."""
    async with httpx2.AsyncClient() as http:
        response = await http.get(f"{sandbox.base_url}/_sandbox/stats")
    response.raise_for_status()
    requests: dict[str, int] = response.json()["requests"]
    return requests


def refused(result: CallToolResult, code: str = "INVALID_ARGUMENTS") -> dict[str, Any]:
    """A local refusal: our code, no HTTP status, and a text free of pydantic internals."""
    error = error_of(result)
    assert error["code"] == code, text_of(result)
    assert error["http_status"] is None
    assert error["retryable"] is False
    for leak in PYDANTIC_LEAKS:
        assert leak not in text_of(result)
        assert leak not in error["description"]
    return error


async def test_unknown_arguments_and_tools_are_refused_locally(sandbox: RunningSandbox, token_file: Path) -> None:
    async with stdio_session(app_env(sandbox, token_file)) as client:
        error = refused(await client.call_tool("add_external_line", {"NUMBER": "100", "NAMEE": "typo"}))
        assert error["description"] == "unknown argument(s) NAMEE; valid arguments: NUMBER, NAME, CRM_AUTO_CREATE"
        assert error["method"] == "telephony.externalLine.add"
        assert error["hint"] == "Fix the arguments and call again."

        error = refused(await client.call_tool("list_external_lines", {"NUMBER": "100"}))
        assert "unknown argument(s) NUMBER; valid arguments: none" in error["description"]

        # An unknown field inside a valid argument is named where it is, not as an unknown argument.
        message = {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 1, "MESSAGE": "hi", "SPEAKER": "Ann"}
        error = refused(await client.call_tool("attach_call_transcription", {"CALL_ID": "c", "MESSAGES": [message]}))
        assert error["description"] == "MESSAGES.0.SPEAKER: unknown field"

        result = await client.call_tool("transfer_call", {"CALL_ID": "c"})
        error = refused(result, "UNKNOWN_TOOL")
        assert "'transfer_call'" in error["description"]
        assert "register_external_call" in error["description"]  # the list of tools that do exist
    assert await portal_requests(sandbox) == {}


async def test_rules_between_arguments_are_checked_locally(sandbox: RunningSandbox, token_file: Path) -> None:
    call = {"PHONE_NUMBER": "+7 900 000 0001", "TYPE": 2}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("register_external_call", call, "pass at least one of USER_ID or USER_PHONE_INNER"),
        (
            "register_external_call",
            {**call, "USER_PHONE_INNER": ""},
            "pass at least one of USER_ID or USER_PHONE_INNER",
        ),
        ("finish_external_call", {"CALL_ID": "c"}, "pass at least one of USER_ID or USER_PHONE_INNER"),
        ("update_external_line", {"NUMBER": "100"}, "pass at least one of NAME or CRM_AUTO_CREATE"),
        ("attach_external_call_record", {"CALL_ID": "c"}, "no recording given"),
        (
            "attach_external_call_record",
            {"CALL_ID": "c", "RECORD_URL": "https://pbx/r.mp3", "file_path": "r.mp3"},
            "RECORD_URL and file_path exclude each other",
        ),
        (
            "attach_external_call_record",
            {"CALL_ID": "c", "RECORD_URL": "https://pbx/r.mp3", "FILENAME": "r.wav", "FILE_CONTENT": "UklGRg=="},
            "RECORD_URL and FILE_CONTENT exclude each other",
        ),
        ("attach_external_call_record", {"CALL_ID": "c", "FILE_CONTENT": "UklGRg=="}, "FILE_CONTENT needs FILENAME"),
    ]
    async with stdio_session(app_env(sandbox, token_file)) as client:
        for tool, arguments, expected in cases:
            error = refused(await client.call_tool(tool, arguments))
            assert expected in error["description"], (tool, arguments, error)
    assert await portal_requests(sandbox) == {}


async def test_wrong_types_are_refused_locally(sandbox: RunningSandbox, token_file: Path) -> None:
    register = {"USER_ID": 2, "PHONE_NUMBER": "+7 900 000 0001", "TYPE": 2}
    cases: list[tuple[str, dict[str, Any], list[str]]] = [
        ("add_external_line", {"NUMBER": 100.5}, ["NUMBER: Input should be a valid string"]),
        ("add_external_line", {"NUMBER": True}, ["NUMBER: Input should be a valid string"]),
        (
            "add_external_line",
            {"NUMBER": "100", "CRM_AUTO_CREATE": "yes"},
            ["CRM_AUTO_CREATE: Input should be 'Y' or 'N'"],
        ),
        ("add_external_line", {}, ["NUMBER: Field required"]),
        ("register_external_call", {**register, "USER_ID": "two"}, ["USER_ID: Input should be a valid integer"]),
        ("register_external_call", {**register, "SHOW": 2}, ["SHOW: Input should be 0 or 1"]),
        ("register_external_call", {**register, "CRM_ENTITY_TYPE": "DEAL"}, ["CRM_ENTITY_TYPE"]),
        (
            "finish_external_call",
            {"CALL_ID": ["c"], "USER_ID": 2, "DURATION": "long", "STATUS_CODE": "999"},
            ["CALL_ID: Input should be a valid string", "DURATION:", "STATUS_CODE:"],
        ),
        ("show_external_call", {"CALL_ID": "c", "USER_ID": "all"}, ["USER_ID"]),
        (
            "attach_call_transcription",
            {"CALL_ID": "c", "MESSAGES": "hello"},
            ["MESSAGES: Input should be a valid list"],
        ),
        (
            "attach_call_transcription",
            {"CALL_ID": "c", "MESSAGES": [{"SIDE": "User", "START_TIME": "soon", "STOP_TIME": 1, "MESSAGE": "m"}]},
            ["MESSAGES.0.START_TIME: Input should be a valid integer"],
        ),
    ]
    async with stdio_session(app_env(sandbox, token_file)) as client:
        for tool, arguments, fragments in cases:
            error = refused(await client.call_tool(tool, arguments))
            for fragment in fragments:
                assert fragment in error["description"], (tool, arguments, error)
            # Several problems are reported at once, as one line each joined by "; ".
            assert error["description"].count("; ") >= len(fragments) - 1
    assert await portal_requests(sandbox) == {}


async def finish_a_call(client: Any) -> str:
    call_id: str = ok(
        await client.call_tool("register_external_call", {"USER_ID": 2, "PHONE_NUMBER": "+7 900 000 0002", "TYPE": 2})
    )["CALL_ID"]
    ok(await client.call_tool("finish_external_call", {"CALL_ID": call_id, "USER_ID": 2, "DURATION": 3}))
    return call_id


async def test_file_path_under_files_dir_is_attached(sandbox: RunningSandbox, token_file: Path, tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    (recordings / "2026").mkdir(parents=True)
    (recordings / "2026" / "call-0002.wav").write_bytes(WAV)
    env = app_env(sandbox, token_file, B24_FILES_DIR=f"{tmp_path / 'elsewhere'}{os.pathsep}{recordings}")
    async with stdio_session(env) as client:
        call_id = await finish_a_call(client)
        file_id = ok(
            await client.call_tool(
                "attach_external_call_record",
                {"CALL_ID": call_id, "file_path": str(recordings / "2026" / "call-0002.wav")},
            )
        )["FILE_ID"]
    stored = sandbox.portal.files[file_id]
    assert (stored.call_id, stored.name, stored.content) == (call_id, "call-0002.wav", WAV)
    assert sandbox.portal.statistics[call_id].call_record_id == file_id


async def test_file_path_item_of_run_batch_is_attached(
    sandbox: RunningSandbox, token_file: Path, tmp_path: Path
) -> None:
    """In run_batch, a recording's content cannot ride in the batch: it goes in a request of its own, as read once
    when the item was planned."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    (recordings / "call-0003.wav").write_bytes(WAV)
    async with stdio_session(app_env(sandbox, token_file, B24_FILES_DIR=str(recordings))) as client:
        call_id = await finish_a_call(client)
        arguments = {"CALL_ID": call_id, "file_path": str(recordings / "call-0003.wav")}
        item = {"tool": "attach_external_call_record", "arguments": arguments}
        outcome = ok(await client.call_tool("run_batch", {"items": [item]}))["items"][0]
    stored = sandbox.portal.files[outcome["result"]["FILE_ID"]]
    assert (stored.call_id, stored.name, stored.content) == (call_id, "call-0003.wav", WAV)


async def test_file_path_refusals(sandbox: RunningSandbox, token_file: Path, tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    outside = tmp_path / "secret.wav"
    outside.write_bytes(WAV)
    (recordings / "link.wav").symlink_to(outside)
    (recordings / "big.wav").write_bytes(WAV + bytes(2048))  # B24_MAX_FILE_MB=0.001 allows 1048 bytes
    (recordings / "notes.txt").write_text("not audio")
    env = app_env(sandbox, token_file, B24_FILES_DIR=str(recordings), B24_MAX_FILE_MB="0.001")
    cases: list[tuple[str, str, str]] = [
        (str(outside), "outside the allowed directories", str(recordings)),
        (str(recordings / "link.wav"), "outside the allowed directories", "B24_FILES_DIR"),
        (f"{recordings}/../secret.wav", "outside the allowed directories", "B24_FILES_DIR"),
        (str(recordings / "big.wav"), "over the 1048-byte limit", "B24_MAX_FILE_MB"),
        (str(recordings / "notes.txt"), "is not one of .wav, .mp3", ".wav or .mp3"),
        (str(recordings / "missing.wav"), "does not exist", "Check the path"),
    ]
    async with stdio_session(env) as client:
        for path, description, hint in cases:
            result = await client.call_tool("attach_external_call_record", {"CALL_ID": "c", "file_path": path})
            error = refused(result, "FILE_REFUSED")
            assert description in error["description"], (path, error)
            assert hint in error["hint"], (path, error)
            assert "Traceback" not in text_of(result)
    assert await portal_requests(sandbox) == {}


async def test_file_path_without_files_dir_is_refused(
    sandbox: RunningSandbox, token_file: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "call.wav"
    recording.write_bytes(WAV)
    async with stdio_session(app_env(sandbox, token_file)) as client:
        result = await client.call_tool("attach_external_call_record", {"CALL_ID": "c", "file_path": str(recording)})
    error = refused(result, "FILE_REFUSED")
    assert error["description"] == "reading local files is off"
    assert "B24_FILES_DIR" in error["hint"]
    assert "RECORD_URL" in error["hint"]
    assert await portal_requests(sandbox) == {}


async def test_webhook_is_refused_app_only_methods(sandbox: RunningSandbox) -> None:
    async with stdio_session(webhook_env(sandbox)) as client:
        for tool, arguments in (
            ("add_external_line", {"NUMBER": "100"}),
            ("register_external_call", {"USER_ID": 1, "PHONE_NUMBER": "+7 900 000 0003", "TYPE": 2}),
        ):
            error = error_of(await client.call_tool(tool, arguments))
            assert error["code"] == "WRONG_AUTH_TYPE"
            assert error["http_status"] == 403
            assert error["retryable"] is False
            assert error["hint"] == LOCAL_APP_HINT
            assert "Local application" in error["hint"]
        matches = ok(await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": "+1 906 219 5047"}))
        assert matches[0]["NAME"] == "John Doe"
    assert sandbox.portal.lines == {}
    assert sandbox.portal.calls == {}
