"""README.md stays true to the code: every tool is listed under its toolset with its REST method."""

from __future__ import annotations

import re
from pathlib import Path

from b24_telephony_mcp.prompts.catalogue import PROMPTS
from b24_telephony_mcp.tools import TOOLSETS

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def toolset_section(name: str) -> str:
    match = re.search(rf"^### `{name}`.*?(?=^#)", README, flags=re.M | re.S)
    assert match, f"README has no section for toolset {name}"
    return match.group(0)


def test_every_tool_is_listed_under_its_toolset_with_its_method() -> None:
    for toolset in TOOLSETS:
        section = toolset_section(toolset.name)
        for spec in toolset.tools:
            assert f"| `{spec.name}` | `{spec.method}` |" in section, (toolset.name, spec.name)
        listed = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
        assert sorted(listed) == sorted(spec.name for spec in toolset.tools), toolset.name


def test_the_first_two_commands() -> None:
    assert README.index("make demo") < README.index("make test")


def test_every_prompt_is_listed_with_its_arguments() -> None:
    for prompt in PROMPTS:
        arguments = ", ".join(f"`{argument.name}`" for argument in prompt.arguments)
        assert f"| `{prompt.name}` | {arguments} |" in README, prompt.name
