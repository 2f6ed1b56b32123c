"""Issue §7: a JSON integer where the schema says string is accepted as its decimal text, in every tool; a float,
a bool or an object there is still refused with INVALID_ARGUMENTS.

The exhaustive part runs in-process over every tool's input model and every string property of its schema, top
level and nested (items of an array of objects, objects), so a tool added later is covered without a line here.
Two calls through the real server show the text reaching the portal.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from b24_telephony_mcp.bitrix.errors import INVALID_ARGUMENTS
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.tools import ALL_TOOLS
from b24_telephony_mcp.tools.base import ToolSpec
from b24_telephony_mcp.tools.dynamic import DYNAMIC_TOOLS
from support import app_env, error_of, ok, stdio_session

EVERY_TOOL = (*ALL_TOOLS, *DYNAMIC_TOOLS)
Path_ = tuple[str | int, ...]
NUMBER = 74951234567
NOT_TEXT: dict[str, Any] = {"float": 7.5, "bool": True, "object": {"value": 1}}


def string_paths(schema: dict[str, Any], prefix: Path_ = ()) -> list[Path_]:
    """Where the input schema says string: `(NAME,)`, `(MESSAGES, 0, MESSAGE)`..."""
    paths: list[Path_] = []
    for name, prop in schema.get("properties", {}).items():
        if prop.get("type") == "string":
            paths.append((*prefix, name))
        elif prop.get("type") == "object":
            paths += string_paths(prop, (*prefix, name))
        elif prop.get("type") == "array" and prop.get("items", {}).get("type") == "object":
            paths += string_paths(prop["items"], (*prefix, name, 0))
    return paths


def sample(schema: dict[str, Any]) -> Any:
    """A valid value for a (lean) schema: its first enum value, else the least its type and bounds allow."""
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return sample(schema["anyOf"][0])
    kind = schema.get("type")
    kind = next(k for k in kind if k != "null") if isinstance(kind, list) else kind
    if kind == "integer":
        return max(1, schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind == "array":
        return [sample(schema["items"])] * schema.get("minItems", 1)
    if kind == "object":
        return {
            name: sample(prop)
            for name, prop in schema.get("properties", {}).items()
            if name in schema.get("required", [])
        }
    return {"string": "1", "number": 1.5, "boolean": True}[kind]


def put(arguments: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    """A deep copy of `arguments` with `value` at `path`."""
    if not path:
        return value  # type: ignore[no-any-return]
    head, rest = path[0], path[1:]
    copy: Any = dict(arguments) if isinstance(arguments, dict) else list(arguments)
    copy[head] = put(copy[head] if head in copy or isinstance(copy, list) else {}, rest, value)
    return copy  # type: ignore[no-any-return]


def get(arguments: Any, path: Path_) -> Any:
    for part in path:
        arguments = arguments[part]
    return arguments


# Text fields whose own rules accept no digits alone (a date, a time zone): a valid value to build arguments from.
EXAMPLES = {("get_call_analytics", "from"): "2026-03-01", ("get_call_analytics", "to"): "2026-03-02"}
EXAMPLES |= {("get_call_analytics", "tz"): "Europe/Berlin"}


def valid_arguments(spec: ToolSpec, path: Path_) -> tuple[dict[str, Any], bool]:
    """Arguments the tool accepts with a string at `path`, and whether that string may be any text ("1") rather
    than one the field's own rules pick (an enum member, an example named in its description: SORT's field name).
    Built from the required arguments, one of each at-least-one-of group, and, when the tool's rules want more,
    one optional argument at a time (e.g. a recording source)."""
    schema = spec.input_schema
    properties = schema["properties"]
    prop = properties_at(schema, path)
    base = {name: EXAMPLES.get((spec.name, name), sample(properties[name])) for name in schema.get("required", [])}
    for group in spec.params.at_least_one_of:
        if not any(name in base for name in group):
            base[group[0]] = sample(properties[group[0]])
    if path[0] not in base:
        base[path[0]] = sample(properties[path[0]])
    example = [EXAMPLES[(spec.name, path[0])]] if (spec.name, path[0]) in EXAMPLES else []
    texts = ["1", *example, *prop.get("enum", []), *re.findall(r"\b[A-Z][A-Z0-9_.]{2,}\b", prop.get("description", ""))]
    extras = [{}] + [{name: sample(prop)} for name, prop in properties.items() if name not in base]
    for text in texts:
        for extra in extras:
            arguments = put({**base, **extra}, path, text)
            try:
                spec.params.model_validate(arguments)
            except ValidationError:
                continue
            return arguments, text == "1"
    raise AssertionError(f"{spec.name}: no valid arguments found with {path}; teach sample() this tool's rules")


def properties_at(schema: dict[str, Any], path: Path_) -> dict[str, Any]:
    for part in path:
        schema = schema["items"] if isinstance(part, int) else schema["properties"][part]
    return schema


CASES = [(spec, path) for spec in EVERY_TOOL for path in string_paths(spec.input_schema)]


def test_every_tool_has_string_inputs_to_check() -> None:
    nested = [path for _, path in CASES if len(path) > 1]
    assert nested, "a nested string property (MESSAGES.0.MESSAGE) should be among the cases"
    assert {spec.name for spec, _ in CASES} >= {spec.name for spec in ALL_TOOLS if string_paths(spec.input_schema)}


@pytest.mark.parametrize(("spec", "path"), CASES, ids=[f"{s.name}.{'.'.join(map(str, p))}" for s, p in CASES])
def test_an_integer_is_its_decimal_text_and_other_non_strings_are_refused(spec: ToolSpec, path: Path_) -> None:
    arguments, any_text = valid_arguments(spec, path)
    prop = properties_at(spec.input_schema, path)
    numeric_members = [value for value in prop.get("enum", []) if str(value).lstrip("-").isdigit()]
    if any_text or numeric_members:
        number = int(numeric_members[0]) if numeric_members else NUMBER
        accepted = spec.params.model_validate(put(arguments, path, number))
        assert get(accepted.model_dump(by_alias=True), path) == str(number), (spec.name, path)
    else:  # a field whose own rules pick the text (an enum of words, a field name): read as text, then judged
        with pytest.raises(ValidationError) as judged:
            spec.params.model_validate(put(arguments, path, NUMBER))
        at_path = [error for error in judged.value.errors() if error["loc"][: len(path)] == path]
        assert at_path and all(error["type"] != "string_type" for error in at_path), (spec.name, path, at_path)
    for kind, value in NOT_TEXT.items():
        with pytest.raises(ValidationError) as refused:
            spec.params.model_validate(put(arguments, path, value))
        assert any(error["loc"][: len(path)] == path for error in refused.value.errors()), (spec.name, path, kind)
        assert spec.invalid_arguments(refused.value).code == INVALID_ARGUMENTS


@pytest.mark.anyio
async def test_numbers_reach_the_portal_as_text(sandbox: RunningSandbox, token_file: Path) -> None:
    async with stdio_session(app_env(sandbox, token_file)) as client:
        assert ok(await client.call_tool("add_external_line", {"NUMBER": NUMBER, "NAME": 2026}))
        (line,) = sandbox.portal.lines.values()
        assert (line.number, line.name) == (str(NUMBER), "2026")
        for value in NOT_TEXT.values():
            refused = error_of(await client.call_tool("add_external_line", {"NUMBER": value}))
            assert refused["code"] == INVALID_ARGUMENTS and refused["description"].startswith("NUMBER: ")

        call = {"USER_ID": 2, "PHONE_NUMBER": 79000000102, "TYPE": 2}
        call_id = ok(await client.call_tool("register_external_call", call))["CALL_ID"]
        assert sandbox.portal.calls[call_id].caller_id == "79000000102"
        ok(await client.call_tool("finish_external_call", {"CALL_ID": call_id, "USER_ID": 2, "DURATION": 5}))
        said = {"SIDE": "Client", "START_TIME": 0, "STOP_TIME": 2, "MESSAGE": 42}
        transcript = ok(await client.call_tool("attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": [said]}))
        assert sandbox.portal.transcripts[transcript["TRANSCRIPT_ID"]].messages[0]["MESSAGE"] == "42"
        nested = error_of(
            await client.call_tool(
                "attach_call_transcription", {"CALL_ID": call_id, "MESSAGES": [{**said, "MESSAGE": 4.2}]}
            )
        )
        assert nested["code"] == INVALID_ARGUMENTS and nested["description"].startswith("MESSAGES.0.MESSAGE: ")
