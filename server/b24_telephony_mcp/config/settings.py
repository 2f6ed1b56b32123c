"""Settings from the environment and the chosen profile, checked up front so a bad setup fails with one
clear paragraph. Every B24_* variable is read here, and `PRECEDENCE` is the one statement of which
source wins (printed by `--help` and in the README). Reading only: no connection is opened and nothing is written
here (`wiring` builds the client and the stores from these settings)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from b24_telephony_mcp.bitrix import TokenPair, TokenStore
from b24_telephony_mcp.bitrix.limits import DEFAULT_BURST, DEFAULT_RATE
from b24_telephony_mcp.bitrix.locations import check_redis_url, digest
from b24_telephony_mcp.common.net import is_loopback_host
from b24_telephony_mcp.events import BUSY_SECONDS, IDLE_SECONDS, RETENTION_DAYS
from b24_telephony_mcp.state.profiles import (
    DEFAULT_PROFILE,
    SANDBOX_PROFILE,
    Profile,
    check_profile_name,
    profile_names,
    profile_store,
    read_profile,
)
from b24_telephony_mcp.tools import ToolSpec, UnknownNameError, check_names
from b24_telephony_mcp.tools.files import DEFAULT_MAX_MB, MIB, FilePolicy
from b24_telephony_mcp.tools.offer import ToolOffer

DEFAULT_TOKEN_URL = "https://oauth.bitrix.info/oauth/token/"

BITRIX24_OAUTH_SERVERS = ("oauth.bitrix.info", "oauth.bitrix24.tech")
"""The Bitrix24 OAuth servers a sign-in's `server_domain` may name (oauth.bitrix24.tech: the Russian cloud)."""
DEFAULT_ACCESS_TOKEN_TTL = 24 * 3600
"""Lifetime of the MCP access tokens remote mode issues: longer than Bitrix24's hour, since some clients never
refresh."""
TOKEN_KEY_BYTES = 32

SANDBOX_PORTAL_URL = "http://127.0.0.1:8024"
"""Where `b24-telephony-mcp sandbox` listens by default, and so where `login --sandbox` looks."""

_APP_VARS = ("B24_PORTAL_URL", "B24_CLIENT_ID", "B24_CLIENT_SECRET")
_SETUP_HELP = (
    "Run `b24-telephony-mcp login --portal https://your.bitrix24.com` to connect a local application "
    "(it saves a profile), or set B24_WEBHOOK_URL (https://your.bitrix24.com/rest/<user_id>/<code>/) for an "
    "incoming webhook, or B24_PORTAL_URL, B24_CLIENT_ID, B24_CLIENT_SECRET, B24_ACCESS_TOKEN and "
    "B24_REFRESH_TOKEN for a local application (the telephony.externalLine.* and "
    "externalCall.register/finish methods need the application). To try it without a portal, run "
    "with --sandbox."
)

PRECEDENCE: tuple[tuple[str, str], ...] = (
    ("credentials", "B24_WEBHOOK_URL (a webhook); else an application from the rows below"),
    ("profile", "--profile, then B24_PROFILE, then `default` if that profile exists"),
    ("portal, client id and secret", "B24_PORTAL_URL, B24_CLIENT_ID, B24_CLIENT_SECRET, then the profile"),
    ("OAuth token URL", "B24_OAUTH_TOKEN_URL, then the profile, then https://oauth.bitrix.info/oauth/token/"),
    (
        "token pair",
        "the token store once it holds a pair (rotated tokens win), then B24_ACCESS_TOKEN and B24_REFRESH_TOKEN",
    ),
    (
        "token store",
        "B24_REDIS_URL (Redis, seeded from the file below), then B24_TOKEN_FILE, then the profile file, then "
        "~/.local/state/b24-telephony-mcp/tokens-<hash>.json",
    ),
    ("profiles directory", "B24_CONFIG_DIR, then $XDG_CONFIG_HOME/b24-telephony-mcp, then ~/.config/b24-telephony-mcp"),
)
"""Which source wins, setting by setting: the table `--help` and the README show."""


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
    profile: str | None = None
    """The profile the settings came from, if any (its file is then `token_file` unless B24_TOKEN_FILE says
    otherwise)."""
    application_token: str = field(default="", repr=False)
    """The profile's: what the installation handed `login` (online event posts must carry it)."""


