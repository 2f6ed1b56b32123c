"""The MCP layer: turns tool declarations into an MCP server and tool calls into REST calls.

Built on the SDK's low-level `Server` rather than `MCPServer`: `MCPServer` derives schemas from
function signatures, accepts unknown arguments silently, puts pydantic internals into error texts
and pretty-prints results twice. Here the schemas come from the declarations, unknown arguments
are refused, errors are ours, and each result is one compact JSON text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    InputRequiredResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
    ToolAnnotations,
)
from pydantic import ValidationError

from b24_telephony_mcp import __version__
from b24_telephony_mcp.bitrix import BitrixClient, BitrixError
from b24_telephony_mcp.bitrix.errors import INTERNAL_ERROR, UNKNOWN_TOOL
from b24_telephony_mcp.confirmation import Confirmations, Confirmer, confirm_before_run
from b24_telephony_mcp.redact import redact
from b24_telephony_mcp.tools import TOOLS_BY_NAME, TOOLSETS, ToolContext, ToolSpec, select_tools
from b24_telephony_mcp.tools.base import GIVEN_SIP_PASSWORDS, ToolRun, mask_secrets

log = logging.getLogger(__name__)

SERVER_NAME = "b24-telephony-mcp"

INSTRUCTIONS_HEAD = (
    "Bitrix24 telephony. Failed calls return isError with the Bitrix24 code, a hint and whether a retry can help."
)


def instructions_for(offered: Iterable[ToolSpec]) -> str:
    """The server's instructions for what it offers: each toolset's line only if every tool it names is
    offered, and the toolsets that are off, so the model can tell the user how to get them."""
    names = {spec.name for spec in offered}
    lines = [INSTRUCTIONS_HEAD]
    off: list[str] = []
    for toolset in TOOLSETS:
        if not any(spec.name in names for spec in toolset.tools):
            off.append(toolset.name)
        elif toolset.instructions and all(tool in names for tool in TOOLS_BY_NAME if tool in toolset.instructions):
            lines.append(toolset.instructions)
    if off:
        lines.append(f"Toolsets not enabled here (the user can add them with --toolsets): {', '.join(off)}.")
    return " ".join(lines)


def mcp_tool(spec: ToolSpec) -> Tool:
    return Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=ToolAnnotations(
            title=spec.title,
            read_only_hint=spec.effect.read_only,
            destructive_hint=spec.effect.destructive,
            idempotent_hint=spec.effect.idempotent,
            open_world_hint=spec.open_world,
        ),
        _meta=spec.meta,
    )


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
        spec.explain(exc)
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


def build_server(client: BitrixClient, context: ToolContext, tools: Iterable[ToolSpec] | None = None) -> Server[Any]:
    """The MCP server offering `tools` (default: the default toolsets)."""
    specs = {spec.name: spec for spec in (select_tools() if tools is None else tools)}
    # Built once: the list never changes while the process runs.
    listing = ListToolsResult(tools=[mcp_tool(spec) for spec in specs.values()])
    confirmations = Confirmations()  # asking the user before tools that declare `confirm` (confirmation.py)

    async def list_tools(_ctx: Any, _params: PaginatedRequestParams | None) -> ListToolsResult:
        return listing

    async def call_tool(
        ctx: ServerRequestContext[Any], params: CallToolRequestParams
    ) -> CallToolResult | InputRequiredResult:
        spec = specs.get(params.name)
        if spec is None:
            return error_result(
                BitrixError(UNKNOWN_TOOL, f"no tool named {params.name!r}; available: {', '.join(specs)}")
            )
        # report_progress is a no-op unless the client sent a progressToken.
        run = ToolRun(client, context, specs, ctx.session.report_progress)
        return await run_tool(spec, params.arguments or {}, run, confirmations.confirmer(ctx, params))

    server: Server[Any] = Server(
        SERVER_NAME,
        version=__version__,
        instructions=instructions_for(specs.values()),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    confirmations.protect(server)  # a 2026-07-28 confirmation counts only for a question this process asked
    return server
