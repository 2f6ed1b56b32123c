"""Every tool through the real server over stdio (app/OAuth mode) against the sandbox portal.

Each tool's happy path and the errors its Bitrix24 docs list; where a documented error cannot
reach the portal because the tool refuses the arguments first, that local refusal is asserted.
Every result, success or error, is also checked against the tool's advertised outputSchema
(`ToolCaller`), since strict clients (the TypeScript SDK, MCP Inspector) reject a result whose
structuredContent breaks it; the Python SDK client only checks successes.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
from mcp import Client
from mcp_types import CallToolResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.tools import select_tools
from support import app_env, error_of, ok, stdio_session, text_of

pytestmark = pytest.mark.anyio

JOHN_DOE = "+1 906 219 5047"  # sandbox seed: CONTACT 651 John Doe, LEAD 201, COMPANY 643 Daisy LLC
OPERATOR = 2  # sandbox seed: active user, extension 101
INACTIVE = 3  # sandbox seed: inactive user, extension 102
ISO_HINT = "2026-03-07T10:20:30+03:00"
TINY_WAV = (
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00data\x00"
)


def assert_conforms(tool: str, schema: dict[str, Any], result: CallToolResult) -> None:
    """structuredContent must satisfy outputSchema, under 2020-12 (MCP's default) and draft-07 (Ajv's)."""
    assert result.structured_content is not None, f"{tool}: no structuredContent"
    for validator_cls in (jsonschema.Draft202012Validator, jsonschema.Draft7Validator):
        validator_cls.check_schema(schema)
        problems = [error.message for error in validator_cls(schema).iter_errors(result.structured_content)]
        assert not problems, f"{tool} ({validator_cls.__name__}): {problems}\n{text_of(result)}"


class ToolCaller:
    """The SDK client, plus an outputSchema check of every result and a record of what was seen."""

    def __init__(self, client: Client, schemas: dict[str, dict[str, Any]]) -> None:
        self.client = client
        self.schemas = schemas
        self.seen: set[tuple[str, bool]] = set()

    async def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        result = await self.client.call_tool(name, arguments)
        assert_conforms(name, self.schemas[name], result)
        self.seen.add((name, bool(result.is_error)))
        return result

    async def ok(self, name: str, arguments: dict[str, Any]) -> Any:
        return ok(await self.call(name, arguments))

    async def error(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return error_of(await self.call(name, arguments))

    async def finished_call(self, phone: str, **register: Any) -> str:
        call_id: str = (
            await self.ok("register_external_call", {"USER_ID": OPERATOR, "PHONE_NUMBER": phone, "TYPE": 2, **register})
        )["CALL_ID"]
        await self.ok("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR, "DURATION": 30})
        return call_id


@asynccontextmanager
async def tools_session(sandbox: RunningSandbox, token_file: Path, mode: str = "legacy") -> AsyncIterator[ToolCaller]:
    async with stdio_session(app_env(sandbox, token_file), mode=mode) as client:
        listed = (await client.list_tools()).tools
        schemas = {tool.name: tool.output_schema for tool in listed if tool.output_schema is not None}
        assert len(schemas) == len(listed) == len(select_tools())  # the default toolsets
        yield ToolCaller(client, schemas)


def assert_core(error: dict[str, Any], description: str, hint: str | None = None) -> None:
    """A method-specific portal failure: ERROR_CORE, HTTP 400, not retryable, the docs' text."""
    assert error["code"] == "ERROR_CORE"
    assert error["description"] == description
    assert error["http_status"] == 400
    assert error["retryable"] is False
    if hint is not None:
        assert hint in error["hint"]


def assert_local(error: dict[str, Any], *fragments: str) -> None:
    """Refused by this server before any request: INVALID_ARGUMENTS, no HTTP status."""
    assert error["code"] == "INVALID_ARGUMENTS"
    assert error["http_status"] is None
    for fragment in fragments:
        assert fragment in error["description"]