@dataclass(frozen=True)
class RemoteConfig:
    """Remote mode (`--remote`): MCP clients sign in, each with a Bitrix24 user of a portal, through one
    application. A marketplace application serves any portal; a local application (`portal_url`) only its own."""

    public_url: str
    """What clients and Bitrix24 see (behind a TLS proxy), without a trailing slash."""
    client_id: str
    client_secret: str = field(repr=False)
    portal_url: str | None
    """A local application's portal: the only one that may sign in (the page then asks for no portal)."""
    token_endpoints: Mapping[str, str]
    """`server_domain` of a sign-in's answer -> the token endpoint used for it: the only URLs the client secret is
    ever sent to."""
    portal_hosts: tuple[str, ...] = ()
    """Portal hosts accepted besides `*.bitrix24.*` (the configured portal; the sandbox's portals)."""
    token_keys: tuple[bytes, ...] = field(default=(), repr=False)
    """B24_TOKEN_KEY: the first encrypts the stored Bitrix24 pairs, all decrypt. Empty: the embedded store's key
    file (generated once)."""
    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL
    store_dir: Path = field(default_factory=lambda: state_dir(os.environ) / "remote")
    """Where the embedded store (no Redis) and its key file live."""

    @property
    def resource_url(self) -> str:
        """The MCP endpoint, which access tokens are bound to (RFC 8707)."""
        return f"{self.public_url}/mcp"


@dataclass(frozen=True)
class Selection:
    """Which tools the server offers (`--toolsets`, `--read-only`, `--tools`, `--dynamic-toolsets`)."""

    toolsets: tuple[str, ...] | None = None
    """None: the default toolsets."""
    read_only: bool = False
    tools: tuple[str, ...] | None = None
    """When given, exactly these tools (read-only mode still applies)."""
    dynamic: bool = False
    """Also offer list_toolsets and enable_toolset, which add toolsets at run time."""

    def check(self) -> None:
        """Raises `ConfigError` for a toolset or tool name that does not exist; imports no toolset's module."""
        try:
            check_names(self.toolsets, self.tools)
        except UnknownNameError as exc:
            raise ConfigError(f"{exc}.") from None

    def offer(self) -> ToolOffer:
        self.check()
        return ToolOffer.select(self.toolsets, read_only=self.read_only, tools=self.tools, dynamic=self.dynamic)

    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """The REST tools offered at the start (the local list_toolsets/enable_toolset call no portal)."""
        return tuple(spec for spec in self.offer().values() if spec.method)


@dataclass(frozen=True)
class EventSettings:
    """How the events are heard and kept (B24_EVENT_*, B24_APPLICATION_TOKEN)."""

    retention_days: float = RETENTION_DAYS
    poll_idle: float = IDLE_SECONDS
    """Seconds between reads of the portal's offline queue while nobody waits for events."""
    poll_waiting: float = BUSY_SECONDS
    """The same while get_telephony_events waits."""
    application_tokens: tuple[str, ...] = field(default=(), repr=False)
    """What an online post's auth[application_token] must be (the application's installation gives it)."""


