"""What people do in the portal that a telephony app hears about: a user clicks a phone number in CRM
(click-to-call, OnExternalCallStart) and a site visitor fills in a CRM callback form (OnExternalCallBackStart).

Neither is a REST method: the sandbox's control surface (``SandboxPortal``, ``/_sandbox/click``,
``/_sandbox/callback-form``) stands in for the person. Both go through the app's external line, the one the portal
would route them to (the line chosen as the default for outgoing calls, or in the form's settings).
"""

from __future__ import annotations

from typing import Any

from .calls import Caller
from .events import Trigger, fire
from .methods.external_calls import register_call
from .php import digits
from .records import APP_ID, ExternalLine
from .state import PortalState

#: What the callback form reads to the employee unless told otherwise (on-external-call-back-start.md example).
CALLBACK_TEXT = "A callback has been ordered from the website, I am connecting you with the customer"
CALLBACK_VOICE = "ruinternalfemale"


class ActionError(ValueError):
    """A control request the portal could not act on (no app line, an unknown line)."""


def click_to_call(
    portal: PortalState,
    user_id: int,
    phone: str,
    *,
    line_number: str | None = None,
    crm_entity_type: str | None = None,
    crm_entity_id: int | None = None,
    is_mobile: bool = False,
    call_list_id: int = 0,
) -> dict[str, str]:
    """User ``user_id`` clicks ``phone``: the portal registers an outgoing external call for the app (the CALL_ID
    telephony.externalCall.finish then takes) and fires OnExternalCallStart. Returns the event's data."""
    with portal.lock:
        line = _app_line(portal, line_number)
        params: dict[str, Any] = {
            "USER_ID": user_id,
            "PHONE_NUMBER": phone,
            "TYPE": 1,
            "LINE_NUMBER": line.number,
            # Click-to-call is where the line's CRM_AUTO_CREATE counts: an unknown number gets a lead.
            "CRM_CREATE": int(line.crm_auto_create == "Y"),
        }
        if crm_entity_type and crm_entity_id:
            params.update(CRM_ENTITY_TYPE=crm_entity_type, CRM_ENTITY_ID=crm_entity_id)
        app = Caller("oauth", user_id, client_id=portal.config.client_id, app_id=APP_ID)
        trigger = Trigger(user_id)  # a person in the UI, not a REST call of the app
        call = register_call(portal, params, app, trigger)
        data = {
            "PHONE_NUMBER": phone,
            "PHONE_NUMBER_INTERNATIONAL": f"+{digits(phone)}",
            "EXTENSION": "",
            "USER_ID": str(user_id),
            "CALL_LIST_ID": str(call_list_id),
            "LINE_NUMBER": line.number,
            "IS_MOBILE": str(int(is_mobile)),
            "CALL_ID": call["CALL_ID"],
            "CRM_ENTITY_TYPE": call["CRM_ENTITY_TYPE"] or "",
            "CRM_ENTITY_ID": str(call["CRM_ENTITY_ID"] or ""),
        }
        fire(portal, "OnExternalCallStart", data, trigger)
        return data


def submit_callback_form(
    portal: PortalState,
    phone: str,
    *,
    text: str = CALLBACK_TEXT,
    voice: str = CALLBACK_VOICE,
    line_number: str | None = None,
) -> dict[str, str]:
    """A visitor asks for a callback at ``phone``: the form binds the CRM entity with that number (or makes a
    lead) and fires OnExternalCallBackStart; calling back is the app's job. Returns the event's data."""
    with portal.lock:
        line = _app_line(portal, line_number)
        found = portal.find_crm(phone)
        entity = found[0] if found else portal.add_lead(f"Callback request {phone}", phone, 1, "CALLBACK")
        data = {
            "PHONE_NUMBER": phone,
            "TEXT": text,
            "VOICE": voice,
            "CRM_ENTITY_TYPE": entity.type,
            "CRM_ENTITY_ID": str(entity.id),
            "LINE_NUMBER": line.number,
        }
        fire(portal, "OnExternalCallBackStart", data, Trigger(0))  # a visitor: no user, so no tokens
        return data


def _app_line(portal: PortalState, number: str | None) -> ExternalLine:
    lines = [line for line in portal.lines.values() if line.app_id == APP_ID]
    if number is not None:
        lines = [line for line in lines if line.number == number]
        if not lines:
            raise ActionError(f"the app has no external line {number!r}")
    if not lines:
        raise ActionError("the app has no external line: add one with telephony.externalLine.add")
    return lines[0]
