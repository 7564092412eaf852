"""Redis Cluster mode against a REAL cluster: 3 masters + 3 replicas of local redis-server.

The cluster (tests/cluster.py) is started once for the module and flushed before each
test; the failover test starts its own, as it kills a master. Numbers are picked in given
slot groups (gate/core/keys.py) so that each test knows which shard holds what.
"""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from agi.server import AgiServer
from gate.cli import main
from gate.config.loader import RedisConfig
from gate.core.errors import NotReplicated, StoreError, StoreUnavailable
from gate.core.keys import SLOT_GROUPS, Keyspace
from gate.core.model import Attempt, Decision, TrafficClass, Verdict
from gate.lists.admin import ListAdmin
from gate.lists.formats import Rejected
from gate.lists.scrub import scrub
from gate.ops.audit import read_range
from gate.service import Gate
from gate.store import client as store_client
from gate.store.client import Store
from gate.store.lists import ListStore
from tests.agi.test_server import agi_call
from tests.cluster import LocalCluster, Node
from tests.conftest import BASE_CONFIG, TEST_SECRET, make_config
from tests.ops.conftest import labels, serve

KEYS = Keyspace("callgate", TEST_SECRET.encode())
TENANT = "default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 masters, 3 replicas, started once for the module, stopped by PID."""
    local = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def seeds(cluster: LocalCluster) -> list[str]:
    cluster.wait_ok()
    cluster.flush()
    return cluster.seeds


@pytest.fixture
async def gate(seeds: list[str]) -> AsyncIterator[Gate]:
    store = Store(seeds[0], deadline_s=1.0, nodes=seeds)
    yield Gate(make_config(), store)
    await store.close()


def numbers_in(group: int, count: int, start: int = 0) -> list[str]:
    """``count`` French mobile numbers whose slot group is ``group``."""
    found: list[str] = []
    for i in range(start, start + 10_000_000):
        e164 = f"+3361{i:07d}"
        if KEYS.number(e164).group == group:
            found.append(e164)
            if len(found) == count:
                return found
    raise AssertionError("not enough numbers")


def groups_by_master(cluster: LocalCluster) -> dict[int, list[int]]:
    """The slot groups each master serves (by port), from one look at the slot map."""
    masters = cluster.masters_of([16 * group for group in range(SLOT_GROUPS)])
    out: dict[int, list[int]] = {}
    for group in range(SLOT_GROUPS):
        out.setdefault(masters[16 * group].port, []).append(group)
    return out


def one_number_per_master(cluster: LocalCluster, start: int = 0) -> list[str]:
    return [numbers_in(groups[7], 1, start)[0] for groups in groups_by_master(cluster).values()]


def attempt(number: str, at: datetime | None = None, **kw: object) -> Attempt:
    return Attempt(number, at or datetime.now(UTC), **kw)  # type: ignore[arg-type]


def entries(values: list[str]) -> list[tuple[int, str | Rejected]]:
    return list(enumerate(values, start=1))


def fail_on_reject(rejected: Rejected) -> None:
    raise AssertionError(rejected)


async def test_decisions_run_on_every_shard(gate: Gate, cluster: LocalCluster) -> None:
    """Lists, exemptions and caps decide alike on the three masters, each number's keys on
    its own shard (every master holds some), with one call per decision."""
    red, dnc, customer, free = (
        one_number_per_master(cluster, s) for s in (0, 100_000, 200_000, 300_000)
    )
    admin = ListAdmin.of(gate)
    await admin.add("red", red, TENANT, "")
    await admin.add("dnc", dnc + customer, TENANT, "")
    await admin.add("customers", customer, TENANT, "")
    verdicts = [
        (await gate.decide(attempt(n), record=True, door="cli")).reason
        for n in red + dnc + customer + free
    ]
    capped = [
        (await gate.decide(attempt(free[0]), record=True, door="cli")).reason for _ in range(4)
    ]
    sizes = [node.client().dbsize() for node in cluster.masters_now()]
    assert ["listed:red"] * 3 + ["listed:dnc"] * 3 + ["allowed"] * 6 == verdicts
    assert ["allowed"] * 3 + ["cap:fr-4-per-30d"] == capped
    assert all(size > 0 for size in sizes)


async def test_two_hundred_concurrent_attempts_allow_exactly_the_cap(gate: Gate) -> None:
    """200 concurrent recorded attempts on one number, cap 4: exactly 4 ALLOW."""
    now = datetime.now(UTC)
    decisions = await asyncio.gather(
        *(gate.decide(attempt("+33612345678", now), record=True, door="cli") for _ in range(200))
    )
    assert 4 == [d.verdict for d in decisions].count(Verdict.ALLOW)


