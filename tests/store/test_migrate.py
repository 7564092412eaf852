"""``callgate migrate`` against a REAL Redis filled with key layout 1 (before slot groups).

``legacy_store`` writes layout 1 as callgate wrote it before slot groups (one hash tag
``{callgate}`` for everything; gate/store/migrate.py's docstring): list heads with their
version's buckets, a consent list and its metadata, an attempt log (out of time order,
as a back-dated record left it), a cool-off marker, a trunk's CPS log and the audit
stream, all derived from the test keyspace's encodings.
"""

from __future__ import annotations

import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from gate.cli import EXIT_USAGE, main
from gate.core.errors import StoreError
from gate.core.keys import Keyspace
from gate.core.model import Attempt, Verdict
from gate.lists.admin import ListAdmin
from gate.ops.audit import read_range
from gate.service import Gate
from gate.store.client import Store
from gate.store.migrate import legacy_keys_present, migrate
from tests.conftest import TEST_SECRET, make_config

OLD = "{callgate}:"
RED, DNC, CONSENTED, CAPPED, REFUSED = (
    "+33699999999",
    "+33610000042",
    "+33612345678",
    "+33612345679",
    "+33612345670",
)
DNC_NUMBERS = [f"+3361{i:07d}" for i in range(3000)]
CONFIG = {
    "lists": [
        {"name": "red", "kind": "block", "scope": "tenant"},
        {"name": "dnc", "kind": "block", "scope": "global"},
        {"name": "consent", "kind": "consent", "scope": "tenant"},
    ],
    "caps": [{"id": "house", "limit": 2, "window": "7d", "scope": "tenant"}],
}


def legacy_store(client: redis.Redis, keyspace: Keyspace, now_ms: int) -> None:
    """Layout 1, as the callgate before slot groups left it."""
    red = keyspace.number(RED)
    client.hset(OLD + "list:red:t:default", mapping={"version": 1, "bits": 0, "count": 1})
    client.sadd(OLD + "list:red:t:default:v1:0", red.member)
    client.hset(
        OLD + "list:dnc",
        mapping={
            "version": 3,
            "bits": 2,
            "count": len(DNC_NUMBERS),
            "next_version": 3,
            "refreshed_at": now_ms - 86_400_000,
            "source": "dnc.txt",
        },
    )
    for e164 in DNC_NUMBERS:
        entry = keyspace.number(e164)
        client.sadd(f"{OLD}list:dnc:v3:{entry.bucket32 >> 30}", entry.member)
    client.sadd(OLD + "list:dnc:v2:0", keyspace.number(RED).member)  # a dropped old version
    consented = keyspace.number(CONSENTED)
    client.hset(OLD + "list:consent:t:default", consented.token, f"{now_ms - 1000}:0")
    client.hset(OLD + "list:consent:t:default:meta", "refreshed_at", now_ms - 5000)
    capped = keyspace.number(CAPPED)
    attempts = struct.pack(">2d", now_ms - 1000, now_ms - 60_000)  # out of order
    client.set(f"{OLD}cap:house:t:default:{capped.token}", attempts, px=7 * 86_400_000)
    refused = keyspace.number(REFUSED)
    client.set(f"{OLD}cool:fr-d223-9-refusal:t:default:{refused.token}", now_ms, px=3_600_000)
    client.set(OLD + "cps:carrier-a", struct.pack(">d", now_ms), px=60_000)
    for number in (capped.token, capped.token, red.token, "17"):
        client.xadd(OLD + "audit", {"verdict": "ALLOW", "number": number, "door": "agi"})


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace("callgate", TEST_SECRET.encode())


