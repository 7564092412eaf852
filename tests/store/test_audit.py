"""The audit trail against a REAL Redis: what a decision leaves as evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from gate.config.loader import AuditConfig
from gate.core.evidence import Timing, audit_record
from gate.core.model import Attempt, TrafficClass, Verdict
from gate.lists.admin import ListAdmin
from gate.ops.audit import AuditLog, read_range
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import make_config
from tests.packs.conftest import pack_config

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
async def audited(redis_url: str) -> AsyncIterator[Gate]:
    """A Gate with the audit trail on (an observer), writing to the test's Redis."""
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config({"trunks": {"cps": {"carrier-a": 20}}}), store, "v123")
    audit = AuditLog(store.admin_client, "callgate", AuditConfig())
    gate.observers.append(audit)
    audit.start()
    yield gate
    await audit.close()
    await store.close()


async def records(gate: Gate) -> list[dict[str, str]]:
    (audit,) = [o for o in gate.observers if isinstance(o, AuditLog)]
    await audit.close()  # flush
    audit.start()
    return [r async for r in read_range(gate.store.admin_client, "callgate")]


async def test_each_recorded_decision_is_one_entry_with_its_evidence(audited: Gate) -> None:
    """verdict, reason, rule, door, scope, hashed number, config, lists, counters, latency."""
    admin = ListAdmin(audited.config.policy, audited.keyspace, audited.store)
    await admin.add("red", ["+33612345678"], "acme", "")
    attempt = Attempt(
        "0612345678",
        NOW,
        "acme",
        "spring",
        "carrier-a",
        "+33162000000",
        TrafficClass.CAMPAIGN,
        "PJSIP/out-0001",
    )
    await audited.decide(attempt, door="agi", record=True)
    await audited.decide(
        Attempt("0698765432", NOW, "acme", trunk="carrier-a"), door="stasis", record=True
    )
    by_verdict = {r["verdict"]: r for r in await records(audited)}  # two streams: any order
    blocked, allowed = by_verdict["BLOCK"], by_verdict["ALLOW"]
    assert {
        "verdict": "BLOCK",
        "reason": "listed:red",
        "rule": "list:red",
        "door": "agi",
        "tenant": "acme",
        "campaign": "spring",
        "trunk": "carrier-a",
        "class": "campaign",
        "number": audited.keyspace.token("+33612345678"),
        "caller_id": "+33162000000",
        "channel": "PJSIP/out-0001",
        "config": "v123",
        "ts": str(int(NOW.timestamp() * 1000)),
    } == {
        k: blocked[k]
        for k in (
            "verdict",
            "reason",
            "rule",
            "door",
            "tenant",
            "campaign",
            "trunk",
            "class",
            "number",
            "caller_id",
            "channel",
            "config",
            "ts",
        )
    }
    assert "red@1" in blocked["lists"].split(",")
    assert "33612345678" not in " ".join(blocked.values())
    assert (True, "") == (int(blocked["latency_us"]) > 0, blocked["redis_us"])
    assert ("ALLOW", "cap:fr-4-per-30d=0,cps:carrier-a=0") == (
        allowed["verdict"],
        allowed["counters"],
    )


async def test_the_decision_script_writes_the_entry_in_the_call_that_counts(
    redis_url: str,
) -> None:
    """With no audit writer at all, a recorded decision's entry is in the stream as soon
    as the decision returns: evidence and counters are one atomic fact."""
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config(), store, "v9")
    try:
        decision = await gate.decide(Attempt("0612345678", NOW, "acme"), record=True, door="agi")
        entries = [r async for r in read_range(store.admin_client, "callgate")]
    finally:
        await store.close()
    assert [("ALLOW", "agi", "v9", "cap:fr-4-per-30d=0")] == [
        (e["verdict"], e["door"], e["config"], e["counters"]) for e in entries
    ]
    assert "allowed" == decision.reason