@dataclass(frozen=True)
class Settings:
    portal: WebhookConfig | AppConfig | RemoteConfig
    files: FilePolicy = field(default_factory=FilePolicy)
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    selection: Selection = field(default_factory=Selection)
    reveal_sip_passwords: bool = False
    confirm_calls: bool = True
    """B24_CONFIRM_CALLS=0: billed calls are placed without asking the user first."""
    journal_file: Path = field(default_factory=lambda: state_dir(os.environ) / JOURNAL_NAME)
    """log_external_call's journal (SQLite), shared by every application this user runs."""
    events_file: Path = field(default_factory=lambda: state_dir(os.environ) / EVENTS_NAME)
    """The events heard (SQLite) when there is no Redis."""
    events: EventSettings = field(default_factory=lambda: EventSettings())
    cache_dir: Path | None = None
    """Where the tools' schemas are kept between starts (`$XDG_CACHE_HOME/b24-telephony-mcp`); None: not kept."""
    sandbox: bool = False

    @property
    def mode(self) -> str:
        """How the server is connected: sandbox, profile, app variables or webhook."""
        if self.sandbox:
            return "sandbox"
        if isinstance(self.portal, RemoteConfig):
            return "remote"
        if isinstance(self.portal, WebhookConfig):
            return "webhook"
        return "profile" if self.portal.profile else "app variables"

    redis_url: str | None = field(default=None, repr=False)
    """B24_REDIS_URL: state shared with other replicas lives in Redis (None: files, this process only)."""
    stateless_http: bool = False
    """Streamable HTTP keeps no MCP session, so any replica answers any request (B24_MCP_STATELESS; default: on
    with B24_REDIS_URL)."""


def load_settings(
    env: Mapping[str, str] = os.environ,
    portal: WebhookConfig | AppConfig | RemoteConfig | None = None,
    profile: str | None = None,
    remote: bool | None = None,
    public_url: str | None = None,
) -> Settings:
    """All settings from `env` and the profile (`profile` is the --profile flag); `portal` replaces the
    credentials with the sandbox's own. `remote` and `public_url` are the --remote and --public-url flags (None:
    B24_REMOTE and B24_PUBLIC_URL)."""
    files = FilePolicy(
        allowed_dirs=tuple(
            Path(part).expanduser().resolve() for part in env.get("B24_FILES_DIR", "").split(os.pathsep) if part
        ),
        max_bytes=int(_number(env, "B24_MAX_FILE_MB", DEFAULT_MAX_MB) * MIB),
    )
    selection = Selection(
        toolsets=_names(env, "B24_TOOLSETS"),
        read_only=flag(env, "B24_READ_ONLY"),
        tools=_names(env, "B24_TOOLS"),
        dynamic=flag(env, "B24_DYNAMIC_TOOLSETS"),
    )
    selection.check()  # unknown names fail at start, not at the first tools/list
    redis_url = _redis_url(env)
    connection: WebhookConfig | AppConfig | RemoteConfig
    if portal is None and (remote if remote is not None else flag(env, "B24_REMOTE")):
        connection = remote_from_env(env, public_url, redis=redis_url is not None)
        sandbox = False
    else:
        connection = portal or resolve_portal(env, profile)
        sandbox = portal is not None
    installed = (connection.application_token,) if isinstance(connection, AppConfig) else ()
    return Settings(
        portal=connection,
        files=files,
        rate=_number(env, "B24_RATE_LIMIT", DEFAULT_RATE),
        burst=int(_number(env, "B24_RATE_BURST", DEFAULT_BURST)),
        selection=selection,
        reveal_sip_passwords=flag(env, "B24_REVEAL_SIP_PASSWORDS"),
        confirm_calls=flag(env, "B24_CONFIRM_CALLS") if env.get("B24_CONFIRM_CALLS", "").strip() else True,
        sandbox=sandbox,
        redis_url=redis_url,
        stateless_http=flag(env, "B24_MCP_STATELESS") if env.get("B24_MCP_STATELESS") else redis_url is not None,
        journal_file=state_dir(env) / JOURNAL_NAME,
        events_file=state_dir(env) / EVENTS_NAME,
        events=EventSettings(
            retention_days=_number(env, "B24_EVENT_RETENTION_DAYS", RETENTION_DAYS),
            poll_idle=_number(env, "B24_EVENT_POLL_IDLE", IDLE_SECONDS),
            poll_waiting=_number(env, "B24_EVENT_POLL_WAITING", BUSY_SECONDS),
            application_tokens=tuple(
                token for token in (*split_names(env.get("B24_APPLICATION_TOKEN", "")), *installed) if token
            ),
        ),
        cache_dir=cache_dir(env),
    )


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = env.get("B24_REDIS_URL", "").strip()
    if not url:
        return None
    problem = check_redis_url(url)
    if problem:
        raise ConfigError(problem)
    return url


