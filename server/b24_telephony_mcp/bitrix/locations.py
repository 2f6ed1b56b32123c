"""Where shared state lives, without importing the Redis client: `B24_REDIS_URL` checked and shown without its
credentials, and the short stable names of a portal and application in Redis keys and token file names. Settings
use these at start-up, before (and whether or not) Redis is used."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

SCHEMES = ("redis", "rediss")


def check_redis_url(url: str) -> str | None:
    """What is wrong with `url` as B24_REDIS_URL, or None. Never quotes the URL: it may hold a password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "B24_REDIS_URL is not a valid URL (expected redis://[user:password@]host[:port][/db])."
    if parts.scheme not in SCHEMES:
        return "B24_REDIS_URL must start with redis:// or rediss:// (TLS)."
    if not parts.hostname:
        return "B24_REDIS_URL names no host (expected redis://[user:password@]host[:port][/db])."
    if port == 0:
        return "B24_REDIS_URL has port 0."
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"B24_REDIS_URL's path must be a database number, got /{db}."
    return None


def redis_location(url: str) -> str:
    """`redis://host:port/db` without credentials: what messages and logs may show."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"


def digest(*parts: str) -> str:
    """A short stable name for a portal (and application) in key names and file names."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
