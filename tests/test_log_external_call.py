"""log_external_call through the real server over stdio against the sandbox: one REST request per call, repeats
answered from the journal, every step failing in turn and resumed (across a restart too), lost answers settled
from the call statistics, concurrent attempts, and the cases that leave the batch.

The sandbox counts what reached it: `requests` per HTTP request (a batch is one), `batched` per command run
inside batches; its tables show how many calls were really registered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.sandbox.calls import Caller
from b24_telephony_mcp.sandbox.methods import METHODS
from b24_telephony_mcp.sandbox.state import Method, PortalState
from support import app_env, error_of, ok, stdio_session, text_of, webhook_env
from test_tools import TINY_WAV, ToolCaller

pytestmark = pytest.mark.anyio

JOHN_DOE = "+1 906 219 5047"
OPERATOR = 2
REGISTER, FINISH, RECORD, TRANSCRIPT = (
    "telephony.externalcall.register",
    "telephony.externalcall.finish",
    "telephony.externalcall.attachrecord",
    "telephony.call.attachtranscription",
)
STATISTICS = "voximplant.statistic.get"
STEP_METHODS = {"register": REGISTER, "finish": FINISH, "record": RECORD, "transcript": TRANSCRIPT}
MESSAGES = [
    {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 4, "MESSAGE": "Good morning, Sandbox Ltd."},
    {"SIDE": "Client", "START_TIME": 4, "STOP_TIME": 9, "MESSAGE": "Hi, it's John: 50% off & free?"},
]


def call(external_call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "USER_ID": OPERATOR,
        "PHONE_NUMBER": JOHN_DOE,
        "TYPE": 2,
        "EXTERNAL_CALL_ID": external_call_id,
        "DURATION": 95,
        "STATUS_CODE": "200",
        "RECORD_URL": "https://pbx.example.com/records/0001.mp3",
        "MESSAGES": MESSAGES,
        **extra,
    }


@asynccontextmanager
async def session(sandbox: RunningSandbox, state: Path, *args: str, webhook: bool = False) -> AsyncIterator[ToolCaller]:
    """The server with its state directory (journal) in `state`; each result checked against outputSchema."""
    extra = {"XDG_STATE_HOME": str(state)}
    env = webhook_env(sandbox, **extra) if webhook else app_env(sandbox, state / "tokens.json", **extra)
    async with stdio_session(env, *args) as client:
        listed = (await client.list_tools()).tools
        yield ToolCaller(client, {tool.name: tool.output_schema or {} for tool in listed})


def seen(sandbox: RunningSandbox) -> dict[str, dict[str, int]]:
    """What reached the portal since the last look (then zeroed)."""
    stats: dict[str, Any] = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()
    httpx2.post(f"{sandbox.base_url}/_sandbox/reset-stats")
    return {"requests": stats["requests"], "batched": stats.get("batched", {})}


def fault(sandbox: RunningSandbox, method: str, **spec: Any) -> None:
    body = spec.pop("body", json.dumps({"error": "", "error_description": "Injected failure"}))
    spec = {"method": method, "status": 500, "body": body, "content_type": "application/json", **spec}
    assert httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=spec).status_code == 200


def registrations(sandbox: RunningSandbox, external_call_id: str) -> int:
    """Calls the portal registered with this EXTERNAL_CALL_ID, finished or not."""
    portal = sandbox.portal
    active = [c for c in portal.calls.values() if c.external_call_id == external_call_id]
    finished = [r for r in portal.statistics.values() if r.external_call_id == external_call_id]
    return len(active) + len(finished)


def statistic_rows(portal: PortalState, params: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
    """voximplant.statistic.get, FILTER by EXTERNAL_CALL_ID only, rows as the docs show them (numbers as text)."""
    wanted = (params.get("FILTER") or {}).get("EXTERNAL_CALL_ID")
    return [
        {
            "ID": str(row.id),
            "CALL_ID": row.call_id,
            "EXTERNAL_CALL_ID": row.external_call_id,
            "CALL_DURATION": str(row.call_duration),
            "CALL_FAILED_CODE": row.call_failed_code,
            "CRM_ENTITY_TYPE": row.crm_entity_type,
            "CRM_ENTITY_ID": str(row.crm_entity_id),
            "CRM_ACTIVITY_ID": str(row.crm_activity_id),
            "RECORD_FILE_ID": row.call_record_id,
            "TRANSCRIPT_ID": str(row.transcript_id) if row.transcript_id else None,
        }
        for row in portal.statistics.values()
        if row.external_call_id == wanted
    ]


@pytest.fixture
def statistics_method() -> Iterator[None]:
    """voximplant.statistic.get on the sandbox, a minimal stand-in until its own emulation is there."""
    added = STATISTICS not in METHODS
    if added:
        METHODS[STATISTICS] = Method(statistic_rows)
    yield
    if added:
        del METHODS[STATISTICS]


async def test_one_request_per_call_and_a_repeat_costs_none(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with session(sandbox, tmp_path) as tools:
        seen(sandbox)
        logged = await tools.ok("log_external_call", call("pbx-1"))
        assert seen(sandbox) == {
            "requests": {"batch": 1},
            "batched": {REGISTER: 1, FINISH: 1, RECORD: 1, TRANSCRIPT: 1},
        }
        steps = logged["steps"]
        assert logged["CALL_ID"] == steps["register"]["CALL_ID"] == steps["finish"]["CALL_ID"]
        assert steps["register"]["CRM_ENTITY_TYPE"] == "CONTACT" and steps["finish"]["CALL_DURATION"] == 95
        row = sandbox.portal.statistics[logged["CALL_ID"]]
        assert row.external_call_id == "pbx-1" and row.call_record_id == steps["record"]["FILE_ID"]
        assert sandbox.portal.transcripts[steps["transcript"]["TRANSCRIPT_ID"]].messages == MESSAGES
        assert not sandbox.portal.calls, "the call is finished"
        assert sandbox.portal.files[steps["record"]["FILE_ID"]].source_url == call("x")["RECORD_URL"]

        assert await tools.ok("log_external_call", call("pbx-1")) == logged, "the same answer"
        assert seen(sandbox) == {"requests": {}, "batched": {}}, "from the journal, without a request"

        # Other values for a step already done: refused rather than answered as if they had been logged.
        changed = await tools.error("log_external_call", call("pbx-1", DURATION=5))
        assert changed["code"] == "ALREADY_LOGGED" and "finish" in changed["description"]
        assert changed["steps"] == {"register": "done", "finish": "done", "record": "done", "transcript": "done"}
        # A step not asked for before is simply done now (a transcript that came later, say).
        without = {key: value for key, value in call("pbx-2").items() if key != "MESSAGES"}
        first = await tools.ok("log_external_call", without)
        assert "transcript" not in first["steps"]
        seen(sandbox)
        later = await tools.ok("log_external_call", call("pbx-2"))
        assert later["steps"]["register"] == first["steps"]["register"]
        assert seen(sandbox)["batched"] == {TRANSCRIPT: 1}
        assert registrations(sandbox, "pbx-1") == registrations(sandbox, "pbx-2") == 1


@pytest.mark.parametrize("failing", ["register", "finish", "record", "transcript"])
async def test_each_step_failing_then_a_repeat_resumes(sandbox: RunningSandbox, tmp_path: Path, failing: str) -> None:
    order = list(STEP_METHODS)
    async with session(sandbox, tmp_path) as tools:
        fault(sandbox, STEP_METHODS[failing])
        seen(sandbox)
        result = await tools.call("log_external_call", call("pbx-f"))
        error = error_of(result)
        assert seen(sandbox)["requests"] == {"batch": 1}
        # The step that failed, what is done, what did not run (register and finish come before the others).
        expected = {name: "done" for name in order}
        expected[failing] = "failed"
        if failing in ("register", "finish"):
            for name in order[order.index(failing) + 1 :]:
                expected[name] = "not run"
        assert error["steps"] == expected
        assert error["code"] == "ERROR_CORE" and error["method"].lower() == STEP_METHODS[failing]
        assert error["description"].startswith(f"step {failing} (")
        assert "Injected failure" in error["description"]
        assert f"resumes at {failing}" in error["hint"]
        if failing != "register":
            assert sandbox.portal.statistics or sandbox.portal.calls
            assert "CALL_ID externalCall." in error["description"]

        logged = await tools.ok("log_external_call", call("pbx-f"))
        resent = seen(sandbox)
        assert resent["requests"] == {"batch": 1}
        assert set(resent["batched"]) == {STEP_METHODS[name] for name, state in expected.items() if state != "done"}
        assert set(logged["steps"]) == set(order)
    assert registrations(sandbox, "pbx-f") == 1
    assert not sandbox.portal.calls


async def test_a_repeat_after_a_restart_resumes(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with session(sandbox, tmp_path) as tools:
        fault(sandbox, FINISH)
        assert (await tools.error("log_external_call", call("pbx-r")))["steps"]["register"] == "done"
    seen(sandbox)
    async with session(sandbox, tmp_path) as tools:  # a new server process, the same state directory
        logged = await tools.ok("log_external_call", call("pbx-r"))
    assert seen(sandbox)["batched"] == {FINISH: 1, RECORD: 1, TRANSCRIPT: 1}
    assert registrations(sandbox, "pbx-r") == 1
    assert sandbox.portal.statistics[logged["CALL_ID"]].call_duration == 95


@pytest.mark.usefixtures("statistics_method")
async def test_a_lost_answer_is_settled_from_the_call_statistics(sandbox: RunningSandbox, tmp_path: Path) -> None:
    gateway = {"status": 502, "body": "<html><title>502 Bad Gateway</title></html>", "content_type": "text/html"}
    async with session(sandbox, tmp_path) as tools:
        # The portal ran the batch, but its answer never arrived.
        fault(sandbox, "batch", process=True, **gateway)
        lost = await tools.error("log_external_call", call("pbx-lost"))
        assert lost["code"] == "UNEXPECTED_RESPONSE" and lost["retryable"] is True
        assert set(lost["steps"].values()) == {"unknown"}
        assert "never registers the call twice" in lost["hint"]
        seen(sandbox)
        logged = await tools.ok("log_external_call", call("pbx-lost"))
        assert seen(sandbox)["requests"] == {STATISTICS: 1}, "the statistics row shows all four steps done"
        assert logged["steps"]["record"]["FILE_ID"] == sandbox.portal.statistics[logged["CALL_ID"]].call_record_id
        assert registrations(sandbox, "pbx-lost") == 1

        # The answer was lost and the portal never ran it: the row is missing, so the call is logged now.
        fault(sandbox, "batch", **gateway)
        assert set((await tools.error("log_external_call", call("pbx-never")))["steps"].values()) == {"unknown"}
        seen(sandbox)
        await tools.ok("log_external_call", call("pbx-never"))
        assert seen(sandbox)["requests"] == {STATISTICS: 1, "batch": 1}
        assert registrations(sandbox, "pbx-never") == 1


async def test_an_unknown_outcome_that_cannot_be_checked_sends_nothing(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with session(sandbox, tmp_path) as tools:
        fault(sandbox, "batch", process=True, status=504, body="", content_type="text/plain")
        await tools.error("log_external_call", call("pbx-u"))
        fault(
            sandbox,
            STATISTICS,
            status=403,
            body=json.dumps({"error": "ACCESS_DENIED", "error_description": "Access denied!"}),
        )
        seen(sandbox)
        error = await tools.error("log_external_call", call("pbx-u"))
        assert error["code"] == "OUTCOME_UNKNOWN" and "ACCESS_DENIED" in error["description"]
        assert "not registered twice" in error["hint"]
        assert seen(sandbox)["requests"] == {STATISTICS: 1}, "no register was sent"
    assert registrations(sandbox, "pbx-u") == 1


async def test_concurrent_attempts_register_once(sandbox: RunningSandbox, tmp_path: Path) -> None:
    outcomes: list[dict[str, Any]] = []

    async def attempt(tools: ToolCaller) -> None:
        result = await tools.call("log_external_call", call("pbx-c"))
        outcomes.append(result.structured_content or {})

    async with session(sandbox, tmp_path) as one, session(sandbox, tmp_path) as two, anyio.create_task_group() as group:
        for tools in (one, two, one, two):  # two processes, two calls each at once
            group.start_soon(attempt, tools)
    assert registrations(sandbox, "pbx-c") == 1
    call_ids = {outcome["result"]["CALL_ID"] for outcome in outcomes if "result" in outcome}
    assert len(call_ids) == 1
    assert {outcome["error"]["code"] for outcome in outcomes if "error" in outcome} <= {"IN_PROGRESS"}


async def test_what_does_not_ride_in_the_batch(sandbox: RunningSandbox, tmp_path: Path) -> None:
    files = tmp_path / "records"
    files.mkdir()
    (files / "call.wav").write_bytes(TINY_WAV)
    env = app_env(sandbox, tmp_path / "tokens.json", XDG_STATE_HOME=str(tmp_path), B24_FILES_DIR=str(files))
    async with stdio_session(env) as client:
        # A local file's content is uploaded in a request of its own, after the batch.
        seen(sandbox)
        arguments = call("pbx-file", RECORD_URL=None, file_path=str(files / "call.wav"))
        logged = ok(await client.call_tool("log_external_call", {k: v for k, v in arguments.items() if v is not None}))
        assert seen(sandbox)["requests"] == {"batch": 1, RECORD: 1}
        assert sandbox.portal.files[logged["steps"]["record"]["FILE_ID"]].content == TINY_WAV
        # Text the portal would take for a $result reference: every step is sent on its own, unchanged.
        reason = "callee said $result[total] was wrong"
        logged = ok(await client.call_tool("log_external_call", call("pbx-text", FAILED_REASON=reason)))
        assert seen(sandbox)["requests"] == {REGISTER: 1, FINISH: 1, RECORD: 1, TRANSCRIPT: 1}
        assert sandbox.portal.statistics[logged["CALL_ID"]].call_failed_reason == reason


async def test_refused_before_any_request(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with session(sandbox, tmp_path) as tools:
        seen(sandbox)
        missing = await tools.error(
            "log_external_call", {k: v for k, v in call("x").items() if k != "EXTERNAL_CALL_ID"}
        )
        assert missing["code"] == "INVALID_ARGUMENTS" and "EXTERNAL_CALL_ID" in missing["description"]
        no_name = await tools.error("log_external_call", call("x", RECORD_URL=None, FILE_CONTENT="UklGRg=="))
        assert "FILE_CONTENT needs FILENAME" in no_name["description"]
        no_user = await tools.error("log_external_call", call("x", USER_ID=None))
        assert "USER_ID or USER_PHONE_INNER" in no_user["description"]
        assert seen(sandbox)["requests"] == {}


async def test_a_webhook_is_refused_at_register_with_the_apps_hint(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with session(sandbox, tmp_path, webhook=True) as tools:
        result = await tools.call("log_external_call", call("pbx-w"))
        error = error_of(result)
        assert error["code"] == "WRONG_AUTH_TYPE" and error["steps"]["register"] == "failed"
        assert "Local application" in error["hint"] and "resumes at register" in error["hint"]
        assert text_of(result).startswith("WRONG_AUTH_TYPE: step register (telephony.externalCall.register) failed")
