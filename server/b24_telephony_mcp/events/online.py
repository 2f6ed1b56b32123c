"""An event as Bitrix24 posts it to an online handler: form-encoded with PHP-style keys (`data[CALL_ID]=...`,
`auth[application_token]=...`), checked against the application token before anything is kept (in remote mode:
the token the installation gave on the portal `auth[member_id]` names).

The `auth` block also carries the user's access token: it is read for the portal and application token only, and
neither kept nor logged.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from b24_telephony_mcp.events.records import TelephonyEvent

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def php_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """`a[b][c]=v` pairs as nested dicts, as PHP reads a form into `$_POST` (`a[]=v` takes the next number as its
    key; a later value for a key wins)."""
    form: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        container = form
        for part in parts[:-1]:
            child = container.get(part)
            if not isinstance(child, dict):
                child = container[_key(container, part)] = {}
            container = child
        container[_key(container, parts[-1])] = value
    return form


def _key(container: dict[str, Any], part: str) -> str:
    return part if part else str(sum(1 for key in container if key.isdigit()))


@dataclass(frozen=True)
class Refusal(Exception):
    """An online post that is not kept: HTTP status and what the log says (no token in it)."""

    status: int
    reason: str


def posted_auth(form: dict[str, Any]) -> dict[str, str]:
    """The post's `auth` block as text: what says whose post it is (`member_id`, `application_token`). Read, never
    kept: it holds the user's access token too."""
    auth = form.get("auth")
    return {str(key): str(value) for key, value in auth.items()} if isinstance(auth, dict) else {}


def check_application_token(form: dict[str, Any], application_tokens: Collection[str]) -> None:
    """Raises `Refusal` unless the post's `auth[application_token]` is one of `application_tokens`."""
    given = posted_auth(form).get("application_token", "")
    if not application_tokens:
        raise Refusal(503, "no application token is configured (B24_APPLICATION_TOKEN), so no post can be trusted")
    if not given or not any(hmac.compare_digest(given.encode(), known.encode()) for known in application_tokens):
        raise Refusal(403, "missing or wrong auth[application_token]")


def event_of(form: dict[str, Any]) -> TelephonyEvent | None:
    """The event of a post already found genuine; None for an event this server does not hear."""
    ts = str(form.get("ts", ""))
    when = int(ts) if ts.isdigit() else int(time.time())
    return TelephonyEvent.of(str(form.get("event", "")), form.get("data"), when)
