"""What the console's Live page shows: decision rates over the last hour, the doors'
health, and the decisions themselves as they happen.

``LiveSampler`` reads the gate's own metrics (gate/ops/metrics.py: with ``run --workers N``,
the sum over the workers) every ``step_s`` and keeps one hour of samples, so the charts cost
nothing per call and nothing in Redis: ``GET /v1/live`` turns the counters' differences
into decisions per second by verdict and by reason (every door but ``scrub``, whose
evaluations place no call), and adds the doors' health: the FastAGI door, the Stasis
application's connection, a PING's round trip and the mean Redis time of a decision over
the last minute, and the answers the fail mode gave.

``AuditFeed`` follows the audit trail (gate/ops/audit.py's reader, never a key name) for
the Server-Sent Events of ``GET /v1/audit/follow``: one reader however many browsers
watch, started with the first and stopped with the last; each browser gets the last
``RECENT`` records, then every new one (a browser too slow to keep up loses the oldest
of its backlog, never the stream).

A stopped, frozen or unreachable Redis never hangs a follower silently: the last records
are read within ``READ_WAIT_S`` (gate/store/client.py) or the request is 503; once
streaming, each read of the feed is bounded the same way, and when one fails (no answer
within the bound, or an error) every follower gets an ``unavailable`` event (its data
``{"error": "…"}``) once per incident. The stream stays open (a follow is a long poll:
no new decision is not a failure): the feed keeps trying every ``RETRY_S`` and the
decisions flow again once Redis answers; a comment line every ``KEEPALIVE_S`` still
finds a client gone.

Guarantees: both background tasks stop on an explicit event with a bounded ``close()``
(a Redis read stuck past the bound is cancelled, logged); a Redis failure is logged once
per incident and retried; a cancel is never taken for a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from gate.core.errors import StoreError
from gate.ops.audit import Follower, read_range
from gate.ops.metrics import Metrics
from gate.ops.models import AuditRecord, DoorsOut, LiveOut, SeriesOut, audit_record, json_of
from gate.service import Gate, cancelling, stop_task, wait_event
from gate.store.client import translate_error

__all__ = ["AuditFeed", "LiveSampler", "follow_events"]

log = logging.getLogger("callgate.http")

STEP_S = 10.0
SPAN_S = 3600.0
MAX_REASONS = 8
STOP_WITHIN_S = 2.0
RECENT = 50
QUEUE_MAX = 500
KEEPALIVE_S = 15.0
RETRY_S = 1.0
_NOT_CALLS = frozenset({"scrub"})
# What a follower's queue carries: a record, the feed's failure to read Redis, or the end.
_Item = AuditRecord | StoreError | None


@dataclass(slots=True)
class _Sample:
    """The counters at one instant."""

    at: float  # time.time()
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    fail_mode: float = 0.0
    redis_sum_s: float = 0.0
    redis_count: float = 0.0
    values: dict[str, float] = field(default_factory=dict)  # door gauges and counters


_DOOR_SAMPLES = (
    "callgate_agi_connections_total",
    "callgate_agi_connections_active",
    "callgate_agi_requests_failed_total",
    "callgate_ari_connected",
    "callgate_ari_reconnects_total",
)


def _sample(text: str, at: float) -> _Sample:
    sample = _Sample(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "callgate_decisions_total":
                if s.labels.get("door") in _NOT_CALLS:
                    continue
                sample.verdicts[s.labels.get("verdict", "")] += int(s.value)
                sample.reasons[s.labels.get("reason", "")] += int(s.value)
            elif s.name == "callgate_fail_mode_decisions_total":
                sample.fail_mode += s.value
            elif s.name == "callgate_decision_redis_seconds_sum":
                sample.redis_sum_s += s.value
            elif s.name == "callgate_decision_redis_seconds_count":
                sample.redis_count += s.value
            elif s.name in _DOOR_SAMPLES:
                sample.values[s.name] = sample.values.get(s.name, 0.0) + s.value
    return sample


class LiveSampler:
    """Samples the gate's metrics every ``step_s`` and keeps the last hour."""

    def __init__(self, metrics: Metrics, gate: Gate, step_s: float = STEP_S) -> None:
        self.metrics = metrics
        self.gate = gate
        self.step_s = step_s
        self.started = time.monotonic()
        self._samples: deque[_Sample] = deque(maxlen=int(SPAN_S / step_s) + 1)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ping_ms: float | None = None
        self.redis_error: str | None = None

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="callgate-live")

    async def close(self, within_s: float = STOP_WITHIN_S) -> None:
        if self._task is not None:
            self._stop.set()
            await stop_task(self._task, within_s, "the live sampler")
            self._task = None

    async def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                await self.sample()
                failing = False
            except Exception as exc:  # a bug: logged once, the page keeps its last data
                if cancelling():
                    raise asyncio.CancelledError from exc
                if not failing:
                    log.warning("live sampler: %s", exc, exc_info=exc)
                failing = True
            await wait_event(self._stop, self.step_s)

    async def sample(self) -> None:
        """Take one sample of the metrics, and time one PING."""
        self._samples.append(_sample(self.metrics.exposition().decode(), time.time()))
        started = time.perf_counter()
        try:
            await self.gate.store.ping()
        except StoreError as exc:
            self.ping_ms, self.redis_error = None, str(exc)
        else:
            self.ping_ms = round((time.perf_counter() - started) * 1000, 3)
            self.redis_error = None

    def series(self) -> SeriesOut:
        samples = list(self._samples)
        verdicts: dict[str, list[float]] = {"ALLOW": [], "BLOCK": [], "DEFER": []}
        reasons: dict[str, list[float]] = {}
        totals: Counter[str] = Counter()
        for before, after in itertools.pairwise(samples):
            for reason, count in after.reasons.items():
                totals[reason] += max(0, count - before.reasons.get(reason, 0))
        busiest = [r for r, n in totals.most_common() if n and r != "allowed"][:MAX_REASONS]
        for reason in busiest:
            reasons[reason] = []
        for before, after in itertools.pairwise(samples):
            span = max(after.at - before.at, 1e-6)
            for verdict, values in verdicts.items():
                delta = after.verdicts.get(verdict, 0) - before.verdicts.get(verdict, 0)
                values.append(round(max(0, delta) / span, 3))
            for reason, values in reasons.items():
                delta = after.reasons.get(reason, 0) - before.reasons.get(reason, 0)
                values.append(round(max(0, delta) / span, 3))
        start = datetime.fromtimestamp(samples[1].at, UTC) if len(samples) > 1 else None
        return SeriesOut(start=start, step_s=self.step_s, verdicts=verdicts, reasons=reasons)

    def doors(self) -> DoorsOut:
        samples = list(self._samples)
        last = samples[-1] if samples else _Sample(time.time())
        values = last.values
        minute_ago = next((s for s in samples if last.at - s.at <= 60.0), last)
        count = last.redis_count - minute_ago.redis_count
        mean_ms = (last.redis_sum_s - minute_ago.redis_sum_s) / count * 1000 if count > 0 else None
        first = samples[0] if samples else last
        ari = values.get("callgate_ari_connected")
        return DoorsOut(
            agi="callgate_agi_connections_total" in values,
            agi_active=int(values.get("callgate_agi_connections_active", 0)),
            agi_connections=int(values.get("callgate_agi_connections_total", 0)),
            agi_failed=int(values.get("callgate_agi_requests_failed_total", 0)),
            stasis=None if ari is None else ari > 0,
            stasis_reconnects=(
                None if ari is None else int(values.get("callgate_ari_reconnects_total", 0))
            ),
            redis=self.redis_error is None and self.ping_ms is not None,
            redis_ping_ms=self.ping_ms,
            redis_decision_ms=None if mean_ms is None else round(mean_ms, 3),
            redis_error=self.redis_error,
            fail_mode_total=int(last.fail_mode),
            fail_mode_last_hour=int(max(0.0, last.fail_mode - first.fail_mode)),
        )

    def live(self) -> LiveOut:
        return LiveOut(
            now=datetime.now(UTC),
            config_version=self.gate.version,
            uptime_s=round(time.monotonic() - self.started, 3),
            series=self.series(),
            doors=self.doors(),
        )


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


