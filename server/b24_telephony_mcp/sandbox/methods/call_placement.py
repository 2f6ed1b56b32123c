"""voximplant.callback.start and voximplant.infocall.*: calls the built-in telephony places, and bills.

Follows vi_rest.php and CVoxImplantOutgoing (methods.json source_notes). First the permission 'Outgoing call -
Execute' (else ACCESS_DENIED "Access denied!", 403), then:

- callback: the line (GetLine), its config, the number, then the telephony provider;
- info-calls: LINK_BASE_NUMBER refused, the line's config, the monthly info-call allowance (a remainder of 0 is
  refused; -1 means no limit), the number (taken as given on a SIP line), then the provider.

A number keeps only digits, `#`, `*`, `+`, `,` and `;` (stripLetters); nothing left (or "0") is refused. The
provider refuses when the telephony balance is used up: info-calls then fail with "Infocall failure", a callback
with the provider's own message. Failures go out with the empty error code and HTTP 400, as in source.
Every call placed is recorded in `CallPlacementState.placed`, so tests can tell what reached the phone network.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from ..calls import Caller, Params
from ..errors import ACCESS_DENIED
from ..php import php_bool, php_str
from ..state import Method, PortalState, method_table
from .sip import LINK_BASE_NUMBER, line_configs


class Msg:
    """Texts of this toolset's errors (sent with ``config.error_core_code``); source wording (methods.json)."""

    LINE_NOT_FOUND = "Could not find line {line}"
    NO_CONFIG = "Could not find config for number {line}"
    BAD_NUMBER = "Phone number is not correct"
    LINK_BASE_NUMBER = "Making infocall using LINK_BASE_NUMBER is not allowed"
    INFOCALL_LIMIT = "Infocall limit for this month is exceeded"
    INFOCALL_FAILURE = "Infocall failure"
    # startCallBack passes the provider's refusal through; its real wording is not documented (the sandbox's own).
    CALLBACK_NO_BALANCE = "Not enough money on the telephony balance to make the call"


#: AccessException (Permissions ENTITY_CALL / ACTION_PERFORM), source wording.

LineMode = Literal["RENT", "SIP", "LINK"]


@dataclass(frozen=True)
class OutgoingLine:
    """A line calls can be placed from: one of the portal's lines (sip.py's LineConfigs) or the linked number."""

    search_id: str
    mode: LineMode
    has_config: bool


@dataclass
class PlacedCall:
    method: str
    call_id: str
    user_id: int
    from_line: str
    to_number: str
    """As dialled (stripLetters applied, except on SIP lines for info-calls)."""
    text: str | None = None
    url: str | None = None
    voice: str | None = None


@dataclass
class CallPlacementState:
    unconfigured: set[str] = field(default_factory=set)
    """Lines whose configuration is gone (a test hook: the portal then says it has no config for them)."""
    balance: float = 100.0
    """Telephony balance; at 0 or below the provider refuses every call."""
    infocall_limit_remainder: int = -1
    """Info-calls left this month: -1 no limit (paid plans), 0 used up (refused)."""
    denied_users: set[int] = field(default_factory=set)
    """Users without the 'Outgoing call - Execute' permission."""
    placed: list[PlacedCall] = field(default_factory=list)


def _outgoing_line(portal: PortalState, state: CallPlacementState, line_id: str) -> OutgoingLine | None:
    """The line as voximplant.line.get lists it (the SIP toolset's tables), or the linked base number."""
    configs = line_configs(portal)
    if line_id == LINK_BASE_NUMBER:
        mode: LineMode = "LINK"
    elif line_id in {conn.line_id for conn in configs.connections.values()}:
        mode = "SIP"
    elif line_id in configs.lines():
        mode = "RENT"
    else:
        return None
    return OutgoingLine(line_id, mode, has_config=line_id not in state.unconfigured)


def start_callback(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    state = _permitted(portal, caller)
    line_id = php_str(params.get("FROM_LINE"))
    line = _outgoing_line(portal, state, line_id)
    if line is None:
        raise portal.core(Msg.LINE_NOT_FOUND, line=line_id)
    if not line.has_config:
        raise portal.core(Msg.NO_CONFIG, line=line_id)
    number = _strip_letters(params.get("TO_NUMBER"))
    if not php_bool(number):
        raise portal.core(Msg.BAD_NUMBER)
    if state.balance <= 0:
        raise portal.core(Msg.CALLBACK_NO_BALANCE)
    call = _place(portal, state, "voximplant.callback.start", "callback", caller, line_id, number, params)
    return {"RESULT": True, "CALL_ID": call.call_id}


def start_infocall_with_text(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    return _start_infocall(portal, params, caller, "voximplant.infocall.startwithtext")


def start_infocall_with_sound(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    return _start_infocall(portal, params, caller, "voximplant.infocall.startwithsound")


def _start_infocall(portal: PortalState, params: Params, caller: Caller, method: str) -> dict[str, Any]:
    state = _permitted(portal, caller)
    line_id = php_str(params.get("FROM_LINE"))
    if line_id == LINK_BASE_NUMBER:
        raise portal.core(Msg.LINK_BASE_NUMBER)
    line = _outgoing_line(portal, state, line_id)
    if line is None or not line.has_config:
        raise portal.core(Msg.NO_CONFIG, line=line_id)
    if state.infocall_limit_remainder == 0:
        raise portal.core(Msg.INFOCALL_LIMIT)
    raw_number = php_str(params.get("TO_NUMBER"))
    number = raw_number if line.mode == "SIP" else _strip_letters(raw_number)
    if not php_bool(number):
        raise portal.core(Msg.BAD_NUMBER)
    if state.balance <= 0:
        raise portal.core(Msg.INFOCALL_FAILURE)
    call = _place(portal, state, method, "infocall", caller, line_id, number, params)
    if state.infocall_limit_remainder > 0:
        state.infocall_limit_remainder -= 1
    return {"RESULT": True, "CALL_ID": call.call_id}


def _permitted(portal: PortalState, caller: Caller) -> CallPlacementState:
    state = portal.state(CallPlacementState)
    if caller.user_id in state.denied_users:
        raise ACCESS_DENIED.exc()
    return state


def _place(
    portal: PortalState,
    state: CallPlacementState,
    method: str,
    kind: str,
    caller: Caller,
    line_id: str,
    number: str,
    params: Params,
) -> PlacedCall:
    text, url, voice = (php_str(params.get(key)) or None for key in ("TEXT_TO_PRONOUNCE", "URL", "VOICE"))
    call = PlacedCall(
        method=method,
        call_id=f"{kind}.{secrets.token_hex(16)}.{int(portal.clock())}",
        user_id=caller.user_id,
        from_line=line_id,
        to_number=number,
        text=text,
        url=url,
        voice=voice,
    )
    state.placed.append(call)
    return call


def _strip_letters(raw: Any) -> str:
    """CVoxImplantPhone::stripLetters."""
    return re.sub(r"[^0-9#*+,;]", "", php_str(raw))


METHODS = method_table(
    {
        # Registered under scope "call" in source (the docs say telephony; disagreements.md #4).
        "voximplant.callback.start": Method(start_callback, scope="call"),
        "voximplant.infocall.startwithsound": Method(start_infocall_with_sound, scope="call"),
        "voximplant.infocall.startwithtext": Method(start_infocall_with_text, scope="call"),
    }
)
