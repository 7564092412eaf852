"""The France pack's holidays of the callee's place (config/packs/fr.toml) against a REAL
Redis: each overseas commemoration of the abolition of slavery of 2027 (a day before, the
day, the day after), ranges shared by several places, the opt-in Alsace-Moselle calendar,
a European DST weekend, the ``--explain`` row naming the holiday and its source, and the
holidays package checked against the texts the pack relies on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest

from gate.config.loader import Config
from gate.core.engine import Planner, plan
from gate.core.errors import ConfigError
from gate.core.keys import Keyspace
from gate.core.model import Attempt
from gate.core.rules import CalendarRule
from gate.service import Gate
from tests.packs.conftest import TENANT, admin, outcome, pack_config

PARIS = ZoneInfo("Europe/Paris")
VERIFIED_CLI = "+33162000000"  # ARCEP décision n° 2022-1583: allowed for automated calls
HOURS = "outside_hours:fr-d223-9-hours"
ALLOW = ("ALLOW", "allowed", None)

GUADELOUPE = ("+590590821234", "America/Guadeloupe")  # fixed line, Guadeloupe only
GUADELOUPE_MOBILE = ("+590690123456", "America/Guadeloupe")  # also Saint-Barth, St-Martin
SAINT_MARTIN = ("+590590771234", "America/Guadeloupe")  # fixed line, Saint-Martin only
SAINT_BARTHELEMY = ("+590590271234", "America/Guadeloupe")  # Saint-Barth (and St-Martin)
MARTINIQUE = ("+596596301234", "America/Martinique")
GUYANE = ("+594594101234", "America/Cayenne")
REUNION = ("+262262161234", "Indian/Reunion")  # fixed line, Réunion only
# Zones Réunion (UTC+4) and Mayotte (UTC+3): it opens when both do, at 10:00 in Mayotte.
REUNION_MOBILE = ("+262692123456", "Indian/Mayotte")
MAYOTTE = ("+262269601234", "Indian/Mayotte")  # fixed line, Mayotte only
MIQUELON = ("+508411234", "America/Miquelon")
PARIS_MOBILE = ("+33612345678", "Europe/Paris")


def at(day: date, where: tuple[str, str], hour: int = 10, minute: int = 30) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(where[1]))


def call(when: datetime, dialled: str, tenant: str = TENANT) -> Attempt:
    return Attempt(dialled, now=when, caller_id=VERIFIED_CLI, tenant=tenant)


@pytest.fixture
def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """The shipped fr pack; tenant "alsace" opted in to the Alsace-Moselle calendar."""
    return open_gate(
        pack_config(["fr"], "FR", tenants={"alsace": {"calendars": ["fr-alsace-moselle"]}})
    )


async def decide(
    gate: Gate, when: datetime, where: tuple[str, str], tenant: str = TENANT
) -> tuple[str, str, float | None]:
    """The outcome of a call to ``where``'s number at ``when``, the number holding consent
    (given a year before, by a clock at ``when``: it may be a future date)."""
    granted = when - timedelta(days=365)
    await admin(gate).add("consent", [where[0]], tenant, "", now=granted, clock=when)
    return outcome(await gate.decide(call(when, where[0], tenant), record=False, door="cli"))


def elapsed_s(start: datetime, end: datetime) -> float:
    """Real seconds between two instants (subtracting datetimes of one zone gives wall-clock
    time, which is off by the DST hour)."""
    return end.timestamp() - start.timestamp()


def deferred_until(when: datetime, until: datetime) -> tuple[str, str, float]:
    return ("DEFER", HOURS, elapsed_s(when, until))


LOCAL_HOLIDAYS = [
    # (place's number, holiday, the last open weekday before it, the first open day after)
    pytest.param(MAYOTTE, date(2027, 4, 27), date(2027, 4, 26), date(2027, 4, 28), id="mayotte"),
    pytest.param(
        MARTINIQUE, date(2027, 5, 22), date(2027, 5, 21), date(2027, 5, 24), id="martinique"
    ),
    pytest.param(
        GUADELOUPE, date(2027, 5, 27), date(2027, 5, 26), date(2027, 5, 28), id="guadeloupe"
    ),
    pytest.param(
        SAINT_MARTIN, date(2027, 5, 27), date(2027, 5, 26), date(2027, 5, 31), id="saint-martin"
    ),
    pytest.param(GUYANE, date(2027, 6, 10), date(2027, 6, 9), date(2027, 6, 11), id="guyane"),
    pytest.param(
        SAINT_BARTHELEMY,
        date(2027, 10, 9),
        date(2027, 10, 8),
        date(2027, 10, 11),
        id="saint-barthelemy",
    ),
    pytest.param(REUNION, date(2027, 12, 20), date(2027, 12, 17), date(2027, 12, 21), id="reunion"),
]


@pytest.mark.parametrize(("where", "holiday", "before", "after"), LOCAL_HOLIDAYS)
async def test_local_abolition_day_of_2027(
    gate: Gate, where: tuple[str, str], holiday: date, before: date, after: date
) -> None:
    """Open the weekday before, closed on the place's holiday until 10:00 on the next open
    day, open that day (loi n° 83-550; décret n° 83-1003 art. 1; Code du travail L3422-2)."""
    on_the_day = at(holiday, where)
    assert [ALLOW, deferred_until(on_the_day, at(after, where, 10, 0)), ALLOW] == [
        await decide(gate, at(before, where), where),
        await decide(gate, on_the_day, where),
        await decide(gate, at(after, where), where),
    ]


WEEKEND_HOLIDAYS_ON_A_WEEKDAY = [
    # 2027 puts these on a Saturday; 2028 puts them on a Monday, where the closure shows.
    pytest.param(MARTINIQUE, date(2028, 5, 22), date(2028, 5, 23), id="martinique-2028"),
    pytest.param(SAINT_BARTHELEMY, date(2028, 10, 9), date(2028, 10, 10), id="saint-barth-2028"),
]


@pytest.mark.parametrize(("where", "holiday", "after"), WEEKEND_HOLIDAYS_ON_A_WEEKDAY)
async def test_local_holiday_on_a_monday_closes_the_monday(
    gate: Gate, where: tuple[str, str], holiday: date, after: date
) -> None:
    """A holiday that falls on a Monday defers the Monday call to Tuesday 10:00."""
    on_the_day = at(holiday, where)
    expected = deferred_until(on_the_day, at(after, where, 10, 0))
    assert expected == await decide(gate, on_the_day, where)


ELSEWHERE = [
    # (number, another place's holiday): open, the day is not a holiday where it rings
    pytest.param(PARIS_MOBILE, date(2027, 5, 27), id="paris-on-guadeloupe-day"),
    pytest.param(MAYOTTE, date(2027, 12, 20), id="mayotte-on-reunion-day"),
    pytest.param(REUNION, date(2027, 4, 27), id="reunion-fixed-on-mayotte-day"),
    pytest.param(GUADELOUPE, date(2027, 5, 28), id="guadeloupe-fixed-on-saint-martin-day"),
    pytest.param(MARTINIQUE, date(2027, 5, 27), id="martinique-on-guadeloupe-day"),
    pytest.param(MIQUELON, date(2027, 5, 27), id="miquelon-has-no-local-day"),
]


@pytest.mark.parametrize(("where", "day"), ELSEWHERE)
async def test_another_places_holiday_is_a_working_day(
    gate: Gate, where: tuple[str, str], day: date
) -> None:
    """The calendar is the callee's place's, not every overseas place's."""
    assert ALLOW == await decide(gate, at(day, where), where)