async def test_the_scripts_entry_equals_the_in_process_record(redis_url: str) -> None:
    """For BLOCK, DEFER (cap, with retry), ALLOW and shadow outcomes the entry decide.lua
    writes equals ``audit_record`` of the same decision (two implementations, one truth)."""
    config = make_config(
        {
            "caps": [
                {"id": "two", "limit": 2, "window": "1d"},
                {"id": "one", "limit": 1, "window": "1h", "shadow": True},
            ],
            "trunks": {"cps": {"carrier-a": 20}},
        }
    )
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(config, store, "v1")
    await ListAdmin.of(gate).add("red", ["+33699999999"], "acme", "")
    await ListAdmin.of(gate).add("customers", ["+33612345678"], "acme", "")
    expected = []
    try:
        for i, number in enumerate(["0699999999", "0612345678", "0612345678", "0612345678"]):
            attempt = Attempt(
                number,
                NOW + timedelta(minutes=i),
                "acme",
                "spring",
                "carrier-a",
                "+33162000000",
                TrafficClass.CAMPAIGN,
                'PJSIP/"odd\\name"-1',
            )
            evaluation = await gate.evaluate(attempt, record=True, door="stasis")
            record = audit_record(
                attempt,
                evaluation.decision,
                evaluation.pending,
                evaluation.result,
                packs=config.policy.packs,
                keyspace=gate.keyspace,
                config_version="v1",
                door="stasis",
                timing=Timing(),
            )
            expected.append({k: v for k, v in record.items() if not k.endswith("_us")})
        stored = [r async for r in read_range(store.admin_client, "callgate")]
    finally:
        await store.close()
    assert ["BLOCK", "ALLOW", "ALLOW", "DEFER"] == [r["verdict"] for r in expected]
    assert ["", "", "cap:one", "cap:one"] == [r["shadow"] for r in expected]
    assert expected == [
        {k: v for k, v in r.items() if k != "id" and not k.endswith("_us")} for r in stored
    ]


PARIS = ZoneInfo("Europe/Paris")


async def test_a_moved_cap_retry_reads_back_as_the_decision_gave_it(redis_url: str) -> None:
    """fr pack, 4 attempts per 30 days: a fifth on Friday 11 December 2026 at 19:30 (Paris),
    whose cap frees on Saturday 12 December at 19:45 (30 days after the first), is told to
    retry on Monday 14 December at 10:00, D223-9's next opening; its audit entry, read back,
    says the same retry (not the store's wait, a Saturday evening)."""
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(pack_config(["fr"], "FR"), store, "v1")
    first = datetime(2026, 11, 12, 19, 45, tzinfo=PARIS)  # a Thursday
    attempts = [first, *(datetime(2026, 11, d, 10, 30, tzinfo=PARIS) for d in (13, 16, 17))]
    fifth = datetime(2026, 12, 11, 19, 30, tzinfo=PARIS)

    def attempt(at: datetime) -> Attempt:
        return Attempt("0612345678", at, "default", caller_id="+33162000000")

    try:
        await ListAdmin.of(gate).add("consent", ["+33612345678"], "default", "", now=first)
        allowed = [await gate.decide(attempt(at), record=True, door="agi") for at in attempts]
        decision = await gate.decide(attempt(fifth), record=True, door="agi")
        stored = [r async for r in read_range(store.admin_client, "callgate")]
    finally:
        await store.close()
    monday_10 = datetime(2026, 12, 14, 10, 0, tzinfo=PARIS)
    wait_s = monday_10.timestamp() - fifth.timestamp()
    assert [Verdict.ALLOW] * 4 == [d.verdict for d in allowed]
    assert 5 == (first + timedelta(days=30)).weekday()  # the cap frees on a Saturday
    assert [("DEFER", "cap:fr-d223-9-attempts", wait_s)] * 2 == [
        (decision.verdict.value, decision.reason, decision.retry_after_s),
        (stored[-1]["verdict"], stored[-1]["reason"], float(stored[-1]["retry_after_s"])),
    ]


async def test_a_fail_mode_decision_is_kept_by_the_audit_writer() -> None:
    """Redis unreachable: the fail-mode decision is queued for the in-memory writer."""
    store = Store("redis://127.0.0.1:1/0", deadline_s=0.2)
    gate = Gate(make_config(), store)
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    audit = AuditLog(client, "callgate", AuditConfig())
    gate.observers.append(audit)
    try:
        decision = await gate.decide(Attempt("0612345678", NOW), record=True, door="agi")
    finally:
        await store.close()
        await client.aclose()
    assert ("store_unavailable", 1) == (decision.reason, len(audit._queue))


async def test_an_undone_allow_decided_without_redis_leaves_no_entry(audited: Gate) -> None:
    """Emergency ALLOWs (manual traffic) whose channel hung up before them (``Gate.undo``):
    no entry, whether undone while queued or once written; the others stay."""
    manual = TrafficClass.MANUAL
    queued = await audited.evaluate(
        Attempt("112", NOW, traffic_class=manual), record=True, door="agi"
    )
    audited.undo(queued)
    written = await audited.evaluate(
        Attempt("17", NOW, traffic_class=manual), record=True, door="agi"
    )
    await records(audited)  # written
    audited.undo(written)
    await audited.decide(Attempt("15", NOW, traffic_class=manual), record=True, door="agi")
    assert [("ALLOW", "15")] == [(r["verdict"], r["number"]) for r in await records(audited)]


