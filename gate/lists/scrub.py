"""Pre-campaign scrub: what the gate would do with every lead of a file, before dialling.

``scrub`` runs each lead through the same decision as the gate (the same plan, the same
Lua checks, the same conclusion) WITHOUT recording anything, in batches: the static rules
in-process (``engine.Planner``: what does not depend on the number is planned once), the
Redis checks of a whole batch in one pipelined round trip. Guarantees:
- every input row is written out with ``verdict``, ``reason`` and ``retry_after_s``
  appended (an unreadable number is ``BLOCK invalid_number``; a row without the phone
  column is ``ERROR missing_column``, but a column number past the first row's cells is
  an ``InputError``, nothing written), in input order; the summary counts every row;
- in a scrubbed file, those three are always the columns after the first row's (under
  their header names): a shorter row is padded with empty cells, a longer row keeps its
  extra cells after them; no cell is dropped (``scrub_file``); the leads' own cells are
  written back as read (the user's data, not escaped for spreadsheets: a formula there
  was in the file given), and the three the gate adds are codes and a number, never text
  a spreadsheet would run;
- the whole scrub uses ONE configuration: the gate's active one when it starts (a reload
  during the scrub does not mix two);
- a large file (``PARALLEL_FROM`` rows or more) is decided by ``workers`` processes, each
  with its own Redis connection, over successive batches, while this process reads the
  rows and writes them in order; the processes are stopped when the scrub ends or fails.
  They are spawned (a fresh interpreter each, importing callgate: ~0.3 s), or, when the
  caller allows it (``fork``: a one-shot command) and this process runs no other thread,
  forked from it (at once, with everything it has loaded; a fork copies no thread, so it
  must not happen while another thread may hold a lock, as in a server).

``scrub_file`` is the whole of ``callgate scrub`` and of a console upload
(``POST /v1/scrub/file``): the leads file read as the CLI reads it (plain, gzip or zip;
CSV/TSV/semicolon sniffed from the first line; the phone column by header name or 1-based
index), the output written beside its target and renamed at the end (whole, or not at
all), so both give the same file for the same input.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from pathlib import Path

from gate.config.loader import Config, RedisConfig
from gate.core.engine import Planner, StoreCheck, outcome
from gate.core.errors import InputError
from gate.core.keys import Keyspace
from gate.core.model import Attempt, TrafficClass, Verdict
from gate.core.params import seconds_text
from gate.lists.formats import column_beyond, column_number, csv_dialect, csv_rows, open_lines
from gate.service import Gate
from gate.store.client import Store, cancel_point
from gate.store.lifetime import end_with_parent

__all__ = [
    "BATCH",
    "PARALLEL_FROM",
    "WORKERS",
    "ScrubSummary",
    "column_index",
    "ends_with_parent",
    "scrub",
    "scrub_file",
]

log = logging.getLogger("callgate.scrub")

BATCH = 2000
# Below this many rows starting worker processes (~0.5 s each) is not worth it.
PARALLEL_FROM = 20_000
WORKERS = min(2, os.cpu_count() or 1)

# (verdict, reason, retry_after_s) of one row, as written out.
Outcome = tuple[str, str, str]
_MISSING: Outcome = ("ERROR", "missing_column", "")


def _row(verdict: Verdict, reason: str, retry_after_s: float | None) -> Outcome:
    retry = "" if retry_after_s is None else seconds_text(retry_after_s)
    return (verdict.value, reason, retry)


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

    def add(self, outcomes: Sequence[Outcome]) -> None:
        """Count the outcomes of a batch of rows."""
        self.rows += len(outcomes)
        # Counted by distinct outcome first (a batch has a handful: one pass in C), then
        # per verdict and reason, each first met in the order of its first row, as a
        # count row by row would meet them (``most_common`` keeps that order in ties).
        verdicts, reasons = self.verdicts, self.reasons
        for (verdict, why, _), count in Counter(outcomes).items():
            verdicts[verdict] += count
            if verdict != "ALLOW":
                reasons[f"{verdict} {why}"] += count


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
        template = Attempt(
            "", self.now, self.tenant, self.campaign, "", self.caller_id, self.traffic_class
        )
        given = planner.checks(template, [number for number in numbers if number is not None])
        pending = [c for c in given if isinstance(c, StoreCheck)]
        found = iter(await store.decide_many(pending))
        # A check's outcome is its reading of the store's result (the verdict: the results
        # stop at the first BLOCK, see decide_many), immutable values that checks and
        # results of a batch share (a plan model's, the store's reading of a reply): read
        # once per distinct pair, by identity (both alive until the end of this call).
        read: dict[tuple[int, int], Outcome] = {}
        planned = iter(given)
        outcomes: list[Outcome] = []
        for number in numbers:
            if number is None:
                outcomes.append(_MISSING)
                continue
            item = next(planned)
            if isinstance(item, StoreCheck):
                result = next(found)
                key = (id(item.checks), id(result))
                known = read.get(key)
                if known is None:
                    verdict, reason, _rule, retry_s = outcome(item.checks, result, item.now_ms)
                    known = read[key] = _row(verdict, reason, retry_s)
                outcomes.append(known)
            else:
                outcomes.append(_row(item.verdict, item.reason, item.retry_after_s))
        return outcomes

    def planner(self) -> Planner:
        return Planner(self.config.policy, self.keyspace, record=False)


async def scrub(
    gate: Gate,
    rows: Iterable[Sequence[str]],
    column: int,
    write: Callable[[list[list[str]]], None],
    *,
    now: datetime,
    tenant: str,
    campaign: str = "",
    traffic_class: TrafficClass = TrafficClass.CAMPAIGN,
    caller_id: str | None = None,
    workers: int = WORKERS,
    fork: bool = False,
) -> ScrubSummary:
    """Decide every row's number at ``now`` (nothing recorded); ``write`` gets the rows a
    batch at a time, in order, each with its verdict, reason and retry time appended.
    ``fork``: the worker processes may be forked from this one (see the module's text)."""
    active = gate.active
    active.config.policy.check_tenant(tenant)
    job = _Job(active.config, active.keyspace, now, tenant, campaign, traffic_class, caller_id)
    summary = ScrubSummary()
    batches = _batches(rows, BATCH)
    head = list(islice(batches, PARALLEL_FROM // BATCH))
    if workers > 1 and len(head) * BATCH >= PARALLEL_FROM:
        context = _worker_context(fork)
        await _parallel(
            job, gate.store, chain(head, batches), column, write, summary, workers, context
        )
        return summary
    planner = job.planner()
    for batch in chain(head, batches):
        cancel_point()
        outcomes = await job.decide(gate.store, planner, _numbers(batch, column))
        _write(batch, outcomes, write, summary)
    return summary


async def _parallel(
    job: _Job,
    store: Store,
    batches: Iterator[list[Sequence[str]]],
    column: int,
    write: Callable[[list[list[str]]], None],
    summary: ScrubSummary,
    workers: int,
    context: multiprocessing.context.BaseContext,
) -> None:
    """Batches decided by ``workers`` processes; rows written here, in input order."""
    sys.stdout.flush()  # a forked worker must not write out a copy of what is buffered
    sys.stderr.flush()
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(job, store.settings, os.getpid()),
    )
    in_flight: deque[tuple[list[Sequence[str]], Future[list[Outcome]]]] = deque()
    try:
        for batch in batches:
            cancel_point()
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
    write: Callable[[list[list[str]]], None],
    summary: ScrubSummary,
) -> None:
    batch, future = in_flight.popleft()
    outcomes: list[Outcome] = await asyncio.wrap_future(future)
    _write(batch, outcomes, write, summary)


def _worker_context(fork: bool) -> multiprocessing.context.BaseContext:
    """Forked workers when allowed and safe (no other thread here), else spawned ones."""
    if fork and threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


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
    write: Callable[[list[list[str]]], None],
    summary: ScrubSummary,
) -> None:
    write([[*row, *outcome] for row, outcome in zip(batch, outcomes, strict=True)])
    summary.add(outcomes)


