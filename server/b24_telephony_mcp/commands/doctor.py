"""`b24-telephony-mcp doctor`: check the setup the server would use, one line per check, each failure with
its fix. Exit 0 when every check passes, 1 otherwise; `--json` prints the same as one object. Secrets
never reach the output: only origins are shown, and every line passes through the redactor.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx2

from b24_telephony_mcp import PROG
from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, OAuthAuth, TokenStore, request_tokens
from b24_telephony_mcp.bitrix.client import NETWORK_ERROR
from b24_telephony_mcp.bitrix.errors import INVALID_ARGUMENTS, TOKEN_REFRESH_FAILED
from b24_telephony_mcp.bitrix.limits import DEFAULT_BURST, DEFAULT_RATE
from b24_telephony_mcp.commands.access import app_only_tools, missing_scopes, names_list, parse_scopes
from b24_telephony_mcp.common.redact import redact
from b24_telephony_mcp.config.settings import AppConfig, ConfigError, Settings, profile_command
from b24_telephony_mcp.config.wiring import build_client, open_state
from b24_telephony_mcp.events.records import EVENT_NAMES
from b24_telephony_mcp.tools import ToolSpec
from b24_telephony_mcp.tools.catalogue import TOOLSET_TOOL_NAMES
from b24_telephony_mcp.tools.events import ADMIN_HINT

MAX_CLOCK_SKEW = 60.0
"""Seconds of difference between the portal's clock and this machine's before doctor warns."""
ENTERPRISE_RATE, ENTERPRISE_BURST = 5.0, 250

Status = Literal["ok", "warn", "fail", "skip"]
MARKS: dict[str, str] = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -- fix: {self.fix}" if self.fix else ""
        return redact(f"{MARKS[self.status]} {self.name}: {self.detail}{fix}")


def doctor_command(settings: Settings | ConfigError, tools: Sequence[ToolSpec], *, as_json: bool) -> int:
    """Run the checks on what `load_settings` gave (or the reason it gave nothing); print; exit code."""
    if isinstance(settings, ConfigError):
        checks = [Check("setup", "fail", str(settings))]  # the message says what to do
    else:
        checks = anyio.run(diagnose, settings, tools)
    passed = all(check.status == "ok" for check in checks)
    # The report is this command's output, so it goes to stdout (the command is not an MCP server).
    if as_json:
        report = {
            "ok": passed,
            "mode": None if isinstance(settings, ConfigError) else settings.mode,
            "checks": [asdict(check) for check in checks],
        }
        sys.stdout.write(redact(json.dumps(report, ensure_ascii=False, indent=1)) + "\n")
    else:
        lines = [check.line() for check in checks]
        lines.append("All checks passed." if passed else "Some checks did not pass.")
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0 if passed else 1


async def diagnose(settings: Settings, tools: Sequence[ToolSpec]) -> list[Check]:
    portal = settings.portal
    app = portal if isinstance(portal, AppConfig) else None
    origin = _origin(app.portal_url if app else portal.url)
    checks = [setup_check(settings, origin)]
    if app is not None and settings.redis_url is None:  # with Redis the file is not the store
        checks.append(token_store_check(app))
    checks.append(await reachability_check(origin))
    blocked = next((check for check in checks if check.status == "fail"), None)
    later = ["credentials", *(["client secret"] if app else []), "clock", "scopes", *([] if app else ["auth type"])]
    if blocked is not None:
        skipped = [Check(name, "skip", f"not checked: {blocked.name} failed") for name in later]
        return [*checks, *skipped, rate_check(settings, {})]
    try:
        # The state store the server would use: with B24_REDIS_URL a refresh here must land in Redis, never in a
        # file the replicas do not read.
        state = await open_state(settings)
    except ConfigError as exc:
        return [*checks, Check("state store", "fail", str(exc), "fix B24_REDIS_URL or start Redis")]
    try:
        client = await build_client(settings, state)
    except ConfigError as exc:
        if state is not None:
            await state.aclose()
        return [*checks, Check("credentials", "fail", str(exc), _login_fix(settings)), rate_check(settings, {})]
    try:
        credentials, info, renewed = await credentials_check(client, settings)
        checks.append(credentials)
        if credentials.status == "fail":
            skipped = [Check(name, "skip", "not checked: credentials failed") for name in later[1:]]
            return [*checks, *skipped, rate_check(settings, {})]
        if app is not None:
            checks.append(_secret_proven() if renewed else await client_secret_check(app, settings))
        checks.append(await clock_check(client))
        checks.append(await scopes_check(client, settings, tools))
        if app is None:
            checks.append(auth_type_check(tools, origin))
        if any(spec.name in TOOLSET_TOOL_NAMES["events"] for spec in tools):
            checks.append(await events_check(client) if app else Check("events", "skip", "an application's only"))
        checks.append(rate_check(settings, info))
    finally:
        await client.aclose()
        if state is not None:
            await state.aclose()
    return checks


def setup_check(settings: Settings, origin: str) -> Check:
    portal = settings.portal
    described = {
        "sandbox": "built-in sandbox portal",
        "webhook": "incoming webhook (B24_WEBHOOK_URL)",
        "app variables": "application from B24_* variables",
    }
    if isinstance(portal, AppConfig) and portal.profile:
        mode = f"profile '{portal.profile}'"
    else:
        mode = described[settings.mode]
    return Check("setup", "ok", f"{mode}, portal {origin}")


def token_store_check(app: AppConfig) -> Check:
    path = app.token_file
    name = "token store"
    if not path.exists():
        parent = _nearest_existing(path.parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check(name, "fail", f"{path} does not exist and {parent} is not writable", "make it writable")
        return Check(name, "ok", f"{path} (created at the first token refresh)")
    try:
        TokenStore(path).load()
    except ValueError as exc:
        return Check(name, "fail", str(exc), "restore it, or run login again to rewrite it")
    except OSError as exc:
        return Check(name, "fail", f"{path} is not readable ({exc.strerror})", f"check the owner and mode of {path}")
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
    if not writable:
        return Check(
            name,
            "fail",
            f"{path} or its directory is not writable, so a rotated token pair could not be saved",
            f"make {path} and {path.parent} writable by this user",
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check(
            name,
            "warn",
            f"{path} holds secrets and is open to group or others (mode {mode:04o})",
            f"chmod 600 {path}",
        )
    return Check(name, "ok", f"{path} (readable, writable, mode {mode:04o})")


async def reachability_check(origin: str) -> Check:
    """Any HTTP answer from the portal's origin proves DNS, TCP and (for https) a valid certificate."""
    name = "portal"
    try:
        async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as http:
            await http.get(origin + "/")
    except httpx2.HTTPError as exc:
        if _certificate_problem(exc):
            return Check(
                name,
                "fail",
                f"{origin} presents a certificate this machine does not trust ({exc})",
                "use the portal's own https:// address (check for a proxy intercepting TLS)",
            )
        return Check(
            name,
            "fail",
            f"{origin} cannot be reached ({type(exc).__name__}: {exc})",
            "check the portal address (B24_PORTAL_URL, B24_WEBHOOK_URL or the profile) and the network",
        )
    secure = "valid certificate" if origin.startswith("https://") else "plain http, allowed for loopback only"
    return Check(name, "ok", f"{origin} reachable ({secure})")


