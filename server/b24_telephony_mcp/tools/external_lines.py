"""External lines: `telephony.externalLine.*`, the PBX or provider numbers an application adds to the portal.

Field names are the REST parameter names verbatim; descriptions are condensed from the Bitrix24 docs tables.
Annotations follow methods.json (`read_only`, `destructive`, `idempotent`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from b24_telephony_mcp.tools.base import (
    CONSUMES,
    CREATES,
    OVERWRITES,
    READS,
    NoParams,
    RestParams,
    RestResult,
    Toolset,
    ToolSpec,
    YesNo,
)

LINE_NUMBER_DESC = "The line's number."
# One tool per sentence: a sentence naming a tool the server does not offer is left out of the hint.
LINE_NOT_FOUND = ("Could not find line", "list_external_lines shows the numbers of this application's lines.")


class AddLineParams(RestParams):
    NUMBER: str = Field(description="Line number, unique per app.")
    NAME: str | None = Field(None)
    CRM_AUTO_CREATE: YesNo | None = Field(
        None, description="Y (default): calls to unknown numbers create a CRM record."
    )


class UpdateLineParams(RestParams):
    at_least_one_of = (("NAME", "CRM_AUTO_CREATE"),)

    NUMBER: str = Field(description=LINE_NUMBER_DESC)
    NAME: str | None = Field(None, description="New name (or CRM_AUTO_CREATE).")
    CRM_AUTO_CREATE: YesNo | None = Field(None, description="Y: calls to unknown numbers create a CRM record.")


class LineNumberParams(RestParams):
    NUMBER: str = Field(description=LINE_NUMBER_DESC)


class LineId(RestResult):
    ID: int | str


class ExternalLine(RestResult):
    NUMBER: str
    NAME: str | None = None
    CRM_AUTO_CREATE: str | None = None


TOOLSET = Toolset(
    name="external_lines",
    description="External PBX/provider lines of this application: add, update, list, delete.",
    tools=(
        ToolSpec(
            name="add_external_line",
            method="telephony.externalLine.add",
            title="Add external line",
            description="Add a line of your PBX or provider for this app.",
            params=AddLineParams,
            result=LineId,
            effect=CREATES,
            app_only=True,
            hints=(
                (
                    "Line already exists",
                    "update_external_line changes an existing line. list_external_lines shows the lines.",
                ),
            ),
        ),
        ToolSpec(
            name="update_external_line",
            method="telephony.externalLine.update",
            title="Update external line",
            description="Rename a line or change its CRM auto-creation.",
            params=UpdateLineParams,
            result=LineId,
            effect=OVERWRITES,
            app_only=True,
            hints=(LINE_NOT_FOUND,),
        ),
        ToolSpec(
            name="list_external_lines",
            method="telephony.externalLine.get",
            title="List external lines",
            description="This app's external lines.",
            params=NoParams,
            result=list[ExternalLine],
            effect=READS,
            app_only=True,
        ),
        ToolSpec(
            name="delete_external_line",
            method="telephony.externalLine.delete",
            title="Delete external line",
            description="Delete an external line.",
            params=LineNumberParams,
            result=list[Any] | bool,
            effect=CONSUMES,
            app_only=True,
            hints=(LINE_NOT_FOUND,),
        ),
    ),
)
