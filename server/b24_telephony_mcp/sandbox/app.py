"""HTTP face of the sandbox portal: a Starlette app emulating a Bitrix24 portal and its OAuth server.

Routes
------
``GET|POST /rest/<method>[.json]``
    App mode. Token from ``Authorization: Bearer``, else the ``auth`` param, else ``access_token``.
``GET|POST /rest/<user_id>/<code>/<method>[.json]``
    Incoming-webhook mode.
``POST /rest/api/<method>``, ``POST /rest/api/<user_id>/<code>/<method>``
    REST 3.0, app mode (token in the JSON body field ``auth``, or Bearer) and webhook mode. Only a JSON body
    is read (no query string); another body answers ``BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION``. A method
    without params may be called by GET. Errors go out in the REST 3.0 envelope
    ``{"error": {"code", "message", "validation"?}}``. Only REST 3.0 methods are found here, and only REST 2
    methods under ``/rest/`` (else 404 ``ERROR_METHOD_NOT_FOUND``).
``GET /oauth/authorize/?client_id=...&state=...``
    The signed-in user (user 1, or the one ``/_sandbox/sign-in-as`` chose for this browser) approves at once: 302
    to the app's handler path (``SandboxConfig.handler_url``) with ``code`` (single-use, 30 s), ``state``,
    ``domain``, ``member_id``, ``scope``, ``server_domain``. An unknown
    client or an app that is not installed gets an HTML error page and no redirect, as on a real portal.
    Portals started together (``start_sandboxes``) share one OAuth server, as the cloud's portals share
    oauth.bitrix.info: ``server_domain`` names the first portal, whose ``/oauth/token/`` exchanges any of their
    codes and refresh tokens.
``GET|POST /oauth/token/``
    ``grant_type=authorization_code`` (``code``) or ``refresh_token``; refresh tokens rotate and are single-use.

REST 2 params come from the query string merged with the body (body wins): JSON when Content-Type is
``application/json``, otherwise form or multipart fields with PHP-style keys (``MESSAGES[0][SIDE]=Client``).

Test-control endpoints (test hooks, answered to loopback clients only; not part of Bitrix24)
--------------------------------------------------------------------------------------------
``POST /_sandbox/faults``
    JSON ``{"method": "<rest method, case-insensitive, or *>", "status": 500, "body": "<text>",
    "content_type": "text/html", "count": 1, "process": false, "headers": {}}``: the next ``count`` matching REST
    requests get this canned response instead of being processed (they still count in the stats); with
    ``"process": true`` they run first and only their answer is replaced (the portal did the work, the client never
    hears); ``headers`` such as ``{"Location": ...}`` with status 302 stage a portal that moved. Inside a ``batch``,
    a command of a method named here (not ``*``) fails with the body's ``{error, error_description}`` in
    ``result_error`` (``INTERNAL_SERVER_ERROR`` for another body). ``DELETE`` drops queued faults.
``POST /_sandbox/expire-tokens[?user_id=N]``
    Every access token issued so far (only user N's, if given) is now expired (refresh tokens stay usable).
``GET /_sandbox/stats``
    ``{"requests": {"<lower-cased method>": n}, "batched": {"<lower-cased method>": n}, "refreshes": n,
    "limited": n, "token_requests": n}``: HTTP requests per method (a ``batch`` is one), the commands run inside
    batches per method (the key appears once a batch ran), successful refresh grants, requests the leaky bucket
    refused with 503, and requests that reached the token endpoint.
``POST /_sandbox/reset-stats``
    Zero the stats.
``GET /_sandbox/app``, ``POST /_sandbox/app``
    The application's ``client_id``, ``client_secret``, ``handler_url`` and ``application_token`` (what every
    event's ``auth[application_token]`` carries), and the portal's ``member_id``; POST JSON ``{"handler_url": ...}``
    changes the handler path (``login --sandbox`` points it at its listener).
``POST /_sandbox/click``
    JSON ``{"phone": "+1 906 219 5047", "user_id": 1, "line_number": "...", "crm_entity_type": "CONTACT",
    "crm_entity_id": 651, "is_mobile": false, "call_list_id": 0}`` (only ``phone`` required): the user clicks the
    number in CRM. The portal registers an outgoing call on the app's external line (the first one unless
    ``line_number``) and fires OnExternalCallStart (plus OnVoximplantCallInit/Start); answers ``{"result": <the
    event's data>}``, whose ``CALL_ID`` telephony.externalCall.finish takes.
``POST /_sandbox/callback-form``
    JSON ``{"phone": ..., "text": ..., "voice": ..., "line_number": ...}`` (only ``phone`` required): a site
    visitor orders a callback; fires OnExternalCallBackStart and answers ``{"result": <the event's data>}``.
``POST /_sandbox/install``
    JSON ``{"url": "https://.../bitrix24/install", "user_id": 1}`` (only ``url`` required): the application is
    installed (again) by user N; the portal posts ONAPPINSTALL to ``url`` as Bitrix24 does (form-encoded, PHP-style
    keys: a fresh token pair, ``member_id``, ``application_token``), and answers ``{"result": {"status": <the
    handler's HTTP status>}}``.
``GET /_sandbox/sign-in-as?user_id=N``
    This browser (a cookie) is signed in to the portal as user N: its next ``/oauth/authorize/`` approves for them.
``POST /_sandbox/oauth-delay``
    JSON ``{"seconds": 2.0}``: the token endpoint holds each request that long before it reads the grant; a client
    that hangs up meanwhile (a process killed mid-refresh) has spent nothing. ``0`` ends the delay.

Events (``event.bind`` and the offline queue, see ``methods/events.py``) fire for bound handlers only: an
offline handler's go into the queue, an online handler's are POSTed form-encoded from a background thread.

The leaky bucket and the request stats count REST 2 and REST 3.0 requests alike (a ``batch`` of 50 commands is
one request, as on a real portal), never the OAuth or control endpoints.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from b24_telephony_mcp.common.net import is_loopback_host

from .calls import Caller, Fault, envelope, time_block
from .errors import METHOD_NOT_FOUND, QUERY_LIMIT_EXCEEDED, V3_INVALID_JSON, ApiVersion, SandboxRestError
from .php import php_params
from .portal import SandboxPortal
from .records import UploadedFile

logger = logging.getLogger(__name__)

_AUTH_PARAMS = ("auth", "access_token")
SIGNED_IN_COOKIE = "sandbox_user"
"""Which portal user the browser is signed in as (`/_sandbox/sign-in-as`); user 1 without it."""
# The operating-limit window the time block reports (limits.md: 10 one-minute buckets).
_OPERATING_WINDOW = 600


# --- request params ---


async def _request_params(request: Request) -> dict[str, Any]:
    """Query string merged with the body, body wins (CRestUtil::getRequestData uses array_replace)."""
    params = php_params(parse_qsl(request.url.query, keep_blank_values=True))
    if request.method != "POST":
        return params
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}  # invalid JSON silently becomes empty params, like the server
        params.update(body if isinstance(body, dict) else {})
    elif content_type == "multipart/form-data":
        form = await request.form()
        pairs: list[tuple[str, Any]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                pairs.append((key, UploadedFile(value.filename or "", await value.read())))
            else:
                pairs.append((key, value))
        params.update(php_params(pairs))
    else:
        body_text = (await request.body()).decode("utf-8", errors="replace")
        params.update(php_params(parse_qsl(body_text, keep_blank_values=True)))
    return params


async def _json_body_params(request: Request) -> dict[str, Any]:
    """REST 3.0 params: only a JSON object body counts; the query string is ignored."""
    body = await request.body()
    if not body.strip():  # a method without params may be called by GET or with an empty POST
        return {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise V3_INVALID_JSON.exc()
    try:
        params = json.loads(body)
    except ValueError:
        raise V3_INVALID_JSON.exc() from None
    if not isinstance(params, dict):
        raise V3_INVALID_JSON.exc()
    return params


def _take_token(request: Request, params: dict[str, Any]) -> str | None:
    """Bearer header first, then ``auth``, then ``access_token`` (oauth Auth::getAuthKey order)."""
    found = [params.pop(name, None) for name in _AUTH_PARAMS]
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return next((value for value in found if isinstance(value, str) and value), None)


# --- responses ---


def _error(exc: SandboxRestError, api: ApiVersion = 2) -> JSONResponse:
    return JSONResponse(exc.payload(api), status_code=exc.status)


def _time_block(start: float, finish: float) -> dict[str, Any]:
    return {**time_block(start, finish), "operating_reset_at": int(start) + _OPERATING_WINDOW, "operating": 0}


def _fault_response(fault: Fault) -> Response:
    return Response(fault.body, status_code=fault.status, headers=fault.headers, media_type=fault.content_type)


# --- HTTP-only behaviour: leaky bucket, fault injection ---


class LeakyBucket:
    """Per-portal request-intensity limiter: +1 per request, drains at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.level = 0.0
        self._last = time.monotonic()

    def admit(self) -> bool:
        now = time.monotonic()
        self.level = max(0.0, self.level - (now - self._last) * self.rate)
        self._last = now
        if self.level + 1 > self.burst:
            return False
        self.level += 1
        return True