def split_names(raw: str) -> tuple[str, ...]:
    """`a, b,c` -> ("a", "b", "c")."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = env.get(name, "").strip()
    return split_names(raw) if raw else None


def flag(env: Mapping[str, str], name: str) -> bool:
    """A 1/0 variable (true/false, yes/no, on/off); ConfigError for anything else."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}.")


def config_dir(env: Mapping[str, str]) -> Path:
    """Where profiles live: B24_CONFIG_DIR, else $XDG_CONFIG_HOME/b24-telephony-mcp, else ~/.config/..."""
    if env.get("B24_CONFIG_DIR"):
        return Path(env["B24_CONFIG_DIR"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]).expanduser() if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "b24-telephony-mcp"


def chosen_profile(env: Mapping[str, str], flag: str | None) -> str | None:
    """The profile asked for by --profile or B24_PROFILE; None when neither names one."""
    name = (flag or env.get("B24_PROFILE", "")).strip() or None
    if name is not None:
        try:
            check_profile_name(name)
        except ValueError as exc:
            raise ConfigError(f"{exc}.") from None
    return name


def profile_command(name: str) -> str:
    """The `--profile NAME` suffix of a suggested command ('' for the default profile)."""
    return "" if name == DEFAULT_PROFILE else f" --profile {name}"


def load_profile(env: Mapping[str, str], name: str) -> tuple[TokenStore, Profile | None]:
    store = profile_store(config_dir(env), name)
    try:
        return store, read_profile(store)
    except ValueError as exc:
        raise ConfigError(f"Profile {name!r}: {exc}.") from None
    except OSError as exc:
        raise ConfigError(f"Profile {name!r} cannot be read from {store.path} ({exc.strerror}).") from None


def resolve_portal(env: Mapping[str, str], profile_flag: str | None = None) -> WebhookConfig | AppConfig:
    """Webhook or application settings, from the environment and the profile (see `PRECEDENCE`)."""
    explicit = chosen_profile(env, profile_flag)
    if env.get("B24_WEBHOOK_URL", "").strip():
        if explicit:
            raise ConfigError(
                f"B24_WEBHOOK_URL is set and profile {explicit!r} was chosen, so it is unclear whether to use the "
                "webhook or the profile's application. Unset B24_WEBHOOK_URL or drop --profile/B24_PROFILE."
            )
        return webhook_from_env(env)
    name = explicit or DEFAULT_PROFILE
    store, profile = load_profile(env, name)
    if profile is None and explicit:
        known = profile_names(config_dir(env))
        raise ConfigError(
            f"There is no profile {name!r} in {config_dir(env)} "
            f"({'profiles there: ' + ', '.join(known) if known else 'no profiles there yet'}). Create it with "
            f"`b24-telephony-mcp login --portal https://your.bitrix24.com{profile_command(name)}`."
        )
    if profile is not None:
        others = _variables_naming_another_app(env, profile)
        if others and explicit:
            raise ConfigError(
                f"{' and '.join(others)} name another application than profile {name!r} "
                f"({profile.portal_url}, {profile.client_id}). Unset {' and '.join(others)} or choose another "
                "profile."
            )
        if others:
            profile = None  # the variables describe a complete other app: the implicit default yields to them
    return app_config(env, profile, name, store)


def _variables_naming_another_app(env: Mapping[str, str], profile: Profile) -> list[str]:
    given = {
        "B24_PORTAL_URL": (env.get("B24_PORTAL_URL", "").strip().rstrip("/"), profile.portal_url),
        "B24_CLIENT_ID": (env.get("B24_CLIENT_ID", "").strip(), profile.client_id),
    }
    return [name for name, (value, saved) in given.items() if value and value != saved]


