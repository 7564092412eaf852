"""Lists at scale against a REAL Redis: compact buckets, deltas, atomic replacement."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from gate.core.errors import InputError, OptionError, StoreError, StoreUnavailable, WorkerError
from gate.core.model import Attempt, Verdict
from gate.lists import formats
from gate.lists.admin import ListAdmin
from gate.lists.formats import Rejected, open_lines, read_batches, read_entries
from gate.lists.workers import Workers
from gate.service import Gate
from gate.store.client import Store
from gate.store.lists import ListStore, bits_for
from tests.conftest import TEST_SECRET, make_config, spawned_redis

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TENANT = "default"
RED = "red:t:default"  # the list instance
DIRECTORY = "callgate:{lists}:red:t:default"
BUCKETS = "callgate:{*}:l:red:t:default:*"


def versions_of(client: redis.Redis) -> set[bytes]:
    """The versions that have bucket keys (``…:l:<list>:<version>:<bucket>``)."""
    return {k.split(b":l:red:t:default:")[1].split(b":")[0] for k in client.keys(BUCKETS)}


def admin(gate: Gate) -> ListAdmin:
    return ListAdmin(gate.config.policy, gate.keyspace, gate.store)


def numbers(start: int, count: int) -> list[str]:
    return [f"+3361{i:07d}" for i in range(start, start + count)]


def entries(values: list[str]) -> list[tuple[int, str | Rejected]]:
    return list(enumerate(values, start=1))


def fail_on_reject(rejected: Rejected) -> None:
    raise AssertionError(rejected)


async def listed(gate: Gate, number: str) -> bool:
    decision = await gate.decide(Attempt(number, NOW), record=False, door="cli")
    return decision.reason == "listed:red"


def test_bucket_bits_keep_buckets_under_the_intset_limit() -> None:
    """Bits are chosen so that buckets hold at most 256 entries on average, and never fewer
    than 10 (one bucket per slot group at least)."""
    assert [10, 10, 10, 12, 16, 20] == [bits_for(n) for n in (0, 256, 1000, 10**6, 10**7, 2.5e8)]


async def test_deltas_reach_decisions_and_buckets_stay_intsets(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """10 000 adds (resized on the way) are all listed, in intset buckets; removes delist."""
    lists = admin(gate)
    added = numbers(0, 10_000)
    assert 10_000 == await lists.add("red", added, TENANT, "")
    await lists.remove("red", added[:10], TENANT, "")
    head = await lists.lists.directory(RED)
    buckets = sync_redis.keys(BUCKETS)
    encodings = {sync_redis.object("encoding", key) for key in buckets}
    assert (9990, str(bits_for(10_000))) == (await lists.lists.count(RED), head["bits"])
    assert {b"intset"} == encodings
    assert [False, True] == [await listed(gate, added[0]), await listed(gate, added[-1])]


async def test_replace_switches_in_one_step_and_drops_the_old_version(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """--replace: the new version is live, the old one's buckets are gone."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 500), TENANT, "")
    summary = await lists.import_entries(
        "red",
        entries(numbers(1000, 800)),
        TENANT,
        "",
        fail_on_reject,
        mode="replace",
        expected=800,
    )
    head = await lists.lists.directory(RED)
    assert (800, 800) == (summary.imported, await lists.lists.count(RED))
    assert {head["version"].encode()} == versions_of(sync_redis)
    assert [False, True] == [
        await listed(gate, numbers(0, 1)[0]),
        await listed(gate, numbers(1000, 1)[0]),
    ]


