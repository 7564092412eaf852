"""Calling windows in the callee's local time: open or not, and when it next opens.

Pure functions of (rules, time zones, instant). Guarantees:
- Windows are half-open for the call's start: 10:00-13:00 admits 12:59:59, not 13:00.
- A day on any of the rule's holiday calendars has no window: its national ``holidays``
  (the ``holidays`` package) and the pack calendars ``localised`` kept for the callee's
  places (``callee_places``) and tenant.
- With several zones (a number spanning zones) or several rules (federal and state hours),
  a call is open only when every (rule, zone) pair is open; a rule with a fixed ``zone`` is
  judged in that zone only. ``next_open`` returns the earliest instant at which all are
  open, searching at most ``HORIZON_DAYS`` ahead.
- ``end_of_calendar_days``: a period of N calendar days after an event (days D+1 .. D+N of
  the callee's local day D) ends at 00:00 local of day D+N+1, the latest over the zones.
- Instants are compared and read through UTC, so daylight saving changes hold no surprise:
  a window opening at a wall time the spring-forward gap skips opens at the first instant
  after the gap (if that is still inside the window); in the repeated autumn hour a wall
  time occurs twice, and a window opens at each occurrence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, timezone

from gate.core.model import TrafficClass
from gate.core.numbers import Destination
from gate.core.rules import CalendarRule, HoursRule

__all__ = [
    "HORIZON_DAYS",
    "Holiday",
    "callee_places",
    "end_of_calendar_days",
    "holiday_of",
    "holiday_today",
    "is_holiday",
    "is_open",
    "local_day",
    "localised",
    "next_open",
    "sharing_regions",
    "zone",
]

HORIZON_DAYS = 21
_MAX_ROUNDS = 64


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=1024)
def _calendar(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    # Imported here: the holidays package loads every country's calendar on first use
    # (about 130 ms), a cost only commands that decide should pay.
    import holidays

    days = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return frozenset(days.keys())


def local_day(zones: Sequence[str], instant: datetime) -> date:
    """The callee's local date at ``instant`` (first zone of the number; UTC if none).

    Rules' ``valid_from``/``valid_to`` are judged on this day."""
    return instant.astimezone(zone(zones[0])).date() if zones else instant.date()


def end_of_calendar_days(zones: Sequence[str], instant: datetime, days: int) -> datetime:
    """When ``days`` calendar days after ``instant`` are over in the callee's zones (UTC):
    the first instant of local day D + ``days`` + 1, D the local day of ``instant``; for a
    number with several zones, the latest such instant. A midnight that a daylight saving
    change skips gives the first instant after the gap; a repeated one, its first
    occurrence (the day begins there). With no zone known, ``instant`` + ``days`` + 1 days
    and an hour: no zone's end is later (the local day began less than a day before
    ``instant``; a daylight saving change in the period adds at most an hour)."""
    if not zones:
        return instant.astimezone(UTC) + timedelta(days=days + 1, hours=1)
    ends = []
    for name in zones:
        tz = zone(name)
        day = _wall(instant, tz).date() + timedelta(days=days + 1)
        ends.append(_instants(day, 0, tz)[0])
    return max(ends)


@functools.lru_cache(maxsize=64)
def sharing_regions(region: str) -> tuple[str, ...]:
    """The regions that share ``region``'s country calling code (itself included)."""
    return tuple(COUNTRY_CODE_TO_REGION_CODE.get(phonenumbers.country_code_for_region(region), ()))


@functools.lru_cache(maxsize=64)
def _region_zones(region: str) -> frozenset[str]:
    """The time zones phonenumbers gives the region's example fixed line (its own zone)."""
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.FIXED_LINE)
    return frozenset(timezone.time_zones_for_number(example)) if example else frozenset()


def callee_places(target: Destination, wanted: Collection[str]) -> tuple[str, ...]:
    """The regions whose calendars govern a call to ``target``, among ``wanted``.

    Its own region; the other regions of its calling code for which its number is valid (a
    range shared by several places: Guadeloupe's +590 690 mobiles serve Guadeloupe,
    Saint-Barthélemy and Saint-Martin); and, for a number with several time zones (the
    Réunion/Mayotte mobiles), the regions whose own zone is one of them. Only regions in
    ``wanted`` (those a calendar names) are looked up, so most numbers cost nothing.
    """
    others = [r for r in sharing_regions(target.region) if r != target.region and r in wanted]
    if not others:  # most numbers: a calling code of one region, or no calendar for another
        return (target.region,)
    places = {target.region}
    code = phonenumbers.country_code_for_region(target.region)
    national = int(target.e164[len(str(code)) + 1 :])
    number = phonenumbers.PhoneNumber(country_code=code, national_number=national)
    zones = frozenset(target.time_zones)
    for region in others:
        if phonenumbers.is_valid_number_for_region(number, region) or (
            len(zones) > 1 and zones & _region_zones(region)
        ):
            places.add(region)
    return tuple(sorted(places))


