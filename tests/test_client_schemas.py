"""The tool schemas as the clients' own converters take them, for every selection a user can start.

Each selection is listed from the real server over stdio by the OpenAI Agents SDK's own MCP client, and an agent
whose `mcp_config` says `convert_schemas_to_strict=True` turns the tools into function tools, the way a user's agent
does: a closed input (no object taking keys it does not name) must come out strict. The same listing goes through
LangChain's `convert_to_openai_tool`, a walk for Gemini's function-declaration subset, and the JSON Schema 2020-12
(and draft-7) metaschemas.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import jsonschema
import pytest
from agents import Agent, FunctionTool, RunContextWrapper
from agents.mcp import MCPServerStdio, MCPServerStdioParams
from agents.strict_schema import ensure_strict_json_schema
from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from b24_telephony_mcp.sandbox import SandboxConfig, start_sandbox
from support import app_env, json_objects, server_command

# Every selection whose listing differs: the default set, every toolset, read-only (descriptions name only the
# tools offered), and dynamic mode with its two local tools.
SELECTIONS = {
    "default": (),
    "default --read-only": ("--read-only",),
    "default --dynamic-toolsets": ("--dynamic-toolsets",),
    "all": ("--toolsets", "all"),
    "all --read-only": ("--toolsets", "all", "--read-only"),
    "all --dynamic-toolsets": ("--toolsets", "all", "--dynamic-toolsets"),
}
# Issue 11: tools of no arguments that strict mode refused while their schema was `{"type": "object",
# "properties": {}}` (which permits any keys). Only checked to be among those found by their schema.
NO_ARGUMENT_TOOLS = {
    "list_external_lines",
    "list_outgoing_lines",
    "get_default_outgoing_line",
    "get_sip_connector_status",
    "list_tts_voices",
    "get_telephony_urls",
    "list_toolsets",
}


@dataclass(frozen=True)
class Listed:
    """One tool as listed on the wire, and what the Agents SDK's agent made of it."""

    tool: dict[str, Any]
    converted: FunctionTool


async def list_through_agents(env: dict[str, str], *args: str) -> list[Listed]:
    command = server_command(*args)
    params: MCPServerStdioParams = {"command": command[0], "args": command[1:], "env": env}
    # The cached list is the one the agent converts, so the wire form and the function tool are of one listing.
    async with MCPServerStdio(params, cache_tools_list=True, client_session_timeout_seconds=30) as server:
        wire = {
            tool.name: tool.model_dump(mode="json", by_alias=True, exclude_none=True)
            for tool in await server.list_tools()
        }
        agent = Agent(name="b24", mcp_servers=[server], mcp_config={"convert_schemas_to_strict": True})
        converted = await agent.get_mcp_tools(RunContextWrapper(context=None))
    assert [tool.name for tool in converted] == list(wire)
    return [Listed(wire[tool.name], tool) for tool in converted if isinstance(tool, FunctionTool)]


@pytest.fixture(scope="module")
def listings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Listed]]:
    token_file = tmp_path_factory.mktemp("client-schemas") / "tokens.json"
    with start_sandbox(SandboxConfig()) as sandbox:
        env = app_env(sandbox, token_file)
        return {name: anyio.run(list_through_agents, env, *args) for name, args in SELECTIONS.items()}


def everything(listings: dict[str, list[Listed]]) -> Iterator[tuple[str, Listed]]:
    for selection, listed in listings.items():
        for entry in listed:
            yield selection, entry


