"""The United States pack (config/packs/us.toml) against a REAL Redis: the TCPA/TSR calling
window in every zone of the number, the National DNC (and its 31-day freshness), the
company DNC, the Florida/Oklahoma/Maryland hours and 3-per-24 h caps, and the caller ID a
telemarketing call must transmit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gate.config.loader import Config
from gate.core.model import Attempt, TrafficClass
from gate.service import Gate
from tests.packs.conftest import TENANT, admin, import_list, outcome, pack_config, pack_rules

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
DENVER = ZoneInfo("America/Denver")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
NY_NUMBER = "+12125550123"
LA_NUMBER = "+12135550123"
FL_NUMBER = "+13055550123"  # Miami
OK_NUMBER = "+14055550123"  # Oklahoma City (Central time)
MD_NUMBER = "+14105550123"  # Baltimore
IDAHO_NUMBER = "+12085550123"  # 208: Mountain (Boise) and Pacific time
# Area codes spanning Central and Eastern time, numbers of an exchange phonenumbers places
# in Central time only: the window must hold in the area code's Eastern part as well.
TN_CENTRAL_NUMBER = "+14235550123"  # 423 (Tennessee, no state rule)
FL_PANHANDLE_NUMBER = "+18502341234"  # 850 (Florida's 08:00-20:00 rule)
# The territories phonenumbers gives a region of their own, each number in its zone.
TERRITORIES = [
    pytest.param("+17875550123", ZoneInfo("America/Puerto_Rico"), id="PR-787"),
    pytest.param("+19395550123", ZoneInfo("America/Puerto_Rico"), id="PR-939"),
    pytest.param("+13405550123", ZoneInfo("America/St_Thomas"), id="VI-340"),
    pytest.param("+16712345678", ZoneInfo("Pacific/Guam"), id="GU-671"),
    pytest.param("+16702345678", ZoneInfo("Pacific/Saipan"), id="MP-670"),
    pytest.param("+16846331234", ZoneInfo("Pacific/Pago_Pago"), id="AS-684"),
    # A mobile of American Samoa: phonenumbers calls the type non-geographic there (its
    # country-level zones are every NANP zone); its area code is in Pago Pago all the same.
    pytest.param("+16847331234", ZoneInfo("Pacific/Pago_Pago"), id="AS-684-mobile"),
]
CALLER_ID = "+12125550100"
TUESDAY = datetime(2026, 12, 1, 8, 30, tzinfo=NEW_YORK)
NATIONAL_HOURS = "outside_hours:us-tcpa-hours"
CAMPAIGN, MANUAL = TrafficClass.CAMPAIGN, TrafficClass.MANUAL


def call(at: datetime, dialled: str = NY_NUMBER) -> Attempt:
    return Attempt(dialled, now=at, caller_id=CALLER_ID)


def at_ny(hour: int, minute: int = 0, days: int = 0) -> datetime:
    return TUESDAY.replace(hour=hour, minute=minute) + timedelta(days=days)


@pytest.fixture
async def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """A Gate with the shipped us pack and a National DNC copy scrubbed the day before."""
    gate = open_gate(pack_config(["us"], "US"))
    await import_list(gate, "national_dnc", [], TUESDAY - timedelta(days=1))
    return gate


def test_pack_loads_with_sources_and_verify_marks() -> None:
    """us.toml loads; every rule names its source; state rules are marked verify (area codes)."""
    (pack,) = pack_config(["us"], "US").policy.packs
    rules = pack_rules(pack)
    assert (
        {"US", "PR", "VI", "GU", "MP", "AS"},
        {"national_dnc", "company_dnc", "tcpa_consent", "reassigned"},
    ) == (
        set(pack.regions),
        {rule.name for rule in pack.lists},
    )
    assert [] == [rule.id for rule in rules if not rule.source]
    assert [] == [rule.id for rule in rules if rule.prefixes and not rule.verify]
    assert ["us-telemarketing-cli"] == [rule.id for rule in pack.caller_ids]


HOURS = [
    # (dialled, at, expected (verdict, reason, retry_after_s))
    pytest.param(
        LA_NUMBER, at_ny(8, 30), ("DEFER", NATIONAL_HOURS, 2.5 * 3600), id="LA-05:30-until-08:00"
    ),
    pytest.param(NY_NUMBER, at_ny(8, 30), ("ALLOW", "allowed", None), id="NY-08:30"),
    pytest.param(NY_NUMBER, at_ny(20, 59), ("ALLOW", "allowed", None), id="NY-20:59"),
    pytest.param(NY_NUMBER, at_ny(21), ("DEFER", NATIONAL_HOURS, 11 * 3600.0), id="NY-21:00"),
    pytest.param(NY_NUMBER, at_ny(7, 59), ("DEFER", NATIONAL_HOURS, 60.0), id="NY-07:59"),
    pytest.param(
        NY_NUMBER,
        datetime(2026, 12, 6, 10, 0, tzinfo=NEW_YORK),
        ("ALLOW", "allowed", None),
        id="NY-sunday-10:00",
    ),
    pytest.param(
        IDAHO_NUMBER,
        datetime(2026, 12, 1, 8, 30, tzinfo=DENVER),  # 07:30 in the Pacific part
        ("DEFER", NATIONAL_HOURS, 1800.0),
        id="208-both-zones-morning",
    ),
    pytest.param(
        IDAHO_NUMBER,
        datetime(2026, 12, 1, 20, 30, tzinfo=LOS_ANGELES),  # 21:30 in the Mountain part
        ("DEFER", NATIONAL_HOURS, 11.5 * 3600),
        id="208-both-zones-evening",
    ),
    pytest.param(
        IDAHO_NUMBER,
        datetime(2026, 12, 1, 9, 0, tzinfo=DENVER),
        ("ALLOW", "allowed", None),
        id="208-open-in-both",
    ),
    pytest.param(
        TN_CENTRAL_NUMBER,
        datetime(2026, 12, 1, 20, 30, tzinfo=CHICAGO),  # 21:30 in the Eastern part
        ("DEFER", NATIONAL_HOURS, 11.5 * 3600),
        id="423-central-exchange-20:30-central",
    ),
    pytest.param(
        TN_CENTRAL_NUMBER,
        datetime(2026, 12, 1, 19, 30, tzinfo=CHICAGO),
        ("ALLOW", "allowed", None),
        id="423-central-exchange-19:30-central",
    ),
    pytest.param(
        FL_PANHANDLE_NUMBER,
        datetime(2026, 12, 1, 19, 30, tzinfo=CHICAGO),  # 20:30 in the Eastern part
        ("DEFER", "outside_hours:us-fl-hours", 12.5 * 3600),
        id="850-central-exchange-19:30-central",
    ),
    pytest.param(
        FL_PANHANDLE_NUMBER,
        datetime(2026, 12, 1, 18, 30, tzinfo=CHICAGO),
        ("ALLOW", "allowed", None),
        id="850-central-exchange-18:30-central",
    ),
    pytest.param(
        FL_NUMBER, at_ny(20, 30), ("DEFER", "outside_hours:us-fl-hours", 11.5 * 3600), id="FL-20:30"
    ),
    pytest.param(FL_NUMBER, at_ny(19, 59), ("ALLOW", "allowed", None), id="FL-19:59"),
    pytest.param(FL_NUMBER, at_ny(7, 30), ("DEFER", NATIONAL_HOURS, 1800.0), id="FL-07:30"),
    pytest.param(
        OK_NUMBER,
        datetime(2026, 12, 1, 20, 30, tzinfo=CHICAGO),
        ("DEFER", "outside_hours:us-ok-hours", 11.5 * 3600),
        id="OK-20:30-central",
    ),
    pytest.param(
        MD_NUMBER, at_ny(20, 30), ("DEFER", "outside_hours:us-md-hours", 11.5 * 3600), id="MD-20:30"
    ),
]


@pytest.mark.parametrize(("dialled", "at", "expected"), HOURS)
async def test_calling_window(
    gate: Gate, dialled: str, at: datetime, expected: tuple[str, str, float | None]
) -> None:
    """08:00-21:00 in every zone of the number's area code (64.1200(c)(1)), not only its
    exchange's (a Central exchange of 423 was called at 21:30 Eastern time); FL/OK/MD stop
    at 20:00."""
    assert expected == outcome(await gate.decide(call(at, dialled), record=True, door="cli"))


@pytest.mark.parametrize(("dialled", "tz"), TERRITORIES)
async def test_a_territory_number_is_called_08_00_to_21_00_in_its_own_zone(
    gate: Gate, dialled: str, tz: ZoneInfo
) -> None:
    """The federal window holds in the territories (47 U.S.C. 153: the TCPA's "United
    States"), in the territory's zone; no state's narrower window reaches them."""
    day = datetime(2026, 12, 1, tzinfo=tz)
    assert [
        ("DEFER", NATIONAL_HOURS, 60.0),
        ("ALLOW", "allowed", None),
        ("ALLOW", "allowed", None),
        ("DEFER", NATIONAL_HOURS, 11 * 3600.0),
    ] == [
        outcome(await gate.decide(call(day.replace(hour=h, minute=m), dialled), record=True,
                                  door="cli"))
        for h, m in ((7, 59), (8, 0), (20, 59), (21, 0))
    ]  # fmt: skip


@pytest.mark.parametrize(("dialled", "tz"), TERRITORIES)
async def test_a_territory_number_on_the_national_dnc_is_blocked(
    gate: Gate, dialled: str, tz: ZoneInfo
) -> None:
    """A Puerto Rico, Virgin Islands, Guam, Northern Mariana Islands or American Samoa
    number added to the National DNC copy is BLOCK listed:national_dnc."""
    await admin(gate).add("national_dnc", [dialled], TENANT, "")
    noon = datetime(2026, 12, 1, 12, 0, tzinfo=tz)
    expected = ("BLOCK", "listed:national_dnc", None)
    assert expected == outcome(await gate.decide(call(noon, dialled), record=True, door="cli"))


@pytest.mark.parametrize(("dialled", "tz"), TERRITORIES)
async def test_a_territory_number_waits_for_a_fresh_national_dnc_copy(
    open_gate: Callable[[Config], Gate], dialled: str, tz: ZoneInfo
) -> None:
    """Without a National DNC import, no call to a territory goes out either."""
    gate = open_gate(pack_config(["us"], "US"))
    noon = datetime(2026, 12, 1, 12, 0, tzinfo=tz)
    expected = ("DEFER", "stale_list:national_dnc", 3600.0)
    assert expected == outcome(await gate.decide(call(noon, dialled), record=True, door="cli"))


async def test_national_dnc_listed_number_is_blocked(gate: Gate) -> None:
    """A number on the National DNC copy is BLOCK listed:national_dnc."""
    await import_list(gate, "national_dnc", [NY_NUMBER], TUESDAY - timedelta(days=1))
    assert [("BLOCK", "listed:national_dnc", None), ("ALLOW", "allowed", None)] == [
        outcome(await gate.decide(call(at_ny(12), NY_NUMBER), record=True, door="cli")),
        outcome(await gate.decide(call(at_ny(12), LA_NUMBER), record=True, door="cli")),
    ]


FRESHNESS = [
    # (age of the National DNC copy in days, expected outcome)
    pytest.param(30, ("ALLOW", "allowed", None), id="30-days"),
    pytest.param(40, ("DEFER", "stale_list:national_dnc", 3600.0), id="40-days"),
]


@pytest.mark.parametrize(("age_days", "expected"), FRESHNESS)
async def test_national_dnc_copy_must_be_at_most_31_days_old(
    gate: Gate, age_days: int, expected: tuple[str, str, float | None]
) -> None:
    """64.1200(c)(2): scrub against a copy at most 31 days old, else DEFER."""
    await import_list(gate, "national_dnc", [], at_ny(10) - timedelta(days=age_days))
    assert expected == outcome(await gate.decide(call(at_ny(10)), record=True, door="cli"))


async def test_never_imported_national_dnc_defers(open_gate: Callable[[Config], Gate]) -> None:
    """Without any National DNC import, no US call goes out."""
    gate = open_gate(pack_config(["us"], "US"))
    expected = ("DEFER", "stale_list:national_dnc", 3600.0)
    assert expected == outcome(await gate.decide(call(at_ny(10)), record=True, door="cli"))


async def test_company_dnc_is_per_tenant(gate: Gate) -> None:
    """The company DNC of tenant default blocks its calls, not another tenant's."""
    await admin(gate).add("company_dnc", [NY_NUMBER], TENANT, "")
    other = Attempt(NY_NUMBER, now=at_ny(10), caller_id=CALLER_ID, tenant="globex")
    assert [("BLOCK", "listed:company_dnc", None), ("ALLOW", "allowed", None)] == [
        outcome(await gate.decide(call(at_ny(10)), record=True, door="cli")),
        outcome(await gate.decide(other, record=True, door="cli")),
    ]


STATE_CAPS = [
    pytest.param(FL_NUMBER, "cap:us-fl-3-per-24h", id="florida"),
    pytest.param(OK_NUMBER, "cap:us-ok-3-per-24h", id="oklahoma"),
    pytest.param(MD_NUMBER, "cap:us-md-3-per-24h", id="maryland"),
]


@pytest.mark.parametrize(("dialled", "reason"), STATE_CAPS)
async def test_fourth_state_call_in_24_hours_is_deferred(
    gate: Gate, dialled: str, reason: str
) -> None:
    """FL/OK/MD: at most 3 calls per 24 h; the 4th waits until the 1st is 24 h old."""
    first = datetime(2026, 12, 1, 10, 0, tzinfo=NEW_YORK)
    times = [first, first + timedelta(hours=2), first + timedelta(hours=4)]
    fourth_at = first + timedelta(hours=6)
    allowed = [
        outcome(await gate.decide(call(at, dialled), record=True, door="cli")) for at in times
    ]
    fourth = await gate.decide(call(fourth_at, dialled), record=True, door="cli")
    assert [("ALLOW", "allowed", None)] * 3 == allowed
    assert ("DEFER", reason, 18 * 3600.0) == outcome(fourth)


async def test_other_states_have_no_cap(gate: Gate) -> None:
    """A New York number may be called a 4th time within 24 h (no state rule cited)."""
    first = datetime(2026, 12, 1, 10, 0, tzinfo=NEW_YORK)
    verdicts = [
        outcome(
            await gate.decide(call(first + timedelta(hours=h), NY_NUMBER), record=True, door="cli")
        )
        for h in range(4)
    ]
    assert [("ALLOW", "allowed", None)] * 4 == verdicts


async def test_emergency_number_is_refused_to_campaigns(gate: Gate) -> None:
    """No autodialed call to 911 (64.1200(a)(1)); an agent's 911 call is never held."""
    campaign = await gate.decide(Attempt("911", now=at_ny(10)), record=True, door="cli")
    manual = await gate.decide(
        Attempt("911", now=at_ny(23), traffic_class=TrafficClass.MANUAL), record=True, door="cli"
    )
    assert [("BLOCK", "emergency", None), ("ALLOW", "emergency", None)] == [
        outcome(campaign),
        outcome(manual),
    ]


@pytest.mark.parametrize("region", ["PR", "VI", "GU", "MP", "AS"])
async def test_a_territorys_988_is_an_emergency_line(
    open_gate: Callable[[Config], Gate], region: str
) -> None:
    """988 (the crisis line, 47 CFR 52.200) in the territories the pack governs: an agent's
    call is never held, a campaign's refused as an emergency line (64.1200(a)(1)). Once a
    plain short code there (phonenumbers does not flag it)."""
    gate = open_gate(pack_config(["us"], region))
    manual = Attempt("988", now=at_ny(23), traffic_class=TrafficClass.MANUAL)
    decisions = [
        await gate.decide(Attempt("988", now=at_ny(10)), record=True, door="cli"),
        await gate.decide(manual, record=True, door="cli"),
    ]
    assert [("BLOCK", "emergency", None), ("ALLOW", "emergency", None)] == [
        outcome(d) for d in decisions
    ]


async def test_a_campaign_abandoning_over_3_percent_in_30_days_is_held_back(gate: Gate) -> None:
    """47 CFR 64.1200(a)(7): at most 3 % of the live-answered calls of a campaign abandoned
    over 30 days. 4 abandoned of 100 live calls: the campaign DEFERs (still 29 days later),
    until the minute of those calls has left the 30 days; an agent's call goes on."""
    lists = admin(gate)
    t0 = TUESDAY.replace(hour=10)
    for i in range(100):
        event = "abandoned" if i < 4 else "answered"
        await lists.record_event(event, f"+1212555{i:04d}", TENANT, t0, t0, "spring")
    rule = "abandon_rate:us-tcpa-abandoned-3pct"

    async def decide(at: datetime, traffic_class: TrafficClass = TrafficClass.CAMPAIGN) -> str:
        attempt = Attempt(
            NY_NUMBER, now=at, caller_id=CALLER_ID, campaign="spring", traffic_class=traffic_class
        )
        return outcome(await gate.decide(attempt, record=False, door="cli"))[1]

    await import_list(gate, "national_dnc", [], t0 + timedelta(days=29))
    assert [rule, rule, "allowed", "allowed"] == [
        await decide(t0 + timedelta(hours=1)),
        await decide(t0 + timedelta(days=29)),
        await decide(t0 + timedelta(hours=1), TrafficClass.MANUAL),
        await decide(t0 + timedelta(days=30, minutes=1)),
    ]


RULE = "caller_id:us-telemarketing-cli"
ALLOWED = ("ALLOW", "allowed", None, "")
CALLER_IDS = [
    # (caller ID presented, traffic class, expected (verdict, reason, retry, deciding rule))
    pytest.param(CALLER_ID, CAMPAIGN, ALLOWED, id="valid"),
    pytest.param("212-555-0100", MANUAL, ALLOWED, id="valid-national"),
    pytest.param("", CAMPAIGN, ("BLOCK", "caller_id:masked", None, RULE), id="masked"),
    pytest.param(
        "anonymous", MANUAL, ("BLOCK", "caller_id:masked", None, RULE), id="manual-anonymous"
    ),
    pytest.param("+1212555", CAMPAIGN, ("BLOCK", "caller_id:invalid", None, RULE), id="short"),
    # Exchange 123 does not exist (an exchange never starts with 1): not dialable.
    pytest.param(
        "+12121234567", CAMPAIGN, ("BLOCK", "caller_id:invalid", None, RULE), id="invalid"
    ),
    pytest.param(
        "+12121234567", MANUAL, ("BLOCK", "caller_id:invalid", None, RULE), id="manual-invalid"
    ),
]


@pytest.mark.parametrize(("caller_id", "traffic_class", "expected"), CALLER_IDS)
async def test_telemarketing_call_transmits_a_valid_caller_id(
    gate: Gate, caller_id: str, traffic_class: TrafficClass, expected: tuple[str, str, None, str]
) -> None:
    """47 CFR 64.1601(e)(1), 16 CFR 310.4(a)(8): caller ID transmitted (never masked), a
    number that can be called back; by a dialer or an agent alike. (The pack had no
    caller-ID rule: a masked or made-up caller ID was ALLOWed.)"""
    attempt = Attempt(NY_NUMBER, now=at_ny(10), caller_id=caller_id, traffic_class=traffic_class)
    decision = await gate.decide(attempt, record=True, door="cli")
    assert expected == (*outcome(decision), decision.rule)
