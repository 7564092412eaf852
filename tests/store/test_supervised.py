"""``callgate run`` supervises its embedded Redis: a killed server is started again.

A real ``callgate run`` process with the embedded Redis (no URL); its ``redis-server`` is
SIGKILLed. ``/readyz`` must say 503 while the server is down, 200 once it is back, and an
opt-out acknowledged before the kill must still be enforced after (the append-only file
is loaded again). When ``callgate run`` itself is SIGKILLed, its server must stop too
(saving its data), not live on as an orphan. The process and its server are stopped by
PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agi.test_server import agi_call
from tests.cli.test_cli import NUMBER, sample_config
from tests.e2e.gateproc import GateProcess, GateProcessError
from tests.ops.test_run_ops import free_port
from tests.store.test_embedded import START_TIMEOUT_S, data_dir, server_pid, wait_until

__all__ = ["data_dir"]  # the fixture, used below

READY_TIMEOUT_S = 20.0


@pytest.fixture
def running(data_dir: Path) -> Iterator[GateProcess]:
    """``callgate run`` with the embedded Redis in ``data_dir``; stopped by PID (SIGTERM)."""
    agi_port = free_port()
    config = data_dir.parent / "callgate.toml"
    config.write_text(
        sample_config(
            None,
            redis={"data_dir": data_dir.name},
            agi={"port": agi_port},
            http={"port": 0},
        )
    )
    process = GateProcess(config, data_dir.parent / "callgate.log", agi_port)
    with process:
        yield process
    # SIGTERM stopped callgate, and callgate its server.
    assert server_pid(data_dir) is None


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_run_restarts_its_embedded_redis_after_sigkill(
    running: GateProcess, data_dir: Path
) -> None:
    """SIGKILL of the embedded redis-server: /readyz goes 503, then 200 once callgate run
    has started it again, and the opt-out acknowledged before the kill still blocks."""
    http_port = running.http_port()
    running.cli("list", "add", "red", NUMBER)
    before = readyz(http_port)
    pid = server_pid(data_dir)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    seen = [before[0]]
    deadline = time.monotonic() + READY_TIMEOUT_S
    for _ in range(int(READY_TIMEOUT_S / 0.02)):
        status, body = readyz(http_port)
        if not seen or seen[-1] != status:
            seen.append(status)
        if (status == 200 and 503 in seen) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    after = server_pid(data_dir)
    checked = asyncio.run(agi_call(running.agi_port, "check?tenant=default", extension=NUMBER))
    assert 200 == before[0]
    assert [200, 503, 200] == seen
    assert after is not None
    assert after != pid
    assert 1 == body["checks"]["redis"]["restarts"]  # type: ignore[index]
    assert ("BLOCK", "listed:red") == (
        checked.variables["CALLGATE_RESULT"],
        checked.variables["CALLGATE_REASON"],
    )
    wait_until("logged", lambda: "is back" in running.read_log())


def lock_holder_pid(data_dir: Path) -> int:
    """The server PID that ``data_dir/redis.lock`` names ("server pid X, started by pid Y")."""
    found = re.match(r"server pid (\d+), ", (data_dir / "redis.lock").read_text())
    assert found is not None
    return int(found[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_run_killed_by_sigkill_takes_its_embedded_redis_with_it(
    running: GateProcess, data_dir: Path
) -> None:
    """SIGKILL of callgate run (kill -9, the OOM killer): its redis-server gets SIGTERM from
    the kernel (its parent-death signal), flushes its append-only file and exits, within a
    bound; it does not live on as an orphan that the next run would share and never stop.
    The next run starts its own server on the same data: the entry added before the kill
    is still enforced, and its clean stop leaves no server (the fixture checks)."""
    running.cli("list", "add", "red", NUMBER)
    orphan = lock_holder_pid(data_dir)
    assert orphan == server_pid(data_dir)
    try:
        running.kill()
        wait_until("the killed run's redis-server gone", lambda: not alive(orphan), 5.0)
    finally:
        if alive(orphan):  # without the fix: stop the orphan by PID (SIGTERM saves it)
            os.kill(orphan, signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                wait_until("the orphan stopped", lambda: not alive(orphan))
            if alive(orphan):
                os.kill(orphan, signal.SIGKILL)
    running.start()
    checked = asyncio.run(agi_call(running.agi_port, "check?tenant=default", extension=NUMBER))
    assert orphan != lock_holder_pid(data_dir)
    assert lock_holder_pid(data_dir) == server_pid(data_dir)
    assert ("BLOCK", "listed:red") == (
        checked.variables["CALLGATE_RESULT"],
        checked.variables["CALLGATE_REASON"],
    )


async def test_the_supervisor_is_woken_by_its_servers_exit_not_by_polling() -> None:
    """The supervisor of an embedded server sleeps on the server process's pidfd: it wakes
    when the process exits (long before its timeout), or when stopped; never to poll."""
    from gate.runtime import _until_exit

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    child = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        started = time.monotonic()
        loop.call_later(0.2, child.kill)
        stopped = await _until_exit(child.pid, stop, 20.0)
        woke_after = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await asyncio.wait_for(child.wait(), 5)
    other = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        loop.call_later(0.2, stop.set)
        stopped_by_stop = await _until_exit(other.pid, stop, 20.0)
        still_running = other.returncode is None
    finally:
        other.kill()
        await asyncio.wait_for(other.wait(), 5)
    assert (False, True, True) == (stopped, stopped_by_stop, still_running)
    assert 0.2 <= woke_after < 10.0


async def test_a_restart_that_fails_with_an_os_error_is_tried_again(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded server dies and its restart fails with an ``OSError`` (here its log
    file is a directory, EISDIR; in life EMFILE, ENOMEM): the supervisor logs it and tries
    again with its backoff, and once the cause is gone the server is back. It does not end
    on the first failure (which left every later call to the fail mode)."""
    from gate import runtime
    from gate.store.client import Store
    from gate.store.embedded import EmbeddedRedis

    monkeypatch.setattr(runtime, "RESTART_DELAY_MIN_S", 0.05)
    monkeypatch.setattr(runtime, "RESTART_DELAY_MAX_S", 0.2)
    embedded = EmbeddedRedis(data_dir, wait_s=START_TIMEOUT_S)
    url = await asyncio.to_thread(embedded.start)
    store = Store(url, 1.0)
    stop = asyncio.Event()
    supervisor = asyncio.create_task(runtime.supervise_embedded(embedded, store, stop))
    log_file = data_dir / "redis.log"
    try:
        first = embedded.pid
        assert first is not None
        log_file.unlink()
        log_file.mkdir()  # opening it for the next server's output fails: EISDIR
        os.kill(first, signal.SIGKILL)
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if "could not be started" in caplog.text or supervisor.done():
                break
            await asyncio.sleep(0.05)
        failed_once = "could not be started" in caplog.text
        log_file.rmdir()
        for _ in range(int(START_TIMEOUT_S / 0.05)):
            if embedded.running() or supervisor.done():
                break
            await asyncio.sleep(0.05)
        alive = not supervisor.done()
        back = embedded.running() and embedded.pid != first
    finally:
        stop.set()
        await runtime.stop_task(supervisor, 5.0, "the embedded Redis supervisor")
        await store.close()
        await asyncio.to_thread(embedded.stop)
    assert (True, True, True) == (failed_once, alive, back)


