"""A start builds the models of the offered tools only: the others wait for their first use (defer_build)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from b24_telephony_mcp.tools.catalogue import ALL_TOOLS, select_tools

# Runs the real command in a fresh interpreter (this one has built every model by now) on stdin that says
# initialize, then tools/list, then ends; then prints, per model class, whether pydantic has built it.
PROBE = """
import json, sys, typing
from pydantic import BaseModel
from b24_telephony_mcp.commands import cli
from b24_telephony_mcp.tools.catalogue import ALL_TOOLS

def models(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from models(argument)

code = cli.main([])
every = [model for spec in ALL_TOOLS for model in (spec.params, *models(spec.result))]
built = {model.__qualname__: model.__pydantic_complete__ for model in every}
results = {spec.name: [model.__qualname__ for model in models(spec.result)] for spec in ALL_TOOLS}
print(json.dumps({"code": code, "built": built, "results": results}), file=sys.stderr)
"""
MESSAGES = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
]


def test_start_builds_only_the_offered_tools_models() -> None:
    env = {**os.environ, "B24_WEBHOOK_URL": "https://example.bitrix24.ru/rest/1/abc/", "B24_LOG_LEVEL": "WARNING"}
    with subprocess.Popen(
        [sys.executable, "-c", PROBE],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as probe:
        assert probe.stdin is not None and probe.stdout is not None and probe.stderr is not None
        probe.stdin.write("".join(json.dumps(message) + "\n" for message in MESSAGES))
        probe.stdin.flush()
        # stdin ends only once tools/list is answered: an end read earlier would stop the server before it answers.
        answer = next(answer for line in probe.stdout if (answer := json.loads(line)).get("id") == 2)
        probe.stdin.close()
        report = json.loads(probe.stderr.read().strip().splitlines()[-1])
        probe.wait(60)
    listed = {tool["name"] for tool in answer["result"]["tools"]}
    assert report["code"] == 0
    built: dict[str, bool] = report["built"]

    offered = select_tools()
    assert listed == {spec.name for spec in offered}
    # tools/list built each offered tool's params (its input schema comes from them).
    assert all(built[spec.params.__qualname__] for spec in offered)

    # A model an offered tool shares may be built; every other one of an unoffered tool must not be.
    def classes(specs: object) -> set[str]:
        return {name for spec in specs for name in (spec.params.__qualname__, *report["results"][spec.name])}

    unoffered = classes(spec for spec in ALL_TOOLS if spec not in offered) - classes(offered)
    assert unoffered, "the default selection should leave some tools' params unoffered"
    assert not [name for name in unoffered if built[name]]
