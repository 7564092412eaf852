"""The evidence of a decision: the audit record, built from what the decision saw.

Two ways, one record (``FIELDS``):
- ``evidence_for`` (a recorded decision that needs the store): the fields known before the
  store call (``Evidence``). The store adds the list versions and ``check_summary`` of the
  checks (their kind, rule, reason, parameters, exemptions, shadow flag) and decide.lua
  appends them, with what each check saw, to the audit stream in the same atomic call
  that counts the attempt: the evidence and the counters are one fact, and Redis does no
  more than one append for it. ``stored_record`` turns such an entry into the record,
  with the engine's own ``outcome`` and ``shadowed`` (the same conclusion as the decision).
  A DEFER's retry is the decision's own (the one the channel was told): its head also
  keeps the calling hours that moved it (``hours_summary``: the W check's enforced rules
  and zones, in the end of the head made once per plan shape, so no work per call), and
  ``stored_record`` moves the store's wait again from the head's ``ts`` with them, as the
  decision did. An entry written before the head kept them reads with the store's wait.
  ``latency_us`` is then the in-process time before the call and ``redis_us`` is empty
  (the decision's Redis time is only known after the entry is written; it is in
  ``callgate_decision_redis_seconds``).
- ``audit_record`` (a decision that never reached Redis: emergency, invalid number,
  number type, fail mode): the whole record, written by the in-memory writer. Its
  ``packs`` are those in force when it got as far as the store checks (fail mode), else
  the one whose static rule (destination, caller ID) decided it.

All are pure. The number is its keyed token (``NumberKeys.token``: the plan's own, never
hashed again), or the short code's digits, or "" for an unreadable string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gate.core.engine import (
    Check,
    CheckKind,
    Evidence,
    HoursSpec,
    Plan,
    StoreResult,
    hours_of,
    hours_spec,
    outcome,
    shadowed,
)
from gate.core.keys import SLOT_GROUPS, Keyspace
from gate.core.model import Attempt, Decision
from gate.core.numbers import Destination, classify
from gate.core.rules import Pack

__all__ = [
    "FIELDS",
    "MIN_MAX_LEN",
    "Timing",
    "audit_record",
    "check_summary",
    "evidence_for",
    "hours_summary",
    "stored_record",
    "stream_len",
]

FIELDS = (
    "ts",
    "verdict",
    "reason",
    "rule",
    "door",
    "tenant",
    "campaign",
    "trunk",
    "class",
    "number",
    "caller_id",
    "channel",
    "config",
    "packs",
    "lists",
    "counters",
    "shadow",
    "retry_after_s",
    "latency_us",
    "redis_us",
)


# Entries each slot group's audit stream keeps at least (one Redis stream node), and so
# the least ``[audit] max_len`` the config accepts: 102 400.
MIN_STREAM_LEN = 100
MIN_MAX_LEN = SLOT_GROUPS * MIN_STREAM_LEN


def stream_len(max_len: int) -> int:
    """Entries kept per slot group's audit stream: ``[audit] max_len`` shared by the
    groups (at least ``MIN_STREAM_LEN`` each). Trimmed approximately (whole stream nodes
    of 100 entries): a stream may hold up to a node more."""
    return max(max_len // SLOT_GROUPS, MIN_STREAM_LEN)


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a decision's time went: in-process (``process_s``) and in Redis (``store_s``)."""

    process_s: float = 0.0
    store_s: float = 0.0


def audit_record(
    attempt: Attempt,
    decision: Decision,
    pending: Plan | Decision,
    result: StoreResult | None,
    *,
    packs: tuple[Pack, ...],
    keyspace: Keyspace,
    config_version: str,
    door: str,
    timing: Timing,
) -> dict[str, str]:
    """The audit entry of one decision (pure: no I/O)."""
    lists: dict[str, str] = {}
    counters: list[str] = []
    consulted = ""
    if isinstance(pending, Plan):
        number = pending.check.number.token
        consulted = _packs_consulted(pending, packs)
        if result is not None:
            for check, seen, version in zip(
                pending.check.checks, result.results, result.versions, strict=False
            ):
                if version and check.list_name:
                    lists[check.list_name] = version
                if check.kind is CheckKind.ATTEMPT_LOG:
                    counters.append(f"{check.rule}={seen}")
    elif decision.e164.startswith("+"):
        number = keyspace.token(decision.e164)
    else:
        number = decision.e164  # a short code (emergency, directory…) or "" if unreadable
    if not isinstance(pending, Plan):
        consulted = _deciding_pack(decision, packs)
    retry = "" if decision.retry_after_s is None else f"{decision.retry_after_s:.3f}"
    return {
        "ts": str(int(attempt.now.timestamp() * 1000)),
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "rule": decision.rule,
        "door": door,
        "tenant": attempt.tenant,
        "campaign": attempt.campaign,
        "trunk": attempt.trunk,
        "class": attempt.traffic_class.value,
        "number": number,
        "caller_id": attempt.caller_id or "",
        "channel": attempt.channel,
        "config": config_version,
        "packs": consulted,
        "lists": ",".join(f"{name}@{version}" for name, version in lists.items()),
        "counters": ",".join(counters),
        "shadow": ",".join(decision.shadow),
        "retry_after_s": retry.rstrip("0").rstrip(".") if retry else "",
        "latency_us": str(round((timing.process_s + timing.store_s) * 1e6)),
        "redis_us": str(round(timing.store_s * 1e6)),
    }


# The static rules of a pack (decided before Redis): the prefix of their Decision.rule.
_STATIC_RULES = {
    "number_types": lambda pack: pack.destinations,
    "caller_id": lambda pack: pack.caller_ids,
}


