"""The call dashboard as a person sees it: headless Chromium (Debian's, never a downloaded one) driven by Playwright.

The page is read through a real MCP client from the running server (`resources/read`), and shown in a sandboxed
iframe of a small host page written here, which speaks the MCP Apps postMessage protocol the way a host does: it
answers `ui/initialize` with a host context (theme, style variables), then sends the tool's input and the real
result of `get_call_analytics` or `get_call_statistics` from the sandbox portal, and answers `tools/call` by calling
the real server through the test's MCP client. The host enforces the CSP the resource declares, every request of
the browser is watched (only the host page itself may be requested), and any console error fails the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import CallToolResult
from playwright.async_api import Browser, Frame, Page, Request, Route

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.tools.call_analytics import CALL_DASHBOARD
from support import app_env, ok, stdio_session
from test_views import apps

pytestmark = pytest.mark.anyio

HOST = "http://host.test/"  # never reaches a network: the route below answers it
PERIOD = {"from": "2020-01-01", "to": "2030-01-01"}
DARK = {
    "theme": "dark",
    "styles": {"variables": {"--color-background-primary": "#101218", "--color-text-primary": "#f0f0f0"}},
}

HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>test host</title>
<style>html, body { margin: 0; height: 100%; } iframe { border: 0; width: 100%; height: 100%; display: block; }</style>
</head><body><iframe id="view" sandbox="allow-scripts"></iframe>
<script>
const SETUP = __SETUP__;
const frame = document.getElementById("view");
window.received = [];
window.toolCalls = [];
const send = (message) => frame.contentWindow.postMessage({ jsonrpc: "2.0", ...message }, "*");
window.hostSend = (method, params) => send({ method, params });
window.addEventListener("message", async (event) => {
  if (event.source !== frame.contentWindow) return;
  const message = event.data;
  window.received.push(message);
  if (message.method === "ui/initialize") {
    send({ id: message.id, result: {
      protocolVersion: message.params.protocolVersion,
      hostInfo: { name: "test-host", version: "1" },
      hostCapabilities: { serverTools: {} },
      hostContext: SETUP.context,
    } });
  } else if (message.method === "ui/notifications/initialized") {
    send({ method: "ui/notifications/tool-input", params: { arguments: SETUP.input } });
    send({ method: "ui/notifications/tool-result", params: SETUP.result });
  } else if (message.method === "tools/call") {
    window.toolCalls.push(message.params);
    try {
      send({ id: message.id, result: await window.callTool(message.params.name, message.params.arguments) });
    } catch (error) {
      send({ id: message.id, error: { code: -32603, message: String(error) } });
    }
  } else if (message.id !== undefined) {
    send({ id: message.id, error: { code: -32601, message: "not offered by this host" } });
  }
});
frame.srcdoc = SETUP.html;
</script></body></html>
"""


@dataclass
class Session:
    """The test's MCP client on the real server, and the page it read from it."""

    client: Client
    html: str
    csp: dict[str, list[str]]

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tool's result as it goes on the wire (what a host hands the view)."""
        result: CallToolResult = await self.client.call_tool(name, arguments)
        ok(result)
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass
class Shown:
    page: Page
    view: Frame
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def texts(self, selector: str) -> list[str]:
        return [text.strip() for text in await self.view.locator(selector).all_inner_texts()]

    async def total(self, name: str) -> str:
        return (await self.view.locator(f'[data-total="{name}"]').inner_text()).strip()

    def check_clean(self) -> None:
        """Nothing left the page but the host page itself, and nothing went wrong in it."""
        assert self.requests == [HOST], self.requests
        assert self.errors == [], self.errors


@pytest.fixture(scope="module")
def portal() -> Iterator[RunningSandbox]:
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as running:
        yield running


@pytest.fixture(scope="module")
async def session(portal: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Session]:
    token_file = tmp_path_factory.mktemp("dashboard") / "tokens.json"
    async with stdio_session(app_env(portal, token_file), extensions=apps()) as client:
        [content] = (await client.read_resource(CALL_DASHBOARD.uri)).contents
        assert content.meta is not None
        yield Session(client, getattr(content, "text", ""), content.meta["ui"]["csp"])


