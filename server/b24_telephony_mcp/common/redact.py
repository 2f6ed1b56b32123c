"""Keep credentials out of logs and tool results.

Every secret the process learns (webhook code, client secret, each access and refresh token,
the MCP bearer token) is registered here; `redact` replaces them in any text, and the logging
formatter applies it to every record, tracebacks included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import UTC, datetime

_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
_secrets: set[str] = set()
# Longest first: a secret containing another must not be left half-replaced.
_ordered: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    global _ordered
    if value and len(value) >= _MIN_SECRET_LENGTH and value not in _secrets:
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str, keep: Collection[str] = ()) -> str:
    """`text` with every registered secret but those in `keep` replaced."""
    for secret in _ordered:
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
