"""`tools/list` as a client sees it: reviewed snapshots, invariants against the Bitrix24 docs, size budgets.

The list is fetched once per module from the real server over stdio, for the default selection, for
`--toolsets all`, and for `--toolsets all --dynamic-toolsets`: every tool plus the two local ones (`list_toolsets`,
`enable_toolset`), which call no REST method and so are checked on their own, never against the docs. Each tool has
its own snapshot (`tests/snapshots/tools/<name>.json`, so a schema change is a one-file diff), and
`tests/snapshots/selections.json` holds the tool names of every toolset / read-only combination. To accept an
intended change: `UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_tools_list.py`,
then review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from b24_telephony_mcp.sandbox import SandboxConfig, start_sandbox
from b24_telephony_mcp.tools import ALL_TOOLS, TOOLSETS, select_tools
from b24_telephony_mcp.tools.dynamic import DYNAMIC_TOOLS
from b24_telephony_mcp.tools.offer import ToolOffer
from support import app_env, json_objects, stdio_session

HERE = Path(__file__).parent
SNAPSHOTS = HERE / "snapshots"
DOCS = json.loads((HERE / "data" / "bitrix24_methods.json").read_text(encoding="utf-8"))["methods"]
DOCS_BY_METHOD: dict[str, dict[str, Any]] = {entry["method"]: entry for entry in DOCS}

# Annotations that differ from methods.json on purpose, each with its reason.
DESTRUCTIVE_OVERRIDES = {
    # Issue 5: these ring real phones and bill the portal, so a call cannot be undone; methods.json says
    # destructive=false (nothing stored is overwritten), but a client should treat them as destructive.
    "start_callback",
    "start_infocall_with_sound",
    "start_infocall_with_text",
}
# Arguments a tool has beyond the REST parameters, each documented in the README.
EXTRA_ARGUMENTS = {
    "attach_external_call_record": {"file_path"},
    "list_sip_connections": {"fields"},
    "get_call_statistics": {"fields"},
    "log_external_call": {"file_path"},
}
# Tools of several REST calls, with the annotations they declare (read-only, destructive, idempotent) and why:
# they are checked against the union of their methods' docs (test_composite_tools), not as one method's tool.
COMPOSITES = {
    # Repeating it changes nothing more (the journal answers); it overwrites and removes nothing.
    "log_external_call": (False, False, True),
    # It can run any offered tool, deleting lines included.
    "run_batch": (False, True, False),
    # Reads only: statistic pages, through batch requests.
    "get_call_analytics": (True, False, True),
    # The events (issue 13) are the platform's event.* methods, not in methods.json's telephony scope.
    # Binding twice changes nothing more; unbinding removes a binding.
    "watch_telephony_events": (False, True, True),
    # Reads the server's event store (the offline queue is drained beside it, whoever reads).
    "get_telephony_events": (True, False, True),
}


# Parameters whose name says all a model needs: a description would be context paid on every turn for nothing.
SELF_EXPLANATORY = {"NAME", "COST", "COST_CURRENCY", "FAILED_REASON", "VOTE", "CALL_LIST_ID", "CRM_ENTITY_ID", "ORDER"}
# The docs' parameter types in JSON Schema terms.
DOC_TYPES = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "double": {"type": "number"},
    "array": {"type": "array"},
    "object": {"type": "object"},
    "integer | integer[]": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]},
}

# Every byte of tools/list is context a model pays for on each turn. Two sizes are held: what a client turns
# into the model's tool definitions (name, description, inputSchema), and the whole tools/list result on the
# wire. Growing past a budget should be a decision: trim descriptions or schemas, or raise it here on purpose.
BUDGETS = {  # selection: (model-visible bytes, wire bytes)
    # The issues' budgets. The default set holds log_external_call, run_batch and get_call_analytics too: terse
    # descriptions, none where the name says it all (SELF_EXPLANATORY), `additionalProperties: false` only on an
    # input declaring no properties (unknown arguments are refused by the server, naming the valid ones), no
    # annotations.title copy, no output anyOf. Raised by 50 B from 9_000 and 9_600 on purpose (issue 11): that
    # keyword, 29 B on list_external_lines (and on list_toolsets), is what lets OpenAI strict mode take a tool of
    # no arguments, and the default set was 13 B under its budget before it. Raised by 60 B more on purpose (issue
    # 13): log_external_call's CALL_ID, which finishes a clicked call without registering it again.
    "default": (9_110, 16_000),
    "all": (26_000, 45_000),
    # Dynamic toolsets start from the default set: list_toolsets and enable_toolset must stay cheap beside it.
    "default --dynamic-toolsets": (9_710, 17_500),
}


async def fetch_listing(token_file: Path, *args: str) -> list[dict[str, Any]]:
    """The list exactly as the SDK client parses it from the real server, dumped the way it goes on the wire."""
    with start_sandbox(SandboxConfig()) as sandbox:
        async with stdio_session(app_env(sandbox, token_file), *args) as client:
            listed = (await client.list_tools()).tools
    return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed]


@pytest.fixture(scope="module")
def listings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    token_file = tmp_path_factory.mktemp("tools-list") / "tokens.json"
    return {
        "default": anyio.run(fetch_listing, token_file),
        "all": anyio.run(fetch_listing, token_file, "--toolsets", "all"),
        "dynamic": anyio.run(fetch_listing, token_file, "--toolsets", "all", "--dynamic-toolsets"),
        "default --dynamic-toolsets": anyio.run(fetch_listing, token_file, "--dynamic-toolsets"),
    }


@pytest.fixture(scope="module")
def tools(listings: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every tool there is: the REST tools and the local ones."""
    return listings["dynamic"]


