"""Choosing tools: `--toolsets`, `--read-only`, `--tools`, `--dynamic-toolsets` (and their B24_* variables).

Through the real server: startup errors as a user sees them (exit code 2, one line naming the valid names), the
listed tools, the server's instructions from the handshake, hints that never name a tool that is not offered, and
dynamic toolsets over both protocol generations and both transports, list-changed notification included.
Expected tool lists come from the declarations (`select_tools`, `ToolOffer`), never from counts written here.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp_types import ToolListChangedNotification
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.bitrix.errors import ERROR_CORE, BitrixError
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.serving.server import instructions_for, mcp_tool
from b24_telephony_mcp.tools import ALL_TOOLS, DEFAULT_TOOLSETS, TOOLS_BY_NAME, TOOLSETS, select_tools
from b24_telephony_mcp.tools.dynamic import DYNAMIC_TOOLS
from b24_telephony_mcp.tools.offer import KNOWN_TOOL_NAMES, ToolOffer
from support import app_env, clean_env, error_of, http_server, http_session, ok, server_command, stdio_session

WEBHOOK = "https://portal.example.com/rest/1/abcdef0123456789/"
DYNAMIC = [spec.name for spec in DYNAMIC_TOOLS]
# A toolset that is on by default and one that is off when only the first is chosen: both have tools today.
LINES, CALLS = "external_lines", "external_calls"


def names_in(text: str) -> set[str]:
    """The tool names a text mentions (whole names: get_call_followup_field does not mention get_call_followup)."""
    return {name for name in KNOWN_TOOL_NAMES if re.search(rf"\b{name}\b", text)}


def start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**env, "B24_LOG_LEVEL": "INFO"}  # as a user runs it: stderr holds the one error line only
    return subprocess.run(server_command(*args), env=env, input="", capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "variables", "phrase", "valid"),
    [
        (("--toolsets", "external_lines,voicemail"), {}, "unknown toolset(s) voicemail", "valid toolsets:"),
        ((), {"B24_TOOLSETS": "sip, Statistics"}, "unknown toolset(s) Statistics", "valid toolsets:"),
        (("--tools", "list_external_lines,transfer_call"), {}, "unknown tool(s) transfer_call", "valid tools:"),
        ((), {"B24_TOOLS": "list_toolsets"}, "unknown tool(s) list_toolsets", "valid tools:"),  # not selectable
    ],
)
def test_unknown_names_stop_the_start_and_list_the_valid_ones(
    args: tuple[str, ...], variables: dict[str, str], phrase: str, valid: str
) -> None:
    process = start(clean_env(B24_WEBHOOK_URL=WEBHOOK, **variables), *args)
    message = process.stderr.strip()
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert message.startswith("b24-telephony-mcp: ") and "\n" not in message and "Traceback" not in message
    assert phrase in message
    listed = message.split(valid, 1)[1]
    names = [toolset.name for toolset in TOOLSETS] + ["all"] if "toolsets" in valid else list(TOOLS_BY_NAME)
    assert all(name in listed for name in names), message


def test_a_bad_dynamic_toolsets_flag_value_stops_the_start() -> None:
    process = start(clean_env(B24_WEBHOOK_URL=WEBHOOK, B24_DYNAMIC_TOOLSETS="maybe"))
    assert process.returncode == 2
    assert "B24_DYNAMIC_TOOLSETS must be 1 or 0" in process.stderr


@pytest.mark.parametrize(
    ("args", "variables", "expected"),
    [
        ((), {}, ToolOffer.select()),
        (("--read-only",), {}, ToolOffer.select(read_only=True)),
        ((), {"B24_READ_ONLY": "1", "B24_TOOLSETS": "all"}, ToolOffer.select(["all"], read_only=True)),
        (("--toolsets", CALLS), {"B24_TOOLSETS": LINES}, ToolOffer.select([CALLS])),  # the flag wins
        # --tools means exactly these, whatever the toolsets; read-only mode still applies.
        (
            ("--tools", "list_external_lines,add_external_line", "--toolsets", "sip"),
            {},
            ToolOffer.select(tools=["list_external_lines", "add_external_line"]),
        ),
        (
            (),
            {"B24_TOOLS": "add_external_line,list_external_lines", "B24_READ_ONLY": "yes"},
            ToolOffer.select(tools=["add_external_line", "list_external_lines"], read_only=True),
        ),
    ],
)
@pytest.mark.anyio
async def test_the_server_offers_exactly_the_selection(
    sandbox: RunningSandbox, token_file: Path, args: tuple[str, ...], variables: dict[str, str], expected: ToolOffer
) -> None:
    async with stdio_session(app_env(sandbox, token_file, **variables), *args) as client:
        listed = (await client.list_tools()).tools
        instructions = client.instructions or ""
    assert [tool.name for tool in listed] == list(expected)
    if expected.read_only:
        assert all(tool.annotations and tool.annotations.read_only_hint for tool in listed)
        assert len(listed) < len(ToolOffer.select(expected.enabled or None))  # some tool was left out
    # The instructions (from the handshake) are those written for this selection: checked for every selection
    # in test_instructions_hints_and_descriptions_never_name_a_tool_that_is_not_offered.
    assert instructions == instructions_for(expected)
    assert names_in(instructions) <= {tool.name for tool in listed}


def all_selections() -> list[ToolOffer]:
    offers = [ToolOffer.select([toolset.name], read_only=ro) for toolset in TOOLSETS for ro in (False, True)]
    offers += [ToolOffer.select(None, read_only=ro, dynamic=dyn) for ro in (False, True) for dyn in (False, True)]
    offers += [ToolOffer.select(tools=[spec.name], dynamic=dyn) for spec in ALL_TOOLS for dyn in (False, True)]
    return offers


def test_instructions_hints_and_descriptions_never_name_a_tool_that_is_not_offered() -> None:
    """Every selection against every hint any tool can give: derived from the declarations, so new tools count."""
    hints = {hint for spec in ALL_TOOLS for _, hint in spec.hints}
    assert any(names_in(hint) for hint in hints), "some hint should name a tool, or this test proves nothing"
    for offer in all_selections():
        offered = set(offer)
        instructions = instructions_for(offer)
        assert names_in(instructions) <= offered, (offered, instructions)
        off = [ts for ts in TOOLSETS if ts.name not in offer.enabled and not any(t.name in offer for t in ts.tools)]
        assert all(toolset.name in instructions for toolset in off), instructions
        for spec in (spec for spec in ALL_TOOLS if spec.name in offered):
            for needle, hint in spec.hints:
                shown = spec.explain(BitrixError(ERROR_CORE, needle), offer).hint
                assert names_in(shown) <= offered, (sorted(offered), shown)
                if names_in(hint) <= offered:
                    assert shown == hint  # nothing to drop: the hint is untouched
                else:
                    assert shown.endswith(".") and "The tool for that" in shown, shown
            # tools/list: descriptions (the tool's and its schemas') name only offered tools too.
            full, listed = mcp_tool(spec).model_dump_json(), mcp_tool(spec, offer).model_dump_json()
            assert names_in(listed) <= offered, (sorted(offered), listed)
            if names_in(full) <= offered:
                assert listed == full  # nothing to drop: the listing is untouched


def test_read_only_mode_rewords_a_hint_that_names_a_write_tool() -> None:
    offer = ToolOffer.select(None, read_only=True)
    add_line = TOOLS_BY_NAME["add_external_line"]
    full = add_line.explain(BitrixError(ERROR_CORE, "Line already exists"), ToolOffer.select(None)).hint
    assert "update_external_line" in full and "list_external_lines" in full
    shown = add_line.explain(BitrixError(ERROR_CORE, "Line already exists"), offer).hint
    assert shown == (
        "list_external_lines shows the lines. The tool for that changes the portal, and this server runs in "
        "read-only mode."
    )
    # The generic (client) hints name no tools, so they pass through unchanged.
    assert add_line.explain(BitrixError("ACCESS_DENIED", "Access denied!"), offer).hint.startswith("The Bitrix24 user")


@pytest.mark.anyio
async def test_a_hint_through_the_real_server_names_only_offered_tools(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    tools = "register_external_call,attach_external_call_record,delete_sip_connection"
    async with stdio_session(app_env(sandbox, token_file), "--tools", tools) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        call_id = ok(
            await client.call_tool(
                "register_external_call", {"USER_ID": 2, "PHONE_NUMBER": "+7 900 000 0101", "TYPE": 2}
            )
        )["CALL_ID"]
        early = error_of(
            await client.call_tool("attach_external_call_record", {"CALL_ID": call_id, "RECORD_URL": "https://x/r.mp3"})
        )
    # "Finish the call with finish_external_call ..." would name a tool this server does not offer.
    assert early["description"].startswith("Call is not found in the statistic table")
    assert "finish_external_call" not in early["hint"]
    assert early["hint"] == "The tool for that is not offered by this server (its --tools list leaves it out)."
    # The listing keeps what CONFIG_ID is and leaves out where it comes from (list_sip_connections is not offered).
    config_id = listed["delete_sip_connection"].input_schema["properties"]["CONFIG_ID"]
    assert config_id["description"] == "A SIP connection of this application."


# --- dynamic toolsets ---


class ListChanges:
    """A client message handler counting `notifications/tools/list_changed`."""

    def __init__(self) -> None:
        self.count = 0
        self.arrived = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            self.count += 1
            self.arrived.set()


def toolset_tools(name: str, *, read_only: bool = False) -> list[str]:
    """The tools of one toolset (what enable_toolset adds), without run_batch, which comes with every selection."""
    toolset = next(toolset for toolset in TOOLSETS if toolset.name == name)
    return [spec.name for spec in toolset.tools if spec.effect.read_only or not read_only]


async def names(client: Client) -> list[str]:
    return [tool.name for tool in (await client.list_tools()).tools]


@pytest.mark.anyio
async def test_dynamic_toolsets_over_the_handshake_protocol(sandbox: RunningSandbox, token_file: Path) -> None:
    changes = ListChanges()
    env = app_env(sandbox, token_file)
    async with stdio_session(env, "--toolsets", LINES, "--dynamic-toolsets", message_handler=changes) as client:
        assert client.protocol_version not in MODERN_PROTOCOL_VERSIONS
        capabilities = client.server_capabilities
        assert capabilities.tools is not None and capabilities.tools.list_changed is True
        assert await names(client) == list(ToolOffer.select([LINES], dynamic=True))
        instructions = client.instructions or ""
        assert "enable_toolset" in instructions and CALLS in instructions

        listed = {item["name"]: item for item in ok(await client.call_tool("list_toolsets", {}))}
        assert list(listed) == [toolset.name for toolset in TOOLSETS]
        assert listed[LINES]["enabled"] is True and listed[CALLS]["enabled"] is False
        calls_tools = toolset_tools(CALLS)
        assert listed[CALLS]["tools"] == calls_tools
        assert listed[CALLS]["description"] == next(ts.description for ts in TOOLSETS if ts.name == CALLS)

        enabled = ok(await client.call_tool("enable_toolset", {"toolset": CALLS}))
        assert enabled["toolset"] == CALLS and enabled["added"] == calls_tools
        assert "tools/list" in enabled["note"]
        with anyio.fail_after(10):
            await changes.arrived.wait()
        assert await names(client) == list(ToolOffer.select([LINES, CALLS], dynamic=True))
        # The new tools work at once.
        assert ok(await client.call_tool("search_crm_entities_by_phone", {"PHONE_NUMBER": "+1 906 219 5047"}))

        again = ok(await client.call_tool("enable_toolset", {"toolset": CALLS}))
        assert again["added"] == [] and "already enabled" in again["note"]
        bogus = error_of(await client.call_tool("enable_toolset", {"toolset": "voicemail"}))
        assert bogus["code"] == "INVALID_ARGUMENTS" and LINES in bogus["description"]
        await anyio.sleep(0.2)  # a stray notification would arrive by now
        assert changes.count == 1, "only a change is announced"


@pytest.mark.anyio
async def test_dynamic_toolsets_keep_read_only_mode(sandbox: RunningSandbox, token_file: Path) -> None:
    env = app_env(sandbox, token_file, B24_DYNAMIC_TOOLSETS="1", B24_READ_ONLY="1", B24_TOOLSETS=CALLS)
    async with stdio_session(env) as client:
        assert await names(client) == [spec.name for spec in select_tools([CALLS], read_only=True)] + DYNAMIC
        enabled = ok(await client.call_tool("enable_toolset", {"toolset": LINES}))
        assert enabled["added"] == toolset_tools(LINES, read_only=True)
        listed = await names(client)
    offer = ToolOffer.select([CALLS, LINES], read_only=True, dynamic=True)
    assert listed == list(offer)
    assert all(offer[name].effect.read_only for name in listed)  # run_batch in its read-only form


@pytest.mark.anyio
async def test_dynamic_toolsets_over_the_2026_07_28_protocol(sandbox: RunningSandbox, token_file: Path) -> None:
    """No session to notify: a `subscriptions/listen` stream hears of the change, and the next tools/list shows it
    to anyone, listening or not (the enabled set belongs to the server process)."""
    env = app_env(sandbox, token_file)
    async with stdio_session(env, "--toolsets", LINES, "--dynamic-toolsets", mode="auto") as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        capabilities = client.server_capabilities
        assert capabilities.tools is not None and capabilities.tools.list_changed is True
        async with client.listen(tools_list_changed=True) as subscription:
            enabled = ok(await client.call_tool("enable_toolset", {"toolset": CALLS}))
            assert enabled["added"] == toolset_tools(CALLS)
            with anyio.fail_after(10):
                event = await subscription.__anext__()
        assert type(event).__name__ == "ToolsListChanged"
        assert await names(client) == list(ToolOffer.select([LINES, CALLS], dynamic=True))


@pytest.mark.anyio
async def test_without_dynamic_toolsets_the_list_never_changes(sandbox: RunningSandbox, token_file: Path) -> None:
    async with stdio_session(app_env(sandbox, token_file)) as client:
        capabilities = client.server_capabilities
        assert capabilities.tools is not None and not capabilities.tools.list_changed
        assert not set(DYNAMIC) & set(await names(client))
        assert error_of(await client.call_tool("enable_toolset", {"toolset": CALLS}))["code"] == "UNKNOWN_TOOL"
    assert set(DEFAULT_TOOLSETS) >= {LINES, CALLS}  # what the tests above rely on


@pytest.mark.anyio
async def test_an_enabled_toolset_is_offered_to_every_http_client(sandbox: RunningSandbox, token_file: Path) -> None:
    """One HTTP server, several clients of both protocol generations: the toolset one enables, all get."""
    token = secrets.token_urlsafe(32)
    env = app_env(sandbox, token_file, B24_MCP_AUTH_TOKEN=token, B24_TOOLSETS=LINES, B24_DYNAMIC_TOOLSETS="1")
    with http_server(env) as server:
        before = list(ToolOffer.select([LINES], dynamic=True))
        after = list(ToolOffer.select([LINES, CALLS], dynamic=True))
        async with http_session(server.url, token) as legacy, http_session(server.url, token, mode="auto") as modern:
            assert modern.protocol_version in MODERN_PROTOCOL_VERSIONS
            assert await names(legacy) == await names(modern) == before
            async with modern.listen(tools_list_changed=True) as subscription:
                assert ok(await legacy.call_tool("enable_toolset", {"toolset": CALLS}))["added"]
                with anyio.fail_after(10):
                    event = await subscription.__anext__()
            assert type(event).__name__ == "ToolsListChanged"  # told, though another client enabled it
            assert await names(legacy) == await names(modern) == after
        async with http_session(server.url, token) as later:
            assert await names(later) == after


def test_a_dynamic_server_counts_the_tools_it_may_come_to_offer() -> None:
    # What decides, e.g., whether streamable HTTP must answer with SSE streams for a confirmation question.
    assert list(ToolOffer.select([LINES]).possible()) == list(ToolOffer.select([LINES]).values())
    possible = {spec.name for spec in ToolOffer.select([LINES], dynamic=True).possible()}
    assert possible == {spec.name for spec in ALL_TOOLS} | set(DYNAMIC)
    read_only = ToolOffer.select([LINES], read_only=True, dynamic=True).possible()
    assert {spec.name for spec in read_only} == {spec.name for spec in select_tools(["all"], read_only=True)} | set(
        DYNAMIC
    )
