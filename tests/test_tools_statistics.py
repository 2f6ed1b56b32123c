"""`get_call_statistics` through the real server over stdio against the sandbox's `voximplant.statistic.get`.

One sandbox and one server session serve the module (the history is read, not changed, except where a test
finishes a call or changes a permission and restores it). Expected rows are computed here, in plain Python,
from the portal's own records, so the sandbox's filter code is checked rather than trusted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.methods.statistics import StatisticsAccess, history, seed_history
from b24_telephony_mcp.sandbox.records import StatisticRecord, seed_crm
from support import app_env, stdio_session, webhook_env
from test_tools import ToolCaller, assert_local

pytestmark = pytest.mark.anyio

TOOL = "get_call_statistics"
METHOD = "voximplant.statistic.get"
ROW_KEYS = {
    "ID", "PORTAL_USER_ID", "PORTAL_NUMBER", "PHONE_NUMBER", "CALL_ID", "EXTERNAL_CALL_ID", "CALL_CATEGORY",
    "CALL_DURATION", "CALL_START_DATE", "CALL_RECORD_URL", "CALL_VOTE", "COST", "COST_CURRENCY", "CALL_FAILED_CODE",
    "CALL_FAILED_REASON", "CRM_ENTITY_TYPE", "CRM_ENTITY_ID", "CRM_ACTIVITY_ID", "REST_APP_ID", "REST_APP_NAME",
    "TRANSCRIPT_ID", "TRANSCRIPT_PENDING", "SESSION_ID", "REDIAL_ATTEMPT", "COMMENT", "RECORD_DURATION",
    "RECORD_FILE_ID", "CALL_TYPE",
}  # fmt: skip
Record = StatisticRecord


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as running:
        yield running


@pytest.fixture(scope="module")
async def tools(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ToolCaller]:
    token_file = tmp_path_factory.mktemp("statistics") / "tokens.json"
    async with stdio_session(app_env(sandbox, token_file)) as client:  # the default toolsets
        listed = (await client.list_tools()).tools
        assert TOOL in {tool.name for tool in listed}, "statistics is on by default"
        yield ToolCaller(client, {tool.name: tool.output_schema for tool in listed if tool.output_schema})


def records(sandbox: RunningSandbox) -> list[Record]:
    return history(sandbox.portal)


async def page(tools: ToolCaller, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await tools.call(TOOL, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def every_id(tools: ToolCaller, arguments: dict[str, Any]) -> list[int]:
    """All matching ids, following `next` from page to page."""
    ids: list[int] = []
    start = 0
    while True:
        answer = await page(tools, {**arguments, "fields": ["ID"], "start": start})
        ids += [int(row["ID"]) for row in answer["result"]]
        if "next" not in answer:
            assert answer["total"] == len(ids)
            return ids
        assert len(answer["result"]) == 50
        start = answer["next"]


def ids_where(sandbox: RunningSandbox, test: Callable[[Record], bool]) -> list[int]:
    found = [record.id for record in records(sandbox) if test(record)]
    assert 0 < len(found) < len(records(sandbox)), "a case that selects nothing or everything proves nothing"
    return found


# --- paging and the rows ---


async def test_pages_follow_next_through_the_whole_history(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    first = await page(tools, {})
    assert first["total"] == len(records(sandbox)) >= 300
    assert first["next"] == 50 and len(first["result"]) == 50
    row = first["result"][0]
    assert set(row) == ROW_KEYS  # CALL_LOG is not sent (disagreements.md #12)
    assert row["ID"] == "1" and isinstance(row["CALL_DURATION"], str) and row["CALL_TYPE"] in "12345"
    assert datetime.fromisoformat(row["CALL_START_DATE"]).tzinfo is not None
    assert await every_id(tools, {}) == [record.id for record in records(sandbox)]  # oldest first, id order
    last = await page(tools, {"start": "300"})  # a number as text
    assert "next" not in last and [r["ID"] for r in last["result"]] == [str(r.id) for r in records(sandbox)[300:]]


async def test_start_minus_one_pages_by_id_without_counting(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    seen: list[int] = []
    requests_before = sandbox.portal.stats.requests[METHOD]
    while True:
        answer = await page(
            tools, {"FILTER": {">ID": seen[-1] if seen else 0}, "SORT": "ID", "ORDER": "ASC", "start": -1}
        )
        assert answer["total"] == 0 and "next" not in answer  # huge-data.md: no count, no next
        seen += [int(row["ID"]) for row in answer["result"]]
        if len(answer["result"]) < 50:
            break
    assert seen == [record.id for record in records(sandbox)]
    assert sandbox.portal.stats.requests[METHOD] - requests_before == len(records(sandbox)) // 50 + 1


async def test_fields_keep_only_those_keys(tools: ToolCaller) -> None:
    answer = await page(tools, {"fields": ["CALL_START_DATE", "CALL_FAILED_CODE", "COST", "COST_CURRENCY"]})
    assert all(set(row) == {"CALL_START_DATE", "CALL_FAILED_CODE", "COST", "COST_CURRENCY"} for row in answer["result"])
    assert answer["total"] >= 300 and answer["next"] == 50
    assert_local(await tools.error(TOOL, {"fields": ["call_type"]}), "unknown row keys call_type", "CALL_TYPE")


# --- FILTER ---


def midnight(days_ago: int, hours_east: int) -> datetime:
    zone = timezone(timedelta(hours=hours_east))
    day = datetime.now(zone).date() - timedelta(days=days_ago)
    return datetime.combine(day, time(0), tzinfo=zone)


async def test_filter_operators_select_what_they_say(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    moscow_day = midnight(10, 3)
    next_day = moscow_day + timedelta(days=1)
    cases: list[tuple[dict[str, Any], Callable[[Record], bool]]] = [
        ({"PORTAL_USER_ID": 2}, lambda r: r.portal_user_id == 2),
        ({"=PORTAL_USER_ID": "4"}, lambda r: r.portal_user_id == 4),  # a number as text
        ({"!CALL_FAILED_CODE": "200"}, lambda r: r.call_failed_code != "200"),
        ({"!=CALL_TYPE": 1}, lambda r: r.incoming != 1),
        (
            {"CALL_TYPE": [2, 3], "CALL_FAILED_CODE": "304"},
            lambda r: r.incoming in (2, 3) and r.call_failed_code == "304",
        ),
        ({">CALL_DURATION": 300}, lambda r: r.call_duration > 300),
        ({">=CALL_DURATION": 60, "<=CALL_DURATION": 61}, lambda r: 60 <= r.call_duration <= 61),
        ({"<CALL_DURATION": 10}, lambda r: r.call_duration < 10),
        ({"><CALL_DURATION": [60, 120]}, lambda r: 60 <= r.call_duration <= 120),
        ({"!><CALL_DURATION": [1, 600]}, lambda r: not 1 <= r.call_duration <= 600),
        ({"%PHONE_NUMBER": "906"}, lambda r: "906" in r.phone_number),
        ({"!%PORTAL_NUMBER": "REG"}, lambda r: "reg" not in r.portal_number),  # LIKE ignores case
        ({"crm_entity_type": "contact"}, lambda r: r.crm_entity_type == "CONTACT"),  # keys and values, any case
        ({"COST_CURRENCY": ["GBP", "RUB"], ">COST": 0}, lambda r: r.cost_currency in ("GBP", "RUB") and r.cost > 0),
        (
            {">=CALL_START_DATE": moscow_day.isoformat(), "<CALL_START_DATE": next_day.isoformat()},
            lambda r: moscow_day <= r.call_start_date < next_day,
        ),
        (
            {"0": {"LOGIC": "OR", "CALL_FAILED_CODE": "486", ">=CALL_DURATION": 1200}, "PORTAL_NUMBER": "reg133788"},
            lambda r: (r.call_failed_code == "486" or r.call_duration >= 1200) and r.portal_number == "reg133788",
        ),
    ]
    for filter_, test in cases:
        assert await every_id(tools, {"FILTER": filter_}) == ids_where(sandbox, test), filter_


async def test_filter_mistakes_are_refused_before_any_request(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    before = sandbox.portal.stats.requests[METHOD]
    for filter_, fragment in [
        ({"CALL_STATUS": 1}, "unknown field 'CALL_STATUS'"),
        ({"=>CALL_DURATION": 5}, "unknown operator '=>'"),
        ({">=CALL_START_DATE": "last week"}, "not ISO 8601"),
        ({"><CALL_DURATION": 5}, "list of two values"),
        ({"0": {"LOGIC": "XOR", "ID": 1}}, "LOGIC must be AND or OR"),
    ]:
        assert_local(await tools.error(TOOL, {"FILTER": filter_}), fragment)
    assert_local(await tools.error(TOOL, {"SORT": "CALL_TYPE"}), "SORT", "CALL_START_DATE")
    assert_local(await tools.error(TOOL, {"ORDER": "desc"}), "ORDER")
    assert_local(await tools.error(TOOL, {"start": -2}), "start")
    assert sandbox.portal.stats.requests[METHOD] == before


# --- SORT / ORDER ---


async def test_sort_and_order(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    longest = await page(tools, {"SORT": "CALL_DURATION", "ORDER": "DESC", "fields": ["CALL_DURATION"]})
    durations = sorted((r.call_duration for r in records(sandbox)), reverse=True)[:50]
    assert [int(row["CALL_DURATION"]) for row in longest["result"]] == durations
    # SORT alone sorts ascending: the tool sends ORDER=ASC, which the portal needs to sort at all.
    shortest = await page(tools, {"SORT": "CALL_DURATION", "FILTER": {"CALL_FAILED_CODE": "200"}, "start": 20})
    durations = sorted(r.call_duration for r in records(sandbox) if r.call_failed_code == "200")[20:70]
    assert [int(row["CALL_DURATION"]) for row in shortest["result"]] == durations
    newest = await page(tools, {"SORT": "CALL_START_DATE", "ORDER": "DESC", "fields": ["ID"]})
    assert int(newest["result"][0]["ID"]) == max(records(sandbox), key=lambda r: (r.call_start_date, -r.id)).id
    priciest = await page(tools, {"SORT": "COST", "ORDER": "DESC", "FILTER": {"COST_CURRENCY": "USD"}, "start": 50})
    costs = sorted((r.cost for r in records(sandbox) if r.cost_currency == "USD"), reverse=True)[50:100]
    assert [float(row["COST"]) for row in priciest["result"]] == pytest.approx(costs)


def test_the_portal_ignores_a_sort_it_cannot_use(sandbox: RunningSandbox) -> None:
    """disagreements.md #12: ORDER must be exactly ASC/DESC, SORT a field of the table, else id order; unknown
    filter fields and operators are dropped. The tool refuses these before sending; a raw client sees this."""
    url = f"{sandbox.base_url}/rest/{METHOD}"
    headers = {"Authorization": f"Bearer {sandbox.access_token}"}
    with httpx2.Client(timeout=10) as http:
        for params in (
            {"SORT": "CALL_DURATION", "ORDER": "desc"},
            {"SORT": "CALL_TYPE", "ORDER": "DESC"},
            {"SORT": "NO_SUCH_FIELD", "ORDER": "DESC"},
            {"SORT": "CALL_DURATION"},
            {"FILTER": {"NO_SUCH_FIELD": 1, "=>ID": 5, "~ID": 7}},
        ):
            body = http.post(url, json=params, headers=headers).json()
            assert [row["ID"] for row in body["result"]] == [str(n) for n in range(1, 51)], params
            assert body["next"] == 50 and body["total"] == len(records(sandbox))


# --- what else is in the table, and who may see it ---


async def test_a_call_finished_here_is_in_the_statistics(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    call_id = (
        await tools.ok(
            "register_external_call",
            {"USER_ID": 2, "PHONE_NUMBER": "+44 20 7946 0958", "TYPE": 2, "LINE_NUMBER": "100200"},
        )
    )["CALL_ID"]
    await tools.ok(
        "finish_external_call",
        {"CALL_ID": call_id, "USER_ID": 2, "DURATION": 42, "COST": 0.25, "COST_CURRENCY": "EUR", "VOTE": 4},
    )
    [row] = (await page(tools, {"FILTER": {"CALL_ID": call_id}}))["result"]
    assert int(row["ID"]) == max(record.id for record in records(sandbox)) > 300  # after the seeded history
    assert {key: row[key] for key in ("PORTAL_USER_ID", "PORTAL_NUMBER", "PHONE_NUMBER", "CALL_TYPE")} == {
        "PORTAL_USER_ID": "2",
        "PORTAL_NUMBER": "100200",
        "PHONE_NUMBER": "442079460958",
        "CALL_TYPE": "2",
    }
    assert (row["CALL_DURATION"], row["CALL_FAILED_CODE"], row["COST"], row["COST_CURRENCY"]) == (
        "42",
        "200",
        "0.2500",
        "EUR",
    )
    assert (row["CALL_VOTE"], row["CRM_ENTITY_TYPE"], row["CRM_ENTITY_ID"]) == ("4", "CONTACT", "652")
    assert (row["REST_APP_ID"], row["REST_APP_NAME"], row["SESSION_ID"]) == ("1", "Sandbox telephony app", None)


async def test_view_permission_none_own_all(tools: ToolCaller, sandbox: RunningSandbox) -> None:
    access = sandbox.portal.state(StatisticsAccess)
    try:
        access.view[1] = "none"
        error = await tools.error(TOOL, {})
        assert (error["code"], error["description"], error["http_status"]) == ("ACCESS_DENIED", "Access denied!", 403)
        assert error["retryable"] is False and "administrator" in error["hint"]
        access.view[1] = "own"  # rows of other users are left out, whatever the filter asks
        assert await every_id(tools, {"FILTER": {"PORTAL_USER_ID": [1, 2]}}) == ids_where(
            sandbox, lambda r: r.portal_user_id == 1
        )
    finally:
        access.view[1] = "all"


async def test_webhook_reads_statistics_too(sandbox: RunningSandbox) -> None:
    async with stdio_session(webhook_env(sandbox), "--toolsets", "statistics") as client:
        result = await client.call_tool(TOOL, {"FILTER": {"CALL_TYPE": 5}, "fields": ["CALL_TYPE"]})
    assert not result.is_error and result.structured_content is not None
    assert {row["CALL_TYPE"] for row in result.structured_content["result"]} == {"5"}


# --- the seeded history ---


def test_seeded_history_is_varied_realistic_and_deterministic() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
    rows = seed_history(300, now, seed_crm())
    assert rows == seed_history(300, now, seed_crm())
    assert [row.id for row in rows] == list(range(1, 301))
    assert [row.call_start_date for row in rows] == sorted(row.call_start_date for row in rows)
    oldest, newest = rows[0].call_start_date.timestamp(), rows[-1].call_start_date.timestamp()
    assert now - 60 * 86400 <= oldest and newest <= now and newest - oldest > 50 * 86400
    assert {row.incoming for row in rows} == {1, 2, 3, 4, 5}
    codes = Counter(row.call_failed_code for row in rows)
    assert codes["200"] > 150 and codes["304"] > 10 and codes["486"] > 3
    assert all((row.call_duration > 0) == (row.call_failed_code == "200") for row in rows)
    assert {row.cost_currency for row in rows if row.cost > 0} >= {"USD", "GBP", "RUB"}
    assert len({row.portal_user_id for row in rows}) >= 5 and len({row.portal_number for row in rows}) >= 5
    # Calls within half an hour of midnight in several time zones, so day buckets have edges to get right.
    for hours_east in (0, 3, -5, 9):
        near = [r for r in rows if _minutes_from_midnight(r.call_start_date, hours_east) <= 30]
        assert len(near) >= 3, hours_east
    assert all(row.crm_entity_id for row in rows if row.crm_entity_type)
    assert any(row.phone_number == "+19062195047" and row.crm_entity_id == 651 for row in rows)  # John Doe


def test_twenty_thousand_rows_seed() -> None:
    rows = seed_history(20_000, datetime.now(UTC).timestamp(), seed_crm())
    assert len({row.call_id for row in rows}) == 20_000
    assert rows[-1].id == 20_000


def _minutes_from_midnight(moment: datetime, hours_east: int) -> float:
    local = moment.astimezone(timezone(timedelta(hours=hours_east)))
    minutes = local.hour * 60 + local.minute
    return min(minutes, 24 * 60 - minutes)


def test_seed_size_is_a_config_knob() -> None:
    with start_sandbox(SandboxConfig(seed_calls=120)) as small:
        assert len(history(small.portal)) == 120
        assert small.portal.next_id("stat") == 121  # finished calls come after the seeded ones
