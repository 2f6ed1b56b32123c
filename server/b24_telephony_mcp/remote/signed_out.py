"""The 401 on the very request whose sign-in ended: when Bitrix24 refuses a user's refresh token for good mid-call,
the grant is revoked (`GrantAuth`), and the client must hear it as the MCP authorization spec says, a 401 with
`WWW-Authenticate`, so it signs in again at once rather than on its next request.

The request's task sets a holder in a context variable; the SDK copies the sender's context into the handler of
each message, so the tool's refresh marks the same holder. A JSON answer starts after the handler ends, so it can
still become the 401; an SSE answer (a streamed call, one asking the user to confirm) has started already and keeps
the `NOT_SIGNED_IN` error result, and that client's next request is the 401.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ENDED: ContextVar[list[str] | None] = ContextVar("signed_out_during_request", default=None)
"""Holds why, once this request's sign-in ended; None outside a request to `/mcp`."""


def signed_out(reason: str) -> None:
    """This request's sign-in ended (its grant was revoked): its answer, if not yet started, is the 401."""
    holder = _ENDED.get()
    if holder is not None:
        holder.append(reason)


@dataclass(frozen=True)
class SignedOutAs401:
    """ASGI middleware around the MCP endpoint: a JSON answer to a request whose sign-in ended becomes the 401 the
    SDK's bearer check gives a dead token (same challenge, naming the resource metadata)."""

    app: ASGIApp
    path: str
    resource_metadata_url: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        ended: list[str] = []
        replaced = False

        async def answer(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and ended and _is_json(message):
                replaced = True
                await self._unauthorized(send, ended[0])
            elif not replaced:  # the body of a replaced answer is dropped
                await send(message)

        reset = _ENDED.set(ended)
        try:
            await self.app(scope, receive, answer)
        finally:
            _ENDED.reset(reset)

    async def _unauthorized(self, send: Send, reason: str) -> None:
        body = json.dumps({"error": "invalid_token", "error_description": reason}).encode()
        challenge = (
            f'Bearer error="invalid_token", error_description="{reason}", '
            f'resource_metadata="{self.resource_metadata_url}"'
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge.encode()),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _is_json(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"application/json")
        for name, value in start.get("headers", ())
    )