async def test_an_undone_fail_open_allow_is_never_written(redis_url: str) -> None:
    """Redis unreachable, manual traffic fails open: the ALLOW is queued; its channel hangs
    up before it (``Gate.undo``): the writer never writes it."""
    store = Store("redis://127.0.0.1:1/0", deadline_s=0.2)
    gate = Gate(make_config({"fail_mode": {"manual": "ALLOW"}}), store)
    client = aioredis.Redis.from_url(redis_url)
    audit = AuditLog(client, "callgate", AuditConfig())
    gate.observers.append(audit)
    try:
        attempt = Attempt("0612345678", NOW, traffic_class=TrafficClass.MANUAL)
        evaluation = await gate.evaluate(attempt, record=True, door="agi")
        gate.undo(evaluation)
        await audit.close()
        stored = [r async for r in read_range(client, "callgate")]
    finally:
        await store.close()
        await client.aclose()
    assert ("store_unavailable", Verdict.ALLOW, []) == (
        evaluation.decision.reason,
        evaluation.decision.verdict,
        stored,
    )


async def test_a_block_by_a_packs_static_rule_names_that_pack(redis_url: str) -> None:
    """Refused before Redis by a pack's destination or caller-ID rule: the entry's packs
    name the pack (and its version) that decided."""
    store = Store(redis_url, deadline_s=1.0)
    config = pack_config(["fr"], "FR", number_types={"campaign_blocked": []})  # the pack refuses
    gate = Gate(config, store, "v1")
    audit = AuditLog(store.admin_client, "callgate", AuditConfig())
    gate.observers.append(audit)
    (fr,) = gate.config.policy.packs
    shown = Attempt("0612345678", NOW, "acme", caller_id="+33612345678")
    try:
        await gate.decide(Attempt("0899123456", NOW, "acme"), record=True, door="agi")
        await gate.decide(shown, record=True, door="agi")
        found = await records(gate)
    finally:
        await audit.close()
        await store.close()
    assert [
        ("number_types:fr-special-numbers", f"fr@{fr.version}"),
        ("caller_id:fr-arcep-automated", f"fr@{fr.version}"),
    ] == sorted(((r["rule"], r["packs"]) for r in found), reverse=True)


async def test_only_recorded_decisions_are_audited(audited: Gate) -> None:
    """A check without recording (a scrub, check without --record) leaves no entry."""
    await audited.decide(Attempt("0612345678", NOW), record=False, door="cli")
    await audited.decide(
        Attempt("17", NOW, traffic_class=TrafficClass.MANUAL), record=True, door="cli"
    )
    (entry,) = await records(audited)
    assert ("ALLOW", "emergency", "17", "0") == (
        entry["verdict"],
        entry["reason"],
        entry["number"],
        entry["redis_us"],
    )


async def test_export_range_is_by_time(audited: Gate) -> None:
    """read_range(since, until) returns the entries decided in that window, in order."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    for number in ("0611111111", "0622222222", "0633333333"):
        await audited.decide(Attempt(number, datetime.now(UTC)), record=True, door="cli")
    entries = await records(audited)
    later = [
        r
        async for r in read_range(
            audited.store.admin_client, "callgate", since=datetime.now(UTC) + timedelta(seconds=5)
        )
    ]
    window = [
        r
        async for r in read_range(
            audited.store.admin_client, "callgate", since=before, until=datetime.now(UTC)
        )
    ]
    assert 3 == len(entries)
    assert [] == later
    assert [r["id"] for r in entries] == [r["id"] for r in window]


async def test_a_record_written_late_is_found_by_its_decision_time(redis_url: str) -> None:
    """A decision queued while Redis was down is written minutes later: a range around
    its decision time finds it (up to LATE_S late); one around its writing does not."""
    client = aioredis.Redis.from_url(redis_url)
    audit = AuditLog(client, "callgate", AuditConfig())
    decided = datetime.now(UTC) - timedelta(minutes=3)
    audit.append({"ts": str(int(decided.timestamp() * 1000)), "verdict": "ALLOW"})
    audit.append({"ts": str(int(datetime.now(UTC).timestamp() * 1000)), "verdict": "BLOCK"})
    await audit.close()  # written now
    second = timedelta(seconds=1)
    then = [r async for r in read_range(client, "callgate", decided - second, decided + second)]
    now = [r async for r in read_range(client, "callgate", datetime.now(UTC) - 5 * second)]
    await client.aclose()
    assert (["ALLOW"], ["BLOCK"]) == ([r["verdict"] for r in then], [r["verdict"] for r in now])


async def test_a_dead_redis_loses_no_decision_and_raises_nothing() -> None:
    """Audit records wait while Redis is unreachable; closing reports them, never raises."""
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.1)
    audit = AuditLog(client, "callgate", AuditConfig())
    audit.start()
    audit.append({"verdict": "ALLOW"})
    await audit.close()
    await client.aclose()
    assert (0, 0) == (audit.written, audit.dropped)


async def test_a_number_refused_before_redis_is_kept_in_its_own_group(audited: Gate) -> None:
    """A recorded decision about a callable number that never reaches Redis (a premium
    number for a campaign) is kept in its number's slot group, the one ``why`` reads."""
    e164 = "+33899123456"
    number = audited.keyspace.number(e164)
    decision = await audited.decide(Attempt("0899123456", NOW, "acme"), door="agi", record=True)
    (audit,) = [o for o in audited.observers if isinstance(o, AuditLog)]
    await audit.close()  # flush
    found = [
        (r["verdict"], r["reason"], r["number"])
        async for r in read_range(audited.store.admin_client, "callgate", groups=[number.group])
    ]
    assert 0 != number.group
    assert [("BLOCK", decision.reason, number.token)] == found


