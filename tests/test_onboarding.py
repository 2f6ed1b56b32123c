"""From nothing to a tool call: `login` (by redirect, pasted address and install POST, and every refusal),
profiles (0600, replaced atomically, refreshed into), the server started from a profile with no B24_*
variable, `doctor` on a good setup and on each bad one, `config` snippets, and a wheel installed into a
fresh virtualenv. Real processes, real loopback sockets, the sandbox portal playing Bitrix24; the test
plays the user's browser with an HTTP client.

Independent subprocesses are started together and then awaited: each one spends most of its life
importing, and the module has to stay well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import anyio
import httpx2
import pytest

from b24_telephony_mcp.bitrix import TokenPair
from b24_telephony_mcp.commands import CLIENTS
from b24_telephony_mcp.commands.client_config import Local, Remote, installed_command, render
from b24_telephony_mcp.commands.doctor import doctor_command
from b24_telephony_mcp.commands.login import login_command
from b24_telephony_mcp.config.settings import ConfigError, launch_env, load_settings
from b24_telephony_mcp.sandbox import RunningSandbox, SandboxConfig, start_sandbox
from b24_telephony_mcp.state.profiles import Profile, profile_store, read_profile, write_profile
from support import FAST_LIMITS, app_env, clean_env, ok, server_command, stdio_session

PROG = "b24-telephony-mcp"
REPO = Path(__file__).resolve().parent.parent
FAST = SandboxConfig(rate_limit=1000.0, rate_burst=10000)


# --- plumbing ---------------------------------------------------------------------------------------


def person_env(config_home: Path, **variables: str) -> dict[str, str]:
    """A person's shell: no B24_* variable unless given, profiles under `config_home`."""
    env = clean_env(XDG_CONFIG_HOME=str(config_home), **variables)
    if "B24_LOG_LEVEL" not in variables:
        del env["B24_LOG_LEVEL"]
    return env


def login_env(sandbox: RunningSandbox, config_home: Path, **variables: str) -> dict[str, str]:
    """What the README tells a user to export before `login` (the token URL points at the sandbox)."""
    application = {
        "B24_CLIENT_ID": sandbox.config.client_id,
        "B24_CLIENT_SECRET": sandbox.config.client_secret,
        "B24_OAUTH_TOKEN_URL": sandbox.token_url,
    }
    return person_env(config_home, **(application | variables))


def profile_file(config_home: Path, name: str = "default") -> Path:
    return config_home / PROG / f"{name}.json"


def profiles_written(config_home: Path) -> list[str]:
    directory = config_home / PROG
    return sorted(path.name for path in directory.glob("*.json")) if directory.exists() else []


def secrets_of(sandbox: RunningSandbox) -> list[str]:
    return [sandbox.config.client_secret, sandbox.access_token, sandbox.refresh_token, sandbox.config.webhook_code]


