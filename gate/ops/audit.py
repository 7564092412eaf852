"""The audit trail: every decision that lets a call go or stops it, kept as evidence.

Each decision of a door (FastAGI, Stasis, API with recording, ``check --record``) becomes
one entry of a Redis Stream ``{<namespace>}:audit``: time, verdict, reason, rule, door,
tenant, campaign, trunk, traffic class, the number (its keyed hash unless numbers are
stored plain), caller ID, channel, the config version, the rule packs and the list
versions consulted, the counters seen, the shadow reasons, and the decision's latency
(in-process and Redis time).

Guarantees:
- Appending never adds a round trip to a decision: ``AuditLog.append`` only queues the
  record; a background writer sends queued records in pipelined batches (every
  ``FLUSH_S`` or ``BATCH`` records), trimming the stream by length (``MAXLEN ~``) and,
  once a minute, by age (``XTRIM MINID ~``).
- Nothing is lost silently: while Redis is unreachable records wait in memory (at most
  ``QUEUE_MAX``); past that the oldest are dropped and the count is logged once per
  incident and kept in ``dropped``. ``close()`` flushes what is queued.
- Stopping never hangs: the writer stops on an explicit event; ``close()`` waits for it
  at most ``within_s`` (then cancels it, logged), and flushes for at most
  ``FINAL_FLUSH_S`` (then gives up, logged, counting what is left). A cancel is never
  swallowed: a Redis error caught while the writer is being cancelled is re-raised as
  the cancel. ``start()`` after ``close()`` starts a new writer.
- Reading (``tail``, ``export``, ``why``) streams the stream in batches: constant memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gate.config.loader import AuditConfig
from gate.core.errors import StoreError
from gate.core.evidence import FIELDS, audit_record
from gate.service import Observed, cancelling, stop_task, wait_event

__all__ = ["FIELDS", "AuditLog", "follow", "read_range", "stream_key"]

log = logging.getLogger("callgate.audit")

BATCH = 500
FLUSH_S = 0.05
QUEUE_MAX = 200_000
TRIM_EVERY_S = 60.0
STOP_WITHIN_S = 2.0  # the writer sees its stop event within FLUSH_S unless Redis hangs
FINAL_FLUSH_S = 5.0


def stream_key(namespace: str) -> str:
    return "{" + namespace + "}:audit"


class AuditLog:
    """Queues audit records and writes them in the background."""

    def __init__(self, client: aioredis.Redis, namespace: str, settings: AuditConfig) -> None:
        self._client = client
        self.key = stream_key(namespace)
        self.settings = settings
        self._queue: deque[Mapping[str, str]] = deque()
        self._wake = asyncio.Event()
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
        """A decision observer: keep the evidence of every recorded decision."""
        if not observed.record:
            return
        active = observed.active
        evaluation = observed.evaluation
        self.append(
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
            )
        )

    def store_failed(self, error: StoreError) -> None:
        """Nothing to keep: the decision itself (fail mode) is kept by ``decided``."""

    def append(self, record: Mapping[str, str]) -> None:
        """Queue one record (never blocks, never raises)."""
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(record)
        if len(self._queue) >= BATCH:
            self._wake.set()

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
        if self._queue:
            flush = asyncio.create_task(self._flush_all(), name="callgate-audit-flush")
            await stop_task(flush, flush_within_s, "the audit flush")
        if self._queue:
            log.warning("audit: %d records could not be written before exit", len(self._queue))

    async def _flush_all(self) -> None:
        while self._queue and await self._flush():
            pass

    async def _run(self) -> None:
        """Trim (once a minute), write what is queued, sleep until a batch is full or
        ``FLUSH_S`` passed; until the stop event."""
        while not self._stop.is_set():
            await self._trim()
            if not await self._flush():
                await wait_event(self._stop, 1.0)  # Redis unreachable: records stay queued
                continue
            await wait_event(self._wake, FLUSH_S)
            self._wake.clear()

    async def _flush(self) -> bool:
        """Write up to BATCH records; False if Redis failed (they stay queued)."""
        if not self._queue:
            return True
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for record in batch:
                    fields: dict[Any, Any] = dict(record)
                    pipe.xadd(self.key, fields, maxlen=self.settings.max_len, approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            if not self._failing:
                log.warning(
                    "audit: cannot write to Redis (%s); %d records queued", exc, len(self._queue)
                )
            self._failing = True
            return False
        for _ in batch:
            self._queue.popleft()
        self.written += len(batch)
        if self._failing:
            log.info("audit: writing again (%d records were dropped meanwhile)", self.dropped)
            self._failing = False
        return True

    async def _trim(self) -> None:
        now = time.time()
        if now - self._last_trim < TRIM_EVERY_S:
            return
        self._last_trim = now
        cutoff_ms = int((now - self.settings.max_age_s) * 1000)
        try:
            await self._client.xtrim(self.key, minid=f"{cutoff_ms}-0", approximate=True)
        except (RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.info("audit: trimming by age failed (%s); retried in a minute", exc)


def _stream_id(when: datetime | None, default: str) -> str:
    return default if when is None else f"{int(when.timestamp() * 1000)}"


async def read_range(
    client: aioredis.Redis,
    namespace: str,
    since: datetime | None = None,
    until: datetime | None = None,
    reverse: bool = False,
    limit: int | None = None,
) -> AsyncIterator[dict[str, str]]:
    """Records between ``since`` and ``until`` (stream time), in batches; oldest first
    unless ``reverse``. Each record has its stream ``id``."""
    key = stream_key(namespace)
    low, high = _stream_id(since, "-"), _stream_id(until, "+")
    given = 0
    for _ in range(10**9):  # bounded by the stream: each batch moves the cursor on
        count = BATCH if limit is None else min(BATCH, limit - given)
        if count <= 0:
            return
        batch: Any
        if reverse:
            batch = await client.xrevrange(key, max=high, min=low, count=count)
        else:
            batch = await client.xrange(key, min=low, max=high, count=count)
        if not batch:
            return
        for entry_id, fields in batch:
            record: dict[str, Any] = {"id": entry_id.decode()}
            record.update({k.decode(): v.decode() for k, v in fields.items()})
            yield record
            given += 1
        last = batch[-1][0].decode()
        if len(batch) < count:
            return
        if reverse:
            high = "(" + last
        else:
            low = "(" + last


async def follow(client: aioredis.Redis, namespace: str, after: str) -> list[dict[str, str]]:
    """Records appended after stream id ``after`` ("$": from now), waiting up to 5 s."""
    reply: Any = await client.xread({stream_key(namespace): after}, block=5000, count=BATCH)
    records = []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            record = {"id": entry_id.decode()}
            record.update({k.decode(): v.decode() for k, v in fields.items()})
            records.append(record)
    return records
