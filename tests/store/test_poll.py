"""Busy polling (gate.store.poll): while a reply is due the event loop polls for it, within
a budget that adapts, instead of sleeping; a decision channel holds its poller while its
Redis reply is due (a real redis-server), and lets it go on the reply or on a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from gate.config.loader import RedisConfig
from gate.service import Gate
from gate.store.channel import Behind, ChannelLane
from gate.store.client import Store
from gate.store.poll import Poller
from tests.conftest import make_config
from tests.store.test_channel import attempt

# BLPOP of a key nobody fills, one second: a reply that keeps its channel waiting.
BLPOP_1S = b"*3\r\n$5\r\nBLPOP\r\n$13\r\ncallgate-none\r\n$1\r\n1\r\n"


@pytest.fixture
def idle_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def test_a_hold_keeps_the_loop_polling_until_its_reply_comes() -> None:
    """A reply due 20 ms after the hold (budget 100 ms): the loop turns without sleeping
    until it comes (hundreds of turns, each yielding the CPU), and not once after the
    release."""
    loop = asyncio.get_running_loop()
    poller = Poller(loop, 0.1)
    reply = loop.create_future()
    loop.call_later(0.02, reply.set_result, None)
    started = poller.hold()
    await reply
    poller.release(started)
    polled = poller.turns
    await asyncio.sleep(0.03)
    assert (poller.holds, poller.turns) == (0, polled)
    assert polled >= 50, f"only {polled} loop turns while the reply was due"


async def test_polling_stops_at_its_budget_when_the_reply_is_late() -> None:
    """No reply within the budget (5 ms): the loop goes back to sleeping though the hold
    is still on; the late reply then halves the budget."""
    poller = Poller(asyncio.get_running_loop(), 0.005)
    started = poller.hold()
    await asyncio.sleep(0.03)
    polled = poller.turns
    await asyncio.sleep(0.03)
    assert (polled > 0, poller.turns) == (True, polled)
    poller.release(started)
    assert (poller.holds, poller.budget_s) == (0, 0.0025)


def test_the_budget_halves_on_late_replies_to_none_and_doubles_back_on_prompt_ones(
    idle_loop: asyncio.AbstractEventLoop,
) -> None:
    """As the guest kernel's halt polling: each reply later than the maximum (200 µs)
    halves the budget, below 10 µs it is none (no polling); each prompt one doubles it
    from 10 µs back to the maximum."""
    poller = Poller(idle_loop, 200e-6)
    budgets = []
    for late in [True] * 6 + [False] * 7:
        started = poller.hold()
        poller.release(started - 1.0 if late else started)
        budgets.append(round(poller.budget_s * 1e6, 2))
    assert budgets == [100, 50, 25, 12.5, 0, 0, 10, 20, 40, 80, 160, 200, 200]


async def test_with_no_budget_the_loop_sleeps() -> None:
    """A poller whose budget is none (after late replies) holds without a single turn."""
    loop = asyncio.get_running_loop()
    poller = Poller(loop, 200e-6)
    for _ in range(5):
        poller.release(poller.hold() - 1.0)
    await asyncio.sleep(0.01)  # the first holds' polling (200 µs at most) is over
    assert poller.budget_s == 0.0
    polled = poller.turns
    started = poller.hold()
    await asyncio.sleep(0.01)
    poller.release(started)
    assert poller.turns == polled


@pytest.mark.parametrize("busy_poll_s", [0.001, 0.0])
async def test_decisions_poll_for_redis_and_let_go_of_the_poller(
    redis_url: str, busy_poll_s: float
) -> None:
    """Decisions through a store with ``busy_poll`` (1 ms): the loop polled while their
    replies were due, and no hold outlives its decision; with 0, no poller at all."""
    store = Store(redis_url, 1.0, RedisConfig(url=redis_url, busy_poll_s=busy_poll_s))
    gate = Gate(make_config(), store)
    try:
        reasons = {
            (await gate.decide(attempt(f"0613{i:06d}"), record=True, door="cli")).reason
            for i in range(20)
        }
        poller = store._lane._poller
    finally:
        await store.close()
    assert reasons == {"allowed"}
    if busy_poll_s:
        assert poller is not None
        assert poller.holds == 0
        assert poller.turns > 0
    else:
        assert poller is None


async def test_a_channel_that_fails_while_its_reply_is_due_lets_go_of_the_poller(
    redis_url: str,
) -> None:
    """A channel closed while its reply is due (a BLPOP of one second): the waiting
    request fails, and the hold is let go at once (the loop sleeps again)."""
    lane = ChannelLane(ConnectionPool.from_url(redis_url), 1, 1.0, poll_s=0.5)
    channel = await lane.checkout()
    reply: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
    channel.exchange(BLPOP_1S, 1, reply, Behind(), 5.0)
    poller = lane._poller
    held = poller.holds if poller is not None else 0
    await asyncio.sleep(0.01)
    channel.close()
    with pytest.raises(RedisConnectionError):
        await reply
    await lane.close(1.0)
    assert poller is not None
    assert (held, poller.holds) == (1, 0)