def with_csp(html: str, csp: dict[str, list[str]]) -> str:
    """The page under the CSP a host derives from the resource's `_meta.ui.csp` (ext-apps spec's default)."""
    connect = " ".join(csp.get("connectDomains", [])) or "'none'"
    resources = " ".join(csp.get("resourceDomains", []))
    policy = (
        f"default-src 'none'; script-src 'unsafe-inline' {resources}; style-src 'unsafe-inline' {resources}; "
        f"img-src data: {resources}; font-src data: {resources}; connect-src {connect}; frame-src 'none'; "
        "base-uri 'none'"
    )
    return html.replace("<head>", f'<head><meta http-equiv="Content-Security-Policy" content="{policy}">', 1)


async def show(
    browser: Browser,
    session: Session,
    tool_input: dict[str, Any],
    result: dict[str, Any],
    context: dict[str, Any],
    viewport: tuple[int, int] = (960, 720),
) -> Shown:
    """The dashboard in the test host with this tool input, result and host context; rendered, once it is."""
    page = await browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    setup = {"context": context, "input": tool_input, "result": result, "html": with_csp(session.html, session.csp)}
    host_page = HOST_PAGE.replace("__SETUP__", json.dumps(setup).replace("</", "<\\/"))
    shown = Shown(page, page.main_frame)

    async def answer(route: Route) -> None:
        if route.request.url == HOST:
            await route.fulfill(status=200, content_type="text/html", body=host_page)
        else:
            await route.abort()

    def watch(request: Request) -> None:
        shown.requests.append(request.url)

    page.on("request", watch)
    page.on("console", lambda message: message.type == "error" and shown.errors.append(message.text))
    page.on("pageerror", lambda error: shown.errors.append(str(error)))
    await page.route("**/*", answer)
    await page.expose_function("callTool", session.call)
    await page.goto(HOST)
    frame = await (await page.wait_for_selector("#view")).content_frame()
    assert frame is not None
    shown.view = frame
    await frame.locator("#panes:not([hidden])").wait_for()
    return shown


def digits(text: str) -> int:
    return int(re.sub(r"\D", "", text))


