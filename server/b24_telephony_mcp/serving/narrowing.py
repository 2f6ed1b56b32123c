"""Per-connection tool selection over HTTP: the `X-MCP-Toolsets` (comma-separated names, or `all`) and
`X-MCP-Readonly` (`true`/`1`) request headers narrow what that request is offered, within what the server offers
(as github-mcp-server's remote server does). A header naming a toolset the server does not serve is a 400
naming those it does, answered before the request reaches MCP (http_transport.HttpGuard); the handlers
then list and run only the narrowed offer (`Narrowings.offer_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from b24_telephony_mcp.tools.offer import ToolOffer

TOOLSETS_HEADER = "x-mcp-toolsets"
READONLY_HEADER = "x-mcp-readonly"
_TRUE = ("true", "1")
_FALSE = ("false", "0", "")


class SelectionHeaderError(ValueError):
    """The request's selection headers name what the server does not serve."""


@dataclass(frozen=True)
class Narrowing:
    toolsets: frozenset[str] | None
    """None: the server's own."""
    read_only: bool


def narrowing(headers: Mapping[str, str], servable: tuple[str, ...]) -> Narrowing | None:
    """The narrowing `headers` ask for (None when they ask for none); `SelectionHeaderError` for names not in
    `servable` or a read-only value that is not a boolean."""
    toolsets_value = headers.get(TOOLSETS_HEADER)
    readonly_value = headers.get(READONLY_HEADER)
    if toolsets_value is None and readonly_value is None:
        return None
    toolsets: frozenset[str] | None = None
    if toolsets_value is not None and toolsets_value.strip().lower() != "all":
        toolsets = frozenset(name.strip() for name in toolsets_value.split(",") if name.strip())
        unknown = sorted(toolsets - set(servable))
        if unknown or not toolsets:
            raise SelectionHeaderError(
                f"X-MCP-Toolsets: {'unknown toolset ' + ', '.join(map(repr, unknown)) if unknown else 'no toolset'}; "
                f"this server serves: {', '.join(servable)} (or all)"
            )
    readonly = (readonly_value or "").strip().lower()
    if readonly not in _TRUE + _FALSE:
        raise SelectionHeaderError(f"X-MCP-Readonly: {readonly_value!r} is not true, 1, false or 0")
    return Narrowing(toolsets, readonly in _TRUE)


class Narrowings:
    """The narrowed offers of one server's offer, each built once per change of it."""

    def __init__(self, offer: ToolOffer) -> None:
        self.offer = offer
        self._built: dict[Narrowing, tuple[int, ToolOffer]] = {}

    def servable(self) -> tuple[str, ...]:
        return self.offer.servable_toolsets()

    def offer_for(self, request: Any) -> ToolOffer:
        """The offer of the request being served (`ctx.request`: the HTTP request, None over stdio). Its headers
        were checked on the way in (http_transport.HttpGuard)."""
        headers = getattr(request, "headers", None)
        chosen = narrowing(headers, self.servable()) if headers is not None else None
        if chosen is None:
            return self.offer
        built = self._built.get(chosen)
        if built is None or built[0] != self.offer.version:
            built = (self.offer.version, self.offer.narrowed(chosen.toolsets, chosen.read_only))
            self._built[chosen] = built
        return built[1]
