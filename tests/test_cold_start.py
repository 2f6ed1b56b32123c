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
    stdin = "".join(json.dumps(message) + "\n" for message in MESSAGES)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], input=stdin, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    listed = {tool["name"] for tool in next(a for a in answers if a.get("id") == 2)["result"]["tools"]}
    report = json.loads(done.stderr.strip().splitlines()[-1])
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
