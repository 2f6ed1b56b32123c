"""The portal's latest telephony events as an MCP resource, `b24://telephony/events`, for clients that watch
resources: `resources/subscribe` (2025-11-25) gets `notifications/resources/updated` when new events are stored,
and a 2026-07-28 `subscriptions/listen` stream the same as a `ResourceUpdated` event."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp_types import (
    EmptyResult,
    ReadResourceResult,
    Resource,
    SubscribeRequestParams,
    TextResourceContents,
    UnsubscribeRequestParams,
)

if TYPE_CHECKING:  # the events' modules load only when a server hears events (the events toolset)
    from b24_telephony_mcp.events.hub import EventHub
    from b24_telephony_mcp.events.records import StoredEvent

EVENTS_URI = "b24://telephony/events"
LATEST = 20
"""Events the resource shows, newest last."""


class EventResource:
    def __init__(self, hub: EventHub, changes: InMemorySubscriptionBus) -> None:
        self._hub = hub
        self._changes = changes
        self._subscribers: dict[int, Any] = {}
        """id(session) -> the handshake-protocol session that subscribed (held only while subscribed)."""
        hub.listen(self._arrived)

    def resource(self) -> Resource:
        return Resource(
            uri=EVENTS_URI,
            name="telephony-events",
            title="Latest telephony events",
            description=f"The {LATEST} latest events heard (click-to-call, callback requests, call starts and ends).",
            mime_type="application/json",
        )

    async def read(self) -> ReadResourceResult:
        events = await self._hub.store.latest(self._hub.portal, LATEST)
        text = json.dumps([event.to_dict() for event in events], ensure_ascii=False, separators=(",", ":"))
        return ReadResourceResult(
            contents=[TextResourceContents(uri=EVENTS_URI, mime_type="application/json", text=text)]
        )

    async def subscribe(self, ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
        if str(params.uri) == EVENTS_URI:
            self._subscribers[id(ctx.session)] = ctx.session
        return EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
        if str(params.uri) == EVENTS_URI:
            self._subscribers.pop(id(ctx.session), None)
        return EmptyResult()

    async def _arrived(self, _events: Sequence[StoredEvent]) -> None:
        for key, session in list(self._subscribers.items()):
            try:
                await session.send_resource_updated(EVENTS_URI)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.pop(key, None)  # the client left without unsubscribing
        await self._changes.publish(ResourceUpdated(EVENTS_URI))  # the bus logs and skips a failing listener
