"""What remote mode keeps: registered clients, pending sign-ins, authorization codes, MCP tokens, grants, portals and
the Bitrix24 token pair of each (portal, user).

Two backends behind one protocol (`RemoteStore`): an embedded SQLite file in the state directory (mode 0600) for a
single process, and Redis (B24_REDIS_URL) for replicas. Nothing secret is kept in clear by either: MCP access and
refresh tokens, authorization codes and sign-in states only as hashes (`token_hash`); Bitrix24 pairs and registered
clients' secrets sealed with AES-GCM (`TokenCipher`), bound to their owner; a portal's `application_token` as a
hash. A pair read under an old key (B24_TOKEN_KEY rotated) is sealed again under the current one.

A grant is (MCP client, portal `member_id`, Bitrix24 user); the pair belongs to (portal, user) and is shared by that
user's grants, so one user with two assistants has one refresh chain. `GrantPairStore` shows one such pair as the
`PairStore` the OAuth refresh sequence runs on (lock, re-read, compare, renew, save before use), unchanged.

Here: `base` (the records, the protocol, the sealing, `GrantPairStore`), one module per backend (`sqlite`,
`redis`), and `open_store`, which picks one from the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from b24_telephony_mcp.remote.crypto import TokenCipher, key_file_keys
from b24_telephony_mcp.remote.store.base import (
    STORE_NAME,
    Access,
    Grant,
    GrantPairStore,
    Portal,
    RemoteStore,
    StoredCode,
    StoredToken,
    client_owner,
    pair_owner,
)
from b24_telephony_mcp.remote.store.redis import RedisRemoteStore
from b24_telephony_mcp.remote.store.sqlite import SqliteRemoteStore

if TYPE_CHECKING:
    from b24_telephony_mcp.bitrix.redis_state import RedisState
    from b24_telephony_mcp.config.settings import RemoteConfig

__all__ = [
    "STORE_NAME",
    "Access",
    "Grant",
    "GrantPairStore",
    "Portal",
    "RedisRemoteStore",
    "RemoteStore",
    "SqliteRemoteStore",
    "StoredCode",
    "StoredToken",
    "client_owner",
    "open_sqlite_store",
    "open_store",
    "pair_owner",
]


def open_sqlite_store(directory: Path, cipher: TokenCipher) -> SqliteRemoteStore:
    return SqliteRemoteStore(directory / STORE_NAME, cipher)


def open_store(config: RemoteConfig, state: RedisState | None) -> RemoteStore:
    """Redis when replicas share it (B24_TOKEN_KEY required, checked with the settings), else the embedded store in
    the state directory, whose key is B24_TOKEN_KEY or a key file generated once beside it."""
    if state is not None:
        return RedisRemoteStore(state, TokenCipher(config.token_keys))
    keys = config.token_keys or key_file_keys(config.store_dir)
    return open_sqlite_store(config.store_dir, TokenCipher(keys))
