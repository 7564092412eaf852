"""The API's reads against a frozen Redis (the redis-server SIGSTOPped: it accepts
connections, answers nothing), with a REAL redis-server of the test's own.

Found by review: ``GET /v1/lists``, ``GET /v1/audit`` and ``GET /v1/audit/follow`` (the
console's Lists and Audit pages) hung for more than 65 s on the admin connections' long
timeout (imports and exports run on them), while ``/readyz`` answered at once. Each read
someone waits on now answers 503 within ``READ_WAIT_S`` naming the cause; a follow stream
already open is told (an ``unavailable`` event) and stays open; once the server resumes
(SIGCONT) every route answers again, on fresh connections (a cancelled command's
connection is closed, never reused half read).
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gate.core.model import Attempt
from gate.service import Gate
from gate.store.client import READ_WAIT_S, Store
from tests.conftest import make_config, spawned_redis
from tests.ops.conftest import AUTH, LISTS, Served, serve

pytestmark = pytest.mark.timeout(60)

NUMBER = "+33612345678"
# The frozen reads answer within the bound, plus this for the event loop and the test.
SLACK_S = 3.0
READS = ("/v1/lists", "/v1/lists/red", "/v1/audit?limit=5", "/v1/audit/follow")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test only (SIGSTOP would freeze the session's for all)."""
    with spawned_redis(tmp_path) as served:
        yield served


async def status_of(served: Served, path: str) -> tuple[int, Any, float]:
    """(status, body: JSON or the first bytes, seconds taken) of ``GET path``."""
    started = time.monotonic()
    async with served.session.get(served.url + path, headers=AUTH) as response:
        if response.content_type == "application/json":
            body: Any = await response.json()
        else:
            body = (await response.content.read(16)).decode()
        return response.status, body, time.monotonic() - started


async def next_event(response: aiohttp.ClientResponse, kind: str) -> dict[str, Any]:
    """The data of the next SSE event of type ``kind`` on ``response`` (bounded by the
    caller's timeout and by the stream: keepalives come every 15 s)."""
    event = ""
    for _ in range(10_000):
        line = (await response.content.readline()).decode()
        if not line:
            raise AssertionError(f"the stream ended before an {kind!r} event")
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == kind:
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise AssertionError(f"no {kind!r} event")


async def test_reads_answer_503_within_the_bound_while_redis_is_frozen_and_200_after(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """With Redis SIGSTOPped, GET /v1/lists, /v1/lists/{list}, /v1/audit and
    /v1/audit/follow answer 503 within READ_WAIT_S (not the admin timeout's minutes) with
    one line saying Redis did not answer within it; an open follow stream gets an
    ``unavailable`` event within the bound and stays open. After SIGCONT every route
    answers 200 and the open stream carries new decisions again."""
    url, process = own_redis
    store = Store(url, deadline_s=1.0)
    gate = Gate(make_config({"lists": LISTS}), store, version="v1")
    served = await serve(gate)
    follow_timeout = aiohttp.ClientTimeout(total=2 * READ_WAIT_S + 4 * SLACK_S)
    try:
        before = [(await status_of(served, path))[0] for path in READS[:3]]
        async with served.session.get(
            served.url + "/v1/audit/follow", headers=AUTH, timeout=follow_timeout
        ) as stream:
            await asyncio.sleep(0.2)  # the feed is following
            process.send_signal(signal.SIGSTOP)
            try:
                frozen_at = time.monotonic()
                async with asyncio.timeout(READ_WAIT_S + 2 * SLACK_S):
                    reads = asyncio.gather(*(status_of(served, path) for path in READS))
                    answers, told = await asyncio.gather(reads, next_event(stream, "unavailable"))
                noticed_s = time.monotonic() - frozen_at
            finally:
                process.send_signal(signal.SIGCONT)
            async with asyncio.timeout(READ_WAIT_S + SLACK_S):
                after = [(await status_of(served, path))[:2] for path in READS[:3]]
                await gate.decide(Attempt(NUMBER, datetime.now(UTC)), record=True, door="agi")
                resumed = await next_event(stream, "decision")
    finally:
        process.send_signal(signal.SIGCONT)
        await served.session.close()
        await served.server.stop()
        await store.close()
    said = f"did not answer within {READ_WAIT_S:g} s"
    assert [200, 200, 200] == before
    assert [(503, True, True)] * len(READS) == [
        (status, said in body["error"], seconds < READ_WAIT_S + SLACK_S)
        for status, body, seconds in answers
    ]
    assert (True, True) == (said in told["error"], noticed_s < READ_WAIT_S + 2 * SLACK_S)
    assert [200, 200, 200] == [status for status, _ in after]
    assert ("red", "agi") == (after[1][1]["name"], resumed["door"])
