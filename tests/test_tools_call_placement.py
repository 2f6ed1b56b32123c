"""Toolset `call_placement`: billed calls, placed only after the user confirms, in both protocol generations.

Each test runs the real server (stdio, one streamable HTTP test) with the SDK client against the sandbox. The
client's elicitation callback plays the user (`User`); the sandbox records every call that reached the phone
network (`placed`), so "nothing was placed" is asserted on the portal, not inferred from the result.

- 2025-11-25 (`mode="legacy"`): the server asks with an `elicitation/create` request in the middle of tools/call.
- 2026-07-28 (`mode="auto"`): tools/call answers `input_required` with the question; the SDK client asks the
  user and repeats the call with the answer and the sealed `requestState`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitRequestParams, ElicitResult, InputRequiredResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.config.settings import ConfigError, load_settings
from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.methods.call_placement import CallPlacementState, PlacedCall
from b24_telephony_mcp.tools import select_tools
from support import app_env, error_of, http_server, http_session, ok, stdio_session, text_of
from test_tools import ToolCaller, assert_conforms, assert_core

pytestmark = pytest.mark.anyio

TOOLS = ("start_callback", "start_infocall_with_sound", "start_infocall_with_text")
CALLBACK = {"FROM_LINE": "reg151083", "TO_NUMBER": "+1 906 219 5047", "TEXT_TO_PRONOUNCE": "Callback request"}
INFOCALL_TEXT = {
    "FROM_LINE": "74951234567",  # sandbox seed: a rented number
    "TO_NUMBER": "+44 20 7946 0958",
    "TEXT_TO_PRONOUNCE": "Your order is ready",
    "VOICE": "enfemale",
}
INFOCALL_SOUND = {"FROM_LINE": "sip7", "TO_NUMBER": "74951234567", "URL": "https://example.com/reminder.mp3"}
PROTOCOLS = ("legacy", "auto")


class User:
    """The person behind the client: answers each confirmation question in turn and remembers the questions."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.questions: list[str] = []

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        assert params.mode == "form"
        assert params.requested_schema == {"type": "object", "properties": {}}  # nothing to fill in: yes or no
        self.questions.append(params.message)
        action = self.answers.pop(0)
        return ElicitResult(action=action, content={} if action == "accept" else None)  # type: ignore[arg-type]


def placed(sandbox: RunningSandbox) -> list[PlacedCall]:
    return sandbox.portal.state(CallPlacementState).placed


@asynccontextmanager
async def placement_session(
    sandbox: RunningSandbox, token_file: Path, mode: str = "legacy", user: User | None = None, **env: str
) -> AsyncIterator[ToolCaller]:
    """The server with only the call_placement toolset; `user=None` is a client that cannot elicit."""
    async with stdio_session(
        app_env(sandbox, token_file, **env), "--toolsets", "call_placement", mode=mode, elicitation_callback=user
    ) as client:
        expected = MODERN_PROTOCOL_VERSIONS if mode == "auto" else ("2025-11-25",)
        assert client.protocol_version in expected
        listed = [tool for tool in (await client.list_tools()).tools if tool.name != "run_batch"]  # every selection's
        assert [tool.name for tool in listed] == list(TOOLS)
        for tool in listed:  # they ring real phones: destructive, open world, never read-only
            assert tool.annotations is not None
            assert tool.annotations.destructive_hint is True
            assert tool.annotations.open_world_hint is True
            assert tool.annotations.read_only_hint is False
        yield ToolCaller(client, {tool.name: tool.output_schema for tool in listed if tool.output_schema})


def test_off_by_default_and_scope_call() -> None:
    assert not set(TOOLS) & {spec.name for spec in select_tools()}
    placing = {spec.name: spec.scopes for spec in select_tools(["call_placement"]) if spec.name != "run_batch"}
    assert placing == dict.fromkeys(TOOLS, ("call",))


