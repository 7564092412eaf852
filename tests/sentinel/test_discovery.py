"""Finding the master through the sentinels, from many connections at once.

Every new connection asks the sentinels for the master, so a failover makes many tasks
ask at the same moment; the list of sentinels must stay the configured one.
"""

from __future__ import annotations

import asyncio
import socket

from gate.store.client import Store
from tests.conftest import make_config
from tests.sentinel.group import SERVICE, SentinelGroup


async def test_concurrent_discoveries_keep_every_sentinel(sentinel_group: SentinelGroup) -> None:
    """With the first configured sentinel down, 50 concurrent discoveries of the master all
    find it, and the list still holds each configured sentinel once (redis-py's own
    discover_master, swapping by a stale index, duplicated one and dropped another)."""
    holder = socket.socket()  # bound, never listening: the port refuses for the whole test
    holder.bind(("127.0.0.1", 0))
    dead = int(holder.getsockname()[1])
    redis = dict(sentinel_group.redis_config)
    redis["sentinel"] = {
        **redis["sentinel"],
        "nodes": [f"127.0.0.1:{dead}", *redis["sentinel"]["nodes"]],
    }
    config = make_config({"redis": redis}).redis
    store = Store(None, 1.0, config)
    try:
        sentinels = store.link._sentinels()
        found = await asyncio.gather(*(sentinels.discover_master(SERVICE) for _ in range(50)))
        ports = sorted(s.connection_pool.connection_kwargs["port"] for s in sentinels.sentinels)
    finally:
        await store.close()
        holder.close()
    assert {("127.0.0.1", sentinel_group.master.port)} == set(found)
    assert sorted([dead, *(s.port for s in sentinel_group.sentinels)]) == ports