SHARED_RANGES = [
    # (number of a range shared by several places, holiday of one of them, next open day)
    pytest.param(
        REUNION_MOBILE, date(2027, 4, 27), date(2027, 4, 28), id="reunion-mobile-mayotte-day"
    ),
    pytest.param(
        GUADELOUPE_MOBILE,
        date(2027, 5, 27),
        date(2027, 5, 31),
        id="guadeloupe-mobile-guadeloupe-and-saint-martin-days",
    ),
    pytest.param(
        GUADELOUPE_MOBILE, date(2026, 10, 9), date(2026, 10, 12), id="guadeloupe-mobile-saint-barth"
    ),
]


@pytest.mark.parametrize(("where", "holiday", "after"), SHARED_RANGES)
async def test_a_shared_range_is_closed_on_every_places_holiday(
    gate: Gate, where: tuple[str, str], holiday: date, after: date
) -> None:
    """A range several places share counts a day closed if it is a holiday in any of them."""
    on_the_day = at(holiday, where)
    assert deferred_until(on_the_day, at(after, where, 10, 0)) == await decide(
        gate, on_the_day, where
    )


async def test_explain_names_the_local_holiday_and_its_source(gate: Gate) -> None:
    """--explain: the hours row names D223-9, the place's calendar and the décret."""
    when = at(date(2027, 5, 27), GUADELOUPE)
    await admin(gate).add(
        "consent", [GUADELOUPE[0]], TENANT, "", now=when - timedelta(days=9), clock=when
    )
    evaluation = await gate.evaluate(call(when, GUADELOUPE[0]), record=False, door="cli")
    (row,) = [row for row in evaluation.rules if row.rule == "hours:fr-d223-9-hours"]
    (calendar,) = [
        c for c in pack_config(["fr"], "FR").policy.packs[0].calendars if c.places == {"GP"}
    ]
    assert (
        "DEFER",
        "Code de la consommation D223-9 (décret n° 2022-1313, in force 1 Mar 2023)",
        "local time in America/Guadeloupe; 2027-05-27 is a holiday: fr-guadeloupe-abolition"
        f" ({calendar.source}); opens in 23h30m",
    ) == (row.outcome, row.source, row.detail)
    assert "décret n° 83-1003" in calendar.source


