"""call.followup.*: AI follow-ups of video calls (REST 3.0, scope ``call``).

Behaviour from the method pages (api-reference/telephony/follow-up/, methods.json): ``filter.startDate``
{from, to} is required; ``select`` takes root fields, AI blocks and their listed dot paths; lists page by cursor
(``hasMore``, ``afterCursor`` {startDate, id}) with a page size of 50 by default, at most 200, and at most 20
when ``select`` names a heavy block (transcription, overview, insights); larger sizes are clamped. An
administrator sees every follow-up, anyone else only calls they took part in. Errors go out in the REST 3.0
envelope with the codes the pages list; message texts are the pages' where they give one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..calls import Caller, Params
from ..errors import V3_ENTITY_NOT_FOUND, V3_VALIDATION, SandboxRestError
from ..state import Method, PortalState, method_table


class Code:
    INVALID_DATE_RANGE = "invalid_date_range"
    INVALID_SELECT_FIELD = "invalid_select_field"
    INVALID_ORDER = "invalid_order"
    INVALID_PAGINATION = "invalid_pagination"
    ACCESS_DENIED = "access_denied"
    UNKNOWN_PROPERTY = "BITRIX_REST_V3_EXCEPTION_UNKNOWNDTOPROPERTYEXCEPTION"
    INVALID_SELECT = "BITRIX_REST_V3_EXCEPTION_INVALIDSELECTEXCEPTION"
    FIELD_NOT_FOUND = "BITRIX_REST_V3_REALISATION_EXCEPTION_FIELDNOTFOUNDEXCEPTION"


class Msg:
    DATE_RANGE_REQUIRED = "Incorrect date range: both from and to are required"
    DATE_RANGE_FORMAT = "Incorrect date range: from and to must be ISO 8601 dates"
    DATE_RANGE_ORDER = "Incorrect date range: from must be less than or equal to to"
    INVALID_SELECT_FIELD = "Invalid field in select: {path}"
    INVALID_ORDER = "Incorrect parameter order"
    INVALID_PAGINATION = "Incorrect parameter pagination"
    VALIDATION = "Error during request object validation"
    REQUIRED = "Mandatory field `{name}` is not specified"
    NOT_INTEGER = "Field `{name}` must be an integer"
    NOT_STRING = "Field `{name}` must be a string"
    MENTION_FORMAT = "Field `mentionFormat` must be one of: bb, html, none"
    CALL_NOT_FOUND = "Call not found"
    NO_ACCESS = "No access to Follow-up data"
    UNKNOWN_PROPERTY = "Unknown field `{name}` for object `DtoFieldDto`"
    INVALID_SELECT = "Unable to recognize select expression `{select}`"
    FIELD_NOT_FOUND = "Field `{name}` not found"


BASIC_FIELDS = ("callId", "callType", "initiatorId", "startDate", "endDate", "durationSeconds")
ROOT_FIELDS = (
    *BASIC_FIELDS,
    *("uuid", "language", "version", "participants", "outcomes", "createdAt", "tracks"),
    *("transcription", "overview", "summary", "insights", "evaluation"),
)
BLOCK_PATHS = {  # fields.md "Which Fields Can Be Passed in Select"
    "transcription": ("language", "segments"),
    "overview": ("topic", "detailedTakeaways", "meetingType", "agenda", "agreements", "actionItems", "meetings"),
    "summary": (),
    "insights": (
        *("speakerEvaluationAvailable", "speakerAnalysis", "meetingStrengths", "meetingWeaknesses"),
        *("speechStyleInfluence", "engagementLevel", "areasOfResponsibility", "finalRecommendations"),
    ),
    "evaluation": ("efficiencyValue", "calendar", "criteria"),
}
SELECTABLE = frozenset(ROOT_FIELDS) | {f"{block}.{sub}" for block, subs in BLOCK_PATHS.items() for sub in subs}
HEAVY_BLOCKS = frozenset({"transcription", "overview", "insights"})
DEFAULT_LIMIT, MAX_LIMIT, MAX_HEAVY_LIMIT = 50, 200, 20
MENTION_FORMATS = ("bb", "html", "none")


# --- field descriptions (call.followup.field.list: the docs' metadata) ---

DESCRIPTION_KEYS = (
    *("name", "type", "title", "description", "validationRules", "requiredGroups"),
    *("filterable", "sortable", "editable", "multiple", "elementType"),
)
_FIELD_DOCS: tuple[tuple[str, str, str, str | None], ...] = (  # name, type, description, element type of a list
    ("callId", "int", "Bitrix24 call identifier (b_call.ID). Always present.", None),
    ("callType", "int", "Call type: 1 = instant ad-hoc, 2 = permanent conference room, 3 = large room.", None),
    ("initiatorId", "int", "User id of who initiated the call.", None),
    ("startDate", "string", "ISO 8601 UTC timestamp when the call started.", None),
    (
        "endDate",
        "string",
        "ISO 8601 UTC timestamp when the call ended. Null while the call is still in progress.",
        None,
    ),
    ("durationSeconds", "int", "Total call duration in seconds (endDate - startDate).", None),
    ("uuid", "string", "Opaque UUID of the call session. Opt-in: list this in `select` to receive it.", None),
    (
        "language",
        "string",
        "Detected transcription language (BCP-47 / ISO 639-1, for example ru or en). Null when there is no "
        "transcription.",
        None,
    ),
    ("version", "int", "Maximum schema version across all stored outcome blocks for this call.", None),
    ("participants", "array", "Call participants, enriched with display data from user profiles.", "ParticipantDto"),
    (
        "outcomes",
        "array",
        "Names of outcome blocks present for this call: transcription, overview, summary, insights, evaluation.",
        "string",
    ),
    ("createdAt", "string", "ISO 8601 UTC timestamp of the most recently stored outcome record for this call.", None),
    ("tracks", "array", "Call recordings / tracks with download URLs. Opt-in via `select`.", "TrackDto"),
    ("transcription", "object", "Time-ordered transcription of the call with per-segment speaker attribution.", None),
    ("overview", "object", "AI overview of the meeting: topic, agenda, agreements, action items, takeaways.", None),
    ("summary", "object", "Segmented summary of the call by topic chunks.", None),
    (
        "insights",
        "object",
        "AI insights: per-speaker analysis (CIS only), meeting strengths/weaknesses, recommendations.",
        None,
    ),
    ("evaluation", "object", "Meeting efficiency evaluation: overall score and individual evaluation criteria.", None),
)
FIELD_DESCRIPTIONS: dict[str, dict[str, Any]] = {
    name: {
        "name": name,
        "type": kind,
        "title": name,
        "description": description,
        "validationRules": [],
        "requiredGroups": [],
        "filterable": name == "startDate",  # filter.startDate (and filter.participantId, not a root field)
        "sortable": name == "startDate",  # order.startDate
        "editable": False,
        "multiple": element is not None,
        "elementType": element,
    }
    for name, kind, description, element in _FIELD_DOCS
}


# --- seeded follow-ups ---

_MENTION = re.compile(r"\{u(\d+)\}")


@dataclass
class FollowUp:
    """One call's follow-up. AI texts hold ``{uN}`` where user N is mentioned (rendered per mentionFormat)."""

    call_id: int
    call_type: int
    initiator_id: int
    start: datetime
    duration: int | None  # None: the call is still in progress
    participants: list[dict[str, Any]]
    language: str | None
    blocks: dict[str, dict[str, Any] | None]
    tracks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def user_ids(self) -> set[int]:
        return {participant["userId"] for participant in self.participants}

    def as_item(self) -> dict[str, Any]:
        """Every root field, in the docs' order; blocks that are not ready are null."""
        end = self.start + timedelta(seconds=self.duration) if self.duration is not None else None
        outcomes = [name for name in BLOCK_PATHS if self.blocks.get(name) is not None]
        return {
            "callId": self.call_id,
            "callType": self.call_type,
            "initiatorId": self.initiator_id,
            "startDate": _iso(self.start),
            "endDate": _iso(end) if end else None,
            "durationSeconds": self.duration,
            "uuid": f"bb085e5d-5160-4a63-9ac4-{self.call_id:012d}",
            "language": self.language,
            "version": 3 if outcomes else None,
            "participants": self.participants,
            "outcomes": outcomes,
            "createdAt": _iso(end + timedelta(minutes=23)) if end and outcomes else None,
            "tracks": self.tracks,
            **{name: self.blocks.get(name) for name in BLOCK_PATHS},
        }


