"""Benchmark: the full in-process decision path against a real Redis, beside the PING floor.

    python bench/decide.py [--redis-url URL] [--n 5000] [--concurrency 16]
                           [--scenarios lean,sample,fr] [--list-size 1000000]

Starts its own redis-server on a free loopback TCP port unless --redis-url is given.
Measures, in the same process and session, per scenario:
- the floor: redis-py asyncio PING round trips;
- the store's share: the scenario's EVALSHA alone (redis-py, arguments encoded once, not
  recording), what the path costs beyond callgate's own work;
- the path: ``Gate.decide`` = engine.plan + one EVALSHA of decide.lua + engine.conclude,
  recording (so each decision also writes its audit entry in the script), one at a time;
  the difference of the p50s (``own µs``) is plan, conclude, the store client's encoding
  and the recording writes; then ``n`` more with ``--concurrency`` in flight (loaded:
  Redis works back to back);
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
Last, one recorded decision's EVALSHA sent pre-encoded (the store's path) against
redis-py's ``evalsha`` with the same arguments (p50 of the call alone).
Absolute numbers depend on the machine and its load; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import redis_server

from gate.config.loader import parse_config
from gate.core.engine import Plan, plan
from gate.core.model import Attempt
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.store.client import Store

# This benchmark also runs against callgate before key layout 2 (to compare layouts).
try:
    from gate.service import _with_evidence as with_evidence
except ImportError:  # before the evidence moved into decide.lua
    with_evidence = None  # type: ignore[assignment]
try:
    from gate.store.client import DECIDE, _encode, _Use

    LAYOUT = 2
except ImportError:  # key layout 1
    import gate.store.client as legacy

    LAYOUT = 1
PROTOCOL_AVAILABLE = LAYOUT == 2

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
SCENARIOS: dict[str, dict[str, Any]] = {"lean": LEAN, "sample": SAMPLE, "fr": FR}
# A past Tuesday inside the fr pack's calling hours (10:00-13:00 Paris). In the past, so
# that attempt logs expire by the attempts' own clock (entries dated after Redis's clock
# are kept until its clock passes them).
START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
ROUNDS = 5
# The pre-encoded vs redis-py comparison needs the store's internals of this version.
PROTOCOL = True


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
    client: aioredis.Redis, gate: Gate, numbers: list[str], caller_id: str | None, n: int
) -> float:
    """Redis µs per decision when Redis works without pause: ``n`` more recorded decisions,
    planned and encoded beforehand, sent 50 per request, in chunks of 500 each measured
    alone; the best chunk (the least interference from the rest of a shared machine).
    Runs against callgate before key layout 2 too (its encoding), to compare layouts."""
    store, active = gate.store, gate.active
    requests: list[tuple[Any, int]] = []
    for i in range(n):
        now = START + timedelta(days=1, milliseconds=20 * i)
        attempt = Attempt(numbers[i], now, trunk="carrier-a", caller_id=caller_id)
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


async def scenario(
    url: str, name: str, n: int, concurrency: int, list_size: int
) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    config = parse_config(SCENARIOS[name], "bench", Path(tempfile.gettempdir()))
    store = Store(url, deadline_s=1.0)
    gate = Gate(config, store)
    await client.flushdb()
    numbers = fr_lines("+3361", 2 * n + 1)
    if name != "lean":
        await populate(gate, list_size, numbers, consent=name == "fr")
    caller_id = "+33162000000" if name == "fr" else None
    await gate.decide(Attempt(numbers[-1], START), record=True, door="cli")  # load, warm up
    await client.ping()

    async def ping(_: int) -> None:
        await client.ping()

    # The scenario's EVALSHA alone: one plan, encoded once, sent by redis-py, not recording.
    sample = plan(
        Attempt(numbers[-1], START, trunk="carrier-a", caller_id=caller_id),
        config.policy,
        gate.active.keyspace,
        False,
    )
    assert isinstance(sample, Plan)
    if LAYOUT == 2:
        encoded = _encode([sample.check], store._views)
        sha, keys, argv = DECIDE.sha, encoded.keys, list(encoded.args)
    else:
        keys, argv = legacy.encode_checks(sample.check)
        sha = store._decide.sha.encode()

    async def evalsha(_: int) -> None:
        await client.evalsha(sha.decode(), len(keys), *keys, *argv)  # type: ignore[misc]

    async def decide(i: int) -> None:
        # Attempt times 20 ms apart (50 calls/s on the trunk): the CPS log stays realistic.
        now = START + timedelta(milliseconds=20 * i)
        attempt = Attempt(numbers[i], now, trunk="carrier-a", caller_id=caller_id)
        await gate.decide(attempt, record=True, door="cli")

    # Alternate rounds so that drift in machine load hits both sides alike.
    floor: list[float] = []
    bare: list[float] = []
    path: list[float] = []
    redis_rounds: list[float] = []
    path_seconds = 0.0
    for r in range(ROUNDS):
        lat, _secs = await timed(n // ROUNDS, 1, ping)
        floor += lat
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
    back_to_back_us = await back_to_back(client, gate, numbers, caller_id, n)
    await store.close()
    await client.aclose()
    return {
        "floor50": percentile(floor, 50),
        "floor99": percentile(floor, 99),
        "bare50": percentile(bare, 50),
        "path50": percentile(path, 50),
        "path99": percentile(path, 99),
        "rate": len(path) / path_seconds,
        "loaded_rate": n / loaded_s,
        "redis_us": sequential_us,
        "loaded_us": loaded_us,
        "back_us": back_to_back_us,
    }


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
        attempt = Attempt(numbers[i], START + timedelta(milliseconds=20 * i), trunk="carrier-a")
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


async def run(url: str, n: int, concurrency: int, names: list[str], list_size: int) -> None:
    print(
        f"redis {url.split('@')[-1]}, {n} decisions per scenario (sequential), then {n} "
        f"with {concurrency} in flight (loaded); lists: dnc {list_size}, red {list_size // 10}, "
        f"customers {list_size // 100}"
    )
    header = (
        f"{'scenario':9}{'PING p50':>9}{'p99':>6}{'EVALSHA p50':>12}{'decide p50':>11}{'p99':>6}"
        f"{'own µs':>7}"
        f"{'ratio p50':>10}{'p99':>7}{'dec/s':>7}{'loaded dec/s':>13}"
        f"{'Redis µs seq':>13}{'loaded':>8}{'b2b':>6}{'dec/s/core':>11}"
    )
    print(header)
    for name in names:
        m = await scenario(url, name, n, concurrency, list_size)
        core = 1e6 / m["back_us"] if m["back_us"] else 0.0
        print(
            f"{name:9}{m['floor50']:>9.0f}{m['floor99']:>6.0f}{m['bare50']:>12.0f}"
            f"{m['path50']:>11.0f}{m['path99']:>6.0f}{m['path50'] - m['bare50']:>7.0f}"
            f"{m['path50'] / m['floor50']:>9.2f}x"
            f"{m['path99'] / m['floor99']:>6.2f}x{m['rate']:>7.0f}{m['loaded_rate']:>13.0f}"
            f"{m['redis_us']:>13.1f}{m['loaded_us']:>8.1f}{m['back_us']:>6.1f}{core:>11.0f}"
        )
    if PROTOCOL and PROTOCOL_AVAILABLE:
        pre, plain = await protocol(url, min(n, 2000))
        print(
            f"one EVALSHA (sample, recorded), p50: pre-encoded {pre:.0f} µs, redis-py evalsha "
            f"{plain:.0f} µs: {plain / pre:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16, help="in flight when loaded")
    parser.add_argument("--scenarios", default="lean,sample,fr")
    parser.add_argument("--list-size", type=int, default=1_000_000)
    args = parser.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; use {', '.join(SCENARIOS)}")
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.n, args.concurrency, names, args.list_size))
        return
    with redis_server() as url:
        asyncio.run(run(url, args.n, args.concurrency, names, args.list_size))


if __name__ == "__main__":
    main()
