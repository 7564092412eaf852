"""The US pack's state rules (config/packs/us.toml): holiday bans (UT, RI, PA, AL, LA) over
the whole of 2027, dated scenarios against a REAL Redis (a day before, the day and the
day after a holiday), Sunday bans, windows narrower than 08:00-21:00 (CT, TX, MA, NM, MI,
MS in a fixed zone), a US DST weekend, ``--explain`` rows, and every state rule's area
codes checked against phonenumbers' geocoding data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from phonenumbers.geodata import GEOCODE_DATA

from gate.config.loader import Config
from gate.core.engine import CheckKind, Plan, plan
from gate.core.keys import Keyspace
from gate.core.model import Attempt
from gate.service import Gate
from tests.packs.conftest import import_list, outcome, pack_config, pack_rules

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
DENVER = ZoneInfo("America/Denver")
CALLER_ID = "+12125550100"
ALLOW = ("ALLOW", "allowed", None)

UTAH = ("+18015550123", DENVER)
RHODE_ISLAND = ("+14015550123", NEW_YORK)
PENNSYLVANIA = ("+12155550123", NEW_YORK)
ALABAMA = ("+12055550123", CHICAGO)
LOUISIANA = ("+15045550123", CHICAGO)
MISSISSIPPI = ("+16015550123", CHICAGO)
CONNECTICUT = ("+18605550123", NEW_YORK)
TEXAS = ("+15125550123", CHICAGO)
MASSACHUSETTS = ("+16175550123", NEW_YORK)
NEW_MEXICO = ("+15055550123", DENVER)
MICHIGAN = ("+13135550123", NEW_YORK)
NEW_YORK_NUMBER = ("+12125550123", NEW_YORK)

# The state each rule with area codes governs (phonenumbers' geocoding names).
RULE_STATES = {
    "us-fl-hours": "Florida",
    "us-fl-3-per-24h": "Florida",
    "us-ok-hours": "Oklahoma",
    "us-ok-3-per-24h": "Oklahoma",
    "us-md-hours": "Maryland",
    "us-md-3-per-24h": "Maryland",
    "us-ut-hours": "Utah",
    "us-ri-hours": "Rhode Island",
    "us-pa-holidays": "Pennsylvania",
    "us-al-hours": "Alabama",
    "us-la-hours": "Louisiana",
    "us-ms-hours": "Mississippi",
    "us-ms-hours-cst": "Mississippi",
    "us-ct-hours": "Connecticut",
    "us-tx-hours": "Texas",
    "us-ma-hours": "Massachusetts",
    "us-nm-hours": "New Mexico",
    "us-mi-hours": "Michigan",
}
_ABBREVIATIONS = {
    "FL": "Florida",
    "OK": "Oklahoma",
    "MD": "Maryland",
    "UT": "Utah",
    "RI": "Rhode Island",
    "PA": "Pennsylvania",
    "AL": "Alabama",
    "LA": "Louisiana",
    "MS": "Mississippi",
    "CT": "Connecticut",
    "TX": "Texas",
    "MA": "Massachusetts",
    "NM": "New Mexico",
    "MI": "Michigan",
}


def geocoded_area_codes() -> dict[str, set[str]]:
    """Per state, the area codes phonenumbers' geocoding data places in it (as +1NXX)."""
    found: dict[str, set[str]] = defaultdict(set)
    for prefix, names in GEOCODE_DATA.items():
        if len(prefix) >= 4 and prefix[0] == "1":
            name = names.get("en", "").rsplit(", ", 1)[-1]
            found[_ABBREVIATIONS.get(name, name)].add("+" + prefix[:4])
    return found


def test_every_state_rule_has_exactly_the_states_area_codes() -> None:
    """Each state rule lists every area code of its state and no other (NANPA, as recorded
    by phonenumbers' geocoding data): an overlay code missing from a pack fails here."""
    (pack,) = pack_config(["us"], "US").policy.packs
    geocoded = geocoded_area_codes()
    mismatched = {
        rule.id: sorted(set(rule.prefixes) ^ geocoded[RULE_STATES[rule.id]])
        for rule in pack_rules(pack)
        if rule.prefixes
    }
    assert ({}, set(RULE_STATES)) == (
        {rule: codes for rule, codes in mismatched.items() if codes},
        set(mismatched),
    )


