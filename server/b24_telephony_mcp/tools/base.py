"""The tool declaration: one `ToolSpec` per REST method, from which everything else is derived.

A spec names the REST method, the input model (fields are the REST parameter names verbatim),
the shape of the REST `result`, and what the call does to the portal. Annotations, the input
and output JSON schemas, and the `_meta` are computed from it, so they cannot disagree.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, BitrixResponse
from b24_telephony_mcp.bitrix.batch import Command, CommandResult
from b24_telephony_mcp.bitrix.errors import INVALID_ARGUMENTS
from b24_telephony_mcp.common.redact import register_secret
from b24_telephony_mcp.tools.files import FilePolicy
from b24_telephony_mcp.tools.schema import JsonDefaults, lean_schema, property_names
from b24_telephony_mcp.tools.schema_cache import SCHEMAS

if TYPE_CHECKING:
    from b24_telephony_mcp.events.hub import EventHub
    from b24_telephony_mcp.state.journal import CallJournal

META_METHOD_KEY = "b24/method"
META_METHODS_KEY = "b24/methods"

SECRET_ARGUMENTS = frozenset({"PASSWORD"})
"""Arguments whose values are credentials (SIP passwords): redacted from every log line."""
GIVEN_SIP_PASSWORDS: set[str] = set()
"""SIP passwords given as arguments: redacted from logs, yet kept in results under B24_REVEAL_SIP_PASSWORDS=1."""
MASKED_RESULT_KEYS = frozenset({"PASSWORD", "INCOMING_PASSWORD", "SIP_PASSWORD"})
"""Result keys holding SIP passwords: masked unless B24_REVEAL_SIP_PASSWORDS=1."""
PASSWORD_MASK = "********"


def mask_secrets(value: Any) -> Any:
    """`value` with every SIP password (at any depth) replaced by a fixed mask; non-empty ones only, so an empty
    password still reads as empty."""
    if isinstance(value, dict):
        return {
            key: PASSWORD_MASK if key in MASKED_RESULT_KEYS and item else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value


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

    # defer_build: a tool's validator and schema are built on its first use, so a start pays only for the
    # tools the selection offers (tests/test_cold_start.py holds this).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    at_least_one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Groups of parameters of which at least one must be given (rules a flat schema cannot state
    portably: many clients refuse a top-level anyOf in a tool's input schema)."""

    local_fields: ClassVar[frozenset[str]] = frozenset()
    """Arguments of this server's own (lowercase, like `file_path`), never sent to the portal as they are."""

    @model_validator(mode="before")
    @classmethod
    def _integers_as_text(cls, data: Any) -> Any:
        # Clients (MCP Inspector, many models) send "NUMBER": 74951234567 where the schema says string; the
        # portal reads it as text anyway. Only whole numbers: a float, bool or object there is still an error.
        if not isinstance(data, dict):
            return data
        text_fields = _text_only_fields(cls)
        return {key: str(value) if key in text_fields and type(value) is int else value for key, value in data.items()}

    @model_validator(mode="after")
    def _check_at_least_one_of(self) -> RestParams:
        for group in self.at_least_one_of:
            if all(getattr(self, name) in (None, "") for name in group):
                raise ValueError(f"pass at least one of {' or '.join(group)}")
        return self

    def to_rest(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True, exclude=set(self.local_fields))


_TEXT_ONLY_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def _text_only_fields(model: type[BaseModel]) -> frozenset[str]:
    """Keys of fields typed as a string (optionally None) and nothing else numeric, per model class, computed once."""
    cached = _TEXT_ONLY_FIELDS.get(model)
    if cached is None:
        cached = _TEXT_ONLY_FIELDS[model] = frozenset(
            key  # the name and the alias (`from` for `from_`): the client writes the alias
            for name, info in model.model_fields.items()
            if _is_text(info.annotation)
            for key in (name, info.alias)
            if key
        )
    return cached


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    if get_origin(annotation) in (Union, UnionType):
        members = [member for member in get_args(annotation) if member is not NoneType]
        return len(members) == 1 and _is_text(members[0])
    if get_origin(annotation) is Literal:
        return all(isinstance(value, str) for value in get_args(annotation))
    return False


class PagedParams(RestParams):
    """A REST 2 list paged by `start` (50 rows a page); `total` and `next` come back beside the result."""

    start: int | None = Field(None, ge=0, description="Offset of the first row: 0, 50, 100... (`next` of a page).")


