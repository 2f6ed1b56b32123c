"""Toolset `call_placement`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="call_placement",
    description="Place real, billed calls: callback and info-calls (text-to-speech or a sound file). Off by default.",
    default=False,
    tools=(),
)