def test_state_rules_cite_sources_and_are_marked_verify() -> None:
    """Every state rule and calendar is marked verify and says [verify] in its source."""
    (pack,) = pack_config(["us"], "US").policy.packs
    state_rules = [*(r for r in pack_rules(pack) if r.prefixes), *pack.calendars]
    assert [] == [r.id for r in state_rules if not (r.verify and "[verify]" in r.source)]


# ---- holiday bans over the whole of 2027 (pure: the W check of each day's plan) ---------

UT_2027 = [
    "01-01", "01-18", "02-15",
    "03-26",  # Good Friday: 63G-1-301 as amended 2026 (pack calendar)
    "05-31",
    "06-18", "06-19",  # Juneteenth: the package's observed Friday and the day itself
    "06-21",  # Juneteenth: the Monday after, 63G-1-301(2)(d) as amended 2025 (pack calendar)
    "07-05",  # Independence Day, a Sunday: the Monday
    "07-23", "07-24",  # Pioneer Day, a Saturday: the Friday (and the package's Saturday)
    "09-06", "10-11", "11-11", "11-25",
    "12-24", "12-25",  # Christmas, a Saturday: the Friday (and the package's Saturday)
    "12-31",  # New Year's Day 2028, a Saturday: the Friday
]  # fmt: skip
RI_2027 = [
    "01-01", "01-18", "02-15", "05-31", "06-18", "06-19", "07-05",
    "08-09",  # Victory Day (R.I. Gen. Laws 25-1-1)
    "09-06", "10-11", "11-11", "11-25", "12-24", "12-25", "12-31",
]  # fmt: skip
PA_2027 = [
    "01-01", "01-18", "02-15", "05-31",
    "06-14",  # Flag Day (pack calendar)
    "06-18", "06-19",
    "07-04",  # a Sunday: Pennsylvania has no Sunday ban, the holiday closes it
    "07-05", "09-06", "10-11", "11-11", "11-25",
    "11-26",  # day after Thanksgiving (the package's US-PA calendar)
    "12-24", "12-25", "12-31",
]  # fmt: skip
AL_2027 = [
    "01-01", "01-18", "02-15",
    "04-26",  # Confederate Memorial Day (Ala. Code 1-3-8)
    "05-31",
    "06-07",  # Jefferson Davis' birthday (Ala. Code 1-3-8)
    "06-18", "06-19", "07-05", "09-06", "10-11", "11-11", "11-25", "12-24", "12-25", "12-31",
]  # fmt: skip
LA_2027 = [
    "01-01", "01-18",
    "02-09",  # Mardi Gras
    "02-15",
    "03-26",  # Good Friday
    "05-31", "06-18", "06-19", "07-05", "09-06", "11-11", "11-25", "12-24", "12-25", "12-31",
]  # fmt: skip

HOLIDAY_STATES = [
    # (number, the days of 2027 its holiday ban closes, whether Sundays are closed anyway)
    pytest.param(UTAH, UT_2027, True, id="utah"),
    pytest.param(RHODE_ISLAND, RI_2027, True, id="rhode-island"),
    pytest.param(PENNSYLVANIA, PA_2027, False, id="pennsylvania"),
    pytest.param(ALABAMA, AL_2027, True, id="alabama"),
    pytest.param(LOUISIANA, LA_2027, True, id="louisiana"),
]


US_POLICY = pack_config(["us"], "US").policy
KEYSPACE = Keyspace("t", None)


def closed_at_eleven(dialled: str, tz: ZoneInfo, day: date) -> bool:
    """Whether the plan of a call at 11:00 local on ``day`` waits for the calling window."""
    when = datetime(day.year, day.month, day.day, 11, 0, tzinfo=tz)
    pending = plan(Attempt(dialled, now=when), US_POLICY, KEYSPACE, False)
    assert isinstance(pending, Plan)
    (window,) = [c for c in pending.check.checks if c.kind is CheckKind.WINDOW]
    return window.params[0] > 0


