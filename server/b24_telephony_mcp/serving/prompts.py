"""prompts/list, prompts/get and completion/complete over the prompt declarations, for what the server offers."""

from __future__ import annotations

from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    GetPromptRequestParams,
    GetPromptResult,
    ListPromptsResult,
    PaginatedRequestParams,
    Prompt,
    PromptArgument,
    PromptMessage,
    PromptReference,
    TextContent,
)

from b24_telephony_mcp.prompts.base import PromptSpec
from b24_telephony_mcp.prompts.catalogue import offered_prompts, prompt_text
from b24_telephony_mcp.prompts.completions import Completer
from b24_telephony_mcp.tools.offer import ToolOffer

NO_COMPLETION = CompleteResult(completion=Completion(values=[], total=0, has_more=False))


def mcp_prompt(prompt: PromptSpec) -> Prompt:
    return Prompt(
        name=prompt.name,
        title=prompt.title,
        description=prompt.description,
        arguments=[
            PromptArgument(name=arg.name, description=arg.description, required=arg.required or None)
            for arg in prompt.arguments
        ],
    )


class Prompts:
    """The prompt handlers of one server: they follow its offer (toolsets, read-only, enable_toolset)."""

    def __init__(self, offer: ToolOffer, completer: Completer) -> None:
        self._offer = offer
        self._completer = completer

    def offered(self) -> dict[str, PromptSpec]:
        return {prompt.name: prompt for prompt in offered_prompts(self._offer)}

    async def list_prompts(self, _ctx: Any, _params: PaginatedRequestParams | None) -> ListPromptsResult:
        return ListPromptsResult(prompts=[mcp_prompt(prompt) for prompt in self.offered().values()])

    async def get_prompt(self, _ctx: Any, params: GetPromptRequestParams) -> GetPromptResult:
        offered = self.offered()
        prompt = offered.get(params.name)
        if prompt is None:
            raise MCPError(INVALID_PARAMS, f"no prompt named {params.name!r}; prompts: {', '.join(offered) or 'none'}")
        given = {name: value for name, value in (params.arguments or {}).items() if value.strip()}
        if missing := prompt.missing(given):
            raise MCPError(INVALID_PARAMS, f"{prompt.name} needs {', '.join(missing)}")
        if unknown := sorted(set(given) - {arg.name for arg in prompt.arguments}):
            raise MCPError(INVALID_PARAMS, f"{prompt.name} takes no {', '.join(unknown)}")
        text = prompt_text(prompt, given, self._offer)
        message = PromptMessage(role="user", content=TextContent(type="text", text=text))
        return GetPromptResult(description=prompt.description, messages=[message])

    async def complete(self, _ctx: Any, params: CompleteRequestParams) -> CompleteResult:
        """Values for a prompt's argument; anything else (an unknown prompt or argument, a resource template: this
        server has none) completes nothing rather than failing the client's input box."""
        if not isinstance(params.ref, PromptReference):
            return NO_COMPLETION
        prompt = self.offered().get(params.ref.name)
        argument = prompt.argument(params.argument.name) if prompt else None
        if argument is None:
            return NO_COMPLETION
        found = await self._completer.complete(argument, params.argument.value)
        return CompleteResult(completion=Completion(values=found.values, total=found.total, has_more=found.has_more))
