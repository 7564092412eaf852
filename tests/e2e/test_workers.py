"""``callgate run --workers N`` as users start it: real processes, the session's real Redis,
scripted FastAGI peers and, for the Stasis lead, a real Asterisk.

What must hold with several workers: FastAGI on one port served by all of them; caps exact
across them (counted in the one atomic Redis call); ``/metrics`` the sum over the workers;
one worker (and one only) running the Stasis application, another taking over when it
dies; a killed worker started again; a bounded stop.
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateproc import GateProcess, GateProcessError, callgate_dialplan, write_config
from sandbox import AsteriskSandbox, SandboxFactory, free_port

from gate import runtime
from tests.conftest import TEST_SECRET
from tests.test_run import agi_check

WORKERS_RE = re.compile(r"(\d+) workers \(pids ([\d, ]+)\).* shared state in (\S+)")
LEADS_RE = r"worker (\d+) leads the Stasis application"
NUMBER = "0612345678"


def start(tmp_path: Path, redis_url: str, workers: int, extra_toml: str = "") -> GateProcess:
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "2s"}},
        extra_toml=extra_toml,
        state_dir=tmp_path / "state",
    )
    process = GateProcess(config, tmp_path / "callgate.log", port, ("--workers", str(workers)))
    process.start()
    process.wait_for_log(r"worker \d+: FastAGI on .*, event loop uvloop", count=workers)
    return process


@pytest.fixture
def four(tmp_path: Path, redis_url: str) -> Iterator[GateProcess]:
    """``callgate run --workers 4`` on the sample's lists and 4-per-30-days cap."""
    process = start(tmp_path, redis_url, 4)
    yield process
    process.stop()


def metric(process: GateProcess, name: str) -> float:
    """The sum of the samples named ``name`` in the parent's ``/metrics``."""
    url = f"http://127.0.0.1:{process.http_port()}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def readyz(process: GateProcess) -> tuple[int, dict[str, Any]]:
    """The parent's ``/readyz``: its status and body."""
    url = f"http://127.0.0.1:{process.http_port()}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    body: dict[str, Any] = json.loads(raw)
    return status, body


def wait_ready(process: GateProcess, within_s: float = 10.0) -> dict[str, Any]:
    """The body of the parent's ``/readyz`` once it answers 200 (bounded)."""
    deadline = time.monotonic() + within_s
    status, body = readyz(process)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        status, body = readyz(process)
    assert (200, True) == (status, body["ready"]), body
    return body


def worker_files(process: GateProcess) -> list[str]:
    directory = Path(WORKERS_RE.search(process.read_log())[3])  # type: ignore[index]
    return [p.read_text() for p in sorted(directory.glob("worker-*.prom"))]


async def checks(port: int, count: int) -> list[str]:
    """``count`` concurrent FastAGI checks of one number: the results, in any order."""
    answers = await asyncio.gather(*(agi_check(port, NUMBER) for _ in range(count)))
    return [a["CALLGATE_RESULT"] for a in answers]


def test_200_concurrent_attempts_through_4_workers_allow_exactly_the_cap(
    four: GateProcess,
) -> None:
    """200 concurrent checks of one number, spread over 4 workers: exactly 4 ALLOW (the
    cap), the rest DEFER; /metrics counts all 200; more than one worker served them."""
    results = asyncio.run(checks(four.agi_port, 200))
    time.sleep(1.5)  # the workers write their metrics every second
    served = [
        int(float(m[1]))
        for text in worker_files(four)
        if (m := re.search(r"^callgate_agi_connections_total (\S+)", text, re.M))
    ]
    assert (4, 196) == (results.count("ALLOW"), results.count("DEFER"))
    assert 200 == metric(four, 'callgate_decisions_total{door="agi"')
    assert 200 == sum(served)
    assert 2 <= sum(1 for n in served if n > 0)


def test_a_killed_worker_is_started_again_and_the_port_keeps_answering(
    four: GateProcess,
) -> None:
    """SIGKILL to one worker: the parent starts it again; checks keep being answered."""
    pids = WORKERS_RE.search(four.read_log())[2].split(", ")  # type: ignore[index]
    since = four.log_size()
    os.kill(int(pids[0]), signal.SIGKILL)
    four.wait_for_log(r"worker 0 \(pid \d+\) exited with -9; starting it again", since=since)
    four.wait_for_log(r"worker 0: FastAGI on", since=since)
    results = asyncio.run(checks(four.agi_port, 20))
    assert 20 == len(results)


