"""Events in remote mode, end to end: the real server (`--sandbox --remote`, two sandbox portals with one
marketplace application), real MCP clients signed in over streamable HTTP, one per portal. A click on portal A
reaches A's grant through get_telephony_events (drained from A's offline queue, or posted online), and never B's;
an online post is believed only with the application token of the installation on the portal it names."""

from __future__ import annotations

import base64
import itertools
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from redis_server import RedisServer
from support import FAST_LIMITS, HttpServer, clean_env, http_server, http_session, ok
from test_remote_signin import Browser, MemoryStorage, Remote, oauth_client, remote_server, signed_in_session

pytestmark = pytest.mark.anyio

TOOLSETS = ("--toolsets", "external_lines,external_calls,events")
OPERATOR = 2
_numbers = itertools.count(1)


def fresh_phone() -> str:
    return f"+7 903 {next(_numbers):07d}"


@dataclass
class TwoPortals:
    server: HttpServer
    portals: list[str]
    """The sandbox portals' base URLs: A, then B."""
    tmp: Path

    @property
    def public(self) -> str:
        return self.server.url.removesuffix("/mcp")

    def stored_events(self) -> bytes:
        """Every byte of the event store (SQLite in the run's throwaway directory)."""
        files = sorted(self.tmp.glob("b24-sandbox-remote-*/events.sqlite3*"))
        assert files, "the events are kept in the run's directory"
        return b"".join(path.read_bytes() for path in files)


@pytest.fixture
def two_portals(tmp_path: Path) -> Iterator[TwoPortals]:
    env = clean_env(
        **FAST_LIMITS,
        XDG_STATE_HOME=str(tmp_path / "state"),
        TMPDIR=str(tmp_path),
        B24_EVENT_POLL_WAITING="0.2",
        B24_EVENT_POLL_IDLE="0.5",
    )
    with http_server(env, "http", "--sandbox", "--remote", *TOOLSETS) as server:
        portals = re.findall(r"sandbox portal \d: (\S+)", server.stderr)
        assert len(portals) == 2, server.stderr
        yield TwoPortals(server, portals, tmp_path)


@asynccontextmanager
async def signed_in(two: TwoPortals, portal: str, user_id: int = 1) -> AsyncIterator[Client]:
    """A client signed in by typing `portal`'s address, as its user `user_id` (1: its administrator)."""
    remote = Remote(two.server, None, two.public, Path(), {})  # type: ignore[arg-type]
    browser = Browser()
    await browser.http.get(f"{portal}/_sandbox/sign-in-as", params={"user_id": str(user_id)})
    original = browser.submit

    async def submit(page: httpx2.Response, action: str, **fields: str) -> httpx2.Response | str:
        return await original(page, action, portal=urlsplit(portal).netloc, **fields)

    browser.submit = submit  # type: ignore[method-assign]
    try:
        async with (
            httpx2.AsyncClient(auth=oauth_client(remote, browser, MemoryStorage()), timeout=30) as http,
            Client(streamable_http_client(remote.mcp_url, http_client=http), mode="legacy") as client,
        ):
            yield client
    finally:
        await browser.aclose()


async def read(client: Client, **arguments: Any) -> dict[str, Any]:
    page: dict[str, Any] = ok(await client.call_tool("get_telephony_events", arguments))
    return page


async def click(portal: str, phone: str) -> dict[str, Any]:
    async with httpx2.AsyncClient() as http:
        answer = await http.post(f"{portal}/_sandbox/click", json={"phone": phone, "user_id": OPERATOR})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["result"]
    return result


