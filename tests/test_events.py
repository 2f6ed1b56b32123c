"""Hearing the portal, through the real server over stdio against the sandbox: binding the telephony events,
the offline queue drained into the store and read by cursor (waiting, with progress, cancellable), no event lost
or doubled across a SIGKILL, the resource subscription, and click-to-call finished with the event's CALL_ID."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp_types import ResourceUpdatedNotification

from b24_telephony_mcp.events.records import EVENT_NAMES
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.serving.event_resource import EVENTS_URI
from redis_server import RedisServer
from support import (
    HttpServer,
    app_env,
    error_of,
    http_server,
    http_servers,
    http_session,
    ok,
    server_command,
    stdio_session,
    webhook_env,
)
from test_replicas import MCP_TOKEN as REPLICA_TOKEN
from test_replicas import replica_envs

pytestmark = pytest.mark.anyio

OPERATOR = 2
TOOLSETS = ("--toolsets", "external_lines,external_calls,events")
_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A number no CRM entity has and no other click dials (clicks of one number would share an active call)."""
    return f"+7 902 {next(_numbers):07d}"


def events_env(sandbox: RunningSandbox, state: Path, **extra: str) -> dict[str, str]:
    polls = {"B24_EVENT_POLL_WAITING": "0.2", "B24_EVENT_POLL_IDLE": "0.5"}
    return app_env(sandbox, state / "tokens.json", **{**polls, **extra})


@asynccontextmanager
async def events_session(sandbox: RunningSandbox, state: Path, **extra: str) -> AsyncIterator[Client]:
    async with stdio_session(events_env(sandbox, state, **extra), *TOOLSETS) as client:
        yield client


def rest_requests(sandbox: RunningSandbox) -> dict[str, int]:
    """The REST requests the portal served, but for the offline queue's polling."""
    return {method: n for method, n in sandbox.portal.stats.requests.items() if not method.startswith("event.")}


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


# --- click-to-call finished with the event's CALL_ID ---


