"""The gate: the per-call path that every door (FastAGI, Stasis, CLI, API) calls.

``Gate.decide(attempt, record=…, door=…)`` = ``engine.plan`` (through the configuration's
``engine.Planner``, which reuses what does not depend on the number) → one ``Store.decide`` →
``engine.conclude``. Guarantees:
- It never raises for a store problem: when Redis is down or slower than the deadline,
  the configured fail mode answers (reason ``store_unavailable``), the first failure of
  an incident is logged once at WARNING and the recovery once at INFO.
- Emergency, short-code, invalid and number-type decisions never touch Redis.
- A tenant the configuration does not name is refused (``UnknownTenant``, a
  ``BadRequest`` with code ``bad_request:tenant``) before anything is decided or counted,
  unless ``gate.open_tenants``: a mistyped tenant never gets a call past lists that are
  empty only because they are another tenant's.
- With ``privacy.hash_numbers`` the attempt's channel name reaches no observer and no
  evidence with a number in it (``Local/0612345678@…`` becomes ``Local/#<tag>@…``).
- One decision uses one configuration whole: ``evaluate`` reads the active
  configuration (config, keyspace, version) once, and ``swap`` replaces it in one
  assignment, so a reload takes effect between decisions, never inside one.
- ``undo(evaluation)``: a door that could not hand an ALLOW to its channel (it hung up
  first) undoes the recorded decision, so the audit trail's ALLOWs and the caps count
  only calls that went out (the store's void, as for a decision that missed its deadline).
- Observers (metrics, the audit trail) are told about every decision, with its door,
  its plan and store answer and its timings; they are told, never asked, so they cannot
  change a decision, and telling them adds no round trip.

Also the lifecycle tools every door and background task uses: ``InFlight`` (requests
tracked from the moment they are accepted, drained with a bound when a door stops),
``stop_task`` (a bounded stop with a logged cancel fallback), ``wait_event`` (a sleep
that a stop event ends early, without touching cancellation) and ``cancelling`` (tell a
cancel dressed as a library error from a real fault).

May import: ``gate.core``, ``gate.config``, ``gate.store`` and the standard library.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gate.config.loader import Config
from gate.core.engine import (
    Plan,
    Planner,
    RuleOutcome,
    StoreResult,
    conclude,
    evolve,
    explain,
    fail_mode_decision,
)
from gate.core.errors import ConfigError, InputError, StoreError
from gate.core.evidence import Timing, evidence_for, stream_len
from gate.core.keys import Keyspace
from gate.core.model import Attempt, Decision, Verdict
from gate.core.redact import redact
from gate.store.client import Store
from gate.store.poll import Poller

__all__ = [
    "Active",
    "DecisionObserver",
    "Evaluation",
    "Gate",
    "InFlight",
    "Observed",
    "Poller",
    "cancelling",
    "stop_task",
    "wait_event",
]

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
    # ``plan`` with what does not depend on the number or the instant reused (recording
    # decisions, evaluations): built with the configuration, replaced with it.
    recording: Planner
    evaluating: Planner

    def planner(self, record: bool) -> Planner:
        return self.recording if record else self.evaluating


@dataclass(frozen=True, slots=True)
class Observed:
    """One decision as observers see it: what was decided, how, under which config."""

    attempt: Attempt
    evaluation: Evaluation
    active: Active
    door: str
    record: bool
    timing: Timing

    @property
    def decision(self) -> Decision:
        return self.evaluation.decision

    @property
    def evidence_stored(self) -> bool:
        """True when the decision script wrote the audit entry itself (a recorded
        decision that Redis answered); the others are left to the audit writer."""
        evaluation = self.evaluation
        return (
            evaluation.result is not None
            and isinstance(evaluation.pending, Plan)
            and evaluation.pending.check.evidence is not None
        )


def _activate(config: Config, version: str) -> Active:
    if config.hash_numbers and config.secret is None:
        raise ConfigError("privacy: numbers are hashed but the secret is not loaded")
    secret = config.secret if config.hash_numbers else None
    keyspace = Keyspace(config.redis.namespace, secret)
    policy = config.policy
    return Active(
        config, keyspace, version, Planner(policy, keyspace, True), Planner(policy, keyspace, False)
    )


def _with_evidence(pending: Plan, active: Active, door: str, process_s: float) -> Plan:
    """``pending`` with its audit entry, for the decision script to write atomically."""
    config = active.config
    evidence = evidence_for(
        pending.attempt,
        pending,
        packs=config.policy.packs,
        config_version=active.version,
        door=door,
        process_s=process_s,
        max_age_s=config.audit.max_age_s,
        max_len=stream_len(config.audit.max_len),
    )
    return evolve(pending, check=evolve(pending.check, evidence=evidence))


class DecisionObserver(Protocol):
    """Told about every decision and store failure (metrics, the audit trail), and about
    an ALLOW undone (``Gate.undo``)."""

    def decided(self, observed: Observed) -> None: ...

    def undone(self, evaluation: Evaluation) -> None: ...

    def store_failed(self, error: StoreError) -> None: ...


class Gate:
    """Decides attempts against one (swappable) configuration and one store."""

    def __init__(self, config: Config, store: Store, version: str = "") -> None:
        self.store = store
        self.observers: list[DecisionObserver] = []
        # A check the store must pass before a decision uses it, set when it could not be
        # made at start (Redis not answering): raises ``StoreError`` while Redis does not
        # answer, ``InputError`` when the store fails it; the decision takes the fail mode
        # either way. Passed, the check clears it.
        self.precondition: Callable[[], Awaitable[None]] | None = None
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

    async def decide(self, attempt: Attempt, *, record: bool, door: str) -> Decision:
        return (await self.evaluate(attempt, record=record, door=door)).decision

    async def evaluate(self, attempt: Attempt, *, record: bool, door: str) -> Evaluation:
        """Decide ``attempt``; ``record`` counts it (and keeps its evidence); ``door``
        (agi, stasis, cli, api, scrub) labels the metrics and the evidence."""
        active = self._active
        active.config.policy.check_tenant(attempt.tenant)  # UnknownTenant: the door refuses
        if attempt.channel and active.config.hash_numbers:
            # A channel name may hold the number (Local/0612345678@…): evidence gets a tag.
            attempt = evolve(attempt, channel=redact(attempt.channel, active.config.secret))
        started = time.perf_counter()
        store_s = 0.0
        pending = active.planner(record).plan(attempt)
        result: StoreResult | None = None
        if isinstance(pending, Decision):
            decision = pending
        else:
            if record and active.config.audit.enabled:
                pending = _with_evidence(pending, active, door, time.perf_counter() - started)
            store_started = time.perf_counter()
            result = await self._run(pending)
            store_s = time.perf_counter() - store_started
            if result is None:
                decision = fail_mode_decision(attempt, pending, active.config.fail_mode)
            else:
                decision = conclude(pending, result)
        evaluation = Evaluation(decision, pending, result)
        if self.observers:
            timing = Timing(time.perf_counter() - started - store_s, store_s)
            observed = Observed(attempt, evaluation, active, door, record, timing)
            for observer in self.observers:
                observer.decided(observed)
        return evaluation

    def undo(self, evaluation: Evaluation) -> None:
        """The door could not hand an ALLOW to its channel (it hung up, or left the Stasis
        application, before): no call went out, so the recorded decision is undone (its
        audit entry deleted, its attempt uncounted; in the background). One decided in
        Redis is undone by the store; one decided without it (emergency, short number,
        fail mode) by the observers that keep its evidence (``undone``). Refusals stand."""
        if evaluation.decision.verdict is not Verdict.ALLOW:
            return
        receipt = None if evaluation.result is None else evaluation.result.receipt
        if receipt is not None:
            self.store.undo(receipt)
            return
        for observer in self.observers:
            observer.undone(evaluation)

    async def _run(self, pending: Plan) -> StoreResult | None:
        try:
            if self.precondition is not None:
                await self.precondition()
            result = await self.store.decide(pending.check)
        except InputError as exc:  # the store is not this gate's to decide on
            if self._failures == 0:
                log.error("not deciding on this store, applying the fail mode: %s", exc)
            self._failures += 1
            return None
        except StoreError as exc:
            for observer in self.observers:
                observer.store_failed(exc)
            if self._failures == 0:
                log.warning("store unavailable, applying the fail mode: %s", exc)
            self._failures += 1
            return None
        if self._failures:
            log.info("store recovered after %d failed decisions", self._failures)
            self._failures = 0
        return result


CANCEL_GRACE_S = 2.0


class InFlight:
    """The requests a door is serving now: counted, and drained (bounded) when it stops.

    A task is tracked from the moment it is created (``spawn``) or handed over (``track``),
    so a request accepted just before ``drain()`` is drained too. A task that fails is
    logged here (a bug in one request never goes unseen, nor takes the door down).
    """

    def __init__(self, name: str, grace_s: float) -> None:
        self.name = name
        self.grace_s = grace_s
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``work()`` as a tracked task."""

        async def run() -> None:
            await work()

        task = asyncio.create_task(run())
        self.track(task)
        return task

    def track(self, task: asyncio.Task[None]) -> None:
        """Track a task created elsewhere (e.g. the one asyncio runs a connection in)."""
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s: a request failed", self.name, exc_info=error)

    async def drain(self) -> None:
        """Let in-flight requests (and any they start) finish within ``grace_s``; cancel
        the rest (logged), and give up on any that ignore the cancel within a bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        if not self._tasks:
            return
        pending = set(self._tasks)
        log.warning(
            "%s: %d request(s) still running after %.0f s; cancelling them",
            self.name,
            len(pending),
            self.grace_s,
        )
        for task in pending:
            task.cancel()
        _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
        if stuck:
            log.error("%s: %d request(s) ignored the cancel; leaving them", self.name, len(stuck))


def cancelling() -> bool:
    """Whether the current task is being cancelled. A library may turn a cancel into one
    of its own errors (a timeout, a connection error): a loop that catches those checks
    this and re-raises the cancel instead of taking it for a fault."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def wait_event(event: asyncio.Event, timeout_s: float | None, *also: asyncio.Event) -> bool:
    """Wait up to ``timeout_s`` (None: no bound) for ``event`` (or one of ``also``); True
    if ``event`` is set.

    For the sleeps of long-lived loops (a stop event that may end them early): unlike
    ``asyncio.timeout`` around ``event.wait()`` (whose expiry is a cancel, which Python
    3.11 can confuse with a cancel from outside), no cancellation is ever raised or
    swallowed here except the caller's own.
    """
    events = (event, *also)
    if any(e.is_set() for e in events):
        return event.is_set()
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set()


async def stop_task(task: asyncio.Task[None], within_s: float, name: str) -> None:
    """Wait (bounded) for a long-lived ``task`` already told to stop (its stop event is
    set); past ``within_s`` cancel it, logged, and wait at most ``CANCEL_GRACE_S`` more.

    Never raises for the task's own failure (logged); a cancel of the caller propagates.
    """
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        log.warning("%s did not stop within %.1f s; cancelling it", name, within_s)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE_S)
        if not done:
            log.error("%s ignored the cancel; leaving it", name)
            return
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed", name, exc_info=error)