# One per worker process: the job, its own Redis connection, planner and event loop.
_worker: tuple[_Job, Store, Planner, asyncio.AbstractEventLoop] | None = None


def _worker_signals() -> None:
    """A worker's signals: Ctrl-C reaches the whole process group, and the main process
    stops the pool (and says so; a worker printing its own KeyboardInterrupt traceback
    would only add noise); SIGTERM ends it; and none wakes an event loop of its parent's
    (a forked worker starts with its parent's handlers and wake-up descriptor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def _start_worker(job: _Job, settings: RedisConfig, parent_pid: int) -> None:
    global _worker
    _worker_signals()
    if not ends_with_parent(parent_pid):
        raise SystemExit(1)
    _worker = (job, Store.open(settings), job.planner(), asyncio.new_event_loop())


def ends_with_parent(parent_pid: int) -> bool:
    """A scrub's process (a worker, the console's scrub) ends when its parent dies
    (``end_with_parent``: killed, the parent would leave its workers blocked for ever on
    its queue); whether that parent is still alive. Where the signal is refused (a strict
    seccomp profile), the scrub runs without it, as before it had one."""
    try:
        return end_with_parent(parent_pid)
    except OSError as exc:
        log.warning("scrub: no parent-death signal (%s): a killed parent leaves it running", exc)
        return os.getppid() == parent_pid


def _work(numbers: list[str | None]) -> list[Outcome]:
    assert _worker is not None, "not a scrub worker process"
    job, store, planner, loop = _worker
    return loop.run_until_complete(job.decide(store, planner, numbers))


def output_target(output: Path) -> tuple[Path, int]:
    """Where a scrubbed file given as ``output`` is written (a symlink's target) and its
    permission bits: those of the file it replaces, else a new file's (0666 less the
    umask)."""
    target = Path(os.path.realpath(output))
    try:
        return target, target.stat().st_mode & 0o7777
    except OSError:
        return target, 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask: read where Linux shows it, else set and put back at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def column_index(spec: str, header: Sequence[str], source: Path | str) -> int:
    """The 0-based index of the phone column: ``spec`` is a header name or a 1-based index
    (``column_number``, option ``phone_column``); ``source`` names the file in errors."""
    index = column_number(spec, "phone_column")
    if index is not None:
        return index
    lowered = [c.lower() for c in header]
    if spec.lower() not in lowered:
        raise InputError(f"{source}: no column named {spec!r} in header {list(header)!r}")
    return lowered.index(spec.lower())


def _aligned(row: list[str], width: int) -> list[str]:
    """A decided row (its cells, then its verdict, reason and retry_after_s) with those
    three as columns ``width`` to ``width + 2``, under their header names: a shorter row
    padded with empty cells, a longer row's cells past ``width`` (no header names them)
    kept after the three."""
    cells = len(row) - 3
    if cells == width:
        return row
    if cells < width:
        return [*row[:cells], *[""] * (width - cells), *row[cells:]]
    return [*row[:width], *row[cells:], *row[width:cells]]


def _cannot_write(shown: str, exc: OSError) -> InputError:
    """The error of a write of the output that failed (a full disk, a file size limit)."""
    return InputError(
        f"{shown}: cannot write: {exc.strerror or exc}: free some disk space there, or "
        "write the output elsewhere; nothing was written"
    )


async def scrub_file(
    gate: Gate,
    source: Path,
    output: Path,
    *,
    column: str = "1",
    header: bool = False,
    now: datetime,
    tenant: str,
    campaign: str = "",
    traffic_class: TrafficClass = TrafficClass.CAMPAIGN,
    caller_id: str | None = None,
    written: Callable[[int, int], None] | None = None,
    workers: int = WORKERS,
    fork: bool = False,
    name: str | None = None,
    output_name: str | None = None,
) -> ScrubSummary:
    """Scrub the leads of ``source`` into ``output`` (the rows with ``verdict``, ``reason``
    and ``retry_after_s`` appended as the columns after the first row's, ``_aligned``; a
    header row gets those names). ``written`` is told,
    after each batch of rows written, how many lines of ``source`` have been read so far
    and how many rows the batch had. ``output`` is written whole or not at all; where it
    cannot be (no such directory, a directory itself): ``InputError`` naming it. Redis
    unreachable: ``StoreError`` before anything is written; a write that fails (a full
    disk): ``InputError`` naming it, the partial file removed. ``fork``: see ``scrub``.
    Errors name the file ``name`` and the output ``output_name`` (by default their paths)."""
    name = str(source) if name is None else name
    shown = str(output) if output_name is None else output_name
    opened = open_lines(source, name=name)
    try:
        blank = 0  # blank lines before the first row (read, but not by the CSV reader)
        first = None
        for line in opened:  # bounded by the file
            if line.strip():
                first = line
                break
            blank += 1
        if first is None:
            raise InputError(f"{name}: no leads in the file")
        dialect = csv_dialect(first)
        reader = csv.reader(itertools.chain([first], opened), dialect)
        read = (row for _, row in csv_rows(reader, name, blank))
        head = [c.strip() for c in next(read)]
        index = column_index(column, head, name)
        if index >= len(head):  # every row would be ERROR missing_column
            raise column_beyond(name, blank + 1, index, len(head), column, "phone_column")
        has_header = column_number(column, "phone_column") is None or header
        body = read if has_header else itertools.chain([head], read)
        rows = (row for row in body if "".join(row).strip())  # blank rows are skipped
        await gate.store.ping()  # Redis down: fail before writing anything
        # Written beside the target and renamed at the end: OUT is whole or untouched. A
        # symlink's target is written (the link stays), with the mode of the file it
        # replaces, or a new file's (not mkstemp's 0600: a dialer's user may read it).
        target, mode = output_target(output)
        try:
            fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as exc:
            raise InputError(f"{shown}: cannot write there: {exc.strerror}") from exc
        try:
            os.fchmod(fd, mode)
            out = os.fdopen(fd, "w", encoding="utf-8", newline="")
            try:
                writer = csv.writer(out, dialect)
                if has_header:
                    writer.writerow([*head, "verdict", "reason", "retry_after_s"])

                full = len(head) + 3  # a decided row with as many cells as the first

                def write(batch: list[list[str]]) -> None:
                    try:
                        if set(map(len, batch)) == {full}:  # most files: nothing to align
                            writer.writerows(batch)
                        else:
                            writer.writerows([_aligned(row, len(head)) for row in batch])
                    except OSError as exc:
                        raise _cannot_write(shown, exc) from exc
                    if written is not None:
                        written(blank + reader.line_num, len(batch))

                summary = await scrub(
                    gate,
                    rows,
                    index,
                    write,
                    now=now,
                    tenant=tenant,
                    campaign=campaign,
                    traffic_class=traffic_class,
                    caller_id=caller_id,
                    workers=workers,
                    fork=fork,
                )
            except BaseException:  # the error (a cancellation too) goes on, not close()'s
                with contextlib.suppress(OSError):
                    out.close()
                raise
            try:
                out.close()  # the last buffered rows
            except OSError as exc:
                raise _cannot_write(shown, exc) from exc
            try:
                os.replace(partial, target)
            except OSError as exc:
                raise InputError(f"{shown}: cannot write there: {exc.strerror}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
    finally:
        opened.close()
    return summary
