"""The state directory of a running gate deleted under it (a cleanup of the state
directory, ``rm -rf``): the Stasis leadership of ``run --workers`` and the files
``callgate run`` keeps there come back, without a second leader or a second instance."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import cast

from gate.runtime import LEADER_POLL_S, StasisLeadership
from gate.stasis.door import StasisGate


class _Door:
    """Stands for the Stasis door: counts its starts and closes."""

    def __init__(self) -> None:
        self.started = 0
        self.closed = 0

    def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed += 1


async def _end(leadership: StasisLeadership, stop: asyncio.Event) -> None:
    """End a worker's leadership as the worker does: its stop event set, then closed."""
    stop.set()
    await leadership.close()


async def _until(condition: Callable[[], bool], within_s: float) -> bool:
    """Whether ``condition()`` became true within ``within_s`` (polled)."""
    for _ in range(int(within_s / 0.05) + 1):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_the_stasis_lead_is_taken_again_after_the_state_directory_is_deleted(
    tmp_path: Path,
) -> None:
    """Two workers' leaderships on one lock; the state directory deleted: the leader makes
    the lock again (the follower does not take a second lead meanwhile), and when the
    leader ends the follower leads. The follower's tries ended on FileNotFoundError: no
    worker ran the Stasis application again."""
    state = tmp_path / "state"
    state.mkdir()
    lock = state / "stasis-callgate.lock"
    stops = [asyncio.Event(), asyncio.Event()]
    doors = [_Door(), _Door()]
    first = StasisLeadership(cast(StasisGate, doors[0]), lock, stops[0])
    first.start()
    assert await _until(lambda: first.leading, 2.0)
    second = StasisLeadership(cast(StasisGate, doors[1]), lock, stops[1])
    second.start()
    try:
        await asyncio.sleep(LEADER_POLL_S * 2)  # the follower has tried, and failed
        assert not second.leading
        shutil.rmtree(state)
        assert await _until(lock.exists, 3.0)  # made again (by the leader)
        await asyncio.sleep(LEADER_POLL_S * 4)  # past the follower's own wait
        assert (first.leading, second.leading) == (True, False)
        assert doors[1].started == 0
        await _end(first, stops[0])  # the leader ends: its lock is free
        assert await _until(lambda: second.leading, 3.0)
        assert doors[1].started == 1
    finally:
        await _end(first, stops[0])
        await _end(second, stops[1])


async def test_a_follower_makes_the_lock_again_when_its_leader_and_directory_are_gone(
    tmp_path: Path,
) -> None:
    """The state directory deleted and the leader ended with it: a follower that had seen
    the lock makes the directory and the lock again, after its wait, and leads."""
    state = tmp_path / "state"
    state.mkdir()
    lock = state / "stasis-callgate.lock"
    stops = [asyncio.Event(), asyncio.Event()]
    first = StasisLeadership(cast(StasisGate, _Door()), lock, stops[0])
    first.start()
    assert await _until(lambda: first.leading, 2.0)
    door = _Door()
    second = StasisLeadership(cast(StasisGate, door), lock, stops[1])
    second.start()
    try:
        await asyncio.sleep(LEADER_POLL_S * 2)
        shutil.rmtree(state)
        await _end(first, stops[0])
        assert await _until(lambda: second.leading, 5.0)
        assert door.started == 1
        assert lock.exists()
        assert [path.name for path in state.iterdir()] == [lock.name]  # nothing left aside
    finally:
        await _end(first, stops[0])
        await _end(second, stops[1])