@pytest.mark.parametrize(("where", "expected", "sundays_closed"), HOLIDAY_STATES)
def test_holiday_ban_closes_exactly_these_days_of_2027(
    where: tuple[str, ZoneInfo], expected: list[str], sundays_closed: bool
) -> None:
    """Every day of 2027 at 11:00 local: closed on the state's legal holidays (and Sundays
    where banned), open the day before and the day after each."""
    days = [date(2027, 1, 1) + timedelta(days=n) for n in range(365)]
    closed = [day for day in days if closed_at_eleven(where[0], where[1], day)]
    holidays_closed = [
        day.strftime("%m-%d") for day in closed if not (sundays_closed and day.weekday() == 6)
    ]
    sundays = [day for day in days if day.weekday() == 6]
    assert (expected, sundays_closed) == (
        holidays_closed,
        all(day in closed for day in sundays),
    )


def test_new_york_has_no_holiday_ban() -> None:
    """A state without a ban: every day of 2027 is open at 11:00 (the federal rule only)."""
    days = [date(2027, 1, 1) + timedelta(days=n) for n in range(365)]
    closed = [d for d in days if closed_at_eleven(*NEW_YORK_NUMBER, d)]
    assert [] == closed


# ---- dated scenarios against Redis ------------------------------------------------------


@pytest.fixture
def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """A Gate with the shipped us pack."""
    return open_gate(pack_config(["us"], "US"))


async def decide(gate: Gate, when: datetime, dialled: str) -> tuple[str, str, float | None]:
    """The outcome of a call at ``when``, the National DNC copy scrubbed the day before."""
    await import_list(gate, "national_dnc", [], when - timedelta(days=1))
    attempt = Attempt(dialled, now=when, caller_id=CALLER_ID)
    return outcome(await gate.decide(attempt, record=False, door="cli"))


def local(day: date, tz: ZoneInfo, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)


def deferred(reason: str, when: datetime, until: datetime) -> tuple[str, str, float]:
    """DEFER until ``until``, in real seconds (not wall-clock: DST-safe)."""
    return ("DEFER", reason, until.timestamp() - when.timestamp())


HOLIDAY_SCENARIOS = [
    # (number, rule, day before, holiday, day after, first opening after the holiday)
    pytest.param(
        UTAH,
        "us-ut-hours",
        date(2027, 3, 25),
        date(2027, 3, 26),
        date(2027, 3, 27),
        local(date(2027, 3, 27), DENVER, 8),
        id="utah-good-friday",
    ),
    pytest.param(
        UTAH,
        "us-ut-hours",
        date(2027, 7, 22),
        date(2027, 7, 23),
        date(2027, 7, 26),
        local(date(2027, 7, 26), DENVER, 8),
        id="utah-pioneer-day-observed",
    ),
    pytest.param(
        RHODE_ISLAND,
        "us-ri-hours",
        date(2027, 8, 6),
        date(2027, 8, 9),
        date(2027, 8, 10),
        local(date(2027, 8, 10), NEW_YORK, 9),
        id="rhode-island-victory-day",
    ),
    pytest.param(
        PENNSYLVANIA,
        "us-pa-holidays",
        date(2027, 6, 13),
        date(2027, 6, 14),
        date(2027, 6, 15),
        local(date(2027, 6, 15), NEW_YORK, 8),
        id="pennsylvania-flag-day",
    ),
    pytest.param(
        ALABAMA,
        "us-al-hours",
        date(2027, 4, 24),
        date(2027, 4, 26),
        date(2027, 4, 27),
        local(date(2027, 4, 27), CHICAGO, 8),
        id="alabama-confederate-memorial-day",
    ),
    pytest.param(
        LOUISIANA,
        "us-la-hours",
        date(2027, 2, 8),
        date(2027, 2, 9),
        date(2027, 2, 10),
        local(date(2027, 2, 10), CHICAGO, 8),
        id="louisiana-mardi-gras",
    ),
]