async def test_migrate_moves_lists_consents_counters_and_audit(
    redis_url: str, sync_redis: redis.Redis, keyspace: Keyspace
) -> None:
    """After migrate: red and dnc block (dnc keeps its metadata), the consent and its list
    metadata are there, the attempt log still caps (in time order), the cool-off and CPS
    log kept their time to live, every audit entry kept its id in its number's stream,
    and no key of layout 1 is left."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    legacy_store(sync_redis, keyspace, now_ms)
    old_ids = [entry_id for entry_id, _ in sync_redis.xrange(OLD + "audit")]
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config(CONFIG), store)
    admin = ListAdmin.of(gate)
    try:
        assert await legacy_keys_present(store, keyspace)
        done = await migrate(store, keyspace)
        decisions = [
            (await gate.decide(Attempt(number, now), record=False, door="cli")).reason
            for number in (RED, DNC, DNC_NUMBERS[-1], CONSENTED, CAPPED)
        ]
        info = await admin.info("dnc", "default", "")
        consent = await admin.info("consent", "default", "")
        audit = [r async for r in read_range(store.admin_client, "callgate")]
        capped = keyspace.number(CAPPED)
        why = [
            r["id"] async for r in read_range(store.admin_client, "callgate", groups=[capped.group])
        ]
        again = await legacy_keys_present(store, keyspace)
    finally:
        await store.close()
    refused = keyspace.number(REFUSED)
    cool = keyspace.number_key(refused.group, "cool:fr-d223-9-refusal:t:default", refused.token)
    log = keyspace.number_key(capped.group, "cap:house:t:default", capped.token)
    assert ["listed:red", "listed:dnc", "listed:dnc", "allowed", "cap:house"] == decisions
    assert ({"dnc": 3000, "red:t:default": 1}, {"consent:t:default": 1}) == (
        done.lists,
        done.consents,
    )
    assert (str(len(DNC_NUMBERS)), str(now_ms - 86_400_000), "dnc.txt") == (
        info["entries"],
        info["refreshed_at"],
        info["source"],
    )
    assert ("1", str(now_ms - 5000)) == (consent["entries"], consent["refreshed_at"])
    assert (now_ms - 60_000, now_ms - 1000) == struct.unpack(">2d", sync_redis.get(log))
    assert 0 < sync_redis.pttl(log) <= 7 * 86_400_000
    assert (str(now_ms).encode(), True) == (
        sync_redis.get(cool),
        0 < sync_redis.pttl(cool) <= 3_600_000,
    )
    assert 0 < sync_redis.pttl(keyspace.cps_key("carrier-a")) <= 60_000
    assert sorted(i.decode() for i in old_ids) == sorted(r["id"] for r in audit)
    assert [i.decode() for i in old_ids[:2]] == why
    assert ([], False) == (sync_redis.keys(OLD + "*"), again)


def migrate_config(directory: Path, redis_url: str) -> Path:
    """A config file for ``callgate migrate`` on ``redis_url``: the legacy store's lists."""
    config = directory / "cg.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[privacy]\nsecret = "{TEST_SECRET}"\n'
        '[[lists]]\nname = "red"\nkind = "block"\nscope = "tenant"\n'
        '[[lists]]\nname = "dnc"\nkind = "block"\nscope = "global"\n'
    )
    return config


