"""The pure decision core: an attempt and a policy in, a decision out.

A decision is made in three steps, and only the middle one does I/O:

1. ``plan(attempt, policy, keyspace, record)`` classifies the dialled string, picks the
   rule packs of the destination's region and the rules in force on the callee's local
   day, and applies the static rules (emergency, short codes, invalid numbers, number
   types and prefixes, caller ID). It either decides at once (a ``Decision``: no Redis
   touched) or returns a ``Plan`` whose ``check`` lists every Redis check, in order.
2. The store runs ``plan.check`` in one atomic Lua call (``gate/lua/decide.lua``) and
   returns a ``StoreResult``. A plan names its keys relative to the number (list instances,
   key suffixes; gate/core/keys.py): the store puts them in the number's slot group, and
   only ``StoreCheck.number`` and ``StoreCheck.prefix`` depend on the number.
3. ``conclude(plan, result)`` turns that answer into the ``Decision``;
   ``fail_mode_decision(...)`` does it instead when the store could not answer (the
   configured fail mode: DEFER or BLOCK, or ALLOW where an operator chose it).

Order: emergency/short code → invalid number → number type/prefix → caller ID → (store)
block lists → consent (and a consent void since the number was reassigned) → [DEFERs:
cool-off after refusal, stale list, frequency caps, a campaign's abandoned-call ceiling,
calling hours, trunk CPS; the longest wait wins, and a wait that is not the hours' own is
moved to the next opening of the calling hours in force: a retry is a legal calling time].
A BLOCK or DEFER never counts as an attempt; an ALLOW counts in every attempt log (caps,
CPS). Shadow rules are evaluated and reported in ``Decision.shadow`` but never decide.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from gate.core.hours import (
    callee_places,
    holiday_today,
    local_day,
    localised,
    next_open,
    sharing_regions,
    zone,
)
from gate.core.keys import Keyspace, NumberKeys
from gate.core.model import Attempt, Decision, TrafficClass, Verdict
from gate.core.numbers import BadNumber, Destination, NumberType, ShortCode, classify
from gate.core.policy import FailMode, Policy
from gate.core.rules import (
    AbandonCeilingRule,
    CalendarRule,
    CallerIdRule,
    CapRule,
    ConsentRule,
    CooloffRule,
    DestinationRule,
    FreshnessRule,
    HoursRule,
    ListRule,
    Pack,
    in_force,
)

__all__ = [
    "CPS_WINDOW_MS",
    "RECORD_SKEW_S",
    "STALE_RETRY_S",
    "Check",
    "CheckKind",
    "Evidence",
    "HoursSpec",
    "Plan",
    "Planner",
    "RuleOutcome",
    "StoreCheck",
    "StoreResult",
    "conclude",
    "evolve",
    "explain",
    "fail_mode_decision",
    "hours_of",
    "hours_spec",
    "outcome",
    "period_text",
    "plan",
    "record_time_error",
    "shadowed",
    "window_text",
]

CPS_WINDOW_MS = 1000
# A recorded attempt happens now: its time may differ from the gate's clock by at most
# this much (clocks of several hosts, a request in transit). Anything else is refused:
# an attempt dated in the past or the future would make the attempt logs lie.
RECORD_SKEW_S = 5.0
# A stale list cannot say when it will be refreshed: retry in an hour.
STALE_RETRY_S = 3600.0
# No opening within the search horizon (e.g. a toll-free number spanning every US zone).
NO_WINDOW_RETRY_S = 86400.0
_R = TypeVar(
    "_R",
    CapRule,
    HoursRule,
    ConsentRule,
    FreshnessRule,
    CooloffRule,
    CallerIdRule,
    DestinationRule,
    AbandonCeilingRule,
)


class CheckKind(enum.StrEnum):
    """What one Redis check does; the value is its letter in decide.lua's arguments."""

    ALLOW_LIST = "A"  # is the number on an allow list? (never decides; exempts; -1: unused)
    CONSENT_HELD = "H"  # does a consent list hold it, unexpired? (as A)
    BLOCK_LIST = "B"  # BLOCK if on a block list
    CONSENT_REQUIRED = "C"  # BLOCK unless a consent list holds it
    PRESENCE_REQUIRED = "M"  # BLOCK unless an allow list (a scrubbed file) holds it
    COOLOFF = "R"  # DEFER during a cool-off after a refusal or an abandoned call
    FRESHNESS = "F"  # DEFER while a list is older than allowed
    WINDOW = "W"  # DEFER outside the calling hours (computed in-process)
    ATTEMPT_LOG = "L"  # DEFER when a rolling-window cap (or a trunk's CPS) is reached
    REASSIGNED = "D"  # BLOCK when the consent predates the number's last disconnection
    ABANDON_RATE = "Q"  # DEFER while the campaign's abandoned-call rate is over its ceiling

    @property
    def blocks(self) -> bool:
        """True if this kind refuses with BLOCK (the others DEFER or never decide)."""
        return self in _BLOCKING

    @property
    def lookup(self) -> bool:
        """True for the membership lookups that exempt other checks (A, H)."""
        return self in (CheckKind.ALLOW_LIST, CheckKind.CONSENT_HELD)


_BLOCKING = frozenset(
    {
        CheckKind.BLOCK_LIST,
        CheckKind.CONSENT_REQUIRED,
        CheckKind.PRESENCE_REQUIRED,
        CheckKind.REASSIGNED,
    }
)


@dataclass(frozen=True, slots=True)
class Check:
    """One Redis check of a decision (see the kinds in gate/store/lua/decide.lua).

    ``key`` names what the check reads, relative to the number: the list instance (A, B,
    M, H, C, F, D: gate/core/keys.py ``list_id``), the key suffix of a cool-off or attempt
    log (R, L: the store appends the number's token, in its slot group), or, when
    ``shared``, a whole key in its own slot, not the number's: a trunk's CPS log (L), a
    campaign's call counts (Q).
    """

    kind: CheckKind
    rule: str  # e.g. "list:red", "cap:fr-4-per-30d", "hours:fr-d223-9"
    reason: str  # the reason code when it decides, e.g. "listed:red"
    key: str = ""
    params: tuple[int, ...] = ()
    exempt_by: tuple[int, ...] = ()  # 1-based indexes of A/H checks that exempt it
    list_name: str = ""  # the list it looks up (evidence: which list versions were read)
    shadow: bool = False
    shared: bool = False  # shared state (its own slot: a CPS log, call counts), not the number's
    source: str = ""
    detail: str = ""
    # A W check's calling hours, to move another check's retry to their next opening
    # (``outcome``); None for the other kinds and for checks read back from an audit entry.
    hours: _Window | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The audit entry of a recorded decision, for the script to append with what the
    checks saw, in the same atomic call that counts the attempt (gate/core/evidence.py)."""

    known: tuple[tuple[str, str], ...]  # the fields known in-process, (name, value)
    shadow: tuple[str, ...]  # shadow reasons of the static rules
    min_id_ms: int  # entries older than this (stream time) are trimmed on append
    max_len: int  # entries the stream keeps at most (about)


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """Everything the Lua script must look up and count for one decision."""

    now_ms: int
    record: bool
    number: NumberKeys
    prefix: str  # the number's slot group: the start of its keys (gate/core/keys.py)
    checks: tuple[Check, ...]
    evidence: Evidence | None = None  # recorded decisions whose evidence the script writes


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The Lua script's answer: the deciding check (0: none), the wait, what each saw."""

    decided: int
    retry_after_ms: int
    results: tuple[int, ...]
    versions: tuple[str, ...] = ()  # per check: the list version consulted ("" if none)
    # A recorded decision: what the store needs to undo it (``Store.undo``) if its call
    # never went out (opaque here; None for an evaluation).
    receipt: object = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One line of ``--explain``: a rule in force, what it said, and its source."""

    rule: str
    outcome: str
    detail: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision that needs the store: the static rules passed and the checks to run."""

    attempt: Attempt
    destination: Destination
    packs: tuple[str, ...]
    static: tuple[RuleOutcome, ...]
    shadow: tuple[str, ...]
    check: StoreCheck