def webhook_from_env(env: Mapping[str, str]) -> WebhookConfig:
    webhook = env.get("B24_WEBHOOK_URL", "").strip()
    app_given = [name for name in (*_APP_VARS, "B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN") if env.get(name)]
    if app_given:
        raise ConfigError(
            f"B24_WEBHOOK_URL and {', '.join(app_given)} are both set, so it is unclear whether to use the "
            "webhook or the application. Unset one of them."
        )
    check_url("B24_WEBHOOK_URL", webhook)
    if "/rest/" not in webhook:
        raise ConfigError(
            "B24_WEBHOOK_URL must look like https://your.bitrix24.com/rest/<user_id>/<code>/ "
            "(copy it from the incoming webhook's settings)."
        )
    return WebhookConfig(webhook if webhook.endswith("/") else webhook + "/")


def app_config(env: Mapping[str, str], profile: Profile | None, name: str, store: TokenStore) -> AppConfig:
    """An application's settings: each variable that is set wins over the profile's value."""
    app_given = [var for var in (*_APP_VARS, "B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN") if env.get(var)]
    if profile is None and not app_given:
        raise ConfigError(f"No Bitrix24 credentials are set. {_SETUP_HELP}")
    saved = {
        "B24_PORTAL_URL": profile.portal_url if profile else "",
        "B24_CLIENT_ID": profile.client_id if profile else "",
        "B24_CLIENT_SECRET": profile.client_secret if profile else "",
    }
    values = {var: env.get(var, "").strip() or saved[var] for var in _APP_VARS}
    missing = [var for var in _APP_VARS if not values[var]]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set. {_SETUP_HELP}")
    portal_url = values["B24_PORTAL_URL"].rstrip("/")
    check_url("B24_PORTAL_URL", portal_url)
    token_url = env.get("B24_OAUTH_TOKEN_URL", "").strip() or (profile.token_url if profile else DEFAULT_TOKEN_URL)
    check_url("B24_OAUTH_TOKEN_URL", token_url)
    if env.get("B24_TOKEN_FILE"):
        token_file = Path(env["B24_TOKEN_FILE"]).expanduser()
    elif profile is not None:
        token_file = store.path
    else:
        token_file = default_token_file(portal_url, values["B24_CLIENT_ID"], env)
    access, refresh = env.get("B24_ACCESS_TOKEN"), env.get("B24_REFRESH_TOKEN")
    if bool(access) != bool(refresh):
        raise ConfigError("Set both B24_ACCESS_TOKEN and B24_REFRESH_TOKEN (or neither, if the token file exists).")
    tokens = TokenPair(access, refresh) if access and refresh else None
    if tokens is None and profile is not None and token_file != store.path:
        tokens = profile.tokens  # B24_TOKEN_FILE names another store: the profile's pair seeds it
    if tokens is None and not token_file.exists():
        raise ConfigError(
            f"No OAuth tokens: set B24_ACCESS_TOKEN and B24_REFRESH_TOKEN (from the application's "
            f"installation), or put them in the token file {token_file}."
        )
    return AppConfig(
        portal_url=portal_url,
        client_id=values["B24_CLIENT_ID"],
        client_secret=values["B24_CLIENT_SECRET"],
        tokens=tokens,
        token_file=token_file,
        token_url=token_url,
        profile=name if profile is not None else None,
        application_token=profile.application_token if profile is not None else "",
    )


