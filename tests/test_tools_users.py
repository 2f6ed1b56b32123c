"""`get_user_telephony_settings` and `activate_user_phone` through the real server over stdio, against the
sandbox's `voximplant.user.*`: settings of one user or a list, SIP passwords masked, the administrator's approval
answers with their hint, the webhook refusal (disagreements.md #3), and the permission failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from b24_telephony_mcp.bitrix.errors import LOCAL_APP_HINT
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.sandbox.methods.users import UserTelephony
from b24_telephony_mcp.tools.base import PASSWORD_MASK
from support import app_env, stdio_session, text_of, webhook_env
from test_tools import ToolCaller, assert_core, assert_local

pytestmark = pytest.mark.anyio

GET = "get_user_telephony_settings"
ACTIVATE = "activate_user_phone"


@asynccontextmanager
async def users_session(env: dict[str, str]) -> AsyncIterator[ToolCaller]:
    async with stdio_session(env, "--toolsets", "users") as client:
        listed = (await client.list_tools()).tools
        assert [tool.name for tool in listed] == [GET, ACTIVATE, "run_batch"]  # run_batch: every selection
        yield ToolCaller(client, {tool.name: tool.output_schema for tool in listed if tool.output_schema})


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["ID"]: row for row in rows}


async def test_settings_of_one_user_or_a_list(sandbox: RunningSandbox, token_file: Path) -> None:
    async with users_session(app_env(sandbox, token_file)) as tools:
        [admin] = await tools.ok(GET, {"USER_ID": 1})
        assert admin == {
            "ID": "1",
            "DEFAULT_LINE": None,
            "PHONE_ENABLED": "Y",
            "SIP_SERVER": "ip.b24-sandbox.bitrixphone.com",
            "SIP_LOGIN": "phone1",
            "SIP_PASSWORD": PASSWORD_MASK,  # never the password itself
            "INNER_NUMBER": "100",
        }
        # A list, numbers as text, an unknown id (skipped, as CUser::GetList does) and an inactive user.
        rows = by_id(await tools.ok(GET, {"USER_ID": ["2", 4, 3, 999]}))
        assert sorted(rows) == ["2", "3", "4"]
        assert (rows["2"]["DEFAULT_LINE"], rows["2"]["INNER_NUMBER"], rows["2"]["SIP_PASSWORD"]) == (
            "reg133788",
            "101",
            PASSWORD_MASK,
        )
        assert (rows["4"]["PHONE_ENABLED"], rows["4"]["SIP_PASSWORD"]) == ("N", None)  # no password: null stays
        assert (await tools.ok(GET, {"USER_ID": "5"}))[0]["PHONE_ENABLED"] is None  # never set up
        assert_local(await tools.error(GET, {}), "USER_ID")  # "Parameter USER_ID is not set" cannot be sent
        assert_local(await tools.error(GET, {"USER_ID": []}), "USER_ID")
        assert_local(await tools.error(GET, {"USER_ID": [1.5]}), "USER_ID")
        everyone = text_of(await tools.call(GET, {"USER_ID": [1, 2, 3, 4, 5]}))
    passwords = [settings.sip_password for settings in sandbox.portal.state(UserTelephony).settings.values()]
    assert len([password for password in passwords if password]) == 3
    assert not [password for password in passwords if password and password in everyone]


async def test_approval_answers_carry_the_hint_and_come_after_the_permission_check(
    sandbox: RunningSandbox, token_file: Path
) -> None:
    async with users_session(app_env(sandbox, token_file)) as tools:
        sandbox.portal.config.user_get_confirmation = "waiting"
        waiting = await tools.error(GET, {"USER_ID": 1})
        assert (waiting["code"], waiting["description"], waiting["http_status"]) == (
            "METHOD_CONFIRM_WAITING",
            "Waiting for confirmation",
            401,
        )
        assert waiting["retryable"] is False
        for phrase in ("administrator must approve", "once", "notification", "Bitrix24"):
            assert phrase in waiting["hint"]
        sandbox.portal.config.user_get_confirmation = "denied"
        denied = await tools.error(GET, {"USER_ID": [1, 2]})
        assert (denied["code"], denied["description"], denied["http_status"], denied["retryable"]) == (
            "METHOD_CONFIRM_DENIED",
            "Method call denied",
            403,
            False,
        )
        assert "denied" in denied["hint"] and "administrator" in denied["hint"]
        sandbox.portal.config.user_get_confirmation = "approved"  # the administrator allowed it
        assert by_id(await tools.ok(GET, {"USER_ID": [1, 2]})).keys() == {"1", "2"}
        # The caller's permission to query those users is checked before the approval.
        sandbox.portal.state(UserTelephony).modify[1] = "own"
        sandbox.portal.config.user_get_confirmation = "waiting"
        refused = await tools.error(GET, {"USER_ID": [2, 4]})
        assert (refused["code"], refused["description"], refused["http_status"]) == (
            "ACCESS_DENIED",
            "Access denied! You have no permission to query selected users",
            403,
        )
        assert (await tools.error(GET, {"USER_ID": [1, 2]}))["code"] == "METHOD_CONFIRM_WAITING"  # own: passes


async def test_a_webhook_is_refused_with_the_application_hint(sandbox: RunningSandbox) -> None:
    """disagreements.md #3: requestConfirmation needs a client id, so a webhook gets 403 ACCESS_DENIED."""
    async with users_session(webhook_env(sandbox)) as tools:
        error = await tools.error(GET, {"USER_ID": 1})
        assert (error["code"], error["description"], error["http_status"], error["retryable"]) == (
            "ACCESS_DENIED",
            "Access denied! Application context required",
            403,
            False,
        )
        assert error["hint"] == LOCAL_APP_HINT
        assert await tools.ok(ACTIVATE, {"USER_ID": 4}) == 1  # activatePhone has no such check


async def test_activate_user_phone(sandbox: RunningSandbox, token_file: Path) -> None:
    settings = sandbox.portal.state(UserTelephony).settings
    async with users_session(app_env(sandbox, token_file)) as tools:
        assert settings[4].enabled == "N"
        assert await tools.ok(ACTIVATE, {"USER_ID": "4"}) == 1  # a number as text
        assert settings[4].enabled == "Y" and settings[4].sip_password
        row = (await tools.ok(GET, {"USER_ID": 4}))[0]
        assert (row["PHONE_ENABLED"], row["SIP_PASSWORD"]) == ("Y", PASSWORD_MASK)
        assert await tools.ok(ACTIVATE, {"USER_ID": 4}) == 1  # idempotent
        assert_core(await tools.error(ACTIVATE, {"USER_ID": 0}), "Parameter USER_ID is not set")
        sandbox.portal.state(UserTelephony).modify[1] = "own"
        assert_core(await tools.error(ACTIVATE, {"USER_ID": 5}), "You are not allowed to modify user's settings")
        assert settings.get(5) is None or settings[5].enabled != "Y"
        assert await tools.ok(ACTIVATE, {"USER_ID": 1}) == 1  # their own phone
        assert_local(await tools.error(ACTIVATE, {"USER_ID": [4]}), "USER_ID")