def test_the_workers_serve_on_the_loop_run_was_given(tmp_path: Path, redis_url: str) -> None:
    """Workers serve on uvloop as ``run`` does by default; ``run --workers 2 --loop asyncio``
    passes the loop on to every worker (each startup line names it), and they answer."""
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        state_dir=tmp_path / "state",
    )
    run_args = ("--workers", "2", "--loop", "asyncio")
    process = GateProcess(config, tmp_path / "callgate.log", port, run_args)
    process.start()
    try:
        process.wait_for_log(r"worker \d+: FastAGI on .*, event loop asyncio", count=2)
        assert 20 == len(asyncio.run(checks(port, 20)))
        assert "event loop uvloop" not in process.read_log()
    finally:
        process.stop()


def test_stopping_with_workers_is_bounded_and_leaves_no_worker(four: GateProcess) -> None:
    """SIGTERM: the parent stops every worker and exits 0 within its bound."""
    pids = [int(p) for p in WORKERS_RE.search(four.read_log())[2].split(", ")]  # type: ignore[index]
    started = time.monotonic()
    code = four.terminate()
    elapsed = time.monotonic() - started
    alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert (0, []) == (code, alive)
    assert elapsed < 10


STASIS_DIALPLAN = """
#include callgate.conf

[gated]
exten => _X.,1,GoSub(callgate-stasis,s,1(${EXTEN},default,e2e,campaign))
 same => n,Log(NOTICE,CALLGATE-E2E reached id=${UNIQUEID} result=${CALLGATE_RESULT})
 same => n,Answer()
 same => n,Wait(2)
 same => n,Hangup()
"""


async def reached(sandbox: AsteriskSandbox, channel_ids: list[str], within: float) -> int:
    """How many of the channels reached the answering step (bounded wait for all)."""
    deadline = time.monotonic() + within
    found: set[str] = set()
    for _ in range(int(within / 0.05) + 1):
        found = set(re.findall(r"CALLGATE-E2E reached id=(\S+) result=ALLOW", sandbox.read_log()))
        if all(c in found for c in channel_ids) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    return sum(1 for c in channel_ids if c in found)


async def test_one_worker_leads_stasis_and_another_takes_over_when_it_dies(
    asterisk_factory: SandboxFactory, redis_url: str, tmp_path: Path
) -> None:
    """With 2 workers and [ari], one leads the Stasis application; SIGKILL to it, and the
    other takes the lead and decides the next calls; every call is decided exactly once."""
    probe = free_port()
    sandbox = asterisk_factory(
        STASIS_DIALPLAN, extra_files={"callgate.conf": callgate_dialplan(probe)}
    )
    ari = (
        f'[ari]\nurl = "{sandbox.ari_url}"\nuser = "{sandbox.ari_user}"\n'
        f'password = "{sandbox.ari_password}"\nreconnect_max = "1s"\n'
    )
    process = start(tmp_path, redis_url, 2, ari)
    try:
        first = int(process.wait_for_log(LEADS_RE)[1])
        process.wait_for_log("ARI connected")
        before = [await sandbox.originate_local(f"06123400{i:02d}", "gated") for i in range(5)]
        assert 5 == await reached(sandbox, before, 10)
        await asyncio.sleep(1.5)  # the leader has written its counts
        since = process.log_size()
        os.kill(first, signal.SIGKILL)
        second = int(process.wait_for_log(LEADS_RE, since=since)[1])
        process.wait_for_log("ARI connected", since=since)
        after = [await sandbox.originate_local(f"06123401{i:02d}", "gated") for i in range(5)]
        assert 5 == await reached(sandbox, after, 10)
        ready = await asyncio.to_thread(wait_ready, process)  # the killed one started again
        await asyncio.sleep(1.5)  # the workers write their metrics every second
        decided = await asyncio.to_thread(metric, process, 'callgate_decisions_total{door="stasis"')
        connected = ready["checks"]["ari"]["ok"]
    finally:
        process.stop()
    assert first != second
    # The killed leader's counts stay in the sum: a counter never goes backwards.
    assert (10.0, True) == (decided, connected)


def test_counters_keep_the_counts_of_workers_killed_and_started_again(
    tmp_path: Path, redis_url: str
) -> None:
    """Every worker SIGKILLed after 20 checks: /readyz is 503 naming them until they are
    started again, and /metrics still counts the 20 (a counter never goes backwards)."""
    process = start(tmp_path, redis_url, 2)
    try:
        assert 20 == len(asyncio.run(checks(process.agi_port, 20)))
        time.sleep(1.5)  # the workers write their metrics every second
        before = metric(process, 'callgate_decisions_total{door="agi"')
        since = process.log_size()
        for pid in WORKERS_RE.search(process.read_log())[2].split(", "):  # type: ignore[index]
            os.kill(int(pid), signal.SIGKILL)
        process.wait_for_log(r"worker \d \(pid \d+\) exited with -9", since=since, count=2)
        down = readyz(process)
        wait_ready(process)
        time.sleep(1.5)  # the new workers have written their (zero) counts
        after = metric(process, 'callgate_decisions_total{door="agi"')
    finally:
        process.stop()
    assert (20.0, 20.0) == (before, after)
    assert (503, False) == (down[0], down[1]["checks"]["workers"]["ok"])
    assert "is not running" in down[1]["checks"]["workers"]["error"]


