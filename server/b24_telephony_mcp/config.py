"""Settings from the environment, checked up front so a bad setup fails with one clear paragraph."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from b24_telephony_mcp.bitrix import BitrixClient, OAuthAuth, TokenPair, TokenStore, WebhookAuth
from b24_telephony_mcp.bitrix.limits import DEFAULT_BURST, DEFAULT_RATE
from b24_telephony_mcp.net import is_loopback_host
from b24_telephony_mcp.tools import ToolSpec, UnknownNameError, select_tools
from b24_telephony_mcp.tools.files import DEFAULT_MAX_MB, MIB, FilePolicy

DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/"

_APP_VARS = ("B24_PORTAL_URL", "B24_CLIENT_ID", "B24_CLIENT_SECRET")
_SETUP_HELP = (
    "Set either B24_WEBHOOK_URL (https://your.bitrix24.com/rest/<user_id>/<code>/) for an incoming "
    "webhook, or B24_PORTAL_URL, B24_CLIENT_ID, B24_CLIENT_SECRET, B24_ACCESS_TOKEN and "
    "B24_REFRESH_TOKEN for a local application (the telephony.externalLine.* and "
    "externalCall.register/finish methods need the application). To try it without a portal, run "
    "with --sandbox."
)


class ConfigError(Exception):
    """A setup mistake, explained for the person who made it."""


@dataclass(frozen=True)
class WebhookConfig:
    url: str


@dataclass(frozen=True)
class AppConfig:
    portal_url: str
    client_id: str
    client_secret: str = field(repr=False)
    tokens: TokenPair | None = field(repr=False)
    token_file: Path
    token_url: str = DEFAULT_TOKEN_URL


@dataclass(frozen=True)
class Selection:
    """Which tools the server offers (`--toolsets`, `--read-only`, `--tools`, `--dynamic-toolsets`)."""

    toolsets: tuple[str, ...] | None = None
    """None: the default toolsets."""
    read_only: bool = False
    tools: tuple[str, ...] | None = None
    """When given, exactly these tools (read-only mode still applies)."""
    dynamic: bool = False

    def tool_specs(self) -> tuple[ToolSpec, ...]:
        try:
            return select_tools(self.toolsets, read_only=self.read_only, tools=self.tools)
        except UnknownNameError as exc:
            raise ConfigError(f"{exc}.") from None


@dataclass(frozen=True)
class Settings:
    portal: WebhookConfig | AppConfig
    files: FilePolicy = field(default_factory=FilePolicy)
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    selection: Selection = field(default_factory=Selection)
    reveal_sip_passwords: bool = False
    confirm_calls: bool = True
    """B24_CONFIRM_CALLS=0: billed calls are placed without asking the user first."""


def load_settings(env: Mapping[str, str] = os.environ, portal: WebhookConfig | AppConfig | None = None) -> Settings:
    """All settings from `env`; `portal` overrides the credentials (the sandbox brings its own)."""
    files = FilePolicy(
        allowed_dirs=tuple(
            Path(part).expanduser().resolve() for part in env.get("B24_FILES_DIR", "").split(os.pathsep) if part
        ),
        max_bytes=int(_number(env, "B24_MAX_FILE_MB", DEFAULT_MAX_MB) * MIB),
    )
    selection = Selection(
        toolsets=_names(env, "B24_TOOLSETS"),
        read_only=_flag(env, "B24_READ_ONLY"),
        tools=_names(env, "B24_TOOLS"),
    )
    selection.tool_specs()  # unknown names fail at start, not at the first tools/list
    return Settings(
        portal=portal or portal_from_env(env),
        files=files,
        rate=_number(env, "B24_RATE_LIMIT", DEFAULT_RATE),
        burst=int(_number(env, "B24_RATE_BURST", DEFAULT_BURST)),
        selection=selection,
        reveal_sip_passwords=_flag(env, "B24_REVEAL_SIP_PASSWORDS"),
        confirm_calls=_flag(env, "B24_CONFIRM_CALLS") if env.get("B24_CONFIRM_CALLS", "").strip() else True,
    )


def split_names(raw: str) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c")."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = env.get(name, "").strip()
    return split_names(raw) if raw else None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}.")


def portal_from_env(env: Mapping[str, str]) -> WebhookConfig | AppConfig:
    webhook = env.get("B24_WEBHOOK_URL", "").strip()
    app_given = [name for name in (*_APP_VARS, "B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN") if env.get(name)]
    if webhook and app_given:
        raise ConfigError(
            f"B24_WEBHOOK_URL and {', '.join(app_given)} are both set, so it is unclear whether to use the "
            "webhook or the application. Unset one of them."
        )
    if webhook:
        check_url("B24_WEBHOOK_URL", webhook)
        if "/rest/" not in webhook:
            raise ConfigError(
                "B24_WEBHOOK_URL must look like https://your.bitrix24.com/rest/<user_id>/<code>/ "
                "(copy it from the incoming webhook's settings)."
            )
        return WebhookConfig(webhook if webhook.endswith("/") else webhook + "/")
    if not app_given:
        raise ConfigError(f"No Bitrix24 credentials are set. {_SETUP_HELP}")
    missing = [name for name in _APP_VARS if not env.get(name)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set. {_SETUP_HELP}")
    portal_url = env["B24_PORTAL_URL"].strip().rstrip("/")
    check_url("B24_PORTAL_URL", portal_url)
    token_url = env.get("B24_OAUTH_TOKEN_URL", "").strip() or DEFAULT_TOKEN_URL
    check_url("B24_OAUTH_TOKEN_URL", token_url)
    token_file = (
        Path(env["B24_TOKEN_FILE"]).expanduser()
        if env.get("B24_TOKEN_FILE")
        else default_token_file(portal_url, env["B24_CLIENT_ID"], env)
    )
    access, refresh = env.get("B24_ACCESS_TOKEN"), env.get("B24_REFRESH_TOKEN")
    if bool(access) != bool(refresh):
        raise ConfigError("Set both B24_ACCESS_TOKEN and B24_REFRESH_TOKEN (or neither, if the token file exists).")
    if not access and not token_file.exists():
        raise ConfigError(
            f"No OAuth tokens: set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN (from the application's "
            f"installation), or put them in the token file {token_file}."
        )
    return AppConfig(
        portal_url=portal_url,
        client_id=env["B24_CLIENT_ID"],
        client_secret=env["B24_CLIENT_SECRET"],
        tokens=TokenPair(access, refresh) if access and refresh else None,
        token_file=token_file,
        token_url=token_url,
    )


def default_token_file(portal_url: str, client_id: str, env: Mapping[str, str]) -> Path:
    """Per user, per portal and application: `~/.local/state/b24-telephony-mcp/tokens-<hash>.json`."""
    state_home = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.sha256(f"{portal_url}|{client_id}".encode()).hexdigest()[:16]
    return state_home / "b24-telephony-mcp" / f"tokens-{digest}.json"


def check_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return  # local emulators such as the sandbox
    if parts.scheme == "http":
        raise ConfigError(
            f"{name} uses plain http:// for a non-local host; credentials would cross the network "
            "unencrypted. Use https:// (plain http is accepted only for loopback addresses)."
        )
    raise ConfigError(f"{name} is not an http(s) URL.")


def build_client(settings: Settings) -> BitrixClient:
    portal = settings.portal
    if isinstance(portal, WebhookConfig):
        auth: WebhookAuth | OAuthAuth = WebhookAuth(portal.url)
    else:
        try:
            auth = OAuthAuth(
                portal.portal_url,
                portal.client_id,
                portal.client_secret,
                portal.token_url,
                TokenStore(portal.token_file),
                portal.tokens,
            )
        except ValueError as exc:  # no tokens anywhere, or an unreadable token file
            raise ConfigError(str(exc)) from None
    return BitrixClient(auth, rate=settings.rate, burst=settings.burst)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}.") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than zero.")
    return value
