"""Remote mode end to end: the real server (`--transport http --remote`) as a subprocess, the sandbox as the
Bitrix24 portal and OAuth server, and the SDK's own OAuth client (`mcp.client.auth`) doing discovery from the 401,
dynamic registration, PKCE, the sign-in and the token; the browser is an HTTP client with a cookie jar that reads
the consent page and presses its buttons, as a person's browser would (no JavaScript is needed).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from redis_server import RedisServer, free_port
from support import FAST_LIMITS, HttpServer, clean_env, http_server, http_session, loopback_site, ok, server_command

pytestmark = pytest.mark.anyio

CLIENT_REDIRECT = "http://127.0.0.1:33418/callback"
METRICS_TOKEN = "metrics-" + "m" * 32


@dataclass
class Remote:
    server: HttpServer
    sandbox: RunningSandbox
    public: str
    state_dir: Path
    env: dict[str, str]

    @property
    def mcp_url(self) -> str:
        return f"{self.public}/mcp"


@contextmanager
def remote_server(tmp_path: Path, **extra_env: str) -> Iterator[Remote]:
    """Remote mode for a local application on a fresh sandbox portal, at a public URL known before it listens."""
    for attempt in range(3):
        with ExitStack() as stack:
            port = free_port()  # another process may bind it before the server does: then again, on another
            public = f"http://127.0.0.1:{port}"
            config = SandboxConfig(rate_limit=1000.0, rate_burst=10000, handler_url=f"{public}/bitrix24/callback")
            sandbox = stack.enter_context(start_sandbox(config))
            env = clean_env(
                **FAST_LIMITS,
                B24_CLIENT_ID=sandbox.config.client_id,
                B24_CLIENT_SECRET=sandbox.config.client_secret,
                B24_PORTAL_URL=sandbox.base_url,
                B24_OAUTH_TOKEN_URL=sandbox.token_url,
                XDG_STATE_HOME=str(tmp_path / "state"),
                **extra_env,
            )
            try:
                server = stack.enter_context(
                    http_server(env, "http", "--remote", "--public-url", public, "--port", str(port))
                )
            except AssertionError as exc:
                if "cannot listen on" in str(exc) and attempt < 2:
                    continue
                raise
            yield Remote(server, sandbox, public, tmp_path / "state", env)
            return


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    with remote_server(tmp_path, B24_MCP_AUTH_TOKEN=METRICS_TOKEN) as started:  # remote mode: it guards /metrics only
        yield started


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """An HTTP client with cookies that follows redirects one by one and can read and submit the consent form."""

    def __init__(self) -> None:
        self.http = httpx2.AsyncClient(follow_redirects=False, timeout=30)
        self.pages: list[httpx2.Response] = []

    async def go(self, url: str, stop_at: str = CLIENT_REDIRECT) -> httpx2.Response | str:
        """Follow redirects from `url`; the address once it reaches `stop_at` (the client's redirect URI), else the
        page it ends on."""
        response = await self.http.get(url)
        return await self._follow(response, stop_at)

    async def _follow(self, response: httpx2.Response, stop_at: str) -> httpx2.Response | str:
        while response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if target.startswith(stop_at):
                return target
            response = await self.http.get(target)
        self.pages.append(response)
        return response

    async def submit(self, page: httpx2.Response, action: str, **fields: str) -> httpx2.Response | str:
        form = form_fields(page.text)
        form.update(fields)
        form["action"] = action
        target = urljoin(str(page.url), re.search(r'<form method="post" action="([^"]+)"', page.text)[1])  # type: ignore[index]
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(str(page.url)))
        response = await self.http.post(target, data=form, headers={"Origin": origin})
        return await self._follow(response, CLIENT_REDIRECT)

    async def aclose(self) -> None:
        await self.http.aclose()


def form_fields(page: str) -> dict[str, str]:
    return {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }


def client_metadata(redirect_uri: str, name: str = "Test Assistant") -> OAuthClientMetadata:
    """What the SDK's OAuth client registers: a public client (PKCE, no secret) returning to `redirect_uri`."""
    return OAuthClientMetadata(
        client_name=name,
        redirect_uris=[AnyUrl(redirect_uri)],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none",
    )


def oauth_client(
    remote: Remote, browser: Browser, storage: MemoryStorage, action: str = "allow"
) -> OAuthClientProvider:
    """The SDK's OAuth client; its browser reads the consent page and presses `action`."""
    reached: dict[str, str] = {}

    async def redirect_handler(authorization_url: str) -> None:
        page = await browser.go(authorization_url)
        assert isinstance(page, httpx2.Response), page
        assert page.status_code == 200, page.text
        answer = await browser.submit(page, action)
        if isinstance(answer, str):
            reached["url"] = answer
        else:
            reached["page"] = answer.text

    async def callback_handler() -> AuthorizationCodeResult:
        assert "url" in reached, reached.get("page")
        query = parse_qs(urlsplit(reached["url"]).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0])

    return OAuthClientProvider(
        server_url=remote.mcp_url,
        client_metadata=client_metadata(CLIENT_REDIRECT),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )


@asynccontextmanager
async def signed_in_session(remote: Remote, storage: MemoryStorage, browser: Browser) -> AsyncIterator[Client]:
    auth = oauth_client(remote, browser, storage)
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(streamable_http_client(remote.mcp_url, http_client=http), mode="legacy") as client,
    ):
        yield client


async def test_sign_in_with_the_sdk_client_and_call_a_tool(remote: Remote) -> None:
    storage, browser = MemoryStorage(), Browser()
    try:
        async with signed_in_session(remote, storage, browser) as client:
            tools = await client.list_tools()
            assert "list_external_lines" in {tool.name for tool in tools.tools}
            result = await client.call_tool("list_external_lines", {})
            assert ok(result) == []
    finally:
        await browser.aclose()
    # The consent page: what asks, labelled field-less (a local application names its portal), Allow and Deny.
    consent = browser.pages[0]
    assert "Test Assistant" in consent.text and "127.0.0.1:33418" in consent.text
    assert ">Allow</button>" in consent.text and ">Deny</button>" in consent.text
    assert 'name="portal"' not in consent.text
    policy = consent.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    # A browser posts the form with its real Origin only when the page's policy is not no-referrer.
    assert consent.headers["referrer-policy"] == "same-origin"
    assert "<script" not in consent.text and "src=" not in consent.text
    # The tool call went to the portal with the signed-in user's own token.
    assert remote.sandbox.portal.stats.requests.get("telephony.externalline.get") == 1
    assert storage.tokens is not None and storage.tokens.refresh_token
    # Nothing of the sign-in is in the stored state in clear.
    stored = b"".join(path.read_bytes() for path in remote.state_dir.rglob("*") if path.is_file())
    assert storage.tokens.access_token.encode() not in stored
    assert storage.tokens.refresh_token.encode() not in stored
    assert remote.sandbox.config.client_secret.encode() not in stored
    assert storage.tokens.access_token not in remote.server.stderr


async def test_unauthenticated_mcp_names_the_resource_metadata(remote: Remote) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        refused = await http.post(
            remote.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json"},
        )
        assert refused.status_code == 401
        challenge = refused.headers["www-authenticate"]
        assert 'resource_metadata="' in challenge
        metadata_url = re.search(r'resource_metadata="([^"]+)"', challenge)[1]  # type: ignore[index]
        resource = (await http.get(metadata_url)).json()
        assert resource["resource"] == remote.mcp_url
        assert resource["authorization_servers"] == [remote.public]
        server = (await http.get(f"{remote.public}/.well-known/oauth-authorization-server")).json()
        assert server["issuer"] == remote.public  # exactly, no trailing slash
        assert server["code_challenge_methods_supported"] == ["S256"]
        assert "none" in server["token_endpoint_auth_methods_supported"]
        assert server["registration_endpoint"] == f"{remote.public}/register"
        assert server["revocation_endpoint"] == f"{remote.public}/revoke"
        forged = await http.post(
            remote.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": "Bearer forged-token", "Accept": "application/json"},
        )
        assert forged.status_code == 401


async def register(http: httpx2.AsyncClient, remote: Remote, *uris: str, at: str | None = None) -> httpx2.Response:
    """Registers a client at `at` (a replica's base URL), else at the remote's public URL."""
    return await http.post(
        f"{at or remote.public}/register",
        json={"client_name": "x", "redirect_uris": list(uris), "token_endpoint_auth_method": "none"},
    )


async def test_registration_redirect_uri_policy(remote: Remote) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        for good in ("https://claude.ai/api/mcp/auth_callback", "http://127.0.0.1:5555/cb", "cursor://anysphere/cb"):
            assert (await register(http, remote, good)).status_code == 201, good
        for bad in ("javascript:alert(1)", "data:text/html,x", "file:///etc/passwd", "http://evil.example/cb"):
            answer = await register(http, remote, bad)
            assert answer.status_code == 400, bad
            assert answer.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")
        # An unregistered redirect URI gets an error answer, never a redirect.
        client = (await register(http, remote, "http://127.0.0.1:5555/cb")).json()
        answer = await http.get(
            f"{remote.public}/authorize",
            params={
                "client_id": client["client_id"],
                "redirect_uri": "https://evil.example/cb",
                "response_type": "code",
                "code_challenge": "x" * 43,
                "code_challenge_method": "S256",
            },
        )
        assert answer.status_code == 400 and "location" not in answer.headers


