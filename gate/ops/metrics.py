"""Prometheus metrics of a running gate, on its own registry (served at ``/metrics``).

What is measured (names as exposed):

- ``callgate_decisions_total{verdict,reason,door,tenant}``: every decision of this
  process. ``door`` is ``agi``, ``stasis``, ``api`` or ``scrub`` (API batch scrubs,
  evaluate only); a ``callgate check`` runs in its own process and is not counted here.
- ``callgate_decision_in_process_seconds`` / ``callgate_decision_redis_seconds``: latency
  histograms; the Redis part is the one store call, the rest is callgate's own time.
- ``callgate_redis_errors_total{kind}`` (``timeout``, ``unavailable``, ``error``) and
  ``callgate_fail_mode_decisions_total{verdict}``: decisions answered by the fail mode.
- ``callgate_ari_connected``, ``callgate_ari_reconnects_total``,
  ``callgate_agi_connections_total``, ``callgate_agi_connections_refused_total`` (peer not
  in ``agi.allow``), ``callgate_agi_requests_failed_total`` (Asterisk refused or garbled
  the answer), ``callgate_agi_requests_dropped_total`` (dropped before their headers were
  read whole: too long, stalled, reset), ``callgate_agi_connections_active``: read from the
  doors at scrape time.
- ``callgate_redis_node_info{mode,node}`` (the server, the Sentinel-managed master in use,
  or the cluster master that answered the last decision), ``callgate_redis_failovers_total``,
  ``callgate_redis_restarts_total`` (the embedded server's, by ``callgate run``) and
  ``callgate_redis_redirects_total{kind}`` (``moved``, ``ask``, ``tryagain``: cluster
  redirections followed): the Redis in use, read from the store at scrape time.
- ``callgate_list_entries{list,tenant}``, ``callgate_list_age_seconds{list,tenant}`` (since
  the list's last import), refreshed every ``http.list_refresh``.
- ``callgate_config_info{version}`` (1 for the version in force),
  ``callgate_config_reloads_total{result}``, ``callgate_build_info{version}``.

Guarantees: every label set is bounded, and carries only what the configuration names.
Reasons are stable codes built from config rule ids (any other, such as ``cps:`` of a
trunk the config does not name, is counted as ``<family>:other``); tenants are the
configured ones (with ``gate.open_tenants`` every other tenant is ``other``); no label
holds a number or a campaign. Recording a decision never raises and never awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gate import __version__
from gate.config.loader import Config
from gate.core.errors import GateError, StoreError, StoreTimeout, StoreUnavailable
from gate.core.numbers import NumberType
from gate.core.policy import Policy
from gate.core.rules import ListRule
from gate.lists.admin import ListAdmin
from gate.service import Evaluation, Gate, Observed, cancelling, stop_task, wait_event
from gate.store.connect import LinkStatus

__all__ = [
    "CONTENT_TYPE",
    "AgiStats",
    "BoundedLabel",
    "ListRefresher",
    "Metrics",
    "StasisStats",
    "WorkersStats",
    "counters_only",
    "known_reasons",
    "merge_expositions",
    "refresh_lists",
]

log = logging.getLogger("callgate")

CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_LIST_SERIES = 100
STOP_WITHIN_S = 2.0
OTHER = "other"
# 100 µs … 2.5 s: a decision's own time is sub-millisecond, the Redis deadline is 50 ms.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    2.5,
)
_FIXED_REASONS = (
    "allowed",
    "emergency",
    "short_number",
    "invalid_number",
    "store_unavailable",
    "caller_id:masked",
    "caller_id:invalid",
    "caller_id:forbidden_range",
    "caller_id:not_authorised",
)


class BoundedLabel:
    """Maps values to at most ``limit`` distinct label values, plus an overflow value.

    ``known`` values always keep their own label; others are taken first come, first
    served until the limit, then mapped to ``<family>:other`` (``family`` is the text
    before the first ``:``) or ``other``.
    """

    def __init__(self, limit: int, known: Iterable[str] = ()) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self.allow(known)

    def allow(self, known: Iterable[str]) -> None:
        self._seen.update(known)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        family, sep, _ = value.partition(":")
        return f"{family}:{OTHER}" if sep else OTHER


def known_reasons(policy: Policy) -> set[str]:
    """The reason codes ``policy`` can produce (``cps:<trunk>`` for configured trunks only)."""
    reasons = set(_FIXED_REASONS)
    reasons.update(f"number_type:{t.value}" for t in NumberType)
    lists = (*policy.lists, *(r for pack in policy.packs for r in pack.lists))
    reasons.update(f"listed:{rule.name}" for rule in lists)
    reasons.update(
        f"cap:{cap.id}" for cap in (*policy.caps, *(c for p in policy.packs for c in p.caps))
    )
    reasons.update(f"cps:{trunk}" for trunk in policy.trunk_cps)
    for pack in policy.packs:
        reasons.update(f"outside_hours:{rule.id}" for rule in pack.hours)
        reasons.update(f"no_consent:{rule.id}" for rule in pack.consents)
        # A consent's reassigned-number check refuses under the consent's id too.
        reasons.update(f"reassigned:{rule.id}" for rule in pack.consents)
        reasons.update(f"abandon_rate:{rule.id}" for rule in pack.abandon_ceilings)
        reasons.update(f"stale_list:{rule.list}" for rule in pack.freshness)
        reasons.update(f"{rule.event}:{rule.id}" for rule in pack.cooloffs)
        reasons.update(f"number_type:{rule.id}" for rule in pack.destinations)
    return reasons


def _tenants(config: Config) -> set[str]:
    return {config.default_tenant, *config.policy.tenants}


def _error_kind(error: StoreError) -> str:
    if isinstance(error, StoreTimeout):
        return "timeout"
    if isinstance(error, StoreUnavailable):
        return "unavailable"
    return "error"


class AgiStats(Protocol):
    """What the FastAGI server exposes (agi.server.AgiServer)."""

    @property
    def accepted(self) -> int: ...

    @property
    def refused(self) -> int: ...

    @property
    def failed(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def active(self) -> int: ...


class StasisStats(Protocol):
    """What the Stasis door exposes (gate.stasis.StasisGate)."""

    connected: asyncio.Event
    reconnects: int


class WorkersStats(Protocol):
    """What the parent of ``callgate run --workers N`` exposes (gate.runtime.Workers)."""

    restarts: int

    def problems(self) -> list[str]: ...


class StoreStats(Protocol):
    """What the store exposes (gate.store.client.Store)."""

    @property
    def status(self) -> LinkStatus: ...

    @property
    def redirects(self) -> Mapping[str, int]: ...


class _Doors(Collector):
    """Door state read at scrape time (no hook on the doors' hot paths)."""

    def __init__(self) -> None:
        self.agi: AgiStats | None = None
        self.stasis: StasisStats | None = None

    def collect(self) -> Iterator[Metric]:
        if self.agi is not None:
            yield CounterMetricFamily(
                "callgate_agi_connections",
                "FastAGI connections accepted.",
                value=float(self.agi.accepted),
            )
            yield CounterMetricFamily(
                "callgate_agi_connections_refused",
                "FastAGI connections closed unserved: the peer is not in agi.allow.",
                value=float(self.agi.refused),
            )
            yield CounterMetricFamily(
                "callgate_agi_requests_failed",
                "FastAGI requests whose answer Asterisk refused (not 200) or garbled.",
                value=float(self.agi.failed),
            )
            yield CounterMetricFamily(
                "callgate_agi_requests_dropped",
                "FastAGI requests dropped before their headers were read whole (too long, "
                "stalled, reset).",
                value=float(self.agi.dropped),
            )
            yield GaugeMetricFamily(
                "callgate_agi_connections_active",
                "FastAGI connections being served.",
                value=float(self.agi.active),
            )
        if self.stasis is not None:
            yield GaugeMetricFamily(
                "callgate_ari_connected",
                "1 while the Stasis application is connected to ARI.",
                value=1.0 if self.stasis.connected.is_set() else 0.0,
            )
            yield CounterMetricFamily(
                "callgate_ari_reconnects",
                "ARI reconnections after a lost connection.",
                value=float(self.stasis.reconnects),
            )


class _Redis(Collector):
    """Which Redis answers, how often it changed and the cluster redirections followed,
    read from the store at scrape time."""

    def __init__(self) -> None:
        self.store: StoreStats | None = None

    def collect(self) -> Iterator[Metric]:
        if self.store is None:
            return
        status = self.store.status
        info = GaugeMetricFamily(
            "callgate_redis_node_info",
            "The Redis node decisions go to (the master in use; in a cluster, the master "
            "that answered the last decision), by mode.",
            labels=["mode", "node"],
        )
        info.add_metric([status.mode, status.node or "unknown"], 1.0)
        yield info
        yield CounterMetricFamily(
            "callgate_redis_failovers",
            "Changes of Redis master followed (modes sentinel and cluster).",
            value=float(status.failovers),
        )
        yield CounterMetricFamily(
            "callgate_redis_restarts",
            "Restarts of the embedded Redis by callgate run.",
            value=float(status.restarts),
        )
        redirects = CounterMetricFamily(
            "callgate_redis_redirects",
            "Redis Cluster redirections followed (MOVED, ASK, TRYAGAIN).",
            labels=["kind"],
        )
        for kind in ("moved", "ask", "tryagain"):
            redirects.add_metric([kind], float(self.store.redirects.get(kind, 0)))
        yield redirects


class Metrics:
    """The gate's metrics; a ``DecisionObserver`` for ``Gate.observer``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.decisions = Counter(
            "callgate_decisions",
            "Decisions by verdict, reason code, door and tenant.",
            ["verdict", "reason", "door", "tenant"],
            registry=reg,
        )
        self.in_process_s = Histogram(
            "callgate_decision_in_process_seconds",
            "Time a decision spends in callgate itself (parsing, rules), without Redis.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.redis_s = Histogram(
            "callgate_decision_redis_seconds",
            "Time of a decision's one Redis call (decisions that need Redis only).",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.redis_errors = Counter(
            "callgate_redis_errors", "Failed Redis calls by kind.", ["kind"], registry=reg
        )
        self.fail_mode = Counter(
            "callgate_fail_mode_decisions",
            "Decisions answered by the fail mode (Redis down or too slow).",
            ["verdict"],
            registry=reg,
        )
        self.config_info = Gauge(
            "callgate_config_info", "The configuration version in force.", ["version"], registry=reg
        )
        self.reloads = Counter(
            "callgate_config_reloads", "Reloads by result (ok, error).", ["result"], registry=reg
        )
        self.list_entries = Gauge(
            "callgate_list_entries", "Entries per list.", ["list", "tenant"], registry=reg
        )
        self.list_age_s = Gauge(
            "callgate_list_age_seconds",
            "Seconds since the list was last imported (lists with an import date only).",
            ["list", "tenant"],
            registry=reg,
        )
        Gauge("callgate_build_info", "callgate version.", ["version"], registry=reg).labels(
            __version__
        ).set(1)
        self.doors = _Doors()
        reg.register(self.doors)
        self.redis = _Redis()
        reg.register(self.redis)
        # Only values the configuration names get a series of their own: a tenant, trunk
        # or anything else a caller made up (a phone number typed into the tenant field)
        # is counted as "other" / "<family>:other", never as a label of its own.
        self.reasons = BoundedLabel(0, _FIXED_REASONS)
        self.tenants = BoundedLabel(0)
        # With ``callgate run --workers N``: the expositions of the worker processes, added
        # to this process's own at every scrape (None: a single process).
        self.workers: Callable[[], list[str]] | None = None

    def use_config(self, config: Config, version: str) -> None:
        """Label sets and the version gauge for the configuration now in force."""
        self.reasons.allow(known_reasons(config.policy))
        self.tenants.allow(_tenants(config))
        self.config_info.clear()
        self.config_info.labels(version or "none").set(1)

    def reload_result(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def decided(self, observed: Observed) -> None:
        decision = observed.decision
        self.decisions.labels(
            decision.verdict.value,
            self.reasons(decision.reason),
            observed.door,
            self.tenants(observed.attempt.tenant),
        ).inc()
        self.in_process_s.observe(observed.timing.process_s)
        if observed.timing.store_s:
            self.redis_s.observe(observed.timing.store_s)
        if decision.reason == "store_unavailable":
            self.fail_mode.labels(decision.verdict.value).inc()

    def undone(self, evaluation: Evaluation) -> None:
        """Nothing to take back: the decision was made (``callgate_decisions_total``)."""

    def store_failed(self, error: StoreError) -> None:
        self.redis_errors.labels(_error_kind(error)).inc()

    def exposition(self) -> bytes:
        """The text format for ``/metrics`` (with the workers' samples added in)."""
        own = generate_latest(self.registry)
        if self.workers is None:
            return own
        return merge_expositions([own.decode(), *self.workers()])


# Gauges that every process reports alike: merged by taking the largest value, not the sum.
_SAME_IN_EVERY_PROCESS = frozenset({"callgate_config_info", "callgate_build_info"})


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(texts: Iterable[str]) -> bytes:
    """One exposition for several processes' (``callgate run --workers N``): each sample
    is the sum over the processes (counters, histograms, gauges such as active
    connections or ``callgate_ari_connected``, which only the Stasis leader sets), except
    the config and build info gauges, the same in every process, whose largest is kept."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type
                )
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif family.name in _SAME_IN_EVERY_PROCESS:
                    samples[key] = max(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


# Families that only ever grow while a process runs (a counter, a histogram's buckets,
# count and sum): what a dead worker counted stays in the parent's sum (``counters_only``).
_CUMULATIVE = frozenset({"counter", "histogram", "summary"})


def counters_only(text: str) -> str:
    """The counters, histograms and summaries of the exposition ``text``, without its
    gauges (``callgate run --workers N``: the last counts of a worker that died, which the
    parent keeps adding to the sum so that no counter goes backwards)."""
    kept = [family for family in text_string_to_metric_families(text) if family.type in _CUMULATIVE]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(kept))
    return generate_latest(registry).decode()


async def _list_values(gate: Gate) -> list[tuple[str, str, float, float | None]]:
    """(list, tenant, entries, age_s) of the global and per-tenant lists (bounded)."""
    config = gate.config
    admin = ListAdmin.of(gate)
    policy = config.policy
    tenants = sorted(_tenants(config))
    # Each name as the list commands read it (``Policy.list_rule``: the config's, else the
    # first pack's): the last definition's scope would label a global list's count with
    # every tenant, or one tenant's as the global list's.
    rules: dict[str, ListRule] = {}
    for rule in (*policy.lists, *(r for p in policy.packs for r in p.lists)):
        rules.setdefault(rule.name, rule)
    now_ms = time.time() * 1000
    values: list[tuple[str, str, float, float | None]] = []
    for rule in rules.values():
        if rule.scope == "campaign":
            continue  # campaigns come and go: no bounded set to report on
        for tenant in ("",) if rule.scope == "global" else tenants:
            if len(values) >= MAX_LIST_SERIES:
                return values
            info = await admin.info(rule.name, tenant or config.default_tenant, "")
            refreshed = str(info.get("refreshed_at", ""))
            age_s = max(0.0, (now_ms - int(refreshed)) / 1000) if refreshed.isdigit() else None
            values.append((rule.name, tenant, float(info.get("entries", 0) or 0), age_s))
    return values


async def refresh_lists(metrics: Metrics, gate: Gate) -> None:
    """Re-read list sizes and ages; the gauges change in one step (no partial scrape)."""
    values = await _list_values(gate)
    metrics.list_entries.clear()
    metrics.list_age_s.clear()
    for name, tenant, entries, age_s in values:
        metrics.list_entries.labels(name, tenant).set(entries)
        if age_s is not None:
            metrics.list_age_s.labels(name, tenant).set(age_s)


class ListRefresher:
    """Re-reads list sizes and ages every ``every_s`` until ``close()``.

    A failed refresh (Redis down, or a bug) is logged once per incident and retried at the
    next period. ``close()`` sets the stop event and waits at most ``within_s`` (a refresh
    stuck on a hung Redis is then cancelled, logged); a cancel is never taken for a
    failure.
    """

    def __init__(self, metrics: Metrics, gate: Gate, every_s: float) -> None:
        self.metrics = metrics
        self.gate = gate
        self.every_s = every_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="callgate-list-metrics")

    async def close(self, within_s: float = STOP_WITHIN_S) -> None:
        if self._task is not None:
            self._stop.set()
            await stop_task(self._task, within_s, "the list metrics refresher")
            self._task = None

    async def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                await refresh_lists(self.metrics, self.gate)
                failing = False
            except Exception as exc:  # Redis down, or a bug: the gauges keep their values
                if cancelling():
                    raise asyncio.CancelledError from exc
                if not failing:
                    log.warning(
                        "list metrics not refreshed: %s",
                        exc,
                        exc_info=None if isinstance(exc, GateError) else exc,
                    )
                failing = True
            await wait_event(self._stop, self.every_s)
