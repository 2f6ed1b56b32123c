"""Durable storage for the OAuth token pair.

Bitrix24 refresh tokens are single-use: once a refresh succeeds the old one is dead, so the new
pair must be on disk before anything uses it. A crash between the refresh and the write would
otherwise lock the application out until it is reinstalled.

The file is one JSON object. The pair lives in its `access_token`, `refresh_token` and `expires`
fields; a profile (`login`) keeps the portal, client and scopes beside them in the same object,
and saving a rotated pair replaces only the token fields, so there is one copy of the tokens.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires: float | None = None
    """Unix time the access token expires, when the OAuth server said so (informational only:
    we refresh on `expired_token`, never on a schedule)."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TokenPair:
        """The pair in a token file's object; KeyError when a token is missing."""
        return cls(str(record["access_token"]), str(record["refresh_token"]), record.get("expires"))


class TokenStore:
    """A JSON object in a file (mode 0600), replaced atomically, holding the current token pair."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> TokenPair | None:
        record = self.load_record()
        if record is None:
            return None
        try:
            return TokenPair.from_record(record)
        except KeyError:
            raise ValueError(f"token file {self.path} is not a valid token file") from None

    def load_record(self) -> dict[str, Any] | None:
        """The whole object: the token fields and whatever else was saved beside them."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            # Never echo the content: it is a secret.
            raise ValueError(f"token file {self.path} is not a valid token file") from exc
        if not isinstance(data, dict):
            raise ValueError(f"token file {self.path} is not a valid token file")
        return data

    def save(self, pair: TokenPair, fields: Mapping[str, Any] | None = None) -> None:
        """Replace the token fields (and `fields`, when given); the record's other fields stay as they were."""
        try:
            record = self.load_record() or {}
        except ValueError:
            record = {}  # an unreadable record holds nothing worth keeping
        self._write({**record, **(fields or {}), **asdict(pair)})

    def _write(self, record: Mapping[str, Any]) -> None:
        """Write temp file, fsync, rename over the old file, fsync the directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
        try:
            # mkstemp creates the file 0600 already; chmod guards against an unusual umask/platform.
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def lock(self) -> FileLock:
        """An inter-process lock held while refreshing, so two server processes sharing one
        application never spend the same single-use refresh token twice."""
        return FileLock(self.path.with_name(self.path.name + ".lock"))


class FileLock:
    """`flock` on a side file; `acquire` blocks, so call it from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
