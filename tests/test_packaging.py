"""Install from where people look: the MCP Registry's server.json, the Claude Desktop extension (MCPB) and the PyPI
distributions stay valid and agree with the code.

server.json and mcpb/manifest.json are checked against the schemas vendored in tests/data (see its README); the
manifest also through the real `mcpb` CLI from the npm registry (cached under the temp directory, pinned by the
Makefile), the bundle through `make mcpb`, the manifest's env through the real server, and the sdist and wheel
through `python -m build` and `twine check --strict`."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from b24_telephony_mcp import __version__
from b24_telephony_mcp.sandbox import RunningSandbox
from b24_telephony_mcp.tools import ALL_TOOLS, DEFAULT_TOOLSETS, select_tools
from support import clean_env, stdio_session

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SERVER_JSON: dict[str, Any] = json.loads((REPO / "server.json").read_text(encoding="utf-8"))
MANIFEST: dict[str, Any] = json.loads((REPO / "mcpb" / "manifest.json").read_text(encoding="utf-8"))
README = (REPO / "README.md").read_text(encoding="utf-8")
REGISTRY_SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
REGISTRY_SCHEMA = DATA / "mcp-registry-server.schema.2025-12-11.json"
MANIFEST_SCHEMA = DATA / "mcpb-manifest-v0.4.schema.json"
SECRETS = {"B24_WEBHOOK_URL", "B24_CLIENT_SECRET", "B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN"}
NOT_FOR_STDIO = {"B24_MCP_AUTH_TOKEN", "B24_MCP_ALLOWED_HOSTS", "B24_REDIS_URL", "B24_MCP_STATELESS", "B24_LOG_FORMAT"}
USER_CONFIG_ENV = {
    "portal_url": "B24_PORTAL_URL",
    "client_id": "B24_CLIENT_ID",
    "client_secret": "B24_CLIENT_SECRET",
    "webhook_url": "B24_WEBHOOK_URL",
    "toolsets": "B24_TOOLSETS",
    "read_only": "B24_READ_ONLY",
}


def mcpb_version() -> str:
    """The CLI version the Makefile pins (the one place it is written)."""
    match = re.search(r"^MCPB_VERSION := (\S+)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    assert match, "the Makefile pins MCPB_VERSION"
    return match.group(1)


def variables_read_by_the_server() -> set[str]:
    source = "\n".join(path.read_text(encoding="utf-8") for path in (REPO / "server").rglob("*.py"))
    return set(re.findall(r"\"(B24_[A-Z_]+)\"", source))


def schema_errors(document: dict[str, Any], schema_file: Path) -> list[str]:
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = validator.iter_errors(document)
    return sorted(f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors)


# --- server.json (MCP Registry) --------------------------------------------------------------------------


def test_server_json_is_valid_against_the_registry_schema() -> None:
    assert SERVER_JSON["$schema"] == REGISTRY_SCHEMA_URL
    assert json.loads(REGISTRY_SCHEMA.read_text(encoding="utf-8"))["$id"] == REGISTRY_SCHEMA_URL
    assert schema_errors(SERVER_JSON, REGISTRY_SCHEMA) == []
    # The vendored schema does reject what the registry rejects (so the check above means something).
    too_long = SERVER_JSON | {"description": "x" * 101}
    assert any("description" in error for error in schema_errors(too_long, REGISTRY_SCHEMA))
    bad_name = SERVER_JSON | {"name": "b24-telephony-mcp"}
    assert any(error.startswith("name:") for error in schema_errors(bad_name, REGISTRY_SCHEMA))


def test_server_json_describes_this_package_and_the_readme_claims_it() -> None:
    (package,) = SERVER_JSON["packages"]
    assert SERVER_JSON["version"] == package["version"] == __version__
    assert (package["registryType"], package["identifier"], package["runtimeHint"]) == (
        "pypi",
        "b24-telephony-mcp",
        "uvx",
    )
    assert package["transport"] == {"type": "stdio"}
    assert re.search(r'^name = "b24-telephony-mcp"$', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert "remotes" not in SERVER_JSON, "no hosted streamable-HTTP endpoint exists yet"
    # The registry checks PyPI ownership by this line in the package's README (its PyPI description).
    claims = re.findall(r"^<!-- mcp-name: (\S+) -->$", README, re.M)
    assert claims == [SERVER_JSON["name"]]
    assert README.index(claims[0]) < README.index("## First two commands"), "near the top"
    owner = SERVER_JSON["name"].removeprefix("io.github.").split("/")[0]
    assert SERVER_JSON["repository"] == {"url": f"https://github.com/{owner}/b24-telephony-mcp", "source": "github"}


def test_server_json_lists_the_stdio_variables_the_server_reads() -> None:
    (package,) = SERVER_JSON["packages"]
    variables = {variable["name"]: variable for variable in package["environmentVariables"]}
    assert len(variables) == len(package["environmentVariables"]), "each variable once"
    read = variables_read_by_the_server()
    assert set(variables) <= read, set(variables) - read
    assert not set(variables) & NOT_FOR_STDIO
    for name in (
        "B24_WEBHOOK_URL",
        "B24_PORTAL_URL",
        "B24_CLIENT_ID",
        "B24_PROFILE",
        "B24_TOOLSETS",
        "B24_READ_ONLY",
        "B24_FILES_DIR",
        "B24_CONFIRM_CALLS",
    ):
        assert name in variables, name
    assert {name for name, variable in variables.items() if variable.get("isSecret")} == SECRETS
    for name, variable in variables.items():
        assert re.search(rf"\b{name}\b", README), f"{name} is documented in the README"
        assert variable["description"] and "\n" not in variable["description"], name
        # A profile saved by `login` needs no variable at all, so none is required.
        assert variable["isRequired"] is False, name
        if variable.get("format") == "boolean":
            assert variable.get("default") in (None, "true", "false"), name


# --- Claude Desktop extension (MCPB) ----------------------------------------------------------------------


def test_manifest_matches_the_package() -> None:
    assert MANIFEST["version"] == __version__
    assert MANIFEST["manifest_version"] == "0.4"
    assert MANIFEST["server"]["type"] == "uv"
    assert (REPO / MANIFEST["server"]["entry_point"]).is_file()
    config = MANIFEST["server"]["mcp_config"]
    assert config["command"] == "uv" and config["args"][-1] == "b24-telephony-mcp"
    assert config["env"] == {env: f"${{user_config.{key}}}" for key, env in USER_CONFIG_ENV.items()}
    options = MANIFEST["user_config"]
    assert set(options) == set(USER_CONFIG_ENV)
    assert {key for key, option in options.items() if option.get("sensitive")} == {"client_secret", "webhook_url"}
    assert options["read_only"]["type"] == "boolean"
    # The host leaves `${user_config.KEY}` in place for a value neither given nor defaulted: every optional field
    # has a default, so the server sees "" (or "false") rather than that text.
    for key, option in options.items():
        assert not option.get("required") and "default" in option, key
    for name in DEFAULT_TOOLSETS:
        assert name in options["toolsets"]["description"], name


def test_manifest_tools_are_the_tools_the_server_can_offer() -> None:
    expected = [{"name": spec.name, "description": spec.description} for spec in ALL_TOOLS]
    assert MANIFEST["tools"] == expected, "mcpb/manifest.json tools should read:\n" + json.dumps(expected, indent=2)


def test_manifest_is_valid_against_the_vendored_mcpb_schema() -> None:
    assert schema_errors(MANIFEST, MANIFEST_SCHEMA) == []
    broken = copy.deepcopy(MANIFEST)
    broken["user_config"]["read_only"]["type"] = "checkbox"
    assert schema_errors(broken, MANIFEST_SCHEMA)


def mcpb_cli() -> Path:
    """The pinned `mcpb` CLI, installed by npm into a cache directory this test owns (reused across runs)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip(
            "no Node.js/npm on this machine: the mcpb CLI cannot run (the vendored schema still checks the manifest)"
        )
    version = mcpb_version()
    prefix = Path(tempfile.gettempdir()) / "b24-telephony-mcp-tests" / f"mcpb-{version}"
    cli = prefix / "node_modules" / ".bin" / "mcpb"
    if not cli.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                f"@anthropic-ai/mcpb@{version}",
            ],
            capture_output=True,
            text=True,
            timeout=540,
        )
        assert installed.returncode == 0, installed.stderr
    return cli


