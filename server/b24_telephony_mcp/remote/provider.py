"""The SDK's authorization-server provider (`mcp.server.auth`) over the remote store: registered clients, the
authorization request handed to the sign-in page, authorization codes, MCP access and refresh tokens.

The SDK's routes do the protocol (metadata, registration, PKCE S256, exact redirect-URI match, the token and
revocation endpoints, the bearer middleware); this module decides what is stored and what is refused:

- registration accepts `https://` redirect URIs, loopback `http://`, and private-use schemes of native clients
  (`cursor://`, `vscode://`); never `javascript:`, `data:`, `file:` or plain `http://` to another host;
- an access token is bound to this server's MCP endpoint (RFC 8707) whatever the client asked, and a request
  naming another resource is refused;
- a replayed authorization code, or a refresh token used twice, revokes the grant it belongs to;
- a `client_id` that is an https URL is a client ID metadata document, fetched when it is used (never stored);
- a token's `subject` is its grant, which `RemoteConnections` turns into the user's connection.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl, PrivateAttr

from b24_telephony_mcp.config.settings import RemoteConfig
from b24_telephony_mcp.remote.crypto import SealError, new_token
from b24_telephony_mcp.remote.store import Access, RemoteStore, StoredToken

log = logging.getLogger(__name__)

SIGNIN_PATH = "/bitrix24/signin"
CALLBACK_PATH = "/bitrix24/callback"
REQUEST_TTL = 600.0
"""Seconds between the client's authorization request and the user's answer on the sign-in page and the portal."""
CODE_TTL = 300.0
MAX_METADATA_BYTES = 16 * 1024
REFUSED_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "blob", "about", "ftp", "ws", "wss"})


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def redirect_uri_refusal(uri: str) -> str | None:
    """Why a redirect URI may not be registered; None when it may."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        return f"{uri!r} has no scheme"
    if scheme in REFUSED_SCHEMES:
        return f"the {scheme}: scheme is not allowed for a redirect URI"
    if parts.fragment:
        return "a redirect URI must not have a fragment"
    if scheme == "https":
        return None if parts.hostname else f"{uri!r} has no host"
    if scheme == "http":
        if is_loopback(parts.hostname):
            return None
        return "plain http:// redirect URIs are accepted only for loopback hosts (127.0.0.1, [::1], localhost)"
    # A private-use scheme of a native client (RFC 8252 §7.1: cursor://, vscode://, com.example.app:/cb).
    if "." in scheme or scheme.isalpha():
        return None
    return f"the {scheme}: scheme is not allowed for a redirect URI"


class SignedInToken(AccessToken):
    """A valid access token with what its request is served with (its grant, portal and pair), read with it in one
    store read; `RemoteConnections` builds the request's connection from it."""

    _access: Access | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, token: str, stored: StoredToken, access: Access) -> SignedInToken:
        signed_in = cls(
            token=token,
            client_id=stored.client_id,
            scopes=list(stored.scopes),
            expires_at=int(stored.expires) if stored.expires is not None else None,
            resource=stored.resource,
            subject=stored.grant_id,
        )
        signed_in._access = access
        return signed_in

    @property
    def access(self) -> Access | None:
        return self._access


