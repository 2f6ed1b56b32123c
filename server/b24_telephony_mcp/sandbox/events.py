"""Events the portal fires, and where they go: into the offline queue of each offline handler, and as a
form-encoded POST to each online handler (through the portal's outbox, so the caller is never held up).

The catalogue is what ``event.bind`` accepts; the REST methods on the handler table and the queue live in
``methods/events.py``. Behaviour follows the rest module (``Bitrix\\Rest\\Event\\Sender``, ``ProviderOffline``,
``EventOfflineTable``) and the docs (api-reference/events/index.md, offline-events.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .delivery import Delivery
from .php import php_form_pairs
from .records import EventHandler, OfflineEvent
from .state import PortalState


class EventInfo(NamedTuple):
    """How an event is registered in OnRestServiceBuildDescription: its scope, and whether it may be offline."""

    scope: str
    offline_allowed: bool = True


#: Upper-cased event name -> how it is registered (vi_rest and the rest module's own onOfflineEvent).
CATALOGUE: dict[str, EventInfo] = {
    "ONEXTERNALCALLSTART": EventInfo("telephony"),
    "ONEXTERNALCALLBACKSTART": EventInfo("telephony"),
    "ONVOXIMPLANTCALLINIT": EventInfo("telephony"),
    "ONVOXIMPLANTCALLSTART": EventInfo("telephony"),
    "ONVOXIMPLANTCALLEND": EventInfo("telephony"),
    # Registered, but the sandbox never fires it: a signal that the offline queue has news (on-offline-event.md).
    "ONOFFLINEEVENT": EventInfo("basic", offline_allowed=False),
}


@dataclass(frozen=True)
class Trigger:
    """Who caused an event: the user (0: nobody, e.g. a site visitor), and when a REST call did, the app's
    ``client_id`` and the call's ``auth_connector``. A person in the portal's UI has no client_id."""

    user_id: int
    client_id: str | None = None
    auth_connector: str = ""


def message_id(event_name: str, data: dict[str, Any]) -> str:
    """EventOfflineTable::getMessageId: md5 of ``EVENT_NAME|json(EVENT_DATA)``."""
    encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return hashlib.md5(f"{event_name}|{encoded}".encode()).hexdigest()


def fire(portal: PortalState, event_name: str, data: dict[str, Any], trigger: Trigger) -> None:
    """Hand an event to every handler bound to it. Call with ``portal.lock`` held (REST handlers are)."""
    if not portal.config.app_installed:
        return  # docs: "Events will not be sent to the application until the installation is complete"
    name = event_name.upper()
    for handler in sorted(portal.event_handlers.values(), key=lambda h: h.id):
        if handler.event != name:
            continue
        if handler.offline:
            _queue_offline(portal, handler, data, trigger)
        else:
            portal.outbox.send(_online_delivery(portal, handler, data, trigger))


def _queue_offline(portal: PortalState, handler: EventHandler, data: dict[str, Any], trigger: Trigger) -> None:
    # ProviderOffline::send: a change made by this very app through the same connector is not queued for it,
    # so an app does not hear its own writes back (offline-events.md "How to Avoid Cycles").
    if trigger.client_id == portal.config.client_id and trigger.auth_connector == handler.connector_id:
        return
    key = message_id(handler.event, data)
    now = int(portal.clock())
    # callEvent merges on (MESSAGE_ID, APP_ID, CONNECTOR_ID, PROCESS_ID=''): a repeat refreshes the unreserved
    # record; once a process has reserved it, a repeat is a new record.
    for record in portal.offline_events.values():
        if (record.message_id, record.app_id, record.connector_id, record.process_id) == (
            key,
            handler.app_id,
            handler.connector_id,
            "",
        ):
            record.timestamp, record.event_data, record.user_id = now, dict(data), trigger.user_id
            return
    record = OfflineEvent(
        id=portal.next_id("offline_event"),
        timestamp=now,
        message_id=key,
        app_id=handler.app_id,
        event_name=handler.event,
        event_data=dict(data),
        user_id=trigger.user_id,
        connector_id=handler.connector_id,
    )
    portal.offline_events[record.id] = record


def _online_delivery(portal: PortalState, handler: EventHandler, data: dict[str, Any], trigger: Trigger) -> Delivery:
    payload = {
        "event": handler.event,
        "event_handler_id": handler.id,
        "data": data,
        "ts": int(portal.clock()),
        "auth": event_auth(portal, handler.user_id or trigger.user_id),
    }
    return Delivery(handler.handler, handler.event, php_form_pairs(payload))


def event_auth(portal: PortalState, user_id: int) -> dict[str, Any]:
    """The ``auth`` block (auth-params-in-events.md): the app's token for the user, and the portal's identity.
    Without a user there are no tokens; refresh_token is left out, as the source does for telephony events
    (disagreements.md #21)."""
    tokens: dict[str, Any] = {}
    if user_id:
        tokens = {"access_token": portal.event_access_token(user_id), "expires_in": int(portal.config.access_token_ttl)}
    return {
        **tokens,
        "scope": portal.config.scopes,
        "domain": urlsplit(portal.base_url).netloc,
        "server_endpoint": f"{portal.base_url}/rest/",
        "status": "L",
        "client_endpoint": f"{portal.base_url}/rest/",
        "member_id": portal.member_id,
        "application_token": portal.config.application_token,
    }
