"""Every toolset and tool this server has, and the one function that picks what a server offers.

Nothing here imports MCP.
"""

from __future__ import annotations

from collections.abc import Collection

from b24_telephony_mcp.tools import (
    call_placement,
    external_calls,
    external_lines,
    followups,
    outgoing_lines,
    reference,
    sip,
    statistics,
    users,
)
from b24_telephony_mcp.tools.base import Toolset, ToolSpec
from b24_telephony_mcp.tools.batch import RUN_BATCH, RUN_BATCH_READ_ONLY

TOOLSETS: tuple[Toolset, ...] = (
    external_lines.TOOLSET,
    external_calls.TOOLSET,
    outgoing_lines.TOOLSET,
    sip.TOOLSET,
    users.TOOLSET,
    call_placement.TOOLSET,
    statistics.TOOLSET,
    reference.TOOLSET,
    followups.TOOLSET,
)
TOOLSETS_BY_NAME: dict[str, Toolset] = {toolset.name: toolset for toolset in TOOLSETS}
ALL_TOOLS: tuple[ToolSpec, ...] = (*(spec for toolset in TOOLSETS for spec in toolset.tools), RUN_BATCH)
TOOLS_BY_NAME: dict[str, ToolSpec] = {spec.name: spec for spec in ALL_TOOLS}
DEFAULT_TOOLSETS: tuple[str, ...] = tuple(toolset.name for toolset in TOOLSETS if toolset.default)
ALL = "all"


class UnknownNameError(ValueError):
    """A toolset or tool name that does not exist; the message lists the valid ones."""


def resolve_toolsets(names: Collection[str] | None) -> tuple[Toolset, ...]:
    """Toolsets by name, in declaration order; None means the default set, `all` every toolset."""
    if names is None:
        names = DEFAULT_TOOLSETS
    if ALL in names:
        return TOOLSETS
    unknown = sorted(set(names) - set(TOOLSETS_BY_NAME))
    if unknown:
        raise UnknownNameError(
            f"unknown toolset(s) {', '.join(unknown)}; valid toolsets: {', '.join(TOOLSETS_BY_NAME)}, {ALL}"
        )
    return tuple(toolset for toolset in TOOLSETS if toolset.name in names)


def select_tools(
    toolsets: Collection[str] | None = None, *, read_only: bool = False, tools: Collection[str] | None = None
) -> tuple[ToolSpec, ...]:
    """What a server offers: the tools named in `tools` if given, else those of the toolsets; in read-only
    mode only tools whose effect is read-only (the same flag that sets readOnlyHint). run_batch comes with
    every selection (with `tools`, only when named), last, and in read-only mode as its read-only form, since
    it runs only what is offered."""
    if tools is not None:
        unknown = sorted(set(tools) - set(TOOLS_BY_NAME))
        if unknown:
            raise UnknownNameError(f"unknown tool(s) {', '.join(unknown)}; valid tools: {', '.join(TOOLS_BY_NAME)}")
        chosen = tuple(spec for spec in ALL_TOOLS if spec.name in tools and spec is not RUN_BATCH)
    else:
        chosen = tuple(spec for toolset in resolve_toolsets(toolsets) for spec in toolset.tools)
    chosen = tuple(spec for spec in chosen if spec.effect.read_only or not read_only)
    if tools is None or RUN_BATCH.name in tools:
        chosen += (RUN_BATCH_READ_ONLY if read_only else RUN_BATCH,)
    return chosen


def toolset_of(spec: ToolSpec) -> Toolset:
    return next(toolset for toolset in TOOLSETS if spec in toolset.tools)
