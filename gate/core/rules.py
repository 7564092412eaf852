"""Rule values: what the configuration and the rule packs say, as frozen data.

Every rule carries its provenance and reach: ``id``, ``source`` (the article of law or
regulator decision), ``verify`` (the value comes from a secondary source and must be
checked), ``shadow`` (evaluated and reported, never enforced), ``valid_from``/``valid_to``
(inclusive dates, in the callee's local time), ``classes`` (traffic classes it governs)
and ``prefixes`` (E.164 prefixes it is limited to, e.g. a US state's area codes).
``in_force`` says whether a rule applies to one attempt.

Holidays: an hours rule closes on the days of its ``holidays`` calendars (the ``holidays``
package's, e.g. national ``FR``) and of the pack's ``CalendarRule`` s it names: those are
scoped to the callee's place (``places``: the regions of the number, e.g. ``GP`` for a
Guadeloupe number) and may be ``optional`` (applied for the tenants that opt in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from gate.core.model import TrafficClass
from gate.core.numbers import NumberType

__all__ = [
    "ALL_CLASSES",
    "LIST_KINDS",
    "AbandonCeilingRule",
    "CalendarRule",
    "CallerIdRule",
    "CapRule",
    "ConsentRule",
    "CooloffRule",
    "DestinationRule",
    "FreshnessRule",
    "HoursRule",
    "ListRule",
    "Pack",
    "in_force",
]

ALL_CLASSES: frozenset[TrafficClass] = frozenset(TrafficClass)
# "reassigned": per-number dates of the last permanent disconnection (47 CFR 64.1200(l)).
LIST_KINDS = ("block", "allow", "consent", "reassigned")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rule:
    """What every pack rule carries: its id, provenance and reach (see the module doc)."""

    id: str
    classes: frozenset[TrafficClass] = ALL_CLASSES
    source: str = ""
    verify: bool = False
    shadow: bool = False
    valid_from: date | None = None
    valid_to: date | None = None
    prefixes: tuple[str, ...] = ()


def in_force(rule: _Rule, e164: str, traffic_class: TrafficClass, day: date) -> bool:
    """True if ``rule`` governs this class and number on this (callee-local) day."""
    if traffic_class not in rule.classes:
        return False
    if rule.prefixes and not e164.startswith(rule.prefixes):
        return False
    if rule.valid_from is not None and day < rule.valid_from:
        return False
    return rule.valid_to is None or day <= rule.valid_to


@dataclass(frozen=True, slots=True)
class ListRule:
    """A named list. ``block`` lists refuse; ``allow`` lists exempt from the block lists
    named in ``exempts``; ``consent`` lists hold consents with a grant time and an optional
    expiry (required by consent rules); ``reassigned`` lists hold, per number, the day of
    its last permanent disconnection (a consent rule's ``reassigned_list``). ``scope``: one
    ``global`` list, one per ``tenant``, or one per tenant's ``campaign``."""

    name: str
    kind: str  # one of LIST_KINDS
    scope: str  # "global" | "tenant" | "campaign"
    exempts: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapRule(_Rule):
    """At most ``limit`` allowed attempts to one destination per rolling ``window_s``."""

    limit: int
    window_s: float
    scope: str  # "global" | "tenant" | "campaign"


@dataclass(frozen=True, slots=True, kw_only=True)
class CalendarRule(_Rule):
    """Public holidays of some places: a day on it closes the hours rules that name it.

    A day is on the calendar if one of ``holidays`` (the ``holidays`` package's calendars,
    ``(country, subdivision)``) has it, or it is one of ``annual`` ``(month, day)`` or
    ``days``. ``places``: the regions of the callee it applies to (empty: every callee of
    the hours rule). ``optional``: applied only for tenants that opt in to it.
    """

    places: frozenset[str] = frozenset()
    holidays: tuple[tuple[str, str | None], ...] = ()
    annual: frozenset[tuple[int, int]] = frozenset()
    days: frozenset[date] = frozenset()
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HoursRule(_Rule):
    """Calls may start only inside these local windows, never on the calendar's holidays.

    ``windows[0]`` is Monday: half-open ``(start, end)`` minute-of-day pairs. A number with
    several time zones must be inside the window in all of them; a rule with a fixed
    ``zone`` (a statute naming one, e.g. "Central Standard Time") is judged in that zone
    only. A day on one of ``holidays`` (national calendars) or of ``calendars`` in force for
    the callee's place and tenant has no window. A number on ``consent_list`` (consent to be
    called outside hours) is exempt.
    """

    windows: tuple[tuple[tuple[int, int], ...], ...]
    holidays: tuple[tuple[str, str | None], ...] = ()
    calendars: tuple[CalendarRule, ...] = ()
    zone: str | None = None
    consent_list: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRule(_Rule):
    """The number must hold an unexpired entry on ``list`` (BLOCK ``no_consent:<id>``),
    unless it is on one of ``exempt_lists`` (e.g. current customers).

    With ``reassigned_list``, a consent granted on or before the day the number was last
    permanently disconnected (that list's entry) is void: BLOCK ``reassigned:<id>``, with
    no exemption. That check is in shadow mode when ``reassigned_shadow`` is (by default
    when the rule is): a pack may enforce it while the consent requirement itself is in
    shadow (it refuses only numbers whose consent the tenant holds, and which is void).
    """

    list: str
    exempt_lists: tuple[str, ...] = ()
    reassigned_list: str | None = None
    reassigned_shadow: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FreshnessRule(_Rule):
    """``list`` must have been refreshed within ``max_age_s`` (else DEFER
    ``stale_list:<list>``), unless the number is on one of ``exempt_lists``."""

    list: str
    max_age_s: float
    exempt_lists: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CooloffRule(_Rule):
    """No attempt for ``period_s`` after an ``event`` (refusal, abandoned call) on the number.

    With ``calendar_days`` the period (whole days) counts calendar days in the callee's
    time zones: an event on local day D holds the number until 00:00 local of day
    D + days + 1 (gate/core/hours.py ``end_of_calendar_days``), not ``period_s`` after the
    event's instant."""

    event: str  # "refusal" | "abandoned"
    period_s: float
    scope: str = "tenant"
    calendar_days: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerIdRule(_Rule):
    """What caller ID a class may present (BLOCK ``caller_id:<why>``).

    ``forbidden_prefixes`` are refused unless the number also starts with one of
    ``allowed_prefixes`` (the exceptions); ``forbid_masked`` refuses an empty/anonymous
    caller ID; ``require_valid`` refuses one phonenumbers does not know as valid.
    """

    forbid_masked: bool = True
    require_valid: bool = True
    forbidden_prefixes: tuple[str, ...] = ()
    allowed_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRule(_Rule):
    """Number types and prefixes a class may never dial (BLOCK ``number_type:<type>``)."""

    blocked_types: frozenset[NumberType] = frozenset()
    blocked_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AbandonCeilingRule(_Rule):
    """A campaign's abandoned calls may not exceed ``ceiling`` (a fraction) of its live
    (answered) calls over the trailing ``window_s``; above it, its next calls DEFER
    ``abandon_rate:<id>`` until the rate falls back. ``scope``: per ``campaign`` or for the
    whole ``tenant`` (a call centre). Counted from ``min_live_calls`` live calls on."""

    ceiling: float
    window_s: float
    scope: str = "campaign"  # "campaign" | "tenant"
    min_live_calls: int = 0


@dataclass(frozen=True, slots=True)
class Pack:
    """A versioned rule pack: the law of the destination ``regions``, as data."""

    id: str
    version: str
    description: str
    regions: frozenset[str]
    lists: tuple[ListRule, ...] = ()
    hours: tuple[HoursRule, ...] = ()
    caps: tuple[CapRule, ...] = ()
    consents: tuple[ConsentRule, ...] = ()
    freshness: tuple[FreshnessRule, ...] = ()
    cooloffs: tuple[CooloffRule, ...] = ()
    caller_ids: tuple[CallerIdRule, ...] = ()
    destinations: tuple[DestinationRule, ...] = ()
    calendars: tuple[CalendarRule, ...] = ()
    abandon_ceilings: tuple[AbandonCeilingRule, ...] = ()
