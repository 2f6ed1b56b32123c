"""A start pays for the offered tools only: it imports the modules of the offered toolsets alone, and builds the
models of the offered tools alone (the others wait for their first use, defer_build); the next start takes their
schemas from the cache and builds none."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from b24_telephony_mcp.tools import catalogue
from b24_telephony_mcp.tools.base import Toolset
from b24_telephony_mcp.tools.catalogue import (
    ALL_TOOLS,
    DEFAULT_TOOLSETS,
    TOOLSET_NAMES,
    TOOLSET_TOOL_NAMES,
    select_tools,
)

# Runs the real command in a fresh interpreter (this one has imported and built everything by now), which the test
# tells initialize, then tools/list and whatever else it sends, one request after the other's answer, then ends; then
# prints which toolset modules (and which modules at all) the run imported and, per model class, whether pydantic
# has built it.
PROBE = """
import json, sys, typing
from pydantic import BaseModel
from b24_telephony_mcp.commands import cli
from b24_telephony_mcp.tools import catalogue

def models(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from models(argument)

code = cli.main(sys.argv[1:])
imported = [name for name in catalogue.TOOLSET_NAMES if f"b24_telephony_mcp.tools.{name}" in sys.modules]
loaded = sorted(sys.modules)
every = catalogue.ALL_TOOLS  # imports the rest (importing builds no model)
every_model = [model for spec in every for model in (spec.params, *models(spec.result))]
built = {model.__qualname__: model.__pydantic_complete__ for model in every_model}
results = {spec.name: [model.__qualname__ for model in models(spec.result)] for spec in every}
report = {"code": code, "imported": imported, "loaded": loaded, "built": built, "results": results}
print(json.dumps(report), file=sys.stderr)
"""
HANDSHAKE = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
]


def probe(
    *args: str, cache: Path, then: tuple[dict[str, Any], ...] = (), script: str = PROBE
) -> tuple[dict[int, Any], dict[str, Any]]:
    """The answers by request id, and the probe's report; the schema cache under `cache` (XDG_CACHE_HOME)."""
    env = {
        **os.environ,
        "B24_WEBHOOK_URL": "https://example.bitrix24.ru/rest/1/abc/",
        "B24_LOG_LEVEL": "WARNING",
        "XDG_CACHE_HOME": str(cache),
    }
    answers: dict[int, Any] = {}
    with subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        for message in (*HANDSHAKE, *then):
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
            # The end of stdin ends the server, and with it any call still running: wait for each answer.
            while "id" in message and message["id"] not in answers:
                answer = json.loads(process.stdout.readline())
                if "id" in answer:
                    answers[answer["id"]] = answer
        _, stderr = process.communicate(timeout=60)
    report = json.loads(stderr.strip().splitlines()[-1])
    assert report["code"] == 0, stderr
    return answers, report


def listed(answers: dict[int, Any]) -> list[str]:
    return [tool["name"] for tool in answers[2]["result"]["tools"]]


def test_start_builds_only_the_offered_tools_models(tmp_path: Path) -> None:
    answers, report = probe(cache=tmp_path)
    built: dict[str, bool] = report["built"]

    offered = select_tools()
    assert listed(answers) == [spec.name for spec in offered]
    # tools/list built each offered tool's params (its input schema comes from them).
    assert all(built[spec.params.__qualname__] for spec in offered)

    # A model an offered tool shares may be built; every other one of an unoffered tool must not be.
    def classes(specs: object) -> set[str]:
        return {name for spec in specs for name in (spec.params.__qualname__, *report["results"][spec.name])}

    unoffered = classes(spec for spec in ALL_TOOLS if spec not in offered) - classes(offered)
    assert unoffered, "the default selection should leave some tools' params unoffered"
    assert not [name for name in unoffered if built[name]]


def test_the_next_start_lists_the_same_schemas_from_the_cache_and_builds_no_model(tmp_path: Path) -> None:
    first, _ = probe(cache=tmp_path)
    [kept] = (tmp_path / "b24-telephony-mcp").glob("schemas-*.json")
    second, report = probe(cache=tmp_path)
    assert second[2] == first[2]
    assert not [name for name, built in report["built"].items() if built], "the schemas came from the cache"
    assert list((tmp_path / "b24-telephony-mcp").iterdir()) == [kept], "read, not written again"


@pytest.mark.parametrize("damage", ["half a file", "not an object", "unwritable"])
def test_a_damaged_or_unwritable_cache_only_costs_the_schemas_again(tmp_path: Path, damage: str) -> None:
    expected, _ = probe(cache=tmp_path / "clean")
    directory = tmp_path / "b24-telephony-mcp"
    if damage == "unwritable":
        directory.write_text("a file where the directory should be")
    else:
        directory.mkdir()
        [clean] = (tmp_path / "clean" / "b24-telephony-mcp").glob("schemas-*.json")
        text = clean.read_text()[:100] if damage == "half a file" else "[1, 2]"
        (directory / clean.name).write_text(text)
    answers, report = probe(cache=tmp_path)
    assert answers[2] == expected[2]
    assert any(report["built"].values()), "the schemas were made again"
    if damage != "unwritable":
        [repaired] = directory.glob("schemas-*.json")
        assert json.loads(repaired.read_text()), "and kept for the next start"


# What a default stdio start does not need: the other modes' parts and the other commands' (each pays for its
# imports, dataclasses and models on every start if it slips in).
NOT_ON_A_DEFAULT_START = (
    "b24_telephony_mcp.events.drain",  # the events toolset's: its drainer, store and hub
    "b24_telephony_mcp.events.store",
    "b24_telephony_mcp.events.hub",
    "b24_telephony_mcp.events.records",
    "b24_telephony_mcp.commands.client_config",  # `config`
    "b24_telephony_mcp.commands.login",
    "b24_telephony_mcp.commands.doctor",
    "b24_telephony_mcp.remote",  # remote mode
    "b24_telephony_mcp.sandbox",
    "b24_telephony_mcp.serving.http_transport",
    "b24_telephony_mcp.bitrix.redis_state",
    "redis",
)  # cryptography, starlette and uvicorn are not here: the SDK's own `mcp.server` imports them.


def test_a_default_stdio_start_imports_nothing_of_the_other_modes_and_commands(tmp_path: Path) -> None:
    _, report = probe(cache=tmp_path)
    loaded = set(report["loaded"])
    slipped = [name for name in NOT_ON_A_DEFAULT_START if name in loaded]
    assert not slipped, f"a default start imported {slipped}"
    assert "b24_telephony_mcp.serving.server" in loaded  # the probe did see the start's imports


ENABLE_SIP = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "tools/call",
    "params": {"name": "enable_toolset", "arguments": {"toolset": "sip"}},
}