def remote_from_env(env: Mapping[str, str], public_url: str | None, *, redis: bool) -> RemoteConfig:
    """Remote mode's settings: the public URL, the application (marketplace, or local with B24_PORTAL_URL), the
    token endpoints, the key of the stored pairs (required with Redis) and the access tokens' lifetime."""
    url = (public_url or env.get("B24_PUBLIC_URL", "")).strip().rstrip("/")
    if not url:
        raise ConfigError(
            "Remote mode needs the server's public URL: --public-url https://mcp.example.com (or B24_PUBLIC_URL), "
            "the address clients and Bitrix24 reach it at."
        )
    check_public_url(url)
    missing = [var for var in ("B24_CLIENT_ID", "B24_CLIENT_SECRET") if not env.get(var, "").strip()]
    if missing:
        raise ConfigError(
            f"Remote mode needs {' and '.join(missing)}: those of a marketplace application (any portal may sign "
            "in), or of a local application together with B24_PORTAL_URL (only that portal may sign in)."
        )
    if env.get("B24_WEBHOOK_URL", "").strip():
        raise ConfigError("B24_WEBHOOK_URL cannot serve remote mode: each user signs in with the application.")
    portal_url = env.get("B24_PORTAL_URL", "").strip().rstrip("/") or None
    if portal_url is not None:
        check_url("B24_PORTAL_URL", portal_url)
    token_url = env.get("B24_OAUTH_TOKEN_URL", "").strip() or DEFAULT_TOKEN_URL
    check_url("B24_OAUTH_TOKEN_URL", token_url)
    endpoints = {server: f"https://{server}/oauth/token/" for server in BITRIX24_OAUTH_SERVERS}
    endpoints[urlsplit(token_url).netloc] = token_url
    keys = token_keys(env.get("B24_TOKEN_KEY", ""))
    if redis and not keys:
        raise ConfigError(
            "Remote mode with B24_REDIS_URL needs B24_TOKEN_KEY, the key the Bitrix24 token pairs are encrypted "
            'under in Redis (32 random bytes, base64: `python -c "import os,base64;'
            'print(base64.b64encode(os.urandom(32)).decode())"`), the same on every replica.'
        )
    return RemoteConfig(
        public_url=url,
        client_id=env["B24_CLIENT_ID"].strip(),
        client_secret=env["B24_CLIENT_SECRET"].strip(),
        portal_url=portal_url,
        token_endpoints=endpoints,
        portal_hosts=(urlsplit(portal_url).netloc.lower(),) if portal_url else (),
        token_keys=keys,
        access_token_ttl=int(_number(env, "B24_MCP_ACCESS_TOKEN_TTL", DEFAULT_ACCESS_TOKEN_TTL)),
        store_dir=state_dir(env) / "remote",
    )


def check_public_url(url: str) -> None:
    """https://, or http:// for a loopback host; no query or fragment (it is the OAuth issuer)."""
    parts = urlsplit(url)
    if parts.query or parts.fragment or not parts.hostname:
        raise ConfigError("The public URL must be a plain https://host[:port][/path], without a query or fragment.")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            "The public URL uses plain http:// for a non-local host: sign-ins and tokens would cross the network "
            "unencrypted. Use https:// (a TLS proxy in front of the server); http:// is accepted only for loopback."
        )
    if parts.scheme not in ("http", "https"):
        raise ConfigError("The public URL must start with https://.")


def token_keys(raw: str) -> tuple[bytes, ...]:
    """B24_TOKEN_KEY: base64 keys of 32 bytes, comma-separated (the first encrypts, all decrypt). The message names
    a bad key by its position, never by its value."""
    keys = []
    for position, part in enumerate(split_names(raw), start=1):
        try:
            key = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != TOKEN_KEY_BYTES:
            raise ConfigError(
                f"B24_TOKEN_KEY: key {position} is not {TOKEN_KEY_BYTES} bytes in base64 (generate one with "
                '`python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`).'
            )
        keys.append(key)
    return tuple(keys)


CREDENTIAL_VARIABLES = frozenset(
    {"B24_WEBHOOK_URL", *_APP_VARS, "B24_ACCESS_TOKEN", "B24_REFRESH_TOKEN", "B24_TOKEN_FILE", "B24_OAUTH_TOKEN_URL"}
)
_NOT_FOR_CLIENTS = frozenset(
    {
        "B24_PROFILE",
        "B24_CONFIG_DIR",
        "B24_MCP_AUTH_TOKEN",
        "B24_MCP_ALLOWED_HOSTS",
        # A remote server's own: a client started with them would try to be one, and the key is a secret.
        "B24_REMOTE",
        "B24_PUBLIC_URL",
        "B24_TOKEN_KEY",
        "B24_MCP_ACCESS_TOKEN_TTL",
    }
)


