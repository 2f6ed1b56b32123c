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
