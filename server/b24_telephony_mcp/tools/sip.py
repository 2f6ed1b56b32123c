"""Toolset `sip`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="sip",
    description="SIP connections (office PBX and cloud SIP providers): add, update, list, delete, registration status.",
    default=False,
    tools=(),
)
