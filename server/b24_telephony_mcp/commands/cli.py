"""Command line: parse arguments, load settings, wire the parts together. Nothing more."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from b24_telephony_mcp import PROG, __version__
from b24_telephony_mcp.bitrix import BitrixError, TokenPair
from b24_telephony_mcp.commands import CLIENTS
from b24_telephony_mcp.common.net import is_loopback_host, listen_socket, url_host
from b24_telephony_mcp.common.redact import JsonFormatter, RedactingFormatter, register_secret
from b24_telephony_mcp.config.settings import (
    EVENTS_NAME,
    JOURNAL_NAME,
    PRECEDENCE,
    AppConfig,
    ConfigError,
    RemoteConfig,
    Selection,
    Settings,
    check_public_url,
    flag,
    launch_env,
    load_settings,
    split_names,
)
from b24_telephony_mcp.config.wiring import (
    build_client,
    fixed_connection,
    is_ready,
    open_event_hub,
    open_journal,
    open_state,
    shared_approvals,
)
from b24_telephony_mcp.state.profiles import DEFAULT_PROFILE
from b24_telephony_mcp.tools import DEFAULT_TOOLSETS, TOOLSET_NAMES
from b24_telephony_mcp.tools.schema_cache import SCHEMAS

if TYPE_CHECKING:
    from starlette.routing import Route

    from b24_telephony_mcp.events.hub import EventHub
    from b24_telephony_mcp.remote.connections import RemoteConnections
    from b24_telephony_mcp.sandbox import RunningSandbox

DEFAULT_LOGIN_PORT = 8765
DEFAULT_LOGIN_TIMEOUT = 300.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MCP server for the Bitrix24 telephony REST API. Connect a portal once with `login` (it saves "
        "a profile), check it with `doctor`, add the server to a client with `config CLIENT`; or give credentials "
        "in the environment (B24_WEBHOOK_URL, or B24_PORTAL_URL with B24_CLIENT_ID, B24_CLIENT_SECRET, "
        "B24_ACCESS_TOKEN, B24_REFRESH_TOKEN). See README.md.",
        epilog=precedence_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--transport", choices=("stdio", "sse", "http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP transports: address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP transports: port (default 8000, 0 = any)")
    parser.add_argument(
        "--sandbox", action="store_true", help="serve against the built-in sandbox portal (no credentials needed)"
    )
    parser.add_argument("--profile", metavar="NAME", help=PROFILE_HELP)
    toolsets = ", ".join(TOOLSET_NAMES)
    parser.add_argument(
        "--toolsets",
        type=split_names,
        help=f"comma-separated toolsets to offer, or 'all' (default: {', '.join(DEFAULT_TOOLSETS)}; "
        f"env B24_TOOLSETS). Toolsets: {toolsets}",
    )
    parser.add_argument(
        "--read-only", action="store_true", default=None, help="offer only read-only tools (env B24_READ_ONLY=1)"
    )
    parser.add_argument(
        "--tools", type=split_names, help="comma-separated tool names: offer exactly these (env B24_TOOLS)"
    )
    parser.add_argument(
        "--dynamic-toolsets",
        action="store_true",
        help="also offer list_toolsets and enable_toolset, so more toolsets can be enabled on demand "
        "(env B24_DYNAMIC_TOOLSETS=1)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        default=None,
        help="remote mode: MCP clients sign in with their Bitrix24 users through one application (env B24_REMOTE=1)",
    )
    parser.add_argument(
        "--public-url", metavar="URL", help="remote mode: the address clients and Bitrix24 reach (env B24_PUBLIC_URL)"
    )
    commands = parser.add_subparsers(dest="command")
    sandbox = commands.add_parser("sandbox", help="run the sandbox Bitrix24 portal alone, as an HTTP server")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8024)
    sandbox.add_argument(
        "--seed-calls",
        type=_count,
        metavar="N",
        help="rows of seeded call history its call statistics serve (tens of thousands for analytics)",
    )

    login = commands.add_parser(
        "login",
        help="connect a portal: OAuth authorization of a local application, saved as a profile",
        description="Authorize a local application (handler path http://localhost:PORT/) and save its token pair "
        "as a profile. The client secret comes from B24_CLIENT_SECRET or a hidden prompt, never from argv.",
    )
    login.add_argument("--portal", metavar="URL", help="https://your.bitrix24.com (env B24_PORTAL_URL)")
    login.add_argument("--client-id", metavar="ID", help="the local application's client id (env B24_CLIENT_ID)")
    login.add_argument("--port", type=int, default=DEFAULT_LOGIN_PORT, help="loopback port to listen on (default 8765)")
    login.add_argument("--no-browser", action="store_true", help="print the address; paste where the browser went")
    login.add_argument("--timeout", type=float, default=DEFAULT_LOGIN_TIMEOUT, help="seconds to wait (default 300)")
    login.add_argument("--profile", metavar="NAME", default=argparse.SUPPRESS, help=PROFILE_HELP)
    login.add_argument(
        "--sandbox",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log in to `b24-telephony-mcp sandbox` (http://127.0.0.1:8024 unless --portal), as profile 'sandbox'",
    )

    doctor = commands.add_parser("doctor", help="check the setup the server would use, with the fix for each problem")
    doctor.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    doctor.add_argument("--profile", metavar="NAME", default=argparse.SUPPRESS, help=PROFILE_HELP)
    doctor.add_argument("--sandbox", action="store_true", default=argparse.SUPPRESS, help="check the built-in sandbox")

    config = commands.add_parser("config", help="print the snippet or command that adds this server to a client")
    config.add_argument("client", choices=CLIENTS)
    config.add_argument("--profile", metavar="NAME", default=argparse.SUPPRESS, help=PROFILE_HELP)
    config.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio: the client starts the server (default); http: it connects to one at --host/--port",
    )
    store = commands.add_parser(
        "store", help="move the application's token pair between its token file and Redis (B24_REDIS_URL)"
    )
    store.add_argument("action", choices=("import", "export"), help="import: file -> Redis; export: Redis -> file")
    store.add_argument("--file", type=Path, help="the token file or profile (default: the server's token file)")
    store.add_argument("--force", action="store_true", help="overwrite even a pair that looks newer")
    store.add_argument("--profile", metavar="NAME", default=argparse.SUPPRESS, help=PROFILE_HELP)
    grants = commands.add_parser("grants", help="remote mode: list or revoke the sign-ins (never shows a token)")
    grants.add_argument("action", choices=("list", "revoke"))
    grants.add_argument("grant", nargs="?", metavar="ID", help="revoke: the grant (its id, or enough of it)")
    grants.add_argument("--portal", metavar="DOMAIN", help="only this portal's grants (yourcompany.bitrix24.com)")
    grants.add_argument("--user", type=int, metavar="N", help="with --portal: only this user's grants")
    return parser.parse_args(argv)


PROFILE_HELP = "the profile to use (env B24_PROFILE; default 'default'); profiles are written by `login`"


def precedence_table() -> str:
    width = max(len(setting) for setting, _ in PRECEDENCE)
    rows = "\n".join(f"  {setting:<{width}}  {sources}" for setting, sources in PRECEDENCE)
    return f"where settings come from (first found wins):\n{rows}"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def configure_logging(default: str = "INFO") -> None:
    raw_level = os.environ.get("B24_LOG_LEVEL", "")
    level = raw_level.strip().upper() or default
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"B24_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw_level!r}.")
    log_format = os.environ.get("B24_LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"B24_LOG_FORMAT must be text or json, got {log_format!r}.")
    handler = logging.StreamHandler(sys.stderr)  # stdout is the stdio protocol stream
    text = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    handler.setLevel(level)  # a client's logging/setLevel may lower our loggers' level; stderr keeps this one
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # HTTP client logs carry full URLs, and a webhook URL is a credential.
    for noisy in ("httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: {message}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command is not None:  # not serving: nothing to gain from the collector's start-up pause (__main__)
        gc.enable()
    try:
        # The commands talk to a person: their own output says what matters, logs only when asked for.
        configure_logging("INFO" if args.command in (None, "sandbox") else "WARNING")
    except ConfigError as exc:
        return fail(str(exc))
    if args.command == "sandbox":
        from b24_telephony_mcp.sandbox import SandboxConfig, run_sandbox_forever

        seeded = {} if args.seed_calls is None else {"seed_calls": args.seed_calls}
        run_sandbox_forever(SandboxConfig(**seeded), host=args.host, port=args.port)
        return 0
    if args.command == "login":
        from b24_telephony_mcp.commands.login import login_command

        return login_command(
            os.environ,
            portal=args.portal,
            client_id=args.client_id,
            port=args.port,
            timeout=args.timeout,
            no_browser=args.no_browser,
            profile=args.profile,
            sandbox=args.sandbox,
        )
    if args.command == "doctor":
        return run_doctor(args)
    if args.command == "config":
        return run_config(args)
    if args.command == "store":
        from b24_telephony_mcp.commands.store import run_store_command

        try:
            sys.stdout.write(anyio.run(run_store_command, args.action, args.file, args.force, args.profile) + "\n")
        except ConfigError as exc:
            return fail(str(exc))
        return 0

    if args.command == "grants":
        from b24_telephony_mcp.commands.grants import run_grants_command

        try:
            sys.stdout.write(
                anyio.run(run_grants_command, args.action, args.grant, args.portal, args.user, args.public_url) + "\n"
            )
        except ConfigError as exc:
            return fail(str(exc))
        except BitrixError as exc:  # the store failed mid-way (Redis went away)
            return fail(f"{exc.description}.")
        return 0

    token = None
    try:
        remote = args.remote if args.remote is not None else flag(os.environ, "B24_REMOTE")
    except ConfigError as exc:
        return fail(str(exc))
    if args.transport != "stdio" and not remote:  # remote mode: each client signs in, no shared token
        token = os.environ.get("B24_MCP_AUTH_TOKEN") or None
        if token is None and not is_loopback_host(args.host):
            return fail(
                f"refusing to serve on {args.host} without B24_MCP_AUTH_TOKEN: anyone who can reach the "
                "port could use your Bitrix24 credentials. Set a long random B24_MCP_AUTH_TOKEN."
            )
        if token is None:
            token = secrets.token_urlsafe(32)
            # Deliberately shown once on stderr (not logged): the user needs it to connect.
            sys.stderr.write(
                f"{PROG}: B24_MCP_AUTH_TOKEN is not set; generated one for this run. Clients must send\n"
                f"  Authorization: Bearer {token}\n"
            )
        register_secret(token)

    try:
        anyio.run(serve, args, token)
    except ConfigError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        pass
    return 0


async def serve(args: argparse.Namespace, token: str | None) -> None:
    # Imported here: the MCP SDK takes seconds to import, which login, doctor and config do not need.
    from mcp.server.stdio import stdio_server

    from b24_telephony_mcp.serving.server import build_server

    async with AsyncExitStack() as stack:
        settings = settings_for(args, stack, remote=args.remote)
        if isinstance(settings.portal, RemoteConfig):
            await serve_remote(args, settings, stack)
            return
        SCHEMAS.locate(settings.cache_dir)
        offer = selection_from(args, settings.selection).offer()
        state = await open_state(settings)
        if state is not None:
            stack.push_async_callback(state.aclose)
        client = await build_client(settings, state)
        stack.push_async_callback(client.aclose)

        journal = open_journal(settings, state)
        stack.callback(journal.close)
        events = open_event_hub(settings, client, state) if offer.may_offer("events") else None
        if events is not None:
            stack.callback(events.store.close)
            await stack.enter_async_context(events.running())  # drains once the events are offered
        server = build_server(fixed_connection(settings, client, journal, events), offer, await shared_approvals(state))
        collect_from_here()
        if args.transport == "stdio":
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
        else:
            from b24_telephony_mcp.serving.http_transport import serve_http

            assert token is not None
            await serve_http(
                server,
                args.transport,
                args.host,
                args.port,
                token,
                extra_hosts=os.environ.get("B24_MCP_ALLOWED_HOSTS", "").split(","),
                server_requests=any(spec.confirm is not None for spec in offer.possible()),  # asking mid-call
                announce=lambda url: sys.stderr.write(f"{PROG}: serving MCP over {args.transport} at {url}\n"),
                ready=lambda: is_ready(client, state),
                stateless=settings.stateless_http,
                open_routes=event_routes(events, settings),
            )


def collect_from_here() -> None:
    """The cyclic garbage collector back on once the server is built (__main__ paused it for start-up), with every
    object start-up made moved where it never looks again: they live as long as the process, and each later pass
    would walk them all."""
    gc.freeze()
    gc.enable()


def event_routes(events: EventHub | None, settings: Settings) -> list[Route]:
    """The online handler Bitrix24 posts bound events to, while the events may be offered."""
    if events is None:
        return []
    from b24_telephony_mcp.serving.event_intake import event_intake, one_portal

    return [event_intake(one_portal(events, settings.events.application_tokens))]


def remote_event_routes(connections: RemoteConnections) -> list[Route]:
    """The online handler, taking each portal's posts into that portal's events, while the events may be offered."""
    if connections.hubs is None:
        return []
    from b24_telephony_mcp.serving.event_intake import event_intake

    return [event_intake(connections.event_recipient)]


async def serve_remote(args: argparse.Namespace, settings: Settings, stack: AsyncExitStack) -> None:
    """Remote mode: streamable HTTP where MCP clients sign in with their Bitrix24 users."""
    from b24_telephony_mcp.remote.serve import open_remote
    from b24_telephony_mcp.serving.http_transport import RemoteAuth, serve_http
    from b24_telephony_mcp.serving.server import build_server

    if args.transport != "http":
        raise ConfigError("remote mode serves streamable HTTP only: add --transport http.")
    config = settings.portal
    assert isinstance(config, RemoteConfig)
    SCHEMAS.locate(settings.cache_dir)
    offer = selection_from(args, settings.selection).offer()
    state = await open_state(settings)
    if state is not None:
        stack.push_async_callback(state.aclose)
    journal = open_journal(settings, state)
    stack.callback(journal.close)
    described = "use the toolsets " + ", ".join(sorted(offer.enabled)) + (" (read-only)" if offer.read_only else "")
    parts = await open_remote(settings, state, journal, described, stack, events=offer.may_offer("events"))
    server = build_server(parts.connections, offer, await shared_approvals(state))
    collect_from_here()
    public_host = urlsplit(config.public_url).netloc
    metrics_token = os.environ.get("B24_MCP_AUTH_TOKEN") or None  # remote mode: it guards /metrics, nothing else
    if metrics_token is not None:
        register_secret(metrics_token)
    await serve_http(
        server,
        "http",
        args.host,
        args.port,
        None,
        extra_hosts=[public_host, *os.environ.get("B24_MCP_ALLOWED_HOSTS", "").split(",")],
        server_requests=any(spec.confirm is not None for spec in offer.possible()),
        announce=lambda url: sys.stderr.write(
            f"{PROG}: remote mode for {config.resource_url}; serving MCP over http at {url}\n"
        ),
        stateless=settings.stateless_http,
        open_routes=remote_event_routes(parts.connections),
        metrics_token=metrics_token,
        remote=RemoteAuth(
            parts.provider,
            config.public_url,
            config.resource_url,
            parts.routes,
            parts.provider.metadata_extension(),
            state,
        ),
    )


def settings_for(args: argparse.Namespace, stack: ExitStack | AsyncExitStack, remote: bool | None = False) -> Settings:
    """The profile/environment settings, or an in-process sandbox's (kept running until `stack` closes). `remote`:
    whether remote mode may be chosen (None: as B24_REMOTE says); the commands that check or configure one portal
    never choose it."""
    if not args.sandbox:
        return load_settings(profile=args.profile, remote=remote, public_url=args.public_url)
    if remote if remote is not None else flag(os.environ, "B24_REMOTE"):
        return remote_sandbox_settings(args, stack)
    from b24_telephony_mcp.sandbox import start_sandbox

    sandbox = stack.enter_context(start_sandbox())
    token_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="b24-sandbox-"))
    return sandbox_settings(sandbox, Path(token_dir))


def remote_sandbox_settings(args: argparse.Namespace, stack: ExitStack | AsyncExitStack) -> Settings:
    """`--sandbox --remote`: two sandbox portals with one marketplace application installed on both, remote mode in
    front of them, and its store, key and journal in a throwaway directory (the portals forget everything when they
    stop, so must they). The public URL must be known before listening, so a free port is chosen here."""
    from b24_telephony_mcp.sandbox import MARKETPLACE_CLIENT_ID, SandboxConfig, start_sandboxes

    if not args.port:
        probe = listen_socket(args.host, 0)
        args.port = probe.getsockname()[1]
        probe.close()
    public = (args.public_url or f"http://{url_host(args.host)}:{args.port}").rstrip("/")
    check_public_url(public)
    secret = secrets.token_urlsafe(24)
    register_secret(secret)
    cloud = stack.enter_context(
        start_sandboxes(
            2,
            SandboxConfig(
                client_id=MARKETPLACE_CLIENT_ID, client_secret=secret, handler_url=f"{public}/bitrix24/callback"
            ),
        )
    )
    portals = cloud.portals
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="b24-sandbox-remote-")))
    config = RemoteConfig(
        public_url=public,
        client_id=MARKETPLACE_CLIENT_ID,
        client_secret=secret,
        portal_url=None,
        token_endpoints={urlsplit(cloud.token_url).netloc: cloud.token_url},  # one OAuth server, as oauth.bitrix.info
        portal_hosts=tuple(urlsplit(portal.base_url).netloc for portal in portals),
        token_keys=(os.urandom(32),),
        store_dir=directory / "remote",
    )
    for number, portal in enumerate(portals, start=1):
        sys.stderr.write(
            f"{PROG}: sandbox portal {number}: {portal.base_url} (type {urlsplit(portal.base_url).netloc} on the "
            "sign-in page; its users 1 and 2 sign in, see /_sandbox/sign-in-as)\n"
        )
    return replace(
        load_settings(portal=config), journal_file=directory / JOURNAL_NAME, events_file=directory / EVENTS_NAME
    )


def run_doctor(args: argparse.Namespace) -> int:
    from b24_telephony_mcp.commands.doctor import doctor_command

    with ExitStack() as stack:
        try:
            settings: Settings | ConfigError = settings_for(args, stack)
            tools = selection_from(args, settings.selection).tool_specs()  # type: ignore[union-attr]
        except ConfigError as exc:
            settings, tools = exc, ()
        return doctor_command(settings, tools, as_json=args.json)


def run_config(args: argparse.Namespace) -> int:
    from b24_telephony_mcp.commands.client_config import Local, Remote, config_command, installed_command

    if args.transport == "http":
        return config_command(args.client, Remote(f"http://{url_host(args.host)}:{args.port}/mcp"))
    if args.sandbox:
        return config_command(args.client, Local([*installed_command(), "--sandbox"], launch_env(None)))
    try:
        portal = load_settings(profile=args.profile, remote=False).portal
    except ConfigError as exc:
        return fail(f"{exc} (`config` prints the snippet for a setup that works.)")
    profile = portal.profile if isinstance(portal, AppConfig) else None
    profile_args = ["--profile", profile] if profile and profile != DEFAULT_PROFILE else []
    return config_command(args.client, Local([*installed_command(), *profile_args], launch_env(portal)))


def selection_from(args: argparse.Namespace, from_env: Selection) -> Selection:
    """Flags win over the environment."""
    return Selection(
        toolsets=args.toolsets if args.toolsets is not None else from_env.toolsets,
        read_only=args.read_only if args.read_only is not None else from_env.read_only,
        tools=args.tools if args.tools is not None else from_env.tools,
        dynamic=args.dynamic_toolsets or from_env.dynamic,
    )


def sandbox_settings(sandbox: RunningSandbox, token_dir: Path) -> Settings:
    """App-mode settings pointing at the in-process sandbox portal, tokens and journal in a throwaway directory
    (the portal forgets everything when it stops, so must they)."""
    settings = load_settings(
        portal=AppConfig(
            portal_url=sandbox.base_url,
            client_id=sandbox.config.client_id,
            client_secret=sandbox.config.client_secret,
            tokens=TokenPair(sandbox.access_token, sandbox.refresh_token),
            token_file=token_dir / "tokens.json",
            token_url=sandbox.token_url,
        )
    )
    # The sandbox's installation hands its application token over, as ONAPPINSTALL would: its online posts pass.
    events = replace(settings.events, application_tokens=(sandbox.config.application_token,))
    return replace(settings, journal_file=token_dir / JOURNAL_NAME, events_file=token_dir / EVENTS_NAME, events=events)


if __name__ == "__main__":
    sys.exit(main())
