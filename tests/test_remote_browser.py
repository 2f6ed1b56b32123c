"""Remote mode's sign-in as a person does it: headless Chromium (Debian's, the `chromium` fixture) on the consent
page of the real server started as `--sandbox --remote` (two sandbox portals, a person types which one), and the
SDK's own OAuth client (`mcp.client.auth`) waiting on a loopback redirect listener, as a desktop client does
(RFC 8252 §7.3). Whatever the browser refuses (a form post's Origin, a CSP directive on a redirect) fails here, where
an HTTP client would let it through.

Every request the browser makes is watched: it may reach only the server, the portal the person named and the
client's listener, all on loopback; any console error fails the test. Which user's rights a tool call runs with is
read from the tool's own answer (the sandbox's user 2 sees only their own call statistics) and from the server's
store (a SQLite file in the test's directory).
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Request, Response

from b24_telephony_mcp.remote.store import STORE_NAME
from redis_server import free_port
from support import loopback_site, ok
from test_remote_signin import (
    MemoryStorage,
    SandboxRemote,
    client_metadata,
    portal_calls,
    register,
    sandbox_remote_server,
)

pytestmark = pytest.mark.anyio

CLIENT_NAME = "Browser Assistant"
ADDRESS_LABEL = "Your Bitrix24 address"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[SandboxRemote]:
    # TMPDIR: the server keeps its store in a throwaway directory, here the test's own, so the test can read it.
    with sandbox_remote_server(tmp_path, TMPDIR=str(tmp_path)) as started:
        yield started


def origin(url: str) -> str:
    return "{0.scheme}://{0.netloc}".format(urlsplit(url))


def host(url: str) -> str:
    return urlsplit(url).netloc


# --- the client's loopback redirect listener ---


LANDING = (
    '<!doctype html><html lang="en"><link rel="icon" href="data:,"><title>Signed in</title>'
    "<p>You can close this window.</p>"
    '<script>document.title = "Signed in (script ran)"</script></html>'
)
"""The listener's page; its script tells whether the browser runs scripts."""


@dataclass
class Listener:
    """Where the browser lands after Allow: the client's `http://127.0.0.1:<port>/callback`, as a desktop MCP client
    listens for it; each query it was called with."""

    url: str
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    pages: dict[str, str] = field(default_factory=dict)
    """Other pages of the client's origin, by path."""


@contextmanager
def listener() -> Iterator[Listener]:
    port = free_port()
    listening = Listener(f"http://127.0.0.1:{port}/callback")

    def page(path: str) -> tuple[str, bytes] | None:
        parts = urlsplit(path)
        if parts.path == "/callback":
            listening.queries.append(parse_qs(parts.query))
            return "text/html; charset=utf-8", LANDING.encode()
        if parts.path in listening.pages:
            return "text/html; charset=utf-8", listening.pages[parts.path].encode()
        return None

    with loopback_site(port, page):
        yield listening


# --- the person's browser ---


@dataclass
class Person:
    """One person's browser window (own cookies), with everything it requested, the pages it was shown (status and
    headers by URL) and any console error."""

    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    documents: list[Response] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    """Console errors: (text, where)."""

    @property
    def errors(self) -> list[str]:
        """Console errors, but a page's own error status (a 400 page is a "failed" load): tests check that one."""
        failed = {answer.url for answer in self.documents if answer.status >= 400}
        return [f"{text} at {where}" for text, where in self.console if where not in failed]

    def origins(self) -> set[str]:
        return {origin(url) for url in self.requests}

    def document(self, path: str) -> Response:
        """The last page shown at this path (a navigation's answer, not a redirect)."""
        shown = [answer for answer in self.documents if urlsplit(answer.url).path == path]
        return [answer for answer in shown if not 300 <= answer.status < 400][-1]

    async def sign_in_to_the_portal_as(self, portal: str, user_id: int) -> None:
        """The person is signed in to that portal as that user (the sandbox's cookie, as a Bitrix24 session)."""
        answer = await self.context.request.get(f"{portal}/_sandbox/sign-in-as", params={"user_id": str(user_id)})
        assert answer.status == 204, await answer.text()