def test_the_migrate_command_says_what_it_moved_and_is_idempotent(
    redis_url: str,
    sync_redis: redis.Redis,
    keyspace: Keyspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``callgate migrate`` prints the lists and counts moved; run again, nothing to do."""
    legacy_store(sync_redis, keyspace, int(time.time() * 1000))
    config = migrate_config(tmp_path, redis_url)
    first = main(["--config", str(config), "migrate"])
    out = capsys.readouterr().out
    second = main(["--config", str(config), "migrate"])
    again = capsys.readouterr().out
    assert (0, 0) == (first, second)
    assert out.startswith("lists: dnc 3000, red:t:default 1\nconsents: consent:t:default 1\n")
    assert "audit entries 4" in out
    assert "nothing to migrate: no keys of the old layout in namespace 'callgate'\n" == again


async def test_a_migrated_store_decides_like_the_old_one_recorded(
    redis_url: str, sync_redis: redis.Redis, keyspace: Keyspace
) -> None:
    """The migrated attempt log (two attempts) keeps counting: a cap of 2 in 7 days is
    reached, and the wait is until the OLDER attempt leaves the window."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    legacy_store(sync_redis, keyspace, now_ms)
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config(CONFIG), store)
    try:
        await migrate(store, keyspace)
        decision = await gate.decide(Attempt(CAPPED, now), record=True, door="cli")
    finally:
        await store.close()
    wait = timedelta(days=7) - timedelta(seconds=60)
    assert (Verdict.DEFER, wait.total_seconds()) == (decision.verdict, decision.retry_after_s)


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("list:dnc", "version", "three"),
        ("list:dnc", "bits", "-1"),
        ("list:dnc:v3:0", None, "not-a-number"),
    ],
    ids=["version", "bits", "member"],
)
def test_a_legacy_list_callgate_did_not_write_stops_the_migrate_command_in_one_line(
    redis_url: str,
    sync_redis: redis.Redis,
    keyspace: Keyspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    field: str | None,
    value: str,
) -> None:
    """A layout-1 list head's version or bits, or a bucket's member, is not what callgate
    wrote (by hand, another tool): ``callgate migrate`` fails in one line naming the key
    and what to do, and removes nothing of layout 1 (it can be run again). It raised
    ValueError (a traceback)."""
    legacy_store(sync_redis, keyspace, int(time.time() * 1000))
    if field is None:
        sync_redis.sadd(OLD + key, value)
    else:
        sync_redis.hset(OLD + key, field, value)
    before = sorted(sync_redis.keys(OLD + "*"))
    config = migrate_config(tmp_path, redis_url)
    code = main(["--config", str(config), "migrate"])
    err = capsys.readouterr().err
    assert 0 != code
    assert 1 == len(err.strip().splitlines())
    assert f"{OLD}{key} is unreadable" in err
    assert "callgate migrate" in err
    assert before == sorted(sync_redis.keys(OLD + "*"))


FOREIGN = {  # a key or value of layout 1 callgate never wrote, and what migrate says of it
    "cap-token": ("cap:house:t:default:not-hex", "token 'not-hex'"),
    "cool-token": ("cool:fr-d223-9-refusal:t:default:+3361", "token '+3361'"),
    "key-not-utf8": (b"cap:house:t:default:\xff\xfe", "not UTF-8"),
    "cap-type": ("cap:house:t:default:" + "ab" * 8, "a HASH, not the STRING"),
    "cps-type": ("cps:carrier-b", "a LIST, not the STRING"),
    "audit-type": ("audit", "a STRING, not the STREAM"),
    "meta-type": ("list:consent:t:default:meta", "a SET, not the HASH"),
    "head-type": ("list:blue:t:default", "a STRING, not the HASH"),
    "bucket-type": ("list:dnc:v3:1", "a STRING, not the SET"),
    "head-value": ("list:dnc", "field 'source'"),
    "meta-value": ("list:consent:t:default:meta", "field 'refreshed_at'"),
    "consent-token": ("list:consent:t:default", "token 'nothex'"),
}


