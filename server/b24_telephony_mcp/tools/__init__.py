"""Tool declarations, one module per toolset. Nothing here imports MCP."""

from b24_telephony_mcp.tools import external_telephony
from b24_telephony_mcp.tools.base import ToolContext, ToolSpec

ALL_TOOLS: tuple[ToolSpec, ...] = external_telephony.TOOLS

__all__ = ["ALL_TOOLS", "ToolContext", "ToolSpec"]
