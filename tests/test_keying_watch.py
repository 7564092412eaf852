"""A gate that started while Redis did not answer compares its number keying when Redis
does (gate/runtime.py ``KeyingWatch``): no decision is made on a store written with
another keying (it would read other keys: every opt-out unseen), and a serving process
stops. Real redis-server processes, reached through a symlink the test makes when the
server is ready (so the gate cannot reach it earlier)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gate import runtime
from gate.core.errors import InputError
from gate.core.model import Attempt, Decision, Verdict
from gate.runtime import open_gate
from tests.conftest import make_config, spawned_redis
from tests.ops.conftest import serve

NUMBER = "0612345678"
FOREIGN = "0123456789abcdef"  # a fingerprint no keying of these tests has
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def late_redis(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The gate's URL (a socket path with no server behind it yet), the running server's
    own socket, and where to link it for the gate to reach it."""
    with spawned_redis(tmp_path) as (url, _):
        link = tmp_path / "gate.sock"
        yield f"unix://{link}", Path(url.removeprefix("unix://")), link


def attempt() -> Attempt:
    return Attempt(dialled=NUMBER, now=NOW)


def keys(server: Path) -> list[bytes]:
    client = redis.Redis(unix_socket_path=str(server))
    try:
        return sorted(key for key in client.keys("*") if isinstance(key, bytes))
    finally:
        client.close()


def stamp(server: Path, fingerprint: str) -> None:
    client = redis.Redis(unix_socket_path=str(server))
    try:
        client.set("callgate:{keying}", fingerprint)
    finally:
        client.close()


async def test_a_decision_on_a_store_of_another_keying_takes_the_fail_mode(
    late_redis: tuple[str, Path, Path],
) -> None:
    """Redis down at start, then up holding another keying's data: the next decision
    compares first, takes the fail mode and writes nothing; the process's way out says
    why in one error."""
    url, server, link = late_redis
    config = make_config({"redis": {"url": url, "deadline": "200ms"}})
    stamp(server, FOREIGN)
    before = keys(server)
    decisions: list[Decision] = []

    async def serve() -> None:
        async with open_gate(config, records=True) as gate:
            decisions.append(await gate.decide(attempt(), record=True, door="cli"))
            link.symlink_to(server)
            for _ in range(2):
                decisions.append(await gate.decide(attempt(), record=True, door="cli"))

    with pytest.raises(InputError, match=r"^privacy: the data in Redis was written with"):
        await serve()
    assert [(Verdict.DEFER, "store_unavailable")] * 3 == [(d.verdict, d.reason) for d in decisions]
    # No attempt counted, no stamp; the audit writer kept its evidence of the three
    # fail-mode answers (the gate's own record of what it answered).
    assert before == [key for key in keys(server) if not key.endswith(b":audit")]


async def test_a_decision_on_a_store_of_this_keying_goes_through_and_stamps_it(
    late_redis: tuple[str, Path, Path],
) -> None:
    """The same with an empty store: once Redis answers, decisions are made, and the store
    is stamped with this keying (an admin with another secret is refused from then on)."""
    url, server, link = late_redis
    config = make_config({"redis": {"url": url, "deadline": "200ms"}})
    async with open_gate(config, records=True) as gate:
        down = await gate.decide(attempt(), record=True, door="cli")
        link.symlink_to(server)
        up = await gate.decide(attempt(), record=True, door="cli")
        fingerprint = gate.keyspace.fingerprint
    assert (Verdict.DEFER, "store_unavailable") == (down.verdict, down.reason)
    assert (Verdict.ALLOW, "allowed") == (up.verdict, up.reason)
    client = redis.Redis(unix_socket_path=str(server))
    try:
        assert fingerprint.encode() == client.get("callgate:{keying}")
    finally:
        client.close()


async def test_a_serving_process_stops_when_its_redis_comes_back_with_another_keying(
    late_redis: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a single call: the watch compares while Redis is down, finds the other
    keying when it answers, and sets the serving process's stop event."""
    monkeypatch.setattr(runtime, "KEYING_RETRY_S", 0.05)
    url, server, link = late_redis
    config = make_config({"redis": {"url": url, "deadline": "200ms"}})
    serving = asyncio.Event()
    stamp(server, FOREIGN)

    async def serve() -> None:
        async with open_gate(config, records=True, serving=serving):
            await asyncio.sleep(0.3)
            assert not serving.is_set()  # Redis down is no reason to stop
            os.symlink(server, link)
            await asyncio.wait_for(serving.wait(), 5.0)

    with pytest.raises(InputError, match="another keying"):
        await serve()


async def test_a_serving_process_stops_when_its_redis_is_stamped_by_another_keying(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compared at start, then its Redis flushed and stamped by another keying (a Redis
    replaced, an admin writing first): the periodic comparison stops the process."""
    monkeypatch.setattr(runtime, "KEYING_RECHECK_S", 0.05)
    config = make_config({"redis": {"url": redis_url}})
    serving = asyncio.Event()
    client = redis.Redis.from_url(redis_url)

    async def serve() -> None:
        async with open_gate(config, records=True, serving=serving) as gate:
            assert gate.keyspace.fingerprint.encode() == client.get("callgate:{keying}")
            await asyncio.sleep(0.2)
            assert not serving.is_set()
            client.flushdb()
            client.set("callgate:{keying}", FOREIGN)
            await asyncio.wait_for(serving.wait(), 5.0)
            decision = await gate.decide(attempt(), record=True, door="cli")
            assert "store_unavailable" == decision.reason

    try:
        with pytest.raises(InputError, match="another keying"):
            await serve()
    finally:
        client.close()


async def test_the_api_neither_reads_nor_writes_a_store_of_another_keying(
    late_redis: tuple[str, Path, Path],
) -> None:
    """The admin API of a gate started before its Redis: an opt-out posted while Redis is
    down, or once it answers with another keying's data, is refused (503, saying why), and
    nothing is written; a list's summary is refused the same way (it would read other keys)."""
    url, server, link = late_redis
    config = make_config({"redis": {"url": url, "deadline": "200ms"}})
    stamp(server, FOREIGN)
    before = keys(server)
    answers: list[tuple[int, str]] = []

    async def serve_api() -> None:
        async with open_gate(config, records=True) as gate:
            served = await serve(gate)
            try:
                opt_out = {"numbers": [NUMBER]}
                answers.append(await served.post("/v1/lists/red/add", opt_out))
                link.symlink_to(server)
                answers.append(await served.post("/v1/lists/red/add", opt_out))
                answers.append(await served.get("/v1/lists/red"))
            finally:
                await served.session.close()
                await served.server.stop()

    with pytest.raises(InputError, match="another keying"):
        await serve_api()
    assert [503] * 3 == [status for status, _ in answers], answers
    assert "unreachable" in answers[0][1]["error"]
    for _, body in answers[1:]:
        assert body["error"].startswith("privacy: the data in Redis was written with"), body
    assert before == keys(server)
