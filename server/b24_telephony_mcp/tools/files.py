"""Local files a tool may read on the model's behalf, so audio bytes never pass through the model.

Only files under the directories the user allowed (`B24_FILES_DIR`) are read; the check runs on
the resolved path, so `..` and symlinks cannot step outside them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from b24_telephony_mcp.bitrix.errors import FILE_REFUSED, BitrixError

RECORDING_EXTENSIONS = (".wav", ".mp3")
MIB = 1024 * 1024
DEFAULT_MAX_MB = 25


@dataclass(frozen=True)
class FilePolicy:
    allowed_dirs: tuple[Path, ...] = ()
    max_bytes: int = DEFAULT_MAX_MB * MIB

    async def read_base64(self, raw_path: str, extensions: tuple[str, ...]) -> tuple[str, str]:
        """Return (file name, base64 content) of an allowed file, or raise FILE_REFUSED."""
        return await anyio.to_thread.run_sync(self._read_base64, raw_path, extensions)

    def _read_base64(self, raw_path: str, extensions: tuple[str, ...]) -> tuple[str, str]:
        if not self.allowed_dirs:
            raise _refused(
                "reading local files is off",
                "Set B24_FILES_DIR to the directory holding the recordings, or pass RECORD_URL.",
            )
        path = Path(raw_path).expanduser().resolve()
        if not any(path.is_relative_to(folder) for folder in self.allowed_dirs):
            raise _refused(
                f"{raw_path} is outside the allowed directories",
                "Only files under B24_FILES_DIR can be attached: "
                + ", ".join(str(folder) for folder in self.allowed_dirs),
            )
        if path.suffix.lower() not in extensions:
            raise _refused(f"{path.name} is not one of {', '.join(extensions)}", "Attach a .wav or .mp3 file.")
        try:
            if path.exists() and not path.is_file():
                raise _refused(f"{raw_path} is not a regular file", "Pass the path of a file.")
            with path.open("rb") as fh:
                # Read at most one byte past the cap: the size is checked on what was read, not on a
                # stat() the file could outgrow in between.
                content = fh.read(self.max_bytes + 1)
            if len(content) > self.max_bytes:
                raise _refused(
                    f"{path.name} is over the {self.max_bytes}-byte limit",
                    "Raise B24_MAX_FILE_MB, or host the file and pass RECORD_URL.",
                )
        except FileNotFoundError:
            raise _refused(f"{raw_path} does not exist", "Check the path.") from None
        except PermissionError:
            raise _refused(f"{raw_path} is not readable", "Check the file's permissions.") from None
        return path.name, base64.b64encode(content).decode("ascii")


def _refused(description: str, hint: str) -> BitrixError:
    return BitrixError(FILE_REFUSED, description, hint=hint)
