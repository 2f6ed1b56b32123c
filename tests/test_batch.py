"""`batch`: the sandbox serving it as the server source does, and the REST client's `call_batch` over real HTTP.

The sandbox side is checked with raw requests (what a portal answers to exactly this body); the client side
through `call_batch` with a real `BitrixClient` against the same sandbox, so encoding, references, per-command
errors, halt, pacing and retries are the real wire.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import pytest

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, TokenPair, TokenStore, WebhookAuth
from b24_telephony_mcp.bitrix.batch import (
    MAX_COMMANDS,
    MAX_QUERY_VARS,
    NOT_RUN,
    Command,
    Ref,
    call_batch,
    fits_in_batch,
    outcome_unknown,
    pack,
    php_query,
)
from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.php import php_params
from test_cli import SCRIPT, free_port, user_env
from test_client_inprocess import oauth_client

pytestmark = pytest.mark.anyio

JOHN_DOE = "+1 906 219 5047"
OPERATOR = 2
REGISTER, FINISH, TRANSCRIPT = (
    "telephony.externalCall.register",
    "telephony.externalCall.finish",
    "telephony.call.attachTranscription",
)
LINES = "telephony.externalLine.get"


def raw_batch(sandbox: RunningSandbox, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx2.post(f"{sandbox.base_url}/rest/batch", json={**body, "auth": sandbox.access_token})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()["result"]
    return answer


def stats(sandbox: RunningSandbox) -> dict[str, Any]:
    answer: dict[str, Any] = httpx2.get(f"{sandbox.base_url}/_sandbox/stats").json()
    return answer


async def client_for(sandbox: RunningSandbox, tmp_path: Path, **limits: float) -> BitrixClient:
    client = await oauth_client(
        sandbox, TokenStore(tmp_path / "tokens.json"), TokenPair(sandbox.access_token, sandbox.refresh_token)
    )
    if limits:
        client = BitrixClient(client.auth, rate=limits["rate"], burst=int(limits["burst"]))
    return client


def register(key: str, phone: str = JOHN_DOE, **extra: Any) -> Command:
    return Command(key, REGISTER, {"USER_ID": OPERATOR, "PHONE_NUMBER": phone, "TYPE": 2, "SHOW": 0, **extra})


# --- the sandbox's batch, as the source runs it ---


def test_commands_past_fifty_fail_inside_an_http_200(sandbox: RunningSandbox) -> None:
    answer = raw_batch(sandbox, {"cmd": {f"c{i}": LINES for i in range(53)}})
    assert sorted(answer["result"], key=lambda key: int(key[1:])) == [f"c{i}" for i in range(50)]
    assert answer["result_error"] == {
        f"c{i}": {"error": "ERROR_BATCH_LENGTH_EXCEEDED", "error_description": "Max batch length exceeded"}
        for i in (50, 51, 52)
    }
    assert set(answer["result_time"]) == {f"c{i}" for i in range(50)}
    assert stats(sandbox)["requests"] == {"batch": 1}
    assert stats(sandbox)["batched"] == {LINES.lower(): 50}


def test_nested_batch_and_upload_are_refused_per_command(sandbox: RunningSandbox) -> None:
    answer = raw_batch(sandbox, {"CMD": {"inner": "batch?cmd[a]=scope", "up": "upload?token=x", "ok": LINES}})
    refusal = {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED", "error_description": "Method is not allowed for batch usage"}
    assert answer["result_error"] == {"inner": refusal, "up": refusal}
    assert answer["result"] == {"ok": []}


def test_empty_maps_are_lists_and_a_list_cmd_answers_lists(sandbox: RunningSandbox) -> None:
    answer = raw_batch(sandbox, {"cmd": [LINES, LINES, 7]})  # a non-string command is skipped without a key
    assert answer["result"] == [[], []]
    assert answer["result_error"] == [] and answer["result_total"] == [] and answer["result_next"] == []
    assert raw_batch(sandbox, {}) == {
        "result": [],
        "result_error": [],
        "result_total": [],
        "result_next": [],
        "result_time": [],
    }


def test_references_whole_partial_and_missing(sandbox: RunningSandbox) -> None:
    cmd = {
        "reg": f"{REGISTER}?USER_ID={OPERATOR}&PHONE_NUMBER=19062195047&TYPE=2&SHOW=0",
        "whole": f"{FINISH}?USER_ID={OPERATOR}&CALL_ID=$result[reg][CALL_ID]",
        # Inside a longer text the reference is replaced as text (the line number becomes "<CALL_ID>-x").
        "text": f"{REGISTER}?USER_ID={OPERATOR}&PHONE_NUMBER=123&TYPE=2&SHOW=0&LINE_NUMBER=$result[reg][CALL_ID]-x",
        # A failed command has no result: source keeps the node it reached (the whole result map), an array.
        "gone": f"{FINISH}?USER_ID={OPERATOR}&CALL_ID=$result[nothing][CALL_ID]",
    }
    answer = raw_batch(sandbox, {"cmd": cmd})
    call_id = answer["result"]["reg"]["CALL_ID"]
    assert answer["result"]["whole"]["CALL_ID"] == call_id
    assert any(line.number == f"{call_id}-x"[:50] for line in sandbox.portal.lines.values())
    assert answer["result_error"]["gone"]["error"] == "INVALID_ARGUMENT"  # CALL_ID must be a string


def test_halt_stops_at_the_first_failure(sandbox: RunningSandbox) -> None:
    cmd = {"a": LINES, "b": f"{FINISH}?USER_ID=1&CALL_ID=unknown", "c": LINES}
    halted = raw_batch(sandbox, {"cmd": cmd, "halt": 1})
    assert list(halted["result"]) == ["a"] and list(halted["result_error"]) == ["b"]
    assert stats(sandbox)["batched"] == {LINES.lower(): 1, FINISH.lower(): 1}
    both = raw_batch(sandbox, {"cmd": cmd, "halt": "0"})
    assert list(both["result"]) == ["a", "c"]


def test_each_command_is_checked_for_its_own_scope_and_auth_type() -> None:
    with start_sandbox(SandboxConfig(webhook_scopes="crm")) as sandbox:
        response = httpx2.post(
            f"{sandbox.webhook_url}batch", json={"cmd": {"lines": LINES, "reg": f"{REGISTER}?USER_ID=1"}}
        )
        assert response.status_code == 200
        errors = response.json()["result"]["result_error"]
        assert errors["lines"]["error"] == errors["reg"]["error"] == "insufficient_scope"


def test_a_batch_is_one_unit_of_the_leaky_bucket() -> None:
    with start_sandbox(SandboxConfig(rate_limit=0.001, rate_burst=2)) as sandbox:
        for _ in range(2):
            raw_batch(sandbox, {"cmd": {f"c{i}": LINES for i in range(50)}})
        refused = httpx2.post(f"{sandbox.base_url}/rest/batch", json={"auth": sandbox.access_token, "cmd": {}})
        assert refused.status_code == 503 and refused.json()["error"] == "QUERY_LIMIT_EXCEEDED"
        assert stats(sandbox)["batched"] == {LINES.lower(): 100}


def test_a_fault_for_a_method_fails_that_command_inside_the_batch(sandbox: RunningSandbox) -> None:
    body = json.dumps({"error": "", "error_description": "Injected"})
    spec = {"method": FINISH, "status": 500, "body": body, "content_type": "application/json"}
    assert httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=spec).status_code == 200
    cmd = {
        "reg": f"{REGISTER}?USER_ID=2&PHONE_NUMBER=123&TYPE=2",
        "fin": f"{FINISH}?USER_ID=2&CALL_ID=$result[reg][CALL_ID]",
    }
    answer = raw_batch(sandbox, {"cmd": cmd})
    assert answer["result_error"] == {"fin": {"error": "", "error_description": "Injected"}}
    assert len(sandbox.portal.calls) == 1 and not sandbox.portal.statistics  # finish did not run


# --- the client's call_batch ---


def test_php_query_round_trips_through_the_portals_decoder() -> None:
    params = {
        "CALL_ID": Ref("reg", "CALL_ID"),
        "FLAG": True,
        "OFF": False,
        "SKIPPED": None,
        "EMPTY": [],
        "COST": 1.5,
        "MESSAGES": [{"SIDE": "User", "MESSAGE": "a&b=c+d %20 ü?#[x]"}, {"SIDE": "Client", "MESSAGE": ""}],
    }
    decoded = php_params(parse_qsl(php_query(params), keep_blank_values=True))
    assert decoded == {
        "CALL_ID": "$result[reg][CALL_ID]",
        "FLAG": "1",
        "OFF": "0",
        "COST": "1.5",
        "MESSAGES": [{"SIDE": "User", "MESSAGE": "a&b=c+d %20 ü?#[x]"}, {"SIDE": "Client", "MESSAGE": ""}],
    }


def test_what_does_not_fit_in_a_batch() -> None:
    assert fits_in_batch({"CALL_ID": Ref("reg", "CALL_ID"), "MESSAGE": "it costs $5 [approx]"})
    assert not fits_in_batch({"MESSAGES": [{"MESSAGE": "the variable $result[0] is empty"}]})
    assert not fits_in_batch({"X": "$Total[a]"})  # the portal matches the names case-insensitively
    assert fits_in_batch({"ROWS": list(range(MAX_QUERY_VARS))})
    assert not fits_in_batch({"ROWS": list(range(MAX_QUERY_VARS + 1))})


def test_pack_keeps_groups_whole_and_in_order() -> None:
    one = [Command("a", LINES)]
    three = [Command(f"b{i}", LINES) for i in range(3)]
    assert [[c.key for c in batch] for batch in pack([one, three, one], size=4)] == [["a", "b0", "b1", "b2"], ["a"]]
    with pytest.raises(ValueError):
        pack([three], size=2)


async def test_linked_commands_in_one_request(sandbox: RunningSandbox, tmp_path: Path) -> None:
    client = await client_for(sandbox, tmp_path)
    messages = [{"SIDE": "Client", "START_TIME": 0, "STOP_TIME": 2, "MESSAGE": "Hello & welcome"}]
    results = await call_batch(
        client,
        [
            register("reg", EXTERNAL_CALL_ID="pbx-1"),
            Command("fin", FINISH, {"CALL_ID": Ref("reg", "CALL_ID"), "USER_ID": OPERATOR, "DURATION": 30}),
            Command("tr", TRANSCRIPT, {"CALL_ID": Ref("reg", "CALL_ID"), "MESSAGES": messages}),
        ],
        halt=True,
    )
    call_id = results[0].unwrap().result["CALL_ID"]
    assert results[1].unwrap().result["CALL_DURATION"] == 30
    assert results[2].unwrap().result == {"TRANSCRIPT_ID": 1}
    assert sandbox.portal.transcripts[1].call_id == call_id
    assert sandbox.portal.transcripts[1].messages[0]["MESSAGE"] == "Hello & welcome"
    assert stats(sandbox)["requests"] == {"batch": 1}
    await client.aclose()


async def test_per_command_errors_are_errors_and_halt_leaves_the_rest_not_run(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    client = await client_for(sandbox, tmp_path)
    commands = [
        Command("lines", LINES, read_only=True),
        Command("bad", FINISH, {"CALL_ID": "unknown", "USER_ID": OPERATOR}),
        Command("after", LINES, read_only=True),
    ]
    mixed = await call_batch(client, commands)
    assert [outcome.ran for outcome in mixed] == [True, True, True]
    assert mixed[0].unwrap().result == [] and mixed[2].response is not None
    error = mixed[1].error
    assert error is not None
    assert (error.code, error.method, error.http_status) == ("ERROR_CORE", FINISH, 200)
    assert error.description.startswith("Call is not found")
    assert error.hint == ""  # method-specific hints are the tools' (ToolSpec.hints), applied per item
    halted = await call_batch(client, commands, halt=True)
    assert [outcome.ran for outcome in halted] == [True, True, False]
    with pytest.raises(BitrixError) as not_run:
        halted[2].unwrap()
    assert not_run.value.code == NOT_RUN and not_run.value.retryable
    await client.aclose()


async def test_call_batch_refuses_what_the_portal_would_not_run(sandbox: RunningSandbox, tmp_path: Path) -> None:
    client = await client_for(sandbox, tmp_path)
    with pytest.raises(ValueError, match="at most 50"):
        await call_batch(client, [Command(f"c{i}", LINES) for i in range(MAX_COMMANDS + 1)])
    with pytest.raises(ValueError, match="unique"):
        await call_batch(client, [Command("c", LINES), Command("c", LINES)])
    assert await call_batch(client, []) == []
    assert stats(sandbox)["requests"] == {}
    await client.aclose()


async def test_a_batch_is_paced_by_the_clients_limiter(sandbox: RunningSandbox, tmp_path: Path) -> None:
    client = await client_for(sandbox, tmp_path, rate=20, burst=1)
    started = time.monotonic()
    for _ in range(3):
        await call_batch(client, [Command(f"c{i}", LINES, read_only=True) for i in range(50)])
    # Three requests at 20/s with no burst: two waits of 50 ms, whatever the 150 commands.
    assert time.monotonic() - started >= 0.09
    assert stats(sandbox)["requests"] == {"batch": 3}
    await client.aclose()


async def test_reads_are_repeated_after_a_5xx_writes_are_not(sandbox: RunningSandbox, tmp_path: Path) -> None:
    client = await client_for(sandbox, tmp_path)
    client.retry = type(client.retry)(backoff_base=0.01)
    spec = {"method": "batch", "status": 502, "body": "<title>502 Bad Gateway</title>"}
    httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=spec)
    reads = await call_batch(client, [Command("lines", LINES, read_only=True)])
    assert reads[0].unwrap().result == []
    assert stats(sandbox)["requests"] == {"batch": 2}
    # A write batch that ran but whose answer was lost: not repeated, and reported as possibly done.
    httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json={**spec, "process": True})
    with pytest.raises(BitrixError) as lost:
        await call_batch(client, [register("reg")])
    assert outcome_unknown(lost.value)
    assert stats(sandbox)["requests"] == {"batch": 3}
    assert len(sandbox.portal.calls) == 1  # it did run
    await client.aclose()


async def test_webhook_batch_and_app_only_methods_inside_it(sandbox: RunningSandbox) -> None:
    client = BitrixClient(WebhookAuth(sandbox.webhook_url), rate=1000, burst=10000)
    results = await call_batch(client, [Command("lines", LINES, read_only=True), register("reg")])
    assert results[0].error is not None and results[0].error.code == "WRONG_AUTH_TYPE"
    assert results[1].error is not None and results[1].error.code == "WRONG_AUTH_TYPE"
    assert "application (OAuth) token" in results[1].error.hint
    await client.aclose()


def test_sandbox_command_seeds_the_call_statistics() -> None:
    port = free_port()
    process = subprocess.Popen(
        [SCRIPT, "sandbox", "--port", str(port), "--seed-calls", "12000"],
        env=user_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        token = next(line.split(": ", 1)[1].strip() for line in process.stderr if "access_token:" in line)
        base = f"http://127.0.0.1:{port}"
        cmd = {f"p{page}": f"voximplant.statistic.get?start={page * 50}" for page in (0, 239, 240)}
        answer = httpx2.post(f"{base}/rest/batch", json={"auth": token, "cmd": cmd}, timeout=30).json()["result"]
        assert answer["result_total"] == {"p0": 12000, "p239": 12000, "p240": 12000}
        assert answer["result_next"] == {"p0": 50}, "the last page has no next"
        assert len(answer["result"]["p239"]) == 50 and answer["result"]["p240"] == []
        assert httpx2.get(f"{base}/_sandbox/stats").json()["requests"] == {"batch": 1}
    finally:
        process.terminate()
        process.wait(10)