async def test_the_next_decision_after_a_list_swap_sees_the_new_version_on_every_shard(
    gate: Gate, seeds: list[str], cluster: LocalCluster
) -> None:
    """A gate decides against list version A (its view of the list cached); another
    process replaces the list by B; the gate's very next decision on a number of each
    master sees B, not A."""
    groups = groups_by_master(cluster)
    old = [n for g in groups.values() for n in numbers_in(g[3], 5)]
    new = [n for g in groups.values() for n in numbers_in(g[5], 5)]
    importer = Store(seeds[0], deadline_s=5.0, nodes=seeds)
    try:
        admin = ListAdmin(gate.config.policy, gate.keyspace, importer)
        await admin.import_entries(
            "red", entries(old), TENANT, "", fail_on_reject, mode="replace", expected=15
        )
        before = [(await gate.decide(attempt(n), record=False, door="cli")).reason for n in old]
        await admin.import_entries(
            "red", entries(new), TENANT, "", fail_on_reject, mode="replace", expected=15
        )
        after_old = [
            (await gate.decide(attempt(n), record=False, door="cli")).reason for n in old[::5]
        ]
        after_new = [
            (await gate.decide(attempt(n), record=False, door="cli")).reason for n in new[::5]
        ]
        version = (await admin.lists.directory("red:t:default"))["version"]
    finally:
        await importer.close()
    assert ["listed:red"] * 15 == before
    assert (["allowed"] * 3, ["listed:red"] * 3, "2") == (after_old, after_new, version)


async def test_list_import_and_count_spread_over_the_shards(
    gate: Gate, cluster: LocalCluster
) -> None:
    """An imported list of 20 000 numbers counts whole, its buckets are on every master
    in about equal shares, and each number is found."""
    numbers = [f"+3362{i * 37:07d}" for i in range(20_000)]
    admin = ListAdmin.of(gate)
    await admin.import_entries(
        "dnc", entries(numbers), TENANT, "", fail_on_reject, mode="replace", expected=20_000
    )
    per_master = []
    for node in cluster.masters_now():
        client = node.client()
        per_master.append(sum(1 for _ in client.scan_iter(match="callgate:{*}:l:dnc:*")))
        client.close()
    probes = [
        (await gate.decide(attempt(n), record=False, door="cli")).reason for n in numbers[::2000]
    ]
    assert 20_000 == await admin.count("dnc", TENANT, "")
    assert ["listed:dnc"] * 10 == probes
    assert max(per_master) <= 1.1 * min(per_master)


async def test_a_resize_copies_the_list_on_every_shard(gate: Gate) -> None:
    """A resize copies each slot group's members (lua/list_copy.lua: the live and the new
    version's buckets of a group in one call, so in one slot): all of them, on every
    master (a number removed before it stays off)."""
    numbers = [f"+3364{i * 37:07d}" for i in range(3000)]
    admin = ListAdmin.of(gate)
    await admin.add("red", numbers, TENANT, "")
    await admin.remove("red", numbers[:1], TENANT, "")
    resized = await admin.lists.resize("red:t:default", 1_000_000)
    probes = [
        (await gate.decide(attempt(n), record=False, door="cli")).reason for n in numbers[:1000:100]
    ]
    assert (2999, 2999) == (resized.count, await admin.count("red", TENANT, ""))
    assert ["allowed"] + ["listed:red"] * 9 == probes


async def test_scrub_decides_every_lead_on_the_cluster(gate: Gate) -> None:
    """A scrub of 500 leads: the red-listed ones BLOCK, the others ALLOW, in input order."""
    leads = [f"+3363{i * 101:07d}" for i in range(500)]
    await ListAdmin.of(gate).add("red", leads[::10], TENANT, "")
    rows: list[list[str]] = []
    summary = await scrub(
        gate,
        ([lead] for lead in leads),
        0,
        rows.extend,
        now=datetime.now(UTC),
        tenant=TENANT,
        workers=1,
    )
    expected = [
        [lead, "BLOCK", "listed:red", ""] if i % 10 == 0 else [lead, "ALLOW", "allowed", ""]
        for i, lead in enumerate(leads)
    ]
    assert (expected, 50) == (rows, summary.verdicts["BLOCK"])


async def test_the_trunk_cps_cap_is_never_exceeded_and_refusals_give_it_back(
    gate: Gate, cluster: LocalCluster
) -> None:
    """CPS 20 on carrier-a, all in the same instant: 20 red-listed calls (BLOCK) leave the
    cap whole (their reservations are given back), then of 40 concurrent calls exactly 20
    are allowed and 20 deferred cps:carrier-a."""
    now = datetime.now(UTC)
    red = [f"+3364{i:07d}" for i in range(20)]
    await ListAdmin.of(gate).add("red", red, TENANT, "")
    blocked = [
        (await gate.decide(attempt(n, now, trunk="carrier-a"), record=True, door="cli")).reason
        for n in red
    ]
    concurrent = await asyncio.gather(
        *(
            gate.decide(attempt(f"+3365{i:07d}", now, trunk="carrier-a"), record=True, door="cli")
            for i in range(40)
        )
    )
    reasons = Counter(d.reason for d in concurrent)
    assert ["listed:red"] * 20 == blocked
    assert {"allowed": 20, "cps:carrier-a": 20} == reasons


