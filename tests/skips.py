"""Where everything a test needs is installed (`.ci/run` installs redis-server, Node.js and Chromium and sets
TESTS_SKIPS_FAIL=1), a skip means a check that never ran: it fails instead of passing quietly. A pytest hook,
registered by conftest.py; tests/test_ci_skips.py holds it."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

SKIPS_FAIL = os.environ.get("TESTS_SKIPS_FAIL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if SKIPS_FAIL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may be (TESTS_SKIPS_FAIL=1): {report.longrepr}"
