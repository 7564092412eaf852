"""Reassigned-number lists: the import format of per-number disconnect dates.

A consent given by a number's previous subscriber is no consent from its new one. In the
United States, providers report each permanent disconnection to the Reassigned Numbers
Database (47 CFR 64.1200(l)); a caller that checked the database and was told the number
had not been disconnected since the consent date is not liable for reaching a new
subscriber (the safe harbor of 47 CFR 64.1200(m)). A ``reassigned`` list keeps, per
number, the last day it was permanently disconnected; a consent rule naming it
(``reassigned_list``) voids every consent granted on or before that day.

Format (``read_disconnects``): text lines ``number,disconnected_on``; ``disconnected_on``
is a date ``YYYY-MM-DD`` (UTC) or an ISO-8601 time with its offset (its UTC day counts).
Blank lines, ``#`` comments and a first line ``number,disconnected_on`` are skipped. From
the database's answers: list each number it answered "yes" for (permanently disconnected
since the date asked) with that date. A number given twice keeps its latest day: the last
disconnection is the one that voids consents (``latest``).

Stored form (read by decide.lua's ``D`` check; ``ListAdmin.import_disconnects`` writes
it): the list's HASH in each slot group maps the number's token to ``void_before_ms``, the
first instant after the disconnect day (UTC); a consent whose grant time is earlier is
void. Guarantees: every
line is either an entry or a ``Rejected`` with its line number and why; nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from gate.core.errors import GateError
from gate.core.rules import ListRule
from gate.lists.formats import Rejected, validate_entry

__all__ = ["HEADER", "Disconnect", "latest", "read_disconnects", "void_before_ms"]

HEADER = "number,disconnected_on"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """One line: the number (E.164) was permanently disconnected on ``day`` (UTC)."""

    line_no: int
    e164: str
    day: date


def _day(text: str) -> date:
    """``YYYY-MM-DD``, or an ISO-8601 time with an offset (its UTC day)."""
    if len(text) == 10:
        return date.fromisoformat(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no offset")
    return moment.astimezone(UTC).date()


def read_disconnects(
    lines: Iterable[str], rule: ListRule, region: str
) -> Iterator[Disconnect | Rejected]:
    """Each line of a disconnect-dates file as an entry or a ``Rejected``."""
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip().lstrip("\ufeff")
        if not text or text.startswith("#") or (line_no == 1 and text.lower() == HEADER):
            continue
        number, comma, when = (part.strip() for part in text.partition(","))
        if not comma or not when:
            yield Rejected(line_no, text, f"expected {HEADER}, e.g. +12125550123,2026-11-02")
            continue
        try:
            e164 = validate_entry(rule, number, region)
        except GateError as exc:
            yield Rejected(line_no, text, str(exc))
            continue
        try:
            day = _day(when)
        except ValueError:
            yield Rejected(
                line_no, text, f"{when!r} is not a date YYYY-MM-DD or an ISO-8601 time with offset"
            )
            continue
        yield Disconnect(line_no, e164, day)


def latest(entries: Iterable[Disconnect]) -> Mapping[str, date]:
    """Per number, its last disconnect day."""
    days: dict[str, date] = {}
    for entry in entries:
        if entry.e164 not in days or entry.day > days[entry.e164]:
            days[entry.e164] = entry.day
    return days


def void_before_ms(day: date) -> int:
    """The stored value: the first instant after ``day`` (UTC), in ms since the epoch."""
    after = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
    return int(after.timestamp() * 1000)