@dataclass
class _Builder:
    """Accumulates checks; keeps list-check indexes for exemptions."""

    keyspace: Keyspace
    attempt: Attempt
    target: Destination
    day: date
    lists: dict[str, ListRule]
    checks: list[Check] = field(default_factory=list)
    membership: dict[str, int] = field(default_factory=dict)  # list name → A/H check index

    number: NumberKeys = field(init=False)

    def __post_init__(self) -> None:
        self.number = self.keyspace.number(self.target.e164)

    @property
    def token(self) -> str:
        return self.number.token

    def live(self, rules: Sequence[_R]) -> list[_R]:
        """The rules in force for this attempt (class, number prefix, callee-local day)."""
        return [
            r for r in rules if in_force(r, self.target.e164, self.attempt.traffic_class, self.day)
        ]

    def list_key(self, name: str) -> str | None:
        """The list instance ``name`` for this attempt (None: unknown or not applicable)."""
        rule = self.lists.get(name)
        if rule is None:
            return None
        return self.keyspace.list_id(rule, self.attempt.tenant, self.attempt.campaign)

    def add(self, check: Check) -> int:
        self.checks.append(check)
        return len(self.checks)

    def exemptions(self, names: Sequence[str]) -> tuple[int, ...]:
        return tuple(self.membership[n] for n in names if n in self.membership)


def _decided(
    verdict: Verdict, reason: str, rule: str, e164: str = "", shadow: tuple[str, ...] = ()
) -> Decision:
    return Decision(verdict=verdict, reason=reason, rule=rule, e164=e164, shadow=shadow)


def _static_number(
    dialled: str, traffic_class: TrafficClass, policy: Policy
) -> Decision | Destination:
    """What the number is, and whether this class may dial such a number at all."""
    target = classify(dialled, policy.default_region)
    blocked = policy.blocked_types.get(traffic_class, frozenset())
    if isinstance(target, ShortCode):
        if target.emergency:
            # An agent's emergency call is never delayed by the gate; a dialer's is refused
            # (47 CFR 64.1200(a)(1): no autodialed call to an emergency line).
            manual = traffic_class is TrafficClass.MANUAL
            verdict = Verdict.ALLOW if manual else Verdict.BLOCK
            return _decided(verdict, "emergency", "emergency", target.digits)
        if NumberType.SHORT in blocked:
            return _decided(Verdict.BLOCK, "number_type:short", "number_types", target.digits)
        return _decided(Verdict.ALLOW, "short_number", "number_types", target.digits)
    if isinstance(target, BadNumber):
        return _decided(Verdict.BLOCK, "invalid_number", "numbers")
    if target.number_type in blocked:
        reason = f"number_type:{target.number_type.value}"
        return _decided(Verdict.BLOCK, reason, "number_types", target.e164)
    return target


def _destination_rule(rule: DestinationRule, dest: Destination) -> str | None:
    """The reason ``rule`` refuses ``dest``, or None."""
    if dest.number_type in rule.blocked_types:
        return f"number_type:{dest.number_type.value}"
    if rule.blocked_prefixes and dest.e164.startswith(rule.blocked_prefixes):
        return f"number_type:{rule.id}"
    return None


# How a withheld number is written (case ignored): none at all, Asterisk's "unknown" (no
# caller ID set), SIP's "anonymous" (RFC 3261 section 8.1.1.3, also as the user part of
# sip:anonymous@anonymous.invalid), and the "restricted", "private", "unavailable" and
# "withheld" of carriers and gateways. Each is masked, not merely invalid: a rule that
# forbids masked caller IDs but not invalid ones must still refuse it.
_MASKED = frozenset(
    {"", "anonymous", "unknown", "restricted", "private", "unavailable", "withheld"}
)
# A caller ID as Asterisk's CALLERID(all) writes it: a display name, then the number in
# angle brackets ("Acme" <+33162000000>). The number is what the callee is shown.
_DISPLAY_NAME = re.compile(r'\s*(?:"[^"]*"|[^"<>]*?)\s*<([^<>]*)>\s*')
_URI_SCHEMES = ("sip:", "sips:", "tel:")


@dataclass(frozen=True, slots=True)
class _CallerId:
    """The presented caller ID, classified once per decision."""

    masked: bool
    number: Destination | None  # None: masked, or not a valid number

    @classmethod
    def of(cls, caller_id: str, region: str) -> _CallerId:
        shown = caller_id.strip()
        if named := _DISPLAY_NAME.fullmatch(shown):
            shown = named[1].strip()
        user = shown
        if user.lower().startswith(_URI_SCHEMES):  # the URI's user part: "anonymous"
            user = user.partition(":")[2].split("@", 1)[0].split(";", 1)[0]
        if user.strip().lower() in _MASKED:
            return cls(True, None)
        result = classify(shown, region)
        return cls(False, result if isinstance(result, Destination) else None)


def _caller_id_rule(rule: CallerIdRule, shown: _CallerId) -> str | None:
    """Why the caller ID may not be presented under ``rule``, or None."""
    if shown.masked:
        return "caller_id:masked" if rule.forbid_masked else None
    if shown.number is None:
        return "caller_id:invalid" if rule.require_valid else None
    e164 = shown.number.e164
    if (
        rule.forbidden_prefixes
        and e164.startswith(rule.forbidden_prefixes)
        and not e164.startswith(rule.allowed_prefixes or ("\0",))
    ):
        return "caller_id:forbidden_range"
    return None


