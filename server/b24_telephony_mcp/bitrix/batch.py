"""Bitrix24 `batch`: up to 50 REST commands in one request (platform.md (g)).

A command goes out as `"method?query"` with its parameters PHP-encoded (`MESSAGES[0][SIDE]=Client`), and may
use an earlier command's result through a `Ref` (`$result[key][CALL_ID]`), which the portal substitutes before
running it. The portal answers HTTP 200 with per-command `result` / `result_error` maps; a command listed in
`result_error` failed exactly as if it had been called alone, so it comes back as a `BitrixError` here, never as
a success. Commands a `halt` stopped before come back as not run.

The request itself goes through `BitrixClient.call`: one unit of the client's leaky bucket per batch, the same
auth, refresh and retry rules. A batch of read-only commands is repeated after a 5xx like any read; one that
contains a write is not.

    results = await call_batch(client, [
        Command("reg", "telephony.externalCall.register", {...}),
        Command("fin", "telephony.externalCall.finish", {"CALL_ID": Ref("reg", "CALL_ID"), ...}),
    ], halt=True)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from b24_telephony_mcp.bitrix.client import BitrixClient, BitrixResponse
from b24_telephony_mcp.bitrix.errors import NETWORK_ERROR, UNEXPECTED_RESPONSE, BitrixError, error_from_envelope

BATCH_METHOD = "batch"
MAX_COMMANDS = 50
"""`CRestUtil::BATCH_MAX_LENGTH`: the portal refuses commands past the 50th (ERROR_BATCH_LENGTH_EXCEEDED)."""
MAX_QUERY_VARS = 1000
"""The portal decodes each command with PHP's parse_str, which drops variables past `max_input_vars` (1000 by
default): a command with more leaves than this is sent on its own instead."""
NOT_RUN = "NOT_RUN"
"""Our code for a command or item that was never sent (a halt stopped before it)."""

# ParseBatchQuery substitutes `$result[..]`, `$next[..]`, `$total[..]`, `$time[..]` and `$error[..]` in every
# parameter value (case-insensitive), so literal text of that shape would be rewritten by the portal.
_REFERENCE = re.compile(r"\$(?:result|next|total|time|error)(\S*)", re.IGNORECASE)
_PATH_SEGMENT = re.compile(r"\[[^\]]+\]")


@dataclass(frozen=True)
class Ref:
    """An earlier command's result, or a part of it: `Ref("reg", "CALL_ID")` is `$result[reg][CALL_ID]`."""

    key: str
    path: tuple[str | int, ...] = ()

    def __init__(self, key: str, *path: str | int) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "path", path)

    def __str__(self) -> str:
        return f"$result[{self.key}]" + "".join(f"[{part}]" for part in self.path)


@dataclass(frozen=True)
class Command:
    """One REST call inside a batch. `key` names it in the answer and in `Ref`s (letters, digits, `_`)."""

    key: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    read_only: bool = False

    def encoded(self) -> str:
        query = php_query(self.params)
        return f"{self.method}?{query}" if query else self.method


@dataclass(frozen=True)
class CommandResult:
    """A command's outcome: `response` when it succeeded, `error` when it failed, neither when it did not run."""

    command: Command
    response: BitrixResponse | None = None
    error: BitrixError | None = None

    @property
    def ran(self) -> bool:
        return self.response is not None or self.error is not None

    def unwrap(self) -> BitrixResponse:
        """The response, or the command's error raised (a command that did not run raises NOT_RUN)."""
        if self.response is not None:
            return self.response
        raise self.error or not_run(self.command.method)


def not_run(method: str | None, why: str = "a halt stopped the batch before it") -> BitrixError:
    return BitrixError(NOT_RUN, f"not run: {why}", retryable=True, method=method, hint="Send it again.")


def php_query(params: Mapping[str, Any]) -> str:
    """`http_build_query` as PHP writes it: nested keys in brackets, booleans as 1/0, None and empty lists left
    out, everything percent-encoded (the portal decodes with parse_str)."""
    return "&".join(f"{quote(key, safe='')}={quote(_text(value), safe='')}" for key, value in _leaves(params))


