"""The `sip` toolset through the real server over stdio against the sandbox portal, plus the sandbox's own
source-faithful answers over plain HTTP.

Sandbox seeds (the docs' examples): this application's cloud connections CONFIG_ID 3 (REG_ID 150907, "SIP line",
registered) and 9 (REG_ID 151083, untitled, registration error 502) and office connection 7 ("Office PBX 1"); two
made in the portal's UI, office 11 and cloud 13 (REG_ID 151085), which are not the application's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.methods.sip import OFFICE, LineConfigs, SipConnection
from b24_telephony_mcp.tools.base import PASSWORD_MASK
from support import app_env, stdio_session, text_of, webhook_env
from test_tools import ToolCaller, assert_local

pytestmark = pytest.mark.anyio

SEEDED_PASSWORDS = ("N7K4mCG9", "0ff1ce-Pbx-Secret", "71747523265mb091225eb31996a4a225", "Cl0ud-Pbx-Secret")
NEW_PASSWORD = "Zq7-new-sip-pass-4410"
OTHER_PASSWORD = "Wv3-changed-sip-pass-9921"
ACCESS_HINT = "Manage numbers - modify"


@asynccontextmanager
async def session(
    env: dict[str, str], toolsets: str = "sip", errlog: IO[str] | None = None
) -> AsyncIterator[ToolCaller]:
    async with stdio_session(env, "--toolsets", toolsets, errlog=errlog) as client:
        listed = (await client.list_tools()).tools
        schemas = {tool.name: tool.output_schema for tool in listed if tool.output_schema is not None}
        yield ToolCaller(client, schemas)


def configs(sandbox: RunningSandbox) -> LineConfigs:
    return sandbox.portal.state(LineConfigs)


# One portal and one server for the tests that need nothing special; each starts from the seeds again (`lines`).
@pytest.fixture(scope="module")
def portal(module_sandbox: RunningSandbox) -> RunningSandbox:
    return module_sandbox


@pytest.fixture(scope="module")
async def tools(portal: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ToolCaller]:
    async with session(app_env(portal, tmp_path_factory.mktemp("sip") / "tokens.json")) as caller:
        yield caller


@pytest.fixture
def lines(portal: RunningSandbox) -> LineConfigs:
    """The shared portal's line tables, back at the seeds."""
    portal.portal.reset_state(LineConfigs)
    return configs(portal)


def assert_portal_error(error: dict[str, Any], code: str, description: str, status: int = 400) -> None:
    assert (error["code"], error["description"], error["http_status"]) == (code, description, status)
    assert error["retryable"] is False


async def test_cloud_connection_lifecycle(tools: ToolCaller, lines: LineConfigs) -> None:
    added = await tools.ok(
        "add_sip_connection",
        {"SERVER": "https://sip.example.net", "LOGIN": "trunk7", "PASSWORD": NEW_PASSWORD, "TITLE": "Trunk"},
    )
    config_id = int(added["CONFIG_ID"])
    assert added["TYPE"] == "cloud" and added["TITLE"] == "Trunk" and added["PASSWORD"] == PASSWORD_MASK
    assert added["SERVER"] == "sip.example.net"  # the portal strips the scheme
    assert isinstance(added["REG_ID"], int) and "INCOMING_PASSWORD" not in added
    assert added["REGISTRATION_STATUS_CODE"] is None
    reg_id = added["REG_ID"]
    status = await tools.ok("get_sip_registration_status", {"REG_ID": reg_id})
    assert (status["REG_ID"], status["STATUS_CODE"], status["STATUS_RESULT"]) == (reg_id, 200, "success")

    assert await tools.ok("update_sip_connection", {"CONFIG_ID": config_id, "TITLE": "Main trunk"}) == 1
    assert await tools.ok("update_sip_connection", {"CONFIG_ID": str(config_id), "LOGIN": "trunk8"}) == 1
    row = (await tools.ok("list_sip_connections", {"FILTER": {"CONFIG_ID": config_id}}))[0]
    assert (row["TITLE"], row["LOGIN"], row["REGISTRATION_STATUS_CODE"]) == ("Main trunk", "trunk8", "0")
    assert "ID" not in row and "APP_ID" not in row and "INCOMING_LOGIN" not in row

    assert await tools.ok("delete_sip_connection", {"CONFIG_ID": config_id}) == 1
    assert_portal_error(
        await tools.error("delete_sip_connection", {"CONFIG_ID": config_id}),
        "ERROR_NOT_FOUND",
        "Specified CONFIG_ID is not found",
    )
    assert config_id not in lines.connections
    assert reg_id not in lines.registrations


