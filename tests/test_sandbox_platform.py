"""The sandbox's method registry, scopes and REST 3.0 routes, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest

from b24_telephony_mcp.sandbox import Caller, RunningSandbox, SandboxConfig, SandboxPortal, start_sandbox
from b24_telephony_mcp.sandbox.calls import Params
from b24_telephony_mcp.sandbox.errors import V3_VALIDATION, SandboxRestError
from b24_telephony_mcp.sandbox.methods import METHODS
from b24_telephony_mcp.sandbox.state import Method, PortalState
from b24_telephony_mcp.tools import ALL_TOOLS

ECHO = "sandbox.test.v3Echo"
NOT_FOUND_V2 = {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}
NOT_FOUND_V3 = {"error": {"code": "ERROR_METHOD_NOT_FOUND", "message": "Method not found!"}}
INVALID_JSON = "BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION"


def v3_echo(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    """A throwaway REST 3.0 method: echoes its params, or fails validation when asked to."""
    if "fail" in params:
        raise SandboxRestError(
            V3_VALIDATION, "Error validating request object", 400, validation=[{"field": "id", "message": "missing"}]
        )
    return {"item": {"params": params, "auth_type": caller.auth_type}}


@pytest.fixture
def v3_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, ECHO.lower(), Method(v3_echo, scope="call", api=3))


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def portal() -> Iterator[RunningSandbox]:
    with start_sandbox(SandboxConfig(rate_burst=100_000)) as running:
        yield running


# --- registry ---


def test_every_tool_method_has_a_sandbox_handler() -> None:
    missing = sorted({spec.method for spec in ALL_TOOLS if spec.method.lower() not in METHODS})
    assert missing == []


def test_every_registered_method_is_reachable(portal: RunningSandbox, http: httpx2.Client) -> None:
    assert METHODS, "empty registry"
    for name, method in METHODS.items():
        prefix = "/rest/" if method.api == 2 else "/rest/api/"
        response = http.post(
            f"{portal.base_url}{prefix}{name}", json={}, headers={"Authorization": f"Bearer {portal.access_token}"}
        )
        # Empty params may fail the method's own validation (voximplant.sip.update: a 404 ERROR_NOT_FOUND), but
        # never the lookup, auth or scope.
        assert response.status_code in (200, 400, 404), (name, response.text)
        assert "ERROR_METHOD_NOT_FOUND" not in response.text, name


def test_state_is_one_lazily_created_instance_per_class_and_portal() -> None:
    @dataclass
    class Tables:
        rows: dict[int, str] = field(default_factory=lambda: {1: "seeded"})

    first, second = SandboxPortal(), SandboxPortal()
    tables = first.state(Tables)
    assert tables.rows == {1: "seeded"}
    tables.rows[2] = "added"
    assert first.state(Tables) is tables
    assert second.state(Tables).rows == {1: "seeded"}


# --- scopes ---


def test_a_method_outside_the_granted_scopes_is_insufficient_scope(http: httpx2.Client) -> None:
    config = SandboxConfig(scopes="call,crm,user", webhook_scopes="crm")
    with start_sandbox(config) as sandbox:
        app = http.post(
            f"{sandbox.base_url}/rest/telephony.externalLine.get",
            headers={"Authorization": f"Bearer {sandbox.access_token}"},
        )
        assert app.status_code == 401
        assert app.json() == {
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the access token",
        }
        hook = http.post(f"{sandbox.webhook_url}telephony.externalCall.show", json={"CALL_ID": "x"})
        assert hook.status_code == 401
        assert hook.json() == {
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the webhook token",
        }
        refreshed = http.post(
            sandbox.token_url,
            data={
                "grant_type": "refresh_token",
                "client_id": config.client_id,
                "client_secret": config.client_secret,
                "refresh_token": sandbox.refresh_token,
            },
        )
        assert refreshed.json()["scope"] == "call,crm,user"


@pytest.mark.usefixtures("v3_method")
def test_v3_insufficient_scope_is_403_in_the_v3_envelope(http: httpx2.Client) -> None:
    with start_sandbox(SandboxConfig(scopes="telephony")) as sandbox:
        response = http.post(f"{sandbox.base_url}/rest/api/{ECHO}", json={"auth": sandbox.access_token})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "BITRIX_REST_V3_EXCEPTION_INSUFFICIENTSCOPEEXCEPTION"


# --- REST 3.0 ---


@pytest.mark.usefixtures("v3_method")
def test_v3_method_reads_only_the_json_body_and_answers_the_usual_envelope(
    portal: RunningSandbox, http: httpx2.Client
) -> None:
    url = f"{portal.base_url}/rest/api/{ECHO}"
    response = http.post(f"{url}?from_query=1", json={"auth": portal.access_token, "id": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == {"item": {"params": {"id": 7}, "auth_type": "oauth"}}
    assert {"start", "finish", "duration", "operating_reset_at"} <= set(body["time"])

    bearer = http.get(url, headers={"Authorization": f"Bearer {portal.access_token}"})  # no params: GET is fine
    assert bearer.json()["result"]["item"]["params"] == {}
    hook = http.post(f"{portal.base_url}/rest/api/1/{portal.config.webhook_code}/{ECHO}", json={"id": 1})
    assert hook.json()["result"]["item"] == {"params": {"id": 1}, "auth_type": "webhook"}


@pytest.mark.usefixtures("v3_method")
def test_v3_errors_use_the_v3_envelope(portal: RunningSandbox, http: httpx2.Client) -> None:
    url = f"{portal.base_url}/rest/api/{ECHO}"
    failed = http.post(url, json={"auth": portal.access_token, "fail": True})
    assert failed.status_code == 400
    assert failed.json() == {
        "error": {
            "code": V3_VALIDATION,
            "message": "Error validating request object",
            "validation": [{"field": "id", "message": "missing"}],
        }
    }
    # Token errors keep their codes (clients refresh on expired_token), in the v3 shape.
    bad_token = http.post(url, json={"auth": "not-a-token"})
    assert bad_token.status_code == 401
    assert bad_token.json() == {"error": {"code": "invalid_token", "message": "Unable to get application by token"}}
    # A v3-only method at the REST 2 address is not found there.
    v2 = http.post(f"{portal.base_url}/rest/{ECHO}", headers={"Authorization": f"Bearer {portal.access_token}"})
    assert (v2.status_code, v2.json()) == (404, NOT_FOUND_V2)


def test_unknown_method_at_rest_api_is_a_v3_404(portal: RunningSandbox, http: httpx2.Client) -> None:
    app = http.post(f"{portal.base_url}/rest/api/call.followup.nope", json={"auth": portal.access_token})
    assert (app.status_code, app.json()) == (404, NOT_FOUND_V3)
    hook = http.post(f"{portal.base_url}/rest/api/1/{portal.config.webhook_code}/call.followup.nope", json={})
    assert (hook.status_code, hook.json()) == (404, NOT_FOUND_V3)


def test_a_v2_method_at_rest_api_is_404(portal: RunningSandbox, http: httpx2.Client) -> None:
    response = http.post(f"{portal.base_url}/rest/api/telephony.externalLine.get", json={"auth": portal.access_token})
    assert (response.status_code, response.json()) == (404, NOT_FOUND_V3)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/x-www-form-urlencoded", "id=1"), ("application/json", "{not json"), ("application/json", "[1]")],
)
def test_a_non_json_body_at_rest_api_is_invalid_json(
    portal: RunningSandbox, http: httpx2.Client, content_type: str, body: str
) -> None:
    response = http.post(
        f"{portal.base_url}/rest/api/{ECHO}",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {portal.access_token}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == INVALID_JSON
    assert set(response.json()["error"]) == {"code", "message"}


def test_v3_requests_count_in_stats_and_the_leaky_bucket(http: httpx2.Client) -> None:
    with start_sandbox(SandboxConfig(rate_limit=0.001, rate_burst=1)) as sandbox:
        url = f"{sandbox.base_url}/rest/api/{ECHO}"
        assert http.post(url, json={"auth": sandbox.access_token}).status_code == 404  # admitted (not registered)
        throttled = http.post(url, json={"auth": sandbox.access_token})
        assert throttled.status_code == 503
        assert throttled.json() == {"error": {"code": "QUERY_LIMIT_EXCEEDED", "message": "Too many requests"}}
        assert http.get(f"{sandbox.base_url}/_sandbox/stats").json()["requests"] == {ECHO.lower(): 2}