@pytest.mark.parametrize("cut", ["redis-error", "cancelled"])
async def test_a_replaced_version_whose_removal_is_cut_off_is_removed_by_the_next_replace(
    gate: Gate, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """The switch done, removing the version replaced fails (Redis) or is cut off (Ctrl-C,
    SIGTERM): the next replacement removes what is left of it. Nothing named it any more:
    its buckets stayed in Redis for good; and a Redis error there failed the import,
    though the list was replaced (the import now succeeds, the failure logged)."""
    lists = admin(gate)
    await lists.import_entries(
        "red", entries(numbers(0, 5000)), TENANT, "", fail_on_reject, mode="replace"
    )
    old = int((await lists.lists.directory(RED))["version"])
    drop = ListStore._drop

    async def cut_off(self: ListStore, list_id: str, version: int, bits: int) -> None:
        if version != old:
            await drop(self, list_id, version, bits)
        elif cut == "cancelled":
            raise asyncio.CancelledError
        else:
            raise StoreUnavailable("Redis at test is unreachable (cut off)")

    monkeypatch.setattr(ListStore, "_drop", cut_off)
    second = entries(numbers(10_000, 5000))
    if cut == "cancelled":
        with pytest.raises(asyncio.CancelledError):
            await lists.import_entries("red", second, TENANT, "", fail_on_reject, mode="replace")
    else:
        summary = await lists.import_entries(
            "red", second, TENANT, "", fail_on_reject, mode="replace"
        )
        assert 5000 == summary.imported
    switched = int((await lists.lists.directory(RED))["version"])
    assert {str(old).encode(), str(switched).encode()} == versions_of(sync_redis)
    assert "dropping" not in await lists.info("red", TENANT, "")
    monkeypatch.setattr(ListStore, "_drop", drop)
    await lists.import_entries(
        "red", entries(numbers(20_000, 10)), TENANT, "", fail_on_reject, mode="replace"
    )
    head = await lists.lists.directory(RED)
    assert ({head["version"].encode()}, False) == (versions_of(sync_redis), "dropping" in head)
    assert (10, True) == (await lists.lists.count(RED), await listed(gate, numbers(20_000, 1)[0]))


async def test_a_replace_whose_every_line_is_rejected_is_refused_and_changes_nothing(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """A wrong file (every line rejected) would replace the list with an empty one: refused,
    the live version and its metadata kept, the version built for it removed, and a later
    delta reaches the live list alone."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 500), TENANT, "")
    before = {k: v for k, v in (await lists.lists.directory(RED)).items() if k != "next_version"}
    wrong = [(n, Rejected(n, "not a number", "Alice,0612345640")) for n in (1, 2, 3)]
    with pytest.raises(OptionError) as refused:
        await lists.import_entries(
            "red", wrong, TENANT, "", lambda _: None, mode="replace", expected=3
        )
    assert ("allow_empty",) == refused.value.options
    await lists.add("red", numbers(600, 1), TENANT, "")
    after = {k: v for k, v in (await lists.lists.directory(RED)).items() if k != "next_version"}
    assert (before, 501) == (after, await lists.lists.count(RED))
    assert {before["version"].encode()} == versions_of(sync_redis)
    assert [True, True] == [
        await listed(gate, numbers(0, 1)[0]),
        await listed(gate, numbers(600, 1)[0]),
    ]


async def test_a_wrong_file_replacing_a_list_during_an_opt_out_is_still_refused(
    gate: Gate, redis_url: str
) -> None:
    """A file none of whose lines is a number (a wrong --column), imported with --replace
    while an opt-out is recorded (it goes into the version being built too): refused, the
    list kept. The guard counted the new version's entries, the opt-out among them: the
    list of 500 numbers was replaced by that one opt-out."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 500), TENANT, "")
    opt_out = "+33699999999"
    recorded: list[int] = []

    async def add_elsewhere() -> None:
        store = Store(redis_url, deadline_s=5.0)
        try:
            recorded.append(
                await admin(Gate(make_config(), store)).add("red", [opt_out], TENANT, "")
            )
        finally:
            await store.close()

    def opt_out_once(rejected: Rejected) -> None:
        # Another client's opt-out while the new version is built (this loop is busy).
        if not recorded:
            thread = threading.Thread(target=asyncio.run, args=(add_elsewhere(),))
            thread.start()
            thread.join(30)

    wrong = [(n, Rejected(n, "not a number", "Alice,0612345640")) for n in range(1, 1001)]
    with pytest.raises(OptionError, match=r"list 'red' is unchanged \(501 entries\)"):
        await lists.import_entries(
            "red", wrong, TENANT, "", opt_out_once, mode="replace", expected=1000
        )
    assert [1] == recorded
    assert (501, True) == (await lists.lists.count(RED), await listed(gate, numbers(0, 1)[0]))


async def test_an_empty_replace_of_a_list_with_entries_needs_allow_empty(gate: Gate) -> None:
    """A file with no number replaces a list with entries only with ``allow_empty``; an
    empty list may be replaced by an empty file (a registry with no entries yet)."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 5), TENANT, "")
    with pytest.raises(InputError, match=r"list 'red' is unchanged \(5 entries\)"):
        await lists.import_entries("red", [], TENANT, "", fail_on_reject, mode="replace")
    kept = await lists.lists.count(RED)
    emptied = await lists.import_entries(
        "red", [], TENANT, "", fail_on_reject, mode="replace", allow_empty=True
    )
    again = await lists.import_entries("red", [], TENANT, "", fail_on_reject, mode="replace")
    assert (5, 0, 0, 0) == (kept, emptied.imported, again.imported, await lists.lists.count(RED))


async def test_decisions_during_a_replace_see_the_old_list_or_the_new_one_whole(
    redis_url: str,
) -> None:
    """Continuous decisions during --replace: every observation before one instant sees
    the whole old list, every one after it the whole new list."""
    store = Store(redis_url, deadline_s=2.0)
    gate = Gate(make_config(), store)
    old, new = numbers(0, 20_000), numbers(100_000, 20_000)
    probes = [(False, n) for n in old[::997]] + [(True, n) for n in new[::997]]
    seen: list[bool] = []  # per observation: does it show the new version's state?
    try:
        await admin(gate).import_entries(
            "red", entries(old), TENANT, "", fail_on_reject, mode="replace", expected=len(old)
        )
        for is_new, number in probes:  # warm: the gate has its connection and list views
            seen.append(await listed(gate, number) == is_new)
        done = asyncio.Event()

        async def watch() -> None:
            for _ in range(100_000):  # bounded; ends once the import is done
                for is_new, number in probes:
                    seen.append(await listed(gate, number) == is_new)
                if done.is_set():
                    return

        watcher = asyncio.create_task(watch())
        await admin(gate).import_entries(
            "red", entries(new), TENANT, "", fail_on_reject, mode="replace", expected=len(new)
        )
        done.set()
        await asyncio.wait_for(watcher, 30)
    finally:
        await store.close()
    cut = seen.index(True)
    assert [False] * cut + [True] * (len(seen) - cut) == seen
    assert 0 < cut


async def test_an_opt_out_during_a_replace_survives_the_switch(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """A number added while a replacement is being built is on the new version too."""
    lists = admin(gate)
    opt_out = "+33699999999"
    importer = asyncio.create_task(
        lists.import_entries(
            "red",
            entries(numbers(0, 200_000)),
            TENANT,
            "",
            fail_on_reject,
            mode="replace",
            expected=200_000,
        )
    )
    for _ in range(2000):  # bounded: until the build has started
        if sync_redis.hget(DIRECTORY, "building"):
            break
        await asyncio.sleep(0.005)
    assert sync_redis.hget(DIRECTORY, "building")
    await lists.add("red", [opt_out], TENANT, "")
    await asyncio.wait_for(importer, 60)
    assert await listed(gate, opt_out)


async def test_an_opt_out_recorded_while_a_resize_reads_the_list_survives_it(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resize (the one an import into a small list starts first, or an overfull list's)
    rebuilds the list from its members: an opt-out recorded while they are read is in the
    resized list. They were read before the new version took deltas: the opt-out went to
    the old version alone, removed at the switch (the number callable again)."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 5000), TENANT, "")
    opt_out = "+33699999999"
    members = ListStore.members
    added: list[int] = []

    async def reading(self: ListStore, list_id: str) -> AsyncIterator[int]:
        async for member in members(self, list_id):
            if not added:  # once reading has begun
                added.append(await lists.add("red", [opt_out], TENANT, ""))
            yield member

    monkeypatch.setattr(ListStore, "members", reading)
    resized = await asyncio.wait_for(lists.lists.resize(RED, 1_000_000), 60)
    assert ([1], bits_for(1_000_000)) == (added, resized.bits)
    assert (True, 5001) == (await listed(gate, opt_out), await lists.lists.count(RED))


async def test_a_number_removed_while_a_resize_reads_the_list_stays_removed(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remove (a number off the red list, an exemption off an allow list) recorded once
    the resize has read the list, before it writes the members read, sticks: the resize
    copies only the members still listed. It wrote every member read, so the number,
    removed from both versions first, came back in the resized list."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 5000), TENANT, "")
    taken_off = numbers(0, 1)[0]
    members = ListStore.members
    removed: list[int] = []

    async def reading(self: ListStore, list_id: str) -> AsyncIterator[int]:
        async for member in members(self, list_id):
            yield member
        # Every member read (the number among them), none written yet.
        removed.append(await lists.remove("red", [taken_off], TENANT, ""))

    monkeypatch.setattr(ListStore, "members", reading)
    resized = await asyncio.wait_for(lists.lists.resize(RED, 1_000_000), 60)
    assert ([1], bits_for(1_000_000)) == (removed, resized.bits)
    assert (False, 4999) == (await listed(gate, taken_off), await lists.lists.count(RED))
    assert await listed(gate, numbers(1, 1)[0])


async def test_an_opt_out_into_an_overfull_list_during_a_replace_is_acknowledged(
    gate: Gate, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add that overfills the list while a replacement runs (its lock held) is done and
    says so: the list is resized by that replacement's switch, or by a later add. The
    add's resize was refused, so an opt-out recorded (in both versions) failed with
    "another import or resize is running" (the API's 400: not to be sent again)."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 5000), TENANT, "")
    opt_out = "+33699999999"
    importer = asyncio.create_task(
        lists.import_entries(
            "red",
            entries(numbers(100_000, 200_000)),
            TENANT,
            "",
            fail_on_reject,
            mode="replace",
            expected=200_000,
        )
    )
    try:
        for _ in range(2000):  # bounded: until the build has started
            if sync_redis.hget(DIRECTORY, "building"):
                break
            await asyncio.sleep(0.005)
        assert sync_redis.hget(DIRECTORY, "building")
        monkeypatch.setattr("gate.store.lists.RESIZE_FILL", 1)  # every group overfull
        assert 1 == await lists.add("red", [opt_out], TENANT, "")
    finally:
        await asyncio.wait_for(importer, 60)
    assert (True, 200_001) == (await listed(gate, opt_out), await lists.lists.count(RED))


def test_a_killed_import_leaves_the_live_list_intact_and_the_next_cleans_up(
    redis_url: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """SIGKILL during --replace: the old list still answers; the next import removes the
    partial version."""
    config = tmp_path / "cg.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[privacy]\nsecret = "{TEST_SECRET}"\n'
        '[[lists]]\nname = "red"\nkind = "block"\nscope = "tenant"\n'
    )
    small = tmp_path / "small.txt"
    small.write_text("".join(f"{n}\n" for n in numbers(0, 100)))
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{n}\n" for n in numbers(1000, 400_000)))
    cli = [sys.executable, "-m", "gate.cli", "--config", str(config), "list", "import", "red"]
    env = {**os.environ, "CALLGATE_SECRET": TEST_SECRET}
    subprocess.run(
        [*cli, str(small), "--replace"], check=True, capture_output=True, env=env, timeout=60
    )
    live_before = sync_redis.hgetall(DIRECTORY)
    process = subprocess.Popen(
        [*cli, str(big), "--replace"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        for _ in range(3000):  # wait until the new version is being written
            if (
                sync_redis.hget(DIRECTORY, "building") and len(versions_of(sync_redis)) > 1
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    live_after = sync_redis.hgetall(DIRECTORY)
    assert live_before[b"version"] == live_after[b"version"]
    assert b"building" in live_after
    sync_redis.delete(DIRECTORY + ":lock")  # the lease would expire in 15 min
    subprocess.run(
        [*cli, str(small), "--replace"], check=True, capture_output=True, env=env, timeout=60
    )
    head = sync_redis.hgetall(DIRECTORY)
    assert {head[b"version"]} == versions_of(sync_redis)
    assert b"building" not in head


@pytest.fixture
def own_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own (its memory limit is changed), killed after it."""
    with spawned_redis(tmp_path) as (url, _):
        yield url


async def test_a_replace_that_runs_out_of_memory_is_removed_and_opt_outs_still_go_in(
    own_redis_url: str,
) -> None:
    """--replace on a Redis whose memory fills up half-way (maxmemory, noeviction): the
    error says how many entries were written, the live list is intact, the partial version
    is gone (its memory freed, no delta writes into it) and an opt-out is recorded."""
    store = Store(own_redis_url, deadline_s=1.0)
    gate = Gate(make_config(), store)
    client = redis.Redis.from_url(own_redis_url)
    try:
        lists = admin(gate)
        await lists.add("red", numbers(0, 100), TENANT, "")
        live = await lists.lists.directory(RED)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + 3_000_000)
        with pytest.raises(StoreError, match="with 0 of about 400000 entries confirmed written"):
            await lists.import_entries(
                "red",
                entries(numbers(1000, 400_000)),
                TENANT,
                "",
                fail_on_reject,
                mode="replace",
                expected=400_000,
            )
        after = await lists.lists.directory(RED)
        opted_out = await lists.add("red", numbers(999_000, 1), TENANT, "")
        assert (live["version"], "building" not in after) == (after["version"], True)
        assert {live["version"].encode()} == versions_of(client)
        assert (1, 101) == (opted_out, await lists.lists.count(RED))
        assert [True, True] == [
            await listed(gate, numbers(0, 1)[0]),
            await listed(gate, numbers(999_000, 1)[0]),
        ]
    finally:
        client.close()
        await store.close()


async def test_an_update_cut_off_after_some_batches_says_how_many_went_in(
    own_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add of three batches whose last Redis refuses (maxmemory reached): the first two
    are in force, and the error says so and that running it again applies the rest; it
    used to be Redis's error alone, as if nothing had been added."""
    monkeypatch.setattr("gate.store.lists._DELTA_BATCH", 1000)
    store = Store(own_redis_url, deadline_s=1.0)
    gate = Gate(make_config(), store)
    client = redis.Redis.from_url(own_redis_url)
    wanted = numbers(0, 3000)

    async def chunks() -> AsyncIterator[Any]:
        for start in range(0, 3000, 1000):
            if start == 2000:  # the first two batches are confirmed by now
                client.config_set("maxmemory-policy", "noeviction")
                client.config_set("maxmemory", 1)
            yield gate.keyspace.list_entries(wanted[start : start + 1000])
            await asyncio.sleep(0.5)

    try:
        lists = admin(gate)
        with pytest.raises(StoreError) as raised:
            await lists.lists.delta_chunks(RED, "add", chunks())
        client.config_set("maxmemory", 0)
        count = await lists.lists.count(RED)
    finally:
        client.close()
        await store.close()
    message = str(raised.value)
    assert "OOM" in message
    assert "stopped with 2000 entries confirmed added (2000 of them changed" in message
    assert "run it again" in message
    assert 2000 == count


async def test_an_import_cut_off_after_some_batches_says_once_how_many_went_in(
    own_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through an import: one sentence of what became of the list (with the
    count confirmed) and what to do, then Redis's error; not the store's sentence too."""
    monkeypatch.setattr("gate.store.lists._DELTA_BATCH", 1000)
    monkeypatch.setattr(formats, "BATCH_LINES", 1000)
    store = Store(own_redis_url, deadline_s=1.0)
    lists = admin(Gate(make_config(), store))
    client = redis.Redis.from_url(own_redis_url)
    wanted = numbers(0, 3000)

    def lines() -> Iterator[tuple[int, str | Rejected]]:
        for line_no, value in entries(wanted):
            if line_no == 2001:  # the first two batches were sent
                time.sleep(0.5)  # and confirmed
                client.config_set("maxmemory-policy", "noeviction")
                client.config_set("maxmemory", 1)
            yield line_no, value

    try:
        with pytest.raises(StoreError) as raised:
            await asyncio.wait_for(
                lists.import_entries("red", lines(), TENANT, "", fail_on_reject), 60
            )
        client.config_set("maxmemory", 0)
    finally:
        client.close()
        await store.close()
    message = str(raised.value)
    assert message.startswith(
        "list 'red': the import stopped part-way: the numbers sent before the error "
        "(2000 confirmed) are on the list, the rest not; import the file again"
    ), message
    assert "OOM" in message
    assert "run it again" not in message  # the store's own sentence, not said twice


def test_formats_us_dnc_fr_scrub_zip_and_gzip(tmp_path: Path) -> None:
    """Area-code files, a scrub return file (kept results only), zip and gzip inputs."""
    rule = make_config().policy.list_rule("red")
    assert rule is not None
    dnc = tmp_path / "201.txt.gz"
    with gzip.open(dnc, "wt") as handle:
        handle.write("201,2345678\n2012345679\n201,123\n")
    scrub = tmp_path / "scrub.zip"
    with zipfile.ZipFile(scrub, "w") as archive:
        archive.writestr(
            "out.csv",
            "Telephone;Identifiant;Resultat\n0612345678;A1;NON_INSCRIT\n0698765432;A2;INSCRIT\n",
        )
    us = list(read_entries(open_lines(dnc), rule, "FR", "us-dnc"))
    fr = list(
        read_entries(open_lines(scrub), rule, "FR", "fr-scrub", keep=frozenset({"NON_INSCRIT"}))
    )
    assert ["+12012345678", "+12012345679"] == [e for _, e in us[:2]]
    assert isinstance(us[2][1], Rejected)
    assert "+33612345678" == fr[0][1]
    assert (3, "INSCRIT") == (fr[1][0], getattr(fr[1][1], "result", None))


async def test_plain_lists_export_their_numbers(redis_url: str) -> None:
    """With hash_numbers = false a list exports the E.164 numbers it holds."""
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config({"privacy": {"hash_numbers": False}}), store)
    try:
        await admin(gate).add("red", numbers(0, 300), TENANT, "")
        exported = sorted([n async for n in admin(gate).export("red", TENANT, "")])
    finally:
        await store.close()
    assert numbers(0, 300) == exported


@pytest.mark.parametrize("value", ["+33612345678"])
async def test_list_info_has_the_metadata(gate: Gate, value: str) -> None:
    """info: entries, version, refreshed_at, source and the file's checksum."""
    await admin(gate).import_entries(
        "red",
        entries([value]),
        TENANT,
        "",
        fail_on_reject,
        refreshed_at=NOW,
        meta={"source": "f.txt"},
        mode="replace",
        expected=1,
    )
    info = await admin(gate).info("red", TENANT, "")
    assert ("1", "f.txt", str(int(NOW.timestamp() * 1000))) == (
        info["entries"],
        info["source"],
        info["refreshed_at"],
    )
    assert (
        Verdict.BLOCK == (await gate.decide(Attempt(value, NOW), record=False, door="cli")).verdict
    )


def mixed_file(path: Path, count: int) -> list[str]:
    """A list file of E.164 and national lines, with odd lines; its accepted numbers."""
    accepted = []
    with path.open("w", newline="") as out:
        for i in range(count):
            if i % 500 == 7:
                out.write(f"bad line {i}\n")
            elif i % 3:
                out.write(f"+336{i:08d}\n")
                accepted.append(f"+336{i:08d}")
            else:
                out.write(f"075{i:07d}\r\n")
                accepted.append(f"+3375{i:07d}")
    return accepted


@pytest.mark.parametrize("mode", ["replace", "add"])
async def test_a_file_imported_by_workers_is_the_file_read_line_by_line(
    gate: Gate, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of many blocks (parsed and hashed by worker processes) is imported as the
    per-line path reads it: the same counts, the same rejects in file order, the same
    numbers listed."""
    monkeypatch.setattr(formats, "BLOCK_BYTES", 8192)  # ~650 lines a block
    path = tmp_path / "list.txt"
    accepted = mixed_file(path, 20_000)
    started: list[list[int]] = []
    start = Workers.start

    async def recorded(self: Workers) -> None:
        await start(self)
        started.append(self.pids)

    monkeypatch.setattr(Workers, "start", recorded)
    rule = gate.config.policy.list_rule("red")
    assert rule is not None
    reference = [
        (e.line_no, e.why)
        for _, e in read_entries(iter(list(open_lines(path))), rule, "FR")
        if isinstance(e, Rejected)
    ]
    rejected: list[Rejected] = []
    summary = await admin(gate).import_batches(
        "red",
        read_batches(open_lines(path), rule, "FR"),
        TENANT,
        "",
        rejected.append,
        mode=mode,
        expected=20_000,
    )
    assert (len(accepted), 0, len(reference)) == (
        summary.imported,
        summary.duplicates,
        summary.rejected,
    )
    assert reference == [(r.line_no, r.why) for r in rejected]
    assert len(accepted) == await admin(gate).lists.count(RED)
    assert [True] * 4 == [await listed(gate, n) for n in accepted[::4999][:4]]
    assert [2] == [len(pids) for pids in started]
    assert [] == [pid for pid in started[0] if Path(f"/proc/{pid}").exists()]  # noqa: ASYNC240


async def test_import_workers_stop_when_the_import_fails(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import that fails half-way (a line that is not UTF-8) stops its workers."""
    monkeypatch.setattr(formats, "BLOCK_BYTES", 4096)
    path = tmp_path / "list.txt"
    mixed_file(path, 5000)
    with path.open("ab") as out:
        out.write(b"06\xff\n" + b"+33612345678\n" * 5000)
    started: list[list[int]] = []
    start = Workers.start

    async def recorded(self: Workers) -> None:
        await start(self)
        started.append(self.pids)

    monkeypatch.setattr(Workers, "start", recorded)
    rule = gate.config.policy.list_rule("red")
    assert rule is not None
    with pytest.raises(InputError, match="not UTF-8"):
        await admin(gate).import_batches(
            "red", read_batches(open_lines(path), rule, "FR"), TENANT, "", print
        )
    assert [2] == [len(pids) for pids in started]
    assert [] == [pid for pid in started[0] if Path(f"/proc/{pid}").exists()]  # noqa: ASYNC240


async def test_a_block_sent_to_an_import_worker_killed_while_idle_fails_at_once(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import worker killed (the OOM killer, a signal) after it had answered every block
    it was sent: the next block sent to it fails the import at once with a WorkerError
    naming it. It was never answered: the import (its list lock held) waited forever."""
    monkeypatch.setattr(formats, "BLOCK_BYTES", 4096)
    path = tmp_path / "list.txt"
    mixed_file(path, 2000)
    rule = gate.config.policy.list_rule("red")
    assert rule is not None
    blocks = [b.block for b in read_batches(open_lines(path), rule, "FR") if b.block is not None]
    workers = Workers(gate.keyspace, 1)
    await workers.start()
    try:
        assert "ok" == (await asyncio.wait_for(workers.submit(blocks[0]), 20))[0]
        (pid,) = workers.pids
        os.kill(pid, signal.SIGKILL)
        worker = workers._workers[0]
        await asyncio.wait_for(worker.process.wait(), 10)
        await asyncio.wait_for(asyncio.shield(worker.reader), 10)  # its end was read
        reply = await asyncio.wait_for(workers.submit(blocks[1]), 5)
    finally:
        await workers.close()
    assert ("ended", f"the import worker (pid {pid}) ended") == reply


async def test_an_import_whose_workers_are_killed_fails_naming_them_the_list_unchanged(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --replace whose worker processes are killed half-way fails with a WorkerError
    (one line, not a RuntimeError: no bug) saying the list is unchanged, within a bounded
    time; the list in force is whole, its lock released."""
    monkeypatch.setattr(formats, "BLOCK_BYTES", 4096)
    lists = admin(gate)
    await lists.add("red", numbers(0, 50), TENANT, "")
    path = tmp_path / "list.txt"
    mixed_file(path, 20_000)
    rule = gate.config.policy.list_rule("red")
    assert rule is not None
    started: list[list[int]] = []
    start = Workers.start

    async def recorded(self: Workers) -> None:
        await start(self)
        started.append(self.pids)

    monkeypatch.setattr(Workers, "start", recorded)

    def killing() -> Iterator[formats.Batch]:
        for at, batch in enumerate(read_batches(open_lines(path), rule, "FR")):
            if at == 10:
                for pid in started[0]:
                    os.kill(pid, signal.SIGKILL)
            yield batch

    unchanged = r"list red:t:default: the import stopped, the list unchanged: "
    with pytest.raises(WorkerError, match=unchanged + r"the import worker \(pid \d+\) ended"):
        await asyncio.wait_for(
            lists.import_batches(
                "red", killing(), TENANT, "", print, mode="replace", expected=20_000
            ),
            30,
        )
    assert (50, True) == (
        await lists.count("red", TENANT, ""),
        await listed(gate, numbers(0, 1)[0]),
    )
    assert not await lists.lists._client.exists(gate.keyspace.lock_key(RED))


@pytest.mark.parametrize("mode", ["add", "remove"])
async def test_a_delta_import_cut_off_by_redis_says_part_is_done_and_to_import_again(
    tmp_path: Path, mode: str
) -> None:
    """Redis lost half-way through an import without --replace: the error says that the
    numbers sent before it are on the list (or removed), the rest not, and to import the
    file again; it said only that Redis was unreachable (the list's state unknown)."""
    with spawned_redis(tmp_path) as (url, server):
        store = Store(url, deadline_s=2.0)
        lists = admin(Gate(make_config(), store))
        try:
            values = numbers(0, 3 * formats.BATCH_LINES)
            if mode == "remove":
                await lists.add("red", values, TENANT, "")

            def cut_off() -> Iterator[tuple[int, str | Rejected]]:
                for line_no, value in entries(values):
                    if line_no == 2 * formats.BATCH_LINES:  # the first batch is sent
                        server.kill()
                        server.wait(10)
                    yield line_no, value

            with pytest.raises(StoreError) as stopped:
                await asyncio.wait_for(
                    lists.import_entries("red", cut_off(), TENANT, "", fail_on_reject, mode=mode),
                    60,
                )
        finally:
            await store.close()
    done = "are on the list" if mode == "add" else "are removed"
    assert (
        f"list 'red': the import stopped part-way: the numbers sent before the error {done}"
        in str(stopped.value)
    )
    assert "import the file again" in str(stopped.value)


@pytest.mark.parametrize(
    ("kind", "mode", "done"),
    [
        ("consent", "add", "the consents sent before the error ({n} confirmed) are recorded"),
        ("consent", "remove", "the numbers sent before the error ({n} confirmed) are removed"),
        ("reassigned", "add", "the numbers sent before the error ({n} confirmed) are on the"),
        ("reassigned", "remove", "the numbers sent before the error ({n} confirmed) are remo"),
    ],
)
async def test_a_consent_or_reassigned_import_cut_off_by_redis_says_part_is_done(
    tmp_path: Path, kind: str, mode: str, done: str
) -> None:
    """The same for a consent or a reassigned list's import: the error says how many
    numbers the store confirmed, that the rest are not in, and to import the file again;
    it said only that Redis was unreachable (the list's state unknown)."""
    lists_table = [{"name": "optin", "kind": kind, "scope": "tenant"}]
    config = make_config({"lists": lists_table})
    values = numbers(0, 3 * formats.BATCH_LINES)
    day = "2026-11-02"
    with spawned_redis(tmp_path) as (url, server):
        store = Store(url, deadline_s=2.0)
        lists = admin(Gate(config, store))
        try:
            if mode == "remove" and kind == "consent":
                await lists.add("optin", values, TENANT, "", now=NOW, clock=NOW)
            elif mode == "remove":
                await lists.import_disconnects(
                    "optin", [f"{v},{day}" for v in values], TENANT, "", fail_on_reject
                )

            def cut_off() -> Iterator[int]:
                for line_no in range(1, len(values) + 1):
                    if line_no == 2 * formats.BATCH_LINES:  # the first batch is sent
                        server.kill()
                        server.wait(10)
                    yield line_no

            if kind == "consent":
                lines = ((n, values[n - 1]) for n in cut_off())
                importing = lists.import_entries(
                    "optin", lines, TENANT, "", fail_on_reject, mode=mode, clock=NOW
                )
            else:
                disconnects = (f"{values[n - 1]},{day}" for n in cut_off())
                importing = lists.import_disconnects(
                    "optin", disconnects, TENANT, "", fail_on_reject, mode=mode
                )
            with pytest.raises(StoreError) as stopped:
                await asyncio.wait_for(importing, 60)
        finally:
            await store.close()
    message = str(stopped.value)
    assert message.startswith(
        "list 'optin': the import stopped part-way: " + done.format(n=formats.BATCH_LINES)
    ), message
    assert "import the file again" in message


async def test_a_large_delta_into_a_small_list_grows_its_buckets_first(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """Adding more entries than a small list's buckets hold resizes it first (the new
    entries go to buckets of the right size, which stay intsets)."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 10), TENANT, "")
    values = numbers(100, 1000)
    chunk = gate.keyspace.list_entries(values)
    changed = await lists.lists.delta_chunks(RED, "add", [chunk], expected=500_000)
    head = await lists.lists.directory(RED)
    encodings = {sync_redis.object("encoding", key) for key in sync_redis.keys(BUCKETS)}
    assert (1000, str(bits_for(500_010)), {b"intset"}) == (changed, head["bits"], encodings)
    assert [True, True] == [await listed(gate, values[0]), await listed(gate, numbers(0, 1)[0])]


async def test_a_replace_whose_cancellation_was_dropped_stops_at_its_next_chunk(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """Ctrl-C during an import is never lost: a cancellation that an await dropped (as
    Python 3.11's ``asyncio.wait_for`` inside redis-py's send does when the send completes
    at that moment) stops the replace at its next chunk; the live list and its lock are
    as before."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 100), TENANT, "")
    before = await lists.lists.directory(RED)

    async def source() -> AsyncIterator[tuple[Any, Any]]:
        for start in range(1000, 1000 + 5 * 200, 200):
            if start == 1400:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                try:  # noqa: SIM105 (spelled out: the dropped cancellation is the point)
                    await asyncio.sleep(0)  # delivers the cancellation...
                except asyncio.CancelledError:
                    pass  # ...which is dropped here, as wait_for drops it (no uncancel)
            yield lists.lists.entries([(b"", [n.encode() for n in numbers(start, 200)])])

    with pytest.raises(asyncio.CancelledError):
        await lists.lists.replace(RED, source(), 1000, {"source": "test"})
    assert (before["version"], 100) == (
        (await lists.lists.directory(RED))["version"],
        await lists.lists.count(RED),
    )
    assert [] == sync_redis.keys("callgate:*:lock")


async def test_an_interrupted_replace_removes_the_version_it_was_building(
    gate: Gate, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --replace cancelled while it builds (Ctrl-C, SIGTERM) removes
    its partial version: it stayed in Redis, holding its memory and taking every opt-out
    a second time, until the next replacement; the live list is as before."""
    monkeypatch.setattr("gate.store.lists._FLUSH_MAX", 5000)  # written as it is read
    lists = admin(gate)
    await lists.add("red", numbers(0, 100), TENANT, "")
    before = await lists.lists.directory(RED)
    written = asyncio.Event()

    async def source() -> AsyncIterator[tuple[Any, Any]]:
        for start in range(1000, 1000 + 50 * 2000, 2000):
            if start == 1000 + 10 * 2000:
                written.set()
                await asyncio.sleep(30)  # cancelled here
            yield lists.lists.entries([(b"", [n.encode() for n in numbers(start, 2000)])])

    importer = asyncio.create_task(lists.lists.replace(RED, source(), 100_000, {}))
    await asyncio.wait_for(written.wait(), 30)
    assert 1 < len(versions_of(sync_redis))  # the partial version is there
    importer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(importer, 70)
    after = await lists.lists.directory(RED)
    assert ({before["version"].encode()}, before["version"], False) == (
        versions_of(sync_redis),
        after["version"],
        "building" in after,
    )
    assert (100, []) == (await lists.lists.count(RED), sync_redis.keys("callgate:*:lock"))
    await lists.add("red", numbers(5000, 1), TENANT, "")  # deltas reach the live list alone
    assert {before["version"].encode()} == versions_of(sync_redis)


async def test_a_switch_completed_by_the_next_resize_keeps_the_cut_off_imports_metadata(
    gate: Gate, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--replace cut off once its groups switched (the directory not yet updated): the
    resize that completes the switch records the metadata of the file now in force (its
    source, its refreshed_at, in the directory and every group's meta), not the previous
    file's (a list 40 days old by its metadata: stale, while its entries are today's)."""
    lists = admin(gate)
    old = NOW - timedelta(days=40)
    await lists.import_entries(
        "red", entries(numbers(0, 50)), TENANT, "", fail_on_reject,
        refreshed_at=old, meta={"source": "old.txt"}, mode="replace", expected=50,
    )  # fmt: skip
    switched = ListStore._switched

    async def cut_off(self: ListStore, *args: Any) -> None:
        raise StoreUnavailable("Redis at test is unreachable (cut off)")

    monkeypatch.setattr(ListStore, "_switched", cut_off)
    with pytest.raises(StoreUnavailable, match="cut off while switching"):
        await lists.import_entries(
            "red", entries(numbers(0, 60)), TENANT, "", fail_on_reject,
            refreshed_at=NOW, meta={"source": "new.txt"}, mode="replace", expected=60,
        )  # fmt: skip
    monkeypatch.setattr(ListStore, "_switched", switched)
    await lists.lists.resize(RED)
    info = await lists.info("red", TENANT, "")
    refreshed = str(int(NOW.timestamp() * 1000))
    in_groups = {sync_redis.hget(gate.keyspace.meta_key(g), f"{RED}:r") for g in (0, 1, 700)}
    assert ("60", "new.txt", refreshed) == (info["entries"], info["source"], info["refreshed_at"])
    assert {refreshed.encode()} == in_groups
    assert "building_meta" not in info


async def cut_off_replace(
    lists: ListAdmin, monkeypatch: pytest.MonkeyPatch, values: list[str], source: str
) -> None:
    """``--replace`` of ``values`` cut off once every group switched, before the directory
    was updated (a failover): ``ListStore._switched`` fails."""

    async def cut_off(self: ListStore, *args: Any) -> None:
        raise StoreUnavailable("Redis at test is unreachable (cut off)")

    with monkeypatch.context() as patched:
        patched.setattr(ListStore, "_switched", cut_off)
        with pytest.raises(StoreUnavailable, match="cut off while switching"):
            await lists.import_entries(
                "red", entries(values), TENANT, "", fail_on_reject,
                refreshed_at=NOW, meta={"source": source}, mode="replace", expected=len(values),
            )  # fmt: skip


@pytest.mark.timeout(60)
async def test_an_unfinished_switch_is_told_by_info_and_refuses_export_until_the_next_import(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --replace cut off while switching: info names the version deciding and in how
    many slot groups (its metadata still the previous import's), export refuses (the
    stored version is not the one deciding); the next import completes the switch and
    both are as usual again."""
    store = Store(redis_url, deadline_s=1.0)
    lists = admin(Gate(make_config({"privacy": {"hash_numbers": False}}), store))
    try:
        await lists.import_entries(
            "red", entries(numbers(0, 50)), TENANT, "", fail_on_reject,
            meta={"source": "old.txt"}, mode="replace", expected=50,
        )  # fmt: skip
        await cut_off_replace(lists, monkeypatch, numbers(100, 60), "new.txt")
        switch = await lists.lists.unfinished_switch(RED)
        info = await lists.info("red", TENANT, "")
        with pytest.raises(InputError) as refused:
            _ = [n async for n in lists.export("red", TENANT, "")]
        await lists.import_entries(
            "red", entries(numbers(100, 60)), TENANT, "", fail_on_reject,
            meta={"source": "new.txt"}, mode="replace", expected=60,
        )  # fmt: skip
        settled = await lists.info("red", TENANT, "")
        exported = sorted([n async for n in lists.export("red", TENANT, "")])
        after = await lists.lists.unfinished_switch(RED)
    finally:
        await store.close()
    assert switch is not None
    assert (2, 1024, "new.txt") == (switch.version, switch.groups, switch.meta["source"])
    assert ("60", "old.txt", "2", "1024", "new.txt") == (
        info["entries"], info["source"], info["switch_version"], info["switch_groups"],
        info["switch_source"],
    )  # fmt: skip
    assert (
        "list 'red' is not exported: an import's switch to version 2 is unfinished (under "
        "way, or cut off by a failover): 1024 of 1024 slot groups decide with it, so the "
        "version stored as the list's is not the one in force; when no import is running, "
        "import the list again with `callgate list import red FILE --replace --tenant "
        "default`, e.g. that import's file (source 'new.txt'), which completes the switch "
        "first, then export it"
    ) == str(refused.value)
    assert (None, "new.txt", []) == (
        after,
        settled["source"],
        [k for k in settled if k.startswith("switch")],
    )
    assert numbers(100, 60) == exported


@pytest.mark.timeout(60)
async def test_an_unfinished_switch_counts_the_groups_that_switched(
    gate: Gate, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut off part way (a cluster: each group switches on its own), the switch names how
    many slot groups decide with the new version."""
    lists = admin(gate)
    await lists.import_entries(
        "red", entries(numbers(0, 50)), TENANT, "", fail_on_reject, mode="replace", expected=50
    )
    await cut_off_replace(lists, monkeypatch, numbers(100, 60), "new.txt")
    old = (
        sync_redis.hget(DIRECTORY, "version").decode()
        + "/"
        + sync_redis.hget(DIRECTORY, "bits").decode()
    )
    for group in range(24):  # as if these groups' shards had not switched yet
        sync_redis.hset(gate.keyspace.meta_key(group), RED, old)
    switch = await lists.lists.unfinished_switch(RED)
    info = await lists.info("red", TENANT, "")
    assert (1000, "1000") == (switch.groups if switch else None, info.get("switch_groups"))


@pytest.mark.timeout(60)
async def test_a_replace_not_yet_switching_is_no_unfinished_switch(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replacement stopped before any group switched (built, then cut off before its
    switch) leaves the previous version deciding everywhere: no switch is reported."""
    lists = admin(gate)
    await lists.import_entries(
        "red", entries(numbers(0, 50)), TENANT, "", fail_on_reject, mode="replace", expected=50
    )

    async def cut_off(self: ListStore, *args: Any) -> None:
        raise StoreUnavailable("Redis at test is unreachable (cut off)")

    monkeypatch.setattr(ListStore, "_switch", cut_off)
    with pytest.raises(StoreUnavailable):
        await lists.import_entries(
            "red", entries(numbers(100, 60)), TENANT, "", fail_on_reject,
            mode="replace", expected=60,
        )  # fmt: skip
    building = "building" in await lists.lists.directory(RED)
    info = await lists.info("red", TENANT, "")
    assert (True, None, None) == (
        building,
        await lists.lists.unfinished_switch(RED),
        info.get("switch_version"),
    )


@pytest.mark.parametrize(
    ("field", "value"), [("version", "abc"), ("bits", "40"), ("building", "abc")]
)
async def test_a_directory_entry_callgate_did_not_write_is_one_error_and_a_reimport_fixes_it(
    gate: Gate, sync_redis: redis.Redis, field: str, value: str
) -> None:
    """The list's directory entry holds a version field callgate did not write (by hand,
    a bad migration): an add is a StoreError naming the key, the field and the import that
    writes it anew; that import (--replace) does, and decisions read the list again. The
    add raised ValueError or OverflowError (a traceback), and so did the import."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 5), TENANT, "")
    sync_redis.hset(DIRECTORY, field, value)
    with pytest.raises(StoreError) as raised:
        await lists.add("red", numbers(100, 1), TENANT, "")
    summary = await lists.import_entries(
        "red", entries(numbers(1000, 8)), TENANT, "", fail_on_reject, mode="replace", expected=8
    )
    gate.store.forget_views()
    assert DIRECTORY in str(raised.value)
    assert f"({field} " in str(raised.value)
    assert "--replace" in str(raised.value)
    assert 8 == summary.imported
    assert await listed(gate, numbers(1000, 1)[0])


async def test_a_group_entry_count_callgate_did_not_write_is_one_error_and_a_reimport_fixes_it(
    gate: Gate, sync_redis: redis.Redis
) -> None:
    """A group's meta holds the list's entry count (``L:n``) as text (by hand, a bad
    migration): ``list count`` and ``list info`` are a StoreError naming the key, the field
    and the import that writes it anew; that import (--replace) counts the version in force
    from its buckets (an empty file is still refused) and writes every count anew. The
    count raised ValueError (a traceback), and so did the import."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 5), TENANT, "")
    meta = next(k for k in sync_redis.keys("callgate:{*}:meta") if sync_redis.hget(k, f"{RED}:n"))
    sync_redis.hset(meta, f"{RED}:n", "lots")
    with pytest.raises(StoreError) as counted:
        await lists.count("red", TENANT, "")
    with pytest.raises(StoreError) as shown:
        await lists.info("red", TENANT, "")
    with pytest.raises(OptionError, match=r"\(5 entries\)"):
        await lists.import_entries("red", [], TENANT, "", fail_on_reject, mode="replace")
    summary = await lists.import_entries(
        "red", entries(numbers(1000, 8)), TENANT, "", fail_on_reject, mode="replace", expected=8
    )
    for raised in (counted, shown):
        assert meta.decode() in str(raised.value)
        assert f"'{RED}:n'" in str(raised.value)
        assert "--replace" in str(raised.value)
    assert 8 == summary.imported
    assert 8 == await lists.count("red", TENANT, "")


@pytest.mark.parametrize(
    ("suffix", "value"), [("", "garbage"), (":b", "7/99"), (":n", "lots")], ids=["live", "b", "n"]
)
async def test_a_group_meta_field_callgate_did_not_write_fails_an_add_naming_it(
    gate: Gate, sync_redis: redis.Redis, suffix: str, value: str
) -> None:
    """A group's meta holds the list's live version, the version being built or its entry
    count as something callgate did not write: an add reaching that group is a StoreError
    naming the meta key, the field and the import that writes it anew, and changes nothing
    there; that import (--replace) does, and adds work again. A version raised ValueError
    (a traceback) when the add was sent again; a count failed HINCRBY after the buckets had
    changed, the error naming neither key nor field."""
    lists = admin(gate)
    await lists.add("red", numbers(0, 1), TENANT, "")
    metas = sync_redis.keys("callgate:{*}:meta")
    with sync_redis.pipeline() as pipe:
        for meta in metas:  # every group: the add's number reaches one
            pipe.hset(meta, RED + suffix, value)
        pipe.execute()
    buckets = {k: sync_redis.smembers(k) for k in sync_redis.keys(BUCKETS)}
    with pytest.raises(StoreError) as raised:
        await lists.add("red", numbers(0, 2), TENANT, "")
    unchanged = {k: sync_redis.smembers(k) for k in sync_redis.keys(BUCKETS)}
    await lists.import_entries(
        "red", entries(numbers(0, 1)), TENANT, "", fail_on_reject, mode="replace", expected=1
    )
    assert 1 == await lists.add("red", numbers(0, 2), TENANT, "")
    assert any(meta.decode() in str(raised.value) for meta in metas)
    assert f"'{RED}{suffix}'" in str(raised.value)
    assert "--replace" in str(raised.value)
    assert buckets == unchanged
    assert 2 == await lists.count("red", TENANT, "")