@dataclass
class FollowUpTables:
    followups: dict[int, FollowUp] = field(default_factory=lambda: seed_followups())


_PEOPLE = {1: "Admin Sandbox", 2: "Olivia Operator", 3: "Ian Inactive"}
_TOPICS = (
    ("Sprint planning", "Deploy the MVP build by Friday", "{u2} deploys the MVP build by Friday"),
    ("Client onboarding review", "Send the onboarding checklist to Daisy LLC", "{u1} sends the checklist to Daisy LLC"),
    ("Pricing call with Acme GmbH", "Offer the annual plan at 10% off", "{u2} prepares the annual-plan offer"),
    ("Support escalation", "Call the client back within 24 hours", "{u2} calls the client back within 24 hours"),
    ("Quarterly pipeline review", "Close the three stalled deals this month", "{u1} reviews the stalled deals"),
)
SEED_COUNT = 36
SEED_FIRST_CALL_ID = 12301


def seed_followups() -> dict[int, FollowUp]:
    """36 follow-ups from 2026-01-05 on, about one a day. Calls 12311 and 12312 start at the same second (a
    cursor must tell them apart by id). Every fifth has only its transcript and summary, and the newest is
    still in progress with no AI blocks. User 2 took part in two calls of three; user 1 (admin) in all."""
    followups: dict[int, FollowUp] = {}
    base = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for index in range(SEED_COUNT):
        call_id = SEED_FIRST_CALL_ID + index
        start = base + timedelta(hours=21 * index if index != 11 else 21 * 10)
        people = [1, 2] if index % 3 else [1, 3]
        in_progress = index == SEED_COUNT - 1
        duration = None if in_progress else 600 + 60 * (index % 7)
        topic, agreement, action = _TOPICS[index % len(_TOPICS)]
        participants = [
            {"userId": uid, "name": _PEOPLE[uid], "avatar": f"/upload/avatar/{uid}.png", "talkedSeconds": 240 + uid}
            for uid in people
        ]
        blocks: dict[str, dict[str, Any] | None] = dict.fromkeys(BLOCK_PATHS)
        if not in_progress:
            blocks["transcription"] = _transcription(people, topic)
            blocks["summary"] = {
                "segments": [
                    {"start": "00:00:00", "end": "00:05:00", "title": topic, "summary": f"{{u{people[0]}}} opened."},
                    {"start": "00:05:00", "end": "00:10:00", "title": "Next steps", "summary": agreement + "."},
                ]
            }
            if index % 5 != 4:
                blocks |= _full_analysis(people, topic, agreement, action, index)
        tracks = []
        if duration is not None:
            tracks.append(
                {
                    "trackId": 5000 + index,
                    "type": "video",
                    "fileId": 9500 + index,
                    "diskFileId": 9700 + index,
                    "duration": duration,
                    "fileSize": 1_048_576 * (3 + index % 4),
                    "fileName": f"call-{call_id}.mp4",
                    "mimeType": "video/mp4",
                    "callId": call_id,
                    "relUrl": f"/disk/downloadFile/{9700 + index}/",
                    "url": f"https://sandbox.bitrix24.invalid/disk/downloadFile/{9700 + index}/",
                    "dateCreate": _iso(start + timedelta(seconds=duration)),
                }
            )
        language = None if in_progress else "en"
        followups[call_id] = FollowUp(
            call_id, 1 + index % 3, people[0], start, duration, participants, language, blocks, tracks
        )
    return followups