def is_local(tool: dict[str, Any]) -> bool:
    """A tool of this server's own (no REST method behind it)."""
    return "b24/method" not in tool.get("_meta", {})


@pytest.fixture(scope="module")
def rest_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools that are one REST method each (not the local dynamic-toolset tools, not the composites)."""
    return [tool for tool in tools if not is_local(tool) and tool["name"] not in COMPOSITES]


@pytest.fixture(scope="module")
def by_name(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {tool["name"]: tool for tool in tools}


def compact_size(data: Any) -> int:
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


def model_visible(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: tool[key] for key in ("name", "description", "inputSchema")} for tool in tools]


def check_snapshot(path: Path, current: str) -> str | None:
    """None when `path` holds `current` (or was just written under UPDATE_SNAPSHOTS=1), else the diff."""
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(current, encoding="utf-8")
        return None
    expected = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == expected:
        return None
    name = str(path.relative_to(HERE.parent))
    return "".join(
        difflib.unified_diff(expected.splitlines(True), current.splitlines(True), fromfile=name, tofile="now")
    )


def test_snapshot_per_tool(tools: list[dict[str, Any]]) -> None:
    folder = SNAPSHOTS / "tools"
    diffs = [
        check_snapshot(folder / f"{tool['name']}.json", json.dumps(tool, indent=2, ensure_ascii=False) + "\n")
        for tool in tools
    ]
    stale = sorted({path.stem for path in folder.glob("*.json")} - {tool["name"] for tool in tools})
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        for name in stale:
            (folder / f"{name}.json").unlink()
        stale = []
    problems = [diff for diff in diffs if diff] + [f"snapshot of a removed tool: {name}" for name in stale]
    if problems:
        pytest.fail("tools/list changed (UPDATE_SNAPSHOTS=1 accepts it after review):\n" + "\n".join(problems), False)


def selections() -> dict[str, list[str]]:
    """Tool names per toolset, read-only or not, plus the default and `all` selections."""
    combos: dict[str, list[str]] = {}
    for name in ("default", "all", *(toolset.name for toolset in TOOLSETS)):
        toolsets = None if name == "default" else [name]
        for read_only in (False, True):
            key = f"{name}{' --read-only' if read_only else ''}"
            combos[key] = [spec.name for spec in select_tools(toolsets, read_only=read_only)]
    combos["default --dynamic-toolsets"] = list(ToolOffer.select(dynamic=True))
    return combos


def test_snapshot_of_selections(listings: dict[str, list[dict[str, Any]]]) -> None:
    combos = selections()
    # The real server offers exactly what the selection function says.
    assert [tool["name"] for tool in listings["default"]] == combos["default"]
    assert [tool["name"] for tool in listings["all"]] == combos["all"] == [spec.name for spec in ALL_TOOLS]
    assert [tool["name"] for tool in listings["dynamic"]] == list(ToolOffer.select(["all"], dynamic=True))
    diff = check_snapshot(SNAPSHOTS / "selections.json", json.dumps(combos, indent=1) + "\n")
    if diff:
        pytest.fail(f"the tools of a selection changed (UPDATE_SNAPSHOTS=1 accepts it after review):\n{diff}", False)


def test_one_tool_per_documented_method(tools: list[dict[str, Any]], rest_tools: list[dict[str, Any]]) -> None:
    names = [tool["name"] for tool in tools]
    assert len(names) == len(set(names)), names
    methods = [tool["_meta"]["b24/method"] for tool in rest_tools]
    assert len(methods) == len(set(methods)), "one tool per REST method"
    assert set(methods) <= set(DOCS_BY_METHOD), "every tool calls a documented method"


def test_every_tool_is_fully_described(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        name = tool["name"]
        assert tool.get("title"), name
        assert tool.get("description"), name
        annotations = tool.get("annotations", {})
        # exclude_none dropped unset hints, so each key being present means it was set explicitly.
        for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
            assert isinstance(annotations.get(hint), bool), (name, hint)
        # The customer's portal is not ours; only the local tools stay inside this server.
        assert annotations["openWorldHint"] is not is_local(tool), name
        assert "title" not in annotations, name  # Tool.title names it; a second copy is paid context
        assert tool["outputSchema"]["type"] == "object", name
        assert tool["inputSchema"]["type"] == "object", name


def test_schemas_are_valid_and_lean(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        for schema in (tool["inputSchema"], tool["outputSchema"]):
            jsonschema.Draft202012Validator.check_schema(schema)
            jsonschema.Draft7Validator.check_schema(schema)
            assert "$ref" not in json.dumps(schema), tool["name"]  # some clients resolve no refs
        # Unknown arguments are refused by the server, naming the valid ones (test_validation.py), so the schemas
        # spend `additionalProperties: false` only where it alone says "no arguments": on an object declaring no
        # properties (OpenAI strict mode needs it there and closes the others itself; test_client_schemas.py).
        for node in json_objects(tool["inputSchema"]):
            closed = node.get("additionalProperties") is False
            assert closed == (node.get("properties") == {}), (tool["name"], node)


def type_of(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's type shape, without descriptions, enums and item details."""
    if "anyOf" in schema:
        return {"anyOf": [type_of(branch) for branch in schema["anyOf"]]}
    shape: dict[str, Any] = {"type": schema["type"]}
    if schema["type"] == "array" and schema.get("items", {}).get("type") in ("integer", "string"):
        shape["items"] = {"type": schema["items"]["type"]}
    return shape


