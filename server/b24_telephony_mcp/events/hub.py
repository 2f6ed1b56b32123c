"""One portal's events as the tools see them: what came in (from the drainer or an online POST) goes into the
store once and wakes the readers waiting for it; a read is by cursor, and may wait for the next event.

`EventHubs` keeps many portals' apart (remote mode): one hub per portal over one store, each drained with the
connection of a request of that portal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from functools import partial

import anyio
from anyio.abc import TaskGroup

from b24_telephony_mcp.bitrix import BitrixClient
from b24_telephony_mcp.events.drain import DrainStatus, Ingest, OfflineDrainer
from b24_telephony_mcp.events.records import StoredEvent, TelephonyEvent
from b24_telephony_mcp.events.store import EventStore

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 50
"""get_telephony_events' longest wait: under the 60 s many clients give a call, progress or not."""
STORE_POLL_SECONDS = 1.0
"""How often a waiting read looks at the store for events another process stored (its own wake it at once)."""
EXPIRE_EVERY_SECONDS = 3600.0

Listener = Callable[[Sequence[StoredEvent]], Awaitable[None]]
Progress = Callable[[float, float | None, str | None], Awaitable[None]]
DrainerFor = Callable[[BitrixClient, Ingest], OfflineDrainer]
"""A drainer of the hub's portal with the connection of the request that activates it, storing into `ingest`."""


class EventHub:
    def __init__(
        self,
        store: EventStore,
        portal: str,
        drainer: OfflineDrainer | None = None,
        drainer_for: DrainerFor | None = None,
    ) -> None:
        self.store = store
        self.portal = portal
        """Whose events these are: the store keeps each portal's apart."""
        self.drainer = drainer
        self._drainer_for = drainer_for
        """Remote mode: no connection of its own; an activating request's gives the drainer, while none drains."""
        self._arrived = anyio.Event()
        self._listeners: list[Listener] = []
        self._active = anyio.Event()

    @property
    def drain_status(self) -> DrainStatus | None:
        return self.drainer.status if self.drainer is not None else None

    def listen(self, listener: Listener) -> None:
        """Call `listener` with each batch of new events (resource subscriptions)."""
        self._listeners.append(listener)

    def activate(self, client: BitrixClient | None = None) -> None:
        """Start draining the offline queue (once the events toolset is offered; idempotent). `client`: the
        activating request's connection, which a hub with `drainer_for` drains with when no drainer runs (none yet,
        or the last one stopped: its user was no administrator, or signed out)."""
        idle = self.drainer is None or self.drainer.status.state == "stopped"
        if self._drainer_for is not None and client is not None and idle:
            self.drainer = self._drainer_for(client, self.ingest)
        self._active.set()

    async def ingest(self, events: Sequence[TelephonyEvent]) -> list[StoredEvent]:
        """Store the events not stored yet; wake the waiting readers and tell the listeners of those."""
        added = await self.store.add(self.portal, events)
        if added:
            self._arrived.set()
            self._arrived = anyio.Event()
            for listener in self._listeners:
                try:
                    await listener(added)
                except Exception:  # a subscriber's failure must not lose the event for the others
                    log.exception("telling a subscriber of new events failed")
        return added

    async def read(self, after: str | None, names: Collection[str] | None = None, limit: int = 50) -> list[StoredEvent]:
        return await self.store.read(self.portal, after, names, limit)

    async def wait(
        self,
        after: str | None,
        names: Collection[str] | None,
        limit: int,
        seconds: float,
        progress: Progress | None = None,
    ) -> list[StoredEvent]:
        """Like `read`, but when there is nothing yet, wait up to `seconds` for something to arrive (an empty list
        at the deadline), reporting the seconds waited to `progress` each second."""
        deadline = anyio.current_time() + seconds
        with self._reader_waiting():
            while True:
                events = await self.read(after, names, limit)
                remaining = deadline - anyio.current_time()
                if events or remaining <= 0:
                    return events
                arrived = self._arrived
                with anyio.move_on_after(min(remaining, STORE_POLL_SECONDS)):
                    await arrived.wait()
                if progress is not None:
                    waited = seconds - max(0.0, deadline - anyio.current_time())
                    await progress(round(waited, 1), seconds, "waiting for telephony events")

    @contextlib.contextmanager
    def _reader_waiting(self) -> Iterator[None]:
        drainer = self.drainer  # the one told of this reader is the one told it left, if another replaces it
        if drainer is not None:
            drainer.reader_waiting(+1)
        try:
            yield
        finally:
            if drainer is not None:
                drainer.reader_waiting(-1)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The drainer (once activated) and the store's clean-up, in the background while the block runs."""
        async with anyio.create_task_group() as group:
            group.start_soon(self.drain)
            group.start_soon(expire_now_and_then, self.store)
            try:
                yield
            finally:
                group.cancel_scope.cancel()

    async def drain(self) -> None:
        """Run the drainer once activated; with `drainer_for`, the next one an activation gives after it stops."""
        if self._drainer_for is None:  # one portal: its drainer (if it has one) runs until the server ends
            await self._active.wait()
            if self.drainer is not None:
                await self.drainer.run()
            return
        while True:
            await self._active.wait()
            drainer = self.drainer  # None: activated without a connection, so it waits for one that has it
            if drainer is not None:
                try:
                    await drainer.run()
                except Exception:
                    # One portal's failure must not end the others' (they share the task group): this one stops.
                    log.exception("draining a portal's offline event queue failed")
                    drainer.status.state = "stopped"
            if self.drainer is drainer:  # not replaced meanwhile: the next activation starts another
                self._active = anyio.Event()


async def expire_now_and_then(store: EventStore) -> None:
    """Drop the events past the retention, every hour."""
    while True:
        await anyio.sleep(EXPIRE_EVERY_SECONDS)
        try:
            await store.expire()
        except Exception:
            log.exception("dropping old events failed")


PortalDrainerFor = Callable[[str, BitrixClient, Ingest], OfflineDrainer]
"""A drainer of portal `portal` with a request's connection, storing into `ingest`."""


class EventHubs:
    """Many portals' events (remote mode): one `EventHub` per portal, made when a request of that portal or a post
    proven to be from it first needs it, over one store and one clean-up. Each hub is drained by its own drainer
    (with Redis, one per portal across the replicas: the drainer's lease)."""

    def __init__(self, store: EventStore, drainer_for: PortalDrainerFor) -> None:
        self.store = store
        self._drainer_for = drainer_for
        self._hubs: dict[str, EventHub] = {}
        self._group: TaskGroup | None = None

    def hub(self, portal: str) -> EventHub:
        """Portal `portal`'s hub (the caller has proven the portal: a grant of it, or its application token)."""
        hub = self._hubs.get(portal)
        if hub is None:
            if self._group is None:
                raise RuntimeError("the event hubs are not running")
            hub = self._hubs[portal] = EventHub(self.store, portal, drainer_for=partial(self._drainer_for, portal))
            self._group.start_soon(hub.drain)
        return hub

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The hubs' drainers and the store's clean-up, in the background while the block runs."""
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(expire_now_and_then, self.store)
            try:
                yield
            finally:
                self._group = None
                group.cancel_scope.cancel()