@asynccontextmanager
async def person(chromium: Browser, javascript: bool = True) -> AsyncIterator[Person]:
    context = await chromium.new_context(java_script_enabled=javascript)
    page = await context.new_page()
    someone = Person(context, page)

    def requested(request: Request) -> None:
        someone.requests.append(request.url)

    def answered(response: Response) -> None:
        if response.request.is_navigation_request():
            someone.documents.append(response)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            someone.console.append((message.text, str(message.location.get("url", ""))))

    context.on("request", requested)
    context.on("response", answered)
    page.on("console", console)
    page.on("pageerror", lambda error: someone.console.append((str(error), "")))
    try:
        yield someone
    finally:
        await context.close()


async def consent_field(page: Page) -> Any:
    """The portal field, found by its label as a person (or a screen reader) finds it."""
    field_ = page.get_by_label(ADDRESS_LABEL)
    assert await field_.count() == 1
    return field_


# --- the SDK's OAuth client, whose browser is the person's ---

Consent = Callable[[Page], Awaitable[None]]
"""What the person does on the consent page (the browser is on it); it ends once Allow was pressed."""


def oauth_client(
    remote: SandboxRemote, someone: Person, listening: Listener, storage: MemoryStorage, consent: Consent
) -> OAuthClientProvider:
    async def redirect_handler(authorization_url: str) -> None:
        await someone.page.goto(authorization_url)
        await consent(someone.page)
        # The browser ends at the client's listener, or the sign-in went wrong: its page says how.
        try:
            await someone.page.wait_for_url(f"{listening.url}?*", timeout=10_000)
        except Exception as exc:
            raise AssertionError(f"never reached the client: {await someone.page.content()}") from exc

    async def callback_handler() -> AuthorizationCodeResult:
        [query] = listening.queries
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0])

    return OAuthClientProvider(
        server_url=f"{remote.public}/mcp",
        client_metadata=client_metadata(listening.url, CLIENT_NAME),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )


@asynccontextmanager
async def signed_in(
    remote: SandboxRemote, someone: Person, listening: Listener, consent: Consent
) -> AsyncIterator[Client]:
    auth = oauth_client(remote, someone, listening, MemoryStorage(), consent)
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(streamable_http_client(f"{remote.public}/mcp", http_client=http), mode="legacy") as client,
    ):
        yield client


def allow_on(portal: str) -> Consent:
    """Type the portal's address (as its users do: host and port, no scheme) and press Allow."""

    async def consent(page: Page) -> None:
        await (await consent_field(page)).fill(host(portal))
        await page.get_by_role("button", name="Allow").click()

    return consent


async def registered_client(remote: SandboxRemote, redirect_uri: str) -> str:
    async with httpx2.AsyncClient() as http:
        answer = await register(http, remote, redirect_uri)  # type: ignore[arg-type]
    assert answer.status_code == 201, answer.text
    return str(answer.json()["client_id"])


def authorize_url(remote: SandboxRemote, client_id: str, redirect_uri: str) -> str:
    """A client's authorization request (PKCE S256), as the browser is sent to it."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    query = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "client-state",
    }
    return f"{remote.public}/authorize?{httpx2.QueryParams(query)}"


# --- the server's store ---


def stored_grants(tmp_path: Path) -> list[tuple[str, int, str, str]]:
    """Every grant in the server's store: (portal host, user id, user name, client name)."""
    [store] = tmp_path.glob(f"b24-sandbox-remote-*/remote/{STORE_NAME}")
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT portals.domain, grants.user_id, grants.user_name, grants.client_name FROM grants "
            "LEFT JOIN portals ON portals.member_id = grants.member_id ORDER BY grants.created"
        ).fetchall()
    return [tuple(row) for row in rows]


async def token_requests(portal: str) -> int:
    async with httpx2.AsyncClient() as http:
        return int((await http.get(f"{portal}/_sandbox/stats")).json()["token_requests"])


def assert_headers_guard(answer: Response) -> None:
    """A sign-in page's headers: it loads nothing, nothing frames it, no referrer leaves it for another site."""
    headers = answer.headers
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "base-uri 'none'" in policy
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cache-control"] == "no-store"


