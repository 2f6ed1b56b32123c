"""The MCP layer: turns tool declarations into an MCP server and tool calls into REST calls.

Built on the SDK's low-level `Server` rather than `MCPServer`: `MCPServer` derives schemas from
function signatures, accepts unknown arguments silently, puts pydantic internals into error texts
and pretty-prints results twice. Here the schemas come from the declarations, unknown arguments
are refused, errors are ours, and each result is one compact JSON text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from mcp.server import Server
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

from b24_telephony_mcp import __version__, metrics
from b24_telephony_mcp.bitrix import BitrixClient, BitrixError
from b24_telephony_mcp.bitrix.errors import INVALID_ARGUMENTS
from b24_telephony_mcp.confirmation import Confirmations, Confirmer, SharedApprovals, confirm_before_run
from b24_telephony_mcp.redact import redact, register_secret
from b24_telephony_mcp.tools import TOOLS_BY_NAME, TOOLSETS, ToolContext, ToolSpec, select_tools
from b24_telephony_mcp.tools.base import SECRET_ARGUMENTS, ToolRun, mask_secrets

log = logging.getLogger(__name__)

SERVER_NAME = "b24-telephony-mcp"
UNKNOWN_TOOL = "UNKNOWN_TOOL"
INTERNAL_ERROR = "INTERNAL_ERROR"

INSTRUCTIONS_HEAD = (
    "Bitrix24 telephony. Failed calls return isError with the Bitrix24 code, a hint and whether a retry can help."
)
_sip_passwords: set[str | None] = set()
"""SIP passwords given as arguments: redacted from logs, yet kept in results under B24_REVEAL_SIP_PASSWORDS=1."""
SCOPE_CODES = ("insufficient_scope", "BITRIX_REST_V3_EXCEPTION_INSUFFICIENTSCOPEEXCEPTION")


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


def scope_hint(spec: ToolSpec) -> str:
    scopes = " and ".join(f"'{scope}'" for scope in spec.scopes)
    return (
        f"{spec.name} needs the {scopes} scope. Add it to the application (Applications > Developer resources > "
        "your local application > scopes; then reinstall or log in again) or to the incoming webhook's scopes."
    )


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


def invalid_arguments(spec: ToolSpec, exc: ValidationError) -> BitrixError:
    unknown: list[str] = []
    messages_by_location: dict[str, list[str]] = {}
    for err in exc.errors():
        location = err["loc"]
        # Only a top-level extra is an unknown *argument*; one nested in an item (MESSAGES.0.X) is described
        # where it is, or the text would call a valid argument (MESSAGES) unknown.
        if err["type"] == "extra_forbidden" and len(location) == 1:
            unknown.append(str(location[0]))
            continue
        # pydantic adds union members and model names to the location (USER_ID.list[int]); keep only
        # what the caller wrote: argument names and list indexes.
        where = ".".join(str(part) for part in location if isinstance(part, int) or part in spec.argument_names)
        if err["type"] == "extra_forbidden":
            where, message = f"{where}.{location[-1]}", "unknown field"
        else:
            message = _plain(str(err["msg"]))
        messages = messages_by_location.setdefault(where, [])
        if message not in messages:
            messages.append(message)
    problems = [
        f"{where}: {' or '.join(msgs)}" if where else " or ".join(msgs) for where, msgs in messages_by_location.items()
    ]
    if unknown:
        valid = ", ".join(spec.params.model_fields) or "none"
        problems.insert(0, f"unknown argument(s) {', '.join(unknown)}; valid arguments: {valid}")
    return BitrixError(INVALID_ARGUMENTS, "; ".join(problems), method=spec.method)


_MODEL_NAME = re.compile(r" or instance of \w+")


def _plain(message: str) -> str:
    """pydantic's message minus its "Value error, " prefix and our class names."""
    return _MODEL_NAME.sub("", message.removeprefix("Value error, "))


async def run_tool(
    spec: ToolSpec, arguments: Mapping[str, Any], run: ToolRun, confirmer: Confirmer | None = None
) -> CallToolResult | InputRequiredResult:
    """The tool's result; or, for a tool that asks the user first (`spec.confirm`) on a 2026-07-28 connection,
    the `input_required` answer carrying the question."""
    context = run.context
    try:
        params = spec.params.model_validate(dict(arguments))
        for name in SECRET_ARGUMENTS & params.model_fields_set:
            register_secret(getattr(params, name))  # a SIP password never reaches a log line
            _sip_passwords.add(getattr(params, name))
        # Confirmation (ToolSpec.confirm, confirmation.py): nothing below runs without the user's yes.
        question = await confirm_before_run(spec, params, context, confirmer)
        if question is not None:
            return question
        if spec.run is not None:
            structured = await spec.run(params, run)
        else:
            rest_params = await spec.prepare(params, context)
            response = await run.client.call(
                spec.method, rest_params, read_only=spec.effect.read_only, rest_api=spec.rest_api
            )
            structured = {"result": spec.shape_result(params, response.result)}
            if response.total is not None:
                structured["total"] = response.total
            if response.next is not None:
                structured["next"] = response.next
    except ValidationError as exc:
        return error_result(invalid_arguments(spec, exc))
    except BitrixError as exc:
        exc.method = exc.method or spec.method  # refusals before the request (a local file) name it too
        exc.hint = scope_hint(spec) if exc.code in SCOPE_CODES else spec.hint_for(exc.code, exc.description) or exc.hint
        log.info("%s failed: %s %s", spec.name, exc.code, exc.description)
        return error_result(exc)
    except Exception:
        log.exception("%s: unexpected failure", spec.name)
        return error_result(
            BitrixError(INTERNAL_ERROR, "unexpected failure inside the MCP server (details in its log)")
        )
    if context.reveal_sip_passwords:  # the operator's opt-in: SIP passwords stay, even those passed in
        return success_result(structured, keep=_sip_passwords)
    return success_result(mask_secrets(structured))


def _error_code(result: CallToolResult) -> str | None:
    if not result.is_error or result.structured_content is None:
        return None
    return str(result.structured_content["error"]["code"])


def build_server(
    client: BitrixClient,
    context: ToolContext,
    tools: Iterable[ToolSpec] | None = None,
    approvals: SharedApprovals | None = None,
) -> Server[Any]:
    """The MCP server offering `tools` (default: the default toolsets); `approvals` when replicas share state."""
    specs = {spec.name: spec for spec in (select_tools() if tools is None else tools)}
    # Built once: the list never changes while the process runs.
    listing = ListToolsResult(tools=[mcp_tool(spec) for spec in specs.values()])
    # Asking the user before tools that declare `confirm` (confirmation.py); replicas share what that needs.
    confirmations = Confirmations(approvals)

    async def list_tools(_ctx: Any, _params: PaginatedRequestParams | None) -> ListToolsResult:
        return listing

    async def call_tool(ctx: Any, params: CallToolRequestParams) -> CallToolResult | InputRequiredResult:
        spec = specs.get(params.name)
        if spec is None:
            return error_result(
                BitrixError(UNKNOWN_TOOL, f"no tool named {params.name!r}; available: {', '.join(specs)}")
            )
        result = await run_tool(
            spec, params.arguments or {}, ToolRun(client, context, specs), confirmations.confirmer(ctx, params)
        )
        if isinstance(result, CallToolResult):  # not a question to the user (input_required): the call is done
            metrics.tool_call(spec.name, _error_code(result))
        return result

    server: Server[Any] = Server(
        SERVER_NAME,
        version=__version__,
        instructions=instructions_for(specs.values()),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    confirmations.protect(server)  # a 2026-07-28 confirmation counts only for a question this process asked
    return server
