"""`b24-telephony-mcp store import|export`: move the token pair between a token file (or profile) and Redis.

The file is the server's own: `--profile` (or B24_PROFILE) selects a profile, B24_TOKEN_FILE or `--file` a file.

For moving one server to replicas on Redis, and back. Neither direction overwrites a newer pair: the pair
whose access token expires later is the newer one (each refresh issues a later expiry); `--force` overrides.
The settings are the server's own (B24_REDIS_URL, B24_PORTAL_URL, B24_CLIENT_ID...), so the Redis key is the
one the replicas use.
"""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread

from b24_telephony_mcp.bitrix import BitrixError, StalePairError, TokenPair, TokenStore
from b24_telephony_mcp.bitrix.pair_store import FilePairStore, PairStore
from b24_telephony_mcp.bitrix.redis_state import RedisPairStore
from b24_telephony_mcp.common.redact import register_secret
from b24_telephony_mcp.config.settings import AppConfig, ConfigError, load_settings
from b24_telephony_mcp.config.wiring import open_state


async def run_store_command(action: str, file: Path | None, force: bool, profile: str | None = None) -> str:
    """Do `import` or `export`; the one line to tell the user. ConfigError for anything that stops it."""
    settings = load_settings(profile=profile, remote=False)
    portal = settings.portal
    if not isinstance(portal, AppConfig):
        raise ConfigError(
            "store import/export moves an application's token pair; a webhook (B24_WEBHOOK_URL) has none."
        )
    if settings.redis_url is None:
        raise ConfigError("Set B24_REDIS_URL to the Redis the replicas share, then run store import/export again.")
    state = await open_state(settings)
    assert state is not None
    try:
        shared = state.pair_store(portal.portal_url, portal.client_id)
        local = TokenStore((file or portal.token_file).expanduser())
        if action == "import":
            return await import_pair(local, shared, force)
        return await export_pair(shared, local, force)
    except BitrixError as exc:  # Redis went away after the start-up check
        raise ConfigError(f"{exc.description}.") from None
    finally:
        await state.aclose()


async def import_pair(local: TokenStore, shared: RedisPairStore, force: bool) -> str:
    pair = await _load(FilePairStore(local))
    if pair is None:
        raise ConfigError(f"{local.path} holds no token pair to import.")
    current = await _load(shared)
    unchanged = _may_overwrite(pair, current, force, shared.where, local.path, " (replicas rotated it)", "the file's")
    if unchanged:
        return unchanged
    try:
        await shared.save(pair, current.refresh_token if current is not None else None)
    except StalePairError:
        raise ConfigError(f"{shared.where} changed while importing (a replica refreshed); run again.") from None
    return f"Imported the token pair from {local.path} into {shared.where}."


async def export_pair(shared: RedisPairStore, local: TokenStore, force: bool) -> str:
    pair = await _load(shared)
    if pair is None:
        raise ConfigError(f"{shared.where} holds no token pair to export.")
    current = await _load(FilePairStore(local))
    unchanged = _may_overwrite(pair, current, force, local.path, shared.where, "", "Redis's")
    if unchanged:
        return unchanged
    try:
        await anyio.to_thread.run_sync(local.save, pair)
    except OSError as exc:
        raise ConfigError(f"cannot write {local.path} ({exc.strerror or type(exc).__name__}).") from None
    return f"Exported the token pair from {shared.where} into {local.path}."


def _may_overwrite(
    pair: TokenPair, current: TokenPair | None, force: bool, target: object, source: object, why: str, whose: str
) -> str | None:
    """The one rule of import and export: copying the pair the target already holds changes nothing (the message
    is returned), and a pair at least as new in the target is kept unless forced (ConfigError); else None."""
    if current is None:
        return None
    if _same(current, pair):
        return f"{target} already holds the pair in {source}; nothing changed."
    if not force and not _newer(pair, current):
        raise ConfigError(
            f"{target} holds a pair at least as new as the one in {source}{why}; not overwritten. Use --force only "
            f"if you know {whose} pair is the live one."
        )
    return None


async def _load(store: PairStore) -> TokenPair | None:
    try:
        pair = await store.load()
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc) if isinstance(exc, ValueError) else f"cannot read {store.where}.") from None
    _register(pair)
    return pair


def _register(pair: TokenPair | None) -> None:
    if pair is not None:
        register_secret(pair.access_token)
        register_secret(pair.refresh_token)


def _same(first: TokenPair, second: TokenPair) -> bool:
    return (first.access_token, first.refresh_token) == (second.access_token, second.refresh_token)


def _newer(candidate: TokenPair, than: TokenPair) -> bool:
    """Strictly newer by expiry; a pair without one cannot be shown newer."""
    return candidate.expires is not None and than.expires is not None and candidate.expires > than.expires