def localised(
    rule: HoursRule,
    places: Collection[str],
    opted_in: Collection[str],
    e164: str,
    traffic_class: TrafficClass,
) -> HoursRule:
    """``rule`` keeping only the calendars that govern this callee and tenant: those of
    one of ``places`` (or of every place), not optional or opted in, for this class and
    number prefix. Calendar validity dates are judged per holiday (``holiday_of``)."""
    keep = tuple(
        (not calendar.places or not calendar.places.isdisjoint(places))
        and (not calendar.optional or calendar.id in opted_in)
        and traffic_class in calendar.classes
        and (not calendar.prefixes or e164.startswith(calendar.prefixes))
        for calendar in rule.calendars
    )
    if all(keep):
        return rule
    # One variant per (rule, calendars kept), built once: dataclasses.replace costs more
    # than the rest of the hours check. The rule itself is kept to check identity.
    key = (id(rule), keep)
    cached = _LOCALISED.get(key)
    if cached is not None and cached[0] is rule:
        return cached[1]
    if len(_LOCALISED) >= _MAX_LOCALISED:
        _LOCALISED.clear()
    kept = tuple(c for c, k in zip(rule.calendars, keep, strict=True) if k)
    variant = dataclasses.replace(rule, calendars=kept)
    _LOCALISED[key] = (rule, variant)
    return variant


_MAX_LOCALISED = 1024
_LOCALISED: dict[tuple[int, tuple[bool, ...]], tuple[HoursRule, HoursRule]] = {}


def _on_calendar(calendar: CalendarRule, day: date) -> bool:
    if calendar.valid_from is not None and day < calendar.valid_from:
        return False
    if calendar.valid_to is not None and day > calendar.valid_to:
        return False
    return (
        (day.month, day.day) in calendar.annual
        or day in calendar.days
        or any(day in _calendar(country, subdiv, day.year) for country, subdiv in calendar.holidays)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Holiday:
    """Why a day has no window: the calendar that has it and that calendar's source."""

    day: date
    calendar: str  # "FR", "US-UT" (national calendars) or a pack calendar's id
    source: str


def holiday_of(rule: HoursRule, day: date) -> Holiday | None:
    """The first of the rule's calendars that has ``day``, or None."""
    for country, subdiv in rule.holidays:
        if day in _calendar(country, subdiv, day.year):
            name = f"{country}-{subdiv}" if subdiv else country
            return Holiday(day, name, rule.source)
    for calendar in rule.calendars:
        if _on_calendar(calendar, day):
            return Holiday(day, calendar.id, calendar.source)
    return None


def is_holiday(rule: HoursRule, day: date) -> bool:
    return holiday_of(rule, day) is not None


def holiday_today(rule: HoursRule, zones: Sequence[str], instant: datetime) -> Holiday | None:
    """The holiday that closes ``rule`` at ``instant`` in one of its zones, if any."""
    for name in (rule.zone,) if rule.zone else zones:
        found = holiday_of(rule, _wall(instant, zone(name)).date())
        if found is not None:
            return found
    return None


def _windows(rule: HoursRule, day: date) -> tuple[tuple[int, int], ...]:
    return () if is_holiday(rule, day) else rule.windows[day.weekday()]


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """``instant`` in ``tz``, read through UTC: an aware datetime already in ``tz`` may hold
    a wall time the zone skips (a spring-forward gap), which ``astimezone(tz)`` keeps as is
    (it returns its argument unchanged when the zone is the same)."""
    if instant.tzinfo is tz:
        return instant.astimezone(UTC).astimezone(tz)
    return instant.astimezone(tz)


def is_open(rule: HoursRule, tz: ZoneInfo, instant: datetime) -> bool:
    local = _wall(instant, tz)
    minute = local.hour * 60 + local.minute + local.second / 60
    return any(start <= minute < end for start, end in _windows(rule, local.date()))


def _gap_end(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) after the gap of ``tz`` that the naive ``wall`` falls in.

    Read with the offset before the change (fold 0) ``wall`` is an instant at or after
    the change; read with the offset after it (fold 1), one before it: the change lies
    between, found to the second."""
    before = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    after = int(wall.replace(tzinfo=tz, fold=0).timestamp())
    offset = datetime.fromtimestamp(after, tz).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _instants(day: date, minute: int, tz: ZoneInfo) -> tuple[datetime, ...]:
    """The instants (UTC) at which ``tz``'s wall clock first shows ``minute`` of ``day`` or
    later: one, or two in the repeated autumn hour; in a spring-forward gap, the instant
    the gap ends."""
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    first = wall.replace(tzinfo=tz).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) != wall:  # skipped: in the gap
        return (_gap_end(wall, tz),)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return (first,) if second == first else (first, second)


def _next_open_one(rule: HoursRule, tz: ZoneInfo, instant: datetime) -> datetime | None:
    """The first instant >= ``instant`` at which ``rule`` is open in ``tz`` (UTC, but
    ``instant`` itself if open)."""
    if is_open(rule, tz, instant):
        return instant
    local = _wall(instant, tz)
    for offset in range(HORIZON_DAYS + 1):
        day = local.date() + timedelta(days=offset)
        for start, _end in _windows(rule, day):
            for opening in _instants(day, start, tz):
                # Open there unless the gap swallowed the window's whole start.
                if opening > instant and is_open(rule, tz, opening):
                    return opening
    return None


def next_open(
    rules: Sequence[HoursRule], zones: Sequence[str], instant: datetime
) -> tuple[datetime | None, HoursRule | None]:
    """When all ``rules`` are open in all ``zones`` (None: not within the horizon), and the
    first rule that is closed at ``instant`` (None: open now). The instant is ``instant``
    itself when open now, else in UTC."""
    pairs = [
        (rule, zone(name)) for rule in rules for name in ((rule.zone,) if rule.zone else zones)
    ]
    first_closed = next((rule for rule, tz in pairs if not is_open(rule, tz, instant)), None)
    if first_closed is None:
        return instant, None
    candidate = instant.astimezone(UTC)  # compared as instants, never as wall times
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
