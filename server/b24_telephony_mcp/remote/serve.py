"""Remote mode's parts, built from the settings: the store (embedded or Redis), the provider, the sign-in and
installation routes, the connections the server resolves per request, with each portal's events when the events
may be offered. The commands call `open_remote`; serving mounts what it returns."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx2

from b24_telephony_mcp.bitrix.client import http_pool
from b24_telephony_mcp.config.settings import RemoteConfig, Settings
from b24_telephony_mcp.remote.connections import RemoteConnections
from b24_telephony_mcp.remote.install import Installation
from b24_telephony_mcp.remote.provider import BitrixAuthProvider
from b24_telephony_mcp.remote.signin import SignIn
from b24_telephony_mcp.remote.store import RemoteStore, open_store
from b24_telephony_mcp.state.journal import CallJournal

if TYPE_CHECKING:
    from starlette.routing import Route

    from b24_telephony_mcp.bitrix.redis_state import RedisState


@dataclass(frozen=True)
class RemoteParts:
    config: RemoteConfig
    store: RemoteStore
    provider: BitrixAuthProvider
    connections: RemoteConnections
    routes: list[Route]


async def open_remote(
    settings: Settings,
    state: RedisState | None,
    journal: CallJournal,
    offer: str,
    stack: AsyncExitStack,
    events: bool = False,
) -> RemoteParts:
    """Everything remote mode serves with; closed with `stack`. `offer` says in words what a signed-in client may
    do (the consent page shows it); `events`: whether the events toolset may be offered (each portal's events are
    then kept, drained and taken in from online posts)."""
    config = settings.portal
    assert isinstance(config, RemoteConfig)
    store = open_store(config, state)
    stack.push_async_callback(store.aclose)
    http = http_pool(httpx2.Timeout(60.0, connect=5.0))
    stack.push_async_callback(http.aclose)
    bucket = (lambda url: state.bucket(url, settings.rate, settings.burst)) if state is not None else None
    connections = RemoteConnections(settings, config, store, journal, http, bucket)
    provider = BitrixAuthProvider(config, store, http)
    routes = [*SignIn(config, store, http, offer).routes(), *Installation(config, store, http).routes()]
    if events:
        from b24_telephony_mcp.config.wiring import offline_drainer, open_event_store
        from b24_telephony_mcp.events.hub import EventHubs

        event_store = open_event_store(settings, state)
        stack.callback(event_store.close)
        connections.hubs = EventHubs(
            event_store,
            connections.drainer_for(partial(offline_drainer, settings, state)),
        )
        await stack.enter_async_context(connections.hubs.running())
    return RemoteParts(config, store, provider, connections, routes)