async def test_a_clicked_call_is_finished_with_its_call_id_never_registered_again(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    async with events_session(sandbox, tmp_path) as client:
        ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
        phone = fresh_phone()
        sandbox.portal.click_to_call(OPERATOR, phone)
        [event] = (await read(client, wait_seconds=20))["events"]
        data = event["data"]
        calls_before = len(sandbox.portal.calls) + len(sandbox.portal.statistics)
        arguments = {
            "EXTERNAL_CALL_ID": f"agent-{data['CALL_ID']}",
            "CALL_ID": data["CALL_ID"],
            "USER_ID": data["USER_ID"],
            "PHONE_NUMBER": data["PHONE_NUMBER"],
            "TYPE": 1,
            "DURATION": 42,
        }
        sandbox.portal.stats.requests.clear()
        sandbox.portal.stats.batched.clear()
        logged = ok(await client.call_tool("log_external_call", arguments))
        assert logged["CALL_ID"] == data["CALL_ID"]
        assert logged["steps"]["finish"]["CALL_DURATION"] == 42
        assert rest_requests(sandbox) == {"batch": 1}, "finish alone, in one request"
        assert sandbox.portal.stats.batched.get("telephony.externalcall.register") is None
        assert len(sandbox.portal.calls) + len(sandbox.portal.statistics) == calls_before, "nothing registered"
        row = sandbox.portal.statistic(data["CALL_ID"])
        assert row is not None and (row.portal_user_id, row.call_duration) == (OPERATOR, 42)
        # A repeat answers from the journal; another CALL_ID under the same EXTERNAL_CALL_ID is refused.
        assert ok(await client.call_tool("log_external_call", arguments)) == logged
        assert rest_requests(sandbox) == {"batch": 1}
        other = error_of(await client.call_tool("log_external_call", {**arguments, "CALL_ID": "externalCall.x"}))
        assert other["code"] == "ALREADY_LOGGED"


# --- the online handler ---

MCP_TOKEN = "events-test-bearer-token"


@contextmanager
def events_http(sandbox: RunningSandbox, state: Path, **extra: str) -> Iterator[HttpServer]:
    env = events_env(sandbox, state, B24_MCP_AUTH_TOKEN=MCP_TOKEN, **extra)
    with http_server(env, "http", *TOOLSETS) as server:
        yield server


async def test_online_posts_are_kept_once_and_forgeries_refused(sandbox: RunningSandbox, tmp_path: Path) -> None:
    with events_http(sandbox, tmp_path, B24_APPLICATION_TOKEN=sandbox.config.application_token) as server:
        handler = f"{server.origin}/bitrix24/events"
        async with http_session(server.url, MCP_TOKEN) as client:
            ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
            bound = ok(
                await client.call_tool(
                    "watch_telephony_events",
                    {"event": ["OnExternalCallStart"], "event_type": "online", "handler": handler},
                )
            )
            assert bound["changed"] == ["OnExternalCallStart"]
            click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
            [event] = (await read(client, wait_seconds=20))["events"]
            assert event["data"]["CALL_ID"] == click["CALL_ID"] and event["data"]["USER_ID"] == OPERATOR
            assert "auth" not in event and "auth" not in event["data"]

            form = {
                "event": "ONEXTERNALCALLSTART",
                "ts": "1796480000",
                **{f"data[{key}]": value for key, value in {**click, "CALL_ID": "externalCall.forged"}.items()},
            }
            async with httpx2.AsyncClient() as http:
                forged = await http.post(handler, data={**form, "auth[application_token]": "not-the-token"})
                missing = await http.post(handler, data=form)
                genuine = {**form, "auth[application_token]": sandbox.config.application_token}
                first = await http.post(handler, data=genuine)
                again = await http.post(handler, data=genuine)
                huge = await http.post(handler, data={**genuine, "data[TEXT]": "x" * 300_000})
            assert (forged.status_code, missing.status_code, huge.status_code) == (403, 403, 413)
            assert (first.json(), again.json()) == ({"result": "stored"}, {"result": "duplicate"})
            later = (await read(client, cursor=event["cursor"]))["events"]
            assert [e["data"]["CALL_ID"] for e in later] == ["externalCall.forged"], "the forgeries kept nothing"
    log = server.stderr
    assert log.count("refused an event post") == 3
    access_token = sandbox.portal.event_access_token(OPERATOR)
    assert access_token not in log
    stored = b"".join(path.read_bytes() for path in (tmp_path / "b24-telephony-mcp").glob("events.sqlite3*"))
    assert b"externalCall.forged" in stored and access_token.encode() not in stored


# --- no event lost, none doubled ---


def fault(sandbox: RunningSandbox, method: str, **spec: Any) -> None:
    answer = httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json={"method": method, **spec})
    assert answer.status_code == 200


async def wait_for_requests(sandbox: RunningSandbox, method: str, count: int = 1) -> None:
    with anyio.fail_after(20):
        while sandbox.portal.stats.requests[method] < count:  # noqa: ASYNC110  # the portal's thread counts them
            await anyio.sleep(0.05)


@pytest.mark.parametrize(
    ("lost", "spec"),
    [
        # The portal reserved the records for the read, and the answer never came back: nothing was stored.
        ("event.offline.get", {"status": 502, "process": True}),
        # Stored, but the portal never heard the clear: the records stay reserved.
        ("event.offline.clear", {"status": 500, "count": 100}),
    ],
)
async def test_a_server_killed_between_read_and_clear_delivers_the_event_once(
    sandbox: RunningSandbox, tmp_path: Path, lost: str, spec: dict[str, Any]
) -> None:
    with events_http(sandbox, tmp_path) as server:
        async with http_session(server.url, MCP_TOKEN) as client:
            ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
            ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
            cursor = (await read(client))["cursor"]
        fault(sandbox, lost, **spec)
        already = sandbox.portal.stats.requests[lost]
        click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
        await wait_for_requests(sandbox, lost, already + 1)
        server.process.kill()  # SIGKILL: no clean-up of any kind
        server.process.wait()
    assert [record.process_id != "" for record in sandbox.portal.offline_events.values()] == [True], "reserved"
    httpx2.delete(f"{sandbox.base_url}/_sandbox/faults")
    with events_http(sandbox, tmp_path) as server:
        async with http_session(server.url, MCP_TOKEN) as client:
            page = await read(client, cursor=cursor, wait_seconds=20)
            assert [event["data"]["CALL_ID"] for event in page["events"]] == [click["CALL_ID"]]
            assert (await read(client, cursor=page["cursor"], wait_seconds=1))["events"] == [], "once"
            assert (await read(client))["events"] == page["events"], "nothing else was ever stored"
    assert not sandbox.portal.offline_events, "the portal's queue was cleared"


