"""Decision channels (gate.store.channel): redis-py opens and authenticates each decision
connection, then a channel reads it by protocol callbacks.

Against real redis-servers: the session's, and servers of this module's own (one that
takes a single client, one that is a read-only replica), each killed by PID. The one
stand-in is for a sentinel's answer (which address is the master), not for Redis; TLS is
a loopback TLS endpoint (a self-signed certificate made by ``openssl``) forwarding to the
session's Redis, as a TLS-terminating proxy would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from gate.config.loader import RedisConfig
from gate.core.model import Attempt
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.store.channel import Behind, Channel, ChannelLane
from gate.store.client import Store
from gate.store.embedded import find_redis_server
from tests.conftest import make_config

START_S = 10.0
SET = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"


def attempt(dialled: str = "0612345678") -> Attempt:
    return Attempt(dialled=dialled, now=datetime.now(UTC))


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_redis(*options: str) -> Iterator[tuple[str, int]]:
    """A redis-server of this test on a free loopback port (``options`` added), killed by
    PID at the end: yields (host, port)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="cg-channel-") as tmp:
        process = subprocess.Popen(
            [
                *(find_redis_server(), "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", tmp, *options),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port, socket_timeout=1.0)
            give_up = time.monotonic() + START_S
            for _ in range(int(START_S / 0.05)):
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        break
                assert time.monotonic() < give_up, "redis-server did not answer PING"
                time.sleep(0.05)
            client.close()
            yield "127.0.0.1", port
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)


async def exchange(channel: Channel, request: bytes) -> Any:
    reply: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    channel.exchange(request, 1, reply, Behind(), 5.0)
    async with asyncio.timeout(5.0):
        (answer,) = await reply
    return answer


