"""The prompts: the everyday telephony jobs, one sentence each for the person, a worked plan for the model.

Each text names the tools that do the job by their names and parameters as tools/list shows them; sentences
naming a tool the server does not offer are dropped when the prompt is read (see `PromptSpec.needs`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, get_args

from b24_telephony_mcp.prompts.base import Argument, PromptSpec, Source
from b24_telephony_mcp.prompts.periods import PERIODS, Span, span_of
from b24_telephony_mcp.tools.base import OfferedTools
from b24_telephony_mcp.tools.call_analytics import Group


def _external_line_numbers(result: Any) -> list[str]:
    return [str(line["NUMBER"]) for line in result or () if isinstance(line, dict) and line.get("NUMBER")]


def _outgoing_line_ids(result: Any) -> list[str]:
    return [str(line_id) for line_id in result] if isinstance(result, dict) else []  # [] when the portal has none


def _users(result: Any) -> list[str]:
    """`ID Name Last name`: the ID is what the tools take, the name is what the person types."""
    users = (user for user in result or () if isinstance(user, dict) and user.get("ID"))
    return [" ".join(str(part) for part in (u["ID"], u.get("NAME"), u.get("LAST_NAME")) if part) for u in users]


EXTERNAL_LINES = Source("telephony.externalLine.get", {}, _external_line_numbers)
OUTGOING_LINES = Source("voximplant.line.get", {}, _outgoing_line_ids)
USERS = Source("user.get", {"FILTER": {"ACTIVE": True}, "SORT": "ID"}, _users)

PERIOD = Argument(
    "period",
    "today, yesterday, this week, last week, last 7 days, this month, last month, last 30 days, or dates",
    required=True,
    choices=tuple(PERIODS),
)
LINE = Argument("line", "Line number or outgoing line ID (optional)", sources=(EXTERNAL_LINES, OUTGOING_LINES))
USER = Argument("user", "User ID, with the name if you like: 1 Anna Smith", required=True, sources=(USERS,))


def _period(given: Mapping[str, str]) -> tuple[str, Span | None]:
    """The period as the person said it (with its dates when it is a named one), and those dates; for anything
    else the model reads the dates from the person's words."""
    said = given["period"].strip()
    span = span_of(said)
    if span is None:
        return said, None
    return f"{said} (from {span[0].isoformat()} to {span[1].isoformat()}, the end exclusive)", span


def _line(given: Mapping[str, str]) -> str:
    return given.get("line", "").strip()


def _call_report(given: Mapping[str, str]) -> str:
    period, span = _period(given)
    dates = f'"from": "{span[0].isoformat()}", "to": "{span[1].isoformat()}"' if span else "from and to of that period"
    group_by = given.get("group_by", "").strip() or "day"
    line = _line(given)
    line_filter = f", FILTER {json.dumps({'PORTAL_NUMBER': line})}" if line else ""
    return (
        f"Report on our calls for {period}{f' on line {line}' if line else ''}. "
        f'Call get_call_analytics with {dates}, group_by ["{group_by}"]{line_filter}. '
        "Show calls, answered, missed and average duration per group, the totals, and say what stands out. "
        "To look at single calls behind a number, use get_call_statistics."
    )


def _missed_calls(given: Mapping[str, str]) -> str:
    period, span = _period(given)
    filter_: dict[str, object] = {"CALL_TYPE": 2, "CALL_FAILED_CODE": "304"}  # incoming, missed
    if span:
        filter_ = {">=CALL_START_DATE": span[0].isoformat(), "<CALL_START_DATE": span[1].isoformat(), **filter_}
    if line := _line(given):
        filter_["PORTAL_NUMBER"] = line
    dates = "" if span else " (add the period's dates as >=CALL_START_DATE and <CALL_START_DATE)"
    return (
        f"Find the incoming calls we missed for {period}, to call the people back. "
        f'Call get_call_statistics with FILTER {json.dumps(filter_)}{dates}, SORT "CALL_START_DATE", '
        'ORDER "DESC", and read every page. '
        "Leave out numbers that got through later in the period. "
        "For each number left, find the client with search_crm_entities_by_phone. "
        "List them newest first: number, client, time, how many times they called. "
        "Offer to ring them back with start_callback."
    )


def _who_called(given: Mapping[str, str]) -> str:
    phone = json.dumps(given["phone"].strip())
    return (
        f"Who is {phone}? "
        f"Find the CRM contacts, companies and leads with this number with search_crm_entities_by_phone "
        f"(PHONE_NUMBER {phone}), and who in our team owns them. "
        f'Show the latest calls with the number from get_call_statistics (FILTER {{"PHONE_NUMBER": {phone}}}, '
        'SORT "CALL_START_DATE", ORDER "DESC").'
    )


