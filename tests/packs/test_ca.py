"""The Canada pack (config/packs/ca.toml) against a REAL Redis: CRTC calling hours in the
recipient's time, the National DNCL with its 31-day freshness and the caller ID a
telemarketer must display."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gate.config.loader import Config
from gate.core.model import Attempt, TrafficClass
from gate.service import Gate
from tests.packs.conftest import TENANT, admin, import_list, outcome, pack_config, pack_rules

TORONTO = ZoneInfo("America/Toronto")
VANCOUVER = ZoneInfo("America/Vancouver")
TORONTO_NUMBER = "+14165550123"
VANCOUVER_NUMBER = "+16045550123"
# 807 (northwestern Ontario) spans Eastern and Central time; phonenumbers places the
# exchange 223 (Dryden) in Central time only.
NW_ONTARIO_CENTRAL_NUMBER = "+18072231234"
WINNIPEG = ZoneInfo("America/Winnipeg")
CALLER_ID = "+14165550100"
TUESDAY = datetime(2026, 12, 1, 12, 0, tzinfo=TORONTO)
SATURDAY = datetime(2026, 12, 5, 9, 30, tzinfo=TORONTO)
HOURS_REASON = "outside_hours:ca-crtc-hours"


def call(at: datetime, dialled: str = TORONTO_NUMBER) -> Attempt:
    return Attempt(dialled, now=at, caller_id=CALLER_ID)


@pytest.fixture
async def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """A Gate with the shipped ca pack and a DNCL copy downloaded the day before."""
    gate = open_gate(pack_config(["ca"], "CA"))
    await import_list(gate, "dncl", [], TUESDAY - timedelta(days=1))
    return gate


def test_pack_loads_with_sources() -> None:
    """ca.toml loads; every rule names its source; the caller-ID rule is verify (its section
    of the Rules is not cited)."""
    (pack,) = pack_config(["ca"], "CA").policy.packs
    rules = pack_rules(pack)
    assert ({"CA"}, {"dncl", "internal_dncl"}) == (
        set(pack.regions),
        {rule.name for rule in pack.lists},
    )
    assert [] == [rule.id for rule in rules if not rule.source]
    assert ["ca-crtc-cli"] == [rule.id for rule in rules if rule.verify]


HOURS = [
    # (dialled, at, expected (verdict, reason, retry_after_s))
    pytest.param(
        TORONTO_NUMBER, SATURDAY, ("DEFER", HOURS_REASON, 1800.0), id="saturday-09:30-until-10:00"
    ),
    pytest.param(
        TORONTO_NUMBER,
        SATURDAY.replace(hour=10, minute=0),
        ("ALLOW", "allowed", None),
        id="saturday-10:00",
    ),
    pytest.param(
        TORONTO_NUMBER,
        SATURDAY.replace(hour=18, minute=0),
        ("DEFER", HOURS_REASON, 16 * 3600.0),
        id="saturday-18:00-until-sunday-10:00",
    ),
    pytest.param(
        TORONTO_NUMBER,
        TUESDAY.replace(hour=21, minute=15),
        ("ALLOW", "allowed", None),
        id="weekday-21:15",
    ),
    pytest.param(
        TORONTO_NUMBER,
        TUESDAY.replace(hour=21, minute=30),
        ("DEFER", HOURS_REASON, 11.5 * 3600),
        id="weekday-21:30-until-09:00",
    ),
    pytest.param(
        TORONTO_NUMBER,
        datetime(2026, 12, 4, 21, 30, tzinfo=TORONTO),
        ("DEFER", HOURS_REASON, 12.5 * 3600),
        id="friday-21:30-until-saturday-10:00",
    ),
    pytest.param(
        TORONTO_NUMBER,
        TUESDAY.replace(hour=8, minute=59),
        ("DEFER", HOURS_REASON, 60.0),
        id="weekday-08:59",
    ),
    pytest.param(
        VANCOUVER_NUMBER,
        TUESDAY.replace(hour=11),  # 08:00 in Vancouver
        ("DEFER", HOURS_REASON, 3600.0),
        id="vancouver-judged-in-pacific-time",
    ),
    pytest.param(
        NW_ONTARIO_CENTRAL_NUMBER,
        datetime(2026, 12, 1, 21, 0, tzinfo=WINNIPEG),  # 22:00 in 807's Eastern part
        ("DEFER", HOURS_REASON, 12 * 3600.0),
        id="807-central-exchange-21:00-central",
    ),
    pytest.param(
        NW_ONTARIO_CENTRAL_NUMBER,
        datetime(2026, 12, 1, 20, 15, tzinfo=WINNIPEG),  # 21:15 in the Eastern part
        ("ALLOW", "allowed", None),
        id="807-central-exchange-20:15-central",
    ),
]


@pytest.mark.parametrize(("dialled", "at", "expected"), HOURS)
async def test_calling_hours(
    gate: Gate, dialled: str, at: datetime, expected: tuple[str, str, float | None]
) -> None:
    """CRTC: 09:00-21:30 weekdays, 10:00-18:00 Saturday and Sunday, recipient's time: in
    every zone of the number's area code (807 spans Eastern and Central time)."""
    assert expected == outcome(await gate.decide(call(at, dialled), record=True, door="cli"))


