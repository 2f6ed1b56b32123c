"""The MCP layer: turns tool declarations into an MCP server and tool calls into REST calls.

Built on the SDK's low-level `Server` rather than `MCPServer`: `MCPServer` derives schemas from
function signatures, accepts unknown arguments silently, puts pydantic internals into error texts
and pretty-prints results twice. Here the schemas come from the declarations, unknown arguments
are refused, errors are ours, and each result is one compact JSON text.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import anyio
from mcp.server import InitializationOptions, NotificationOptions, Server, ServerRequestContext
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    InputRequiredResult,
    ListResourcesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import ValidationError

from b24_telephony_mcp import __version__
from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.bitrix.errors import INTERNAL_ERROR, UNKNOWN_TOOL
from b24_telephony_mcp.common import metrics
from b24_telephony_mcp.common.redact import redact
from b24_telephony_mcp.prompts.completions import Completer
from b24_telephony_mcp.serving.client_log import ClientLog
from b24_telephony_mcp.serving.confirmation import Confirmations, Confirmer, SharedApprovals, confirm_before_run
from b24_telephony_mcp.serving.event_resource import EVENTS_URI, EventResource
from b24_telephony_mcp.serving.narrowing import Narrowings
from b24_telephony_mcp.serving.prompts import Prompts
from b24_telephony_mcp.serving.views import Views
from b24_telephony_mcp.tools import ToolSpec, select_tools
from b24_telephony_mcp.tools.base import GIVEN_SIP_PASSWORDS, ToolRun, mask_secrets
from b24_telephony_mcp.tools.catalogue import TOOLSET_TOOL_NAMES, load_toolset
from b24_telephony_mcp.tools.connection import Connections
from b24_telephony_mcp.tools.offer import ToolOffer
from b24_telephony_mcp.tools.schema_cache import SCHEMAS

log = logging.getLogger(__name__)

SERVER_NAME = "b24-telephony-mcp"
EVENTS_TOOL = "get_telephony_events"
"""While it is offered, so is the events resource."""

INSTRUCTIONS_HEAD = (
    "Bitrix24 telephony. Failed calls return isError with the Bitrix24 code, a hint and whether a retry can help."
)


def instructions_for(offer: ToolOffer) -> str:
    """The server's instructions for what it offers: each toolset's line without sentences naming a tool that is
    not offered, read-only mode, and the toolsets that are off, so the model can tell the user how to get them."""
    lines = [INSTRUCTIONS_HEAD]
    off: list[str] = []
    for name, tools in TOOLSET_TOOL_NAMES.items():
        if name not in offer.enabled and not any(tool in offer for tool in tools):
            off.append(name)
        elif (text := load_toolset(name).instructions) and (line := offer.only_offered(text, explain=False)):
            lines.append(line)
    if offer.read_only:
        lines.append("Read-only mode: tools that change the portal are not offered.")
    if off:
        how = "enable_toolset adds one; list_toolsets describes them"
        if not offer.dynamic:
            how = "the user can add them with --toolsets"
        lines.append(f"Toolsets not enabled here ({how}): {', '.join(off)}.")
    return " ".join(lines)


def mcp_tool(spec: ToolSpec, offer: ToolOffer | None = None) -> Tool:
    """`spec` as tools/list shows it; with `offer`, its texts keep no sentence naming a tool that is not offered."""
    description, input_schema, output_schema = spec.description, spec.input_schema, spec.output_schema
    if offer is not None:
        description = offer.only_offered(description, explain=False) if description else description
        input_schema, output_schema = _only_offered(input_schema, offer), _only_offered(output_schema, offer)
    return Tool(
        name=spec.name,
        title=spec.title,
        description=description,
        input_schema=input_schema,
        output_schema=output_schema,
        # No annotations.title: Tool.title names the tool, and each copy is context paid on every turn.
        annotations=ToolAnnotations(
            read_only_hint=spec.effect.read_only,
            destructive_hint=spec.effect.destructive,
            idempotent_hint=spec.effect.idempotent,
            open_world_hint=spec.open_world,
        ),
        _meta=spec.meta,
    )


def _only_offered(schema: Any, offer: ToolOffer) -> Any:
    """A copy of `schema` whose descriptions keep no sentence naming a tool that is not offered (none left: no
    description). Runs once per change of the offer."""
    if isinstance(schema, list):
        return [_only_offered(item, offer) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):  # not a property named "description" (a dict)
            if text := offer.only_offered(value, explain=False):
                copy[key] = text
        else:
            copy[key] = _only_offered(value, offer)
    return copy


def _compact(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def success_result(structured: dict[str, Any], keep: Collection[str] = ()) -> CallToolResult:
    text = _compact(structured)
    cleaned = redact(text, keep)
    if cleaned != text:  # a portal echoing a credential back (e.g. in an upload URL)
        structured, text = json.loads(cleaned), cleaned
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def error_result(error: BitrixError) -> CallToolResult:
    details = error.to_dict()
    status = f"HTTP {error.http_status}" if error.http_status else "no HTTP response"
    retry = "a retry can help" if error.retryable else "a retry will not help as is"
    if error.retryable and "reset_at" in details:
        retry += f" after {details['reset_at']}"
    lines = [f"{error.code}: {error.description}"]
    if error.hint:
        lines.append(f"Hint: {error.hint}")
    lines.append(f"({status}; {retry}{f'; {error.method}' if error.method else ''})")
    text = redact("\n".join(lines))
    structured = {"error": {key: redact(v) if isinstance(v, str) else v for key, v in details.items()}}
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured, is_error=True)


async def run_tool(
    spec: ToolSpec, arguments: Mapping[str, Any], run: ToolRun, confirmer: Confirmer | None = None
) -> CallToolResult | InputRequiredResult:
    """The tool's result; or, for a tool that asks the user first (`spec.confirm`) on a 2026-07-28 connection,
    the `input_required` answer carrying the question."""
    try:
        params = spec.validate(arguments)
        # Confirmation (ToolSpec.confirm, confirmation.py): nothing below runs without the user's yes.
        question = await confirm_before_run(spec, params, run.context, confirmer)
        if question is not None:
            return question
        structured = await spec.execute(params, run)
    except ValidationError as exc:
        return error_result(spec.invalid_arguments(exc))
    except BitrixError as exc:
        spec.explain(exc, run.offered)
        log.info("%s failed: %s %s", spec.name, exc.code, exc.description)
        return error_result(exc)
    except Exception:
        log.exception("%s: unexpected failure", spec.name)
        return error_result(
            BitrixError(INTERNAL_ERROR, "unexpected failure inside the MCP server (details in its log)")
        )
    if run.context.reveal_sip_passwords:  # the operator's opt-in: SIP passwords stay, even those passed in
        return success_result(structured, keep=GIVEN_SIP_PASSWORDS)
    return success_result(mask_secrets(structured))


class TelephonyServer(Server[Any]):
    """The SDK's low-level server, advertising `listChanged` for tools, prompts and resources (handshake protocol)
    when the offer can change; under 2026-07-28 the SDK derives them from the `subscriptions/listen` handler."""

    narrowings: Narrowings
    """What each HTTP request is offered (its selection headers); the HTTP transports check those headers."""

    def __init__(self, *args: Any, offer_can_change: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offer_can_change = offer_can_change

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options
            or NotificationOptions(
                tools_changed=self.offer_can_change,
                prompts_changed=self.offer_can_change,
                resources_changed=self.offer_can_change,
            ),
            experimental_capabilities,
            extensions,
        )


def _error_code(result: CallToolResult) -> str | None:
    if not result.is_error or result.structured_content is None:
        return None
    return str(result.structured_content["error"]["code"])


def build_server(
    connections: Connections,
    tools: ToolOffer | Iterable[ToolSpec] | None = None,
    approvals: SharedApprovals | None = None,
) -> TelephonyServer:
    """The MCP server offering `tools` (default: the default toolsets), each request run with the portal connection
    `connections` gives it; `approvals` when replicas share state."""
    offer = tools if isinstance(tools, ToolOffer) else ToolOffer(select_tools() if tools is None else tools)
    client_log = ClientLog()
    # The portal's events as a resource (event_resource.py), while the events toolset is or may be offered.
    hub = connections.events if offer.may_offer("events") else None
    # 2026-07-28 clients learn of a changed list or resource through `subscriptions/listen`; handshake clients by
    # notification.
    changes = InMemorySubscriptionBus() if offer.dynamic or hub is not None else None
    event_resource = EventResource(hub, changes) if hub is not None and changes is not None else None

    def activate_events() -> None:
        if hub is not None and EVENTS_TOOL in offer:
            hub.activate()  # the events are offered: drain the portal's offline queue from now on

    activate_events()
    # The headers of an HTTP request may narrow what it is offered (narrowing.py); over stdio it is the offer.
    narrowings = Narrowings(offer)
    listings: dict[int, tuple[ToolOffer, int, ListToolsResult]] = {}
    # Asking the user before tools that declare `confirm` (confirmation.py); replicas share what that needs.
    confirmations = Confirmations(approvals)
    prompts = Prompts(offer, Completer(connections))
    # Pages beside tool results (MCP Apps, views.py), for the clients that negotiated them.
    views = Views(offer)

    def lists_beside_tools() -> dict[str, tuple[str, ...]]:
        """What the other lists a client reads hold while the offer stands: they change with it."""
        resources = (*views.offered(), *((EVENTS_URI,) if event_resource is not None and EVENTS_TOOL in offer else ()))
        return {"prompts": tuple(prompts.offered()), "resources": resources}

    # As last announced; read again only when the offer changed, not on every call.
    announced_lists = lists_beside_tools() if changes is not None else {}

    def listing_of(offered: ToolOffer) -> ListToolsResult:
        """tools/list of `offered` (the server's offer or a connection's narrowing of it), built once per change."""
        built = listings.get(id(offered))
        if built is None or built[0] is not offered or built[1] != offered.version:
            built = (
                offered,
                offered.version,
                ListToolsResult(tools=[mcp_tool(spec, offered) for spec in offered.values()]),
            )
            listings[id(offered)] = built
            SCHEMAS.save()  # the schemas just made, for the next start
        return built[2]

    async def list_tools(ctx: ServerRequestContext[Any], _params: PaginatedRequestParams | None) -> ListToolsResult:
        return views.tools(ctx, listing_of(narrowings.offer_for(ctx.request)))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        nonlocal announced_lists
        offered = narrowings.offer_for(ctx.request)
        spec = offered.get(params.name)
        if spec is None:
            return error_result(
                BitrixError(UNKNOWN_TOOL, f"no tool named {params.name!r}; available: {', '.join(offered)}")
            )
        try:
            connection = await connections.current()
        except BitrixError as exc:  # this request has no portal connection (signed out, revoked)
            metrics.tool_call(spec.name, exc.code)
            return error_result(exc)
        version = offer.version
        with client_log.collecting() as records:
            # report_progress is a no-op unless the client sent a progressToken.
            run = ToolRun(connection.client, connection.context, offered, ctx.session.report_progress)
            result = await run_tool(spec, params.arguments or {}, run, confirmations.confirmer(ctx, params))
        await client_log.send(ctx, records)
        if offer.version != version and changes is not None:
            activate_events()
            server.instructions = instructions_for(offer)
            lists = lists_beside_tools()
            changed = sorted(name for name, now in lists.items() if now != announced_lists[name])
            announced_lists = lists
            await announce_lists_changed(ctx, changes, ("tools", *changed))
        if isinstance(result, CallToolResult):  # not a question to the user (input_required): the call is done
            metrics.tool_call(spec.name, _error_code(result))
        return result

    server = TelephonyServer(
        SERVER_NAME,
        version=__version__,
        instructions=instructions_for(offer),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=prompts.list_prompts,
        on_get_prompt=prompts.get_prompt,
        on_completion=prompts.complete,
        on_subscriptions_listen=ListenHandler(changes) if changes is not None else None,
        offer_can_change=offer.dynamic,
    )
    server.narrowings = narrowings
    confirmations.protect(server)  # a 2026-07-28 confirmation counts only for a question this process asked
    views.advertise(server)
    if event_resource is not None:
        serve_event_resource(server, views, event_resource, offer)
    # Registered rather than passed as on_set_logging_level, which warns that 2026-07-28 deprecates it.
    server.add_request_handler("logging/setLevel", SetLevelRequestParams, client_log.set_level)
    return server


def serve_event_resource(server: Server[Any], views: Views, events: EventResource, offer: ToolOffer) -> None:
    """`b24://telephony/events` beside the views' pages in resources/list and /read, while get_telephony_events is
    offered, and resources/subscribe for it."""

    async def list_resources(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        listing = await views.list_resources(ctx, params)
        if EVENTS_TOOL in offer:
            listing = listing.model_copy(update={"resources": [*listing.resources, events.resource()]})
        return listing

    async def read_resource(ctx: ServerRequestContext[Any], params: ReadResourceRequestParams) -> ReadResourceResult:
        if str(params.uri) == EVENTS_URI and EVENTS_TOOL in offer:
            return await events.read()
        return await views.read_resource(ctx, params)

    server.add_request_handler("resources/list", PaginatedRequestParams, list_resources)
    server.add_request_handler("resources/read", ReadResourceRequestParams, read_resource)
    server.add_request_handler("resources/subscribe", SubscribeRequestParams, events.subscribe)
    server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, events.unsubscribe)


# Per list a client reads: the handshake-protocol notification, and the 2026-07-28 `subscriptions/listen` event.
LIST_CHANGED: dict[str, tuple[Callable[[Any], Awaitable[None]], Callable[[], Any]]] = {
    "tools": (lambda session: session.send_tool_list_changed(), ToolsListChanged),
    "prompts": (lambda session: session.send_prompt_list_changed(), PromptsListChanged),
    "resources": (lambda session: session.send_resource_list_changed(), ResourcesListChanged),
}


async def announce_lists_changed(
    ctx: ServerRequestContext[Any], changes: InMemorySubscriptionBus, lists: Sequence[str]
) -> None:
    """`notifications/<list>/list_changed` for each of `lists` to the calling handshake-protocol session, and the
    same events to every 2026-07-28 `subscriptions/listen` stream. The SDK drops each where its protocol forbids
    it. Other handshake sessions of an HTTP server are not told; their next list shows the change."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # the caller left
        for name in lists:
            await LIST_CHANGED[name][0](ctx.session)
    for name in lists:
        await changes.publish(LIST_CHANGED[name][1]())