async def manual_sign_in(remote: Remote, browser: Browser, action: str = "allow") -> tuple[dict[str, Any], Any]:
    """Register, authorize and answer the consent page by hand: (the registered client, the final answer)."""
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    client = (await register(browser.http, remote, CLIENT_REDIRECT)).json()
    page = await browser.go(
        f"{remote.public}/authorize?"
        + httpx2.QueryParams(
            {
                "client_id": client["client_id"],
                "redirect_uri": CLIENT_REDIRECT,
                "response_type": "code",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": "client-state",
                "resource": remote.mcp_url,
            }
        ).__str__()
    )
    assert isinstance(page, httpx2.Response)
    client["verifier"] = verifier
    return client, await browser.submit(page, action)


async def token_request(http: httpx2.AsyncClient, remote: Remote, **form: str) -> httpx2.Response:
    return await http.post(f"{remote.public}/token", data=form)


async def test_code_replay_and_refresh_reuse_end_the_grant(remote: Remote) -> None:
    browser = Browser()
    try:
        client, answer = await manual_sign_in(remote, browser)
        assert isinstance(answer, str)
        query = parse_qs(urlsplit(answer).query)
        assert query["state"] == ["client-state"]
        code = query["code"][0]
        exchange = {
            "grant_type": "authorization_code",
            "client_id": client["client_id"],
            "code": code,
            "redirect_uri": CLIENT_REDIRECT,
            "code_verifier": client["verifier"],
        }
        first = await token_request(browser.http, remote, **exchange)
        assert first.status_code == 200, first.text
        tokens = first.json()
        replay = await token_request(browser.http, remote, **exchange)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        # The replay revoked the grant: its access token no longer opens /mcp.
        denied = await browser.http.post(
            remote.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/json"},
        )
        assert denied.status_code == 401

        client, answer = await manual_sign_in(remote, browser)
        assert isinstance(answer, str)
        exchange["code"] = parse_qs(urlsplit(answer).query)["code"][0]
        exchange["client_id"], exchange["code_verifier"] = client["client_id"], client["verifier"]
        tokens = (await token_request(browser.http, remote, **exchange)).json()
        refresh = {"grant_type": "refresh_token", "client_id": client["client_id"]}
        renewed = await token_request(browser.http, remote, **refresh, refresh_token=tokens["refresh_token"])
        assert renewed.status_code == 200, renewed.text
        new = renewed.json()
        assert new["refresh_token"] != tokens["refresh_token"]
        reused = await token_request(browser.http, remote, **refresh, refresh_token=tokens["refresh_token"])
        assert reused.status_code == 400
        # The reuse revoked the grant: the rotated refresh token is dead too.
        after = await token_request(browser.http, remote, **refresh, refresh_token=new["refresh_token"])
        assert after.status_code == 400
    finally:
        await browser.aclose()


async def test_deny_ends_on_a_page_and_stores_nothing(remote: Remote) -> None:
    browser = Browser()
    try:
        _, answer = await manual_sign_in(remote, browser, action="deny")
        assert isinstance(answer, httpx2.Response)
        assert "Access denied" in answer.text and "content-security-policy" in answer.headers
        assert remote.sandbox.portal.stats.token_requests == 0  # the portal was never asked
    finally:
        await browser.aclose()


async def test_a_callback_from_another_browser_is_refused(remote: Remote) -> None:
    browser, other = Browser(), Browser()
    try:
        client = (await register(browser.http, remote, CLIENT_REDIRECT)).json()
        page = await browser.go(
            f"{remote.public}/authorize?"
            + str(
                httpx2.QueryParams(
                    {
                        "client_id": client["client_id"],
                        "redirect_uri": CLIENT_REDIRECT,
                        "response_type": "code",
                        "code_challenge": "y" * 43,
                        "code_challenge_method": "S256",
                    }
                )
            )
        )
        assert isinstance(page, httpx2.Response)
        form = form_fields(page.text) | {"action": "allow"}
        allowed = await browser.http.post(f"{remote.public}/bitrix24/signin", data=form)
        assert allowed.status_code == 303
        portal_answer = await browser.http.get(allowed.headers["location"])
        callback = portal_answer.headers["location"]
        stolen = await other.http.get(callback)  # another browser, without this one's cookie
        assert stolen.status_code == 403 and "another browser" in stolen.text
        # A form posted without the page's cookie (another site submitting it) is refused too.
        forged = await other.http.post(f"{remote.public}/bitrix24/signin", data=form)
        assert forged.status_code == 403
    finally:
        await browser.aclose()
        await other.aclose()