async def test_audit_export_and_why_merge_the_shards(
    gate: Gate,
    seeds: list[str],
    cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Recorded decisions on numbers of every master: export (API and CLI) has them all in
    time order, ``why`` has one number's."""
    numbers = one_number_per_master(cluster) * 2 + one_number_per_master(cluster, 500_000)
    for number in numbers:
        await gate.decide(attempt(number), record=True, door="agi")
        await asyncio.sleep(0.002)  # distinct milliseconds: a total order across shards
    exported = [r async for r in read_range(gate.store.admin_client, "callgate")]
    config = tmp_path / "cg.toml"
    nodes = ", ".join(f'"{s}"' for s in seeds)
    config.write_text(
        f'[redis]\nmode = "cluster"\nnodes = [{nodes}]\n[privacy]\nsecret = "{TEST_SECRET}"\n'
        "[audit]\nenabled = true\n"
    )
    capsys.readouterr()
    assert 0 == await asyncio.to_thread(
        main, ["--config", str(config), "audit", "export", "--format", "csv"]
    )
    cli_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert 0 == await asyncio.to_thread(main, ["--config", str(config), "audit", "why", numbers[0]])
    why = capsys.readouterr()
    tokens = [KEYS.token(n) for n in numbers]
    assert tokens == [r["number"] for r in exported]
    assert [r["id"] for r in exported] == [r["id"] for r in cli_rows]
    assert (2, "2 decisions about " + numbers[0]) == (
        len(why.out.splitlines()),
        why.err.strip(),
    )


async def test_a_slot_moved_under_continuous_decisions_loses_nothing(
    cluster: LocalCluster, seeds: list[str]
) -> None:
    """A slot group's slot migrates key by key (MOVED, ASK, TRYAGAIN) while decisions run
    on its numbers: every answer is the right one or the fail mode, no red-listed number
    is allowed, every allowed attempt is counted and has its audit entry, and afterwards
    the group answers from its new master."""
    group = 77
    slot = 16 * group
    numbers = numbers_in(group, 400)
    red = set(numbers[::5])
    store = Store(seeds[0], deadline_s=0.25, nodes=seeds)
    gate = Gate(make_config(), store)
    await ListAdmin.of(gate).add("red", sorted(red), TENANT, "")
    target = next(n for n in cluster.masters_now() if n.port != cluster.master_of(slot).port)
    outcomes: list[tuple[str, Decision]] = []
    done = asyncio.Event()

    async def decide_all() -> None:
        for number in numbers:
            outcomes.append((number, await gate.decide(attempt(number), record=True, door="agi")))
            if done.is_set() and len(outcomes) > 300:
                return

    try:
        runner = asyncio.create_task(decide_all())
        await asyncio.sleep(0.05)
        moved = await asyncio.to_thread(cluster.move_slot, slot, target, lambda: time.sleep(0.02))
        done.set()
        await asyncio.wait_for(runner, 120)
        after = await gate.decide(attempt(numbers[0]), record=False, door="cli")
        answered_by = store.answered_by
        redirects = dict(store.redirects)
        audited = {
            r["number"] async for r in read_range(store.admin_client, "callgate", groups=[group])
        }
    finally:
        await store.close()
    client = target.client()
    logs = {
        n
        for n in numbers
        if client.exists(KEYS.number_key(group, "cap:fr-4-per-30d:t:default", KEYS.token(n)))
    }
    client.close()
    reasons = Counter(d.reason for _, d in outcomes)
    allowed = {n for n, d in outcomes if d.verdict is Verdict.ALLOW}
    print(f"slot {slot} moved ({moved} keys): {dict(reasons)}, redirects {redirects}")
    assert moved > 0
    assert set(reasons) <= {"allowed", "listed:red", "store_unavailable"}
    assert not allowed & red
    assert all(
        d.reason == "listed:red" for n, d in outcomes if n in red and d.verdict is Verdict.BLOCK
    )
    assert allowed <= logs
    assert {KEYS.token(n) for n in allowed} <= audited
    assert (f"127.0.0.1:{target.port}", "listed:red") == (answered_by, after.reason)
    assert redirects.get("moved", 0) + redirects.get("ask", 0) + redirects.get("tryagain", 0) > 0


def test_a_killed_master_is_replaced_by_its_replica_and_decisions_resume(tmp_path: Path) -> None:
    """SIGKILL the master of a number's slot while decisions run every 20 ms: meanwhile the
    answers are the fail mode (never an ALLOW for the red-listed number), then its replica
    is promoted and the decisions are right again (within 15 s); the store keeps no
    decision connections for the node that is no longer a master."""
    local = LocalCluster(tmp_path).start()
    try:
        elapsed, outcomes, killed, lanes = asyncio.run(_failover(local))
    finally:
        local.stop()
    red_allowed = [d for n, d in outcomes if n == "red" and d.verdict is Verdict.ALLOW]
    tail = [d.reason for _, d in outcomes[-4:]]
    print(f"failover: decisions right again after {elapsed:.2f} s; {len(outcomes)} decisions")
    assert [] == red_allowed
    assert ["listed:red", "allowed"] * 2 == tail
    assert {d.reason for _, d in outcomes} <= {"listed:red", "allowed", "store_unavailable"}
    assert elapsed < 15
    assert killed not in lanes


async def _failover(local: LocalCluster) -> tuple[float, list[tuple[str, Decision]], str, set[str]]:
    group = 300
    red, free = numbers_in(group, 2)
    store = Store(local.seeds[0], deadline_s=0.2, nodes=local.seeds)
    gate = Gate(make_config(), store)
    outcomes: list[tuple[str, Decision]] = []
    try:
        await ListAdmin.of(gate).add("red", [red], TENANT, "")
        master: Node = local.master_of(16 * group)
        client = master.client()
        assert 1 <= client.execute_command("WAIT", 1, 5000)  # the replica holds the list
        client.close()
        # Decided once before: the store holds a decision connection to that master.
        await gate.decide(attempt(free), record=False, door="cli")
        assert f"127.0.0.1:{master.port}" in store._node_lanes
        local.kill(master)
        killed = time.monotonic()
        right_since: float | None = None
        for _ in range(2000):  # bounded: 2000 rounds of 20 ms at most
            pair = []
            for name, number in (("red", red), ("free", free)):
                decision = await gate.decide(
                    attempt(number, traffic_class=TrafficClass.CAMPAIGN), record=False, door="cli"
                )
                pair.append(decision.reason)
                outcomes.append((name, decision))
            if pair == ["listed:red", "allowed"]:
                right_since = right_since or time.monotonic()
                if len(outcomes) >= 8 and all(
                    o.reason != "store_unavailable" for _, o in outcomes[-4:]
                ):
                    break
            else:
                right_since = None
            await asyncio.sleep(0.02)
        assert right_since is not None, "decisions never came back"
        lanes = set(store._node_lanes)  # the masters the store holds decision channels to
        return right_since - killed, outcomes, f"127.0.0.1:{master.port}", lanes
    finally:
        await store.close()


def test_an_import_cut_off_while_switching_is_completed_not_dropped_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--replace whose directory master is SIGKILLed once every group has switched: the
    import fails saying so; while the next one builds (after the failover) every number
    of the list is still listed, and it ends with only its own version's buckets."""
    local = LocalCluster(tmp_path).start()
    try:
        error, during, after, versions = asyncio.run(_cut_off_switch(local, monkeypatch))
    finally:
        local.stop()
    assert "cut off while switching to its new version (300 entries)" in error
    assert (["listed:red"] * 30, ["listed:red"] * 30) == (during, after)
    assert {b"3"} == versions


async def _cut_off_switch(
    local: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[str], list[str], set[bytes]]:
    store = Store(None, 1.0, nodes=local.seeds)
    gate = Gate(make_config(), store)
    admin = ListAdmin.of(gate)
    red = [f"+3361{i:07d}" for i in range(300)]
    directory_master = local.master_of(key_slot(b"{lists}"))

    async def decisions() -> list[str]:
        return [(await gate.decide(attempt(n), record=False, door="cli")).reason for n in red[::10]]

    switch = ListStore._switch

    async def switch_then_kill(self: ListStore, *args: Any) -> None:
        await switch(self, *args)
        client = directory_master.client()
        client.execute_command("WAIT", 1, 5000)  # its replica has every group switched
        client.close()
        local.kill(directory_master)

    async def rebuilt() -> AsyncIterator[tuple[list[int], list[int]]]:
        numbers = [KEYS.number(n) for n in red]
        yield [n.member for n in numbers], [n.bucket32 for n in numbers]
        during.extend(await decisions())  # the new version is being built

    during: list[str] = []
    try:
        await admin.import_entries(
            "red", entries(red), TENANT, "", fail_on_reject, mode="replace", expected=300
        )
        monkeypatch.setattr(ListStore, "_switch", switch_then_kill)
        with pytest.raises(StoreError) as cut:
            await admin.import_entries(
                "red", entries(red), TENANT, "", fail_on_reject, mode="replace", expected=300
            )
        monkeypatch.setattr(ListStore, "_switch", switch)
        await asyncio.to_thread(local.wait_ok)
        await admin.lists.replace("red:t:default", rebuilt(), 300, {})
        after = await decisions()
    finally:
        await store.close()
    versions = set()
    for node in local.masters_now():
        client = node.client()
        versions |= {k.split(b":l:red:t:default:")[1].split(b":")[0]
                     for k in client.keys("callgate:{*}:l:red:t:default:*")}  # fmt: skip
        client.close()
    return str(cut.value), during, after, versions


def test_an_import_cut_off_by_a_failover_does_not_lock_out_the_next(tmp_path: Path) -> None:
    """--replace whose directory master is SIGKILLed while it builds: it fails saying the
    list is unchanged, releasing its lock on the promoted replica, so the next import,
    right after, runs (it was refused for the lock's 15 min lease) and the list holds it."""
    local = LocalCluster(tmp_path).start()
    try:
        error, count, reasons = asyncio.run(_failover_during_build(local))
    finally:
        local.stop()
    assert "the list unchanged" in error
    assert (300, ["listed:red"] * 30) == (count, reasons)


async def _failover_during_build(local: LocalCluster) -> tuple[str, int, list[str]]:
    store = Store(None, 1.0, nodes=local.seeds)
    gate = Gate(make_config(), store)
    admin = ListAdmin.of(gate)
    red = [f"+3361{i:07d}" for i in range(300)]
    directory_master = local.master_of(key_slot(b"{lists}"))

    async def killed_midway() -> AsyncIterator[tuple[list[int], list[int]]]:
        client = directory_master.client()
        client.execute_command("WAIT", 1, 5000)  # its replica holds the lock
        client.close()
        local.kill(directory_master)
        numbers = [KEYS.number(n) for n in red]
        yield [n.member for n in numbers], [n.bucket32 for n in numbers]

    try:
        with pytest.raises(StoreError) as cut:
            await admin.lists.replace("red:t:default", killed_midway(), 300, {})
        await asyncio.to_thread(local.wait_ok)
        await admin.import_entries(
            "red", entries(red), TENANT, "", fail_on_reject, mode="replace", expected=300
        )
        count = await admin.count("red", TENANT, "")
        reasons = [
            (await gate.decide(attempt(n), record=False, door="cli")).reason for n in red[::10]
        ]
    finally:
        await store.close()
    return str(cut.value), count, reasons


async def test_an_opt_out_into_a_slot_left_migrating_says_redis_cannot_answer_now(
    gate: Gate,
    cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot group's slot left MIGRATING (TRYAGAIN: some of its keys there, some not): an
    opt-out there, once it has tried for DURABLE_TRYAGAIN_S (shortened here), fails as
    Redis unavailable for now, naming the reply's code and how long it tried, not as an
    error Redis answered; a decision gets the fail mode, logged the same way."""
    monkeypatch.setattr(store_client, "DURABLE_TRYAGAIN_S", 0.5)
    group = 401
    (listed,) = numbers_in(group + 1, 1)  # the list's meta in every group, no bucket in this one
    (opt_out,) = numbers_in(group, 1)
    slot = 16 * group
    admin = ListAdmin.of(gate)
    await admin.add("red", [listed], TENANT, "")
    source = cluster.master_of(slot)
    target = next(n for n in cluster.masters_now() if n.port != source.port)
    src, dst = source.client(), target.client()
    src_id, dst_id = (c.execute_command("CLUSTER MYID") for c in (src, dst))
    try:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        with pytest.raises(StoreUnavailable) as moving:
            await admin.add("red", [opt_out], TENANT, "")
        decision = await gate.decide(attempt(opt_out), record=True, door="cli")
    finally:
        for client in (src, dst):
            client.execute_command("CLUSTER SETSLOT", slot, "STABLE")
            client.close()
    assert "cannot answer now (TRYAGAIN " in str(moving.value)
    assert "for 0.5 s (a slot being resharded?)" in str(moving.value)
    assert "store_unavailable" == decision.reason
    assert "cannot answer now (TRYAGAIN " in caplog.text


class _Resharding:
    """A slot group's slot caught mid-reshard, as ``redis-cli --cluster reshard`` leaves it
    between two MIGRATEs: IMPORTING on a target master, MIGRATING on its own, the group's
    meta (its lists' live versions) already moved, its list buckets not yet; so a script
    on the meta and a bucket gets TRYAGAIN from either node. ``finish()`` moves the rest
    and gives the slot to the target on every master; ``undo()`` (if never finished) makes
    the slot stable on its own master again."""

    def __init__(self, cluster: LocalCluster, group: int) -> None:
        self.cluster = cluster
        self.slot = 16 * group
        self.meta = KEYS.meta_key(group)
        self.source = cluster.master_of(self.slot)
        self.target = next(n for n in cluster.masters_now() if n.port != self.source.port)
        self.finished = False

    def start(self) -> None:
        src, dst = self.source.client(), self.target.client()
        try:
            src_id, dst_id = (c.execute_command("CLUSTER MYID") for c in (src, dst))
            dst.execute_command("CLUSTER SETSLOT", self.slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", self.slot, "MIGRATING", dst_id)
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", self.slot, 1000)
            assert self.meta in {k.decode() if isinstance(k, bytes) else k for k in keys}, keys
            assert len(keys) > 1, keys
            src.execute_command(
                "MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, "KEYS", self.meta
            )
        finally:
            src.close()
            dst.close()

    def finish(self) -> None:
        self.cluster.move_slot(self.slot, self.target)
        self.finished = True

    def undo(self) -> None:
        if self.finished:
            return
        src, dst = self.source.client(), self.target.client()
        try:  # the meta left on the target goes with the next test's flush
            for client in (src, dst):
                client.execute_command("CLUSTER SETSLOT", self.slot, "STABLE")
        finally:
            src.close()
            dst.close()


@pytest.mark.timeout(60)
async def test_an_opt_out_into_a_slot_being_resharded_waits_for_the_move(
    gate: Gate, cluster: LocalCluster
) -> None:
    """An opt-out into a slot caught mid-reshard (TRYAGAIN from both of its nodes) is not
    refused: it is sent again until the migration completes a second later, then
    acknowledged, and the next decision for the number blocks it."""
    group = 405
    *listed, opt_out = numbers_in(group, 40)
    admin = ListAdmin.of(gate)
    await admin.add("red", listed, TENANT, "")  # the group's meta and buckets, in its slot
    moving = _Resharding(cluster, group)
    try:
        moving.start()
        adding = asyncio.create_task(admin.add("red", [opt_out], TENANT, ""))
        await asyncio.sleep(1.0)
        waited = not adding.done()
        await asyncio.to_thread(moving.finish)
        added = await asyncio.wait_for(adding, 20)
    finally:
        moving.undo()
    decision = await gate.decide(attempt(opt_out), record=False, door="cli")
    assert (True, 1) == (waited, added)
    assert gate.store.redirects["tryagain"] > 0
    assert "listed:red" == decision.reason


@pytest.mark.timeout(60)
async def test_the_agi_opt_out_into_a_slot_being_resharded_answers_ok_after_the_move(
    gate: Gate, cluster: LocalCluster
) -> None:
    """Through FastAGI (the IVR's "press 9"): the opt-out waits for the slot to move, then
    answers OK listed:red, and the number is blocked."""
    group = 408
    *listed, opt_out = numbers_in(group, 40)
    await ListAdmin.of(gate).add("red", listed, TENANT, "")
    server = AgiServer(gate, "127.0.0.1", 0, header_timeout_s=2.0)
    await server.start()
    moving = _Resharding(cluster, group)
    try:
        moving.start()
        asked = asyncio.create_task(
            agi_call(server.port, "optout?tenant=default", extension=opt_out)
        )
        await asyncio.sleep(1.0)
        waited = not asked.done()
        await asyncio.to_thread(moving.finish)
        dialogue = await asyncio.wait_for(asked, 20)
    finally:
        moving.undo()
        await server.stop()
    decision = await gate.decide(attempt(opt_out), record=False, door="cli")
    assert (True, "OK", "listed:red") == (
        waited,
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_REASON"],
    )
    assert "listed:red" == decision.reason


@pytest.mark.timeout(60)
async def test_a_decision_in_a_slot_being_resharded_answers_within_its_deadline(
    seeds: list[str], cluster: LocalCluster
) -> None:
    """In the same state a decision does not wait for the move: TRYAGAIN is followed only
    within its deadline (50 ms), then it gets the fail mode (DEFER store_unavailable)."""
    group = 406
    *listed, number = numbers_in(group, 40)
    store = Store(None, 0.05, RedisConfig(mode="cluster", nodes=tuple(seeds)))
    gate = Gate(make_config(), store)
    moving = _Resharding(cluster, group)
    try:
        await ListAdmin.of(gate).add("red", listed, TENANT, "")
        warm = await gate.decide(attempt(number), record=False, door="cli")  # views learned
        moving.start()
        started = time.monotonic()
        decision = await gate.decide(attempt(number), record=True, door="agi")
        took_s = time.monotonic() - started
        tryagain = store.redirects["tryagain"]
    finally:
        moving.undo()
        await store.close()
    assert ("allowed", "store_unavailable") == (warm.reason, decision.reason)
    assert tryagain > 0
    assert took_s < 0.15, took_s  # the deadline, plus room for a busy test machine


@pytest.mark.timeout(60)
async def test_an_opt_out_waiting_for_a_reshard_stops_when_cancelled(
    gate: Gate, cluster: LocalCluster
) -> None:
    """A caller that gives up (Ctrl-C, a cancelled task) while its opt-out waits for a
    slot being resharded stops it at once: the cancellation goes through, never turned
    into an error nor waited out."""
    group = 407
    *listed, opt_out = numbers_in(group, 40)
    admin = ListAdmin.of(gate)
    await admin.add("red", listed, TENANT, "")
    moving = _Resharding(cluster, group)
    try:
        moving.start()
        adding = asyncio.create_task(admin.add("red", [opt_out], TENANT, ""))
        await asyncio.sleep(0.6)
        adding.cancel()
        started = time.monotonic()
        done, _ = await asyncio.wait({adding}, timeout=5)
        took_s = time.monotonic() - started
    finally:
        moving.undo()
    assert ({adding}, True) == (done, adding.cancelled())
    assert took_s < 0.5, took_s


def test_cluster_config_needs_seed_nodes(tmp_path: Path) -> None:
    """``mode = "cluster"`` with seed nodes is accepted; ``config check`` shows them."""
    path = tmp_path / "cg.toml"
    path.write_text(
        '[redis]\nmode = "cluster"\nnodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]\n'
        f'[privacy]\nsecret = "{TEST_SECRET}"\n'
    )
    assert 0 == main(["--config", str(path), "config", "check"])


async def test_readyz_and_metrics_say_which_node_answers(gate: Gate, cluster: LocalCluster) -> None:
    """After a decision, /readyz names the cluster master that answered it, and /metrics
    has it as callgate_redis_node_info with the redirections counted."""
    number = one_number_per_master(cluster)[1]
    master = cluster.master_of(16 * KEYS.number(number).group)
    await gate.decide(attempt(number), record=False, door="cli")
    running = await serve(gate)
    try:
        status, body = await running.get("/readyz")
        scraped = await running.scrape()
    finally:
        await running.session.close()
        await running.server.stop()
    node = f"127.0.0.1:{master.port}"
    assert (200, "cluster", node) == (
        status,
        body["checks"]["redis"]["mode"],
        body["checks"]["redis"]["node"],
    )
    assert 1.0 == scraped[("callgate_redis_node_info", labels(mode="cluster", node=node))]
    assert ("callgate_redis_redirects_total", labels(kind="moved")) in scraped


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


async def test_time_waiting_for_a_master_connection_does_not_count_against_the_deadline(
    seeds: list[str], cluster: LocalCluster
) -> None:
    """One decision connection per master (pool_size 1), 100 ms deadline: 150 concurrent
    recorded decisions, 50 on each master, wait their turn for its connection far longer
    than the deadline, and none gets the fail mode."""
    config = RedisConfig(mode="cluster", nodes=tuple(seeds), pool_size=1, pool_wait_s=30.0)
    store = Store(None, 0.1, config)
    gate = Gate(make_config(), store)
    numbers = [
        n for groups in groups_by_master(cluster).values() for n in numbers_in(groups[3], 50)
    ]
    try:
        decisions = await asyncio.gather(
            *(gate.decide(attempt(n), record=True, door="cli") for n in numbers)
        )
    finally:
        await store.close()
    assert {"allowed": 150} == dict(Counter(d.reason for d in decisions))


async def test_missed_deadlines_on_a_master_do_not_turn_into_reconnections(
    seeds: list[str], cluster: LocalCluster
) -> None:
    """A master paused: its decisions miss their 50 ms deadline (fail mode); afterwards 5
    bursts of decisions on it reuse the connections whose replies came late: that master
    accepted no new connection."""
    master = cluster.masters_now()[0]
    group = groups_by_master(cluster)[master.port][5]
    numbers = numbers_in(group, 10)
    store = Store(None, 0.05, RedisConfig(mode="cluster", nodes=tuple(seeds)))
    gate = Gate(make_config(), store)

    async def burst() -> list[str]:
        decisions = await asyncio.gather(
            *(gate.decide(attempt(n), record=False, door="cli") for n in numbers)
        )
        return [d.reason for d in decisions]

    watcher = master.client()  # one connection, opened before counting
    try:
        await burst()  # the list views are read
        await burst()  # then every decision at once: a connection each
        before = connections_received(watcher)
        watcher.execute_command("CLIENT", "PAUSE", 300, "ALL")
        paused = await burst()
        await asyncio.sleep(0.5)
        after = [reason for _ in range(5) for reason in await burst()]
        reconnections = connections_received(watcher) - before
    finally:
        watcher.close()
        await store.close()
    assert {"store_unavailable"} == set(paused)
    assert {"allowed"} == set(after)
    assert 0 == reconnections


async def test_an_opt_out_waits_for_a_replica_of_the_master_that_took_it(
    seeds: list[str], cluster: LocalCluster
) -> None:
    """wait_replicas = 1: with the replica of one master stopped (SIGSTOP), an opt-out of
    a number of another master is acknowledged, and one of a number of that master is not
    (NotReplicated: WAIT runs on the master that took the write), though it is in force."""
    config = make_config()
    redis_config = RedisConfig(
        mode="cluster", nodes=tuple(seeds), wait_replicas=1, wait_timeout_s=0.3
    )
    store = Store(None, 1.0, redis_config)
    gate = Gate(config, store)
    admin = ListAdmin.of(gate)
    stalled_master, healthy_master = cluster.masters_now()[:2]
    by_master = groups_by_master(cluster)
    first, healthy = numbers_in(by_master[healthy_master.port][9], 2)
    (stalled,) = numbers_in(by_master[stalled_master.port][9], 1)
    replica = cluster.replica_of(stalled_master)
    try:
        created = await admin.add("red", [first], TENANT, "")  # the list, on every master
        replica.process.send_signal(signal.SIGSTOP)
        try:
            acknowledged = await admin.add("red", [healthy], TENANT, "")
            with pytest.raises(NotReplicated) as refused:
                await admin.add("red", [stalled], TENANT, "")
        finally:
            replica.process.send_signal(signal.SIGCONT)
        reasons = [
            (await gate.decide(attempt(n), record=False, door="cli")).reason
            for n in (healthy, stalled)
        ]
    finally:
        await store.close()
    assert (1, 1) == (created, acknowledged)
    assert "only 0 of 1 replica(s) confirmed it" in str(refused.value)
    assert ["listed:red", "listed:red"] == reasons


# --- law checks reading shared state: the abandoned-call ceiling, reassigned numbers -----

PACKS = Path(__file__).resolve().parents[2] / "config" / "packs"


@pytest.fixture
async def law_gate(seeds: list[str]) -> AsyncIterator[Gate]:
    """The uk and us packs (GB numbers by default), trunk carrier-a capped at 20 per s."""
    store = Store(seeds[0], deadline_s=1.0, nodes=seeds)
    packs = {"default_region": "GB", "packs": ["uk", "us"], "packs_dir": str(PACKS)}
    gate = Gate(make_config({"gate": {**BASE_CONFIG["gate"], **packs}}), store)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for name in ("tps", "ctps", "national_dnc"):
        await ListAdmin.of(gate).import_entries(
            name, [], TENANT, "", fail_on_reject, refreshed_at=yesterday
        )
    yield gate
    await store.close()


def uk_numbers_on(cluster: LocalCluster, port: int, count: int) -> list[str]:
    """``count`` UK numbers whose keys a given master serves (by its port)."""
    mine = set(groups_by_master(cluster)[port])
    found = [
        n for n in (f"+44121234{i:04d}" for i in range(10_000)) if KEYS.number(n).group in mine
    ]
    return found[:count]


async def test_a_campaign_over_its_abandoned_call_ceiling_defers_on_every_shard(
    law_gate: Gate, cluster: LocalCluster
) -> None:
    """The campaign's counts live on one master, its calls' numbers on the others: its
    next calls DEFER abandon_rate (a CPS reservation made alongside is given back), another
    campaign's go, a scrub of the campaign's leads DEFERs them all, and no decision wrote
    the counts."""
    now = datetime.now(UTC)
    await ListAdmin.of(law_gate).record_event(
        "abandoned", "+442079460001", TENANT, now, now, "spring"
    )
    (rule,) = law_gate.config.policy.packs[0].abandon_ceilings
    counts = KEYS.ceiling_key(rule, TENANT, "spring")
    assert counts is not None
    home = cluster.master_of(key_slot(counts.encode())).port
    away = [port for port in groups_by_master(cluster) if port != home]
    called = [n for port in away for n in uk_numbers_on(cluster, port, 2)]
    before = cluster.master_of(key_slot(counts.encode())).client().get(counts)

    async def decide(number: str, campaign: str) -> Decision:
        call = attempt(number, now, campaign=campaign, trunk="carrier-a",
                       caller_id="+442071234567")  # fmt: skip
        return await law_gate.decide(call, record=True, door="cli")

    deferred = [await decide(n, "spring") for n in called]
    cps = KEYS.cps_key("carrier-a")
    cps_after_deferred = cluster.master_of(key_slot(cps.encode())).client().exists(cps)
    allowed = [await decide(n, "autumn") for n in called]
    rows: list[list[str]] = []
    await scrub(
        law_gate,
        ([n] for n in called),
        0,
        rows.extend,
        now=now,
        tenant=TENANT,
        campaign="spring",
        caller_id="+442071234567",
        workers=1,
    )
    after = cluster.master_of(key_slot(counts.encode())).client().get(counts)
    assert [f"abandon_rate:{rule.id}"] * len(called) == [d.reason for d in deferred]
    assert all(24 * 3600 - 1 < (d.retry_after_s or 0) <= 24 * 3600 + 60 for d in deferred)
    assert (0, ["allowed"] * len(called)) == (cps_after_deferred, [d.reason for d in allowed])
    assert [f"abandon_rate:{rule.id}"] * len(called) == [row[2] for row in rows]
    assert (True, before) == (before is not None, after)


async def test_a_void_consent_blocks_on_the_cluster(law_gate: Gate, cluster: LocalCluster) -> None:
    """Consent and disconnect day in the number's slot group, on each master: BLOCK
    reassigned:us-tcpa-consent; a consent given after the disconnect goes."""
    admin = ListAdmin.of(law_gate)
    void = [f"+1212555{i:04d}" for i in range(0, 40)]
    valid = [f"+1212555{i:04d}" for i in range(40, 80)]
    masters = {cluster.master_of(16 * KEYS.number(n).group).port for n in void}
    await admin.add("tcpa_consent", void, TENANT, "", now=datetime(2026, 10, 1, tzinfo=UTC))
    await admin.add("tcpa_consent", valid, TENANT, "", now=datetime(2026, 12, 1, tzinfo=UTC))
    lines = [f"{n},2026-11-02" for n in void + valid]
    await admin.import_disconnects("reassigned", lines, TENANT, "", fail_on_reject)
    # 16:00 UTC: inside 08:00-21:00 in New York.
    when = datetime.now(UTC).replace(hour=16, minute=0)
    reasons = [
        (
            await law_gate.decide(attempt(n, when, campaign="spring"), record=False, door="cli")
        ).reason
        for n in void + valid
    ]
    assert (3, ["reassigned:us-tcpa-consent"] * 40 + ["allowed"] * 40) == (len(masters), reasons)
