"""The audit trail: every decision that lets a call go or stops it, kept as evidence.

Each decision of a door (FastAGI, Stasis, API with recording, ``check --record``) becomes
one entry of the audit stream of the number's slot group (``<namespace>:{<tag>}:audit``,
gate/core/keys.py; group 0 for a decision without a number): time, verdict, reason, rule, door,
tenant, campaign, trunk, traffic class, the number (its keyed hash unless numbers are
stored plain), caller ID, channel, the config version, the rule packs and the list
versions consulted, the counters seen, the shadow reasons, and the decision's latency.

Guarantees:
- A recorded decision that Redis answers is written by the decision script itself, in the
  same atomic call that counts it (gate/core/evidence.py, decide.lua): no evidence waits in
  memory, and an entry exists exactly when the counters moved. Such an entry holds the
  checks and what they saw (fields ``h`` and ``r``); the readers here conclude it into the
  same record as the others (``evidence.stored_record``) and return both kinds alike. A
  DEFER's ``retry_after_s`` is the one its channel was told (a cap's or cool-off's wait
  moved to the next opening of the calling hours, from the hours its head keeps).
- ``AuditLog`` keeps only the others (emergency, invalid number, number type, fail mode):
  appending never adds a round trip: ``AuditLog.append`` only queues the record; a
  background writer sends queued records in pipelined batches (every ``FLUSH_S`` or
  ``BATCH`` records) to their group streams, trimming each by length (``MAXLEN ~``) and,
  once a minute, by age (``XTRIM MINID ~``): every group stream the first time, then the
  streams it wrote to.
- An ALLOW the door could not hand to its channel (``Gate.undo``: it hung up first; no
  call went out) leaves no entry here either: ``undone`` drops its queued record, or
  deletes the entry once written (``XDEL``, sent by the writer). The last ``UNDOABLE``
  ALLOWs queued are remembered for that (bounded memory).
- Nothing is lost silently: while Redis is unreachable records wait in memory (at most
  ``QUEUE_MAX``); past that the oldest are dropped and the count is logged once per
  incident and kept in ``dropped``. ``close()`` flushes what is queued.
- Stopping never hangs: the writer stops on an explicit event; ``close()`` waits for it
  at most ``within_s`` (then cancels it, logged), and flushes for at most
  ``FINAL_FLUSH_S`` (then gives up, logged, counting what is left). A cancel is never
  swallowed: a Redis error caught while the writer is being cancelled is re-raised as
  the cancel. ``start()`` after ``close()`` starts a new writer. Only processes that
  record decisions run a writer (gate/runtime.py ``open_gate(records=True)``).
- Reading (``read_range``: ``tail``, ``export``, ``why``, the API's search; ``Follower``:
  ``tail -f``) merges the group streams in time order (by entry id, then group), in
  batches: bounded memory. ``why`` reads only its number's group. Given ``read_wait``
  (the API and the console: ``Store.answer_within``), each read (one pipelined round
  trip) is bounded by it, never the whole range: a frozen Redis is reported within the
  bound (``StoreTimeout``) while a long export goes on as long as Redis answers.
- A time range selects by the decision's own time (``ts``), not by when its entry was
  written (the entry id): the ids read go from ``SKEW_S`` before the range (Redis's clock
  behind the gate's) to ``LATE_S`` after it (a record that waited in the queue, Redis
  being down), and only records whose ``ts`` is in the range are returned. A record
  written later than ``LATE_S`` after its decision (Redis down longer) is logged when
  written: a range ending before its writing misses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gate.config.loader import AuditConfig
from gate.core.engine import Plan
from gate.core.errors import StoreError
from gate.core.evidence import FIELDS, audit_record, stored_record, stream_len
from gate.core.keys import SLOT_GROUPS, Keyspace
from gate.core.model import Verdict
from gate.service import Evaluation, Observed, cancelling, stop_task, wait_event
from gate.store.client import redis_error_text

__all__ = ["FIELDS", "AuditLog", "Follower", "ReadWait", "read_range"]

log = logging.getLogger("callgate.audit")

BATCH = 500
FLUSH_S = 0.05
QUEUE_MAX = 200_000
TRIM_EVERY_S = 60.0
STOP_WITHIN_S = 2.0  # the writer sees its stop event within FLUSH_S unless Redis hangs
FINAL_FLUSH_S = 5.0
LATE_S = 600.0  # a time range also reads the entries written this long after it ends
SKEW_S = 5.0  # ... and this long before it starts
UNDOABLE = 10_000  # ALLOW records kept undoable (a door undoes within seconds)


# What bounds one read of the streams: a context manager to run it in
# (``Store.answer_within``; by default nothing but the client's own timeout).
ReadWait = Callable[[], AbstractAsyncContextManager[Any]]

# Entries read per stream and request when merging the group streams.
_FIRST_READ = 16
_NEXT_READ = 200
_POLL_S = 0.5


class _Queued:
    """A record waiting for the writer; ``entry_id`` once written, ``undone`` if its
    decision was undone (not written; deleted if it was being written)."""

    __slots__ = ("entry_id", "key", "record", "undone")

    def __init__(self, key: str, record: Mapping[str, str]) -> None:
        self.key = key
        self.record = record
        self.entry_id: str | None = None
        self.undone = False


class AuditLog:
    """Queues audit records and writes them in the background."""

    def __init__(self, client: aioredis.Redis, namespace: str, settings: AuditConfig) -> None:
        self._client = client
        self._keyspace = Keyspace(namespace, None)
        self.settings = settings
        self._queue: deque[_Queued] = deque()
        # ALLOWs that may still be undone: id(evaluation) -> (evaluation, its record).
        self._undoable: OrderedDict[int, tuple[Evaluation, _Queued]] = OrderedDict()
        self._deletes: list[tuple[str, str]] = []  # (stream, entry id) of undone entries
        self._written_to: set[str] = set()  # streams to trim
        self._swept = False  # every group stream trimmed once
        self._wake = asyncio.Event()
        self._idle = False  # the writer sleeps until a record comes (``append`` wakes it)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._last_trim = 0.0
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        """Start the background writer (once; again after ``close()``)."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="callgate-audit")

    def decided(self, observed: Observed) -> None:
        """A decision observer: keep the evidence of every recorded decision that the
        decision script did not write itself (emergency, invalid, number type, fail mode)."""
        if not observed.record or observed.evidence_stored:
            return
        active = observed.active
        evaluation = observed.evaluation
        queued = self.append(
            audit_record(
                observed.attempt,
                evaluation.decision,
                evaluation.pending,
                evaluation.result,
                packs=active.config.policy.packs,
                keyspace=active.keyspace,
                config_version=active.version,
                door=observed.door,
                timing=observed.timing,
            ),
            _group(observed),
        )
        if evaluation.decision.verdict is Verdict.ALLOW:
            self._undoable[id(evaluation)] = (evaluation, queued)
            if len(self._undoable) > UNDOABLE:
                self._undoable.popitem(last=False)

    def undone(self, evaluation: Evaluation) -> None:
        """A decision observer: ``evaluation``'s ALLOW let no call go (``Gate.undo``): its
        queued record is dropped, or its entry deleted by the writer once written. Nothing
        for a decision this writer does not keep (the decision script's own entries are
        undone by the store)."""
        found = self._undoable.pop(id(evaluation), None)
        if found is None:
            return
        queued = found[1]
        queued.undone = True
        if queued.entry_id is not None:
            self._deletes.append((queued.key, queued.entry_id))
            if self._idle:
                self._wake.set()

    def store_failed(self, error: StoreError) -> None:
        """Nothing to keep: the decision itself (fail mode) is kept by ``decided``."""

    def append(self, record: Mapping[str, str], group: int = 0) -> _Queued:
        """Queue one record for the stream of slot group ``group`` (never blocks, never
        raises)."""
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
        queued = _Queued(self._keyspace.audit_key(group), record)
        self._queue.append(queued)
        if self._idle or len(self._queue) >= BATCH:
            self._wake.set()
        return queued

    async def close(
        self, within_s: float = STOP_WITHIN_S, flush_within_s: float = FINAL_FLUSH_S
    ) -> None:
        """Stop the writer (bounded by ``within_s``, then cancelled, logged), then flush
        what is queued (bounded by ``flush_within_s``, then given up, logged)."""
        if self._task is not None:
            self._stop.set()
            self._wake.set()
            await stop_task(self._task, within_s, "the audit writer")
            self._task = None
        if self._queue or self._deletes:
            flush = asyncio.create_task(self._flush_all(), name="callgate-audit-flush")
            await stop_task(flush, flush_within_s, "the audit flush")
        if self._queue:
            log.warning("audit: %d records could not be written before exit", len(self._queue))

    async def _flush_all(self) -> None:
        while (self._queue or self._deletes) and await self._flush():
            pass

    async def _run(self) -> None:
        """Trim (once a minute), write what is queued, sleep until a batch is full or
        ``FLUSH_S`` passed; with nothing queued, until a record comes or the next trim is
        due (an idle gate does not wake every ``FLUSH_S``); until the stop event."""
        while not self._stop.is_set():
            await self._trim()
            if not await self._flush():
                await wait_event(self._stop, 1.0)  # Redis unreachable: records stay queued
                continue
            if not self._queue:
                self._idle = True
                until_trim = self._last_trim + TRIM_EVERY_S - time.time()
                await wait_event(self._wake, max(until_trim, FLUSH_S))
                self._idle = False
                self._wake.clear()  # a record came: more are written with it FLUSH_S on
                if self._stop.is_set():
                    continue
            await wait_event(self._wake, FLUSH_S)
            self._wake.clear()

    async def _flush(self) -> bool:
        """Write up to BATCH records (not those undone) and delete the entries undone after
        they were written; False if Redis failed (they stay queued)."""
        if not self._queue and not self._deletes:
            return True
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        sent = [queued for queued in batch if not queued.undone]
        deletes = self._deletes[:BATCH]
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for queued in sent:
                    fields: dict[Any, Any] = dict(queued.record)
                    pipe.xadd(
                        queued.key,
                        fields,
                        maxlen=stream_len(self.settings.max_len),
                        approximate=True,
                    )
                    self._written_to.add(queued.key)
                for key, entry_id in deletes:
                    pipe.xdel(key, entry_id)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            if not self._failing:
                log.warning(
                    "audit: cannot write to Redis (%s); %d records queued",
                    redis_error_text(exc),
                    len(self._queue),
                )
            self._failing = True
            return False
        for _ in batch:
            self._queue.popleft()
        del self._deletes[: len(deletes)]
        for queued, entry_id in zip(sent, replies[: len(sent)], strict=True):
            queued.entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if queued.undone:  # undone while it was being written
                self._deletes.append((queued.key, queued.entry_id))
        self.written += len(sent)
        late_ms = (time.time() - LATE_S) * 1000
        if late := sum(1 for queued in sent if _ts_ms(queued.record, late_ms) < late_ms):
            log.warning(
                "audit: %d records written more than %.0f s after their decision: a search"
                " by time range ending before now misses them",
                late,
                LATE_S,
            )
        if self._failing:
            log.info("audit: writing again (%d records were dropped meanwhile)", self.dropped)
            self._failing = False
        return True

    async def _trim(self) -> None:
        """Once a minute, by age: first every group stream (what earlier runs left in
        streams nobody appends to any more), then the streams written to since (the
        decision script trims the streams it appends to itself)."""
        now = time.time()
        if now - self._last_trim < TRIM_EVERY_S or (self._swept and not self._written_to):
            return
        self._last_trim = now
        cutoff_ms = int((now - self.settings.max_age_s) * 1000)
        if self._swept:
            keys, self._written_to = self._written_to, set()
        else:
            keys = {self._keyspace.audit_key(group) for group in range(SLOT_GROUPS)}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in sorted(keys):
                    pipe.xtrim(key, minid=f"{cutoff_ms}-0", approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            if self._swept:
                self._written_to |= keys
            log.info(
                "audit: trimming by age failed (%s); retried in a minute", redis_error_text(exc)
            )
            return
        self._swept = True


def _group(observed: Observed) -> int:
    """The slot group whose stream keeps a decision: its number's (also for a number
    refused before Redis, e.g. by its type: ``why`` reads only that group), else 0."""
    pending = observed.evaluation.pending
    if isinstance(pending, Plan):
        return pending.check.number.group
    e164 = observed.decision.e164
    return observed.active.keyspace.number(e164).group if e164.startswith("+") else 0


def _stream_id(when: datetime | None, default: str, shift_s: float = 0.0) -> str:
    return default if when is None else f"{max(int((when.timestamp() + shift_s) * 1000), 0)}"


def _ts_ms(record: Mapping[str, str], default: float) -> float:
    """The decision time of ``record`` (ms), or ``default`` if it has none."""
    try:
        return int(record["ts"])
    except (KeyError, ValueError):
        return default


def _id_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def read_range(
    client: Any,
    namespace: str,
    since: datetime | None = None,
    until: datetime | None = None,
    reverse: bool = False,
    limit: int | None = None,
    groups: Sequence[int] | None = None,
    read_wait: ReadWait = contextlib.nullcontext,
) -> AsyncIterator[dict[str, str]]:
    """Records of decisions made between ``since`` and ``until`` (their ``ts``; the
    entries written up to ``LATE_S`` after ``until`` are read for them) of every group
    stream (or of ``groups``), merged in the order they were written, oldest first unless
    ``reverse``. Each record has its stream ``id``. Memory is bounded: a few entries per
    stream are read ahead. Each read runs inside ``read_wait()`` (its bound)."""
    keyspace = Keyspace(namespace, None)
    keys = [keyspace.audit_key(g) for g in (range(SLOT_GROUPS) if groups is None else groups)]
    low, high = _stream_id(since, "-", -SKEW_S), _stream_id(until, "+", LATE_S)
    since_ms = -math.inf if since is None else since.timestamp() * 1000
    until_ms = math.inf if until is None else until.timestamp() * 1000
    bounds = [(low, high) for _ in keys]
    buffers: list[deque[tuple[bytes, Any]]] = [deque() for _ in keys]
    done = [False] * len(keys)

    async def read(indexes: Sequence[int], count: int) -> None:
        async with read_wait(), client.pipeline(transaction=False) as pipe:
            for i in indexes:
                lo, hi = bounds[i]
                if reverse:
                    pipe.xrevrange(keys[i], max=hi, min=lo, count=count)
                else:
                    pipe.xrange(keys[i], min=lo, max=hi, count=count)
            replies = await pipe.execute()
        for i, batch in zip(indexes, replies, strict=True):
            buffers[i].extend(batch)
            if len(batch) < count:
                done[i] = True
            elif batch:
                last = "(" + batch[-1][0].decode()
                bounds[i] = (bounds[i][0], last) if reverse else (last, bounds[i][1])

    await read(range(len(keys)), _FIRST_READ)
    sign = -1 if reverse else 1
    heap: list[tuple[int, int, int, int]] = []
    for i, buffer in enumerate(buffers):
        if buffer:
            ms, seq = _id_order(buffer[0][0])
            heapq.heappush(heap, (sign * ms, sign * seq, sign * i, i))
    given = 0
    for _ in range(10**12):  # bounded by the streams: each turn takes one entry off
        if not heap or (limit is not None and given >= limit):
            return
        *_, i = heapq.heappop(heap)
        entry_id, fields = buffers[i].popleft()
        record = _record(entry_id, fields)
        if since_ms <= _ts_ms(record, _id_order(entry_id)[0]) <= until_ms:
            given += 1
            yield record
        if not buffers[i] and not done[i]:
            await read([i], _NEXT_READ)
        if buffers[i]:
            ms, seq = _id_order(buffers[i][0][0])
            heapq.heappush(heap, (sign * ms, sign * seq, sign * i, i))


class Follower:
    """New records of every group stream as they are appended (``audit tail -f``); each
    read (one pipelined round trip) runs inside ``read_wait()`` (its bound)."""

    def __init__(
        self, client: Any, namespace: str, read_wait: ReadWait = contextlib.nullcontext
    ) -> None:
        self._client = client
        self._read_wait = read_wait
        keyspace = Keyspace(namespace, None)
        self._keys = [keyspace.audit_key(g) for g in range(SLOT_GROUPS)]
        self._after: list[str] = []

    async def start(self) -> None:
        """From now on: remember the last entry of each stream."""
        async with self._read_wait(), self._client.pipeline(transaction=False) as pipe:
            for key in self._keys:
                pipe.xrevrange(key, count=1)
            replies = await pipe.execute()
        self._after = [batch[0][0].decode() if batch else "0-0" for batch in replies]

    async def poll(self, wait_s: float = 5.0) -> list[dict[str, str]]:
        """Records appended since the last poll, in time order, waiting up to ``wait_s``."""
        for _ in range(max(1, int(wait_s / _POLL_S))):
            async with self._read_wait(), self._client.pipeline(transaction=False) as pipe:
                for key, after in zip(self._keys, self._after, strict=True):
                    pipe.xrange(key, min="(" + after, max="+", count=BATCH)
                replies = await pipe.execute()
            found: list[tuple[tuple[int, int], int, bytes, Any]] = []
            for i, batch in enumerate(replies):
                for entry_id, fields in batch:
                    found.append((_id_order(entry_id), i, entry_id, fields))
                if batch:
                    self._after[i] = batch[-1][0].decode()
            if found:
                found.sort(key=lambda item: (item[0], item[1]))
                return [_record(entry_id, fields) for _, _, entry_id, fields in found]
            await asyncio.sleep(_POLL_S)
        return []


def _record(entry_id: bytes, fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """One stream entry as a record: its ``id``, then its fields (concluded again from the
    checks and what they saw when the decision script wrote it). An entry callgate did not
    write (by hand, another tool) is never dropped nor an error: its fields as they are,
    and, when it has no time as callgate writes one, ``reason`` ``unreadable_entry`` and the
    time of its id."""
    record = {"id": entry_id.decode()}
    head, seen = fields.get(b"h"), fields.get(b"r")
    if head is not None and seen is not None and len(fields) == 2:
        try:
            record.update(stored_record(json.loads(head), seen.decode()))
            return record
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            pass  # not as decide.lua writes it (JSON and UTF-8 errors are ValueErrors; "inf"
            # where a number is: OverflowError)
    record.update(
        {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    )
    ts = record.get("ts", "")
    if not ts.isdigit() or len(ts) > 13:  # callgate's own (operations too) have a time
        record.update(ts=str(_id_order(entry_id)[0]), reason="unreadable_entry")
    return record
