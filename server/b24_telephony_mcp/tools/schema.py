"""Trim pydantic's JSON schemas to what a model needs: every byte of `tools/list` is context.

- drops the auto-generated `title` of every schema (the property name already says it);
- for inputs, turns `X | None = None` into plain `X` (optional is what "not in required" means);
  for outputs, where the portal really sends null, into `"type": [X, "null"]`;
- writes an `anyOf` of bare types as one `"type"` list, and drops `additionalProperties: true`;
- for inputs the server checks itself (`closed=False`), drops `additionalProperties: false` too, except on an
  object declaring no properties: there it is all that tells "no arguments" from "any" (OpenAI strict mode
  refuses such an object without it, and closes objects with declared properties by itself);
- inlines `$ref`s to `$defs` (nested items are used once, and some clients resolve no refs).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema

_NULL = {"type": "null"}
# Keywords whose value is a map of name -> schema, not a schema itself.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")


def lean_schema(schema: dict[str, Any], *, keep_null: bool = False, closed: bool = True) -> dict[str, Any]:
    """`closed=False` also drops `additionalProperties: false` where properties are declared (for inputs the
    server checks itself)."""
    return _lean(schema, schema.get("$defs", {}), keep_null, closed)


def _lean(node: dict[str, Any], defs: dict[str, Any], keep_null: bool, closed: bool = True) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs[ref.removeprefix("#/$defs/")]
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        node = {**target, **siblings}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (
            key == "additionalProperties"
            and (value is True or (value is False and not closed and node.get("properties")))
        ):
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: _lean(sub, defs, keep_null, closed) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [_lean(sub, defs, keep_null, closed) for sub in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _lean(value, defs, keep_null, closed)
        else:
            out[key] = value

    branches = out.get("anyOf")
    if branches and out.get("default", ...) is None:
        del out["default"]
        if not keep_null and _NULL in branches:
            branches = [branch for branch in branches if branch != _NULL]
            del out["anyOf"]
            out = {**branches[0], **out} if len(branches) == 1 else {"anyOf": branches, **out}
    branches = out.get("anyOf")
    if branches and all(len(branch) == 1 and isinstance(branch.get("type"), str) for branch in branches):
        del out["anyOf"]
        out = {"type": [branch["type"] for branch in branches], **out}
    return out


def property_names(schema: dict[str, Any]) -> frozenset[str]:
    """All property names anywhere in a (lean, ref-free) schema."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        for key, value in node.items():
            if key in _SCHEMA_MAPS:
                names.update(value)
                stack.extend(value.values())
            elif key in _SCHEMA_LISTS:
                stack.extend(value)
            elif key in _SCHEMA_VALUES and isinstance(value, dict):
                stack.append(value)
    return frozenset(names)


class JsonDefaults(GenerateJsonSchema):
    """pydantic's JSON schema generator, but a default that is JSON already (None, a bool, an int, a string) is
    written as it is: the stock one builds a TypeAdapter for each default to encode it, a fifth of the time the
    offered tools' schemas take at a start."""

    def encode_default(self, dft: Any) -> Any:
        if dft is None or type(dft) in (bool, int, str):
            return dft
        return super().encode_default(dft)