def test_inputs_are_the_documented_rest_parameters(rest_tools: list[dict[str, Any]]) -> None:
    for tool in rest_tools:
        name = tool["name"]
        docs = DOCS_BY_METHOD[tool["_meta"]["b24/method"]]["params"]
        schema = tool["inputSchema"]
        properties: dict[str, Any] = schema["properties"]
        assert set(properties) == {p["name"] for p in docs} | EXTRA_ARGUMENTS.get(name, set()), name
        # A required_one_of pair is enforced by the tool, since a schema cannot state it portably.
        required = {p["name"] for p in docs if p["required"] and not p.get("required_one_of")}
        assert set(schema.get("required", [])) == required, name
        for param in docs:
            check_documented_type(name, param, properties[param["name"]])
            has_description = bool(properties[param["name"]].get("description"))
            assert has_description or param["name"] in SELF_EXPLANATORY, (name, param["name"])


def check_documented_type(name: str, param: dict[str, Any], prop: dict[str, Any]) -> None:
    expected = DOC_TYPES[param["type"]]
    shape = type_of(prop)
    if "items" not in expected:
        shape.pop("items", None)  # the docs do not type an array's items (REST 3.0 `select`: strings)
    assert shape == expected, (name, param["name"], prop)
    enum = prop.get("enum", prop.get("items", {}).get("enum"))  # an array's enum is its items'
    if "enum" in param:
        assert [str(value) for value in enum or []] == param["enum"], (name, param["name"])
    else:
        assert enum is None, (name, param["name"])


