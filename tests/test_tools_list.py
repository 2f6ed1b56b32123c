"""`tools/list` as a client sees it: a reviewed snapshot, invariants against the Bitrix24 docs, a size budget.

The list is fetched once per module from the real server over stdio. To accept an intended change:
`UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_tools_list.py`, then review the diff of
tests/snapshots/tools_list.json.
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
from support import app_env, json_objects, stdio_session

HERE = Path(__file__).parent
SNAPSHOT = HERE / "snapshots" / "tools_list.json"
DOCS = json.loads((HERE / "data" / "bitrix24_methods.json").read_text(encoding="utf-8"))["methods"]
DOCS_BY_METHOD: dict[str, dict[str, Any]] = {entry["method"]: entry for entry in DOCS}

# Arguments a tool has beyond the REST parameters, each documented in the README.
EXTRA_ARGUMENTS = {"attach_external_call_record": {"file_path"}}
# The docs' parameter types in JSON Schema terms.
DOC_TYPES = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "double": {"type": "number"},
    "array": {"type": "array"},
    "integer | integer[]": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]},
}

# Every byte of tools/list is context a model pays for on each turn. Measured 14609 bytes (compact
# JSON) for the 11 tools; the budget leaves ~10% headroom for wording fixes. Growing past it should be a
# decision: trim descriptions or schemas, or raise the budget here on purpose.
SIZE_BUDGET = 16_000


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The list exactly as the SDK client parses it, dumped the way it goes on the wire."""
    token_file = tmp_path_factory.mktemp("tools-list") / "tokens.json"

    async def fetch() -> list[dict[str, Any]]:
        with start_sandbox(SandboxConfig()) as sandbox:
            async with stdio_session(app_env(sandbox, token_file)) as client:
                listed = (await client.list_tools()).tools
        return [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in listed]

    return anyio.run(fetch)


@pytest.fixture(scope="module")
def by_name(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {tool["name"]: tool for tool in tools}


def test_snapshot(tools: list[dict[str, Any]]) -> None:
    current = json.dumps(tools, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current, encoding="utf-8")
        return
    assert SNAPSHOT.exists(), f"no snapshot yet: run with UPDATE_SNAPSHOTS=1 to create {SNAPSHOT}"
    expected = SNAPSHOT.read_text(encoding="utf-8")
    if current != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                current.splitlines(keepends=True),
                fromfile="tests/snapshots/tools_list.json",
                tofile="tools/list now",
            )
        )
        pytest.fail(f"tools/list changed (UPDATE_SNAPSHOTS=1 accepts it after review):\n{diff}", pytrace=False)


def test_one_tool_per_documented_method(tools: list[dict[str, Any]]) -> None:
    names = [tool["name"] for tool in tools]
    assert len(names) == len(set(names)), names
    methods = [tool["_meta"]["b24/method"] for tool in tools]
    assert sorted(methods) == sorted(DOCS_BY_METHOD), "each REST method in the docs extract has exactly one tool"


def test_every_tool_is_fully_described(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        name = tool["name"]
        assert tool.get("title"), name
        assert tool.get("description"), name
        annotations = tool.get("annotations", {})
        # exclude_none dropped unset hints, so each key being present means it was set explicitly.
        for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
            assert isinstance(annotations.get(hint), bool), (name, hint)
        assert annotations["openWorldHint"] is True, name  # the customer's portal is not ours
        assert annotations.get("title") == tool["title"], name
        assert tool["outputSchema"]["type"] == "object", name
        assert tool["inputSchema"]["type"] == "object", name
        assert tool["inputSchema"]["additionalProperties"] is False, name


def test_schemas_are_valid_and_inputs_closed(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        for schema in (tool["inputSchema"], tool["outputSchema"]):
            jsonschema.Draft202012Validator.check_schema(schema)
            jsonschema.Draft7Validator.check_schema(schema)
            assert "$ref" not in json.dumps(schema), tool["name"]  # some clients resolve no refs
        # Nested objects (MESSAGES items) refuse unknown fields too.
        for nested in (node for node in json_objects(tool["inputSchema"]) if "properties" in node):
            assert nested.get("additionalProperties") is False, (tool["name"], nested)


def type_of(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's type shape, without descriptions, enums and item details."""
    if "anyOf" in schema:
        return {"anyOf": [type_of(branch) for branch in schema["anyOf"]]}
    shape: dict[str, Any] = {"type": schema["type"]}
    if schema["type"] == "array" and schema.get("items", {}).get("type") in ("integer", "string"):
        shape["items"] = {"type": schema["items"]["type"]}
    return shape


def test_inputs_are_the_documented_rest_parameters(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        name = tool["name"]
        docs = DOCS_BY_METHOD[tool["_meta"]["b24/method"]]["params"]
        schema = tool["inputSchema"]
        properties: dict[str, Any] = schema["properties"]
        assert set(properties) == {p["name"] for p in docs} | EXTRA_ARGUMENTS.get(name, set()), name
        # A required_one_of pair is enforced by the tool, since a schema cannot state it portably.
        required = {p["name"] for p in docs if p["required"] and not p.get("required_one_of")}
        assert set(schema.get("required", [])) == required, name
        for param in docs:
            prop = properties[param["name"]]
            assert type_of(prop) == DOC_TYPES[param["type"]], (name, param["name"], prop)
            assert prop.get("description"), (name, param["name"])
            if "enum" in param:
                assert [str(value) for value in prop.get("enum", [])] == param["enum"], (name, param["name"])
            else:
                assert "enum" not in prop, (name, param["name"])


def test_annotations_follow_the_documented_semantics(tools: list[dict[str, Any]]) -> None:
    for tool in tools:
        facts = DOCS_BY_METHOD[tool["_meta"]["b24/method"]]
        annotations = tool["annotations"]
        assert (annotations["readOnlyHint"], annotations["destructiveHint"], annotations["idempotentHint"]) == (
            facts["read_only"],
            facts["destructive"],
            facts["idempotent"],
        ), tool["name"]


def test_size_budget(tools: list[dict[str, Any]]) -> None:
    size = len(json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode())
    print(f"tools/list: {len(tools)} tools, {size} bytes of compact JSON (budget {SIZE_BUDGET})")
    assert size <= SIZE_BUDGET, f"tools/list is {size} bytes, over the {SIZE_BUDGET}-byte budget"
