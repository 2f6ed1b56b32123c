"""The shared tables of the sandbox portal (users, CRM, external lines, calls, statistics, files, transcripts,
event handlers and the offline event queue).

Tables one toolset owns alone live in its method module, kept through ``PortalState.state`` (state.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

#: The installed sandbox app (REST_APP_ID in the portal's tables).
APP_ID = 1
APP_NAME = "Sandbox telephony app"


@dataclass
class SandboxUser:
    id: int
    name: str
    last_name: str
    active: bool = True
    is_admin: bool = False
    phone_inner: str | None = None
    work_phone: str | None = None
    personal_phone: str | None = None
    personal_mobile: str | None = None
    timeman_status: str = "CLOSED"


@dataclass
class CrmEntity:
    type: Literal["CONTACT", "COMPANY", "LEAD"]
    id: int
    name: str
    phones: list[str]
    assigned_by_id: int
    source_id: str | None = None
    created_by_call: str | None = None


@dataclass
class ExternalLine:
    id: int
    number: str
    name: str
    crm_auto_create: str
    app_id: int | None  # None: created through a webhook (REST_APP_ID NULL)


@dataclass
class ActiveCall:
    call_id: str
    user_id: int
    caller_id: str
    incoming: int
    date_create: datetime
    rest_app_id: int | None
    external_line_id: int | None
    external_call_id: str | None
    portal_number: str
    portal_user_id: int | None
    crm_enabled: bool
    crm_entity_type: str | None = None
    crm_entity_id: int | None = None
    created_entities: list[dict[str, Any]] = field(default_factory=list)
    created_lead: int | None = None
    shown_to: set[int] = field(default_factory=set)


@dataclass
class StatisticRecord:
    id: int
    call_id: str
    external_call_id: str | None
    portal_user_id: int
    phone_number: str
    portal_number: str
    incoming: int
    call_duration: int
    call_start_date: datetime
    call_status: int
    call_vote: int | None
    cost: float
    cost_currency: str
    call_failed_code: str
    call_failed_reason: str
    rest_app_id: int | None
    crm_activity_id: int | None
    crm_entity_type: str | None
    crm_entity_id: int | None
    record_url: str | None = ""
    call_record_id: int | None = None
    transcript_id: int | None = None
    transcript_pending: str = "N"
    # Columns only built-in telephony fills (the seeded call history); external calls leave the defaults.
    call_category: str = "external"
    call_log: str | None = None
    session_id: int | None = None
    redial_attempt: int | None = None
    comment: str | None = None
    record_duration: int | None = None

    def as_result(self) -> dict[str, Any]:
        """The row as telephony.externalCall.finish returns it (methods.json result_example)."""
        result: dict[str, Any] = {
            "CALL_ID": self.call_id,
            "EXTERNAL_CALL_ID": self.external_call_id,
            "PORTAL_USER_ID": self.portal_user_id,
            "PHONE_NUMBER": self.phone_number,
            "PORTAL_NUMBER": self.portal_number,
            "INCOMING": str(self.incoming),  # DB string, as in the docs example
            "CALL_DURATION": self.call_duration,
            # A PHP DateTime object json-encodes as {} (docs example); the real server sends no date here.
            "CALL_START_DATE": {},
            "CALL_STATUS": self.call_status,
            "CALL_VOTE": self.call_vote,
            "COST": self.cost,
            "COST_CURRENCY": self.cost_currency,
            "CALL_FAILED_CODE": self.call_failed_code,
            "CALL_FAILED_REASON": self.call_failed_reason,
            "REST_APP_ID": None if self.rest_app_id is None else str(self.rest_app_id),
            # getRestAppName() returns false when there is no app (webhook calls).
            "REST_APP_NAME": APP_NAME if self.rest_app_id == APP_ID else False,
            "CRM_ACTIVITY_ID": self.crm_activity_id,
            "COMMENT": None,
        }
        # Source adds the CRM keys only when the call has a primary entity.
        if self.crm_entity_type and self.crm_entity_id:
            result["CRM_ENTITY_TYPE"] = self.crm_entity_type
            result["CRM_ENTITY_ID"] = self.crm_entity_id
        result["ID"] = self.id
        return result


@dataclass
class SandboxFile:
    id: int
    call_id: str
    name: str
    content: bytes | None  # None: RECORD_URL mode, the sandbox never downloads
    source_url: str | None = None


@dataclass
class Transcript:
    id: int
    call_id: str
    messages: list[dict[str, Any]]
    cost: float | None
    cost_currency: str | None


@dataclass
class EventHandler:
    """A row of b_rest_event: an online handler (a URL) or an offline one (``handler`` empty)."""

    id: int
    event: str  # upper-cased, as event.bind stores it
    handler: str
    user_id: int  # auth_type: whose token the event carries; 0: the user who caused the event
    connector_id: str
    app_id: int

    @property
    def offline(self) -> bool:
        return self.handler == ""


@dataclass
class OfflineEvent:
    """A row of b_rest_event_offline. One record per MESSAGE_ID until it is reserved by a ``process_id``."""

    id: int
    timestamp: int  # TIMESTAMP_X, whole seconds like the DB column
    message_id: str  # md5(EVENT_NAME|json(EVENT_DATA))
    app_id: int
    event_name: str
    event_data: dict[str, Any]
    user_id: int  # EVENT_ADDITIONAL.user_id: who caused the event, 0 without a user
    connector_id: str = ""
    process_id: str = ""
    error: int = 0


@dataclass
class UploadedFile:
    """A multipart file part, handed over by the HTTP layer."""

    filename: str
    content: bytes


def seed_users() -> dict[int, SandboxUser]:
    users = [
        SandboxUser(1, "Admin", "Sandbox", is_admin=True, phone_inner="100", work_phone="+1 555 0100"),
        SandboxUser(2, "Olivia", "Operator", phone_inner="101", personal_mobile="+1 555 0101", timeman_status="OPENED"),
        SandboxUser(3, "Ian", "Inactive", active=False, phone_inner="102"),
        SandboxUser(4, "Sam", "Sales", phone_inner="103", work_phone="+1 555 0103"),
        SandboxUser(5, "Nora", "Night", phone_inner="104", timeman_status="OPENED"),
    ]
    return {user.id: user for user in users}


def seed_crm() -> dict[tuple[str, int], CrmEntity]:
    entities = [
        CrmEntity("CONTACT", 651, "John Doe", ["+1 906 219 5047"], assigned_by_id=2),
        CrmEntity("COMPANY", 643, "Daisy LLC", ["+1 906 219 5047"], assigned_by_id=2),
        CrmEntity("LEAD", 201, "Website enquiry", ["+1 906 219 5047"], assigned_by_id=1),
        CrmEntity("CONTACT", 652, "Jane Roe", ["+44 20 7946 0958"], assigned_by_id=1),
        CrmEntity("COMPANY", 644, "Acme GmbH", ["+49 30 901820"], assigned_by_id=1),
        CrmEntity("LEAD", 202, "Trade fair contact", ["+33 1 70 36 39 50"], assigned_by_id=2),
    ]
    return {(entity.type, entity.id): entity for entity in entities}
