"""Redis faults that are not a lost connection: a Redis busy running a script (BUSY), a
decision script's reply of an unexpected shape, a Redis over maxmemory (OOM) refusing
the writes that would free memory. Each on a real redis-server."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gate.core.engine import Plan
from gate.core.errors import StoreError, StoreUnavailable
from gate.core.model import Attempt, Verdict
from gate.lists.admin import ListAdmin
from gate.service import Evaluation, Gate, Observed
from gate.store import client
from gate.store.client import Script, Store, load_script
from tests.conftest import make_config, spawned_redis
from tests.store.test_void import settled

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


# --- a decision script's reply of an unexpected shape -------------------------------------

# Replies that are not decide.lua's "decided,retry_ms,r1,…" per decision; "{checks}": one
# ",0" per check of the decision.
MALFORMED = {
    "an integer": "return 7",
    "no decision": "return {}",
    "two decisions": 'return {"0,0{checks}", "0,0{checks}"}',
    "no check results": 'return {"0,0"}',
    "a word": 'return {"allowed,0{checks}"}',
    "a deciding check out of range": 'return {"-1,0{checks}"}',
    "a number": "return {0}",
}


def wrong_script(body: str, checks: int) -> Script:
    text = body.replace("{checks}", ",0" * checks)
    return Script("decide.lua", text, hashlib.sha1(text.encode()).hexdigest().encode())


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_decision_reply_of_an_unexpected_shape_gets_the_fail_mode(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    """Redis runs another script in decide.lua's place (another callgate version's): its
    reply is not read as a decision (it used to raise past the fail mode, or read as an
    ALLOW, or as another check's refusal), the decision gets the fail mode, logged as a
    reply callgate cannot read, and the recorded decision is voided."""
    store = Store(redis_url, 1.0)
    gate = Gate(make_config(), store)
    failures = Failures()
    gate.observers.append(failures)
    try:
        evaluation = await gate.evaluate(attempt(), record=False, door="cli")
        assert isinstance(evaluation.pending, Plan)
        checks = len(evaluation.pending.check.checks)
        monkeypatch.setattr(client, "DECIDE", wrong_script(body, checks))
        with caplog.at_level(logging.WARNING, logger="callgate"):
            decision = await gate.decide(attempt(), record=True, door="agi")
        await settled(store, "not_run")
    finally:
        await store.close()
    assert (Verdict.DEFER, "store_unavailable") == (decision.verdict, decision.reason)
    assert 1 == len(failures.errors)
    assert "with a reply callgate cannot read" in str(failures.errors[0])
    assert any("cannot read" in r.getMessage() for r in caplog.records)
    assert {"not_run": 1} == dict(store.voids)


async def test_a_scrub_reply_of_an_unexpected_shape_is_a_store_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decide_many (a scrub) given a reply it cannot read: ``StoreError`` saying so."""
    store = Store(redis_url, 1.0)
    gate = Gate(make_config(), store)
    try:
        evaluation = await gate.evaluate(attempt(), record=False, door="cli")
        assert isinstance(evaluation.pending, Plan)
        monkeypatch.setattr(client, "DECIDE", wrong_script('return {"0,0"}', 0))
        with pytest.raises(StoreError, match="with a reply callgate cannot read"):
            await store.decide_many([evaluation.pending.check])
    finally:
        await store.close()


# --- undoing an attempt over maxmemory ----------------------------------------------------

LOG = "callgate:{cps:carrier-a}"
LOG_TTL_MS = 100_000


def over_maxmemory(sync: redis.Redis) -> None:
    """Redis over its maxmemory (noeviction): a SET is refused (OOM)."""
    sync.config_set("maxmemory-policy", "noeviction")
    sync.set("callgate:ballast", b"x" * 2_000_000)
    sync.config_set("maxmemory", int(sync.info("memory")["used_memory"]) - 100_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        sync.set("callgate:more", b"x")


# (script, its KEYS before the log, its ARGV before the attempt's time, its reply)
UNDOS = {
    "release": ("release.lua", [], [], 1),
    "void without an audit entry": ("void.lua", ["callgate:{0612345678}:audit"], [""], b"-1,-1,1"),
}


@pytest.mark.parametrize(("script", "keys", "head", "replied"), UNDOS.values(), ids=UNDOS.keys())
def test_an_attempt_is_uncounted_over_maxmemory(
    tmp_path: Path, script: str, keys: list[str], head: list[str], replied: object
) -> None:
    """Redis over maxmemory (noeviction): giving back an attempt (a CPS reservation, an
    undone ALLOW) frees memory, so it goes through, the log keeping its expiry. It used to
    fail with OOM (its first write a SET), its attempt staying counted."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    with spawned_redis(tmp_path) as (url, _):
        sync = redis.Redis.from_url(url)
        try:
            sync.set(LOG, struct.pack(">dd", now_ms - 1000, now_ms), px=LOG_TTL_MS)
            over_maxmemory(sync)
            if script == "release.lua":
                reply = sync.eval(load_script(script), 1, LOG, now_ms)
            else:  # void.lua: KEYS the stream then the logs; ARGV head, now_ms, search
                reply = sync.eval(load_script(script), 2, *keys, LOG, *head, now_ms, 10)
            left, ttl_ms = sync.get(LOG), sync.pttl(LOG)
        finally:
            sync.close()
    assert replied == reply
    assert struct.pack(">d", now_ms - 1000) == left
    assert 0 < ttl_ms <= LOG_TTL_MS


# --- a list version callgate did not write --------------------------------------------

# Values of a list's version fields that callgate never writes (by hand, a bad migration).
ODD_VERSIONS = {
    "text": ("version", "abc"),
    "a fraction": ("version", "2.5"),
    "bits past 32": ("bits", "40"),
    "bits missing": ("bits", None),
}


async def listed(gate: Gate, sync_redis: redis.Redis) -> str:
    """Put NUMBER on the red list (tenant default); the list's directory entry key."""
    await ListAdmin(gate.config.policy, gate.keyspace, gate.store).add(
        "red", [NUMBER], "default", ""
    )
    (key,) = [k.decode() for k in sync_redis.keys("*{lists}*") if b":lock" not in k]
    return key


@pytest.mark.parametrize(("field", "value"), ODD_VERSIONS.values(), ids=ODD_VERSIONS.keys())
async def test_a_list_directory_entry_callgate_did_not_write_gets_the_fail_mode(
    redis_url: str, sync_redis: redis.Redis, field: str, value: str | None
) -> None:
    """The list's directory entry holds a version or bits callgate did not write: a
    decision looking the list up gets the fail mode, its store error naming the key, the
    field and what to do. It used to raise ValueError (TypeError) past the fail mode, on
    every decision looking up the list."""
    gate = Gate(make_config(), Store(redis_url, 1.0))
    try:
        key = await listed(gate, sync_redis)
    finally:
        await gate.store.close()
    if value is None:
        sync_redis.hdel(key, field)
    else:
        sync_redis.hset(key, field, value)
    store = Store(redis_url, 1.0)  # a fresh process: it reads the list's version
    gate = Gate(make_config(), store)
    failures = Failures()
    gate.observers.append(failures)
    try:
        decision = await gate.decide(attempt(), record=True, door="agi")
    finally:
        await store.close()
    assert (Verdict.DEFER, "store_unavailable") == (decision.verdict, decision.reason)
    (error,) = failures.errors
    assert key in str(error)
    assert field in str(error)
    assert "callgate list import NAME FILE --replace" in str(error)


async def test_a_group_meta_list_version_callgate_did_not_write_gets_the_fail_mode(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The number's group meta names the list's version as something callgate did not
    write: the decision (STALE, read with what the meta holds) gets the fail mode, its
    store error naming the meta key and the list's field. It used to keep that value as
    the list's version and raise ValueError past the fail mode on every decision after."""
    store = Store(redis_url, 1.0)
    gate = Gate(make_config(), store)
    failures = Failures()
    gate.observers.append(failures)
    try:
        await listed(gate, sync_redis)
        assert Verdict.BLOCK == (await gate.decide(attempt(), record=True, door="agi")).verdict
        evaluation = await gate.evaluate(attempt(), record=False, door="cli")
        assert isinstance(evaluation.pending, Plan)
        meta = evaluation.pending.check.prefix + "meta"
        (list_id,) = [f for f, v in sync_redis.hgetall(meta).items() if b"/" in v]
        sync_redis.hset(meta, list_id, "garbage")
        decisions = [await gate.decide(attempt(), record=True, door="agi") for _ in range(2)]
    finally:
        await store.close()
    assert [(Verdict.DEFER, "store_unavailable")] * 2 == [(d.verdict, d.reason) for d in decisions]
    assert 2 == len(failures.errors)
    assert meta in str(failures.errors[0])
    assert list_id.decode() in str(failures.errors[0])