def _transcription(people: list[int], topic: str) -> dict[str, Any]:
    first, second = people
    lines = (
        (first, f"Let's start: {topic.lower()}."),
        (second, f"I have the numbers ready, {{u{first}}} can comment after me."),
        (first, "Good, then we agree on the next steps."),
    )
    return {
        "language": "en",
        "segments": [
            {
                "userId": uid,
                "userName": _PEOPLE[uid],
                "start": f"00:0{2 * n}:00",
                "end": f"00:0{2 * n + 1}:30",
                "text": text,
            }
            for n, (uid, text) in enumerate(lines)
        ],
    }


def _full_analysis(people: list[int], topic: str, agreement: str, action: str, index: int) -> dict[str, Any]:
    mention_less = _MENTION.sub("", action).strip()
    criteria = {
        "goal": {"value": True, "criteria": "The meeting had a clear goal", "title": "Goal"},
        "timing": {"value": index % 2 == 0, "criteria": "The meeting kept to time", "title": "Timing"},
    }
    return {
        "overview": {
            "topic": topic,
            "detailedTakeaways": f"The team discussed {topic.lower()} and agreed: {agreement.lower()}.",
            "meetingType": {"explanation": "A recurring working meeting", "typeTag": "working", "title": "Working"},
            "agenda": {"explanation": topic, "quote": "Let's start."},
            "agreements": [{"agreement": agreement, "quote": "Then we agree on the next steps."}],
            "actionItems": [{"actionItem": action, "actionItemMentionLess": mention_less, "quote": "..."}],
            "meetings": [
                {"meeting": f"Follow-up with {{u{people[1]}}} next week", "meetingMentionLess": "Follow-up next week"}
            ],
        },
        "insights": {
            "speakerEvaluationAvailable": False,
            "speakerAnalysis": [],
            "meetingStrengths": [{"strengthTitle": "Clear goal", "strengthExplanation": "The agenda was stated."}],
            "meetingWeaknesses": [{"weaknessTitle": "Long", "weaknessExplanation": "Some points were repeated."}],
            "speechStyleInfluence": "Calm and factual.",
            "engagementLevel": "High",
            "areasOfResponsibility": action,
            "finalRecommendations": "Send the agenda beforehand.",
        },
        "evaluation": {
            "efficiencyValue": 60 + index % 40,
            "calendar": {"overhead": index % 4 == 0},
            "criteria": criteria,
        },
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _cursor_date(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")  # as the docs' afterCursor shows it


def _parse_date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _render_mentions(value: Any, mention_format: str) -> Any:
    if isinstance(value, str):
        return _MENTION.sub(lambda match: _mention(int(match.group(1)), mention_format), value)
    if isinstance(value, dict):
        return {key: _render_mentions(item, mention_format) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_mentions(item, mention_format) for item in value]
    return value


def _mention(user_id: int, mention_format: str) -> str:
    name = _PEOPLE.get(user_id, f"User {user_id}")
    if mention_format == "bb":
        return f"[USER={user_id}]{name}[/USER]"
    if mention_format == "html":
        return f'<a href="/company/personal/user/{user_id}/">{name}</a>'
    return name


# --- errors ---


def _error(code: str, message: str, status: int = 400) -> SandboxRestError:
    return SandboxRestError(code, message, status)


def _check(problems: list[dict[str, str]]) -> None:
    """Raise the request-validation error listing every problem found, if any."""
    if problems:
        raise SandboxRestError(V3_VALIDATION, Msg.VALIDATION, 400, validation=problems)


def _integer_problem(params: Params, key: str, where: str, *, required: bool) -> dict[str, str] | None:
    value = params.get(key)
    if value is None:
        return {"field": where, "message": Msg.REQUIRED.format(name=where)} if required else None
    if type(value) is not int:
        return {"field": where, "message": Msg.NOT_INTEGER.format(name=where)}
    return None


def _mention_problem(params: Params) -> dict[str, str] | None:
    value = params.get("mentionFormat")
    if value is None or value in MENTION_FORMATS:
        return None
    return {"field": "mentionFormat", "message": Msg.MENTION_FORMAT}


# --- select ---


def _followup_select(params: Params) -> list[str] | None:
    """The requested paths, or None when ``select`` was not passed."""
    select = params.get("select")
    if select is None:
        return None
    if not isinstance(select, list) or not all(isinstance(path, str) for path in select):
        raise _error(Code.INVALID_SELECT_FIELD, Msg.INVALID_SELECT_FIELD.format(path=json.dumps(select)))
    for path in select:
        if path not in SELECTABLE:
            raise _error(Code.INVALID_SELECT_FIELD, Msg.INVALID_SELECT_FIELD.format(path=path))
    return select


def _project(item: dict[str, Any], select: list[str]) -> dict[str, Any]:
    """Only the selected fields, plus callId; a dot path keeps that part of its block."""
    picked: dict[str, Any] = {"callId": item["callId"]}
    for path in select or BASIC_FIELDS:
        root, _, sub = path.partition(".")
        block = item[root]
        if not sub or block is None:
            picked[root] = block
        elif picked.get(root) is not block:  # unless the whole block is already in
            picked.setdefault(root, {})[sub] = block.get(sub)
    return {name: picked[name] for name in ROOT_FIELDS if name in picked}


def _is_admin(portal: PortalState, caller: Caller) -> bool:
    user = portal.users.get(caller.user_id)
    return bool(user and user.is_admin)


def _visible(portal: PortalState, caller: Caller, followup: FollowUp) -> bool:
    """An administrator sees every follow-up; anyone else those of calls they took part in."""
    return _is_admin(portal, caller) or caller.user_id in followup.user_ids


# --- handlers ---


def followup_list(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    _check([p for p in (_filter_participant_problem(params), _mention_problem(params)) if p])
    start_from, start_to = _date_range(params.get("filter"))
    select = _followup_select(params)
    descending = _descending(params.get("order"))
    limit, cursor = _pagination(params.get("pagination"), select or [])
    participant = params["filter"].get("participantId")
    if not _is_admin(portal, caller):
        participant = caller.user_id  # "for a regular user, the filter is forcibly restricted to their identifier"

    def key(followup: FollowUp) -> tuple[datetime, int]:
        return followup.start, followup.call_id

    rows = sorted(
        (
            followup
            for followup in portal.state(FollowUpTables).followups.values()
            if start_from <= followup.start <= start_to
            # A regular user's participant is forced to themselves above: what matches, they may see.
            and (participant is None or participant in followup.user_ids)
        ),
        key=key,
        reverse=descending,
    )
    if cursor is not None:
        rows = [row for row in rows if (key(row) < cursor if descending else key(row) > cursor)]
    page, has_more = rows[:limit], len(rows) > limit
    mention_format = params.get("mentionFormat") or "bb"
    return {
        "items": [_render_mentions(_project(row.as_item(), select or []), mention_format) for row in page],
        "hasMore": has_more,
        "afterCursor": {"startDate": _cursor_date(page[-1].start), "id": page[-1].call_id} if has_more else None,
    }


def _filter_participant_problem(params: Params) -> dict[str, str] | None:
    found = params.get("filter")
    if not isinstance(found, dict):
        return None
    return _integer_problem(found, "participantId", "filter.participantId", required=False)


def _date_range(found: Any) -> tuple[datetime, datetime]:
    period = found.get("startDate") if isinstance(found, dict) else None
    raw = (period.get("from"), period.get("to")) if isinstance(period, dict) else (None, None)
    if any(value in (None, "") for value in raw):
        raise _error(Code.INVALID_DATE_RANGE, Msg.DATE_RANGE_REQUIRED)
    start_from, start_to = _parse_date(raw[0]), _parse_date(raw[1])
    if start_from is None or start_to is None:
        raise _error(Code.INVALID_DATE_RANGE, Msg.DATE_RANGE_FORMAT)
    if start_from > start_to:
        raise _error(Code.INVALID_DATE_RANGE, Msg.DATE_RANGE_ORDER)
    return start_from, start_to


def _descending(order: Any) -> bool:
    """Newest first unless ``order`` is ``{"startDate": "asc"}``; anything but that shape is invalid_order."""
    direction = order.get("startDate", "desc") if isinstance(order, dict) and set(order) <= {"startDate"} else None
    if order is not None and direction not in ("asc", "desc"):
        raise _error(Code.INVALID_ORDER, Msg.INVALID_ORDER)
    return direction != "asc"


def _pagination(pagination: Any, select: list[str]) -> tuple[int, tuple[datetime, int] | None]:
    """The page size (clamped to the maximum) and the position after which the page starts."""
    if pagination is None:
        pagination = {}
    if not isinstance(pagination, dict):
        raise _error(Code.INVALID_PAGINATION, Msg.INVALID_PAGINATION)
    limit = pagination.get("limit", DEFAULT_LIMIT)
    if type(limit) is not int or limit < 1:
        raise _error(Code.INVALID_PAGINATION, Msg.INVALID_PAGINATION)
    heavy = any(path.partition(".")[0] in HEAVY_BLOCKS for path in select)
    limit = min(limit, MAX_HEAVY_LIMIT if heavy else MAX_LIMIT)
    cursor = pagination.get("afterCursor")
    if cursor is None:
        return limit, None
    moment = _parse_date(cursor.get("startDate")) if isinstance(cursor, dict) else None
    call_id = cursor.get("id") if isinstance(cursor, dict) else None
    if moment is None or type(call_id) is not int:
        raise _error(Code.INVALID_PAGINATION, Msg.INVALID_PAGINATION)
    return limit, (moment, call_id)


def followup_get(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    _check([p for p in (_integer_problem(params, "callId", "callId", required=True), _mention_problem(params)) if p])
    select = _followup_select(params)
    followup = portal.state(FollowUpTables).followups.get(params["callId"])
    if followup is None:
        raise _error(V3_ENTITY_NOT_FOUND, Msg.CALL_NOT_FOUND)
    if not _visible(portal, caller, followup):
        raise _error(Code.ACCESS_DENIED, Msg.NO_ACCESS, 403)
    item = followup.as_item()
    shown = item if select is None else _project(item, select)
    return {"item": _render_mentions(shown, params.get("mentionFormat") or "bb")}


def _description_select(params: Params) -> tuple[str, ...]:
    select = params.get("select")
    if select is None:
        return DESCRIPTION_KEYS
    if not isinstance(select, list) or not all(isinstance(key, str) for key in select):
        raise _error(Code.INVALID_SELECT, Msg.INVALID_SELECT.format(select=json.dumps(select)))
    for key in select:
        if key not in DESCRIPTION_KEYS:
            raise _error(Code.UNKNOWN_PROPERTY, Msg.UNKNOWN_PROPERTY.format(name=key))
    return tuple(key for key in DESCRIPTION_KEYS if key in select) or DESCRIPTION_KEYS


def _describe(name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: FIELD_DESCRIPTIONS[name][key] for key in keys}


def field_list(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    keys = _description_select(params)
    return {"items": [_describe(name, keys) for name in FIELD_DESCRIPTIONS]}


def field_get(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    name = params.get("name")
    if name is None or name == "":
        _check([{"field": "name", "message": Msg.REQUIRED.format(name="name")}])
    if not isinstance(name, str):
        _check([{"field": "name", "message": Msg.NOT_STRING.format(name="name")}])
    keys = _description_select(params)
    if name not in FIELD_DESCRIPTIONS:
        raise _error(Code.FIELD_NOT_FOUND, Msg.FIELD_NOT_FOUND.format(name=name))
    return {"item": _describe(name, keys)}


METHODS = method_table(
    {
        "call.followup.list": Method(followup_list, scope="call", api=3),
        "call.followup.get": Method(followup_get, scope="call", api=3),
        "call.followup.field.list": Method(field_list, scope="call", api=3),
        "call.followup.field.get": Method(field_get, scope="call", api=3),
    }
)
