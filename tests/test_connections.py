"""The seam: a server asks its `Connections` for the request's portal connection each time it needs one, and what
it keeps of a portal's answers (completion values) is kept per connection, never shared between callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import anyio

from b24_telephony_mcp.bitrix import BitrixClient, BitrixResponse
from b24_telephony_mcp.prompts.base import Argument, Source
from b24_telephony_mcp.prompts.completions import Completer
from b24_telephony_mcp.tools import ToolContext
from b24_telephony_mcp.tools.connection import Connection


@dataclass
class PortalOf:
    """A REST client stand-in answering one portal's user names, counting its requests."""

    names: list[str]
    requests: int = 0

    async def call(self, method: str, params: Any, read_only: bool = False) -> BitrixResponse:
        self.requests += 1
        return BitrixResponse(self.names)


@dataclass
class Switching:
    """Connections whose current one is whichever the test says."""

    current_connection: Connection
    asked: int = field(default=0)

    async def current(self) -> Connection:
        self.asked += 1
        return self.current_connection


def connection(portal: PortalOf, key: str) -> Connection:
    return Connection(cast(BitrixClient, portal), ToolContext(application=key), key=key)


USERS = Argument("user", "a user", sources=(Source("user.get", {}, lambda result: list(cast(list[str], result))),))


def test_completion_values_are_kept_per_connection() -> None:
    """Two callers on two portals: each sees only its own portal's values, even within the cache's lifetime."""
    first, second = PortalOf(["Ann First"]), PortalOf(["Bob Second"])
    connections = Switching(connection(first, "portal-a:1"))
    completer = Completer(connections)

    async def scenario() -> None:
        assert (await completer.complete(USERS, "")).values == ["Ann First"]
        connections.current_connection = connection(second, "portal-b:7")
        assert (await completer.complete(USERS, "")).values == ["Bob Second"]
        connections.current_connection = connection(first, "portal-a:1")
        assert (await completer.complete(USERS, "")).values == ["Ann First"]

    anyio.run(scenario)
    assert (first.requests, second.requests) == (1, 1)  # the first portal's values came from its cache entry
    assert connections.asked == 3  # resolved per request, not once


def test_fixed_choices_need_no_connection() -> None:
    connections = Switching(connection(PortalOf([]), "unused"))
    periods = Argument("period", "a period", choices=("today", "yesterday"))
    assert anyio.run(Completer(connections).complete, periods, "t").values == ["today"]
    assert connections.asked == 0
