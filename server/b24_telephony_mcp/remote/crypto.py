"""Bitrix24 token pairs at rest: AES-GCM under B24_TOKEN_KEY (the first key encrypts, every key decrypts), and
MCP tokens as hashes only.

A sealed value is `v1.<key id>.<nonce + ciphertext, base64>`; the key id (the first bytes of the key's hash) says
which key opens it, so a rotation needs no re-encryption pass: a value read under an old key is sealed again
under the new one when it is read (`Opened.stale`). The associated data binds a sealed pair to its owner, so a
sealed value copied to another user's row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION = "v1"
KEY_FILE_NAME = "token-key"


class SealError(Exception):
    """A sealed value that no configured key opens (a key removed too soon, or the value was tampered with)."""


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"b24-telephony-mcp key id|" + key).hexdigest()[:8]


@dataclass(frozen=True)
class Opened:
    plaintext: bytes
    stale: bool
    """Sealed under a key other than the first: seal it again."""


class TokenCipher:
    """AES-GCM with a list of keys: the first seals, all open."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys or any(len(key) != KEY_BYTES for key in keys):
            raise ValueError(f"token keys must be {KEY_BYTES} bytes each, at least one")
        self._sealing = (_key_id(keys[0]), AESGCM(keys[0]))
        self._opening = {_key_id(key): AESGCM(key) for key in keys}

    def seal(self, plaintext: bytes, owner: str) -> str:
        key_id, aead = self._sealing
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + aead.encrypt(nonce, plaintext, owner.encode())
        return f"{_VERSION}.{key_id}.{base64.urlsafe_b64encode(sealed).decode()}"

    def open(self, sealed: str, owner: str) -> Opened:
        version, _, rest = sealed.partition(".")
        key_id, _, body = rest.partition(".")
        aead = self._opening.get(key_id)
        if version != _VERSION or aead is None:
            raise SealError("sealed under a key that is not configured (B24_TOKEN_KEY)")
        try:
            raw = base64.urlsafe_b64decode(body)
            plaintext = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], owner.encode())
        except (InvalidTag, ValueError):  # binascii.Error is a ValueError
            raise SealError("a sealed value failed its integrity check") from None
        return Opened(plaintext, stale=key_id != self._sealing[0])


def token_hash(token: str) -> str:
    """What is stored of an MCP token (access, refresh, code, sign-in state): its SHA-256. The tokens are 256-bit
    random, so a plain hash cannot be reversed by guessing."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def key_file_keys(directory: Path) -> tuple[bytes, ...]:
    """The key of an embedded store without B24_TOKEN_KEY: read from its key file, generated once (mode 0600).

    The new key is written to a temporary file and linked into place, so two processes starting at once agree on
    one key (the loser reads the winner's) and nobody ever reads a half-written file."""
    path = directory / KEY_FILE_NAME
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".token-key-", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: its key is the key
            else:
                log.warning(
                    "B24_TOKEN_KEY is not set: generated the key of the stored Bitrix24 token pairs in %s (mode "
                    "0600). Keep it with the store (without it the pairs cannot be read); set B24_TOKEN_KEY to "
                    "manage the key yourself.",
                    path,
                )
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        log.warning("the key file %s can be read by other users: chmod 600 it", path)
    try:
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"the key file {path} does not hold a {KEY_BYTES}-byte key in base64")
    return (key,)
