"""The decision script against a REAL Redis: lists, exact rolling caps, CPS, atomicity."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from datetime import UTC, datetime, timedelta

import hiredis
import pytest
import redis

from gate.core.engine import CheckKind, Plan
from gate.core.model import Attempt, TrafficClass, Verdict
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import make_config

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
NUMBER = "0612345678"


def attempt(dialled: str = NUMBER, at: datetime = T0, **kw: object) -> Attempt:
    return Attempt(dialled=dialled, now=at, **kw)  # type: ignore[arg-type]


def admin(gate: Gate) -> ListAdmin:
    return ListAdmin(gate.config.policy, gate.keyspace, gate.store)


async def test_unlisted_number_is_allowed(gate: Gate) -> None:
    """No list hit, no cap reached: ALLOW with the E.164 number."""
    decision = await gate.decide(attempt(), record=True, door="cli")
    assert (Verdict.ALLOW, "allowed", "+33612345678") == (
        decision.verdict,
        decision.reason,
        decision.e164,
    )


async def test_listed_number_is_blocked_in_every_spelling(gate: Gate) -> None:
    """A number on the red list is blocked however it is dialled."""
    await admin(gate).add("red", ["+33612345678"], "default", "")
    reasons = {
        (await gate.decide(attempt(spelling), record=True, door="cli")).reason
        for spelling in ("06 12 34 56 78", "0033 6 12 34 56 78", "tel:+33612345678")
    }
    assert {"listed:red"} == reasons


async def test_tenant_lists_are_per_tenant(gate: Gate) -> None:
    """Tenant acme's red list does not block tenant globex's call."""
    await admin(gate).add("red", [NUMBER], "acme", "")
    assert [Verdict.BLOCK, Verdict.ALLOW] == [
        (await gate.decide(attempt(tenant="acme"), record=True, door="cli")).verdict,
        (await gate.decide(attempt(tenant="globex"), record=True, door="cli")).verdict,
    ]


async def test_campaign_list_applies_to_its_campaign_only(gate: Gate) -> None:
    """A campaign-scoped list blocks in that campaign, not in another."""
    await admin(gate).add("camp", [NUMBER], "default", "spring")
    assert ["listed:camp", "allowed"] == [
        (await gate.decide(attempt(campaign="spring"), record=True, door="cli")).reason,
        (await gate.decide(attempt(campaign="autumn"), record=True, door="cli")).reason,
    ]


async def test_allow_list_exempts_from_the_named_block_list_only(gate: Gate) -> None:
    """A customer on dnc is allowed (customers exempts dnc); on red it is still blocked."""
    lists = admin(gate)
    await lists.add("dnc", [NUMBER], "default", "")
    await lists.add("customers", [NUMBER], "default", "")
    first = await gate.decide(attempt(), record=True, door="cli")
    await lists.add("red", [NUMBER], "default", "")
    second = await gate.decide(attempt(), record=True, door="cli")
    assert ["allowed", "listed:red"] == [first.reason, second.reason]


async def test_blocked_attempts_are_not_counted(gate: Gate) -> None:
    """Attempts refused by a list do not use up the cap once the number is delisted."""
    lists = admin(gate)
    await lists.add("red", [NUMBER], "default", "")
    for _ in range(5):
        await gate.decide(attempt(), record=True, door="cli")
    await lists.remove("red", [NUMBER], "default", "")
    verdicts = [(await gate.decide(attempt(), record=True, door="cli")).verdict for _ in range(4)]
    assert [Verdict.ALLOW] * 4 == verdicts


async def test_fifth_attempt_in_window_is_deferred_until_the_oldest_leaves(gate: Gate) -> None:
    """4 per 30 days: the 5th is DEFER, retry_after_s = when the 1st attempt leaves the window."""
    for day in range(4):
        assert (
            Verdict.ALLOW
            == (
                await gate.decide(attempt(at=T0 + timedelta(days=day)), record=True, door="cli")
            ).verdict
        )
    fifth = await gate.decide(attempt(at=T0 + timedelta(days=10)), record=True, door="cli")
    assert (Verdict.DEFER, "cap:fr-4-per-30d") == (fifth.verdict, fifth.reason)
    assert 20 * 86400.0 == fifth.retry_after_s


async def test_rolling_window_is_exact_not_fixed(gate: Gate) -> None:
    """One ms before the oldest attempt is 30 days old: DEFER; at 30 days: ALLOW."""
    for _ in range(4):
        await gate.decide(attempt(), record=True, door="cli")
    window = timedelta(days=30)
    just_before = await gate.decide(
        attempt(at=T0 + window - timedelta(milliseconds=1)), record=True, door="cli"
    )
    at_edge = await gate.decide(attempt(at=T0 + window), record=True, door="cli")
    assert [Verdict.DEFER, Verdict.ALLOW] == [just_before.verdict, at_edge.verdict]
    assert 0.001 == just_before.retry_after_s


async def test_evaluate_only_does_not_count(gate: Gate) -> None:
    """Checks without record leave the counter untouched."""
    for _ in range(10):
        await gate.decide(attempt(), record=False, door="cli")
    verdicts = [(await gate.decide(attempt(), record=True, door="cli")).verdict for _ in range(5)]
    assert [Verdict.ALLOW] * 4 + [Verdict.DEFER] == verdicts


async def test_caps_count_per_tenant_across_campaigns(gate: Gate) -> None:
    """The law counts per professional: campaigns share one tenant's cap."""
    for campaign in ("a", "b", "c", "d"):
        await gate.decide(attempt(campaign=campaign), record=True, door="cli")
    other_campaign = await gate.decide(attempt(campaign="e"), record=True, door="cli")
    other_tenant = await gate.decide(
        attempt(campaign="e", tenant="globex"), record=True, door="cli"
    )
    assert [Verdict.DEFER, Verdict.ALLOW] == [other_campaign.verdict, other_tenant.verdict]