class AuditFeed:
    """One reader of the audit trail, fanned out to every browser that follows it."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._queues: set[asyncio.Queue[_Item]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    async def recent(self, count: int = RECENT) -> list[AuditRecord]:
        """The last ``count`` records, oldest first (``StoreError`` if Redis fails or does
        not answer within ``READ_WAIT_S``)."""
        store = self.gate.store
        namespace = self.gate.config.redis.namespace
        try:
            async with store.answer_within():
                records = read_range(store.admin_client, namespace, reverse=True, limit=count)
                found = [r async for r in records]
        except (RedisError, OSError) as exc:
            raise translate_error(exc, store.where) from exc
        return [audit_record(r) for r in reversed(found)]

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[_Item]]:
        """A queue of new records (a ``StoreError``: the feed cannot read Redis; None: the
        server stops) while the context is open."""
        queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_MAX)
        self._queues.add(queue)
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="callgate-audit-feed")
        try:
            yield queue
        finally:
            self._queues.discard(queue)
            if not self._queues:
                await self._halt()

    async def _halt(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            self._stop.set()
            await stop_task(task, STOP_WITHIN_S, "the audit feed")

    async def close(self) -> None:
        """Stop the reader; every follower is told to end."""
        for queue in list(self._queues):
            self._offer(queue, None)
        await self._halt()

    @staticmethod
    async def _next(follower: Follower, started: bool) -> list[dict[str, str]]:
        """The records appended since the last call (the first call only marks where the
        feed starts: the last record of every group stream)."""
        if not started:
            await follower.start()
            return []
        return await follower.poll()

    def _offer(self, queue: asyncio.Queue[_Item], item: _Item) -> None:
        if queue.full():
            queue.get_nowait()
            self.dropped += 1
        queue.put_nowait(item)

    async def _run(self) -> None:
        store = self.gate.store
        follower = Follower(
            store.admin_client, self.gate.config.redis.namespace, store.answer_within
        )
        started = False  # the first read marks where the feed starts
        failing = False
        while not self._stop.is_set():
            reading = asyncio.ensure_future(self._next(follower, started))
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not reading.done():
                    reading.cancel()  # the server stops: the blocked read is abandoned
                    await asyncio.wait({reading}, timeout=STOP_WITHIN_S)
            if reading.cancelled():
                continue
            try:
                records = reading.result()
                started = True
            except (RedisError, OSError, StoreError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                if not failing:
                    log.warning("audit feed: cannot read the audit trail (%s); retrying", exc)
                    error = translate_error(exc, store.where)
                    for queue in list(self._queues):
                        self._offer(queue, error)
                failing = True
                await wait_event(self._stop, RETRY_S)
                continue
            if failing:
                log.info("audit feed: reading the audit trail again")
                failing = False
            for stored in records:
                record = audit_record(stored)
                for queue in list(self._queues):
                    self._offer(queue, record)


def _event(record: AuditRecord) -> bytes:
    return b"id: " + record.id.encode() + b"\nevent: decision\ndata: " + json_of(record) + b"\n\n"


def _unavailable(error: StoreError) -> bytes:
    return b"event: unavailable\ndata: " + json.dumps({"error": str(error)}).encode() + b"\n\n"


async def follow_events(
    request: web.Request, feed: AuditFeed, records: Iterable[AuditRecord] = ()
) -> web.StreamResponse:
    """Server-Sent Events: the last records, then each new one, until the client leaves or
    the server stops (a comment line every ``KEEPALIVE_S`` finds a client gone); an
    ``unavailable`` event when the feed cannot read Redis. The last records not read
    within ``READ_WAIT_S``: ``StoreError`` (503) before anything is sent."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a reverse proxy must not buffer the stream
        }
    )
    async with feed.subscribe() as queue:
        recent = [*records, *await feed.recent()]
        await response.prepare(request)
        if request.method == "HEAD":
            return response  # GET's status and headers; a stream without end has no body
        last = (0, 0)
        for record in recent:
            await response.write(_event(record))
            last = max(last, _order(record.id))
        try:
            for _ in range(10**12):  # bounded by the connection: the client or server ends it
                getter: Any = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=KEEPALIVE_S)
                if not done:
                    getter.cancel()
                    await response.write(b": keepalive\n\n")
                    continue
                record = getter.result()
                if record is None:
                    break
                if isinstance(record, StoreError):
                    await response.write(_unavailable(record))
                    continue
                if _order(record.id) <= last:
                    continue  # already sent with the recent ones
                await response.write(_event(record))
        except ConnectionError:
            pass  # the browser went away
    return response