def _tenant_caller_id(authorised: frozenset[str], shown: _CallerId) -> str | None:
    if shown.number is not None and shown.number.e164 in authorised:
        return None
    return "caller_id:not_authorised"


# (reason, or "" when the rule passes; rule id; shadow; source)
_Refusal = tuple[str, str, bool, str]


def _static_rules(
    build: _Builder, policy: Policy, packs: Sequence[Pack], static: list[RuleOutcome]
) -> list[_Refusal]:
    """Destination and caller-ID rules in force, each with why it refuses (or "")."""
    attempt, target = build.attempt, build.target
    shown = (
        None
        if attempt.caller_id is None
        else _CallerId.of(attempt.caller_id, policy.default_region)
    )
    refusals: list[_Refusal] = []
    for pack in packs:
        for dest_rule in build.live(pack.destinations):
            why = _destination_rule(dest_rule, target)
            refusals.append(
                (why or "", f"number_types:{dest_rule.id}", dest_rule.shadow, dest_rule.source)
            )
        for caller_rule in build.live(pack.caller_ids):
            rule_id = f"caller_id:{caller_rule.id}"
            if shown is None:
                static.append(
                    RuleOutcome(rule_id, "not checked", "no caller ID given", caller_rule.source)
                )
                continue
            why = _caller_id_rule(caller_rule, shown)
            refusals.append((why or "", rule_id, caller_rule.shadow, caller_rule.source))
    authorised = policy.caller_ids.get(attempt.tenant)
    if authorised and shown is not None:
        why = _tenant_caller_id(authorised, shown)
        refusals.append((why or "", f"caller_id:tenant:{attempt.tenant}", False, "config"))
    return refusals


def plan(attempt: Attempt, policy: Policy, keyspace: Keyspace, record: bool) -> Plan | Decision:
    """Apply the static rules; return the decision, or the store checks still needed."""
    target = _static_number(attempt.dialled, attempt.traffic_class, policy)
    if isinstance(target, Decision):
        return target
    return _plan(attempt, target, policy, keyspace, record)[0]


def _plan(
    attempt: Attempt, target: Destination, policy: Policy, keyspace: Keyspace, record: bool
) -> tuple[Plan | Decision, _Window | None]:
    """``plan`` for a classified number, with its calling-hours check's inputs (None: no
    hours rule in force), which a ``Planner`` re-evaluates at another instant."""
    packs = [p for p in policy.packs if target.region in p.regions]
    lists: dict[str, ListRule] = {rule.name: rule for rule in policy.lists}
    for pack in packs:
        for rule in pack.lists:
            lists.setdefault(rule.name, rule)
    build = _Builder(keyspace, attempt, target, local_day(target.time_zones, attempt.now), lists)
    static: list[RuleOutcome] = []
    shadow: list[str] = []
    for why, rule_id, is_shadow, source in _static_rules(build, policy, packs, static):
        outcome = ("shadow " if is_shadow else "") + ("BLOCK" if why else "pass")
        static.append(RuleOutcome(rule_id, outcome, why or "ok", source))
        if why and is_shadow:
            shadow.append(why)
        elif why:
            return _decided(Verdict.BLOCK, why, rule_id, target.e164, tuple(shadow)), None

    _list_checks(build, packs)
    _consent_checks(build, packs)
    _cooloff_checks(build, packs)
    _freshness_checks(build, packs)
    _cap_checks(build, policy, packs)
    _ceiling_checks(build, packs, static)
    hours = [rule for pack in packs for rule in build.live(pack.hours)]
    window = _hours_check(build, policy, hours) if hours else None
    _cps_check(build, policy)
    check = StoreCheck(
        now_ms=int(attempt.now.timestamp() * 1000),
        record=record,
        number=build.number,
        prefix=keyspace.prefix(build.number.group),
        checks=tuple(build.checks),
    )
    packs_ids = tuple(p.id for p in packs)
    return Plan(attempt, target, packs_ids, tuple(static), tuple(shadow), check), window


class Planner:
    """``plan`` for many attempts, reusing what does not depend on the number or the
    instant: the live path of every door (``Gate``); ``checks``, for a scrub, gives only
    the store checks of one attempt with many numbers.

    Pure, and equal to ``plan`` for every attempt: a plan depends on the number through
    its classification (region, type, time zones), the rule prefixes it matches, the places
    whose calendars govern it (``callee_places``) and its own encodings (``NumberKeys`` and
    its slot group: keys are named relative to them, gate/core/keys.py); on the instant
    through the callee-local day (rules' validity), the calling-hours check
    (``_window_check``, rebuilt for each instant) and ``now_ms``. The rest is computed once
    per distinct (attempt without its number, instant and channel; local day;
    classification; prefixes matched; places) and reused with the number's encodings, the
    instant's hours check and the attempt put in.
    """

    _MAX_MODELS = 4096

    def __init__(self, policy: Policy, keyspace: Keyspace, record: bool) -> None:
        self.policy, self.keyspace, self.record = policy, keyspace, record
        self._models: dict[tuple[object, ...], _Model] = {}
        self._prefixes: dict[str, tuple[tuple[str, ...], ...]] = {}
        # region -> the places its calendars are scoped to, and the signature's places
        # when they are the same for every number of the region (None: per number).
        self._places: dict[str, tuple[frozenset[str], tuple[str, ...] | None]] = {}
        self._widths: dict[str, int | None] = {}  # region -> ``_shared``

    def plan(self, attempt: Attempt) -> Plan | Decision:
        target = _static_number(attempt.dialled, attempt.traffic_class, self.policy)
        if isinstance(target, Decision):
            return target
        fixed = tuple([getattr(attempt, name) for name in _SIGNATURE_FIELDS])
        model = self._models.get(self._signature(fixed, attempt.now, target))
        if model is None:
            return self._learn(fixed, attempt, target)
        return model.instance(attempt, target, self.keyspace)

    def checks(self, template: Attempt, numbers: Sequence[str]) -> list[StoreCheck | Decision]:
        """For each of ``numbers``: the store check of ``plan(template)`` with that number
        dialled instead (``.check`` of the plan), or its decision (a scrub: one attempt
        and many numbers, with no attempt or plan made per number)."""
        fixed = tuple([getattr(template, name) for name in _SIGNATURE_FIELDS])
        now, traffic_class = template.now, template.traffic_class
        policy, keyspace = self.policy, self.keyspace
        found: list[StoreCheck | Decision] = []
        days: dict[tuple[str, ...], date] = {}  # one instant: the local day by zones
        # One attempt and one instant: the signature of a number whose region gives every
        # number the same places is a function of its region, type, zones and first
        # characters (as many as the longest rule prefix of its region: ``_shared``), so
        # its model is looked up once per such key (a number of another region: None).
        models: dict[tuple[object, ...], _Model] = {}
        for dialled in numbers:
            target = _static_number(dialled, traffic_class, policy)
            if isinstance(target, Decision):
                found.append(target)
                continue
            width = self._shared(target.region)
            key = None
            if width is not None:
                key = (target.region, target.number_type, target.time_zones, target.e164[:width])
                model = models.get(key)
                if model is not None:
                    found.append(model.made(now, target, keyspace))
                    continue
            day = days.get(target.time_zones)
            if day is None:
                day = days[target.time_zones] = local_day(target.time_zones, now)
            model = self._models.get(self._signature(fixed, now, target, day))
            if model is not None:
                if key is not None:
                    models[key] = model
                found.append(model.made(now, target, keyspace))
                continue
            pending = self._learn(fixed, evolve(template, dialled=dialled), target)
            found.append(pending.check if isinstance(pending, Plan) else pending)
        return found

    def _signature(
        self,
        fixed: tuple[object, ...],
        now: datetime,
        target: Destination,
        day: date | None = None,
    ) -> tuple[object, ...]:
        """What a plan depends on besides the number's encodings and the instant (the
        attempt's ``fixed`` fields, ``_SIGNATURE_FIELDS``). ``day``: the callee-local day
        at ``now``, when known."""
        region = target.region
        prefixes, (wanted, same) = self._signature_parts(region)
        return (
            fixed,
            day if day is not None else local_day(target.time_zones, now),
            region,
            target.number_type,
            target.time_zones,
            *[target.e164.startswith(p) for p in prefixes],
            same if same is not None else callee_places(target, wanted),
        )

    def _shared(self, region: str) -> int | None:
        """How many first characters of a number of ``region`` its rule prefixes read (the
        longest prefix's length), when the signature's places are the same for every number
        of ``region``; None when they are per number (``callee_places``)."""
        if region not in self._widths:
            prefixes, (_, same) = self._signature_parts(region)
            longest = max((len(p) for group in prefixes for p in group), default=0)
            self._widths[region] = None if same is None else longest
        return self._widths[region]

    def _signature_parts(
        self, region: str
    ) -> tuple[tuple[tuple[str, ...], ...], tuple[frozenset[str], tuple[str, ...] | None]]:
        """The rule prefixes and the places of ``region`` (``_region_prefixes``,
        ``_region_places``), computed once."""
        prefixes = self._prefixes.get(region)
        if prefixes is None:
            prefixes = self._prefixes[region] = _region_prefixes(self.policy, region)
        places = self._places.get(region)
        if places is None:
            places = self._places[region] = _region_places(self.policy, region)
        return prefixes, places

    def _learn(
        self, fixed: tuple[object, ...], attempt: Attempt, target: Destination
    ) -> Plan | Decision:
        """``plan(attempt)`` made in full, kept as the model of its signature."""
        if len(self._models) >= self._MAX_MODELS:
            self._models.clear()
        pending, window = _plan(attempt, target, self.policy, self.keyspace, self.record)
        self._models[self._signature(fixed, attempt.now, target)] = _Model.of(pending, window)
        return pending