@pytest.mark.parametrize(
    ("args", "then", "imported"),
    [
        ((), (), DEFAULT_TOOLSETS),
        (("--toolsets", "users"), (), ("users",)),
        # --tools: the modules of the named tools' toolsets, found by name without importing the others.
        (("--tools", "list_sip_connections,get_call_followup"), (), ("sip", "followups")),
        (("--dynamic-toolsets",), (), DEFAULT_TOOLSETS),
        # enable_toolset imports the toolset it enables, and no other.
        (("--dynamic-toolsets",), (ENABLE_SIP,), (*DEFAULT_TOOLSETS, "sip")),
        (("--toolsets", "all"), (), TOOLSET_NAMES),
    ],
    ids=["default", "toolsets", "tools", "dynamic", "enable_toolset", "all"],
)
def test_start_imports_only_the_offered_toolsets_modules(
    args: tuple[str, ...], then: tuple[dict[str, Any], ...], imported: tuple[str, ...], tmp_path: Path
) -> None:
    answers, report = probe(*args, then=then, cache=tmp_path)
    assert set(report["imported"]) == set(imported)
    if then:
        assert not answers[3]["result"].get("isError"), answers[3]
    assert listed(answers)  # the start did serve tools/list


TOOLS_DIR = Path(catalogue.__file__).parent


def declares_a_toolset(path: Path) -> bool:
    """The module assigns a module-level `TOOLSET` (read from its source: importing it is what is checked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TOOLSET" for t in node.targets)
        for node in tree.body
    )


def test_the_catalogue_names_every_toolset_and_tool_as_its_module_declares_them() -> None:
    # Every toolset module is in the catalogue, under its module's name...
    modules = sorted(path.stem for path in TOOLS_DIR.glob("*.py") if declares_a_toolset(path))
    assert modules == sorted(TOOLSET_NAMES)
    assert set(DEFAULT_TOOLSETS) <= set(TOOLSET_NAMES)
    # ...and its TOOLSET carries that name and exactly the catalogue's tool names, in the same order.
    for name, tool_names in TOOLSET_TOOL_NAMES.items():
        toolset = importlib.import_module(f"b24_telephony_mcp.tools.{name}").TOOLSET
        assert isinstance(toolset, Toolset)
        assert toolset.name == name
        assert tuple(spec.name for spec in toolset.tools) == tool_names, name


# The command as installed (the console script and `python -m` both run __main__), reporting the garbage collector.
COLLECTOR_PROBE = """
import gc, json, sys
from b24_telephony_mcp.__main__ import main

paused = not gc.isenabled()
code = main(sys.argv[1:])
report = {"code": code, "paused": paused, "on": gc.isenabled(), "frozen": gc.get_freeze_count()}
print(json.dumps(report), file=sys.stderr)
"""


def test_the_collector_pauses_for_start_up_and_serves_on_with_start_up_set_aside(tmp_path: Path) -> None:
    answers, report = probe(cache=tmp_path, script=COLLECTOR_PROBE)
    assert listed(answers) == [spec.name for spec in select_tools()]
    assert report["paused"], "importing the command pauses the collector"
    assert report["on"], "and serving turns it back on"
    # What start-up made (the SDK's models, the tools'), never to be walked again: tens of thousands of objects.
    assert report["frozen"] > 20_000


def test_the_other_commands_run_with_the_collector_on(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", COLLECTOR_PROBE, "config", "cursor"],
        capture_output=True,
        text=True,
        env={**os.environ, "B24_WEBHOOK_URL": "https://example.bitrix24.ru/rest/1/abc/", "HOME": str(tmp_path)},
        timeout=60,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "paused": True, "on": True, "frozen": 0}
