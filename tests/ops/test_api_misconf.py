"""Redis refusing writes (MISCONF: a snapshot failed and ``stop-writes-on-bgsave-error``
is on), and Redis's error replies as the user sees them: one clean line, never a
pipeline's command (a number), a script's name or its source; an opt-out refused is never
answered as done. Against real Redis servers: the session's, and one of this test's own
driven into MISCONF."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from gate.service import Gate
from gate.store.client import Store, translate_error
from tests.conftest import make_config, redis_server_version, spawned_redis
from tests.ops.conftest import LISTS, Served, serve

NUMBER = "+33699001122"
WHERE = "unix:///test.sock"


def _misconf(url: str, data_dir: Path) -> None:
    """Drive the Redis at ``url``, whose dir is ``data_dir``, into MISCONF: snapshots on,
    its dir removed under it (no user can create a file there, root included), a BGSAVE
    that fails."""
    client = redis.Redis.from_url(url)
    try:
        client.config_set("save", "900 1")
        client.config_set("stop-writes-on-bgsave-error", "yes")
        data_dir.rmdir()
        _bgsave(client, "err")
    finally:
        client.close()


def _heal(url: str, data_dir: Path) -> None:
    """Let the Redis at ``url`` write again: its dir ``data_dir`` (a new one), a snapshot
    that succeeds."""
    data_dir.mkdir()
    client = redis.Redis.from_url(url)
    try:
        client.config_set("dir", str(data_dir))
        _bgsave(client, "ok")
    finally:
        client.close()


def _bgsave(client: redis.Redis, status: str) -> None:
    """A BGSAVE, then wait (bounded) until Redis reports it ended with ``status``."""
    client.bgsave()
    deadline = time.monotonic() + 10
    while client.info("persistence")["rdb_last_bgsave_status"] != status:
        assert time.monotonic() < deadline, f"BGSAVE did not end with {status!r}"
        time.sleep(0.05)


@pytest.fixture
def misconf_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own, in MISCONF."""
    data = tmp_path / "data"
    data.mkdir()
    # ``dir`` is a protected setting from Redis 7 (Valkey: 8), set again by ``_heal``.
    protected = ("--enable-protected-configs", "yes") if redis_server_version() >= (7,) else ()
    with spawned_redis(tmp_path, ("--dir", str(data), *protected)) as (url, _):
        _misconf(url, data)
        yield url


@pytest.fixture
async def misconf_served(misconf_redis: str) -> AsyncIterator[Served]:
    store = Store(misconf_redis, deadline_s=1.0)
    running = await serve(Gate(make_config({"lists": LISTS}), store, version="v1"))
    yield running
    await running.session.close()
    await running.server.stop()
    await store.close()


async def test_an_opt_out_refused_by_misconf_is_503_in_one_line_and_not_listed(
    misconf_served: Served, misconf_redis: str, tmp_path: Path
) -> None:
    """``POST /v1/lists/red/add`` while Redis refuses writes: 503, ``{"error": …}`` one line
    saying MISCONF and what to do (no command, no number); once Redis writes again the
    number is not listed (nothing was claimed), and the same opt-out then succeeds."""
    refused = await misconf_served.post("/v1/lists/red/add", {"numbers": [NUMBER]})
    _heal(misconf_redis, tmp_path / "healed")
    after = await misconf_served.post("/v1/check", {"number": NUMBER})
    again = await misconf_served.post("/v1/lists/red/add", {"numbers": [NUMBER]})
    status, body = refused
    message = body["error"]
    assert 503 == status
    assert message.startswith(f"Redis at {misconf_redis} refuses every write (MISCONF):")
    assert "see Redis's log, fix its disk or its dir, then try again" in message
    assert ("\n", "Command #", "699001122") == tuple(
        part for part in ("\n", "Command #", "699001122") if part not in message
    )
    assert "listed:red" != after[1]["reason"]
    assert (200, {"added": 1, "already_listed": 0}) == again


async def test_a_pipeline_error_is_redis_own_words_without_the_command(
    redis_url: str,
) -> None:
    """An error reply inside a pipeline (WRONGTYPE on a member that is a number): the
    message is Redis's text alone, not redis-py's ``Command # 2 (SADD … +336…)`` around it."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("k", "v")
            pipe.sadd("k", NUMBER)
            with pytest.raises(redis.ResponseError) as raised:
                await pipe.execute()
    finally:
        await client.aclose()
    assert NUMBER in str(raised.value)  # what redis-py says
    assert (
        f"Redis at {WHERE} answered with an error: WRONGTYPE Operation against a key "
        "holding the wrong kind of value"
    ) == str(translate_error(raised.value, WHERE))


async def test_a_script_error_is_one_line_without_the_script(redis_url: str) -> None:
    """A script that fails (EVALSHA, as the store sends them): one line with Redis's reason,
    without the script's SHA, function name, line or source."""
    source = (
        "-- decide.lua\nlocal secret = 'lua-source-here'\n"
        "return redis.call('SADD', KEYS[1], ARGV[1])\n"
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set("k", "v")
        sha = await client.script_load(source)
        with pytest.raises(redis.ResponseError) as raised:
            await client.evalsha(sha, 1, "k", NUMBER)
    finally:
        await client.aclose()
    message = str(translate_error(raised.value, WHERE))
    assert message.startswith(f"Redis at {WHERE} answered with an error: WRONGTYPE"), message
    assert [] == [
        part for part in (sha, "user_script", "lua-source-here", "f_", "\n") if part in message
    ], message


def _read_only(client: redis.Redis) -> None:
    """A replica (of a master that is not there): it refuses writes with READONLY."""
    client.replicaof("127.0.0.1", 1)


def _out_of_memory(client: redis.Redis) -> None:
    """Full (maxmemory 1 byte, nothing evicted): it refuses writes with OOM."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)


@pytest.mark.parametrize(
    ("refuse", "said"),
    [
        (_read_only, "READONLY You can't write against a read only replica."),
        (_out_of_memory, "OOM command not allowed when used memory > 'maxmemory'."),
    ],
)
async def test_an_error_redis_py_parses_keeps_its_code(
    tmp_path: Path, refuse: object, said: str
) -> None:
    """READONLY (a replica after a failover) and OOM (a full Redis): redis-py raises them
    as classes of their own and cuts their code off the text; the line puts it back, alone
    and inside a pipeline, as Redis said it."""
    with spawned_redis(tmp_path) as (url, _):
        admin = redis.Redis.from_url(url)
        try:
            assert callable(refuse)
            refuse(admin)
        finally:
            admin.close()
        client = aioredis.Redis.from_url(url)
        try:
            with pytest.raises(redis.ResponseError) as alone:
                await client.set("k", NUMBER)
            async with client.pipeline(transaction=False) as pipe:
                pipe.get("k")
                pipe.sadd("k", NUMBER)
                with pytest.raises(redis.ResponseError) as piped:
                    await pipe.execute()
        finally:
            await client.aclose()
    expected = f"Redis at {WHERE} answered with an error: {said}"
    assert [expected, expected] == [
        str(translate_error(alone.value, WHERE)),
        str(translate_error(piped.value, WHERE)),
    ]