def test_composite_tools(tools: list[dict[str, Any]]) -> None:
    by_name = {tool["name"]: tool for tool in tools}
    for name, hints in COMPOSITES.items():
        annotations = by_name[name]["annotations"]
        assert (annotations["readOnlyHint"], annotations["destructiveHint"], annotations["idempotentHint"]) == hints

    # log_external_call: the documented parameters of its four methods, typed as documented, under one name each
    # (CALL_ID comes from its own register step, or from a click's OnExternalCallStart, which it then finishes
    # without registering it again); EXTERNAL_CALL_ID is its idempotency key, so required.
    log_call = by_name["log_external_call"]
    methods = log_call["_meta"]["b24/methods"]
    assert methods[0] == log_call["_meta"]["b24/method"] == "telephony.externalCall.register"
    assert set(methods) - set(DOCS_BY_METHOD) == {"batch"}
    documented = [param for method in methods[:4] for param in DOCS_BY_METHOD[method]["params"]]
    properties = log_call["inputSchema"]["properties"]
    assert set(properties) == {param["name"] for param in documented} | EXTRA_ARGUMENTS["log_external_call"]
    assert properties["CALL_ID"]["type"] == "string" and "OnExternalCallStart" in properties["CALL_ID"]["description"]
    assert set(log_call["inputSchema"]["required"]) == {"PHONE_NUMBER", "TYPE", "EXTERNAL_CALL_ID"}
    for param in documented:
        if param["name"] != "CALL_ID":
            check_documented_type("log_external_call", param, properties[param["name"]])

    run_batch = by_name["run_batch"]
    assert run_batch["_meta"] == {"b24/method": "batch"}
    assert set(run_batch["inputSchema"]["properties"]) == {"items", "halt"}

    # get_call_analytics: statistic.get's FILTER (a subset of its keys), plus its own period, groups and zone.
    analytics = by_name["get_call_analytics"]
    assert analytics["_meta"]["b24/methods"] == ["voximplant.statistic.get", "batch"]
    assert set(analytics["inputSchema"]["properties"]) == {"FILTER", "from", "to", "group_by", "tz"}
    assert "FILTER" in {param["name"] for param in DOCS_BY_METHOD["voximplant.statistic.get"]["params"]}


def test_annotations_follow_the_documented_semantics(rest_tools: list[dict[str, Any]]) -> None:
    for tool in rest_tools:
        facts = DOCS_BY_METHOD[tool["_meta"]["b24/method"]]
        annotations = tool["annotations"]
        destructive = facts["destructive"]
        if tool["name"] in DESTRUCTIVE_OVERRIDES:
            assert destructive is False, f"{tool['name']}: the override is stale, methods.json agrees now"
            destructive = True
        assert (annotations["readOnlyHint"], annotations["destructiveHint"], annotations["idempotentHint"]) == (
            facts["read_only"],
            destructive,
            facts["idempotent"],
        ), tool["name"]
    assert {tool["name"] for tool in rest_tools} >= DESTRUCTIVE_OVERRIDES, "an override names no tool"


def test_local_tools_are_the_dynamic_toolset_tools(tools: list[dict[str, Any]]) -> None:
    """`list_toolsets` and `enable_toolset`: no REST method (no `_meta`), read-only (they change what this server
    offers, not the portal, so read-only mode keeps them), and `toolset` takes exactly the toolset names."""
    local = {tool["name"]: tool for tool in tools if is_local(tool)}
    assert list(local) == [spec.name for spec in DYNAMIC_TOOLS]
    for name, tool in local.items():
        assert "_meta" not in tool, name
        annotations = tool["annotations"]
        assert (annotations["readOnlyHint"], annotations["destructiveHint"], annotations["idempotentHint"]) == (
            True,
            False,
            True,
        ), name
    assert local["list_toolsets"]["inputSchema"]["properties"] == {}
    toolset = local["enable_toolset"]["inputSchema"]["properties"]["toolset"]
    assert toolset["enum"] == [toolset.name for toolset in TOOLSETS]
    assert local["enable_toolset"]["inputSchema"]["required"] == ["toolset"]


@pytest.mark.parametrize("selection", sorted(BUDGETS))
def test_size_budgets(listings: dict[str, list[dict[str, Any]]], selection: str) -> None:
    tools = listings[selection]
    visible, wire = compact_size(model_visible(tools)), compact_size({"tools": tools})
    visible_budget, wire_budget = BUDGETS[selection]
    print(f"{selection}: {len(tools)} tools, {visible} B model-visible, {wire} B wire")
    assert visible <= visible_budget, f"{selection}: {visible} model-visible bytes, over {visible_budget}"
    assert wire <= wire_budget, f"{selection}: {wire} wire bytes, over {wire_budget}"
