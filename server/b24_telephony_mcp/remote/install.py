"""`{public}/bitrix24/install`: the application's installation handler, answering the events Bitrix24 posts when the
application is installed on a portal or removed from it (form-encoded, PHP-style keys: `auth[application_token]`).

- `ONAPPINSTALL` keeps the portal's `application_token` (as a hash). Anyone can post a form, so the post is
  believed only once its `auth[access_token]` works on the portal it names (`app.info` there answers for this
  application), and never rebinds a `member_id` already known under another address; the posted access and refresh
  tokens are not kept. A sign-in that finds its portal under a new address forgets the application token (the
  token endpoint, not a post, says which `member_id` an address has).
- `ONAPPUNINSTALL` deletes every pair, grant and token of the portal, if its `auth[application_token]` is the one
  the installation gave; a wrong or missing one changes nothing and is logged.

Neither the tokens nor the application token are ever logged.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError
from b24_telephony_mcp.bitrix.auth import AccessTokenAuth
from b24_telephony_mcp.common import metrics
from b24_telephony_mcp.config.settings import RemoteConfig
from b24_telephony_mcp.events.online import php_form
from b24_telephony_mcp.remote.signin import normalize_portal
from b24_telephony_mcp.remote.store import Portal, RemoteStore

log = logging.getLogger(__name__)

INSTALL_PATH = "/bitrix24/install"


def _answer(status: int, result: str) -> Response:
    return JSONResponse({"result": result}, status, {"Cache-Control": "no-store"})


class Installation:
    def __init__(self, config: RemoteConfig, store: RemoteStore, http: httpx2.AsyncClient) -> None:
        self.config = config
        self.store = store
        self.http = http

    def routes(self) -> list[Route]:
        return [Route(INSTALL_PATH, self.handle, methods=["POST"])]

    async def handle(self, request: Request) -> Response:
        form = php_form((key, value) for key, value in (await request.form()).multi_items() if isinstance(value, str))
        auth = form.get("auth") if isinstance(form.get("auth"), dict) else {}
        event = str(form.get("event", "")).upper()
        member_id = str(auth.get("member_id", ""))
        application_token = str(auth.get("application_token", ""))
        if event == "ONAPPUNINSTALL":
            if member_id and application_token and await self.store.uninstall(member_id, application_token):
                log.info("application uninstalled from portal %s: its grants and tokens are deleted", member_id)
                return _answer(200, "uninstalled")
            log.warning("an uninstall post for portal %r was refused: missing or wrong application_token", member_id)
            metrics.refusal("install_uninstall")
            return _answer(403, "refused")
        if event != "ONAPPINSTALL":
            return _answer(400, "not an installation event")
        portal = await self._verified(auth, member_id, application_token)
        if portal is None:
            metrics.refusal("install_unverified")
            return _answer(403, "refused")
        await self.store.install(portal, application_token)
        log.info("application installed on portal %s (%s)", portal.domain, member_id)
        return _answer(200, "installed")

    async def _verified(self, auth: dict[str, object], member_id: str, application_token: str) -> Portal | None:
        """The portal of an install post whose access token works there for this application; None otherwise."""
        domain = str(auth.get("domain", ""))
        address = (
            normalize_portal(self.config.portal_url, self.config)
            if self.config.portal_url
            else normalize_portal(domain, self.config)
        )
        endpoint = str(auth.get("client_endpoint", ""))
        access_token = str(auth.get("access_token", ""))
        if (
            address is None
            or not member_id
            or not application_token
            or not access_token
            or address.host != domain.lower()
            or urlsplit(endpoint).netloc.lower() != address.host
        ):
            log.warning("an install post was refused: it names no portal this server serves, or no tokens")
            return None
        try:
            client = BitrixClient(AccessTokenAuth(address.origin, access_token), http=self.http)
            app = (await client.call("app.info", read_only=True)).result
        except BitrixError as exc:
            log.warning(
                "an install post for %s was refused: its access token does not work there (%s)", domain, exc.code
            )
            return None
        if not isinstance(app, dict) or str(app.get("CODE", self.config.client_id)) != self.config.client_id:
            log.warning("an install post for %s was refused: its token is another application's", domain)
            return None
        stored = await self.store.portal(member_id)
        if stored is not None and stored.domain != address.host:
            # member_id is what the post says, not what the token proves: a portal known under another address is
            # not rebound by a post (a sign-in, whose member_id comes from the token endpoint, may move it).
            log.warning("an install post for %s was refused: that member_id belongs to another portal", domain)
            return None
        server = urlsplit(str(auth.get("server_endpoint", ""))).netloc.lower()
        token_url = self.config.token_endpoints.get(server) or (
            stored.token_url if stored is not None else self.config.token_endpoints["oauth.bitrix.info"]
        )
        return Portal(member_id, address.host, f"{address.origin}/rest/", token_url)
