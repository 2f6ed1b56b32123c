"""`b24-telephony-mcp login`: the OAuth 2.0 authorization-code flow of a local application, ending in a profile.

The user opens `<portal>/oauth/authorize/?client_id=...&state=...`; Bitrix24 sends the browser back to the
application's handler path, which is this command's loopback listener, with a code that lives 30 s. The
listener checks `state` and the portal's domain, exchanges the code at once, checks the new pair with
`app.info`, and only then writes the profile. It also takes the form POST Bitrix24 sends when an
application with an interface is opened or installed (the tokens arrive ready-made), and, with
--no-browser, the address the browser was sent to, pasted on stdin. Any failure leaves nothing written.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import hmac
import html
import logging
import secrets
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from b24_telephony_mcp import PROG
from b24_telephony_mcp.bitrix import AccessTokenAuth, BitrixClient, BitrixError, TokenPair, request_tokens
from b24_telephony_mcp.bitrix.errors import TOKEN_REFRESH_FAILED
from b24_telephony_mcp.commands.access import missing_scopes, names_list, parse_scopes
from b24_telephony_mcp.common.net import listen_socket
from b24_telephony_mcp.common.redact import redact, register_secret
from b24_telephony_mcp.config.settings import ConfigError, LoginTarget, login_target, profile_command
from b24_telephony_mcp.state.profiles import Profile, read_profile, write_profile
from b24_telephony_mcp.tools import ALL_TOOLS

log = logging.getLogger(__name__)

# What Bitrix24 posts when an application with an interface is opened (simple-way.md: AUTH_ID...) or when
# an installation handler is called (installation-callback.md: auth[...]); first name found wins.
_POSTED_FIELDS: dict[str, tuple[str, ...]] = {
    "access_token": ("AUTH_ID", "auth[access_token]"),
    "refresh_token": ("REFRESH_ID", "auth[refresh_token]"),
    "expires_in": ("AUTH_EXPIRES", "auth[expires_in]"),
    "domain": ("DOMAIN", "auth[domain]"),
    "member_id": ("member_id", "auth[member_id]"),
    "scope": ("APPLICATION_SCOPE", "auth[scope]"),
    "application_token": ("APPLICATION_TOKEN", "auth[application_token]"),
}

Answer = Literal["redirect", "posted"]


class LoginError(Exception):
    """Why the login failed; nothing was written."""


@dataclass(frozen=True)
class LoginOptions:
    target: LoginTarget
    portal_url: str
    client_id: str
    client_secret: str = field(repr=False)
    port: int
    timeout: float
    open_browser: bool
    read_pasted: bool
    sandbox: bool
    """The portal is a sandbox: point its handler path at the listener and follow the approval as a browser."""


@dataclass(frozen=True)
class Grant:
    """A token pair as Bitrix24 handed it over, with what came along."""

    tokens: TokenPair = field(repr=False)
    member_id: str
    scopes: tuple[str, ...]
    application_token: str = field(default="", repr=False)
    """Only an installation's form carries it (the redirect of a sign-in does not)."""


# --- the command ---


