"""The gate: the per-call path that every door (FastAGI, ARI, CLI) calls.

``Gate.decide(attempt)`` = ``engine.plan`` → one ``Store.decide`` → ``engine.conclude``.
Guarantees:
- It never raises for a store problem: when Redis is down or slower than the deadline,
  the configured fail mode answers (reason ``store_unavailable``), the first failure of
  an incident is logged once at WARNING and the recovery once at INFO.
- Emergency, short-code, invalid and number-type decisions never touch Redis.
- One decision uses one configuration whole: ``evaluate`` reads the active
  configuration (config, keyspace, version) once, and ``swap`` replaces it in one
  assignment, so a reload takes effect between decisions, never inside one.
- Every recorded decision (``record=True``: the doors, ``check --record``) is queued for
  the audit trail (gate/audit.py) without adding a round trip.
- An ``observer`` (metrics) sees every decision with its door and its in-process and
  Redis times; it is told, never asked, so it cannot change a decision.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from gate.audit import AuditLog, audit_record
from gate.config import Config
from gate.engine import Plan, RuleOutcome, StoreResult, conclude, explain, fail_closed, plan
from gate.errors import StoreError
from gate.keys import Keyspace
from gate.lists import ListAdmin
from gate.model import Attempt, Decision
from gate.store import Store

__all__ = ["Active", "DecisionObserver", "Evaluation", "Gate"]

log = logging.getLogger("callgate")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A decision with what led to it; ``rules`` (``--explain``) is built on demand, off
    the per-call path."""

    decision: Decision
    pending: Plan | Decision
    result: StoreResult | None

    @property
    def rules(self) -> tuple[RuleOutcome, ...]:
        return tuple(explain(self.pending, self.result))


@dataclass(frozen=True, slots=True)
class Active:
    """The configuration decisions use, with what derives from it; replaced whole."""

    config: Config
    keyspace: Keyspace
    version: str  # short hash of the config and pack files ("" when not from files)


def _activate(config: Config, version: str) -> Active:
    secret = config.secret if config.hash_numbers else None
    return Active(config, Keyspace(config.redis.namespace, secret), version)


class DecisionObserver(Protocol):
    """Told about every decision and store failure (gate/metrics.py implements it)."""

    def decided(
        self, decision: Decision, attempt: Attempt, door: str, process_s: float, store_s: float
    ) -> None: ...

    def store_failed(self, error: StoreError) -> None: ...


class Gate:
    """Decides attempts against one (swappable) configuration and one store."""

    def __init__(self, config: Config, store: Store, version: str = "") -> None:
        self.store = store
        self.observer: DecisionObserver | None = None
        # Set by open_gate when [audit] is enabled: every recorded decision is appended.
        self.audit: AuditLog | None = None
        self._active = _activate(config, version)
        self._failures = 0

    @property
    def active(self) -> Active:
        return self._active

    @property
    def config(self) -> Config:
        return self._active.config

    @property
    def keyspace(self) -> Keyspace:
        return self._active.keyspace

    @property
    def version(self) -> str:
        return self._active.version

    def swap(self, config: Config, version: str) -> None:
        """Make ``config`` the one every decision from now on uses (decisions in flight
        finish with the one they started with)."""
        self._active = _activate(config, version)

    def list_admin(self) -> ListAdmin:
        """List operations under the active configuration."""
        active = self._active
        return ListAdmin(active.config.policy, active.keyspace, self.store)

    async def decide(self, attempt: Attempt, record: bool = True, door: str = "cli") -> Decision:
        return (await self.evaluate(attempt, record, door)).decision

    async def evaluate(
        self, attempt: Attempt, record: bool = True, door: str = "cli"
    ) -> Evaluation:
        """Decide ``attempt``; ``door`` (agi, stasis, cli, api, scrub) labels the metrics."""
        active = self._active
        started = time.perf_counter()
        store_s = 0.0
        pending = plan(attempt, active.config.policy, active.keyspace, record)
        result: StoreResult | None = None
        if isinstance(pending, Decision):
            decision = pending
        else:
            store_started = time.perf_counter()
            result = await self._run(pending)
            store_s = time.perf_counter() - store_started
            if result is None:
                decision = fail_closed(attempt, pending, active.config.fail_mode)
            else:
                decision = conclude(pending, result)
        process_s = time.perf_counter() - started - store_s
        if self.observer is not None:
            self.observer.decided(decision, attempt, door, process_s, store_s)
        if self.audit is not None and record:
            self.audit.append(
                audit_record(
                    attempt,
                    decision,
                    pending,
                    result,
                    active.config.policy,
                    active.keyspace,
                    active.version,
                    door,
                    process_s,
                    store_s,
                )
            )
        return Evaluation(decision, pending, result)

    async def _run(self, pending: Plan) -> StoreResult | None:
        try:
            result = await self.store.decide(pending.check)
        except StoreError as exc:
            if self.observer is not None:
                self.observer.store_failed(exc)
            if self._failures == 0:
                log.warning("store unavailable, applying the fail mode: %s", exc)
            self._failures += 1
            return None
        if self._failures:
            log.info("store recovered after %d failed decisions", self._failures)
            self._failures = 0
        return result
