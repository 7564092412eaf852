"""Calling windows across daylight saving changes (gate/core/hours.py): a skipped wall time
is never an opening, a repeated one opens twice; instants are judged where they are."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gate.core.hours import is_open, next_open, zone
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
