"""Redis faults that are not a lost connection: a Redis busy running a script (BUSY), a
decision script's reply of an unexpected shape, a Redis over maxmemory (OOM) refusing
the writes that would free memory. Each on a real redis-server."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gate.core.errors import StoreError, StoreUnavailable
from gate.core.model import Attempt, Verdict
from gate.service import Evaluation, Gate, Observed
from gate.store import client
from gate.store.client import Store
from tests.conftest import make_config, spawned_redis

NUMBER = "0612345678"
BUSY_WAIT_S = 5.0


def attempt() -> Attempt:
    return Attempt(dialled=NUMBER, now=datetime.now(UTC))


class Failures:
    """A decision observer that keeps the store errors it is told about."""

    def __init__(self) -> None:
        self.errors: list[StoreError] = []

    def decided(self, observed: Observed) -> None:
        pass

    def undone(self, evaluation: Evaluation) -> None:
        pass

    def store_failed(self, error: StoreError) -> None:
        self.errors.append(error)


@contextlib.contextmanager
def busy(url: str) -> Iterator[None]:
    """A script looping in Redis (another client's EVAL), past the busy threshold: every
    other command is answered BUSY until the script is killed (SCRIPT KILL, on leaving)."""
    looping = redis.Redis.from_url(url, socket_timeout=BUSY_WAIT_S * 2)
    other = redis.Redis.from_url(url, socket_timeout=BUSY_WAIT_S)
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            looping.eval("while true do end", 0)
        except redis.RedisError as exc:  # killed: "ERR Error running script..."
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            try:
                other.ping()
            except redis.ResponseError as exc:
                answer = str(exc)
                break
            assert time.monotonic() < deadline, "Redis never answered BUSY"
            time.sleep(0.02)
        assert answer.startswith("BUSY"), answer
        yield
    finally:
        deadline = time.monotonic() + BUSY_WAIT_S
        while thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(redis.ResponseError):  # NOTBUSY: not running yet
                other.script_kill()
            thread.join(0.1)
        other.close()
        looping.close()
    assert not thread.is_alive()
    assert errors, "the looping script was not killed"


async def test_a_redis_busy_running_a_script_is_unavailable_and_gets_the_fail_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client's script loops past lua-time-limit: Redis answers BUSY. The decision
    gets the fail mode, counted as Redis unavailable (not as an error reply), and the log
    line says Redis is busy running a script. It used to count as an "error"."""
    with spawned_redis(tmp_path, ("--lua-time-limit", "50")) as (url, _):
        store = Store(url, 1.0)
        gate = Gate(make_config(), store)
        failures = Failures()
        gate.observers.append(failures)
        try:
            await gate.decide(attempt(), record=False, door="cli")  # connect, load the script
            with busy(url), caplog.at_level(logging.WARNING, logger="callgate"):
                decision = await gate.decide(attempt(), record=True, door="agi")
        finally:
            await store.close()
    assert (Verdict.DEFER, "store_unavailable") == (decision.verdict, decision.reason)
    assert [StoreUnavailable] == [type(e) for e in failures.errors]
    assert "busy running a script" in str(failures.errors[0])
    assert any("busy running a script" in r.getMessage() for r in caplog.records)


def test_busykey_is_not_busy() -> None:
    """RESTORE's BUSYKEY (the target key exists) is an error reply, not Redis busy."""
    busykey = redis.ResponseError("BUSYKEY Target key name already exists.")
    error = client.translate_error(busykey, "x")
    assert not isinstance(error, StoreUnavailable)
