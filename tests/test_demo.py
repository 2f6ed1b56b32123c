"""`make demo` is the first thing a newcomer runs: it must keep working, end to end, with `--sandbox`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from b24_telephony_mcp.tools import select_tools
from support import clean_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO = EXAMPLES / "demo_session.py"


def test_demo_logs_a_call_into_the_sandbox_crm() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Connected: {len(select_tools())} tools" in out  # the default toolsets
    assert '"CRM_ENTITY_TYPE":"CONTACT","CRM_ENTITY_ID":651' in out, "the caller was matched to John Doe"
    assert '"NAME":"John Doe"' in out
    assert '"CALL_DURATION":95' in out
    assert '"record":{"FILE_ID":' in out
    assert '"transcript":{"TRANSCRIPT_ID":' in out
    logged = [line for line in out.splitlines() if line.startswith('<- {"result":{"CALL_ID":')]
    assert len(logged) == 2 and logged[0] == logged[1], "the retry answers exactly as the first call"
    assert "<- ERROR ERROR_CORE: Call is not found" in out, "the double finish shows an actionable error"
    assert "<- 3 items, 0 failed; CALL_IDs:" in out
    assert "Hint: " in out
    assert '"NUMBER":"74951234567","NAME":"Office PBX"' in out
    assert "Traceback" not in done.stderr


def test_the_click_to_call_agent_answers_each_click_with_its_call_id() -> None:
    """`make demo-events`: a click heard, the card shown, the call finished by the event's CALL_ID."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "click_to_call_agent.py")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    heard = re.findall(r'"event":"OnExternalCallStart".*?"CALL_ID":"(externalCall\.[^"]+)"', out)
    logged = re.findall(r'<- \{"result":\{"CALL_ID":"(externalCall\.[^"]+)","steps":\{"register":\{"CALL_ID"', out)
    assert len(heard) == 2 and logged == heard, "each click finished under its own CALL_ID"
    assert out.count('<- {"result":true}') == 2, "the card shown to the manager each time"
    assert '"CRM_ENTITY_TYPE":"CONTACT","CRM_ENTITY_ID":651' in out, "the known client's call went to his contact"
    assert "Done: 2 clicks answered, 2 calls finished" in out
    assert "ERROR" not in out and "Traceback" not in done.stderr