def login_command(
    env: Mapping[str, str],
    *,
    portal: str | None,
    client_id: str | None,
    port: int,
    timeout: float,
    no_browser: bool,
    profile: str | None,
    sandbox: bool,
) -> int:
    """Run `login`; messages go to stderr. 0 on success, 1 when the login failed, 2 for a setup mistake."""
    try:
        target = login_target(env, profile=profile, portal=portal, client_id=client_id, sandbox=sandbox)
        if target.portal_url is None:
            raise ConfigError("Which portal? Pass --portal https://your.bitrix24.com (or set B24_PORTAL_URL).")
        if sandbox:
            client, secret = sandbox_app(target.portal_url)
        else:
            if not target.client_id:
                raise ConfigError(
                    "No client id: pass --client-id (or set B24_CLIENT_ID) with the code from the local "
                    "application's form (Applications > Developer resources > Other > Local application)."
                )
            client = target.client_id
            secret = target.client_secret or ask_secret(client)
        register_secret(secret)
        options = LoginOptions(
            target=target,
            portal_url=target.portal_url,
            client_id=client,
            client_secret=secret,
            port=port,
            timeout=timeout,
            open_browser=not no_browser and not sandbox,
            read_pasted=no_browser,
            sandbox=sandbox,
        )
    except ConfigError as exc:
        _say(f"{PROG}: {exc}")
        return 2
    try:
        profile_saved = anyio.run(login, options, _say)
    except LoginError as exc:
        _say(f"{PROG}: login failed: {redact(str(exc))}")
        return 1
    except KeyboardInterrupt:
        _say(f"{PROG}: login cancelled; nothing was saved.")
        return 130
    for line in summary(options, profile_saved):
        _say(line)
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ask_secret(client_id: str) -> str:
    """The client secret from a hidden prompt: never from argv, where other users of the machine can read it."""
    if not sys.stdin.isatty():
        raise ConfigError(
            "No client secret: set B24_CLIENT_SECRET (stdin is not a terminal, so it cannot be asked for)."
        )
    secret = getpass.getpass(f"Client secret of {client_id} (from the local application's form): ").strip()
    if not secret:
        raise ConfigError("No client secret given.")
    return secret


def sandbox_app(portal_url: str) -> tuple[str, str]:
    """The sandbox application's client id and secret, from its loopback-only control endpoint."""
    try:
        app = httpx2.get(f"{portal_url}/_sandbox/app", timeout=5).json()
        return str(app["client_id"]), str(app["client_secret"])
    except (httpx2.HTTPError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"No sandbox portal answers at {portal_url}. Start one with `{PROG} sandbox` in another terminal "
            "(or pass --portal with the address it prints)."
        ) from None


def summary(options: LoginOptions, profile: Profile) -> list[str]:
    """What was saved, which tools the granted scopes allow, and the next command."""
    lines = [
        f"Logged in: profile '{options.target.profile}' for {profile.portal_url} (member_id {profile.member_id}), "
        f"saved to {options.target.store.path}.",
        f"Granted scopes: {', '.join(profile.scopes) or 'none'}.",
    ]
    gaps = missing_scopes(ALL_TOOLS, profile.scopes)
    if not gaps:
        lines.append(f"These scopes allow all {len(ALL_TOOLS)} tools.")
    else:
        lines.append(f"These scopes allow {len(ALL_TOOLS) - len(gaps)} of {len(ALL_TOOLS)} tools.")
        for scope in sorted({scope for gap in gaps.values() for scope in gap}):
            blocked = [name for name, gap in gaps.items() if scope in gap]
            lines.append(f"  without '{scope}': {names_list(blocked)}")
        lines.append("  (add scopes in the local application's form, then run login again)")
    suffix = profile_command(options.target.profile)
    lines.append(f"Next: {PROG} doctor{suffix}")
    lines.append(f"Then: {PROG} config claude-code{suffix} | sh   (or config cursor, vscode, codex, gemini...)")
    return lines


# --- the flow ---


async def login(options: LoginOptions, say: Callable[[str], None]) -> Profile:
    """Listen, send the user to the portal, take the first answer, and return the profile it wrote."""
    sockets = bind_listener(options.port)
    port = sockets[0].getsockname()[1]
    handler_url = f"http://localhost:{port}/"
    flow = LoginFlow(options, port)
    server = uvicorn.Server(
        uvicorn.Config(flow.app(), log_level="warning", access_log=False, log_config=None, lifespan="off")
    )
    try:
        async with anyio.create_task_group() as serving:
            serving.start_soon(server.serve, sockets)
            try:
                async with anyio.create_task_group() as helpers:
                    if options.sandbox:
                        await point_sandbox_at(options.portal_url, handler_url)
                    say(f"Open: {flow.authorize_url}")
                    say(f"Waiting up to {options.timeout:.0f} s for Bitrix24 to answer at {handler_url} ...")
                    if options.open_browser:
                        helpers.start_soon(open_browser, flow.authorize_url, say)
                    if options.read_pasted:
                        say("Or paste here the address your browser was sent to, then press Enter:")
                        helpers.start_soon(flow.read_pasted, say)
                    if options.sandbox:
                        helpers.start_soon(flow.follow_as_browser)
                    with anyio.move_on_after(options.timeout):
                        await flow.done.wait()
                    helpers.cancel_scope.cancel()
            finally:
                server.should_exit = True
    finally:
        for sock in sockets:
            sock.close()
    if flow.outcome is None:
        raise LoginError(
            f"no answer from Bitrix24 within {options.timeout:.0f} s at {handler_url}. Check that the local "
            f"application's handler path is exactly {handler_url}, that the application is installed on "
            f"{options.portal_url} and that you approved access (or use --no-browser and paste the address). "
            "Nothing was saved."
        )
    if isinstance(flow.outcome, LoginError):
        raise flow.outcome
    return flow.outcome


