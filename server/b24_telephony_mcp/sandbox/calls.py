"""What one REST call is made of, below the portal: its parameters, its caller, the scope every app may call,
a canned fault, and the shapes of an answer (a list method's :class:`Page`, the ``result``/``time`` envelope).

Nothing here knows the portal: method modules, the dispatcher and the HTTP layer all build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .php import php_int

Params = dict[str, Any]

#: The scope of platform methods (app.info, scope, profile, server.time, batch) every app and webhook may call.
BASIC_SCOPE = "basic"


@dataclass(frozen=True)
class Caller:
    """Who is calling: an app token (client_id/app_id set) or the incoming webhook (no app context)."""

    auth_type: Literal["oauth", "webhook"]
    user_id: int
    client_id: str | None = None
    app_id: int | None = None
    access_token: str | None = None


@dataclass
class Fault:
    """A canned answer queued through ``/_sandbox/faults`` for the next ``count`` requests of ``method``."""

    method: str  # lower-cased REST method or "*"
    status: int
    body: str
    content_type: str
    count: int
    process: bool = False
    """Run the request first and replace only its answer: the portal did the work, the client never hears."""
    headers: dict[str, str] = field(default_factory=dict)
    """Answer headers, e.g. ``Location`` with status 302 to stage a portal that moved."""

    def matches(self, method: str, *, in_batch: bool = False) -> bool:
        # Inside a batch only a fault naming the method applies; "*" is for HTTP requests.
        return self.method == method or (self.method == "*" and not in_batch)

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        fault = cls(
            method=str(data.get("method", "*")).lower(),
            status=int(data.get("status", 500)),
            body=str(data.get("body", "")),
            content_type=str(data.get("content_type", "text/html")),
            count=int(data.get("count", 1)),
            process=bool(data.get("process", False)),
            headers={str(key): str(value) for key, value in dict(data.get("headers") or {}).items()},
        )
        if not 100 <= fault.status <= 599 or fault.count < 1:
            raise ValueError("status must be 100..599 and count >= 1")
        return fault


LIST_LIMIT = 50
"""Rows per page of a REST 2 list method (IRestService::LIST_LIMIT)."""


@dataclass(frozen=True)
class Page:
    """A list method's answer: the rows, with ``total`` and ``next`` sent beside ``result`` (setNavData)."""

    rows: list[Any]
    total: int
    next: int | None = None

    @classmethod
    def of(cls, rows: list[Any], offset: int | None, total: int) -> Page:
        """Rows of one page. ``offset`` None: ``start`` was negative, so nothing was counted (total 0, no next)."""
        following = offset + LIST_LIMIT if offset is not None and offset + LIST_LIMIT < total else None
        return cls(rows, total, following)

    @classmethod
    def slice(cls, rows: list[Any], start: Any) -> Page:
        """The page of all ``rows`` at offset ``(int)start`` (IRestService::setNavData: next = offset + rows sent)."""
        offset = max(php_int(start), 0)
        return cls.of(rows[offset : offset + LIST_LIMIT], offset, len(rows))

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"result": self.rows}
        if self.next is not None:
            body["next"] = self.next
        body["total"] = self.total
        return body


def envelope(result: Any) -> dict[str, Any]:
    """A handler's return value as the answer's top-level keys (``result``, and ``total``/``next`` of a Page)."""
    return result.envelope() if isinstance(result, Page) else {"result": result}


def time_block(start: float, finish: float) -> dict[str, Any]:
    """The ``time`` object of an answer (a batch reports one per command in ``result_time``)."""

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")

    return {
        "start": start,
        "finish": finish,
        "duration": finish - start,
        "processing": finish - start,
        "date_start": iso(start),
        "date_finish": iso(finish),
    }
