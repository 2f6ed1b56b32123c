"""voximplant.statistic.get: the portal's call history, paged, filtered and sorted as vi_rest statisticGet does.

The rows are the shared statistics table (calls finished through telephony.externalCall.finish) plus a seeded
history of ``config.seed_calls`` built-in and external calls over the last 60 days, made on first use and
deterministic for a given clock. Ids 1..seed_calls belong to the seeded rows, so the table stays in id order.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from operator import attrgetter, itemgetter
from typing import Any, Literal, TypeVar

from ..calls import LIST_LIMIT, Caller, Page, Params
from ..errors import ACCESS_DENIED
from ..php import php_float, php_int, php_str, upper_keys
from ..records import APP_ID, APP_NAME, CrmEntity, StatisticRecord
from ..state import Method, PortalState, method_table
from .users import Access, allowed_user_ids

T = TypeVar("T")

# --- the table's fields, as FILTER and SORT name them ---

Kind = Literal["int", "float", "str", "date"]


def _rest_app_name(record: StatisticRecord) -> str | None:
    return APP_NAME if record.rest_app_id == APP_ID else None


FIELDS: dict[str, tuple[Callable[[StatisticRecord], Any], Kind]] = {
    "ID": (attrgetter("id"), "int"),
    "CALL_ID": (attrgetter("call_id"), "str"),
    "EXTERNAL_CALL_ID": (attrgetter("external_call_id"), "str"),
    "CALL_CATEGORY": (attrgetter("call_category"), "str"),
    "PORTAL_USER_ID": (attrgetter("portal_user_id"), "int"),
    "PORTAL_NUMBER": (attrgetter("portal_number"), "str"),
    "PHONE_NUMBER": (attrgetter("phone_number"), "str"),
    "INCOMING": (attrgetter("incoming"), "int"),  # the DB column behind CALL_TYPE
    "CALL_DURATION": (attrgetter("call_duration"), "int"),
    "CALL_START_DATE": (attrgetter("call_start_date"), "date"),
    "CALL_LOG": (attrgetter("call_log"), "str"),
    "CALL_RECORD_URL": (attrgetter("record_url"), "str"),
    "CALL_VOTE": (attrgetter("call_vote"), "int"),
    "COST": (attrgetter("cost"), "float"),
    "COST_CURRENCY": (attrgetter("cost_currency"), "str"),
    "CALL_FAILED_CODE": (attrgetter("call_failed_code"), "str"),
    "CALL_FAILED_REASON": (attrgetter("call_failed_reason"), "str"),
    "CRM_ENTITY_TYPE": (attrgetter("crm_entity_type"), "str"),
    "CRM_ENTITY_ID": (attrgetter("crm_entity_id"), "int"),
    "CRM_ACTIVITY_ID": (attrgetter("crm_activity_id"), "int"),
    "REST_APP_ID": (attrgetter("rest_app_id"), "int"),
    "REST_APP_NAME": (_rest_app_name, "str"),
    "TRANSCRIPT_ID": (attrgetter("transcript_id"), "int"),
    "TRANSCRIPT_PENDING": (attrgetter("transcript_pending"), "str"),
    "SESSION_ID": (attrgetter("session_id"), "int"),
    "REDIAL_ATTEMPT": (attrgetter("redial_attempt"), "int"),
    "COMMENT": (attrgetter("comment"), "str"),
    "RECORD_DURATION": (attrgetter("record_duration"), "int"),
    # The one CRM binding the sandbox keeps stands in for the CRM_BINDINGS reference.
    "CRM_BINDINGS.ENTITY_TYPE": (attrgetter("crm_entity_type"), "str"),
    "CRM_BINDINGS.ENTITY_ID": (attrgetter("crm_entity_id"), "int"),
}
FILTER_ALIASES = {"CALL_TYPE": "INCOMING"}
#: vi_rest $allowedFilterOperations; any other prefix drops the key.
OPERATIONS = frozenset({"", "!", "<", "<=", ">", ">=", "><", "!><", "?", "=", "!=", "%", "!%"})
_KEY = re.compile(r"^([^a-zA-Z]*)(.*)$", re.DOTALL)


def statistic_row(record: StatisticRecord) -> dict[str, Any]:
    """A row as statisticGet sends it: DB strings, CALL_TYPE for INCOMING, ISO dates, RECORD_FILE_ID; no
    CALL_LOG, CALL_STATUS or other internal columns (disagreements.md #12)."""
    return {
        "ID": str(record.id),
        "PORTAL_USER_ID": str(record.portal_user_id),
        "PORTAL_NUMBER": record.portal_number,
        "PHONE_NUMBER": record.phone_number,
        "CALL_ID": record.call_id,
        "EXTERNAL_CALL_ID": record.external_call_id,
        "CALL_CATEGORY": record.call_category,
        "CALL_DURATION": str(record.call_duration),
        "CALL_START_DATE": record.call_start_date.astimezone(UTC).isoformat(timespec="seconds"),
        "CALL_RECORD_URL": record.record_url,
        "CALL_VOTE": _db(record.call_vote),
        "COST": f"{record.cost:.4f}",
        "COST_CURRENCY": record.cost_currency,
        "CALL_FAILED_CODE": record.call_failed_code,
        "CALL_FAILED_REASON": record.call_failed_reason,
        "CRM_ENTITY_TYPE": record.crm_entity_type,
        "CRM_ENTITY_ID": _db(record.crm_entity_id),
        "CRM_ACTIVITY_ID": _db(record.crm_activity_id),
        "REST_APP_ID": _db(record.rest_app_id),
        "REST_APP_NAME": _rest_app_name(record),
        "TRANSCRIPT_ID": _db(record.transcript_id),
        "TRANSCRIPT_PENDING": record.transcript_pending,
        "SESSION_ID": _db(record.session_id),
        "REDIAL_ATTEMPT": _db(record.redial_attempt),
        "COMMENT": record.comment,
        "RECORD_DURATION": _db(record.record_duration),
        "RECORD_FILE_ID": record.call_record_id or None,
        "CALL_TYPE": str(record.incoming),
    }


def _db(value: int | None) -> str | None:
    return None if value is None else str(value)


# --- state: who may view whose calls, and the seeded history ---


@dataclass
class StatisticsAccess:
    """Each user's "Call statistics - View" permission (default: none). "own" restricts rows to the caller's."""

    view: dict[int, Access] = field(default_factory=lambda: {1: "all", 2: "own", 4: "own", 5: "own"})


@dataclass
class SeededHistory:
    made: bool = False


def history(portal: PortalState) -> list[StatisticRecord]:
    """Every statistic row in id order: the seeded history (made here on first use) and the finished calls."""
    with portal.lock:
        state = portal.state(SeededHistory)
        if not state.made:
            finished = dict(portal.statistics)
            portal.statistics.clear()
            for record in seed_history(portal.config.seed_calls, portal.clock(), portal.crm):
                portal.statistics[record.call_id] = record
            portal.statistics.update(finished)
            state.made = True
        return list(portal.statistics.values())


# --- voximplant.statistic.get ---


def statistic_get(portal: PortalState, params: Params, caller: Caller) -> Page:
    level = portal.state(StatisticsAccess).view.get(caller.user_id, "none")
    if level == "none":
        raise ACCESS_DENIED.exc()
    start = php_int(params.get("start", 0))  # CRestServer takes the page offset before the method sees params
    params = upper_keys(params)
    raw_filter = params.get("FILTER")
    caller_filter = _filter(raw_filter) if isinstance(raw_filter, dict) else None
    conditions = [caller_filter] if caller_filter else []
    allowed = allowed_user_ids(level, caller.user_id)
    if allowed is not None:  # source: $arFilter['PORTAL_USER_ID'] = $allowedUserIds, beside the caller's own keys
        conditions.append(_condition("=", "PORTAL_USER_ID", sorted(allowed)))
    sort = _sort(params.get("SORT"), params.get("ORDER"))
    if sort is not None and params.get("SORT") == "ID" and params.get("ORDER") == "ASC":
        sort = None  # the table is in id order already: keyset pages (start=-1) stop at 50 rows

    records = history(portal)
    records = records[_first_candidate(records, raw_filter) :]
    matches = (record for record in records if all(test(record) for test in conditions))
    offset = start if start >= 0 else None
    first = offset or 0
    if sort is None and offset is None:  # no count: stop at the page (the keyset-paging fast path)
        page = [record for _, record in zip(range(first + LIST_LIMIT), matches, strict=False)][first:]
        return Page.of([statistic_row(r) for r in page], None, 0)
    found = list(matches)
    if sort is not None:
        key, descending = sort
        found.sort(key=key, reverse=descending)
    page = found[first : first + LIST_LIMIT]
    return Page.of([statistic_row(r) for r in page], offset, len(found) if offset is not None else 0)


Condition = Callable[[StatisticRecord], bool]


def _filter(raw: Mapping[Any, Any]) -> Condition | None:
    """checkStatisticFilter, then the ORM: keys upper-cased; a key's leading non-letters are its operation, and
    an unknown operation or field drops the key; an object value is a sub-filter; LOGIC OR joins with "or"."""
    tests: list[Condition] = []
    any_of = False
    for raw_key, value in raw.items():
        key = php_str(raw_key).upper()
        if key == "LOGIC":
            any_of = php_str(value).upper() == "OR"
            continue
        if isinstance(value, dict):
            sub = _filter(value)
            if sub:
                tests.append(sub)
            continue
        parts = _KEY.fullmatch(key)
        operation, name = parts.groups() if parts else ("?!", "")
        name = FILTER_ALIASES.get(name, name)
        if operation in OPERATIONS and name in FIELDS:
            tests.append(_condition(operation, name, value))
    if not tests:
        return None
    if any_of:
        return lambda record: any(test(record) for test in tests)
    return lambda record: all(test(record) for test in tests)


def _condition(operation: str, name: str, value: Any) -> Condition:
    """One filter key. Comparisons never match a NULL column; a negated one does (NULL OR NOT (...))."""
    get, kind = FIELDS[name]
    negate = operation.startswith("!")
    base = operation.removeprefix("!") or "="
    raw_values = value if isinstance(value, list) else [value]
    match_null = base == "=" and any(item is None or item == "" for item in raw_values)
    if base in ("%", "?"):  # LIKE '%value%' on the column's text
        texts = [php_str(item).lower() for item in raw_values if item is not None and item != ""]
    wanted = [_typed(item, kind) for item in raw_values if item is not None and item != ""]
    wanted = [item for item in wanted if item is not None]

    def compare(stored: Any) -> bool:
        if base in ("%", "?"):
            text = php_str(stored).lower()  # MySQL's case-insensitive collation
            return any(item in text for item in texts)
        if kind == "str":
            stored = stored.lower()
        if base == "=":
            return stored in wanted
        if base == "><":
            return len(wanted) == 2 and wanted[0] <= stored <= wanted[1]
        return any(_ORDERED[base](stored, item) for item in wanted)

    def test(record: StatisticRecord) -> bool:
        stored = get(record)
        if stored is None or stored == "":
            hit = match_null
        else:
            try:
                hit = compare(stored)
            except TypeError:  # e.g. a naive and an aware date
                hit = False
        return hit != negate

    return test


_ORDERED: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda stored, item: stored > item,
    ">=": lambda stored, item: stored >= item,
    "<": lambda stored, item: stored < item,
    "<=": lambda stored, item: stored <= item,
}