class SandboxHttp:
    """Request handlers bound to one portal, plus the HTTP-level state (the bucket)."""

    def __init__(self, portal: SandboxPortal) -> None:
        self.portal = portal
        self.bucket = LeakyBucket(portal.config.rate_limit, portal.config.rate_burst)
        self.oauth_delay = 0.0

    def _learn_base_url(self, request: Request) -> None:
        # create_app() may serve a portal the runner did not set up; its URL is then known on first contact.
        if not self.portal.base_url:
            self.portal.base_url = str(request.base_url).rstrip("/")

    async def rest(self, request: Request) -> Response:
        start = time.time()
        self._learn_base_url(request)
        segments = request.path_params["path"].strip("/").split("/")
        api: ApiVersion = 2
        if segments[0] == "api" and len(segments) > 1:
            api, segments = 3, segments[1:]
        method = segments[-1].removesuffix(".json").lower()
        with self.portal.lock:
            self.portal.stats.requests[method] += 1
        fault = self.portal.take_fault(method)
        if fault is not None and not fault.process:
            return _fault_response(fault)
        if not self.bucket.admit():
            with self.portal.lock:
                self.portal.stats.limited += 1
            return _error(QUERY_LIMIT_EXCEEDED.exc(), api)
        try:
            params = await (_json_body_params(request) if api == 3 else _request_params(request))
            caller = self._authenticate(segments, _take_token(request, params))
            if caller.auth_type == "oauth":
                with self.portal.lock:
                    self.portal.stats.callers[caller.user_id] += 1
            result = self.portal.call(method, params, caller, api)
        except SandboxRestError as exc:
            return _error(exc, api) if fault is None else _fault_response(fault)
        if fault is not None:  # it ran, but its answer is lost
            return _fault_response(fault)
        return JSONResponse({**envelope(result), "time": _time_block(start, time.time())})

    def _authenticate(self, segments: list[str], token: str | None) -> Caller:
        """``segments``: the path after ``/rest/`` (and after ``api/`` for REST 3.0)."""
        if len(segments) == 3:
            return self.portal.authenticate_webhook(segments[0], segments[1])
        if len(segments) == 1:
            return self.portal.authenticate_token(token)
        raise METHOD_NOT_FOUND.exc()

    async def oauth_token(self, request: Request) -> Response:
        self._learn_base_url(request)
        params = await _request_params(request)
        with self.portal.lock:
            self.portal.stats.token_requests += 1
        if self.oauth_delay > 0:
            await anyio.sleep(self.oauth_delay)
            if await request.is_disconnected():
                return Response(status_code=499)  # nobody to hand a new pair to: the grant is not read
        try:
            return JSONResponse(self.portal.oauth_token(params))
        except SandboxRestError as exc:
            return _error(exc)

    async def oauth_authorize(self, request: Request) -> Response:
        self._learn_base_url(request)
        signed_in = request.cookies.get(SIGNED_IN_COOKIE, "")
        try:
            location = self.portal.authorize(dict(request.query_params), int(signed_in) if signed_in.isdigit() else 1)
        except SandboxRestError as exc:
            page = f"<!doctype html><title>Authorization error</title><p>{html.escape(exc.description)}</p>"
            return HTMLResponse(page, status_code=exc.status)
        return RedirectResponse(location, status_code=302)

    # --- control endpoints ---

    async def app_settings(self, request: Request) -> Response:
        config = self.portal.config
        if request.method == "POST":
            try:
                handler_url = json.loads(await request.body() or b"{}")["handler_url"]
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": "INVALID_APP", "error_description": "expected handler_url"}, 400)
            config.handler_url = str(handler_url)
        return JSONResponse(
            {
                "client_id": config.client_id,
                "client_secret": config.client_secret,
                "handler_url": config.handler_url,
                "application_token": config.application_token,
                "member_id": self.portal.member_id,
            }
        )

    async def click(self, request: Request) -> Response:
        return await self._act(request, "INVALID_CLICK", self._click)

    async def callback_form(self, request: Request) -> Response:
        return await self._act(request, "INVALID_CALLBACK_FORM", self._callback_form)

    def _click(self, body: dict[str, Any]) -> dict[str, str]:
        return self.portal.click_to_call(
            int(body.get("user_id", 1)),
            _required_text(body, "phone"),
            line_number=_optional_text(body, "line_number"),
            crm_entity_type=_optional_text(body, "crm_entity_type"),
            crm_entity_id=int(body["crm_entity_id"]) if body.get("crm_entity_id") is not None else None,
            is_mobile=bool(body.get("is_mobile", False)),
            call_list_id=int(body.get("call_list_id", 0)),
        )

    def _callback_form(self, body: dict[str, Any]) -> dict[str, str]:
        texts = {key: str(body[key]) for key in ("text", "voice") if body.get(key) is not None}
        return self.portal.submit_callback_form(
            _required_text(body, "phone"), line_number=_optional_text(body, "line_number"), **texts
        )

    async def _act(self, request: Request, code: str, action: Callable[[dict[str, Any]], dict[str, str]]) -> Response:
        """Run a person's action from a JSON body; a bad body or an action the portal refuses is a 400 ``code``,
        a REST error on the way (an inactive user) is that error."""
        self._learn_base_url(request)
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            return JSONResponse({"result": action(body)})
        except SandboxRestError as exc:
            return _error(exc)
        except (ValueError, TypeError) as exc:  # a bad body, or actions.ActionError (no such app line)
            return JSONResponse({"error": code, "error_description": str(exc)}, status_code=400)

    async def install(self, request: Request) -> Response:
        """Post ONAPPINSTALL to the application's installation handler (which may call back here to check it)."""
        self._learn_base_url(request)
        try:
            body = json.loads(await request.body() or b"{}")
            url, user_id = str(body["url"]), int(body.get("user_id", 1))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": "INVALID_INSTALL", "error_description": str(exc)}, status_code=400)
        form = self.portal.installation_form(user_id)
        async with httpx2.AsyncClient(timeout=10) as http:
            try:
                answer = await http.post(url, data=dict(form))
            except httpx2.HTTPError as exc:
                return JSONResponse({"error": "INSTALL_FAILED", "error_description": str(exc)}, status_code=502)
        return JSONResponse({"result": {"status": answer.status_code}})

    async def add_fault(self, request: Request) -> Response:
        try:
            fault = Fault.from_json(json.loads(await request.body() or b"{}"))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": "INVALID_FAULT", "error_description": str(exc)}, status_code=400)
        with self.portal.lock:
            self.portal.faults.append(fault)
            queued = len(self.portal.faults)
        return JSONResponse({"result": True, "queued": queued})

    async def clear_faults(self, request: Request) -> Response:
        with self.portal.lock:
            self.portal.faults.clear()
        return JSONResponse({"result": True})

    async def expire_tokens(self, request: Request) -> Response:
        user_id = request.query_params.get("user_id")
        return JSONResponse(
            {"result": True, "expired": self.portal.expire_all_tokens(int(user_id) if user_id else None)}
        )

    async def stats(self, request: Request) -> Response:
        with self.portal.lock:
            return JSONResponse(self.portal.stats.as_dict())

    async def reset_stats(self, request: Request) -> Response:
        self.portal.reset_stats()
        return JSONResponse({"result": True})

    async def sign_in_as(self, request: Request) -> Response:
        """The browser is signed in to the portal as this user: /oauth/authorize/ approves for them."""
        user_id = request.query_params.get("user_id", "")
        if not user_id.isdigit() or int(user_id) not in self.portal.users:
            return JSONResponse({"error": "user_id must be one of the portal's users"}, status_code=400)
        response = Response(status_code=204)
        response.set_cookie(SIGNED_IN_COOKIE, user_id, httponly=True, samesite="lax")
        return response

    async def set_oauth_delay(self, request: Request) -> Response:
        try:
            seconds = float(json.loads(await request.body() or b"{}")["seconds"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "INVALID_DELAY", "error_description": "expected seconds"}, status_code=400)
        self.oauth_delay = max(0.0, seconds)
        return JSONResponse({"result": True})


