"""Pre-campaign scrub: what the gate would do with every lead of a file, before dialling.

``scrub`` runs each lead through the same decision as the gate (the same plan, the same
Lua checks, the same conclusion) WITHOUT recording anything, in batches: the static rules
in-process (``engine.Planner``: what does not depend on the number is planned once), the
Redis checks of a whole batch in one pipelined round trip. Guarantees:
- every input row is written out with ``verdict``, ``reason`` and ``retry_after_s``
  appended (an unreadable number is ``BLOCK invalid_number``; a row without the phone
  column is ``ERROR missing_column``), in input order; the summary counts every row;
- the whole scrub uses ONE configuration: the gate's active one when it starts (a reload
  during the scrub does not mix two);
- a large file (``PARALLEL_FROM`` rows or more) is decided by ``workers`` processes, each
  with its own Redis connection, over successive batches, while this process reads the
  rows and writes them in order; the processes are stopped when the scrub ends or fails.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice

from gate.config.loader import Config, RedisConfig
from gate.core.engine import Plan, Planner, conclude
from gate.core.keys import Keyspace
from gate.core.model import Attempt, Decision, TrafficClass
from gate.core.params import seconds_text
from gate.service import Gate
from gate.store.client import Store

__all__ = ["BATCH", "PARALLEL_FROM", "WORKERS", "ScrubSummary", "scrub"]

BATCH = 2000
# Below this many rows starting worker processes (~0.5 s each) is not worth it.
PARALLEL_FROM = 20_000
WORKERS = min(2, os.cpu_count() or 1)

# (verdict, reason, retry_after_s) of one row, as written out.
Outcome = tuple[str, str, str]
_MISSING: Outcome = ("ERROR", "missing_column", "")


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

    def add(self, outcome: Outcome) -> None:
        verdict = outcome[0]
        self.rows += 1
        self.verdicts[verdict] += 1
        if verdict != "ALLOW":
            self.reasons[f"{verdict} {outcome[1]}"] += 1


@dataclass(frozen=True, slots=True)
class _Job:
    """What every lead of one scrub is decided with (picklable: sent to the workers)."""

    config: Config
    keyspace: Keyspace
    now: datetime
    tenant: str
    campaign: str
    traffic_class: TrafficClass
    caller_id: str | None

    async def decide(
        self, store: Store, planner: Planner, numbers: Sequence[str | None]
    ) -> list[Outcome]:
        """The outcome of each number (None: the row has no phone column), in order."""
        planned: list[Decision | Plan | None] = [
            None
            if number is None
            else planner.plan(
                Attempt(
                    number,
                    self.now,
                    self.tenant,
                    self.campaign,
                    "",
                    self.caller_id,
                    self.traffic_class,
                )
            )
            for number in numbers
        ]
        pending = [p for p in planned if isinstance(p, Plan)]
        results = iter(await store.decide_many([p.check for p in pending]))
        outcomes: list[Outcome] = []
        for item in planned:
            if item is None:
                outcomes.append(_MISSING)
                continue
            decision = conclude(item, next(results)) if isinstance(item, Plan) else item
            retry = "" if decision.retry_after_s is None else seconds_text(decision.retry_after_s)
            outcomes.append((decision.verdict.value, decision.reason, retry))
        return outcomes

    def planner(self) -> Planner:
        return Planner(self.config.policy, self.keyspace, record=False)


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
    workers: int = WORKERS,
) -> ScrubSummary:
    """Decide every row's number at ``now`` (nothing recorded); write rows with the result."""
    active = gate.active
    active.config.policy.check_tenant(tenant)
    job = _Job(active.config, active.keyspace, now, tenant, campaign, traffic_class, caller_id)
    summary = ScrubSummary()
    batches = _batches(rows, BATCH)
    head = list(islice(batches, PARALLEL_FROM // BATCH))
    if workers > 1 and len(head) * BATCH >= PARALLEL_FROM:
        await _parallel(job, gate.store, chain(head, batches), column, write, summary, workers)
        return summary
    planner = job.planner()
    for batch in chain(head, batches):
        outcomes = await job.decide(gate.store, planner, _numbers(batch, column))
        _write(batch, outcomes, write, summary)
    return summary


async def _parallel(
    job: _Job,
    store: Store,
    batches: Iterator[list[Sequence[str]]],
    column: int,
    write: Callable[[Sequence[str]], None],
    summary: ScrubSummary,
    workers: int,
) -> None:
    """Batches decided by ``workers`` processes; rows written here, in input order."""
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(job, store.settings),
    )
    in_flight: deque[tuple[list[Sequence[str]], Future[list[Outcome]]]] = deque()
    try:
        for batch in batches:
            in_flight.append((batch, pool.submit(_work, _numbers(batch, column))))
            # Two batches per worker in flight: none idles, memory stays bounded.
            if len(in_flight) > 2 * workers:
                await _write_oldest(in_flight, write, summary)
        while in_flight:
            await _write_oldest(in_flight, write, summary)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


async def _write_oldest(
    in_flight: deque[tuple[list[Sequence[str]], Future[list[Outcome]]]],
    write: Callable[[Sequence[str]], None],
    summary: ScrubSummary,
) -> None:
    batch, future = in_flight.popleft()
    outcomes: list[Outcome] = await asyncio.wrap_future(future)
    _write(batch, outcomes, write, summary)


def _batches(rows: Iterable[Sequence[str]], size: int) -> Iterator[list[Sequence[str]]]:
    source = iter(rows)
    for _ in range(10**12):  # bounded by the input: islice returns [] at its end
        batch = list(islice(source, size))
        if not batch:
            return
        yield batch


def _numbers(batch: Sequence[Sequence[str]], column: int) -> list[str | None]:
    return [row[column] if column < len(row) else None for row in batch]


def _write(
    batch: Sequence[Sequence[str]],
    outcomes: Sequence[Outcome],
    write: Callable[[Sequence[str]], None],
    summary: ScrubSummary,
) -> None:
    for row, outcome in zip(batch, outcomes, strict=True):
        summary.add(outcome)
        write([*row, *outcome])


# One per worker process: the job, its own Redis connection, planner and event loop.
_worker: tuple[_Job, Store, Planner, asyncio.AbstractEventLoop] | None = None


def _start_worker(job: _Job, settings: RedisConfig) -> None:
    global _worker
    # Ctrl-C reaches the whole process group: the main process stops the pool (and says
    # so); a worker printing its own KeyboardInterrupt traceback would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = (job, Store.open(settings), job.planner(), asyncio.new_event_loop())


def _work(numbers: list[str | None]) -> list[Outcome]:
    assert _worker is not None, "not a scrub worker process"
    job, store, planner, loop = _worker
    return loop.run_until_complete(job.decide(store, planner, numbers))