async def test_an_idle_writer_sleeps_until_a_record_comes(redis_url: str) -> None:
    """With nothing queued the writer does not wake every FLUSH_S (an idle gate costs no
    CPU); a record that comes wakes it, and is written FLUSH_S later with those that came
    meanwhile, in one batch."""
    import asyncio

    from gate.ops.audit import FLUSH_S

    client = aioredis.Redis.from_url(redis_url)
    audit = AuditLog(client, "callgate", AuditConfig())
    flushes = 0
    flush = audit._flush

    async def counted() -> bool:
        nonlocal flushes
        flushes += 1
        return await flush()

    audit._flush = counted  # type: ignore[method-assign]
    audit.start()
    try:
        await asyncio.sleep(20 * FLUSH_S)
        idle_flushes = flushes
        audit.append({"verdict": "ALLOW"})
        audit.append({"verdict": "BLOCK"})
        for _ in range(100):  # bounded: 100 x FLUSH_S / 10
            if audit.written:
                break
            await asyncio.sleep(FLUSH_S / 10)
        waited_flushes = flushes - idle_flushes
    finally:
        await audit.close()
        await client.aclose()
    assert idle_flushes <= 2
    assert (2, 1) == (audit.written, waited_flushes)


async def test_an_entry_callgate_did_not_write_is_shown_as_it_is_never_dropped(
    audited: Gate,
) -> None:
    """Entries added to an audit stream by hand or by another tool (not JSON, not
    UTF-8, another shape) read back as records of their own fields, with reason
    ``unreadable_entry`` and the time of their id, between the decisions around them:
    ``audit tail``/``export``/``why`` and the console neither fail on them nor drop them."""
    from gate.ops.models import audit_record as api_record

    await audited.decide(Attempt("0611111111", NOW), record=True, door="cli")
    client = audited.store.admin_client
    (key,) = [k async for k in client.scan_iter(match="*audit", count=1000)]
    garbage: list[dict[bytes, bytes]] = [
        {b"h": b"not json", b"r": b"1,2,3"},
        {b"h": b'{"ts": "1", "checks": [["Z"]]}', b"r": b"x"},
        {b"h": b"[1]", b"r": b"0,0"},
        {b"foo": b"bar"},
        {b"h": b"\xff", b"r": b"\xfe"},
        {b"verdict": b"ALLOW", b"ts": b"99999999999999999", b"retry_after_s": b"inf"},
        {b"h": b'{"ts": "1", "checks": []}', b"r": b"inf,0"},  # was an OverflowError
    ]
    ids = [await client.xadd(key, fields) for fields in garbage]  # type: ignore[arg-type]
    # The same number again: its entry goes to the same stream, after the others (streams
    # of other groups may hold the same ids).
    await audited.decide(Attempt("0611111111", NOW), record=True, door="cli")
    entries = await records(audited)
    unreadable = [e for e in entries if e["reason"] == "unreadable_entry"]
    assert ["ALLOW"] + ["unreadable_entry"] * 7 + ["ALLOW"] == [
        "unreadable_entry" if e in unreadable else e["verdict"] for e in entries
    ]
    assert [(i.decode(), i.decode().split("-")[0]) for i in ids] == [
        (e["id"], e["ts"]) for e in unreadable
    ]
    assert {"foo": "bar"}.items() <= unreadable[3].items()
    assert [None] * 7 == [api_record(e).retry_after_s for e in unreadable]