def bind_listener(port: int) -> list[socket.socket]:
    """Loopback only: 127.0.0.1, and ::1 on the same port when the machine has IPv6 (browsers try both)."""
    try:
        first = listen_socket("127.0.0.1", port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LoginError(
                f"port {port} is in use, so login cannot listen at http://localhost:{port}/. Free it, or choose "
                "another port with --port N (and set the local application's handler path to http://localhost:N/)."
            ) from None
        raise LoginError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}).") from None
    sockets = [first]
    with contextlib.suppress(OSError):  # no IPv6 loopback here: 127.0.0.1 is enough
        sockets.append(listen_socket("::1", first.getsockname()[1]))
    return sockets


async def open_browser(url: str, say: Callable[[str], None]) -> None:
    if not await anyio.to_thread.run_sync(webbrowser.open, url):
        say("No browser could be opened: open the address above yourself (or use --no-browser).")


async def point_sandbox_at(portal_url: str, handler_url: str) -> None:
    """A sandbox's handler path is a setting like a real app's: make it this listener."""
    try:
        async with httpx2.AsyncClient(timeout=5) as http:
            (await http.post(f"{portal_url}/_sandbox/app", json={"handler_url": handler_url})).raise_for_status()
    except httpx2.HTTPError as exc:
        raise LoginError(f"the sandbox at {portal_url} did not take the handler path ({type(exc).__name__}).") from None