@pytest.mark.parametrize("mode", PROTOCOLS)
async def test_placed_only_when_the_user_accepts(sandbox: RunningSandbox, token_file: Path, mode: str) -> None:
    user = User("accept", "accept", "accept", "decline", "cancel", "decline")
    async with placement_session(sandbox, token_file, mode, user) as tools:
        callback = await tools.ok("start_callback", CALLBACK)
        sound = await tools.ok("start_infocall_with_sound", INFOCALL_SOUND)
        text = await tools.ok("start_infocall_with_text", INFOCALL_TEXT)
        requests_so_far = sum(sandbox.portal.stats.requests.values())
        declined = await tools.error("start_callback", CALLBACK)
        cancelled = await tools.error("start_infocall_with_text", INFOCALL_TEXT)
        declined_sound = await tools.error("start_infocall_with_sound", INFOCALL_SOUND)

    # The user saw the line, the number and what will be said or played, before anything was sent.
    assert user.questions[:3] == [
        "Place a billed callback from line reg151083 to +1 906 219 5047? The employee on the line first hears: "
        '"Callback request"',
        "Place a billed automated call from line sip7 to 74951234567? Whoever answers hears the recording "
        "https://example.com/reminder.mp3",
        "Place a billed automated call from line 74951234567 to +44 20 7946 0958? Whoever answers hears (voice "
        'enfemale): "Your order is ready"',
    ]
    assert user.questions[3:] == [user.questions[0], user.questions[2], user.questions[1]]
    assert callback["RESULT"] is True and callback["CALL_ID"].startswith("callback.")
    assert sound["RESULT"] is True and sound["CALL_ID"].startswith("infocall.")
    # Only the accepted calls reached the portal; after a decline or cancel, not even a request did.
    assert [(call.method, call.call_id, call.from_line, call.to_number) for call in placed(sandbox)] == [
        ("voximplant.callback.start", callback["CALL_ID"], "reg151083", "+19062195047"),
        ("voximplant.infocall.startwithsound", sound["CALL_ID"], "sip7", "74951234567"),
        ("voximplant.infocall.startwithtext", text["CALL_ID"], "74951234567", "+442079460958"),
    ]
    assert [(call.text, call.url, call.voice) for call in placed(sandbox)] == [
        ("Callback request", None, None),
        (None, "https://example.com/reminder.mp3", None),
        ("Your order is ready", None, "enfemale"),
    ]
    assert sum(sandbox.portal.stats.requests.values()) == requests_so_far == 3
    for error in (declined, cancelled, declined_sound):
        assert error["code"] == "NOT_CONFIRMED"
        assert "Nothing was sent to Bitrix24" in error["description"]
        assert error["retryable"] is False and error["http_status"] is None
    assert "the user declined" in declined["description"]
    assert "Do not call it again unless the user asks" in declined["hint"]
    assert declined["method"] == "voximplant.callback.start"
    assert "dismissed the confirmation" in cancelled["description"]
    assert "Ask the user" in cancelled["hint"]


@pytest.mark.parametrize("mode", PROTOCOLS)
async def test_client_without_elicitation_is_refused(sandbox: RunningSandbox, token_file: Path, mode: str) -> None:
    async with placement_session(sandbox, token_file, mode, user=None) as tools:
        for name, arguments in zip(TOOLS, (CALLBACK, INFOCALL_SOUND, INFOCALL_TEXT), strict=True):
            error = await tools.error(name, arguments)
            assert error["code"] == "CONFIRMATION_UNAVAILABLE"
            assert "does not declare the MCP form elicitation capability" in error["description"]
            assert "nothing was sent to Bitrix24" in error["description"]
            assert "B24_CONFIRM_CALLS=0" in error["hint"]
        if mode == "auto":
            # An answer the server never asked for is no answer: sent up front, it is ignored.
            forged = ElicitResult(action="accept", content={})
            result = await tools.client.call_tool("start_callback", CALLBACK, input_responses={"confirm": forged})
            assert_conforms("start_callback", tools.schemas["start_callback"], result)
            assert result.is_error and "CONFIRMATION_UNAVAILABLE" in text_of(result)
    assert placed(sandbox) == []
    assert sandbox.portal.stats.requests == {}