def _leaves(params: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in params.items():
        key = f"{prefix}[{name}]" if prefix else str(name)
        if isinstance(value, Mapping):
            yield from _leaves(value, key)
        elif isinstance(value, list | tuple):
            yield from _leaves(dict(enumerate(value)), key)
        elif value is not None:
            yield key, value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def fits_in_batch(params: Mapping[str, Any]) -> bool:
    """Whether the portal would receive these parameters unchanged inside a batch: no literal text it would
    take for a `$result[...]` reference, and few enough variables for parse_str. Otherwise send them alone."""
    for count, (_, value) in enumerate(_leaves(params), 1):
        if count > MAX_QUERY_VARS:
            return False
        text = "" if isinstance(value, Ref) else _text(value)
        if "$" in text and any(_PATH_SEGMENT.search(match.group(1)) for match in _REFERENCE.finditer(text)):
            return False
    return True


def outcome_unknown(error: BitrixError) -> bool:
    """Whether a failed write request may nevertheless have run on the portal: its answer was lost (a network
    failure after sending) or was a server error. Refusals before running (limits, auth, a connection never
    made) are retryable or clearly refused, so they do not count."""
    if error.retryable:
        return False
    status = error.http_status
    if error.code == NETWORK_ERROR or (status is not None and status >= 500):
        return True
    # A 2xx answer we could not read (a proxy rewrote it, say): the portal did answer, so it ran.
    return error.code == UNEXPECTED_RESPONSE and (status is None or 200 <= status < 300)


def pack(groups: Iterable[Sequence[Command]], size: int = MAX_COMMANDS) -> list[list[Command]]:
    """Consecutive groups of commands into batches of at most `size`, never splitting a group (its commands
    refer to each other), in order. A group larger than `size` is an error."""
    batches: list[list[Command]] = []
    current: list[Command] = []
    for group in groups:
        if len(group) > size:
            raise ValueError(f"a group of {len(group)} commands does not fit in one batch of {size}")
        if len(current) + len(group) > size:
            batches.append(current)
            current = []
        current.extend(group)
    if current:
        batches.append(current)
    return batches


async def call_batch(client: BitrixClient, commands: Sequence[Command], *, halt: bool = False) -> list[CommandResult]:
    """Send up to 50 commands in one `batch` request; their outcomes in the order given.

    With `halt` the portal stops at the first failing command; the rest come back not run. A failure of the
    request itself (network, auth, a 5xx) raises its `BitrixError`, as `client.call` does: check
    `outcome_unknown` before assuming a write did not happen.
    """
    if not commands:
        return []
    if len(commands) > MAX_COMMANDS:
        raise ValueError(f"{len(commands)} commands; a batch holds at most {MAX_COMMANDS}")
    keys = [command.key for command in commands]
    if len(set(keys)) != len(keys):
        raise ValueError("batch command keys must be unique")
    body = {"halt": 1 if halt else 0, "cmd": {command.key: command.encoded() for command in commands}}
    response = await client.call(BATCH_METHOD, body, read_only=all(command.read_only for command in commands))
    answer = response.result
    if not isinstance(answer, dict):
        raise BitrixError(UNEXPECTED_RESPONSE, "batch answered without its result maps", 200, method=BATCH_METHOD)
    results, errors = _by_key(answer.get("result")), _by_key(answer.get("result_error"))
    totals, nexts = _by_key(answer.get("result_total")), _by_key(answer.get("result_next"))
    outcomes = []
    for command in commands:
        if command.key in errors:
            outcomes.append(CommandResult(command, error=command_error(errors[command.key], command.method)))
        elif command.key in results:
            response = BitrixResponse(results[command.key], _int(totals.get(command.key)), _int(nexts.get(command.key)))
            outcomes.append(CommandResult(command, response=response))
        else:
            outcomes.append(CommandResult(command))
    return outcomes


def command_error(entry: Any, method: str) -> BitrixError:
    """A `result_error` entry as the error the command would have raised alone (HTTP status: the batch's 200)."""
    envelope = entry if isinstance(entry, dict) else {"error": "", "error_description": str(entry)}
    return error_from_envelope(envelope, 200, method, retryable=False)


def _by_key(value: Any) -> dict[str, Any]:
    # PHP encodes an empty map, or one whose keys are exactly 0..n-1, as a JSON list.
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    return {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