def _deciding_pack(decision: Decision, packs: tuple[Pack, ...]) -> str:
    """The pack (``id@version``) whose static rule made ``decision`` before Redis (a
    destination or caller-ID rule: ``number_types:<rule>``, ``caller_id:<rule>``), or ""
    for a decision no pack's rule made (emergency, invalid number, the config's number
    types or a tenant's caller IDs). A rule id in several packs: the one of the number's
    region."""
    kind, _, rule_id = decision.rule.partition(":")
    rules_of = _STATIC_RULES.get(kind)
    if rules_of is None:
        return ""
    found = [pack for pack in packs if any(rule.id == rule_id for rule in rules_of(pack))]
    if len(found) > 1 and isinstance(target := classify(decision.e164, "ZZ"), Destination):
        found = [pack for pack in found if target.region in pack.regions] or found
    return f"{found[0].id}@{found[0].version}" if found else ""


def _packs_consulted(pending: Plan, packs: tuple[Pack, ...]) -> str:
    by_id = {pack.id: pack for pack in packs}
    return ",".join(f"{p}@{by_id[p].version}" for p in pending.packs if p in by_id)


def evidence_for(
    attempt: Attempt,
    pending: Plan,
    *,
    packs: tuple[Pack, ...],
    config_version: str,
    door: str,
    process_s: float,
    max_age_s: float,
    max_len: int,
) -> Evidence:
    """What the decision script needs to write the audit entry of ``pending`` itself."""
    known = {
        "ts": str(pending.check.now_ms),
        "door": door,
        "tenant": attempt.tenant,
        "campaign": attempt.campaign,
        "trunk": attempt.trunk,
        "class": attempt.traffic_class.value,
        "number": pending.check.number.token,
        "caller_id": attempt.caller_id or "",
        "channel": attempt.channel,
        "config": config_version,
        "packs": _packs_consulted(pending, packs),
        "latency_us": str(round(process_s * 1e6)),
        "redis_us": "",
    }
    return Evidence(
        known=tuple(known.items()),
        shadow=pending.shadow,
        min_id_ms=pending.check.now_ms - int(max_age_s * 1000),
        max_len=max_len,
    )


# One check in an entry written by decide.lua: kind letter, rule, reason, shadow (0/1),
# the checks that exempt it, its parameters, the list it reads and that list's version.
CheckSummary = tuple[str, str, str, int, tuple[int, ...], tuple[int, ...], str, str]


def check_summary(checks: Sequence[Check], versions: Sequence[str]) -> list[CheckSummary]:
    """What the audit entry keeps of each check (``versions``: of the list each reads,
    "" for none), to conclude again when it is read."""
    return [
        (c.kind.value, c.rule, c.reason, int(c.shadow), c.exempt_by, c.params, c.list_name, v)
        for c, v in zip(checks, versions, strict=True)
    ]


def hours_summary(checks: Sequence[Check]) -> HoursSpec | None:
    """The calling hours that move a DEFER's retry (the first enforced W check's:
    ``engine.hours_spec``), as JSON values for the audit head's ``hours``; None when none
    is enforced. The store encodes it once per window (gate/store/client.py
    ``_hours_json``: kept by the window's identity, a plan model's), never per call."""
    check = next((c for c in checks if c.hours is not None and not c.shadow), None)
    if check is None or check.hours is None:
        return None
    return hours_spec(check.hours)


def stored_record(head: Mapping[str, Any], seen: str) -> dict[str, str]:
    """The record of an entry decide.lua wrote: ``head`` (the fields known in-process,
    ``checks``, ``shadow`` and the ``hours`` of ``hours_summary``) and ``seen``
    ("decided,retry_ms,r1,r2…"). Its verdict, reason, rule and retry are the decision's
    (``outcome`` at the head's ``ts``, with those hours): a DEFER's retry is the one the
    channel was told, moved to the next opening of the calling hours."""
    summaries = head.get("checks", [])
    spec = head.get("hours")
    hours_at = next(
        (i for i, s in enumerate(summaries) if s[0] == CheckKind.WINDOW.value and not s[3]),
        None,
    )
    checks = [
        Check(
            CheckKind(kind),
            rule,
            reason,
            params=tuple(params),
            exempt_by=tuple(exempt),
            shadow=bool(shadow),
            list_name=name,
            hours=hours_of(spec, i) if spec and i == hours_at else None,
        )
        for i, (kind, rule, reason, shadow, exempt, params, name, _) in enumerate(summaries)
    ]
    numbers = [int(float(v)) for v in seen.split(",")] if seen else [0, 0]
    result = StoreResult(numbers[0], numbers[1], tuple(numbers[2:]))
    ts = str(head.get("ts", ""))
    now_ms = int(ts) if ts.isdigit() else None
    verdict, reason, rule, retry_s = outcome(checks, result, now_ms)
    counters = [
        f"{c.rule}={n}"
        for c, n in zip(checks, result.results, strict=False)
        if c.kind is CheckKind.ATTEMPT_LOG
    ]
    lists: dict[str, str] = {}
    for summary, n in zip(summaries, result.results, strict=False):
        if summary[6] and summary[7] and n >= 0:
            lists[summary[6]] = summary[7]
    record = {name: str(head.get(name, "")) for name in FIELDS}
    record["lists"] = ",".join(f"{name}@{version}" for name, version in lists.items())
    retry = "" if retry_s is None else f"{retry_s:.3f}".rstrip("0").rstrip(".")
    record.update(
        verdict=verdict.value,
        reason=reason,
        rule=rule,
        counters=",".join(counters),
        shadow=",".join(shadowed(checks, head.get("shadow", []), result)),
        retry_after_s=retry,
    )
    return record