async def test_wrong_audience_is_refused(remote: Remote) -> None:
    browser = Browser()
    try:
        client = (await register(browser.http, remote, CLIENT_REDIRECT)).json()
        answer = await browser.go(
            f"{remote.public}/authorize?"
            + str(
                httpx2.QueryParams(
                    {
                        "client_id": client["client_id"],
                        "redirect_uri": CLIENT_REDIRECT,
                        "response_type": "code",
                        "code_challenge": "z" * 43,
                        "code_challenge_method": "S256",
                        "resource": "https://other.example/mcp",
                    }
                )
            )
        )
        # Before consent nothing is redirected to the client, not even an error: a page says what is wrong.
        assert isinstance(answer, httpx2.Response) and answer.status_code == 400
        assert "another server" in answer.text
    finally:
        await browser.aclose()


def test_remote_mode_needs_streamable_http(tmp_path: Path) -> None:
    import subprocess

    from support import server_command

    env = clean_env(
        B24_CLIENT_ID="a",
        B24_CLIENT_SECRET="b",
        XDG_STATE_HOME=str(tmp_path),
        B24_REMOTE="1",
        B24_PUBLIC_URL="http://127.0.0.1:1",
    )
    process = subprocess.run(
        server_command(), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 2 and "--transport http" in process.stderr


async def signed_in_tokens(remote: Remote, browser: Browser) -> dict[str, Any]:
    client, answer = await manual_sign_in(remote, browser)
    assert isinstance(answer, str)
    exchange = {
        "grant_type": "authorization_code",
        "client_id": client["client_id"],
        "code": parse_qs(urlsplit(answer).query)["code"][0],
        "redirect_uri": CLIENT_REDIRECT,
        "code_verifier": client["verifier"],
    }
    tokens: dict[str, Any] = (await token_request(browser.http, remote, **exchange)).json()
    return tokens


class RawSession:
    """One MCP session over plain HTTP with one access token, to see each answer's status, headers and body."""

    def __init__(self, http: httpx2.AsyncClient, remote: Remote, access_token: str) -> None:
        self.http, self.url = http, remote.mcp_url
        self.headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Authorization": f"Bearer {access_token}",
        }
        self.ids = 0

    async def post(self, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        self.ids += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.ids, "method": method}
        if params is not None:
            message["params"] = params
        return await self.http.post(self.url, json=message, headers=self.headers)

    async def open(self) -> None:
        opened = await self.post(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        )
        assert opened.status_code == 200, opened.text
        self.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post(self.url, json=initialized, headers=self.headers)).status_code == 202


async def test_a_session_refuses_another_grants_token(remote: Remote) -> None:
    browser = Browser()
    try:
        first, second = await signed_in_tokens(remote, browser), await signed_in_tokens(remote, browser)
        owner = RawSession(browser.http, remote, first["access_token"])
        await owner.open()
        borrowing = RawSession(browser.http, remote, second["access_token"])
        borrowing.headers["Mcp-Session-Id"] = owner.headers["Mcp-Session-Id"]
        borrowed = await borrowing.post("tools/list")
        assert borrowed.status_code in (401, 403, 404), borrowed.text
        assert (await owner.post("tools/list")).status_code == 200
    finally:
        await browser.aclose()


async def test_an_expired_bitrix24_token_is_refreshed_into_the_store(remote: Remote) -> None:
    storage, browser = MemoryStorage(), Browser()
    try:
        async with signed_in_session(remote, storage, browser) as client:
            assert ok(await client.call_tool("list_external_lines", {})) == []
            async with httpx2.AsyncClient() as http:
                await http.post(f"{remote.sandbox.base_url}/_sandbox/expire-tokens")
            assert ok(await client.call_tool("list_external_lines", {})) == []
            assert remote.sandbox.portal.stats.refreshes == 1
            # The rotated pair was saved (sealed): the next call needs no refresh.
            assert ok(await client.call_tool("list_external_lines", {})) == []
            assert remote.sandbox.portal.stats.refreshes == 1
    finally:
        await browser.aclose()


@pytest.fixture
def redis_remote(tmp_path: Path, redis_server: RedisServer) -> Iterator[Remote]:
    key = base64.b64encode(os.urandom(32)).decode()
    with remote_server(tmp_path, B24_REDIS_URL=redis_server.own_database(), B24_TOKEN_KEY=key) as started:
        yield started