class RowFieldsParams(RestParams):
    """Adds `fields`: keep only these keys of each row, so a wide list does not flood the context."""

    local_fields = frozenset({"fields"})

    fields: list[str] | None = Field(None, description="Row keys to keep.")

    def shape_rows(self, result: Any) -> Any:
        if not self.fields or not isinstance(result, list):
            return result
        wanted = set(self.fields)
        return [{k: v for k, v in row.items() if k in wanted} if isinstance(row, dict) else row for row in result]


YesNo = Literal["Y", "N"]


class NoParams(RestParams):
    pass


class RestResult(BaseModel):
    """Base of result shapes: documents the fields, never drops ones the portal adds."""

    model_config = ConfigDict(extra="allow", defer_build=True)  # built on first use, as RestParams


@dataclass(frozen=True)
class ToolContext:
    """What a tool may need beyond its arguments."""

    files: FilePolicy = field(default_factory=FilePolicy)
    reveal_sip_passwords: bool = False
    """B24_REVEAL_SIP_PASSWORDS=1: results keep SIP passwords instead of a mask."""
    confirm_calls: bool = True
    """B24_CONFIRM_CALLS=0: tools that declare `confirm` run without asking the user."""
    journal: CallJournal | None = None
    """Where log_external_call remembers its steps (None: it refuses to run, as it cannot be idempotent)."""
    application: str = ""
    """Which application (portal + client id, or webhook) the journal's entries belong to."""
    events: EventHub | None = None
    """The portal's events (the events toolset); None when this server keeps none."""


Prepare = Callable[[Any, ToolContext], Awaitable[dict[str, Any]]]


async def _no_progress(done: float, total: float | None = None, message: str | None = None) -> None:
    return None


@dataclass(frozen=True)
class ToolRun:
    """What a composite tool's `run` gets: the REST client, the context, the tools this server offers, and a
    way to report progress (a no-op unless the client sent a progressToken)."""

    client: BitrixClient
    context: ToolContext
    offered: OfferedTools
    report_progress: Callable[[float, float | None, str | None], Awaitable[None]] = _no_progress


Run = Callable[[Any, ToolRun], Awaitable[dict[str, Any]]]
"""A composite tool's body: validated arguments in, the structured result (`{"result": ...}`) out, or a
`BitrixError` raised."""


@dataclass(frozen=True)
class Planned:
    """One tool call as commands for a shared `batch` request, and what turns their outcomes into its result.

    `finish` gets the outcomes in the order of `commands` (a failed request gives each command its error) and
    returns the structured result or raises a `BitrixError`; it may send requests of its own (a step that
    cannot go into a batch). With no commands, `finish([])` does all the work.
    """

    commands: Sequence[Command]
    finish: Callable[[Sequence[CommandResult]], Awaitable[dict[str, Any]]]
    release: Callable[[], Awaitable[None]] | None = None
    """Undo what planning claimed, when the call will not be sent after all (a halt, a cancellation)."""


Plan = Callable[[Any, ToolRun, str], Awaitable[Planned]]
"""A composite tool's work as a `Planned` (validated arguments, the run, a key prefix for its commands), so
run_batch can pack it with other calls."""


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
class View:
    """A page a host can render beside a tool's result (MCP Apps): one self-contained HTML file of this package,
    served as a `ui://` resource. The page gets the tool's input and result from the host; it loads nothing."""

    uri: str
    """`ui://...`: what the tool's `_meta.ui.resourceUri` names."""
    file: str
    """The HTML file's name under `tools/views/`."""
    title: str
    description: str

    def html(self) -> str:
        return (resources.files(__package__) / "views" / self.file).read_text(encoding="utf-8")