async def test_longest_wait_wins_when_several_caps_are_reached(redis_url: str) -> None:
    """With 2/day and 3/week both reached, retry_after is the weekly one."""
    config = make_config(
        {
            "caps": [
                {"id": "day", "limit": 2, "window": "1d"},
                {"id": "week", "limit": 3, "window": "7d"},
            ]
        }
    )
    store = Store(redis_url, 1.0)
    gate = Gate(config, store)
    try:
        for at in (T0, T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1)):
            await gate.decide(attempt(at=at), record=True, door="cli")
        decision = await gate.decide(
            attempt(at=T0 + timedelta(days=2, hours=2)), record=True, door="cli"
        )
    finally:
        await store.close()
    assert ("cap:week", 5 * 86400.0 - 7200.0) == (decision.reason, decision.retry_after_s)


async def test_trunk_cps_cap(gate: Gate) -> None:
    """20 CPS on carrier-a: the 21st call in one second is DEFER; the next second is free."""
    numbers = [f"06000000{i:02d}" for i in range(22)]
    within = [
        (
            await gate.decide(
                attempt(n, at=T0 + timedelta(milliseconds=i), trunk="carrier-a"),
                record=True,
                door="cli",
            )
        ).verdict
        for i, n in enumerate(numbers[:21])
    ]
    deferred = await gate.decide(
        attempt(numbers[21], at=T0 + timedelta(milliseconds=500), trunk="carrier-a"),
        record=True,
        door="cli",
    )
    later = await gate.decide(
        attempt(numbers[21], at=T0 + timedelta(seconds=1), trunk="carrier-a"),
        record=True,
        door="cli",
    )
    assert [Verdict.ALLOW] * 20 + [Verdict.DEFER] == within
    assert ("cps:carrier-a", 0.5) == (deferred.reason, deferred.retry_after_s)
    assert Verdict.ALLOW == later.verdict


