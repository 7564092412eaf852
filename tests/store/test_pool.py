"""The decision pool, the deadline and re-sending (gate.store.client, gate.store.connect).

Against the session's real Redis, and through a small TCP proxy (asyncio, in this module)
that forwards to it and can drop the client's connection after Redis has answered an
EVALSHA, before the reply reaches the client: the case where a script ran but the client
cannot know it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gate.config.loader import RedisConfig
from gate.core.model import Attempt, Verdict
from gate.service import Gate
from gate.store.client import Store, load_script
from tests.conftest import make_config, spawned_redis

NUMBER = "0612345678"
# A cap of 2: one counted attempt leaves the next one allowed, two do not.
CAP_OF_TWO = {"caps": [{"id": "two", "limit": 2, "window": "30d", "scope": "tenant"}]}
PROXY_TIMEOUT_S = 10.0


def attempt(dialled: str = NUMBER) -> Attempt:
    return Attempt(dialled=dialled, now=datetime.now(UTC))


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


# --- pool and deadline ------------------------------------------------------------------


async def test_time_waiting_for_a_pooled_connection_does_not_count_against_the_deadline(
    redis_url: str,
) -> None:
    """ONE pooled connection, 0.1 s deadline, the connection held by another exchange for
    0.5 s: a decision waits all that time for it, yet gets its answer, not the fail mode.
    (Held directly: a crowd of concurrent decisions made the test of the event loop's
    speed too, as their own work before Redis delayed the first reply past a deadline.)"""
    config = RedisConfig(url=redis_url, deadline_s=0.1, pool_size=1, pool_wait_s=30.0)
    store = Store(redis_url, 0.1, config)
    gate = Gate(make_config(), store)
    try:
        await gate.decide(attempt("0613000000"), record=True, door="cli")  # connect, load
        held = await store._lane.checkout()  # the only connection, busy elsewhere
        waiting = asyncio.ensure_future(gate.decide(attempt("0613000001"), record=True, door="cli"))
        await asyncio.sleep(0.5)  # five deadlines
        waited = not waiting.done()
        store._lane.release(held)
        decision = await waiting
    finally:
        await store.close()
    assert (True, "allowed") == (waited, decision.reason)


async def test_a_pool_busy_longer_than_pool_wait_answers_the_fail_mode(
    redis_url: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pooled connection busy (Redis paused) for longer than pool_wait: the next
    decision gets the fail mode, logged with a message naming the pool."""
    config = RedisConfig(url=redis_url, deadline_s=1.0, pool_size=1, pool_wait_s=0.1)
    store = Store(redis_url, 1.0, config)
    gate = Gate(make_config(), store)
    try:
        await gate.decide(attempt(), record=False, door="cli")  # connect, load the script
        sync_redis.execute_command("CLIENT", "PAUSE", 500, "ALL")
        first = asyncio.ensure_future(gate.decide(attempt(), record=False, door="cli"))
        await asyncio.sleep(0.05)  # the first decision holds the only connection
        with caplog.at_level(logging.WARNING, logger="callgate"):
            second = await gate.decide(attempt(), record=False, door="cli")
        await first
    finally:
        await store.close()
    assert (Verdict.DEFER, "store_unavailable") == (second.verdict, second.reason)
    assert any("all 1 connections stayed busy for 0.1 s" in r.getMessage() for r in caplog.records)


