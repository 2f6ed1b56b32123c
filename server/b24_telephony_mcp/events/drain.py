"""Draining the portal's offline event queue into the store, so that no event is lost when the process dies.

Each round reads with `clear=0`, which reserves the records for a `process_id`; the events are stored; only then
`event.offline.clear` removes exactly those records. Killed between storing and clearing, the records stay
reserved on the portal: the next start finds them (`event.offline.list` shows their PROCESS_ID), reads them again
by that `process_id` and stores them again, which the store's deduplication makes one event.

Polling is paced: every `busy` seconds while a reader waits for events, every `idle` seconds otherwise, each
request through the REST client's rate limiter. With replicas on Redis, a lease lets one replica drain a portal.

The REST client is asked for at each round (`ClientSource`): the application's own, or in remote mode the
connection of the signed-in administrator whose request started the draining, opened again each round, so that a
revoked sign-in stops it at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import anyio

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError
from b24_telephony_mcp.bitrix.errors import NOT_SIGNED_IN
from b24_telephony_mcp.events import BUSY_SECONDS, IDLE_SECONDS
from b24_telephony_mcp.events.records import StoredEvent, TelephonyEvent

log = logging.getLogger(__name__)

PAGE = 50
"""Records per read (event.offline.get's default limit, and event.offline.list's fixed page)."""
RETRY_SECONDS = 5.0
"""After a failure that may pass (network, limits), before the next round."""
FATAL_CODES = frozenset(
    {"WRONG_AUTH_TYPE", "ACCESS_DENIED", "insufficient_scope", "ERROR_METHOD_NOT_FOUND", NOT_SIGNED_IN}
)
"""Answers that polling again will not change: draining stops and says why."""

Ingest = Callable[[Sequence[TelephonyEvent]], Awaitable[list[StoredEvent]]]
ClientSource = Callable[[], Awaitable[BitrixClient]]
"""The REST client a round drains with; a `BitrixError` when there is none any more (a revoked sign-in)."""


def fixed_client(client: BitrixClient) -> ClientSource:
    """The same client every round (a process serving one portal)."""

    async def source() -> BitrixClient:
        return client

    return source


class Lease(Protocol):
    """Who drains a portal when replicas share it: `hold` takes or renews it for `seconds`."""

    async def hold(self, seconds: float) -> bool: ...

    async def release(self) -> None: ...


@dataclass
class DrainStatus:
    """What `doctor` and the tools tell about the draining."""

    state: str = "not started"
    """not started, draining, standby (another replica holds the lease), stopped (see `error`)."""
    error: BitrixError | None = None
    rounds: int = 0
    """event.offline.get requests sent."""


class OfflineDrainer:
    def __init__(
        self,
        connect: ClientSource,
        ingest: Ingest,
        *,
        idle: float = IDLE_SECONDS,
        busy: float = BUSY_SECONDS,
        lease: Lease | None = None,
    ) -> None:
        self._connect = connect
        self._client: BitrixClient | None = None
        self._ingest = ingest
        self.idle, self.busy = idle, busy
        self._lease = lease
        self.status = DrainStatus()
        self._waiting = 0
        self._wake = anyio.Event()

    def reader_waiting(self, delta: int) -> None:
        """A reader starts (+1) or stops (-1) waiting: polling is faster while any waits, and starts at once."""
        self._waiting += delta
        if delta > 0:
            self._wake.set()

    @property
    def interval(self) -> float:
        return self.busy if self._waiting else self.idle

    async def run(self) -> None:
        """Drain until cancelled, or until the portal refuses in a way polling again will not change."""
        recover = True
        try:
            while True:
                try:
                    # Longer than a round and a nap, so a live holder never loses it between two renewals.
                    if self._lease is not None and not await self._lease.hold(2 * self.idle + 30):
                        self._now("standby")
                        await self._nap(self.idle)
                        continue
                    self._client = await self._connect()
                    self._now("draining")
                    if recover:
                        await self._recover()
                        recover = False
                    if await self._round():
                        continue  # a full page: more may be queued
                except BitrixError as exc:
                    if exc.code in FATAL_CODES:
                        self.status.error = exc
                        self._now("stopped")
                        log.warning("offline events are not drained: %s: %s", exc.code, exc.description)
                        return
                    log.info("offline events: %s: %s; trying again", exc.code, exc.description)
                    recover = True  # the answer to a read may have been lost with its reservation
                    await self._nap(RETRY_SECONDS)
                    continue
                await self._nap(self.interval)
        finally:
            self._client = None
            if self._lease is not None:
                with anyio.CancelScope(shield=True):
                    await self._lease.release()

    def _now(self, state: str) -> None:
        if state != self.status.state:
            # Which replica drains is told once per change, so an operator can see the lease move.
            log.info("offline event queue: %s", "this process drains it" if state == "draining" else state)
            self.status.state = state

    async def _nap(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()

    async def _round(self) -> bool:
        """One read, store, clear; True when the page was full."""
        self.status.rounds += 1
        answer = await self._call("event.offline.get", {"clear": 0, "limit": PAGE, "order": {"ID": "ASC"}})
        rows = answer.get("events") or []
        if rows:
            await self._keep(str(answer.get("process_id") or ""), rows)
        return len(rows) >= PAGE

    async def _recover(self) -> None:
        """Store and clear what an earlier run reserved but did not clear (it died in between)."""
        reserved: list[str] = []
        start: int | None = 0
        while start is not None:
            response = await self._rest().call(
                "event.offline.list", {"order": {"ID": "ASC"}, "start": start}, read_only=True
            )
            for row in response.result or []:
                process_id = str(row.get("PROCESS_ID") or "")
                if process_id and process_id not in reserved:
                    reserved.append(process_id)
            start = response.next
        for process_id in reserved:
            while rows := (await self._call("event.offline.get", {"process_id": process_id, "clear": 0})).get("events"):
                await self._keep(process_id, rows)
            log.info("offline events reserved by an earlier run (%s) were stored and cleared", process_id[:8])

    async def _keep(self, process_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        events = [event for row in rows if (event := _event(row)) is not None]
        await self._ingest(events)  # stored before the portal forgets them
        await self._call("event.offline.clear", {"process_id": process_id, "id": [row["ID"] for row in rows]})

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        # Not read-only: a read that reserves records is not repeated blindly (recovery finds its reservation).
        result = (await self._rest().call(method, params, read_only=False)).result
        return result if isinstance(result, dict) else {}

    def _rest(self) -> BitrixClient:
        assert self._client is not None, "a round runs with the client it was given"
        return self._client


def _event(row: Mapping[str, Any]) -> TelephonyEvent | None:
    return TelephonyEvent.of(str(row.get("EVENT_NAME", "")), row.get("EVENT_DATA"), _unix(row.get("TIMESTAMP_X")))


def _unix(value: Any) -> int:
    try:
        return math.floor(datetime.fromisoformat(str(value)).timestamp())
    except ValueError:
        return 0
