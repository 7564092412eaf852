"""A recorded decision that got the fail mode leaves nothing behind (gate.store.client,
void.lua), against the session's REAL Redis.

Found by tests/e2e/test_faults.py: with Redis stopped (SIGSTOP) for 2 s under load, a
Stasis call was refused with DEFER store_unavailable (its reply missed the deadline), yet
when Redis resumed it ran the queued decision script, which counted the attempt and wrote
an ALLOW audit entry: evidence of a call that never went out, and a cap that counted it.
Here ``CLIENT PAUSE`` holds the script the same way.
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import struct
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from gate.config.loader import Config, RedisConfig
from gate.core.engine import Plan
from gate.core.model import Attempt, Verdict
from gate.ops.audit import read_range
from gate.service import Evaluation, Gate
from gate.store import client
from gate.store.channel import Channel
from gate.store.client import Store, load_script
from tests.conftest import make_config
from tests.store.test_pool import proxy_to

NUMBER = "0612345678"
# A cap of one: a phantom attempt would refuse the next call.
ONCE = {"caps": [{"id": "once", "limit": 1, "window": "30d", "scope": "tenant"}]}
PAUSE_MS = 600
SETTLE_S = 5.0


def attempt() -> Attempt:
    return Attempt(dialled=NUMBER, now=datetime.now(UTC))


async def verdicts(store: Store) -> Counter[str]:
    """Verdicts of the audit entries the decision script wrote."""
    return Counter([r["verdict"] async for r in read_range(store.admin_client, "callgate")])


async def verdicts_at(redis_url: str) -> Counter[str]:
    """``verdicts`` read through a store of its own (closed after)."""
    store = Store(redis_url, 1.0)
    try:
        return await verdicts(store)
    finally:
        await store.close()


async def settled(store: Store, outcome: str) -> None:
    """Wait (bounded) until the store has counted one void with ``outcome``."""
    deadline = time.monotonic() + SETTLE_S
    for _ in range(int(SETTLE_S / 0.02)):
        if getattr(store, "voids", Counter())[outcome] or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


async def late_decision(
    config: Config, redis_url: str, sync_redis: redis.Redis
) -> tuple[Verdict, dict[str, int]]:
    """One recorded decision held by CLIENT PAUSE past its 100 ms deadline; Redis runs it
    once the pause ends. Its verdict and the store's voids, once the void settled."""
    store = Store(redis_url, 0.1)
    gate = Gate(config, store)
    try:
        await gate.decide(Attempt("0699999999", datetime.now(UTC)), record=False, door="cli")
        sync_redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        late = await gate.decide(attempt(), record=True, door="agi")
        await settled(store, "undone")
    finally:
        await store.close()
    return late.verdict, dict(getattr(store, "voids", {}))


async def next_call(config: Config, redis_url: str) -> tuple[Verdict, str]:
    store = Store(redis_url, 1.0)
    try:
        decision = await Gate(config, store).decide(attempt(), record=True, door="agi")
    finally:
        await store.close()
    return decision.verdict, decision.reason


