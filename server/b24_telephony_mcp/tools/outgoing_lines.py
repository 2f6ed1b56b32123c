"""Toolset `outgoing_lines`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="outgoing_lines",
    description="Outgoing lines of the built-in telephony: list them, read and set the default.",
    default=False,
    tools=(),
)