async def test_input_required_round_trip_on_the_wire(sandbox: RunningSandbox, token_file: Path) -> None:
    """2026-07-28 driven by hand: the question goes out as input_required, its state sealed; the answer counts only
    beside that state, for the same tool and arguments, and only once."""
    async with placement_session(sandbox, token_file, "auto", User()) as tools:
        session = tools.client.session
        first = await session.call_tool("start_callback", CALLBACK, allow_input_required=True)
        assert isinstance(first, InputRequiredResult)
        assert first.input_requests is not None and list(first.input_requests) == ["confirm"]
        question = first.input_requests["confirm"]
        assert question.method == "elicitation/create"
        assert "reg151083" in question.params.message  # type: ignore[union-attr]
        state = first.request_state
        assert state is not None and "asked" not in state  # sealed, not readable by the client
        yes = {"confirm": ElicitResult(action="accept", content={})}

        # The same sealed state carried over to other arguments is refused by the SDK's boundary.
        other_number = {**CALLBACK, "TO_NUMBER": "+1 555 0100"}
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await session.call_tool("start_callback", other_number, input_responses=yes, request_state=state)
        with pytest.raises(MCPError, match="Invalid or expired requestState"):
            await session.call_tool("start_callback", CALLBACK, input_responses=yes, request_state=state + "x")
        assert placed(sandbox) == []

        # No answer beside the state: asked again, nothing placed.
        again = await session.call_tool("start_callback", CALLBACK, request_state=state, allow_input_required=True)
        assert isinstance(again, InputRequiredResult)
        assert placed(sandbox) == []

        result = await session.call_tool("start_callback", CALLBACK, input_responses=yes, request_state=state)
        assert_conforms("start_callback", tools.schemas["start_callback"], result)
        assert not result.is_error, text_of(result)
        assert len(placed(sandbox)) == 1

        # A yes is spent on one call: the same retry sent again (a client resending it) is asked anew.
        replay = await session.call_tool(
            "start_callback", CALLBACK, input_responses=yes, request_state=state, allow_input_required=True
        )
        assert isinstance(replay, InputRequiredResult)
    assert [call.from_line for call in placed(sandbox)] == ["reg151083"]


async def test_confirmation_switched_off_places_without_asking(sandbox: RunningSandbox, token_file: Path) -> None:
    user = User()  # the client could ask, but any question would fail the test: no answers left
    async with placement_session(sandbox, token_file, "auto", user, B24_CONFIRM_CALLS="0") as tools:
        await tools.ok("start_callback", CALLBACK)
        await tools.ok("start_infocall_with_sound", INFOCALL_SOUND)
        # Numbers as JSON numbers are taken as their text, as everywhere.
        await tools.ok("start_infocall_with_text", {**INFOCALL_TEXT, "TO_NUMBER": 447946095800})
    assert user.questions == []
    assert [call.to_number for call in placed(sandbox)] == ["+19062195047", "74951234567", "447946095800"]


