"""PHP-style casts: the server casts params loosely, and clients send strings over form encoding."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
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
    """A client number as the source reads it (`CVoxImplantPhone::stripLetters`): every non-digit is dropped
    (`+1.906.219.5047`, `tel:+1906...`, `(906) 219-5047` all work); None when no digit is left."""
    return digits(raw) or None


def digits(raw: Any) -> str:
    """Only the digits of ``raw`` (how phone numbers are compared)."""
    return re.sub(r"\D", "", php_str(raw))


# --- strtotime ---------------------------------------------------------------------------------------------
# The formats clients send, read like PHP's strtotime(): ISO 8601 and SQL dates (`2026-03-07 10:20`), RFC 2822,
# `@<unix time>`, US (`03/07/2026`) and European (`07.03.2026`) dates, times (`10:20`, `3pm`), and relative
# words (`now`, `tomorrow noon`, `+2 hours`, `3 days ago`, `next monday`). Times without a zone are the portal's
# (the sandbox portal runs on UTC). Anything else is None, as strtotime() returns false.

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_UNIT_SECONDS = {"sec": 1, "second": 1, "min": 60, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
_UNITS = r"(?:sec|second|min|minute|hour|day|week|fortnight|month|year)"
_DAYS = r"(?:mon|tues?|wed(?:nes)?|thu(?:rs?)?|fri|sat(?:ur)?|sun)(?:day)?"
_TOKENS = re.compile(
    rf"""
    (?P<space>[\s,]+|t(?=\d))
    | @(?P<unix>-?\d+)
    | (?P<y1>\d{{4}})[-/](?P<m1>\d{{1,2}})[-/](?P<d1>\d{{1,2}})           # 2026-03-07, 2026/03/07
    | (?P<m2>\d{{1,2}})/(?P<d2>\d{{1,2}})/(?P<y2>\d{{4}})                 # 03/07/2026 (US)
    | (?P<d3>\d{{1,2}})[.-](?P<m3>\d{{1,2}})[.-](?P<y3>\d{{4}})            # 07.03.2026, 07-03-2026
    | (?P<hh>\d{{1,2}}):(?P<mm>\d{{2}})(?::(?P<ss>\d{{2}})(?:\.\d+)?)?\s*(?P<ampm>[ap]\.?m\.?)?
    | (?P<h12>\d{{1,2}})\s*(?P<ampm12>[ap]\.?m\.?)                         # 3pm
    | (?P<zone>z|utc|gmt|[+-]\d{{2}}:?\d{{2}})\b
    | (?P<word>now|today|midnight|noon|tomorrow|yesterday)\b
    | (?P<nth>next|last|previous|this)\s+(?:(?P<nth_day>{_DAYS})|(?P<nth_unit>{_UNITS})s?)\b
    | (?P<day>{_DAYS})\b
    | (?P<amount>[+-]?\s*\d+)\s*(?P<unit>{_UNITS})s?\b(?P<ago>\s+ago\b)?
    """,
    re.VERBOSE | re.IGNORECASE,
)


def php_strtotime(value: Any, now: float) -> datetime | None:
    """``strtotime($value)`` as a datetime (None for what PHP refuses), relative to the unix time `now`."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        pass
    return _relative(text.lower(), datetime.fromtimestamp(now, UTC))