async def test_an_attempt_dated_in_the_future_erases_no_real_attempt(gate: Gate) -> None:
    """Four real attempts, then one recorded 63 days ahead (the library does not refuse it):
    the four still count, so a check now is DEFER cap (it used to be ALLOW)."""
    now = datetime.now(UTC)
    for _ in range(4):
        await gate.decide(attempt(at=now), record=True, door="cli")
    await gate.decide(attempt(at=now + timedelta(days=63)), record=True, door="cli")
    decision = await gate.decide(attempt(at=now + timedelta(seconds=1)), record=False, door="cli")
    assert (Verdict.DEFER, "cap:fr-4-per-30d") == (decision.verdict, decision.reason)


async def test_attempts_recorded_out_of_order_are_kept_in_time_order(redis_url: str) -> None:
    """Cap 2 per minute: attempts at t and t - 2 s (a gate whose clock runs behind); at
    t + 10 s the wait is until the OLDER one leaves: 48 s."""
    gate = Gate(
        make_config({"caps": [{"id": "m", "limit": 2, "window": "1m"}]}), Store(redis_url, 1.0)
    )
    t = datetime.now(UTC)
    try:
        await gate.decide(attempt(at=t), record=True, door="cli")
        await gate.decide(attempt(at=t - timedelta(seconds=2)), record=True, door="cli")
        decision = await gate.decide(attempt(at=t + timedelta(seconds=10)), record=True, door="cli")
    finally:
        await gate.store.close()
    assert ("cap:m", 48.0) == (decision.reason, decision.retry_after_s)