def launch_env(portal: WebhookConfig | AppConfig | None, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables an MCP client must pass so that the server it starts finds this same setup.

    The B24_* settings in use (toolsets, limits, files...); with a profile no credential but a non-default
    profiles directory (the profile itself goes in --profile); for the sandbox (`portal` None) no credential;
    otherwise the credential variables too.
    """
    carried = {
        name: value
        for name, value in env.items()
        if name.startswith("B24_") and name not in _NOT_FOR_CLIENTS and name not in CREDENTIAL_VARIABLES
    }
    if portal is None:
        return carried
    if isinstance(portal, AppConfig) and portal.profile:
        directory = config_dir(env)
        if directory != config_dir({}):
            carried["B24_CONFIG_DIR"] = str(directory.absolute())
        return carried
    return carried | {name: value for name, value in env.items() if name in CREDENTIAL_VARIABLES}


@dataclass(frozen=True)
class LoginTarget:
    """What `login` starts from: the profile to write, and what is already known about the application."""

    profile: str
    store: TokenStore
    portal_url: str | None
    client_id: str | None
    client_secret: str | None = field(repr=False)
    token_url: str


def login_target(
    env: Mapping[str, str], *, profile: str | None, portal: str | None, client_id: str | None, sandbox: bool
) -> LoginTarget:
    """--portal, B24_PORTAL_URL, then the profile being replaced; the same for the client id; the secret from
    B24_CLIENT_SECRET or the replaced profile (same client id only); the token URL as for the server."""
    name = chosen_profile(env, profile) or (SANDBOX_PROFILE if sandbox else DEFAULT_PROFILE)
    store, saved = load_profile(env, name)
    default_portal = SANDBOX_PORTAL_URL if sandbox else None
    portal_url = (portal or env.get("B24_PORTAL_URL", "").strip() or default_portal or "").rstrip("/") or None
    if portal_url is None and saved is not None:
        portal_url = saved.portal_url
    if portal_url is not None:
        check_url("--portal", portal_url)
    client = client_id or env.get("B24_CLIENT_ID", "").strip() or (saved.client_id if saved else None)
    secret = env.get("B24_CLIENT_SECRET", "").strip() or None
    if secret is None and saved is not None and saved.client_id == client:
        secret = saved.client_secret
    token_url = env.get("B24_OAUTH_TOKEN_URL", "").strip()
    if not token_url and sandbox and portal_url:
        token_url = f"{portal_url}/oauth/token/"  # the sandbox is its own OAuth server
    token_url = token_url or (saved.token_url if saved else DEFAULT_TOKEN_URL)
    check_url("B24_OAUTH_TOKEN_URL", token_url)
    return LoginTarget(name, store, portal_url, client, secret, token_url)


def default_token_file(portal_url: str, client_id: str, env: Mapping[str, str]) -> Path:
    """Per user, per portal and application: `~/.local/state/b24-telephony-mcp/tokens-<hash>.json`."""
    return state_dir(env) / f"tokens-{digest(portal_url, client_id)}.json"


JOURNAL_NAME = "call-journal.sqlite3"
EVENTS_NAME = "events.sqlite3"


def cache_dir(env: Mapping[str, str]) -> Path:
    """`$XDG_CACHE_HOME/b24-telephony-mcp` (default `~/.cache/b24-telephony-mcp`): what a start may reuse."""
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "b24-telephony-mcp"


def state_dir(env: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/b24-telephony-mcp` (default `~/.local/state/b24-telephony-mcp`): token files, the journal."""
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "b24-telephony-mcp"


def application_key(portal: WebhookConfig | AppConfig) -> str:
    """Who the journal's entries belong to: the portal and application, or the webhook (hashed: its URL holds
    the webhook's secret code)."""
    identity = portal.url if isinstance(portal, WebhookConfig) else f"{portal.portal_url}|{portal.client_id}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


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
