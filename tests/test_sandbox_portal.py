"""The sandbox portal over real HTTP: auth, OAuth rotation, telephony semantics, limits and test hooks."""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.sandbox.app import php_params

CALL_ID_RE = re.compile(r"^externalCall\.[0-9a-f]{32}\.\d+$")
JOHN_DOE = "+1 906 219 5047"
_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A client number no CRM entity has, unique per call so tests never dedupe into each other."""
    return f"+7 900 {next(_numbers):07d}"


class Rest:
    """A thin REST client for one sandbox and one credential (app token or webhook URL)."""

    def __init__(self, client: httpx2.Client, base: str, token: str | None = None) -> None:
        self.client, self.base, self.token = client, base, token

    def call(self, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self.client.post(f"{self.base}{method}", json=params or {}, headers=headers)

    def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = self.call(method, params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body["time"]) >= {"start", "finish", "duration", "date_start", "operating_reset_at"}
        return body["result"]

    def error(self, method: str, params: dict[str, Any] | None = None, status: int = 400) -> dict[str, Any]:
        response = self.call(method, params)
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        assert set(body) == {"error", "error_description"}
        return body

    def register(self, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.ok("telephony.externalCall.register", {"USER_ID": 1, "TYPE": 2, **params})
        return result

    def finished_call(self, **params: Any) -> str:
        call_id: str = self.register(PHONE_NUMBER=fresh_phone(), **params)["CALL_ID"]
        self.ok("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 1, "DURATION": 10})
        return call_id


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    # A big bucket: this module fires far more than the default 50 requests at one portal.
    with start_sandbox(SandboxConfig(rate_burst=100_000)) as running:
        yield running


@pytest.fixture(scope="module")
def source_mode() -> Iterator[RunningSandbox]:
    """The server source's behaviour where it differs from the docs (plus the docs' ERROR_CORE code)."""
    config = SandboxConfig(
        rate_burst=100_000, webhook_app_only=False, unknown_line_autocreate=False, error_core_code="ERROR_CORE"
    )
    with start_sandbox(config) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=5) as client:
        yield client


@pytest.fixture
def app(sandbox: RunningSandbox, http: httpx2.Client) -> Rest:
    return Rest(http, f"{sandbox.base_url}/rest/", sandbox.access_token)


@pytest.fixture
def hook(sandbox: RunningSandbox, http: httpx2.Client) -> Rest:
    return Rest(http, sandbox.webhook_url)


def refresh(http: httpx2.Client, sandbox: RunningSandbox, token: str, **overrides: str) -> httpx2.Response:
    params = {
        "grant_type": "refresh_token",
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
        "refresh_token": token,
        **overrides,
    }
    return http.get(sandbox.token_url, params=params)


# --- auth ---


@pytest.mark.parametrize("where", ["bearer", "auth", "access_token"])
def test_token_is_read_from_header_or_params(sandbox: RunningSandbox, http: httpx2.Client, where: str) -> None:
    url = f"{sandbox.base_url}/rest/telephony.externalCall.searchCrmEntities.json"
    params = {"PHONE_NUMBER": JOHN_DOE}
    headers = {}
    if where == "bearer":
        headers["Authorization"] = f"Bearer {sandbox.access_token}"
    else:
        params[where] = sandbox.access_token
    response = http.post(url, data=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["result"][0]["NAME"] == "John Doe"


@pytest.mark.parametrize(
    ("token", "code", "description"),
    [
        (None, "NO_AUTH_FOUND", "Wrong authorization data"),
        ("not-a-token", "invalid_token", "Unable to get application by token"),
    ],
)
def test_bad_app_token_is_401(
    sandbox: RunningSandbox, http: httpx2.Client, token: str | None, code: str, description: str
) -> None:
    body = Rest(http, f"{sandbox.base_url}/rest/", token).error("telephony.externalLine.get", status=401)
    assert body == {"error": code, "error_description": description}


@pytest.mark.parametrize("path", ["1/wrong-code/", "2/{code}/"])
def test_bad_webhook_credentials_are_401(sandbox: RunningSandbox, http: httpx2.Client, path: str) -> None:
    base = f"{sandbox.base_url}/rest/{path.format(code=sandbox.config.webhook_code)}"
    body = Rest(http, base).error("telephony.externalCall.show", {"CALL_ID": "x"}, status=401)
    assert body == {"error": "INVALID_CREDENTIALS", "error_description": "Invalid request credentials"}


def test_unknown_method_is_404_and_method_names_are_case_insensitive(app: Rest, hook: Rest) -> None:
    expected = {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}
    assert app.error("telephony.externalCall.nope", status=404) == expected
    assert hook.error("crm.lead.add", status=404) == expected
    assert isinstance(app.ok("TELEPHONY.EXTERNALLINE.GET"), list)


def test_refresh_rotates_the_pair_and_invalidates_the_old_one(http: httpx2.Client) -> None:
    with start_sandbox() as sandbox:
        response = refresh(http, sandbox, sandbox.refresh_token)
        assert response.status_code == 200, response.text
        tokens = response.json()
        assert tokens["scope"] == "telephony,call,crm,user"
        assert tokens["client_endpoint"] == f"{sandbox.base_url}/rest/"
        assert tokens["status"] == "L" and tokens["user_id"] == 1 and tokens["member_id"]
        assert tokens["expires"] == pytest.approx(time.time() + 3600, abs=5)
        assert {tokens["access_token"], tokens["refresh_token"]}.isdisjoint(
            {sandbox.access_token, sandbox.refresh_token}
        )

        base = f"{sandbox.base_url}/rest/"
        assert Rest(http, base, tokens["access_token"]).ok("telephony.externalLine.get") == []
        assert Rest(http, base, sandbox.access_token).error("telephony.externalLine.get", status=401)["error"] == (
            "invalid_token"
        )
        reused = refresh(http, sandbox, sandbox.refresh_token)
        assert reused.status_code == 400
        assert reused.json() == {"error": "invalid_grant", "error_description": "Invalid refresh token"}
        assert http.get(f"{sandbox.base_url}/_sandbox/stats").json()["refreshes"] == 1


def test_expired_token_is_401_until_refreshed(http: httpx2.Client) -> None:
    with start_sandbox() as sandbox:
        api = Rest(http, f"{sandbox.base_url}/rest/", sandbox.access_token)
        sandbox.portal.clock = lambda: time.time() + 3601  # past the 1-hour TTL
        expired = {"error": "expired_token", "error_description": "The access token provided has expired"}
        assert api.error("telephony.externalLine.get", status=401) == expired
        sandbox.portal.clock = time.time
        assert api.ok("telephony.externalLine.get") == []

        assert http.post(f"{sandbox.base_url}/_sandbox/expire-tokens").status_code == 200
        assert api.error("telephony.externalLine.get", status=401) == expired
        tokens = refresh(http, sandbox, sandbox.refresh_token).json()
        assert Rest(http, api.base, tokens["access_token"]).ok("telephony.externalLine.get") == []


@pytest.mark.parametrize(
    ("overrides", "status", "code"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "never-issued"}, 400, "invalid_grant"),
        ({"refresh_token": "never-issued"}, 400, "invalid_grant"),
    ],
)
def test_token_endpoint_errors(
    sandbox: RunningSandbox, http: httpx2.Client, overrides: dict[str, str], status: int, code: str
) -> None:
    response = refresh(http, sandbox, sandbox.refresh_token, **overrides)
    assert response.status_code == status
    assert response.json()["error"] == code


# --- external lines ---


def test_external_line_lifecycle(app: Rest) -> None:
    line_id = app.ok("telephony.externalLine.add", {"NUMBER": " 5551001 ", "NAME": "Support", "CRM_AUTO_CREATE": "no"})
    assert isinstance(line_id["ID"], int)
    assert {"NUMBER": "5551001", "NAME": "Support", "CRM_AUTO_CREATE": "N"} in app.ok("telephony.externalLine.get")
    assert app.error("telephony.externalLine.add", {"NUMBER": "5551001"}) == {
        "error": "",
        "error_description": "Line already exists",
    }

    assert app.ok("telephony.externalLine.update", {"NUMBER": "5551001", "NAME": "Sales", "CRM_AUTO_CREATE": "Y"}) == (
        line_id
    )
    assert {"NUMBER": "5551001", "NAME": "Sales", "CRM_AUTO_CREATE": "Y"} in app.ok("telephony.externalLine.get")

    assert app.ok("telephony.externalLine.delete", {"NUMBER": "5551001"}) == []
    again = app.error("telephony.externalLine.delete", {"NUMBER": "5551001"})
    assert again["error_description"] == "Could not find line with number 5551001"


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("telephony.externalLine.add", {"NUMBER": "   "}, "NUMBER should not be empty"),
        ("telephony.externalLine.update", {}, "There are no fields to update"),  # before the NUMBER check
        ("telephony.externalLine.update", {"NAME": "x"}, "NUMBER should not be empty"),
        ("telephony.externalLine.update", {"NUMBER": "404404", "NAME": "x"}, "Could not find line with number 404404"),
    ],
)
def test_external_line_errors(app: Rest, method: str, params: dict[str, Any], message: str) -> None:
    assert app.error(method, params) == {"error": "", "error_description": message}


# --- register ---


def test_register_binds_the_crm_contact_found_by_phone(sandbox: RunningSandbox, app: Rest) -> None:
    result = app.register(PHONE_NUMBER="+1 (906) 219-5047", EXTERNAL_CALL_ID=f"pbx-{fresh_phone()}")
    assert CALL_ID_RE.match(result["CALL_ID"])
    assert result == {
        "CALL_ID": result["CALL_ID"],
        "CRM_CREATED_LEAD": None,
        "CRM_CREATED_ENTITIES": [],
        "CRM_ENTITY_TYPE": "CONTACT",
        "CRM_ENTITY_ID": 651,
    }
    call = sandbox.portal.calls[result["CALL_ID"]]
    assert call.caller_id == "19062195047" and 1 in call.shown_to


def test_register_crm_create_makes_a_lead_only_when_asked(sandbox: RunningSandbox, app: Rest) -> None:
    plain = app.register(PHONE_NUMBER=fresh_phone())
    assert (plain["CRM_ENTITY_TYPE"], plain["CRM_ENTITY_ID"], plain["CRM_CREATED_LEAD"]) == ("", None, None)

    created = app.register(PHONE_NUMBER=fresh_phone(), CRM_CREATE=1, USER_PHONE_INNER="101", USER_ID=None)
    lead_id = created["CRM_CREATED_LEAD"]
    assert isinstance(lead_id, int)
    assert created["CRM_CREATED_ENTITIES"] == [{"ENTITY_TYPE": "LEAD", "ENTITY_ID": lead_id}]
    assert (created["CRM_ENTITY_TYPE"], created["CRM_ENTITY_ID"]) == ("LEAD", lead_id)
    assert sandbox.portal.crm[("LEAD", lead_id)].assigned_by_id == 2  # the USER_PHONE_INNER "101" user


def test_search_crm_entities_orders_contact_lead_company(app: Rest) -> None:
    found = app.ok("telephony.externalCall.searchCrmEntities", {"PHONE_NUMBER": "19062195047"})
    assert [(e["CRM_ENTITY_TYPE"], e["CRM_ENTITY_ID"]) for e in found] == [
        ("CONTACT", 651),
        ("LEAD", 201),
        ("COMPANY", 643),
    ]
    assert set(found[0]["ASSIGNED_BY"]) == {
        "ID",
        "TIMEMAN_STATUS",
        "USER_PHONE_INNER",
        "WORK_PHONE",
        "PERSONAL_PHONE",
        "PERSONAL_MOBILE",
    }
    assert app.ok("telephony.externalCall.searchCrmEntities", {"PHONE_NUMBER": fresh_phone()}) == []
    assert app.error("telephony.externalCall.searchCrmEntities")["error_description"] == "PHONE_NUMBER is empty"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"TYPE": 99}, "USER_ID or USER_PHONE_INNER should be set"),  # user is checked before TYPE
        ({"USER_PHONE_INNER": "102", "TYPE": 2}, "USER_ID or USER_PHONE_INNER should be set"),  # inactive
        ({"USER_ID": 1, "TYPE": 6}, "Unknown TYPE"),
        ({"USER_ID": 1, "TYPE": "2x"}, "Unknown TYPE"),
        *(
            ({"USER_ID": 1, "TYPE": 2, "CALL_START_DATE": garbage}, "CALL_START_DATE should be in the ISO-8601 format")
            for garbage in ("not a date", "2026-13-01", "25:61", "next blursday")
        ),
        *(
            ({"USER_ID": 1, "TYPE": 2, "PHONE_NUMBER": number}, "Unsupported phone number format")
            for number in ("call me", "tel:", "+-() .")
        ),
        ({"USER_ID": 3, "TYPE": 2}, "User is not found or is not active"),
        ({"USER_ID": 999, "TYPE": 2}, "User is not found or is not active"),
    ],
)
def test_register_validation(app: Rest, params: dict[str, Any], message: str) -> None:
    body = app.error("telephony.externalCall.register", {"PHONE_NUMBER": fresh_phone(), **params})
    assert body == {"error": "", "error_description": message}


@pytest.mark.parametrize(
    ("number", "stored"),
    [
        ("+1.906.219.5047", "19062195047"),
        ("tel:+19062195047", "19062195047"),
        ("+1 (906) 219-5047 ext", "19062195047"),
        ("8-800-555-35-35", "88005553535"),
    ],
)
def test_register_keeps_the_digits_of_any_number_like_the_source(
    sandbox: RunningSandbox, app: Rest, number: str, stored: str
) -> None:
    # The source strips every non-digit (CVoxImplantPhone::stripLetters) and refuses only an empty result.
    result = app.register(PHONE_NUMBER=number, EXTERNAL_CALL_ID=f"digits-{fresh_phone()}")
    assert sandbox.portal.calls[result["CALL_ID"]].caller_id == stored
    if stored == "19062195047":
        assert (result["CRM_ENTITY_TYPE"], result["CRM_ENTITY_ID"]) == ("CONTACT", 651)


NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-03-07T10:20:30+03:00", datetime(2026, 3, 7, 7, 20, 30, tzinfo=UTC)),  # ISO 8601, as documented
        ("2026-03-07T10:20:30Z", datetime(2026, 3, 7, 10, 20, 30, tzinfo=UTC)),
        ("2026-03-07 10:20", datetime(2026, 3, 7, 10, 20, tzinfo=UTC)),  # SQL style, in the portal's zone (UTC)
        ("2026-03-07", datetime(2026, 3, 7, tzinfo=UTC)),
        ("2026-02-30 10:20", datetime(2026, 3, 2, 10, 20, tzinfo=UTC)),  # PHP runs past the month's end
        ("07.03.2026 10:20", datetime(2026, 3, 7, 10, 20, tzinfo=UTC)),
        ("03/07/2026", datetime(2026, 3, 7, tzinfo=UTC)),  # US order, as PHP reads a slash date
        ("Sat, 07 Mar 2026 10:20:30 +0300", datetime(2026, 3, 7, 7, 20, 30, tzinfo=UTC)),
        ("@1772878830", datetime(2026, 3, 7, 10, 20, 30, tzinfo=UTC)),
        ("yesterday noon", (NOW - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)),
        ("today 10:20 +03:00", NOW.replace(hour=7, minute=20, second=0, microsecond=0)),
    ],
)
def test_register_reads_call_start_date_like_strtotime(
    sandbox: RunningSandbox, app: Rest, written: str, expected: datetime
) -> None:
    # The source only checks strtotime() (its message says ISO-8601, its check accepts far more).
    result = app.register(PHONE_NUMBER=fresh_phone(), CALL_START_DATE=written)
    assert sandbox.portal.calls[result["CALL_ID"]].date_create == expected


def test_relative_call_start_dates_count_from_now(sandbox: RunningSandbox, app: Rest) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    call_id = app.register(PHONE_NUMBER=fresh_phone(), CALL_START_DATE="1 hour ago")["CALL_ID"]
    after = datetime.now(UTC)
    assert before - timedelta(hours=1) <= sandbox.portal.calls[call_id].date_create <= after - timedelta(hours=1)


def test_error_core_code_follows_config(source_mode: RunningSandbox, http: httpx2.Client) -> None:
    api = Rest(http, f"{source_mode.base_url}/rest/", source_mode.access_token)
    body = api.error("telephony.externalCall.register", {"USER_ID": 1, "TYPE": 9, "PHONE_NUMBER": "123"})
    assert body == {"error": "ERROR_CORE", "error_description": "Unknown TYPE"}


# --- the 30-minute re-registration rule ---


def test_reregistration_within_30_minutes_returns_the_same_call(app: Rest) -> None:
    phone = fresh_phone()
    first = app.register(PHONE_NUMBER=phone, LINE_NUMBER="5552001")
    # CRM fields are not keys; a hit returns the stored call's CRM data, not the new params.
    again = app.register(PHONE_NUMBER=phone, LINE_NUMBER="5552001", CRM_ENTITY_TYPE="CONTACT", CRM_ENTITY_ID=651)
    assert (again["CALL_ID"], again["CRM_ENTITY_ID"]) == (first["CALL_ID"], None)
    # A different key makes a new call.
    for changed in ({"TYPE": 1}, {"EXTERNAL_CALL_ID": "pbx-2"}, {"LINE_NUMBER": "5552002"}, {"USER_ID": 2}):
        assert app.register(PHONE_NUMBER=phone, **{"LINE_NUMBER": "5552001", **changed})["CALL_ID"] != first["CALL_ID"]


def test_backdated_call_start_is_never_deduplicated(app: Rest) -> None:
    phone = fresh_phone()
    old = (datetime.now(UTC) - timedelta(minutes=31)).isoformat()
    first = app.register(PHONE_NUMBER=phone, CALL_START_DATE=old)
    assert app.register(PHONE_NUMBER=phone, CALL_START_DATE=old)["CALL_ID"] != first["CALL_ID"]

    recent = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    inside = app.register(PHONE_NUMBER=phone, CALL_START_DATE=recent, EXTERNAL_CALL_ID="recent")
    assert app.register(PHONE_NUMBER=phone, EXTERNAL_CALL_ID="recent")["CALL_ID"] == inside["CALL_ID"]


def test_window_expires_with_the_clock(sandbox: RunningSandbox, app: Rest) -> None:
    phone = fresh_phone()
    first = app.register(PHONE_NUMBER=phone)
    sandbox.portal.clock = lambda: time.time() + 31 * 60
    try:
        assert app.register(PHONE_NUMBER=phone)["CALL_ID"] != first["CALL_ID"]
    finally:
        sandbox.portal.clock = time.time


def test_finished_call_is_not_deduplicated_and_cannot_finish_twice(sandbox: RunningSandbox, app: Rest) -> None:
    phone = fresh_phone()
    call_id = app.register(PHONE_NUMBER=phone)["CALL_ID"]
    assert app.register(PHONE_NUMBER=phone)["CALL_ID"] == call_id
    app.ok("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 1})
    assert call_id not in sandbox.portal.calls and call_id in sandbox.portal.statistics

    assert app.register(PHONE_NUMBER=phone)["CALL_ID"] != call_id
    body = app.error("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 1})
    # Source wording, including the missing ")" a live portal sends.
    assert body == {"error": "", "error_description": "Call is not found (call should be registered prior to finishing"}


def test_unknown_line_is_autocreated_by_default(app: Rest) -> None:
    call_id = app.register(PHONE_NUMBER=fresh_phone(), LINE_NUMBER="  5553001 ")["CALL_ID"]
    assert any(line["NUMBER"] == "5553001" for line in app.ok("telephony.externalLine.get"))
    assert app.error("telephony.externalLine.add", {"NUMBER": "5553001"})["error_description"] == "Line already exists"
    finished = app.ok("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 1})
    assert finished["PORTAL_NUMBER"] == "5553001"


def test_unknown_line_is_an_error_when_autocreate_is_off(source_mode: RunningSandbox, http: httpx2.Client) -> None:
    api = Rest(http, f"{source_mode.base_url}/rest/", source_mode.access_token)
    body = api.error(
        "telephony.externalCall.register", {"USER_ID": 1, "TYPE": 2, "PHONE_NUMBER": "123", "LINE_NUMBER": "5553002"}
    )
    assert body["error_description"] == "Could not find line with number 5553002"


# --- finish, show, hide ---


def test_finish_returns_the_statistics_record(app: Rest) -> None:
    call_id = app.register(PHONE_NUMBER=JOHN_DOE, TYPE="3", EXTERNAL_CALL_ID="pbx-finish")["CALL_ID"]
    result = app.ok(
        "telephony.externalCall.finish",
        {"CALL_ID": call_id, "USER_PHONE_INNER": "101", "COST": "1.5", "COST_CURRENCY": "EUR", "VOTE": "5"},
    )
    assert result == {
        "CALL_ID": call_id,
        "EXTERNAL_CALL_ID": "pbx-finish",
        "PORTAL_USER_ID": 2,
        "PHONE_NUMBER": "19062195047",
        "PORTAL_NUMBER": "REST_APP:1",
        "INCOMING": "3",
        "CALL_DURATION": 0,
        "CALL_START_DATE": {},
        "CALL_STATUS": 0,
        "CALL_VOTE": 5,
        "COST": 1.5,
        "COST_CURRENCY": "EUR",
        "CALL_FAILED_CODE": "304",  # the default for DURATION 0
        "CALL_FAILED_REASON": "",
        "REST_APP_ID": "1",
        "REST_APP_NAME": "Sandbox telephony app",
        "CRM_ACTIVITY_ID": result["CRM_ACTIVITY_ID"],
        "COMMENT": None,
        "CRM_ENTITY_TYPE": "CONTACT",
        "CRM_ENTITY_ID": 651,
        "ID": result["ID"],
    }
    assert isinstance(result["CRM_ACTIVITY_ID"], int) and isinstance(result["ID"], int)


def test_finish_validation_order(app: Rest) -> None:
    call_id = app.register(PHONE_NUMBER=fresh_phone())["CALL_ID"]
    assert (
        app.error("telephony.externalCall.finish")["error_description"] == "USER_ID or USER_PHONE_INNER should be set"
    )
    for bad_call_id in ({}, {"CALL_ID": 12345}):
        assert app.error("telephony.externalCall.finish", {"USER_ID": 1, **bad_call_id}) == {
            "error": "INVALID_ARGUMENT",
            "error_description": "CALL_ID must be a string",
        }
    inactive = app.error("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 3})
    assert inactive["error_description"] == "User is not found or is not active"


def test_show_and_hide_are_true_only_for_active_calls(sandbox: RunningSandbox, app: Rest, hook: Rest) -> None:
    call_id = app.register(PHONE_NUMBER=fresh_phone(), SHOW=0)["CALL_ID"]
    assert sandbox.portal.calls[call_id].shown_to == set()
    assert hook.ok("telephony.externalCall.show", {"CALL_ID": call_id, "USER_ID": [1, 2]}) is True
    assert sandbox.portal.calls[call_id].shown_to == {1, 2}
    assert app.ok("telephony.externalCall.hide", {"CALL_ID": call_id, "USER_ID": 2}) is True
    assert sandbox.portal.calls[call_id].shown_to == {1}

    app.ok("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 1})
    assert app.ok("telephony.externalCall.show", {"CALL_ID": call_id}) is False
    assert app.ok("telephony.externalCall.hide", {"CALL_ID": call_id}) is False


# --- attachRecord ---


def test_attach_record_needs_a_finished_call_and_a_mode(app: Rest) -> None:
    active = app.register(PHONE_NUMBER=fresh_phone())["CALL_ID"]
    not_finished = app.error("telephony.externalCall.attachRecord", {"CALL_ID": active, "RECORD_URL": "http://x/a.mp3"})
    assert (
        not_finished["error_description"]
        == "Call is not found in the statistic table. Looks like it is not finished yet."
    )
    no_mode = app.error("telephony.externalCall.attachRecord", {"CALL_ID": active})
    assert no_mode["error_description"] == (
        "Required parameters are not set. Request should contain or URL or FILENAME parameter"
    )


def test_attach_record_by_url_and_by_content(sandbox: RunningSandbox, app: Rest) -> None:
    call_id = app.finished_call()
    by_url = app.ok(
        "telephony.externalCall.attachRecord", {"CALL_ID": call_id, "RECORD_URL": "http://pbx.invalid/rec/42.mp3"}
    )
    stored = sandbox.portal.files[by_url["FILE_ID"]]
    assert (stored.name, stored.content, stored.source_url) == ("42.mp3", None, "http://pbx.invalid/rec/42.mp3")

    audio = b"RIFF....WAVEfmt "
    content = base64.b64encode(audio).decode()
    by_content = app.ok(
        "telephony.externalCall.attachRecord", {"CALL_ID": call_id, "FILENAME": "call.WAV", "FILE_CONTENT": content}
    )
    assert by_content["FILE_ID"] != by_url["FILE_ID"]  # a repeat replaces the record with a new file
    assert sandbox.portal.files[by_content["FILE_ID"]].content == audio
    assert sandbox.portal.statistics[call_id].call_record_id == by_content["FILE_ID"]


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("", "AAAA", "File name is empty"),
        ("call.ogg", "AAAA", "Wrong file extension. Only wav and mp3 are allowed"),
        ("call.mp3", "", "File content is empty."),
        ("call.mp3", "not base64!", "File content is not properly encoded. Base64 encoding is expected."),
    ],
)
def test_attach_record_content_errors(app: Rest, filename: str, content: str, message: str) -> None:
    params = {"CALL_ID": app.finished_call(), "FILENAME": filename, "FILE_CONTENT": content}
    assert app.error("telephony.externalCall.attachRecord", params) == {"error": "", "error_description": message}


def test_attach_record_upload_url_flow(sandbox: RunningSandbox, app: Rest, http: httpx2.Client) -> None:
    call_id = app.finished_call()
    # The upload URL comes back before any file-name check (disagreements.md #16).
    step = app.ok("telephony.externalCall.attachRecord", {"CALL_ID": call_id, "FILENAME": "whatever.txt"})
    assert step["fieldName"] == "file" and step["uploadUrl"].startswith(f"{sandbox.base_url}/rest/upload.json?")

    no_file = http.post(step["uploadUrl"], data={"x": "1"})
    assert no_file.json()["error_description"] == "Error: required parameter file is not found"
    wrong = http.post(step["uploadUrl"], files={"file": ("rec.txt", b"data", "text/plain")})
    assert wrong.json()["error_description"] == "Wrong file extension. Only wav and mp3 are allowed"

    uploaded = http.post(step["uploadUrl"], files={"file": ("rec.mp3", b"ID3 audio", "audio/mpeg")})
    assert uploaded.status_code == 200, uploaded.text
    assert sandbox.portal.files[uploaded.json()["result"]["FILE_ID"]].content == b"ID3 audio"


# --- attachTranscription ---


def test_attach_transcription_from_form_encoded_nested_params(
    sandbox: RunningSandbox, app: Rest, http: httpx2.Client
) -> None:
    call_id = app.finished_call()
    form = {
        "CALL_ID": call_id,
        "MESSAGES[0][SIDE]": "User",
        "MESSAGES[0][START_TIME]": "0",
        "MESSAGES[0][STOP_TIME]": "4",
        "MESSAGES[0][MESSAGE]": "Hello, how can I help?",
        "MESSAGES[1][SIDE]": "Client",
        "MESSAGES[1][START_TIME]": "5",
        "MESSAGES[1][STOP_TIME]": "9",
        "MESSAGES[1][MESSAGE]": "I'd like to order",
        "COST": "0.25",
        "COST_CURRENCY": "USD",
    }
    response = http.post(f"{app.base}telephony.call.attachTranscription?auth={sandbox.access_token}", data=form)
    assert response.status_code == 200, response.text
    transcript = sandbox.portal.transcripts[response.json()["result"]["TRANSCRIPT_ID"]]
    assert transcript.messages == [
        {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 4, "MESSAGE": "Hello, how can I help?"},
        {"SIDE": "Client", "START_TIME": 5, "STOP_TIME": 9, "MESSAGE": "I'd like to order"},
    ]
    assert (transcript.cost, transcript.cost_currency) == (0.25, "USD")
    assert sandbox.portal.statistics[call_id].transcript_id == transcript.id


_GOOD_MESSAGE = {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 3, "MESSAGE": "hi"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"MESSAGES": [_GOOD_MESSAGE]}, "CALL_ID should be set"),
        ({"CALL_ID": "{call}", "MESSAGES": "hi"}, "MESSAGES should be an array"),
        (
            {"CALL_ID": "{call}", "MESSAGES": [{**_GOOD_MESSAGE, "SIDE": "client"}]},
            "MESSAGES[0][SIDE] should be either Client or User",
        ),
        (
            {"CALL_ID": "{call}", "MESSAGES": [_GOOD_MESSAGE, {**_GOOD_MESSAGE, "START_TIME": -1}]},
            "MESSAGES[1][START_TIME] should be greater or equal to zero",
        ),
        (
            {"CALL_ID": "{call}", "MESSAGES": [{**_GOOD_MESSAGE, "STOP_TIME": 0}]},
            "MESSAGES[0][STOP_TIME] should be greater than zero",
        ),
        ({"CALL_ID": "{call}", "MESSAGES": [{**_GOOD_MESSAGE, "MESSAGE": ""}]}, "MESSAGES[0][MESSAGE] is empty"),
        (
            {"CALL_ID": "externalCall.unknown", "MESSAGES": [_GOOD_MESSAGE]},
            "Call externalCall.unknown is not found. Is it finished?",
        ),
    ],
)
def test_attach_transcription_validation(app: Rest, params: dict[str, Any], message: str) -> None:
    if params.get("CALL_ID") == "{call}":
        params = {**params, "CALL_ID": app.finished_call()}
    assert app.error("telephony.call.attachTranscription", params) == {"error": "", "error_description": message}


# --- webhooks vs app context ---


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("telephony.externalLine.add", {"NUMBER": "5554001"}),
        ("telephony.externalLine.get", {}),
        ("telephony.externalCall.register", {"USER_ID": 1, "TYPE": 2, "PHONE_NUMBER": "123"}),
        ("telephony.externalCall.finish", {"USER_ID": 1, "CALL_ID": "x"}),
    ],
)
def test_webhook_gets_wrong_auth_type_for_app_only_methods(hook: Rest, method: str, params: dict[str, Any]) -> None:
    assert hook.error(method, params, status=403) == {
        "error": "WRONG_AUTH_TYPE",
        "error_description": "Current authorization type is denied for this method",
    }


def test_webhook_works_for_app_only_methods_in_source_mode(source_mode: RunningSandbox, http: httpx2.Client) -> None:
    hook = Rest(http, source_mode.webhook_url)
    app = Rest(http, f"{source_mode.base_url}/rest/", source_mode.access_token)
    hook.ok("telephony.externalLine.add", {"NUMBER": "5554002"})
    # A webhook has no app context: its lines are stored with REST_APP_ID NULL, invisible to the app.
    assert hook.ok("telephony.externalLine.get") == [{"NUMBER": "5554002", "NAME": "", "CRM_AUTO_CREATE": "Y"}]
    assert app.ok("telephony.externalLine.get") == []

    call_id = hook.register(PHONE_NUMBER=fresh_phone())["CALL_ID"]
    finished = hook.ok("telephony.externalCall.finish", {"CALL_ID": call_id, "USER_ID": 1, "DURATION": 5})
    assert (finished["PORTAL_NUMBER"], finished["REST_APP_ID"], finished["REST_APP_NAME"]) == ("REST_APP:", None, False)
    assert (finished["CALL_STATUS"], finished["CALL_FAILED_CODE"]) == (1, "200")


# --- params ---


def test_query_and_body_are_merged_and_the_body_wins(sandbox: RunningSandbox, app: Rest, http: httpx2.Client) -> None:
    url = f"{app.base}telephony.externalLine.add?auth={sandbox.access_token}&NUMBER=5555001&NAME=from-query"
    assert http.post(url, data={"NUMBER": "5555002"}).status_code == 200
    assert {"NUMBER": "5555002", "NAME": "from-query", "CRM_AUTO_CREATE": "Y"} in app.ok("telephony.externalLine.get")


def test_invalid_json_body_is_read_as_no_params(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    response = http.post(
        f"{sandbox.base_url}/rest/telephony.externalLine.add",
        content=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {sandbox.access_token}"},
    )
    assert response.json()["error_description"] == "NUMBER should not be empty"


def test_php_style_keys_decode_to_nested_lists_and_dicts() -> None:
    pairs = [("a[b][0]", "x"), ("a[b][1]", "y"), ("c[]", "1"), ("c[]", "2"), ("d[k]", "v"), ("e", "plain")]
    assert php_params(pairs) == {"a": {"b": ["x", "y"]}, "c": ["1", "2"], "d": {"k": "v"}, "e": "plain"}


# --- test hooks and limits ---


def test_fault_injection_replaces_matching_requests(sandbox: RunningSandbox, app: Rest, http: httpx2.Client) -> None:
    control = f"{sandbox.base_url}/_sandbox"
    assert http.post(f"{control}/reset-stats").status_code == 200
    fault = {"method": "Telephony.ExternalLine.Get", "status": 502, "body": "<h1>Bad gateway</h1>", "count": 2}
    assert http.post(f"{control}/faults", json=fault).status_code == 200

    assert app.ok("telephony.externalCall.show", {"CALL_ID": "x"}) is False  # other methods are untouched
    for _ in range(2):
        response = app.call("telephony.externalLine.get")
        assert response.status_code == 502
        assert response.text == "<h1>Bad gateway</h1>"
        assert response.headers["content-type"].startswith("text/html")
    assert isinstance(app.ok("telephony.externalLine.get"), list)

    http.post(
        f"{control}/faults", json={"method": "*", "status": 500, "body": "{}", "content_type": "application/json"}
    )
    assert app.call("telephony.externalCall.hide").status_code == 500
    assert app.call("telephony.externalCall.hide").status_code == 200

    assert http.get(f"{control}/stats").json()["requests"] == {
        "telephony.externalcall.show": 1,
        "telephony.externalline.get": 3,
        "telephony.externalcall.hide": 2,
    }
    assert http.post(f"{control}/faults", json={"status": 42}).status_code == 400


def test_leaky_bucket_rejects_above_the_burst(http: httpx2.Client) -> None:
    with start_sandbox(SandboxConfig(rate_limit=5.0, rate_burst=3)) as sandbox:
        api = Rest(http, f"{sandbox.base_url}/rest/", sandbox.access_token)
        for _ in range(3):
            api.ok("telephony.externalLine.get")
        assert api.error("telephony.externalLine.get", status=503) == {
            "error": "QUERY_LIMIT_EXCEEDED",
            "error_description": "Too many requests",
        }
        # OAuth and control endpoints are not metered.
        assert refresh(http, sandbox, "nope").json()["error"] == "invalid_grant"
        assert http.get(f"{sandbox.base_url}/_sandbox/stats").status_code == 200
        time.sleep(0.3)  # drains 1.5 requests at 5/s
        api.ok("telephony.externalLine.get")


def test_stop_releases_the_port(http: httpx2.Client) -> None:
    sandbox = start_sandbox()
    url = f"{sandbox.base_url}/_sandbox/stats"
    assert http.get(url).status_code == 200
    sandbox.stop()
    sandbox.stop()  # idempotent
    with pytest.raises(httpx2.ConnectError), httpx2.Client(timeout=2) as fresh:
        fresh.get(url)
