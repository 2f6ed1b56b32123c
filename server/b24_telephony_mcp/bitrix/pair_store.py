"""The seam between OAuth and where its token pair lives: a file for one machine, Redis for replicas.

`OAuthAuth` runs one refresh sequence whatever the store (lock, re-read, compare, renew, save before use); a
store only says where the pair is (`where`, for messages), loads it, saves it, and keeps other processes out
while one of them refreshes (`lock`). The file store is `TokenStore` and its `flock`, unchanged; the Redis store
is in `redis_state.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import anyio
import anyio.to_thread

from b24_telephony_mcp.bitrix.token_store import TokenPair, TokenStore


class StalePairError(Exception):
    """The store refused a pair: what it holds is not the pair whose refresh token was spent (someone else
    wrote a pair meanwhile), or, when seeding, it already holds one."""


class PairStore(Protocol):
    where: str
    """Where the pair lives, for messages ("the token file /x", "Redis at redis://host:6379/0")."""

    async def load(self) -> TokenPair | None:
        """The stored pair; None when there is none. ValueError when what is stored is not a pair."""
        ...

    async def save(self, pair: TokenPair, spent: str | None) -> None:
        """Store `pair`, which renewed the pair whose refresh token was `spent`; with `spent=None` (seeding) only
        into an empty store. StalePairError when the stored pair is not that one: a newer pair is never
        overwritten with an older one."""
        ...

    def lock(self) -> AbstractAsyncContextManager[None]:
        """Held while refreshing, so no two processes (or replicas) spend the same single-use refresh token."""
        ...

    async def seed(self, initial: TokenPair | None) -> TokenPair | None:
        """The pair to start from: the stored one, else `initial` (from the environment or a profile)."""
        ...


class FilePairStore:
    """The token file (`TokenStore`): written atomically, locked with `flock`, for processes on one machine."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self.where = f"the token file {tokens.path}"

    async def load(self) -> TokenPair | None:
        return await anyio.to_thread.run_sync(self.tokens.load)

    async def save(self, pair: TokenPair, spent: str | None) -> None:
        # Auth saves under `lock()`, which no other process can hold: the comparison it made after taking the
        # lock still holds. Only a seed needs checking.
        if spent is None and await self.load() is not None:
            raise StalePairError(f"{self.where} already holds a pair")
        await anyio.to_thread.run_sync(self.tokens.save, pair)

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        file_lock = self.tokens.lock()
        await anyio.to_thread.run_sync(file_lock.acquire)
        try:
            yield
        finally:
            file_lock.release()

    async def seed(self, initial: TokenPair | None) -> TokenPair | None:
        # The file wins over the environment; the environment's pair is written only once it is rotated.
        return await self.load() or initial
