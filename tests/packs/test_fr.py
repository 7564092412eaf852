"""The France pack (config/packs/fr.toml) against a REAL Redis: dated scenarios of D223-9
days, hours and attempts, the refusal cool-off, L223-1 opt-in consent (and the Bloctel
regime before 2026-08-11), ARCEP caller-ID ranges and special numbers, shadow mode."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import holidays
import pytest
import redis

from gate.config.loader import Config
from gate.core.model import Attempt, TrafficClass, Verdict
from gate.core.params import seconds_text
from gate.lists.scrub import scrub
from gate.service import Gate
from tests.packs.conftest import (
    PACKS_DIR,
    TENANT,
    admin,
    import_list,
    outcome,
    pack_config,
    pack_rules,
    upcoming,
)

PARIS = ZoneInfo("Europe/Paris")
REUNION = ZoneInfo("Indian/Reunion")
CONSUMER = "+33612345678"
REUNION_CONSUMER = "+262262123456"
# A "numéro polyvalent vérifié" (ARCEP décision n° 2022-1583): allowed for automated calls.
VERIFIED_CLI = "+33162000000"
TUESDAY = datetime(2026, 12, 1, 10, 30, tzinfo=PARIS)
BLOCTEL_DAY = datetime(2026, 6, 2, 10, 30, tzinfo=PARIS)  # a Tuesday before 2026-08-11
CAMPAIGN, MANUAL = TrafficClass.CAMPAIGN, TrafficClass.MANUAL


def call(
    at: datetime,
    dialled: str = CONSUMER,
    caller_id: str = VERIFIED_CLI,
    traffic_class: TrafficClass = CAMPAIGN,
) -> Attempt:
    return Attempt(dialled, now=at, caller_id=caller_id, traffic_class=traffic_class)


def wait_s(at: datetime, until: datetime) -> float:
    return (until - at).total_seconds()


def first_morning(day: date) -> datetime:
    """10:00 Paris on the first weekday from ``day`` on that is no French public holiday:
    the first D223-9 opening of that day or later."""
    while day.weekday() >= 5 or day in holidays.country_holidays("FR", years=day.year):
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, 10, 0, tzinfo=PARIS)


@pytest.fixture
def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """A Gate with the shipped fr pack (French dialling, default number types)."""
    return open_gate(pack_config(["fr"], "FR"))


async def consent(gate: Gate, *numbers: str, lists: tuple[str, ...] = ("consent",)) -> None:
    """Prior consent (no expiry) granted a year before the scenarios."""
    for name in lists:
        await admin(gate).add(name, numbers, TENANT, "", now=TUESDAY - timedelta(days=365))


def test_pack_loads_with_its_lists_and_sources() -> None:
    """fr.toml loads; every rule of it names its source."""
    (pack,) = pack_config(["fr"], "FR").policy.packs
    rules = pack_rules(pack)
    assert ("fr", {"consent", "consent_outside_hours", "customers", "bloctel"}) == (
        pack.id,
        {rule.name for rule in pack.lists},
    )
    assert [] == [rule.id for rule in rules if not rule.source]


HOURS = [
    # (dialled, at, expected (verdict, reason, retry_after_s))
    pytest.param(CONSUMER, TUESDAY, ("ALLOW", "allowed", None), id="tuesday-10:30"),
    pytest.param(
        CONSUMER,
        TUESDAY.replace(hour=12, minute=59, second=59),
        ("ALLOW", "allowed", None),
        id="tuesday-12:59:59-half-open",
    ),
    pytest.param(
        CONSUMER,
        TUESDAY.replace(hour=13, minute=30),
        ("DEFER", "outside_hours:fr-d223-9-hours", 1800.0),
        id="tuesday-13:30-until-14:00",
    ),
    pytest.param(
        CONSUMER,
        TUESDAY.replace(hour=20, minute=0),
        ("DEFER", "outside_hours:fr-d223-9-hours", 14 * 3600.0),
        id="tuesday-20:00-until-wednesday-10:00",
    ),
    pytest.param(
        CONSUMER,
        datetime(2026, 12, 5, 11, 0, tzinfo=PARIS),
        (
            "DEFER",
            "outside_hours:fr-d223-9-hours",
            wait_s(
                datetime(2026, 12, 5, 11, 0, tzinfo=PARIS),
                datetime(2026, 12, 7, 10, 0, tzinfo=PARIS),
            ),
        ),
        id="saturday-until-monday-10:00",
    ),
    pytest.param(
        CONSUMER,
        datetime(2026, 12, 25, 10, 30, tzinfo=PARIS),
        (
            "DEFER",
            "outside_hours:fr-d223-9-hours",
            wait_s(
                datetime(2026, 12, 25, 10, 30, tzinfo=PARIS),
                datetime(2026, 12, 28, 10, 0, tzinfo=PARIS),
            ),
        ),
        id="christmas-friday-until-monday-10:00",
    ),
    pytest.param(
        REUNION_CONSUMER,
        TUESDAY,  # 13:30 in Réunion
        ("DEFER", "outside_hours:fr-d223-9-hours", 1800.0),
        id="reunion-judged-in-reunion-time",
    ),
    pytest.param(
        REUNION_CONSUMER,
        datetime(2026, 12, 1, 11, 0, tzinfo=REUNION),
        ("ALLOW", "allowed", None),
        id="reunion-11:00-local",
    ),
]


@pytest.mark.parametrize(("dialled", "at", "expected"), HOURS)
async def test_days_and_hours(
    gate: Gate, dialled: str, at: datetime, expected: tuple[str, str, float | None]
) -> None:
    """D223-9: Monday-Friday 10:00-13:00 and 14:00-20:00 callee-local, never on a holiday."""
    await consent(gate, dialled)
    assert expected == outcome(await gate.decide(call(at, dialled), record=True, door="cli"))


async def test_consent_to_calls_outside_hours_allows_21h(gate: Gate) -> None:
    """With the outside-hours consent a 21:00 call is ALLOW; without it, DEFER to 10:00."""
    late = TUESDAY.replace(hour=21, minute=0)
    other = "+33612345679"
    await consent(gate, CONSUMER, lists=("consent", "consent_outside_hours"))
    await consent(gate, other)
    assert [
        ("ALLOW", "allowed", None),
        ("DEFER", "outside_hours:fr-d223-9-hours", 13 * 3600.0),
    ] == [
        outcome(await gate.decide(call(late), record=True, door="cli")),
        outcome(await gate.decide(call(late, other), record=True, door="cli")),
    ]


async def test_fifth_attempt_in_30_days_is_deferred(gate: Gate) -> None:
    """4 attempts per rolling 30 days: the 5th waits until the 1st leaves the window."""
    await consent(gate, CONSUMER)
    days = [TUESDAY + timedelta(days=n) for n in range(4)]  # Tuesday to Friday
    fifth_at = TUESDAY + timedelta(days=6)  # next Monday
    allowed = [outcome(await gate.decide(call(at), record=True, door="cli")) for at in days]
    fifth = await gate.decide(call(fifth_at), record=True, door="cli")
    assert [("ALLOW", "allowed", None)] * 4 == allowed
    assert ("DEFER", "cap:fr-d223-9-attempts", wait_s(fifth_at, TUESDAY + timedelta(days=30))) == (
        outcome(fifth)
    )


async def test_refusal_defers_60_days(gate: Gate) -> None:
    """After a refusal during a call, no call or attempt for 60 calendar days; the retry is
    the first D223-9 opening at or after their end."""
    at = upcoming(1, 10, 30, PARIS)  # a Tuesday 10:30 after the wall clock (see `upcoming`)
    asked = at + timedelta(minutes=5)
    await consent(gate, CONSUMER)
    started = await admin(gate).record_event("refusal", CONSUMER, TENANT, at, at)
    decision = await gate.decide(call(asked), record=True, door="cli")
    # The 60 days end on a Saturday, when D223-9 allows no call: the dialer is told to
    # retry on the next weekday that is not a holiday, at 10:00 (a retry at the end itself
    # would be refused outside_hours).
    ends = at + timedelta(days=60)
    assert 5 == ends.weekday()
    retry_at = first_morning(ends.date())
    assert ["fr-d223-9-refusal"] == started.rules
    assert (
        "DEFER",
        "refusal:fr-d223-9-refusal",
        retry_at.timestamp() - asked.timestamp(),
    ) == outcome(decision)
    at_retry = await gate.decide(call(retry_at), record=False, door="cli")
    assert ("ALLOW", "allowed", None) == outcome(at_retry)


# A Thursday refusal at 15:00 Paris: day 60 (15 March 2027) is a Monday, day 61 a Tuesday,
# neither a holiday, both before summer time (28 March).
REFUSED_AT = datetime(2027, 1, 14, 15, 0, tzinfo=PARIS)
DAY_61 = datetime(2027, 3, 16, 0, 0, tzinfo=PARIS)


def cooloff_marker(gate: Gate, number: str) -> str:
    """The Redis key of the fr refusal cool-off marker of ``number`` (tenant default)."""
    (pack,) = gate.config.policy.packs
    (rule,) = pack.cooloffs
    keys = gate.keyspace.number(number)
    return gate.keyspace.number_key(
        keys.group, gate.keyspace.cooloff_suffix(rule, TENANT), keys.token
    )


async def test_a_refusal_holds_the_number_to_midnight_after_day_60(gate: Gate) -> None:
    """D223-9 counts 60 calendar days: a refusal on Thursday 14 January at 15:00 Paris holds
    the number all of day 60 (Monday 15 March at 16:00, 1441 hours on, DEFERs) until 00:00
    on day 61, moved to the first D223-9 opening: Tuesday 16 March, 10:00, then allowed."""
    await consent(gate, CONSUMER)
    started = await admin(gate).record_event("refusal", CONSUMER, TENANT, REFUSED_AT, REFUSED_AT)
    day_60 = datetime(2027, 3, 15, 16, 0, tzinfo=PARIS)
    held = await gate.decide(call(day_60), record=False, door="cli")
    opening = DAY_61.replace(hour=10)
    after = await gate.decide(call(opening + timedelta(minutes=5)), record=False, door="cli")
    assert (["fr-d223-9-refusal"], opening) == (started.rules, first_morning(DAY_61.date()))
    assert [
        ("DEFER", "refusal:fr-d223-9-refusal", wait_s(day_60, opening)),
        ("ALLOW", "allowed", None),
    ] == [outcome(held), outcome(after)]


async def test_the_calendar_end_is_exact_across_a_dst_change(gate: Gate) -> None:
    """A refusal on 4 February (CET) ends at 00:00 summer time on 6 April (22:00 UTC on the
    5th), not 1440 hours on (16:00 CEST on the 5th): with consent to calls outside hours (no
    hours to move the retry), a call at 23:30 on the 5th waits 30 minutes, one at 00:00
    on the 6th is allowed."""
    await consent(gate, CONSUMER, lists=("consent", "consent_outside_hours"))
    refused = datetime(2027, 2, 4, 15, 0, tzinfo=PARIS)
    await admin(gate).record_event("refusal", CONSUMER, TENANT, refused, refused)
    late = datetime(2027, 4, 5, 23, 30, tzinfo=PARIS)
    held = await gate.decide(call(late), record=False, door="cli")
    at_end = await gate.decide(
        call(datetime(2027, 4, 6, 0, 0, tzinfo=PARIS)), record=False, door="cli"
    )
    assert [("DEFER", "refusal:fr-d223-9-refusal", 1800.0), ("ALLOW", "allowed", None)] == [
        outcome(held),
        outcome(at_end),
    ]


async def test_an_overseas_refusal_counts_the_days_of_the_callee(gate: Gate) -> None:
    """A Réunion number refused at 22:30 Paris on Thursday 14 January: already Friday the
    15th, 01:30, in Réunion, so its 60 days end at 00:00 Réunion on 17 March. A call on
    Tuesday 16 March at 10:30 Réunion (allowed by 1440 hours, or by Paris's days) DEFERs
    to Wednesday 17 March, 10:00 Réunion."""
    await consent(gate, REUNION_CONSUMER)
    refused = datetime(2027, 1, 14, 22, 30, tzinfo=PARIS)
    await admin(gate).record_event("refusal", REUNION_CONSUMER, TENANT, refused, refused)
    asked = datetime(2027, 3, 16, 10, 30, tzinfo=REUNION)
    held = await gate.decide(call(asked, REUNION_CONSUMER), record=False, door="cli")
    opening = datetime(2027, 3, 17, 10, 0, tzinfo=REUNION)
    after = await gate.decide(call(opening, REUNION_CONSUMER), record=False, door="cli")
    assert [
        ("DEFER", "refusal:fr-d223-9-refusal", wait_s(asked, opening)),
        ("ALLOW", "allowed", None),
    ] == [outcome(held), outcome(after)]


async def test_a_marker_written_before_calendar_days_keeps_its_meaning(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """A plain marker (the refusal's ms, as gates wrote it before) still ends 1440 hours
    on: 15:00 on day 60, then allowed at 15:30; the marker is left as it was."""
    await consent(gate, CONSUMER)
    key = cooloff_marker(gate, CONSUMER)
    refused_ms = int(REFUSED_AT.timestamp() * 1000)
    sync_redis.set(key, refused_ms, px=86_400_000)
    day_60 = datetime(2027, 3, 15, 14, 0, tzinfo=PARIS)
    held = await gate.decide(call(day_60), record=False, door="cli")
    after = await gate.decide(call(day_60.replace(hour=15, minute=30)), record=False, door="cli")
    assert [
        ("DEFER", "refusal:fr-d223-9-refusal", 3600.0),
        ("ALLOW", "allowed", None),
    ] == [outcome(held), outcome(after)]
    assert str(refused_ms).encode() == sync_redis.get(key)


async def test_a_refusal_never_moves_the_end_earlier(gate: Gate, sync_redis: redis.Redis) -> None:
    """An older refusal (10:00) reported after a marker of a later one written before
    calendar days (20:00, ending 20:00 on day 60) takes its own, later end (00:00 on day
    61): the marker holds that end less 60 days, a plain time that gates of any version
    read alike; a refusal older still changes nothing."""
    await consent(gate, CONSUMER)
    key = cooloff_marker(gate, CONSUMER)
    later_ms = int(REFUSED_AT.replace(hour=20).timestamp() * 1000)
    sync_redis.set(key, later_ms, px=86_400_000)
    for hour in (10, 9):
        at = REFUSED_AT.replace(hour=hour)
        await admin(gate).record_event("refusal", CONSUMER, TENANT, at, REFUSED_AT)
    end_ms = int(DAY_61.timestamp() * 1000)
    asked = datetime(2027, 3, 15, 19, 55, tzinfo=PARIS)
    held = await gate.decide(call(asked), record=False, door="cli")
    opening = DAY_61.replace(hour=10)
    assert str(end_ms - 60 * 86_400_000).encode() == sync_redis.get(key)
    assert ("DEFER", "refusal:fr-d223-9-refusal", wait_s(asked, opening)) == outcome(held)


def consent_entry(gate: Gate, number: str, name: str = "consent") -> tuple[str, str]:
    """The Redis HASH and field of ``number``'s entry in consent list ``name``."""
    keys = gate.keyspace.number(number)
    return gate.keyspace.consent_key(keys.group, admin(gate).key(name, TENANT, "")), keys.token


@pytest.mark.parametrize("garbage", ["garbage", "", "-5", "1e400", "99999999999999999", "12.5"])
async def test_an_unreadable_cool_off_marker_holds_the_number_until_a_refusal_replaces_it(
    gate: Gate, sync_redis: redis.Redis, garbage: str
) -> None:
    """A marker callgate did not write (by hand, another tool) is read as a refusal now: the
    whole 60 days from the call (not an error, whatever the fail mode, and not a call); a
    refusal recorded then replaces it with its own time."""
    await consent(gate, CONSUMER)
    key = cooloff_marker(gate, CONSUMER)
    sync_redis.set(key, garbage, px=86_400_000)
    held = await gate.decide(call(REFUSED_AT), record=True, door="cli")
    await admin(gate).record_event("refusal", CONSUMER, TENANT, REFUSED_AT, REFUSED_AT)
    day_60 = datetime(2027, 3, 15, 14, 0, tzinfo=PARIS)
    after = await gate.decide(call(day_60), record=False, door="cli")
    assert [
        ("DEFER", "refusal:fr-d223-9-refusal", 60 * 86400.0),
        ("DEFER", "refusal:fr-d223-9-refusal", wait_s(day_60, DAY_61.replace(hour=10))),
    ] == [outcome(held), outcome(after)]
    assert str(int(DAY_61.timestamp() * 1000) - 60 * 86_400_000).encode() == sync_redis.get(key)


@pytest.mark.parametrize("garbage", ["garbage", "", "1700000000000", ":0", "1700000000000:x"])
async def test_an_unreadable_consent_entry_is_no_consent(
    gate: Gate, sync_redis: redis.Redis, garbage: str
) -> None:
    """A consent entry not in callgate's form (``granted_ms:expiry_ms``) is no consent: the
    opt-in check BLOCKs and the outside-hours one exempts nothing (it used to count as a
    consent without expiry); recording the consent again replaces it."""
    late = TUESDAY.replace(hour=21, minute=0)
    await consent(gate, CONSUMER, lists=("consent", "consent_outside_hours"))
    for name in ("consent", "consent_outside_hours"):
        sync_redis.hset(*consent_entry(gate, CONSUMER, name), garbage)  # type: ignore[arg-type]
    refused = await gate.decide(call(TUESDAY), record=True, door="cli")
    await consent(gate, CONSUMER)
    outside = await gate.decide(call(late), record=True, door="cli")
    await consent(gate, CONSUMER, lists=("consent_outside_hours",))
    again = await gate.decide(call(late), record=True, door="cli")
    assert [
        ("BLOCK", "no_consent:fr-l223-1-optin", None),
        ("DEFER", "outside_hours:fr-d223-9-hours", 13 * 3600.0),
        ("ALLOW", "allowed", None),
    ] == [outcome(refused), outcome(outside), outcome(again)]


async def test_the_explanation_shows_when_the_refusal_cool_off_ends(gate: Gate) -> None:
    """``--explain`` names the calendar days and the instant the cool-off ends (UTC)."""
    await consent(gate, CONSUMER)
    await admin(gate).record_event("refusal", CONSUMER, TENANT, REFUSED_AT, REFUSED_AT)
    asked = datetime(2027, 3, 15, 16, 0, tzinfo=PARIS)
    evaluation = await gate.evaluate(call(asked), record=False, door="cli")
    (row,) = (r for r in evaluation.rules if r.rule == "cooloff:fr-d223-9-refusal")
    assert (
        "DEFER",
        "60 calendar days (to 00:00 local after the last) after a refusal; 8h left, until "
        "2027-03-15 23:00:00 UTC",
    ) == (row.outcome, row.detail)


CAP_ENDS = [
    # (the days of the four attempts, at 10:30; the fifth's day; the retry: 10:00 Paris)
    pytest.param(
        [date(2026, 12, 3), date(2026, 12, 4), date(2026, 12, 7), date(2026, 12, 8)],
        date(2026, 12, 9),
        date(2027, 1, 4),  # the first leaves the 30 days on Saturday 2 January: Monday
        id="ends-on-a-saturday-retries-monday-10:00",
    ),
    pytest.param(
        [date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27), date(2026, 11, 30)],
        date(2026, 12, 1),
        date(2026, 12, 28),  # ... on Friday 25 December, Christmas: Monday
        id="ends-on-christmas-retries-the-next-open-day",
    ),
]


@pytest.mark.parametrize(("attempts", "fifth", "retry"), CAP_ENDS)
async def test_a_cap_retry_is_the_next_d223_9_opening(
    gate: Gate, attempts: list[date], fifth: date, retry: date
) -> None:
    """The 5th attempt in 30 days retries when the 1st leaves the window, moved to the next
    weekday that is no public holiday, at 10:00, when that is not a calling time."""
    await consent(gate, CONSUMER)
    for day in attempts:
        at = TUESDAY.replace(month=day.month, day=day.day)
        allowed = await gate.decide(call(at), record=True, door="cli")
        assert ("ALLOW", "allowed", None) == outcome(allowed)
    fifth_at = TUESDAY.replace(month=fifth.month, day=fifth.day)
    retry_at = datetime(retry.year, retry.month, retry.day, 10, 0, tzinfo=PARIS)
    decision = await gate.decide(call(fifth_at), record=True, door="cli")
    assert (
        "DEFER",
        "cap:fr-d223-9-attempts",
        retry_at.timestamp() - fifth_at.timestamp(),
    ) == outcome(decision)


NIGHT_CAP = {"id": "one-per-14h", "limit": 1, "window": "14h", "scope": "tenant"}


async def test_a_cap_ending_at_night_retries_at_the_morning_opening(
    open_gate: Callable[[Config], Gate],
) -> None:
    """A config cap (1 per 14 h) reached at 19:30 ends at 09:00, before D223-9 opens:
    the retry is 10:00 the next morning."""
    gate = open_gate(pack_config(["fr"], "FR", caps=[NIGHT_CAP]))
    await consent(gate, CONSUMER)
    first, second = TUESDAY.replace(hour=19, minute=0), TUESDAY.replace(hour=19, minute=30)
    allowed = await gate.decide(call(first), record=True, door="cli")
    decision = await gate.decide(call(second), record=True, door="cli")
    wednesday_10 = datetime(2026, 12, 2, 10, 0, tzinfo=PARIS)
    assert [
        ("ALLOW", "allowed", None),
        ("DEFER", "cap:one-per-14h", wednesday_10.timestamp() - second.timestamp()),
    ] == [outcome(allowed), outcome(decision)]


async def test_a_scrub_gives_the_cap_retry_the_gate_gives(
    open_gate: Callable[[Config], Gate],
) -> None:
    """A scrub at 19:30 of a number whose cap ends at 09:00 says retry at 10:00, as the gate."""
    gate = open_gate(pack_config(["fr"], "FR", caps=[NIGHT_CAP]))
    await consent(gate, CONSUMER)
    first, second = TUESDAY.replace(hour=19, minute=0), TUESDAY.replace(hour=19, minute=30)
    await gate.decide(call(first), record=True, door="cli")
    rows: list[list[str]] = []
    await scrub(
        gate, [[CONSUMER]], 0, rows.extend, now=second, tenant=TENANT, caller_id=VERIFIED_CLI
    )
    decision = await gate.decide(call(second), record=False, door="cli")
    wait = datetime(2026, 12, 2, 10, 0, tzinfo=PARIS).timestamp() - second.timestamp()
    assert [[CONSUMER, "DEFER", "cap:one-per-14h", seconds_text(wait)]] == rows
    assert wait == decision.retry_after_s


async def test_a_cap_retry_stays_with_consent_to_calls_outside_hours(
    open_gate: Callable[[Config], Gate],
) -> None:
    """With the outside-hours consent, hours do not apply: a cap (1 per 2 h) reached at
    21:30 retries at its end, 23:00."""
    cap = {"id": "one-per-2h", "limit": 1, "window": "2h", "scope": "tenant"}
    gate = open_gate(pack_config(["fr"], "FR", caps=[cap]))
    await consent(gate, CONSUMER, lists=("consent", "consent_outside_hours"))
    first, second = TUESDAY.replace(hour=21, minute=0), TUESDAY.replace(hour=21, minute=30)
    allowed = await gate.decide(call(first), record=True, door="cli")
    decision = await gate.decide(call(second), record=True, door="cli")
    assert [("ALLOW", "allowed", None), ("DEFER", "cap:one-per-2h", 5400.0)] == [
        outcome(allowed),
        outcome(decision),
    ]


@pytest.mark.parametrize("newest_first", [False, True], ids=["in-order", "newest-first"])
async def test_a_late_report_of_an_older_refusal_leaves_the_cool_off_of_the_newer(
    gate: Gate, newest_first: bool
) -> None:
    """Two refusals 10 days apart, in either order: 60 days from the later one (the retry:
    the first D223-9 opening at or after their end, a Saturday)."""
    later = upcoming(1, 10, 30, PARIS)
    asked = later + timedelta(minutes=5)
    refusals = [later - timedelta(days=10), later]
    await consent(gate, CONSUMER)
    for at in reversed(refusals) if newest_first else refusals:
        await admin(gate).record_event("refusal", CONSUMER, TENANT, at, later)
    decision = await gate.decide(call(asked), record=True, door="cli")
    retry_at = first_morning((later + timedelta(days=60)).date())
    assert (
        "DEFER",
        "refusal:fr-d223-9-refusal",
        retry_at.timestamp() - asked.timestamp(),
    ) == outcome(decision)


CONSENT = [
    # (lists the number is on, expected outcome on Tuesday 2026-12-01 10:30)
    pytest.param((), ("BLOCK", "no_consent:fr-l223-1-optin", None), id="no-consent"),
    pytest.param(("consent",), ("ALLOW", "allowed", None), id="consent"),
    pytest.param(("customers",), ("ALLOW", "allowed", None), id="current-customer"),
    pytest.param(
        ("consent_outside_hours",),
        ("BLOCK", "no_consent:fr-l223-1-optin", None),
        id="hours-consent-is-not-opt-in",
    ),
]


@pytest.mark.parametrize(("lists", "expected"), CONSENT)
async def test_opt_in_from_2026_08_11(
    gate: Gate, lists: tuple[str, ...], expected: tuple[str, str, float | None]
) -> None:
    """L223-1: prior consent required; a current contract is the only exception."""
    await consent(gate, CONSUMER, lists=lists)
    assert expected == outcome(await gate.decide(call(TUESDAY), record=True, door="cli"))


async def test_expired_consent_blocks(gate: Gate) -> None:
    """A consent whose expiry has passed is no consent."""
    granted = TUESDAY - timedelta(days=100)
    await admin(gate).add(
        "consent", [CONSUMER], TENANT, "", now=granted, expires=TUESDAY - timedelta(days=1)
    )
    expected = ("BLOCK", "no_consent:fr-l223-1-optin", None)
    assert expected == outcome(await gate.decide(call(TUESDAY), record=True, door="cli"))


async def test_consent_with_future_expiry_allows(gate: Gate) -> None:
    """A consent that expires after the call is still valid."""
    await admin(gate).add(
        "consent", [CONSUMER], TENANT, "", now=TUESDAY, expires=TUESDAY + timedelta(days=1)
    )
    assert ("ALLOW", "allowed", None) == outcome(
        await gate.decide(call(TUESDAY), record=True, door="cli")
    )


async def test_revoked_consent_blocks_on_the_red_list(gate: Gate) -> None:
    """Revocation removes the consent and red-lists the number: BLOCK listed:red."""
    await consent(gate, CONSUMER, lists=("consent", "consent_outside_hours"))
    await admin(gate).revoke([CONSUMER], TENANT, "")
    assert ("BLOCK", "listed:red", None) == outcome(
        await gate.decide(call(TUESDAY), record=True, door="cli")
    )


BLOCTEL = [
    # (numbers in the cleaned file, its age in days, expected outcome on 2026-06-02 10:30)
    pytest.param([], 10, ("BLOCK", "no_consent:fr-bloctel-clean", None), id="not-in-file"),
    pytest.param(
        [CONSUMER],
        10,
        ("ALLOW", "allowed", None),
        id="in-file-10-days-old",
    ),
    pytest.param(
        [CONSUMER],
        40,
        ("DEFER", "stale_list:bloctel", 3600.0),
        id="file-40-days-old",
    ),
]


@pytest.mark.parametrize(("numbers", "age_days", "expected"), BLOCTEL)
async def test_bloctel_regime_before_2026_08_11(
    gate: Gate, numbers: list[str], age_days: int, expected: tuple[str, str, float | None]
) -> None:
    """Until 2026-08-10: only numbers in a Bloctel-cleaned file less than 30 days old."""
    await import_list(gate, "bloctel", numbers, BLOCTEL_DAY - timedelta(days=age_days))
    assert expected == outcome(await gate.decide(call(BLOCTEL_DAY), record=True, door="cli"))


CALLER_IDS = [
    # (caller ID presented, traffic class, expected outcome)
    pytest.param("0612345678", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="06"),
    pytest.param("0145000000", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="01"),
    pytest.param("0162000000", CAMPAIGN, ("ALLOW", "allowed", None), id="0162-verified"),
    pytest.param("0948000000", CAMPAIGN, ("ALLOW", "allowed", None), id="0948-verified"),
    pytest.param("", CAMPAIGN, ("BLOCK", "caller_id:masked", None), id="masked"),
    pytest.param("anonymous", CAMPAIGN, ("BLOCK", "caller_id:masked", None), id="anonymous"),
    pytest.param(
        "0612345678", MANUAL, ("BLOCK", "caller_id:forbidden_range", None), id="manual-06"
    ),
    pytest.param(
        "0756123456", MANUAL, ("BLOCK", "caller_id:forbidden_range", None), id="manual-07"
    ),
    pytest.param("", MANUAL, ("BLOCK", "caller_id:masked", None), id="manual-masked"),
    pytest.param("0145000000", MANUAL, ("ALLOW", "allowed", None), id="manual-01"),
    # Overseas numbers are in the same plan under their own country codes: 0262 (+262 2),
    # 0690 (+590 6), 09 (+262 9) are refused for automated calls, except the overseas
    # verified ranges 09475 (+590 9475) and 09478 (+262 9478); +33 9475 is no number
    # (0947 5x is Guadeloupe's), an invalid caller ID.
    pytest.param(
        "+262262161234", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="0262"
    ),
    pytest.param(
        "+590690001234", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="0690"
    ),
    pytest.param(
        "+262939901234", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="0939"
    ),
    pytest.param(
        "+596596301234", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="0596"
    ),
    pytest.param("+590947512345", CAMPAIGN, ("ALLOW", "allowed", None), id="09475-verified"),
    pytest.param("+262947812345", CAMPAIGN, ("ALLOW", "allowed", None), id="09478-verified"),
    pytest.param("+33947512345", CAMPAIGN, ("BLOCK", "caller_id:invalid", None), id="+33-9475"),
    pytest.param(
        "+262692123456", MANUAL, ("BLOCK", "caller_id:forbidden_range", None), id="manual-0692"
    ),
    pytest.param(
        "+596696201234", MANUAL, ("BLOCK", "caller_id:forbidden_range", None), id="manual-0696"
    ),
    pytest.param("+262262161234", MANUAL, ("ALLOW", "allowed", None), id="manual-0262"),
]


@pytest.mark.parametrize(("caller_id", "traffic_class", "expected"), CALLER_IDS)
async def test_caller_id(
    gate: Gate, caller_id: str, traffic_class: TrafficClass, expected: tuple[str, str, None]
) -> None:
    """ARCEP 2022-1583 ranges for automated calls; never 06/07 or masked for a call centre."""
    await consent(gate, CONSUMER)
    decision = await gate.decide(
        call(TUESDAY, caller_id=caller_id, traffic_class=traffic_class), record=True, door="cli"
    )
    assert expected == outcome(decision)


async def test_premium_number_is_never_dialled_by_a_campaign(
    open_gate: Callable[[Config], Gate],
) -> None:
    """The pack itself refuses 089 for campaigns (even with no config number_types)."""
    gate = open_gate(
        pack_config(["fr"], "FR", number_types={"campaign_blocked": [], "manual_blocked": []})
    )
    decision = await gate.decide(call(TUESDAY, "0891000000"), record=True, door="cli")
    assert (("BLOCK", "number_type:premium", None), "number_types:fr-special-numbers") == (
        outcome(decision),
        decision.rule,
    )


@pytest.mark.parametrize(
    ("region", "dialled"),
    [("YT", "17"), ("YT", "18"), ("GP", "112"), ("RE", "115"), ("MQ", "119"), ("GF", "116000")],
)
async def test_an_overseas_emergency_call_is_never_held_and_never_autodialled(
    open_gate: Callable[[Config], Gate], region: str, dialled: str
) -> None:
    """A PBX dialling in an overseas département: the national emergency numbers (ARCEP,
    the same plan) are emergencies there too. Once read as invalid numbers (phonenumbers
    flags only some per place), an agent's call to 17 in Mayotte was blocked."""
    gate = open_gate(pack_config(["fr"], region))
    night = datetime(2026, 12, 5, 23, 0, tzinfo=REUNION)  # a Saturday night: no window
    manual = await gate.decide(call(night, dialled, traffic_class=MANUAL), record=True, door="cli")
    campaign = await gate.decide(call(TUESDAY, dialled), record=True, door="cli")
    assert [("ALLOW", "emergency", None), ("BLOCK", "emergency", None)] == [
        outcome(manual),
        outcome(campaign),
    ]


async def test_shadow_pack_reports_but_allows(
    open_gate: Callable[[Config], Gate], tmp_path: Path
) -> None:
    """With [pack] shadow = true the 13:30 call goes out; the hours rule is reported."""
    text = (PACKS_DIR / "fr.toml").read_text(encoding="utf-8")
    shadowed = text.replace('\nid = "fr"\n', '\nid = "fr"\nshadow = true\n', 1)
    assert shadowed != text
    (tmp_path / "fr.toml").write_text(shadowed, encoding="utf-8")
    gate = open_gate(pack_config(["fr"], "FR", packs_dir=tmp_path))
    await consent(gate, CONSUMER)
    decision = await gate.decide(call(TUESDAY.replace(hour=13, minute=30)), record=True, door="cli")
    assert (Verdict.ALLOW, "allowed") == (decision.verdict, decision.reason)
    assert "outside_hours:fr-d223-9-hours" in decision.shadow


async def test_a_check_without_caller_id_skips_the_caller_id_rules(gate: Gate) -> None:
    """A CLI check names no caller ID: ARCEP rules say "not checked"; the number is judged."""
    await consent(gate, CONSUMER)
    await admin(gate).add("red", [CONSUMER], TENANT, "")
    evaluation = await gate.evaluate(
        Attempt(CONSUMER, now=TUESDAY, caller_id=None), record=False, door="cli"
    )
    rows = {row.rule: row.outcome for row in evaluation.rules}
    assert ("BLOCK", "listed:red", None) == outcome(evaluation.decision)
    assert "not checked" == rows["caller_id:fr-arcep-automated"]
