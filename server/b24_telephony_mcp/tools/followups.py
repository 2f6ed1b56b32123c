"""Toolset `followups`."""

from __future__ import annotations

from b24_telephony_mcp.tools.base import Toolset

TOOLSET = Toolset(
    name="followups",
    description="AI call follow-ups (REST 3.0): summaries, transcripts and the fields they have.",
    default=False,
    tools=(),
)