@dataclass
class LoginRun:
    """A `login` subprocess; `ready()` reads stderr up to the line naming its listener."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    authorize_url: str = ""
    handler_url: str = ""
    _drain: threading.Thread | None = None

    def ready(self) -> LoginRun:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if line.startswith("Open: "):
                self.authorize_url = line.removeprefix("Open: ").strip()
            found = re.search(r"answer at (http://localhost:\d+/)", line)
            if found:
                self.handler_url = found.group(1)
                break
        else:
            raise AssertionError(f"login did not start listening: {''.join(self.lines)}")
        self._drain = threading.Thread(target=lambda: self.lines.extend(self.process.stderr or ()), daemon=True)
        self._drain.start()
        return self

    def paste(self, address: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(address + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.process.wait(timeout)
        if self._drain is not None:
            self._drain.join(5)
        assert self.process.stdout is not None
        assert self.process.stdout.read() == "", "login writes to stderr only"
        return code, "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def start_login(env: Mapping[str, str], *args: str, stack: ExitStack) -> LoginRun:
    process = subprocess.Popen(
        server_command("login", "--port", "0", "--timeout", "60", *args),
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = LoginRun(process)
    stack.callback(run.stop)
    return run


def sent_back_to(sandbox: RunningSandbox, run: LoginRun) -> str:
    """The address the portal sends the browser to after approval (the browser not going there yet)."""
    sandbox.portal.config.handler_url = run.handler_url
    response = httpx2.get(run.authorize_url, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["location"]


def approve_in_browser(sandbox: RunningSandbox, run: LoginRun) -> httpx2.Response:
    """Open the printed address as a browser would: the portal approves and redirects to the listener."""
    sandbox.portal.config.handler_url = run.handler_url
    return httpx2.get(run.authorize_url, follow_redirects=True, timeout=30)


def with_query(address: str, **changes: str) -> str:
    parts = urlsplit(address)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def run_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args), env=dict(env), capture_output=True, text=True, timeout=60)


def start_cli(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        server_command(*args), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def outcome(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


# --- login ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_login_by_redirect_then_the_server_runs_from_the_profile_alone(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # BROWSER=true: the "browser" login opens is a no-op; the test follows the printed address itself.
    env = login_env(sandbox, tmp_path, BROWSER="true")
    with ExitStack() as stack:
        run = start_login(env, "--portal", sandbox.base_url, stack=stack).ready()
        assert run.authorize_url.startswith(f"{sandbox.base_url}/oauth/authorize/?client_id=")
        assert len(parse_qs(urlsplit(run.authorize_url).query)["state"][0]) >= 20
        page = approve_in_browser(sandbox, run)
        code, stderr = run.finish()
    assert code == 0, stderr
    assert page.status_code == 200 and "You can close this tab" in page.text
    assert "Granted scopes: call, crm, telephony, user." in stderr
    assert "These scopes allow all" in stderr and f"Next: {PROG} doctor\n" in stderr
    assert not any(secret in stderr for secret in secrets_of(sandbox))

    path = profile_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert profiles_written(tmp_path) == ["default.json"]
    assert not [entry for entry in path.parent.iterdir() if entry.name.startswith(".")], "no temp file left"
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert {key: saved[key] for key in ("portal_url", "member_id", "client_id", "client_secret", "scope")} == {
        "portal_url": sandbox.base_url,
        "member_id": sandbox.portal.member_id,
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
        "scope": ["call", "crm", "telephony", "user"],
    }
    assert saved["oauth_token_url"] == sandbox.token_url
    assert saved["expires"] > time.time() + 3000
    assert sandbox.portal.authenticate_token(saved["access_token"]).auth_type == "oauth"

    # The server with no B24_* variable at all finds the default profile and calls the portal.
    server_env = person_env(tmp_path)
    assert not [name for name in server_env if name.startswith("B24_")]
    async with stdio_session(server_env) as client:
        assert ok(await client.call_tool("add_external_line", {"NUMBER": "100", "NAME": "Office"})) == {"ID": 1}
        # A rotation is saved into the profile itself; the profile's other fields stay.
        httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
        assert ok(await client.call_tool("list_external_lines", {}))[0]["NUMBER"] == "100"
    rotated = json.loads(path.read_text(encoding="utf-8"))
    assert sandbox.portal.stats.refreshes == 1
    assert rotated["access_token"] != saved["access_token"]
    assert rotated["refresh_token"] != saved["refresh_token"]
    unchanged = ("portal_url", "member_id", "client_id", "client_secret", "scope", "oauth_token_url")
    assert {key: rotated[key] for key in unchanged} == {key: saved[key] for key in unchanged}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_login_by_pasted_address_and_a_second_login_replaces_the_file_by_rename(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = login_env(sandbox, tmp_path)
    tokens = []
    for _ in range(2):
        with ExitStack() as stack:
            run = start_login(env, "--no-browser", "--portal", sandbox.base_url, stack=stack).ready()
            run.paste("not an address")  # a slip is answered, not fatal
            run.paste(sent_back_to(sandbox, run))
            code, stderr = run.finish()
        assert code == 0, stderr
        assert "paste here the address your browser was sent to" in stderr
        assert "That is not the address" in stderr
        path = profile_file(tmp_path)
        tokens.append(json.loads(path.read_text(encoding="utf-8"))["access_token"])
        if len(tokens) == 1:
            before = tmp_path / "before.json"
            os.link(path, before)  # a second name for the first file
    assert tokens[0] != tokens[1]
    assert json.loads(before.read_text(encoding="utf-8"))["access_token"] == tokens[0], "replaced, not rewritten"
    assert path.stat().st_ino != before.stat().st_ino


@pytest.mark.parametrize("shape", ["interface app opened", "installation handler"])
def test_login_by_the_install_or_open_form_post(sandbox: RunningSandbox, tmp_path: Path, shape: str) -> None:
    pair = sandbox.portal.issue_tokens()  # what Bitrix24 hands the frame
    domain = urlsplit(sandbox.base_url).netloc
    if shape == "interface app opened":
        query = {"DOMAIN": domain, "PROTOCOL": "0", "LANG": "en", "APP_SID": "abc"}
        form = {"AUTH_ID": pair.access_token, "AUTH_EXPIRES": "3600", "REFRESH_ID": pair.refresh_token}
        form |= {"member_id": sandbox.portal.member_id, "APPLICATION_SCOPE": "telephony,crm", "PLACEMENT": "DEFAULT"}
        form |= {"APPLICATION_TOKEN": sandbox.config.application_token}
    else:
        query = {}
        form = {
            "event": "ONAPPINSTALL",
            "auth[access_token]": pair.access_token,
            "auth[refresh_token]": pair.refresh_token,
            "auth[expires_in]": "3600",
            "auth[domain]": domain,
            "auth[member_id]": sandbox.portal.member_id,
            "auth[scope]": "telephony crm",
            "auth[application_token]": sandbox.config.application_token,
        }
    with ExitStack() as stack:
        run = start_login(login_env(sandbox, tmp_path), "--no-browser", "--portal", sandbox.base_url, stack=stack)
        run.ready()
        page = httpx2.post(run.handler_url, params=query, data=form, timeout=30)
        code, stderr = run.finish()
    assert code == 0, stderr
    assert page.status_code == 200 and "You can close this tab" in page.text
    assert "installFinish" in page.text, "inside the install frame the page finishes the installation"
    saved = json.loads(profile_file(tmp_path).read_text(encoding="utf-8"))
    assert (saved["access_token"], saved["refresh_token"]) == (pair.access_token, pair.refresh_token)
    assert saved["scope"] == ["crm", "telephony"]
    assert saved["member_id"] == sandbox.portal.member_id
    # The installation's application token: what the online event handler checks posts against from now on.
    assert saved["application_token"] == sandbox.config.application_token
    assert sandbox.config.application_token not in stderr
    settings = load_settings({"XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.events.application_tokens == (sandbox.config.application_token,)


REFUSALS: dict[str, str] = {
    "wrong state": "state does not match",
    "expired code": "lives 30 seconds",
    "reused code": "lives 30 seconds",
    "another portal's domain": "this login is for",
    "app not installed": "installed on",
    "wrong client secret": "refused client id",
}


def test_login_refusals_are_clear_and_write_nothing(tmp_path: Path) -> None:
    with ExitStack() as stack:
        cases: dict[str, tuple[RunningSandbox, LoginRun, Path]] = {}
        for case in REFUSALS:
            sandbox = stack.enter_context(start_sandbox(SandboxConfig(rate_limit=1000.0, rate_burst=10000)))
            home = tmp_path / case.replace(" ", "-")
            secret = "not-the-secret" if case == "wrong client secret" else sandbox.config.client_secret
            env = login_env(sandbox, home, B24_CLIENT_SECRET=secret)
            run = start_login(env, "--no-browser", "--portal", sandbox.base_url, stack=stack)
            cases[case] = (sandbox, run, home)
        for case, (sandbox, run, _) in cases.items():
            address = sent_back_to(sandbox, run.ready())
            if case == "wrong state":
                address = with_query(address, state="forged-state")
            elif case == "expired code":
                sandbox.portal.clock = lambda: time.time() + 31
            elif case == "reused code":
                code = parse_qs(urlsplit(address).query)["code"][0]
                spent = httpx2.get(
                    sandbox.token_url,
                    params={
                        "grant_type": "authorization_code",
                        "client_id": sandbox.config.client_id,
                        "client_secret": sandbox.config.client_secret,
                        "code": code,
                    },
                )
                assert spent.status_code == 200
            elif case == "another portal's domain":
                address = with_query(address, domain="evil.example.com")
            elif case == "app not installed":
                sandbox.portal.config.app_installed = False
            run.paste(address)
        for case, (sandbox, run, home) in cases.items():
            code, stderr = run.finish()
            assert code == 1, (case, stderr)
            assert f"{PROG}: login failed: " in stderr and REFUSALS[case] in stderr, (case, stderr)
            assert "Traceback" not in stderr
            assert not any(secret in stderr for secret in secrets_of(sandbox) if secret != "not-the-secret")
            assert profiles_written(home) == [], case


def test_login_timeout_and_port_in_use(sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = login_env(sandbox, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        login = ("login", "--portal", sandbox.base_url, "--no-browser")
        timeout = start_cli(env, *login, "--port", "0", "--timeout", "1")
        busy = start_cli(env, *login, "--port", port)
        results = {"timeout": outcome(timeout), "port in use": outcome(busy)}
    expected = {"timeout": "no answer from Bitrix24 within 1 s", "port in use": f"port {port} is in use"}
    for name, phrase in expected.items():
        returncode, stdout, stderr = results[name]
        assert (returncode, stdout) == (1, ""), (name, stderr)
        assert phrase in stderr and "Traceback" not in stderr, (name, stderr)
    assert "handler path is exactly http://localhost:" in results["timeout"][2]
    assert "--port N" in results["port in use"][2]
    assert profiles_written(tmp_path) == []


@pytest.mark.parametrize(
    ("variables", "args", "phrase"),
    [
        ({"B24_CLIENT_ID": "local.x", "B24_CLIENT_SECRET": "s" * 10}, {}, "--portal"),
        ({"B24_CLIENT_ID": "local.x"}, {"portal": "https://p.bitrix24.com"}, "B24_CLIENT_SECRET"),
        ({}, {"portal": "https://p.bitrix24.com"}, "--client-id"),
        ({"B24_CLIENT_ID": "local.x"}, {"portal": "http://portal.example.com"}, "https://"),
        ({}, {"portal": "https://p.bitrix24.com", "profile": "../x"}, "profile name"),
    ],
    ids=["no portal", "no secret", "no client id", "plain http", "bad profile name"],
)
def test_login_setup_mistakes_exit_2_before_listening(
    variables: dict[str, str], args: dict[str, str], phrase: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options: dict[str, Any] = {"portal": None, "client_id": None, "profile": None} | args
    env = {"B24_CONFIG_DIR": str(tmp_path), **variables}
    code = login_command(env, port=0, timeout=1, no_browser=True, sandbox=False, **options)
    stdout, stderr = capsys.readouterr()
    assert (code, stdout) == (2, "")
    assert phrase in stderr and stderr.count("\n") == 1, stderr
    assert profiles_written(tmp_path) == []


@pytest.mark.anyio
async def test_two_profiles_side_by_side_and_login_against_the_sandbox(tmp_path: Path) -> None:
    with start_sandbox(FAST) as first, start_sandbox(FAST) as second, ExitStack() as stack:
        env = login_env(first, tmp_path)
        run = start_login(env, "--no-browser", "--portal", first.base_url, "--profile", "first", stack=stack)
        # `login --sandbox` fetches the sandbox app's credentials itself and follows the approval as a browser.
        sandbox_login = start_cli(
            person_env(tmp_path), "login", "--sandbox", "--portal", second.base_url, "--port", "0"
        )
        approve_in_browser(first, run.ready())
        assert run.finish()[0] == 0
        code, stdout, stderr = outcome(sandbox_login)
        assert (code, stdout) == (0, ""), stderr
        assert f"Next: {PROG} doctor --profile sandbox" in stderr
        assert profiles_written(tmp_path) == ["first.json", "sandbox.json"]

        async def add_line(env: dict[str, str], args: tuple[str, ...], number: str) -> None:
            async with stdio_session(env, *args) as client:
                ok(await client.call_tool("add_external_line", {"NUMBER": number}))

        async with anyio.create_task_group() as both:
            both.start_soon(add_line, person_env(tmp_path), ("--profile", "first"), "201")
            both.start_soon(add_line, person_env(tmp_path, B24_PROFILE="sandbox"), (), "202")
        assert [line.number for line in first.portal.lines.values()] == ["201"], "each profile reached its own portal"
        assert [line.number for line in second.portal.lines.values()] == ["202"]


def test_sandboxes_started_from_one_config_keep_their_own_settings() -> None:
    """`login --sandbox` re-points one portal's handler path; a portal started from the same config keeps its own."""
    with start_sandbox(FAST) as first, start_sandbox(FAST) as second:
        httpx2.post(f"{second.base_url}/_sandbox/app", json={"handler_url": "http://localhost:1/"}).raise_for_status()
        assert httpx2.get(f"{first.base_url}/_sandbox/app").json()["handler_url"] == FAST.handler_url
        assert second.config.handler_url == "http://localhost:1/" and FAST.handler_url != second.config.handler_url


