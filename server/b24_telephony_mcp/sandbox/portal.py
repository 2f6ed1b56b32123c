"""The emulated portal: the state REST methods work on (:class:`~.state.PortalState`) with its registry of
methods, plus tokens and OAuth and authentication, which no method handler touches, and the people's actions
that make events happen (:mod:`.actions`).

Pure Python, no HTTP; ``app.py`` serves it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from . import actions
from .calls import Caller
from .config import SandboxConfig
from .errors import (
    APP_NOT_INSTALLED,
    EXPIRED_TOKEN,
    INVALID_CREDENTIALS,
    INVALID_TOKEN,
    NO_AUTH_FOUND,
    OAUTH_INVALID_CLIENT,
    OAUTH_INVALID_CODE,
    OAUTH_INVALID_GRANT,
    OAUTH_INVALID_REQUEST,
)
from .methods import METHODS
from .php import php_form_pairs, php_str
from .records import APP_ID
from .state import PortalState

#: Lifetime of an authorization code (settings/oauth/index.md: "The lifetime of the authorization code is 30 s").
AUTH_CODE_TTL = 30.0


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: float
    user_id: int


class SandboxPortal(PortalState):
    """The emulated portal, dispatching to every method in :data:`~.methods.METHODS`. Thread-safe: every public
    entry point holds ``lock``."""

    def __init__(self, config: SandboxConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(METHODS, config, clock)
        self._access_tokens: dict[str, TokenPair] = {}
        self._refresh_tokens: dict[str, TokenPair] = {}
        self._auth_codes: dict[str, tuple[float, int]] = {}  # code -> (expires at, user id)
        self.oauth_url = ""
        """The OAuth server's address when portals share one (start_sandboxes); "" for this portal's own."""
        self.oauth_peers: tuple[SandboxPortal, ...] = ()
        """The other portals of that OAuth server, whose codes and refresh tokens its token endpoint exchanges."""

    # --- what people do (the control surface; see actions.py) ---

    # The actions take the portal first, so they are its methods as they are: one signature, kept in actions.py.
    click_to_call = actions.click_to_call
    submit_callback_form = actions.submit_callback_form

    # --- OAuth ---

    def issue_tokens(self, user_id: int = 1) -> TokenPair:
        """Issue a fresh token pair to the app (what installation or a refresh hands out)."""
        with self.lock:
            pair = TokenPair(
                access_token=secrets.token_hex(35),
                refresh_token=secrets.token_hex(35),
                expires_at=self.clock() + self.config.access_token_ttl,
                user_id=user_id,
            )
            self._access_tokens[pair.access_token] = pair
            self._refresh_tokens[pair.refresh_token] = pair
            return pair

    def event_access_token(self, user_id: int) -> str:
        return self.issue_tokens(user_id).access_token

    def installation_form(self, user_id: int = 1) -> list[tuple[str, str]]:
        """What the portal posts to the application's installation handler once it is installed (ONAPPINSTALL,
        app-installation docs): a fresh token pair of the installing user, the portal's identity and the
        application token its events will carry. ``server_endpoint`` is the OAuth server's, as on the cloud."""
        tokens = self.issue_tokens(user_id)
        auth = {
            "access_token": tokens.access_token,
            "expires_in": int(self.config.access_token_ttl),
            "scope": self.config.scopes,
            "domain": urlsplit(self.base_url).netloc,
            "server_endpoint": f"{self.oauth_url or self.base_url}/rest/",
            "status": "L",
            "client_endpoint": f"{self.base_url}/rest/",
            "member_id": self.member_id,
            "user_id": user_id,
            "refresh_token": tokens.refresh_token,
            "application_token": self.config.application_token,
        }
        data = {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"}
        return php_form_pairs({"event": "ONAPPINSTALL", "data": data, "ts": int(self.clock()), "auth": auth})

    def authenticate_token(self, token: str | None) -> Caller:
        if not token:
            raise NO_AUTH_FOUND.exc()
        with self.lock:
            pair = self._access_tokens.get(token)
            if pair is None:
                raise INVALID_TOKEN.exc()
            if self.clock() >= pair.expires_at:
                raise EXPIRED_TOKEN.exc()
        return Caller("oauth", pair.user_id, client_id=self.config.client_id, app_id=APP_ID, access_token=token)

    def authenticate_webhook(self, user_id: str, code: str) -> Caller:
        expected = (str(self.config.webhook_user_id), self.config.webhook_code)
        if (user_id, code) != expected:
            raise INVALID_CREDENTIALS.exc()
        return Caller("webhook", self.config.webhook_user_id)

    def expire_all_tokens(self, user_id: int | None = None) -> int:
        """Make every issued access token expired (only `user_id`'s, if given); returns how many that was."""
        with self.lock:
            past = self.clock() - 1
            chosen = {token: pair for token, pair in self._access_tokens.items() if user_id in (None, pair.user_id)}
            for token, pair in chosen.items():
                expired = TokenPair(pair.access_token, pair.refresh_token, past, pair.user_id)
                self._access_tokens[token] = expired
                self._refresh_tokens[pair.refresh_token] = expired
            return len(chosen)

    def authorize(self, params: Mapping[str, Any], user_id: int = 1) -> str:
        """/oauth/authorize/: the user (already signed in, approving at once) is sent back to the app's handler
        path with a single-use code that lives 30 s. Returns that redirect address."""
        if params.get("client_id") != self.config.client_id:
            raise OAUTH_INVALID_CLIENT.exc()
        if not self.config.app_installed:
            raise APP_NOT_INSTALLED.exc()
        code = secrets.token_hex(16)
        with self.lock:
            self._auth_codes[code] = (self.clock() + AUTH_CODE_TTL, user_id)
        answer = {
            "code": code,
            "state": php_str(params.get("state")),
            "domain": urlsplit(self.base_url).netloc,
            "member_id": self.member_id,
            "scope": self.config.scopes,
            "server_domain": urlsplit(self.oauth_url or self.base_url).netloc,
        }
        separator = "&" if "?" in self.config.handler_url else "?"
        return f"{self.config.handler_url}{separator}{urlencode(answer)}"

    def oauth_token(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The /oauth/token/ endpoint: `authorization_code` (a code works once, within 30 s) and `refresh_token`
        (single-use: using one revokes it and its access token), answered by the portal that issued it."""
        owner = next((peer for peer in self.oauth_peers if peer._issued(params)), self)
        return owner._exchange(params)

    def _issued(self, params: Mapping[str, Any]) -> bool:
        with self.lock:
            return php_str(params.get("code")) in self._auth_codes or (
                php_str(params.get("refresh_token")) in self._refresh_tokens
            )

    def _exchange(self, params: Mapping[str, Any]) -> dict[str, Any]:
        grant = params.get("grant_type")
        if grant not in ("refresh_token", "authorization_code"):
            raise OAUTH_INVALID_REQUEST.exc()
        if params.get("client_id") != self.config.client_id or params.get("client_secret") != self.config.client_secret:
            raise OAUTH_INVALID_CLIENT.exc()
        if not self.config.app_installed:
            raise OAUTH_INVALID_CLIENT.exc()  # error-codes.md: "The application may not be installed"
        with self.lock:
            if grant == "authorization_code":
                expires_at, user_id = self._auth_codes.pop(php_str(params.get("code")), (0.0, 0))
                if self.clock() >= expires_at:
                    raise OAUTH_INVALID_CODE.exc()
                return self.token_response(self.issue_tokens(user_id))
            used = self._refresh_tokens.pop(php_str(params.get("refresh_token")), None)
            if used is None:
                raise OAUTH_INVALID_GRANT.exc()
            self._access_tokens.pop(used.access_token, None)
            pair = self.issue_tokens(used.user_id)
            self.stats.refreshes += 1
        return self.token_response(pair)

    def token_response(self, pair: TokenPair) -> dict[str, Any]:
        return {
            "access_token": pair.access_token,
            "expires_in": int(self.config.access_token_ttl),
            "expires": int(pair.expires_at),
            "refresh_token": pair.refresh_token,
            "scope": self.config.scopes,
            "domain": urlsplit(self.base_url).netloc,
            "server_endpoint": f"{self.base_url}/rest/",
            "client_endpoint": f"{self.base_url}/rest/",
            "member_id": self.member_id,
            "status": "L",
            "user_id": pair.user_id,
        }
