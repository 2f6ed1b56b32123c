"""Tool declarations: one module per toolset over `base` (what a tool is), `catalogue` (every toolset, and the
one function that picks what a server offers) and `offer` (what a running server offers).

Nothing here imports MCP.
"""

from typing import TYPE_CHECKING, Any

from b24_telephony_mcp.tools import catalogue
from b24_telephony_mcp.tools.base import ToolContext, Toolset, ToolSpec
from b24_telephony_mcp.tools.catalogue import (
    DEFAULT_TOOLSETS,
    TOOLSET_NAMES,
    UnknownNameError,
    check_names,
    resolve_toolsets,
    select_tools,
)

if TYPE_CHECKING:
    from b24_telephony_mcp.tools.catalogue import ALL_TOOLS, TOOLS_BY_NAME, TOOLSETS


def __getattr__(name: str) -> Any:
    # ALL_TOOLS, TOOLSETS...: the catalogue imports every toolset's module for them, on first use only.
    if name in catalogue.NEEDS_EVERY_TOOLSET:
        return getattr(catalogue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_TOOLS",
    "DEFAULT_TOOLSETS",
    "TOOLSETS",
    "TOOLSET_NAMES",
    "TOOLS_BY_NAME",
    "ToolContext",
    "ToolSpec",
    "Toolset",
    "UnknownNameError",
    "check_names",
    "resolve_toolsets",
    "select_tools",
]
