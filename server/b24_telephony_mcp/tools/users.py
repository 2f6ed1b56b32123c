"""Toolset `users`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="users",
    description="Users' telephony settings and phone activation.",
    default=False,
    tools=(),
)