OTHER = "+33698765432"


_SERVER_TITLES = ("redis-server", "valkey-server")


def servers_in(data_dir: Path) -> list[int]:
    """The PIDs of the redis-server processes working in ``data_dir`` (their working
    directory: Redis moves into its data directory, even one deleted since)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            words = [arg.split() for arg in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:  # gone meanwhile, or not ours
            continue
        # Its process title, "redis-server unixsocket:…" (Valkey's "valkey-server …"),
        # whatever the binary is called (Debian's links to redis-check-rdb) or run by (a
        # build run by its loader: the title follows the loader's arguments).
        server = any(w and Path(w[0].decode()).name in _SERVER_TITLES for w in words)
        if server and cwd.removesuffix(" (deleted)") == str(data_dir):
            pids.append(int(proc.name))
    return sorted(pids)


def test_run_recovers_its_embedded_redis_after_its_data_directory_is_deleted(
    running: GateProcess, data_dir: Path
) -> None:
    """``rm -rf`` of the data directory under a running ``callgate run``: its server lived
    on with deleted files and no socket, and the next CLI command started a second, empty
    server in a new directory: ``list add`` said "1 added" into data the gate never read.
    Now the supervisor notices it within a turn, makes the directory again (locked, so no
    second server can start), has the live server write its data there and starts it from
    it: an entry added before the deletion and one added after both block, through the
    same gate and one server, and after a restart of the gate."""
    running.cli("list", "add", "red", NUMBER)
    first = servers_in(data_dir)
    since = running.log_size()
    shutil.rmtree(data_dir)
    with contextlib.suppress(GateProcessError):  # asserted below, with what the CLI did
        running.wait_for_log("is back .* with its data", within_s=READY_TIMEOUT_S, since=since)
    log = running.read_log()[since:]
    added = running.cli("list", "add", "red", OTHER)
    servers, answering = servers_in(data_dir), server_pid(data_dir)
    checked = [
        asyncio.run(agi_call(running.agi_port, "check?tenant=default", extension=number))
        for number in (NUMBER, OTHER)
    ]
    running.stop()
    running.start()
    again = [
        asyncio.run(agi_call(running.agi_port, "check?tenant=default", extension=number))
        for number in (NUMBER, OTHER)
    ]
    blocked = [("BLOCK", "listed:red")] * 2
    assert 1 == len(first), first
    assert [answering] == servers, log
    assert "1 added" in added.stdout, added
    for dialogue in (checked, again):
        assert blocked == [
            (d.variables["CALLGATE_RESULT"], d.variables["CALLGATE_REASON"]) for d in dialogue
        ], log
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert 1 == len(re.findall(r"ERROR .*data directory .* is gone", log)), log