@dataclass(frozen=True, slots=True)
class _Model:
    """A plan made for one attempt, and how to make it for another of the same signature."""

    pending: Plan | Decision
    window: _Window | None
    # [UTC minute, checks]: the plan's checks in the last minute (since the epoch) in which
    # the calling hours were found open; the hours check is the same all that minute.
    open_minute: list[object] = field(default_factory=lambda: [None, ()])

    @classmethod
    def of(cls, pending: Plan | Decision, window: _Window | None) -> _Model:
        return cls(pending, window if isinstance(pending, Plan) else None)

    def _checks_at(self, window: _Window, now: datetime, now_ms: int) -> tuple[Check, ...]:
        """The plan's checks with its calling-hours check at ``now``.

        While the hours are open the check is the same for a whole UTC minute (no wait,
        the first rule's zone as detail): rule bounds are whole local minutes, and in a
        zone whose offset is whole minutes (checked) a UTC minute is one local minute of
        one local day, so no rule opens or closes inside it. Made once per such minute.
        """
        minute = now_ms // 60_000
        if self.open_minute[0] == minute:
            return self.open_minute[1]  # type: ignore[return-value]
        assert isinstance(self.pending, Plan)
        rebuilt = list(self.pending.check.checks)
        hours = rebuilt[window.index] = _window_check(window, now)
        checks = tuple(rebuilt)
        if hours.params[0] == 0 and _whole_minute_offsets(window, now):
            self.open_minute[:] = [minute, checks]
        return checks

    def instance(
        self, attempt: Attempt, target: Destination, keyspace: Keyspace
    ) -> Plan | Decision:
        """The plan of ``attempt`` (to ``target``), of this model's signature."""
        made = self.made(attempt.now, target, keyspace)
        if isinstance(made, Decision):
            return made
        return evolve(self.pending, attempt=attempt, destination=target, check=made)

    def made(self, now: datetime, target: Destination, keyspace: Keyspace) -> StoreCheck | Decision:
        """The store check of ``instance`` (or its decision), without making the plan."""
        model = self.pending
        if isinstance(model, Decision):
            return evolve(model, e164=target.e164)
        # Keys are relative to the number (gate/core/keys.py): only its encodings and its
        # slot group's prefix change with it.
        number = keyspace.number(target.e164)
        checks = model.check.checks
        now_ms = model.check.now_ms
        if now != model.attempt.now:
            now_ms = int(now.timestamp() * 1000)
            if self.window is not None:
                checks = self._checks_at(self.window, now, now_ms)
        check = model.check
        prefix = keyspace.prefix(number.group)
        return _store_check(now_ms, check.record, number, prefix, checks, check.evidence)


_T = TypeVar("_T")


def evolve(value: _T, **changes: object) -> _T:
    """``dataclasses.replace`` for the engine's frozen, slotted values, without its
    per-call introspection (4x faster; the values have no ``__post_init__``). Each field
    is set by its slot's descriptor (``_setters``), as ``object.__setattr__`` would but
    without looking it up by name (0.8 µs instead of 1.2 for a ``StoreCheck``)."""
    kind = type(value)
    copy = object.__new__(kind)
    for name, put in _SETTERS.get(kind) or _setters(kind):
        put(copy, changes[name] if name in changes else getattr(value, name))
    return copy


# A slotted class's fields → (name, its slot's setter), by class (``evolve``).
_SETTERS: dict[type, tuple[tuple[str, Callable[[object, object], None]], ...]] = {}


def _setters(kind: type) -> tuple[tuple[str, Callable[[object, object], None]], ...]:
    if hasattr(kind, "__post_init__"):  # its checks and derived fields would be skipped
        raise TypeError(f"evolve: {kind.__name__} has a __post_init__; use dataclasses.replace")
    found = _SETTERS[kind] = tuple(
        (name, kind.__dict__[name].__set__)
        for name in kind.__slots__  # type: ignore[attr-defined]
    )
    return found


def _store_check(
    now_ms: int,
    record: bool,
    number: NumberKeys,
    prefix: str,
    checks: tuple[Check, ...],
    evidence: Evidence | None,
) -> StoreCheck:
    """``StoreCheck(...)`` by its slots' setters (0.4 µs; its frozen ``__init__``, 0.7, and
    ``evolve``, 0.8): a scrub makes one per lead (``_Model.made``)."""
    made = object.__new__(StoreCheck)
    _SET_NOW_MS(made, now_ms)
    _SET_RECORD(made, record)
    _SET_NUMBER(made, number)
    _SET_PREFIX(made, prefix)
    _SET_CHECKS(made, checks)
    _SET_EVIDENCE(made, evidence)
    return made


_CHECK_SETTERS = dict(_setters(StoreCheck))
assert list(_CHECK_SETTERS) == ["now_ms", "record", "number", "prefix", "checks", "evidence"]
_SET_NOW_MS, _SET_RECORD, _SET_NUMBER, _SET_PREFIX, _SET_CHECKS, _SET_EVIDENCE = (
    _CHECK_SETTERS.values()
)


# The attempt's fields a plan depends on other than through the number and the instant
# (the channel is only carried along).
_SIGNATURE_FIELDS = tuple(
    f.name for f in fields(Attempt) if f.name not in ("dialled", "now", "channel")
)


def _region_prefixes(policy: Policy, region: str) -> tuple[tuple[str, ...], ...]:
    """Every distinct prefix filter that rules for ``region`` apply to the number."""
    found: dict[tuple[str, ...], None] = {}
    for pack in policy.packs:
        if region not in pack.regions:
            continue
        for rules in (
            pack.hours,
            pack.caps,
            pack.consents,
            pack.freshness,
            pack.cooloffs,
            pack.caller_ids,
            pack.destinations,
            pack.calendars,
            pack.abandon_ceilings,
        ):
            for rule in rules:
                if rule.prefixes:
                    found[rule.prefixes] = None
        for dest in pack.destinations:
            if dest.blocked_prefixes:
                found[dest.blocked_prefixes] = None
    return tuple(found)


def _region_places(policy: Policy, region: str) -> tuple[frozenset[str], tuple[str, ...] | None]:
    """Every place that a calendar of an hours rule for ``region`` is scoped to, and
    the places a signature holds for a number of ``region`` when they are the same for
    all: none when no calendar is scoped to a place, ``(region,)`` when none is scoped to
    another region of its calling code (``callee_places``), else None (per number)."""
    wanted = frozenset(
        place
        for pack in policy.packs
        if region in pack.regions
        for rule in pack.hours
        for calendar in rule.calendars
        for place in calendar.places
    )
    if not wanted:
        return wanted, ()
    if wanted.isdisjoint(set(sharing_regions(region)) - {region}):
        return wanted, (region,)
    return wanted, None


def _list_checks(build: _Builder, packs: Sequence[Pack]) -> None:
    """Membership checks of the lists that exempt (A/H), then every block list (B).

    An allow or consent list is looked up only when a block list or a consent rule in
    force names it as an exemption; consent lists themselves are read by their rule.
    """
    needed = {rule.name for rule in build.lists.values() if rule.exempts}
    needed |= {
        name
        for pack in packs
        for consent in build.live(pack.consents)
        for name in consent.exempt_lists
    }
    needed |= {
        name
        for pack in packs
        for fresh in build.live(pack.freshness)
        for name in fresh.exempt_lists
    }
    keyed = [(rule, build.list_key(rule.name)) for rule in build.lists.values()]
    for rule, key in keyed:
        if key is None or rule.kind == "block" or rule.name not in needed:
            continue
        kind = CheckKind.ALLOW_LIST if rule.kind == "allow" else CheckKind.CONSENT_HELD
        build.membership[rule.name] = build.add(
            Check(
                kind,
                f"list:{rule.name}",
                "",
                key,
                list_name=rule.name,
                detail=f"{rule.kind}, {rule.scope}",
            )
        )
    for rule, key in keyed:
        if key is None or rule.kind != "block":
            continue
        exempting = [other.name for other in build.lists.values() if rule.name in other.exempts]
        build.add(
            Check(
                CheckKind.BLOCK_LIST,
                f"list:{rule.name}",
                f"listed:{rule.name}",
                key,
                list_name=rule.name,
                exempt_by=build.exemptions(exempting),
                detail=f"block, {rule.scope}",
            )
        )


def _consent_checks(build: _Builder, packs: Sequence[Pack]) -> None:
    """Consent rules in force: the number must be on a consent (or allow) list."""
    for pack in packs:
        for consent in build.live(pack.consents):
            key = build.list_key(consent.list)
            if key is None:
                continue
            unless = f" unless {', '.join(consent.exempt_lists)}" if consent.exempt_lists else ""
            # A consent list holds grants with expiry (HASH); an allow list (a scrubbed
            # file, e.g. Bloctel) only membership (SET).
            kind = (
                CheckKind.PRESENCE_REQUIRED
                if build.lists[consent.list].kind == "allow"
                else CheckKind.CONSENT_REQUIRED
            )
            index = build.add(
                Check(
                    kind,
                    f"consent:{consent.id}",
                    f"no_consent:{consent.id}",
                    key,
                    list_name=consent.list,
                    exempt_by=build.exemptions(consent.exempt_lists),
                    shadow=consent.shadow,
                    source=consent.source,
                    detail=f"needs {consent.list}{unless}",
                )
            )
            voids = consent.reassigned_list
            reassigned = build.list_key(voids) if voids else None
            if voids and reassigned and kind is CheckKind.CONSENT_REQUIRED:
                # Right after its consent check, which reads the grant time it compares.
                build.add(
                    Check(
                        CheckKind.REASSIGNED,
                        f"reassigned:{consent.id}",
                        f"reassigned:{consent.id}",
                        reassigned,
                        (index,),
                        list_name=voids,
                        shadow=consent.reassigned_shadow,
                        source=consent.source,
                        detail="a consent granted on or before the last disconnect day on "
                        f"{voids} is void",
                    )
                )


def _cooloff_checks(build: _Builder, packs: Sequence[Pack]) -> None:
    """Cool-offs in force after a refusal or an abandoned call."""
    for pack in packs:
        for cool in build.live(pack.cooloffs):
            build.add(
                Check(
                    CheckKind.COOLOFF,
                    f"cooloff:{cool.id}",
                    f"{cool.event}:{cool.id}",
                    build.keyspace.cooloff_suffix(cool, build.attempt.tenant),
                    (int(cool.period_s * 1000),),
                    shadow=cool.shadow,
                    source=cool.source,
                    detail=f"{period_text(cool)} after a {cool.event}",
                )
            )


def _freshness_checks(build: _Builder, packs: Sequence[Pack]) -> None:
    """Lists the law requires fresh (e.g. a scrubbed file at most 30 days old)."""
    for pack in packs:
        for fresh in build.live(pack.freshness):
            meta = build.list_key(fresh.list)
            if meta is None:
                continue
            build.add(
                Check(
                    CheckKind.FRESHNESS,
                    f"freshness:{fresh.id}",
                    f"stale_list:{fresh.list}",
                    meta,
                    (int(fresh.max_age_s * 1000), int(STALE_RETRY_S * 1000)),
                    exempt_by=build.exemptions(fresh.exempt_lists),
                    shadow=fresh.shadow,
                    source=fresh.source,
                    detail=f"{fresh.list} refreshed within {window_text(fresh.max_age_s)}",
                )
            )


def _cap_checks(build: _Builder, policy: Policy, packs: Sequence[Pack]) -> None:
    """Frequency caps of the config and of the packs in force (exact rolling windows)."""
    attempt = build.attempt
    caps = [cap for cap in policy.caps if attempt.traffic_class in cap.classes]
    for pack in packs:
        caps += build.live(pack.caps)
    for cap in caps:
        key = build.keyspace.cap_suffix(cap, attempt.tenant, attempt.campaign)
        if key is None:
            continue
        build.add(
            Check(
                CheckKind.ATTEMPT_LOG,
                f"cap:{cap.id}",
                f"cap:{cap.id}",
                key,
                (cap.limit, int(cap.window_s * 1000)),
                shadow=cap.shadow,
                source=cap.source,
                detail=f"{cap.limit} in {window_text(cap.window_s)}",
            )
        )


def _ceiling_checks(build: _Builder, packs: Sequence[Pack], static: list[RuleOutcome]) -> None:
    """Abandoned-call ceilings in force: the campaign's (or tenant's) counts, read in
    their own slot (gate/core/keys.py ``ceiling_key``)."""
    attempt = build.attempt
    for pack in packs:
        for ceiling in build.live(pack.abandon_ceilings):
            rule = f"abandon_rate:{ceiling.id}"
            what = (
                f"at most {ceiling.ceiling:.1%} of live calls abandoned per {ceiling.scope} "
                f"over {window_text(ceiling.window_s)}"
            )
            if ceiling.min_live_calls:
                what += f", from {ceiling.min_live_calls} live calls"
            key = build.keyspace.ceiling_key(ceiling, attempt.tenant, attempt.campaign)
            if key is None:
                static.append(
                    RuleOutcome(rule, "not checked", f"{what}; no campaign given", ceiling.source)
                )
                continue
            build.add(
                Check(
                    CheckKind.ABANDON_RATE,
                    rule,
                    rule,
                    key,
                    (
                        round(ceiling.ceiling * 1_000_000),
                        int(ceiling.window_s * 1000),
                        ceiling.min_live_calls,
                    ),
                    shadow=ceiling.shadow,
                    shared=True,
                    source=ceiling.source,
                    detail=what,
                )
            )


def _cps_check(build: _Builder, policy: Policy) -> None:
    """The trunk's calls-per-second cap (a one-second attempt log). A trunk that
    ``[trunks.cps]`` does not name gets ``trunks.default_cps``, and its check says so (an
    unknown trunk's name, a typo, must not pass for a trunk of its own)."""
    trunk = build.attempt.trunk
    cps = policy.cps_for(trunk)
    if cps:
        defaulted = trunk not in policy.trunk_cps
        build.add(
            Check(
                CheckKind.ATTEMPT_LOG,
                f"cps:{trunk}",
                f"cps:{trunk}",
                build.keyspace.cps_key(trunk),
                (cps, CPS_WINDOW_MS),
                detail=f"{cps} per second"
                + (f", the default cap: {trunk} is not in [trunks.cps]" if defaulted else ""),
                shared=True,
                source="trunks.default_cps" if defaulted else "",
            )
        )


@dataclass(frozen=True, slots=True)
class _Window:
    """A plan's calling-hours check less the instant: what ``_window_check`` needs to
    build it for any ``now`` of the same callee-local day."""

    index: int  # its place among the plan's checks (0-based)
    rules: tuple[HoursRule, ...]  # the rules in force, with this callee's calendars
    zones: tuple[str, ...]  # the number's zones ("UTC" if it has none)
    exempt: tuple[int, ...]  # 1-based indexes of the consent lookups that exempt


def _hours_check(build: _Builder, policy: Policy, in_force: Sequence[HoursRule]) -> _Window:
    """One W check for all calling-hour rules in force, in all the number's zones, each
    with the holiday calendars of the callee's places and the tenant's opted-in ones."""
    target, attempt = build.target, build.attempt
    zones = target.time_zones or ("UTC",)
    wanted = {p for rule in in_force for c in rule.calendars for p in c.places}
    places = callee_places(target, wanted) if wanted else (target.region,)
    opted_in = policy.tenant_calendars.get(attempt.tenant, frozenset())
    rules = [
        localised(rule, places, opted_in, target.e164, attempt.traffic_class) for rule in in_force
    ]
    exempt: list[int] = []
    for rule in rules:
        if rule.consent_list:
            key = build.list_key(rule.consent_list)
            if key is not None:
                if rule.consent_list not in build.membership:
                    build.membership[rule.consent_list] = build.add(
                        Check(
                            CheckKind.CONSENT_HELD,
                            f"list:{rule.consent_list}",
                            "",
                            key,
                            list_name=rule.consent_list,
                            detail="consent to calls outside hours",
                        )
                    )
                exempt.append(build.membership[rule.consent_list])
    window = _Window(len(build.checks), tuple(rules), tuple(zones), tuple(exempt))
    build.add(_window_check(window, attempt.now))
    return window


def _whole_minute_offsets(window: _Window, now: datetime) -> bool:
    """True if every zone the hours check reads is a whole number of minutes off UTC at
    ``now`` (all of today's zones; not some historical local mean times)."""
    names = {
        name for rule in window.rules for name in ((rule.zone,) if rule.zone else window.zones)
    }
    offsets = [zone(name).utcoffset(now) for name in names]
    return all(offset is not None and offset % _MINUTE == _NO_TIME for offset in offsets)


_MINUTE, _NO_TIME = timedelta(minutes=1), timedelta(0)


def _ms_until_open(
    rules: Sequence[HoursRule], zones: Sequence[str], at: datetime
) -> tuple[int, HoursRule | None]:
    """How long after ``at`` all ``rules`` are open in all ``zones`` (ms; 0: open then;
    ``NO_WINDOW_RETRY_S`` when not within the horizon), and the first rule closed at
    ``at`` (``next_open``)."""
    opens_at, closed = next_open(rules, zones, at)
    if opens_at is None:
        return int(NO_WINDOW_RETRY_S * 1000), closed
    if opens_at is at:
        return 0, closed
    # Timestamps, not datetime subtraction: two datetimes of one zone subtract as wall
    # clocks, an hour off across a DST change.
    return max(0, math.ceil((opens_at.timestamp() - at.timestamp()) * 1000)), closed