def _qualified(model: type) -> str:
    return f"{model.__module__}.{model.__qualname__}"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    method: str
    """The REST method called; empty for a local tool (list_toolsets, enable_toolset)."""
    title: str
    description: str
    params: type[RestParams]
    result: Any
    """A type describing the REST `result` (only its JSON schema is used)."""
    effect: Effect
    scopes: tuple[str, ...] = ("telephony",)
    """Bitrix24 scopes the application or webhook needs for this method."""
    app_only: bool = False
    """The docs say the method works only with an application token (a webhook gets WRONG_AUTH_TYPE)."""
    rest_api: int = 2
    """2: `/rest/<method>`; 3: `/rest/api/<method>` (REST 3.0: JSON body, its own error envelope)."""
    open_world: bool = True
    """Every tool talks to the customer's portal, whose state this server does not own."""
    prepare: Prepare = plain_params
    """Turns validated arguments into REST parameters (e.g. reads a local file)."""
    hints: tuple[tuple[str, str], ...] = ()
    """Method-specific hints: (text found in the error code or description, what to do next). They win over the
    REST client's generic hints."""
    run: Run | None = None
    """A composite tool (several REST calls, a batch): replaces the one-method call; `method` is its main one."""
    plan: Plan | None = None
    """A composite tool whose calls can share batch requests with others (run_batch packs it)."""
    other_methods: tuple[str, ...] = ()
    """Further REST methods a composite tool may call (`_meta["b24/methods"]`)."""
    confirm: Callable[[Any], str] | None = None
    """For a tool whose effect the user must approve (a billed call): the question put to the user, built from the
    validated arguments. The server asks it through MCP elicitation before the call and runs nothing without a yes."""
    view: View | None = None
    """A page rendering the result, for clients that negotiated MCP Apps (`_meta.ui.resourceUri`)."""

    @property
    def paginated(self) -> bool:
        """The method pages its list with `start`; `total` and `next` come back beside the result."""
        return issubclass(self.params, PagedParams)

    def hint_for(self, code: str, description: str) -> str | None:
        return next((hint for needle, hint in self.hints if needle == code or needle in description), None)

    def shape_result(self, params: RestParams, result: Any) -> Any:
        """The REST result as the model sees it (only the rows' requested `fields`)."""
        return params.shape_rows(result) if isinstance(params, RowFieldsParams) else result

    def structured(self, params: RestParams, response: BitrixResponse) -> dict[str, Any]:
        """A one-method call's answer as the tool's structured result (`total`/`next` of a page beside it)."""
        structured: dict[str, Any] = {"result": self.shape_result(params, response.result)}
        if response.total is not None:
            structured["total"] = response.total
        if response.next is not None:
            structured["next"] = response.next
        return structured

    def validate(self, arguments: Mapping[str, Any]) -> RestParams:
        """The arguments as this tool's input model (raises pydantic's ValidationError); SIP passwords among
        them are registered as secrets, so they never reach a log line."""
        params = self.params.model_validate(dict(arguments))
        for name in SECRET_ARGUMENTS & params.model_fields_set:
            register_secret(getattr(params, name))
            GIVEN_SIP_PASSWORDS.add(getattr(params, name))
        return params

    def invalid_arguments(self, exc: ValidationError) -> BitrixError:
        """A validation failure in the caller's terms: argument names and list indexes, no pydantic internals."""
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
            where = ".".join(str(part) for part in location if isinstance(part, int) or part in self.argument_names)
            if err["type"] == "extra_forbidden":
                where, message = f"{where}.{location[-1]}", "unknown field"
            else:
                message = _plain(str(err["msg"]))
            messages = messages_by_location.setdefault(where, [])
            if message not in messages:
                messages.append(message)
        problems = [
            f"{where}: {' or '.join(msgs)}" if where else " or ".join(msgs)
            for where, msgs in messages_by_location.items()
        ]
        if unknown:
            valid = ", ".join(self.params.model_fields) or "none"
            problems.insert(0, f"unknown argument(s) {', '.join(unknown)}; valid arguments: {valid}")
        return BitrixError(INVALID_ARGUMENTS, "; ".join(problems), method=self.method)

    def explain(self, exc: BitrixError, offered: OfferedTools | None = None) -> BitrixError:
        """`exc` naming this tool's method (refusals before a request name it too) and with the most specific
        hint: a missing scope, else this method's own hints, else the client's generic one; with `offered`,
        minus the sentences naming a tool that the server does not offer."""
        exc.method = exc.method or self.method
        if exc.code in SCOPE_CODES:
            exc.hint = scope_hint(self)
        else:
            exc.hint = self.hint_for(exc.code, exc.description) or exc.hint
        if offered is not None and exc.hint:
            exc.hint = offered.only_offered(exc.hint)
        return exc

    async def execute(self, params: RestParams, run: ToolRun) -> dict[str, Any]:
        """Run the tool on validated arguments: its structured result, or a `BitrixError` raised."""
        if self.run is not None:
            return await self.run(params, run)
        return await self.send(params, await self.prepare(params, run.context), run)

    async def send(self, params: RestParams, rest_params: dict[str, Any], run: ToolRun) -> dict[str, Any]:
        """Call the method with the prepared REST parameters: the structured result."""
        response = await run.client.call(
            self.method, rest_params, read_only=self.effect.read_only, rest_api=self.rest_api
        )
        return self.structured(params, response)

    @cached_property
    def input_schema(self) -> dict[str, Any]:
        # `additionalProperties: false` only on an object declaring no properties (see lean_schema): unknown
        # arguments are refused here anyway, naming the valid ones (RestParams forbids extras), and the keyword on
        # every object costs context on every turn.
        return SCHEMAS.get(
            f"input {_qualified(self.params)}",
            lambda: lean_schema(self.params.model_json_schema(schema_generator=JsonDefaults), closed=False),
        )

    @cached_property
    def argument_names(self) -> frozenset[str]:
        """Every property name in the input schema, nested ones included."""
        return property_names(self.input_schema)

    @cached_property
    def output_schema(self) -> dict[str, Any]:
        return SCHEMAS.get(f"output {self.result!r} paginated={self.paginated}", self._make_output_schema)

    def _make_output_schema(self) -> dict[str, Any]:
        result = TypeAdapter(self.result).json_schema(schema_generator=JsonDefaults)
        properties: dict[str, Any] = {"result": lean_schema(result, keep_null=True)}
        if self.paginated:
            properties |= {"total": {"type": "integer"}, "next": {"type": "integer"}}
        # Failures carry their details here too: an isError result whose structuredContent broke
        # the schema would be rejected by strict clients (TypeScript SDK, MCP Inspector). Which of the two comes
        # back is what isError says, so the schema does not spend context repeating it.
        properties["error"] = {"type": "object"}
        return {"type": "object", "properties": properties}

    @property
    def meta(self) -> dict[str, Any] | None:
        """`{"b24/method": ...}`; None for a local tool (`method` empty), which calls no REST method."""
        if not self.method:
            return None
        meta: dict[str, Any] = {META_METHOD_KEY: self.method}
        if self.other_methods:
            meta[META_METHODS_KEY] = [self.method, *self.other_methods]
        return meta


