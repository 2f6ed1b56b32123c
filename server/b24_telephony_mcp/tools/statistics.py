"""Toolset `statistics`: the portal's call history, `voximplant.statistic.get`.

The portal drops a FILTER key whose field or operator it does not know and ignores a SORT it cannot use
(disagreements.md #12), so a typo would silently return other rows than asked for: both are checked here first.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from b24_telephony_mcp.tools.base import READS, PagedParams, RowFieldsParams, Toolset, ToolSpec
from b24_telephony_mcp.tools.call_analytics import CALL_DASHBOARD, GET_CALL_ANALYTICS, STATISTICS_METHOD

#: The docs' filterable fields, plus the CRM binding keys the source accepts too.
FILTER_FIELDS = frozenset(
    {
        "ID",
        "CALL_ID",
        "EXTERNAL_CALL_ID",
        "CALL_CATEGORY",
        "PORTAL_USER_ID",
        "PORTAL_NUMBER",
        "PHONE_NUMBER",
        "CALL_TYPE",
        "CALL_DURATION",
        "CALL_START_DATE",
        "CALL_LOG",
        "CALL_RECORD_URL",
        "CALL_VOTE",
        "COST",
        "COST_CURRENCY",
        "CALL_FAILED_CODE",
        "CALL_FAILED_REASON",
        "CRM_ENTITY_TYPE",
        "CRM_ENTITY_ID",
        "CRM_ACTIVITY_ID",
        "REST_APP_ID",
        "REST_APP_NAME",
        "TRANSCRIPT_ID",
        "TRANSCRIPT_PENDING",
        "SESSION_ID",
        "REDIAL_ATTEMPT",
        "COMMENT",
        "RECORD_DURATION",
        "CRM_BINDINGS.ENTITY_TYPE",
        "CRM_BINDINGS.ENTITY_ID",
    }
)
SORT_FIELDS = FILTER_FIELDS - {"CALL_TYPE", "CRM_BINDINGS.ENTITY_TYPE", "CRM_BINDINGS.ENTITY_ID"}
#: The keys of a row (docs example; CALL_LOG is removed by the server, disagreements.md #12).
ROW_KEYS = (FILTER_FIELDS - {"CALL_LOG", "CRM_BINDINGS.ENTITY_TYPE", "CRM_BINDINGS.ENTITY_ID"}) | {"RECORD_FILE_ID"}
OPERATORS = ("", "=", "!", "!=", ">", ">=", "<", "<=", "><", "!><", "%", "!%", "?")
_KEY = re.compile(r"([^a-zA-Z]*)(.*)", re.DOTALL)


def _split_key(key: str) -> tuple[str, str]:
    """vi_rest: the operator is a key's leading non-letters, the field the rest."""
    parts = _KEY.fullmatch(key)
    return (parts.group(1), parts.group(2)) if parts else ("", key)


def _check_filter(node: dict[str, Any], path: str = "") -> None:
    """Raise on a key the portal would drop silently. ``path``: where a sub-filter sits ("0." for key "0")."""
    for key, value in node.items():
        if key.upper() == "LOGIC":
            if str(value).upper() not in ("AND", "OR"):
                raise ValueError(f"{path}LOGIC must be AND or OR")
            continue
        if isinstance(value, dict):  # a sub-filter, joined by its own LOGIC
            _check_filter(value, f"{path}{key}.")
            continue
        operator, name = _split_key(key)
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r} in {path}{key}; use one of {' '.join(OPERATORS[1:])}")
        if name.upper() not in FILTER_FIELDS:
            where = f" in {path}{key}" if path or operator else ""
            raise ValueError(f"unknown field {name!r}{where}; fields: {', '.join(sorted(FILTER_FIELDS))}")
        if operator.endswith("><") and not (isinstance(value, list) and len(value) == 2):
            raise ValueError(f"{path}{key}: {operator} takes a list of two values [from, to]")
        if name.upper() == "CALL_START_DATE":
            for item in value if isinstance(value, list) else [value]:
                try:
                    datetime.fromisoformat(str(item))
                except ValueError:
                    raise ValueError(f"{path}{key}: {item!r} is not ISO 8601, e.g. 2026-03-01T00:00:00+03:00") from None


class StatisticParams(PagedParams, RowFieldsParams):
    FILTER: dict[str, Any] | None = Field(
        None,
        description="Field with optional ! > >= < <= >< % prefix; list = any of. E.g. >=CALL_START_DATE, "
        "PORTAL_USER_ID, CALL_TYPE.",
    )
    SORT: str | None = Field(None, description="E.g. CALL_START_DATE.")
    ORDER: Literal["ASC", "DESC"] | None = Field(None)
    start: int | None = Field(None, ge=-1, description="`next` of a page; -1: no total, faster.")

    @field_validator("FILTER")
    @classmethod
    def _known_fields_and_operators(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            _check_filter(value)
        return value

    @field_validator("SORT")
    @classmethod
    def _sortable(cls, value: str | None) -> str | None:
        if value is not None and value not in SORT_FIELDS:
            raise ValueError(f"not a sortable field; use one of {', '.join(sorted(SORT_FIELDS))}")
        return value

    @field_validator("fields")
    @classmethod
    def _row_keys(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - ROW_KEYS)
        if unknown:
            raise ValueError(f"unknown row keys {', '.join(unknown)}; rows have {', '.join(sorted(ROW_KEYS))}")
        return value

    def to_rest(self) -> dict[str, Any]:
        rest = super().to_rest()
        if self.SORT and not self.ORDER:  # the portal ignores SORT without ORDER
            rest["ORDER"] = "ASC"
        return rest


TOOLSET = Toolset(
    name="statistics",
    description="Call statistics and analytics.",
    tools=(
        ToolSpec(
            name="get_call_statistics",
            method=STATISTICS_METHOD,
            title="Get call statistics",
            description="Call history, 50 rows a page.",
            params=StatisticParams,
            result=list[dict[str, Any]],  # rows named in the docs; `fields` may keep any subset
            effect=READS,
            view=CALL_DASHBOARD,
        ),
        GET_CALL_ANALYTICS,
    ),
)
