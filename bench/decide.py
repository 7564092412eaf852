"""Benchmark: the full in-process decision path against a real Redis, beside the PING floor.

    python bench/decide.py [--redis-url URL] [--n 5000] [--concurrency 1]
                           [--scenarios lean,sample,fr] [--list-size 1000000]

Starts its own redis-server on a free loopback TCP port unless --redis-url is given.
Measures, in the same process and session, per scenario:
- the floor: redis-py asyncio PING round trips;
- the path: ``Gate.decide`` = engine.plan + one EVALSHA of decide.lua + engine.conclude,
  recording (so each decision also writes its audit entry in the script);
- Redis's own time per decision: ``usec_per_call`` of EVALSHA in ``INFO commandstats``
  (reset before the measured rounds).
Scenarios:
- ``lean``: two block lists (empty), one cap, one trunk CPS cap (the historical baseline);
- ``sample``: the lists of config/callgate.toml (red, dnc, customers exempting dnc) with
  populated lists (dnc ``--list-size`` numbers, red a tenth, customers a hundredth), the
  trunk's CPS cap, no law pack;
- ``fr``: the same with the ``fr`` pack (hours, 4 attempts per 30 days, opt-in consent
  held by every number decided, refusal cool-off, caller-ID ranges).
Prints p50/p99 of both, decisions per second, the ratios path/floor and the Redis time.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import redis_server

from gate.config.loader import parse_config
from gate.core.model import Attempt
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.store.client import Store

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


async def scenario(
    url: str, name: str, n: int, concurrency: int, list_size: int
) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    config = parse_config(SCENARIOS[name], "bench", Path(tempfile.gettempdir()))
    store = Store(url, deadline_s=1.0)
    gate = Gate(config, store)
    await client.flushdb()
    numbers = fr_lines("+3361", n)
    if name != "lean":
        await populate(gate, list_size, numbers, consent=name == "fr")
    start = START
    caller_id = "+33162000000" if name == "fr" else None
    await gate.decide(Attempt("0612345678", start), record=True, door="cli")  # load, warm up
    await client.ping()

    async def ping(_: int) -> None:
        await client.ping()

    async def decide(i: int) -> None:
        # Attempt times 20 ms apart (50 calls/s on the trunk): the CPS log stays realistic.
        now = start + timedelta(milliseconds=20 * i)
        attempt = Attempt(numbers[i], now, trunk="carrier-a", caller_id=caller_id)
        await gate.decide(attempt, record=True, door="cli")

    await client.config_resetstat()
    # Alternate rounds so that drift in machine load hits both sides alike.
    floor: list[float] = []
    path: list[float] = []
    path_seconds = 0.0
    for r in range(ROUNDS):
        lat, _secs = await timed(n // ROUNDS, concurrency, ping)
        floor += lat
        offset = r * (n // ROUNDS)
        lat, secs = await timed(n // ROUNDS, concurrency, lambda i, o=offset: decide(o + i))
        path += lat
        path_seconds += secs
    stats = await client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    await store.close()
    await client.aclose()
    return {
        "floor50": percentile(floor, 50),
        "floor99": percentile(floor, 99),
        "path50": percentile(path, 50),
        "path99": percentile(path, 99),
        "rate": len(path) / path_seconds,
        "redis_us": float(evalsha.get("usec_per_call", 0.0)),
        "calls": float(evalsha.get("calls", 0)),
    }


async def run(url: str, n: int, concurrency: int, names: list[str], list_size: int) -> None:
    print(f"redis {url.split('@')[-1]}, {n} decisions per scenario, concurrency {concurrency}")
    header = (
        f"{'scenario':10}{'PING p50':>10}{'p99':>7}{'decide p50':>12}{'p99':>7}"
        f"{'ratio p50':>11}{'p99':>7}{'dec/s':>8}{'Redis µs/decision':>19}"
    )
    print(header)
    for name in names:
        m = await scenario(url, name, n, concurrency, list_size)
        print(
            f"{name:10}{m['floor50']:>10.0f}{m['floor99']:>7.0f}{m['path50']:>12.0f}"
            f"{m['path99']:>7.0f}{m['path50'] / m['floor50']:>10.2f}x"
            f"{m['path99'] / m['floor99']:>6.2f}x{m['rate']:>8.0f}{m['redis_us']:>19.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1)
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
