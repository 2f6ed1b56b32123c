from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from redis_server import RedisServer
from skips import pytest_runtest_makereport  # noqa: F401  (the hook: in CI a skip is a failure)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Session-wide, so module-scoped async fixtures (one server for a module's tests) can use it."""
    return "asyncio"


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    """A fresh portal per test, with limits high enough never to throttle ordinary tests."""
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as running:
        yield running


@pytest.fixture(scope="module")
def module_sandbox() -> Iterator[RunningSandbox]:
    """One portal for a module's tests that share it (each resets what it changes), same limits as `sandbox`."""
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as running:
        yield running


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tokens.json"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session; tests keep apart through their own portal (own keys)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); a browser is never downloaded
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Nothing of Chromium's own reaches a network: tests watch every request a page makes, and run offline.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright, one per module; Playwright gives each launch a new empty profile
    (user-data-dir), and each test opens its own context (cookies, JavaScript on or off)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("Debian's chromium is needed: apt-get install chromium (.ci/run does)", False)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        await browser.close()
