"""Serving the MCP server over streamable HTTP (`/mcp`) or SSE (`/sse`), with `/metrics` and health probes.

Imported only for those transports, so a stdio start does not pay for uvicorn.

The HTTP transports sit behind one guard: a foreign `Host` (DNS rebinding) gets 421, a foreign
`Origin` (a web page in the user's browser) gets 403, a missing or wrong bearer token gets 401, selection
headers (X-MCP-Toolsets, X-MCP-Readonly) naming what the server does not serve get 400.
Only the probes `/healthz` (the process answers) and `/readyz` (it can serve: state store reachable, token
pair present) pass without checks, for load balancers and orchestrators; they say nothing but ok or not; and the
open routes a caller adds, which check their posts themselves (Bitrix24's event posts, event_intake.py).
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from mcp.server import Server
from mcp.server.auth.provider import OAuthAuthorizationServerProvider, ProviderTokenVerifier
from mcp.server.auth.routes import build_metadata, cors_middleware
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.sse import SseServerTransport
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from b24_telephony_mcp.common import metrics
from b24_telephony_mcp.common.net import is_loopback_host, listen_socket, url_host
from b24_telephony_mcp.common.redact import request_secrets
from b24_telephony_mcp.config.settings import ConfigError
from b24_telephony_mcp.serving.narrowing import Narrowings, SelectionHeaderError, narrowing
from b24_telephony_mcp.serving.server import TelephonyServer

if TYPE_CHECKING:
    from b24_telephony_mcp.bitrix.redis_state import RedisState

# The guard below does the Host/Origin checks for every route, so the SDK's copy is switched off.
_SDK_CHECKS_OFF = TransportSecuritySettings(enable_dns_rebinding_protection=False)


Readiness = Callable[[], Awaitable[bool]]
READY_TIMEOUT = 3.0


@dataclass(frozen=True)
class HttpGuard:
    """ASGI middleware: Host, then Origin, then the bearer token; `open_paths` are answered without checks. With no
    `token` (remote mode) the app checks each request's own token; `cors_paths` (the OAuth endpoints, which browser
    clients call cross-origin) skip the Origin check."""

    app: ASGIApp
    token: str | None
    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]
    open_paths: Mapping[str, ASGIApp] = field(default_factory=dict)
    cors_paths: frozenset[str] = frozenset()
    narrowings: Narrowings | None = None
    """The server's: a request's selection headers it cannot honour are a 400 (narrowing.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        probe = self.open_paths.get(scope["path"])
        if probe is not None:
            await probe(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal: tuple[int, str, dict[str, str]] | None = None
        if headers.get("host", "").lower() not in self.allowed_hosts:
            refusal = (421, "Host not allowed", {})
        elif (
            "origin" in headers
            and headers["origin"].lower() not in self.allowed_origins
            and scope["path"] not in self.cors_paths
        ):
            refusal = (403, "Origin not allowed", {})
        elif self.token is not None and not _bearer_matches(headers.get("authorization", ""), self.token):
            refusal = (401, "Missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="b24-telephony-mcp"'})
        elif self.narrowings is not None:
            try:
                narrowing(headers, self.narrowings.servable())
            except SelectionHeaderError as exc:
                refusal = (400, str(exc), {})
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, extra_headers = refusal
        body = json.dumps({"error": message}).encode()
        await Response(body, status, extra_headers, media_type="application/json")(scope, receive, send)


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def guarded(
    app: ASGIApp,
    token: str | None,
    host: str,
    port: int,
    extra_hosts: Iterable[str] = (),
    open_paths: Mapping[str, ASGIApp] | None = None,
    cors_paths: Iterable[str] = (),
    narrowings: Narrowings | None = None,
) -> HttpGuard:
    """Allow the loopback names and the bound host on this port, plus `extra_hosts`: exact `Host` values
    (e.g. `mcp.example.com` behind a TLS proxy) the user vouched for with B24_MCP_ALLOWED_HOSTS."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if not is_loopback_host(host):
        names.add(url_host(host))
    hosts = {f"{name}:{port}" for name in names} | ({name for name in names} if port == 80 else set())
    hosts |= {extra.strip().lower() for extra in extra_hosts if extra.strip()}
    origins = {f"{scheme}://{hostport}" for scheme in ("http", "https") for hostport in hosts}
    return HttpGuard(
        app, token, frozenset(hosts), frozenset(origins), open_paths or {}, frozenset(cors_paths), narrowings
    )


def probes(ready: Readiness) -> dict[str, ASGIApp]:
    """`/healthz`: the process serves HTTP. `/readyz`: `ready()` said yes within READY_TIMEOUT."""

    async def healthz(request: Request) -> Response:
        return _status(200, "ok")

    async def readyz(request: Request) -> Response:
        with anyio.move_on_after(READY_TIMEOUT):
            if await ready():
                return _status(200, "ready")
        return _status(503, "not ready")

    return {
        path: Route(path, endpoint, methods=["GET", "HEAD"])
        for path, endpoint in (("/healthz", healthz), ("/readyz", readyz))
    }


def _status(code: int, status: str) -> Response:
    return Response(json.dumps({"status": status}), code, {"Cache-Control": "no-store"}, media_type="application/json")


def metrics_route(token: str | None = None) -> Route:
    """`/metrics`; with `token` it answers only that bearer token (remote mode, whose guard checks none)."""
    registry = metrics.enable()

    async def serve_metrics(request: Request) -> Response:
        if token is not None and not _bearer_matches(request.headers.get("authorization", ""), token):
            return Response(json.dumps({"error": "Missing or wrong bearer token"}), 401, media_type="application/json")
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    return Route("/metrics", serve_metrics, methods=["GET"])


@dataclass(frozen=True)
class AppOptions:
    routes: list[Route]
    """Served beside the transport's own, behind the guard (`/metrics`)."""
    server_requests: bool = False
    """Some tool sends the client requests mid-call (elicitation)."""
    stateless: bool = False
    """Streamable HTTP keeps no session: any replica answers any request."""
    remote: RemoteAuth | None = None
    """Remote mode: MCP clients sign in (OAuth 2.1) and each request carries its own access token."""


@dataclass(frozen=True)
class RemoteAuth:
    """What remote mode adds to streamable HTTP: the SDK's authorization server over our provider, its routes and
    metadata (extended), the bearer middleware in front of `/mcp`, and the Bitrix24 sign-in routes."""

    provider: OAuthAuthorizationServerProvider[Any, Any, Any]
    public_url: str
    resource_url: str
    routes: list[Route]
    metadata_extension: Mapping[str, Any]
    shared_limits: RedisState | None = None
    """Where the per-address limits live when replicas share Redis (else each process keeps its own)."""

    def settings(self) -> AuthSettings:
        return AuthSettings(
            issuer_url=self.public_url,  # type: ignore[arg-type]  # a str, kept without a trailing slash
            resource_server_url=self.resource_url,  # type: ignore[arg-type]
            validate_token_resource=True,  # tokens for another audience are refused (RFC 8707)
            client_registration_options=ClientRegistrationOptions(enabled=True),
            revocation_options=RevocationOptions(enabled=True),
        )

    def sdk_options(self) -> dict[str, Any]:
        return {
            "auth": self.settings(),
            "auth_server_provider": self.provider,
            "token_verifier": ProviderTokenVerifier(self.provider),
        }

    def extend_metadata(self, app: Starlette) -> None:
        """Serve the SDK's authorization-server metadata with our additions (public clients: `none`)."""
        settings = self.settings()
        assert settings.client_registration_options is not None and settings.revocation_options is not None
        metadata = build_metadata(
            settings.issuer_url, None, settings.client_registration_options, settings.revocation_options
        ).model_dump(mode="json", exclude_none=True)
        metadata.update(self.metadata_extension)

        async def serve_metadata(request: Request) -> Response:
            return Response(
                json.dumps(metadata), 200, {"Cache-Control": "public, max-age=3600"}, media_type="application/json"
            )

        for index, route in enumerate(app.router.routes):
            if isinstance(route, Route) and route.path == METADATA_PATH:
                app.router.routes[index] = Route(
                    METADATA_PATH, cors_middleware(serve_metadata, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"]
                )


METADATA_PATH = "/.well-known/oauth-authorization-server"
OAUTH_CORS_PATHS = (METADATA_PATH, "/.well-known/oauth-protected-resource/mcp", "/token", "/register", "/revoke")


def streamable_http_app(server: Server[Any], options: AppOptions) -> ASGIApp:
    # Plain JSON responses: an SSE stream per response costs ~30% of each round trip (make bench). But a request
    # from the server in the middle of a call (asking the user to confirm one, protocol 2025-11-25) can only ride
    # such a stream, so `server_requests` brings it back for every request; progress notifications need it only
    # for the request that asked for them (a progressToken), so such a request is answered with a stream alone.
    remote = options.remote
    auth = remote.sdk_options() if remote is not None else {}
    routes = [*options.routes, *(remote.routes if remote is not None else ())]
    if options.server_requests:
        sdk_app = server.streamable_http_app(
            streamable_http_path="/mcp",
            json_response=False,
            stateless_http=options.stateless,
            transport_security=_SDK_CHECKS_OFF,
            custom_starlette_routes=routes,
            **auth,
        )
        if remote is not None:
            remote.extend_metadata(sdk_app)
        return sdk_app
    sdk_app = server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=_JsonUnlessStreamed(),  # type: ignore[arg-type]  # a bool the SDK reads per request
        stateless_http=options.stateless,
        transport_security=_SDK_CHECKS_OFF,
        custom_starlette_routes=routes,
        **auth,
    )
    if remote is not None:
        remote.extend_metadata(sdk_app)
    return StreamWhenProgress(sdk_app)


@dataclass(frozen=True)
class SecretsPerRequest:
    """ASGI middleware (remote mode): the secrets a request learns (its user's Bitrix24 tokens) are its own
    (`request_secrets`), so a server of many users does not keep them all."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with request_secrets():
            await self.app(scope, receive, send)


_STREAM_THIS_REQUEST: ContextVar[bool] = ContextVar("stream_this_request", default=True)
"""Whether the request being served gets an SSE stream. Unset (true) outside a request we classified: the
initialize request, and the session's message router, whose context is copied from it; the router must keep
a streamed request's notifications, while a JSON-answered request has none (no tool here sends any unasked)."""


class _JsonUnlessStreamed:
    """The SDK's `json_response` flag, true unless the request being served is to be streamed. The SDK tests it
    each time it decides (accepted headers, the response form, whether the request's back-channel exists)."""

    def __bool__(self) -> bool:
        return not _STREAM_THIS_REQUEST.get()


@dataclass(frozen=True)
class StreamWhenProgress:
    """ASGI middleware: reads a POSTed message and marks the request for an SSE answer when it carries a
    progressToken (and the client accepts SSE), else for plain JSON; initialize is left to the default."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        stream = _stream_wanted(body, scope)
        marked = _STREAM_THIS_REQUEST.set(stream) if stream is not None else None
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            if marked is not None:
                _STREAM_THIS_REQUEST.reset(marked)


def _stream_wanted(body: bytes, scope: Scope) -> bool | None:
    """True for a request with a progressToken, None for initialize (the default), else False; always False for
    a client that does not accept SSE (it could not read a stream, nor progress)."""
    accept = next((value for key, value in scope["headers"] if key == b"accept"), b"")
    if b"text/event-stream" not in accept:
        return False
    if b"progressToken" not in body and b'"initialize"' not in body:
        return False  # the common case, decided without parsing
    try:
        message = json.loads(body)
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    if message.get("method") == "initialize":
        return None
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    return isinstance(token, str | int) and not isinstance(token, bool)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then what follows: a disconnect

    return replayed


def sse_app(server: Server[Any], options: AppOptions) -> Starlette:
    # Only `routes` apply: the SSE transport's one stream carries the server's requests anyway, and it pins a
    # client to one process, so it cannot be stateless.
    transport = SseServerTransport("/messages/", security_settings=_SDK_CHECKS_OFF)

    async def handle_sse(request: Request) -> Response:
        async with transport.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    return Starlette(
        routes=[
            Route("/sse", endpoint=handle_sse, methods=["GET"]),
            Mount("/messages/", app=transport.handle_post_message),
            *options.routes,
        ]
    )


# Each HTTP transport: the app serving it and the path clients connect to.
APPS: dict[str, tuple[Callable[[Server[Any], AppOptions], ASGIApp], str]] = {
    "http": (streamable_http_app, "/mcp"),
    "sse": (sse_app, "/sse"),
}


async def serve_http(
    server: TelephonyServer,
    transport: str,
    host: str,
    port: int,
    token: str | None,
    announce: Callable[[str], None],
    extra_hosts: Iterable[str] = (),
    server_requests: bool = False,
    ready: Readiness | None = None,
    stateless: bool = False,
    open_routes: Sequence[Route] = (),
    remote: RemoteAuth | None = None,
    metrics_token: str | None = None,
) -> None:
    """Serve until cancelled; `announce` gets the URL once the socket listens. `server_requests`: some tool sends
    the client requests mid-call (elicitation), so streamable HTTP answers with SSE streams. `ready` answers
    `/readyz` (default: always ready). `stateless`: streamable HTTP keeps no session, so any replica behind a load
    balancer can answer any request. `open_routes` are served without the guard's checks: they make their own.
    `remote`: MCP clients sign in, and the token is theirs (`token` is None); `metrics_token` then guards /metrics."""
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}). Choose another --port (0 picks a free one) "
            "or --host."
        ) from None
    actual_port = sock.getsockname()[1]
    make_app, path = APPS[transport]
    url = f"http://{url_host(host)}:{actual_port}{path}"
    # /metrics sits behind the static bearer token; remote mode has none (each client signs in), so it serves
    # /metrics only with a token of its own.
    routes = [metrics_route()] if remote is None else [metrics_route(metrics_token)] if metrics_token else []
    app = make_app(server, AppOptions(routes, server_requests, stateless, remote))
    if remote is not None:
        from mcp.server.auth.routes import build_resource_metadata_url

        from b24_telephony_mcp.remote.signed_out import SignedOutAs401
        from b24_telephony_mcp.serving.address_limits import PerAddressLimit

        metadata_url = str(build_resource_metadata_url(remote.resource_url))  # type: ignore[arg-type]
        app = SignedOutAs401(app, path, metadata_url)  # a call whose sign-in ended mid-call answers 401
        # /register and /token, which anyone may call, per client address (across replicas with Redis)
        app = PerAddressLimit(app, shared=remote.shared_limits)
        app = SecretsPerRequest(app)  # each user's tokens are redacted in their own requests, not kept for good
    open_paths: dict[str, ASGIApp] = {**probes(ready or _always_ready), **{route.path: route for route in open_routes}}
    cors_paths = OAUTH_CORS_PATHS if remote is not None else ()
    config = uvicorn.Config(
        guarded(app, token, host, actual_port, extra_hosts, open_paths, cors_paths, server.narrowings),
        log_level="warning",
        access_log=False,
        # No handlers of uvicorn's own: its records reach the root handler, whose formatter redacts.
        log_config=None,
        lifespan="on",
    )
    announce(url)
    await _Server(config).serve(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT ends `serve` instead of killing the process once it returns
    (uvicorn raises the signal again then), so the caller's clean-up runs: the event drainer lets go of its lease,
    the journal and the stores close."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


async def _always_ready() -> bool:
    return True