async def test_office_connection_gets_incoming_credentials(tools: ToolCaller, lines: LineConfigs) -> None:
    added = await tools.ok(
        "add_sip_connection",
        {"SERVER": "pbx.office.local", "LOGIN": "pbx", "PASSWORD": NEW_PASSWORD, "TYPE": "OFFICE"},
    )
    config_id = int(added["CONFIG_ID"])
    assert added["TYPE"] == "office" and "REG_ID" not in added  # TYPE is lower-cased, as the portal does
    assert added["INCOMING_LOGIN"] == f"sip{config_id}" and added["INCOMING_SERVER"].endswith(".bitrixphone.com")
    assert added["PASSWORD"] == added["INCOMING_PASSWORD"] == PASSWORD_MASK
    assert lines.connections[config_id].incoming_password not in (None, PASSWORD_MASK)


async def test_add_errors(tools: ToolCaller, lines: LineConfigs) -> None:
    assert_portal_error(
        await tools.error("add_sip_connection", {"SERVER": " ", "LOGIN": ""}),
        "CHECK_FIELDS_ERROR",
        "Server address not specified<br> Login for connecting to the server not specified",
    )
    assert_local(
        await tools.error("add_sip_connection", {"SERVER": "a", "LOGIN": "b", "PASSWORD": "x" * 101}), "PASSWORD"
    )
    assert_local(await tools.error("add_sip_connection", {"SERVER": "a", "LOGIN": "b", "TYPE": "pbx"}), "TYPE")
    taken = await tools.error("add_sip_connection", {"SERVER": "a", "LOGIN": "b", "TITLE": "sip LINE"})
    assert_portal_error(taken, "TITLE_EXISTS", "The specified connection name is already registered in the system")
    assert "pick another TITLE" in taken["hint"]
    # 3 cloud connections are seeded, one of them made in the UI: the limit of 10 counts the whole portal.
    for n in range(7):
        await tools.ok("add_sip_connection", {"SERVER": "sip.example.net", "LOGIN": f"line{n}"})
    full = await tools.error("add_sip_connection", {"SERVER": "sip.example.net", "LOGIN": "one-more"})
    assert_portal_error(full, "MAX_CLOUD_PBX", "You cannot connect more than 10 virtual PBXs.")
    assert "TYPE office" in full["hint"]
    assert await tools.ok("add_sip_connection", {"SERVER": "pbx.local", "LOGIN": "x", "TYPE": "office"})
    assert sum(conn.type == "cloud" for conn in lines.connections.values()) == 10


async def test_update_errors(tools: ToolCaller, lines: LineConfigs) -> None:
    # The portal answers 1 and changes nothing without a field (disagreements.md #13): refused here.
    assert_local(await tools.error("update_sip_connection", {"CONFIG_ID": 3}), "TITLE or SERVER or LOGIN or PASSWORD")
    # Connection 11 was made in the portal's UI: not this application's.
    foreign = await tools.error("update_sip_connection", {"CONFIG_ID": 11, "TITLE": "Mine"})
    assert_portal_error(foreign, "ERROR_NOT_FOUND", "Specified CONFIG_ID is not found", 404)
    assert "list_sip_connections" in foreign["hint"]
    assert_portal_error(
        await tools.error("update_sip_connection", {"CONFIG_ID": 9, "TITLE": "Office PBX 1"}),
        "TITLE_EXISTS",
        "The specified connection name is already registered in the system",
    )
    assert_portal_error(
        await tools.error("update_sip_connection", {"CONFIG_ID": 9, "SERVER": "", "LOGIN": "x" * 101}),
        "CHECK_FIELDS_ERROR",
        "Server address not specified<br> Login for connecting to the server cannot exceed 100 characters",
    )
    assert_local(await tools.error("update_sip_connection", {"CONFIG_ID": 9, "PASSWORD": "p" * 101}), "PASSWORD")
    assert lines.connections[9].title == ""  # nothing changed
    assert lines.connections[11].title == ""