async def test_missed_deadlines_do_not_turn_into_reconnections(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """20 decisions miss their deadline while Redis is paused; afterwards 5 bursts of 20
    decisions reuse the same connections: no reconnection storm."""
    store = Store(redis_url, 0.05)  # the default pool (50 connections)
    gate = Gate(make_config(), store)
    numbers = [f"0614{i:06d}" for i in range(20)]
    try:
        await asyncio.gather(*(gate.decide(attempt(n), record=False, door="cli") for n in numbers))
        before = connections_received(sync_redis)
        sync_redis.execute_command("CLIENT", "PAUSE", 300, "ALL")
        paused = await asyncio.gather(
            *(gate.decide(attempt(n), record=False, door="cli") for n in numbers)
        )
        await asyncio.sleep(0.5)
        after = []
        for _ in range(5):
            after += await asyncio.gather(
                *(gate.decide(attempt(n), record=False, door="cli") for n in numbers)
            )
        reconnections = connections_received(sync_redis) - before
    finally:
        await store.close()
    assert {"store_unavailable"} == {d.reason for d in paused}
    assert {"allowed"} == {d.reason for d in after}
    assert 0 == reconnections


async def test_a_frozen_redis_gives_the_fail_mode_without_waiting_for_new_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped (SIGSTOP: the kernel still accepts connections, nothing answers) while
    one decision connection is open: of three decisions at once, one waits on it for the
    50 ms deadline, the two others open connections whose handshake never gets an answer.
    All three get the fail mode within the connect bound (0.5 s), logged as Redis not
    answering; the handshakes used to wait for the reply timeout (5 s) each, and then to
    say that Redis was unreachable ("is it running?")."""
    with spawned_redis(tmp_path) as (url, process):
        store = Store(url, deadline_s=0.05)
        gate = Gate(make_config(), store)
        try:
            await gate.decide(attempt(), record=False, door="cli")  # one connection, warm
            os.kill(process.pid, signal.SIGSTOP)
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="callgate"):
                frozen = await asyncio.gather(
                    *(gate.decide(attempt(), record=True, door="cli") for _ in range(3))
                )
                alone = await gate.decide(attempt(), record=True, door="cli")
            elapsed = time.monotonic() - started
        finally:
            os.kill(process.pid, signal.SIGCONT)
            await store.close()
    assert [(Verdict.DEFER, "store_unavailable")] * 4 == [
        (d.verdict, d.reason) for d in [*frozen, alone]
    ]
    assert elapsed < 2.5  # two connect bounds, not two reply timeouts (10 s)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("unreachable" in m for m in messages), messages


async def test_a_reply_held_up_by_the_event_loop_is_not_a_missed_deadline(redis_url: str) -> None:
    """Redis answers at once but this process's event loop is blocked for 4 deadlines
    (a burst of calls): the reply is in, unread, when the deadline fires; the decision gets
    its answer, not the fail mode (and a paused Redis still gets the fail mode)."""
    store = Store(redis_url, 0.05)
    gate = Gate(make_config(), store)
    try:
        await gate.decide(attempt("0615000000"), record=False, door="cli")  # connected
        loop = asyncio.get_running_loop()
        pending = asyncio.create_task(gate.decide(attempt("0615000001"), record=False, door="cli"))
        await asyncio.sleep(0)  # the decision is sent and waits for its reply
        loop.call_soon(time.sleep, 0.2)  # then the loop is busy elsewhere for 200 ms
        held_up = await pending
        sync = redis.Redis.from_url(redis_url)
        sync.execute_command("CLIENT", "PAUSE", 300, "ALL")
        sync.close()
        paused = await gate.decide(attempt("0615000002"), record=False, door="cli")
    finally:
        await store.close()
    assert ("allowed", "store_unavailable") == (held_up.reason, paused.reason)


# --- never re-send a recording decision -------------------------------------------------


@dataclasses.dataclass
class Proxy:
    """A TCP proxy to Redis that drops the client's connection when Redis answers an
    EVALSHA (``drops`` times; then it forwards everything)."""

    upstream: str
    drops: int
    port: int = 0
    dropped: int = 0
    evalshas_forwarded: int = 0
    handlers: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream.startswith("unix://"):
            return await asyncio.open_unix_connection(self.upstream.removeprefix("unix://"))
        host, _, port = self.upstream.removeprefix("redis://").split("/")[0].partition(":")
        return await asyncio.open_connection(host, int(port or 6379))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        handler.add_done_callback(self.handlers.discard)
        up_reader, up_writer = await self._open_upstream()
        evalsha_sent = asyncio.Event()

        async def client_to_redis() -> None:
            for _ in range(100_000):
                data = await reader.read(65536)
                if not data:
                    break
                if b"EVALSHA" in data.upper():
                    self.evalshas_forwarded += 1
                    evalsha_sent.set()
                up_writer.write(data)
                await up_writer.drain()

        async def redis_to_client() -> None:
            for _ in range(100_000):
                data = await up_reader.read(65536)
                if not data:
                    break
                if evalsha_sent.is_set() and self.dropped < self.drops:
                    self.dropped += 1  # Redis has run the script; the client never hears it
                    return
                evalsha_sent.clear()
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(client_to_redis()), asyncio.ensure_future(redis_to_client())]
        try:
            async with asyncio.timeout(PROXY_TIMEOUT_S):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in (writer, up_writer):
                stream.close()
                with contextlib.suppress(ConnectionError):
                    await stream.wait_closed()


@contextlib.asynccontextmanager
async def proxy_to(redis_url: str, drops: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(redis_url, drops)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = int(server.sockets[0].getsockname()[1])
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
        async with asyncio.timeout(PROXY_TIMEOUT_S):
            await asyncio.gather(*proxy.handlers, return_exceptions=True)


async def test_a_recording_decision_whose_reply_is_lost_is_counted_once(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The connection drops after Redis ran the recording EVALSHA: the decision gets the
    fail mode, the script ran exactly once, and the attempt is counted once (with a cap of
    2, the next attempt is still allowed)."""
    sync_redis.script_load(load_script("decide.lua"))
    config = make_config(CAP_OF_TWO)
    async with proxy_to(redis_url, drops=10) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        proxied = Store(url, 1.0)
        try:
            lost = await Gate(config, proxied).decide(attempt(), record=True, door="cli")
        finally:
            await proxied.close()
    direct = Store(redis_url, 1.0)
    try:
        next_attempt = await Gate(config, direct).decide(attempt(), record=False, door="cli")
    finally:
        await direct.close()
    assert (Verdict.DEFER, "store_unavailable") == (lost.verdict, lost.reason)
    assert 1 == proxy.evalshas_forwarded
    assert (Verdict.ALLOW, "allowed") == (next_attempt.verdict, next_attempt.reason)


async def test_an_evaluation_whose_reply_is_lost_is_sent_again(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """An evaluation that records nothing may be sent again: the first reply is lost, the
    second answers."""
    sync_redis.script_load(load_script("decide.lua"))
    async with proxy_to(redis_url, drops=1) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        proxied = Store(url, 1.0)
        try:
            decision = await Gate(make_config(), proxied).decide(
                attempt(), record=False, door="cli"
            )
        finally:
            await proxied.close()
    assert (Verdict.ALLOW, 2) == (decision.verdict, proxy.evalshas_forwarded)
