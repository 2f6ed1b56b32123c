"""Click-to-call, heard and answered: a small voice-agent loop on the MCP SDK client, against the sandbox portal.

A manager clicks a client's phone number in the CRM; Bitrix24 registers the call and fires OnExternalCallStart.
The agent hears it through the server's offline event queue (no public URL needed), "dials" (simulated here),
shows the call card to the manager who clicked, and logs the finished call with the event's CALL_ID: finished,
never registered again.

    make demo-events        (or: python examples/click_to_call_agent.py)

The sandbox runs in this process on a loopback port; the server is spawned over stdio as an MCP client config
would, connected to it as an installed application. The clicks arrive over HTTP, through the sandbox's
`/_sandbox/click` control endpoint, standing in for the manager.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters

from b24_telephony_mcp.sandbox import RunningSandbox, start_sandbox

MANAGER = 2  # a sandbox user: the one who clicks
CLIENTS = ("+1 906 219 5047", "+7 495 000 1122")  # John Doe (known to the CRM), then a number nobody has
LINE = "agent-line"


def show(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    print(f"-> {tool} {json.dumps(arguments, ensure_ascii=False)}")
    result = await client.call_tool(tool, arguments)
    text = "\n".join(block.text for block in result.content if block.type == "text")
    marker = "<- ERROR" if result.is_error else "<-"
    print(textwrap.indent(text, "   ").replace("   ", f"{marker} ", 1))
    if result.is_error:
        raise SystemExit(f"{tool} failed")
    return (result.structured_content or {}).get("result")


def server_for(sandbox: RunningSandbox, state: Path) -> StdioServerParameters:
    """The server as an installed application of the sandbox portal, with the events toolset."""
    env = {
        **os.environ,
        "B24_LOG_LEVEL": "WARNING",
        **sandbox.app_variables(),
        "B24_TOKEN_FILE": str(state / "tokens.json"),
        "XDG_STATE_HOME": str(state),
        "B24_EVENT_POLL_WAITING": "0.5",  # how soon a waiting agent hears a click
    }
    args = ["-m", "b24_telephony_mcp", "--toolsets", "external_lines,external_calls,events"]
    return StdioServerParameters(command=sys.executable, args=args, env=env)


async def manager_clicks(sandbox: RunningSandbox) -> None:
    async with httpx2.AsyncClient() as http:
        for phone in CLIENTS:
            await anyio.sleep(1.0)
            print(f"   (the manager, user #{MANAGER}, clicks {phone} in the CRM)")
            answer = await http.post(f"{sandbox.base_url}/_sandbox/click", json={"phone": phone, "user_id": MANAGER})
            answer.raise_for_status()


async def agent(client: Client) -> None:
    cursor = (await call(client, "get_telephony_events", {"event": ["OnExternalCallStart"]}))["cursor"]
    for _ in CLIENTS:
        show("The agent waits for a click")
        page = await call(
            client, "get_telephony_events", {"cursor": cursor, "event": ["OnExternalCallStart"], "wait_seconds": 30}
        )
        cursor = page["cursor"]
        for event in page["events"]:
            clicked = event["data"]
            show(f"Dialling {clicked['PHONE_NUMBER']} (simulated); the manager sees the call card")
            await call(client, "show_external_call", {"CALL_ID": clicked["CALL_ID"], "USER_ID": clicked["USER_ID"]})
            show("The call is over: logged with the event's CALL_ID, so nothing is registered twice")
            await call(
                client,
                "log_external_call",
                {
                    "EXTERNAL_CALL_ID": f"agent-{clicked['CALL_ID']}",
                    "CALL_ID": clicked["CALL_ID"],
                    "USER_ID": clicked["USER_ID"],
                    "PHONE_NUMBER": clicked["PHONE_NUMBER"],
                    "TYPE": 1,
                    "DURATION": 37,
                    "MESSAGES": [
                        {"SIDE": "User", "START_TIME": 0, "STOP_TIME": 4, "MESSAGE": "Hello, Anna's assistant here."},
                        {"SIDE": "Client", "START_TIME": 4, "STOP_TIME": 9, "MESSAGE": "Hi! Yes, tomorrow works."},
                    ],
                },
            )


async def main() -> None:
    with start_sandbox() as sandbox, tempfile.TemporaryDirectory(prefix="b24-click-demo-") as state:
        async with Client(server_for(sandbox, Path(state)), mode="legacy") as client:
            show("Setup, once: the agent's line, and the click events bound to the offline queue")
            await call(client, "add_external_line", {"NUMBER": LINE, "NAME": "Voice agent"})
            await call(client, "watch_telephony_events", {"event": ["OnExternalCallStart"]})
            async with anyio.create_task_group() as group:
                group.start_soon(manager_clicks, sandbox)
                await agent(client)
        finished = len(sandbox.portal.statistics)  # the calls finished here (the seeded history is apart)
        show(f"Done: {len(CLIENTS)} clicks answered, {finished} calls finished, each registered once (by the portal)")


if __name__ == "__main__":
    anyio.run(main)
