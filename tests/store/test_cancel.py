"""A cancel is never lost in a Redis command's send (gate/store/connect.py
``cancel_safe_sends``): on Python 3.11 redis-py sent under ``asyncio.wait_for``, which
returns the result of a send that is done when the cancel reaches it. A cancel requested
while the task runs (a signal handler inside it: SIGTERM to ``callgate audit tail -f``)
is taken at the send, so the command ran on, deaf to it. Real redis-server."""

from __future__ import annotations

import asyncio

import pytest

from gate.store.client import Store


@pytest.mark.parametrize("pool", ["admin", "decisions"])
async def test_a_cancel_requested_while_a_command_is_prepared_ends_the_task(
    redis_url: str, pool: str
) -> None:
    """The task cancelled while it runs, then a command on a connection already open: the
    cancel ends it at the command, as anywhere else (it ran on, its command answered)."""
    store = Store(redis_url, 1.0)

    async def ping() -> None:
        if pool == "admin":
            await store.admin_client.ping()
        else:
            await store.ping()  # the decision pool's (/readyz)

    ran_on: list[bool] = []

    async def stopped_while_running() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # as a signal handler running inside the task does
        await ping()
        ran_on.append(True)

    try:
        await ping()  # the connection is open: the send is what remains
        task = asyncio.create_task(stopped_while_running())
        async with asyncio.timeout(10):
            await asyncio.wait({task})
    finally:
        await store.close()
    assert (True, []) == (task.cancelled(), ran_on)
