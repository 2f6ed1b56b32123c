"""Toolset `events`: hearing the portal. Bind the telephony events (`event.bind`, offline by default, so no public
URL is needed), then read them by cursor, waiting for the next one if asked. The events themselves are taken in
by `events/` (the offline queue's drainer, the online handler) and kept in its store."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.bitrix.errors import ERROR_CORE, INVALID_ARGUMENTS
from b24_telephony_mcp.events.hub import MAX_WAIT_SECONDS, EventHub
from b24_telephony_mcp.events.records import EVENT_NAMES, EventName
from b24_telephony_mcp.events.store import BadCursorError
from b24_telephony_mcp.tools.base import OVERWRITES, READS, RestParams, RestResult, ToolRun, Toolset, ToolSpec

ALREADY_BOUND = "Handler already binded"
"""event.bind's ERROR_CORE description when the same handler is bound: for this tool, a success."""
ADMIN_HINT = (
    "Offline events are bound and read by a portal administrator: log in (b24-telephony-mcp login) as one, or bind "
    "online events to this server's public /bitrix24/events URL."
)
EVENT_HINTS = (("ACCESS_DENIED", ADMIN_HINT),)


class WatchParams(RestParams):
    local_fields = frozenset({"unbind"})

    event: list[EventName] | None = Field(None, min_length=1, description="Default: all five.")
    event_type: Literal["offline", "online"] = "offline"
    handler: str | None = Field(None, description="Online only: this server's https://.../bitrix24/events URL.")
    auth_type: int | None = Field(None, description="User whose token online events carry.")
    unbind: bool = False

    @model_validator(mode="after")
    def _online_needs_handler(self) -> WatchParams:
        if self.event_type == "online" and not self.handler:
            raise ValueError("online events need handler: the public URL of this server's /bitrix24/events")
        return self

    def binding(self, name: str) -> dict[str, Any]:
        """event.bind / event.unbind's parameters for one event."""
        rest: dict[str, Any] = {"event": name, "event_type": self.event_type}
        if self.event_type == "online":
            rest["handler"] = self.handler
        if self.auth_type is not None:
            rest["auth_type"] = self.auth_type
        return rest


class Binding(RestResult):
    event: str
    handler: str | None = None
    """Online bindings only."""
    offline: int | None = None


class Watching(RestResult):
    changed: list[str]
    """The events bound or unbound by this call (the others already were)."""
    bound: list[Binding]


def _hub(run: ToolRun) -> EventHub:
    if run.context.events is None:
        raise BitrixError(INVALID_ARGUMENTS, "this server keeps no events (it was started without an event store)")
    return run.context.events


async def watch_telephony_events(params: WatchParams, run: ToolRun) -> dict[str, Any]:
    changed: list[str] = []
    for name in params.event or EVENT_NAMES:
        if params.unbind:
            answer = await run.client.call("event.unbind", params.binding(name), read_only=False)
            if isinstance(answer.result, dict) and answer.result.get("count"):
                changed.append(name)
            continue
        try:
            await run.client.call("event.bind", params.binding(name), read_only=False)
            changed.append(name)
        except BitrixError as exc:
            if exc.code != ERROR_CORE or ALREADY_BOUND not in exc.description:
                raise
    if params.event_type == "offline" and not params.unbind:
        _hub(run).activate(run.client)  # in remote mode, this administrator's connection drains the portal's queue
    bound = (await run.client.call("event.get", {}, read_only=True)).result or []
    ours = {name.upper() for name in EVENT_NAMES}
    rows = [row for row in bound if isinstance(row, dict) and str(row.get("event", "")).upper() in ours]
    return {"result": {"changed": changed, "bound": rows}}


class GetEventsParams(RestParams):
    local_fields = frozenset({"cursor", "event", "limit", "wait_seconds"})

    cursor: str | None = Field(None, description="From the previous page; none: the oldest kept.")
    event: list[EventName] | None = None
    limit: int = Field(50, ge=1, le=200)
    wait_seconds: int = Field(0, ge=0, le=MAX_WAIT_SECONDS, description="Wait this long for an event if none yet.")


