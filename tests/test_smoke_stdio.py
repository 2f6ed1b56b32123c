from __future__ import annotations

from pathlib import Path

import pytest

from b24_telephony_mcp.sandbox import RunningSandbox
from support import app_env, error_of, ok, stdio_session

pytestmark = pytest.mark.anyio


async def test_line_lifecycle_over_stdio(sandbox: RunningSandbox, token_file: Path) -> None:
    async with stdio_session(app_env(sandbox, token_file)) as client:
        assert ok(await client.call_tool("add_external_line", {"NUMBER": "100200", "NAME": "PBX"}))["ID"]
        lines = ok(await client.call_tool("list_external_lines", {}))
        assert lines == [{"NUMBER": "100200", "NAME": "PBX", "CRM_AUTO_CREATE": "Y"}]
        error = error_of(await client.call_tool("add_external_line", {"NUMBER": "100200"}))
        assert error["code"] == "ERROR_CORE"
        assert error["description"] == "Line already exists"
        assert error["http_status"] == 400
        assert error["retryable"] is False