async def test_two_hundred_events_in_one_run_arrive_once_in_order(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with events_session(sandbox, tmp_path) as client:
        ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
        cursor = (await read(client))["cursor"]
        clicked: list[str] = []
        for batch in range(4):
            clicked += [sandbox.portal.click_to_call(OPERATOR, fresh_phone())["CALL_ID"] for _ in range(50)]
            await anyio.sleep(0.3 * batch)  # some arrive while a read is under way, some queue up
        heard: list[str] = []
        with anyio.fail_after(60):
            while len(heard) < len(clicked):
                page = await read(client, cursor=cursor, limit=200, wait_seconds=5)
                heard += [event["data"]["CALL_ID"] for event in page["events"]]
                cursor = page["cursor"]
        assert heard == clicked
        assert (await read(client, cursor=cursor, wait_seconds=1))["events"] == []


# --- waiting: progress, cancellation ---


async def test_a_wait_reports_progress_and_a_cancelled_wait_stops_the_fast_polling(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    reports: list[tuple[float, float | None]] = []
    two_reports = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total))
        if len(reports) >= 2:
            two_reports.set()

    # Idle polling slower than the test: any read of the queue after the cancellation would be the fast one.
    async with events_session(sandbox, tmp_path, B24_EVENT_POLL_IDLE="60") as client:
        ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
        async with anyio.create_task_group() as group:

            async def wait() -> None:
                await client.call_tool("get_telephony_events", {"wait_seconds": 30}, progress_callback=on_progress)

            group.start_soon(wait)
            with anyio.fail_after(10):
                await two_reports.wait()
            group.cancel_scope.cancel()
        polls_while_waiting = sandbox.portal.stats.requests["event.offline.get"]
        assert polls_while_waiting >= 3, "polled every 0.2 s while the reader waited"
        await anyio.sleep(0.5)  # the nap under way when the wait ended
        settled = sandbox.portal.stats.requests["event.offline.get"]
        await anyio.sleep(1.5)
        assert sandbox.portal.stats.requests["event.offline.get"] == settled, "back to the idle pace"
    assert all(total == 30 for _, total in reports)
    assert [progress for progress, _ in reports] == sorted(progress for progress, _ in reports)
    assert 0 < reports[0][0] <= 1.5


# --- the events resource ---


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")  # what 2025-11-25 clients still send
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_subscribed_client_hears_of_new_events(sandbox: RunningSandbox, tmp_path: Path, mode: str) -> None:
    updated = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification) and str(message.params.uri) == EVENTS_URI:
            updated.set()

    env = events_env(sandbox, tmp_path)
    async with stdio_session(env, *TOOLSETS, mode=mode, message_handler=on_message) as client:
        ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
        assert EVENTS_URI in [str(resource.uri) for resource in (await client.list_resources()).resources]
        if mode == "legacy":
            await client.subscribe_resource(EVENTS_URI)
            click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
            with anyio.fail_after(10):
                await updated.wait()
        else:
            async with client.listen(resource_subscriptions=[EVENTS_URI]) as subscription:
                click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
                with anyio.fail_after(10):
                    change = await subscription.__anext__()
            assert type(change).__name__ == "ResourceUpdated" and change.uri == EVENTS_URI
        [contents] = (await client.read_resource(EVENTS_URI)).contents
        assert json.loads(contents.text)[-1]["data"]["CALL_ID"] == click["CALL_ID"]  # type: ignore[union-attr]