async def test_list_filters_sorts_and_keeps_fields(tools: ToolCaller, lines: LineConfigs) -> None:
    everything = await tools.call("list_sip_connections", {})
    rows = everything.structured_content["result"]
    assert [row["CONFIG_ID"] for row in rows] == ["3", "7", "9"]  # 11 and 13 are not this application's
    assert everything.structured_content["total"] == 3 and "next" not in everything.structured_content
    assert rows[0]["REG_ID"] == "150907" and "INCOMING_LOGIN" not in rows[0]
    assert rows[1]["INCOMING_LOGIN"] == "sip7" and "REG_ID" not in rows[1]
    assert {row["PASSWORD"] for row in rows} == {PASSWORD_MASK} and rows[1]["INCOMING_PASSWORD"] == PASSWORD_MASK

    async def config_ids(**arguments: Any) -> list[str]:
        return [row["CONFIG_ID"] for row in await tools.ok("list_sip_connections", arguments)]

    assert await config_ids(FILTER={"type": "cloud"}) == ["3", "9"]  # keys are upper-cased
    assert await config_ids(FILTER={">=CONFIG_ID": 7}) == ["7", "9"]
    assert await config_ids(FILTER={"CONFIG_ID": [3, 9]}) == ["3", "9"]
    assert await config_ids(FILTER={"%SERVER": "PROVIDER"}) == ["7", "9"]
    assert await config_ids(FILTER={"!TYPE": "cloud"}) == ["7"]
    assert await config_ids(FILTER={"><REGISTRATION_STATUS_CODE": [100, 300]}) == ["3"]
    assert await config_ids(SORT="REGISTRATION_STATUS_CODE", ORDER="DESC") == ["9", "3", "7"]
    assert await config_ids(SORT="CONFIG_ID") == ["3", "7", "9"]  # SORT alone is ignored
    assert await tools.ok("list_sip_connections", {"fields": ["CONFIG_ID", "TYPE"], "FILTER": {"TYPE": "office"}}) == [
        {"CONFIG_ID": "7", "TYPE": "office"}
    ]
    # No rows: a bare [] without total (disagreements.md #14).
    empty = await tools.call("list_sip_connections", {"FILTER": {"TYPE": "none"}})
    assert empty.structured_content == {"result": []}
    unknown = await tools.error("list_sip_connections", {"FILTER": {"COLOUR": "red"}})
    assert (unknown["code"], unknown["http_status"]) == ("ERROR_CORE", 400)
    assert "`COLOUR`" in unknown["description"] and "FILTER key" in unknown["hint"]


async def test_list_pages_with_next(tools: ToolCaller, lines: LineConfigs) -> None:
    table = lines.connections
    for config_id in range(100, 157):  # 57 more of this application's connections: 60 in all
        table[config_id] = SipConnection(config_id, OFFICE, f"PBX {config_id}", "pbx.local", f"u{config_id}", None, 1)
    first = (await tools.call("list_sip_connections", {"fields": ["CONFIG_ID"]})).structured_content
    assert (len(first["result"]), first["total"], first["next"]) == (50, 60, 50)
    second = await tools.call("list_sip_connections", {"fields": ["CONFIG_ID"], "start": first["next"]})
    page = second.structured_content
    assert (len(page["result"]), page["total"], "next" in page) == (10, 60, False)
    assert page["result"][-1] == {"CONFIG_ID": "156"}
    beyond = (await tools.call("list_sip_connections", {"start": 100})).structured_content
    assert beyond == {"result": [], "total": 60}