# A calling-hours window as JSON values (``hours_spec``): [zones, rules], each rule
# [fixed zone or None, windows by weekday, national calendars, calendars kept], each
# calendar [national calendars, annual (month, day) dates, days, valid_from, valid_to].
HoursSpec = list[Any]


def hours_spec(window: _Window) -> HoursSpec | None:
    """What moving a retry to the next opening reads of ``window`` (``_legal_retry_ms``:
    its zones and enforced rules, as ``next_open`` reads them), as JSON values: ids,
    sources and scopes left out. None when no rule is enforced (no retry is moved).
    ``hours_of`` gives it back: ``next_open`` answers the same for both at every instant
    (the national calendars are the installed ``holidays`` package's)."""
    enforced = [rule for rule in window.rules if not rule.shadow]
    if not enforced:
        return None
    return [
        list(window.zones),
        [
            [
                rule.zone,
                [[list(span) for span in day] for day in rule.windows],
                [list(national) for national in rule.holidays],
                [
                    [
                        [list(national) for national in calendar.holidays],
                        sorted([list(md) for md in calendar.annual]),
                        sorted(day.isoformat() for day in calendar.days),
                        calendar.valid_from and calendar.valid_from.isoformat(),
                        calendar.valid_to and calendar.valid_to.isoformat(),
                    ]
                    for calendar in rule.calendars
                ],
            ]
            for rule in enforced
        ],
    ]


