"""`POST /bitrix24/events`: the online handler Bitrix24 posts bound events to (HTTP transports).

It sits outside the bearer guard (Bitrix24 knows no bearer token and posts with the public host's name), so the
post itself is the check: its `auth[application_token]` must be the application's (events/online.py), or in
remote mode the one the installation on the portal `auth[member_id]` gave, whose hub alone then gets the event. A
refused post is logged with its reason and stores nothing; an accepted one is stored before the answer, so a 200
means kept. The `auth` block (with the user's access token) is never stored or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from b24_telephony_mcp.events.hub import EventHub
from b24_telephony_mcp.events.online import Refusal, check_application_token, event_of, php_form

log = logging.getLogger(__name__)

EVENTS_PATH = "/bitrix24/events"
MAX_POST_BYTES = 256 * 1024
"""Far above any telephony event's form; a larger body is not Bitrix24's."""


Recipient = Callable[[dict[str, Any]], Awaitable[EventHub]]
"""The hub a post's event goes to, once the post is proven to be from that hub's portal; `Refusal` otherwise."""


def one_portal(hub: EventHub, application_tokens: Collection[str]) -> Recipient:
    """A server of one portal: a post with one of the application's tokens is that portal's."""

    async def recipient(form: dict[str, Any]) -> EventHub:
        check_application_token(form, application_tokens)
        return hub

    return recipient


def event_intake(recipient: Recipient) -> Route:
    async def receive(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():  # read no further than a post of Bitrix24's can go
            body += chunk
            if len(body) > MAX_POST_BYTES:
                return _refuse(request, Refusal(413, f"a post of more than {MAX_POST_BYTES} bytes"))
        try:
            form = php_form(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            hub = await recipient(form)
        except Refusal as refusal:
            return _refuse(request, refusal)
        event = event_of(form)
        if event is None:
            return JSONResponse({"result": "ignored"})  # a genuine event this server does not hear
        added = await hub.ingest([event])
        return JSONResponse({"result": "stored" if added else "duplicate"})

    return Route(EVENTS_PATH, receive, methods=["POST"])


def _refuse(request: Request, refusal: Refusal) -> Response:
    client = request.client.host if request.client is not None else "?"
    log.warning("refused an event post from %s: %s", client, refusal.reason)
    return JSONResponse({"error": refusal.reason}, refusal.status)