async def test_registration_status(tools: ToolCaller, lines: LineConfigs) -> None:
    failing = await tools.ok("get_sip_registration_status", {"REG_ID": "151083"})
    assert failing == {
        "REG_ID": 151083,
        "LAST_UPDATED": "2026-03-12 09:11:02",
        "ERROR_MESSAGE": "Unable to resolve hostname",
        "STATUS_CODE": 502,
        "STATUS_RESULT": "error",
    }
    # Not restricted to this application's connections (disagreements.md #28): 151085 was made in the UI.
    assert (await tools.ok("get_sip_registration_status", {"REG_ID": 151085}))["STATUS_RESULT"] == "success"
    missing = await tools.error("get_sip_registration_status", {"REG_ID": 42})
    assert_portal_error(missing, "REG_ID_NOT_FOUND", "Settings not found")
    assert "office connections have none" in missing["hint"]
    # Without a password the provider refuses the registration; asking for the status caches it in the row.
    added = await tools.ok("add_sip_connection", {"SERVER": "sip.example.net", "LOGIN": "nopass"})
    status = await tools.ok("get_sip_registration_status", {"REG_ID": added["REG_ID"]})
    assert (status["STATUS_CODE"], status["STATUS_RESULT"], status["ERROR_MESSAGE"]) == (
        401,
        "error",
        "Unauthorized",
    )
    row = (await tools.ok("list_sip_connections", {"FILTER": {"REG_ID": added["REG_ID"]}}))[0]
    assert (row["REGISTRATION_STATUS_CODE"], row["REGISTRATION_ERROR_MESSAGE"]) == ("401", "Unauthorized")


async def test_connector_status(tools: ToolCaller, lines: LineConfigs) -> None:
    assert await tools.ok("get_sip_connector_status", {}) == {"FREE_MINUTES": 60, "PAID": False}
    lines.connector_paid_until = "2026-12-31T00:00:00+00:00"
    paid = await tools.ok("get_sip_connector_status", {})
    assert paid == {"FREE_MINUTES": 60, "PAID": True, "PAID_DATE_END": "2026-12-31T00:00:00+00:00"}


async def test_delete_keeps_a_connection_whose_registration_is_gone(tools: ToolCaller, lines: LineConfigs) -> None:
    del lines.registrations[151083]  # the backend lost connection 9's registration
    error = await tools.error("delete_sip_connection", {"CONFIG_ID": 9})
    assert_portal_error(error, "REG_ID_NOT_FOUND", "Settings not found")
    assert "telephony settings" in error["hint"]
    foreign = await tools.error("delete_sip_connection", {"CONFIG_ID": 13})  # made in the UI
    assert_portal_error(foreign, "ERROR_NOT_FOUND", "Specified CONFIG_ID is not found")
    assert await tools.ok("delete_sip_connection", {"CONFIG_ID": "7"}) == 1
    assert sorted(lines.connections) == [3, 9, 11, 13]


@pytest.fixture
def operator_sandbox() -> Iterator[RunningSandbox]:
    """A portal whose incoming webhook belongs to user 2, who is no administrator."""
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000, webhook_user_id=2)) as running:
        yield running


async def test_access_denied_without_the_line_permission(operator_sandbox: RunningSandbox) -> None:
    calls = {
        "add_sip_connection": {"SERVER": "a", "LOGIN": "b", "PASSWORD": NEW_PASSWORD},
        "update_sip_connection": {"CONFIG_ID": 3, "TITLE": "x"},
        "list_sip_connections": {},
        "delete_sip_connection": {"CONFIG_ID": 3},
        "get_sip_registration_status": {"REG_ID": 150907},
        "get_sip_connector_status": {},
    }
    async with session(webhook_env(operator_sandbox)) as tools:
        for name, arguments in calls.items():
            error = await tools.error(name, arguments)
            assert_portal_error(error, "ACCESS_DENIED", "Access denied!", 403)
            assert ACCESS_HINT in error["hint"], name
    assert 3 in configs(operator_sandbox).connections