def duration(seconds: float | None) -> str:
    """The page's way of writing a duration: 42s, 3m 07s, 2h 05m."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


async def background(shown: Shown) -> str:
    return str(await shown.view.evaluate("getComputedStyle(document.body).backgroundColor"))


async def test_the_dashboard_shows_the_analytics_result(chromium: Browser, session: Session, tmp_path: Path) -> None:
    arguments = {**PERIOD, "group_by": ["type"]}
    result = await session.call("get_call_analytics", arguments)
    analytics = result["structuredContent"]["result"]
    shown = await show(chromium, session, arguments, result, DARK)

    # One bar per group, each with its number of calls, and the same groups in the table.
    assert await shown.view.locator(".bar").count() == len(analytics["groups"]) > 1
    assert [digits(text) for text in await shown.texts(".bar-value")] == [g["calls"] for g in analytics["groups"]]
    assert await shown.view.locator("#table tbody tr").count() == len(analytics["groups"])
    assert (await shown.texts("#table thead th"))[0] == "Type"
    everything = analytics["all"]
    assert digits(await shown.total("calls")) == everything["calls"] == analytics["rows"]
    assert digits(await shown.total("answered")) == everything["answered"]
    assert digits((await shown.total("missed")).split("(")[0]) == everything["missed"]
    assert await shown.total("duration") == duration(everything["duration"]["total"])
    assert await shown.total("mean") == duration(everything["duration"]["mean"])
    footer = await shown.texts("#table tfoot td")
    assert footer[0] == "All" and digits(footer[1]) == everything["calls"]

    # The host's dark theme: its own background variable, on a page that says it is dark.
    assert await background(shown) == "rgb(16, 18, 24)"
    assert await shown.view.evaluate("document.documentElement.dataset.theme") == "dark"
    methods = [message.get("method") for message in await shown.page.evaluate("window.received")]
    assert methods[:2] == ["ui/initialize", "ui/notifications/initialized"]
    assert "ui/notifications/size-changed" in methods

    screenshot = tmp_path / "dashboard.png"  # docs/dashboard.png is one of these
    height = await shown.view.evaluate("Math.ceil(document.documentElement.getBoundingClientRect().height)")
    await shown.page.screenshot(path=str(screenshot), clip={"x": 0, "y": 0, "width": 960, "height": height})
    print(f"dashboard screenshot: {screenshot}")
    shown.check_clean()
    await shown.page.close()


async def test_another_grouping_is_asked_of_the_server_through_the_host(chromium: Browser, session: Session) -> None:
    arguments = {**PERIOD, "group_by": ["status"], "tz": "Europe/Berlin"}
    result = await session.call("get_call_analytics", arguments)
    shown = await show(chromium, session, arguments, result, {"theme": "dark"})
    assert await background(shown) == "rgb(30, 31, 34)"  # the page's own dark fallback: no host variables

    await shown.view.locator("#group-by").select_option("day")
    await shown.view.locator("#title", has_text="by day").wait_for()
    calls = await shown.page.evaluate("window.toolCalls")
    assert calls == [{"name": "get_call_analytics", "arguments": {**arguments, "group_by": ["day"]}}]
    by_day = ok(await session.client.call_tool("get_call_analytics", {**arguments, "group_by": ["day"]}))
    # Days are a line over time: one point per day, and one table row per day.
    assert await shown.view.locator("circle.point").count() == len(by_day["groups"]) > 1
    assert [text for text in await shown.texts("#table tbody td:first-child")] == [g["day"] for g in by_day["groups"]]
    assert digits(await shown.total("calls")) == by_day["all"]["calls"]
    shown.check_clean()
    await shown.page.close()


async def test_the_dashboard_tallies_a_page_of_statistics_rows(chromium: Browser, session: Session) -> None:
    result = await session.call("get_call_statistics", {})
    rows = result["structuredContent"]["result"]
    shown = await show(chromium, session, {}, result, {"theme": "light"})
    days = sorted({row["CALL_START_DATE"][:10] for row in rows})
    assert await shown.view.locator("circle.point").count() == len(days) > 1
    assert digits(await shown.total("calls")) == len(rows)
    answered = [row for row in rows if row["CALL_FAILED_CODE"] == "200"]
    assert digits(await shown.total("answered")) == len(answered)
    assert await shown.total("duration") == duration(sum(int(row["CALL_DURATION"]) for row in answered))
    assert f"of {result['structuredContent']['total']} calls" in await shown.view.locator("#period").inner_text()
    assert await background(shown) == "rgb(255, 255, 255)"

    # Another grouping of the same rows is counted in the page: no request to the host.
    await shown.view.locator("#group-by").select_option("user")
    users = {row["PORTAL_USER_ID"] for row in rows}
    assert await shown.view.locator(".bar").count() == len(users)
    assert await shown.page.evaluate("window.toolCalls") == []
    shown.check_clean()
    await shown.page.close()


async def test_at_a_narrow_width_the_table_goes_under_the_chart(chromium: Browser, session: Session) -> None:
    arguments = {**PERIOD, "group_by": ["line"]}
    result = await session.call("get_call_analytics", arguments)
    shown = await show(chromium, session, arguments, result, DARK, viewport=(360, 720))
    chart = await shown.view.locator("#chart").bounding_box()
    table = await shown.view.locator(".table-wrap").bounding_box()
    assert chart is not None and table is not None
    assert table["y"] >= chart["y"] + chart["height"]
    assert chart["width"] + 2 * 12 <= 360 + 0.5
    overflow = await shown.view.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    shown.check_clean()
    await shown.page.close()