def test_sandbox_authorize_code_and_platform_methods(sandbox: RunningSandbox) -> None:
    """The sandbox side of login and doctor, as a portal and its OAuth server answer them."""
    authorize = f"{sandbox.base_url}/oauth/authorize/"
    unknown = httpx2.get(authorize, params={"client_id": "local.unknown", "state": "s"})
    assert unknown.status_code == 401 and "location" not in unknown.headers, "an error page, never a redirect"
    sandbox.portal.config.handler_url = "http://localhost:8765/"
    sent = httpx2.get(authorize, params={"client_id": sandbox.config.client_id, "state": "s1"})
    assert sent.status_code == 302 and sent.headers["location"].startswith("http://localhost:8765/?code=")
    answer = {key: values[0] for key, values in parse_qs(urlsplit(sent.headers["location"]).query).items()}
    assert answer["state"] == "s1" and answer["domain"] == urlsplit(sandbox.base_url).netloc
    assert answer["member_id"] == sandbox.portal.member_id and answer["scope"] == sandbox.config.scopes

    grant = {"grant_type": "authorization_code", "code": answer["code"], "client_id": sandbox.config.client_id}
    first = httpx2.get(sandbox.token_url, params={**grant, "client_secret": sandbox.config.client_secret})
    again = httpx2.get(sandbox.token_url, params={**grant, "client_secret": sandbox.config.client_secret})
    assert first.status_code == 200 and first.json()["member_id"] == sandbox.portal.member_id
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant"), "a code works once"

    token = first.json()["access_token"]
    sandbox.portal.config.scopes = "crm"  # the platform methods need no scope of their own
    call = {m: httpx2.post(f"{sandbox.base_url}/rest/{m}", json={"auth": token}).json() for m in PLATFORM}
    assert call["app.info"]["result"]["INSTALLED"] is True and call["app.info"]["result"]["STATUS"] == "L"
    assert call["scope"]["result"] == ["crm"]
    assert call["profile"]["result"]["ID"] == "1" and call["profile"]["result"]["ADMIN"] is True
    assert abs(datetime.fromisoformat(call["server.time"]["result"]).timestamp() - time.time()) < 5
    webhook_info = httpx2.post(f"{sandbox.webhook_url}app.info").json()["result"]
    assert set(webhook_info) == {"SCOPE", "LICENSE"}, "a webhook has no application context"