async def test_a_shadow_cap_stops_growing_at_its_limit(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """A shadow cap of 2 never decides, and after 6 allowed attempts its log holds 2 entries."""
    config = make_config({"caps": [{"id": "s", "limit": 2, "window": "1d", "shadow": True}]})
    gate = Gate(config, Store(redis_url, 1.0))
    now = datetime.now(UTC)
    try:
        decisions = [
            await gate.decide(attempt(at=now + timedelta(milliseconds=i)), record=True, door="cli")
            for i in range(6)
        ]
    finally:
        await gate.store.close()
    (key,) = [k for k in sync_redis.keys("*") if b":cap:s:" in k]
    assert [Verdict.ALLOW] * 6 == [d.verdict for d in decisions]
    assert [(), (), ("cap:s",), ("cap:s",)] == [d.shadow for d in decisions[:4]]
    assert 2 * 8 == sync_redis.strlen(key)


async def test_two_hundred_concurrent_attempts_allow_exactly_the_cap(gate: Gate) -> None:
    """200 concurrent recorded attempts on one number with a cap of 4: exactly 4 ALLOW."""
    now = datetime.now(UTC)
    decisions = await asyncio.gather(
        *(gate.decide(attempt(at=now), record=True, door="cli") for _ in range(200))
    )
    verdicts = [d.verdict for d in decisions]
    assert (4, 196) == (verdicts.count(Verdict.ALLOW), verdicts.count(Verdict.DEFER))


async def test_counter_memory_is_bounded_and_expires(gate: Gate, sync_redis: redis.Redis) -> None:
    """After 50 attempts the log holds at most 4 entries (32 bytes) and expires with its window."""
    now = datetime.now(UTC)
    for i in range(50):  # one a day, the last one now
        await gate.decide(attempt(at=now - timedelta(days=49 - i)), record=True, door="cli")
    (key,) = sync_redis.keys("callgate:{*}:cap:*")
    value = sync_redis.get(key)
    ttl_ms = sync_redis.pttl(key)
    assert value is not None
    assert len(value) <= 4 * 8
    assert 0 < ttl_ms <= 30 * 86400 * 1000


async def test_every_counter_expires_in_its_slot(gate: Gate, sync_redis: redis.Redis) -> None:
    """Counter keys (caps and CPS) all expire; the cap's is in the number's slot group,
    the trunk's CPS log in its own (the audit stream aside: it is trimmed by age)."""
    await gate.decide(attempt(at=datetime.now(UTC), trunk="carrier-a"), record=True, door="cli")
    keys = sorted(k for k in sync_redis.keys("*") if sync_redis.type(k) != b"stream")
    number = gate.keyspace.number("+33612345678")
    cap = f"{gate.keyspace.prefix(number.group)}cap:fr-4-per-30d:t:default:{number.token}"
    assert sorted([cap.encode(), b"callgate:{cps:carrier-a}"]) == keys
    assert all(sync_redis.pttl(k) > 0 for k in keys)


async def test_the_audit_stream_is_trimmed_by_the_decisions_appending(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """A slot group's audit stream, written by the decisions themselves, stays bounded: one
    append in 16 drops what is older than ``max_age`` (whole stream nodes), another keeps
    the group's share of ``max_len`` (100 here: 102 400 over 1 024 groups)."""
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config({"audit": {"max_len": 102_400, "max_age": "1d"}}), store)
    number = gate.keyspace.number("+33612345678")
    stream = f"{gate.keyspace.prefix(number.group)}audit"
    old_ms = int((T0 - timedelta(days=2)).timestamp() * 1000)
    for i in range(300):  # three whole nodes (100 entries each) older than a day
        sync_redis.xadd(stream, {"h": "{}", "r": "0,0"}, id=f"{old_ms + i}-0")
    # Attempts 1 ms apart: their times cover every turn of the 16, once each.
    for i in range(16):
        await gate.decide(attempt(at=T0 + timedelta(milliseconds=i)), record=True, door="cli")
    by_age = [entry_id for entry_id, _ in sync_redis.xrange(stream)]
    for i in range(16, 400):
        await gate.decide(attempt(at=T0 + timedelta(milliseconds=i)), record=True, door="cli")
    ids = [entry_id for entry_id, _ in sync_redis.xrange(stream)]
    last = sync_redis.xinfo_stream(stream)["last-generated-id"]
    await store.close()
    assert 16 == len(by_age)  # the three old nodes went, not the decisions' entries
    assert int(by_age[0].split(b"-")[0]) > old_ms + 300
    # By length: whole nodes, so at least 100 and under 100 + a node (and the appends
    # since the last trim), the newest kept.
    assert 100 <= len(ids) < 100 + 100 + 16
    assert last == ids[-1]
    assert by_age[-1] < ids[0]


async def test_numbers_are_hashed_at_rest(gate: Gate, sync_redis: redis.Redis) -> None:
    """Neither key names nor list members contain the number."""
    await admin(gate).add("red", ["+33699999999"], "default", "")
    await gate.decide(attempt(at=datetime.now(UTC)), record=True, door="cli")
    keys = sync_redis.keys("*")
    dump = b" ".join(keys) + b" ".join(
        member
        for key in keys
        if sync_redis.type(key) == b"set"
        for member in sync_redis.smembers(key)
    )
    assert 1 == sum(sync_redis.type(key) == b"set" for key in keys)  # the red list's bucket
    assert b"699999999" not in dump
    assert b"612345678" not in dump


async def test_script_is_reloaded_after_script_flush(gate: Gate, sync_redis: redis.Redis) -> None:
    """A Redis that lost its script cache (restart, failover) still answers (NOSCRIPT reload)."""
    await gate.decide(attempt(), record=True, door="cli")
    sync_redis.script_flush()
    assert Verdict.ALLOW == (await gate.decide(attempt(), record=True, door="cli")).verdict


async def test_closed_port_applies_the_fail_mode_within_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis unreachable: campaign → DEFER store_unavailable, fast, logged once per incident."""
    store = Store("redis://127.0.0.1:1/0", deadline_s=0.05)
    gate = Gate(make_config(), store)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="callgate"):
        decisions = [await gate.decide(attempt(), record=True, door="cli") for _ in range(3)]
    elapsed = time.monotonic() - started
    await store.close()
    assert [(Verdict.DEFER, "store_unavailable", 60.0)] * 3 == [
        (d.verdict, d.reason, d.retry_after_s) for d in decisions
    ]
    assert elapsed < 3.0  # no hang; not a performance claim
    assert 1 == sum("store unavailable" in r.getMessage() for r in caplog.records)


async def loading_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A stand-in for a Redis loading its data: ``+OK`` to CLIENT/HELLO, ``-LOADING`` to
    everything else."""
    parser = hiredis.Reader()
    while data := await reader.read(65536):
        parser.feed(data)
        while (command := parser.gets()) is not False:
            if command[0].upper() in (b"CLIENT", b"HELLO"):
                writer.write(b"+OK\r\n")
            else:
                writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
    writer.close()


@pytest.mark.parametrize("record", [False, True])
async def test_a_redis_loading_its_data_applies_the_fail_mode(
    record: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis answering LOADING (restarted, reading its data): campaign → DEFER
    store_unavailable, logged as loading, not as unreachable. The LOADING replies come from
    a small asyncio stand-in (``loading_redis``): redis-server 6.2 answers no client at all
    while it loads, so a real one cannot be caught answering LOADING."""
    server = await asyncio.start_server(loading_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = Store(f"redis://127.0.0.1:{port}", deadline_s=1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="callgate"):
            decision = await Gate(make_config(), store).decide(attempt(), record=record, door="cli")
    finally:
        await store.close()
        server.close()
        await server.wait_closed()
    assert (Verdict.DEFER, "store_unavailable") == (decision.verdict, decision.reason)
    assert 1 == sum("is loading its data" in r.getMessage() for r in caplog.records)


async def test_emergency_call_needs_no_store() -> None:
    """A manual call to 17 is ALLOW even with Redis unreachable."""
    store = Store("redis://127.0.0.1:1/0", deadline_s=0.05)
    decision = await Gate(make_config(), store).decide(
        attempt("17", traffic_class=TrafficClass.MANUAL), record=True, door="cli"
    )
    await store.close()
    assert (Verdict.ALLOW, "emergency") == (decision.verdict, decision.reason)


async def test_slow_redis_hits_the_deadline_then_recovers(
    redis_url: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A paused Redis answers later than the deadline: fail mode; once back, normal decisions."""
    store = Store(redis_url, deadline_s=0.05)
    gate = Gate(make_config({"fail_mode": {"manual": "BLOCK"}}), store)
    await gate.decide(attempt(), record=True, door="cli")  # warm the connection and the script
    sync_redis.execute_command("CLIENT", "PAUSE", 400, "ALL")
    with caplog.at_level(logging.INFO, logger="callgate"):
        paused = await gate.decide(
            attempt(traffic_class=TrafficClass.MANUAL), record=True, door="cli"
        )
        await asyncio.sleep(0.6)
        recovered = await gate.decide(attempt(), record=True, door="cli")
    await store.close()
    assert (Verdict.BLOCK, "store_unavailable") == (paused.verdict, paused.reason)
    assert Verdict.ALLOW == recovered.verdict
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_batched_decisions_reload_a_flushed_script(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """decide_many (scrubs) also survives a Redis that lost its script cache."""
    from gate.core.engine import Plan, plan

    sync_redis.script_flush()
    plans = [
        plan(attempt(f"06000000{i:02d}"), gate.config.policy, gate.keyspace, False)
        for i in range(3)
    ]
    checks = [p.check for p in plans if isinstance(p, Plan)]
    results = await gate.store.decide_many(checks)
    assert [0, 0, 0] == [r.decided for r in results]


def _commands(sync_redis: redis.Redis) -> dict[str, int]:
    """The commands Redis ran since the last CONFIG RESETSTAT (scripts' own included),
    scripts and this test's own INFO and CONFIG aside."""
    stats = sync_redis.info("commandstats")
    skip = ("evalsha", "info", "config", "script")  # Redis 7 on: "config|resetstat"
    return {k[8:]: v["calls"] for k, v in stats.items() if k[8:].split("|")[0] not in skip}


async def test_batched_decisions_run_only_as_far_as_their_verdict(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """decide_many (scrubs) stops a decision at its first check that BLOCKs: the later
    checks are not run (-1, no Redis command sent for them); each verdict and wait, and
    what the checks up to it saw, are those of the full decision (``Store.decide``)."""
    from gate.core.engine import Plan, outcome, plan

    lists = admin(gate)
    await lists.add("red", ["0611111111"], "default", "")
    await lists.add("dnc", ["0622222222", "0633333333"], "default", "")
    await lists.add("customers", ["0633333333"], "default", "")
    for day in range(4):  # 0644444444 reaches its cap: DEFER
        earlier = attempt("0644444444", at=T0 - timedelta(days=day + 1))
        await gate.decide(earlier, record=True, door="cli")
    checks = []
    for number in ("0611111111", "0622222222", "0633333333", "0644444444", "0655555555"):
        pending = plan(attempt(number, trunk="carrier-a"), gate.config.policy, gate.keyspace, False)
        assert isinstance(pending, Plan)
        checks.append(pending.check)
    full = [await gate.store.decide(check) for check in checks]
    batched = await gate.store.decide_many(checks)
    assert ["listed:red", "listed:dnc", "allowed", "cap:fr-4-per-30d", "allowed"] == [
        outcome(c.checks, r)[1] for c, r in zip(checks, full, strict=True)
    ]
    for check, whole, part in zip(checks, full, batched, strict=True):
        assert (whole.decided, whole.retry_after_ms) == (part.decided, part.retry_after_ms)
        blocked = whole.decided > 0 and check.checks[whole.decided - 1].kind.blocks
        cut = whole.decided if blocked else len(whole.results)
        assert whole.results[:cut] == part.results[:cut]
        assert (-1,) * (len(whole.results) - cut) == part.results[cut:]
    # The lead on the red list: its later checks (the dnc list, its cap and its trunk's
    # CPS log) cost no command at all.
    sync_redis.config_resetstat()
    await gate.store.decide(checks[0])
    whole_commands = _commands(sync_redis)
    sync_redis.config_resetstat()
    await gate.store.decide_many(checks[:1])
    assert {"hmget": 1, "sismember": 2, "get": 2} == whole_commands
    assert {"hmget": 1, "sismember": 1} == _commands(sync_redis)


def cap_log(gate: Gate, cap: str = "fr-4-per-30d") -> str:
    """The attempt log of NUMBER (+33612345678) for tenant-scoped cap ``cap``, tenant
    default."""
    number = gate.keyspace.number("+33612345678")
    return f"{gate.keyspace.prefix(number.group)}cap:{cap}:t:default:{number.token}"


def spoil(sync_redis: redis.Redis, key: str, how: str) -> object:
    """Replace the attempt log at ``key`` with a value callgate did not write; returns
    what ``snapshot`` reads of it."""
    sync_redis.delete(key)
    if how == "hash":  # a key of another type: GET answers WRONGTYPE
        sync_redis.hset(key, "field", "value")
    elif how == "garbage":  # 7 bytes: not a whole number of doubles
        sync_redis.set(key, b"garbage")
    elif how == "text":  # 4 doubles of text: 4 attempts 10^187 years from now
        sync_redis.set(key, b"hello123" * 4)
    else:  # 15 bytes ending with a double, now's
        sync_redis.set(key, b"garbage" + struct.pack(">d", int(T0.timestamp() * 1000)))
    return snapshot(sync_redis, key)


def snapshot(sync_redis: redis.Redis, key: str) -> object:
    if sync_redis.type(key) == b"hash":
        return sync_redis.hgetall(key)
    return sync_redis.get(key)


UNREADABLE = ["garbage", "garbage+now", "text", "hash"]


@pytest.mark.parametrize("how", UNREADABLE)
@pytest.mark.parametrize("traffic_class", [TrafficClass.CAMPAIGN, TrafficClass.MANUAL])
async def test_an_unreadable_attempt_log_is_a_log_at_its_limit(
    redis_url: str,
    sync_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    how: str,
    traffic_class: TrafficClass,
) -> None:
    """An attempt log callgate did not write (not a whole number of doubles, or a key of
    another type) is a log at its limit made now: the cap DEFERs for a whole window, the
    log is left as it is, nothing is counted. Not a script error: not the fail mode (an
    ALLOW for manual calls here: the cap would be skipped), no "store unavailable"."""
    config = make_config({"fail_mode": {"campaign": "DEFER", "manual": "ALLOW"}})
    store = Store(redis_url, 1.0)
    gate = Gate(config, store)
    try:
        for minutes in (0, 1):
            at = T0 - timedelta(days=1, minutes=minutes)
            earlier = await gate.decide(attempt(at=at), record=True, door="cli")
            assert Verdict.ALLOW == earlier.verdict
        key = cap_log(gate)
        before = spoil(sync_redis, key, how)
        with caplog.at_level(logging.INFO, logger="callgate"):
            evaluation = await gate.evaluate(
                attempt(traffic_class=traffic_class), record=True, door="cli"
            )
    finally:
        await store.close()
    decision = evaluation.decision
    assert (Verdict.DEFER, "cap:fr-4-per-30d", 30 * 86400.0) == (
        decision.verdict,
        decision.reason,
        decision.retry_after_s,
    )
    assert isinstance(evaluation.pending, Plan)
    assert evaluation.result is not None
    seen = zip(evaluation.pending.check.checks, evaluation.result.results, strict=True)
    assert [4] == [n for c, n in seen if c.kind is CheckKind.ATTEMPT_LOG]  # 4 of 4
    assert before == snapshot(sync_redis, key)
    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("how", UNREADABLE)
async def test_other_checks_still_decide_beside_an_unreadable_attempt_log(
    gate: Gate, sync_redis: redis.Redis, how: str
) -> None:
    """A block list still BLOCKs (a BLOCK wins over the cap's DEFER); delisted, the
    number is DEFERred by its unreadable log."""
    await gate.decide(attempt(at=T0 - timedelta(days=1)), record=True, door="cli")
    spoil(sync_redis, cap_log(gate), how)
    await admin(gate).add("red", [NUMBER], "default", "")
    listed = await gate.decide(attempt(), record=True, door="cli")
    await admin(gate).remove("red", [NUMBER], "default", "")
    delisted = await gate.decide(attempt(), record=True, door="cli")
    assert [(Verdict.BLOCK, "listed:red"), (Verdict.DEFER, "cap:fr-4-per-30d")] == [
        (d.verdict, d.reason) for d in (listed, delisted)
    ]


@pytest.mark.parametrize("how", UNREADABLE)
async def test_an_unreadable_shadow_attempt_log_is_reported_never_written(
    redis_url: str, sync_redis: redis.Redis, how: str
) -> None:
    """A shadow cap's unreadable log: the shadow cap is reported reached, the call ALLOWed
    and counted in the other caps' logs, the unreadable one left as it is."""
    config = make_config(
        {
            "caps": [
                {"id": "fr-4-per-30d", "limit": 4, "window": "30d", "scope": "tenant"},
                {"id": "s", "limit": 2, "window": "1d", "scope": "tenant", "shadow": True},
            ]
        }
    )
    store = Store(redis_url, 1.0)
    gate = Gate(config, store)
    try:
        await gate.decide(attempt(at=T0 - timedelta(hours=1)), record=True, door="cli")
        before = spoil(sync_redis, cap_log(gate, "s"), how)
        decision = await gate.decide(attempt(), record=True, door="cli")
    finally:
        await store.close()
    assert (Verdict.ALLOW, ("cap:s",)) == (decision.verdict, decision.shadow)
    assert before == snapshot(sync_redis, cap_log(gate, "s"))
    assert 2 * 8 == sync_redis.strlen(cap_log(gate))
