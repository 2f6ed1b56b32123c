"""``batch``: up to 50 REST commands in one request, as ``CRestProvider::methodsBatch`` runs them.

Source behaviour (platform.md (g), disagreements.md #8): ``cmd`` and ``halt`` keys are case-insensitive; each
command is ``"method?query"`` (a non-string command is skipped without a key); commands past the 50th and a
nested ``batch`` (or ``upload``/``download``) are not run but get a ``result_error`` entry inside the HTTP 200
answer; ``$result[key][field]...`` (also ``$next``, ``$total``, ``$time``, ``$error``) in a parameter value is
replaced by that part of an earlier command's outcome, the whole value when the reference is all of it; commands
run in order with the outer request's credentials, each checked for its own scope; ``halt`` stops at the first
failure. The HTTP layer counts the batch as one request (stats and leaky bucket); ``stats.batched`` counts the
commands. A fault queued for a command's method (see app.py) makes that command fail.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from ..calls import BASIC_SCOPE, Caller, Fault, Params, envelope, time_block
from ..errors import SandboxRestError
from ..php import php_bool, php_params, php_str, upper_keys
from ..state import Method, PortalState, method_table

BATCH_MAX_LENGTH = 50
NOT_IN_BATCH = frozenset({"batch", "upload", "download"})
LENGTH_EXCEEDED = {"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}
METHOD_NOT_ALLOWED = {
    "error": "ERROR_BATCH_METHOD_NOT_ALLOWED",
    "error_description": "Method is not allowed for batch usage",
}

# processBatchElement: `/\$(result|next|total|time|error)([^\s]*)/i`, then each `[segment]` of the tail.
_REFERENCE = re.compile(r"\$(result|next|total|time|error)(\S*)", re.IGNORECASE)
_SEGMENT = re.compile(r"\[([^\]]+)\]")


def batch(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    query = upper_keys(params)
    halt = php_bool(query.get("HALT"))
    outcome: dict[str, dict[Any, Any]] = {"result": {}, "next": {}, "total": {}, "time": {}, "error": {}}
    for count, (key, call) in enumerate(_commands(query.get("CMD"))):
        if not isinstance(call, str):
            continue
        if count >= BATCH_MAX_LENGTH:
            answer: dict[str, Any] = {"error": LENGTH_EXCEEDED}
        else:
            method, _, raw_query = call.partition("?")
            command_params = _substitute(php_params(parse_qsl(raw_query, keep_blank_values=True)), outcome)
            answer = _run(portal, method, command_params, caller)
        for part, value in answer.items():
            outcome[part][_php_key(key)] = value
        if "error" in answer and halt:
            break
    return {
        "result": _php_array(outcome["result"]),
        "result_error": _php_array(outcome["error"]),
        "result_total": _php_array(outcome["total"]),
        "result_next": _php_array(outcome["next"]),
        "result_time": _php_array(outcome["time"]),
    }


def _commands(cmd: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(cmd, dict):
        return cmd.items()
    if isinstance(cmd, list):
        return enumerate(cmd)
    return ()


def _run(portal: PortalState, method: str, params: Params, caller: Caller) -> dict[str, Any]:
    """One command's parts of the answer: result (+ total, next) and time, or error."""
    name = method.lower()
    if name in NOT_IN_BATCH:
        return {"error": METHOD_NOT_ALLOWED}
    portal.stats.batched[name] += 1
    start = time.time()
    fault = portal.take_fault(name, in_batch=True)
    try:
        if fault is not None and not fault.process:
            return {"error": _fault_error(fault)}
        fields = envelope(portal.call(method, params, caller))
    except SandboxRestError as exc:
        return {"error": {"error": exc.code, "error_description": exc.description}}
    if fault is not None:
        return {"error": _fault_error(fault)}
    return {**fields, "time": time_block(start, time.time())}


def _fault_error(fault: Fault) -> dict[str, str]:
    try:
        body = json.loads(fault.body)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return {"error": php_str(body["error"]), "error_description": php_str(body.get("error_description"))}
    return {"error": "INTERNAL_SERVER_ERROR", "error_description": f"HTTP {fault.status}"}


def _substitute(value: Any, outcome: dict[str, dict[Any, Any]]) -> Any:
    """processBatchStructure: references in every value, at any depth."""
    if isinstance(value, dict):
        return {key: _substitute(item, outcome) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, outcome) for item in value]
    if not isinstance(value, str):
        return value
    text: Any = value
    for match in _REFERENCE.finditer(value):
        path = _SEGMENT.findall(match.group(2))
        if not path:
            continue
        # `$arResult[$name]` with the name as written: only the lower-case spelling finds anything.
        node: Any = outcome.get(match.group(1))
        for segment in path:
            child = _isset(node, segment)
            if child is None:
                break  # source keeps the last node it reached
            node = child
        if match.group(0) == text:
            text = node
        elif isinstance(text, str):
            text = text.replace(match.group(0), php_str(node))
    return text


def _isset(node: Any, segment: str) -> Any:
    """`$node[$segment]` when isset, else None."""
    if isinstance(node, dict):
        return node.get(_php_key(segment))
    if isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
        return node[int(segment)]
    return None


def _php_key(key: Any) -> Any:
    """PHP array keys: a canonical decimal string is an integer key."""
    if isinstance(key, str) and key.isdigit() and str(int(key)) == key:
        return int(key)
    return key


def _php_array(entries: dict[Any, Any]) -> Any:
    """json_encode of a PHP array: a list when empty or keyed exactly 0..n-1, else an object."""
    if list(entries) == list(range(len(entries))):
        return list(entries.values())
    return {str(key): value for key, value in entries.items()}


METHODS = method_table({"batch": Method(batch, scope=BASIC_SCOPE)})
