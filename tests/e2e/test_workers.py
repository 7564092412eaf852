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
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateproc import GateProcess, callgate_dialplan, write_config
from sandbox import AsteriskSandbox, SandboxFactory, free_port

from tests.conftest import TEST_SECRET
from tests.test_run import agi_check

WORKERS_RE = re.compile(r"(\d+) workers \(pids ([\d ]+)\).* shared state in (\S+)")
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


def readyz(process: GateProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{process.http_port()}/readyz"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
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
    pids = WORKERS_RE.search(four.read_log())[2].split()  # type: ignore[index]
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
        tmp_path / "callgate.toml", redis_url=redis_url, agi_port=port, secret=TEST_SECRET
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
    pids = [int(p) for p in WORKERS_RE.search(four.read_log())[2].split()]  # type: ignore[index]
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
        since = process.log_size()
        os.kill(first, signal.SIGKILL)
        second = int(process.wait_for_log(LEADS_RE, since=since)[1])
        process.wait_for_log("ARI connected", since=since)
        after = [await sandbox.originate_local(f"06123401{i:02d}", "gated") for i in range(5)]
        assert 5 == await reached(sandbox, after, 10)
        await asyncio.sleep(1.5)  # the workers write their metrics every second
        decided = await asyncio.to_thread(metric, process, 'callgate_decisions_total{door="stasis"')
        ready = await asyncio.to_thread(readyz, process)
        connected = ready["checks"]["ari"]["ok"]
    finally:
        process.stop()
    assert first != second
    # The killed leader's counts went with it: only the 5 calls after the takeover remain.
    assert (5.0, True) == (decided, connected)