# --- replicas on Redis ---


async def test_replicas_share_the_events_and_one_drains_the_queue(
    sandbox: RunningSandbox, redis_server: RedisServer, tmp_path: Path
) -> None:
    envs = [
        {**env, "B24_EVENT_POLL_WAITING": "0.2", "B24_EVENT_POLL_IDLE": "0.5"}
        for env in replica_envs(sandbox, redis_server.url, tmp_path, count=2)
    ]
    with http_servers(envs, "http", *TOOLSETS) as servers:
        async with (
            http_session(servers[0].url, REPLICA_TOKEN) as first,
            http_session(servers[1].url, REPLICA_TOKEN) as second,
        ):
            ok(await first.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
            ok(await first.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
            cursor = (await read(second))["cursor"]
            click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
            [on_second] = (await read(second, cursor=cursor, wait_seconds=20))["events"]
            [on_first] = (await read(first, cursor=cursor))["events"]
            assert on_first == on_second and on_first["data"]["CALL_ID"] == click["CALL_ID"], "one store, one cursor"

            drains = [server for server in servers if "this process drains it" in server.stderr]
            assert len(drains) == 1, "one replica holds the lease"
            [standby] = [server for server in servers if server is not drains[0]]
            assert "offline event queue: standby" in standby.stderr
            # The holder goes away (and lets go of the lease): the other takes over the queue.
            drains[0].process.terminate()
            assert drains[0].process.wait(10) == 0, "a clean exit"
            survivor = first if standby is servers[0] else second
            click = sandbox.portal.click_to_call(OPERATOR, fresh_phone())
            page = await read(survivor, cursor=on_first["cursor"], wait_seconds=20)
            assert [event["data"]["CALL_ID"] for event in page["events"]] == [click["CALL_ID"]]
            assert "this process drains it" in standby.stderr


# --- doctor ---


async def test_doctor_reports_the_bindings_and_the_backlog(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with events_session(sandbox, tmp_path) as client:
        ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart", "OnVoximplantCallEnd"]}))
    for _ in range(2):  # while no server drains the queue
        sandbox.portal.click_to_call(OPERATOR, fresh_phone())

    def doctor(env: dict[str, str]) -> dict[str, Any]:
        env = {**env, "B24_TOOLSETS": "external_calls,events"}  # doctor checks what the server would offer
        done = subprocess.run(server_command("doctor", "--json"), env=env, capture_output=True, text=True, timeout=60)
        checks: dict[str, Any] = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
        return checks["events"]

    events = doctor(events_env(sandbox, tmp_path))
    assert events["status"] == "ok", events
    assert "installation finished" in events["detail"]
    assert "offline: OnExternalCallStart, OnVoximplantCallEnd" in events["detail"]
    assert "2 waiting in the offline queue" in events["detail"]
    assert doctor(webhook_env(sandbox))["status"] == "skip"


async def test_a_callback_form_is_heard_and_filtered_by_event(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with events_session(sandbox, tmp_path) as client:
        ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        ok(await client.call_tool("watch_telephony_events", {}))
        sandbox.portal.click_to_call(OPERATOR, fresh_phone())
        form = sandbox.portal.submit_callback_form(fresh_phone())
        only = {"event": ["OnExternalCallBackStart"], "wait_seconds": 20}
        [event] = (await read(client, **only))["events"]
        assert event["event"] == "OnExternalCallBackStart"
        assert event["data"]["PHONE_NUMBER"] == form["PHONE_NUMBER"]
        assert event["data"]["CRM_ENTITY_ID"] == int(form["CRM_ENTITY_ID"])  # typed, though posted as text
        names = {e["event"] for e in (await read(client))["events"]}
        assert {"OnExternalCallStart", "OnExternalCallBackStart"} <= names
