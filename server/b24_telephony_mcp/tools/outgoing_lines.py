"""Outgoing lines of the built-in telephony: `voximplant.line.*`, the lines calls from Bitrix24 go out on.

A LINE_ID is a rented number, `reg<REG_ID>` for a cloud SIP connection or `sip<CONFIG_ID>` for an office PBX.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from b24_telephony_mcp.bitrix.errors import INVALID_ARGUMENTS, BitrixError
from b24_telephony_mcp.tools.base import OVERWRITES, READS, NoParams, RestParams, ToolRun, Toolset, ToolSpec
from b24_telephony_mcp.tools.sip import LINE_PERMISSION_HINTS

SET_LINE = "voximplant.line.outgoing.set"
GET_LINE = "voximplant.line.outgoing.get"


class LineIdParams(RestParams):
    LINE_ID: str = Field(description="A LINE_ID from list_outgoing_lines.")


class SipConfigIdParams(RestParams):
    CONFIG_ID: int = Field(description="CONFIG_ID of a SIP connection.")


async def set_and_check(params: LineIdParams, run: ToolRun) -> dict[str, Any]:
    """The portal answers 1 to an unknown LINE_ID and changes nothing; reading the default back turns that silent
    no-op into an error the model can act on."""
    answer = await run.client.call(SET_LINE, params.to_rest())
    current = (await run.client.call(GET_LINE, {}, read_only=True)).result
    if current != params.LINE_ID:
        raise BitrixError(
            INVALID_ARGUMENTS,
            f"LINE_ID {params.LINE_ID!r} is not a line of this portal: {SET_LINE} changed nothing, the default "
            f"outgoing line is still {current!r}",
            method=SET_LINE,
            hint="Pass a LINE_ID from list_outgoing_lines.",
        )
    return {"result": answer.result}


TOOLSET = Toolset(
    name="outgoing_lines",
    description="Outgoing lines of the built-in telephony: list them, read and set the default.",
    tools=(
        ToolSpec(
            name="list_outgoing_lines",
            method="voximplant.line.get",
            title="List outgoing lines",
            description="The portal's outgoing lines as LINE_ID -> name: rented numbers, regNNN (cloud SIP), "
            "sipNNN (office PBX).",
            params=NoParams,
            result=dict[str, str] | list[Any],
            effect=READS,
            hints=LINE_PERMISSION_HINTS,
        ),
        ToolSpec(
            name="get_default_outgoing_line",
            method=GET_LINE,
            title="Default outgoing line",
            description="The LINE_ID calls go out on by default (LINK_BASE_NUMBER: the portal's linked number).",
            params=NoParams,
            result=str,
            effect=READS,
            hints=LINE_PERMISSION_HINTS,
        ),
        ToolSpec(
            name="set_default_outgoing_line",
            method=SET_LINE,
            title="Set default outgoing line",
            description="Set the default outgoing line; an unknown LINE_ID is an error (checked by reading it back).",
            params=LineIdParams,
            result=int,
            effect=OVERWRITES,
            hints=LINE_PERMISSION_HINTS,
            run=set_and_check,
            other_methods=(GET_LINE,),
        ),
        ToolSpec(
            name="set_default_outgoing_sip_line",
            method="voximplant.line.outgoing.sip.set",
            title="Set default SIP line",
            description="Make a SIP connection the default outgoing line.",
            params=SipConfigIdParams,
            result=int,
            effect=OVERWRITES,
            hints=(
                *LINE_PERMISSION_HINTS,
                ("ERROR_ARGUMENT", "No line configuration has this CONFIG_ID; take it from the SIP connections list."),
            ),
        ),
    ),
)
