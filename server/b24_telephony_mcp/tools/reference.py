"""Toolset `reference`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="reference",
    description="Reference data: text-to-speech voices, telephony settings page URLs.",
    default=False,
    tools=(),
)