class EventData(RestResult):
    """The fields of the five events (REST names), each present in the events that carry it."""

    CALL_ID: str | None = None
    PHONE_NUMBER: str | None = None
    PHONE_NUMBER_INTERNATIONAL: str | None = None
    EXTENSION: str | None = None
    USER_ID: int | None = None
    CALL_LIST_ID: int | None = None
    LINE_NUMBER: str | None = None
    IS_MOBILE: str | None = None
    CRM_ENTITY_TYPE: str | None = None
    CRM_ENTITY_ID: int | None = None
    TEXT: str | None = None
    VOICE: str | None = None
    CALL_TYPE: int | None = None
    ACCOUNT_SEARCH_ID: str | None = None
    CALLER_ID: str | None = None
    REST_APP_ID: int | None = None
    PORTAL_NUMBER: str | None = None
    PORTAL_USER_ID: int | None = None
    CALL_DURATION: int | None = None
    CALL_START_DATE: str | None = None
    COST: float | None = None
    COST_CURRENCY: str | None = None
    CALL_FAILED_CODE: str | None = None
    CALL_FAILED_REASON: str | None = None
    CRM_ACTIVITY_ID: int | None = None


class HeardEvent(RestResult):
    cursor: str
    event: EventName
    ts: int
    data: EventData


class EventsPage(RestResult):
    events: list[HeardEvent]
    cursor: str | None
    """Pass it as `cursor` next time (unchanged when nothing came)."""
    offline_queue: str | None = None
    """Why the portal's offline queue is not being drained, when it is not."""


async def get_telephony_events(params: GetEventsParams, run: ToolRun) -> dict[str, Any]:
    hub = _hub(run)
    hub.activate(run.client)
    try:
        events = await hub.wait(
            params.cursor,
            params.event,
            params.limit,
            params.wait_seconds,
            run.report_progress if params.wait_seconds else None,
        )
    except BadCursorError:
        raise BitrixError(
            INVALID_ARGUMENTS, f"cursor {params.cursor!r} is not one this server gave", hint="Pass no cursor to start."
        ) from None
    page: dict[str, Any] = {
        "events": [event.to_dict() for event in events],
        "cursor": events[-1].cursor if events else params.cursor,
    }
    status = hub.drain_status
    if status is not None and status.error is not None:
        page["offline_queue"] = f"{status.error.code}: {status.error.description}. {status.error.hint}".strip()
    return {"result": page}


TOOLSET = Toolset(
    name="events",
    description="Hear the portal: click-to-call, callback requests, call starts and ends, as events to wait for.",
    instructions="Events: watch_telephony_events binds them once; get_telephony_events (wait_seconds) reads them "
    "after a cursor. OnExternalCallStart's CALL_ID is a call Bitrix24 registered: finish it, never register it "
    "again.",
    tools=(
        ToolSpec(
            name="watch_telephony_events",
            method="event.bind",
            title="Watch telephony events",
            description="Bind (or unbind) the telephony events this server hears; idempotent. Offline needs a "
            "portal administrator; online needs this server's public URL. Returns what is bound.",
            params=WatchParams,
            result=Watching,
            effect=OVERWRITES,  # unbinding removes a binding
            app_only=True,
            run=watch_telephony_events,
            other_methods=("event.unbind", "event.get"),
            hints=EVENT_HINTS,
        ),
        ToolSpec(
            name="get_telephony_events",
            method="event.offline.get",
            title="Get telephony events",
            description="Events heard after cursor, oldest first; wait_seconds waits for the next one. Fields are "
            "Bitrix24's (CALL_ID, PHONE_NUMBER, USER_ID...).",
            params=GetEventsParams,
            result=EventsPage,
            effect=READS,
            app_only=True,
            run=get_telephony_events,
            other_methods=("event.offline.clear", "event.offline.list"),
            hints=EVENT_HINTS,
        ),
    ),
)