async def test_one_refresh_for_the_expired_user_across_two_replicas(redis_remote: Remote) -> None:
    """20 calls across 2 replicas on Redis as the portal expires one user's token: exactly one Bitrix24 refresh
    (that user's), every call answered, each with its own user's rights."""
    portal = redis_remote.sandbox.portal
    browsers = [Browser(), Browser()]
    storages = [MemoryStorage(), MemoryStorage()]
    try:
        await browsers[1].http.get(f"{redis_remote.sandbox.base_url}/_sandbox/sign-in-as", params={"user_id": "2"})
        for browser, storage in zip(browsers, storages, strict=True):
            async with signed_in_session(redis_remote, storage, browser) as client:
                assert ok(await client.call_tool("list_external_lines", {})) == []
        tokens = [storage.tokens.access_token for storage in storages if storage.tokens is not None]
        assert len(tokens) == 2
        args = ("--remote", "--public-url", redis_remote.public)
        with http_server(redis_remote.env, "http", *args) as second:
            urls = [redis_remote.mcp_url, second.url]
            async with AsyncExitStack() as stack:
                sessions = [
                    await stack.enter_async_context(http_session(url, token)) for url in urls for token in tokens
                ]  # (replica 1, user 1), (replica 1, user 2), (replica 2, user 1), (replica 2, user 2)
                async with httpx2.AsyncClient() as http:
                    expired = await http.post(f"{redis_remote.sandbox.base_url}/_sandbox/expire-tokens?user_id=1")
                assert expired.json()["expired"] >= 1  # user 1's only
                before_refreshes, before_callers = portal.stats.refreshes, portal.stats.callers.copy()
                results: list[Any] = []

                async def call(client: Client) -> None:
                    results.append(ok(await client.call_tool("list_external_lines", {})))

                async with anyio.create_task_group() as group:
                    for index in range(20):
                        group.start_soon(call, sessions[index % 4])
                assert results == [[]] * 20
                assert portal.stats.refreshes - before_refreshes == 1
                assert portal.stats.callers - before_callers == {1: 10, 2: 10}
    finally:
        for browser in browsers:
            await browser.aclose()


async def test_remote_mode_on_redis_signs_in_statelessly(redis_remote: Remote) -> None:
    storage, browser = MemoryStorage(), Browser()
    try:
        async with signed_in_session(redis_remote, storage, browser) as client:
            assert ok(await client.call_tool("list_external_lines", {})) == []
    finally:
        await browser.aclose()
    assert not (redis_remote.state_dir / "b24-telephony-mcp" / "remote" / "token-key").exists()


