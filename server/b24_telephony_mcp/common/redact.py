"""Keep credentials out of logs and tool results.

Every secret the process learns (webhook code, client secret, each access and refresh token,
the MCP bearer token) is registered here; `redact` replaces them in any text, and the logging
formatter applies it to every record, tracebacks included.

A server serving many users (remote mode) learns each user's tokens per request: inside
`request_secrets()` they are that request's alone (and the tasks it starts), forgotten with it,
so the process neither keeps every user's tokens nor scans them all on every log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
_secrets: set[str] = set()
# Longest first: a secret containing another must not be left half-replaced.
_ordered: tuple[str, ...] = ()
_REQUEST_SECRETS_KEPT = 64
"""The newest kept by one request's scope: a long task started by a request (an event drainer) shares that scope
and registers each rotated pair, and the rotated-away ones are dead."""
_request_secrets: ContextVar[list[str] | None] = ContextVar("request_secrets", default=None)


def register_secret(value: str | None) -> None:
    """Redact `value` from now on: for this process's life, or inside `request_secrets()` for that request's."""
    global _ordered
    if not value or len(value) < _MIN_SECRET_LENGTH or value in _secrets:
        return
    scoped = _request_secrets.get()
    if scoped is None:
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))
    elif value not in scoped:
        scoped.append(value)
        del scoped[:-_REQUEST_SECRETS_KEPT]


@contextmanager
def request_secrets() -> Iterator[None]:
    """A request's own scope of secrets (see the module's docstring). A request that fails keeps them registered
    for good: its exception may be logged after it, outside this scope."""
    scoped: list[str] = []
    reset = _request_secrets.set(scoped)
    failed = False
    try:
        yield
    except Exception:
        failed = True
        raise
    finally:
        _request_secrets.reset(reset)
        for value in scoped if failed else ():
            register_secret(value)


def redact(text: str, keep: Collection[str] = ()) -> str:
    """`text` with every registered secret (the process's, this request's) but those in `keep` replaced."""
    scoped = _request_secrets.get()
    # Longest first across both: a request's token may contain a process secret, or the other way round.
    for secret in sorted((*_ordered, *scoped), key=len, reverse=True) if scoped else _ordered:
        if secret in text and secret not in keep:
            text = text.replace(secret, "***")
    return text


class RedactingFormatter(logging.Formatter):
    """Redacts the fully formatted record, tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line (B24_LOG_FORMAT=json): time (UTC), level, logger, message, exception. The message
    and exception are redacted before JSON escaping could hide a secret from the match; nothing else can hold one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)
