"""`get_call_analytics` through the real server over stdio against the sandbox's seeded call history.

The expected numbers are computed here, in plain Python, from the portal's own records (read in-process), so the
tool's paging, bucketing and arithmetic are checked rather than trusted. One sandbox of 12,000 seeded calls and
one server session serve the module; the history is only read.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.methods.statistics import history
from b24_telephony_mcp.sandbox.records import StatisticRecord
from support import app_env, stdio_session
from test_tools import ToolCaller, assert_local

pytestmark = pytest.mark.anyio

TOOL = "get_call_analytics"
SEEDED = 12_000
Record = StatisticRecord


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with start_sandbox(SandboxConfig(seed_calls=SEEDED, rate_limit=1000.0, rate_burst=10000)) as running:
        yield running


@pytest.fixture(scope="module")
async def tools(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ToolCaller]:
    token_file = tmp_path_factory.mktemp("analytics") / "tokens.json"
    async with stdio_session(app_env(sandbox, token_file)) as client:  # the default toolsets
        listed = (await client.list_tools()).tools
        tool = next(tool for tool in listed if tool.name == TOOL)
        assert tool.annotations and tool.annotations.read_only_hint is True
        assert tool.meta == {
            "b24/method": "voximplant.statistic.get",
            "b24/methods": ["voximplant.statistic.get", "batch"],
        }
        yield ToolCaller(client, {tool.name: tool.output_schema for tool in listed if tool.output_schema})


def records(sandbox: RunningSandbox) -> list[Record]:
    return history(sandbox.portal)


# --- the expected numbers, computed from the records ---


def key_of(record: Record, group: str, zone: tzinfo) -> Any:
    local = record.call_start_date.astimezone(zone)
    return {
        "day": lambda: local.date().isoformat(),
        "week": lambda: f"{local.isocalendar()[0]}-W{local.isocalendar()[1]:02d}",
        "hour": lambda: local.hour,
        "line": lambda: record.portal_number,
        "user": lambda: record.portal_user_id,
        "type": lambda: record.incoming,
        "status": lambda: record.call_failed_code,
    }[group]()


def summary(calls: list[Record]) -> dict[str, Any]:
    answered = [record for record in calls if record.call_failed_code == "200"]
    incoming = [record for record in calls if record.incoming in (2, 3)]
    missed = [record for record in incoming if record.call_failed_code != "200"]
    durations = sorted(record.call_duration for record in answered)
    cost: dict[str, float] = defaultdict(float)
    for record in calls:
        if record.cost:
            cost[record.cost_currency or ""] += float(f"{record.cost:.4f}")
    return {
        "calls": len(calls),
        "answered": len(answered),
        "missed": len(missed),
        "missed_rate": round(len(missed) / len(incoming), 4) if incoming else None,
        "duration": {
            "total": sum(durations),
            "mean": round(statistics.fmean(durations), 1) if durations else None,
            "median": statistics.median(durations) if durations else None,
            "p90": durations[math.ceil(len(durations) * 0.9) - 1] if durations else None,
        },
        "cost": {currency: round(amount, 4) for currency, amount in sorted(cost.items())},
    }


def expected(calls: list[Record], group_by: list[str], zone: tzinfo = UTC) -> dict[tuple[Any, ...], dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    for record in calls:
        groups[tuple(key_of(record, group, zone) for group in group_by)].append(record)
    return {key: summary(members) for key, members in groups.items()}


def answered_groups(answer: dict[str, Any], group_by: list[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    groups = {}
    for group in answer["groups"]:
        key = tuple(group.pop(name) for name in group_by)
        groups[key] = group
    return groups


def in_period(
    calls: list[Record], start: datetime, end: datetime, test: Callable[[Record], bool] = bool
) -> list[Record]:
    return [record for record in calls if start <= record.call_start_date < end and test(record)]


def assert_same(actual: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Equal, costs to a rounding of their sums."""
    assert actual.keys() == wanted.keys()
    assert {k: v for k, v in actual.items() if k != "cost"} == {k: v for k, v in wanted.items() if k != "cost"}
    assert actual["cost"].keys() == wanted["cost"].keys()
    for currency, amount in wanted["cost"].items():
        assert actual["cost"][currency] == pytest.approx(amount, abs=1e-3)


async def analytics(tools: ToolCaller, sandbox: RunningSandbox, arguments: dict[str, Any]) -> tuple[Any, int]:
    """The tool's result and the REST requests the sandbox saw for it."""
    sandbox.portal.reset_stats()
    result = await tools.ok(TOOL, arguments)
    requests = sum(sandbox.portal.stats.requests.values())
    assert result["requests"] == requests
    return result, requests


def last_days(sandbox: RunningSandbox, days: int) -> tuple[datetime, datetime]:
    newest = max(record.call_start_date for record in records(sandbox))
    end = newest.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return end - timedelta(days=days), end


# --- tests ---


@pytest.mark.parametrize("group", ["day", "week", "hour", "line", "user", "type", "status"])
async def test_every_group_matches_the_records(tools: ToolCaller, sandbox: RunningSandbox, group: str) -> None:
    start, end = last_days(sandbox, 7)
    answer, requests = await analytics(
        tools, sandbox, {"from": start.isoformat(), "to": end.isoformat(), "group_by": [group]}
    )
    calls = in_period(records(sandbox), start, end)
    assert 50 < len(calls) < 2_500 and requests == 2  # the counted page, then one batch of keyset pages
    assert answer["rows"] == len(calls) and answer["capped"] is False
    assert_same(answer["all"], summary(calls))
    wanted = expected(calls, [group])
    actual = answered_groups(answer, [group])
    assert actual.keys() == wanted.keys()
    for key, numbers in wanted.items():
        assert_same(actual[key], numbers)