# --- the tests ---


async def test_a_person_signs_in_as_user_2_on_the_second_portal(
    chromium: Browser, remote: SandboxRemote, tmp_path: Path
) -> None:
    _, second = remote.portals
    async with person(chromium) as someone:
        await someone.sign_in_to_the_portal_as(second, 2)
        shown: dict[str, str] = {}

        async def consent(page: Page) -> None:
            shown["text"] = await page.locator("body").inner_text()
            shown["title"] = await page.title()
            await allow_on(second)(page)

        with listener() as listening:
            before = [await portal_calls(portal) for portal in remote.portals]
            async with signed_in(remote, someone, listening, consent) as client:
                # User 2 may see only their own calls' statistics (user 1, the administrator, sees everyone's).
                rows = ok(await client.call_tool("get_call_statistics", {}))
                assert rows and {row["PORTAL_USER_ID"] for row in rows} == {"2"}
                added = await client.call_tool("add_external_line", {"NUMBER": "74950000002", "NAME": "Olivia's"})
                assert not added.is_error, added
                assert [await portal_calls(portal) for portal in remote.portals] == [before[0], before[1] + 1]
            [query] = listening.queries
            assert query["code"] and query["state"]

        # The consent page: who asks, returning where, a labelled field for the portal, Allow and Deny.
        assert shown["title"] == "Connect to Bitrix24 telephony"
        assert CLIENT_NAME in shown["text"] and host(listening.url) in shown["text"]
        consent_page = someone.document("/bitrix24/signin")
        assert consent_page.status == 200
        assert_headers_guard(consent_page)
        # The Allow post leads to the portal and on to the client: the form may go there, and nowhere else.
        policy = consent_page.headers["content-security-policy"]
        assert origin(listening.url) in policy.split("form-action", 1)[1].split(";", 1)[0]

        # The way the browser went: the server, the portal the person named, the client; nothing else, no error.
        assert someone.origins() == {remote.public, second, origin(listening.url)}
        paths = [urlsplit(url).path for url in someone.requests]
        assert paths[:2] == ["/authorize", "/bitrix24/signin"]
        assert paths[-4:] == ["/bitrix24/signin", "/oauth/authorize/", "/bitrix24/callback", "/callback"]
        assert someone.errors == []
        assert await someone.page.title() == "Signed in (script ran)"  # scripts run here (JavaScript is off below)
    assert stored_grants(tmp_path) == [(host(second), 2, "Olivia Operator", CLIENT_NAME)]


async def test_deny_ends_on_a_page_saying_so_and_nothing_is_stored(
    chromium: Browser, remote: SandboxRemote, tmp_path: Path
) -> None:
    first, _ = remote.portals
    async with person(chromium) as someone:
        with listener() as listening:
            client_id = await registered_client(remote, listening.url)
            await someone.page.goto(authorize_url(remote, client_id, listening.url))
            await (await consent_field(someone.page)).fill("typed-but-denied.bitrix24.com")
            await someone.page.get_by_role("button", name="Deny").click()
            await someone.page.get_by_role("heading", name="Access denied").wait_for()
            answer = someone.document("/bitrix24/signin")
            assert answer.request.method == "POST" and answer.status == 200
            assert_headers_guard(answer)
            assert "Nothing was stored" in await someone.page.locator("body").inner_text()

            # The request was answered once: going back to the page and allowing now is too late.
            await someone.page.go_back()
            await someone.page.get_by_role("heading", name="This sign-in has expired").wait_for()
            assert listening.queries == []
        assert someone.origins() == {remote.public}  # neither a portal nor the client was ever asked
        assert someone.errors == []
    assert await token_requests(first) == 0  # the portals' OAuth server (the first's) heard nothing
    assert stored_grants(tmp_path) == []