async def credentials_check(client: BitrixClient, settings: Settings) -> tuple[Check, dict[str, Any], bool]:
    """app.info for an application (an expired pair is renewed and saved, as the server would), `profile`
    for a webhook. Also returns app.info's answer and whether the pair was renewed."""
    name = "credentials"
    auth = client.auth
    before = auth.tokens if isinstance(auth, OAuthAuth) else None
    method = "app.info" if isinstance(settings.portal, AppConfig) else "profile"
    try:
        result = (await client.call(method, read_only=True)).result
    except BitrixError as exc:
        fix = _credentials_fix(exc, settings)
        return Check(name, "fail", f"{method}: {exc.code}: {exc.description}", fix), {}, False
    info = result if isinstance(result, dict) else {}
    if method == "profile":
        user = " ".join(str(info.get(key, "")) for key in ("NAME", "LAST_NAME")).strip()
        return (
            Check(name, "ok", f"profile: the webhook acts as user #{info.get('ID', '?')} {user}".strip()),
            info,
            False,
        )
    renewed = isinstance(auth, OAuthAuth) and auth.tokens != before
    if info.get("INSTALLED") is False:
        fix = "finish the application's installation in Bitrix24"
        return (
            Check(name, "fail", "app.info: the application is not installed (INSTALLED is false)", fix),
            info,
            renewed,
        )
    detail = f"app.info: application {info.get('CODE', '?')} installed, status {info.get('STATUS', '?')}"
    if renewed:
        detail += "; the access token had expired, so the pair was renewed and saved"
    return Check(name, "ok", detail), info, renewed


