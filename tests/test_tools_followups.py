"""The `followups` toolset (call.followup.*, REST 3.0) through the real server over stdio against the sandbox.

Happy paths, cursor paging across pages and the heavy-field cap, every error the method pages list (where the
tool's schema refuses the arguments first, that local refusal is asserted, and the portal's answer is checked on
the wire below), REST 3.0 validation items in the structured error and its text, `expired_token` on a REST 3.0
call refreshing and repeating like REST 2, and a missing `call` scope answered with the scope hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.bitrix.client import parse_response
from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.methods.followups import SEED_COUNT, FollowUpTables
from b24_telephony_mcp.tools import TOOLS_BY_NAME
from b24_telephony_mcp.tools.base import scope_hint
from support import app_env, stdio_session, text_of, webhook_env
from test_tools import ToolCaller, assert_local

pytestmark = pytest.mark.anyio

LIST, GET = "list_call_followups", "get_call_followup"
FIELDS, FIELD = "list_call_followup_fields", "get_call_followup_field"
ALL_OF_2026 = {"startDate": {"from": "2026-01-01T00:00:00Z", "to": "2026-12-31T23:59:59Z"}}
BASIC = ["callId", "callType", "initiatorId", "startDate", "endDate", "durationSeconds"]
ROOT = [  # call.followup.get's docs example, in its order
    *BASIC,
    *("uuid", "language", "version", "participants", "outcomes", "createdAt", "tracks"),
    *("transcription", "overview", "summary", "insights", "evaluation"),
]
V3 = "BITRIX_REST_V3_EXCEPTION_"
# Seeds (sandbox/methods/followups.py): calls 12301..12336, one about every 21 hours from 2026-01-05 09:00 UTC;
# 12311 and 12312 start at the same second; user 2 is in two calls of three, user 3 in the rest; 12302 is complete.
COMPLETE_CALL = 12302
USER3_CALL = 12301


@asynccontextmanager
async def followup_tools(env: dict[str, str]) -> AsyncIterator[ToolCaller]:
    async with stdio_session(env, "--toolsets", "followups") as client:
        listed = (await client.list_tools()).tools
        assert [tool.name for tool in listed] == [LIST, GET, FIELDS, FIELD, "run_batch"]  # run_batch: every selection
        yield ToolCaller(client, {tool.name: tool.output_schema for tool in listed if tool.output_schema})


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[RunningSandbox]:
    """One portal for the tests that only read (every follow-up method does)."""
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)) as running:
        yield running


@pytest.fixture(scope="module")
async def tools(shared_sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ToolCaller]:
    """One server session for the read-only tests."""
    token_file = tmp_path_factory.mktemp("followups") / "tokens.json"
    async with followup_tools(app_env(shared_sandbox, token_file)) as caller:
        yield caller


def assert_v3(error: dict[str, Any], code: str, status: int, hint: str | None = None) -> None:
    """A portal refusal in the REST 3.0 envelope, mapped like any other: code, HTTP status, not retryable."""
    assert (error["code"], error["http_status"], error["retryable"]) == (code, status, False), error
    assert error["method"].startswith("call.followup.")
    if hint is not None:
        assert hint in error["hint"], error["hint"]


def expected_order(sandbox: RunningSandbox, *, descending: bool = True) -> list[int]:
    rows = sandbox.portal.state(FollowUpTables).followups.values()
    return [row.call_id for row in sorted(rows, key=lambda row: (row.start, row.call_id), reverse=descending)]


async def test_happy_paths(shared_sandbox: RunningSandbox, tools: ToolCaller) -> None:
    fields = (await tools.ok(FIELDS, {}))["items"]
    assert [item["name"] for item in fields] == ROOT
    assert all(len(item) == 11 for item in fields)  # every description key without a select
    brief = (await tools.ok(FIELDS, {"select": ["name", "type", "description"]}))["items"]
    assert brief[0] == {
        "name": "callId",
        "type": "int",
        "description": "Bitrix24 call identifier (b_call.ID). Always present.",
    }
    docs_select = ["name", "type", "title", "description", "filterable", "sortable", "multiple"]
    assert await tools.ok(FIELD, {"name": "callId", "select": docs_select}) == {
        "item": {  # the docs' example answer
            "name": "callId",
            "type": "int",
            "title": "callId",
            "description": "Bitrix24 call identifier (b_call.ID). Always present.",
            "filterable": False,
            "sortable": False,
            "multiple": False,
        }
    }
    start_date = (await tools.ok(FIELD, {"name": "startDate"}))["item"]
    assert (start_date["filterable"], start_date["sortable"]) == (True, True)

    full = (await tools.ok(GET, {"callId": COMPLETE_CALL}))["item"]
    assert list(full) == ROOT
    assert full["outcomes"] == ["transcription", "overview", "summary", "insights", "evaluation"]
    assert full["overview"]["agreements"][0]["agreement"]
    assert "[USER=1]Admin Sandbox[/USER]" in full["overview"]["actionItems"][0]["actionItem"]  # bb by default
    html = await tools.ok(GET, {"callId": COMPLETE_CALL, "select": ["overview"], "mentionFormat": "html"})
    assert '<a href="/company/personal/user/1/">' in html["item"]["overview"]["actionItems"][0]["actionItem"]
    assert list((await tools.ok(GET, {"callId": COMPLETE_CALL, "select": []}))["item"]) == BASIC
    narrow = (await tools.ok(GET, {"callId": COMPLETE_CALL, "select": ["overview.topic", "summary"]}))["item"]
    assert list(narrow) == ["callId", "overview", "summary"]  # callId is always added
    assert narrow["overview"] == {"topic": full["overview"]["topic"]}
    in_progress = (await tools.ok(GET, {"callId": 12336}))["item"]
    assert (in_progress["endDate"], in_progress["outcomes"], in_progress["transcription"]) == (None, [], None)

    page = await tools.ok(
        LIST,
        {
            "filter": ALL_OF_2026,
            "select": ["callId", "startDate", "participants", "overview.topic", "overview.actionItems"],
            "order": {"startDate": "desc"},
            "pagination": {"limit": 3},
            "mentionFormat": "none",
        },
    )
    assert [item["callId"] for item in page["items"]] == expected_order(shared_sandbox)[:3]
    assert set(page["items"][1]) == {"callId", "startDate", "participants", "overview"}
    action_items = [item["overview"]["actionItems"][0]["actionItem"] for item in page["items"] if item["overview"]]
    assert action_items and not any("[USER=" in text or "<a " in text for text in action_items)  # mentionFormat none
    assert page["hasMore"] is True
    assert set(page["afterCursor"]) == {"startDate", "id"}
    with_user3 = await tools.ok(LIST, {"filter": {**ALL_OF_2026, "participantId": 3}})
    assert len(with_user3["items"]) == SEED_COUNT // 3
    assert all(list(item) == BASIC for item in with_user3["items"])  # no select: metadata only


async def test_cursor_pages_cover_every_follow_up_once(shared_sandbox: RunningSandbox, tools: ToolCaller) -> None:
    for order, descending in (("desc", True), ("asc", False)):
        seen: list[int] = []
        pagination: dict[str, Any] = {"limit": 7}
        pages = 0
        while True:
            page = await tools.ok(
                LIST, {"filter": ALL_OF_2026, "order": {"startDate": order}, "pagination": pagination}
            )
            pages += 1
            seen += [item["callId"] for item in page["items"]]
            if not page["hasMore"]:
                assert page["afterCursor"] is None
                break
            assert page["afterCursor"]["id"] == seen[-1]
            pagination = {"limit": 7, "afterCursor": page["afterCursor"]}  # verbatim, as the description says
        assert seen == expected_order(shared_sandbox, descending=descending)  # the tie 12311/12312 included
        assert pages == -(-SEED_COUNT // 7)

    # Heavy blocks cap a page at 20 whatever the limit; a limit over the maximum is clamped, not refused.
    heavy = await tools.ok(LIST, {"filter": ALL_OF_2026, "select": ["transcription"], "pagination": {"limit": 50}})
    assert (len(heavy["items"]), heavy["hasMore"]) == (20, True)
    after = {"limit": 50, "afterCursor": heavy["afterCursor"]}
    rest = await tools.ok(LIST, {"filter": ALL_OF_2026, "select": ["insights.engagementLevel"], "pagination": after})
    assert (len(rest["items"]), rest["hasMore"]) == (SEED_COUNT - 20, False)
    light = await tools.ok(LIST, {"filter": ALL_OF_2026, "select": ["summary"], "pagination": {"limit": 1000}})
    assert (len(light["items"]), light["hasMore"]) == (SEED_COUNT, False)
    default = await tools.ok(LIST, {"filter": ALL_OF_2026})
    assert len(default["items"]) == SEED_COUNT  # default page size 50
    january = await tools.ok(
        LIST, {"filter": {"startDate": {"from": "2026-01-10T00:00:00+00:00", "to": "2026-01-11T23:59:59+00:00"}}}
    )
    assert all(item["startDate"].startswith(("2026-01-10", "2026-01-11")) for item in january["items"])
    assert january["items"]


async def test_documented_errors(shared_sandbox: RunningSandbox, tools: ToolCaller) -> None:
    reversed_range = {"startDate": {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}}
    assert_v3(await tools.error(LIST, {"filter": reversed_range}), "invalid_date_range", 400, "ISO 8601")
    not_a_date = {"startDate": {"from": "yesterday", "to": "today"}}
    assert_v3(await tools.error(LIST, {"filter": not_a_date}), "invalid_date_range", 400)
    bad_path = {"filter": ALL_OF_2026, "select": ["participants.name"]}
    assert_v3(await tools.error(LIST, bad_path), "invalid_select_field", 400, "pass participants")
    forged = {"filter": ALL_OF_2026, "pagination": {"afterCursor": {"startDate": "2026-01-12", "id": "last"}}}
    assert_v3(await tools.error(LIST, forged), "invalid_pagination", 400, "exactly as received")
    # Refused here before any request: the schema states these (invalid_order, the portal's validation).
    assert_local(await tools.error(LIST, {"filter": ALL_OF_2026, "order": {"startDate": "up"}}), "order.startDate")
    assert_local(await tools.error(LIST, {"filter": {**ALL_OF_2026, "participantId": "me"}}), "participantId")
    assert_local(await tools.error(LIST, {"filter": ALL_OF_2026, "mentionFormat": "md"}), "mentionFormat")
    assert_local(await tools.error(LIST, {"filter": ALL_OF_2026, "pagination": {"limit": 0}}), "limit")
    assert_local(await tools.error(LIST, {"filter": {"startDate": {"from": "2026-01-01"}}}), "startDate.to")

    assert_v3(await tools.error(GET, {"callId": 1}), f"{V3}ENTITYNOTFOUNDEXCEPTION", 400, "follow-up list")
    assert_v3(await tools.error(GET, {"callId": COMPLETE_CALL, "select": ["nope"]}), "invalid_select_field", 400)
    assert_local(await tools.error(GET, {}), "callId")

    assert_v3(
        await tools.error(FIELD, {"name": "nope"}),
        "BITRIX_REST_V3_REALISATION_EXCEPTION_FIELDNOTFOUNDEXCEPTION",
        400,
        "list the follow-up fields",
    )
    assert_local(await tools.error(FIELDS, {"select": ["name", "label"]}), "select.1")
    assert_local(await tools.error(FIELD, {"name": "callId", "select": ["label"]}), "select.0")


async def test_validation_items_reach_the_structured_error_and_its_text(tools: ToolCaller) -> None:
    result = await tools.call(FIELD, {"name": ""})
    assert result.is_error and result.structured_content is not None
    error = result.structured_content["error"]
    assert_v3(error, f"{V3}VALIDATION_REQUESTVALIDATIONEXCEPTION", 400)
    assert error["validation"] == [{"field": "name", "message": "Mandatory field `name` is not specified"}]
    assert (
        error["description"] == "Error during request object validation (name: Mandatory field `name` is not specified)"
    )
    assert text_of(result).startswith(f"{error['code']}: {error['description']}\nHint: Fix the fields named")


async def test_access_is_limited_to_the_users_own_calls(token_file: Path) -> None:
    # The incoming webhook of user 2, who is no administrator: only calls with user 2, whatever the filter says.
    config = SandboxConfig(rate_limit=1000.0, rate_burst=10000, webhook_user_id=2)
    with start_sandbox(config) as sandbox:
        async with followup_tools(webhook_env(sandbox)) as tools:
            assert_v3(await tools.error(GET, {"callId": USER3_CALL}), "access_denied", 403, "administrator")
            own = (await tools.ok(GET, {"callId": COMPLETE_CALL, "select": ["participants"]}))["item"]
            assert 2 in [participant["userId"] for participant in own["participants"]]
            listed = await tools.ok(LIST, {"filter": {**ALL_OF_2026, "participantId": 3}, "select": ["participants"]})
    assert len(listed["items"]) == SEED_COUNT - SEED_COUNT // 3
    assert all(2 in [p["userId"] for p in item["participants"]] for item in listed["items"])


async def test_expired_token_on_a_rest_3_call_refreshes_and_repeats(sandbox: RunningSandbox, token_file: Path) -> None:
    async with followup_tools(app_env(sandbox, token_file)) as tools:
        assert (await tools.ok(FIELD, {"name": "uuid", "select": ["name"]})) == {"item": {"name": "uuid"}}
        assert httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens").status_code == 200
        assert httpx2.post(f"{sandbox.base_url}/_sandbox/reset-stats").status_code == 200
        fields = await tools.ok(FIELDS, {"select": ["name"]})
        assert len(fields["items"]) == len(ROOT)
    stats = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()
    assert (stats["requests"], stats["refreshes"]) == (
        {"call.followup.field.list": 2},
        1,
    )  # expired, refreshed, repeated
    assert sandbox.access_token not in await anyio.Path(token_file).read_text(encoding="utf-8")  # rotated, saved


async def test_missing_call_scope_answers_with_the_scope_hint(token_file: Path) -> None:
    with start_sandbox(SandboxConfig(scopes="telephony")) as sandbox:
        async with followup_tools(app_env(sandbox, token_file)) as tools:
            error = await tools.error(GET, {"callId": COMPLETE_CALL})
    assert_v3(error, f"{V3}INSUFFICIENTSCOPEEXCEPTION", 403)
    assert error["hint"] == scope_hint(TOOLS_BY_NAME[GET])
    assert "'call' scope" in error["hint"]


# --- the portal's answers on the wire, where the tool's schema stops the arguments first ---


def post(sandbox: RunningSandbox, method: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{sandbox.base_url}/rest/api/{method}", json={**body, "auth": sandbox.access_token})


def test_sandbox_answers_what_the_schema_refuses(shared_sandbox: RunningSandbox) -> None:
    both = post(shared_sandbox, "call.followup.get", {"callId": "12302", "mentionFormat": "md"})
    assert both.status_code == 400
    assert both.json() == {
        "error": {
            "code": f"{V3}VALIDATION_REQUESTVALIDATIONEXCEPTION",
            "message": "Error during request object validation",
            "validation": [
                {"field": "callId", "message": "Field `callId` must be an integer"},
                {"field": "mentionFormat", "message": "Field `mentionFormat` must be one of: bb, html, none"},
            ],
        }
    }
    participant = post(shared_sandbox, "call.followup.list", {"filter": {**ALL_OF_2026, "participantId": "me"}})
    assert participant.json()["error"]["validation"] == [
        {"field": "filter.participantId", "message": "Field `filter.participantId` must be an integer"}
    ]
    order = post(shared_sandbox, "call.followup.list", {"filter": ALL_OF_2026, "order": {"startDate": "up"}})
    assert (order.status_code, order.json()["error"]["code"]) == (400, "invalid_order")
    limit = post(shared_sandbox, "call.followup.list", {"filter": ALL_OF_2026, "pagination": {"limit": 0}})
    assert limit.json()["error"]["code"] == "invalid_pagination"
    conditions = post(shared_sandbox, "call.followup.list", {"filter": [["startDate", ">=", "2026-01-01"]]})
    assert conditions.json()["error"] == {
        "code": "invalid_date_range",
        "message": "Incorrect date range: both from and to are required",
    }
    unknown = post(shared_sandbox, "call.followup.field.list", {"select": ["name", "label"]})
    assert (unknown.status_code, unknown.json()) == (
        400,
        {
            "error": {
                "code": f"{V3}UNKNOWNDTOPROPERTYEXCEPTION",
                "message": "Unknown field `label` for object `DtoFieldDto`",
            }
        },
    )
    not_a_list = post(shared_sandbox, "call.followup.field.get", {"name": "callId", "select": "name"})
    assert not_a_list.json()["error"]["code"] == f"{V3}INVALIDSELECTEXCEPTION"
    missing = post(shared_sandbox, "call.followup.field.get", {})
    assert missing.json()["error"]["validation"] == [
        {"field": "name", "message": "Mandatory field `name` is not specified"}
    ]
    query_string = httpx2.post(
        f"{shared_sandbox.base_url}/rest/api/call.followup.get?callId=12302", json={"auth": shared_sandbox.access_token}
    )
    assert query_string.json()["error"]["validation"][0]["field"] == "callId"  # REST 3.0 reads only the body


# --- the client's reading of REST 3.0 answers (pure) ---


def test_rest_3_answers_are_read_like_rest_2_ones() -> None:
    page = {"items": [{"callId": 1}], "hasMore": False, "afterCursor": None}
    assert parse_response(httpx2.Response(200, json={"result": page, "time": {}}), LIST, True).result == page
    refused = {
        "error": {
            "code": f"{V3}VALIDATION_REQUESTVALIDATIONEXCEPTION",
            "message": "Error validating request object",
            "validation": [{"field": "id", "message": "Required field `id` is not specified"}, {"field": "x"}, {}],
        }
    }
    with pytest.raises(BitrixError) as caught:
        parse_response(httpx2.Response(400, json=refused), "call.followup.get", True)
    error = caught.value
    assert (error.code, error.http_status, error.retryable) == (
        f"{V3}VALIDATION_REQUESTVALIDATIONEXCEPTION",
        400,
        False,
    )
    assert error.description == "Error validating request object (id: Required field `id` is not specified; x: invalid)"
    assert error.validation == refused["error"]["validation"]
    assert error.hint.startswith("Fix the fields named")
    # A lowercase method code without validation, and a limit answer in the v3 shape, keep the REST 2 rules.
    with pytest.raises(BitrixError) as caught:
        parse_response(httpx2.Response(400, json={"error": {"code": "invalid_order", "message": "m"}}), LIST, True)
    assert (caught.value.code, caught.value.description, caught.value.validation) == ("invalid_order", "m", None)
    limit = {"error": {"code": "QUERY_LIMIT_EXCEEDED", "message": "Too many requests"}}
    with pytest.raises(BitrixError) as caught:
        parse_response(httpx2.Response(503, json=limit), LIST, False)
    assert caught.value.retryable is True
