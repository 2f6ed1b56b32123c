"""What a connection allows: which tools its granted scopes cover, and which a webhook is refused.

Read from the tool declarations (`ToolSpec.scopes`, `ToolSpec.app_only`); `login` and `doctor` both ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from b24_telephony_mcp.tools import ToolSpec


def parse_scopes(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """Scopes as Bitrix24 sends them: comma-separated (redirect, token answer), space-separated (ONAPPINSTALL)
    or a list (`scope` method); sorted, without duplicates."""
    items = raw.replace(",", " ").split() if isinstance(raw, str) else list(raw or ())
    return tuple(sorted({str(item).strip() for item in items if str(item).strip()}))


def missing_scopes(tools: Iterable[ToolSpec], granted: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Tool name -> the scopes it needs that were not granted (tools that lack none are left out)."""
    have = set(granted)
    gaps = {spec.name: tuple(scope for scope in spec.scopes if scope not in have) for spec in tools}
    return {name: gap for name, gap in gaps.items() if gap}


def app_only_tools(tools: Iterable[ToolSpec]) -> tuple[str, ...]:
    """Tools whose method answers WRONG_AUTH_TYPE to a webhook."""
    return tuple(spec.name for spec in tools if spec.app_only)


def names_list(names: Sequence[str], limit: int = 6) -> str:
    """`a, b, c and 4 more`: short enough for one line of output."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown
