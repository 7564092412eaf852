"""Rule values: what the configuration and the rule packs say, as frozen data.

Every rule carries its provenance and reach: ``id``, ``source`` (the article of law or
regulator decision), ``verify`` (the value comes from a secondary source and must be
checked), ``shadow`` (evaluated and reported, never enforced), ``valid_from``/``valid_to``
(inclusive dates, in the callee's local time), ``classes`` (traffic classes it governs)
and ``prefixes`` (E.164 prefixes it is limited to, e.g. a US state's area codes).
``in_force`` says whether a rule applies to one attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from gate.core.model import TrafficClass
from gate.core.numbers import NumberType

__all__ = [
    "ALL_CLASSES",
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
    expiry (required by consent rules). ``scope``: one ``global`` list, one per ``tenant``,
    or one per tenant's ``campaign``."""

    name: str
    kind: str  # "block" | "allow" | "consent"
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
class HoursRule(_Rule):
    """Calls may start only inside these local windows, never on the calendar's holidays.

    ``windows[0]`` is Monday: half-open ``(start, end)`` minute-of-day pairs. A number with
    several time zones must be inside the window in all of them. A number on
    ``consent_list`` (consent to be called outside hours) is exempt.
    """

    windows: tuple[tuple[tuple[int, int], ...], ...]
    holidays: tuple[tuple[str, str | None], ...] = ()
    consent_list: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRule(_Rule):
    """The number must hold an unexpired entry on ``list`` (BLOCK ``no_consent:<id>``),
    unless it is on one of ``exempt_lists`` (e.g. current customers)."""

    list: str
    exempt_lists: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FreshnessRule(_Rule):
    """``list`` must have been refreshed within ``max_age_s`` (else DEFER
    ``stale_list:<list>``), unless the number is on one of ``exempt_lists``."""

    list: str
    max_age_s: float
    exempt_lists: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CooloffRule(_Rule):
    """No attempt for ``period_s`` after an ``event`` (refusal, abandoned call) on the number."""

    event: str  # "refusal" | "abandoned"
    period_s: float
    scope: str = "tenant"


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
