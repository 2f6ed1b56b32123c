"""The sandbox's events over real HTTP: event.bind/unbind/get, the offline queue, online POSTs to a loopback
receiver, and the control surface that makes events happen (click-to-call, the callback form, finishing a call)."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import pytest

from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox

LINE = "sandbox-pbx"
START = "ONEXTERNALCALLSTART"
END = "ONVOXIMPLANTCALLEND"
CLICK_FIELDS = [
    "PHONE_NUMBER",
    "PHONE_NUMBER_INTERNATIONAL",
    "EXTENSION",
    "USER_ID",
    "CALL_LIST_ID",
    "LINE_NUMBER",
    "IS_MOBILE",
    "CALL_ID",
    "CRM_ENTITY_TYPE",
    "CRM_ENTITY_ID",
]
_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A number no CRM entity has and no other test dials (clicks would dedupe into one active call)."""
    return f"+7 901 {next(_numbers):07d}"


class Rest:
    """REST calls with one credential: an app token (Bearer) or, with ``token`` None, the webhook URL."""

    def __init__(self, http: httpx2.Client, base: str, token: str | None = None) -> None:
        self.http, self.base, self.token = http, base, token

    def call(self, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self.http.post(f"{self.base}{method}", json=params or {}, headers=headers)

    def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = self.call(method, params)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def error(self, method: str, params: dict[str, Any] | None, status: int, code: str, description: str) -> None:
        response = self.call(method, params)
        assert response.status_code == status, response.text
        assert response.json() == {"error": code, "error_description": description}


class Receiver:
    """A loopback HTTP server standing in for the app's event handler: every POST lands in ``posts``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.posts: queue.Queue[tuple[str, str, dict[str, str]]] = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                time.sleep(delay)
                receiver.posts.put(
                    (self.path, self.headers.get("Content-Type", ""), dict(parse_qsl(body, keep_blank_values=True)))
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/b24/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 5.0) -> tuple[str, str, dict[str, str]]:
        return self.posts.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=100_000)) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10) as client:
        yield client


@pytest.fixture(autouse=True)
def clean_events(sandbox: RunningSandbox) -> Iterator[None]:
    """Each test starts with no handlers and an empty queue, and the app's line in place."""
    portal = sandbox.portal
    with portal.lock:
        portal.event_handlers.clear()
        portal.offline_events.clear()
    yield
    assert portal.outbox.wait_idle(), "an online event was still on its way"


@pytest.fixture
def app(sandbox: RunningSandbox, http: httpx2.Client) -> Rest:
    rest = Rest(http, f"{sandbox.base_url}/rest/", sandbox.access_token)
    if not any(line["NUMBER"] == LINE for line in rest.ok("telephony.externalLine.get")):
        rest.ok("telephony.externalLine.add", {"NUMBER": LINE, "NAME": "Sandbox PBX"})
    return rest


@pytest.fixture
def operator(sandbox: RunningSandbox, http: httpx2.Client) -> Rest:
    """The app acting as Olivia (user 2), who is no administrator."""
    return Rest(http, f"{sandbox.base_url}/rest/", sandbox.portal.issue_tokens(user_id=2).access_token)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def click(sandbox: RunningSandbox, http: httpx2.Client, **body: Any) -> dict[str, str]:
    response = http.post(f"{sandbox.base_url}/_sandbox/click", json={"phone": fresh_phone(), **body})
    assert response.status_code == 200, response.text
    data: dict[str, str] = response.json()["result"]
    return data


def bind_offline(app: Rest, *events: str, **params: Any) -> None:
    for event in events:
        assert app.ok("event.bind", {"event": event, "event_type": "offline", **params}) is True


def drain(app: Rest, **params: Any) -> list[dict[str, Any]]:
    """Every queued record, read with clear=1 (the default)."""
    events: list[dict[str, Any]] = app.ok("event.offline.get", params)["events"]
    return events


# --- binding ---


def test_bind_get_and_unbind(app: Rest, receiver: Receiver) -> None:
    assert app.ok("event.bind", {"event": "OnExternalCallStart", "handler": receiver.url}) is True
    bind_offline(app, "OnVoximplantCallEnd")
    assert app.ok("event.get") == [
        {"event": START, "handler": receiver.url, "auth_type": "0", "offline": 0},
        {"event": END, "connector_id": "", "offline": 1},
    ]
    already = "Unable to set event handler: Handler already binded"
    app.error("event.bind", {"event": START, "handler": receiver.url}, 400, "ERROR_CORE", already)
    app.error("event.bind", {"event": END, "event_type": "offline"}, 400, "ERROR_CORE", already)
    assert app.ok("event.unbind", {"event": START, "handler": receiver.url}) == {"count": 1}
    assert app.ok("event.unbind", {"event": START, "handler": receiver.url}) == {"count": 0}
    assert app.ok("event.unbind", {"event": END, "event_type": "offline"}) == {"count": 1}
    assert app.ok("event.get") == []


@pytest.mark.parametrize(
    ("params", "code", "description"),
    [
        ({"event": "OnNoSuchThing", "handler": "http://127.0.0.1/h"}, "ERROR_EVENT_NOT_FOUND", "Event not found"),
        ({"handler": "http://127.0.0.1/h"}, "ERROR_ARGUMENT", "Argument 'EVENT' is null or empty"),
        ({"event": START}, "ERROR_ARGUMENT", "Argument 'HANDLER' is null or empty"),
        (
            {"event": START, "handler": "http://127.0.0.1/h", "event_type": "push"},
            "ERROR_ARGUMENT",
            "Value must be one of {online|offline}",
        ),
        ({"event": START, "handler": "http://localhost/h"}, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL"),
        (
            {"event": START, "handler": "ftp://example.com/h"},
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported handler protocol",
        ),
        (
            {"event": "onOfflineEvent", "event_type": "offline"},
            "ERROR_ARGUMENT",
            "Offline event cannot be registered for this event.",
        ),
    ],
)
def test_bind_errors(app: Rest, params: dict[str, Any], code: str, description: str) -> None:
    app.error("event.bind", params, 400, code, description)


@pytest.mark.parametrize(
    "method",
    ["event.bind", "event.unbind", "event.get", "event.offline.get", "event.offline.clear", "event.offline.list"],
)
def test_webhook_gets_wrong_auth_type(sandbox: RunningSandbox, http: httpx2.Client, method: str) -> None:
    hook = Rest(http, sandbox.webhook_url)
    params = {"event": START, "handler": "http://127.0.0.1/h", "process_id": "x"}
    hook.error(method, params, 403, "WRONG_AUTH_TYPE", "Current authorization type is denied for this method")


def test_non_admin_binds_only_own_online_handlers(app: Rest, operator: Rest, receiver: Receiver) -> None:
    offline = "Access denied! Offline events binding requires administrator access rights"
    operator.error("event.bind", {"event": END, "event_type": "offline"}, 403, "ACCESS_DENIED", offline)
    other = "Access denied! Event binding with AUTH_TYPE requires administrator access rights"
    operator.error("event.bind", {"event": END, "handler": receiver.url, "auth_type": 1}, 403, "ACCESS_DENIED", other)
    assert operator.ok("event.bind", {"event": END, "handler": receiver.url}) is True
    bind_offline(app, END)
    mine = {"event": END, "handler": receiver.url, "auth_type": "2", "offline": 0}
    assert operator.ok("event.get") == [mine], "a user sees only the handlers bound as them"
    assert mine in app.ok("event.get") and len(app.ok("event.get")) == 2
    unbind = "Access denied! Offline events unbinding requires administrator access rights"
    operator.error("event.unbind", {"event": END, "event_type": "offline"}, 403, "ACCESS_DENIED", unbind)
    for method in ("event.offline.get", "event.offline.list", "event.offline.clear", "event.offline.error"):
        operator.error(method, {"process_id": "x", "message_id": []}, 403, "ACCESS_DENIED", "Access denied!")


# --- click-to-call and the offline queue ---


def test_a_click_registers_a_call_the_app_can_finish(sandbox: RunningSandbox, http: httpx2.Client, app: Rest) -> None:
    bind_offline(app, START, "OnVoximplantCallInit", "OnVoximplantCallStart")
    data = click(sandbox, http, phone="+1 906 219 5047", user_id=2)
    assert list(data) == CLICK_FIELDS
    assert data["PHONE_NUMBER_INTERNATIONAL"] == "+19062195047" and data["LINE_NUMBER"] == LINE
    assert (data["USER_ID"], data["CRM_ENTITY_TYPE"], data["CRM_ENTITY_ID"]) == ("2", "CONTACT", "651")
    assert (data["EXTENSION"], data["CALL_LIST_ID"], data["IS_MOBILE"]) == ("", "0", "0")

    queued = drain(app)
    # registerExternalCall fires init and start, then the portal tells the app to place the call.
    assert [event["EVENT_NAME"] for event in queued] == ["ONVOXIMPLANTCALLINIT", "ONVOXIMPLANTCALLSTART", START]
    assert queued[2]["EVENT_DATA"] == data and queued[2]["EVENT_ADDITIONAL"] == {"user_id": 2}
    assert set(queued[2]) == {"ID", "TIMESTAMP_X", "EVENT_NAME", "EVENT_DATA", "EVENT_ADDITIONAL", "MESSAGE_ID"}
    assert queued[0]["EVENT_DATA"] == {
        "CALL_ID": data["CALL_ID"],
        "CALL_TYPE": "1",
        "CALLER_ID": "19062195047",
        "REST_APP_ID": "1",
    }
    assert queued[1]["EVENT_DATA"] == {"CALL_ID": data["CALL_ID"], "USER_ID": "2"}

    finished = app.ok("telephony.externalCall.finish", {"CALL_ID": data["CALL_ID"], "USER_ID": 2, "DURATION": 42})
    assert finished["CALL_DURATION"] == 42 and finished["PORTAL_NUMBER"] == LINE
    assert drain(app) == [], "the queue was cleared"


def test_a_click_needs_the_apps_line(sandbox: RunningSandbox, http: httpx2.Client, app: Rest) -> None:
    response = http.post(f"{sandbox.base_url}/_sandbox/click", json={"phone": fresh_phone(), "line_number": "nope"})
    assert response.status_code == 400 and response.json()["error"] == "INVALID_CLICK"
    inactive = http.post(f"{sandbox.base_url}/_sandbox/click", json={"phone": fresh_phone(), "user_id": 3})
    assert inactive.status_code == 400 and inactive.json()["error_description"] == "User is not found or is not active"


def test_reserved_records_go_to_one_process_until_cleared(
    sandbox: RunningSandbox, http: httpx2.Client, app: Rest
) -> None:
    bind_offline(app, START)
    calls = [click(sandbox, http)["CALL_ID"] for _ in range(3)]

    first = app.ok("event.offline.get", {"clear": 0, "limit": 2})
    assert first["process_id"] and [e["EVENT_DATA"]["CALL_ID"] for e in first["events"]] == calls[:2]
    second = app.ok("event.offline.get", {"clear": 0})
    assert [e["EVENT_DATA"]["CALL_ID"] for e in second["events"]] == calls[2:], "no record handed out twice"
    assert second["process_id"] != first["process_id"]
    assert app.ok("event.offline.get", {"clear": 0})["events"] == []

    again = app.ok("event.offline.get", {"clear": 0, "process_id": first["process_id"]})
    assert again == first, "a process re-reads its own reservation"
    listed = app.ok("event.offline.list")
    assert [row["PROCESS_ID"] for row in listed] == [first["process_id"]] * 2 + [second["process_id"]]
    assert {row["ERROR"] for row in listed} == {"0"}

    assert app.ok("event.offline.clear", {"process_id": first["process_id"], "id": [first["events"][0]["ID"]]})
    assert [row["ID"] for row in app.ok("event.offline.list")] == [first["events"][1]["ID"], second["events"][0]["ID"]]
    message = first["events"][1]["MESSAGE_ID"]
    assert app.ok("event.offline.clear", {"process_id": first["process_id"], "message_id": [message]})
    cleared = app.ok("event.offline.get", {"process_id": second["process_id"]})
    assert cleared == second, "clear=1 with a process id hands out and deletes its reservation"
    assert app.ok("event.offline.list") == []


def test_clear_by_default_hands_out_no_process_id(sandbox: RunningSandbox, http: httpx2.Client, app: Rest) -> None:
    bind_offline(app, START)
    call_id = click(sandbox, http)["CALL_ID"]
    taken = app.ok("event.offline.get")
    assert taken["process_id"] is None and [e["EVENT_DATA"]["CALL_ID"] for e in taken["events"]] == [call_id]
    assert app.ok("event.offline.get") == {"process_id": None, "events": []}


def test_two_hundred_events_are_read_once_in_order(sandbox: RunningSandbox, app: Rest) -> None:
    bind_offline(app, START)
    clicked = [sandbox.portal.click_to_call(1, fresh_phone())["CALL_ID"] for _ in range(200)]
    read: list[str] = []
    while batch := app.ok("event.offline.get", {"clear": 0, "limit": 50}):
        if not batch["events"]:
            break
        assert len(batch["events"]) == 50
        read += [event["EVENT_DATA"]["CALL_ID"] for event in batch["events"]]
        assert app.ok("event.offline.clear", {"process_id": batch["process_id"]}) is True
    assert read == clicked


def test_filter_order_and_limit(sandbox: RunningSandbox, http: httpx2.Client, app: Rest) -> None:
    bind_offline(app, START, "OnVoximplantCallStart")
    calls = [click(sandbox, http)["CALL_ID"] for _ in range(3)]
    listed = app.ok("event.offline.list", {"filter": {"=EVENT_NAME": START}, "order": {"ID": "DESC"}})
    assert [row["EVENT_DATA"]["CALL_ID"] for row in listed] == calls[::-1]
    second_id = int(listed[1]["ID"])
    newest = app.ok("event.offline.get", {"filter": {">=ID": second_id, "EVENT_NAME": START}, "limit": 1, "clear": 0})
    assert [e["EVENT_DATA"]["CALL_ID"] for e in newest["events"]] == [calls[1]]
    by_message = app.ok("event.offline.list", {"filter": {"MESSAGE_ID": listed[0]["MESSAGE_ID"]}})
    assert [row["ID"] for row in by_message] == [listed[0]["ID"]]
    assert len(app.ok("event.offline.list")) == 6

    argument = "ERROR_ARGUMENT"
    app.error("event.offline.get", {"limit": 0}, 400, argument, "Value must be positive integer")
    app.error("event.offline.get", {"filter": {"!EVENT_NAME": START}}, 400, argument, "Filter operation not allowed: !")
    app.error(
        "event.offline.get", {"filter": {"PROCESS_ID": ""}}, 400, argument, "Filter field not allowed: PROCESS_ID"
    )
    app.error(
        "event.offline.get", {"order": {"ID": "UP"}}, 400, argument, "Order direction should be one of {ASC|DESC}"
    )
    app.error("event.offline.get", {"filter": "ID"}, 400, argument, "The filter is not an array.")
    app.error("event.offline.clear", {}, 400, argument, "Argument 'PROCESS_ID' is null or empty")
    app.error(
        "event.offline.clear",
        {"process_id": "p", "message_id": ["short"]},
        400,
        argument,
        "Value must be array of MESSAGE_ID values",
    )


def test_error_marked_records_come_back_only_when_asked(
    sandbox: RunningSandbox, http: httpx2.Client, app: Rest
) -> None:
    bind_offline(app, START)
    call_id = click(sandbox, http)["CALL_ID"]
    batch = app.ok("event.offline.get", {"clear": 0})
    message = batch["events"][0]["MESSAGE_ID"]
    assert app.ok("event.offline.error", {"process_id": batch["process_id"], "message_id": [message]}) is True
    assert [(row["ERROR"], row["PROCESS_ID"]) for row in app.ok("event.offline.list")] == [("1", "")]
    assert drain(app) == [], "error records stay out of ordinary reads"
    assert [e["EVENT_DATA"]["CALL_ID"] for e in drain(app, error=1)] == [call_id]


def test_the_same_event_twice_is_one_record_until_reserved(sandbox: RunningSandbox, app: Rest) -> None:
    """EventOfflineTable::callEvent merges on MESSAGE_ID while the record is unreserved."""
    bind_offline(app, "OnExternalCallBackStart")
    phone = fresh_phone()
    sandbox.portal.submit_callback_form(phone)
    sandbox.portal.submit_callback_form(phone)
    assert len(app.ok("event.offline.list")) == 1
    app.ok("event.offline.get", {"clear": 0})
    sandbox.portal.submit_callback_form(phone)
    assert len(app.ok("event.offline.list")) == 2


# --- online delivery ---


def test_online_event_is_posted_form_encoded_with_the_application_token(
    sandbox: RunningSandbox, http: httpx2.Client, app: Rest, receiver: Receiver
) -> None:
    assert app.ok("event.bind", {"event": START, "handler": receiver.url}) is True
    handler_id = next(iter(sandbox.portal.event_handlers))
    data = click(sandbox, http, user_id=2)
    path, content_type, form = receiver.next()
    assert path == "/b24/events" and content_type == "application/x-www-form-urlencoded"
    assert form["event"] == START and form["event_handler_id"] == str(handler_id)
    assert {key[5:-1]: value for key, value in form.items() if key.startswith("data[")} == data
    assert abs(int(form["ts"]) - time.time()) < 60
    auth = {key[5:-1]: value for key, value in form.items() if key.startswith("auth[")}
    assert auth.keys() == {
        "access_token",
        "expires_in",
        "scope",
        "domain",
        "server_endpoint",
        "status",
        "client_endpoint",
        "member_id",
        "application_token",
    }
    assert auth["application_token"] == sandbox.config.application_token
    assert auth["member_id"] == sandbox.portal.member_id and auth["client_endpoint"] == f"{sandbox.base_url}/rest/"
    assert auth["domain"] == sandbox.base_url.removeprefix("http://") and auth["status"] == "L"
    as_clicker = Rest(http, auth["client_endpoint"], auth["access_token"])
    assert as_clicker.ok("profile")["ID"] == "2", "the token acts as the user who clicked"
    assert http.get(f"{sandbox.base_url}/_sandbox/app").json()["application_token"] == auth["application_token"]


def test_a_slow_handler_does_not_hold_up_the_rest_call(sandbox: RunningSandbox, http: httpx2.Client, app: Rest) -> None:
    slow = Receiver(delay=2.0)
    try:
        app.ok("event.bind", {"event": "OnVoximplantCallStart", "handler": slow.url})
        started = time.monotonic()
        app.ok("telephony.externalCall.register", {"USER_ID": 1, "TYPE": 2, "PHONE_NUMBER": fresh_phone()})
        assert time.monotonic() - started < 1.5
        assert slow.next()[2]["event"] == "ONVOXIMPLANTCALLSTART"
    finally:
        slow.close()


def test_a_failed_delivery_is_logged_not_raised(
    sandbox: RunningSandbox, http: httpx2.Client, app: Rest, caplog: pytest.LogCaptureFixture
) -> None:
    closed = Receiver()
    closed.close()  # nothing listens there any more
    app.ok("event.bind", {"event": START, "handler": closed.url})
    failed = sandbox.portal.outbox.failed
    with caplog.at_level(logging.WARNING, logger="b24_telephony_mcp.sandbox.delivery"):
        click(sandbox, http)
        assert sandbox.portal.outbox.wait_idle()
    assert sandbox.portal.outbox.failed == failed + 1
    assert any(START in record.getMessage() and closed.url in record.getMessage() for record in caplog.records)


def test_callback_form_event_carries_no_user_tokens(
    sandbox: RunningSandbox, http: httpx2.Client, app: Rest, receiver: Receiver
) -> None:
    app.ok("event.bind", {"event": "OnExternalCallBackStart", "handler": receiver.url})
    bind_offline(app, "OnExternalCallBackStart")
    response = http.post(f"{sandbox.base_url}/_sandbox/callback-form", json={"phone": "+44 20 7946 0958"})
    assert response.status_code == 200, response.text
    data = response.json()["result"]
    assert list(data) == ["PHONE_NUMBER", "TEXT", "VOICE", "CRM_ENTITY_TYPE", "CRM_ENTITY_ID", "LINE_NUMBER"]
    assert (data["CRM_ENTITY_TYPE"], data["CRM_ENTITY_ID"], data["LINE_NUMBER"]) == ("CONTACT", "652", LINE)
    form = receiver.next()[2]
    assert form["event"] == "ONEXTERNALCALLBACKSTART" and form["data[PHONE_NUMBER]"] == "+44 20 7946 0958"
    assert "auth[access_token]" not in form, "a site visitor is no user: no tokens"
    assert form["auth[application_token]"] == sandbox.config.application_token
    assert [(e["EVENT_DATA"], e["EVENT_ADDITIONAL"]) for e in drain(app)] == [(data, {"user_id": 0})]


def test_finishing_a_call_fires_call_end(
    sandbox: RunningSandbox, http: httpx2.Client, app: Rest, receiver: Receiver
) -> None:
    app.ok("event.bind", {"event": "OnVoximplantCallEnd", "handler": receiver.url})
    bind_offline(app, END)  # without a source key: the app's own finish is not queued back to it
    bind_offline(app, END, auth_connector="mcp-server")
    call_id = click(sandbox, http)["CALL_ID"]
    params = {"CALL_ID": call_id, "USER_ID": 1, "DURATION": 65, "COST": 1.5, "COST_CURRENCY": "EUR"}
    app.ok("telephony.externalCall.finish", params)
    form = receiver.next()[2]
    data = {key[5:-1]: value for key, value in form.items() if key.startswith("data[")}
    assert form["event"] == END and list(data) == [
        "CALL_ID",
        "CALL_TYPE",
        "PHONE_NUMBER",
        "PORTAL_NUMBER",
        "PORTAL_USER_ID",
        "CALL_DURATION",
        "CALL_START_DATE",
        "COST",
        "COST_CURRENCY",
        "CALL_FAILED_CODE",
        "CALL_FAILED_REASON",
        "CRM_ACTIVITY_ID",
    ]
    assert (data["CALL_ID"], data["CALL_TYPE"], data["PORTAL_NUMBER"], data["CALL_DURATION"]) == (
        call_id,
        "1",
        LINE,
        "65",
    )
    assert (data["COST"], data["COST_CURRENCY"], data["CALL_FAILED_CODE"]) == ("1.5", "EUR", "200")
    assert drain(app) == [], "ProviderOffline skips the app's own change through the same source key"
    queued = drain(app, auth_connector="mcp-server")
    assert [(e["EVENT_NAME"], e["EVENT_DATA"]) for e in queued] == [(END, data)]
