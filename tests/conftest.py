from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from redis_server import RedisServer


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
