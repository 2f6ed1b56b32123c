"""deploy/: Docker cannot run here, so the files are checked as far as text allows: the compose file parses and
wires Redis (AOF on), two replicas and the proxy together; the proxy's upstreams are those replicas on the port
the image serves; the image installs the wheel and runs as a non-root user; every variable compose needs is in
the example environment file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from b24_telephony_mcp.config.settings import load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PORT = "8000"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), one list per FROM stage."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def replicas(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in services.items() if spec.get("build")}


def example_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name: value for name, value in pairs}


def test_compose_wires_redis_with_aof_two_replicas_and_a_proxy() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "replica-1", "replica-2", "proxy"}

    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "redis-server" in command
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    assert "--requirepass" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"]), "the AOF lives on a volume"
    assert "healthcheck" in redis

    pair = replicas(services)
    assert set(pair) == {"replica-1", "replica-2"}
    first, second = pair.values()
    assert first == second, "both replicas run the same image with the same settings"
    assert first["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    url = first["environment"]["B24_REDIS_URL"]
    assert url.startswith("redis://:${REDIS_PASSWORD") and url.endswith("@redis:6379/0")
    assert first["depends_on"]["redis"]["condition"] == "service_healthy"
    assert first["env_file"] == ".env"

    proxy = services["proxy"]
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    assert set(proxy["depends_on"]) == set(pair)
    # Clients reach the replicas through the proxy's published port: that Host must be admitted.
    assert "localhost:8080" in first["environment"]["B24_MCP_ALLOWED_HOSTS"].split(",")


def test_proxy_balances_over_the_replicas_without_affinity() -> None:
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", code, re.DOTALL)
    assert upstream is not None
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\s*;", upstream.group(2), re.MULTILINE)
    assert servers == [("replica-1", PORT), ("replica-2", PORT)]
    for sticky in ("ip_hash", "hash ", "sticky", "least_conn"):
        assert sticky not in upstream.group(2), "round robin, no affinity"
    assert f"proxy_pass http://{upstream.group(1)};" in code
    assert "proxy_set_header Host $http_host;" in code
    assert re.search(r"listen\s+8080;", code)
    # A POST that reached a replica may have written to the portal: nginx must not send it to the other.
    assert "non_idempotent" not in code


def test_image_installs_the_wheel_and_runs_as_a_non_root_user() -> None:
    build, runtime = dockerfile_stages()
    assert build[0].startswith("FROM python:3.11") and " AS build" in build[0]
    assert any(line.startswith("RUN pip wheel") and "--wheel-dir /wheels" in line for line in build)
    assert runtime[0].startswith("FROM python:3.11")
    install = next(line for line in runtime if line.startswith("RUN pip install"))
    assert "--no-index --find-links /wheels b24-telephony-mcp" in install
    assert " -e " not in install
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    assert re.search(rf"useradd .*\b{users[-1]}$", install)
    assert f"EXPOSE {PORT}" in runtime
    entrypoint = next(line for line in runtime if line.startswith("ENTRYPOINT "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == [
        "b24-telephony-mcp",
        *("--transport", "http", "--host", "0.0.0.0", "--port", PORT),
    ]
    healthcheck = next(line for line in runtime if line.startswith("HEALTHCHECK "))
    assert f"http://127.0.0.1:{PORT}/healthz" in healthcheck


def test_example_environment_covers_what_compose_uses() -> None:
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    env = example_env()
    assert used <= set(env), used - set(env)
    for name in ("B24_MCP_AUTH_TOKEN", "B24_PORTAL_URL", "B24_CLIENT_ID", "B24_CLIENT_SECRET"):
        assert name in env
    # What a replica sees, with the example filled in, is a valid configuration.
    filled = {name: value or "x" * 16 for name, value in env.items()}
    filled["B24_REDIS_URL"] = "redis://:secret@redis:6379/0"
    settings = load_settings(filled)
    assert settings.redis_url is not None and settings.stateless_http
    assert ".env" in (DEPLOY.parent / ".dockerignore").read_text(encoding="utf-8")
