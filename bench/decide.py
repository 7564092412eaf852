"""Benchmark: the full in-process decision path against a real Redis, beside the PING floor.

    python bench/decide.py [--redis-url URL] [--n 5000] [--concurrency 1]

Starts its own redis-server on a free loopback TCP port unless --redis-url is given.
Measures, in the same process and session:
- the floor: redis-py asyncio PING round trips;
- the store's share: the same EVALSHA alone (redis-py, arguments encoded once, not
  recording), what the path costs beyond callgate's own work;
- the path: ``Gate.decide`` = engine.plan + one EVALSHA of decide.lua (2 list lookups,
  1 cap log, 1 CPS log, recording) + engine.conclude;
- the difference of the p50s: plan, conclude, the store client's encoding and the
  recording writes.
Prints p50/p99 of each, decisions per second, and the ratios path/floor. Absolute numbers
depend on the machine and its load; compare ratios within one run. ``--concurrency C``
runs C decisions at a time (the aggregate rate of one process).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import redis_server

from gate.config.loader import parse_config
from gate.core.model import Attempt, Decision
from gate.service import Gate
from gate.store.client import Store, encode_checks, load_script

CONFIG = {
    "privacy": {"secret": "bench-secret-0123456789"},
    "lists": [
        {"name": "red", "kind": "block", "scope": "tenant"},
        {"name": "dnc", "kind": "block", "scope": "global"},
    ],
    "caps": [{"id": "fr-4-per-30d", "limit": 4, "window": "30d"}],
    "trunks": {"cps": {"carrier-a": 100}},
}


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def timed(n: int, concurrency: int, op: object) -> tuple[list[float], float]:
    """Latencies (µs) of n calls of ``op(i)`` with ``concurrency`` workers, and total seconds."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await op(i)  # type: ignore[operator]
            latencies.append((time.perf_counter() - start) * 1e6)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def run(url: str, n: int, concurrency: int) -> None:
    client = aioredis.Redis.from_url(url)
    config = parse_config(CONFIG, "bench", Path(tempfile.gettempdir()))
    store = Store(url, deadline_s=1.0)
    gate = Gate(config, store)
    await client.flushdb()
    await client.ping()
    await gate.decide(
        Attempt("0612345678", datetime.now(UTC)), record=True, door="cli"
    )  # load the script, warm up
    numbers = [f"+3361{i:07d}" for i in range(n)]

    async def ping(_: int) -> None:
        await client.ping()

    sample = gate.active.planner(False).plan(
        Attempt("+33612345678", datetime.now(UTC), trunk="carrier-a", campaign="bench")
    )
    assert not isinstance(sample, Decision)
    keys, argv = encode_checks(sample.check)
    sha = await client.script_load(load_script("decide.lua"))

    async def evalsha(_: int) -> None:
        await client.evalsha(sha, len(keys), *keys, *argv)  # type: ignore[misc]

    start = datetime.now(UTC)

    async def decide(i: int) -> None:
        # Attempt times 20 ms apart (50 calls/s on the trunk): the CPS log stays realistic.
        now = start + timedelta(milliseconds=20 * i)
        await gate.decide(
            Attempt(numbers[i], now, trunk="carrier-a", campaign="bench"), record=True, door="cli"
        )

    # Alternate rounds so that drift in machine load hits both sides alike.
    floor: list[float] = []
    bare: list[float] = []
    path: list[float] = []
    path_seconds = 0.0
    rounds = 5
    for r in range(rounds):
        lat, _secs = await timed(n // rounds, concurrency, ping)
        floor += lat
        lat, _secs = await timed(n // rounds, concurrency, evalsha)
        bare += lat
        offset = r * (n // rounds)
        lat, secs = await timed(n // rounds, concurrency, lambda i, o=offset: decide(o + i))
        path += lat
        path_seconds += secs
    await store.close()
    await client.aclose()

    p50f, p99f = percentile(floor, 50), percentile(floor, 99)
    p50d, p99d = percentile(path, 50), percentile(path, 99)
    p50e, p99e = percentile(bare, 50), percentile(bare, 99)
    print(f"redis {url.split('@')[-1]}, {len(path)} decisions, concurrency {concurrency}")
    print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}")
    print(f"{'PING floor (redis-py)':24}{p50f:>10.0f}{p99f:>10.0f}")
    print(f"{'EVALSHA alone (redis-py)':24}{p50e:>10.0f}{p99e:>10.0f}")
    print(f"{'decide (core + EVALSHA)':24}{p50d:>10.0f}{p99d:>10.0f}")
    print(
        f"p50 decide - p50 bare EVALSHA (plan, conclude, encoding, recording): {p50d - p50e:.0f} µs"
    )
    print(f"ratio decide/PING: p50 {p50d / p50f:.2f}x, p99 {p99d / p99f:.2f}x")
    print(f"decisions per second: {len(path) / path_seconds:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.n, args.concurrency))
        return
    with redis_server() as url:
        asyncio.run(run(url, args.n, args.concurrency))


if __name__ == "__main__":
    main()
