"""One error type for every way a Bitrix24 call can fail, and the hints that make it actionable.

The portal answers failures as `{"error": CODE, "error_description": TEXT}`. Most telephony
failures carry an *empty* `error` (the server throws `RestException($msg)` without a code,
see disagreements.md #1) while the docs call them `ERROR_CORE`; both are reported as
`ERROR_CORE` so the model sees one stable code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# Codes of our own, for failures that never got a Bitrix24 answer.
INVALID_ARGUMENTS = "INVALID_ARGUMENTS"
NETWORK_ERROR = "NETWORK_ERROR"
UNEXPECTED_RESPONSE = "UNEXPECTED_RESPONSE"
TOKEN_REFRESH_FAILED = "TOKEN_REFRESH_FAILED"
FILE_REFUSED = "FILE_REFUSED"
STATE_STORE_UNAVAILABLE = "STATE_STORE_UNAVAILABLE"
UNKNOWN_TOOL = "UNKNOWN_TOOL"
INTERNAL_ERROR = "INTERNAL_ERROR"
NOT_SIGNED_IN = "NOT_SIGNED_IN"
"""Remote mode: the sign-in behind a request (or a drainer) was revoked, or its Bitrix24 tokens are dead."""

ERROR_CORE = "ERROR_CORE"

LOCAL_APP_HINT = (
    "This method needs an application (OAuth) token, an incoming webhook is refused. In Bitrix24 open "
    "Applications > Developer resources > Other > Local application, set the handler path to "
    "http://localhost:8765/, grant the 'telephony' scope, save, run `b24-telephony-mcp login --portal "
    "https://your.bitrix24.com`, and start this server without B24_WEBHOOK_URL."
)

# Hints by Bitrix24 error code: what the model (or its user) can do next.
_CODE_HINTS: dict[str, str] = {
    "WRONG_AUTH_TYPE": LOCAL_APP_HINT,
    "expired_token": "The access token expired and could not be renewed; check B24_CLIENT_ID/B24_CLIENT_SECRET "
    "and that the refresh token in B24_TOKEN_FILE is current.",
    "invalid_token": "The portal does not know this access token; reinstall the application or update the tokens.",
    "NO_AUTH_FOUND": "The portal received no valid credentials; check B24_WEBHOOK_URL or the application tokens.",
    "INVALID_CREDENTIALS": "The webhook code is wrong or the webhook was deleted; create a new incoming webhook.",
    "insufficient_scope": "Grant the 'telephony' scope to the application or webhook (callbacks and info-calls "
    "need 'call').",
    "BITRIX_REST_V3_EXCEPTION_INSUFFICIENTSCOPEEXCEPTION": "Grant the scope this method needs to the application "
    "or webhook.",
    "BITRIX_REST_V3_EXCEPTION_ACCESSDENIEDEXCEPTION": "The Bitrix24 user behind these credentials has no access "
    "to this object.",
    "BITRIX_REST_V3_EXCEPTION_ENTITYNOTFOUNDEXCEPTION": "No object with this identifier; list the objects first.",
    "BITRIX_REST_V3_EXCEPTION_VALIDATION_REQUESTVALIDATIONEXCEPTION": "Fix the fields named in the description "
    "and call again.",
    "BITRIX_REST_V3_EXCEPTION_UNKNOWNDTOPROPERTYEXCEPTION": "A field in filter or select does not exist; list the "
    "fields first.",
    "BITRIX_REST_V3_EXCEPTION_UNKNOWNFILTEROPERATOREXCEPTION": "Use a filter operator REST 3.0 knows: =, !=, >, >=, "
    "<, <=, in, between.",
    "BITRIX_REST_V3_EXCEPTION_INVALIDSELECTEXCEPTION": "Pass select as an array of field names.",
    "ACCESS_DENIED": "The Bitrix24 user behind these credentials lacks the telephony permission for this action; "
    "ask a portal administrator.",
    "user_access_error": "The user behind these credentials has no access to the application.",
    "QUERY_LIMIT_EXCEEDED": "The portal's request limit was hit even after backing off; wait a few seconds and "
    "send fewer requests at once.",
    "OPERATION_TIME_LIMIT": "This method has used up its execution-time budget for this application; do not call "
    "it again before the reset time.",
    "OVERLOAD_LIMIT": "The portal's REST API is blocked due to overload; try again later.",
    "ERROR_METHOD_NOT_FOUND": "The portal has no such method: the telephony module may be missing or disabled.",
    "INTERNAL_SERVER_ERROR": "The portal failed internally.",
    "PORTAL_DELETED": "The portal was deleted.",
    "PAYMENT_REQUIRED": "The portal's plan or the application's subscription does not allow this.",
    "invalid_grant": "The refresh token was rejected (already used or expired); run `b24-telephony-mcp login` "
    "again, or put a fresh token pair into B24_TOKEN_FILE.",
    "invalid_client": "B24_CLIENT_ID or B24_CLIENT_SECRET is wrong, or the application is not installed.",
    NETWORK_ERROR: "The portal could not be reached; check B24_PORTAL_URL / B24_WEBHOOK_URL and the network.",
    UNEXPECTED_RESPONSE: "Something between this server and the portal (a proxy or gateway) answered instead "
    "of Bitrix24.",
    INVALID_ARGUMENTS: "Fix the arguments and call again.",
    TOKEN_REFRESH_FAILED: "The access token expired and the OAuth server did not renew it; check "
    "B24_OAUTH_TOKEN_URL and the network. The token file is unchanged, so a later call retries the refresh.",
    STATE_STORE_UNAVAILABLE: "The shared state store (Redis, B24_REDIS_URL) could not be reached, so nothing was sent "
    "to the portal; call again in a few seconds.",
}


@dataclass(eq=False)
class BitrixError(Exception):
    """A failed Bitrix24 call (or one refused before it was sent)."""

    code: str
    description: str
    http_status: int | None = None
    retryable: bool = False
    hint: str = ""
    method: str | None = None
    reset_at: float | None = None
    """For OPERATION_TIME_LIMIT: unix time when the method's budget frees up, when known."""
    validation: list[dict[str, Any]] | None = None
    """REST 3.0: the fields the portal refused, `[{"field", "message"}]`."""
    steps: dict[str, str] | None = None
    """A call of several REST methods that failed part way: each step's outcome (`done`, `failed`, ...)."""

    def __post_init__(self) -> None:
        super().__init__(f"{self.code}: {self.description}")
        if not self.hint:
            self.hint = hint_for(self.code)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "description": self.description,
            "http_status": self.http_status,
            "retryable": self.retryable,
            "hint": self.hint,
        }
        if self.method:
            data["method"] = self.method
        if self.reset_at is not None:
            data["reset_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.reset_at))
        if self.validation:
            data["validation"] = self.validation
        if self.steps:
            data["steps"] = self.steps
        return data


def hint_for(code: str) -> str:
    """The generic hint for a code; method-specific ones live with their tools (`ToolSpec.hints`), since the
    portal sends those failures with an empty code and only the method knows what its texts mean."""
    return _CODE_HINTS.get(code, "")


QUERY_LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
OPERATION_TIME_LIMIT = "OPERATION_TIME_LIMIT"
LIMIT_CODES = (QUERY_LIMIT_EXCEEDED, OPERATION_TIME_LIMIT)
"""Limits refuse before the method runs, so repeating a refused call is safe, writes included."""


def error_from_envelope(body: dict[str, Any], http_status: int, method: str, *, retryable: bool) -> BitrixError:
    """Build the error from a REST 2 `{error, error_description}` or a REST 3.0 `{error: {code, message,
    validation}}` envelope; either may come from either address (auth errors, say), so both are read. A limit's
    refusal is retryable whatever `retryable` says (LIMIT_CODES)."""
    raw = body.get("error")
    validation: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        raw_code, message = raw.get("code"), raw.get("message")
        validation = [item for item in raw.get("validation") or () if isinstance(item, dict)]
    else:
        raw_code, message = raw, body.get("error_description")
    code = str(raw_code) if raw_code else ERROR_CORE
    description = str(message or raw_code or f"HTTP {http_status}")
    problems = "; ".join(
        f"{item['field']}: {item.get('message') or 'invalid'}" if item.get("field") else str(item.get("message"))
        for item in validation
        if item.get("field") or item.get("message")
    )
    if problems:
        description = f"{description} ({problems})"
    retryable = retryable or code in LIMIT_CODES
    return BitrixError(code, description, http_status, retryable, method=method, validation=validation or None)