def hours_of(spec: HoursSpec, index: int = 0) -> _Window:
    """The window ``hours_spec`` described (its rules enforced, without ids or sources),
    as the ``hours`` of the W check at ``index`` of an audit entry read back (``outcome``
    then moves its retry as the decision did). ``ValueError`` for a malformed spec."""
    try:
        zones, rules = spec
        return _Window(
            index,
            tuple(
                HoursRule(
                    id="",
                    zone=fixed,
                    windows=tuple(tuple((int(a), int(b)) for a, b in day) for day in windows),
                    holidays=tuple((str(c), s) for c, s in national),
                    calendars=tuple(
                        CalendarRule(
                            id="",
                            holidays=tuple((str(c), s) for c, s in c_national),
                            annual=frozenset((int(m), int(d)) for m, d in annual),
                            days=frozenset(date.fromisoformat(day) for day in days),
                            valid_from=date.fromisoformat(start) if start else None,
                            valid_to=date.fromisoformat(end) if end else None,
                        )
                        for c_national, annual, days, start, end in calendars
                    ),
                )
                for fixed, windows, national, calendars in rules
            ),
            tuple(str(name) for name in zones),
            (),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a calling-hours spec: {spec!r}") from exc


def _window_check(window: _Window, now: datetime) -> Check:
    """The W check of ``window`` at ``now``: the wait until every rule is open (ms)."""
    rules, zones = window.rules, window.zones
    enforced = [r for r in rules if not r.shadow]
    retry_ms, closed = _ms_until_open(enforced or rules, zones, now)
    decisive = closed or rules[0]
    detail = f"local time in {decisive.zone or ', '.join(zones)}"
    holiday = holiday_today(decisive, zones, now) if closed else None
    if holiday is not None:
        detail += f"; {holiday.day} is a holiday: {holiday.calendar} ({holiday.source})"
    return Check(
        CheckKind.WINDOW,
        f"hours:{decisive.id}",
        f"outside_hours:{decisive.id}",
        "",
        (retry_ms,),
        exempt_by=window.exempt,
        shadow=not enforced,
        source=decisive.source,
        detail=detail,
        hours=window,
    )


def record_time_error(at: datetime, clock: datetime) -> str | None:
    """Why an attempt at ``at`` may not be recorded when the clock says ``clock`` (or None).

    A recorded attempt is a call leaving now; ``at`` may differ from ``clock`` by at most
    ``RECORD_SKEW_S``. Evaluating at any other time stays possible without recording.
    """
    if abs((at - clock).total_seconds()) <= RECORD_SKEW_S:
        return None
    return (
        f"a recorded attempt happens now (within {RECORD_SKEW_S:g} s of the gate's clock), "
        f"not at {at.isoformat()}; evaluate other times without recording"
    )


def _retry_s(retry_after_ms: int) -> float:
    """Milliseconds to wait, as seconds rounded up to the millisecond (never zero)."""
    return max(math.ceil(retry_after_ms), 1) / 1000


def shadowed(
    checks: Sequence[Check], static: Sequence[str], result: StoreResult
) -> tuple[str, ...]:
    """Reasons of the static shadow rules (``static``), then of the shadow checks that
    would have decided."""
    reasons = list(static)
    for check, seen in zip(checks, result.results, strict=False):
        if check.shadow and _would_decide(check, seen, result.results):
            reasons.append(check.reason)
    return tuple(reasons)


def outcome(
    checks: Sequence[Check], result: StoreResult, now_ms: int | None = None
) -> tuple[Verdict, str, str, float | None]:
    """(verdict, reason, rule, retry_after_s) of the store's answer to ``checks``.

    With ``now_ms`` (the decision's instant), a DEFER decided by a check other than the
    calling hours (a cap, a cool-off, a stale list...) retries at the first instant at or
    after that check's wait at which the calling hours are open (``_legal_retry_ms``).
    Without it, or with no W check carrying its ``hours``, the store's wait. An audit
    entry read back (gate/core/evidence.py ``stored_record``) passes its ``ts`` and the W
    check's hours rebuilt from its head (``hours_of``): it gets the decision's retry.
    """
    if result.decided == 0:
        return Verdict.ALLOW, "allowed", "", None
    check = checks[result.decided - 1]
    if check.kind.blocks:
        return Verdict.BLOCK, check.reason, check.rule, None
    retry_ms = result.retry_after_ms
    if now_ms is not None and check.kind is not CheckKind.WINDOW:
        retry_ms = _legal_retry_ms(checks, result, now_ms, retry_ms)
    return Verdict.DEFER, check.reason, check.rule, _retry_s(retry_ms)


def _legal_retry_ms(
    checks: Sequence[Check], result: StoreResult, now_ms: int, retry_ms: int
) -> int:
    """``retry_ms`` (from ``now_ms``), moved to the next opening of the calling hours in
    force: in every zone of the number, on its holiday calendars (``next_open``). A cap's or
    cool-off's end knows nothing of the hours; retried there, the call would be refused
    outside_hours (a Saturday, the night). Unchanged with no enforced hours, or when a
    consent to calls outside hours exempted them (looked up by the store only when the
    hours were closed: else the retry is moved, later but legal either way).
    """
    check = next((c for c in checks if c.hours is not None and not c.shadow), None)
    if check is None or check.hours is None:
        return retry_ms
    if any(result.results[i - 1] == 1 for i in check.exempt_by):
        return retry_ms
    return _opening_ms(check.hours, now_ms, retry_ms)


def _opening_ms(window: _Window, now_ms: int, retry_ms: int) -> int:
    """``retry_ms`` (from ``now_ms``), moved to the next opening of ``window``'s enforced
    rules in all its zones."""
    enforced = [rule for rule in window.rules if not rule.shadow]
    retry_at = datetime.fromtimestamp((now_ms + retry_ms) / 1000, UTC)
    return retry_ms + _ms_until_open(enforced, window.zones, retry_at)[0]


def _would_decide(check: Check, seen: int, results: Sequence[int], exemptions: bool = True) -> bool:
    """True if ``check`` refuses the call on what it saw (ignoring shadow mode)."""
    exempted = exemptions and any(results[i - 1] == 1 for i in check.exempt_by)
    kind = check.kind
    if kind is CheckKind.BLOCK_LIST:
        return seen == 1 and not exempted
    if kind in (CheckKind.CONSENT_REQUIRED, CheckKind.PRESENCE_REQUIRED):
        return seen == 0 and not exempted
    if kind is CheckKind.COOLOFF:
        return seen > 0
    if kind is CheckKind.FRESHNESS:
        return (seen < 0 or seen > check.params[0]) and not exempted
    if kind is CheckKind.WINDOW:
        return seen > 0 and not exempted
    if kind is CheckKind.ATTEMPT_LOG:
        return seen >= check.params[0]
    if kind is CheckKind.REASSIGNED:
        return seen == 1
    if kind is CheckKind.ABANDON_RATE:
        return seen > 0
    return False


def conclude(pending: Plan, result: StoreResult) -> Decision:
    """Turn the store's answer into the decision."""
    checks = pending.check.checks
    verdict, reason, rule, retry_s = outcome(checks, result, pending.check.now_ms)
    shadow = shadowed(checks, pending.shadow, result)
    return Decision(verdict, reason, rule, pending.destination.e164, retry_s, shadow)


def fail_mode_decision(attempt: Attempt, pending: Plan, fail_mode: FailMode) -> Decision:
    """The configured answer when the store could not decide ``pending`` in time."""
    verdict = fail_mode.verdict_for(attempt.traffic_class)
    retry_s = None
    if verdict is Verdict.DEFER:
        # A retry is a legal calling time, as a store's DEFER (``_legal_retry_ms``): moved
        # to the next opening of the hours in force. Whether a consent to calls outside
        # hours exempts them is the store's to say: later, but legal either way.
        retry_ms = math.ceil(fail_mode.retry_after_s * 1000)
        checks = pending.check.checks
        check = next((c for c in checks if c.hours is not None and not c.shadow), None)
        if check is not None and check.hours is not None:
            retry_ms = _opening_ms(check.hours, pending.check.now_ms, retry_ms)
        retry_s = _retry_s(retry_ms)
    return Decision(
        verdict=verdict,
        reason="store_unavailable",
        rule="fail_mode",
        e164=pending.destination.e164,
        retry_after_s=retry_s,
    )


def _outcome(check: Check, seen: int, decided: bool, results: Sequence[int]) -> str:
    if check.kind.lookup:
        # Looked up only when a check it exempts would decide (decide.lua).
        return "not needed" if seen < 0 else "listed" if seen else "not listed"
    verdict = "BLOCK" if check.kind.blocks else "DEFER"
    if decided:
        return verdict
    if _would_decide(check, seen, results):
        # Not deciding: a shadow rule, or a DEFER outweighed by a longer wait or a BLOCK.
        return f"shadow {verdict}" if check.shadow else f"{verdict} (outweighed)"
    if _would_decide(check, seen, results, exemptions=False):
        return "exempted"
    return "pass"


def _seen_text(check: Check, seen: int, now_ms: int) -> str:
    if check.kind is CheckKind.ATTEMPT_LOG:
        return f"{seen} of {check.params[0]} in window"
    if check.kind is CheckKind.COOLOFF:
        if seen <= 0:
            return "none"
        until = datetime.fromtimestamp((now_ms + seen) / 1000, UTC)
        return f"{window_text(seen / 1000)} left, until {until:%Y-%m-%d %H:%M:%S} UTC"
    if check.kind is CheckKind.FRESHNESS:
        return "never refreshed" if seen < 0 else f"refreshed {window_text(seen / 1000)} ago"
    if check.kind is CheckKind.WINDOW:
        return f"opens in {window_text(seen / 1000)}" if seen > 0 else "open now"
    if check.kind is CheckKind.ABANDON_RATE:
        if seen > 0:
            return f"over the ceiling; back under in {window_text(seen / 1000)}"
        return "under the ceiling"
    if check.kind is CheckKind.REASSIGNED:
        return "the consent predates the last disconnect" if seen else "no disconnect since"
    return ""


def explain(pending: Plan | Decision, result: StoreResult | None) -> list[RuleOutcome]:
    """Each rule in force, its outcome and source, in evaluation order (``--explain``)."""
    if isinstance(pending, Decision):
        return [RuleOutcome(pending.rule, pending.verdict.value, pending.reason)]
    dest = pending.destination
    rows = [
        RuleOutcome(
            "numbers",
            "pass",
            f"{dest.e164} ({dest.number_type.value}, {dest.region}, "
            f"{', '.join(dest.time_zones) or 'no zone'})",
        ),
        RuleOutcome("packs", "in force" if pending.packs else "none", ", ".join(pending.packs)),
        *pending.static,
    ]
    if result is None:
        return [*rows, RuleOutcome("store", "unavailable", "fail mode applied")]
    for index, (check, seen) in enumerate(
        zip(pending.check.checks, result.results, strict=False), start=1
    ):
        outcome = _outcome(check, seen, index == result.decided, result.results)
        detail = "; ".join(
            d for d in (check.detail, _seen_text(check, seen, pending.check.now_ms)) if d
        )
        rows.append(RuleOutcome(check.rule, outcome, detail, check.source))
    return rows


def period_text(rule: CooloffRule) -> str:
    """A cool-off's period as a reader counts it: ``60 calendar days (to 00:00 local after
    the last)`` for a rule counted in calendar days, else ``window_text``'s ``72h``."""
    if rule.calendar_days:
        return f"{round(rule.period_s / 86400)} calendar days (to 00:00 local after the last)"
    return window_text(rule.period_s)


def window_text(window_s: float) -> str:
    """``2592000`` → ``30d``; ``5400`` → ``1h30m``; ``0.5`` → ``0.5s``."""
    if window_s < 1:
        return f"{window_s:g}s"
    rest, parts = round(window_s), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
        if len(parts) == 2:
            break
    return "".join(parts)
