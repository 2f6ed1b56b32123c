"""The portal connection a request runs with, resolved per request.

A `Connection` is the REST client (its token pair, its portal's rate bucket) and the `ToolContext` (its journal,
its application key) of one caller. A server asks its `Connections` for the current request's connection every
time it needs one (a tool call, a completion), so no code holds a connection it was not given for this request.
A process serving one portal (stdio, webhook, the static-bearer HTTP server) answers the same one every time
(`FixedConnection`); remote mode resolves it from the request's MCP access token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from b24_telephony_mcp.bitrix import BitrixClient
from b24_telephony_mcp.tools.base import ToolContext

if TYPE_CHECKING:  # the events floor is loaded only when the events are offered
    from b24_telephony_mcp.events.hub import EventHub


@dataclass(frozen=True)
class Connection:
    """One caller's way to the portal."""

    client: BitrixClient
    context: ToolContext
    key: str
    """Whose connection this is (the application, or portal and user): what a cache of portal values is kept
    under, so one caller never sees values read with another's rights."""


class Connections(Protocol):
    """Where a server gets the connection of the request being served."""

    @property
    def events(self) -> EventHub | None:
        """The events the server serves as its resource (`b24://telephony/events`): one portal's, when it has one."""
        ...

    async def current(self) -> Connection:
        """The connection of the request being served; a `BitrixError` when it has none (signed out, revoked)."""
        ...


@dataclass(frozen=True)
class FixedConnection:
    """A process serving one portal connection: every request gets it."""

    connection: Connection

    @property
    def events(self) -> EventHub | None:
        return self.connection.context.events

    async def current(self) -> Connection:
        return self.connection
