"""Benchmark: the full in-process decision path against a real Redis, beside the PING floor.

    python bench/decide.py [--redis-url URL] [--n 5000] [--concurrency 16]
                           [--scenarios lean,sample,fr] [--list-size 1000000]
                           [--loop uvloop|asyncio] [--cpus 0] [--processes N]
    python bench/decide.py --scenarios us,us-reassigned,uk,uk-ceiling   # the law checks

Starts its own redis-server on a free loopback TCP port unless --redis-url is given. Runs
on uvloop, the event loop ``callgate run`` serves its doors on (``--loop asyncio``: the
standard one, as before). ``--cpus 0`` runs the benchmark and the redis-server it starts on
those CPUs only (Linux affinity, inherited by the server): on one, every round trip is a
switch between two processes on that CPU instead of a wake-up of the other CPU, which on a
virtual machine whose idle CPUs halt at once costs tens of µs per round trip (the
sequential rates are then bound by it, not by callgate or Redis; compare the PING rows).
Measures, in the same process and session, per scenario:
- the floor: redis-py asyncio PING round trips; and PING sent the store's own way (a
  decision connection of its own: callgate's channels, see gate/store/channel.py), the
  floor of what callgate's own path could reach (``PING st``, ``ratio st``);
- the store's share: the scenario's EVALSHA alone (redis-py, arguments encoded once, not
  recording), what the path costs beyond callgate's own work;
- the path: ``Gate.decide`` = engine.plan + one EVALSHA of decide.lua + engine.conclude,
  recording (so each decision also writes its audit entry in the script), one at a time;
  the difference of the p50s (``own µs``) is plan, conclude, the store client's encoding
  and the recording writes; then ``n`` more with ``--concurrency`` in flight (loaded:
  Redis works back to back);
- then ``--processes`` processes (default: one per CPU) deciding at once, each loaded as
  above with its own share of the numbers and its own trunk: their decisions per second
  together, from their common start to the last one's end (as ``callgate run --workers
  N`` decides, one process per core);
- Redis's own time per decision, ``usec_per_call`` of EVALSHA in ``INFO commandstats``,
  for each of the two (sequential: Redis idles between calls, its caches go cold on a
  shared machine; loaded: the regime in which it bounds the decisions per second of one
  Redis core, also printed as dec/s/core).
Scenarios:
- ``lean``: two block lists (empty), one cap, one trunk CPS cap (the historical baseline);
- ``sample``: the lists of config/callgate.toml (red, dnc, customers exempting dnc) with
  populated lists (dnc ``--list-size`` numbers, red a tenth, customers a hundredth), the
  trunk's CPS cap, no law pack;
- ``fr``: the same with the ``fr`` pack (hours, 4 attempts per 30 days, opt-in consent
  held by every number decided, refusal cool-off, caller-ID ranges).
- ``us`` / ``us-reassigned``: New York numbers under the ``us`` pack (calling window, the
  National DNC copy of ``--list-size`` numbers and its freshness, the TCPA consent held
  by every number decided); ``us`` without its reassigned-number check (the pack's
  consent rule without ``reassigned_list``), ``us-reassigned`` with it and a reassigned
  list holding every number decided (disconnected a year before its consent: the check
  reads both entries, and passes) and a tenth of ``--list-size`` others.
- ``uk`` / ``uk-ceiling``: London numbers of campaign ``spring`` under the ``uk`` pack
  (TPS of ``--list-size`` numbers, CTPS, their freshness, the abandoned-call cool-off,
  caller ID); ``uk`` without the abandoned-call ceiling, ``uk-ceiling`` with it and the
  campaign's counts of the last 22 hours (a minute each: 100 live calls, 1 abandoned:
  under the ceiling), the counts the ceiling reads in the same call.
The pairs differ only by the law check, so their ratio is its cost.
Last, one recorded decision's EVALSHA sent pre-encoded (the store's path) against
redis-py's ``evalsha`` with the same arguments (p50 of the call alone); and sequential
decisions (sample) with the store's busy polling off and on (``redis.busy_poll``, on by
default: the scenarios above run with it), in alternating rounds: decisions/s, p50 and this
process's CPU per decision (the polling's cost).
Absolute numbers depend on the machine and its load; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import redis_server

from gate.config.loader import parse_config
from gate.core.engine import Plan, plan
from gate.core.model import Attempt
from gate.core.numbers import Destination, classify
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.store.client import Store

try:
    from gate.store.client import CALL_COUNTS
except ImportError:  # before the abandoned-call ceiling
    CALL_COUNTS = None  # type: ignore[assignment]

# This benchmark also runs against callgate before key layout 2 (to compare layouts).
try:
    from gate.service import _with_evidence as with_evidence
except ImportError:  # before the evidence moved into decide.lua
    with_evidence = None  # type: ignore[assignment]
try:
    from gate.store.client import DECIDE, _Command, _encode, _Use

    LAYOUT = 2
except ImportError:  # key layout 1
    import gate.store.client as legacy

    LAYOUT = 1
PROTOCOL_AVAILABLE = LAYOUT == 2
try:
    from gate.config.loader import DEFAULT_BUSY_POLL_S
except ImportError:  # before busy polling
    DEFAULT_BUSY_POLL_S = 0.0

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789"
LEAN = {
    "privacy": {"secret": SECRET},
    "lists": [
        {"name": "red", "kind": "block", "scope": "tenant"},
        {"name": "dnc", "kind": "block", "scope": "global"},
    ],
    "caps": [{"id": "fr-4-per-30d", "limit": 4, "window": "30d"}],
    "trunks": {"cps": {"carrier-a": 100}},
}
SAMPLE = {
    "gate": {"packs_dir": str(ROOT / "config" / "packs")},
    "privacy": {"secret": SECRET},
    "lists": [
        {"name": "red", "kind": "block", "scope": "tenant"},
        {"name": "dnc", "kind": "block", "scope": "global"},
        {"name": "customers", "kind": "allow", "scope": "tenant", "exempts": ["dnc"]},
    ],
    "trunks": {"cps": {"carrier-a": 100}},
}
FR = {**SAMPLE, "gate": {**SAMPLE["gate"], "packs": ["fr"]}}
# A past Tuesday inside the fr pack's calling hours (10:00-13:00 Paris). In the past, so
# that attempt logs expire by the attempts' own clock (entries dated after Redis's clock
# are kept until its clock passes them).
START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
# The same Tuesday inside New York's calling window (08:00-21:00 there).
START_US = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
# Recorded attempts are STEP apart (~48 calls/s on the trunk, under its cap of 100): its CPS
# log stays realistic; and, 21 being prime to 16, decide.lua's audit trims (on one append
# in 16 each, by the attempt's millisecond) come at their production rate (20 ms apart,
# every second decision trimmed).
STEP = timedelta(milliseconds=21)
# The packs without their law checks (the baselines of us-reassigned and uk-ceiling),
# written by ``law_packs``.
BASELINE_PACKS = Path(tempfile.gettempdir()) / "callgate-bench-packs"


@dataclass(frozen=True)
class Scenario:
    """A config, the numbers decided (and their attempts' campaign and caller ID), and how
    to fill the store before."""

    config: dict[str, Any]
    start: datetime = START
    numbers: str = "fr"  # fr | us | uk
    caller_id: str | None = None
    campaign: str = ""
    # Back-to-back decisions this long after the first ones (caps and CPS logs apart).
    later: timedelta = timedelta(days=1)
    lists: dict[str, int] = field(default_factory=dict)  # list → size (fraction of --list-size)


def law(packs: list[str], packs_dir: Path, region: str) -> dict[str, Any]:
    """A config with ``packs`` from ``packs_dir`` and the sample's lists."""
    gate = {"packs_dir": str(packs_dir), "packs": packs, "default_region": region}
    return {**SAMPLE, "gate": gate}


SCENARIOS: dict[str, Scenario] = {
    "lean": Scenario(LEAN),
    "sample": Scenario(SAMPLE),
    "fr": Scenario(FR, caller_id="+33162000000"),
    "us": Scenario(law(["us"], BASELINE_PACKS, "US"), START_US, "us", later=timedelta(hours=1)),
    "us-reassigned": Scenario(
        law(["us"], ROOT / "config" / "packs", "US"), START_US, "us", later=timedelta(hours=1)
    ),
    "uk": Scenario(
        law(["uk"], BASELINE_PACKS, "GB"),
        numbers="uk",
        caller_id="+442071234567",
        campaign="spring",
        later=timedelta(hours=1),
    ),
    "uk-ceiling": Scenario(
        law(["uk"], ROOT / "config" / "packs", "GB"),
        numbers="uk",
        caller_id="+442071234567",
        campaign="spring",
        later=timedelta(hours=1),
    ),
}


def law_packs() -> None:
    """``BASELINE_PACKS``: the us pack without its reassigned-number check, the uk pack
    without its abandoned-call ceiling."""
    BASELINE_PACKS.mkdir(exist_ok=True)
    shipped = ROOT / "config" / "packs"
    us = (shipped / "us.toml").read_text(encoding="utf-8")
    for line in ('reassigned_list = "reassigned"\n', "reassigned_shadow = false\n"):
        assert line in us, line
        us = us.replace(line, "")
    uk = (shipped / "uk.toml").read_text(encoding="utf-8")
    assert "\n[[abandon_ceiling]]\n" in uk
    uk = uk[: uk.index("\n[[abandon_ceiling]]\n")] + "\n"
    (BASELINE_PACKS / "us.toml").write_text(us, encoding="utf-8")
    (BASELINE_PACKS / "uk.toml").write_text(uk, encoding="utf-8")


ROUNDS = 5
# The event loops ``--loop`` offers (``callgate run --loop``'s).
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
# The pre-encoded vs redis-py comparison needs the store's internals of this version.
PROTOCOL = True
# ``--processes``: bounds on their start (a fresh interpreter each) and on their run.
PROCESS_START_S = 60.0
PROCESS_RUN_S = 300.0


def sent(store: Store, commands: list[Any], records: bool, deadline_s: float | None) -> Any:
    """The store's own send of pre-encoded commands (layout 2), as a decision sends them."""
    return store._call(commands, _Use(records=records, deadline_s=deadline_s))


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def timed(
    n: int, concurrency: int, op: Callable[[int], Awaitable[object]]
) -> tuple[list[float], float]:
    """Latencies (µs) of n calls of ``op(i)`` with ``concurrency`` workers, and total seconds."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await op(i)
            latencies.append((time.perf_counter() - start) * 1e6)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def fr_lines(prefix: str, count: int) -> list[str]:
    """``count`` distinct valid French mobile numbers (E.164) under ``prefix`` (+3361…)."""
    return [f"{prefix}{i * 7919 % 10**7:07d}" for i in range(count)]


def valid_lines(prefix: str, digits: int, count: int, region: str) -> list[str]:
    """``count`` distinct valid numbers ``prefix`` + ``digits`` digits (spread out)."""
    found: list[str] = []
    for i in range(10 * count + 1000):
        e164 = f"{prefix}{i * 7919 % 10**digits:0{digits}d}"
        if isinstance(classify(e164, region), Destination):
            found.append(e164)
            if len(found) == count:
                return found
    raise AssertionError(f"not {count} valid numbers under {prefix}")


def decided_numbers(kind: str, count: int) -> list[str]:
    """The numbers a scenario decides: French mobiles, New York or London numbers."""
    if kind == "us":
        return valid_lines("+1212", 7, count, "US")
    if kind == "uk":
        return valid_lines("+44207", 7, count, "GB")
    return fr_lines("+3361", count)


async def populate_law(gate: Gate, name: str, list_size: int, numbers: list[str]) -> None:
    """The lists and state of the us*/uk* scenarios (the same in both of a pair, but for
    what only the law check reads)."""
    admin = ListAdmin.of(gate)

    def reject(_: object) -> None:
        raise AssertionError("bench list entry rejected")

    refreshed = START - timedelta(days=1)
    if name.startswith("us"):
        dnc = valid_lines("+1718", 7, list_size, "US")
        await admin.import_entries(
            "national_dnc", list(enumerate(dnc, start=1)), "default", "", reject,
            refreshed_at=refreshed, mode="replace", expected=len(dnc),
        )  # fmt: skip
        await admin.add("tcpa_consent", numbers, "default", "", now=START - timedelta(days=30))
        if name == "us-reassigned":
            lines = [f"{n},{(START - timedelta(days=400)).date()}" for n in numbers]
            others = valid_lines("+1917", 7, list_size // 10, "US")
            lines += [f"{n},{(START - timedelta(days=10)).date()}" for n in others]
            await admin.import_disconnects("reassigned", lines, "default", "", reject)
        return
    tps = valid_lines("+44161", 7, list_size, "GB")
    await admin.import_entries(
        "tps", list(enumerate(tps, start=1)), "default", "", reject,
        refreshed_at=refreshed, mode="replace", expected=len(tps),
    )  # fmt: skip
    await admin.import_entries("ctps", [], "default", "", reject, refreshed_at=refreshed)
    if name == "uk-ceiling":
        (rule,) = gate.config.policy.packs[0].abandon_ceilings
        key = gate.keyspace.ceiling_key(rule, "default", "spring")
        window_ms = int(rule.window_s * 1000)
        start_ms = int(START.timestamp() * 1000)
        minutes = [start_ms - m * 60_000 for m in range(22 * 60, 0, -1)]
        for at_ms in minutes:  # 100 live calls a minute, 1 of them abandoned
            await gate.store.run_scripts(
                CALL_COUNTS, [([key], [at_ms, start_ms, window_ms, 99, 0])]
            )
            await gate.store.run_scripts(CALL_COUNTS, [([key], [at_ms, start_ms, window_ms, 1, 1])])


async def populate(gate: Gate, list_size: int, numbers: list[str], consent: bool) -> None:
    """Fill the sample lists (so lookups hit real buckets) and the consents of ``numbers``."""
    admin = ListAdmin.of(gate)

    def entries(values: list[str]) -> list[tuple[int, str]]:
        return list(enumerate(values, start=1))

    def reject(_: object) -> None:
        raise AssertionError("bench list entry rejected")

    sizes = {"dnc": list_size, "red": list_size // 10, "customers": list_size // 100}
    prefixes = {"dnc": "+3362", "red": "+3364", "customers": "+3365"}
    for name, size in sizes.items():
        if size and admin.policy.list_rule(name) is not None:
            values = fr_lines(prefixes[name], size)
            await admin.import_entries(
                name, entries(values), "default", "", reject, mode="replace", expected=size
            )
    if consent:
        await admin.add("consent", numbers, "default", "")


async def redis_us(client: aioredis.Redis) -> float:
    """``usec_per_call`` of EVALSHA since the last ``CONFIG RESETSTAT``."""
    stats = await client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


async def back_to_back(
    client: aioredis.Redis, gate: Gate, attempts: list[Attempt], n: int
) -> float:
    """Redis µs per decision when Redis works without pause: ``n`` more recorded decisions,
    planned and encoded beforehand, sent 50 per request, in chunks of 500 each measured
    alone; the best chunk (the least interference from the rest of a shared machine).
    Runs against callgate before key layout 2 too (its encoding), to compare layouts."""
    store, active = gate.store, gate.active
    requests: list[tuple[Any, int]] = []
    for i in range(n):
        attempt = replace(attempts[i], now=attempts[i].now + STEP * i)
        pending = plan(attempt, active.config.policy, active.keyspace, True)
        if not isinstance(pending, Plan):
            continue
        if with_evidence is not None:
            pending = with_evidence(pending, active, "cli", 0.0)
        if LAYOUT == 2:
            requests.append((_encode([pending.check], store._views).command(DECIDE), 1))
        else:
            keys, args = legacy.encode_checks(pending.check)
            words = [b"EVALSHA", store._decide.sha.encode(), b"%d" % len(keys)]
            words += [k.encode() for k in keys] + [str(a).encode() for a in args]
            requests.append((legacy._resp(words), 1))
    chunks = []
    for chunk in range(0, len(requests), 500):
        await client.config_resetstat()
        for start in range(chunk, min(chunk + 500, len(requests)), 50):
            part = requests[start : min(start + 50, chunk + 500)]
            if LAYOUT == 2:
                await sent(store, [command for command, _ in part], True, None)
            else:
                await store._send(b"".join(request for request, _ in part), len(part))
        chunks.append(await redis_us(client))
    return min(chunks)


PAIRS = (("us-reassigned", "us"), ("uk-ceiling", "uk"))


async def pair(url: str, law_name: str, base_name: str, n: int, list_size: int) -> list[float]:
    """Redis µs per decision of a law scenario and its baseline in the same store (the
    law scenario's data, which the baseline's plans do not read): chunks of 500 recorded
    decisions sent back to back, the two alternating, ``ROUNDS`` * 2 chunks each.
    Returns [law median, base median, law best, base best]."""
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    law_setting, base_setting = SCENARIOS[law_name], SCENARIOS[base_name]
    gates, stores = [], []
    for setting in (law_setting, base_setting):
        config = parse_config(setting.config, "bench", Path(tempfile.gettempdir()))
        stores.append(Store(url, deadline_s=1.0))
        gates.append(Gate(config, stores[-1]))
    numbers = decided_numbers(law_setting.numbers, n + 1)
    await populate_law(gates[0], law_name, list_size, numbers)
    setting = law_setting
    requests: list[list[Any]] = []
    for k, gate in enumerate(gates):
        # Apart in time (an hour), so that the two never share a CPS second.
        start = setting.start + setting.later + timedelta(hours=k)
        attempts = [
            Attempt(number, start, trunk="carrier-a", caller_id=setting.caller_id,
                    campaign=setting.campaign)
            for number in numbers
        ]  # fmt: skip
        warm = await gate.decide(attempts[-1], record=False, door="cli")  # learn list views
        assert warm.reason == "allowed", warm
        active = gate.active
        encoded = []
        for i in range(n):
            attempt = replace(attempts[i], now=start + STEP * i)
            pending = plan(attempt, active.config.policy, active.keyspace, True)
            assert isinstance(pending, Plan)
            pending = with_evidence(pending, active, "cli", 0.0)
            encoded.append(_encode([pending.check], gate.store._views).command(DECIDE))
        requests.append(encoded)
    times: list[list[float]] = [[], []]
    chunks = list(range(0, n, 500))
    for r, chunk in enumerate(chunks):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            await client.config_resetstat()
            for start in range(chunk, min(chunk + 500, n), 50):
                part = requests[k][start : min(start + 50, chunk + 500, n)]
                await sent(gates[k].store, part, True, None)
            times[k].append(await redis_us(client))
    for store in stores:
        await store.close()
    await client.aclose()
    return [
        statistics.median(times[0]),
        statistics.median(times[1]),
        min(times[0]),
        min(times[1]),
    ]


async def scenario(
    url: str,
    name: str,
    n: int,
    concurrency: int,
    list_size: int,
    processes: int = 0,
    loop: str = "uvloop",
) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    setting = SCENARIOS[name]
    config = parse_config(setting.config, "bench", Path(tempfile.gettempdir()))
    store = Store(url, deadline_s=1.0)
    gate = Gate(config, store)
    await client.flushdb()
    numbers = decided_numbers(setting.numbers, 2 * n + 1)
    if setting.numbers != "fr":
        await populate_law(gate, name, list_size, numbers)
    elif name != "lean":
        await populate(gate, list_size, numbers, consent=name == "fr")
    caller_id, campaign, start = setting.caller_id, setting.campaign, setting.start

    def attempt(number: str, now: datetime) -> Attempt:
        return Attempt(number, now, trunk="carrier-a", caller_id=caller_id, campaign=campaign)

    await gate.decide(attempt(numbers[-1], start), record=True, door="cli")  # load, warm up
    await client.ping()

    async def ping(_: int) -> None:
        await client.ping()

    # The scenario's EVALSHA alone: one plan, encoded once, sent by redis-py, not recording.
    sample = plan(attempt(numbers[-1], start), config.policy, gate.active.keyspace, False)
    assert isinstance(sample, Plan)
    if LAYOUT == 2:
        encoded = _encode([sample.check], store._views)
        sha, keys, argv = DECIDE.sha, encoded.keys, list(encoded.args)
    else:
        keys, argv = legacy.encode_checks(sample.check)
        sha = store._decide.sha.encode()

    store_ping = _Command(None, 0, b"*1\r\n$4\r\nPING\r\n") if LAYOUT == 2 else None

    async def ping_store(_: int) -> None:
        await sent(store, [store_ping], False, 1.0)

    async def evalsha(_: int) -> None:
        await client.evalsha(sha.decode(), len(keys), *keys, *argv)  # type: ignore[misc]

    async def decide(i: int) -> None:
        now = start + STEP * i
        decision = await gate.decide(attempt(numbers[i], now), record=True, door="cli")
        verdicts[decision.reason] += 1

    verdicts: Counter[str] = Counter()
    # Alternate rounds so that drift in machine load hits both sides alike.
    floor: list[float] = []
    floor_store: list[float] = []
    bare: list[float] = []
    path: list[float] = []
    redis_rounds: list[float] = []
    path_seconds = 0.0
    for r in range(ROUNDS):
        lat, _secs = await timed(n // ROUNDS, 1, ping)
        floor += lat
        if store_ping is not None:
            lat, _secs = await timed(n // ROUNDS, 1, ping_store)
            floor_store += lat
        lat, _secs = await timed(n // ROUNDS, 1, evalsha)
        bare += lat
        await client.config_resetstat()  # Redis time of the recorded decisions only
        offset = r * (n // ROUNDS)
        lat, secs = await timed(n // ROUNDS, 1, lambda i, o=offset: decide(o + i))
        path += lat
        path_seconds += secs
        redis_rounds.append(await redis_us(client))
    sequential_us = statistics.fmean(redis_rounds)
    # Loaded: many decisions in flight from this process.
    await client.config_resetstat()
    _, loaded_s = await timed(n, concurrency, lambda i: decide(n + i))
    loaded_us = await redis_us(client)
    back_to_back_us = await back_to_back(
        client, gate, [attempt(number, start + setting.later) for number in numbers], n
    )
    together = (
        await all_processes(url, name, numbers[: 2 * n], concurrency, processes, loop, client)
        if processes
        else (float("nan"), float("nan"), Counter[str]())
    )
    await store.close()
    await client.aclose()
    return {
        "processes_rate": together[0],
        "processes_us": together[1],
        "processes_verdicts": together[2],  # type: ignore[dict-item]
        "floor50": percentile(floor, 50),
        "floor99": percentile(floor, 99),
        "store50": percentile(floor_store, 50) if floor_store else float("nan"),
        "bare50": percentile(bare, 50),
        "path50": percentile(path, 50),
        "path99": percentile(path, 99),
        "rate": len(path) / path_seconds,
        "loaded_rate": n / loaded_s,
        "redis_us": sequential_us,
        "loaded_us": loaded_us,
        "back_us": back_to_back_us,
        "verdicts": verdicts,  # type: ignore[dict-item]
    }


def with_trunks(config: dict[str, Any], processes: int) -> dict[str, Any]:
    """``config`` with one more trunk per process (``carrier-p0``…), each with the CPS cap
    of ``carrier-a``: processes deciding at once each keep their own realistic CPS log."""
    cps = dict(config.get("trunks", {}).get("cps", {}))
    cps.update({f"carrier-p{k}": cps.get("carrier-a", 100) for k in range(processes)})
    return {**config, "trunks": {**config.get("trunks", {}), "cps": cps}}


def process_worker(
    url: str,
    name: str,
    k: int,
    processes: int,
    numbers: list[str],
    concurrency: int,
    loop: str,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One of ``--processes``: its own Gate and Redis connections, ``len(numbers)``
    recorded decisions with ``concurrency`` in flight on trunk ``carrier-p<k>``; says it
    is ``ready`` (a queue), starts on ``go`` (an event) with the others, puts (seconds,
    verdicts) on ``results``."""

    async def work() -> None:
        setting = SCENARIOS[name]
        config = parse_config(
            with_trunks(setting.config, processes), "bench", Path(tempfile.gettempdir())
        )
        store = Store(url, deadline_s=1.0)
        gate = Gate(config, store)
        # Two days on: the sequential, loaded and back-to-back decisions' caps are apart.
        base = setting.start + 2 * setting.later

        def attempt(i: int) -> Attempt:
            return Attempt(
                numbers[i],
                base + STEP * i,
                trunk=f"carrier-p{k}",
                caller_id=setting.caller_id,
                campaign=setting.campaign,
            )

        await gate.decide(attempt(0), record=False, door="cli")  # connect, load the script
        verdicts: Counter[str] = Counter()

        async def decide(i: int) -> None:
            decision = await gate.decide(attempt(i), record=True, door="cli")
            verdicts[decision.reason] += 1

        ready.put(k)
        if not await asyncio.to_thread(go.wait, PROCESS_START_S):
            raise SystemExit(f"process {k}: not started within {PROCESS_START_S:g} s")
        _, seconds = await timed(len(numbers), concurrency, decide)
        await store.close()
        results.put((seconds, dict(verdicts)))

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(work())


async def all_processes(
    url: str,
    name: str,
    numbers: list[str],
    concurrency: int,
    processes: int,
    loop: str,
    client: aioredis.Redis,
) -> tuple[float, float, Counter[str]]:
    """Decisions/s of ``processes`` processes deciding at once (``numbers`` shared out,
    ``concurrency`` in flight each), from their common start to the last one's end, and
    Redis's µs per decision meanwhile."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    share = len(numbers) // processes
    workers = [
        context.Process(
            target=process_worker,
            args=(
                url,
                name,
                k,
                processes,
                numbers[k * share : (k + 1) * share],
                concurrency,
                loop,
                ready,
                go,
                results,
            ),
        )
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    verdicts: Counter[str] = Counter()
    try:
        starting = time.perf_counter()
        for _ in workers:
            await _next(ready, workers, starting + PROCESS_START_S)
        await client.config_resetstat()
        go.set()
        started = time.perf_counter()
        for _ in workers:
            _, counted = await _next(results, workers, started + PROCESS_RUN_S)
            verdicts.update(counted)
        wall = time.perf_counter() - started
        redis_per_decision = await redis_us(client)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
    return share * processes / wall, redis_per_decision, verdicts


async def _next(answers: Any, workers: list[Any], deadline: float) -> Any:
    """The next thing one of ``workers`` puts on ``answers``; SystemExit, saying so, if one
    of them failed or none answered by ``deadline`` (``time.perf_counter``)."""
    for _ in range(int(PROCESS_RUN_S / 0.5) + 1):  # bounded by the deadline
        try:
            return await asyncio.to_thread(answers.get, True, 0.5)
        except queue.Empty:
            pass
        failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
        if failed:
            raise SystemExit(f"--processes: a process failed (exit code {failed[0]})")
        if time.perf_counter() > deadline:
            break
    raise SystemExit("--processes: a process did not answer in time")


async def protocol(url: str, n: int) -> tuple[float, float]:
    """p50 (µs) of one recorded decision's EVALSHA sent pre-encoded (the store's path)
    and through redis-py's ``evalsha`` with the same KEYS and ARGV, in alternating
    rounds (the plan and the encoding are made beforehand: only the call is timed)."""
    config = parse_config(SAMPLE, "bench", Path(tempfile.gettempdir()))
    store = Store(url, deadline_s=1.0)
    gate = Gate(config, store)
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    numbers = fr_lines("+3366", 2 * n + 2)
    await gate.decide(Attempt(numbers[-1], START), record=True, door="cli")
    active = gate.active
    encoded = []
    for i in range(2 * n):
        attempt = Attempt(numbers[i], START + STEP * i, trunk="carrier-a")
        pending = plan(attempt, config.policy, active.keyspace, True)
        assert isinstance(pending, Plan)
        check = with_evidence(pending, active, "cli", 0.0).check
        await store.decide(replace(check, record=False))  # learn the list views
        encoded.append(_encode([check], store._views))
    pre: list[float] = []
    plain: list[float] = []
    for r in range(ROUNDS):
        chunk = range(r * 2 * n // ROUNDS, (r + 1) * 2 * n // ROUNDS)
        half = len(chunk) // 2
        for k, i in enumerate(chunk):
            start = time.perf_counter()
            if k < half:
                await sent(store, [encoded[i].command(DECIDE)], True, 1.0)
                pre.append((time.perf_counter() - start) * 1e6)
            else:
                e = encoded[i]
                await client.evalsha(DECIDE.sha.decode(), len(e.keys), *e.keys, *e.args)
                plain.append((time.perf_counter() - start) * 1e6)
    await store.close()
    await client.aclose()
    return percentile(pre, 50), percentile(plain, 50)


async def polling(url: str, n: int) -> dict[bool, tuple[float, float, float]]:
    """Sequential recorded decisions (sample) with the store's busy polling off and on
    (``DEFAULT_BUSY_POLL_S``), ``ROUNDS`` rounds each, alternating, one store: for each,
    (decisions/s, p50 µs, this process's CPU µs per decision), medians of the rounds."""
    config = parse_config(SAMPLE, "bench", Path(tempfile.gettempdir()))
    store = Store(url, deadline_s=1.0)
    gate = Gate(config, store)
    per_round = max(1, n // ROUNDS)
    numbers = fr_lines("+3367", 2 * ROUNDS * per_round + 1)
    await gate.decide(Attempt(numbers[-1], START), record=True, door="cli")
    rounds: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    turn = 0
    for r in range(ROUNDS):
        for on in (False, True) if r % 2 == 0 else (True, False):
            store._lane.poll_s = DEFAULT_BUSY_POLL_S if on else 0.0
            start = START + timedelta(hours=turn + 1)  # CPS seconds apart
            times: list[float] = []
            cpu, began = time.process_time(), time.perf_counter()
            for i in range(per_round):
                attempt = Attempt(
                    numbers[turn * per_round + i], start + STEP * i, trunk="carrier-a"
                )
                t0 = time.perf_counter()
                await gate.decide(attempt, record=True, door="cli")
                times.append((time.perf_counter() - t0) * 1e6)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            rounds[on].append((per_round / wall, percentile(times, 50), cpu * 1e6 / per_round))
            turn += 1
    turns = store._lane._poller.turns if store._lane._poller is not None else 0
    store._lane.poll_s = DEFAULT_BUSY_POLL_S
    await store.close()
    assert turns > 0, "the store never polled"
    return {
        on: (
            statistics.median(x[0] for x in rows),
            statistics.median(x[1] for x in rows),
            statistics.median(x[2] for x in rows),
        )
        for on, rows in rounds.items()
    }


async def run(
    url: str,
    n: int,
    concurrency: int,
    names: list[str],
    list_size: int,
    processes: int = 0,
    loop: str = "uvloop",
) -> None:
    print(
        f"redis {url.split('@')[-1]}, {n} decisions per scenario (sequential), then {n} "
        f"with {concurrency} in flight (loaded); lists: dnc {list_size}, red {list_size // 10}, "
        f"customers {list_size // 100}"
    )
    header = (
        f"{'scenario':9}{'PING p50':>9}{'p99':>6}{'PING st':>8}{'EVALSHA p50':>12}"
        f"{'decide p50':>11}{'p99':>6}{'own µs':>7}"
        f"{'ratio p50':>10}{'p99':>7}{'ratio st':>9}{'dec/s':>7}{'loaded dec/s':>13}"
        f"{'Redis µs seq':>13}{'loaded':>8}{'b2b':>6}{'dec/s/core':>11}"
    )
    print(header)
    law_packs()
    measured: dict[str, dict[str, Any]] = {}
    for name in names:
        m = measured[name] = await scenario(url, name, n, concurrency, list_size, processes, loop)
        core = 1e6 / m["back_us"] if m["back_us"] else 0.0
        print(
            f"{name:9}{m['floor50']:>9.0f}{m['floor99']:>6.0f}{m['store50']:>8.0f}"
            f"{m['bare50']:>12.0f}{m['path50']:>11.0f}{m['path99']:>6.0f}"
            f"{m['path50'] - m['bare50']:>7.0f}{m['path50'] / m['floor50']:>9.2f}x"
            f"{m['path99'] / m['floor99']:>6.2f}x{m['path50'] / m['store50']:>8.2f}x"
            f"{m['rate']:>7.0f}{m['loaded_rate']:>13.0f}"
            f"{m['redis_us']:>13.1f}{m['loaded_us']:>8.1f}{m['back_us']:>6.1f}{core:>11.0f}"
        )
    for name, m in measured.items():
        print(f"{name}: {dict(m['verdicts'].most_common())}")
    if processes:
        for name, m in measured.items():
            rate = m["processes_rate"]
            print(
                f"{name}, {processes} processes at once, {concurrency} in flight each: "
                f"{rate:.0f} decisions/s ({rate / processes:.0f} each, "
                f"{rate / m['loaded_rate']:.2f}x one loaded process), Redis µs per decision "
                f"{m['processes_us']:.1f}; {dict(m['processes_verdicts'].most_common())}"
            )
    for law_name, base in PAIRS:
        if law_name in measured and base in measured:
            with_law, without = measured[law_name], measured[base]
            print(
                f"{law_name} / {base}: Redis µs per decision seq "
                f"{with_law['redis_us'] / without['redis_us']:.2f}x, loaded "
                f"{with_law['loaded_us'] / without['loaded_us']:.2f}x, b2b "
                f"{with_law['back_us'] / without['back_us']:.2f}x; decide p50 "
                f"{with_law['path50'] / without['path50']:.2f}x"
            )
    for law_name, base in PAIRS:
        if law_name in names and base in names:
            law_med, base_med, law_min, base_min = await pair(
                url, law_name, base, max(n, 5000), list_size
            )
            print(
                f"{law_name} vs {base}, one store, alternating chunks of 500 back to back: "
                f"Redis µs per decision median {law_med:.1f} vs {base_med:.1f} "
                f"({law_med / base_med:.2f}x), best {law_min:.1f} vs {base_min:.1f} "
                f"({law_min / base_min:.2f}x)"
            )
    if PROTOCOL and PROTOCOL_AVAILABLE:
        pre, plain = await protocol(url, min(n, 2000))
        print(
            f"one EVALSHA (sample, recorded), p50: pre-encoded {pre:.0f} µs, redis-py evalsha "
            f"{plain:.0f} µs: {plain / pre:.2f}x"
        )
    if DEFAULT_BUSY_POLL_S:
        m = await polling(url, min(n, 3000))
        (off_rate, off50, off_cpu), (on_rate, on50, on_cpu) = m[False], m[True]
        print(
            f"busy polling {DEFAULT_BUSY_POLL_S * 1e6:.0f} µs (sample, sequential, "
            f"alternating rounds): off {off_rate:.0f} decisions/s, p50 {off50:.0f} µs, CPU "
            f"{off_cpu:.0f} µs per decision; on {on_rate:.0f}, {on50:.0f} µs, {on_cpu:.0f} µs: "
            f"{on_rate / off_rate:.2f}x decisions/s, p50 {on50 / off50:.2f}x, "
            f"CPU {on_cpu / off_cpu:.2f}x"
        )


def cpu_list(text: str) -> set[int]:
    """``--cpus``: "0", "0,1" (CPU numbers this machine has)."""
    try:
        cpus = {int(part) for part in text.split(",")}
    except ValueError:
        message = f"{text!r}: expected CPU numbers such as 0 or 0,1"
        raise argparse.ArgumentTypeError(message) from None
    unknown = cpus - os.sched_getaffinity(0)
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: no CPU {min(unknown)} here")
    return cpus


def server_name(url: str) -> str:
    """What answers at ``url``, e.g. "Redis 6.2.6" or "Valkey 9.1.2" (its INFO server)."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    name = str(info.get("server_name", "redis"))
    version = info.get(f"{name}_version", info["redis_version"])
    return f"{name.capitalize()} {version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16, help="in flight when loaded")
    parser.add_argument("--scenarios", default="lean,sample,fr")
    parser.add_argument("--list-size", type=int, default=1_000_000)
    parser.add_argument(
        "--cpus",
        type=cpu_list,
        help="run on these CPUs only, with the redis-server started (e.g. 0, or 0,1)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="then this many processes deciding at once, each loaded as above (default: "
        "one per CPU; 0: skip)",
    )
    parser.add_argument(
        "--loop",
        choices=sorted(LOOPS),
        default="uvloop",
        help="the event loop (default uvloop, as callgate run serves its doors)",
    )
    args = parser.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; use {', '.join(SCENARIOS)}")
    if args.processes < 0:
        parser.error(f"--processes {args.processes}: give 0 (none) or more")
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)  # before the server starts: it inherits them
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    print(f"event loop {args.loop}; CPUs {cpus}" + (" (this process)" if args.redis_url else ""))
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(redis_server())
        print(f"server: {server_name(url)}")
        with asyncio.Runner(loop_factory=LOOPS[args.loop]) as runner:
            runner.run(
                run(
                    url,
                    args.n,
                    args.concurrency,
                    names,
                    args.list_size,
                    args.processes,
                    args.loop,
                )
            )


if __name__ == "__main__":
    main()