async def prepare(client: Client, **watch: Any) -> str:
    """An external line to click through, OnExternalCallStart bound; the cursor after what is kept so far."""
    ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
    ok(await client.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"], **watch}))
    cursor: str = (await read(client))["cursor"] or ""
    return cursor


async def test_a_click_on_one_portal_reaches_its_grants_only(two_portals: TwoPortals) -> None:
    portal_a, portal_b = two_portals.portals
    async with signed_in(two_portals, portal_a) as first, signed_in(two_portals, portal_b) as second:
        cursor_a, cursor_b = await prepare(first), await prepare(second)
        pages: dict[str, dict[str, Any]] = {}

        async def wait(name: str, client: Client, cursor: str, seconds: int) -> None:
            pages[name] = await read(client, cursor=cursor or None, wait_seconds=seconds)

        async with anyio.create_task_group() as group:
            group.start_soon(wait, "a", first, cursor_a, 20)
            group.start_soon(wait, "b", second, cursor_b, 3)
            await anyio.sleep(0.5)
            clicked = await click(portal_a, fresh_phone())
        [event] = pages["a"]["events"]
        assert event["event"] == "OnExternalCallStart" and event["data"]["CALL_ID"] == clicked["CALL_ID"]
        assert event["data"]["USER_ID"] == OPERATOR
        assert pages["b"]["events"] == [], "portal B's grant hears nothing of portal A"
        assert (await read(second))["events"] == [], "nor was anything of A's ever kept for B"

        # And the other way round: B's click is B's alone.
        theirs = await click(portal_b, fresh_phone())
        [event_b] = (await read(second, cursor=pages["b"]["cursor"], wait_seconds=20))["events"]
        assert event_b["data"]["CALL_ID"] == theirs["CALL_ID"]
        assert (await read(first, cursor=event["cursor"], wait_seconds=2))["events"] == []
        assert [e["data"]["CALL_ID"] for e in (await read(first))["events"]] == [clicked["CALL_ID"]]


async def test_a_portals_queue_is_drained_by_an_administrator_and_read_by_all_its_users(
    two_portals: TwoPortals,
) -> None:
    portal_a = two_portals.portals[0]
    async with signed_in(two_portals, portal_a, user_id=OPERATOR) as operator:
        # An operator alone cannot read the offline queue: the answer says so, and nothing is heard yet.
        page = await read(operator, wait_seconds=2)
        assert page["events"] == [] and "ACCESS_DENIED" in page.get("offline_queue", ""), page
        async with signed_in(two_portals, portal_a) as admin:
            cursor = await prepare(admin)  # binds as the administrator, whose grant now drains the queue
            clicked = await click(portal_a, fresh_phone())
            [event] = (await read(operator, cursor=cursor, wait_seconds=20))["events"]
            assert event["data"]["CALL_ID"] == clicked["CALL_ID"], "the portal's events, for each of its users"
            assert [e["data"]["CALL_ID"] for e in (await read(admin, cursor=cursor))["events"]] == [clicked["CALL_ID"]]


async def installed(two: TwoPortals, portal: str) -> dict[str, str]:
    """The application installed on `portal` (its ONAPPINSTALL posted to this server); its token and member_id."""
    async with httpx2.AsyncClient(timeout=20) as http:
        answer = await http.post(f"{portal}/_sandbox/install", json={"url": f"{two.public}/bitrix24/install"})
        assert answer.json() == {"result": {"status": 200}}, answer.text
        app: dict[str, str] = (await http.get(f"{portal}/_sandbox/app")).json()
    return app


def event_form(call_id: str, member_id: str, application_token: str) -> dict[str, str]:
    return {
        "event": "ONEXTERNALCALLSTART",
        "ts": "1796480000",
        "data[CALL_ID]": call_id,
        "data[USER_ID]": str(OPERATOR),
        "data[PHONE_NUMBER]": "+79035550000",
        "auth[member_id]": member_id,
        "auth[application_token]": application_token,
    }


async def test_online_posts_are_believed_only_with_their_portals_installation(two_portals: TwoPortals) -> None:
    portal_a, portal_b = two_portals.portals
    handler = f"{two_portals.public}/bitrix24/events"
    async with signed_in(two_portals, portal_a) as first, signed_in(two_portals, portal_b) as second:
        # Before the installation is known, even the portal's genuine post is refused.
        async with httpx2.AsyncClient(timeout=20) as http:
            app_a = (await http.get(f"{portal_a}/_sandbox/app")).json()
            early = await http.post(handler, data=event_form("externalCall.early", app_a["member_id"], "x"))
            assert early.status_code == 403
        app_a, app_b = await installed(two_portals, portal_a), await installed(two_portals, portal_b)
        cursor_a = await prepare(first, event_type="online", handler=handler)
        cursor_b = (await read(second))["cursor"]

        # Bitrix24's own post (a click, delivered online by portal A) reaches A's grant.
        clicked = await click(portal_a, fresh_phone())
        [event] = (await read(first, cursor=cursor_a, wait_seconds=20))["events"]
        assert event["data"]["CALL_ID"] == clicked["CALL_ID"]

        async with httpx2.AsyncClient(timeout=20) as http:
            refused = [
                await http.post(handler, data=event_form(f"externalCall.forged{n}", member, token))
                for n, (member, token) in enumerate(
                    [
                        (app_a["member_id"], "not-the-token"),  # a wrong token
                        (app_a["member_id"], app_b["application_token"]),  # another portal's token
                        (app_b["member_id"], app_a["application_token"]),  # another portal's member_id
                        ("0" * 32, app_a["application_token"]),  # a portal this server does not know
                        ("", app_a["application_token"]),  # none named
                    ]
                )
            ]
            genuine = await http.post(
                handler, data=event_form("externalCall.genuine", app_a["member_id"], app_a["application_token"])
            )
        assert [answer.status_code for answer in refused] == [403] * 5
        assert genuine.json() == {"result": "stored"}
        later = (await read(first, cursor=event["cursor"]))["events"]
        assert [e["data"]["CALL_ID"] for e in later] == ["externalCall.genuine"], "the forgeries kept nothing"
        assert (await read(second, cursor=cursor_b))["events"] == [], "B's grant sees none of A's, nor forgeries"
    stored = two_portals.stored_events()
    assert b"externalCall.genuine" in stored
    assert b"externalCall.forged" not in stored and b"externalCall.early" not in stored
    log = two_portals.server.stderr
    assert log.count("refused an event post") == 6
    assert app_a["application_token"] not in log and app_b["application_token"] not in log


# --- replicas on Redis ---


async def test_replicas_on_redis_share_a_portals_events_and_one_drains_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Remote mode on Redis, two replicas: the portal's events are read alike from either, and its offline queue is
    drained by one replica at a time (the single-portal mode's lease, per portal)."""
    env = {
        "B24_REDIS_URL": redis_server.own_database(),
        "B24_TOKEN_KEY": base64.b64encode(os.urandom(32)).decode(),
        "B24_TOOLSETS": ",".join(TOOLSETS[1].split(",")),
        "B24_EVENT_POLL_WAITING": "0.2",
        "B24_EVENT_POLL_IDLE": "0.5",
    }
    with remote_server(tmp_path, **env) as remote:
        storage, browser = MemoryStorage(), Browser()
        try:
            async with signed_in_session(remote, storage, browser) as client:
                ok(await client.call_tool("add_external_line", {"NUMBER": "agent-line", "NAME": "Voice agent"}))
        finally:
            await browser.aclose()
        assert storage.tokens is not None
        token = storage.tokens.access_token
        with http_server(remote.env, "http", "--remote", "--public-url", remote.public) as second_server:
            servers = [remote.server, second_server]
            async with (
                http_session(remote.mcp_url, token) as first,
                http_session(second_server.url, token) as second,
            ):
                ok(await first.call_tool("watch_telephony_events", {"event": ["OnExternalCallStart"]}))
                cursor = (await read(second))["cursor"]  # both replicas now drain, or stand by
                clicked = remote.sandbox.portal.click_to_call(OPERATOR, fresh_phone())
                [on_second] = (await read(second, cursor=cursor, wait_seconds=20))["events"]
                [on_first] = (await read(first, cursor=cursor))["events"]
                assert on_first == on_second and on_first["data"]["CALL_ID"] == clicked["CALL_ID"]
                drains = [server for server in servers if "this process drains it" in server.stderr]
                assert len(drains) == 1, "one replica drains the portal's queue"
                [standby] = [server for server in servers if server is not drains[0]]
                assert "offline event queue: standby" in standby.stderr