@contextmanager
def metadata_document(make: Callable[[str], dict[str, Any]]) -> Iterator[str]:
    """A client ID metadata document on a loopback HTTP server: its URL (the document is `make(url)`)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/oauth/client.json"

    with loopback_site(port, lambda path: ("application/json", json.dumps(make(url)).encode())):
        yield url


def authorize_query(client_id: str, challenge: str, **extra: str) -> str:
    query = {
        "client_id": client_id,
        "redirect_uri": CLIENT_REDIRECT,
        "response_type": "code",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return str(httpx2.QueryParams(query))


async def test_a_client_id_metadata_document_signs_in_without_registration(remote: Remote) -> None:
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(f"{remote.public}/.well-known/oauth-authorization-server")).json()
    assert metadata["client_id_metadata_document_supported"] is True
    document = {
        "client_name": "Document Client",
        "redirect_uris": [CLIENT_REDIRECT],
        "token_endpoint_auth_method": "none",
    }
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    browser = Browser()
    try:
        with metadata_document(lambda url: {"client_id": url, **document}) as client_id:
            page = await browser.go(f"{remote.public}/authorize?{authorize_query(client_id, challenge)}")
            assert isinstance(page, httpx2.Response) and "Document Client" in page.text
            answer = await browser.submit(page, "allow")
            assert isinstance(answer, str)
            code = parse_qs(urlsplit(answer).query)["code"][0]
            tokens = await token_request(
                browser.http,
                remote,
                grant_type="authorization_code",
                client_id=client_id,
                code=code,
                redirect_uri=CLIENT_REDIRECT,
                code_verifier=verifier,
            )
            assert tokens.status_code == 200, tokens.text
        # A document that does not name itself is no client: an error answer, never a redirect.
        with metadata_document(lambda url: {"client_id": "https://other.example/c.json", **document}) as client_id:
            refused = await browser.http.get(f"{remote.public}/authorize?{authorize_query(client_id, challenge)}")
            assert refused.status_code == 400 and "location" not in refused.headers
    finally:
        await browser.aclose()


async def test_a_refused_bitrix24_refresh_revokes_the_grant_and_that_call_answers_401(remote: Remote) -> None:
    browser = Browser()
    try:
        # Two sign-ins of one user: their grants share the user's pair.
        first, second = await signed_in_tokens(remote, browser), await signed_in_tokens(remote, browser)
        answered, streamed = (RawSession(browser.http, remote, tokens["access_token"]) for tokens in (first, second))
        for session in (answered, streamed):
            await session.open()
        call = {"name": "list_external_lines", "arguments": {}}
        assert (await answered.post("tools/call", call)).json()["result"]["isError"] is False
        # The portal forgets every refresh token (a user deactivated, the application reinstalled), and the
        # access token expires: the next call's refresh is refused for good.
        portal = remote.sandbox.portal
        portal.expire_all_tokens()
        with portal.lock:
            portal._refresh_tokens.clear()
        refused = await answered.post("tools/call", call)
        # That very call answers 401 with the bearer challenge, so the client signs in again at once.
        assert refused.status_code == 401, refused.text
        challenge = refused.headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"') and "resource_metadata=" in challenge
        assert refused.json()["error"] == "invalid_token" and first["access_token"] not in refused.text
        assert (await answered.post("tools/list")).status_code == 401  # the grant is gone
        # A call answered as a stream has started its answer before the refresh: the error result says it,
        # never a success-shaped one, and the next request is the 401.
        streamed_call = await streamed.post("tools/call", {**call, "_meta": {"progressToken": "p1"}})
        assert streamed_call.headers["content-type"].startswith("text/event-stream")
        event = next(line for line in streamed_call.text.splitlines() if line.startswith("data:") and '"id"' in line)
        result = json.loads(event.removeprefix("data:"))["result"]
        assert result["isError"] and result["structuredContent"]["error"]["code"] == "NOT_SIGNED_IN"
        assert (await streamed.post("tools/list")).status_code == 401
    finally:
        await browser.aclose()
    # Signing in again works: a new grant with a new Bitrix24 pair.
    storage, browser = MemoryStorage(), Browser()
    try:
        async with signed_in_session(remote, storage, browser) as client:
            assert ok(await client.call_tool("list_external_lines", {})) == []
    finally:
        await browser.aclose()


def grants(remote: Remote, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command("--public-url", remote.public, "grants", *args),
        env=remote.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_grants_list_and_revoke(remote: Remote) -> None:
    browser = Browser()
    try:
        tokens = await signed_in_tokens(remote, browser)
    finally:
        await browser.aclose()
    listed = grants(remote, "list")
    assert listed.returncode == 0, listed.stderr
    host = urlsplit(remote.sandbox.base_url).netloc
    row = next(line for line in listed.stdout.splitlines() if host in line)
    assert "1 " in row and "180 days" in listed.stdout
    for secret in (tokens["access_token"], tokens["refresh_token"], remote.sandbox.config.client_secret):
        assert secret not in listed.stdout + listed.stderr
    assert grants(remote, "list", "--portal", "other.bitrix24.com").stdout.startswith("No grants.")
    assert grants(remote, "revoke", "--user", "1").returncode == 2  # --user needs --portal
    revoked = grants(remote, "revoke", row.split()[0])
    assert revoked.returncode == 0 and revoked.stdout.strip() == "Revoked 1 grant.", revoked.stderr
    async with httpx2.AsyncClient(timeout=10) as http:
        after = await http.post(
            remote.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/json"},
        )
    assert after.status_code == 401
    assert grants(remote, "list").stdout.startswith("No grants.")


def install_form(remote: Remote, event: str, application_token: str, **auth: str) -> dict[str, str]:
    host = urlsplit(remote.sandbox.base_url).netloc
    fields = {
        "event": event,
        "ts": "1696527000",
        "data[LANGUAGE_ID]": "en",
        "auth[domain]": host,
        "auth[member_id]": remote.sandbox.portal.member_id,
        "auth[client_endpoint]": f"{remote.sandbox.base_url}/rest/",
        "auth[server_endpoint]": f"{remote.sandbox.base_url}/rest/",
        "auth[application_token]": application_token,
    }
    fields.update({f"auth[{name}]": value for name, value in auth.items()})
    return fields


async def test_install_and_uninstall(remote: Remote) -> None:
    browser = Browser()
    try:
        tokens = await signed_in_tokens(remote, browser)
    finally:
        await browser.aclose()
    install = f"{remote.public}/bitrix24/install"
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    bearer = {"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        # A forged install (a token that does not work on the portal) is not believed.
        forged = await http.post(install, data=install_form(remote, "ONAPPINSTALL", "forged", access_token="nope"))
        assert forged.status_code == 403
        sent = install_form(remote, "ONAPPINSTALL", "the-app-token", access_token=remote.sandbox.access_token)
        installed = await http.post(install, data=sent)
        assert installed.status_code == 200, installed.text
        # The forger cannot uninstall with its own token, nor anyone without one: nothing changes.
        for wrong in ("forged", ""):
            refused = await http.post(install, data=install_form(remote, "ONAPPUNINSTALL", wrong))
            assert refused.status_code == 403
        # Still signed in (past the bearer check; the MCP session itself is another matter: 400 without one).
        assert (await http.post(remote.mcp_url, json=listing, headers=bearer)).status_code != 401
        assert "refused" in remote.server.stderr and "the-app-token" not in remote.server.stderr
        removed = await http.post(install, data=install_form(remote, "ONAPPUNINSTALL", "the-app-token"))
        assert removed.status_code == 200
        assert (await http.post(remote.mcp_url, json=listing, headers=bearer)).status_code == 401
    assert grants(remote, "list").stdout.startswith("No grants.")


async def test_two_users_of_one_portal_each_call_with_their_own_rights(remote: Remote) -> None:
    """Two people sign in from their own browsers (the portal knows them as users 1 and 2); each one's calls run
    with that user's token, whichever client, and a sign-in by one never lends the other anything."""
    callers = remote.sandbox.portal.stats.callers
    browsers = [Browser(), Browser()]
    try:
        await browsers[1].http.get(f"{remote.sandbox.base_url}/_sandbox/sign-in-as", params={"user_id": "2"})
        async with (
            signed_in_session(remote, MemoryStorage(), browsers[0]) as first,
            signed_in_session(remote, MemoryStorage(), browsers[1]) as second,
        ):
            before = callers.copy()
            assert ok(await second.call_tool("list_external_lines", {})) == []
            assert callers - before == {2: 1}
            before = callers.copy()
            assert ok(await first.call_tool("list_external_lines", {})) == []
            assert ok(await first.call_tool("list_external_lines", {})) == []
            assert callers - before == {1: 2}
    finally:
        for browser in browsers:
            await browser.aclose()
    listed = grants(remote, "list").stdout
    assert "1 Admin Sandbox" in listed and "2 Olivia Operator" in listed


