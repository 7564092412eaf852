"""The API's reads against a frozen Redis (the redis-server SIGSTOPped: it accepts
connections, answers nothing), with a REAL redis-server of the test's own.

Found by review: ``GET /v1/lists``, ``GET /v1/audit`` and ``GET /v1/audit/follow`` (the
console's Lists and Audit pages) hung for more than 65 s on the admin connections' long
timeout (imports and exports run on them), while ``/readyz`` answered at once. Each read
someone waits on now answers 503 within ``READ_WAIT_S`` naming the cause; a follow stream
already open is told (an ``unavailable`` event) and stays open; once the server resumes
(SIGCONT) every route answers again, on fresh connections (a cancelled command's
connection is closed, never reused half read).

Found by review too: an audit search whose 200 was already streaming when Redis froze or
died had a second answer (``HTTP/1.1 503 …``) written into its chunked body, then the
body's end: curl failed on a malformed chunk, an aiohttp client iterating the lines hung
until its own timeout, and the error never reached either. Such an answer now ends with
the line saying it is incomplete, then the connection closes without the body's end.
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import csv
import io
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
import redis
from redis.typing import EncodableT, FieldT

from gate.core.keys import Keyspace
from gate.core.model import Attempt
from gate.service import Gate
from gate.store import client as store_client
from gate.store.client import Store
from tests.conftest import make_config, spawned_redis
from tests.ops.conftest import AUTH, LISTS, Served, serve

pytestmark = pytest.mark.timeout(60)

NUMBER = "+33612345678"
# The read bound, shortened from its 10 s default (gate/store/client.py READ_WAIT_S, read at
# each call) for every test here: what is under test is that a read gives up at the bound
# and says so, whatever its value; the messages name the bound in force.
READ_WAIT_S = 2.0
# The frozen reads answer within the bound, plus this for the event loop and the test.
SLACK_S = 3.0
READS = ("/v1/lists", "/v1/lists/red", "/v1/audit?limit=5", "/v1/audit/follow")


@pytest.fixture(autouse=True)
def short_read_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_client, "READ_WAIT_S", READ_WAIT_S)


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


# --- a search cut short mid-stream ------------------------------------------------------------

# Records of about 1.2 kB in JSON and CSV: 20 000 of them are more than the socket buffers
# and the client's hold, so the answer is still streaming (the server waiting for the
# client to read) when Redis is stopped.
BIG_TRAIL = 20_000
PADDING = "x" * 1000


def fill_trail(url: str, count: int = BIG_TRAIL, channel: str | None = f"Local/{PADDING}") -> None:
    """``count`` audit entries written straight into group 0's stream (as the gate keeps
    them), each with ``channel`` (by default a long name; None: none)."""
    client = redis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        extra: dict[FieldT, EncodableT] = {} if channel is None else {"channel": channel}
        for i in range(count):
            pipe.xadd(
                Keyspace("callgate", None).audit_key(0),
                {
                    "ts": str(1796_000_000_000 + i),
                    "verdict": "ALLOW",
                    "reason": "allowed",
                    "door": "agi",
                    "tenant": "default",
                    "number": f"n{i}",
                    "latency_us": "90",
                    **extra,
                },
            )
        pipe.execute()
    finally:
        client.close()


async def read_until_cut(
    served: Served, path: str, stop: signal.Signals, process: subprocess.Popen[bytes]
) -> tuple[int, list[bytes], str]:
    """``GET path``: its status, every line the client got, and how the body ended
    (``complete``, or the client error's class). ``stop`` is sent to the Redis once the
    first line is read."""
    lines: list[bytes] = []
    ended = "complete"
    async with served.session.get(served.url + path, headers=AUTH) as response:
        lines.append(await response.content.readline())
        process.send_signal(stop)
        try:
            async for line in response.content:
                lines.append(line)
        except aiohttp.ClientPayloadError as exc:
            ended = type(exc).__name__
        return response.status, lines, ended


@pytest.mark.parametrize("stop", [signal.SIGSTOP, signal.SIGKILL], ids=["frozen", "dead"])
async def test_a_json_lines_search_cut_mid_stream_ends_with_an_error_line_and_no_end(
    own_redis: tuple[str, subprocess.Popen[bytes]], stop: signal.Signals
) -> None:
    """Redis stopped (SIGSTOP) or gone (SIGKILL) while GET /v1/audit streams JSON Lines:
    every line but the last is a record, the last is ``{"error": "incomplete: …"}`` naming
    the cause, and the body ends without its last chunk (aiohttp: ClientPayloadError),
    within READ_WAIT_S: never a shorter answer that looks whole."""
    url, process = own_redis
    fill_trail(url)
    store = Store(url, deadline_s=1.0)
    served = await serve(Gate(make_config({"lists": LISTS}), store, version="v1"))
    try:
        async with asyncio.timeout(READ_WAIT_S + 2 * SLACK_S):
            status, lines, ended = await read_until_cut(served, "/v1/audit", stop, process)
    finally:
        process.send_signal(signal.SIGCONT)
        await served.session.close()
        await served.server.stop()
        await store.close()
    *records, last = [json.loads(line) for line in lines]
    cause = "did not answer within" if stop == signal.SIGSTOP else "is unreachable"
    error = last["error"]
    assert (200, "ClientPayloadError") == (status, ended)
    assert (True, 0 < len(records) < BIG_TRAIL) == (all("id" in r for r in records), True)
    assert (["error"], True, True) == (
        list(last),
        error.startswith(f"incomplete: the search stopped after {len(records)} record(s)"),
        cause in error,
    )


async def test_a_csv_search_cut_mid_stream_ends_with_an_error_row_and_no_end(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Redis gone while GET /v1/audit?format=csv streams: the header, records, then the
    row ``error,incomplete: …`` (no record's: a strict loader fails on it, a person sees
    it), and the body ends without its last chunk (aiohttp: ClientPayloadError)."""
    url, process = own_redis
    fill_trail(url)
    store = Store(url, deadline_s=1.0)
    served = await serve(Gate(make_config({"lists": LISTS}), store, version="v1"))
    try:
        async with asyncio.timeout(READ_WAIT_S + 2 * SLACK_S):
            status, lines, ended = await read_until_cut(
                served, "/v1/audit?format=csv", signal.SIGKILL, process
            )
    finally:
        await served.session.close()
        await served.server.stop()
        await store.close()
    header, *records, last = list(csv.reader(io.StringIO(b"".join(lines).decode())))
    assert (200, "ClientPayloadError", "id") == (status, ended, header[0])
    assert (True, True) == (all(len(r) == len(header) for r in records), len(records) > 0)
    assert ("error", True) == (
        last[0],
        last[1].startswith(f"incomplete: the search stopped after {len(records)} record(s)"),
    )
    assert 2 == len(last)


async def test_an_http_1_0_search_cut_mid_stream_is_reset_not_closed(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """An HTTP/1.0 answer has no chunks: its body ends where the connection closes, so a
    search cut mid-stream resets the connection (the client's read fails) instead of
    closing it (which would read as the end of a whole answer)."""
    url, process = own_redis
    fill_trail(url)
    store = Store(url, deadline_s=1.0)
    served = await serve(Gate(make_config({"lists": LISTS}), store, version="v1"))
    ended = "closed"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
        writer.write(
            b"GET /v1/audit HTTP/1.0\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\n\r\n".encode()
        )
        async with asyncio.timeout(READ_WAIT_S + 2 * SLACK_S):
            head = await reader.readuntil(b"\r\n\r\n")
            process.send_signal(signal.SIGKILL)
            try:
                while await reader.read(1 << 16):
                    pass
            except ConnectionResetError:
                ended = "reset"
        writer.close()
    finally:
        await served.session.close()
        await served.server.stop()
        await store.close()
    assert (b"HTTP/1.0 200 OK", "reset") == (head.split(b"\r\n")[0], ended)
