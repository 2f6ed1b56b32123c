"""`--dynamic-toolsets`: `list_toolsets` and `enable_toolset` grow what a running server offers, on demand.

The two tools here are local: they touch no portal, so they carry no `b24/method` and `openWorldHint` false, and
they are read-only (they change what this server offers, nothing in Bitrix24), so read-only mode keeps them.
Nothing here imports MCP; the server sends `notifications/tools/list_changed` when the offer's `version` moves.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from b24_telephony_mcp.bitrix.errors import BitrixError
from b24_telephony_mcp.tools.base import READS, NoParams, RestParams, RestResult, ToolRun, ToolSpec
from b24_telephony_mcp.tools.catalogue import TOOLSET_NAMES, every_toolset, load_toolset

ToolsetName = Literal[TOOLSET_NAMES]  # type: ignore[valid-type]


class ToolsetInfo(RestResult):
    name: str
    description: str
    enabled: bool
    tools: list[str]


class EnableToolsetParams(RestParams):
    toolset: ToolsetName = Field(description="Toolset name, from list_toolsets.")


class EnabledToolset(RestResult):
    toolset: str
    added: list[str]
    note: str


async def list_toolsets(_: NoParams, run: ToolRun) -> dict[str, Any]:
    offer = run.offered
    return {
        "result": [
            {
                "name": toolset.name,
                "description": toolset.description,
                "enabled": toolset.name in offer.enabled,
                "tools": [spec.name for spec in offer.offerable(toolset)],
            }
            for toolset in every_toolset()
        ]
    }


TOOLSET_NOT_ALLOWED = "TOOLSET_NOT_ALLOWED"


async def enable_toolset(params: EnableToolsetParams, run: ToolRun) -> dict[str, Any]:
    offer = run.offered
    asks_first = any(spec.confirm for spec in offer.offerable(load_toolset(params.toolset)))
    if asks_first and not run.context.confirm_calls:
        # Billed calls nobody confirms (B24_CONFIRM_CALLS=0) are the operator's decision, never the model's.
        raise BitrixError(
            TOOLSET_NOT_ALLOWED,
            f"{params.toolset} places billed calls, and this server places them without asking the user "
            "(B24_CONFIRM_CALLS=0), so only its operator can offer it. Nothing changed.",
            hint=f"Ask the user to restart the server with {params.toolset} in --toolsets (or B24_TOOLSETS).",
        )
    was_enabled = params.toolset in offer.enabled
    added = offer.enable(params.toolset)
    if added:
        note = (
            "These tools are offered from now on, to every client of this server: call tools/list again if your "
            "tool list did not refresh."
        )
    elif was_enabled:
        note = "This toolset was already enabled; nothing changed."
    else:
        note = "Enabled, but it adds no tools here (read-only mode leaves out tools that change the portal)."
    return {"result": {"toolset": params.toolset, "added": [spec.name for spec in added], "note": note}}


# A ToolSpec's `method` names a REST method; these two call none, so theirs is empty and `_meta` omits it.
DYNAMIC_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="list_toolsets",
        method="",
        title="List toolsets",
        description="List this server's toolsets: description, whether enabled, and the tools each offers.",
        params=NoParams,
        result=list[ToolsetInfo],
        effect=READS,
        scopes=(),
        open_world=False,
        run=list_toolsets,
    ),
    ToolSpec(
        name="enable_toolset",
        method="",
        title="Enable toolset",
        description="Offer the tools of one more toolset (see list_toolsets) from now on.",
        params=EnableToolsetParams,
        result=EnabledToolset,
        effect=READS,
        scopes=(),
        open_world=False,
        run=enable_toolset,
    ),
)