async def test_dncl_listed_number_is_blocked(gate: Gate) -> None:
    """A number on the National DNCL copy is BLOCK listed:dncl."""
    await import_list(gate, "dncl", [TORONTO_NUMBER], TUESDAY - timedelta(days=1))
    assert [("BLOCK", "listed:dncl", None), ("ALLOW", "allowed", None)] == [
        outcome(await gate.decide(call(TUESDAY), record=True, door="cli")),
        outcome(await gate.decide(call(TUESDAY, "+14165550199"), record=True, door="cli")),
    ]


async def test_internal_do_not_call_list_is_per_tenant(gate: Gate) -> None:
    """CRTC Telemarketing Rules: a telemarketer's own do not call list. A number on tenant
    default's internal list is BLOCK listed:internal_dncl for it, not for another tenant.
    (The pack had no such list: a Canadian do-not-call request had nowhere to go but the
    config's own lists.)"""
    await admin(gate).add("internal_dncl", [TORONTO_NUMBER], TENANT, "")
    other = Attempt(TORONTO_NUMBER, now=TUESDAY, caller_id=CALLER_ID, tenant="globex")
    assert [("BLOCK", "listed:internal_dncl", None), ("ALLOW", "allowed", None)] == [
        outcome(await gate.decide(call(TUESDAY), record=True, door="cli")),
        outcome(await gate.decide(other, record=True, door="cli")),
    ]


FRESHNESS = [
    # (age of the DNCL copy, in absolute time, expected outcome)
    pytest.param(timedelta(days=31), ("ALLOW", "allowed", None), id="31-days"),
    pytest.param(
        timedelta(days=31, seconds=1), ("DEFER", "stale_list:dncl", 3600.0), id="31-days-1s"
    ),
]


@pytest.mark.parametrize(("age", "expected"), FRESHNESS)
async def test_dncl_copy_must_be_at_most_31_days_old(
    gate: Gate, age: timedelta, expected: tuple[str, str, float | None]
) -> None:
    """CRTC: scrub against a National DNCL copy at most 31 days old, else DEFER."""
    await import_list(gate, "dncl", [], TUESDAY.astimezone(UTC) - age)
    assert expected == outcome(await gate.decide(call(TUESDAY), record=True, door="cli"))


RULE = "caller_id:ca-crtc-cli"
ALLOWED = ("ALLOW", "allowed", None, "")
CAMPAIGN, MANUAL = TrafficClass.CAMPAIGN, TrafficClass.MANUAL
CALLER_IDS = [
    # (caller ID presented, traffic class, expected (verdict, reason, retry, deciding rule))
    pytest.param(CALLER_ID, CAMPAIGN, ALLOWED, id="valid"),
    pytest.param("416-555-0100", MANUAL, ALLOWED, id="valid-national"),
    pytest.param("", CAMPAIGN, ("BLOCK", "caller_id:masked", None, RULE), id="masked"),
    pytest.param(
        "restricted", MANUAL, ("BLOCK", "caller_id:masked", None, RULE), id="manual-restricted"
    ),
    pytest.param("+1416555", CAMPAIGN, ("BLOCK", "caller_id:invalid", None, RULE), id="short"),
    # Exchange 123 does not exist (an exchange never starts with 1): not dialable.
    pytest.param(
        "+14161234567", CAMPAIGN, ("BLOCK", "caller_id:invalid", None, RULE), id="invalid"
    ),
]


@pytest.mark.parametrize(("caller_id", "traffic_class", "expected"), CALLER_IDS)
async def test_telemarketer_displays_a_valid_caller_id(
    gate: Gate, caller_id: str, traffic_class: TrafficClass, expected: tuple[str, str, None, str]
) -> None:
    """CRTC Telemarketing Rules: the originating (or an alternate) number is displayed, never
    blocked; by a dialer or an agent alike. (The pack had no caller-ID rule: a masked or
    made-up caller ID was ALLOWed.)"""
    attempt = Attempt(TORONTO_NUMBER, now=TUESDAY, caller_id=caller_id, traffic_class=traffic_class)
    decision = await gate.decide(attempt, record=True, door="cli")
    assert expected == (*outcome(decision), decision.rule)


async def test_caller_id_rules_follow_the_callee_region(
    open_gate: Callable[[Config], Gate],
) -> None:
    """With the us and ca packs on a gate dialling from the UK, a masked call is refused by
    the rule of the callee's country: a Canadian number by ca-crtc-cli, a US one by
    us-telemarketing-cli; a UK number, governed by neither, is let through."""
    gate = open_gate(pack_config(["us", "ca"], "GB"))
    await import_list(gate, "dncl", [], TUESDAY - timedelta(days=1))
    await import_list(gate, "national_dnc", [], TUESDAY - timedelta(days=1))
    rules = [
        (decision.verdict.value, decision.reason, decision.rule)
        for decision in [
            await gate.decide(Attempt(number, now=TUESDAY, caller_id=""), record=True, door="cli")
            for number in (TORONTO_NUMBER, "+12125550123", "+442079460123")
        ]
    ]
    assert [
        ("BLOCK", "caller_id:masked", RULE),
        ("BLOCK", "caller_id:masked", "caller_id:us-telemarketing-cli"),
        ("ALLOW", "allowed", ""),
    ] == rules