async def test_external_line_lifecycle(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        line_id = (
            await tools.ok("add_external_line", {"NUMBER": "74951234567", "NAME": "Main", "CRM_AUTO_CREATE": "N"})
        )["ID"]
        assert_core(
            await tools.error("add_external_line", {"NUMBER": "74951234567"}),
            "Line already exists",
            "update_external_line",
        )
        assert await tools.ok("update_external_line", {"NUMBER": "74951234567", "NAME": "Sales"}) == {"ID": line_id}
        assert await tools.ok("update_external_line", {"NUMBER": "74951234567", "CRM_AUTO_CREATE": "Y"}) == {
            "ID": line_id
        }
        assert await tools.ok("list_external_lines", {}) == [
            {"NUMBER": "74951234567", "NAME": "Sales", "CRM_AUTO_CREATE": "Y"}
        ]
        # "There are no fields to update" cannot reach the portal: NAME-or-CRM_AUTO_CREATE is checked here.
        assert_local(await tools.error("update_external_line", {"NUMBER": "74951234567"}), "NAME or CRM_AUTO_CREATE")
        assert_core(
            await tools.error("update_external_line", {"NUMBER": "999", "NAME": "x"}),
            "Could not find line with number 999",
            "list_external_lines",
        )
        assert await tools.ok("delete_external_line", {"NUMBER": "74951234567"}) == []
        assert_core(
            await tools.error("delete_external_line", {"NUMBER": "74951234567"}),
            "Could not find line with number 74951234567",
        )
        assert await tools.ok("list_external_lines", {}) == []
    assert sandbox.portal.lines == {}


async def test_search_crm_entities_by_phone(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        matches = await tools.ok("search_crm_entities_by_phone", {"PHONE_NUMBER": JOHN_DOE})
        assert [(m["CRM_ENTITY_TYPE"], m["CRM_ENTITY_ID"], m["NAME"]) for m in matches] == [
            ("CONTACT", 651, "John Doe"),
            ("LEAD", 201, "Website enquiry"),
            ("COMPANY", 643, "Daisy LLC"),
        ]
        assert matches[0]["ASSIGNED_BY_ID"] == OPERATOR
        assert matches[0]["ASSIGNED_BY"]["USER_PHONE_INNER"] == "101"
        # The portal matches on digits, so the number written another way finds the same records.
        assert await tools.ok("search_crm_entities_by_phone", {"PHONE_NUMBER": "19062195047"}) == matches
        assert await tools.ok("search_crm_entities_by_phone", {"PHONE_NUMBER": "+1 000 000 0000"}) == []
        assert_core(await tools.error("search_crm_entities_by_phone", {"PHONE_NUMBER": ""}), "PHONE_NUMBER is empty")


async def test_call_lifecycle_show_hide_finish(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        assert tools.client.protocol_version not in MODERN_PROTOCOL_VERSIONS  # the initialize handshake
        registered = await tools.ok(
            "register_external_call",
            {"USER_ID": OPERATOR, "PHONE_NUMBER": JOHN_DOE, "TYPE": 2, "LINE_NUMBER": "100", "SHOW": 0},
        )
        call_id = registered["CALL_ID"]
        assert call_id.startswith("externalCall.")
        assert (registered["CRM_ENTITY_TYPE"], registered["CRM_ENTITY_ID"]) == ("CONTACT", 651)
        active = sandbox.portal.calls[call_id]
        assert active.shown_to == set()  # SHOW 0 reached the portal

        assert await tools.ok("show_external_call", {"CALL_ID": call_id}) is True
        assert active.shown_to == {OPERATOR}
        assert await tools.ok("show_external_call", {"CALL_ID": call_id, "USER_ID": [1, OPERATOR]}) is True
        assert active.shown_to == {1, OPERATOR}
        assert await tools.ok("hide_external_call", {"CALL_ID": call_id, "USER_ID": 1}) is True
        assert active.shown_to == {OPERATOR}

        finished = await tools.ok(
            "finish_external_call",
            {"CALL_ID": call_id, "USER_ID": OPERATOR, "DURATION": 95, "STATUS_CODE": "200", "VOTE": 5, "COST": 1.5},
        )
        assert finished["CALL_ID"] == call_id
        assert (finished["CALL_DURATION"], finished["CALL_STATUS"], finished["CALL_FAILED_CODE"]) == (95, 1, "200")
        assert finished["CRM_ACTIVITY_ID"] is not None
        assert (finished["CRM_ENTITY_TYPE"], finished["CRM_ENTITY_ID"]) == ("CONTACT", 651)
        assert sandbox.portal.statistics[call_id].call_vote == 5

        # Finished calls are no longer active: the card methods answer false rather than failing.
        assert await tools.ok("show_external_call", {"CALL_ID": call_id}) is False
        assert await tools.ok("hide_external_call", {"CALL_ID": call_id}) is False
        again = await tools.error("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR})
        assert_core(again, "Call is not found (call should be registered prior to finishing", "EXTERNAL_CALL_ID")


async def test_register_and_finish_documented_errors(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        base = {"USER_ID": OPERATOR, "PHONE_NUMBER": "+7 900 000 0001", "TYPE": 2}
        inactive = await tools.error("register_external_call", {**base, "USER_ID": INACTIVE})
        assert_core(inactive, "User is not found or is not active", "active Bitrix24 user")
        # An extension no active user has resolves to nobody (user 3's "102" is inactive).
        for extension in ("102", "999"):
            no_user = await tools.error(
                "register_external_call", {"USER_PHONE_INNER": extension, "PHONE_NUMBER": "+7 900 000 0001", "TYPE": 2}
            )
            assert_core(no_user, "USER_ID or USER_PHONE_INNER should be set")
        assert_core(
            await tools.error("register_external_call", {**base, "PHONE_NUMBER": "call me maybe"}),
            "Unsupported phone number format",
            "digits",
        )
        assert_core(
            await tools.error("register_external_call", {**base, "CALL_START_DATE": "not a date"}),
            "CALL_START_DATE should be in the ISO-8601 format",
            ISO_HINT,
        )
        # "Unknown TYPE" cannot reach the portal: TYPE is an enum, refused here.
        for bad_type in (7, "7", "2x"):
            assert_local(
                await tools.error("register_external_call", {**base, "TYPE": bad_type}), "TYPE", "1, 2, 3, 4 or 5"
            )

        call_id = (await tools.ok("register_external_call", {**base, "CALL_START_DATE": ISO_HINT}))["CALL_ID"]
        assert_core(
            await tools.error("finish_external_call", {"CALL_ID": call_id, "USER_ID": INACTIVE}),
            "User is not found or is not active",
        )
        assert_core(
            await tools.error("finish_external_call", {"CALL_ID": call_id, "USER_PHONE_INNER": "999"}),
            "USER_ID or USER_PHONE_INNER should be set",
        )
        assert_core(
            await tools.error("finish_external_call", {"CALL_ID": "externalCall.unknown", "USER_ID": OPERATOR}),
            "Call is not found (call should be registered prior to finishing",
        )
        # "CALL_ID must be a string" cannot reach the portal: a number is sent as its text, anything else refused.
        assert_core(
            await tools.error("finish_external_call", {"CALL_ID": 5, "USER_ID": OPERATOR}),
            "Call is not found (call should be registered prior to finishing",
        )
        assert_local(await tools.error("finish_external_call", {"CALL_ID": 5.5, "USER_ID": OPERATOR}), "CALL_ID")
        # The extension of an active user identifies them: user 2 finishes the call.
        finished = await tools.ok("finish_external_call", {"CALL_ID": call_id, "USER_PHONE_INNER": "101"})
        assert sandbox.portal.statistics[finished["CALL_ID"]].portal_user_id == OPERATOR


async def test_numeric_strings_accepted_where_bitrix24_compares_loosely(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    async with tools_session(sandbox, token_file) as tools:
        registered = await tools.ok(
            "register_external_call",
            {"USER_ID": "2", "PHONE_NUMBER": "+7 900 000 0002", "TYPE": "2", "SHOW": "0", "CRM_CREATE": "1"},
        )
        call = sandbox.portal.calls[registered["CALL_ID"]]
        assert (call.user_id, call.incoming, call.shown_to) == (OPERATOR, 2, set())
        assert isinstance(registered["CRM_CREATED_LEAD"], int)  # CRM_CREATE "1" created a lead for the unknown number
        assert registered["CRM_ENTITY_TYPE"] == "LEAD"
        finished = await tools.ok(
            "finish_external_call", {"CALL_ID": registered["CALL_ID"], "USER_ID": "2", "DURATION": "12", "VOTE": "4"}
        )
        assert finished["CALL_DURATION"] == 12
        assert sandbox.portal.statistics[registered["CALL_ID"]].call_vote == 4


async def test_reregistration_within_30_minutes(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        args = {"USER_ID": OPERATOR, "PHONE_NUMBER": "+7 900 000 0003", "TYPE": 2}
        first = (await tools.ok("register_external_call", args))["CALL_ID"]
        # The portal's rule: same user, number and type within 30 minutes, no EXTERNAL_CALL_ID → same call.
        assert (await tools.ok("register_external_call", args))["CALL_ID"] == first
        # A unique EXTERNAL_CALL_ID per physical call is how a PBX gets distinct calls.
        pbx_a = (await tools.ok("register_external_call", {**args, "EXTERNAL_CALL_ID": "pbx-a"}))["CALL_ID"]
        pbx_b = (await tools.ok("register_external_call", {**args, "EXTERNAL_CALL_ID": "pbx-b"}))["CALL_ID"]
        assert len({first, pbx_a, pbx_b}) == 3
        assert (await tools.ok("register_external_call", {**args, "EXTERNAL_CALL_ID": "pbx-b"}))["CALL_ID"] == pbx_b
        assert len(sandbox.portal.calls) == 3


async def test_attach_external_call_record(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        call_id = (
            await tools.ok(
                "register_external_call", {"USER_ID": OPERATOR, "PHONE_NUMBER": "+7 900 000 0004", "TYPE": 2}
            )
        )["CALL_ID"]
        url = {"CALL_ID": call_id, "RECORD_URL": "https://pbx.example.com/rec/0004.mp3"}
        early = await tools.error("attach_external_call_record", url)
        assert_core(
            early,
            "Call is not found in the statistic table. Looks like it is not finished yet.",
            "finish_external_call",
        )
        await tools.ok("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR, "DURATION": 4})

        by_url = (await tools.ok("attach_external_call_record", url))["FILE_ID"]
        assert sandbox.portal.files[by_url].source_url == url["RECORD_URL"]

        content = base64.b64encode(TINY_WAV).decode()
        inline = {"CALL_ID": call_id, "FILENAME": "call.wav", "FILE_CONTENT": content}
        by_content = (await tools.ok("attach_external_call_record", inline))["FILE_ID"]
        stored = sandbox.portal.files[by_content]
        assert (stored.name, stored.content) == ("call.wav", TINY_WAV)
        assert sandbox.portal.statistics[call_id].call_record_id == by_content  # replaces the earlier one

        assert_core(
            await tools.error("attach_external_call_record", {**inline, "FILENAME": "call.ogg"}),
            "Wrong file extension. Only wav and mp3 are allowed",
            ".wav and .mp3",
        )
        assert_core(
            await tools.error("attach_external_call_record", {**inline, "FILE_CONTENT": "not base64!"}),
            "File content is not properly encoded. Base64 encoding is expected.",
        )
        # "File name is empty" / "Required parameters are not set" cannot reach the portal.
        assert_local(
            await tools.error("attach_external_call_record", {"CALL_ID": call_id, "FILE_CONTENT": content}), "FILENAME"
        )
        assert_local(await tools.error("attach_external_call_record", {"CALL_ID": call_id}), "no recording given")


async def test_attach_call_transcription(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file) as tools:
        call_id = (
            await tools.ok(
                "register_external_call", {"USER_ID": OPERATOR, "PHONE_NUMBER": "+7 900 000 0005", "TYPE": 2}
            )
        )["CALL_ID"]
        said = [
            {"SIDE": "Client", "START_TIME": 0, "STOP_TIME": 3, "MESSAGE": "Hello, is this support?"},
            {"SIDE": "User", "START_TIME": 3, "STOP_TIME": 6, "MESSAGE": "Yes, how can I help?"},
        ]
        early = await tools.error("attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": said})
        assert_core(early, f"Call {call_id} is not found. Is it finished?", "finish_external_call")
        await tools.ok("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR, "DURATION": 6})

        # SIDE (an enum) and the documented minimums of START_TIME and STOP_TIME are refused here, naming the item.
        for index, change, where in (
            (0, {"SIDE": "Bot"}, "MESSAGES.0.SIDE"),
            (0, {"START_TIME": -1}, "MESSAGES.0.START_TIME: Input should be greater than or equal to 0"),
            (1, {"STOP_TIME": 0}, "MESSAGES.1.STOP_TIME: Input should be greater than 0"),
        ):
            messages = [dict(message) for message in said]
            messages[index].update(change)
            error = await tools.error("attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": messages})
            assert_local(error, where)
        # An empty text is the portal's documented error.
        messages = [dict(message) for message in said]
        messages[1]["MESSAGE"] = ""
        assert_core(
            await tools.error("attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": messages}),
            "MESSAGES[1][MESSAGE] is empty",
        )
        assert sandbox.portal.transcripts == {}

        transcript = await tools.ok(
            "attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": said, "COST": 0.2, "COST_CURRENCY": "USD"}
        )
        stored = sandbox.portal.transcripts[transcript["TRANSCRIPT_ID"]]
        assert (stored.call_id, stored.messages, stored.cost, stored.cost_currency) == (call_id, said, 0.2, "USD")


async def test_call_flow_with_the_2026_07_28_protocol(sandbox: RunningSandbox, token_file: Path) -> None:
    async with tools_session(sandbox, token_file, mode="auto") as tools:
        assert tools.client.protocol_version in MODERN_PROTOCOL_VERSIONS  # discover, not initialize
        matches = await tools.ok("search_crm_entities_by_phone", {"PHONE_NUMBER": JOHN_DOE})
        assert matches[0]["NAME"] == "John Doe"
        call_id = await tools.finished_call(JOHN_DOE, EXTERNAL_CALL_ID="auto-1")
        record = sandbox.portal.statistics[call_id]
        assert (record.external_call_id, record.crm_entity_id) == ("auto-1", 651)
        error = await tools.error("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR})
        assert error["description"].startswith("Call is not found")


async def test_every_result_conforms_to_its_output_schema(sandbox: RunningSandbox, token_file: Path) -> None:
    """One full flow giving every tool a success and an error, each checked by `ToolCaller`."""
    async with tools_session(sandbox, token_file) as tools:
        await tools.ok("add_external_line", {"NUMBER": "555", "NAME": "Conformance"})
        await tools.error("add_external_line", {"NUMBER": "555"})
        await tools.ok("update_external_line", {"NUMBER": "555", "NAME": "Renamed"})
        await tools.error("update_external_line", {"NUMBER": "404", "NAME": "x"})
        await tools.ok("list_external_lines", {})
        await tools.error("list_external_lines", {"NUMBER": "555"})
        await tools.ok("search_crm_entities_by_phone", {"PHONE_NUMBER": JOHN_DOE})
        await tools.error("search_crm_entities_by_phone", {"PHONE_NUMBER": ""})

        # A dedupe hit returns null CRM fields where a fresh registration returns "": both must conform.
        fresh = {"USER_ID": OPERATOR, "PHONE_NUMBER": "+7 900 000 0006", "TYPE": 2}
        call_id = (await tools.ok("register_external_call", fresh))["CALL_ID"]
        repeat = await tools.ok("register_external_call", fresh)
        assert (repeat["CALL_ID"], repeat["CRM_ENTITY_TYPE"]) == (call_id, None)
        await tools.error("register_external_call", {**fresh, "USER_ID": INACTIVE})
        await tools.ok("show_external_call", {"CALL_ID": call_id})
        await tools.error("show_external_call", {"CALL_ID": call_id, "USER_ID": "everyone"})
        await tools.ok("hide_external_call", {"CALL_ID": call_id})
        await tools.error("hide_external_call", {})
        await tools.error("attach_external_call_record", {"CALL_ID": call_id, "RECORD_URL": "https://x/r.mp3"})
        await tools.error("attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": []})
        await tools.ok("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR})  # DURATION 0: missed call
        await tools.error("finish_external_call", {"CALL_ID": call_id, "USER_ID": OPERATOR})
        await tools.ok("attach_external_call_record", {"CALL_ID": call_id, "RECORD_URL": "https://x/r.mp3"})
        message = {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 1, "MESSAGE": "Hi"}
        await tools.ok("attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": [message]})
        assert len(await tools.ok("get_call_statistics", {"FILTER": {"CALL_ID": call_id}})) == 1
        await tools.error("get_call_statistics", {"SORT": "CALL_TYPE"})
        period = {"from": "2026-01-01", "to": "2026-01-08", "group_by": ["day"]}
        assert (await tools.ok("get_call_analytics", period))["requests"] >= 1
        await tools.error("get_call_analytics", {**period, "tz": "Mars/Olympus"})
        await tools.ok("delete_external_line", {"NUMBER": "555"})
        await tools.error("delete_external_line", {"NUMBER": "555"})
        logged = {"USER_ID": OPERATOR, "PHONE_NUMBER": "+7 900 000 0007", "TYPE": 2, "EXTERNAL_CALL_ID": "conform-1"}
        await tools.ok("log_external_call", logged)
        await tools.error("log_external_call", {**logged, "DURATION": 6})  # other values for a logged call
        await tools.ok("run_batch", {"items": [{"tool": "list_external_lines"}]})
        await tools.error("run_batch", {"items": "all"})

        expected = {(name, is_error) for name in tools.schemas for is_error in (False, True)}
        assert tools.seen == expected


async def test_list_external_lines_is_one_unpaged_answer(sandbox: RunningSandbox, token_file: Path) -> None:
    """The method has no `start` and no limit (source: one SELECT of the app's lines), unlike the paged REST 2
    lists: more than a page's 50 lines come back at once, with no `total`/`next` to follow."""
    async with httpx2.AsyncClient() as http:
        for n in range(60):
            body = {"auth": sandbox.access_token, "NUMBER": f"555{n:04d}"}
            (await http.post(f"{sandbox.base_url}/rest/telephony.externalLine.add", json=body)).raise_for_status()
    async with tools_session(sandbox, token_file) as tools:
        assert set(tools.schemas["list_external_lines"]["properties"]) == {"result", "error"}  # no total/next
        result = await tools.call("list_external_lines", {})
        assert len(ok(result)) == 60
        assert set(result.structured_content or {}) == {"result"}
        assert_local(await tools.error("list_external_lines", {"start": 50}), "unknown argument(s) start")