async def test_enabled_by_the_model_only_while_each_call_is_confirmed(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    """--dynamic-toolsets: the model may add call_placement, and each call still asks; with B24_CONFIRM_CALLS=0
    nobody would be asked, so adding it is the operator's decision (--toolsets) and enable_toolset refuses."""
    user = User("decline")
    async with stdio_session(app_env(sandbox, token_file), "--dynamic-toolsets", elicitation_callback=user) as client:
        added = ok(await client.call_tool("enable_toolset", {"toolset": "call_placement"}))["added"]
        assert added == list(TOOLS)
        declined = error_of(await client.call_tool("start_callback", CALLBACK))
    assert declined["code"] == "NOT_CONFIRMED" and len(user.questions) == 1

    unattended = app_env(sandbox, token_file, B24_CONFIRM_CALLS="0")
    async with stdio_session(unattended, "--dynamic-toolsets", elicitation_callback=User()) as client:
        refused = error_of(await client.call_tool("enable_toolset", {"toolset": "call_placement"}))
        offered = {tool.name for tool in (await client.list_tools()).tools}
        assert ok(await client.call_tool("enable_toolset", {"toolset": "sip"}))["added"]  # other toolsets: as ever
    assert refused["code"] == "TOOLSET_NOT_ALLOWED" and refused["retryable"] is False
    assert "B24_CONFIRM_CALLS=0" in refused["description"] and "--toolsets" in refused["hint"]
    assert not offered & set(TOOLS)
    assert placed(sandbox) == []


def test_confirm_calls_setting() -> None:
    webhook = {"B24_WEBHOOK_URL": "https://portal.example.com/rest/1/abc/"}
    assert load_settings(webhook).confirm_calls is True
    assert load_settings({**webhook, "B24_CONFIRM_CALLS": ""}).confirm_calls is True
    assert load_settings({**webhook, "B24_CONFIRM_CALLS": "1"}).confirm_calls is True
    assert load_settings({**webhook, "B24_CONFIRM_CALLS": "0"}).confirm_calls is False
    with pytest.raises(ConfigError, match="B24_CONFIRM_CALLS"):
        load_settings({**webhook, "B24_CONFIRM_CALLS": "ask"})


async def test_documented_errors(sandbox: RunningSandbox, token_file: Path) -> None:
    state = sandbox.portal.state(CallPlacementState)
    async with placement_session(sandbox, token_file, "legacy", None, B24_CONFIRM_CALLS="0") as tools:
        callback, text, sound = (
            lambda **a: tools.error("start_callback", {**CALLBACK, **a}),
            lambda **a: tools.error("start_infocall_with_text", {**INFOCALL_TEXT, **a}),
            lambda **a: tools.error("start_infocall_with_sound", {**INFOCALL_SOUND, **a}),
        )
        line_hint = "outgoing lines"
        assert_core(await callback(FROM_LINE="reg000000"), "Could not find line reg000000", line_hint)
        assert_core(await text(FROM_LINE="reg000000"), "Could not find config for number reg000000", line_hint)
        assert_core(await sound(FROM_LINE="reg000000"), "Could not find config for number reg000000", line_hint)
        state.unconfigured.add("sip11")
        assert_core(await callback(FROM_LINE="sip11"), "Could not find config for number sip11", line_hint)
        assert_core(await callback(TO_NUMBER="call me"), "Phone number is not correct", "digits")
        assert_core(await text(TO_NUMBER="n/a"), "Phone number is not correct", "digits")
        assert_core(
            await sound(FROM_LINE="LINK_BASE_NUMBER"),
            "Making infocall using LINK_BASE_NUMBER is not allowed",
            "linked base number",
        )

        # Billing: the monthly info-call allowance, then the telephony balance.
        state.infocall_limit_remainder = 1
        await tools.ok("start_infocall_with_text", INFOCALL_TEXT)  # the last one this month
        assert state.infocall_limit_remainder == 0
        assert_core(await text(), "Infocall limit for this month is exceeded", "allowance is used up")
        assert_core(await sound(), "Infocall limit for this month is exceeded", "Do not retry")
        state.infocall_limit_remainder = -1
        state.balance = 0
        assert_core(await sound(), "Infocall failure", "telephony balance")
        assert_core(await text(), "Infocall failure", "telephony balance")
        callback_refused = await callback()
        assert callback_refused["code"] == "ERROR_CORE" and callback_refused["http_status"] == 400
        assert "balance" in callback_refused["description"]
        state.balance = 100

        # The 'Outgoing call - Execute' permission, checked before anything else.
        state.denied_users.add(1)  # the app's tokens act as user 1
        for denied in (await callback(FROM_LINE="reg000000"), await text(), await sound()):
            assert denied["code"] == "ACCESS_DENIED"
            assert denied["description"] == "Access denied!"
            assert denied["http_status"] == 403
            assert "Outgoing call - Execute" in denied["hint"]
    assert [call.method for call in placed(sandbox)] == ["voximplant.infocall.startwithtext"]
    assert tools.seen >= {(name, True) for name in TOOLS}


async def test_insufficient_scope_without_call(token_file: Path) -> None:
    # disagreements.md #4: the docs say telephony, the source registers these under `call` only.
    config = SandboxConfig(rate_limit=1000.0, rate_burst=10000, scopes="telephony,crm,user")
    with start_sandbox(config) as sandbox:
        async with placement_session(sandbox, token_file, "auto", User("accept")) as tools:
            error = await tools.error("start_callback", CALLBACK)
        assert placed(sandbox) == []
    assert error["code"] == "insufficient_scope"
    assert "start_callback needs the 'call' scope" in error["hint"]


async def test_confirmation_over_streamable_http(sandbox: RunningSandbox, token_file: Path) -> None:
    """Over HTTP, 2025-11-25's mid-call question needs SSE responses: the server uses them when a tool asks."""
    token = "t" * 32
    env = app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=token)
    with http_server(env, "http", "--toolsets", "call_placement") as server:
        for mode in PROTOCOLS:
            user = User("accept", "decline")
            async with http_session(server.url, token, mode=mode, elicitation_callback=user) as client:
                assert await _ok(client, "start_callback", CALLBACK)
                assert (await client.call_tool("start_infocall_with_text", INFOCALL_TEXT)).is_error
            assert len(user.questions) == 2, mode
    assert [call.method for call in placed(sandbox)] == ["voximplant.callback.start"] * 2


async def _ok(client: Client, name: str, arguments: dict[str, Any]) -> bool:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, text_of(result)
    return True
