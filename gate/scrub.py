"""Pre-campaign scrub: what the gate would do with every lead of a file, before dialling.

``scrub`` runs each lead through the same decision as the gate (the same plan, the same
Lua checks, the same conclusion) WITHOUT recording anything, in batches: the static rules
in-process, the Redis checks of a whole batch in one pipelined round trip. Guarantees:
every input row is written out with ``verdict``, ``reason`` and ``retry_after_s``
appended (an unreadable number is ``BLOCK invalid_number``; a row without the phone
column is ``ERROR missing_column``), in input order; the summary counts every row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gate.engine import Plan, conclude, plan
from gate.model import Attempt, Decision, TrafficClass
from gate.params import seconds_text
from gate.service import Gate

__all__ = ["ScrubSummary", "scrub"]

BATCH = 2000


@dataclass
class ScrubSummary:
    rows: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def text(self) -> str:
        """``N of M would be blocked: by reason …`` and the same for deferred."""
        lines = []
        for verdict, word in (("BLOCK", "blocked"), ("DEFER", "deferred"), ("ERROR", "unreadable")):
            count = self.verdicts[verdict]
            if not count:
                continue
            reasons = ", ".join(
                f"{reason} {n}"
                for reason, n in self.reasons.most_common()
                if reason.startswith(verdict + " ")
            ).replace(verdict + " ", "")
            lines.append(f"{count} of {self.rows} would be {word}: by reason {reasons}")
        lines.append(f"{self.verdicts['ALLOW']} of {self.rows} would be allowed")
        return "\n".join(lines)


async def scrub(
    gate: Gate,
    rows: Iterable[Sequence[str]],
    column: int,
    write: Callable[[Sequence[str]], None],
    *,
    now: datetime,
    tenant: str,
    campaign: str = "",
    traffic_class: TrafficClass = TrafficClass.CAMPAIGN,
    caller_id: str | None = None,
) -> ScrubSummary:
    """Decide every row's number at ``now`` (nothing recorded); write rows with the result."""
    summary = ScrubSummary()
    batch: list[Sequence[str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            await _batch(
                gate, batch, column, write, summary, now, tenant, campaign, traffic_class, caller_id
            )
            batch = []
    if batch:
        await _batch(
            gate, batch, column, write, summary, now, tenant, campaign, traffic_class, caller_id
        )
    return summary


async def _batch(
    gate: Gate,
    rows: Sequence[Sequence[str]],
    column: int,
    write: Callable[[Sequence[str]], None],
    summary: ScrubSummary,
    now: datetime,
    tenant: str,
    campaign: str,
    traffic_class: TrafficClass,
    caller_id: str | None,
) -> None:
    config = gate.config
    outcomes: list[Decision | Plan | None] = []
    for row in rows:
        if column >= len(row):
            outcomes.append(None)
            continue
        attempt = Attempt(row[column], now, tenant, campaign, "", caller_id, traffic_class)
        outcomes.append(plan(attempt, config.policy, gate.keyspace, record=False))
    pending = [o for o in outcomes if isinstance(o, Plan)]
    results = iter(await gate.store.decide_many([p.check for p in pending]))
    for row, outcome in zip(rows, outcomes, strict=True):
        summary.rows += 1
        if outcome is None:
            summary.verdicts["ERROR"] += 1
            summary.reasons["ERROR missing_column"] += 1
            write([*row, "ERROR", "missing_column", ""])
            continue
        decision = conclude(outcome, next(results)) if isinstance(outcome, Plan) else outcome
        verdict = decision.verdict.value
        summary.verdicts[verdict] += 1
        if verdict != "ALLOW":
            summary.reasons[f"{verdict} {decision.reason}"] += 1
        retry = "" if decision.retry_after_s is None else seconds_text(decision.retry_after_s)
        write([*row, verdict, decision.reason, retry])
