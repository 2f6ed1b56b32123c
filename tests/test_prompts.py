"""Prompts and argument completion through a real client: prompts/list and prompts/get for every selection (a
prompt never names a tool the server does not offer), list changes with dynamic toolsets over both protocol
generations, and completion/complete with the sandbox portal's lines and users, its prefix filter, its limit and a
failing portal answered with nothing rather than an error.

Expected prompts come from the declarations (`offered_prompts` over `ToolOffer.select`), never from lists here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp_types import PromptListChangedNotification, PromptReference
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.prompts.catalogue import PROMPTS, PROMPTS_BY_NAME, offered_prompts
from b24_telephony_mcp.prompts.completions import MAX_VALUES
from b24_telephony_mcp.prompts.periods import PERIODS, span_of
from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.records import SandboxUser
from b24_telephony_mcp.tools.offer import ToolOffer
from support import app_env, ok, stdio_session, webhook_env
from test_tools_list import compact_size
from test_toolsets import names_in

# Wire bytes of prompts/list with every prompt (1,915 B measured; `benchmarks/tool_sizes.py` prints it): a client
# lists them all where people pick one, so they stay one line each.
PROMPTS_BUDGET = 2_000

# A value for every argument of every prompt, as a person would fill them in.
FILLED = {
    "period": "last 7 days",
    "group_by": "user",
    "line": "+1 555 0199",
    "phone": "+1 906 219 5047",
    "user": "2 Olivia Operator",
    "direction": "incoming",
    "duration": "95",
    "number": "+1 555 0199",
    "name": "Office PBX",
}


def filled(prompt: str, *, optional: bool = True) -> dict[str, str]:
    arguments = PROMPTS_BY_NAME[prompt].arguments
    return {arg.name: FILLED[arg.name] for arg in arguments if optional or arg.required}


def test_every_argument_has_a_sample_and_every_prompt_a_tool() -> None:
    """What the tests below rely on: FILLED covers the declarations, and each prompt needs tools that exist."""
    assert {arg.name for prompt in PROMPTS for arg in prompt.arguments} <= set(FILLED)
    every_tool = ToolOffer.select(["all"], dynamic=True)
    assert all(name in every_tool for prompt in PROMPTS for name in prompt.needs)


SELECTIONS = {
    "default": (),
    "read-only": ("--read-only",),
    "all": ("--toolsets", "all"),
    "all read-only": ("--toolsets", "all", "--read-only"),
    "external_lines": ("--toolsets", "external_lines"),
    "one tool": ("--tools", "get_call_statistics"),
    "reference only": ("--toolsets", "reference"),
}


def offer_of(args: tuple[str, ...]) -> ToolOffer:
    """The offer the server makes for `args`, from the declarations."""
    toolsets = args[args.index("--toolsets") + 1].split(",") if "--toolsets" in args else None
    tools = args[args.index("--tools") + 1].split(",") if "--tools" in args else None
    return ToolOffer.select(toolsets, read_only="--read-only" in args, tools=tools)


@pytest.mark.anyio
@pytest.mark.parametrize("args", SELECTIONS.values(), ids=SELECTIONS.keys())
async def test_prompts_follow_the_selection_and_name_only_offered_tools(
    module_sandbox: RunningSandbox, args: tuple[str, ...]
) -> None:
    offer = offer_of(args)
    expected = [prompt.name for prompt in offered_prompts(offer)]
    async with stdio_session(webhook_env(module_sandbox), *args) as client:
        listed = (await client.list_prompts()).prompts
        assert [prompt.name for prompt in listed] == expected
        dumped = [prompt.model_dump(mode="json", by_alias=True, exclude_none=True) for prompt in listed]
        assert compact_size({"prompts": dumped}) <= PROMPTS_BUDGET
        capabilities = client.server_capabilities
        assert (capabilities.prompts is not None) and (capabilities.completions is not None)
        for prompt in listed:
            declared = PROMPTS_BY_NAME[prompt.name]
            assert prompt.description == declared.description and prompt.title == declared.title
            assert [(arg.name, bool(arg.required)) for arg in prompt.arguments or ()] == [
                (arg.name, arg.required) for arg in declared.arguments
            ]
            for optional in (True, False):
                result = await client.get_prompt(prompt.name, filled(prompt.name, optional=optional))
                [message] = result.messages
                assert message.role == "user" and message.content.type == "text"
                named = names_in(message.content.text)
                assert named <= set(offer), f"{prompt.name} names {named - set(offer)}"
                assert named & set(declared.needs), "the text asks for a tool that does the job"


def test_read_only_leaves_out_the_prompts_that_change_the_portal() -> None:
    """Concretely, beside the derived expectations above: logging a call and adding a line write."""
    assert {prompt.name for prompt in PROMPTS} - {p.name for p in offered_prompts(ToolOffer.select(["all"]))} == set()
    read_only = {prompt.name for prompt in offered_prompts(ToolOffer.select(["all"], read_only=True))}
    assert "log_a_call" not in read_only and "connect_pbx_line" not in read_only
    assert {"call_report", "missed_calls", "who_called"} <= read_only
    assert [p.name for p in offered_prompts(ToolOffer.select(["reference"]))] == []


@pytest.mark.anyio
async def test_a_prompt_text_carries_the_dates_and_arguments_the_tools_take(module_sandbox: RunningSandbox) -> None:
    """The report's dates are the named period's, and the model can run what the text says with them."""
    async with stdio_session(webhook_env(module_sandbox), "--toolsets", "all") as client:
        text = await prompt_text(client, "call_report", {"period": "Last  7 Days", "group_by": "week"})
        start, end = span_of("last 7 days") or ()
        assert f'"from": "{start.isoformat()}", "to": "{end.isoformat()}"' in text
        assert 'group_by ["week"]' in text
        arguments = {"from": str(start), "to": str(end), "group_by": ["week"]}
        report = ok(await client.call_tool("get_call_analytics", arguments))
        assert report["groups"] is not None

        unnamed = await prompt_text(client, "call_report", {"period": "the first quarter"})
        assert "the first quarter" in unnamed and 'group_by ["day"]' in unnamed

        missed = await prompt_text(client, "missed_calls", {"period": "yesterday", "line": "+1 555 0199"})
        assert '"CALL_FAILED_CODE": "304"' in missed and '"PORTAL_NUMBER": "+1 555 0199"' in missed

        logged = await prompt_text(client, "log_a_call", filled("log_a_call"))
        assert "USER_ID 2" in logged and "TYPE 2" in logged and "DURATION 95" in logged


async def prompt_text(client: Client, name: str, arguments: dict[str, str]) -> str:
    [message] = (await client.get_prompt(name, arguments)).messages
    assert message.content.type == "text"
    return message.content.text


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_bad_prompt_requests_are_invalid_params(module_sandbox: RunningSandbox, mode: str) -> None:
    async with stdio_session(webhook_env(module_sandbox), "--read-only", mode=mode) as client:
        cases: list[tuple[str, dict[str, str], str]] = [
            ("call_report", {}, "call_report needs period"),
            ("call_report", {"period": "  "}, "call_report needs period"),  # blank is not given
            ("who_called", {"phone": "+1 906 219 5047", "colour": "red"}, "who_called takes no colour"),
            ("log_a_call", filled("log_a_call"), "no prompt named 'log_a_call'"),  # not offered when read-only
        ]
        for name, arguments, message in cases:
            with pytest.raises(MCPError) as raised:
                await client.get_prompt(name, arguments)
            assert raised.value.error.code == -32602 and message in raised.value.error.message


class PromptChanges:
    def __init__(self) -> None:
        self.count = 0
        self.arrived = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, PromptListChangedNotification):
            self.count += 1
            self.arrived.set()


async def prompt_names(client: Client) -> list[str]:
    return [prompt.name for prompt in (await client.list_prompts(cache_mode="bypass")).prompts]


def expected_prompts(toolsets: list[str]) -> list[str]:
    return [prompt.name for prompt in offered_prompts(ToolOffer.select(toolsets, dynamic=True))]


@pytest.mark.anyio
async def test_enabling_a_toolset_lists_its_prompts_over_the_handshake_protocol(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    changes = PromptChanges()
    env = app_env(sandbox, token_file)
    args = ("--toolsets", "external_lines", "--dynamic-toolsets")
    async with stdio_session(env, *args, message_handler=changes) as client:
        capabilities = client.server_capabilities
        assert capabilities.prompts is not None and capabilities.prompts.list_changed is True
        assert await prompt_names(client) == expected_prompts(["external_lines"]) == ["connect_pbx_line"]
        ok(await client.call_tool("enable_toolset", {"toolset": "statistics"}))
        with anyio.fail_after(10):
            await changes.arrived.wait()
        assert await prompt_names(client) == expected_prompts(["external_lines", "statistics"])
        assert {"call_report", "missed_calls"} <= set(await prompt_names(client))

        ok(await client.call_tool("enable_toolset", {"toolset": "sip"}))  # no prompt needs SIP tools
        await anyio.sleep(0.2)  # a stray notification would arrive by now
        assert changes.count == 1, "only a change of the prompts is announced"


@pytest.mark.anyio
async def test_enabling_a_toolset_lists_its_prompts_over_the_2026_07_28_protocol(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    env = app_env(sandbox, token_file)
    async with stdio_session(env, "--toolsets", "external_lines", "--dynamic-toolsets", mode="auto") as client:
        assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
        async with client.listen(prompts_list_changed=True) as subscription:
            ok(await client.call_tool("enable_toolset", {"toolset": "statistics"}))
            with anyio.fail_after(10):
                event = await subscription.__anext__()
        assert type(event).__name__ == "PromptsListChanged"
        assert await prompt_names(client) == expected_prompts(["external_lines", "statistics"])


# --- completion ---


async def complete(client: Client, prompt: str, argument: str, typed: str) -> Any:
    result = await client.complete(PromptReference(type="ref/prompt", name=prompt), {"name": argument, "value": typed})
    return result.completion


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_completion_offers_periods_groupings_lines_and_users_by_prefix(
    sandbox: RunningSandbox, token_file: Path, mode: str
) -> None:
    async with stdio_session(app_env(sandbox, token_file), "--toolsets", "all", mode=mode) as client:
        assert client.server_capabilities.completions is not None
        every_period = await complete(client, "call_report", "period", "")
        assert every_period.values == list(PERIODS) and every_period.total == len(PERIODS)
        assert every_period.has_more is False
        last = await complete(client, "missed_calls", "period", "LAST")
        assert last.values == [name for name in PERIODS if name.startswith("last")]
        assert (await complete(client, "call_report", "period", "7")).values == ["last 7 days"]  # a word begins
        assert (await complete(client, "call_report", "group_by", "h")).values == ["hour"]

        # Users: the portal's active ones, ID first; a last name completes too.
        users = (await complete(client, "log_a_call", "user", "")).values
        assert users == ["1 Admin Sandbox", "2 Olivia Operator", "4 Sam Sales", "5 Nora Night"]
        assert (await complete(client, "log_a_call", "user", "oper")).values == ["2 Olivia Operator"]

        # Lines: the external lines the portal has, typed with or without the +.
        ok(await client.call_tool("add_external_line", {"NUMBER": "+1 555 0199", "NAME": "Office PBX"}))
        external = ok(await client.call_tool("list_external_lines", {}))
        numbers = [line["NUMBER"] for line in external]
        assert "+1 555 0199" in numbers
        assert (await complete(client, "log_a_call", "line", "")).values == numbers
        assert "+1 555 0199" in (await complete(client, "log_a_call", "line", "1 555")).values
        assert "+1 555 0199" in (await complete(client, "log_a_call", "line", "+15550")).values
        # The report's line also takes the outgoing lines' ids.
        outgoing = list(ok(await client.call_tool("list_outgoing_lines", {})))
        assert (await complete(client, "call_report", "line", "")).values == numbers + [
            str(line) for line in outgoing if str(line) not in numbers
        ]

        # Read once and reused for a short while: a line added now shows after the cache expires.
        ok(await client.call_tool("add_external_line", {"NUMBER": "+1 555 0177"}))
        assert "+1 555 0177" not in (await complete(client, "log_a_call", "line", "")).values

        # Nothing to complete is an empty answer, not an error.
        assert (await complete(client, "who_called", "phone", "+1")).values == []
        assert (await complete(client, "call_report", "colour", "r")).values == []
        assert (await complete(client, "no_such_prompt", "period", "")).values == []


@pytest.mark.anyio
async def test_completion_stops_at_the_limit_and_says_there_is_more(token_file: Path) -> None:
    """A portal with more users than a completion may carry: MAX_VALUES of them, and has_more, read page by page."""
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as sandbox:
        with sandbox.portal.lock:
            for user_id in range(10, 10 + 2 * MAX_VALUES):
                sandbox.portal.users[user_id] = SandboxUser(user_id, "Agent", f"Number{user_id}")
        async with stdio_session(app_env(sandbox, token_file)) as client:
            everyone = await complete(client, "log_a_call", "user", "")
            assert len(everyone.values) == MAX_VALUES and everyone.has_more is True and everyone.total is None
            assert everyone.values[:4] == ["1 Admin Sandbox", "2 Olivia Operator", "4 Sam Sales", "5 Nora Night"]
            # Fixed choices are all there is: the total is known.
            period = await complete(client, "call_report", "period", "this")
            assert period.values == ["this week", "this month"] and period.total == 2 and period.has_more is False


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_portal_error_completes_nothing_and_breaks_nothing(mode: str) -> None:
    """A webhook without the `user` scope: users complete to nothing, the rest still completes, and prompts work."""
    config = SandboxConfig(rate_limit=1000.0, rate_burst=10000, webhook_scopes="telephony,call,crm")
    with start_sandbox(config) as sandbox:
        async with stdio_session(webhook_env(sandbox), mode=mode) as client:
            users = await complete(client, "log_a_call", "user", "")
            assert users.values == [] and users.has_more is False
            assert (await complete(client, "log_a_call", "direction", "in")).values == ["incoming"]
            assert await prompt_text(client, "log_a_call", filled("log_a_call", optional=False))