@pytest.mark.timeout(600)
def test_mcpb_validate_accepts_the_manifest_and_refuses_a_broken_one(tmp_path: Path) -> None:
    cli = mcpb_cli()
    validated = subprocess.run(
        [str(cli), "validate", str(REPO / "mcpb" / "manifest.json")], capture_output=True, text=True, timeout=120
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "validation passes" in validated.stdout
    broken = copy.deepcopy(MANIFEST)
    del broken["server"]["mcp_config"]
    (tmp_path / "manifest.json").write_text(json.dumps(broken), encoding="utf-8")
    refused = subprocess.run(
        [str(cli), "validate", str(tmp_path / "manifest.json")], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "mcp_config" in refused.stdout + refused.stderr


@pytest.mark.timeout(600)
def test_make_mcpb_bundles_the_manifest_the_project_and_the_package_only(tmp_path: Path) -> None:
    cli = mcpb_cli()
    bundle = tmp_path / "out" / "b24-telephony-mcp.mcpb"
    built = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "mcpb",
            f"MCPB={cli}",
            f"MCPB_STAGE={tmp_path / 'stage'}",
            f"MCPB_BUNDLE={bundle}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        packed = json.loads(archive.read("manifest.json"))
    assert packed == MANIFEST
    assert {"manifest.json", "pyproject.toml", "README.md", "LICENSE"} <= names
    package = {name for name in names if name.startswith("server/b24_telephony_mcp/")}
    expected = {
        str(path.relative_to(REPO))
        for path in (REPO / "server" / "b24_telephony_mcp").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert package == expected
    assert not [name for name in names if name.split("/")[0] in ("tests", ".venv", ".git", "benchmarks", "deploy")]
    assert not [name for name in names if "__pycache__" in name or ".egg-info" in name]


def host_env(user_config: dict[str, Any]) -> dict[str, str]:
    """mcp_config.env as the host fills it in: the user's values over the manifest's defaults, booleans as
    "true"/"false" (the reference implementation in @anthropic-ai/mcpb, shared/config.js)."""
    values = {key: option["default"] for key, option in MANIFEST["user_config"].items()} | user_config
    text = {
        key: ("true" if value else "false") if isinstance(value, bool) else str(value) for key, value in values.items()
    }
    env: dict[str, str] = MANIFEST["server"]["mcp_config"]["env"]
    return {name: re.sub(r"\$\{user_config\.(\w+)\}", lambda m: text[m.group(1)], value) for name, value in env.items()}


@pytest.mark.anyio
async def test_the_server_starts_on_what_the_extension_passes(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """A webhook and every other field left empty: B24_PORTAL_URL="", B24_TOOLSETS="", B24_READ_ONLY="false"... are
    taken as unset, and the default toolsets are offered. Then all toolsets, read-only."""
    passed = host_env({"webhook_url": sandbox.webhook_url})
    assert passed["B24_TOOLSETS"] == "" and passed["B24_READ_ONLY"] == "false" and passed["B24_PORTAL_URL"] == ""
    env = clean_env(**passed, XDG_STATE_HOME=str(tmp_path))
    async with stdio_session(env) as client:
        listed = (await client.list_tools()).tools
    assert [tool.name for tool in listed] == [spec.name for spec in select_tools()]

    passed = host_env({"webhook_url": sandbox.webhook_url, "toolsets": "all", "read_only": True})
    async with stdio_session(clean_env(**passed, XDG_STATE_HOME=str(tmp_path))) as client:
        listed = (await client.list_tools()).tools
    assert [tool.name for tool in listed] == [spec.name for spec in select_tools(["all"], read_only=True)]

    passed = host_env({"webhook_url": sandbox.webhook_url, "toolsets": "all"})
    async with stdio_session(clean_env(**passed, XDG_STATE_HOME=str(tmp_path))) as client:
        listed = (await client.list_tools()).tools
    assert [{"name": tool.name, "description": tool.description} for tool in listed] == MANIFEST["tools"]


# --- PyPI ------------------------------------------------------------------------------------------------


def checkout_copy(target: Path) -> Path:
    """The repository's files as a fresh checkout has them (tracked and new, not ignored), so a build here never
    writes build/ or egg-info into the working tree."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


DASHBOARD = "server/b24_telephony_mcp/tools/views/call_dashboard.html"


@pytest.mark.timeout(300)
def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    source = checkout_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = dist.glob("b24_telephony_mcp-*.tar.gz")
    (wheel,) = dist.glob("b24_telephony_mcp-*.whl")
    assert sdist.name == f"b24_telephony_mcp-{__version__}.tar.gz"

    twine = Path(sys.executable).with_name("twine")
    checked = subprocess.run(
        [str(twine), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2 and "WARNING" not in checked.stdout, checked.stdout

    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "README.md",
        "LICENSE",
        "pyproject.toml",
        "server/b24_telephony_mcp/__init__.py",
        "server/b24_telephony_mcp/py.typed",
        "server/b24_telephony_mcp/sandbox/methods/platform.py",
        DASHBOARD,
    ):
        assert needed in names, needed
    for junk in ("tests/", "benchmarks/", "examples/", "deploy/", "mcpb/", ".ci/", "server.json"):
        assert not [name for name in names if name.startswith(junk)], junk
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]

    with zipfile.ZipFile(wheel) as archive:
        assert DASHBOARD.removeprefix("server/") in archive.namelist(), "the dashboard page is package data"
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    owner_repo = SERVER_JSON["repository"]["url"]
    for line in (
        f"Project-URL: Homepage, {owner_repo}",
        f"Project-URL: Repository, {owner_repo}",
        f"Project-URL: Issues, {owner_repo}/issues",
        "Project-URL: Bitrix24 REST API, ",
    ):
        assert line in metadata, line
    assert f"<!-- mcp-name: {SERVER_JSON['name']} -->" in metadata, "PyPI's description carries the registry claim"


def test_readme_links_work_on_pypi_too() -> None:
    """PyPI renders the README without GitHub's heading anchors or the repository's files: only absolute links."""
    targets = re.findall(r"\]\(([^)]*)\)", README) + re.findall(r"<(?:a|img)\s[^>]*(?:href|src)=\"([^\"]*)\"", README)
    assert [target for target in targets if not target.startswith(("https://", "http://"))] == []
