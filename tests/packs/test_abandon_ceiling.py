"""The UK abandoned-call ceiling (config/packs/uk.toml, ``uk-ofcom-abandoned-3pct``) against
a REAL Redis: a campaign whose abandoned calls exceed 3 % of its live calls over the
trailing 24 h is DEFERred (decide.lua's Q check) until, as its oldest minutes leave the
window, the rate falls back; ``min_live_calls``; other campaigns and agents unaffected;
``--explain``; the counts written only by answered/abandoned events (call_counts.lua)."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from gate.config.loader import Config
from gate.core.engine import CheckKind, Plan
from gate.core.errors import InputError
from gate.core.model import Attempt, TrafficClass
from gate.lists.admin import EventRecord
from gate.service import Gate
from gate.store.client import CALL_COUNTS
from tests.packs.conftest import PACKS_DIR, TENANT, admin, import_list, outcome, pack_config

LONDON = ZoneInfo("Europe/London")
CALLED = "+441212345678"
CALLER_ID = "+442071234567"
RULE = "abandon_rate:uk-ofcom-abandoned-3pct"
SOURCE = (
    "Ofcom, Persistent misuse: statement of policy (20 Dec 2016, applies from 1 Mar 2017), "
    "Annexes 2-3 [verify]"
)
# A Tuesday, on a minute: the counts' first minute starts here.
T0 = datetime(2027, 5, 4, 10, 0, tzinfo=LONDON)
MINUTE = timedelta(minutes=1)
DAY = timedelta(hours=24)


def lead(i: int) -> str:
    """The i-th (0-999) number a campaign reached (not ``CALLED``)."""
    return f"+44207946{i:04d}"


def call(at: datetime, campaign: str = "spring", **kw: object) -> Attempt:
    return Attempt(CALLED, now=at, caller_id=CALLER_ID, campaign=campaign, **kw)  # type: ignore[arg-type]


async def calls(
    gate: Gate,
    at: datetime,
    answered: int = 0,
    abandoned: int = 0,
    campaign: str = "spring",
    first: int = 0,
) -> list[EventRecord]:
    """Record ``answered`` then ``abandoned`` calls of ``campaign`` at ``at`` (the clock)."""
    lists = admin(gate)
    events = ["answered"] * answered + ["abandoned"] * abandoned
    return [
        await lists.record_event(event, lead(first + i), TENANT, at, at, campaign)
        for i, event in enumerate(events)
    ]


async def decide(gate: Gate, at: datetime, **kw: object) -> tuple[str, str, float | None]:
    return outcome(await gate.decide(call(at, **kw), record=True, door="cli"))


async def screened(gate: Gate) -> Gate:
    """TPS and CTPS imported (empty) the day before ``T0``."""
    for name in ("tps", "ctps"):
        await import_list(gate, name, [], T0 - timedelta(days=1))
    return gate


@pytest.fixture
async def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """The shipped uk pack."""
    return await screened(open_gate(pack_config(["uk"], "GB")))


def uk_pack_with(tmp_path: Path, extra: str) -> Path:
    """A copy of the uk pack whose ceiling rule gets ``extra`` lines."""
    text = (PACKS_DIR / "uk.toml").read_text(encoding="utf-8")
    anchor = 'id = "uk-ofcom-abandoned-3pct"\n'
    assert anchor in text
    (tmp_path / "uk.toml").write_text(text.replace(anchor, anchor + extra), encoding="utf-8")
    return tmp_path


async def test_over_the_ceiling_defers_until_the_old_minutes_leave_the_window(
    gate: Gate,
) -> None:
    """5 abandoned of 50 live calls at 10:00, 100 more live at 12:00: 5 of 150 (3.3 %) is
    over 3 %, so the campaign DEFERs until the 10:00 minute has wholly left the 24 h
    window (10:01 the next day); then it is back under (0 of 100)."""
    await calls(gate, T0, answered=45, abandoned=5)
    early = await decide(gate, T0 + timedelta(hours=1))
    await calls(gate, T0 + timedelta(hours=2), answered=100, first=100)
    back = T0 + DAY + MINUTE
    assert [
        ("DEFER", RULE, (23 * 3600 + 60.0)),
        ("DEFER", RULE, (21 * 3600 + 60.0)),
        ("DEFER", RULE, 0.001),
        ("ALLOW", "allowed", None),
    ] == [
        early,
        await decide(gate, T0 + timedelta(hours=3)),
        await decide(gate, back - timedelta(milliseconds=1)),
        await decide(gate, back),
    ]


async def test_at_the_ceiling_is_allowed_over_it_is_not(gate: Gate) -> None:
    """3 abandoned of 100 live calls is 3 %, not over: ALLOW; one more abandoned (4 of 101):
    DEFER until its minute has left the window (the first one's leaving is not enough)."""
    await calls(gate, T0, answered=97, abandoned=3)
    at_ceiling = await decide(gate, T0 + MINUTE)
    await calls(gate, T0 + MINUTE, abandoned=1, first=200)
    assert [("ALLOW", "allowed", None), ("DEFER", RULE, 24 * 3600.0)] == [
        at_ceiling,
        await decide(gate, T0 + 2 * MINUTE),
    ]


async def test_events_out_of_order_count_in_their_minute(gate: Gate) -> None:
    """The answered calls of 12:00 recorded before the abandoned ones of 10:00 decide the
    same: the 10:00 minute still leaves the window first."""
    await calls(gate, T0 + timedelta(hours=2), answered=100, first=100)
    lists = admin(gate)
    for i in range(5):
        await lists.record_event(
            "abandoned", lead(i), TENANT, T0, T0 + timedelta(hours=2), "spring"
        )
    await calls(gate, T0, answered=45, first=300)
    assert ("DEFER", RULE, (21 * 3600 + 60.0)) == await decide(gate, T0 + timedelta(hours=3))


async def test_the_wait_reaches_past_the_first_minutes_read(gate: Gate) -> None:
    """One abandoned call a minute for 40 minutes, then 200 answered: 40 of 240 (16.7 %).
    Back under only once 34 of those minutes have left the window (6 of 206): the counts
    are read a few dozen minutes at a time, and the wait spans more than one read."""
    lists = admin(gate)
    for minute in range(40):
        at = T0 + minute * MINUTE
        await lists.record_event("abandoned", lead(minute), TENANT, at, at, "spring")
    await calls(gate, T0 + 40 * MINUTE, answered=200, first=100)
    back = T0 + DAY + 34 * MINUTE
    assert [("DEFER", RULE, 24 * 3600 - 7 * 60.0), ("ALLOW", "allowed", None)] == [
        await decide(gate, T0 + 41 * MINUTE),
        await decide(gate, back),
    ]


async def test_min_live_calls_holds_the_ceiling_off_until_enough_live_calls(
    open_gate: Callable[[Config], Gate], tmp_path: Path
) -> None:
    """With min_live_calls = 20: 1 abandoned of 10 live calls (10 %) is not judged yet;
    at 20 live calls (5 %) the campaign DEFERs."""
    packs = uk_pack_with(tmp_path, "min_live_calls = 20\n")
    gate = await screened(open_gate(pack_config(["uk"], "GB", packs_dir=packs)))
    await calls(gate, T0, answered=9, abandoned=1)
    few = await decide(gate, T0 + MINUTE)
    await calls(gate, T0 + MINUTE, answered=10, first=100)
    assert [("ALLOW", "allowed", None), ("DEFER", RULE, (24 * 3600 - 60.0))] == [
        few,
        await decide(gate, T0 + 2 * MINUTE),
    ]


async def test_other_campaigns_agents_and_calls_without_a_campaign_go(gate: Gate) -> None:
    """Over the ceiling, only that campaign's automated calls wait: another campaign's, an
    agent's (class manual) and a campaign call without a campaign go."""
    await calls(gate, T0, answered=9, abandoned=1)
    later = T0 + timedelta(hours=1)
    assert [
        ("DEFER", RULE, (23 * 3600 + 60.0)),
        ("ALLOW", "allowed", None),
        ("ALLOW", "allowed", None),
        ("ALLOW", "allowed", None),
    ] == [
        await decide(gate, later),
        await decide(gate, later, campaign="autumn"),
        await decide(gate, later, traffic_class=TrafficClass.MANUAL),
        await decide(gate, later, campaign=""),
    ]


async def test_a_tenant_wide_ceiling_counts_every_campaign(
    open_gate: Callable[[Config], Gate], tmp_path: Path
) -> None:
    """scope = "tenant": the abandoned calls of one campaign hold back the others."""
    text = (PACKS_DIR / "uk.toml").read_text(encoding="utf-8")
    assert 'scope = "campaign"\n' in text
    (tmp_path / "uk.toml").write_text(text.replace('scope = "campaign"\n', 'scope = "tenant"\n'))
    gate = await screened(open_gate(pack_config(["uk"], "GB", packs_dir=tmp_path)))
    await calls(gate, T0, answered=9, abandoned=1, campaign="spring")
    assert ("DEFER", RULE, (23 * 3600 + 60.0)) == await decide(
        gate, T0 + timedelta(hours=1), campaign="autumn"
    )


async def test_explain_names_the_ceiling_its_source_and_the_wait(gate: Gate) -> None:
    """--explain: the ceiling's row (DEFER, the rule's terms, when it is back under, its
    source); without a campaign, "not checked"."""
    await calls(gate, T0, answered=9, abandoned=1)
    over = await gate.evaluate(call(T0 + timedelta(hours=1)), record=False, door="cli")
    none = await gate.evaluate(call(T0, campaign=""), record=False, door="cli")
    row = {r.rule: r for r in over.rules}[RULE]
    (unchecked,) = [r for r in none.rules if r.rule == RULE]
    assert (
        "DEFER",
        "at most 3.0% of live calls abandoned per campaign over 1d; over the ceiling; back "
        "under in 23h1m",
        SOURCE,
    ) == (row.outcome, row.detail, row.source)
    assert (
        "not checked",
        "at most 3.0% of live calls abandoned per campaign over 1d; no campaign given",
    ) == (unchecked.outcome, unchecked.detail)


async def test_decisions_never_write_the_counts(gate: Gate, redis_url: str) -> None:
    """Only events write a campaign's counts: decisions, recorded or not, leave them."""
    await calls(gate, T0, answered=9, abandoned=1)
    client = redis.Redis.from_url(redis_url)
    (key,) = client.keys("*abandon:*")
    before = (client.get(key), client.pttl(key))
    for minutes in range(1, 6):
        await decide(gate, T0 + minutes * MINUTE)
        await gate.decide(call(T0 + minutes * MINUTE), record=False, door="cli")
    after = (client.get(key), client.pttl(key))
    client.close()
    assert (before[0], True) == (after[0], before[1] >= after[1] > before[1] - 60_000)


def counts(raw: bytes) -> tuple[tuple[float, float], list[tuple[float, float, float]]]:
    """A campaign's counts key: its totals and its (minute_ms, live, abandoned) entries."""
    totals = struct.unpack(">dd", raw[:16])
    body = raw[16:]
    return totals, [struct.unpack(">ddd", body[i : i + 24]) for i in range(0, len(body), 24)]


async def test_call_counts_keep_minutes_in_order_and_drop_those_gone(
    gate: Gate, redis_url: str
) -> None:
    """call_counts.lua: an earlier minute is put in its place, a minute wholly out of the
    window (by the caller's clock) is dropped from the entries and the totals, a call
    already out of the window is not counted, and the key expires with its newest minute."""
    key = "callgate:{abandon:test:c:default:spring}"
    window_ms = 24 * 3600 * 1000
    t0 = int(T0.timestamp() * 1000)
    hour = 3600 * 1000

    async def count(at_ms: int, now_ms: int, live: int, abandoned: int) -> list[int]:
        (reply,) = await gate.store.run_scripts(
            CALL_COUNTS, [([key], [at_ms, now_ms, window_ms, live, abandoned])]
        )
        return [int(n) for n in reply]

    client = redis.Redis.from_url(redis_url)
    replies = [
        await count(t0 + 2 * hour + 5_000, t0 + 2 * hour, 1, 0),
        await count(t0 + 30_000, t0 + 2 * hour, 1, 1),
        await count(t0 + 2 * hour + 59_000, t0 + 2 * hour, 1, 0),
    ]
    ordered = counts(client.get(key) or b"")
    late = t0 + 25 * hour
    replies.append(await count(late - window_ms - 60_000, late, 1, 1))  # already gone
    replies.append(await count(late, late, 1, 0))
    pruned = counts(client.get(key) or b"")
    ttl = client.pttl(key)
    client.close()
    assert [[1, 0], [2, 1], [3, 1], [2, 0], [3, 0]] == replies
    assert (
        (3.0, 1.0),
        [(float(t0), 1.0, 1.0), (float(t0 + 2 * hour), 2.0, 0.0)],
    ) == ordered
    assert (
        (3.0, 0.0),
        [(float(t0 + 2 * hour), 2.0, 0.0), (float(late), 1.0, 0.0)],
    ) == pruned
    # The key lives until its newest minute has left the window (by the caller's clock);
    # the caller's clock is in the future, so Redis counts the TTL from now.
    assert window_ms + 60_000 - 1_000 < ttl <= window_ms + 60_000


# --- counts callgate did not write --------------------------------------------------------


def counts_key(gate: Gate, campaign: str = "spring") -> str:
    (rule,) = gate.config.policy.packs[0].abandon_ceilings
    key = gate.keyspace.ceiling_key(rule, TENANT, campaign)
    assert key is not None
    return key


def entry(at: datetime, live: float = 1.0, abandoned: float = 1.0) -> bytes:
    return struct.pack(">ddd", int(at.timestamp() * 1000), live, abandoned)


# Values at a campaign's counts key that callgate did not write: a key of another type
# (GETRANGE and GET answer WRONGTYPE), and STRINGs whose length is not 16 + 24k: under the
# totals' 16 bytes (7, 15), a whole entry and 7 bytes more (47: read at once), and 40
# minutes over the ceiling then 5 bytes (the value ends inside an entry of the second
# chunk read); and one of the right length, its one minute 8 bytes of text (a time some
# 10^187 years from now).
UNREADABLE = ["7 bytes", "15 bytes", "47 bytes", "past the first read", "text", "hash"]


def spoil(client: redis.Redis, key: str, how: str) -> object:
    """Put a value callgate did not write at ``key``; returns what ``snapshot`` reads."""
    client.delete(key)
    if how == "hash":
        client.hset(key, "live", "10")
    elif how == "7 bytes":
        client.set(key, b"garbage")
    elif how == "15 bytes":
        client.set(key, struct.pack(">dd", 10, 5)[:15])
    elif how == "text":
        client.set(key, struct.pack(">dd", 10, 5) + b"hello123" + struct.pack(">dd", 10, 5))
    elif how == "47 bytes":
        client.set(key, struct.pack(">dd", 10, 5) + entry(T0, 10, 5) + b"garbage")
    else:
        minutes = b"".join(entry(T0 + i * MINUTE) for i in range(40))
        client.set(key, struct.pack(">dd", 40, 40) + minutes + b"extra")
    return snapshot(client, key)


def snapshot(client: redis.Redis, key: str) -> object:
    if client.type(key) == b"hash":
        return client.hgetall(key)
    return client.get(key), client.pttl(key)


@pytest.mark.parametrize("how", UNREADABLE)
@pytest.mark.parametrize("fail_mode", ["DEFER", "ALLOW"])
async def test_unreadable_counts_are_over_the_ceiling_for_a_whole_window(
    open_gate: Callable[[Config], Gate],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    how: str,
    fail_mode: str,
) -> None:
    """Counts callgate did not write: the campaign is over its ceiling for a whole window
    (the check sees the window), the value is left as it is. Not a script error: not the
    fail mode (with an ALLOW fail mode the ceiling would be skipped), no warning."""
    config = pack_config(["uk"], "GB", fail_mode={"campaign": fail_mode})
    gate = await screened(open_gate(config))
    client = redis.Redis.from_url(redis_url)
    try:
        key = counts_key(gate)
        before = spoil(client, key, how)
        with caplog.at_level(logging.INFO, logger="callgate"):
            evaluation = await gate.evaluate(call(T0 + timedelta(hours=1)), record=True, door="cli")
        after = snapshot(client, key)
    finally:
        client.close()
    assert ("DEFER", RULE, 24 * 3600.0) == outcome(evaluation.decision)
    assert isinstance(evaluation.pending, Plan)
    assert evaluation.result is not None
    seen = zip(evaluation.pending.check.checks, evaluation.result.results, strict=True)
    assert [24 * 3600 * 1000] == [n for c, n in seen if c.kind is CheckKind.ABANDON_RATE]
    assert before == after
    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("how", UNREADABLE)
async def test_a_red_list_still_blocks_beside_unreadable_counts(
    gate: Gate, redis_url: str, how: str
) -> None:
    """The other checks of the decision still run: a red-listed number is BLOCKed (a BLOCK
    wins over the ceiling's DEFER); delisted, the unreadable counts DEFER it."""
    client = redis.Redis.from_url(redis_url)
    try:
        spoil(client, counts_key(gate), how)
    finally:
        client.close()
    lists = admin(gate)
    await lists.add("red", [CALLED], TENANT, "")
    listed = await decide(gate, T0 + MINUTE)
    await lists.remove("red", [CALLED], TENANT, "")
    assert [("BLOCK", "listed:red", None), ("DEFER", RULE, 24 * 3600.0)] == [
        listed,
        await decide(gate, T0 + MINUTE),
    ]


@pytest.mark.parametrize("how", UNREADABLE)
async def test_a_shadow_ceiling_reports_unreadable_counts_as_over_it(
    open_gate: Callable[[Config], Gate], tmp_path: Path, redis_url: str, how: str
) -> None:
    """A shadow ceiling whose counts callgate did not write: the call is ALLOWed, the
    ceiling reported in ``shadow`` (it would DEFER), the value left as it is."""
    packs = uk_pack_with(tmp_path, "shadow = true\n")
    gate = await screened(open_gate(pack_config(["uk"], "GB", packs_dir=packs)))
    client = redis.Redis.from_url(redis_url)
    try:
        key = counts_key(gate)
        before = spoil(client, key, how)
        decision = await gate.decide(call(T0 + MINUTE), record=True, door="cli")
        after = snapshot(client, key)
    finally:
        client.close()
    assert (("ALLOW", "allowed", None), (RULE,)) == (outcome(decision), decision.shadow)
    assert before == after


@pytest.mark.parametrize("how", ["7 bytes", "15 bytes", "47 bytes", "text", "hash"])
async def test_a_call_is_not_counted_in_unreadable_counts(
    gate: Gate, redis_url: str, how: str
) -> None:
    """``record_event`` (every door's): the value is left as it is and the caller gets one
    line naming the rule, the key, the campaign and what to do; once the key is deleted,
    the same event is counted."""
    client = redis.Redis.from_url(redis_url)
    key = counts_key(gate)
    try:
        before = spoil(client, key, how)
        with pytest.raises(InputError) as refused:
            await admin(gate).record_event("answered", lead(1), TENANT, T0, T0, "spring")
        after = snapshot(client, key)
        client.delete(key)
        again = await admin(gate).record_event("answered", lead(1), TENANT, T0, T0, "spring")
        counted = counts(client.get(key) or b"")
    finally:
        client.close()
    assert (
        f"uk-ofcom-abandoned-3pct: the value at Redis key {key} (the abandoned-call counts "
        "of campaign 'spring') was not written by callgate: the answered call was not "
        "counted toward it, and the calls it governs are deferred while it is there; delete "
        "that key, then record the answered call again"
    ) == str(refused.value)
    assert before == after
    assert ["uk-ofcom-abandoned-3pct"] == again.rules
    assert ((1.0, 0.0), [(float(T0.timestamp() * 1000), 1.0, 0.0)]) == counted
