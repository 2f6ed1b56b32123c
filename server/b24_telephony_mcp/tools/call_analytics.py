"""`get_call_analytics`: aggregates over every call of a period, read here, never through the model's context.

The rows come from `voximplant.statistic.get` the way settings/performance/huge-data.md recommends for large
selections: sorted by ID, filtered by `>ID` of the last row read, `start=-1` (no count). One first page counted
(`start=0`) gives `total`; then each `batch` request carries up to 50 keyset pages, each page's `>ID` the last ID
of the page before it (`$result[pN][49][ID]`), so 2,500 rows a request: 10,000 rows take 5 requests. A short page
is the end; pages after it in the same batch (their reference found no 50th row) are ignored.

Answered: CALL_FAILED_CODE 200. Missed: an incoming call (CALL_TYPE 2 or 3) not answered; missed_rate is missed
over incoming calls. Durations are over answered calls; p90 by nearest rank. Groups are capped (the largest by
calls are kept) so the answer stays small whatever the number of calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.bitrix.batch import BATCH_METHOD, MAX_COMMANDS, Command, Ref, call_batch
from b24_telephony_mcp.bitrix.errors import UNEXPECTED_RESPONSE
from b24_telephony_mcp.tools.base import READS, RestParams, RestResult, ToolRun, ToolSpec, View

STATISTICS_METHOD = "voximplant.statistic.get"
PAGE = 50
MAX_GROUPS = 100
ANSWERED = "200"
INCOMING = frozenset({2, 3})

Group = Literal["day", "week", "hour", "line", "user", "type", "status"]


FILTER_KEYS = {"PORTAL_NUMBER": str, "PORTAL_USER_ID": int, "CALL_TYPE": int, "CALL_FAILED_CODE": str}
"""The FILTER keys analytics takes (line, user, call type, status): each a value or a list of values (any of)."""


def _filter_value(key: str, value: Any) -> list[Any]:
    kind = FILTER_KEYS[key]
    items = value if isinstance(value, list) else [value]
    typed = []
    for item in items:
        if kind is int and isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        elif kind is str and type(item) is int:
            item = str(item)
        if type(item) is not kind or item == "":
            raise ValueError(f"FILTER.{key}: {item!r} is not a{'n integer' if kind is int else ' string'}")
        typed.append(item)
    if not typed:
        raise ValueError(f"FILTER.{key}: empty list")
    return typed


class AnalyticsParams(RestParams):
    local_fields = frozenset({"from_", "to", "group_by", "tz"})
    # Self-explanatory names and the tool's description say the rest: every byte of tools/list is context.

    from_: str = Field(alias="from")
    to: str
    group_by: list[Group] = Field(min_length=1, max_length=2)
    tz: str = "UTC"
    FILTER: dict[str, Any] | None = Field(
        None, description="PORTAL_NUMBER, PORTAL_USER_ID, CALL_TYPE, CALL_FAILED_CODE: a value or list."
    )

    @field_validator("FILTER")
    @classmethod
    def _filter_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(value or ()) - set(FILTER_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; keys: {', '.join(FILTER_KEYS)}")
        return {key: _filter_value(key, item) for key, item in value.items()} if value else None

    @field_validator("from_", "to")
    @classmethod
    def _iso_8601(cls, value: str) -> str:
        _moment(value, "date", UTC, end=False)  # the form here, so the error names the field; the zone later
        return value

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None
        return value

    @field_validator("group_by")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("name two different groups")
        return value

    @model_validator(mode="after")
    def _period(self) -> AnalyticsParams:
        start, end = self.period()
        if end <= start:
            raise ValueError("`to` must be after `from`")
        return self

    @property
    def zone(self) -> tzinfo:
        return ZoneInfo(self.tz)

    def period(self) -> tuple[datetime, datetime]:
        return _moment(self.from_, "from", self.zone, end=False), _moment(self.to, "to", self.zone, end=True)

    def rest_filter(self) -> dict[str, Any]:
        start, end = self.period()
        rest: dict[str, Any] = {">=CALL_START_DATE": start.isoformat(), "<CALL_START_DATE": end.isoformat()}
        return rest | (self.FILTER or {})


def _moment(text: str, name: str, zone: tzinfo, *, end: bool) -> datetime:
    """ISO 8601 date or date-time; naive ones are in `zone`; a date as `to` means the end of that day."""
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            moment = datetime.combine(day + timedelta(days=1 if end else 0), time())
        else:
            moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not ISO 8601, e.g. 2026-03-01 or 2026-03-01T09:00:00+03:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


# --- reading the rows ---


def _page_params(rest_filter: dict[str, Any], after: Any, start: int) -> dict[str, Any]:
    return {"FILTER": {**rest_filter, ">ID": after}, "SORT": "ID", "ORDER": "ASC", "start": start}


async def read_rows(params: AnalyticsParams, run: ToolRun, take: Callable[[list[dict[str, Any]]], None]) -> int:
    """Every matching row, handed to `take` page by page; the number of REST requests used."""
    rest_filter = params.rest_filter()
    first = await run.client.call(STATISTICS_METHOD, _page_params(rest_filter, 0, 0), read_only=True)
    rows = _rows(first.result)
    take(rows)
    total, read, requests = first.total or 0, len(rows), 1
    await run.report_progress(read, total, f"{read}/{total} rows")
    last = rows[-1]["ID"] if rows else None
    while len(rows) == PAGE and read < total:
        pages = min(MAX_COMMANDS, math.ceil((total - read) / PAGE))
        after = [last, *(Ref(f"p{n}", PAGE - 1, "ID") for n in range(pages - 1))]
        commands = [
            Command(f"p{n}", STATISTICS_METHOD, _page_params(rest_filter, after[n], -1), True) for n in range(pages)
        ]
        outcomes = await call_batch(run.client, commands)
        requests += 1
        for outcome in outcomes:
            rows = _rows(outcome.unwrap().result)
            take(rows)
            read += len(rows)
            if len(rows) < PAGE:  # the end; later pages referred to a 50th row that is not there
                break
            last = rows[-1]["ID"]
        await run.report_progress(read, max(total, read), f"{read}/{total} rows")
    return requests


def _rows(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, list):
        raise BitrixError(
            UNEXPECTED_RESPONSE, f"{STATISTICS_METHOD} answered without a list of rows", 200, method=STATISTICS_METHOD
        )
    return result


# --- aggregating ---


@dataclass
class Tally:
    calls: int = 0
    answered: int = 0
    incoming: int = 0
    missed: int = 0
    durations: list[int] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        self.calls += 1
        answered = str(row.get("CALL_FAILED_CODE")) == ANSWERED
        if answered:
            self.answered += 1
            self.durations.append(_int(row.get("CALL_DURATION")))
        if _int(row.get("CALL_TYPE")) in INCOMING:
            self.incoming += 1
            self.missed += not answered
        cost = _float(row.get("COST"))
        if cost:
            currency = str(row.get("COST_CURRENCY") or "")
            self.cost[currency] = self.cost.get(currency, 0.0) + cost

    def summary(self) -> dict[str, Any]:
        import statistics  # on first use: a start, which defines this tool, need not import it

        ordered = sorted(self.durations)
        return {
            "calls": self.calls,
            "answered": self.answered,
            "missed": self.missed,
            "missed_rate": round(self.missed / self.incoming, 4) if self.incoming else None,
            "duration": {
                "total": sum(ordered),
                "mean": round(statistics.fmean(ordered), 1) if ordered else None,
                "median": statistics.median(ordered) if ordered else None,
                "p90": ordered[math.ceil(0.9 * len(ordered)) - 1] if ordered else None,
            },
            "cost": {currency: round(amount, 4) for currency, amount in sorted(self.cost.items())},
        }


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def group_key(row: dict[str, Any], group: str, zone: tzinfo) -> str | int | None:
    """The row's bucket: day (YYYY-MM-DD), ISO week (YYYY-Www) and hour of day (0-23) in `zone`."""
    if group in ("day", "week", "hour"):
        try:
            moment = datetime.fromisoformat(str(row.get("CALL_START_DATE"))).astimezone(zone)
        except ValueError:
            return None
        if group == "day":
            return moment.date().isoformat()
        if group == "week":
            year, week, _ = moment.isocalendar()
            return f"{year}-W{week:02d}"
        return moment.hour
    if group == "line":
        return row.get("PORTAL_NUMBER")
    if group == "status":
        return row.get("CALL_FAILED_CODE")
    value = row.get("PORTAL_USER_ID" if group == "user" else "CALL_TYPE")
    return _int(value) if value not in (None, "") else None


