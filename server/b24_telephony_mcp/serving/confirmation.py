"""Asking the user before a tool with real-world consequences runs (`ToolSpec.confirm`), over MCP elicitation.

One question, two wire forms, chosen by the protocol the client negotiated:

- up to 2025-11-25 (initialize handshake, a session): in the middle of the tools/call the server sends the client
  an `elicitation/create` request and waits for the user's answer;
- 2026-07-28 (no session, no server-to-client requests): the tools/call answers `input_required` with that same
  elicitation embedded; the client asks the user and repeats the tools/call with the answer in `inputResponses`
  and our `requestState` echoed. The SDK's `RequestStateBoundary` (installed by `Confirmations.protect`) seals
  that state with AES-GCM, bound to the tool name, its arguments and a ten-minute expiry, so an answer counts only
  when this server asked this very question for exactly these arguments: `inputResponses` sent up front, or
  carried over to other arguments, are not an answer, and the question is asked. Each yes is spent on one call:
  repeating the same retry (a client resending it) asks again instead of placing a second call.

It never fails open: only `accept` lets the tool run; a client that declares no form elicitation, or whose
connection cannot carry the request, gets a refusal, unless the operator switched confirmation off
(B24_CONFIRM_CALLS=0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Any, Protocol

from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity, compact_json
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CallToolRequestParams,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
)
from mcp_types.version import is_version_at_least

from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.tools import ToolContext, ToolSpec

log = logging.getLogger(__name__)

# Codes of our own.
NOT_CONFIRMED = "NOT_CONFIRMED"
CONFIRMATION_UNAVAILABLE = "CONFIRMATION_UNAVAILABLE"

INPUT_REQUIRED_VERSION = "2026-07-28"
"""The first protocol whose tools/call carries elicitation inside `input_required` (no server-to-client requests)."""
ANSWER_KEY = "confirm"
"""Our key in `inputRequests` / `inputResponses`."""
NOTHING_TO_FILL: dict[str, Any] = {"type": "object", "properties": {}}
"""The form asks for no fields: the answer is the user's accept, decline or cancel."""

_UNAVAILABLE_HINT = (
    "Use an MCP client that supports elicitation (it shows the question to the user), or have the operator start "
    "the server with B24_CONFIRM_CALLS=0 to run such tools without asking."
)
_REFUSED = {
    "decline": (
        "the user declined",
        "The user said no. Do not call it again unless the user asks for it in the conversation.",
    ),
    "cancel": (
        "the user dismissed the confirmation without answering",
        "Ask the user in the conversation whether to go ahead before calling it again.",
    ),
}


class SharedApprovals(Protocol):
    """What replicas share so that any of them honours a yes to a question another one asked (2026-07-28): the key
    that seals `requestState`, and the record of each yes spent (`spend` is True only the first time, anywhere)."""

    key: bytes

    async def spend(self, question_id: str, seconds: float) -> bool: ...


class Confirmations:
    """One server's confirmation machinery: what seals the 2026-07-28 `requestState`, and the approvals spent.
    With `shared` (replicas on Redis) both are shared; otherwise they are this process's own."""

    def __init__(self, shared: SharedApprovals | None = None) -> None:
        self._security = RequestStateSecurity(keys=[shared.key]) if shared else RequestStateSecurity.ephemeral()
        self._shared = shared
        self._spent: dict[str, float] = {}
        """Question ids already answered yes -> when their sealed state expires (then it cannot come back)."""

    def protect(self, server: Server[Any]) -> None:
        """Seal the `requestState` of our `input_required` answers; refuse echoes this process did not mint."""
        server.middleware.append(RequestStateBoundary(self._security, default_audience=server.name))

    def confirmer(self, ctx: ServerRequestContext[Any, Any], request: CallToolRequestParams) -> Confirmer:
        return Confirmer(ctx, request, self)

    async def spend(self, question_id: str) -> bool:
        """True the first time a question id is spent; False when that yes was already used."""
        keep = self._security.ttl + 60  # the boundary's expiry plus its clock skew
        if self._shared is not None:
            return await self._shared.spend(question_id, keep)
        now = time.monotonic()
        self._spent = {key: until for key, until in self._spent.items() if until > now}
        if question_id in self._spent:
            return False
        self._spent[question_id] = now + keep
        return True


