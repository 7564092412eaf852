"""Metrics and health over real HTTP (gate/metrics.py, gate/http.py), on the real Redis."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agi.server import AgiServer
from gate.core.model import Attempt, TrafficClass
from gate.lists.admin import ListAdmin
from gate.ops.metrics import BoundedLabel, Metrics
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import BASE_CONFIG, SAMPLE_CONFIG, make_config
from tests.ops.conftest import Served, labels, serve
from tests.packs.conftest import pack_config
from tests.test_run import agi_check

LISTED = "+33699001122"
UNLISTED = "+33612345678"


def attempt(number: str, tenant: str = "default", **kwargs: object) -> Attempt:
    return Attempt(number, datetime.now(UTC), tenant=tenant, **kwargs)  # type: ignore[arg-type]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def decisions(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[tuple[str, str, str, str], float]:
    """callgate_decisions_total as (verdict, reason, door, tenant) → count."""
    out = {}
    for (name, found), value in scraped.items():
        if name == "callgate_decisions_total":
            row = dict(found)
            out[(row["verdict"], row["reason"], row["door"], row["tenant"])] = value
    return out


async def test_decisions_move_the_counters_by_verdict_reason_door_and_tenant(
    served: Served,
) -> None:
    """Each decision counts once under its verdict, reason, door and tenant."""
    gate = served.gate
    await ListAdmin.of(gate).add("red", [LISTED], "default", "")
    await gate.decide(attempt(LISTED), door="agi", record=True)
    await gate.decide(attempt(UNLISTED), door="agi", record=True)
    await gate.decide(attempt(UNLISTED), door="stasis", record=True)
    status, _ = await served.post("/v1/check", {"number": "17", "class": "manual"})
    assert 200 == status
    assert {
        ("BLOCK", "listed:red", "agi", "default"): 1.0,
        ("ALLOW", "allowed", "agi", "default"): 1.0,
        ("ALLOW", "allowed", "stasis", "default"): 1.0,
        ("ALLOW", "emergency", "api", "default"): 1.0,
    } == decisions(await served.scrape())


async def test_latency_is_measured_in_process_for_all_and_in_redis_for_store_decisions(
    served: Served,
) -> None:
    """Both decisions get an in-process time; only the one that needs Redis a Redis time."""
    await served.gate.decide(attempt(UNLISTED), record=True, door="cli")
    await served.gate.decide(
        attempt("17", traffic_class=TrafficClass.MANUAL), record=True, door="cli"
    )
    scraped = await served.scrape()
    assert (2.0, 1.0) == (
        scraped[("callgate_decision_in_process_seconds_count", labels())],
        scraped[("callgate_decision_redis_seconds_count", labels())],
    )


async def test_redis_errors_and_fail_mode_decisions_are_counted(redis_url: str) -> None:
    """With Redis a closed port, a decision is an unavailable error and a fail-mode DEFER."""
    store = Store(f"redis://127.0.0.1:{closed_port()}/0", deadline_s=1.0)
    gate = Gate(make_config(), store)
    running = await serve(gate)
    try:
        decision = await gate.decide(attempt(UNLISTED), record=True, door="cli")
        scraped = await running.scrape()
    finally:
        await running.session.close()
        await running.server.stop()
        await store.close()
    assert ("DEFER", "store_unavailable", 1.0, 1.0) == (
        decision.verdict.value,
        decision.reason,
        scraped[("callgate_redis_errors_total", labels(kind="unavailable"))],
        scraped[("callgate_fail_mode_decisions_total", labels(verdict="DEFER"))],
    )


async def test_agi_connections_are_counted(served: Served) -> None:
    """Two FastAGI requests and one whose header block is over the limit: three
    connections accepted, one request dropped unread, none active afterwards."""
    server = AgiServer(served.gate, "127.0.0.1", 0, 2.0)
    served.metrics.doors.agi = server
    await server.start()
    try:
        first = await agi_check(server.port, "0612345678")
        await agi_check(server.port, "0612345679")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(b"agi_x%d: %s\n" % (i, b"y" * 1000) for i in range(40)))
        async with asyncio.timeout(5):
            await reader.read()  # closed by the server, unanswered
        writer.close()
        scraped = await served.scrape()
    finally:
        await server.stop()
    assert ("ALLOW", 3.0, 1.0, 0.0, 2.0) == (
        first["CALLGATE_RESULT"],
        scraped[("callgate_agi_connections_total", labels())],
        scraped[("callgate_agi_requests_dropped_total", labels())],
        scraped[("callgate_agi_connections_active", labels())],
        decisions(scraped)[("ALLOW", "allowed", "agi", "default")],
    )


async def test_list_sizes_are_exported_per_list_and_tenant(served: Served) -> None:
    """After a refresh, the red list of the default tenant shows its two entries."""
    from gate.ops.metrics import refresh_lists

    await ListAdmin.of(served.gate).add("red", [LISTED, UNLISTED], "default", "")
    await refresh_lists(served.metrics, served.gate)
    scraped = await served.scrape()
    assert (2.0, 0.0) == (
        scraped[("callgate_list_entries", labels(list="red", tenant="default"))],
        scraped[("callgate_list_entries", labels(list="dnc", tenant=""))],
    )


async def test_config_version_is_exported(served: Served) -> None:
    """callgate_config_info carries the version in force."""
    assert 1.0 == (await served.scrape())[("callgate_config_info", labels(version="v1"))]


def test_values_beyond_the_bound_are_counted_as_other() -> None:
    """Known values keep their label; past the bound new ones become "other"."""
    bound = BoundedLabel(3, {"acme"})
    seen = {bound(f"t{i}") for i in range(6)}
    assert (3, "acme", "other") == (len(seen), bound("acme"), bound("late"))


def test_unknown_reasons_past_the_bound_keep_their_family() -> None:
    """A reason past the bound is counted as <family>:other (cps:other), never dropped."""
    bound = BoundedLabel(2, {"allowed"})
    first = bound("cps:trunk-1")
    assert ("cps:trunk-1", "cps:other", "other") == (first, bound("cps:trunk-2"), bound("x"))


def test_reasons_named_by_the_config_are_always_kept() -> None:
    """List names and cap ids of the config are known reasons from the start."""
    metrics = Metrics()
    metrics.reasons.limit = 0
    metrics.use_config(make_config(), "v")
    assert ("listed:dnc", "cap:fr-4-per-30d", "cps:carrier-a", "cps:other") == (
        metrics.reasons("listed:dnc"),
        metrics.reasons("cap:fr-4-per-30d"),
        metrics.reasons("cps:carrier-a"),
        metrics.reasons("cps:carrier-b"),
    )


async def test_healthz_is_up_with_the_config_version(served: Served) -> None:
    """/healthz answers 200 with status up and the version in force."""
    status, body = await served.get("/healthz")
    assert (200, "up", "v1") == (status, body["status"], body["config_version"])


async def test_readyz_is_ready_when_redis_answers(served: Served) -> None:
    """/readyz answers 200, ready, with the Redis check passed, naming the mode and the
    node that answers (no failover, no restart so far)."""
    status, body = await served.get("/readyz")
    redis_ok = {
        "ok": True,
        "error": None,
        "reconnects": None,
        "mode": "single",
        "node": served.gate.store.where,
        "failovers": 0,
        "restarts": 0,
        "redirects": {},
    }
    assert (200, {"ready": True, "config_version": "v1", "checks": {"redis": redis_ok}}) == (
        status,
        body,
    )


async def test_readyz_is_not_ready_when_redis_is_a_closed_port() -> None:
    """/readyz answers 503, not ready, naming the Redis problem."""
    store = Store(f"redis://127.0.0.1:{closed_port()}/0", deadline_s=0.2)
    running = await serve(Gate(make_config(), store, version="v9"))
    try:
        status, body = await running.get("/readyz")
    finally:
        await running.session.close()
        await running.server.stop()
        await store.close()
    redis = body["checks"]["redis"]
    assert (503, False, "v9", False) == (status, body["ready"], body["config_version"], redis["ok"])
    assert "unreachable" in redis["error"]


@dataclass
class StasisState:
    """The two attributes of gate.stasis.StasisGate that /readyz and /metrics read."""

    connected: asyncio.Event = field(default_factory=asyncio.Event)
    reconnects: int = 0


@pytest.fixture
async def with_stasis(http_gate: Gate) -> AsyncIterator[tuple[Served, StasisState]]:
    state = StasisState(reconnects=3)
    running = await serve(http_gate, stasis=state)
    running.metrics.doors.stasis = state
    yield running, state
    await running.session.close()
    await running.server.stop()


async def test_readyz_follows_the_ari_connection(
    with_stasis: tuple[Served, StasisState],
) -> None:
    """With [ari], /readyz is 503 while disconnected and 200 once connected."""
    running, state = with_stasis
    before, _ = await running.get("/readyz")
    state.connected.set()
    after, body = await running.get("/readyz")
    scraped = await running.scrape()
    ari = {"ok": True, "error": None, "reconnects": 3}
    assert (503, 200, ari) == (before, after, body["checks"]["ari"])
    assert (1.0, 3.0) == (
        scraped[("callgate_ari_connected", labels())],
        scraped[("callgate_ari_reconnects_total", labels())],
    )


def test_the_sample_dashboard_uses_only_exported_metrics() -> None:
    """Every metric config/grafana-dashboard.json queries is one the gate exposes."""
    metrics = Metrics()
    metrics.doors.agi = AgiServer(Gate(make_config(), None), "127.0.0.1", 0, 1.0)  # type: ignore[arg-type]
    metrics.doors.stasis = StasisState()
    exported = set(re.findall(r"^# TYPE (\S+)", metrics.exposition().decode(), re.M))
    dashboard = (SAMPLE_CONFIG.parent / "grafana-dashboard.json").read_text()
    queried = {
        re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"callgate_\w+", dashboard)
    }
    assert set() == queried - exported


def test_workers_metrics_are_summed_into_one_exposition() -> None:
    """``run --workers``: the parent's /metrics adds the workers' counters and histograms
    to its own, sample by sample; the config info gauge is not multiplied."""
    from gate.ops.metrics import merge_expositions

    texts = []
    for count in (1, 2, 3):
        metrics = Metrics()
        metrics.use_config(make_config(), "abc123")
        for _ in range(count):
            metrics.decisions.labels("ALLOW", "allowed", "agi", "default").inc()
            metrics.in_process_s.observe(0.0002)
        texts.append(metrics.exposition().decode())
    merged = merge_expositions(texts).decode().splitlines()
    assert [
        'callgate_decisions_total{door="agi",reason="allowed",tenant="default",'
        'verdict="ALLOW"} 6.0',
        "callgate_decision_in_process_seconds_count 6.0",
        'callgate_config_info{version="abc123"} 1.0',
    ] == [
        line
        for line in merged
        if line.startswith(
            (
                "callgate_decisions_total",
                "callgate_decision_in_process_seconds_count",
                "callgate_config_info{",
            )
        )
    ]


def test_a_dead_workers_counters_are_kept_without_its_gauges() -> None:
    """``counters_only``: the counters and histograms of an exposition (a dead worker's
    last counts, kept in the parent's sum), never its gauges."""
    from gate.ops.metrics import counters_only

    metrics = Metrics()
    metrics.use_config(make_config(), "abc123")
    metrics.decisions.labels("ALLOW", "allowed", "agi", "default").inc()
    metrics.in_process_s.observe(0.0002)
    kept = counters_only(metrics.exposition().decode())
    assert (True, True, False) == (
        'callgate_decisions_total{door="agi",reason="allowed",tenant="default",'
        'verdict="ALLOW"} 1.0' in kept,
        "callgate_decision_in_process_seconds_count 1.0" in kept,
        "callgate_config_info" in kept,
    )


async def test_a_worker_that_exits_leaves_its_gauges_at_once_and_keeps_its_counters(
    tmp_path: Path,
) -> None:
    """A worker process exits (its last metrics say the Stasis application was connected):
    as soon as the parent sees it gone, before it is started again, the sum drops its
    gauges (a dead worker connects nothing) and keeps its counters."""
    from gate.runtime import WORKER_RESTART_S, Workers
    from gate.service import wait_event

    workers = Workers([sys.executable, "-c", "pass"], 1, tmp_path, agi_port=4573)
    workers.start()
    workers.slots[0].process.wait(timeout=10)
    workers.roles[0].metrics_path.write_text(
        "# TYPE callgate_ari_connected gauge\ncallgate_ari_connected 1.0\n"
        "# TYPE callgate_decisions_total counter\n"
        'callgate_decisions_total{door="agi",reason="allowed",tenant="default",'
        'verdict="ALLOW"} 3.0\n'
    )
    stop = asyncio.Event()
    supervising = asyncio.create_task(workers.supervise(stop))
    try:
        await wait_event(stop, WORKER_RESTART_S / 2)  # seen exited, not started again
        summed = "".join(workers.expositions())
    finally:
        stop.set()
        await supervising
        await workers.stop()
    assert (0, False, True) == (
        workers.restarts,
        "callgate_ari_connected" in summed,
        'verdict="ALLOW"} 3.0' in summed,
    )


async def agi_request(port: int, script: str, extension: str, caller_id: str) -> str:
    """One FastAGI request for ``script`` (its query string is the caller's to choose);
    the verdict the dialplan gets (first field of CALLGATE_DECISION)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"agi_network_script: {script}\nagi_extension: {extension}\n"
        f"agi_channel: Local/{extension}\nagi_callerid: {caller_id}\n\n".encode()
    )
    result = ""
    async with asyncio.timeout(10):
        for _ in range(20):
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            if line.startswith('SET VARIABLE CALLGATE_DECISION "'):
                result = line.split('"')[1].split("|")[0]
            writer.write(b"200 result=1\n")
            await writer.drain()
    writer.close()
    await writer.wait_closed()
    return result


async def test_made_up_tenants_campaigns_trunks_and_caller_ids_add_no_series(
    redis_url: str,
) -> None:
    """A dialer sending a fresh tenant, campaign, trunk and caller ID with every call
    (1,000 through Gate.decide, 50 through the FastAGI door) leaves the decision series
    bounded: the configured tenants and reasons, everything else "other" / "cps:other"."""
    store = Store(redis_url, deadline_s=1.0)
    config = make_config(
        {
            "gate": {**BASE_CONFIG["gate"], "open_tenants": True},
            "trunks": {"cps": {"carrier-a": 20}, "default_cps": 1},
        }
    )
    gate = Gate(config, store, version="v1")
    running = await serve(gate)
    server = AgiServer(gate, "127.0.0.1", 0, 2.0)
    await server.start()
    try:
        before = len(await running.scrape())
        for i in range(1000):
            for _ in range(2):  # the second call of a trunk is over its 1 cps
                await gate.decide(
                    attempt(
                        UNLISTED,
                        tenant=f"t{i}",
                        campaign=f"camp-{i}",
                        trunk=f"trunk-{i}",
                        caller_id=f"01620{i:05d}",
                        channel=f"PJSIP/x-{i}",
                    ),
                    record=True,
                    door="agi",
                )
        results = {
            await agi_request(
                server.port,
                f"check?tenant=agi{i}&campaign=c{i}&trunk=k{i}&class=campaign",
                "0612345678",
                f"0162{i:06d}",
            )
            for i in range(50)
        }
        scraped = await running.scrape()
    finally:
        await server.stop()
        await running.session.close()
        await running.server.stop()
        await store.close()
    found = {
        (dict(k)["reason"], dict(k)["tenant"])
        for (n, k) in scraped
        if n.endswith("decisions_total")
    }
    values = " ".join(f"{n}{sorted(k)}" for (n, k) in scraped)
    assert (set(), {"other"}, {"ALLOW"}) == (
        {reason for reason, _ in found} - {"allowed", "cps:other"},
        {tenant for _, tenant in found},
        results,
    )
    assert not re.search(r"t\d+'|camp-|trunk-|agi\d|01620|PJSIP", values)
    # A few new series (the two decision kinds, their _created, the list gauges), not 1,000s.
    assert len(scraped) - before < 20


def test_reassigned_and_abandon_rate_reasons_of_the_packs_keep_their_rule_id() -> None:
    """The US pack's reassigned-number check and the UK pack's abandoned-call ceiling
    refuse with reasons named by their rule ids: counted as such, not as "<family>:other"."""
    metrics = Metrics()
    metrics.use_config(pack_config(["us", "uk"], "US"), "v")
    assert ("reassigned:us-tcpa-consent", "abandon_rate:uk-ofcom-abandoned-3pct") == (
        metrics.reasons("reassigned:us-tcpa-consent"),
        metrics.reasons("abandon_rate:uk-ofcom-abandoned-3pct"),
    )
