"""`make demo` is the first thing a newcomer runs: it must keep working, end to end, with `--sandbox`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from b24_telephony_mcp.tools import select_tools
from support import clean_env

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo_session.py"


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
