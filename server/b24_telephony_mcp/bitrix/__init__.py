"""The Bitrix24 REST client. Knows nothing of MCP."""

from b24_telephony_mcp.bitrix.auth import AccessTokenAuth, Auth, OAuthAuth, WebhookAuth, request_tokens
from b24_telephony_mcp.bitrix.client import BitrixClient, BitrixResponse, RetryPolicy
from b24_telephony_mcp.bitrix.errors import BitrixError
from b24_telephony_mcp.bitrix.pair_store import FilePairStore, PairStore, StalePairError
from b24_telephony_mcp.bitrix.token_store import TokenPair, TokenStore

__all__ = [
    "AccessTokenAuth",
    "Auth",
    "BitrixClient",
    "BitrixError",
    "BitrixResponse",
    "FilePairStore",
    "OAuthAuth",
    "PairStore",
    "RetryPolicy",
    "StalePairError",
    "TokenPair",
    "TokenStore",
    "WebhookAuth",
    "request_tokens",
]
