"""Calling windows across daylight saving changes (gate/core/hours.py): a skipped wall time
is never an opening, a repeated one opens twice; instants are judged where they are. The
end of a period of calendar days: 00:00 local after its last day, in the callee's zones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from gate.core.hours import end_of_calendar_days, is_open, next_open, zone
from gate.core.rules import HoursRule

NEW_YORK, PARIS = "America/New_York", "Europe/Paris"


def every_day(start: str, end: str) -> HoursRule:
    """An hours rule open ``start``-``end`` (HH:MM, local) every day, no holidays."""
    minutes = [int(t[:2]) * 60 + int(t[3:]) for t in (start, end)]
    return HoursRule(id="t", windows=tuple(((minutes[0], minutes[1]),) for _ in range(7)))


def local(
    name: str, year: int, month: int, day: int, hour: int, minute: int, fold: int = 0
) -> datetime:
    """A wall time in zone ``name`` (``fold`` 1: the second pass of a repeated hour)."""
    return datetime(year, month, day, hour, minute, tzinfo=zone(name), fold=fold)


OPENINGS = [
    # (zone, window, asked at (local), expected opening (UTC))
    pytest.param(
        NEW_YORK,
        ("02:30", "03:30"),
        local(NEW_YORK, 2026, 3, 8, 1, 30),  # EST; 02:00-03:00 is skipped
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 03:00 EDT
        id="new-york-window-starting-in-the-gap-opens-when-it-ends",
    ),
    pytest.param(
        PARIS,
        ("02:15", "04:00"),
        local(PARIS, 2026, 3, 29, 1, 30),  # CET; 02:00-03:00 is skipped
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST
        id="paris-window-starting-in-the-gap-opens-when-it-ends",
    ),
    pytest.param(
        NEW_YORK,
        ("02:10", "02:40"),
        local(NEW_YORK, 2026, 3, 8, 1, 30),
        datetime(2026, 3, 9, 6, 10, tzinfo=UTC),  # 02:10 EDT the next day
        id="window-wholly-in-the-gap-opens-the-next-day",
    ),
    pytest.param(
        NEW_YORK,
        ("01:30", "01:40"),
        local(NEW_YORK, 2026, 11, 1, 0, 30),  # EDT; 01:00-02:00 happens twice
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT
        id="new-york-repeated-hour-opens-at-its-first-pass",
    ),
    pytest.param(
        NEW_YORK,
        ("01:30", "01:40"),
        local(NEW_YORK, 2026, 11, 1, 1, 50),  # EDT, first pass
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST, second pass
        id="new-york-repeated-hour-opens-again-at-its-second-pass",
    ),
    pytest.param(
        NEW_YORK,
        ("01:30", "01:40"),
        local(NEW_YORK, 2026, 11, 1, 1, 10, fold=1),  # EST, second pass
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST, not 01:30 EDT an hour ago
        id="new-york-second-pass-never-opens-in-the-past",
    ),
    pytest.param(
        PARIS,
        ("02:30", "02:45"),
        local(PARIS, 2026, 10, 25, 2, 50),  # CEST, first pass; 02:00-03:00 happens twice
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # 02:30 CET, second pass
        id="paris-repeated-hour-opens-again-at-its-second-pass",
    ),
]


@pytest.mark.parametrize(("name", "window", "at", "expected"), OPENINGS)
def test_next_open_is_a_real_instant_inside_the_window(
    name: str, window: tuple[str, str], at: datetime, expected: datetime
) -> None:
    """``next_open`` returns the first instant whose wall time is inside the window, and
    ``is_open`` agrees whether that instant is given in UTC or in the zone."""
    rule = every_day(*window)
    opening, closed = next_open([rule], [name], at)
    assert opening is not None
    assert (expected, rule) == (opening.astimezone(UTC), closed)
    assert (True, True) == (
        is_open(rule, zone(name), opening),
        is_open(rule, zone(name), opening.astimezone(zone(name))),
    )


@pytest.mark.parametrize(
    ("name", "skipped"),
    [(NEW_YORK, local(NEW_YORK, 2026, 3, 8, 2, 30)), (PARIS, local(PARIS, 2026, 3, 29, 2, 30))],
)
def test_a_skipped_wall_time_is_judged_at_the_instant_it_names(
    name: str, skipped: datetime
) -> None:
    """02:30 on a spring-forward day does not exist: an aware datetime holding it names
    03:30 summer time, and is judged there (outside 02:15-03:15), as in UTC."""
    rule = every_day("02:15", "03:15")
    assert (False, False) == (
        is_open(rule, zone(name), skipped),
        is_open(rule, zone(name), skipped.astimezone(UTC)),
    )


CALENDAR_ENDS = [
    # (the callee's zones, the event (local), the expected end of 60 calendar days (UTC))
    pytest.param(
        [PARIS],
        local(PARIS, 2027, 1, 14, 15, 0),  # Thursday 14 January, 15:00 CET
        datetime(2027, 3, 15, 23, 0, tzinfo=UTC),  # 00:00 CET on 16 March, day 61
        id="paris-midnight-after-day-60-not-1440-hours",
    ),
    pytest.param(
        [PARIS],
        local(PARIS, 2027, 2, 4, 15, 0),  # CET; summer time from 28 March
        datetime(2027, 4, 5, 22, 0, tzinfo=UTC),  # 00:00 CEST on 6 April
        id="paris-across-spring-forward-midnight-summer-time",
    ),
    pytest.param(
        ["Indian/Reunion"],
        local(PARIS, 2027, 1, 14, 22, 30),  # already Friday 15 January, 01:30, in Réunion
        datetime(2027, 3, 16, 20, 0, tzinfo=UTC),  # 00:00 Réunion (UTC+4) on 17 March
        id="reunion-counts-its-own-days",
    ),
    pytest.param(
        ["Indian/Mayotte", "Indian/Reunion"],
        local(PARIS, 2027, 1, 14, 22, 30),
        datetime(2027, 3, 16, 21, 0, tzinfo=UTC),  # 00:00 Mayotte (UTC+3): the later
        id="several-zones-the-latest-midnight",
    ),
    pytest.param(
        ["America/Santiago"],
        local("America/Santiago", 2026, 7, 7, 15, 0),  # day 61 is 6 September: 00:00 skipped
        datetime(2026, 9, 6, 4, 0, tzinfo=UTC),  # 01:00 summer time (UTC-3), the day's start
        id="a-skipped-midnight-the-first-instant-of-the-day",
    ),
]


@pytest.mark.parametrize(("zones", "event", "expected"), CALENDAR_ENDS)
def test_calendar_days_end_at_local_midnight_after_the_last(
    zones: Sequence[str], event: datetime, expected: datetime
) -> None:
    """60 calendar days after an event on local day D end at the start of local day D+61,
    daylight saving changes included; with several zones, the latest."""
    assert expected == end_of_calendar_days(zones, event, 60)


def test_calendar_days_with_no_zone_end_no_earlier_than_in_any_zone() -> None:
    """A number with no known zone: the event's instant + 61 days and an hour, later than
    the end in any zone (checked in the zones furthest apart, and in Paris across DST)."""
    event = datetime(2027, 2, 4, 23, 59, tzinfo=UTC)
    end = end_of_calendar_days((), event, 60)
    zones = ("Etc/GMT+12", "Etc/GMT-14", PARIS, "Pacific/Kiritimati", "America/New_York")
    assert event + timedelta(days=61, hours=1) == end
    assert all(end >= end_of_calendar_days((name,), event, 60) for name in zones)