ALSACE_MOSELLE = [
    # (tenant, day, expected outcome of a 10:30 call to a Paris mobile)
    pytest.param(TENANT, date(2027, 3, 26), ALLOW, id="good-friday-not-opted-in"),
    pytest.param("alsace", date(2027, 3, 25), ALLOW, id="thursday-before-good-friday"),
    pytest.param(
        "alsace",
        date(2027, 3, 26),
        deferred_until(
            at(date(2027, 3, 26), PARIS_MOBILE), at(date(2027, 3, 30), PARIS_MOBILE, 10, 0)
        ),
        id="good-friday-opted-in-until-tuesday",  # Monday 29 March is Easter Monday
    ),
    pytest.param(TENANT, date(2028, 12, 26), ALLOW, id="26-december-not-opted-in"),
    pytest.param(
        "alsace",
        date(2028, 12, 26),
        deferred_until(
            at(date(2028, 12, 26), PARIS_MOBILE), at(date(2028, 12, 27), PARIS_MOBILE, 10, 0)
        ),
        id="26-december-opted-in",
    ),
    pytest.param("alsace", date(2028, 12, 27), ALLOW, id="27-december-opted-in"),
]


@pytest.mark.parametrize(("tenant", "day", "expected"), ALSACE_MOSELLE)
async def test_alsace_moselle_days_only_for_tenants_that_opt_in(
    gate: Gate, tenant: str, day: date, expected: tuple[str, str, float | None]
) -> None:
    """Good Friday and 26 December (Code du travail L3134-13) close metropolitan calls only
    for a tenant that opted in: the number cannot tell Alsace-Moselle apart."""
    assert expected == await decide(gate, at(day, PARIS_MOBILE), PARIS_MOBILE, tenant)


async def test_alsace_moselle_calendar_leaves_overseas_numbers_open(gate: Gate) -> None:
    """The opted-in Alsace-Moselle calendar is scoped to metropolitan France."""
    assert ALLOW == await decide(gate, at(date(2027, 3, 26), REUNION), REUNION, "alsace")


DST = [
    # (call time in Paris, next opening): the wait spans the change of UTC offset
    pytest.param(
        datetime(2027, 3, 26, 20, 0, tzinfo=PARIS),
        datetime(2027, 3, 30, 10, 0, tzinfo=PARIS),
        85 * 3600.0,  # Friday 20:00 CET to Tuesday 10:00 CEST (Easter Monday between)
        id="spring-forward-2027-03-28",
    ),
    pytest.param(
        datetime(2027, 10, 29, 20, 0, tzinfo=PARIS),
        datetime(2027, 11, 2, 10, 0, tzinfo=PARIS),
        87 * 3600.0,  # Friday 20:00 CEST to Tuesday 10:00 CET (All Saints' Day between)
        id="fall-back-2027-10-31",
    ),
]


@pytest.mark.parametrize(("when", "opens", "wait_s"), DST)
async def test_dst_weekend_in_paris(
    gate: Gate, when: datetime, opens: datetime, wait_s: float
) -> None:
    """The wait to the next 10:00 local counts the hour the clocks gain or lose."""
    assert (("DEFER", HOURS, wait_s), wait_s) == (
        await decide(gate, when, PARIS_MOBILE),
        elapsed_s(when, opens),
    )


def test_national_calendar_is_exactly_code_du_travail_l3133_1() -> None:
    """The holidays package's "FR" calendar gives the 11 days of L3133-1 (2027)."""
    easter_monday = date(2027, 3, 29)
    expected = {
        date(2027, 1, 1),
        easter_monday,
        date(2027, 5, 1),
        date(2027, 5, 8),
        easter_monday + timedelta(days=38),  # Ascension Thursday
        easter_monday + timedelta(days=49),  # Whit Monday
        date(2027, 7, 14),
        date(2027, 8, 15),
        date(2027, 11, 1),
        date(2027, 11, 11),
        date(2027, 12, 25),
    }
    assert expected == set(holidays.country_holidays("FR", years=2027))


