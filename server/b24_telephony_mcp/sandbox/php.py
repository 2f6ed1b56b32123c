"""PHP-style casts: the server casts params loosely, and clients send strings over form encoding."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NUMERIC_PREFIX = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def php_float(value: Any) -> float:
    """``(float)$value``: leading numeric prefix of a string, 0 for non-numeric."""
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        match = _NUMERIC_PREFIX.match(value)
        return float(match.group()) if match else 0.0
    if isinstance(value, list | dict):
        return 1.0 if value else 0.0
    return 0.0


def php_int(value: Any) -> int:
    """``(int)$value``."""
    number = php_float(value)
    return int(number) if number == number and abs(number) != float("inf") else 0


def php_str(value: Any) -> str:
    """``(string)$value`` (arrays become "Array", like PHP with a notice)."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, list | dict):
        return "Array"
    return str(value)


def php_bool(value: Any) -> bool:
    """``(bool)$value``: "0" and "" are false."""
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def isset(params: Mapping[str, Any], key: str) -> bool:
    return params.get(key) is not None


def normalize_phone(raw: Any) -> str | None:
    """Digits of a client number with an optional leading "+"; spaces, dashes and parens are ignored.

    Returns the digits (how the portal stores CALLER_ID) or None when the format is unsupported.
    """
    cleaned = re.sub(r"[\s\-()]", "", php_str(raw))
    if not re.fullmatch(r"\+?\d+", cleaned):
        return None
    return cleaned.lstrip("+")


def digits(raw: Any) -> str:
    """Only the digits of ``raw`` (how phone numbers are compared)."""
    return re.sub(r"\D", "", php_str(raw))


def php_params(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Decode ``a[b][0]=x`` style keys into nested dicts, like PHP's parse_str.

    Arrays whose keys are exactly 0..n-1 become lists (what json_encode would make of them).
    """
    root: dict[str, Any] = {}
    for key, value in pairs:
        path = _key_path(key)
        node = root
        for segment in path[:-1]:
            segment = segment if segment != "" else _next_index(node)
            child = node.get(segment)
            if not isinstance(child, dict):
                child = node[segment] = {}
            node = child
        last = path[-1] if path[-1] != "" else _next_index(node)
        node[last] = value
    return {k: _listify(v) for k, v in root.items()}


def _key_path(key: str) -> list[str]:
    name, bracket, rest = key.partition("[")
    if not bracket or not name:
        return [key]
    segments = [name]
    while rest:
        inner, closed, rest = rest.partition("]")
        if not closed:
            return [key]  # unbalanced brackets: keep the key as is
        segments.append(inner)
        if not rest:
            break
        if not rest.startswith("["):
            break  # PHP ignores anything after the last ]
        rest = rest[1:]
    return segments


def _next_index(node: dict[str, Any]) -> str:
    indexes = [int(k) for k in node if k.isdigit()]
    return str(max(indexes) + 1 if indexes else 0)


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {k: _listify(v) for k, v in value.items()}
    if converted and list(converted) == [str(i) for i in range(len(converted))]:
        return list(converted.values())
    return converted
