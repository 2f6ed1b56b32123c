"""A PBX integration's day, end to end: the real server over stdio against the sandbox portal.

Spawns `b24-telephony-mcp --sandbox` the way an MCP client config would, connects with the
official SDK client, and plays an AI voice agent: it looks up the caller, logs the finished call
(register, finish, recording, transcript) in one tool call, retries it safely, and imports a day's
calls through run_batch, printing every tool call and result.

    make demo        (or: python examples/demo_session.py)
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

CALLER = "+1 906 219 5047"  # a number the sandbox's CRM knows
LINE = "74951234567"


def show(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    print(f"-> {tool} {json.dumps(arguments, ensure_ascii=False)}")
    result = await client.call_tool(tool, arguments)
    text = "\n".join(block.text for block in result.content if block.type == "text")
    marker = "<- ERROR" if result.is_error else "<-"
    print(textwrap.indent(text, "   ").replace("   ", f"{marker} ", 1))
    return result.structured_content or {}


async def main() -> None:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "b24_telephony_mcp", "--sandbox"],
        env={**os.environ, "B24_LOG_LEVEL": "WARNING"},
    )
    async with Client(server, mode="legacy") as client:
        tools = (await client.list_tools()).tools
        show(f"Connected: {len(tools)} tools")
        for tool in tools:
            print(f"   {tool.name:32} {(tool.meta or {}).get('b24/method')}")

        show("An admin adds the PBX's line")
        await call(client, "add_external_line", {"NUMBER": LINE, "NAME": "Office PBX", "CRM_AUTO_CREATE": "N"})

        show("A call comes in: the voice agent looks up who is calling")
        await call(client, "search_crm_entities_by_phone", {"PHONE_NUMBER": CALLER})

        show("The call ends: the agent logs it in one tool call (one REST request: a batch of four steps)")
        finished_call = {
            "USER_PHONE_INNER": "100",
            "PHONE_NUMBER": CALLER,
            "TYPE": 2,
            "LINE_NUMBER": LINE,
            "EXTERNAL_CALL_ID": f"agent-{uuid.uuid4().hex[:12]}",
            "CALL_START_DATE": "2026-03-07T10:20:30+03:00",
            "DURATION": 95,
            "STATUS_CODE": "200",
            "VOTE": 5,
            "RECORD_URL": "https://pbx.example.com/records/call-0001.mp3",
            "MESSAGES": [
                {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 4, "MESSAGE": "Good morning, Sandbox Ltd."},
                {"SIDE": "Client", "START_TIME": 4, "STOP_TIME": 11, "MESSAGE": "Hi, this is John Doe..."},
            ],
        }
        logged = await call(client, "log_external_call", finished_call)
        call_id = logged["result"]["CALL_ID"]

        show("The agent's framework retries after a timeout: the same answer, nothing logged twice")
        await call(client, "log_external_call", finished_call)

        show("A mistake the model can act on: finishing the same call again")
        await call(client, "finish_external_call", {"CALL_ID": call_id, "USER_ID": 1})

        show("The PBX imports the rest of the day's calls: many calls, one batch request")
        day = [
            {
                "tool": "log_external_call",
                "arguments": {
                    "USER_ID": 1,
                    "PHONE_NUMBER": number,
                    "TYPE": 2,
                    "EXTERNAL_CALL_ID": f"pbx-{uuid.uuid4().hex[:12]}",
                    "DURATION": duration,
                    "SHOW": 0,
                },
            }
            for number, duration in (("+44 20 7946 0958", 42), ("+49 30 901820", 0), ("+33 1 70 36 39 50", 310))
        ]
        imported = (await client.call_tool("run_batch", {"items": day})).structured_content or {}
        outcome = imported.get("result", {})
        print(f"-> run_batch with {len(day)} log_external_call items")
        print(f"<- {len(outcome.get('items', []))} items, {outcome.get('failed')} failed; CALL_IDs:")
        for item in outcome.get("items", []):
            print(f"   {item.get('result', {}).get('CALL_ID') or item.get('error')}")

        show("The lines, as the portal now has them")
        await call(client, "list_external_lines", {})


if __name__ == "__main__":
    anyio.run(main)