class Aggregate:
    """The tallies of every row seen, overall and per group key; its size grows with the groups, not the rows."""

    def __init__(self, group_by: list[str], zone: tzinfo) -> None:
        self.group_by, self.zone = group_by, zone
        self.overall = Tally()
        self.groups: dict[tuple[Any, ...], Tally] = {}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.overall.add(row)
            key = tuple(group_key(row, group, self.zone) for group in self.group_by)
            tally = self.groups.get(key)
            if tally is None:
                tally = self.groups[key] = Tally()
            tally.add(row)


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, str(type(value)), value if value is not None else 0) for value in key)


class Analytics(RestResult):
    groups: list[dict[str, Any]]
    """Per group: its keys (day, line, ...) and calls, answered, missed, missed_rate, duration, cost."""
    all: dict[str, Any]
    rows: int
    requests: int
    capped: bool


async def get_call_analytics(params: AnalyticsParams, run: ToolRun) -> dict[str, Any]:
    tallies = Aggregate(list(params.group_by), params.zone)
    requests = await read_rows(params, run, tallies.add)
    overall, groups = tallies.overall, tallies.groups
    keys = sorted(groups, key=_order)
    capped = len(keys) > MAX_GROUPS
    if capped:  # keep the largest groups, still in key order
        largest = set(sorted(keys, key=lambda key: -groups[key].calls)[:MAX_GROUPS])
        keys = [key for key in keys if key in largest]
    result: dict[str, Any] = {
        "groups": [dict(zip(params.group_by, key, strict=True)) | groups[key].summary() for key in keys],
        "all": overall.summary(),
        "rows": overall.calls,
        "requests": requests,
        "capped": capped,
    }
    if capped:
        result["groups_total"] = len(groups)
    return {"result": result}


CALL_DASHBOARD = View(
    uri="ui://b24-telephony/call-dashboard.html",
    file="call_dashboard.html",
    title="Call dashboard",
    description="Calls per group as a chart and a table: answered, missed, durations.",
)

GET_CALL_ANALYTICS = ToolSpec(
    name="get_call_analytics",
    method=STATISTICS_METHOD,
    title="Get call analytics",
    description="Totals over all calls from..to (ISO 8601; to exclusive; naive in tz), per group: calls, answered, "
    "missed, durations, cost.",
    params=AnalyticsParams,
    result=Analytics,
    effect=READS,
    run=get_call_analytics,
    other_methods=(BATCH_METHOD,),
    view=CALL_DASHBOARD,
)
