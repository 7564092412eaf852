"""`callgate run` as a user starts it: a real process, embedded Redis, FastAGI, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gate.core.errors import InputError
from gate.core.params import DECISION_FIELDS
from gate.runtime import InstanceLock
from tests.conftest import SAMPLE_CONFIG

STARTUP_DEADLINE_S = 20.0
# A command's stop: its embedded Redis gets 10 s to stop, then is killed (10 s more).
STOP_DEADLINE_S = 30.0


def _catching_sighup(process: subprocess.Popen[str]) -> None:
    """Wait until ``process`` catches SIGHUP (its ``SigCgt`` in ``/proc``): the
    ``callgate`` command's first act, before its imports. Before that, Python's own start
    (about 30 ms, longer on a busy machine) takes the signal's default action, which no
    program can prevent; a fixed sleep raced it."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline and process.poll() is None:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M)
        if caught and int(caught[1], 16) >> (signal.SIGHUP - 1) & 1:
            return
        time.sleep(0.002)
    raise AssertionError(f"callgate (PID {process.pid}) never caught SIGHUP")


async def agi_check(port: int, extension: str) -> dict[str, str]:
    """Play Asterisk for one FastAGI `check` request; return the ``CALLGATE_*`` variables
    the dialplan gets (``CALLGATE_DECISION`` split as ``callgate-unpack`` does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    headers = (
        "agi_network_script: check?tenant=default\n"
        f"agi_extension: {extension}\nagi_channel: Local/test\nagi_callerid: 0162000000\n\n"
    )
    writer.write(headers.encode())
    await writer.drain()
    variables: dict[str, str] = {}
    async with asyncio.timeout(10):
        for _ in range(20):
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            match = re.fullmatch(r'SET VARIABLE (\w+) "(.*)"', line)
            assert match, line
            variables[match[1]] = match[2]
            writer.write(b"200 result=1\n")
            await writer.drain()
    writer.close()
    await writer.wait_closed()
    return dict(zip(DECISION_FIELDS, variables["CALLGATE_DECISION"].split("|"), strict=True))


@pytest.mark.parametrize(("options", "loop"), [((), "uvloop"), (("--loop", "asyncio"), "asyncio")])
def test_run_serves_fastagi_with_embedded_redis_and_stops_on_sigterm(
    options: tuple[str, ...], loop: str
) -> None:
    """The sample config with an embedded Redis serves a check, then stops cleanly; on
    uvloop by default, on asyncio's own loop with ``--loop asyncio`` (its startup line
    says which)."""
    data = Path(tempfile.mkdtemp(prefix="cg"))
    config = data / "callgate.toml"
    text = SAMPLE_CONFIG.read_text()
    text = text.replace('state_dir = "../var"', f'state_dir = "{data}"')
    config.write_text(text.replace("port = 4573", "port = 0").replace("port = 9473", "port = 0"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CALLGATE_SECRET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gate.cli", "--config", str(config), "run", *options],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        port = 0
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline and not port:
            line = process.stderr.readline()
            if found := re.search(r"FastAGI on agi://127\.0\.0\.1:(\d+)/check", line):
                port = int(found[1])
        assert port, "callgate run did not log its FastAGI address"
        assert line.rstrip().endswith(f", event loop {loop}"), line
        variables = asyncio.run(agi_check(port, "0612345678"))
        process.send_signal(signal.SIGTERM)
        assert 0 == process.wait(STARTUP_DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    # The sample enables the fr pack: a consumer without prior consent may not be called
    # (L223-1 opt-in, since 2026-08-11), whatever the time of day.
    assert ("BLOCK", "no_consent:fr-l223-1-optin", "+33612345678") == (
        variables["CALLGATE_RESULT"],
        variables["CALLGATE_REASON"],
        variables["CALLGATE_E164"],
    )
    assert not (data / "redis" / "redis.sock").exists()  # the embedded Redis was stopped too
    # The append-only file: one file up to Redis 6.2, a directory of parts from Redis 7.
    aof = [data / "redis" / "appendonly.aof", data / "redis" / "appendonlydir"]
    assert any(path.exists() for path in aof)


def test_run_refuses_an_unknown_event_loop_in_one_line() -> None:
    """``--loop`` takes uvloop or asyncio; anything else is a usage error naming both."""
    done = subprocess.run(
        [sys.executable, "-m", "gate.cli", "run", "--loop", "trio"],
        capture_output=True,
        text=True,
        timeout=STARTUP_DEADLINE_S,
    )
    assert done.returncode == 2
    assert "invalid choice: 'trio' (choose from 'uvloop', 'asyncio')" in done.stderr


CALLGATE = Path(sys.executable).parent / "callgate"  # the console script users run


@contextlib.contextmanager
def _callgate(
    *args: str, prefix: tuple[str, ...] = (), pipe: bool = True
) -> Iterator[subprocess.Popen[str]]:
    """The ``callgate`` command with ``args`` (after ``prefix``, e.g. ``nohup``), stderr
    piped (else discarded), no ``CALLGATE_SECRET``; killed and reaped on the way out if
    it still runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CALLGATE_SECRET", None)
    process = subprocess.Popen(
        [*prefix, str(CALLGATE), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if pipe else subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


def _sample_config_in(data: Path) -> Path:
    config = data / "callgate.toml"
    text = SAMPLE_CONFIG.read_text().replace('state_dir = "../var"', f'state_dir = "{data}"')
    config.write_text(text.replace("port = 4573", "port = 0").replace("port = 9473", "port = 0"))
    return config


def test_the_callgate_command_survives_a_sighup_while_it_imports_and_reloads(
    tmp_path: Path,
) -> None:
    """``systemctl reload`` right after ``start``: SIGHUP as soon as ``callgate run``
    catches it, while Python still imports its modules (about 0.4 s here; before the first
    ~30 ms, Python's own start, no program can catch it). The process lives, serves, and reloads
    once it is up (``reloaded … (unchanged)``)."""
    lines: list[str] = []
    with _callgate("--config", str(_sample_config_in(tmp_path)), "run") as process:
        _catching_sighup(process)
        process.send_signal(signal.SIGHUP)
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            lines.append(process.stderr.readline())
            if "reloaded" in lines[-1]:
                break
        alive = process.poll() is None
        process.send_signal(signal.SIGTERM)
        code = process.wait(STARTUP_DEADLINE_S)
    assert (True, 0) == (alive, code), "".join(lines)
    assert "(unchanged)" in lines[-1]


def test_ctrl_c_while_the_callgate_command_imports_exits_130_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Ctrl-C right after ``make run`` (SIGINT as soon as it catches signals, while Python
    still imports callgate's modules) ends the command as Ctrl-C does later: exit 130, no
    traceback."""
    with _callgate("--config", str(_sample_config_in(tmp_path)), "run") as process:
        _catching_sighup(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=STARTUP_DEADLINE_S)
    assert (130, "") == (process.returncode, stderr)


def test_another_command_still_ends_on_a_sighup_that_came_while_it_imported() -> None:
    """Any command but ``run`` keeps SIGHUP's default action: one that came while the
    ``callgate`` command imported is delivered once it knows the command (it ends)."""
    with _callgate("check", "0612345678", pipe=False) as process:
        _catching_sighup(process)
        process.send_signal(signal.SIGHUP)
        code = process.wait(STARTUP_DEADLINE_S)
    assert -signal.SIGHUP == code


def test_workers_survive_a_reload_forwarded_while_they_import(tmp_path: Path) -> None:
    """``run --workers 2`` and ``systemctl reload`` right after ``start``: the parent
    reloads once it is up and forwards SIGHUP to its workers, which are still importing
    their modules then. It waits (blocked) until their handler is in place, and they reload
    once up; it killed them (exit -1), started again a second later."""
    lines: list[str] = []
    config = str(_sample_config_in(tmp_path))
    with _callgate("--config", config, "run", "--workers", "2") as process:
        _catching_sighup(process)
        process.send_signal(signal.SIGHUP)
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        serving = 0
        while time.monotonic() < deadline and process.poll() is None and serving < 2:
            lines.append(process.stderr.readline())
            serving += bool(re.search(r"worker \d: FastAGI", lines[-1]))
        time.sleep(1.0)  # the supervisor sees an exited worker within 0.2 s
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=STARTUP_DEADLINE_S)
    log = "".join(lines) + rest
    assert (2, []) == (serving, re.findall(r"worker \d \(pid \d+\) exited with .*", log)), log
    assert 3 == log.count("(unchanged)"), log  # the parent, then each worker


def test_another_command_under_nohup_lives_on_after_sighups(tmp_path: Path) -> None:
    """``nohup callgate audit tail -f`` (or a long ``list import``): SIGHUP is ignored, as
    nohup asks, whether it comes while the command imports or later; the command caught
    it while importing, then gave it SIG_DFL back, and the hangup ended it."""
    config = str(_sample_config_in(tmp_path))
    with _callgate("--config", config, "audit", "tail", "-f", prefix=("nohup",)) as process:
        time.sleep(0.1)
        process.send_signal(signal.SIGHUP)  # while it imports
        time.sleep(3.0)
        process.send_signal(signal.SIGHUP)  # following the audit trail
        time.sleep(1.0)
        alive = process.poll() is None
        process.terminate()
        code = _ended_within(process, STOP_DEADLINE_S, tmp_path)
        assert process.stderr is not None
        said = process.stderr.read()  # what it said, should it have ended early
    assert (True, -signal.SIGTERM) == (alive, code), said


def test_a_sigterm_before_the_command_runs_is_never_lost() -> None:
    """SIGTERM to a command still starting (reading its config, importing: Python's own
    Ctrl-C handler in place) is SIGTERM's own action. It was a KeyboardInterrupt raised
    wherever the process was, and in a weakref callback of the import machinery Python
    prints and ignores it: the command ran on (``audit tail -f``, for ever)."""
    script = (
        "import os, signal, time, weakref\n"
        "from gate import cli\n"
        "signal.signal(signal.SIGTERM, cli._terminated)  # as cli.main does\n"
        "class Module: pass\n"
        "held = Module()\n"
        "def callback(_):  # where the import machinery's module locks go\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs in this callback\n"
        "ref = weakref.ref(held, callback)\n"
        "del held\n"
        "time.sleep(3)\n"
        "print('ran on')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert (-signal.SIGTERM, "") == (done.returncode, done.stdout), done.stderr


def _ended_within(process: subprocess.Popen[str], seconds: float, state: Path) -> int:
    """``process``'s status once it ends, within ``seconds``; else fail with what it was
    doing (its Python stacks, by py-spy) and the end of its embedded Redis's log."""
    try:
        return process.wait(seconds)
    except subprocess.TimeoutExpired:
        spy = Path(sys.executable).with_name("py-spy")
        dump = subprocess.run(
            [str(spy), "dump", "--pid", str(process.pid)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        logs = "".join(p.read_text(errors="replace")[-2000:] for p in state.rglob("redis.log"))
        pytest.fail(
            f"still running {seconds:g} s after SIGTERM:\n{dump.stdout}{dump.stderr}\n"
            f"embedded Redis log:\n{logs}"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_second_instance_lock_on_the_port_fails_whatever_its_state_directory(
    tmp_path: Path,
) -> None:
    """Two ``run --workers`` instance locks on one FastAGI port, in two state directories:
    the second fails in one line naming the port (their workers would share it through
    SO_REUSEPORT and split the calls between two gates)."""
    first = InstanceLock(tmp_path / "one", 4573)
    first.acquire()
    try:
        with pytest.raises(InputError) as refused:
            InstanceLock(tmp_path / "two", 4573).acquire()
    finally:
        first.release()
    assert "already serves FastAGI port 4573 on this machine" in str(refused.value)
    assert "\n" not in str(refused.value)
    again = InstanceLock(tmp_path / "two", 4573)
    again.acquire()  # free once the first is released
    again.release()


def test_a_second_run_with_workers_on_the_same_port_and_another_state_dir_fails(
    tmp_path: Path,
) -> None:
    """``run --workers 2`` twice on one FastAGI port, each with its own state directory (so
    its own embedded Redis): the second exits 2 in one line saying what is in the way,
    and the first still serves every call (no worker of the second joined its port)."""
    port = _free_port()
    configs = []
    for name in ("first", "second"):
        data = tmp_path / name
        data.mkdir()
        text = _sample_config_in(data).read_text().replace("port = 0", f"port = {port}", 1)
        (data / "callgate.toml").write_text(text)
        configs.append(str(data / "callgate.toml"))
    assert f"port = {port}\n" in Path(configs[0]).read_text()
    with _callgate("--config", configs[0], "run", "--workers", "2") as first:
        assert first.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        serving = 0
        while time.monotonic() < deadline and first.poll() is None and serving < 2:
            serving += bool(re.search(r"worker \d: FastAGI", first.stderr.readline()))
        assert 2 == serving
        with _callgate("--config", configs[1], "run", "--workers", "2") as second:
            _, refused = second.communicate(timeout=STARTUP_DEADLINE_S)
        answers = [asyncio.run(agi_check(port, "0612345678")) for _ in range(8)]
        alive = first.poll() is None
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=STARTUP_DEADLINE_S)
    assert (2, 1) == (second.returncode, len(refused.splitlines())), refused
    assert refused.startswith(
        "callgate: error: run: another callgate run --workers, with another state directory, "
        f"already serves FastAGI port {port} on this machine"
    ), refused
    assert alive
    assert {"no_consent:fr-l223-1-optin"} == {answer["CALLGATE_REASON"] for answer in answers}


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_the_workers_end_with_a_parent_killed_without_warning(tmp_path: Path) -> None:
    """``run --workers 2`` whose parent is SIGKILLed (the OOM killer): its workers stop too,
    so none goes on serving the port unsupervised, for a new instance to share with it; and
    they remove the directory they shared with it, which it could not remove."""
    config = str(_sample_config_in(tmp_path))
    with _callgate("--config", config, "run", "--workers", "2") as process:
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        pids: list[int] = []
        while time.monotonic() < deadline and process.poll() is None and not pids:
            line = process.stderr.readline()
            if found := re.search(r"2 workers \(pids (\d+), (\d+)\).* shared state in (\S+)", line):
                pids, shared = [int(found[1]), int(found[2])], Path(found[3])
        assert pids, "run --workers 2 did not log its workers"
        assert shared.is_dir()
        process.kill()
        process.wait(10)
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
            time.sleep(0.1)
        left = [pid for pid in pids if not _gone(pid)]
        for pid in left:  # cleanup: this test started them
            os.kill(pid, signal.SIGKILL)
    assert ([], False) == (left, shared.exists())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_serving_gate_keeps_its_startup_heap_out_of_full_collections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A full garbage collection scanned every object a running gate holds (some 85 000:
    30 to 60 ms on this machine, with no call answered meanwhile). Once it serves, ``run``
    and every process of ``run --workers 2`` move them out of the collector's sight
    (``gc.freeze``): each process, stopped, says how many it froze."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, gc, os\n"
        "def said():\n"
        f"    with open(os.path.join({str(tmp_path)!r}, f'frozen-{{os.getpid()}}'), 'w') as f:\n"
        "        f.write(str(gc.get_freeze_count()))\n"
        "atexit.register(said)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook))
    config = str(_sample_config_in(tmp_path))
    wanted = ["FastAGI on agi://"] if workers == 1 else ["worker 0: FastAGI", "worker 1: FastAGI"]
    extra = [] if workers == 1 else ["--workers", str(workers)]
    with _callgate("--config", config, "run", *extra) as process:
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while wanted and time.monotonic() < deadline and process.poll() is None:
            line = process.stderr.readline()
            wanted = [text for text in wanted if text not in line]
        assert [] == wanted, "the gate did not start"
        process.send_signal(signal.SIGTERM)
        assert 0 == process.wait(STARTUP_DEADLINE_S)
    counts = sorted(int(path.read_text()) for path in tmp_path.glob("frozen-*"))
    assert (len(counts), True) == (1 if workers == 1 else 3, counts[0] > 20_000), counts


def test_the_workers_serve_on_when_their_shared_directory_is_removed(tmp_path: Path) -> None:
    """``rm -rf /tmp/callgate-*`` (or a temporary-files cleaner) under a running ``run
    --workers 2``: the parent makes the shared directory again, with the config version in
    force, and the workers write their metrics there again. Every worker exited on its
    next metrics write, and again each time it was started, for as long as the parent ran:
    no worker served FastAGI."""
    config = str(_sample_config_in(tmp_path))
    with _callgate("--config", config, "run", "--workers", "2") as process:
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        lines: list[str] = []
        shared, port, serving = None, 0, 0
        while time.monotonic() < deadline and process.poll() is None and serving < 2:
            lines.append(process.stderr.readline())
            if found := re.search(r"workers \(pids .* on agi://[^:]+:(\d+)/.* in (\S+)", lines[-1]):
                port, shared = int(found[1]), Path(found[2])
            serving += bool(re.search(r"worker \d: FastAGI", lines[-1]))
        assert (2, True) == (serving, shared is not None), "".join(lines)
        assert shared is not None
        time.sleep(1.5)  # each worker has written its metrics
        shutil.rmtree(shared)
        time.sleep(3.0)  # each worker's next write, and a start again were it to exit
        files = sorted(path.name for path in shared.iterdir()) if shared.is_dir() else []
        answer = asyncio.run(agi_check(port, "0612345678"))
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=STOP_DEADLINE_S)
    log = "".join(lines) + rest
    assert [] == re.findall(r"worker \d \(pid \d+\) exited with .*", log), log
    assert ["config-version", "worker-0.prom", "worker-1.prom"] == files, log
    assert "no_consent:fr-l223-1-optin" == answer["CALLGATE_REASON"]
    assert 0 == process.returncode


def _served_versions(shared: Path) -> list[str]:
    """The config version each worker of ``run --workers`` last said it serves."""
    return [
        re.findall(r'callgate_config_info\{version="(\w+)"', path.read_text())[0]
        for path in sorted(shared.glob("worker-*.prom"))
    ]


def test_a_sighup_to_one_worker_serves_only_the_version_its_parent_has_in_force(
    tmp_path: Path,
) -> None:
    """The config edited, then SIGHUP to one worker of ``run --workers 2`` (``kill -HUP``
    on the wrong PID, ``systemctl kill -s HUP``): the worker refuses the file its parent
    has not accepted, on one line, and serves on with its siblings' version; the parent's
    own reload then moves both. The worker served the edited file alone: two sets of
    rules on one port, until someone reloaded the parent."""
    config = _sample_config_in(tmp_path)
    with _callgate("--config", str(config), "run", "--workers", "2") as process:
        assert process.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        lines: list[str] = []
        pids: list[int] = []
        serving = 0
        while time.monotonic() < deadline and process.poll() is None and serving < 2:
            lines.append(process.stderr.readline())
            if found := re.search(r"workers \(pids (\d+), (\d+)\).* in (\S+)", lines[-1]):
                pids, shared = [int(found[1]), int(found[2])], Path(found[3])
            serving += bool(re.search(r"worker \d: FastAGI", lines[-1]))
        assert (2, 2) == (serving, len(pids)), "".join(lines)
        time.sleep(1.5)  # each worker has written its metrics
        before = _served_versions(shared)
        config.write_text(config.read_text() + "\n# edited, not reloaded\n")
        os.kill(pids[0], signal.SIGHUP)
        time.sleep(2.5)  # the worker's reload, then its next metrics
        after_worker = _served_versions(shared)
        process.send_signal(signal.SIGHUP)
        time.sleep(2.5)
        after_parent = _served_versions(shared)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=STOP_DEADLINE_S)
    log = "".join(lines) + rest
    assert 1 == len(set(before)), before
    assert before == after_worker, log
    assert (1, False) == (len(set(after_parent)), after_parent == before), log
    refused = [line for line in log.splitlines() if "reload refused" in line]
    assert 1 == len(refused), log
    assert (True, True) == ("config version" in refused[0], "callgate reload" in refused[0])


def test_a_sigterm_while_run_waits_for_its_embedded_redis_stops_it_at_once(
    tmp_path: Path,
) -> None:
    """``systemctl stop`` while ``run`` waits for its embedded Redis (busy, loading a large
    append-only file: here a socket that accepts and never answers): it stops at once,
    status 0, nothing served. It waited out ``redis.embedded_wait`` (60 s), then ended
    with an error line."""
    config = _sample_config_in(tmp_path)
    data = tmp_path / "redis"
    data.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(data / "redis.sock"))
        busy.listen(8)
        with _callgate("--config", str(config), "run") as process:
            assert process.stderr is not None
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            lines: list[str] = []
            while time.monotonic() < deadline and process.poll() is None:
                lines.append(process.stderr.readline())
                if "waiting up to" in lines[-1]:
                    break
            assert "waiting up to 60 s" in lines[-1], "".join(lines)
            process.send_signal(signal.SIGTERM)
            begun = time.monotonic()
            try:
                code = process.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - begun
            rest = process.stderr.read() if code is not None else ""
    assert (0, True) == (code, took < 5.0), "".join(lines) + rest
    assert "error" not in rest, rest
    assert "FastAGI on" not in rest, rest


def test_a_deleted_state_directory_keeps_its_instance_lock_and_secret(tmp_path: Path) -> None:
    """The state directory of a running ``run --workers 2`` deleted (``rm -rf``): the
    parent makes its instance lock again, locked, and writes the secret file again with
    the secret in force. A second ``run`` with the same config is then refused by the
    instance lock naming the first's PID, and made no secret of its own. The lock stayed
    deleted (the second was refused only by the port's claim, as if another state
    directory) and the second command made a new random secret: the data keyed with the
    first's was useless once the gate restarted."""
    state = tmp_path / "state"
    state.mkdir()
    port = _free_port()
    config = tmp_path / "callgate.toml"
    text = _sample_config_in(state).read_text().replace("port = 0", f"port = {port}", 1)
    config.write_text(text)
    secret_file, lock = state / "callgate.secret", state / f"run-agi-{port}.lock"
    with _callgate("--config", str(config), "run", "--workers", "2") as first:
        assert first.stderr is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        lines: list[str] = []
        serving = 0
        while time.monotonic() < deadline and first.poll() is None and serving < 2:
            lines.append(first.stderr.readline())
            serving += bool(re.search(r"worker \d: FastAGI", lines[-1]))
        assert 2 == serving, "".join(lines)
        secret = secret_file.read_text()
        shutil.rmtree(state)
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline and not (secret_file.exists() and lock.exists()):
            time.sleep(0.1)
        kept = (secret_file.exists() and secret_file.read_text(), lock.exists())
        with _callgate("--config", str(config), "run", "--workers", "2") as second:
            _, refused = second.communicate(timeout=STARTUP_DEADLINE_S)
        answer = asyncio.run(agi_check(port, "0612345678"))
        first.send_signal(signal.SIGTERM)
        _, rest = first.communicate(timeout=STOP_DEADLINE_S)
    log = "".join(lines) + rest
    assert (secret, True) == kept, log
    assert secret == secret_file.read_text()
    assert (2, 1) == (second.returncode, len(refused.splitlines())), refused
    assert refused.startswith(
        f"callgate: error: run: another callgate (pid {first.pid}) already serves FastAGI "
        f"port {port}"
    ), refused
    assert "no_consent:fr-l223-1-optin" == answer["CALLGATE_REASON"], log
    assert 0 == first.returncode, log
