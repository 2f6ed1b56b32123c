"""What the tool list costs in context, per toolset and for `all`: model-visible and wire bytes; and the prompt
list's wire bytes.

    make bench      (or: .venv/bin/python benchmarks/tool_sizes.py)

Model-visible: compact JSON of `[{name, description, inputSchema}]`, what a client turns into the model's tool
definitions. Wire: compact JSON of the whole `tools/list` result. Built in-process from the same declarations
the server lists (tests/test_tools_list.py checks the real server's listing against the budgets).
"""

from __future__ import annotations

import json
from typing import Any

from b24_telephony_mcp.prompts.catalogue import offered_prompts
from b24_telephony_mcp.serving.prompts import mcp_prompt
from b24_telephony_mcp.serving.server import mcp_tool
from b24_telephony_mcp.tools import TOOLSETS, ToolSpec, select_tools
from b24_telephony_mcp.tools.dynamic import DYNAMIC_TOOLS
from b24_telephony_mcp.tools.offer import ToolOffer


def compact_size(data: Any) -> int:
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


def sizes(specs: tuple[ToolSpec, ...]) -> tuple[int, int]:
    tools = [mcp_tool(spec).model_dump(mode="json", by_alias=True, exclude_none=True) for spec in specs]
    visible = [{key: tool[key] for key in ("name", "description", "inputSchema")} for tool in tools]
    return compact_size(visible), compact_size({"tools": tools})


def main() -> None:
    rows = [("selection", "tools", "model-visible B", "wire B")]
    selections: list[tuple[str, list[str] | None, bool]] = [
        *((toolset.name, [toolset.name], False) for toolset in TOOLSETS),
        ("default", None, False),
        ("all", ["all"], False),
        ("all --read-only", ["all"], True),
    ]
    for label, names, read_only in selections:
        specs = select_tools(names, read_only=read_only)
        visible, wire = sizes(specs)
        rows.append((label, str(len(specs)), str(visible), str(wire)))
    visible, wire = sizes(DYNAMIC_TOOLS)
    rows.append(("+ --dynamic-toolsets", str(len(DYNAMIC_TOOLS)), str(visible), str(wire)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
    prompts = [
        mcp_prompt(prompt).model_dump(mode="json", by_alias=True, exclude_none=True)
        for prompt in offered_prompts(ToolOffer.select(["all"]))
    ]
    print(f"prompts/list (all): {len(prompts)} prompts, {compact_size({'prompts': prompts})} B wire")


if __name__ == "__main__":
    main()