async def test_sip_passwords_reach_no_result_and_no_log(
    sandbox: RunningSandbox, token_file: Path, tmp_path: Path
) -> None:
    errlog_path = tmp_path / "stderr.log"
    seen: list[str] = []
    with errlog_path.open("w", encoding="utf-8") as errlog:
        async with session(app_env(sandbox, token_file), errlog=errlog) as tools:
            calls: list[tuple[str, dict[str, Any]]] = [
                ("add_sip_connection", {"SERVER": "sip.example.net", "LOGIN": "a", "PASSWORD": NEW_PASSWORD}),
                (
                    "add_sip_connection",
                    {"SERVER": "pbx.local", "LOGIN": "b", "PASSWORD": NEW_PASSWORD, "TYPE": "office"},
                ),
                ("add_sip_connection", {"SERVER": "x", "LOGIN": "c", "PASSWORD": NEW_PASSWORD, "TITLE": "SIP line"}),
                ("update_sip_connection", {"CONFIG_ID": 3, "PASSWORD": OTHER_PASSWORD}),
                ("update_sip_connection", {"CONFIG_ID": 11, "PASSWORD": OTHER_PASSWORD}),  # fails: not ours
                ("list_sip_connections", {}),
            ]
            for name, arguments in calls:
                result = await tools.call(name, arguments)
                seen.append(text_of(result))
                seen.append(json.dumps(result.structured_content))
    stderr = errlog_path.read_text(encoding="utf-8")
    assert "add_sip_connection failed: TITLE_EXISTS" in stderr  # the log was written, at DEBUG
    office_incoming = next(
        conn for conn in configs(sandbox).connections.values() if conn.login == "b"
    ).incoming_password
    assert configs(sandbox).connections[3].password == OTHER_PASSWORD  # the update reached the portal
    for secret in (NEW_PASSWORD, OTHER_PASSWORD, office_incoming, *SEEDED_PASSWORDS):
        assert secret is not None
        assert all(secret not in text for text in seen), secret
        assert secret not in stderr, secret
    assert PASSWORD_MASK in seen[-2]


async def test_passwords_are_shown_when_revealing_is_switched_on(sandbox: RunningSandbox, token_file: Path) -> None:
    async with session(app_env(sandbox, token_file, B24_REVEAL_SIP_PASSWORDS="1")) as tools:
        added = await tools.ok("add_sip_connection", {"SERVER": "a.net", "LOGIN": "a", "PASSWORD": NEW_PASSWORD})
        rows = await tools.ok("list_sip_connections", {"fields": ["CONFIG_ID", "PASSWORD", "INCOMING_PASSWORD"]})
    assert added["PASSWORD"] == NEW_PASSWORD
    assert rows[0] == {"CONFIG_ID": "3", "PASSWORD": "N7K4mCG9"}
    assert rows[1]["INCOMING_PASSWORD"] == "71747523265mb091225eb31996a4a225"
    assert rows[-1] == {"CONFIG_ID": added["CONFIG_ID"], "PASSWORD": NEW_PASSWORD}  # still shown a call later


# --- the sandbox answers as the server source does, where the tools would not let a call through ---


class Rest:
    def __init__(self, sandbox: RunningSandbox, http: httpx2.Client) -> None:
        self.url, self.http, self.token = f"{sandbox.base_url}/rest/", http, sandbox.access_token

    def body(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(self.url + method, json=params, headers={"Authorization": f"Bearer {self.token}"})
        body: dict[str, Any] = response.json()
        body["status"] = response.status_code
        return body


@pytest.fixture
def rest(sandbox: RunningSandbox) -> Iterator[Rest]:
    with httpx2.Client(timeout=5) as http:
        yield Rest(sandbox, http)


def test_sandbox_update_without_fields_answers_1_and_changes_nothing(sandbox: RunningSandbox, rest: Rest) -> None:
    assert rest.body("voximplant.sip.update", {"CONFIG_ID": 9})["result"] == 1
    assert configs(sandbox).connections[9].title == ""
    # The CONFIG_ID is checked first: a foreign one is a 404 even without fields.
    assert rest.body("voximplant.sip.update", {"config_id": 11})["status"] == 404


def test_sandbox_ignores_an_order_other_than_asc_or_desc(rest: Rest) -> None:
    def ids(**params: Any) -> list[str]:
        return [row["CONFIG_ID"] for row in rest.body("voximplant.sip.get", params)["result"]]

    assert ids(SORT="CONFIG_ID", ORDER="DESC") == ["9", "7", "3"]
    assert ids(SORT="CONFIG_ID", ORDER="desc") == ["3", "7", "9"]
    assert ids(SORT="NO_SUCH_FIELD", ORDER="DESC") == ["3", "7", "9"]
    assert ids(FILTER={"APP_ID": "someone-else"}) == ["3", "7", "9"]  # APP_ID is forced to the caller's


def test_sandbox_webhook_sees_the_connections_made_without_an_application(sandbox: RunningSandbox) -> None:
    with httpx2.Client(timeout=5) as http:
        body = http.post(sandbox.webhook_url + "voximplant.sip.get", json={}).json()
    assert [row["CONFIG_ID"] for row in body["result"]] == ["11", "13"]