def _secret_proven() -> Check:
    return Check("client secret", "ok", "accepted by the OAuth server (the renewal above used it)")


async def client_secret_check(app: AppConfig, settings: Settings) -> Check:
    """Ask the token endpoint about a refresh token that does not exist: a wrong client is refused as
    invalid_client before the token is looked at, so the real refresh token is not spent."""
    name = "client secret"
    query = {
        "grant_type": "refresh_token",
        "client_id": app.client_id,
        "client_secret": app.client_secret,
        "refresh_token": "b24-telephony-mcp-doctor-probe",
    }
    try:
        async with httpx2.AsyncClient(timeout=10) as http:
            await request_tokens(http, app.token_url, query, "client check")
    except BitrixError as exc:
        if exc.code == "invalid_client":
            return Check(
                name,
                "fail",
                f"the OAuth server refused client id {app.client_id} with this secret ({exc.description}); "
                "the next token renewal would fail",
                f"{_login_fix(settings)}, or set B24_CLIENT_SECRET to the secret in the local application's form",
            )
        if exc.code == "invalid_grant":
            return Check(name, "ok", f"accepted by the OAuth server {_origin(app.token_url)}")
        if exc.code == TOKEN_REFRESH_FAILED:
            return Check(
                name,
                "fail",
                f"the OAuth server {app.token_url} cannot be reached, so tokens could not be renewed",
                "check B24_OAUTH_TOKEN_URL and the network",
            )
        return Check(name, "warn", f"not verified: the OAuth server answered {exc.code}: {exc.description}")
    return Check(name, "ok", "accepted by the OAuth server")


async def clock_check(client: BitrixClient) -> Check:
    name = "clock"
    try:
        sent = time.time()
        raw = (await client.call("server.time", read_only=True)).result
        local = (sent + time.time()) / 2
        portal_time = datetime.fromisoformat(str(raw)).timestamp() + 0.5  # whole seconds: take the middle
    except BitrixError as exc:
        return Check(name, "warn", f"server.time: {exc.code}: {exc.description}")
    except ValueError:
        return Check(name, "warn", "server.time answered something that is not a time")
    skew = round(portal_time - local)
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"portal time {raw}, " + (f"{abs(skew)} s {direction} this machine" if skew else "same as this machine")
    if abs(skew) > MAX_CLOCK_SKEW:
        return Check(name, "warn", detail, "synchronise this machine's clock (NTP); call times are sent as ISO 8601")
    return Check(name, "ok", detail)


async def scopes_check(client: BitrixClient, settings: Settings, tools: Sequence[ToolSpec]) -> Check:
    name = "scopes"
    try:
        granted = parse_scopes((await client.call("scope", read_only=True)).result)
    except BitrixError as exc:
        return Check(name, "fail", f"scope: {exc.code}: {exc.description}", exc.hint)
    gaps = missing_scopes(tools, granted)
    shown = ", ".join(granted) or "none"
    if not gaps:
        return Check(name, "ok", f"granted {shown}; they cover all {len(tools)} enabled tools")
    needed = sorted({scope for gap in gaps.values() for scope in gap})
    if isinstance(settings.portal, AppConfig):
        fix = f"add {', '.join(needed)} to the local application's scopes, then {_login_fix(settings)}"
    else:
        fix = f"add {', '.join(needed)} to the incoming webhook's permissions"
    detail = (
        f"granted {shown}; {len(gaps)} of {len(tools)} enabled tools need {', '.join(needed)}: {names_list(list(gaps))}"
    )
    return Check(name, "fail", detail, fix + " (or offer fewer tools with --toolsets/--tools)")


