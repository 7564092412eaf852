"""The pure decision core: an attempt and a policy in, a decision out.

A decision is made in three steps, and only the middle one does I/O:

1. ``plan(attempt, policy, keyspace)`` classifies the dialled string and applies the
   static rules (emergency, short codes, invalid numbers, number types). It either
   decides at once (a ``Decision``: no Redis touched) or returns a ``Plan`` whose
   ``check`` lists every Redis lookup and counter the decision needs.
2. The store runs ``plan.check`` in one atomic Lua call and returns a ``StoreResult``.
3. ``conclude(plan, result)`` turns that answer into the ``Decision``;
   ``fail_closed(...)`` does it instead when the store could not answer.

Rule order (first match wins): emergency/short code → invalid number → number type →
block lists (unless exempted by an allow list) → frequency caps → trunk CPS cap → ALLOW.
A BLOCK or DEFER never counts as an attempt; an ALLOW counts in every cap it is under.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gate.config import CapRule, FailMode, ListRule, Policy
from gate.keys import Keyspace
from gate.model import Attempt, Decision, TrafficClass, Verdict
from gate.numbers import BadNumber, Destination, NumberType, ShortCode, classify

__all__ = [
    "CPS_WINDOW_MS",
    "Outcome",
    "Plan",
    "RuleOutcome",
    "StoreCheck",
    "StoreResult",
    "conclude",
    "explain",
    "fail_closed",
    "plan",
    "window_text",
]

CPS_WINDOW_MS = 1000


class Outcome:
    """Codes of the Lua script's first return value (see gate/lua/decide.lua)."""

    PASS = 0
    LISTED = 1
    CAPPED = 2
    CPS = 3


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """Everything the Lua script must look up and count for one decision."""

    now_ms: int
    record: bool
    token: str
    list_keys: tuple[str, ...]
    # Per list: "a" (allow list) or "b" + comma-separated 1-based indexes of the allow
    # lists (in list_keys order) that exempt it.
    list_specs: tuple[str, ...]
    cap_keys: tuple[str, ...]
    cap_limits: tuple[int, ...]
    cap_windows_ms: tuple[int, ...]
    cps_key: str = ""
    cps_limit: int = 0


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The Lua script's answer: outcome, which rule, how long to wait, what it saw."""

    outcome: int
    index: int
    retry_after_ms: int
    memberships: tuple[bool, ...]
    counts: tuple[int, ...]
    cps_count: int


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision that needs the store: the rules in force and the check to run."""

    attempt: Attempt
    destination: Destination
    lists: tuple[ListRule, ...]
    caps: tuple[CapRule, ...]
    trunk_cps: int
    check: StoreCheck


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One line of ``--explain``: a rule in force and what it said."""

    rule: str
    outcome: str
    detail: str = ""


def _decided(verdict: Verdict, reason: str, rule: str, e164: str = "") -> Decision:
    return Decision(verdict=verdict, reason=reason, rule=rule, e164=e164)


def _static(attempt: Attempt, policy: Policy) -> Decision | Destination:
    """Rules that need no store: what the number is and whether this class may dial it."""
    target = classify(attempt.dialled, policy.default_region)
    blocked = policy.blocked_types.get(attempt.traffic_class, frozenset())
    if isinstance(target, ShortCode):
        if target.emergency:
            # An agent's emergency call is never delayed by the gate; a dialer's is refused
            # (47 CFR 64.1200(a)(1); DOMAIN.md "Emergency and protected numbers").
            verdict = (
                Verdict.ALLOW if attempt.traffic_class is TrafficClass.MANUAL else Verdict.BLOCK
            )
            return _decided(verdict, "emergency", "emergency", target.digits)
        if NumberType.SHORT in blocked:
            return _decided(Verdict.BLOCK, "number_type:short", "number_types", target.digits)
        return _decided(Verdict.ALLOW, "short_number", "number_types", target.digits)
    if isinstance(target, BadNumber):
        return _decided(Verdict.BLOCK, "invalid_number", "numbers")
    if target.number_type in blocked:
        return _decided(
            Verdict.BLOCK, f"number_type:{target.number_type.value}", "number_types", target.e164
        )
    return target