PLATFORM = ("app.info", "scope", "profile", "server.time")


# --- profiles and precedence (in-process) ---------------------------------------------------------


def saved_profile(directory: Path, name: str = "default", portal: str = "https://p.bitrix24.com") -> Profile:
    profile = Profile(
        portal_url=portal,
        member_id="m1",
        client_id="local.app.1",
        client_secret="profile-secret-value",
        tokens=TokenPair("profile-access-token", "profile-refresh-token", 1_900_000_000.0),
        scopes=("crm", "telephony"),
        token_url="https://oauth.bitrix.info/oauth/token/",
    )
    write_profile(profile_store(directory, name), profile)
    return profile


def test_a_rotated_pair_keeps_the_profiles_other_fields(tmp_path: Path) -> None:
    profile = saved_profile(tmp_path)
    store = profile_store(tmp_path, "default")
    store.save(TokenPair("new-access-token", "new-refresh-token", 1_900_003_600.0))
    assert store.load() == TokenPair("new-access-token", "new-refresh-token", 1_900_003_600.0)
    reread = read_profile(store)
    assert reread is not None and reread.portal_url == profile.portal_url and reread.scopes == profile.scopes
    assert reread.client_secret == profile.client_secret
    with pytest.raises(ValueError, match="profile name"):
        profile_store(tmp_path, "../escape")