async def events_check(client: BitrixClient) -> Check:
    """The telephony events bound (event.get) and the offline queue's backlog (event.offline.list). The
    installation is finished by now (the credentials check saw INSTALLED): the portal sends no event before."""
    name = "events"
    try:
        bound = (await client.call("event.get", read_only=True)).result
        queue = await client.call("event.offline.list", {"order": {"ID": "ASC"}}, read_only=True)
    except BitrixError as exc:
        return Check(name, "fail", f"{exc.code}: {exc.description}", exc.hint or ADMIN_HINT)
    heard = {name.upper(): name for name in EVENT_NAMES}
    ways: dict[str, list[str]] = {"offline": [], "online": []}
    for row in bound if isinstance(bound, list) else []:
        event = heard.get(str(row.get("event", "")).upper())
        if event is not None:
            ways["offline" if int(row.get("offline") or 0) else "online"].append(event)
    backlog = queue.total if queue.total is not None else len(queue.result or [])
    shown = "; ".join(f"{way}: {', '.join(events)}" for way, events in ways.items() if events)
    detail = f"installation finished; bound {shown or 'none'}; {backlog} waiting in the offline queue"
    if not shown:
        return Check(name, "warn", detail, "bind them with the watch_telephony_events tool")
    return Check(name, "ok", detail)


def auth_type_check(tools: Sequence[ToolSpec], origin: str) -> Check:
    refused = app_only_tools(tools)
    if not refused:
        return Check("auth type", "ok", "no enabled tool needs an application token")
    return Check(
        "auth type",
        "fail",
        f"{len(refused)} enabled tools work only with an application token and answer WRONG_AUTH_TYPE to a "
        f"webhook: {names_list(list(refused))}",
        f"connect a local application: `{PROG} login --portal {origin}` (or offer fewer tools with --toolsets)",
    )


def rate_check(settings: Settings, info: dict[str, Any]) -> Check:
    detail = f"{settings.rate:g} requests/s with bursts of {settings.burst} (B24_RATE_LIMIT, B24_RATE_BURST)"
    family = str(info.get("LICENSE_FAMILY") or "")
    if family == "ent" and (settings.rate, settings.burst) == (DEFAULT_RATE, DEFAULT_BURST):
        detail += (
            f"; the portal's Enterprise plan allows {ENTERPRISE_RATE:g}/s and {ENTERPRISE_BURST}: set "
            f"B24_RATE_LIMIT={ENTERPRISE_RATE:g} B24_RATE_BURST={ENTERPRISE_BURST} to use it"
        )
    return Check("rate limit", "ok", detail)


def _credentials_fix(exc: BitrixError, settings: Settings) -> str:
    if exc.code in ("invalid_grant", "invalid_token", "invalid_client", "expired_token"):
        return f"the saved token pair no longer works: {_login_fix(settings)}"
    if exc.code == "INVALID_CREDENTIALS":
        return "the webhook code is wrong or the webhook was deleted: create a new incoming webhook"
    if exc.code in (NETWORK_ERROR, TOKEN_REFRESH_FAILED, INVALID_ARGUMENTS):
        return exc.hint or "check the network"
    return exc.hint or "see the Bitrix24 error above"


def _login_fix(settings: Settings) -> str:
    portal = settings.portal
    if isinstance(portal, AppConfig) and portal.profile:
        return f"run `{PROG} login{profile_command(portal.profile)}` again"
    url = portal.portal_url if isinstance(portal, AppConfig) else "https://your.bitrix24.com"
    return f"run `{PROG} login --portal {url}` to get a fresh token pair"


def _origin(url: str) -> str:
    """scheme://host[:port] only: a webhook URL carries its secret in the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _certificate_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
