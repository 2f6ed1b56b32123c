"""Every toolset and tool this server has, and the one function that picks what a server offers.

A toolset's module (`tools/<toolset name>.py`, which declares its `TOOLSET`) is imported only when its tools are
needed, so a start pays for the offered toolsets alone. What must be known before that, the toolset and tool
names, is written down here once; tests/test_cold_start.py holds it to the modules.

Nothing here imports MCP.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from b24_telephony_mcp.tools.base import Toolset, ToolSpec
from b24_telephony_mcp.tools.batch import RUN_BATCH, RUN_BATCH_READ_ONLY

TOOLSET_TOOL_NAMES: dict[str, tuple[str, ...]] = {
    "external_lines": ("add_external_line", "update_external_line", "list_external_lines", "delete_external_line"),
    "external_calls": (
        "register_external_call",
        "finish_external_call",
        "show_external_call",
        "hide_external_call",
        "attach_external_call_record",
        "search_crm_entities_by_phone",
        "attach_call_transcription",
        "log_external_call",
    ),
    "outgoing_lines": (
        "list_outgoing_lines",
        "get_default_outgoing_line",
        "set_default_outgoing_line",
        "set_default_outgoing_sip_line",
    ),
    "sip": (
        "add_sip_connection",
        "update_sip_connection",
        "list_sip_connections",
        "delete_sip_connection",
        "get_sip_registration_status",
        "get_sip_connector_status",
    ),
    "users": ("get_user_telephony_settings", "activate_user_phone"),
    "call_placement": ("start_callback", "start_infocall_with_sound", "start_infocall_with_text"),
    "statistics": ("get_call_statistics", "get_call_analytics"),
    "reference": ("list_tts_voices", "get_telephony_urls"),
    "followups": ("list_call_followups", "get_call_followup", "list_call_followup_fields", "get_call_followup_field"),
    "events": ("watch_telephony_events", "get_telephony_events"),
}
"""Toolset name -> its tools' names, both in declaration order (the order of tools/list)."""
TOOLSET_NAMES: tuple[str, ...] = tuple(TOOLSET_TOOL_NAMES)
DEFAULT_TOOLSETS: tuple[str, ...] = ("external_lines", "external_calls", "statistics")
"""Offered when no --toolsets is given."""
TOOL_NAMES: tuple[str, ...] = (*(name for names in TOOLSET_TOOL_NAMES.values() for name in names), RUN_BATCH.name)
"""Every tool but the dynamic ones, in declaration order; run_batch, which comes with every selection, last."""
TOOLSET_OF_TOOL: dict[str, str] = {tool: toolset for toolset, tools in TOOLSET_TOOL_NAMES.items() for tool in tools}
ALL = "all"


def load_toolset(name: str) -> Toolset:
    """The toolset called `name`, its module imported on first use."""
    return importlib.import_module(f"{__package__}.{name}").TOOLSET


def every_toolset() -> tuple[Toolset, ...]:
    """Every toolset in declaration order: imports all their modules."""
    return tuple(load_toolset(name) for name in TOOLSET_NAMES)


def tool_spec(name: str) -> ToolSpec:
    """The tool called `name` of a toolset (see TOOLSET_OF_TOOL), importing only that toolset's module."""
    return next(spec for spec in load_toolset(TOOLSET_OF_TOOL[name]).tools if spec.name == name)


# Names that need every toolset's module, computed on first use (module __getattr__), so importing this module
# imports none of them.
if TYPE_CHECKING:
    TOOLSETS: tuple[Toolset, ...]
    TOOLSETS_BY_NAME: dict[str, Toolset]
    ALL_TOOLS: tuple[ToolSpec, ...]
    TOOLS_BY_NAME: dict[str, ToolSpec]


def _every_tool() -> tuple[ToolSpec, ...]:
    return (*(spec for each in every_toolset() for spec in each.tools), RUN_BATCH)


NEEDS_EVERY_TOOLSET: dict[str, Callable[[], object]] = {
    "TOOLSETS": every_toolset,
    "TOOLSETS_BY_NAME": lambda: {each.name: each for each in every_toolset()},
    "ALL_TOOLS": _every_tool,
    "TOOLS_BY_NAME": lambda: {spec.name: spec for spec in _every_tool()},
}
"""Module attribute -> what computes it (once, on first use)."""


def __getattr__(name: str) -> Any:
    compute = NEEDS_EVERY_TOOLSET.get(name)
    if compute is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = compute()
    return value


class UnknownNameError(ValueError):
    """A toolset or tool name that does not exist; the message lists the valid ones."""


def check_names(toolsets: Collection[str] | None = None, tools: Collection[str] | None = None) -> None:
    """Raises `UnknownNameError` for a name in the selection that does not exist: the tools named in `tools` if
    given, else the toolsets. Imports no toolset's module."""
    if tools is not None:
        unknown = sorted(set(tools) - set(TOOL_NAMES))
        if unknown:
            raise UnknownNameError(f"unknown tool(s) {', '.join(unknown)}; valid tools: {', '.join(TOOL_NAMES)}")
    elif toolsets is not None:
        unknown = sorted(set(toolsets) - {*TOOLSET_NAMES, ALL})
        if unknown:
            raise UnknownNameError(
                f"unknown toolset(s) {', '.join(unknown)}; valid toolsets: {', '.join(TOOLSET_NAMES)}, {ALL}"
            )


def resolve_toolsets(names: Collection[str] | None) -> tuple[Toolset, ...]:
    """Toolsets by name, in declaration order; None means the default set, `all` every toolset."""
    check_names(names)
    if names is None:
        names = DEFAULT_TOOLSETS
    if ALL in names:
        return every_toolset()
    return tuple(load_toolset(name) for name in TOOLSET_NAMES if name in names)


def select_tools(
    toolsets: Collection[str] | None = None, *, read_only: bool = False, tools: Collection[str] | None = None
) -> tuple[ToolSpec, ...]:
    """What a server offers: the tools named in `tools` if given, else those of the toolsets; in read-only
    mode only tools whose effect is read-only (the same flag that sets readOnlyHint). run_batch comes with
    every selection (with `tools`, only when named), last, and in read-only mode as its read-only form, since
    it runs only what is offered. Imports the modules of the chosen tools' toolsets only."""
    if tools is not None:
        check_names(tools=tools)
        named = [name for name in TOOLSET_NAMES if set(TOOLSET_TOOL_NAMES[name]) & set(tools)]
        chosen = tuple(spec for name in named for spec in load_toolset(name).tools if spec.name in tools)
    else:
        chosen = tuple(spec for each in resolve_toolsets(toolsets) for spec in each.tools)
    chosen = tuple(spec for spec in chosen if spec.effect.read_only or not read_only)
    if tools is None or RUN_BATCH.name in tools:
        chosen += (RUN_BATCH_READ_ONLY if read_only else RUN_BATCH,)
    return chosen
