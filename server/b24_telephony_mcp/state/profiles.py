"""Profiles: one portal connection per file, written by `login`, read by the server and `doctor`.

A profile is the token store's record with the connection's other facts beside the pair (portal,
member_id, client id and secret, granted scopes, token URL). The server refreshes into the same
file through the same `TokenStore`, so the rotation rules apply unchanged and there is one copy of
the tokens. Where profiles live is decided in `config/settings.py`; this module only reads and writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from b24_telephony_mcp.bitrix import TokenPair, TokenStore
from b24_telephony_mcp.common.redact import register_secret

DEFAULT_PROFILE = "default"
SANDBOX_PROFILE = "sandbox"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SUFFIX = ".json"


@dataclass(frozen=True)
class Profile:
    portal_url: str
    member_id: str
    client_id: str
    client_secret: str = field(repr=False)
    tokens: TokenPair = field(repr=False)
    scopes: tuple[str, ...]
    token_url: str
    application_token: str = field(default="", repr=False)
    """What the installation handed over (APPLICATION_TOKEN): every online event post must carry it."""


def check_profile_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"profile name {name!r} is not valid: use letters, digits, '.', '_' or '-' (at most 64, not starting "
            "with '.', '_' or '-')"
        )
    return name


def profile_store(directory: Path, name: str) -> TokenStore:
    return TokenStore(directory / f"{check_profile_name(name)}{_SUFFIX}")


def profile_names(directory: Path) -> list[str]:
    """The profiles saved in `directory` (for messages that list the choices)."""
    try:
        return sorted(path.stem for path in directory.glob(f"*{_SUFFIX}") if _NAME.fullmatch(path.stem))
    except OSError:
        return []


def read_profile(store: TokenStore) -> Profile | None:
    """The profile in `store`, None when there is none; ValueError when the file is not a profile."""
    record = store.load_record()
    if record is None:
        return None
    try:
        scope = record.get("scope") or []
        profile = Profile(
            portal_url=str(record["portal_url"]),
            member_id=str(record.get("member_id") or ""),
            client_id=str(record["client_id"]),
            client_secret=str(record["client_secret"]),
            tokens=TokenPair.from_record(record),
            scopes=tuple(str(item) for item in scope),
            token_url=str(record["oauth_token_url"]),
            application_token=str(record.get("application_token") or ""),
        )
    except (KeyError, TypeError):
        raise ValueError(
            f"{store.path} is not a complete profile; run `b24-telephony-mcp login` again to rewrite it"
        ) from None
    register_secret(profile.client_secret)
    if profile.application_token:
        register_secret(profile.application_token)
    return profile


def write_profile(store: TokenStore, profile: Profile) -> None:
    """Write the whole profile atomically (0600); call with the store's lock held."""
    store.save(
        profile.tokens,
        {
            "portal_url": profile.portal_url,
            "member_id": profile.member_id,
            "client_id": profile.client_id,
            "client_secret": profile.client_secret,
            "scope": list(profile.scopes),
            "oauth_token_url": profile.token_url,
            "application_token": profile.application_token,
        },
    )
