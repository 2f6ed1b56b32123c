"""Hearing the portal, through the real server over stdio against the sandbox: binding the telephony events,
the offline queue drained into the store and read by cursor (waiting, with progress, cancellable), no event lost
or doubled across a SIGKILL, the resource subscription, and click-to-call finished with the event's CALL_ID."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from b24_telephony_mcp.events.records import EVENT_NAMES
from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, error_of, ok, stdio_session, webhook_env

pytestmark = pytest.mark.anyio

OPERATOR = 2
TOOLSETS = ("--toolsets", "external_lines,external_calls,events")
_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A number no CRM entity has and no other click dials (clicks of one number would share an active call)."""
    return f"+7 902 {next(_numbers):07d}"


def events_env(sandbox: RunningSandbox, state: Path, **extra: str) -> dict[str, str]:
    return app_env(sandbox, state / "tokens.json", B24_EVENT_POLL_WAITING="0.2", B24_EVENT_POLL_IDLE="0.5", **extra)


@asynccontextmanager
async def events_session(sandbox: RunningSandbox, state: Path, **extra: str) -> AsyncIterator[Client]:
    async with stdio_session(events_env(sandbox, state, **extra), *TOOLSETS) as client:
        yield client


async def read(client: Client, **arguments: Any) -> dict[str, Any]:
    page: dict[str, Any] = ok(await client.call_tool("get_telephony_events", arguments))
    return page


async def test_binding_is_idempotent_and_reports_what_is_bound(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with events_session(sandbox, tmp_path) as client:
        first = ok(await client.call_tool("watch_telephony_events", {}))
        assert first["changed"] == list(EVENT_NAMES)
        again = ok(await client.call_tool("watch_telephony_events", {}))
        assert again["changed"] == []
        assert sorted(row["event"] for row in again["bound"]) == sorted(name.upper() for name in EVENT_NAMES)
        gone = ok(await client.call_tool("watch_telephony_events", {"event": ["OnVoximplantCallInit"], "unbind": True}))
        assert gone["changed"] == ["OnVoximplantCallInit"]
        assert "ONVOXIMPLANTCALLINIT" not in {row["event"] for row in gone["bound"]}


async def test_a_click_reaches_a_waiting_reader(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with events_session(sandbox, tmp_path) as client:
        ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
        empty = await read(client)
        assert empty["events"] == []
        pages: list[dict[str, Any]] = []

        async def wait() -> None:
            pages.append(await read(client, cursor=empty["cursor"], wait_seconds=20))

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.sleep(0.5)
            click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
        [event] = pages[0]["events"]
        assert event["event"] == "OnExternalCallStart"
        assert event["data"]["CALL_ID"] == click["CALL_ID"]
        assert event["data"]["USER_ID"] == OPERATOR  # typed as the docs say, though posted as text
        assert pages[0]["cursor"] == event["cursor"]
        assert (await read(client, cursor=event["cursor"]))["events"] == []


async def test_a_webhook_cannot_bind_events(sandbox: RunningSandbox) -> None:
    async with stdio_session(webhook_env(sandbox), *TOOLSETS) as client:
        error = error_of(await client.call_tool("watch_telephony_events", {}))
        assert error["code"] == "WRONG_AUTH_TYPE"