def _required_text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected {key}")
    return value


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return None if value is None else str(value)


Endpoint = Callable[[Request], Awaitable[Response]]


def _loopback_only(handler: Endpoint) -> Endpoint:
    """Control endpoints are test hooks: refuse them to anything but loopback clients."""

    async def guarded(request: Request) -> Response:
        host = request.client.host if request.client else None
        if host is not None and not is_loopback_host(host):
            return JSONResponse({"error": "ACCESS_DENIED", "error_description": "Loopback only"}, status_code=403)
        return await handler(request)

    return guarded


def create_app(portal: SandboxPortal) -> Starlette:
    """The Starlette app serving ``portal``. Its HTTP-level state is reachable as ``app.state.sandbox``."""
    http = SandboxHttp(portal)
    rest_methods = ["GET", "POST"]
    routes = [
        Route("/rest/{path:path}", http.rest, methods=rest_methods),
        Route("/oauth/token/", http.oauth_token, methods=rest_methods),
        Route("/oauth/token", http.oauth_token, methods=rest_methods),
        Route("/oauth/authorize/", http.oauth_authorize, methods=["GET"]),
        Route("/oauth/authorize", http.oauth_authorize, methods=["GET"]),
        Route("/_sandbox/app", _loopback_only(http.app_settings), methods=["GET", "POST"]),
        Route("/_sandbox/faults", _loopback_only(http.add_fault), methods=["POST"]),
        Route("/_sandbox/faults", _loopback_only(http.clear_faults), methods=["DELETE"]),
        Route("/_sandbox/expire-tokens", _loopback_only(http.expire_tokens), methods=["POST"]),
        Route("/_sandbox/stats", _loopback_only(http.stats), methods=["GET"]),
        Route("/_sandbox/reset-stats", _loopback_only(http.reset_stats), methods=["POST"]),
        Route("/_sandbox/oauth-delay", _loopback_only(http.set_oauth_delay), methods=["POST"]),
        Route("/_sandbox/install", _loopback_only(http.install), methods=["POST"]),
        Route("/_sandbox/sign-in-as", _loopback_only(http.sign_in_as), methods=["GET"]),
        Route("/_sandbox/click", _loopback_only(http.click), methods=["POST"]),
        Route("/_sandbox/callback-form", _loopback_only(http.callback_form), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = http
    return app
