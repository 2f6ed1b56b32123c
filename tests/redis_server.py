"""A real `redis-server` (Debian's package; `.ci/run` installs it) on a free loopback port, for the tests.

Nothing is faked: the server under test talks to this process over a real socket, exactly as it would to a
Redis in production. `stop()` and `start()` let a test take Redis away mid-run and bring it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

_START_TIMEOUT = 10.0
DATABASES = 64
INSTALL_HINT = "redis-server is not installed: run `apt-get install -y redis-server` (.ci/run does it when missing)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis answers PING on this loopback port (or asks for a password first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One `redis-server` process in `workdir`; `persistent` turns on AOF (fsync always), as the README advises."""

    def __init__(self, workdir: Path, *, persistent: bool = False, password: str = "") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.workdir = workdir
        self.persistent = persistent
        self.password = password
        self.port = 0
        self.databases_given = 0
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def own_database(self) -> str:
        """The URL of a database no other test uses, for state keyed by something tests share (the client address
        of the per-address limits is 127.0.0.1 for all of them)."""
        self.databases_given += 1
        if self.databases_given >= DATABASES:
            raise RuntimeError(f"more than {DATABASES - 1} tests asked for their own Redis database: raise DATABASES")
        return self.url.removesuffix("/0") + f"/{self.databases_given}"

    def start(self) -> RedisServer:
        """Start on a free port, or on the same port again after `stop()` (the data stays with AOF on)."""
        for _ in range(5):  # a free port can be taken between the probe and redis-server's bind
            port = self.port or free_port()
            options = {
                "port": str(port),
                "bind": "127.0.0.1",
                "dir": str(self.workdir),
                "save": "",
                "appendonly": "yes" if self.persistent else "no",
                "appendfsync": "always",
                "databases": str(DATABASES),
                "loglevel": "warning",
                "logfile": str(self.workdir / "redis.log"),
                **({"requirepass": self.password} if self.password else {}),
            }
            args = [self.binary, *(part for name, value in options.items() for part in (f"--{name}", value))]
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + _START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                if ping(port):
                    self.port, self.process = port, process
                    return self
                time.sleep(0.02)
            process.kill()
            process.wait()
            if self.port:
                break  # the old port is gone: no point in trying it again
        log = self.workdir / "redis.log"
        raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else 'no log'}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes the AOF and exits; the port is free again."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
