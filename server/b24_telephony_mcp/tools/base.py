"""The tool declaration: one `ToolSpec` per REST method, from which everything else is derived.

A spec names the REST method, the input model (fields are the REST parameter names verbatim),
the shape of the REST `result`, and what the call does to the portal. Annotations, the input
and output JSON schemas, and the `_meta` are computed from it, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, model_validator

from b24_telephony_mcp.tools.files import FilePolicy
from b24_telephony_mcp.tools.schema import lean_schema, property_names

META_METHOD_KEY = "b24/method"


def _numeric_text_to_int(value: Any) -> Any:
    # Bitrix24 compares these loosely in PHP ("2" == 2), so a model sending "2" is not wrong.
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def int_choice(*values: int) -> Any:
    """An integer enum (`TYPE`, `SHOW`, ...) that also accepts the numbers written as text."""
    return Annotated[Literal[values], BeforeValidator(_numeric_text_to_int)]  # type: ignore[valid-type]


class RestParams(BaseModel):
    """Base of every tool input: unknown arguments are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    at_least_one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Groups of parameters of which at least one must be given (rules a flat schema cannot state
    portably: many clients refuse a top-level anyOf in a tool's input schema)."""

    @model_validator(mode="after")
    def _check_at_least_one_of(self) -> RestParams:
        for group in self.at_least_one_of:
            if all(getattr(self, name) in (None, "") for name in group):
                raise ValueError(f"pass at least one of {' or '.join(group)}")
        return self

    def to_rest(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class RestResult(BaseModel):
    """Base of result shapes: documents the fields, never drops ones the portal adds."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class ToolContext:
    """What a tool may need beyond its arguments."""

    files: FilePolicy


Prepare = Callable[[Any, ToolContext], Awaitable[dict[str, Any]]]


async def plain_params(params: RestParams, _: ToolContext) -> dict[str, Any]:
    return params.to_rest()


@dataclass(frozen=True)
class Effect:
    """What a call does to the portal, in the terms of MCP's tool annotations (and of methods.json)."""

    read_only: bool
    destructive: bool
    """May overwrite or remove what exists, or cannot be undone."""
    idempotent: bool
    """Repeating the same successful call changes nothing more."""


READS = Effect(read_only=True, destructive=False, idempotent=True)
CREATES = Effect(read_only=False, destructive=False, idempotent=False)
SIGNALS = Effect(read_only=False, destructive=False, idempotent=True)
"""A repeatable nudge with no stored result, such as opening a call card."""
OVERWRITES = Effect(read_only=False, destructive=True, idempotent=True)
CONSUMES = Effect(read_only=False, destructive=True, idempotent=False)
"""Removes or replaces something, so a repeat fails or replaces again."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    method: str
    title: str
    description: str
    params: type[RestParams]
    result: Any
    """A type describing the REST `result` (only its JSON schema is used)."""
    effect: Effect
    paginated: bool = False
    """The method pages its list with `start`; `total` and `next` come back beside the result."""
    open_world: bool = True
    """Every tool talks to the customer's portal, whose state this server does not own."""
    prepare: Prepare = plain_params
    """Turns validated arguments into REST parameters (e.g. reads a local file)."""

    @cached_property
    def input_schema(self) -> dict[str, Any]:
        return lean_schema(self.params.model_json_schema())

    @cached_property
    def argument_names(self) -> frozenset[str]:
        """Every property name in the input schema, nested ones included."""
        return property_names(self.input_schema)

    @cached_property
    def output_schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {"result": lean_schema(TypeAdapter(self.result).json_schema(), keep_null=True)}
        if self.paginated:
            properties |= {"total": {"type": "integer"}, "next": {"type": "integer"}}
        # Failures carry their details here too: an isError result whose structuredContent broke
        # the schema would be rejected by strict clients (TypeScript SDK, MCP Inspector).
        properties["error"] = {
            "type": "object",
            "description": "On failure, instead of result",
        }
        return {
            "type": "object",
            "properties": properties,
            "anyOf": [{"required": ["result"]}, {"required": ["error"]}],
        }

    @property
    def meta(self) -> dict[str, Any]:
        return {META_METHOD_KEY: self.method}