class LoginFlow:
    """The listener's state: the expected `state`, the first answer's outcome, and how an answer is checked."""

    def __init__(self, options: LoginOptions, port: int) -> None:
        self.options = options
        self.state = secrets.token_urlsafe(24)
        self.portal_host = urlsplit(options.portal_url).netloc.lower()
        self.hosts = {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}
        self.authorize_url = (
            f"{options.portal_url}/oauth/authorize/?{urlencode({'client_id': options.client_id, 'state': self.state})}"
        )
        self.done = anyio.Event()
        self.outcome: Profile | LoginError | None = None
        self._settling = anyio.Lock()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["GET", "POST"])])

    async def endpoint(self, request: Request) -> Response:
        if request.headers.get("host", "").lower() not in self.hosts:
            return _page("This listener answers only at localhost.", 421)  # a foreign Host: DNS rebinding
        params = dict(request.query_params)
        if request.method == "POST":
            form = await request.form()
            params.update({key: value for key, value in form.items() if isinstance(value, str)})
        answer = answer_kind(params)
        if answer is None:
            return _page(f"{PROG} login is waiting for Bitrix24 to send your browser back here.", 404)
        outcome = await self.settle(params, answer)
        if isinstance(outcome, LoginError):
            return _page(f"Login failed: {html.escape(redact(str(outcome)))}", 400)
        finish = _INSTALL_FINISH if answer == "posted" else ""
        return _page(f"Connected {html.escape(outcome.portal_url)}. You can close this tab.", 200, finish)

    async def settle(self, params: Mapping[str, str], answer: Answer) -> Profile | LoginError:
        """The first answer decides; later ones get that outcome."""
        async with self._settling:
            if self.outcome is None:
                try:
                    self.outcome = await self.complete(params, answer)
                except LoginError as exc:
                    self.outcome = exc
                except Exception as exc:  # a bug must end the login with an answer, not leave it waiting
                    log.exception("login failed unexpectedly")
                    self.outcome = LoginError(f"unexpected {type(exc).__name__} (details in the log above).")
                self.done.set()
            return self.outcome

    async def complete(self, params: Mapping[str, str], answer: Answer) -> Profile:
        grant = await self.exchange(params) if answer == "redirect" else self.posted_grant(params)
        info = await self.app_info(grant.tokens)
        # A posted form comes from the install frame itself, which finishes the installation (BX24.installFinish).
        if answer == "redirect" and info.get("INSTALLED") is False:
            raise LoginError(
                f"the application is not installed on {self.options.portal_url} (app.info INSTALLED is false): "
                "finish its installation in Bitrix24, then run login again."
            )
        profile = Profile(
            portal_url=self.options.portal_url,
            member_id=grant.member_id,
            client_id=self.options.client_id,
            client_secret=self.options.client_secret,
            tokens=grant.tokens,
            scopes=grant.scopes,
            token_url=self.options.target.token_url,
            application_token=grant.application_token or self.saved_application_token(),
        )
        await anyio.to_thread.run_sync(self.save, profile)
        return profile

    async def exchange(self, params: Mapping[str, str]) -> Grant:
        """The redirect: check it is the answer to this login, then swap the code for a pair at once."""
        if params.get("error"):
            raise LoginError(f"Bitrix24 answered {params['error']}: {params.get('error_description', '')}".strip())
        if not hmac.compare_digest(params.get("state", "").encode(), self.state.encode()):
            raise LoginError(
                "the answer's state does not match this login (an old browser tab, or another login's address?). "
                "Nothing was saved; run login again and use the address it prints."
            )
        self.check_domain(params.get("domain"))
        code = params.get("code", "")
        register_secret(code)
        query = {
            "grant_type": "authorization_code",
            "client_id": self.options.client_id,
            "client_secret": self.options.client_secret,
            "code": code,
        }
        try:
            async with httpx2.AsyncClient(timeout=30) as http:
                tokens, body = await request_tokens(http, self.options.target.token_url, query, "code exchange")
        except BitrixError as exc:
            raise LoginError(self.explain_token_error(exc)) from None
        return Grant(
            tokens=tokens,
            member_id=str(body.get("member_id") or params.get("member_id") or ""),
            scopes=parse_scopes(body.get("scope") or params.get("scope")),
        )

    def explain_token_error(self, exc: BitrixError) -> str:
        if exc.code == "invalid_grant":
            return (
                f"Bitrix24 refused the authorization code ({exc.description}). A code lives 30 seconds and works "
                "once: run login again and approve promptly (an address pasted late or twice fails this way)."
            )
        if exc.code == "invalid_client":
            return (
                f"the OAuth server refused client id {self.options.client_id} or its secret ({exc.description}). "
                "Check B24_CLIENT_SECRET and --client-id against the local application's form, and that the "
                f"application is installed on {self.options.portal_url}."
            )
        if exc.code == TOKEN_REFRESH_FAILED:
            return f"{exc.description} at {self.options.target.token_url}."
        return f"the OAuth server refused the code: {exc.code}: {exc.description}."

    def posted_grant(self, params: Mapping[str, str]) -> Grant:
        """The install/open form: tokens arrive ready-made (no state to check: Bitrix24 sends none)."""
        fields = {name: _first(params, keys) for name, keys in _POSTED_FIELDS.items()}
        self.check_domain(fields["domain"])
        lifetime = float(fields["expires_in"]) if fields["expires_in"].isdigit() else 3600.0
        tokens = TokenPair(fields["access_token"], fields["refresh_token"], time.time() + lifetime)
        register_secret(tokens.access_token)
        register_secret(tokens.refresh_token)
        if fields["application_token"]:
            register_secret(fields["application_token"])
        return Grant(
            tokens=tokens,
            member_id=fields["member_id"],
            scopes=parse_scopes(fields["scope"]),
            application_token=fields["application_token"],
        )

    def check_domain(self, domain: str | None) -> None:
        if domain and domain.lower() != self.portal_host:
            raise LoginError(
                f"Bitrix24 answered for {domain}, but this login is for {self.options.portal_url}. If {domain} is "
                f"your portal, run login --portal https://{domain}. Nothing was saved."
            )

    async def app_info(self, tokens: TokenPair) -> dict[str, object]:
        """The new pair must work on this portal before it is saved."""
        client = BitrixClient(AccessTokenAuth(self.options.portal_url, tokens.access_token))
        try:
            info = (await client.call("app.info", read_only=True)).result
        except BitrixError as exc:
            raise LoginError(
                f"the new token pair does not work on {self.options.portal_url}: app.info answered "
                f"{exc.code}: {exc.description}."
            ) from None
        finally:
            await client.aclose()
        return info if isinstance(info, dict) else {}

    def saved_application_token(self) -> str:
        """A sign-in by redirect carries no application token: keep the one an earlier installation of the same
        application gave."""
        try:
            saved = read_profile(self.options.target.store)
        except (ValueError, OSError):
            return ""
        same = saved is not None and (saved.portal_url, saved.client_id) == (
            self.options.portal_url,
            self.options.client_id,
        )
        return saved.application_token if saved is not None and same else ""

    def save(self, profile: Profile) -> None:
        store = self.options.target.store
        lock = store.lock()
        try:
            lock.acquire()  # a server refreshing into this profile right now finishes first
            try:
                write_profile(store, profile)
            finally:
                lock.release()
        except OSError as exc:
            raise LoginError(f"could not write the profile {store.path} ({exc.strerror}).") from None

    async def read_pasted(self, say: Callable[[str], None]) -> None:
        """Lines from stdin, read by a daemon thread (a blocked read must not keep the process alive)."""
        send, receive = anyio.create_memory_object_stream[str](16)
        token = anyio.lowlevel.current_token()

        def pump() -> None:
            try:
                for line in sys.stdin:
                    anyio.from_thread.run_sync(send.send_nowait, line, token=token)
            except Exception:  # the loop is gone, or stdin closed: nothing left to read for
                return

        threading.Thread(target=pump, name="login-stdin", daemon=True).start()
        async for line in receive:
            params = dict(parse_qsl(urlsplit(line.strip()).query, keep_blank_values=True))
            if answer_kind(params) != "redirect":
                if line.strip():
                    say("That is not the address Bitrix24 sent your browser to (it has no code=...); paste all of it:")
                continue
            await self.settle(params, "redirect")

    async def follow_as_browser(self) -> None:
        """Against the sandbox: be the user's browser, following the approval to this listener."""
        try:
            async with httpx2.AsyncClient(follow_redirects=True, timeout=30) as http:
                response = await http.get(self.authorize_url)
        except httpx2.HTTPError as exc:
            error: LoginError | None = LoginError(f"the sandbox did not answer ({type(exc).__name__}).")
        else:
            error = (
                None
                if response.url.host in ("localhost", "127.0.0.1", "::1")
                else LoginError(f"{self.options.portal_url} refused the authorization: HTTP {response.status_code}.")
            )
        if error is not None:
            async with self._settling:
                if self.outcome is None:
                    self.outcome = error
                    self.done.set()


def answer_kind(params: Mapping[str, str]) -> Answer | None:
    """A redirect carries `code` (or `error`); an install/open form carries the tokens themselves."""
    if params.get("code") or params.get("error"):
        return "redirect"
    if _first(params, _POSTED_FIELDS["access_token"]) and _first(params, _POSTED_FIELDS["refresh_token"]):
        return "posted"
    return None


def _first(params: Mapping[str, str], keys: tuple[str, ...]) -> str:
    return next((params[key] for key in keys if params.get(key)), "")


# Inside the Bitrix24 frame of an app being installed, this marks the installation finished; elsewhere a no-op.
_INSTALL_FINISH = (
    '<script src="https://api.bitrix24.com/api/v1/"></script>'
    "<script>if (window.BX24) BX24.init(function () { BX24.installFinish(); });</script>"
)


def _page(message: str, status: int, extra: str = "") -> HTMLResponse:
    body = f"<!doctype html><meta charset=utf-8><title>{PROG} login</title><p>{message}</p>{extra}"
    return HTMLResponse(body, status_code=status)