async def test_the_sign_in_works_with_javascript_disabled(
    chromium: Browser, remote: SandboxRemote, tmp_path: Path
) -> None:
    first, _ = remote.portals
    async with person(chromium, javascript=False) as someone:
        with listener() as listening:
            async with signed_in(remote, someone, listening, allow_on(first)) as client:
                assert ok(await client.call_tool("list_external_lines", {})) == []
            assert len(listening.queries) == 1
        assert await someone.page.title() == "Signed in"  # the browser ran no script, not even the listener's
        assert someone.origins() == {remote.public, first, origin(listening.url)}
        assert someone.errors == []
    assert stored_grants(tmp_path) == [(host(first), 1, "Admin Sandbox", CLIENT_NAME)]


async def test_a_mistyped_portal_shows_the_page_again_with_the_text_kept(
    chromium: Browser, remote: SandboxRemote, tmp_path: Path
) -> None:
    first, second = remote.portals
    mistyped = "mycompany.bitrix24"  # no country: not a Bitrix24 address

    async def consent(page: Page) -> None:
        await (await consent_field(page)).fill(mistyped)
        await page.get_by_role("button", name="Allow").click()
        await page.get_by_role("alert").wait_for()
        answer = someone.document("/bitrix24/signin")
        assert answer.request.method == "POST" and answer.status == 400
        assert_headers_guard(answer)
        assert "Not a Bitrix24 address" in await page.get_by_role("alert").inner_text()
        # Nothing lost: the same form, the typed text in its field, marked as the one to correct.
        address = await consent_field(page)
        assert await address.input_value() == mistyped
        assert await address.get_attribute("aria-invalid") == "true"
        assert await page.get_by_role("button", name="Allow").count() == 1
        await allow_on(second)(page)

    async with person(chromium) as someone:
        with listener() as listening:
            async with signed_in(remote, someone, listening, consent) as client:
                assert ok(await client.call_tool("list_external_lines", {})) == []
            assert len(listening.queries) == 1
        assert first not in someone.origins()
        assert someone.errors == []
    assert stored_grants(tmp_path) == [(host(second), 1, "Admin Sandbox", CLIENT_NAME)]


async def test_a_native_client_returning_to_its_own_scheme_is_not_blocked_by_the_page(
    chromium: Browser, remote: SandboxRemote, tmp_path: Path
) -> None:
    """A client returning to a private-use scheme (`com.example.app:/cb`): the browser hands the answer on to it
    (here nothing handles the scheme, so the browser stops there), never refusing the form's redirect."""
    first, _ = remote.portals
    redirect = "com.example.app:/oauth/callback"
    async with person(chromium) as someone:
        await someone.page.goto(authorize_url(remote, await registered_client(remote, redirect), redirect))
        policy = someone.document("/bitrix24/signin").headers["content-security-policy"]
        assert "com.example.app:" in policy.split("form-action", 1)[1].split(";", 1)[0]
        async with someone.page.expect_response(lambda answer: "/bitrix24/callback" in answer.url) as callback:
            await allow_on(first)(someone.page)
        answer = await callback.value
        assert answer.status == 302 and answer.headers["location"].startswith(f"{redirect}?code=")
        await anyio.sleep(0.5)  # a refusal of the redirect is reported as a console error once it happens
        assert not [error for error in someone.errors if "Content Security Policy" in error], someone.errors
    assert stored_grants(tmp_path) == [(host(first), 1, "Admin Sandbox", "x")]


async def test_another_site_cannot_frame_the_consent_page(chromium: Browser, remote: SandboxRemote) -> None:
    """A page of another origin (the listener's, here) showing the consent page in a frame, to have it clicked
    unseen: the browser refuses to show it."""
    async with person(chromium) as someone:
        with listener() as listening:
            target = authorize_url(remote, await registered_client(remote, listening.url), listening.url)
            framing = f'<!doctype html><link rel="icon" href="data:,"><iframe src="{html.escape(target)}"></iframe>'
            listening.pages["/framer"] = framing
            async with someone.page.expect_response(lambda shown: "/bitrix24/signin" in shown.url) as consent:
                await someone.page.goto(f"{origin(listening.url)}/framer")
            assert (await consent.value).status == 200  # the server answered; the browser would not show it
            await anyio.sleep(0.5)
        [frame] = someone.page.main_frame.child_frames
        assert await frame.get_by_role("button", name="Allow").count() == 0
        assert any("frame-ancestors 'none'" in error for error in someone.errors), someone.errors
