"""Serve the sandbox portal with uvicorn on a loopback port, in a background thread or in the foreground."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from types import TracebackType

import uvicorn

from b24_telephony_mcp.common.net import listen_socket, url_host

from .app import create_app
from .config import SandboxConfig
from .portal import SandboxPortal

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


@dataclass
class RunningSandbox:
    """A sandbox being served. ``base_url`` is the portal URL for app mode (REST at ``base_url + "/rest/<m>"``)."""

    base_url: str
    token_url: str
    webhook_url: str
    config: SandboxConfig
    access_token: str
    refresh_token: str
    portal: SandboxPortal
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _socket: socket.socket | None = field(default=None, repr=False)

    def app_variables(self) -> dict[str, str]:
        """The server's settings as the application this sandbox installed: portal, client, its first token pair
        and the OAuth server (what a user would set after installing a local application)."""
        return {
            "B24_PORTAL_URL": self.base_url,
            "B24_CLIENT_ID": self.config.client_id,
            "B24_CLIENT_SECRET": self.config.client_secret,
            "B24_ACCESS_TOKEN": self.access_token,
            "B24_REFRESH_TOKEN": self.refresh_token,
            "B24_OAUTH_TOKEN_URL": self.token_url,
        }

    def stop(self) -> None:
        """Shut the server down and wait for its thread, then for the event POSTs queued; safe to call twice."""
        self._server.should_exit = True
        self.portal.outbox.close()
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("sandbox server thread did not stop within %.0f s", _STOP_TIMEOUT)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _prepare(config: SandboxConfig | None, host: str, port: int) -> RunningSandbox:
    sock = listen_socket(host, port)
    bound_port = sock.getsockname()[1]
    base_url = f"http://{url_host(host)}:{bound_port}"

    portal = SandboxPortal(config)
    config = portal.config  # the portal's own copy, which it changes at run time
    portal.base_url = base_url
    installation = portal.issue_tokens(user_id=1)  # what the app receives on installation
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(portal),
            log_level="warning",
            # Webhook codes and tokens travel in URLs: no access log. log_config=None keeps uvicorn from
            # reconfiguring the host process's logging (and from its stdout access handler).
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    running = RunningSandbox(
        base_url=base_url,
        token_url=f"{base_url}/oauth/token/",
        webhook_url=f"{base_url}/rest/{config.webhook_user_id}/{config.webhook_code}/",
        config=config,
        access_token=installation.access_token,
        refresh_token=installation.refresh_token,
        portal=portal,
        _server=server,
        _socket=sock,
    )
    return running


def start_sandbox(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> RunningSandbox:
    """Start the sandbox in a daemon thread (own event loop) and return once it serves requests.

    ``port=0`` picks a free port. uvicorn installs no signal handlers outside the main thread.
    """
    running = _prepare(config, host, port)
    server = running._server
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [running._socket]}, name=f"b24-sandbox-{running.base_url}", daemon=True
    )
    running._thread = thread
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"sandbox portal failed to start on {running.base_url}")
        time.sleep(0.01)
    return running


@dataclass
class SandboxCloud:
    """Portals started together, one marketplace application installed on each, one OAuth server for all (the
    first portal's), as Bitrix24's cloud portals share oauth.bitrix.info."""

    portals: list[RunningSandbox]

    @property
    def token_url(self) -> str:
        return self.portals[0].token_url

    def stop(self) -> None:
        for portal in self.portals:
            portal.stop()

    def __enter__(self) -> SandboxCloud:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


MARKETPLACE_CLIENT_ID = "app.sandbox0000000000.00000001"


def start_sandboxes(count: int = 2, config: SandboxConfig | None = None, host: str = "127.0.0.1") -> SandboxCloud:
    """`count` portals (each its own users, lines, calls, statistics, member_id and application token) with one
    marketplace application: the same client id and secret on each, any portal's codes and refresh tokens
    exchanged at the first portal's token URL."""
    base = config or SandboxConfig(client_id=MARKETPLACE_CLIENT_ID)
    started: list[RunningSandbox] = []
    try:
        for _ in range(count):
            own = replace(base, application_token=secrets.token_hex(16), webhook_code=secrets.token_hex(8))
            started.append(start_sandbox(own, host))
    except BaseException:
        for running in started:
            running.stop()
        raise
    first = started[0]
    for running in started:
        running.portal.oauth_url = first.base_url
        running.portal.oauth_peers = tuple(other.portal for other in started if other is not running)
        running.token_url = first.token_url
    return SandboxCloud(started)


def run_sandbox_forever(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 8024) -> None:
    """Serve in the foreground until Ctrl-C, after printing the connection details to stderr."""
    running = _prepare(config, host, port)
    cfg = running.config
    details = [
        "Bitrix24 telephony sandbox portal (in-memory; test hooks under /_sandbox/)",
        f"  portal (app mode): {running.base_url}/rest/",
        f"  OAuth token URL:   {running.token_url}",
        f"  webhook URL:       {running.webhook_url}",
        f"  client_id:         {cfg.client_id}",
        f"  client_secret:     {cfg.client_secret}",
        f"  application_token: {cfg.application_token}  (auth[application_token] of every event)",
        f"  access_token:      {running.access_token}",
        f"  refresh_token:     {running.refresh_token}",
        f"  handler path:      {cfg.handler_url}  (b24-telephony-mcp login --sandbox listens there)",
        f"  make events:       POST {running.base_url}/_sandbox/click or /_sandbox/callback-form (JSON, see README)",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(details), file=sys.stderr, flush=True)
    # uvicorn handles SIGINT itself, then re-raises it once shut down; that KeyboardInterrupt is the normal exit.
    with contextlib.suppress(KeyboardInterrupt):
        running._server.run(sockets=[running._socket])
    running.stop()