def _relative(text: str, moment: datetime) -> datetime | None:
    zone: timezone | None = None
    offset = timedelta()
    months = 0
    position = 0
    while position < len(text):
        match = _TOKENS.match(text, position)
        if match is None:
            return None
        position = match.end()
        if match["space"]:
            continue
        if match["unix"]:
            moment = datetime.fromtimestamp(int(match["unix"]), UTC)
        elif date := next(((match[f"y{n}"], match[f"m{n}"], match[f"d{n}"]) for n in "123" if match[f"y{n}"]), None):
            year, month, day = map(int, date)
            if not (1 <= month <= 12 and 1 <= day <= 31):
                return None
            # PHP lets a day run past its month's end: 2026-02-30 is March 2.
            first = moment.replace(year=year, month=month, day=1, hour=0, minute=0, second=0, microsecond=0)
            moment = first + timedelta(days=day - 1)
        elif match["hh"] or match["h12"]:
            hour = int(match["hh"] or match["h12"])
            meridiem = (match["ampm"] or match["ampm12"] or "").replace(".", "")
            if meridiem:
                if not 1 <= hour <= 12:
                    return None
                hour = hour % 12 + (12 if meridiem == "pm" else 0)
            minute, second = int(match["mm"] or 0), int(match["ss"] or 0)
            if hour > 23 or minute > 59 or second > 59:
                return None
            moment = moment.replace(hour=hour, minute=minute, second=second, microsecond=0)
        elif match["zone"]:
            zone = _zone(match["zone"])
        elif match["word"]:
            moment = _word(match["word"], moment)
        elif match["nth"]:
            step = {"next": 1, "this": 0}.get(match["nth"], -1)
            if match["nth_day"]:
                moment = _weekday(moment, match["nth_day"], step)
            else:
                amount, unit_months = _unit(match["nth_unit"], step)
                offset += amount
                months += unit_months
        elif match["day"]:
            moment = _weekday(moment, match["day"], 0)
        else:
            sign = -1 if match["ago"] else 1
            amount, unit_months = _unit(match["unit"], sign * int(match["amount"].replace(" ", "")))
            offset += amount
            months += unit_months
    if zone is not None:
        moment = moment.replace(tzinfo=zone)
    if months:
        moment = _add_months(moment, months)
    return moment + offset


def _zone(text: str) -> timezone:
    if text in ("z", "utc", "gmt"):
        return UTC
    digits_only = text[1:].replace(":", "")
    minutes = int(digits_only[:2]) * 60 + int(digits_only[2:])
    return timezone(timedelta(minutes=minutes if text[0] == "+" else -minutes))


def _word(word: str, moment: datetime) -> datetime:
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return moment
    if word == "noon":
        return midnight.replace(hour=12)
    return midnight + timedelta(days={"tomorrow": 1, "yesterday": -1}.get(word, 0))


def _weekday(moment: datetime, name: str, step: int) -> datetime:
    """`monday` (today or later), `next monday` (after today), `last monday` (before today), at midnight."""
    target = next(index for index, day in enumerate(_WEEKDAYS) if day.startswith(name[:3]))
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    ahead = (target - moment.weekday()) % 7
    if step > 0 and ahead == 0:
        ahead = 7
    if step < 0:
        ahead = ahead - 7 if ahead else -7
    return midnight + timedelta(days=ahead)


def _unit(unit: str, amount: int) -> tuple[timedelta, int]:
    """A relative amount: seconds as a timedelta, months and years as months."""
    if unit == "fortnight":
        return timedelta(weeks=2 * amount), 0
    if unit in ("month", "year"):
        return timedelta(), amount * (12 if unit == "year" else 1)
    return timedelta(seconds=_UNIT_SECONDS[unit] * amount), 0


def _add_months(moment: datetime, months: int) -> datetime:
    """PHP overflows a short month (Jan 31 + 1 month = Mar 3); so does this."""
    index = moment.year * 12 + moment.month - 1 + months
    first = moment.replace(year=index // 12, month=index % 12 + 1, day=1)
    return first + timedelta(days=moment.day - 1)


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


def upper_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    """array_change_key_case($params, CASE_UPPER), which many methods apply to their params first."""
    return {key.upper() if isinstance(key, str) else key: value for key, value in params.items()}


def php_form_pairs(value: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``http_build_query($value)`` as (key, value) pairs: nested keys as ``a[b][0]``, what :func:`php_params`
    reads back. Booleans become "1" and "" and None is left out, as PHP does."""
    pairs: list[tuple[str, str]] = []

    def add(key: str, item: Any) -> None:
        if isinstance(item, Mapping):
            for sub_key, sub_item in item.items():
                add(f"{key}[{sub_key}]", sub_item)
        elif isinstance(item, list | tuple):
            for index, sub_item in enumerate(item):
                add(f"{key}[{index}]", sub_item)
        elif item is not None:
            pairs.append((key, "1" if item is True else "" if item is False else str(item)))

    for key, item in value.items():
        add(str(key), item)
    return pairs
