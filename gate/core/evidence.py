"""The evidence of a decision: the audit record, built from what the decision saw.

Two ways, one record (``FIELDS``):
- ``evidence_for`` (a recorded decision that needs the store): the fields known before the
  store call (``Evidence``); decide.lua completes them with what the decision saw
  (verdict, reason, rule, lists, counters, shadow, retry) and appends the entry to the
  audit stream in the same atomic call that counts the attempt, so the evidence and the
  counters are one fact. ``latency_us`` is then the in-process time
  before the call and ``redis_us`` is empty (the decision's Redis time is only known
  after the entry is written; it is in ``callgate_decision_redis_seconds``).
- ``audit_record`` (a decision that never reached Redis: emergency, invalid number,
  number type, fail mode): the whole record, written by the in-memory writer.

Both are pure. The number is its keyed token (``NumberKeys.token``: the plan's own, never
hashed again), or the short code's digits, or "" for an unreadable string.
"""

from __future__ import annotations

from dataclasses import dataclass

from gate.core.engine import CheckKind, Evidence, Plan, StoreResult
from gate.core.keys import SLOT_GROUPS, Keyspace
from gate.core.model import Attempt, Decision
from gate.core.rules import Pack

__all__ = ["FIELDS", "Timing", "audit_record", "evidence_for", "stream_len"]

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


def stream_len(max_len: int) -> int:
    """Entries kept per slot group's audit stream: ``[audit] max_len`` shared by the
    groups (at least 100 each)."""
    return max(max_len // SLOT_GROUPS, 100)


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
