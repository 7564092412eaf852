"""Benchmark: how a list spreads over a Redis Cluster's shards, and decisions against it.

    python bench/cluster.py [--numbers 1000000] [--masters 3] [--n 2000]

Starts a cluster of local redis-server processes (``--masters`` masters, one replica each;
tests/cluster.py), imports a list of ``--numbers`` French mobile numbers with the code of
``callgate list import --replace`` (hashed, the sample's ``dnc``), and reports per master:
keys, memory used by the import (``used_memory`` after minus before) and bytes per
number, with the largest shard over the smallest (goal: at most 1.1). Then it times
``--n`` sequential recorded decisions (the sample config: red, dnc, customers, a trunk's
CPS) through the cluster client, beside the same on one server started alike.
Absolute numbers depend on the machine and its load; compare ratios within one run.
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

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import redis_server
from decide import SAMPLE, fr_lines

from gate.config.loader import parse_config
from gate.core.model import Attempt
from gate.lists.admin import ListAdmin
from gate.lists.formats import Rejected
from gate.service import Gate
from gate.store.client import Store
from tests.cluster import LocalCluster


def reject(_: Rejected) -> None:
    raise AssertionError("bench list entry rejected")


async def import_list(store: Store, count: int) -> float:
    """Import ``count`` numbers into dnc (``--replace``); returns the seconds it took."""
    gate = Gate(parse_config(SAMPLE, "bench", Path(tempfile.gettempdir())), store)
    values = fr_lines("+3362", count)
    started = time.perf_counter()
    await ListAdmin.of(gate).import_entries(
        "dnc", list(enumerate(values, start=1)), "default", "", reject, mode="replace",
        expected=count,
    )  # fmt: skip
    return time.perf_counter() - started


async def decide(store: Store, n: int) -> float:
    """p50 µs of ``n`` sequential recorded decisions (sample config, numbers not listed)."""
    gate = Gate(parse_config(SAMPLE, "bench", Path(tempfile.gettempdir())), store)
    numbers = fr_lines("+3361", n + 1)
    now = datetime.now(UTC)
    await gate.decide(Attempt(numbers[-1], now), record=True, door="cli")
    latencies = []
    for i in range(n):
        attempt = Attempt(numbers[i], now + timedelta(milliseconds=20 * i), trunk="carrier-a")
        started = time.perf_counter()
        await gate.decide(attempt, record=True, door="cli")
        latencies.append((time.perf_counter() - started) * 1e6)
    return statistics.median(latencies)


def memory(port: int) -> tuple[int, int]:
    client = redis.Redis(port=port)
    try:
        return int(client.dbsize()), int(client.info("memory")["used_memory"])
    finally:
        client.close()


async def on_cluster(cluster: LocalCluster, numbers: int, n: int) -> tuple[float, float]:
    """Import into the cluster, print the spread per master; the decisions' p50."""
    masters = cluster.masters_now()
    before = {m.port: memory(m.port) for m in masters}
    store = Store(cluster.seeds[0], deadline_s=2.0, nodes=cluster.seeds)
    try:
        seconds = await import_list(store, numbers)
        after = {m.port: memory(m.port) for m in masters}
        print(
            f"{len(masters)} masters + {len(masters)} replicas; imported {numbers} numbers in "
            f"{seconds:.1f} s ({numbers / seconds / 1000:.0f} k/s)"
        )
        print(f"{'master':>8}{'keys':>10}{'memory MB':>11}{'bytes/number':>14}")
        used = {}
        for port in sorted(after):
            used[port] = after[port][1] - before[port][1]
            share = numbers / len(after)
            print(
                f"{port:>8}{after[port][0]:>10}{used[port] / 1e6:>11.1f}{used[port] / share:>14.1f}"
            )
        keys = [after[p][0] for p in after]
        print(
            f"largest/smallest shard: keys {max(keys) / min(keys):.3f}, "
            f"memory {max(used.values()) / min(used.values()):.3f}"
        )
        return seconds, await decide(store, n)
    finally:
        await store.close()


async def on_one_server(url: str, n: int) -> float:
    store = Store(url, deadline_s=2.0)
    try:
        await import_list(store, 10_000)
        return await decide(store, n)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=1_000_000)
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cg-cluster-") as tmp:
        cluster = LocalCluster(Path(tmp), masters=args.masters, replicas=1).start()
        try:
            _, cluster_p50 = asyncio.run(on_cluster(cluster, args.numbers, args.n))
        finally:
            cluster.stop()
    with redis_server() as url:
        single_p50 = asyncio.run(on_one_server(url, args.n))
    print(
        f"decision p50 (sample, recorded, CPS): cluster {cluster_p50:.0f} µs (CPS reserved in "
        f"its own slot: 2 calls), one server {single_p50:.0f} µs: {cluster_p50 / single_p50:.2f}x"
    )


if __name__ == "__main__":
    main()