def _write_foreign(client: redis.Redis, case: str, key: bytes) -> None:
    """Replace or add ``key`` (under the layout-1 prefix) as ``case`` describes."""
    if case in (
        "cap-token",
        "cool-token",
        "key-not-utf8",
        "head-type",
        "audit-type",
        "bucket-type",
    ):
        client.delete(key)
        client.set(key, b"1")
    elif case == "cap-type":
        client.hset(key, "a", "b")
    elif case == "cps-type":
        client.rpush(key, "a")
    elif case == "meta-type":
        client.delete(key)
        client.sadd(key, "a")
    elif case == "head-value":
        client.hset(key, "source", b"\xff\xfe")
    elif case == "meta-value":
        client.hset(key, "refreshed_at", b"\xff\xfe")
    else:
        client.hset(key, "nothex", "1:0")


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_legacy_key_callgate_did_not_write_stops_the_migrate_command_in_one_line(
    redis_url: str,
    sync_redis: redis.Redis,
    keyspace: Keyspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    """A layout-1 attempt log or cool-off whose token is not a token (not hex), a key name
    that is not UTF-8, a key of another Redis type than callgate wrote there, a list's
    metadata that is not UTF-8 or a consent's token that is not hex (by hand, another
    tool): ``callgate migrate`` fails in one line naming the key, what is wrong and what
    to do, and removes nothing of layout 1 (it can be run again once corrected). These
    raised ValueError, UnicodeDecodeError (tracebacks), gave a bare WRONGTYPE, or (a list
    head of another type) deleted the key unsaid."""
    legacy_store(sync_redis, keyspace, int(time.time() * 1000))
    name, why = FOREIGN[case]
    key = OLD.encode() + (name if isinstance(name, bytes) else name.encode())
    _write_foreign(sync_redis, case, key)
    before = sorted(sync_redis.keys(OLD + "*"))
    config = migrate_config(tmp_path, redis_url)
    code = main(["--config", str(config), "migrate"])
    err = capsys.readouterr().err
    assert (EXIT_USAGE, 1) == (code, len(err.strip().splitlines())), err
    shown = key.decode("utf-8", "backslashreplace")
    assert f"{shown} is unreadable" in err
    assert why in err
    assert "then run `callgate migrate` again" in err
    assert before == sorted(sync_redis.keys(OLD + "*"))


async def test_a_legacy_key_deleted_while_migrating_is_skipped(
    redis_url: str, sync_redis: redis.Redis, keyspace: Keyspace
) -> None:
    """A key of layout 1 gone between the scan and its copy (expired, deleted by another
    client) is skipped, not a list made empty: the rest is migrated."""
    legacy_store(sync_redis, keyspace, int(time.time() * 1000))
    sync_redis.hset(OLD + "list:blue:t:default", "ab" * 8, "1:0")
    gone = [OLD + "list:blue:t:default", OLD + "list:red:t:default", OLD + "cps:carrier-a"]
    store = Store(redis_url, deadline_s=1.0)
    try:
        # The audit stream is the first key in order: the others go right after it.
        done = await migrate(store, keyspace, lambda _: sync_redis.delete(*gone))
    finally:
        await store.close()
    assert ({"dnc": 3000}, {"consent:t:default": 1}, 0) == (
        done.lists,
        done.consents,
        done.cps,
    )
    assert [] == sync_redis.keys(OLD + "*")


async def test_an_audit_entry_whose_number_is_not_utf8_is_migrated_as_it_is(
    redis_url: str, sync_redis: redis.Redis, keyspace: Keyspace
) -> None:
    """An old audit entry's number that is not UTF-8 (not callgate's) goes, as it is and
    with its id, to group 0's stream, like any number that is not a token: decoding it
    raised UnicodeDecodeError (a traceback)."""
    legacy_store(sync_redis, keyspace, int(time.time() * 1000))
    entry_id = sync_redis.xadd(OLD + "audit", {"verdict": "ALLOW", "number": b"\xff\xfe"})
    store = Store(redis_url, deadline_s=1.0)
    try:
        done = await migrate(store, keyspace)
    finally:
        await store.close()
    moved = sync_redis.xrange(keyspace.audit_key(0), min=entry_id, max=entry_id)
    assert (5, [(entry_id, {b"verdict": b"ALLOW", b"number": b"\xff\xfe"})]) == (done.audit, moved)


async def test_plain_numbers_migrate_by_their_e164_token_and_stop_on_another(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """Numbers stored plain: an attempt log keyed by its E.164 number moves to its group;
    one keyed by what is no number stops the migration naming it, nothing removed."""
    plain = Keyspace("callgate", None)
    number = plain.number(CAPPED)
    sync_redis.set(f"{OLD}cap:house:{CAPPED}", struct.pack(">d", 1.0))
    store = Store(redis_url, deadline_s=1.0)
    try:
        done = await migrate(store, plain)
        sync_redis.set(OLD + "cap:house:somebody", struct.pack(">d", 1.0))
        with pytest.raises(StoreError, match=r"cap:house:somebody is unreadable \(token"):
            await migrate(store, plain)
    finally:
        await store.close()
    assert (1, struct.pack(">d", 1.0)) == (
        done.caps,
        sync_redis.get(plain.number_key(number.group, "cap:house", CAPPED)),
    )
    assert [OLD.encode() + b"cap:house:somebody"] == sync_redis.keys(OLD + "*")