async def test_a_channel_outlives_the_collection_of_the_objects_that_opened_it(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The connection redis-py opened is the channel's: collecting redis-py's connection and
    stream objects neither closes it nor makes the store reconnect (20 decisions, each after
    a full garbage collection, over the one connection opened first)."""
    store = Store(redis_url, 1.0, RedisConfig(url=redis_url, pool_size=1))
    gate = Gate(make_config(), store)
    try:
        await gate.decide(attempt(), record=False, door="cli")
        before = connections_received(sync_redis)
        reasons = set()
        for i in range(20):
            gc.collect()
            decision = await gate.decide(attempt(f"0613{i:06d}"), record=True, door="cli")
            reasons.add(decision.reason)
        reconnections = connections_received(sync_redis) - before
    finally:
        await store.close()
    assert ({"allowed"}, 0) == (reasons, reconnections)


def test_decisions_run_on_uvloop_whose_transports_are_no_asyncio_transports(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """``callgate run`` serves on uvloop (its default ``--loop``): there a channel takes
    over a transport that is not an ``asyncio.Transport`` subclass; decisions go out over
    the one connection and a listed number is blocked."""
    import uvloop

    async def decide_all() -> tuple[list[str], int, str]:
        store = Store(redis_url, 1.0, RedisConfig(url=redis_url, pool_size=1))
        gate = Gate(make_config(), store)
        try:
            loop = asyncio.get_running_loop()
            await ListAdmin(gate.config.policy, gate.keyspace, store).add(
                "red", ["0613000003"], "default", ""
            )
            reasons = [
                (await gate.decide(attempt(f"061300000{i}"), record=True, door="cli")).reason
                for i in range(5)
            ]
            channel = next(iter(store._lane._channels))
            assert not isinstance(channel.transport, asyncio.Transport)
            return reasons, connections_received(sync_redis), type(loop).__module__
        finally:
            await store.close()

    before = connections_received(sync_redis)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        reasons, after, module = runner.run(decide_all())
    assert module == "uvloop"
    assert reasons == ["allowed", "allowed", "allowed", "listed:red", "allowed"]
    assert after - before <= 3  # the admin connection, the channel (and redis-py's probe)


async def test_a_channel_the_server_closed_while_idle_is_replaced(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """Redis closes the idle decision connection (CLIENT KILL, as its idle ``timeout``
    would): the channel leaves the lane at once, and the next recorded decision goes out
    on a new connection and is allowed."""
    store = Store(redis_url, 1.0, RedisConfig(url=redis_url, pool_size=1))
    gate = Gate(make_config(), store)
    try:
        await gate.decide(attempt(), record=False, door="cli")
        before = connections_received(sync_redis)
        killed = sync_redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await asyncio.sleep(0.05)  # the event loop sees the end of the connection
        decision = await gate.decide(attempt("0613999999"), record=True, door="cli")
        reconnections = connections_received(sync_redis) - before
    finally:
        await store.close()
    assert (1, "allowed", 1) == (killed, decision.reason, reconnections)


async def test_a_connection_that_could_not_open_gives_its_place_to_the_next_caller() -> None:
    """One channel allowed, and Redis refuses it (maxclients reached): that decision gets
    the fail mode; once Redis takes clients again, the next decision opens the channel at
    once (the failed opening did not keep the only place)."""
    with own_redis("--maxclients", "1") as (host, port):
        url = f"redis://{host}:{port}/0"
        holder = redis.Redis(host=host, port=port)
        holder.ping()  # the one client Redis takes
        config = RedisConfig(url=url, pool_size=1, pool_wait_s=5.0)
        store = Store(url, 1.0, config)
        gate = Gate(make_config(), store)
        try:
            refused = await gate.decide(attempt(), record=False, door="cli")
            holder.close()
            await asyncio.sleep(0.1)  # Redis sees the holder go
            started = time.monotonic()
            later = await gate.decide(attempt(), record=False, door="cli")
            waited_s = time.monotonic() - started
        finally:
            await store.close()
    assert ("store_unavailable", "allowed") == (refused.reason, later.reason)
    assert waited_s < 1.0, f"the second decision waited {waited_s:.1f} s for a place"


async def test_close_lets_a_decision_in_flight_finish(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """``close()`` while a decision waits for a reply (Redis paused 200 ms, deadline 1 s):
    the decision gets its answer, then the channel is closed."""
    store = Store(redis_url, 1.0, RedisConfig(url=redis_url, pool_size=1))
    gate = Gate(make_config(), store)
    await gate.decide(attempt(), record=False, door="cli")
    sync_redis.execute_command("CLIENT", "PAUSE", 200, "ALL")
    pending = asyncio.ensure_future(gate.decide(attempt("0613000001"), record=True, door="cli"))
    await asyncio.sleep(0.02)  # sent; its reply waits for the pause to end
    await store.close()
    decision = await pending
    assert "allowed" == decision.reason


async def test_a_reply_nobody_asked_for_closes_the_channel(redis_url: str) -> None:
    """A reply that arrives with no request waiting (a write behind the channel's back)
    means the connection is out of step: the channel closes and leaves the lane."""
    lane = ChannelLane(ConnectionPool.from_url(redis_url), 1, 1.0)
    channel = await lane.checkout()
    assert b"PONG" == await exchange(channel, PING)
    assert channel.transport is not None
    channel.transport.write(PING)  # nothing waits for this reply
    for _ in range(500):  # at most 5 s
        if channel.closed:
            break
        await asyncio.sleep(0.01)
    fresh = await lane.checkout()
    answer = await exchange(fresh, PING)
    await lane.close(1.0)
    assert (True, False, b"PONG") == (channel.closed, fresh is channel, answer)


class _Answers:
    """A sentinel's answer, fixed: the master of every service is ``address``."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        return self.address


@pytest.mark.parametrize("mode", ["single", "sentinel"])
async def test_a_readonly_reply_is_a_value_on_one_server_and_a_lost_master_under_sentinel(
    mode: str,
) -> None:
    """A write to a read-only replica: on one server the READONLY error is the reply (the
    channel stays in step and in use); under Sentinel it means the master was demoted, so
    the request fails with ConnectionError and the channel closes (the next asks the
    sentinels again)."""
    with own_redis("--replicaof", "127.0.0.1", "1") as (host, port):  # a master never there
        pool: ConnectionPool
        if mode == "single":
            pool = ConnectionPool.from_url(f"redis://{host}:{port}/0")
        else:
            pool = SentinelConnectionPool("callgate", _Answers((host, port)))  # type: ignore[no-untyped-call]
        lane = ChannelLane(pool, 1, 1.0)
        channel = await lane.checkout()
        try:
            outcome: Any = await exchange(channel, SET)
        except RedisConnectionError as exc:
            outcome = exc
        closed = channel.closed
        await lane.close(1.0)
        await pool.aclose()
    if mode == "single":
        assert (True, False) == (isinstance(outcome, ReadOnlyError), closed)
    else:
        assert (True, True) == (isinstance(outcome, RedisConnectionError), closed)


async def test_a_channel_opening_while_its_lane_closes_is_closed_too(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The lane closes while a connection is being opened (Redis paused: its handshake
    waits): once open, that connection is closed at once and its caller told so; Redis is
    left with the clients it had."""
    before = int(sync_redis.info("clients")["connected_clients"])
    pool = ConnectionPool.from_url(redis_url)
    lane = ChannelLane(pool, 1, 1.0)
    sync_redis.execute_command("CLIENT", "PAUSE", 300, "ALL")
    opening = asyncio.ensure_future(lane.checkout())
    await asyncio.sleep(0.05)  # connected; the handshake waits for the pause to end
    await lane.close(0.1)
    with pytest.raises(RedisConnectionError, match="closed"):
        async with asyncio.timeout(5.0):
            await opening
    await pool.aclose()
    await asyncio.sleep(0.1)  # Redis sees the connection go
    after = int(sync_redis.info("clients")["connected_clients"])
    assert before == after


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by ``openssl`` (valid one day)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_in_front_of(redis_url: str, cert: Path, key: Path) -> AsyncIterator[int]:
    """A TLS endpoint on a loopback port (yielded) whose connections are forwarded,
    decrypted, to the Redis at ``redis_url`` (its unix socket)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    path = redis_url.removeprefix("unix://")
    handlers: set[asyncio.Task[Any]] = set()

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        for _ in range(1_000_000):  # bounded by the connection: read returns b"" at its end
            data = await source.read(65536)
            if not data:
                break
            sink.write(data)
            await sink.drain()
        sink.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        task.add_done_callback(handlers.discard)
        up_reader, up_writer = await asyncio.open_unix_connection(path)
        await asyncio.gather(
            pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        async with asyncio.timeout(5.0):
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()


async def test_decisions_go_over_tls(redis_url: str, tmp_path: Path) -> None:
    """Redis reached over TLS (``rediss://``, the CA file given): the channel takes over
    redis-py's TLS connection as it does a plain one: a listed number is refused and 20
    recorded decisions are allowed, over TLS."""
    cert, key = self_signed(tmp_path)
    async with tls_in_front_of(redis_url, cert, key) as port:
        url = f"rediss://127.0.0.1:{port}/0"
        store = Store(url, 1.0, RedisConfig(url=url, pool_size=1, tls_ca_file=cert))
        gate = Gate(make_config(), store)
        try:
            await ListAdmin.of(gate).add("red", ["0612345678"], "default", "")
            listed = await gate.decide(attempt("0612345678"), record=True, door="cli")
            reasons = set()
            for i in range(20):
                decision = await gate.decide(attempt(f"0613{i:06d}"), record=True, door="cli")
                reasons.add(decision.reason)
        finally:
            await store.close()
    assert ("listed:red", {"allowed"}) == (listed.reason, reasons)
