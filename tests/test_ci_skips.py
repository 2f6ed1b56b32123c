"""CI runs every test: a test that skips itself (no Node.js, say) fails there, and `.ci/run` asks for that before
it runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
PROBE = """
import pytest

def test_runs():
    assert True

def test_skips_itself():
    pytest.skip("no such tool on this machine")

@pytest.mark.xfail(reason="a known failure is not a skip", strict=True)
def test_known_failure():
    raise AssertionError
"""


def run_probe(tmp_path: Path, skips_fail: bool) -> subprocess.CompletedProcess[str]:
    """pytest over the probe with the suite's own hook (tests/skips.py) and nothing else of the suite's."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text("from skips import pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {key: value for key, value in os.environ.items() if key != "TESTS_SKIPS_FAIL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    if skips_fail:
        env["TESTS_SKIPS_FAIL"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_skip_fails_where_everything_is_installed(tmp_path: Path) -> None:
    ran = run_probe(tmp_path, skips_fail=True)
    assert ran.returncode == 1, ran.stdout
    assert "1 failed, 1 passed, 1 xfailed" in ran.stdout
    assert "skipped where nothing may be (TESTS_SKIPS_FAIL=1)" in ran.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path: Path) -> None:
    ran = run_probe(tmp_path, skips_fail=False)
    assert ran.returncode == 0, ran.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in ran.stdout


def test_ci_sets_it_before_the_readme_test_command() -> None:
    script = (TESTS.parent / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in script.splitlines()]
    assert "export TESTS_SKIPS_FAIL=1" in lines
    assert re.search(r"export TESTS_SKIPS_FAIL=1\n(?:.*\n)*make test\s*$", script), "set before `make test`"