async def test_a_decision_run_after_its_deadline_is_undone(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """Redis runs a recorded decision after the gate gave it the fail mode: its ALLOW
    entry is deleted and its attempt uncounted (cap of one: the next call is allowed)."""
    config = make_config(ONCE)
    late, voids = await late_decision(config, redis_url, sync_redis)
    left = await verdicts_at(redis_url)
    assert Verdict.DEFER == late
    assert Counter() == left
    assert (Verdict.ALLOW, "allowed") == await next_call(config, redis_url)
    assert {"undone": 1} == voids


async def test_without_an_audit_trail_the_late_attempt_is_still_uncounted(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """[audit] enabled = false: the void finds the attempt by its time and uncounts it."""
    config = make_config({**ONCE, "audit": {"enabled": False}})
    late, voids = await late_decision(config, redis_url, sync_redis)
    assert Verdict.DEFER == late
    assert (Verdict.ALLOW, "allowed") == await next_call(config, redis_url)
    assert {"undone": 1} == voids


async def test_a_decision_whose_reply_is_lost_is_undone_on_a_fresh_connection(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The connection drops after Redis ran the recorded decision: the decision gets the
    fail mode, and a void sent on a fresh connection removes its entry and its attempt."""
    sync_redis.script_load(load_script("decide.lua"))
    config = make_config(ONCE)
    async with proxy_to(redis_url, drops=10) as proxy:
        proxied = Store(f"redis://127.0.0.1:{proxy.port}/0", 1.0)
        try:
            lost = await Gate(config, proxied).decide(attempt(), record=True, door="agi")
            await settled(proxied, "undone")
        finally:
            await proxied.close()
    voids = dict(getattr(proxied, "voids", {}))
    left = await verdicts_at(redis_url)
    assert (Verdict.DEFER, "store_unavailable") == (lost.verdict, lost.reason)
    assert Counter() == left
    assert (Verdict.ALLOW, "allowed") == await next_call(config, redis_url)
    assert {"undone": 1} == voids


async def test_a_late_refusal_loses_its_entry_and_uncounts_nothing(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """A refused decision (the cap is full) held past its deadline: its DEFER entry is
    deleted too (the call's record is the fail mode's), the counted attempt stays."""
    config = make_config(ONCE)
    store = Store(redis_url, 0.1)
    gate = Gate(config, store)
    try:
        await gate.decide(Attempt("0699999999", datetime.now(UTC)), record=False, door="cli")
        await gate.decide(attempt(), record=True, door="agi")  # counted: the cap is full
        sync_redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        late = await gate.decide(attempt(), record=True, door="agi")
        await settled(store, "undone")
        left = await verdicts(store)
    finally:
        await store.close()
    assert (Verdict.DEFER, "store_unavailable") == (late.verdict, late.reason)
    assert Counter({"ALLOW": 1}) == left
    assert (Verdict.DEFER, "cap:once") == await next_call(config, redis_url)
    assert {"undone": 1} == dict(getattr(store, "voids", {}))


async def test_a_decision_cancelled_as_its_reply_arrives_is_undone_off_the_next_ones_channel(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded decision's caller is cancelled (a door stopping) in the very turn its
    reply arrives: the channel reads the reply and goes on to the next decision waiting
    for it; the void goes on a fresh connection, not behind on that channel, where the next
    decision would read the void's reply as its own (it failed with an AttributeError,
    its attempt counted and no answer given). One channel (``pool_size = 1``); a cap of
    two: the undone attempt leaves room for a third call."""
    config = make_config({"caps": [{"id": "two", "limit": 2, "window": "30d", "scope": "tenant"}]})
    settings = dataclasses.replace(RedisConfig(), pool_size=1, pool_wait_s=2.0)
    store = Store(redis_url, 1.0, settings)
    gate = Gate(config, store)
    first: list[asyncio.Task[Evaluation]] = []
    received = Channel.data_received

    def cancel_first_then_read(channel: Channel, data: bytes) -> None:
        if first and not first[0].done():  # its reply is here: its caller goes away now
            first[0].cancel()
        received(channel, data)

    try:
        await gate.decide(Attempt("0699999999", datetime.now(UTC)), record=False, door="cli")
        monkeypatch.setattr(Channel, "data_received", cancel_first_then_read)
        first.append(asyncio.create_task(gate.evaluate(attempt(), record=True, door="agi")))
        await asyncio.sleep(0)  # it sends its request and waits for the reply
        second = asyncio.create_task(gate.evaluate(attempt(), record=True, door="agi"))
        outcomes: list[Any] = await asyncio.gather(first[0], second, return_exceptions=True)
        monkeypatch.undo()
        await settled(store, "undone")
        left = await verdicts(store)
    finally:
        await store.close()
    cancelled, served = outcomes
    assert isinstance(cancelled, asyncio.CancelledError)
    assert (Verdict.ALLOW, "allowed") == (served.decision.verdict, served.decision.reason)
    assert Counter({"ALLOW": 1}) == left
    assert {"undone": 1} == dict(getattr(store, "voids", {}))
    assert (Verdict.ALLOW, "allowed") == await next_call(config, redis_url)


async def test_an_allow_undone_after_a_hang_up_is_logged_as_such(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``Gate.undo`` of an ALLOW whose channel hung up: the log says its call never went
    out (not that it got the fail mode: it did not)."""
    store = Store(redis_url, 1.0)
    gate = Gate(make_config(), store)
    try:
        gate.undo(await gate.evaluate(attempt(), record=True, door="agi"))
        await settled(store, "undone")
    finally:
        await store.close()
    assert [
        "a recorded decision to undo (its call never went out) had run in Redis (allowed); "
        "undone: its audit entry removed, 1 attempt(s) uncounted"
    ] == [r.getMessage() for r in caplog.records if "undo" in r.getMessage()]


def spoiled(sync_redis: redis.Redis, key: bytes | str, how: str, now_ms: int) -> object:
    """Replace the attempt log at ``key`` with a value callgate did not write (``how``:
    a HASH, 7 bytes, or 15 bytes ending with now_ms packed as a log entry); returns it."""
    sync_redis.delete(key)
    if how == "hash":
        sync_redis.hset(key, "field", "value")
        return sync_redis.hgetall(key)
    value = b"garbage" + (struct.pack(">d", now_ms) if how == "garbage+now" else b"")
    sync_redis.set(key, value)
    return value


def value_of(sync_redis: redis.Redis, key: bytes | str) -> object:
    return sync_redis.hgetall(key) if sync_redis.type(key) == b"hash" else sync_redis.get(key)


UNREADABLE = ["garbage", "garbage+now", "hash"]


@pytest.mark.parametrize("how", UNREADABLE)
async def test_an_undo_leaves_an_unreadable_attempt_log_alone(
    redis_url: str, sync_redis: redis.Redis, how: str
) -> None:
    """An ALLOW undone while one of its attempt logs was replaced by a value callgate did
    not write: the void leaves that value as it is (no script error), and still deletes
    the audit entry and uncounts the attempt from the other log."""
    config = make_config(
        {
            "caps": [
                {"id": "a", "limit": 4, "window": "30d", "scope": "tenant"},
                {"id": "b", "limit": 4, "window": "30d", "scope": "tenant"},
            ]
        }
    )
    store = Store(redis_url, 1.0)
    gate = Gate(config, store)
    try:
        evaluation = await gate.evaluate(attempt(), record=True, door="agi")
        assert isinstance(evaluation.pending, Plan)
        now_ms = evaluation.pending.check.now_ms
        logs = sorted(k for k in sync_redis.keys("*") if b":cap:" in k)
        assert 2 == len(logs)
        spoilt = [spoiled(sync_redis, key, how, now_ms) for key in logs[:1]]
        gate.undo(evaluation)
        await settled(store, "undone")
        left = await verdicts(store)
    finally:
        await store.close()
    assert {"undone": 1} == dict(getattr(store, "voids", {}))
    assert Counter() == left
    assert [spoilt[0], None] == [value_of(sync_redis, key) for key in logs]


@pytest.mark.parametrize("how", UNREADABLE)
def test_a_release_leaves_an_unreadable_attempt_log_alone(
    sync_redis: redis.Redis, how: str
) -> None:
    """release.lua (a CPS reservation given back) on a log callgate did not write: 0,
    nothing changed, no script error."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    key = "callgate:{cps:carrier-a}"
    value = spoiled(sync_redis, key, how, now_ms)
    released = sync_redis.eval(load_script("release.lua"), 1, key, now_ms)
    assert (0, value) == (released, value_of(sync_redis, key))


# Replies that are not void.lua's "found,decided,removed" (a proxy or a module in between).
ODD_VOIDS = {
    "a word": 'return "undone"',
    "two numbers": 'return "1,0"',
    "an integer": "return 7",
    "found out of range": 'return "5,0,1"',
}


def odd_void(body: str) -> client.Script:
    return client.Script("void.lua", body, hashlib.sha1(body.encode()).hexdigest().encode())


def void_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "to undo" in r.getMessage()]


@pytest.mark.parametrize("body", ODD_VOIDS.values(), ids=ODD_VOIDS.keys())
async def test_an_undo_answered_with_a_reply_callgate_cannot_read_is_a_failed_void(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    """The void (on a fresh connection) gets a reply that is not "found,decided,removed":
    counted as a void that failed, one error line naming the reply and the audit stream it
    looked in, no traceback. It used to raise inside the background task: nothing logged,
    nothing counted, the outcome unknown."""
    monkeypatch.setattr(client, "VOID", odd_void(body))
    store = Store(redis_url, 1.0)
    gate = Gate(make_config(), store)
    try:
        with caplog.at_level(logging.INFO):
            gate.undo(await gate.evaluate(attempt(), record=True, door="agi"))
            await settled(store, "failed")
    finally:
        await store.close()
    (line,) = void_lines(caplog)
    assert {"failed": 1} == dict(store.voids)
    assert "cannot read" in line.getMessage()
    assert ":audit" in line.getMessage()
    assert (logging.ERROR, None) == (line.levelno, line.exc_info)
    assert [] == [r for r in caplog.records if r.exc_info]


async def test_a_void_behind_a_late_decision_answered_oddly_frees_its_channel(
    redis_url: str,
    sync_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The void written behind a late decision on its channel gets a reply callgate cannot
    read: a failed void, logged once, and the channel (the only one) serves the next
    decision. It used to raise inside the channel's reply callback, which then never gave
    the channel back."""
    monkeypatch.setattr(client, "VOID", odd_void('return "undone"'))
    settings = dataclasses.replace(RedisConfig(), pool_size=1, pool_wait_s=2.0)
    store = Store(redis_url, 0.1, settings)
    gate = Gate(make_config(), store)
    try:
        await gate.decide(Attempt("0699999999", datetime.now(UTC)), record=False, door="cli")
        sync_redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        with caplog.at_level(logging.INFO):
            late = await gate.decide(attempt(), record=True, door="agi")
            await settled(store, "failed")
        store.deadline_s = 2.0
        after = await gate.decide(
            Attempt("0699999999", datetime.now(UTC)), record=False, door="cli"
        )
    finally:
        await store.close()
    (line,) = void_lines(caplog)
    assert Verdict.DEFER == late.verdict
    assert {"failed": 1} == dict(store.voids)
    assert "cannot read" in line.getMessage()
    assert (Verdict.ALLOW, "allowed") == (after.verdict, after.reason)