SCOPE_CODES = ("insufficient_scope", "BITRIX_REST_V3_EXCEPTION_INSUFFICIENTSCOPEEXCEPTION")


def scope_hint(spec: ToolSpec) -> str:
    scopes = " and ".join(f"'{scope}'" for scope in spec.scopes)
    return (
        f"{spec.name} needs the {scopes} scope. Add it to the application (Applications > Developer resources > "
        "your local application > scopes; then reinstall or log in again) or to the incoming webhook's scopes."
    )


_MODEL_NAME = re.compile(r" or instance of \w+")


def _plain(message: str) -> str:
    """pydantic's message minus its "Value error, " prefix and our class names."""
    return _MODEL_NAME.sub("", message.removeprefix("Value error, "))


@dataclass(frozen=True)
class Toolset:
    """A group of tools switched on and off together (`--toolsets`)."""

    name: str
    description: str
    tools: tuple[ToolSpec, ...]
    instructions: str = ""
    """A line for the server's instructions while this toolset is offered."""


class OfferedTools(Mapping[str, ToolSpec]):
    """The tools a running server offers, by name, as the tools themselves see it: declared here, below every tool,
    so they need not import the one implementation (`tools.offer.ToolOffer`), which knows every toolset."""

    read_only: bool
    enabled: set[str]
    """Toolsets switched on."""
    version: int
    """Grows whenever the offered tools change."""

    @abstractmethod
    def offerable(self, toolset: Toolset) -> tuple[ToolSpec, ...]:
        """The tools of `toolset` this server may offer (read-only mode applied)."""

    @abstractmethod
    def enable(self, name: str) -> tuple[ToolSpec, ...]:
        """Switch a toolset on; returns the tools that were not offered before."""

    @abstractmethod
    def only_offered(self, text: str, *, explain: bool = True) -> str:
        """`text` without its sentences that name a tool this server does not offer."""
