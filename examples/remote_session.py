"""Remote mode end to end: `b24-telephony-mcp --sandbox --remote --transport http`, signed in to with the SDK's own
OAuth client (discovery from the 401, dynamic registration, PKCE, the sign-in, the token), then a tool call.

The server starts two sandbox portals with one marketplace application installed on both. The "browser" here is an
HTTP client that opens the consent page, types the first portal's address and presses Allow, as a person would;
to do it yourself, start the server the same way and open the authorization address your MCP client prints.

    python examples/remote_session.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

REDIRECT = "http://127.0.0.1:33418/callback"  # where the assistant would listen; the browser stops here


class Memory(TokenStorage):
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


async def sign_in(browser: httpx2.AsyncClient, authorization_url: str, portal: str) -> str:
    """Open the consent page, type the portal, press Allow, follow the redirects: the address the client gets."""
    page = await browser.get(authorization_url)
    while page.is_redirect:
        page = await browser.get(urljoin(str(page.url), page.headers["location"]))
    print(f"   consent page: {re.search(r'<strong>(.*?)</strong>', page.text)[1]} asks; typing {portal}, Allow")  # type: ignore[index]
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    answer = await browser.post(
        urljoin(str(page.url), "/bitrix24/signin"), data={**form, "portal": portal, "action": "allow"}
    )
    while answer.is_redirect:
        target = urljoin(str(answer.url), answer.headers["location"])
        if target.startswith(REDIRECT):
            return target
        answer = await browser.get(target)
    raise SystemExit(f"the sign-in ended on a page instead: {answer.text}")


def start_server() -> tuple[subprocess.Popen[str], str, list[str]]:
    """The server, once it listens: the process, its MCP URL and its two portals' addresses."""
    process = subprocess.Popen(
        [sys.executable, "-m", "b24_telephony_mcp", "--sandbox", "--remote", "--transport", "http", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "B24_LOG_LEVEL": "WARNING"},
    )
    assert process.stderr is not None
    portals: list[str] = []
    for line in process.stderr:
        print(line.rstrip())
        portals += re.findall(r"sandbox portal \d: (\S+)", line)
        if "serving MCP over" in line:
            return process, line.rsplit(" at ", 1)[1].strip(), portals
    raise SystemExit("the server did not start")


async def session(url: str, portals: list[str]) -> None:
    browser = httpx2.AsyncClient(follow_redirects=False, timeout=30)
    reached: dict[str, str] = {}

    async def redirect_handler(authorization_url: str) -> None:
        print("-> the client opens the browser at /authorize")
        reached["url"] = await sign_in(browser, authorization_url, urlsplit(portals[0]).netloc)

    async def callback_handler() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(reached["url"]).query)
        print("<- back at the client with an authorization code")
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0])

    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="Example Assistant",
            redirect_uris=[AnyUrl(REDIRECT)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=Memory(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        tools = await client.list_tools()
        print(f"<- signed in: {len(tools.tools)} tools")
        result = await client.call_tool("add_external_line", {"NUMBER": "74951234567", "NAME": "Office PBX"})
        print(f"-> add_external_line on {portals[0]}: {result.structured_content}")
        result = await client.call_tool("list_external_lines", {})
        print(f"-> list_external_lines: {result.structured_content}")
    await browser.aclose()


def main() -> None:
    process, url, portals = start_server()
    try:
        anyio.run(session, url, portals)
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
