"""The Bitrix24 half of a sign-in: the consent page, the portal's answer (`/bitrix24/callback`), the pages that say
what went wrong.

1. The SDK's `/authorize` hands the request to `BitrixAuthProvider.authorize`, which sends the browser here with a
   request id: `GET /bitrix24/signin` shows which client asks (its name and the host of its redirect URI), what it
   will be able to do, a labelled field for the portal (absent with a local application), Allow and Deny. The form
   carries a token that must match a cookie set with the page (SameSite=Strict), so another site cannot submit it.
2. Allow (`POST /bitrix24/signin`) sends the browser to the portal's `/oauth/authorize/` with a fresh `state`, whose
   hash is stored with the request and whose other half is a cookie of this browser. An address that is no portal's
   shows the same page again (400) with the text kept, the request still open.
3. `/bitrix24/callback` takes that sign-in (once), checks the cookie, that the answer comes from the portal the user
   named and names an allowed token endpoint, exchanges the code at once (it lives 30 s), reads the user (`profile`)
   and the application (`app.info`), stores the portal, the pair and a grant, and only then redirects to the client
   with an authorization code. Any failure ends on a page saying what happened, and nothing is stored.

Pages are server-rendered, load nothing, work without JavaScript, and are sent with a strict Content-Security-Policy
(`frame-ancestors 'none'`). Nothing of a sign-in is logged but the portal's host and the user's id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from mcp.server.auth.provider import construct_redirect_uri
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError
from b24_telephony_mcp.bitrix.auth import AccessTokenAuth, request_tokens
from b24_telephony_mcp.common import metrics
from b24_telephony_mcp.config.settings import RemoteConfig
from b24_telephony_mcp.remote.crypto import new_token, token_hash
from b24_telephony_mcp.remote.provider import CALLBACK_PATH, CODE_TTL, REQUEST_TTL, SIGNIN_PATH, is_loopback
from b24_telephony_mcp.remote.store import Grant, Portal, RemoteStore

log = logging.getLogger(__name__)

CSRF_COOKIE = "b24_consent"
STATE_COOKIE = "b24_signin"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_NETLOC = re.compile(r"^[a-z0-9.\-]+(?::[0-9]+)?$|^\[[0-9a-f:.]+\](?::[0-9]+)?$")
_BITRIX24_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+bitrix24\.[a-z]{2,}(?:\.[a-z]{2,})?$")

_CSS = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1b1f24}"
    "h1{font-size:1.4rem}label{display:block;font-weight:600;margin:1rem 0 .25rem}"
    "input[type=text]{width:100%;padding:.5rem;font:inherit;box-sizing:border-box}"
    ".buttons{display:flex;gap:1rem;margin-top:1.5rem}button{font:inherit;padding:.5rem 1.5rem;cursor:pointer}"
    ".allow{background:#0b66e4;color:#fff;border:0;border-radius:4px}"
    ".deny{background:#fff;border:1px solid #888;border-radius:4px}.note{color:#555;font-size:.9rem}"
    ".error{color:#b00020;font-weight:600}input[aria-invalid=true]{border:2px solid #b00020}"
)
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()


def page_headers(form_targets: str = "") -> dict[str, str]:
    """Every page's headers: nothing loads, nothing frames it, nothing is cached or sent on to another site as a
    referrer. `same-origin`, not `no-referrer`: under `no-referrer` a browser posts the form with `Origin: null`,
    which the Origin check (kept strict) refuses. `img-src data:` is for the page's empty icon only, without which
    browsers fetch `/favicon.ico` (a 404 in the console)."""
    csp = (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src data:; form-action 'self'{form_targets}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _page(title: str, body: str, status: int = 200, form_targets: str = "") -> HTMLResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status, page_headers(form_targets))


def problem(title: str, what: str, todo: str, status: int = 400) -> HTMLResponse:
    """A page saying what happened and what to do; nothing was stored."""
    return _page(title, f"<p>{html.escape(what)}</p><p>{html.escape(todo)}</p>", status)


@dataclass(frozen=True)
class PortalAddress:
    origin: str
    """`https://host[:port]`, no path."""
    host: str


def normalize_portal(typed: str, config: RemoteConfig) -> PortalAddress | None:
    """The portal a user typed (with or without `https://`, a trailing slash or a path), if it may sign in: a
    Bitrix24 cloud host, or one of the configured portal hosts (only those may be plain http, on loopback)."""
    text = typed.strip()
    if not text or any(ch.isspace() for ch in text):
        return None
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    host = parts.netloc.lower()
    if not host or "@" in host or parts.scheme not in ("http", "https"):
        return None
    configured = host in config.portal_hosts
    if configured and is_loopback(parts.hostname) and "://" not in typed:
        parts = urlsplit(f"http://{host}")  # a local portal (the sandbox's) typed without its scheme
    if parts.scheme == "http" and not (configured and is_loopback(parts.hostname)):
        return None
    if not configured and not _BITRIX24_HOST.match(host):
        return None
    return PortalAddress(f"{parts.scheme}://{host}", host)


class SignIn:
    """The sign-in routes, over the store and one HTTP pool for the Bitrix24 requests."""

    def __init__(self, config: RemoteConfig, store: RemoteStore, http: httpx2.AsyncClient, offer: str) -> None:
        self.config = config
        self.store = store
        self.http = http
        self.offer = offer
        """What a signed-in client may do, in words (the toolsets, read-only or not), for the consent page."""
        self._secure = config.public_url.startswith("https://")

    def routes(self) -> list[Route]:
        return [
            Route(SIGNIN_PATH, self.consent, methods=["GET"]),
            Route(SIGNIN_PATH, self.answer, methods=["POST"]),
            Route(CALLBACK_PATH, self.callback, methods=["GET"]),
        ]

    def _cookie(self, response: Response, name: str, value: str, same_site: str) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(REQUEST_TTL),
            path="/bitrix24/",
            secure=self._secure,
            httponly=True,
            samesite=same_site,  # type: ignore[arg-type]
        )

    # --- 1. the consent page ---

    async def consent(self, request: Request) -> Response:
        if request.query_params.get("problem") == "invalid_target":
            return problem(
                "This assistant asked for another server",
                "The sign-in request names a resource other than this server's MCP endpoint: it is for another server.",
                f"Connect the assistant to {self.config.resource_url}.",
            )
        request_id = request.query_params.get("request", "")
        record = await self.store.signin(request_id) if request_id else None
        if record is None or record.get("kind") != "request":
            return problem(
                "This sign-in has expired",
                "The sign-in request is unknown or more than ten minutes old.",
                "Go back to your assistant and connect again.",
            )
        return self._consent_page(request_id, record)

    def _consent_page(
        self, request_id: str, record: dict[str, Any], typed: str = "", mistyped: bool = False
    ) -> HTMLResponse:
        """The consent page of this request, with a fresh form token; `mistyped`: shown again (400) because the
        portal address `typed` is not one, with the text kept in the field to correct."""
        csrf = new_token()
        redirect_host = urlsplit(record["redirect_uri"]).netloc or urlsplit(record["redirect_uri"]).scheme + ":"
        error = (
            '<p class="error" id="portal-error" role="alert">Not a Bitrix24 address: type your portal\'s address, '
            "such as yourcompany.bitrix24.com.</p>"
            if mistyped
            else ""
        )
        invalid = ' aria-invalid="true" aria-describedby="portal-error"' if mistyped else ""
        portal_field = (
            ""
            if self.config.portal_url
            else f'<label for="portal">Your Bitrix24 address</label>{error}'
            '<input type="text" id="portal" name="portal" required placeholder="yourcompany.bitrix24.com" '
            f'value="{html.escape(typed)}"{invalid} autocomplete="url" autocapitalize="off" spellcheck="false">'
        )
        where = html.escape(urlsplit(self.config.portal_url).netloc) if self.config.portal_url else "your Bitrix24"
        body = (
            f"<p><strong>{html.escape(record['client_name'])}</strong> "
            f"(returning to <code>{html.escape(redirect_host)}</code>) asks to use the telephony of {where} "
            f"as you.</p><p>It will be able to: {html.escape(self.offer)}.</p>"
            f'<form method="post" action="{SIGNIN_PATH}">'
            f'<input type="hidden" name="request" value="{html.escape(request_id)}">'
            f'<input type="hidden" name="csrf" value="{csrf}">{portal_field}'
            '<div class="buttons"><button class="allow" type="submit" name="action" value="allow">Allow</button>'
            '<button class="deny" type="submit" name="action" value="deny" formnovalidate>Deny</button></div></form>'
            '<p class="note">Allow sends you to Bitrix24 to sign in. Calls are made with your Bitrix24 rights.</p>'
        )
        targets = self._form_targets() + _redirect_target(record["redirect_uri"])
        response = _page("Connect to Bitrix24 telephony", body, 400 if mistyped else 200, targets)
        self._cookie(response, CSRF_COOKIE, csrf, "strict")
        return response

    def _form_targets(self) -> str:
        """Where the form's answer may lead (browsers check form-action on each redirect after the post): the
        portal; the client's redirect URI is added per request (`_redirect_target`)."""
        if self.config.portal_url:
            return f" {urlsplit(self.config.portal_url).scheme}://{urlsplit(self.config.portal_url).netloc}"
        hosts = self.config.portal_hosts
        loopback = [f" http://{host}" for host in hosts if is_loopback(urlsplit(f"//{host}").hostname)]
        return " https:" + "".join(loopback)

    # --- 2. Allow or Deny ---

    async def answer(self, request: Request) -> Response:
        form = await request.form()
        request_id, csrf = str(form.get("request", "")), str(form.get("csrf", ""))
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not csrf or not hmac.compare_digest(csrf.encode(), cookie.encode()):
            metrics.refusal("forged_form")
            return problem(
                "This sign-in could not be checked",
                "The form did not come from this browser's sign-in page (or its cookie was blocked).",
                "Go back to your assistant and connect again; allow cookies for this site.",
                403,
            )
        typed = str(form.get("portal", ""))
        allow = form.get("action") == "allow"
        if allow and not self.config.portal_url and normalize_portal(typed, self.config) is None:
            # A typo is no answer: the same request's page again, with what was typed, to correct.
            pending = await self.store.signin(request_id)
            if pending is not None and pending.get("kind") == "request":
                metrics.sign_in("not_bitrix24")
                return self._consent_page(request_id, pending, typed, mistyped=True)
        record = await self.store.take_signin(request_id)
        if record is None or record.get("kind") != "request":
            metrics.sign_in("expired")
            return problem(
                "This sign-in has expired",
                "The sign-in request is unknown, already answered, or more than ten minutes old.",
                "Go back to your assistant and connect again.",
            )
        if not allow:
            log.info("sign-in denied by the user for client %r", record["client_name"])
            metrics.sign_in("denied")
            return problem(
                "Access denied",
                f"You did not allow {record['client_name']} to use Bitrix24 telephony. Nothing was stored.",
                "Close this page. To connect later, start again from your assistant.",
                200,
            )
        if self.config.portal_url:
            parts = urlsplit(self.config.portal_url)
            portal: PortalAddress | None = PortalAddress(f"{parts.scheme}://{parts.netloc}", parts.netloc.lower())
        else:
            portal = normalize_portal(typed, self.config)
        if portal is None:  # checked above; only a request answered meanwhile (another tab) gets here
            metrics.sign_in("expired")
            return problem(
                "This sign-in has expired",
                "The sign-in request is unknown, already answered, or more than ten minutes old.",
                "Go back to your assistant and connect again.",
            )
        state, browser = new_token(), new_token()
        signin = {**record, "kind": "signin", "portal": portal.origin, "host": portal.host}
        signin["browser"] = token_hash(browser)
        await self.store.put_signin(state, signin, REQUEST_TTL)
        query = urlencode({"client_id": self.config.client_id, "state": state})
        response = RedirectResponse(f"{portal.origin}/oauth/authorize/?{query}", 303, page_headers())
        self._cookie(response, STATE_COOKIE, browser, "lax")  # sent back on the portal's top-level redirect
        response.delete_cookie(CSRF_COOKIE, path="/bitrix24/")
        return response

    # --- 3. the portal's answer ---

    async def callback(self, request: Request) -> Response:
        query = request.query_params
        state = query.get("state", "")
        record = await self.store.take_signin(state) if state else None
        if record is None or record.get("kind") != "signin":
            metrics.sign_in("expired")
            return problem(
                "This sign-in has expired",
                "Bitrix24 answered a sign-in that is unknown, already used, or more than ten minutes old.",
                "Go back to your assistant and connect again.",
            )
        browser = request.cookies.get(STATE_COOKIE, "")
        if not browser or not hmac.compare_digest(token_hash(browser), record["browser"]):
            log.warning("sign-in callback refused: its state belongs to another browser")
            metrics.refusal("foreign_browser")
            return problem(
                "This sign-in belongs to another browser",
                "Bitrix24's answer does not match a sign-in started in this browser.",
                "Go back to your assistant and connect again from this browser.",
                403,
            )
        if query.get("error"):
            metrics.sign_in("portal_refused")
            return problem(
                "Bitrix24 did not sign you in",
                "The portal refused the sign-in (the application may not be installed, or access was denied).",
                "Ask your Bitrix24 administrator to install the application, then connect again.",
            )
        if query.get("domain", "").lower() != record["host"]:
            log.warning("sign-in callback refused: another portal answered than the one named")
            metrics.refusal("other_portal")
            return problem(
                "Another portal answered",
                f"You chose {record['host']}, but the answer came from another portal.",
                "Go back to your assistant and connect again, naming the portal you sign in to.",
                403,
            )
        token_url = self.config.token_endpoints.get(query.get("server_domain", "").lower())
        if token_url is None:
            log.warning("sign-in callback refused: server_domain is not an allowed OAuth server")
            metrics.refusal("untrusted_oauth_server")
            return problem(
                "Unknown Bitrix24 OAuth server",
                "The portal named an OAuth server this server does not trust.",
                "Ask the operator of this server to check its Bitrix24 settings.",
                403,
            )
        try:
            grant = await self._complete(record, query.get("code", ""), token_url)
        except BitrixError as exc:
            log.warning("sign-in to %s failed: %s", record["host"], exc.code)
            metrics.sign_in("failed")
            return problem(
                "Bitrix24 did not sign you in",
                _failure_text(exc),
                "Go back to your assistant and connect again; if it happens again, ask your Bitrix24 administrator.",
                502 if exc.retryable else 400,
            )
        code = new_token()
        await self.store.put_code(
            code,
            grant.grant_id,
            {
                "client_id": record["client_id"],
                "redirect_uri": record["redirect_uri"],
                "redirect_uri_provided_explicitly": record["redirect_uri_provided_explicitly"],
                "code_challenge": record["code_challenge"],
                "scopes": record["scopes"],
                "resource": record["resource"],
                "expires_at": time.time() + CODE_TTL,
            },
            time.time() + CODE_TTL,
        )
        log.info("signed in: portal %s, user %s, client %r", record["host"], grant.user_id, grant.client_name)
        metrics.sign_in("signed_in")
        target = construct_redirect_uri(record["redirect_uri"], code=code, state=record.get("state"))
        response = RedirectResponse(target, 302, {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        response.delete_cookie(STATE_COOKIE, path="/bitrix24/")
        return response

    async def _complete(self, record: dict[str, Any], code: str, token_url: str) -> Grant:
        """Exchange the code, read the user and the application, then store the portal, the pair and the grant."""
        query = {
            "grant_type": "authorization_code",
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "code": code,
        }
        pair, answer = await request_tokens(self.http, token_url, query, "sign-in")
        member_id = str(answer.get("member_id") or "")
        endpoint = str(answer.get("client_endpoint") or "")
        endpoint_parts = urlsplit(endpoint)
        if not member_id or endpoint_parts.netloc.lower() != record["host"]:
            raise BitrixError("invalid_grant", "the token answer names another portal or none", 400)
        portal_url = f"{endpoint_parts.scheme}://{endpoint_parts.netloc}"
        client = BitrixClient(AccessTokenAuth(portal_url, pair.access_token), http=self.http)
        user = (await client.call("profile", read_only=True)).result
        app = (await client.call("app.info", read_only=True)).result
        if not isinstance(user, dict) or not user.get("ID"):
            raise BitrixError("user_access_error", "the portal has no active user for this sign-in", 403)
        if isinstance(app, dict) and app.get("INSTALLED") is False:
            raise BitrixError("NOT_INSTALLED", "the application is not installed on this portal", 403)
        user_id = int(user["ID"])
        name = " ".join(part for part in (str(user.get("NAME") or ""), str(user.get("LAST_NAME") or "")) if part)
        await self.store.save_portal(Portal(member_id, record["host"], endpoint, token_url))
        await self.store.save_pair(member_id, user_id, pair, spent=None)
        grant = Grant(
            new_token(),
            record["client_id"],
            record["client_name"],
            member_id,
            user_id,
            name or f"user {user_id}",
            None,
            False,
            time.time(),
        )
        await self.store.add_grant(grant)
        return grant


def _redirect_target(uri: str) -> str:
    """The client's redirect URI as a form-action source, since the Allow post ends there: its origin (https, or
    loopback http), or its scheme for a native client's private-use scheme (`cursor:`); nothing for a URI that
    would not make a plain source (it could not add a directive: the redirect is then refused, never widened)."""
    parts = urlsplit(uri)
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    if not _SCHEME.match(scheme):
        return ""
    if scheme in ("http", "https"):
        return f" {scheme}://{netloc}" if _NETLOC.match(netloc) else ""
    return f" {scheme}:"


def _failure_text(exc: BitrixError) -> str:
    if exc.code == "invalid_grant":
        return "The sign-in code from Bitrix24 expired or was already used (it lives 30 seconds)."
    if exc.code == "invalid_client":
        return "Bitrix24 does not know this application on your portal: it may not be installed."
    if exc.code == "NOT_INSTALLED":
        return "The application is not installed on your portal."
    if exc.retryable:
        return "Bitrix24 could not be reached."
    return "Bitrix24 refused the sign-in."
