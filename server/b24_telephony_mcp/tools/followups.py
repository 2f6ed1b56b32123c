"""AI call follow-ups: `call.followup.*`, REST 3.0 methods of the `call` scope.

REST 3.0 takes its own lowercase parameter names (used verbatim here), answers `{"result": {"item"|"items"...}}`,
and pages lists by cursor: while `hasMore` is true, the `afterCursor` object goes back unchanged in
`pagination.afterCursor`. Heavy AI blocks in `select` (transcription, overview, insights) cap a page at 20.
`filter` is the object the method's own page documents (`startDate` {from, to}, `participantId`), not the
REST 3.0 condition array other modules take.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from b24_telephony_mcp.tools.base import READS, RestParams, RestResult, Toolset, ToolSpec

MentionFormat = Literal["bb", "html", "none"]
FieldKey = Literal[
    "name",
    "type",
    "title",
    "description",
    "validationRules",
    "requiredGroups",
    "filterable",
    "sortable",
    "editable",
    "multiple",
    "elementType",
]

SELECT_DESC = "Fields, AI blocks or dot paths (overview.agreements)."
MENTION_DESC = "Mention markup: bb (default), html, none."
FIELD_SELECT_DESC = "Keys to return (default: all)."


class StartDateRange(RestParams):
    from_: str = Field(alias="from", description="ISO 8601, e.g. 2026-01-01T00:00:00Z.")
    to: str = Field(description=">= from.")


class FollowupFilter(RestParams):
    startDate: StartDateRange
    participantId: int | None = Field(None, description="A user in the call.")


class FollowupOrder(RestParams):
    startDate: Literal["asc", "desc"] | None = None


class CursorPagination(RestParams):
    limit: int | None = Field(None, ge=1, description="Default 50, max 200; 20 with transcription/overview/insights.")
    afterCursor: dict[str, Any] | None = Field(None, description="The last page's afterCursor, verbatim.")


class ListFollowupsParams(RestParams):
    filter: FollowupFilter = Field(description="Which calls.")
    select: list[str] | None = Field(None, description=SELECT_DESC + " Default: metadata.")
    order: FollowupOrder | None = Field(None, description="Sort by call start.")
    pagination: CursorPagination | None = Field(None, description="Page size, cursor.")
    mentionFormat: MentionFormat | None = Field(None, description=MENTION_DESC)


class GetFollowupParams(RestParams):
    callId: int = Field(description="callId of a listed follow-up.")
    select: list[str] | None = Field(None, description=SELECT_DESC + " Default: all; [] metadata only.")
    mentionFormat: MentionFormat | None = Field(None, description=MENTION_DESC)


class ListFieldsParams(RestParams):
    select: list[FieldKey] | None = Field(None, description=FIELD_SELECT_DESC)


class GetFieldParams(RestParams):
    name: str = Field(description="Field name, e.g. overview.")
    select: list[FieldKey] | None = Field(None, description=FIELD_SELECT_DESC)


class FollowupPage(RestResult):
    items: list[dict[str, Any]]
    hasMore: bool
    afterCursor: dict[str, Any] | None = None


class OneItem(RestResult):
    item: dict[str, Any]


class ItemList(RestResult):
    items: list[dict[str, Any]]


SCOPES = ("call",)
SELECT_HINTS = (
    (
        "invalid_select_field",
        "select takes root fields, AI blocks (transcription, overview, summary, insights, evaluation) and their "
        "documented dot paths; not fields inside arrays (pass participants, not participants.name).",
    ),
)
FIELD_HINTS = (
    (
        "BITRIX_REST_V3_EXCEPTION_UNKNOWNDTOPROPERTYEXCEPTION",
        "select takes only description keys: name, type, title, description, validationRules, requiredGroups, "
        "filterable, sortable, editable, multiple, elementType.",
    ),
)

TOOLSET = Toolset(
    name="followups",
    description="AI call follow-ups (REST 3.0): summaries, transcripts and the fields they have.",
    tools=(
        ToolSpec(
            name="list_call_followups",
            method="call.followup.list",
            title="List call follow-ups",
            description="AI follow-ups (summary, agreements, transcript...) of video calls started in "
            "filter.startDate, newest first. While hasMore is true, repeat with pagination.afterCursor = the "
            "afterCursor received.",
            params=ListFollowupsParams,
            result=FollowupPage,
            effect=READS,
            scopes=SCOPES,
            rest_api=3,
            hints=(
                (
                    "invalid_date_range",
                    "Pass filter.startDate.from and filter.startDate.to as ISO 8601 (2026-01-01T00:00:00Z), "
                    "from not after to.",
                ),
                *SELECT_HINTS,
                ("invalid_order", 'order is {"startDate": "asc"} or {"startDate": "desc"}.'),
                (
                    "invalid_pagination",
                    "Pass a positive limit and the afterCursor of the previous page exactly as received; "
                    "or drop afterCursor to start again.",
                ),
            ),
        ),
        ToolSpec(
            name="get_call_followup",
            method="call.followup.get",
            title="Get call follow-up",
            description="One video call's AI follow-up (AI blocks not ready yet are null).",
            params=GetFollowupParams,
            result=OneItem,
            effect=READS,
            scopes=SCOPES,
            rest_api=3,
            hints=(
                (
                    "BITRIX_REST_V3_EXCEPTION_ENTITYNOTFOUNDEXCEPTION",
                    "No call with this callId; take callId from the follow-up list.",
                ),
                (
                    "access_denied",
                    "The user behind these credentials neither took part in this call nor is in its chat; "
                    "an administrator sees every follow-up.",
                ),
                *SELECT_HINTS,
            ),
        ),
        ToolSpec(
            name="list_call_followup_fields",
            method="call.followup.field.list",
            title="List follow-up fields",
            description="Call follow-up fields (name, type, description): what select can name.",
            params=ListFieldsParams,
            result=ItemList,
            effect=READS,
            scopes=SCOPES,
            rest_api=3,
            hints=FIELD_HINTS,
        ),
        ToolSpec(
            name="get_call_followup_field",
            method="call.followup.field.get",
            title="Get follow-up field",
            description="One call follow-up field's description.",
            params=GetFieldParams,
            result=OneItem,
            effect=READS,
            scopes=SCOPES,
            rest_api=3,
            hints=(
                (
                    "BITRIX_REST_V3_REALISATION_EXCEPTION_FIELDNOTFOUNDEXCEPTION",
                    "No follow-up field has this name; list the follow-up fields for valid names.",
                ),
                *FIELD_HINTS,
            ),
        ),
    ),
)