@pytest.mark.parametrize(
    ("where", "rule", "before", "holiday", "after", "opens"), HOLIDAY_SCENARIOS
)
async def test_state_holiday_scenario(
    gate: Gate,
    where: tuple[str, ZoneInfo],
    rule: str,
    before: date,
    holiday: date,
    after: date,
    opens: datetime,
) -> None:
    """11:00 local: open the day before, DEFER on the holiday until the next opening, open
    the day after."""
    dialled, tz = where
    on_the_day = local(holiday, tz, 11)
    assert [ALLOW, deferred(f"outside_hours:{rule}", on_the_day, opens), ALLOW] == [
        await decide(gate, local(before, tz, 11), dialled),
        await decide(gate, on_the_day, dialled),
        await decide(gate, local(after, tz, 11), dialled),
    ]


WINDOWS = [
    # (number, local time, expected)
    pytest.param(*UTAH, datetime(2027, 5, 2, 11), "us-ut-hours", 24 - 3, id="utah-sunday"),
    pytest.param(*ALABAMA, datetime(2027, 5, 2, 11), "us-al-hours", 21, id="alabama-sunday"),
    pytest.param(*ALABAMA, datetime(2027, 5, 3, 20, 30), "us-al-hours", 11.5, id="alabama-20:30"),
    pytest.param(*LOUISIANA, datetime(2027, 5, 2, 11), "us-la-hours", 21, id="louisiana-sunday"),
    pytest.param(
        *MISSISSIPPI, datetime(2027, 5, 2, 11), "us-ms-hours", 22, id="mississippi-sunday"
    ),
    pytest.param(
        *RHODE_ISLAND, datetime(2027, 5, 3, 18), "us-ri-hours", 15, id="rhode-island-18:00"
    ),
    pytest.param(
        *RHODE_ISLAND, datetime(2027, 5, 1, 9, 30), "us-ri-hours", 0.5, id="rhode-island-saturday"
    ),
    pytest.param(
        *RHODE_ISLAND, datetime(2027, 5, 1, 17), "us-ri-hours", 40, id="rhode-island-sat-17:00"
    ),
    pytest.param(
        *CONNECTICUT, datetime(2027, 5, 3, 8, 30), "us-ct-hours", 0.5, id="connecticut-08:30"
    ),
    pytest.param(*CONNECTICUT, datetime(2027, 5, 3, 20), "us-ct-hours", 13, id="connecticut-20:00"),
    pytest.param(*TEXAS, datetime(2027, 5, 3, 8, 30), "us-tx-hours", 0.5, id="texas-08:30"),
    pytest.param(*TEXAS, datetime(2027, 5, 2, 11), "us-tx-hours", 1, id="texas-sunday-11:00"),
    pytest.param(
        *MASSACHUSETTS, datetime(2027, 5, 3, 20), "us-ma-hours", 12, id="massachusetts-20:00"
    ),
    pytest.param(
        *NEW_MEXICO, datetime(2027, 5, 3, 8, 30), "us-nm-hours", 0.5, id="new-mexico-08:30"
    ),
    pytest.param(*MICHIGAN, datetime(2027, 5, 3, 8, 30), "us-mi-hours", 0.5, id="michigan-08:30"),
    # Mississippi in daylight saving time: 08:30 CDT is 07:30 CST, 20:30 CDT past 20:00.
    pytest.param(
        *MISSISSIPPI,
        datetime(2027, 7, 6, 8, 30),
        "us-ms-hours-cst",
        0.5,
        id="mississippi-summer-08:30-cdt",
    ),
    pytest.param(
        *MISSISSIPPI,
        datetime(2027, 7, 6, 20, 30),
        "us-ms-hours",
        12.5,
        id="mississippi-summer-20:30-cdt-until-09:00",
    ),
]


@pytest.mark.parametrize(("dialled", "tz", "wall", "rule", "wait_h"), WINDOWS)
async def test_state_window(
    gate: Gate, dialled: str, tz: ZoneInfo, wall: datetime, rule: str, wait_h: float
) -> None:
    """A state's narrower window or Sunday ban defers until its next opening."""
    assert ("DEFER", f"outside_hours:{rule}", wait_h * 3600) == await decide(
        gate, wall.replace(tzinfo=tz), dialled
    )


