"""Long-lived tasks stop on request, within a bound, against a REAL Redis that hangs.

A Redis whose clients are paused (``CLIENT PAUSE``: write commands, or all commands,
wait until the pause ends) is the hang: the audit writer's XTRIM or the list-metrics
refresher's reads then wait on a real server. ``close()`` must still return within its
bound (cancelling the task, logged), never swallow that cancel, and never hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis

from gate.config.loader import AuditConfig
from gate.core.model import Attempt
from gate.ops.audit import AuditLog
from gate.ops.metrics import ListRefresher, Metrics
from gate.runtime import open_gate
from gate.service import CANCEL_GRACE_S, Gate
from gate.store.client import Store
from tests.conftest import make_config

ROUNDS = 1000
#: close(within_s=STOP_S) cancels at once; the cancel must end the writer well within this
CLOSE_BOUND_S = 1.0
STOP_S = 0.001


async def writes_waiting(watcher: aioredis.Redis, command: str, seen: set[int]) -> None:
    """Wait (bounded) until a new client sits paused (flag ``b``) on ``command``."""
    for _ in range(2000):  # bounded: 2 s
        for client in await watcher.client_list():
            fresh = int(client["id"]) not in seen
            if client["cmd"] == command and "b" in client["flags"] and fresh:
                seen.add(int(client["id"]))
                return
        await asyncio.sleep(0.001)
    raise AssertionError(f"no client waiting on {command} within 2 s")


@pytest.fixture
def paused_writes(redis_url: str) -> Iterator[None]:
    """The test's Redis with write commands paused (reads still answer) for the test."""
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(300_000, all=False)
    try:
        yield None
    finally:
        admin.client_unpause()
        admin.close()


async def test_closing_the_audit_writer_in_its_first_xtrim_always_returns_in_bound(
    redis_url: str, paused_writes: None, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 times: start a writer, wait until its first XTRIM hangs in Redis, close() it.
    Every close returns within its bound and leaves no writer running."""
    caplog.set_level(logging.ERROR, logger="callgate")
    client = aioredis.from_url(redis_url, socket_timeout=120)
    watcher = aioredis.from_url(redis_url)
    seen: set[int] = set()
    slowest_s = 0.0
    try:
        async with asyncio.timeout(120):
            for _ in range(ROUNDS):
                audit = AuditLog(client, "callgate", AuditConfig())
                audit.start()
                await writes_waiting(watcher, "xtrim", seen)
                started = time.monotonic()
                await audit.close(within_s=STOP_S)
                slowest_s = max(slowest_s, time.monotonic() - started)
    finally:
        await client.aclose()
        await watcher.aclose()
    running = [t for t in asyncio.all_tasks() if t.get_name() == "callgate-audit"]
    assert ([], []) == (running, [r.getMessage() for r in caplog.records])
    assert slowest_s < CLOSE_BOUND_S


async def test_closing_the_audit_writer_with_records_stuck_gives_up_within_its_bound(
    redis_url: str, paused_writes: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Records queued and Redis hanging: close() gives up on the final flush within its
    bound and says how many records were not written."""
    caplog.set_level(logging.WARNING, logger="callgate")
    client = aioredis.from_url(redis_url, socket_timeout=120)
    audit = AuditLog(client, "callgate", AuditConfig())
    audit.append({"verdict": "ALLOW"})
    started = time.monotonic()
    try:
        await audit.close(within_s=0.05, flush_within_s=0.2)
    finally:
        await client.aclose()
    assert time.monotonic() - started < 0.2 + CANCEL_GRACE_S
    assert any("1 records could not be written" in r.getMessage() for r in caplog.records)


async def test_the_list_refresher_stuck_in_redis_closes_within_its_bound(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command paused: the refresher's read hangs; close() cancels it (logged) and
    returns within its bound."""
    caplog.set_level(logging.WARNING, logger="callgate")
    store = Store(redis_url, deadline_s=1.0)
    refresher = ListRefresher(Metrics(), Gate(make_config(), store), every_s=60.0)
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(1500, all=True)  # ends by itself: no command could lift it
    try:
        refresher.start()
        await asyncio.sleep(0.2)  # its first refresh is now waiting on Redis
        started = time.monotonic()
        await refresher.close(within_s=0.1)
        elapsed_s = time.monotonic() - started
    finally:
        admin.close()
        await store.close()
    assert elapsed_s < 0.1 + CANCEL_GRACE_S
    assert any("refresher did not stop" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("records", "writers"), [(False, 0), (True, 1)])
async def test_the_audit_writer_runs_only_in_a_process_that_records(
    redis_url: str, records: bool, writers: int
) -> None:
    """``check`` without ``--record`` (records=False) starts no audit writer; ``run`` and
    ``check --record`` (records=True) start one."""
    config = make_config({"redis": {"url": redis_url}})
    async with open_gate(config, records=records) as gate:
        await gate.decide(Attempt("0612345678", now_utc()), record=records, door="cli")
        running = [t for t in asyncio.all_tasks() if t.get_name() == "callgate-audit"]
    assert writers == len(running)


def now_utc() -> datetime:
    return datetime.now(UTC)
