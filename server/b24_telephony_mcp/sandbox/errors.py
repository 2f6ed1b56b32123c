"""Errors as the sandbox portal sends them: platform, auth and OAuth errors, in the REST 2 or REST 3.0 envelope.

Method-specific message texts live with their method module (``methods/<toolset>.py``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

#: The REST version of a route and of a method: 2 for ``/rest/...``, 3 for ``/rest/api/...``.
ApiVersion = Literal[2, 3]


class SandboxRestError(Exception):
    """A REST error. REST 2 sends ``{"error": code, "error_description": description}``; REST 3.0 sends
    ``{"error": {"code", "message", "validation"?: [{"field", "message"}]}}``."""

    def __init__(
        self, code: str, description: str, status: int = 400, validation: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(f"{code or '<empty>'}: {description}")
        self.code = code
        self.description = description
        self.status = status
        self.validation = validation

    def payload(self, api: ApiVersion = 2) -> dict[str, Any]:
        if api == 2:
            return {"error": self.code, "error_description": self.description}
        error: dict[str, Any] = {"code": self.code, "message": self.description}
        if self.validation is not None:
            error["validation"] = self.validation
        return {"error": error}


class ErrorSpec(NamedTuple):
    """An error with a fixed code and HTTP status (auth, platform and OAuth errors)."""

    code: str
    description: str
    status: int

    def exc(self) -> SandboxRestError:
        return SandboxRestError(self.code, self.description, self.status)


# Auth-stage errors are OAuthException in source, which is always 401 (disagreements.md #7).
NO_AUTH_FOUND = ErrorSpec("NO_AUTH_FOUND", "Wrong authorization data", 401)
INVALID_TOKEN = ErrorSpec("invalid_token", "Unable to get application by token", 401)
EXPIRED_TOKEN = ErrorSpec("expired_token", "The access token provided has expired", 401)
INVALID_CREDENTIALS = ErrorSpec("INVALID_CREDENTIALS", "Invalid request credentials", 401)
# Messages: oauth Auth (app token) and APAuth (webhook); 401 per source, 403 per docs (disagreements.md #7).
INSUFFICIENT_SCOPE = ErrorSpec(
    "insufficient_scope", "The request requires higher privileges than provided by the access token", 401
)
INSUFFICIENT_SCOPE_WEBHOOK = ErrorSpec(
    "insufficient_scope", "The request requires higher privileges than provided by the webhook token", 401
)
WRONG_AUTH_TYPE = ErrorSpec("WRONG_AUTH_TYPE", "Current authorization type is denied for this method", 403)
# Bitrix\Rest\AccessException: the user lacks a module permission (e.g. telephony "Manage numbers - modify").
ACCESS_DENIED = ErrorSpec("ACCESS_DENIED", "Access denied!", 403)
METHOD_NOT_FOUND = ErrorSpec("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)
QUERY_LIMIT_EXCEEDED = ErrorSpec("QUERY_LIMIT_EXCEEDED", "Too many requests", 503)
OAUTH_INVALID_REQUEST = ErrorSpec(
    "invalid_request", "Unsupported grant_type, only authorization_code and refresh_token are supported", 400
)
OAUTH_INVALID_CLIENT = ErrorSpec("invalid_client", "Invalid client_id or client_secret", 401)
OAUTH_INVALID_GRANT = ErrorSpec("invalid_grant", "Invalid refresh token", 400)
OAUTH_INVALID_CODE = ErrorSpec("invalid_grant", "Invalid or expired authorization code", 400)
# The sandbox's wording; on a real portal the authorization page shows the error and never redirects.
APP_NOT_INSTALLED = ErrorSpec("NOT_INSTALLED", "The application is not installed on this portal", 400)

# REST 3.0 (rest-v3.md "Structure of an unsuccessful response"; the messages are the sandbox's own wording).
V3_INVALID_JSON = ErrorSpec("BITRIX_REST_V3_EXCEPTION_INVALIDJSONEXCEPTION", "Invalid JSON in the request body", 400)
V3_INSUFFICIENT_SCOPE = ErrorSpec(
    "BITRIX_REST_V3_EXCEPTION_INSUFFICIENTSCOPEEXCEPTION", "The request requires a scope the token does not have", 403
)
V3_VALIDATION = "BITRIX_REST_V3_EXCEPTION_VALIDATION_REQUESTVALIDATIONEXCEPTION"  # 400, with a validation list
V3_ENTITY_NOT_FOUND = "BITRIX_REST_V3_EXCEPTION_ENTITYNOTFOUNDEXCEPTION"  # 400
V3_ACCESS_DENIED = "BITRIX_REST_V3_EXCEPTION_ACCESSDENIEDEXCEPTION"  # 403
