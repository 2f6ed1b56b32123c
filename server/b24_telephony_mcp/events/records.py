"""The telephony events this server hears, as REST names verbatim, and an event's identity across deliveries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

EventName = Literal[
    "OnExternalCallStart",
    "OnExternalCallBackStart",
    "OnVoximplantCallInit",
    "OnVoximplantCallStart",
    "OnVoximplantCallEnd",
]
EVENT_NAMES: tuple[str, ...] = EventName.__args__  # type: ignore[attr-defined]
_BY_UPPER = {name.upper(): name for name in EVENT_NAMES}

# Field types from the docs (telephony/events/*, telephony/voximplant/events/*). Bitrix24 posts every value as
# text, and the offline queue keeps what the module passed (text too, mostly): these are typed on the way in.
INTEGER_FIELDS = frozenset(
    {"USER_ID", "CALL_LIST_ID", "CRM_ENTITY_ID", "CALL_TYPE", "REST_APP_ID", "PORTAL_USER_ID", "CALL_DURATION"}
    | {"CRM_ACTIVITY_ID"}
)
NUMBER_FIELDS = frozenset({"COST"})


def event_name(raw: str) -> str | None:
    """The event's name as the docs spell it (`ONEXTERNALCALLSTART` -> `OnExternalCallStart`); None for an event
    this server does not hear."""
    return _BY_UPPER.get(raw.strip().upper())


def typed(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with its numeric fields as numbers (an empty one as null), the rest as given."""
    return {key: _typed(key, value) for key, value in data.items()}


def _typed(key: str, value: Any) -> Any:
    if key not in INTEGER_FIELDS | NUMBER_FIELDS or not isinstance(value, str):
        return value
    text = value.strip()
    if text == "":
        return None
    try:
        return int(text) if key in INTEGER_FIELDS else float(text)
    except ValueError:
        return value  # not what the docs say: passed on as it came rather than dropped


def _as_text(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    return "" if value is None else str(value)


@dataclass(frozen=True)
class TelephonyEvent:
    """One event as it arrived: its name, typed data, when it happened (Unix seconds)."""

    event: str
    data: dict[str, Any]
    ts: int

    @property
    def key(self) -> str:
        """The same for every delivery of this event: online and offline, and Bitrix24's retries. From the name and
        the data with every value as text, as the two ways deliver the same value typed differently."""
        canonical = json.dumps(_as_text(self.data), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(f"{self.event}|{canonical}".encode()).hexdigest()

    @classmethod
    def of(cls, raw_name: str, data: Any, ts: int) -> TelephonyEvent | None:
        """The event from what Bitrix24 sent; None for one this server does not hear."""
        name = event_name(raw_name)
        if name is None:
            return None
        return cls(name, typed(data) if isinstance(data, Mapping) else {}, ts)


@dataclass(frozen=True)
class StoredEvent:
    """An event in the store: `cursor` is its place, what the next read starts after."""

    cursor: str
    event: str
    ts: int
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "event": self.event, "ts": self.ts, "data": self.data}
