"""Argument completion: fixed choices, or values read from the portal, cached briefly, filtered by what was typed.

The portal is the one of the request's connection; its values are cached per connection, so a caller never sees
values read with another caller's rights.

A portal that fails (no scope, no rights, down) completes nothing: the input box of the client must keep working.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError
from b24_telephony_mcp.prompts.base import Argument, Source
from b24_telephony_mcp.tools.connection import Connections

log = logging.getLogger(__name__)

MAX_VALUES = 100
"""The most values a completion may carry (MCP's limit)."""
TTL_SECONDS = 30.0
"""How long the portal's values are reused: a person typing asks once per key stroke."""


@dataclass(frozen=True)
class Values:
    """What completes an argument: the values (at most MAX_VALUES), how many match (None when a source had more
    than was read), and whether there are more than these."""

    values: list[str]
    total: int | None
    has_more: bool


@dataclass(frozen=True)
class _Read:
    values: list[str]
    complete: bool
    """False when the portal had more than MAX_VALUES: a person narrows it by typing."""


_FAILED = _Read([], complete=True)


class Completer:
    """Completes arguments with the values of the request's portal connection."""

    def __init__(self, connections: Connections, clock: Callable[[], float] = time.monotonic) -> None:
        self._connections = connections
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, _Read]] = {}
        """(connection key, method) -> (expiry, values)."""

    async def complete(self, argument: Argument, typed: str) -> Values:
        """The values of `argument` that `typed` begins (or begins a word of), fixed choices first."""
        values = list(argument.choices)
        complete = True
        if argument.sources:
            try:
                connection = await self._connections.current()
            except BitrixError as exc:  # no connection for this request: the fixed choices alone
                log.info("completion without a connection: %s %s", exc.code, exc.description)
            else:
                for source in argument.sources:
                    read = await self._values(connection.client, connection.key, source)
                    values.extend(value for value in read.values if value not in values)
                    complete = complete and read.complete
        matching = [value for value in values if _matches(value, typed)]
        return Values(
            matching[:MAX_VALUES],
            total=len(matching) if complete else None,
            has_more=len(matching) > MAX_VALUES or not complete,
        )

    async def _values(self, client: BitrixClient, key: str, source: Source) -> _Read:
        now = self._clock()
        cached = self._cache.get((key, source.method))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            read = await self._read(client, source)
        except BitrixError as exc:  # not cached: the next key stroke asks again
            log.info("completion from %s failed: %s %s", source.method, exc.code, exc.description)
            return _FAILED
        # Expired entries go when a new one comes: with many callers (remote mode) the cache stays as small as
        # the callers of the last TTL_SECONDS.
        self._cache = {k: entry for k, entry in self._cache.items() if entry[0] > now}
        self._cache[(key, source.method)] = (now + TTL_SECONDS, read)
        return read

    async def _read(self, client: BitrixClient, source: Source) -> _Read:
        """The source's values, page after page, until MAX_VALUES are read."""
        params = dict(source.params)
        values: list[str] = []
        while True:
            answer = await client.call(source.method, params, read_only=True)
            values.extend(source.values(answer.result))
            if answer.next is None:
                return _Read(values, complete=True)
            if len(values) >= MAX_VALUES:
                return _Read(values, complete=False)
            params["start"] = answer.next


def _matches(value: str, typed: str) -> bool:
    """`typed` begins the value or one of its words (a user's last name); a number typed in any spacing, with or
    without its +, begins the value's digits."""
    typed = typed.strip().lower()
    if not typed:
        return True
    value = value.lower()
    if value.startswith(typed) or any(word.startswith(typed) for word in value.split()):
        return True
    digits = _digits(typed)
    return bool(digits) and _PHONE_CHARS.fullmatch(typed) is not None and _digits(value).startswith(digits)


_PHONE_CHARS = re.compile(r"[\d\s+()\-.]+")


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())