def is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def free_form_objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Objects taking keys the schema does not name: a map (a schema for undeclared keys), or an object declaring
    no properties and not closed (a Bitrix24 FILTER, run_batch's `arguments`, a REST 3.0 cursor). An object with
    declared properties and no `additionalProperties` is closed too: the server refuses unknown keys, and strict
    converters close it by themselves."""
    free = []
    for node in json_objects(schema):
        undeclared = node.get("additionalProperties")
        if is_object(node) and (
            (undeclared is not None and undeclared is not False)
            or (not node.get("properties") and undeclared is not False)
        ):
            free.append(node)
    return free


def strict_refusal(schema: dict[str, Any]) -> str:
    """Why the Agents SDK's converter refuses a schema (as its MCP path calls it), to explain a failure."""
    try:
        ensure_strict_json_schema(copy.deepcopy(schema), _reject_open_objects=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "converts here"


def test_selections_are_listed(listings: dict[str, list[Listed]]) -> None:
    """The Agents SDK's client sees each selection whole (the other tests would pass on an empty list)."""
    counts = {selection: len(listed) for selection, listed in listings.items()}
    assert counts["all"] == counts["all --dynamic-toolsets"] - 2 > counts["default"] > 0, counts
    assert counts["all --read-only"] < counts["all"], counts


def test_closed_inputs_convert_to_openai_strict(listings: dict[str, list[Listed]]) -> None:
    """OpenAI strict mode: a tool whose input is closed converts, arguments unchanged; one with a free-form object
    cannot without changing what it accepts, and the SDK falls back to its schema as listed."""
    free_form: set[str] = set()
    for selection, entry in everything(listings):
        name, schema = entry.tool["name"], entry.tool["inputSchema"]
        if free_form_objects(schema):
            free_form.add(name)
            # Were these converted, the free-form rule above would be wrong: they would be strict too.
            assert not entry.converted.strict_json_schema, (selection, name)
            assert entry.converted.params_json_schema == schema, (selection, name)
        else:
            assert entry.converted.strict_json_schema, (selection, name, strict_refusal(schema))
            # Strict mode makes every property required and closes objects; which arguments there are stays.
            assert entry.converted.params_json_schema["properties"].keys() == schema["properties"].keys()
    # The free-form set is found in the schemas; it must hold the tools known to take free-form objects.
    filtered = {
        entry.tool["name"] for _, entry in everything(listings) if "FILTER" in entry.tool["inputSchema"]["properties"]
    }
    assert len(filtered) >= 3 and filtered | {"run_batch"} <= free_form, (filtered, free_form)


def test_tools_of_no_arguments_are_strict(listings: dict[str, list[Listed]]) -> None:
    """A tool of no arguments says so (`additionalProperties: false`), so strict mode takes it as an empty object."""
    no_arguments = set()
    for selection, entry in everything(listings):
        if entry.tool["inputSchema"]["properties"] == {}:
            no_arguments.add(entry.tool["name"])
            assert entry.converted.strict_json_schema, (selection, entry.tool["name"])
            assert entry.converted.params_json_schema == {
                "type": "object",
                "properties": {},
                "additionalProperties": False,
                "required": [],
            }, (selection, entry.tool["name"])
    assert no_arguments >= NO_ARGUMENT_TOOLS, no_arguments


def test_langchain_convert_to_openai_tool(listings: dict[str, list[Listed]]) -> None:
    """LangChain: an MCP tool is a StructuredTool whose args_schema is the input schema (what its MCP adapters
    build); `convert_to_openai_tool` must keep it whole, and its strict form of a closed input must accept what the
    Agents SDK's strict form accepts (LangChain closes every object and never refuses, so only closed inputs
    compare)."""
    for selection, entry in everything(listings):
        tool = entry.tool
        structured = StructuredTool(
            name=tool["name"], description=tool["description"], args_schema=tool["inputSchema"], func=lambda: None
        )
        function = convert_to_openai_tool(structured)["function"]
        assert function == {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": tool["inputSchema"],
        }, selection
        if entry.converted.strict_json_schema:
            strict = convert_to_openai_tool(copy.deepcopy(function), strict=True)["function"]
            assert strict["strict"] is True
            # An empty `required` is no rule: LangChain leaves it out where the Agents SDK writes it.
            agents_form = {key: value for key, value in entry.converted.params_json_schema.items() if value != []}
            assert strict["parameters"] == agents_form, (selection, tool["name"])


def test_gemini_function_declaration_subset(listings: dict[str, list[Listed]]) -> None:
    """Gemini's function declarations take an OpenAPI subset: an object at the top and no union there, and no
    references anywhere."""
    for selection, entry in everything(listings):
        schema = entry.tool["inputSchema"]
        assert schema["type"] == "object", (selection, entry.tool["name"])
        assert not {"anyOf", "oneOf", "allOf"} & schema.keys(), (selection, entry.tool["name"])
        for node in json_objects(schema):
            assert not {"$ref", "$defs", "definitions"} & node.keys(), (selection, entry.tool["name"], node)


def test_schemas_are_valid_json_schema(listings: dict[str, list[Listed]]) -> None:
    for selection, entry in everything(listings):
        for schema in (entry.tool["inputSchema"], entry.tool["outputSchema"]):
            jsonschema.Draft202012Validator.check_schema(schema)
            jsonschema.Draft7Validator.check_schema(schema)
            assert "$ref" not in json.dumps(schema), (selection, entry.tool["name"])  # some clients resolve none
