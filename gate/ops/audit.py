"""The audit trail: every decision that lets a call go or stops it, kept as evidence.

Each decision of a door (FastAGI, Stasis, API with recording, ``check --record``) becomes
one entry of a Redis Stream ``{<namespace>}:audit``: time, verdict, reason, rule, door,
tenant, campaign, trunk, traffic class, the number (its keyed hash unless numbers are
stored plain), caller ID, channel, the config version, the rule packs and the list
versions consulted, the counters seen, the shadow reasons, and the decision's latency.

Guarantees:
- A recorded decision that Redis answers is written by the decision script itself, in the
  same atomic call that counts it (gate/core/evidence.py, decide.lua): no evidence waits in
  memory, and an entry exists exactly when the counters moved. Such an entry is one field
  ``e`` holding the record as JSON; the readers here return both kinds alike.
- ``AuditLog`` keeps only the others (emergency, invalid number, number type, fail mode):
  appending never adds a round trip: ``AuditLog.append`` only queues the record; a
  background writer sends queued records in pipelined batches (every ``FLUSH_S`` or
  ``BATCH`` records), trimming the stream by length (``MAXLEN ~``) and, once a minute,
  by age and length (``XTRIM MINID ~``, ``XTRIM MAXLEN ~``).
- Nothing is lost silently: while Redis is unreachable records wait in memory (at most
  ``QUEUE_MAX``); past that the oldest are dropped and the count is logged once per
  incident and kept in ``dropped``. ``close()`` flushes what is queued.
- Reading (``tail``, ``export``, ``why``) streams the stream in batches: constant memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from gate.service import Observed

__all__ = ["FIELDS", "AuditLog", "follow", "read_range", "stream_key"]

log = logging.getLogger("callgate.audit")

BATCH = 500
FLUSH_S = 0.05
QUEUE_MAX = 200_000
TRIM_EVERY_S = 60.0


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
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._last_trim = 0.0
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="callgate-audit")

    def decided(self, observed: Observed) -> None:
        """A decision observer: keep the evidence of every recorded decision that the
        decision script did not write itself (emergency, invalid, number type, fail mode)."""
        if not observed.record or observed.evidence_stored:
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

    async def close(self) -> None:
        """Stop the writer and flush what is queued (bounded by a few seconds)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while self._queue and await self._flush():
                    pass
        if self._queue:
            log.warning("audit: %d records could not be written before exit", len(self._queue))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_S):
                    await self._wake.wait()
            self._wake.clear()
            if not await self._flush():
                await asyncio.sleep(1.0)  # Redis unreachable: retry, records stay queued
            await self._trim()

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
        with contextlib.suppress(RedisError, OSError):
            await self._client.xtrim(self.key, minid=f"{cutoff_ms}-0", approximate=True)
            # Entries written by the decision script are trimmed by age only.
            await self._client.xtrim(self.key, maxlen=self.settings.max_len, approximate=True)


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
            yield _record(entry_id, fields)
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
            records.append(_record(entry_id, fields))
    return records


def _record(entry_id: bytes, fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """One stream entry as a record: its ``id``, then its fields (decoded from JSON when
    the decision script wrote it)."""
    record = {"id": entry_id.decode()}
    stored = fields.get(b"e")
    if stored is not None and len(fields) == 1:
        values = json.loads(stored)
        record.update({name: str(values.get(name, "")) for name in FIELDS})
    else:
        record.update({k.decode(): v.decode() for k, v in fields.items()})
    return record