async def test_registration_is_rate_limited_per_address(remote: Remote) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        answers = [(await register(http, remote, "http://127.0.0.1:5555/cb")).status_code for _ in range(12)]
    assert answers[:10] == [201] * 10
    assert answers[10:] == [429, 429]


async def test_replicas_on_redis_share_the_registration_limit(redis_remote: Remote) -> None:
    """Behind a balancer the limit is the limit, not its sum over replicas: 12 registrations alternating between
    two replicas get 10 x 201, then 429."""
    with http_server(redis_remote.env, "http", "--remote", "--public-url", redis_remote.public) as second:
        replicas = [redis_remote.public, second.url.removesuffix("/mcp")]
        async with httpx2.AsyncClient(timeout=10) as http:
            answers = [
                await register(http, redis_remote, "http://127.0.0.1:5555/cb", at=replicas[n % 2]) for n in range(12)
            ]
    assert [answer.status_code for answer in answers] == [201] * 10 + [429, 429]
    assert answers[-1].json()["error"] == "slow_down"
    assert int(answers[-1].headers["retry-after"]) >= 1


@dataclass
class SandboxRemote:
    server: HttpServer
    portals: list[str]

    @property
    def public(self) -> str:
        return self.server.url.removesuffix("/mcp")


@contextmanager
def sandbox_remote_server(tmp_path: Path, **extra_env: str) -> Iterator[SandboxRemote]:
    """`--sandbox --remote`: the server's own two sandbox portals, one marketplace application on both."""
    env = clean_env(**FAST_LIMITS, XDG_STATE_HOME=str(tmp_path / "state"), **extra_env)
    with http_server(env, "http", "--sandbox", "--remote") as server:
        portals = re.findall(r"sandbox portal \d: (\S+)", server.stderr)
        assert len(portals) == 2, server.stderr
        yield SandboxRemote(server, portals)


@pytest.fixture
def sandbox_remote(tmp_path: Path) -> Iterator[SandboxRemote]:
    with sandbox_remote_server(tmp_path) as started:
        yield started


async def portal_calls(portal: str) -> int:
    async with httpx2.AsyncClient() as http:
        stats = (await http.get(f"{portal}/_sandbox/stats")).json()
    return int(stats["requests"].get("telephony.externalline.get", 0)) + int(
        stats["requests"].get("telephony.externalline.add", 0)
    )