async def test_a_pair_of_groups_with_filters(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    start, end = last_days(sandbox, 14)
    answer, _ = await analytics(
        tools,
        sandbox,
        {
            "from": start.date().isoformat(),
            "to": (end - timedelta(days=1)).date().isoformat(),  # a date: through that day
            "group_by": ["line", "day"],
            "FILTER": {"CALL_TYPE": [2, 3], "PORTAL_USER_ID": "2"},
        },
    )
    calls = in_period(records(sandbox), start, end, lambda r: r.incoming in (2, 3) and r.portal_user_id == 2)
    assert calls and answer["rows"] == len(calls)
    wanted = expected(calls, ["line", "day"])
    actual = answered_groups(answer, ["line", "day"])
    assert actual.keys() == wanted.keys()
    for key, numbers in wanted.items():
        assert_same(actual[key], numbers)


async def test_a_time_zone_moves_calls_across_midnight(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    zone = ZoneInfo("Asia/Tokyo")
    newest = max(record.call_start_date for record in records(sandbox)).astimezone(zone)
    local_end = newest.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    local_start = local_end - timedelta(days=10)
    answer, _ = await analytics(
        tools,
        sandbox,
        {"from": local_start.isoformat(), "to": local_end.isoformat(), "group_by": ["day"], "tz": "Asia/Tokyo"},
    )
    start, end = local_start.replace(tzinfo=zone), local_end.replace(tzinfo=zone)
    calls = in_period(records(sandbox), start, end)
    moved = [r for r in calls if r.call_start_date.astimezone(zone).date() != r.call_start_date.date()]
    assert moved, "some calls fall on another day in Tokyo than in UTC"
    assert answer["rows"] == len(calls)
    wanted = expected(calls, ["day"], zone)
    assert wanted != expected(calls, ["day"], UTC)
    actual = answered_groups(answer, ["day"])
    assert actual.keys() == wanted.keys() and len(wanted) == 10
    for key, numbers in wanted.items():
        assert_same(actual[key], numbers)


async def test_an_empty_period(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    answer, requests = await analytics(
        tools, sandbox, {"from": "2001-01-01", "to": "2001-02-01", "group_by": ["day", "line"]}
    )
    assert requests == 1
    assert answer == {
        "groups": [],
        "all": summary([]),
        "rows": 0,
        "requests": 1,
        "capped": False,
    }


async def test_over_ten_thousand_calls_in_five_requests(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    calls = records(sandbox)
    start = calls[0].call_start_date
    end = calls[10_049].call_start_date  # 10,049 rows before it (a few may share its second)
    answer, requests = await analytics(
        tools, sandbox, {"from": start.isoformat(), "to": end.isoformat(), "group_by": ["type"]}
    )
    wanted = in_period(calls, start, end)
    assert len(wanted) > 10_000
    assert answer["rows"] == len(wanted)
    assert requests <= 5
    assert sandbox.portal.stats.requests["batch"] == requests - 1
    assert_same(answer["all"], summary(wanted))
    actual = answered_groups(answer, ["type"])
    for key, numbers in expected(wanted, ["type"]).items():
        assert_same(actual[key], numbers)


async def test_groups_are_capped(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    start, end = last_days(sandbox, 30)
    answer, _ = await analytics(
        tools, sandbox, {"from": start.isoformat(), "to": end.isoformat(), "group_by": ["day", "hour"]}
    )
    calls = in_period(records(sandbox), start, end)
    wanted = expected(calls, ["day", "hour"])
    assert len(wanted) > 100
    assert answer["capped"] is True and answer["groups_total"] == len(wanted) and len(answer["groups"]) == 100
    kept = answered_groups(answer, ["day", "hour"])
    smallest_kept = min(group["calls"] for group in kept.values())
    assert all(numbers["calls"] <= smallest_kept for key, numbers in wanted.items() if key not in kept)
    assert list(kept) == sorted(kept), "in key order"
    assert answer["rows"] == len(calls)


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"from": "yesterday", "to": "2026-01-01", "group_by": ["day"]}, "not ISO 8601"),
        ({"from": "2026-01-02", "to": "2026-01-01", "group_by": ["day"]}, "after"),
        ({"from": "2026-01-01", "to": "2026-01-02", "group_by": ["month"]}, "group_by"),
        ({"from": "2026-01-01", "to": "2026-01-02", "group_by": ["day", "line", "user"]}, "group_by"),
        ({"from": "2026-01-01", "to": "2026-01-02", "group_by": ["day", "day"]}, "different"),
        ({"from": "2026-01-01", "to": "2026-01-02", "group_by": ["day"], "tz": "Mars/Olympus"}, "time zone"),
        ({"from": "2026-01-01", "to": "2026-01-02", "group_by": ["day"], "FILTER": {"PHONE": "1"}}, "unknown key"),
    ],
)
async def test_invalid_input_is_refused_locally(
    tools: ToolCaller, sandbox: RunningSandbox, arguments: dict[str, Any], fragment: str
) -> None:
    sandbox.portal.reset_stats()
    error = await tools.error(TOOL, arguments)
    assert_local(error, fragment)
    assert sum(sandbox.portal.stats.requests.values()) == 0


async def test_progress_per_request(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    reports: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total))

    start, end = last_days(sandbox, 7)
    arguments = {"from": start.isoformat(), "to": end.isoformat(), "group_by": ["line"]}
    result = await tools.client.call_tool(TOOL, arguments, progress_callback=on_progress)
    rows = len(in_period(records(sandbox), start, end))
    assert not result.is_error
    assert reports == [(50, rows), (rows, rows)]
