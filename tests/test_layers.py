"""The package's floors, held against its imports.

Every import of the package is read with `ast` (module level, inside functions and under `if TYPE_CHECKING:`
alike): an import may go down the floors or stay on its own floor, never up, and no modules may import each other
in a circle, not even through type-only imports. The sandbox is a room beside the floors: it takes only the helpers
of `common` and is started only by the commands. A new top-level package or module has to be given its floor here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "b24_telephony_mcp"
ROOT = Path(__file__).parent.parent / "server" / PACKAGE

# Top to bottom. The package face (`b24_telephony_mcp`: PROG, __version__) is below everything.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("commands",),
    ("serving",),
    ("remote",),
    ("config",),
    ("prompts",),
    ("tools",),
    ("events",),
    ("state",),
    ("bitrix",),
    ("common",),
    ("",),
)
SIDE_ROOMS = {"sandbox": {"common", ""}}
"""A room beside the floors -> the rooms it may import from."""
SIDE_ROOM_USERS = {"sandbox": {"commands"}}
"""A room beside the floors -> the rooms that may import it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """The package's modules `module` imports, with the line: `from X import Y` names the module X.Y when there is
    one, else X (so re-exports in a package face are not arrows into it from its own submodules)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                yield (f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source), node.lineno


def room(module: str) -> str:
    """The top-level package (or module) of the package a module lives in; '' for the package face."""
    return module.removeprefix(PACKAGE).lstrip(".").split(".")[0]


def floor(name: str) -> int | None:
    return next((index for index, rooms in enumerate(FLOORS) if name in rooms), None)


ARROWS = {module: sorted(set(imported(module, path))) for module, path in MODULES.items()}


def test_every_room_has_a_floor() -> None:
    rooms = {room(module) for module in MODULES}
    unplaced = sorted(name for name in rooms if floor(name) is None and name not in SIDE_ROOMS)
    assert not unplaced, f"give these a floor in FLOORS (or a side room): {unplaced}"
    # The check sees the imports at all: the commands do reach the REST client.
    assert any(room(target) == "bitrix" for target, _ in ARROWS[f"{PACKAGE}.commands.doctor"])


def test_no_arrow_runs_up_a_floor() -> None:
    wrong: list[str] = []
    for module, targets in ARROWS.items():
        here = room(module)
        for target, line in targets:
            there = room(target)
            if here in SIDE_ROOMS and there != here and there not in SIDE_ROOMS[here]:
                wrong.append(f"{module}:{line} -> {target} (the {here} room takes only {sorted(SIDE_ROOMS[here])})")
            elif there in SIDE_ROOM_USERS and here != there and here not in SIDE_ROOM_USERS[there]:
                wrong.append(f"{module}:{line} -> {target} (only {sorted(SIDE_ROOM_USERS[there])} start the {there})")
            elif here not in SIDE_ROOMS and there not in SIDE_ROOMS and floor(there) < floor(here):  # type: ignore[operator]
                wrong.append(f"{module}:{line} -> {target} (up from {here or 'the face'} to {there or 'the face'})")
    assert not wrong, "imports that run up the floors:\n" + "\n".join(wrong)


def circles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target, _ in ARROWS.get(module, ()):
            if target not in MODULES:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or any(target == module for target, _ in ARROWS[module]):
                found.append(sorted(group))

    for module in MODULES:
        if module not in index:
            visit(module)
    return found


def test_no_circles() -> None:
    assert circles() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from b24_telephony_mcp.tools.base import ToolSpec\n", "b24_telephony_mcp.tools.base"),
        ("from b24_telephony_mcp.tools import call_log\n", "b24_telephony_mcp.tools.call_log"),
        ("from b24_telephony_mcp.tools import ToolSpec\n", "b24_telephony_mcp.tools"),
        ("from ..calls import Params\n", "b24_telephony_mcp.sandbox.calls"),
        ("if TYPE_CHECKING:\n    from b24_telephony_mcp.state.journal import Journal\n", f"{PACKAGE}.state.journal"),
        ("def f():\n    import b24_telephony_mcp.serving.server\n", "b24_telephony_mcp.serving.server"),
    ],
)
def test_the_reader_sees_every_kind_of_import(tmp_path: Path, source: str, expected: str) -> None:
    # As if written in sandbox/methods/sip.py: relative imports resolve from there.
    path = tmp_path / "sip.py"
    path.write_text(source, encoding="utf-8")
    assert [target for target, _ in imported(f"{PACKAGE}.sandbox.methods.sip", path)] == [expected]