async def confirm_before_run(
    spec: ToolSpec, params: Any, context: ToolContext, confirmer: Confirmer | None
) -> InputRequiredResult | None:
    """None when `spec` may run now; an `input_required` answer to send instead (the question, 2026-07-28).

    Raises:
        BitrixError: NOT_CONFIRMED (declined, cancelled) or CONFIRMATION_UNAVAILABLE (nobody to ask).
    """
    if spec.confirm is None:
        return None
    if not context.confirm_calls:
        log.info("%s runs without asking the user (B24_CONFIRM_CALLS=0)", spec.name)
        return None
    question = spec.confirm(params)
    if confirmer is None:
        raise unavailable(spec, "no MCP request to ask through")
    return await confirmer.ask(spec, question)


def unavailable(spec: ToolSpec, why: str) -> BitrixError:
    return BitrixError(
        CONFIRMATION_UNAVAILABLE,
        f"{spec.name} needs the user's confirmation, but this client cannot be asked ({why}). It did not run: "
        "nothing was sent to Bitrix24.",
        hint=_UNAVAILABLE_HINT,
    )


class Confirmer:
    """Asks the user of one tools/call request, in the form its protocol generation speaks."""

    def __init__(
        self, ctx: ServerRequestContext[Any, Any], request: CallToolRequestParams, confirmations: Confirmations
    ) -> None:
        self._ctx = ctx
        self._request = request
        self._confirmations = confirmations

    async def ask(self, spec: ToolSpec, question: str) -> InputRequiredResult | None:
        """None once the user accepted; an `input_required` answer carrying the question (2026-07-28).

        Raises:
            BitrixError: NOT_CONFIRMED or CONFIRMATION_UNAVAILABLE.
        """
        if is_version_at_least(self._ctx.protocol_version, INPUT_REQUIRED_VERSION):
            action = self._answer_in_request(question)
            if action == "accept" and not await self._confirmations.spend(str(self._request.request_state)):
                log.warning("%s: a yes was sent again; asking anew instead of placing a second call", spec.name)
                action = None
            if action is None:
                self._require_form_elicitation(spec)
                log.info("%s: asking the user to confirm (input_required)", spec.name)
                form = ElicitRequestFormParams(message=question, requested_schema=NOTHING_TO_FILL)
                return InputRequiredResult(
                    input_requests={ANSWER_KEY: ElicitRequest(params=form)}, request_state=_asked(question)
                )
        else:
            action = await self._elicit(spec, question)
        log.info("%s: the user answered %s", spec.name, action)
        if action != "accept":
            what, hint = _REFUSED[action]
            raise BitrixError(
                NOT_CONFIRMED, f"{spec.name} did not run: {what}. Nothing was sent to Bitrix24.", hint=hint
            )
        return None

    def _answer_in_request(self, question: str) -> str | None:
        """The user's answer to `question` carried by this retry, or None when it carries none we asked for.

        `request_state` arrives already verified and unsealed by the boundary: it equals what `_asked` minted for
        this tool, these arguments and this question, or the answer beside it is not ours to trust.
        """
        answer = (self._request.input_responses or {}).get(ANSWER_KEY)
        if not isinstance(answer, ElicitResult) or _question_of(self._request.request_state) != _digest(question):
            return None
        return answer.action

    def _require_form_elicitation(self, spec: ToolSpec) -> None:
        capability = self._ctx.session.client_capabilities
        elicitation = capability.elicitation if capability is not None else None
        # A bare `elicitation: {}` (before modes existed) means form support; url-only does not.
        if elicitation is None or (elicitation.form is None and elicitation.url is not None):
            raise unavailable(spec, "it does not declare the MCP form elicitation capability")

    async def _elicit(self, spec: ToolSpec, question: str) -> str:
        self._require_form_elicitation(spec)
        session = self._ctx.session
        if not session.can_send_request:
            raise unavailable(spec, "its connection cannot carry a request from the server")
        log.info("%s: asking the user to confirm (elicitation/create)", spec.name)
        try:
            answer = await session.elicit_form(question, NOTHING_TO_FILL, related_request_id=self._ctx.request_id)
        except MCPError as exc:
            raise unavailable(spec, f"it answered the question with an error: {exc.error.message}") from None
        return answer.action


def _asked(question: str) -> str:
    """The `requestState` recording which question was asked, under an id of its own so each yes is spent once
    (sealed by the boundary on its way out)."""
    return compact_json({"asked": _digest(question), "id": secrets.token_hex(8)})


def _question_of(state: str | None) -> str | None:
    try:
        asked = json.loads(state or "").get("asked")
    except (ValueError, AttributeError):
        return None
    return asked if isinstance(asked, str) else None


def _digest(question: str) -> str:
    return hashlib.sha256(question.encode()).hexdigest()[:32]