class BitrixAuthProvider:
    """`OAuthAuthorizationServerProvider` of remote mode: MCP clients sign in here, with a Bitrix24 user."""

    def __init__(self, config: RemoteConfig, store: RemoteStore, http: httpx2.AsyncClient) -> None:
        self.config = config
        self.store = store
        self.http = http
        """For client ID metadata documents."""

    # --- clients ---

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if "://" in client_id:
            return await self._metadata_document(client_id)
        record = await self.store.client(client_id)
        return OAuthClientInformationFull.model_validate(record) if record is not None else None

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        for uri in client_info.redirect_uris or ():
            refusal = redirect_uri_refusal(str(uri))
            if refusal is not None:
                raise RegistrationError("invalid_redirect_uri", refusal)
        if not client_info.redirect_uris:
            raise RegistrationError("invalid_redirect_uri", "at least one redirect URI is required")
        info = client_info.model_dump(mode="json", exclude_none=True)
        await self.store.save_client(client_info.client_id or "", info)
        log.info("registered MCP client %r", client_info.client_name or client_info.client_id)

    # --- client ID metadata documents (CIMD): a client_id that is the https URL of its own metadata ---

    async def _metadata_document(self, client_id: str) -> OAuthClientInformationFull | None:
        """The client a metadata document describes, fetched from its URL (no redirects, small, quick), when it
        names itself and only redirect URIs registration would accept; None otherwise."""
        if not self._may_fetch(client_id):
            return None
        try:
            response = await self.http.get(client_id, headers={"Accept": "application/json"}, timeout=5.0)
        except httpx2.HTTPError:
            log.warning("could not fetch a client metadata document")
            return None
        if response.status_code != 200 or len(response.content) > MAX_METADATA_BYTES:
            return None
        try:
            document = response.json()
        except ValueError:
            return None
        if not isinstance(document, dict) or document.get("client_id") != client_id:
            return None
        uris = document.get("redirect_uris")
        if not isinstance(uris, list) or not uris or any(redirect_uri_refusal(str(uri)) for uri in uris):
            return None
        if document.get("token_endpoint_auth_method", "none") != "none":
            return None  # a document holds no secret: only public clients
        try:
            return OAuthClientInformationFull.model_validate(
                {
                    "client_id": client_id,
                    "client_name": document.get("client_name"),
                    "redirect_uris": uris,
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                    "scope": document.get("scope"),
                }
            )
        except ValueError:
            return None

    def _may_fetch(self, client_id: str) -> bool:
        """https with a path; plain http only to loopback while the server itself is served on loopback (tests)."""
        parts = urlsplit(client_id)
        if parts.path in ("", "/") or parts.query or parts.fragment or not parts.hostname:
            return False
        testing = is_loopback(urlsplit(self.config.public_url).hostname)
        if parts.scheme == "http":
            return testing and is_loopback(parts.hostname)
        if parts.scheme != "https":
            return False
        try:  # an address of this network is not a client's public document (the server must not be a proxy)
            address = ipaddress.ip_address(parts.hostname.strip("[]"))
        except ValueError:
            return parts.hostname.lower() != "localhost" or testing
        return testing or address.is_global

    # --- authorization: the request waits for the user on the sign-in page ---

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.resource is not None and not self._is_our_resource(params.resource):
            # A page, not an error redirect: nothing goes back to the client before the user consented.
            return f"{self.config.public_url}{SIGNIN_PATH}?{urlencode({'problem': 'invalid_target'})}"
        request_id = new_token()
        record = {
            "kind": "request",
            "client_id": client.client_id,
            "client_name": client.client_name or client.client_id,
            "redirect_uri": str(params.redirect_uri),
            "redirect_uri_provided_explicitly": params.redirect_uri_provided_explicitly,
            "code_challenge": params.code_challenge,
            "state": params.state,
            "scopes": list(params.scopes or []),
            "resource": self.config.resource_url,
        }
        await self.store.put_signin(request_id, record, REQUEST_TTL)
        return f"{self.config.public_url}{SIGNIN_PATH}?{urlencode({'request': request_id})}"

    def _is_our_resource(self, resource: str) -> bool:
        return resource.rstrip("/") in (self.config.resource_url, self.config.public_url)

    # --- codes ---

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        stored = await self.store.code(authorization_code)
        if stored is None or stored.record.get("client_id") != client.client_id:
            return None
        if stored.used:  # a replay: whatever was issued from this code is revoked (RFC 6749 §4.1.2)
            await self.store.revoke_grant(stored.grant_id)
            log.warning("an authorization code was presented twice: grant revoked")
            return None
        record = stored.record
        return AuthorizationCode(
            code=authorization_code,
            scopes=record["scopes"],
            expires_at=record["expires_at"],
            client_id=record["client_id"],
            code_challenge=record["code_challenge"],
            redirect_uri=AnyUrl(record["redirect_uri"]),
            redirect_uri_provided_explicitly=record["redirect_uri_provided_explicitly"],
            resource=record["resource"],
            subject=stored.grant_id,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        assert authorization_code.subject is not None
        if not await self.store.spend_code(authorization_code.code):
            await self.store.revoke_grant(authorization_code.subject)
            raise TokenError("invalid_grant", "authorization code already used")
        return await self._issue(client, authorization_code.subject, authorization_code.scopes)

    # --- tokens ---

    async def _issue(self, client: OAuthClientInformationFull, grant_id: str, scopes: list[str]) -> OAuthToken:
        access, refresh = new_token(), new_token()
        ttl = self.config.access_token_ttl
        client_id = client.client_id or ""
        resource = self.config.resource_url
        await self.store.put_token(
            access, StoredToken("access", grant_id, client_id, tuple(scopes), resource, time.time() + ttl)
        )
        await self.store.put_token(refresh, StoredToken("refresh", grant_id, client_id, tuple(scopes), resource, None))
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=ttl,
            scope=" ".join(scopes) or None,
            refresh_token=refresh,
        )

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        stored = await self.store.token(refresh_token)
        if stored is None or stored.kind != "refresh" or stored.client_id != client.client_id:
            return None
        if stored.used:  # used twice: stolen, or a client gone wrong; either way the grant ends
            await self.store.revoke_grant(stored.grant_id)
            log.warning("a refresh token was used twice: grant revoked")
            return None
        return RefreshToken(
            token=refresh_token,
            client_id=stored.client_id,
            scopes=list(stored.scopes),
            resource=stored.resource,
            subject=stored.grant_id,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        assert refresh_token.subject is not None
        if not await self.store.spend_refresh_token(refresh_token.token):
            await self.store.revoke_grant(refresh_token.subject)
            raise TokenError("invalid_grant", "refresh token already used")
        if await self.store.grant(refresh_token.subject) is None:
            raise TokenError("invalid_grant", "the grant was revoked; sign in again")
        return await self._issue(client, refresh_token.subject, scopes)

    async def load_access_token(self, token: str) -> SignedInToken | None:
        try:
            found = await self.store.token_access(token)
        except SealError:
            log.warning("a signed-in user's Bitrix24 tokens open under no configured B24_TOKEN_KEY: sign in again")
            return None
        if found is None:  # unknown, or its grant, portal or pair is gone: 401, and the client signs in again
            return None
        stored, access = found
        if stored.kind != "access" or (stored.expires is not None and stored.expires < time.time()):
            return None
        return SignedInToken.of(token, stored, access)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        # Either token ends the sign-in it came from: the grant, its other tokens, its codes.
        if token.subject is not None:
            await self.store.revoke_grant(token.subject)

    def metadata_extension(self) -> dict[str, Any]:
        """What the SDK's authorization-server metadata lacks: public clients (`none`) and client ID metadata
        documents, both of which Claude looks for before it uses a document as its client_id."""
        return {
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "none"],
            "client_id_metadata_document_supported": True,
        }
