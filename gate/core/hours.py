"""Calling windows in the callee's local time: open or not, and when it next opens.

Pure functions of (rules, time zones, instant). Guarantees:
- Windows are half-open for the call's start: 10:00-13:00 admits 12:59:59, not 13:00.
- A day on any of the rule's holiday calendars (the ``holidays`` package) has no window.
- With several zones (a number spanning zones) or several rules (federal and state hours),
  a call is open only when every (rule, zone) pair is open; ``next_open`` returns the
  earliest instant at which all are, searching at most ``HORIZON_DAYS`` ahead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from gate.core.rules import HoursRule

__all__ = ["HORIZON_DAYS", "is_holiday", "is_open", "local_day", "next_open", "zone"]

HORIZON_DAYS = 21
_MAX_ROUNDS = 64


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=1024)
def _calendar(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    days = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return frozenset(days.keys())


def local_day(zones: Sequence[str], instant: datetime) -> date:
    """The callee's local date at ``instant`` (first zone of the number; UTC if none).

    Rules' ``valid_from``/``valid_to`` are judged on this day."""
    return instant.astimezone(zone(zones[0])).date() if zones else instant.date()


def is_holiday(rule: HoursRule, day: date) -> bool:
    return any(day in _calendar(country, subdiv, day.year) for country, subdiv in rule.holidays)


def _windows(rule: HoursRule, day: date) -> tuple[tuple[int, int], ...]:
    return () if is_holiday(rule, day) else rule.windows[day.weekday()]


def is_open(rule: HoursRule, tz: ZoneInfo, instant: datetime) -> bool:
    local = instant.astimezone(tz)
    minute = local.hour * 60 + local.minute + local.second / 60
    return any(start <= minute < end for start, end in _windows(rule, local.date()))


def _next_open_one(rule: HoursRule, tz: ZoneInfo, instant: datetime) -> datetime | None:
    """The first instant >= ``instant`` at which ``rule`` is open in ``tz``."""
    if is_open(rule, tz, instant):
        return instant
    local = instant.astimezone(tz)
    for offset in range(HORIZON_DAYS + 1):
        day = local.date() + timedelta(days=offset)
        for start, _end in _windows(rule, day):
            opening = datetime.combine(day, time(start // 60, start % 60), tzinfo=tz)
            if opening > instant:
                return opening
    return None


def next_open(
    rules: Sequence[HoursRule], zones: Sequence[str], instant: datetime
) -> tuple[datetime | None, HoursRule | None]:
    """When all ``rules`` are open in all ``zones`` (None: not within the horizon), and the
    first rule that is closed at ``instant`` (None: open now)."""
    pairs = [(rule, zone(name)) for rule in rules for name in zones]
    first_closed = next((rule for rule, tz in pairs if not is_open(rule, tz, instant)), None)
    if first_closed is None:
        return instant, None
    candidate = instant
    for _ in range(_MAX_ROUNDS):
        moved = False
        for rule, tz in pairs:
            opening = _next_open_one(rule, tz, candidate)
            if opening is None:
                return None, first_closed
            if opening > candidate:
                candidate, moved = opening, True
        if not moved:
            return candidate, first_closed
    return None, first_closed
