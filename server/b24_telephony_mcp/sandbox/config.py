"""The sandbox portal's knobs (:class:`SandboxConfig`): credentials, token lifetime, rate limit, granted scopes,
and the choices where the docs and the server source disagree."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

#: Scopes granted to the sandbox app's tokens (and to its webhook) unless the config says otherwise.
SANDBOX_SCOPE = "telephony,call,crm,user"


@dataclass
class SandboxConfig:
    """Knobs of the emulated portal; the defaults mirror a cloud portal on a non-Enterprise plan."""

    client_id: str = "local.sandbox0000000000.00000001"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: The installation's secret that every event's auth[application_token] carries (ONAPPINSTALL hands it to
    #: the app; a handler compares it to tell the portal's POSTs from forgeries, safe-event-handlers.md).
    application_token: str = field(default_factory=lambda: secrets.token_hex(16))
    webhook_user_id: int = 1
    webhook_code: str = field(default_factory=lambda: secrets.token_hex(8))
    access_token_ttl: float = 3600.0
    rate_limit: float = 2.0
    rate_burst: int = 50
    # The docs call method-specific failures ERROR_CORE; the server throws them without a code (""), as seen
    # on a live portal (disagreements.md #1).
    error_core_code: str = ""
    # Docs: externalLine.* and externalCall.register/finish are app-only. Source: webhooks are accepted
    # (disagreements.md #2).
    webhook_app_only: bool = True
    # Newest source auto-creates an unknown LINE_NUMBER on register; older source errors (disagreements.md #5).
    unknown_line_autocreate: bool = True
    #: Comma-separated scopes granted to the app's tokens (reported in token responses) and to the webhook.
    scopes: str = SANDBOX_SCOPE
    webhook_scopes: str = SANDBOX_SCOPE
    #: Rows of call history voximplant.statistic.get serves beside the calls finished here (ids 1..seed_calls).
    seed_calls: int = 300
    #: The administrator's answer to this app's request to call voximplant.user.get (CRestServer::
    #: requestConfirmation): approved, still waiting (METHOD_CONFIRM_WAITING) or denied (METHOD_CONFIRM_DENIED).
    user_get_confirmation: Literal["approved", "waiting", "denied"] = "approved"
    #: The application's handler path: where /oauth/authorize/ sends the browser back (the app settings hold it
    #: on a real portal; `login` listens here by default).
    handler_url: str = "http://localhost:8765/"
    #: False: the app was added but not installed; /oauth/authorize/ refuses it and the token endpoint answers
    #: invalid_client, as the docs describe; app.info reports INSTALLED false.
    app_installed: bool = True
    #: The plan, as app.info reports it (a non-Enterprise plan, matching the default rate limit).
    license: str = "en_pro100"