def test_precedence_of_environment_and_profile(tmp_path: Path) -> None:
    profile = saved_profile(tmp_path)
    base = {"B24_CONFIG_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}

    from_profile = load_settings(base).portal
    assert from_profile.profile == "default" and from_profile.token_file == tmp_path / "default.json"  # type: ignore[union-attr]
    assert (from_profile.client_secret, from_profile.token_url) == (profile.client_secret, profile.token_url)  # type: ignore[union-attr]
    assert load_settings(base).mode == "profile"

    # A variable wins over the profile's value; the profile's store still holds the tokens.
    overridden = load_settings({**base, "B24_CLIENT_SECRET": "from-env"}).portal
    assert overridden.client_secret == "from-env" and overridden.token_file == tmp_path / "default.json"  # type: ignore[union-attr]

    # Variables naming another application: the implicit default profile yields, an explicit one is refused.
    other = {**base, "B24_PORTAL_URL": "https://other.bitrix24.com", "B24_CLIENT_ID": "local.other",
             "B24_CLIENT_SECRET": "s", "B24_ACCESS_TOKEN": "a" * 8, "B24_REFRESH_TOKEN": "r" * 8}  # fmt: skip
    assert load_settings(other).mode == "app variables"
    with pytest.raises(ConfigError, match="name another application"):
        load_settings(other, profile="default")

    assert load_settings({**base, "B24_WEBHOOK_URL": "https://p.bitrix24.com/rest/1/abcdef/"}).mode == "webhook"
    with pytest.raises(ConfigError, match="B24_WEBHOOK_URL is set and profile 'default'"):
        load_settings({**base, "B24_WEBHOOK_URL": "https://p.bitrix24.com/rest/1/abcdef/", "B24_PROFILE": "default"})

    saved_profile(tmp_path, "second")
    with pytest.raises(ConfigError, match=r"no profile 'nope' in .*profiles there: default, second"):
        load_settings(base, profile="nope")

    # The profiles directory: B24_CONFIG_DIR, else $XDG_CONFIG_HOME/b24-telephony-mcp.
    saved_profile(tmp_path / "xdg" / PROG, "work", portal="https://work.bitrix24.com")
    work = load_settings({"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, profile="work").portal
    assert work.portal_url == "https://work.bitrix24.com"  # type: ignore[union-attr]

    # What a client config must carry: nothing secret for a profile, the variables in use otherwise.
    tuned = {**base, "B24_TOOLSETS": "all", "B24_CLIENT_SECRET": "from-env", "B24_PROFILE": "default"}
    assert launch_env(load_settings(tuned).portal, tuned) == {"B24_CONFIG_DIR": str(tmp_path), "B24_TOOLSETS": "all"}
    variables = {k: v for k, v in other.items() if k.startswith("B24_") and k != "B24_CONFIG_DIR"}
    assert launch_env(load_settings(other).portal, other) == variables, "no profile: the credentials travel"
    assert launch_env(None, tuned) == {"B24_TOOLSETS": "all"}, "the sandbox brings its own credentials"


def test_help_states_the_precedence_and_the_readme_shows_the_same_table() -> None:
    from b24_telephony_mcp.config.settings import PRECEDENCE

    help_text = run_cli(clean_env(), "--help").stdout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for setting, sources in PRECEDENCE:
        assert re.search(rf"{re.escape(setting)}\s+{re.escape(sources)}", help_text), setting
        assert f"| {setting} | {sources} |" in readme, setting
    for command in ("login", "doctor", "config", "--profile"):
        assert command in help_text


# --- doctor -----------------------------------------------------------------------------------------


WRONG_SECRET = "not-the-application-secret-0123"


def installed_profile(sandbox: RunningSandbox, config_home: Path, name: str = "default") -> dict[str, Any]:
    """A profile as `login` leaves it (login itself is tested above), holding a pair the portal issued."""
    pair = sandbox.portal.issue_tokens()
    profile = Profile(
        portal_url=sandbox.base_url,
        member_id=sandbox.portal.member_id,
        client_id=sandbox.config.client_id,
        client_secret=sandbox.config.client_secret,
        tokens=TokenPair(pair.access_token, pair.refresh_token, pair.expires_at),
        scopes=("call", "crm", "telephony", "user"),
        token_url=sandbox.token_url,
    )
    write_profile(profile_store(config_home / PROG, name), profile)
    saved: dict[str, Any] = json.loads(profile_file(config_home, name).read_text(encoding="utf-8"))
    return saved


def doctor_report(returncode: int, stdout: str, expected: dict[str, str], code: int) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(stdout)
    found = {check["name"]: check["status"] for check in report["checks"]}
    assert (returncode, report["ok"]) == (code, code == 0), stdout
    assert {name: found.get(name) for name in expected} == expected, stdout
    return report


def fix_of(report: dict[str, Any], name: str) -> str:
    return next(str(check["fix"]) for check in report["checks"] if check["name"] == name)


ALL_PASS = {
    "setup": "ok",
    "token store": "ok",
    "portal": "ok",
    "credentials": "ok",
    "client secret": "ok",
    "clock": "ok",
    "scopes": "ok",
    "rate limit": "ok",
}


def test_doctor_command_on_a_good_setup_and_a_webhook(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Through the real command: exit codes, and no secret on either stream."""
    saved = installed_profile(sandbox, tmp_path)
    runs = {
        "profile": start_cli(person_env(tmp_path), "doctor", "--json"),
        "webhook": start_cli(person_env(tmp_path / "none", B24_WEBHOOK_URL=sandbox.webhook_url), "doctor", "--json"),
    }
    results = {name: outcome(process) for name, process in runs.items()}
    secrets = [*secrets_of(sandbox), saved["access_token"], saved["refresh_token"]]
    for name, (_, stdout, stderr) in results.items():
        assert not [secret for secret in secrets if secret in stdout + stderr], name

    good = doctor_report(*results["profile"][:2], ALL_PASS, 0)
    assert good["mode"] == "profile"

    webhook = doctor_report(*results["webhook"][:2], {"credentials": "ok", "scopes": "ok", "auth type": "fail"}, 1)
    assert webhook["mode"] == "webhook"
    assert "WRONG_AUTH_TYPE" in next(c["detail"] for c in webhook["checks"] if c["name"] == "auth type")
    assert "login --portal" in fix_of(webhook, "auth type")


def test_doctor_prints_one_line_per_check_and_a_setup_it_cannot_load(
    sandbox: RunningSandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    installed_profile(sandbox, tmp_path)
    settings = load_settings({"XDG_CONFIG_HOME": str(tmp_path)})
    assert doctor_command(settings, settings.selection.tool_specs(), as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("✓ setup: profile 'default', portal http://127.0.0.1:")
    assert [line[0] for line in lines[:-1]] == ["✓"] * len(ALL_PASS) and lines[-1] == "All checks passed."

    with pytest.raises(ConfigError) as missing:
        load_settings({"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert doctor_command(missing.value, (), as_json=True) == 1
    nothing = doctor_report(1, capsys.readouterr().out, {"setup": "fail"}, 1)
    assert nothing["mode"] is None and "login --portal" in nothing["checks"][0]["detail"]


BAD_SETUPS = ("expired pair", "wrong secret", "revoked refresh token", "missing scope", "world-readable", "unreachable")


@pytest.mark.parametrize("case", BAD_SETUPS)
def test_doctor_on_each_bad_setup(
    sandbox: RunningSandbox, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checks in this process (the command's wiring is covered above), each against a real portal."""
    saved = installed_profile(sandbox, tmp_path)
    env = {"XDG_CONFIG_HOME": str(tmp_path), **FAST_LIMITS}
    if case == "expired pair":
        httpx2.post(f"{sandbox.base_url}/_sandbox/expire-tokens")
    elif case == "wrong secret":
        env["B24_CLIENT_SECRET"] = WRONG_SECRET
    elif case == "revoked refresh token":  # someone else spends the profile's refresh token
        grant = {"grant_type": "refresh_token", "refresh_token": saved["refresh_token"]}
        grant |= {"client_id": sandbox.config.client_id, "client_secret": sandbox.config.client_secret}
        assert httpx2.get(sandbox.token_url, params=grant).status_code == 200
    elif case == "missing scope":
        sandbox.portal.config.scopes = "crm,user"
    elif case == "world-readable":
        profile_file(tmp_path).chmod(0o644)
    elif case == "unreachable":
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            env = {"B24_WEBHOOK_URL": f"http://127.0.0.1:{closed.getsockname()[1]}/rest/1/abcdef0123456/"}
    settings = load_settings(env)
    code = doctor_command(settings, settings.selection.tool_specs(), as_json=True)
    stdout, _ = capsys.readouterr()
    after = json.loads(profile_file(tmp_path).read_text(encoding="utf-8"))
    secrets = [WRONG_SECRET, "abcdef0123456", *secrets_of(sandbox), saved["refresh_token"], after["access_token"]]
    assert not [secret for secret in secrets if secret in stdout]

    if case == "expired pair":
        report = doctor_report(code, stdout, ALL_PASS, 0)
        assert "renewed and saved" in next(c["detail"] for c in report["checks"] if c["name"] == "credentials")
        assert after["access_token"] != saved["access_token"] and after["portal_url"] == saved["portal_url"]
    elif case == "wrong secret":
        report = doctor_report(code, stdout, {"credentials": "ok", "client secret": "fail"}, 1)
        assert "B24_CLIENT_SECRET" in fix_of(report, "client secret")
        assert after == saved, "checking the secret spends nothing"
    elif case == "revoked refresh token":
        report = doctor_report(code, stdout, {"credentials": "fail", "scopes": "skip"}, 1)
        assert f"{PROG} login` again" in fix_of(report, "credentials")
    elif case == "missing scope":
        report = doctor_report(code, stdout, {"credentials": "ok", "scopes": "fail"}, 1)
        assert "add telephony" in fix_of(report, "scopes")
    elif case == "world-readable":
        report = doctor_report(code, stdout, {"token store": "warn", "credentials": "ok"}, 1)
        assert f"chmod 600 {profile_file(tmp_path)}" == fix_of(report, "token store")
    else:
        doctor_report(code, stdout, {"portal": "fail", "credentials": "skip"}, 1)


# --- config -----------------------------------------------------------------------------------------


def server_entry(client: str, text: str) -> dict[str, Any]:
    """The server's entry in a snippet, parsed as the client's format."""
    if client == "codex":
        document: dict[str, Any] = tomllib.loads(text)
        entry: dict[str, Any] = document["mcp_servers"]["bitrix24-telephony"]
        return entry
    if client == "claude-code":
        words = shlex.split(text)
        assert words[:5] == ["claude", "mcp", "add", "--scope", "user"]
        if "--" in words:
            dash = words.index("--")
            return {"command": words[dash + 1], "args": words[dash + 2 :], "words": words}
        return {"words": words}
    document = json.loads(text)
    servers = document["servers"] if client == "vscode" else document["mcpServers"]
    assert list(servers) == ["bitrix24-telephony"]
    result: dict[str, Any] = servers["bitrix24-telephony"]
    return result


@pytest.mark.parametrize("client", CLIENTS)
def test_every_config_snippet_parses_as_its_format_and_names_the_installed_script(client: str) -> None:
    script = str(Path(sys.executable).parent / PROG)
    assert installed_command() == [script]
    local = render(client, Local([script, "--profile", "work"], {"B24_CONFIG_DIR": "/home/u/profiles"}))
    entry = server_entry(client, local)
    assert (entry["command"], entry["args"]) == (script, ["--profile", "work"])
    if client == "claude-code":
        assert entry["words"][5:7] == ["-e", "B24_CONFIG_DIR=/home/u/profiles"]
    else:
        assert entry["env"] == {"B24_CONFIG_DIR": "/home/u/profiles"}
    if client == "vscode":
        assert entry["type"] == "stdio"

    remote = Remote("http://127.0.0.1:8000/mcp")
    if client == "claude-desktop":
        with pytest.raises(ConfigError, match="--transport stdio"):
            render(client, remote)
        return
    text = render(client, remote)
    entry = server_entry(client, text)
    assert "http://127.0.0.1:8000/mcp" in json.dumps(entry)
    assert "B24_MCP_AUTH_TOKEN" in text or "${input:b24-mcp-token}" in text, "the token is referenced, never inlined"


def test_config_command_with_a_profile_holds_no_secret_and_without_one_says_what_it_holds(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    saved = installed_profile(sandbox, tmp_path, "work")
    runs = {
        "profile": start_cli(person_env(tmp_path), "config", "claude-code", "--profile", "work"),
        "webhook": start_cli(person_env(tmp_path / "none", B24_WEBHOOK_URL=sandbox.webhook_url), "config", "codex"),
        "nothing": start_cli(person_env(tmp_path / "none"), "config", "cursor"),
    }
    results = {name: outcome(process) for name, process in runs.items()}

    code, stdout, stderr = results["profile"]
    assert code == 0, stderr
    entry = server_entry("claude-code", stdout)
    assert entry["command"] == str(Path(sys.executable).parent / PROG)
    assert entry["args"] == ["--profile", "work"]
    # XDG_CONFIG_HOME is not the default here, and a desktop client may not have it: the snippet says where.
    assert entry["words"][5:7] == ["-e", f"B24_CONFIG_DIR={tmp_path / PROG}"]
    assert not [value for value in saved.values() if isinstance(value, str) and value in stdout and len(value) > 30]
    assert sandbox.config.client_secret not in stdout + stderr
    assert "| sh" in stderr

    code, stdout, stderr = results["webhook"]
    assert code == 0 and server_entry("codex", stdout)["env"] == {"B24_WEBHOOK_URL": sandbox.webhook_url}
    assert "credentials included" in stderr

    code, stdout, stderr = results["nothing"]
    assert (code, stdout) == (2, "") and "login" in stderr


# --- install ----------------------------------------------------------------------------------------


def test_a_wheel_from_the_repo_installs_into_a_fresh_venv_and_runs(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """`pip wheel .` on a copy of the repo's files, installed into a new virtualenv. The dependencies come from
    the test's own environment through a .pth file (what --system-site-packages gives, without downloading);
    the package, its metadata and its console script come from the wheel alone."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "server"), str(source / "server")], check=True)
    for leftover in source.glob("server/*.egg-info"):
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("b24_telephony_mcp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        assert any(name.endswith("b24_telephony_mcp/sandbox/methods/platform.py") for name in archive.namelist())
    for field_line in ("License-Expression: MIT", "Requires-Python: >=3.11", "Classifier: Typing :: Typed",
                       "Project-URL: ", "Summary: MCP server", "Description-Content-Type: text/markdown"):  # fmt: skip
        assert field_line in metadata, field_line

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "mcp").exists())
    Path(site, "dependencies-from-the-test-env.pth").write_text(ours + "\n", encoding="utf-8")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr

    script = venv / "bin" / PROG
    env = person_env(tmp_path / "home")
    version = subprocess.run([str(script), "--version"], env=env, capture_output=True, text=True, timeout=60)
    from b24_telephony_mcp import __version__

    assert version.stdout.strip() == f"{PROG} {__version__}", version.stderr
    assert Path(site, "b24_telephony_mcp", "__init__.py").is_file(), "the package comes from the wheel"
    doctor = subprocess.run(
        [str(script), "doctor", "--json"],
        env=app_env(sandbox, tmp_path / "state" / "tokens.json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 0 and report["ok"] is True, doctor.stdout + doctor.stderr
    assert report["mode"] == "app variables"