OPEN = [
    pytest.param(*MISSISSIPPI, datetime(2027, 1, 5, 8, 30), id="mississippi-winter-08:30-cst"),
    pytest.param(*MISSISSIPPI, datetime(2027, 7, 6, 9, 0), id="mississippi-summer-09:00-cdt"),
    pytest.param(*RHODE_ISLAND, datetime(2027, 5, 1, 10), id="rhode-island-saturday-10:00"),
    pytest.param(*TEXAS, datetime(2027, 5, 2, 12), id="texas-sunday-noon"),
    pytest.param(*PENNSYLVANIA, datetime(2027, 5, 2, 8), id="pennsylvania-sunday"),
    pytest.param(*CONNECTICUT, datetime(2027, 5, 3, 19, 59), id="connecticut-19:59"),
]


@pytest.mark.parametrize(("dialled", "tz", "wall"), OPEN)
async def test_state_window_open(gate: Gate, dialled: str, tz: ZoneInfo, wall: datetime) -> None:
    """Inside every window in force: ALLOW."""
    assert ALLOW == await decide(gate, wall.replace(tzinfo=tz), dialled)


DST = [
    # (number, call time, next opening): the wait spans the clock change
    pytest.param(
        *NEW_YORK_NUMBER,
        datetime(2027, 3, 13, 21),
        datetime(2027, 3, 14, 8),
        "us-tcpa-hours",
        10,  # 21:00 EST to 08:00 EDT: the night is an hour shorter
        id="new-york-spring-forward",
    ),
    pytest.param(
        *NEW_YORK_NUMBER,
        datetime(2027, 11, 6, 21),
        datetime(2027, 11, 7, 8),
        "us-tcpa-hours",
        12,  # 21:00 EDT to 08:00 EST: an hour longer
        id="new-york-fall-back",
    ),
    pytest.param(
        *UTAH,
        datetime(2027, 3, 13, 21),
        datetime(2027, 3, 15, 8),
        "us-tcpa-hours",
        34,  # Saturday 21:00 MST, no Sunday calls, Monday 08:00 MDT
        id="utah-spring-forward-over-sunday",
    ),
]


@pytest.mark.parametrize(("dialled", "tz", "wall", "opens", "rule", "wait_h"), DST)
async def test_us_dst_weekend(
    gate: Gate,
    dialled: str,
    tz: ZoneInfo,
    wall: datetime,
    opens: datetime,
    rule: str,
    wait_h: int,
) -> None:
    """The wait to the next opening counts the hour the clocks gain or lose."""
    when, until = wall.replace(tzinfo=tz), opens.replace(tzinfo=tz)
    assert (deferred(f"outside_hours:{rule}", when, until), wait_h * 3600.0) == (
        await decide(gate, when, dialled),
        until.timestamp() - when.timestamp(),
    )


EXPLAIN = [
    # (number, holiday, rule row, what the detail says closes the day)
    pytest.param(
        *UTAH,
        date(2027, 3, 26),
        "us-ut-hours",
        "us-ut-legal-holidays (Utah Code 63G-1-301(1)(b), (2)(c)-(d) as amended 2025 and 2026"
        " (Good Friday; Juneteenth on a Monday) [verify])",
        id="utah-pack-calendar",
    ),
    pytest.param(
        *RHODE_ISLAND,
        date(2027, 8, 9),
        "us-ri-hours",
        "US-RI (R.I. Gen. Laws 5-61-3.6",
        id="rhode-island-package-calendar",
    ),
]


@pytest.mark.parametrize(("dialled", "tz", "holiday", "rule", "names"), EXPLAIN)
async def test_explain_row_names_the_state_rule_its_source_and_the_holiday(
    gate: Gate, dialled: str, tz: ZoneInfo, holiday: date, rule: str, names: str
) -> None:
    """--explain: the hours row is the state's, with its source and the closing calendar."""
    when = local(holiday, tz, 11)
    await import_list(gate, "national_dnc", [], when - timedelta(days=1))
    evaluation = await gate.evaluate(
        Attempt(dialled, now=when, caller_id=CALLER_ID), record=False, door="cli"
    )
    (row,) = [r for r in evaluation.rules if r.rule.startswith("hours:")]
    (pack,) = pack_config(["us"], "US").policy.packs
    (state_rule,) = [h for h in pack.hours if h.id == rule]
    assert (f"hours:{rule}", "DEFER", state_rule.source, True) == (
        row.rule,
        row.outcome,
        row.source,
        f"; {holiday} is a holiday: {names}" in row.detail,
    )
