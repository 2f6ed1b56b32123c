"""Toolset `statistics`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="statistics",
    description="Call statistics and analytics.",
    default=True,
    tools=(),
)
