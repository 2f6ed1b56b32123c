"""One portal's events as the tools see them: what came in (from the drainer or an online POST) goes into the
store once and wakes the readers waiting for it; a read is by cursor, and may wait for the next event."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence

import anyio

from b24_telephony_mcp.events.drain import DrainStatus, OfflineDrainer
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


class EventHub:
    def __init__(self, store: EventStore, portal: str, drainer: OfflineDrainer | None = None) -> None:
        self.store = store
        self.portal = portal
        """Whose events these are: the store keeps each portal's apart."""
        self.drainer = drainer
        self._arrived = anyio.Event()
        self._listeners: list[Listener] = []
        self._active = anyio.Event()

    @property
    def drain_status(self) -> DrainStatus | None:
        return self.drainer.status if self.drainer is not None else None

    def listen(self, listener: Listener) -> None:
        """Call `listener` with each batch of new events (resource subscriptions)."""
        self._listeners.append(listener)

    def activate(self) -> None:
        """Start draining the offline queue (once the events toolset is offered; idempotent)."""
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
        if self.drainer is not None:
            self.drainer.reader_waiting(+1)
        try:
            yield
        finally:
            if self.drainer is not None:
                self.drainer.reader_waiting(-1)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The drainer (once activated) and the store's clean-up, in the background while the block runs."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._drain_when_active)
            group.start_soon(self._expire_now_and_then)
            try:
                yield
            finally:
                group.cancel_scope.cancel()

    async def _drain_when_active(self) -> None:
        if self.drainer is None:
            return
        await self._active.wait()
        await self.drainer.run()

    async def _expire_now_and_then(self) -> None:
        while True:
            await anyio.sleep(EXPIRE_EVERY_SECONDS)
            try:
                await self.store.expire()
            except Exception:
                log.exception("dropping old events failed")