def _log_a_call(given: Mapping[str, str]) -> str:
    phone = json.dumps(given["phone"].strip())
    user = given["user"].strip()
    incoming = given.get("direction", "").strip().lower() == "incoming"
    user_id = user.split()[0]
    user_id = user_id if user_id.isdigit() else f"of {user} (ask me for it if you do not know it)"
    details = [f"PHONE_NUMBER {phone}", f"USER_ID {user_id}", f"TYPE {2 if incoming else 1}"]
    if duration := given.get("duration", "").strip():
        details.append(f"DURATION {duration}")
    if line := _line(given):
        details.append(f"LINE_NUMBER {json.dumps(line)}")
    return (
        f"Log a finished {'incoming' if incoming else 'outgoing'} call with {phone}, taken by user {user}, "
        "in Bitrix24 CRM. "
        f"Call log_external_call with {', '.join(details)}, CALL_START_DATE when it began, and a unique "
        "EXTERNAL_CALL_ID so a repeat never logs it twice. "
        "Ask me first for what is missing: when the call began, how long it lasted, the recording or notes."
    )


def _connect_pbx_line(given: Mapping[str, str]) -> str:
    number = json.dumps(given["number"].strip())
    name = given.get("name", "").strip()
    return (
        f"Connect our PBX line {number} to Bitrix24. "
        f"Look for it with list_external_lines. "
        f"If it is not there, add it with add_external_line (NUMBER {number}"
        f"{f', NAME {json.dumps(name)}' if name else ''}). "
        f"If it is there{' under another name, rename it with update_external_line' if name else ', say so'}. "
        "Then tell me how our PBX logs its calls on this line: register_external_call when a call starts and "
        "finish_external_call when it ends, or log_external_call for a call that is over."
    )


PROMPTS: tuple[PromptSpec, ...] = (
    PromptSpec(
        name="call_report",
        title="Call report",
        description="Calls, answered, missed and durations over a period, by day, week, hour, line, user, type or "
        "status.",
        arguments=(
            PERIOD,
            Argument("group_by", "day (default), week, hour, line, user, type or status", choices=get_args(Group)),
            LINE,
        ),
        needs=("get_call_analytics",),
        text=_call_report,
    ),
    PromptSpec(
        name="missed_calls",
        title="Missed calls to call back",
        description="Missed incoming calls of a period, with the client behind each number.",
        arguments=(PERIOD, LINE),
        needs=("get_call_statistics",),
        text=_missed_calls,
    ),
    PromptSpec(
        name="who_called",
        title="Who called from this number",
        description="The CRM client behind a phone number and their latest calls.",
        arguments=(Argument("phone", "Phone number", required=True),),
        needs=("search_crm_entities_by_phone", "get_call_statistics"),
        text=_who_called,
    ),
    PromptSpec(
        name="log_a_call",
        title="Log a call",
        description="Record a finished call of your PBX or phone in the CRM, with its recording if you have it.",
        arguments=(
            Argument("phone", "The other side's number", required=True),
            USER,
            Argument("direction", "outgoing (default) or incoming", choices=("outgoing", "incoming")),
            Argument("duration", "Seconds (optional)"),
            Argument("line", "External line number (optional)", sources=(EXTERNAL_LINES,)),
        ),
        needs=("log_external_call",),
        text=_log_a_call,
    ),
    PromptSpec(
        name="connect_pbx_line",
        title="Connect a PBX line",
        description="Add (or find) the external line of your PBX or provider, then how to log its calls.",
        arguments=(Argument("number", "The line's number", required=True), Argument("name", "Its name (optional)")),
        needs=("add_external_line",),
        text=_connect_pbx_line,
    ),
)

PROMPTS_BY_NAME = {prompt.name: prompt for prompt in PROMPTS}


def offered_prompts(offer: OfferedTools) -> tuple[PromptSpec, ...]:
    """The prompts listed while `offer` stands: those with a tool to do their job."""
    return tuple(prompt for prompt in PROMPTS if any(name in offer for name in prompt.needs))


def prompt_text(prompt: PromptSpec, given: Mapping[str, str], offer: OfferedTools) -> str:
    """The message to the model, keeping only the sentences whose tools are offered."""
    return offer.only_offered(prompt.text(given), explain=False)
