"""The logging capability: this server's log records also reach the MCP client, as `notifications/message`.

Records of the `b24_telephony_mcp` loggers emitted while a tool call runs (a portal that moved, a token pair that
could not be saved, a retry) are collected and sent to the client that made the call, just before its result,
redacted like every log line and without tracebacks. They still go to stderr too. Which ones are sent:
- handshake protocol (2025-11-25 and earlier): those at or above the level of the last `logging/setLevel`
  (warning until then). The level is process-wide: one client over stdio; HTTP clients share it.
- 2026-07-28: those at or above the level the request opted in to (`_meta` `io.modelcontextprotocol/logLevel`,
  `Client(log_level=...)`); without the opt-in none, as the protocol requires (the SDK enforces it). They ride the
  request's own stream, which this server's streamable HTTP (plain JSON answers) does not keep open, so there
  they reach stdio clients only.
Records outside a tool call (startup) go to stderr only: there is no request to attach them to.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import anyio
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import EmptyResult, LoggingLevel, SetLevelRequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from b24_telephony_mcp.common.redact import redact

# The SDK marks the logging capability deprecated as of 2026-07-28 (SEP-2577), but today's clients speak the
# handshake protocol where it is current, and the MCP conformance suite checks it: serving it is deliberate.
warnings.filterwarnings("ignore", message="The logging capability is deprecated", category=MCPDeprecationWarning)

PACKAGE_LOGGER = logging.getLogger("b24_telephony_mcp")

# RFC 5424 levels as MCP names them, on Python's scale (notice between info and warning, alert and emergency above
# critical), mildest first.
LEVELS: dict[LoggingLevel, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO + 5,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL + 10,
    "emergency": logging.CRITICAL + 20,
}
DEFAULT_LEVEL = logging.WARNING

_collected: ContextVar[list[logging.LogRecord] | None] = ContextVar("b24_client_log", default=None)


def mcp_level(levelno: int) -> LoggingLevel:
    """The gravest MCP level a Python level reaches (WARNING -> warning, 35 -> warning)."""
    name: LoggingLevel = "debug"
    for candidate, number in LEVELS.items():
        if levelno >= number:
            name = candidate
    return name


class _Collector(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records = _collected.get()
        if records is not None:
            records.append(record)


_COLLECTOR = _Collector()


class ClientLog:
    """Collects the records of one tool call and sends them to its client."""

    def __init__(self) -> None:
        self.level = DEFAULT_LEVEL
        if _COLLECTOR not in PACKAGE_LOGGER.handlers:  # one handler per process, however many servers are built
            PACKAGE_LOGGER.addHandler(_COLLECTOR)

    async def set_level(self, _ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
        """`logging/setLevel`."""
        self.level = LEVELS[params.level]
        if PACKAGE_LOGGER.getEffectiveLevel() > self.level:
            # Let the records exist at all; stderr keeps its own B24_LOG_LEVEL threshold (set on its handler).
            PACKAGE_LOGGER.setLevel(self.level)
        return EmptyResult()

    @contextmanager
    def collecting(self) -> Iterator[list[logging.LogRecord]]:
        """Within the block (a tool call, and any task or thread it starts), our records are kept in the list."""
        records: list[logging.LogRecord] = []
        token = _collected.set(records)
        try:
            yield records
        finally:
            _collected.reset(token)

    async def send(self, ctx: ServerRequestContext[Any], records: list[logging.LogRecord]) -> None:
        handshake = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        for record in records:
            if handshake and record.levelno < self.level:
                continue
            try:  # under 2026-07-28 the SDK sends only what this request opted in to
                await ctx.session.send_log_message(mcp_level(record.levelno), redact(record.getMessage()), record.name)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the client left; the result has nowhere to go either