async def test_sandbox_remote_serves_two_portals_apart(sandbox_remote: SandboxRemote) -> None:
    """Each portal's users sign in by typing its address; each grant's calls reach its own portal only, and one
    portal's lines are not the other's."""
    remote = Remote(sandbox_remote.server, None, sandbox_remote.public, Path(), {})  # type: ignore[arg-type]
    browsers = [Browser(), Browser()]
    typed = [urlsplit(portal).netloc for portal in sandbox_remote.portals]

    def typing(index: int) -> OAuthClientProvider:
        provider = oauth_client(remote, browsers[index], MemoryStorage())
        original = browsers[index].submit

        async def submit(page: httpx2.Response, action: str, **fields: str) -> httpx2.Response | str:
            assert '<label for="portal">' in page.text and 'id="portal" name="portal"' in page.text
            return await original(page, action, portal=typed[index], **fields)

        browsers[index].submit = submit  # type: ignore[method-assign]
        return provider

    try:
        async with (
            httpx2.AsyncClient(auth=typing(0), timeout=30) as first_http,
            httpx2.AsyncClient(auth=typing(1), timeout=30) as second_http,
            Client(streamable_http_client(remote.mcp_url, http_client=first_http), mode="legacy") as first,
            Client(streamable_http_client(remote.mcp_url, http_client=second_http), mode="legacy") as second,
        ):
            before = [await portal_calls(portal) for portal in sandbox_remote.portals]
            added = await first.call_tool("add_external_line", {"NUMBER": "74951234567", "NAME": "First's line"})
            assert not added.is_error, added
            assert [await portal_calls(portal) for portal in sandbox_remote.portals] == [before[0] + 1, before[1]]
            assert ok(await second.call_tool("list_external_lines", {})) == []
            assert [await portal_calls(portal) for portal in sandbox_remote.portals] == [before[0] + 1, before[1] + 1]
            lines = ok(await first.call_tool("list_external_lines", {}))
            assert [line["NUMBER"] for line in lines] == ["74951234567"]
    finally:
        for browser in browsers:
            await browser.aclose()


async def test_sandbox_remote_refuses_a_portal_it_does_not_serve(sandbox_remote: SandboxRemote) -> None:
    browser = Browser()
    try:
        client = (
            await register(
                browser.http, Remote(sandbox_remote.server, None, sandbox_remote.public, Path(), {}), CLIENT_REDIRECT
            )
        ).json()  # type: ignore[arg-type]
        page = await browser.go(f"{sandbox_remote.public}/authorize?{authorize_query(client['client_id'], 'c' * 43)}")
        assert isinstance(page, httpx2.Response)
        for typed in ("evil.example.com", "127.0.0.1:1", "javascript:alert(1)"):
            again = await browser.go(
                f"{sandbox_remote.public}/authorize?{authorize_query(client['client_id'], 'c' * 43)}"
            )
            assert isinstance(again, httpx2.Response)
            answer = await browser.submit(again, "allow", portal=typed)
            assert isinstance(answer, httpx2.Response) and "Not a Bitrix24 address" in answer.text, typed
            # The same consent page again (400), with the text kept to correct: the request is not spent.
            assert answer.status_code == 400 and f'value="{html.escape(typed)}"' in answer.text, typed
            assert form_fields(answer.text)["request"] == form_fields(again.text)["request"]
    finally:
        await browser.aclose()


def test_the_remote_example_runs() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "remote_session.py"
    process = subprocess.run(
        [sys.executable, str(example)], env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert "signed in:" in process.stdout and "74951234567" in process.stdout


async def test_metrics_count_sign_ins_and_refusals_behind_their_own_token(remote: Remote) -> None:
    browsers = [Browser(), Browser(), Browser()]
    try:
        _, allowed = await manual_sign_in(remote, browsers[0])
        assert isinstance(allowed, str) and allowed.startswith(CLIENT_REDIRECT)
        await manual_sign_in(remote, browsers[1], action="deny")
        forged = await browsers[2].http.post(f"{remote.public}/bitrix24/signin", data={"request": "x", "csrf": "y"})
        assert forged.status_code == 403
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{remote.public}/metrics")).status_code == 401
            wrong = await http.get(f"{remote.public}/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            answer = await http.get(f"{remote.public}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert answer.status_code == 200
        text = answer.text
        for line in (
            "b24mcp_grants_total 1.0",
            'b24mcp_signins_total{result="signed_in"} 1.0',
            'b24mcp_signins_total{result="denied"} 1.0',
            'b24mcp_signins_total{result="refused"} 1.0',
            'b24mcp_refusals_total{reason="forged_form"} 1.0',
        ):
            assert line in text.splitlines(), line
        assert METRICS_TOKEN not in remote.server.stderr
    finally:
        for browser in browsers:
            await browser.aclose()
