"""The tools' JSON schemas, kept between starts: generating them builds each offered tool's pydantic models, about
a twentieth of a cold start (~20 ms), while tools/list only needs the finished schemas.

Keyed by this package's sources (every module's path, size and modification time) and the versions of Python and
pydantic, so an edit, an upgrade or a reinstall starts a new file. Only ever a shortcut: a missing, unreadable or
corrupt file, or a directory that cannot be written, means the schemas are generated as without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent.parent


def sources_key(package: Path = PACKAGE) -> str:
    """What the schemas are made from: every module of the package (path, size, mtime) and the versions."""
    digest = hashlib.sha256(f"{sys.version}|{pydantic.VERSION}".encode())
    for folder, subfolders, files in sorted(os.walk(package)):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                stat = os.stat(path)
                digest.update(f"{os.path.relpath(path, package)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class SchemaCache:
    """Schemas by key, read from one file on first use, written back once when new ones were made. Without a
    directory (`locate` not called: tests, benchmarks, `login`) it only keeps them for this process."""

    def __init__(self, key: Callable[[], str] = sources_key) -> None:
        self._key = key
        self._directory: Path | None = None
        self._file: Path | None = None
        self._schemas: dict[str, Any] | None = None
        self._unsaved = False

    def locate(self, directory: Path | None) -> None:
        """Keep the schemas in `directory` from now on (before the first schema is asked for)."""
        self._directory, self._schemas = directory, None

    def get(self, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        schemas = self._load()
        if key not in schemas:
            schemas[key] = make()
            self._unsaved = True
        return schemas[key]

    def save(self) -> None:
        """Write the schemas made since the file was read (atomically: a reader sees the old file or the new)."""
        if not self._unsaved or self._directory is None or self._file is None or self._schemas is None:
            return
        self._unsaved = False  # tried once: a directory that cannot be written is not tried on every change
        temporary: str | None = None
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self._directory, suffix=".tmp", delete=False) as out:
                temporary = out.name
                json.dump(self._schemas, out, separators=(",", ":"))
            os.replace(temporary, self._file)
        except OSError as exc:
            log.debug("schema cache not written: %s", exc)
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)

    def _load(self) -> dict[str, Any]:
        if self._schemas is None:
            self._schemas = {}
            if self._directory is not None:
                self._file = self._directory / f"schemas-{self._key()}.json"
                try:
                    loaded = json.loads(self._file.read_text(encoding="utf-8"))
                except (OSError, ValueError):  # none yet, or half a file from elsewhere: made again
                    loaded = None
                if isinstance(loaded, dict):
                    self._schemas = loaded
        return self._schemas


SCHEMAS = SchemaCache()
"""The one cache of this process; serving saves it once tools/list is built."""
