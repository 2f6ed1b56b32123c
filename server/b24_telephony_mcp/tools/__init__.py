"""Tool declarations: one module per toolset over `base` (what a tool is), `catalogue` (every toolset, and the
one function that picks what a server offers) and `offer` (what a running server offers).

Nothing here imports MCP.
"""

from b24_telephony_mcp.tools.base import ToolContext, Toolset, ToolSpec
from b24_telephony_mcp.tools.catalogue import (
    ALL_TOOLS,
    DEFAULT_TOOLSETS,
    TOOLS_BY_NAME,
    TOOLSETS,
    UnknownNameError,
    resolve_toolsets,
    select_tools,
)

__all__ = [
    "ALL_TOOLS",
    "DEFAULT_TOOLSETS",
    "TOOLSETS",
    "TOOLS_BY_NAME",
    "ToolContext",
    "ToolSpec",
    "Toolset",
    "UnknownNameError",
    "resolve_toolsets",
    "select_tools",
]