def test_a_worker_started_again_refuses_a_config_file_edited_and_not_reloaded(
    tmp_path: Path, redis_url: str
) -> None:
    """The config file edited, not reloaded, then a worker killed: the worker started again
    refuses to serve the file (one line naming both versions), /readyz is 503; after a
    reload (SIGHUP) it serves the new version and /readyz is 200 again."""
    process = start(tmp_path, redis_url, 2)
    try:
        old_version = wait_ready(process)["config_version"]
        config = process.config_path
        config.write_text(config.read_text().replace("limit = 4", "limit = 5"))
        pids = WORKERS_RE.search(process.read_log())[2].split(", ")  # type: ignore[index]
        since = process.log_size()
        os.kill(int(pids[0]), signal.SIGKILL)
        refused = process.wait_for_log(
            r"callgate: error: worker 0: \S+ is now config version (\w+), but the gate serves "
            r"version (\w+) .*not serving it",
            since=since,
        )
        down = readyz(process)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGHUP)  # systemctl reload
        ready = wait_ready(process, within_s=15)
    finally:
        process.stop()
    assert (refused[2], refused[1]) == (old_version, ready["config_version"])
    assert old_version != ready["config_version"]
    assert (503, False) == (down[0], down[1]["checks"]["workers"]["ok"])


def test_a_second_instance_on_the_same_port_fails_at_start_naming_the_first(
    tmp_path: Path, redis_url: str
) -> None:
    """A second ``run --workers 2`` with the same config exits 2 with one line naming the
    first instance's PID (its workers would have shared the port through SO_REUSEPORT)."""
    first = start(tmp_path, redis_url, 2)
    holder = first.pid
    second = GateProcess(
        first.config_path, tmp_path / "second.log", first.agi_port, ("--workers", "2")
    )
    try:
        with pytest.raises(GateProcessError, match="exited with 2"):
            second.start()
    finally:
        second.stop()
        first.stop()
    expected = (
        f"callgate: error: run: another callgate (pid {holder}) already serves FastAGI "
        f"port {first.agi_port}"
    )
    assert expected in second.read_log()


def test_a_sighup_while_run_starts_is_a_reload_once_it_is_up(
    tmp_path: Path, redis_url: str
) -> None:
    """SIGHUP while ``run --workers 2`` is still starting (its first Redis PING unanswered):
    the process does not die; it starts and reloads once its reloader exists."""
    silent = socket.socket()  # a "Redis" that accepts and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    silent.settimeout(20)
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "2s"}},
        state_dir=tmp_path / "state",
    )
    process = GateProcess(config, tmp_path / "callgate.log", port, ("--workers", "2"))
    failed: list[GateProcessError] = []

    def start_it() -> None:
        try:
            process.start()
        except GateProcessError as exc:  # killed by the SIGHUP
            failed.append(exc)

    starting = threading.Thread(target=start_it)
    held = []
    try:
        starting.start()
        held.append(silent.accept()[0])  # the parent's PING: it is starting
        assert process.pid is not None
        os.kill(process.pid, signal.SIGHUP)
        starting.join(30)
        assert [] == failed
        process.wait_for_log(r"reloaded \S+: config version \w+ \(unchanged\)")
        alive = process.running
    finally:
        # The silent "Redis" goes first: stopping against it, each of the gate's and its
        # workers' Redis tasks would wait out its 2 s stop bound (not what is under test).
        for connection in [*held, silent]:
            connection.close()
        process.stop()
        starting.join(30)
    assert alive


async def test_a_worker_that_keeps_exiting_is_retried_ever_later_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that exits at once, every time: started again after 0.1 s, then 0.2, 0.4,
    0.8 (at most 4 times in 2 s, where a fixed delay restarts it 6 times); one warning at
    its first exit, one error when it keeps exiting, never one line per exit."""
    monkeypatch.setattr(runtime, "WORKER_RESTART_S", 0.1)
    monkeypatch.setattr(runtime, "WORKER_RESTART_MAX_S", 1.0)
    caplog.set_level(logging.INFO, logger="callgate")
    workers = runtime.Workers([sys.executable, "-c", "raise SystemExit(3)"], 1, tmp_path, 0)
    stop = asyncio.Event()
    workers.start()
    try:
        supervising = asyncio.create_task(workers.supervise(stop))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(supervising, 5)
        problems = workers.problems()
    finally:
        await workers.stop()
    logged = [r.levelname for r in caplog.records if r.getMessage().startswith("worker 0")]
    assert 2 <= workers.restarts <= 4
    assert ["WARNING", "ERROR"] == logged
    assert re.fullmatch(r"worker 0 is (not running|starting)", " / ".join(problems))
