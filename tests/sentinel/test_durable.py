"""Durable writes on a Sentinel-managed group: acknowledged only once a replica holds them.

An opt-out (``list add`` or ``list import`` to a block list, the AGI ``optout`` route), a
consent revocation and a refusal must survive a failover. Replication is asynchronous, so
callgate answers them only after ``WAIT 1`` (``redis.wait_replicas``, default 1 with
sentinels) says the replica has them, within ``redis.wait_timeout``; otherwise the user
gets an error and may send it again.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agi.server import AgiServer
from gate.config.loader import Config, RedisConfig
from gate.core.errors import NotReplicated
from gate.core.model import Attempt
from gate.lists.admin import ListAdmin
from gate.runtime import open_gate
from gate.service import Gate
from tests.agi.test_server import agi_call
from tests.conftest import make_config
from tests.sentinel.group import SentinelGroup, running_group, sentinel_ready, wait_until

NUMBER = "+33612345678"
PACKS_DIR = Path(__file__).resolve().parents[2] / "config" / "packs"


def config_on(group: SentinelGroup, **redis: object) -> Config:
    """A gate on ``group`` with the fr pack (consent lists, the refusal cool-off)."""
    return make_config(
        {
            "gate": {"default_region": "FR", "packs": ["fr"], "packs_dir": str(PACKS_DIR)},
            "redis": {**group.redis_config, **redis},
            "audit": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def durable_group() -> Iterator[SentinelGroup]:
    """One group for the module: these tests pause the replica but never fail over, so
    the group is the same after each; every process stopped by PID afterwards."""
    with running_group() as group:
        yield group


def _emptied(group: SentinelGroup) -> bool:
    """The master (still the one the sentinels name) emptied, and the replica holds that."""
    client = group.master.client()
    try:
        client.flushall()
        return group.master_port() == group.master.port and client.wait(1, 5000) >= 1
    finally:
        client.close()


@pytest.fixture
def sentinel_group(durable_group: SentinelGroup) -> SentinelGroup:
    """The module's group as a fresh one starts: the replica running, the master empty
    and its replica in sync with it, every sentinel watching the replica (up) and the two
    others (overrides the conftest's fresh group per test)."""
    durable_group.replica.signal(signal.SIGCONT)
    wait_until("emptied and in sync", lambda: _emptied(durable_group), timeout_s=10.0)
    wait_until("watching", lambda: all(sentinel_ready(s) for s in durable_group.sentinels))
    return durable_group


@pytest.fixture
async def gate(sentinel_group: SentinelGroup) -> AsyncIterator[Gate]:
    async with open_gate(config_on(sentinel_group, wait_timeout="500ms")) as gate:
        yield gate


async def on_replica(group: SentinelGroup, number: str) -> str:
    """What a gate reading the REPLICA decides about ``number`` (reason code)."""
    url = f"redis://:{group.replica.password}@127.0.0.1:{group.replica.port}/0"
    config = config_on(group)
    config = dataclasses.replace(config, redis=RedisConfig(url=url))
    async with open_gate(config) as gate:
        decision = await gate.decide(
            Attempt(dialled=number, now=datetime.now(UTC), caller_id="0162000000"),
            record=False,
            door="cli",
        )
    return decision.reason


# Each durable write, as the admin commands, the API and the AGI routes call it.
WRITES: dict[str, Callable[[Gate], Awaitable[object]]] = {
    "opt-out (list add to a block list)": lambda gate: ListAdmin.of(gate).add(
        "red", [NUMBER], "default", ""
    ),
    "opt-out (list import to a block list)": lambda gate: ListAdmin.of(gate).import_entries(
        "red", [(1, NUMBER)], "default", "", print, mode="add"
    ),
    "consent revocation": lambda gate: ListAdmin.of(gate).revoke([NUMBER], "default", ""),
    "refusal": lambda gate: ListAdmin.of(gate).record_event(
        "refusal", NUMBER, "default", datetime.now(UTC)
    ),
}
# What a gate on the replica then says about NUMBER (the fr pack asks for consent first).
ON_REPLICA = {
    "opt-out (list add to a block list)": "listed:red",
    "opt-out (list import to a block list)": "listed:red",
    "consent revocation": "listed:red",
    "refusal": "refusal:fr-d223-9-refusal",
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_durable_write_is_acknowledged_once_the_replica_holds_it(
    sentinel_group: SentinelGroup, gate: Gate, write: str
) -> None:
    """Once acknowledged, the replica already enforces it."""
    if write == "refusal":  # with consent, the refusal is what stops the call
        await ListAdmin.of(gate).add("consent", [NUMBER], "default", "")
    await WRITES[write](gate)
    assert ON_REPLICA[write] == await on_replica(sentinel_group, NUMBER)


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_durable_write_no_replica_confirms_in_time_is_not_acknowledged(
    sentinel_group: SentinelGroup, gate: Gate, write: str
) -> None:
    """With the replica paused, the write fails with NotReplicated after wait_timeout
    (it is in force on the master, but could be lost in a failover)."""
    sentinel_group.replica.signal(signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(NotReplicated, match=r"0 of 1 replica\(s\) confirmed it within 0.5 s"):
            await WRITES[write](gate)
    finally:
        sentinel_group.replica.signal(signal.SIGCONT)
    assert 0.5 <= time.monotonic() - started < 5.0


async def test_the_agi_optout_route_reports_an_unacknowledged_optout(
    sentinel_group: SentinelGroup, gate: Gate
) -> None:
    """Through FastAGI: OK once the replica holds the opt-out; ERROR
    optout_failed:NotReplicated while no replica confirms it."""
    server = AgiServer(gate, "127.0.0.1", 0, header_timeout_s=2.0)
    await server.start()
    try:
        held = await agi_call(server.port, "optout?tenant=default", extension="0612345678")
        sentinel_group.replica.signal(signal.SIGSTOP)
        try:
            refused = await agi_call(server.port, "optout?tenant=default", extension="0612345679")
        finally:
            sentinel_group.replica.signal(signal.SIGCONT)
    finally:
        await server.stop()
    assert ("OK", "ERROR", "optout_failed:NotReplicated") == (
        held.variables["CALLGATE_RESULT"],
        refused.variables["CALLGATE_RESULT"],
        refused.variables["CALLGATE_REASON"],
    )