def test_alsace_calendar_adds_good_friday_and_26_december_only() -> None:
    """FR-6AE = the national days + Good Friday and 26 December (L3134-13), 2027."""
    alsace = set(holidays.country_holidays("FR", subdiv="6AE", years=2027))
    national = set(holidays.country_holidays("FR", years=2027))
    assert {date(2027, 3, 26), date(2027, 12, 26)} == alsace - national


PACKAGE_SUBDIVISIONS = {"GP": "971", "MQ": "972", "GF": "973", "RE": "974", "YT": "976"}


def test_package_agrees_with_the_decree_except_saint_martin() -> None:
    """Each statutory date the pack relies on is in the holidays package's calendar of the
    place, except Saint-Martin's 27 May (the package has only 28 May)."""
    (pack,) = pack_config(["fr"], "FR").policy.packs
    statutory = [c for c in pack.calendars if c.id.endswith("-abolition")]
    missing = []
    for calendar in statutory:
        (place,) = calendar.places
        subdivision = PACKAGE_SUBDIVISIONS.get(place, place)
        package = holidays.country_holidays("FR", subdiv=subdivision, years=2027)
        missing += [
            (place, month, day)
            for month, day in calendar.annual
            if date(2027, month, day) not in package
        ]
    assert (7, [("MF", 5, 27)]) == (len(statutory), missing)


def test_every_local_calendar_names_a_place_and_a_source() -> None:
    """Every fr calendar is scoped to places and cites its source; only 28 May is verify."""
    (pack,) = pack_config(["fr"], "FR").policy.packs
    calendars: tuple[CalendarRule, ...] = pack.calendars
    assert ([], ["fr-saint-martin-observed"], ["fr-alsace-moselle"]) == (
        [c.id for c in calendars if not c.places or not c.source],
        [c.id for c in calendars if c.verify],
        [c.id for c in calendars if c.optional],
    )


def test_opting_in_to_an_unknown_calendar_is_a_config_error() -> None:
    """A tenant can only opt in to an optional calendar of an enabled pack."""
    with pytest.raises(ConfigError) as caught:
        pack_config(["fr"], "FR", tenants={"acme": {"calendars": ["fr-guadeloupe-abolition"]}})
    assert (
        "test.toml: tenants.acme.calendars: 'fr-guadeloupe-abolition' is not an optional "
        "calendar of the enabled packs (fr-alsace-moselle)"
    ) == str(caught.value)


# A Guadeloupe fixed line that phonenumbers also gives Saint-Barthélemy and Saint-Martin:
# same region, type and zone as GUADELOUPE, other places (the Planner must tell them apart).
GUADELOUPE_SHARED_FIXED = "+590590331234"
OVERSEAS_NUMBERS = [
    GUADELOUPE_SHARED_FIXED,
    *(
        number
        for number, _ in (
            GUADELOUPE,
            GUADELOUPE_MOBILE,
            SAINT_MARTIN,
            SAINT_BARTHELEMY,
            MARTINIQUE,
            GUYANE,
            REUNION,
            REUNION_MOBILE,
            MAYOTTE,
            MIQUELON,
            PARIS_MOBILE,
        )
    ),
]


@pytest.mark.parametrize(
    "when",
    [
        datetime(2027, 5, 27, 15, 0, tzinfo=UTC),
        datetime(2027, 5, 28, 15, 0, tzinfo=UTC),
        datetime(2027, 4, 27, 8, 0, tzinfo=UTC),
        datetime(2027, 3, 26, 10, 0, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("tenant", [TENANT, "alsace"])
def test_planner_plans_holidays_exactly_like_plan(when: datetime, tenant: str) -> None:
    """A scrub's Planner, which reuses plans across numbers, keeps each number's places and
    the tenant's opted-in calendars: its plans equal ``plan``'s, number after number."""
    policy = pack_config(
        ["fr"], "FR", tenants={"alsace": {"calendars": ["fr-alsace-moselle"]}}
    ).policy
    keys = Keyspace("t", None)
    planner = Planner(policy, keys, False)
    for dialled in OVERSEAS_NUMBERS * 2:
        attempt = Attempt(dialled, now=when, caller_id=VERIFIED_CLI, tenant=tenant)
        assert plan(attempt, policy, keys, False) == planner.plan(attempt)
