"""The gate: the per-call path that every door (FastAGI, ARI, CLI) calls.

``Gate.decide(attempt)`` = ``engine.plan`` → one ``Store.decide`` → ``engine.conclude``.
Guarantees:
- It never raises for a store problem: when Redis is down or slower than the deadline,
  the configured fail mode answers (reason ``store_unavailable``), the first failure of
  an incident is logged once at WARNING and the recovery once at INFO.
- Emergency, short-code, invalid and number-type decisions never touch Redis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gate.config import Config
from gate.engine import Plan, RuleOutcome, StoreResult, conclude, explain, fail_closed, plan
from gate.errors import StoreError
from gate.keys import Keyspace
from gate.model import Attempt, Decision
from gate.store import Store

__all__ = ["Evaluation", "Gate"]

log = logging.getLogger("callgate")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A decision with what led to it (for ``--explain`` and, later, the audit trail)."""

    decision: Decision
    rules: tuple[RuleOutcome, ...]


class Gate:
    """Decides attempts against one configuration and one store."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.keyspace = Keyspace(
            config.redis.namespace, config.secret if config.hash_numbers else None
        )
        self._failures = 0

    async def decide(self, attempt: Attempt, record: bool = True) -> Decision:
        return (await self.evaluate(attempt, record)).decision

    async def evaluate(self, attempt: Attempt, record: bool = True) -> Evaluation:
        pending = plan(attempt, self.config.policy, self.keyspace, record)
        if isinstance(pending, Decision):
            return Evaluation(pending, tuple(explain(pending, None)))
        result = await self._run(pending)
        if result is None:
            decision = fail_closed(attempt, pending, self.config.fail_mode)
        else:
            decision = conclude(pending, result)
        return Evaluation(decision, tuple(explain(pending, result)))

    async def _run(self, pending: Plan) -> StoreResult | None:
        try:
            result = await self.store.decide(pending.check)
        except StoreError as exc:
            if self._failures == 0:
                log.warning("store unavailable, applying the fail mode: %s", exc)
            self._failures += 1
            return None
        if self._failures:
            log.info("store recovered after %d failed decisions", self._failures)
            self._failures = 0
        return result
