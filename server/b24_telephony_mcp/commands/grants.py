"""`b24-telephony-mcp grants list|revoke`: the operator's view of remote mode's sign-ins.

The settings are the remote server's own (B24_REMOTE's variables, B24_REDIS_URL, B24_TOKEN_KEY), so the store is
the one the server uses. A grant is shown as its id, client, portal, user, when it was made and last used; never a
token.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

from b24_telephony_mcp.config.settings import ConfigError, RemoteConfig, load_settings
from b24_telephony_mcp.config.wiring import open_state
from b24_telephony_mcp.remote.store import Grant, RemoteStore, open_store

REFRESH_NOTE = (
    "Bitrix24 refresh tokens rotate on use and expire when unused (180 days by the docs): a user idle that long "
    "signs in again."
)


def _when(moment: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment)) + " UTC" if moment is not None else "never"


async def run_grants_command(
    action: str,
    grant_id: str | None = None,
    portal: str | None = None,
    user: int | None = None,
    public_url: str | None = None,
) -> str:
    """List or revoke grants; the text to print. ConfigError for anything that stops it."""
    settings = load_settings(remote=True, public_url=public_url)
    config = settings.portal
    assert isinstance(config, RemoteConfig)
    async with AsyncExitStack() as stack:
        state = await open_state(settings)
        if state is not None:
            stack.push_async_callback(state.aclose)
        store = open_store(config, state)
        stack.push_async_callback(store.aclose)
        chosen = await _chosen(store, grant_id, portal, user, revoking=action == "revoke")
        if action == "list":
            if not chosen:
                return "No grants." + ("" if portal is None else f" (portal {portal})")
            lines = ["id  client  portal  user  created  last used"]
            for grant, domain in chosen:
                lines.append(
                    f"{grant.grant_id[:12]}  {grant.client_name}  {domain}  {grant.user_id} {grant.user_name}  "
                    f"{_when(grant.created)}  {_when(grant.last_used)}"
                )
            return "\n".join([*lines, REFRESH_NOTE])
        for grant, _ in chosen:
            await store.revoke_grant(grant.grant_id)
        return f"Revoked {len(chosen)} grant{'s' if len(chosen) != 1 else ''}."


async def _chosen(
    store: RemoteStore, grant_id: str | None, portal: str | None, user: int | None, *, revoking: bool
) -> list[tuple[Grant, str]]:
    if revoking and grant_id is None and portal is None:
        raise ConfigError("grants revoke needs a grant id (from `grants list`) or --portal DOMAIN [--user N].")
    if user is not None and portal is None:
        raise ConfigError("--user N needs --portal DOMAIN: user ids are a portal's own.")
    domains: dict[str, str] = {}
    chosen = []
    for grant in await store.grants():
        if grant.member_id not in domains:
            found = await store.portal(grant.member_id)
            domains[grant.member_id] = found.domain if found is not None else "?"
        domain = domains[grant.member_id]
        if grant_id is not None and not grant.grant_id.startswith(grant_id):
            continue
        if portal is not None and domain != portal.strip().lower().removeprefix("https://").rstrip("/"):
            continue
        if user is not None and grant.user_id != user:
            continue
        chosen.append((grant, domain))
    if grant_id is not None and len(chosen) > 1:
        raise ConfigError(f"{grant_id!r} names {len(chosen)} grants: give more of the id.")
    if revoking and grant_id is not None and not chosen:
        raise ConfigError(f"no grant {grant_id!r}: see `grants list`.")
    return chosen
