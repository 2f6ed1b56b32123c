"""Online event delivery: POSTs to handler URLs from a background thread, as the portal's queue server does.

The REST call that caused an event only queues the POST, so it never waits for a slow handler. There are no
retries (events/index.md: "No retries"); a failed POST is logged and counted, never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx2

logger = logging.getLogger(__name__)

_POST_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Delivery:
    """One online event on its way: the handler URL and the form fields (PHP-style keys)."""

    url: str
    event: str
    fields: list[tuple[str, str]]


class EventOutbox:
    """A queue of :class:`Delivery` drained by one daemon thread, started on the first delivery."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        #: POSTs answered with a 2xx, and POSTs that failed (an error status or no answer).
        self.posted = 0
        self.failed = 0

    def send(self, delivery: Delivery) -> None:
        with self._idle:
            self._pending += 1
        self._ensure_worker()
        self._queue.put(delivery)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every queued delivery has been attempted; False when ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Stop the worker after what is queued; safe to call twice and when nothing was ever sent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(_STOP_TIMEOUT)

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="b24-sandbox-events", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        with httpx2.Client(timeout=_POST_TIMEOUT) as client:
            while (delivery := self._queue.get()) is not None:
                ok = self._post(client, delivery)
                with self._idle:
                    self.posted += ok
                    self.failed += not ok
                    self._pending -= 1
                    self._idle.notify_all()

    @staticmethod
    def _post(client: httpx2.Client, delivery: Delivery) -> bool:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        try:
            response = client.post(delivery.url, content=urlencode(delivery.fields), headers=headers)
        except httpx2.HTTPError as exc:
            logger.warning("event %s to %s failed: %s", delivery.event, delivery.url, exc)
            return False
        if not response.is_success:
            logger.warning(
                "event %s to %s: handler answered HTTP %d", delivery.event, delivery.url, response.status_code
            )
        return response.is_success