def _typed(value: Any, kind: Kind) -> Any:
    """A filter value as the column compares it; None (SQL NULL) when it cannot be read as one."""
    if kind == "int" or kind == "float":
        return php_float(value)
    if kind == "date":
        return _parse_date(value)
    return php_str(value).lower()


def _parse_date(value: Any) -> datetime | None:
    """CRestUtil::unConvertDateTime: ISO 8601; a value without an offset is in the portal's time zone (UTC)."""
    try:
        parsed = datetime.fromisoformat(php_str(value).strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _first_candidate(records: list[StatisticRecord], raw_filter: Any) -> int:
    """Where a top-level >ID / >=ID bound lets the scan start (the table is in id order)."""
    if not isinstance(raw_filter, dict) or php_str(raw_filter.get("LOGIC", "")).upper() == "OR":
        return 0
    start = 0
    for raw_key, value in raw_filter.items():
        key = php_str(raw_key).upper()
        if key in (">ID", ">=ID") and isinstance(value, int | float | str) and php_str(value).strip():
            bound = php_float(value)
            search = bisect_right if key == ">ID" else bisect_left
            start = max(start, search(records, bound, key=attrgetter("id")))
    return start


def _sort(sort: Any, order: Any) -> tuple[Callable[[StatisticRecord], Any], bool] | None:
    """SORT must name a field of the table (CALL_TYPE is not one) and ORDER be exactly ASC or DESC (no upper-
    casing); otherwise the rows come unsorted, in id order (disagreements.md #12). NULLs sort first."""
    if not isinstance(sort, str) or order not in ("ASC", "DESC") or sort not in FIELDS:
        return None
    get, kind = FIELDS[sort]

    def key(record: StatisticRecord) -> tuple[bool, Any]:
        value = get(record)
        if value is None:
            return (False, 0)
        return (True, value.lower() if kind == "str" else value)

    return key, order == "DESC"


# --- the seeded history ---

_DAY = 86_400
_HISTORY_DAYS = 60
# Activity, file and transcript ids of seeded rows start here, clear of the ids the portal hands out live.
_SEEDED_IDS = 100_000


@dataclass(frozen=True)
class _Line:
    number: str  # PORTAL_NUMBER
    currency: str
    rate: float  # per started minute of an answered outgoing call
    utc_offset: int  # hours: the office the line serves
    weight: int
    via_app: bool = False  # an external line of the sandbox app (telephony.externalCall.*)


_LINES = (
    _Line("14155550100", "USD", 0.02, -5, 30),  # rented numbers
    _Line("442079460000", "GBP", 0.015, 0, 15),
    _Line("74993221100", "RUB", 1.2, 3, 15),
    _Line("reg133788", "EUR", 0.0, 1, 25),  # the office PBX over SIP
    _Line("100200", "USD", 0.01, 1, 15, via_app=True),  # a PBX logging calls through the app
)
_LINE_WEIGHTS = list(accumulate(line.weight for line in _LINES))  # cumulative weights, for _pick
# (user id, weight); user 3 left a month ago, so only older calls are theirs.
_USERS = ((2, 35), (4, 25), (5, 20), (1, 10), (3, 10))
_USER_IDS = [user for user, _ in _USERS]
_USER_WEIGHTS = list(accumulate(weight for _, weight in _USERS))
_INNER_NUMBERS = ("100", "101", "103", "104")
# CALL_TYPE: 1 outgoing, 2 incoming, 3 incoming redirected, 4 callback, 5 info call.
_TYPES = (1, 2, 3, 4, 5)
_TYPE_WEIGHTS = list(accumulate((40, 40, 8, 6, 6)))
_OUTGOING_CODES = ("200", "486", "480", "603", "603-S", "404", "402", "503")
_OUTGOING_WEIGHTS = list(accumulate((62, 10, 8, 7, 6, 3, 2, 2)))
_INCOMING_CODES = ("200", "304", "603-S", "486")
_INCOMING_WEIGHTS = list(accumulate((68, 27, 3, 2)))
_REASONS = {
    "200": "",
    "304": "Missed call",
    "486": "Busy here",
    "480": "Temporarily unavailable",
    "603": "Decline",
    "603-S": "Decline self",
    "404": "Invalid number",
    "402": "Insufficient funds",
    "503": "Service unavailable",
}
# Hours east of UTC whose midnights get calls around them, so time-zone bucketing has edges to get right.
_MIDNIGHT_ZONES = (0, 3, -5, 1, 9, -8)
_COMMENTS = ("Asked for a callback", "Wrong number", "Interested in the annual plan")
_CRM_TYPES = ("CONTACT", "LEAD", "COMPANY")
_VOTES = (3, 4, 4, 5, 5, 5, 1, 2)


def seed_history(count: int, now: float, crm: Mapping[tuple[str, int], CrmEntity]) -> list[StatisticRecord]:
    """``count`` calls over the last 60 days before ``now``, ids 1..count in time order; the same for the same
    ``count`` and ``now`` (to the second). Plain draws from one generator keep 20,000 rows well under a second."""
    rng = random.Random(f"b24-sandbox-statistics-{count}")
    now = math.floor(now)
    today = now - now % _DAY
    known = sorted(crm.values(), key=lambda entity: (entity.type, entity.id))
    clients: list[tuple[str, CrmEntity | None]] = [("".join(filter(str.isdigit, e.phones[0])), e) for e in known]
    for prefix, digits, how_many in (("1906", 7, 40), ("4420", 8, 20), ("7916", 7, 20)):
        clients += [(f"{prefix}{rng.randrange(10 ** (digits - 1), 10**digits)}", None) for _ in range(how_many)]
    draw = rng.random
    calls = []
    for _ in range(count):
        line = _pick(_LINES, _LINE_WEIGHTS, draw())
        day = today - int(draw() * _HISTORY_DAYS) * _DAY
        if draw() < 0.15:  # within 25 minutes of a midnight somewhere
            moment = day - _MIDNIGHT_ZONES[int(draw() * len(_MIDNIGHT_ZONES))] * 3600 + int(draw() * 3000) - 1500
        else:  # office hours 08:00-20:00 where the line is
            moment = day - line.utc_offset * 3600 + 8 * 3600 + int(draw() * 12 * 3600)
        while moment > now - 60:
            moment -= _DAY
        calls.append((moment, line))
    calls.sort(key=itemgetter(0))
    return [_seeded_call(rng, index, start, line, now, clients) for index, (start, line) in enumerate(calls, 1)]


def _pick(population: Sequence[T], cumulative: list[int], draw: float) -> T:
    """A weighted choice; every weight table here sums to 100."""
    return population[bisect_right(cumulative, draw * 100)]


def _seeded_call(
    rng: random.Random, index: int, start: int, line: _Line, now: int, clients: list[tuple[str, CrmEntity | None]]
) -> StatisticRecord:
    draw = rng.random
    user_id = _pick(_USER_IDS, _USER_WEIGHTS, draw())
    if user_id == 3 and start > now - 30 * _DAY:
        user_id = 2
    call_type = _pick(_TYPES, _TYPE_WEIGHTS, draw())
    incoming = call_type in (2, 3)
    internal = not line.via_app and draw() < 0.03
    if incoming:
        code = _pick(_INCOMING_CODES, _INCOMING_WEIGHTS, draw())
    else:
        code = _pick(_OUTGOING_CODES, _OUTGOING_WEIGHTS, draw())
    duration = 0
    if code == "200":  # info calls are short; conversations log-normal around a minute, capped at an hour
        duration = 15 + int(draw() * 45) if call_type == 5 else min(3600, max(5, int(math.exp(4.3 + 0.9 * _z(draw)))))
    cost = math.ceil(duration / 60) * line.rate if duration and not incoming and not internal else 0.0
    if internal:
        phone, entity = _INNER_NUMBERS[int(draw() * len(_INNER_NUMBERS))], None
    else:
        phone, entity = clients[int(draw() * len(clients))]
    crm_type, crm_id = (entity.type, entity.id) if entity else (None, None)
    if entity is None and not internal and draw() < 0.5:
        crm_type, crm_id = _CRM_TYPES[int(draw() * 3)], 700 + int(draw() * 200)
    recorded = duration > 0 and draw() < 0.6
    transcribed = recorded and draw() < 0.2
    if line.via_app:
        call_id = f"externalCall.{rng.getrandbits(128):032x}.{start}"
    else:
        call_id = f"{rng.getrandbits(64):016X}.{start}.{10**7 + rng.getrandbits(26)}"
    return StatisticRecord(
        id=index,
        call_id=call_id,
        external_call_id=f"pbx-{index}" if line.via_app and draw() < 0.7 else None,
        portal_user_id=user_id,
        phone_number=phone if line.via_app or internal else f"+{phone}",
        portal_number=line.number,
        incoming=call_type,
        call_duration=duration,
        call_start_date=datetime.fromtimestamp(start, UTC),
        call_status=1 if duration else 0,
        call_vote=_VOTES[int(draw() * len(_VOTES))] if incoming and duration and draw() < 0.3 else None,
        cost=cost,
        cost_currency="" if internal else line.currency,
        call_failed_code=code,
        call_failed_reason=_REASONS[code],
        rest_app_id=APP_ID if line.via_app else None,
        crm_activity_id=_SEEDED_IDS + index if crm_id else None,
        crm_entity_type=crm_type,
        crm_entity_id=crm_id,
        record_url="" if recorded and not line.via_app else None,
        call_record_id=_SEEDED_IDS + index if recorded else None,
        transcript_id=_SEEDED_IDS + index if transcribed else None,
        transcript_pending="Y" if recorded and not transcribed and start > now - _DAY and draw() < 0.3 else "N",
        call_category="internal" if internal else "external",
        session_id=None if line.via_app else 3_800_000_000 + index,
        redial_attempt=1 + int(draw() * 2) if call_type == 4 else None,
        comment=_COMMENTS[int(draw() * len(_COMMENTS))] if draw() < 0.03 else None,
        record_duration=duration if recorded else None,
    )


def _z(draw: Callable[[], float]) -> float:
    """A standard normal draw (Box-Muller)."""
    return math.sqrt(-2.0 * math.log(1.0 - draw())) * math.cos(math.tau * draw())


METHODS = method_table({"voximplant.statistic.get": Method(statistic_get)})
