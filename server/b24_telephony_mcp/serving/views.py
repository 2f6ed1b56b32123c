"""Tool views (MCP Apps, `io.modelcontextprotocol/ui`): `_meta.ui` on tools and the `ui://` pages as resources.

The SDK's `Apps` extension is made for `MCPServer`, which consumes it at construction; this server is built on the
low-level `Server` from declarations, so `Views` is the thin adapter between the two: the pages are registered in
an `Apps` instance (which shapes their `_meta.ui`, scheme and MIME type), the extension is advertised the way
`MCPServer` advertises it, and tools/list and resources/list take the views from the offer on each request, so
enabling a toolset adds its view.

Only a client that negotiated the extension sees a view: every other client gets tools/list byte for byte as
without views, and an empty resources/list. The SDK's `client_supports_apps` reads the capabilities the client
declared, which `ctx.session` holds for both protocol generations: the initialize handshake's (2025-11-25) and
the request envelope's (2026-07-28, capabilities on every request).
"""

from __future__ import annotations

from typing import Any

from mcp.server import Server, ServerRequestContext
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID, Apps, ResourceCsp, client_supports_apps
from mcp.server.mcpserver.resources import TextResource
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    ListResourcesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    TextResourceContents,
    Tool,
)

from b24_telephony_mcp.tools.base import View
from b24_telephony_mcp.tools.offer import ToolOffer

__all__ = ["APP_MIME_TYPE", "EXTENSION_ID", "Views", "with_view"]

# Nothing outside the page: no connect or resource domains, so the host's CSP lets it load and reach nothing.
NO_DOMAINS = ResourceCsp(connect_domains=[], resource_domains=[])


def with_view(tool: Tool, view: View) -> Tool:
    """`tool` pointing at `view`, for a client that negotiated MCP Apps."""
    return tool.model_copy(update={"meta": {**(tool.meta or {}), "ui": {"resourceUri": view.uri}}})


class Views:
    """The views of the offered tools, for the clients that negotiated MCP Apps."""

    def __init__(self, offer: ToolOffer) -> None:
        self._offer = offer
        self._apps = Apps()
        self._pages: dict[str, TextResource] = {}
        self._listings: dict[int, tuple[ListToolsResult, ListToolsResult]] = {}
        """(a listing without views, the same with them) by the listing's id: the offer's and each narrowing's,
        rebuilt when that listing is."""

    def advertise(self, server: Server[Any]) -> None:
        """The extension in the server's capabilities, and the resources handlers (so the resources capability)."""
        server.extensions[self._apps.identifier] = self._apps.settings()
        server.add_request_handler("resources/list", PaginatedRequestParams, self.list_resources)
        server.add_request_handler("resources/read", ReadResourceRequestParams, self.read_resource)

    def offered(self) -> dict[str, View]:
        return {spec.view.uri: spec.view for spec in self._offer.values() if spec.view is not None}

    def tools(self, ctx: ServerRequestContext[Any], listing: ListToolsResult) -> ListToolsResult:
        """`listing` (the offer's tools/list) as `ctx`'s client should see it: with `_meta.ui` if it negotiated."""
        if not client_supports_apps(ctx):
            return listing
        built = self._listings.get(id(listing))
        if built is None or built[0] is not listing:
            views = {spec.name: spec.view for spec in self._offer.values() if spec.view is not None}
            tools = [with_view(tool, views[tool.name]) if tool.name in views else tool for tool in listing.tools]
            built = (listing, listing.model_copy(update={"tools": tools}))
            self._listings[id(listing)] = built
        return built[1]

    async def list_resources(
        self, ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        pages = [self._page(view) for view in self.offered().values()] if client_supports_apps(ctx) else []
        return ListResourcesResult(
            resources=[
                Resource(
                    uri=page.uri,
                    name=page.name or page.uri,
                    title=page.title,
                    description=page.description,
                    mime_type=page.mime_type,
                    _meta=page.meta,
                )
                for page in pages
            ]
        )

    async def read_resource(
        self, _ctx: ServerRequestContext[Any], params: ReadResourceRequestParams
    ) -> ReadResourceResult:
        # Readable by any client that knows the URI: a host may fetch the page before it renders a result.
        uri = str(params.uri)
        view = self.offered().get(uri)
        if view is None:
            offered = ", ".join(self.offered()) or "none"
            raise MCPError(INVALID_PARAMS, f"no resource {uri}; offered: {offered}", {"uri": uri})
        page = self._page(view)
        text = await page.read()
        return ReadResourceResult(
            contents=[TextResourceContents(uri=page.uri, mime_type=page.mime_type, text=text, _meta=page.meta)]
        )

    def _page(self, view: View) -> TextResource:
        """`view` registered in the Apps extension, its file read once, on first use (not at start)."""
        page = self._pages.get(view.uri)
        if page is None:
            self._apps.add_html_resource(
                view.uri,
                view.html(),
                name=view.title,
                title=view.title,
                description=view.description,
                csp=NO_DOMAINS,
                prefers_border=False,
            )
            page = self._pages[view.uri] = next(
                binding.resource
                for binding in self._apps.resources()
                if binding.resource.uri == view.uri and isinstance(binding.resource, TextResource)
            )
        return page
