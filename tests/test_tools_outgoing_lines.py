"""The `outgoing_lines` toolset through the real server over stdio against the sandbox portal.

Sandbox seeds: the rented number 74951234567 (config 1) and the SIP connections of the docs' example (see
test_tools_sip.py); the default outgoing line is reg150907.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.sandbox.methods.sip import LineConfigs
from support import app_env, webhook_env
from test_tools import ToolCaller
from test_tools_sip import ACCESS_HINT, assert_portal_error, operator_sandbox, session

pytestmark = pytest.mark.anyio

__all__ = ["operator_sandbox"]  # the fixture, imported for use here

SEEDED_LINES = {
    "74951234567": "+7 495 123-45-67",
    "reg150907": "SIP line",
    "sip7": "Office PBX 1",
    "reg151083": "Cloud PBX (9)",
    "sip11": "Office PBX (11)",
    "reg151085": "SIP line 2",
}


def default_line(sandbox: RunningSandbox) -> str:
    return sandbox.portal.state(LineConfigs).current_line()


# One portal and one server (with the sip toolset too) for the tests that need nothing special; each starts from the
# seeds again (`lines`).
@pytest.fixture(scope="module")
def portal(module_sandbox: RunningSandbox) -> RunningSandbox:
    return module_sandbox


@pytest.fixture(scope="module")
async def tools(portal: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ToolCaller]:
    token_file = tmp_path_factory.mktemp("lines") / "tokens.json"
    async with session(app_env(portal, token_file), "outgoing_lines,sip") as caller:
        yield caller


@pytest.fixture
def lines(portal: RunningSandbox) -> LineConfigs:
    """The shared portal's line tables, back at the seeds; its request counts from zero."""
    portal.portal.reset_state(LineConfigs)
    portal.portal.reset_stats()
    return portal.portal.state(LineConfigs)


async def test_list_and_read_the_default(tools: ToolCaller, lines: LineConfigs) -> None:
    assert await tools.ok("list_outgoing_lines", {}) == SEEDED_LINES
    assert await tools.ok("get_default_outgoing_line", {}) == "reg150907"


async def test_set_the_default_line(tools: ToolCaller, lines: LineConfigs, portal: RunningSandbox) -> None:
    assert await tools.ok("set_default_outgoing_line", {"LINE_ID": "sip7"}) == 1
    assert await tools.ok("get_default_outgoing_line", {}) == "sip7"
    # A rented number sent as a JSON number is taken as its text.
    assert await tools.ok("set_default_outgoing_line", {"LINE_ID": 74951234567}) == 1
    assert lines.current_line() == "74951234567"
    # The portal answers 1 to an unknown LINE_ID and changes nothing; the tool reads the default back.
    error = await tools.error("set_default_outgoing_line", {"LINE_ID": "reg999"})
    assert error["code"] == "INVALID_ARGUMENTS" and error["method"] == "voximplant.line.outgoing.set"
    assert "'reg999' is not a line" in error["description"] and "'74951234567'" in error["description"]
    assert "list_outgoing_lines" in error["hint"]
    assert await tools.ok("set_default_outgoing_line", {"LINE_ID": "LINK_BASE_NUMBER"}) == 1
    assert lines.current_line() == "LINK_BASE_NUMBER"
    requests = portal.portal.stats.requests
    assert requests["voximplant.line.outgoing.set"] == 4 and requests["voximplant.line.outgoing.get"] == 5


async def test_set_a_sip_connection_as_the_default(tools: ToolCaller, lines: LineConfigs) -> None:
    assert await tools.ok("set_default_outgoing_sip_line", {"CONFIG_ID": 9}) == 1
    assert await tools.ok("get_default_outgoing_line", {}) == "reg151083"
    # Any line configuration, not only this application's (disagreements.md #28); the id as text is fine.
    assert await tools.ok("set_default_outgoing_sip_line", {"CONFIG_ID": "11"}) == 1
    assert lines.current_line() == "sip11"
    error = await tools.error("set_default_outgoing_sip_line", {"CONFIG_ID": 999})
    assert_portal_error(error, "ERROR_ARGUMENT", "Specified CONFIG_ID is not found")
    assert "CONFIG_ID" in error["hint"]
    assert lines.current_line() == "sip11"


async def test_lines_follow_the_sip_connections(tools: ToolCaller, lines: LineConfigs) -> None:
    added = await tools.ok("add_sip_connection", {"SERVER": "pbx.lab", "LOGIN": "lab", "TITLE": 'R&D "lab"'})
    listed = await tools.ok("list_outgoing_lines", {})
    # The portal sends the names HTML-escaped (htmlspecialcharsbx).
    assert listed[f"reg{added['REG_ID']}"] == "R&amp;D &quot;lab&quot;"
    assert await tools.ok("delete_sip_connection", {"CONFIG_ID": 3}) == 1
    assert "reg150907" not in await tools.ok("list_outgoing_lines", {})
    # The default line is gone: the portal falls back to its linked number, and the next line added takes over.
    assert await tools.ok("get_default_outgoing_line", {}) == "LINK_BASE_NUMBER"
    office = await tools.ok("add_sip_connection", {"SERVER": "pbx.local", "LOGIN": "o", "TYPE": "office"})
    assert await tools.ok("get_default_outgoing_line", {}) == office["INCOMING_LOGIN"] == lines.current_line()


async def test_access_denied_without_the_line_permission(operator_sandbox: RunningSandbox) -> None:
    calls = {
        "list_outgoing_lines": {},
        "get_default_outgoing_line": {},
        "set_default_outgoing_line": {"LINE_ID": "sip7"},
        "set_default_outgoing_sip_line": {"CONFIG_ID": 7},
    }
    async with session(webhook_env(operator_sandbox), "outgoing_lines") as tools:
        for name, arguments in calls.items():
            error = await tools.error(name, arguments)
            assert_portal_error(error, "ACCESS_DENIED", "Access denied!", 403)
            assert ACCESS_HINT in error["hint"], name
    assert default_line(operator_sandbox) == "reg150907"


def test_sandbox_set_answers_1_even_when_nothing_changes(sandbox: RunningSandbox) -> None:
    with httpx2.Client(timeout=5) as http:
        for params in ({"LINE_ID": "reg999"}, {}):
            response = http.post(sandbox.webhook_url + "voximplant.line.outgoing.set", json=params)
            assert (response.status_code, response.json()["result"]) == (200, 1)
        # Param names are matched case-insensitively, as the portal upper-cases them.
        http.post(sandbox.webhook_url + "voximplant.line.outgoing.set", json={"line_id": "sip7"})
    assert default_line(sandbox) == "sip7"