def plan(attempt: Attempt, policy: Policy, keyspace: Keyspace, record: bool) -> Plan | Decision:
    """Apply the static rules; return the decision, or the store check still needed."""
    target = _static(attempt, policy)
    if isinstance(target, Decision):
        return target
    token = keyspace.token(target.e164)
    lists: list[ListRule] = []
    list_keys: list[str] = []
    for rule in policy.lists:
        key = keyspace.list_key(rule, attempt.tenant, attempt.campaign)
        if key is not None:
            lists.append(rule)
            list_keys.append(key)
    specs = []
    for rule in lists:
        if rule.kind == "allow":
            specs.append("a")
            continue
        exempting = [str(i + 1) for i, other in enumerate(lists) if rule.name in other.exempts]
        specs.append("b" + ",".join(exempting))
    caps: list[CapRule] = []
    cap_keys: list[str] = []
    for cap in policy.caps:
        if attempt.traffic_class not in cap.classes:
            continue
        key = keyspace.cap_key(cap, attempt.tenant, attempt.campaign, token)
        if key is not None:
            caps.append(cap)
            cap_keys.append(key)
    trunk_cps = policy.cps_for(attempt.trunk)
    check = StoreCheck(
        now_ms=int(attempt.now.timestamp() * 1000),
        record=record,
        token=token,
        list_keys=tuple(list_keys),
        list_specs=tuple(specs),
        cap_keys=tuple(cap_keys),
        cap_limits=tuple(cap.limit for cap in caps),
        cap_windows_ms=tuple(int(cap.window_s * 1000) for cap in caps),
        cps_key=keyspace.cps_key(attempt.trunk) if trunk_cps else "",
        cps_limit=trunk_cps,
    )
    return Plan(attempt, target, tuple(lists), tuple(caps), trunk_cps, check)


def _retry_s(retry_after_ms: int) -> float:
    """Milliseconds to wait, as seconds rounded up to the millisecond (never zero)."""
    return max(math.ceil(retry_after_ms), 1) / 1000


def conclude(plan: Plan, result: StoreResult) -> Decision:
    """Turn the store's answer into the decision."""
    e164 = plan.destination.e164
    if result.outcome == Outcome.LISTED:
        rule = plan.lists[result.index - 1]
        return _decided(Verdict.BLOCK, f"listed:{rule.name}", f"list:{rule.name}", e164)
    if result.outcome == Outcome.CAPPED:
        cap = plan.caps[result.index - 1]
        return Decision(
            verdict=Verdict.DEFER,
            reason=f"cap:{cap.id}",
            rule=f"cap:{cap.id}",
            e164=e164,
            retry_after_s=_retry_s(result.retry_after_ms),
        )
    if result.outcome == Outcome.CPS:
        trunk = plan.attempt.trunk
        return Decision(
            verdict=Verdict.DEFER,
            reason=f"cps:{trunk}",
            rule=f"cps:{trunk}",
            e164=e164,
            retry_after_s=_retry_s(result.retry_after_ms),
        )
    return _decided(Verdict.ALLOW, "allowed", "", e164)


def fail_closed(attempt: Attempt, pending: Plan, fail_mode: FailMode) -> Decision:
    """The configured answer when the store could not decide ``pending`` in time."""
    verdict = fail_mode.verdict_for(attempt.traffic_class)
    return Decision(
        verdict=verdict,
        reason="store_unavailable",
        rule="fail_mode",
        e164=pending.destination.e164,
        retry_after_s=fail_mode.retry_after_s if verdict is Verdict.DEFER else None,
    )


def explain(pending: Plan | Decision, result: StoreResult | None) -> list[RuleOutcome]:
    """Each rule in force and its outcome, in evaluation order, for ``check --explain``."""
    if isinstance(pending, Decision):
        return [RuleOutcome(pending.rule, pending.verdict.value, pending.reason)]
    rows = [
        RuleOutcome(
            "numbers",
            "pass",
            f"{pending.destination.e164} "
            f"({pending.destination.number_type.value}, {pending.destination.region})",
        ),
        RuleOutcome("number_types", "pass", pending.destination.number_type.value),
    ]
    if result is None:
        return [*rows, RuleOutcome("store", "unavailable", "fail mode applied")]
    for index, rule in enumerate(pending.lists):
        listed = result.memberships[index]
        if rule.kind == "allow":
            outcome = "listed (exempts " + ", ".join(rule.exempts) + ")" if listed else "not listed"
        elif not listed:
            outcome = "not listed"
        else:
            decided = result.outcome == Outcome.LISTED and result.index == index + 1
            outcome = "BLOCK" if decided else "listed, exempted"
        rows.append(RuleOutcome(f"list:{rule.name}", outcome, f"{rule.kind}, {rule.scope}"))
    for index, cap in enumerate(pending.caps):
        if index >= len(result.counts):
            rows.append(RuleOutcome(f"cap:{cap.id}", "not reached", "decided by an earlier rule"))
            continue
        seen = result.counts[index]
        capped = result.outcome == Outcome.CAPPED and result.index == index + 1
        rows.append(
            RuleOutcome(
                f"cap:{cap.id}",
                "DEFER" if capped else "pass",
                f"{seen} of {cap.limit} in {window_text(cap.window_s)}"
                + (f"; {cap.source}" if cap.source else ""),
            )
        )
    if pending.trunk_cps:
        rows.append(
            RuleOutcome(
                f"cps:{pending.attempt.trunk}",
                "DEFER" if result.outcome == Outcome.CPS else "pass",
                f"{result.cps_count} of {pending.trunk_cps} in the last second",
            )
        )
    return rows


def window_text(window_s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if window_s >= size and window_s % size == 0:
            return f"{int(window_s // size)}{unit}"
    return f"{window_s}s"
