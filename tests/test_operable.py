"""Operating the HTTP server: /healthz and /readyz for probes, /metrics behind the bearer token, JSON logs.

The real server over streamable HTTP, on a real Redis (with a password, which must never show), against the
sandbox portal.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from b24_telephony_mcp.bitrix.redis_state import RedisState
from b24_telephony_mcp.common.redact import JsonFormatter, register_secret
from b24_telephony_mcp.sandbox import RunningSandbox
from redis_server import RedisServer
from support import app_env, error_of, http_server, http_session, ok

pytestmark = pytest.mark.anyio

LIST = "list_external_lines"
GET_METHOD = "telephony.externalLine.get"
REDIS_PASSWORD = "redis-passw0rd-" + secrets.token_hex(8)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


async def list_nothing(client: Client) -> None:
    assert ok(await client.call_tool(LIST, {})) == []


async def test_probes_metrics_and_json_logs(sandbox: RunningSandbox, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    with RedisServer(tmp_path / "redis", password=REDIS_PASSWORD) as redis:
        env = app_env(
            sandbox,
            tmp_path / "tokens.json",
            B24_MCP_AUTH_TOKEN=token,
            B24_REDIS_URL=redis.url,
            B24_LOG_FORMAT="json",
        )
        # A burst of 2 makes the bucket hold back the third of three calls sent at once.
        env.update(B24_RATE_LIMIT="5", B24_RATE_BURST="2")
        with http_server(env) as server:
            async with httpx2.AsyncClient(base_url=server.origin, timeout=10) as http:
                # Probes answer anyone (no token, any Host), say nothing else, and only to GET/HEAD.
                for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
                    response = await http.get(path, headers={"Host": "lb.internal"})
                    assert response.status_code == 200
                    assert response.json() == {"status": status}
                    assert (await http.head(path)).status_code == 200
                    assert (await http.post(path)).status_code == 405

                assert (await http.get("/metrics")).status_code == 401
                assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
                assert (await http.get("/metrics", headers={"Host": "evil.example"})).status_code == 421
                bearer = {"Authorization": f"Bearer {token}"}
                before = samples((await http.get("/metrics", headers=bearer)).text)

                async with http_session(server.url, token) as client:
                    await list_nothing(client)  # the first call pays for warming up; then 3 at once
                    await anyio.sleep(2 / 5)  # the bucket drains empty again
                    async with anyio.create_task_group() as group:  # the third waits for its slot
                        for _ in range(3):
                            group.start_soon(list_nothing, client)
                    error = error_of(await client.call_tool("add_external_line", {"NUMBER": "1", "NAMEE": "x"}))
                    assert error["code"] == "INVALID_ARGUMENTS"
                    # The portal's bucket refuses once: the call is repeated and succeeds.
                    fault = {"method": GET_METHOD, "status": 503, "content_type": "application/json", "count": 1}
                    fault["body"] = json.dumps({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many"})
                    assert httpx2.post(f"{sandbox.base_url}/_sandbox/faults", json=fault).status_code == 200
                    assert ok(await client.call_tool(LIST, {})) == []
                    # The access token expires: one refresh, and the call goes through.
                    assert httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens").status_code == 200
                    assert ok(await client.call_tool(LIST, {})) == []

                response = await http.get("/metrics", headers=bearer)
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                after = samples(response.text)

            state = RedisState(redis.url)
            try:
                rotated = await state.pair_store(sandbox.base_url, sandbox.config.client_id).load()
            finally:
                await state.aclose()
            assert rotated is not None and rotated.access_token != sandbox.access_token

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("b24mcp_tool_calls_total", tool=LIST) == 6
    assert moved("b24mcp_tool_calls_total", tool="add_external_line") == 1
    assert moved("b24mcp_tool_errors_total", tool="add_external_line", code="INVALID_ARGUMENTS") == 1
    assert moved("b24mcp_tool_errors_total", tool=LIST, code="INVALID_ARGUMENTS") == 0
    # 6 calls: 4 plain, one 503 then success, one expired_token then success.
    assert moved("b24mcp_rest_requests_total", method=GET_METHOD, status="200") == 6
    assert moved("b24mcp_rest_requests_total", method=GET_METHOD, status="503") == 1
    assert moved("b24mcp_rest_requests_total", method=GET_METHOD, status="401") == 1
    assert moved("b24mcp_rest_request_duration_seconds_count", method=GET_METHOD) == 8
    assert moved("b24mcp_query_limit_retries_total", method=GET_METHOD) == 1
    assert moved("b24mcp_token_refreshes_total", result="refreshed") == 1
    assert moved("b24mcp_limiter_waits_total") >= 1
    assert moved("b24mcp_limiter_wait_seconds_total") > 0
    assert "process_resident_memory_bytes" in response.text

    # JSON logs: every log line is one JSON object, and no credential appears anywhere on stderr.
    log_lines = [line for line in server.stderr_lines if not line.startswith("b24-telephony-mcp: ")]
    entries = [json.loads(line) for line in log_lines]
    assert entries, "B24_LOG_LEVEL=DEBUG logs something"
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["logger"] == "b24_telephony_mcp.bitrix.auth" for entry in entries), "the refresh is logged"
    secrets_known = (REDIS_PASSWORD, token, sandbox.config.client_secret, sandbox.access_token, sandbox.refresh_token)
    for secret in (*secrets_known, rotated.access_token, rotated.refresh_token):
        assert secret not in server.stderr


def test_json_log_lines_are_redacted_objects() -> None:
    secret = "json-log-secret-" + secrets.token_hex(8)
    register_secret(secret)
    record = logging.LogRecord("b24", logging.ERROR, __file__, 1, "token %s failed", (secret,), None)
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "ERROR"
    assert entry["message"] == "token *** failed"
    assert "ValueError: bad ***" in entry["exception"]
    assert secret not in line
