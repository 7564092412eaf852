"""The HTTP listener against raw sockets: bytes no client library sends, clients that hang
up, clients that go quiet (gate/ops/api.py, gate/ops/sessions.py, gate/ops/http.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gate.core.errors import StoreUnavailable
from gate.ops import api, http
from gate.ops.api import error_middleware
from gate.ops.sessions import COOKIE, CSRF_HEADER
from gate.service import Gate
from tests.ops.conftest import API_TOKEN, Served, serve

WAIT_S = 10.0
# How long a connection left open after its answer is waited on (it should close at once).
SHORT_WAIT_S = 2.0
POLL_S = 0.01


async def raw(served: Served, head: bytes, body: bytes = b"") -> tuple[int, Any]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` as
    they are, on a connection of its own; the answer's status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    try:
        length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
        writer.write(head + b"Host: 127.0.0.1\r\nConnection: close\r\n" + length + b"\r\n" + body)
        answer = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def session_of(served: Served) -> tuple[str, str]:
    """(cookie value, CSRF token) of a new console session."""
    async with served.session.post(served.url + "/v1/session", json={"token": API_TOKEN}) as r:
        assert 200 == r.status
        return r.cookies[COOKIE].value, (await r.json())["csrf"]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"GET /v1/lists/red HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n",
            (401, "missing or wrong bearer token (Authorization header)"),
        ),
        (
            b"GET /v1/lists/red HTTP/1.1\r\nCookie: " + COOKIE.encode() + b"=\xff\r\n",
            (401, "the console session has expired: sign in again"),
        ),
    ],
    ids=["bearer", "cookie"],
)
async def test_a_credential_that_is_not_utf8_is_a_wrong_credential(
    served: Served, head: bytes, expected: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A bearer token or session cookie whose bytes are not UTF-8 is refused like any
    wrong one: 401, nothing logged as a bug."""
    with caplog.at_level(logging.ERROR):
        status, body = await raw(served, head)
    assert (expected, []) == ((status, body["error"]), caplog.records)


async def test_asking_for_the_session_with_a_cookie_that_is_not_utf8_says_signed_out(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """GET /v1/session with such a cookie: 200, not signed in (no 500)."""
    head = b"GET /v1/session HTTP/1.1\r\nCookie: " + COOKIE.encode() + b"=\xff\r\n"
    with caplog.at_level(logging.ERROR):
        status, body = await raw(served, head)
    assert (200, False, []) == (status, body["signed_in"], caplog.records)


async def test_a_csrf_token_that_is_not_utf8_is_a_wrong_one(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """A change with the session's cookie and an X-CSRF-Token of bytes that are not UTF-8:
    403 as for any wrong token, and the list is unchanged."""
    cookie, _ = await session_of(served)
    head = (
        b"POST /v1/lists/red/add HTTP/1.1\r\nContent-Type: application/json\r\n"
        + f"Cookie: {COOKIE}={cookie}\r\n{CSRF_HEADER}: ".encode()
        + b"\xff\r\n"
    )
    with caplog.at_level(logging.ERROR):
        status, body = await raw(served, head, b'{"numbers": ["+33699001122"]}')
    refusal = f"missing or wrong {CSRF_HEADER} header for this session"
    assert (403, refusal, []) == (status, body["error"], caplog.records)
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


async def wait_for_record(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Until a log record holds ``text`` (``WAIT_S`` at most)."""
    for _ in range(int(WAIT_S / POLL_S)):  # bounded: WAIT_S
        if any(text in record.getMessage() for record in caplog.records):
            return
        await asyncio.sleep(POLL_S)


async def test_a_client_that_hangs_up_mid_upload_is_one_info_line(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """An upload cut off half-way (the client closed its socket): one INFO line saying the
    client went away, nothing logged as a bug, nothing imported."""
    _, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    writer.write(
        b"POST /v1/lists/red/import HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {API_TOKEN}\r\n".encode()
        + b"Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\n0699001122\n"
    )
    await writer.drain()
    with caplog.at_level(logging.INFO, logger="callgate.http"):
        await asyncio.sleep(0.2)  # the handler is spooling the body
        writer.close()
        await writer.wait_closed()
        await wait_for_record(caplog, "the client went away")
    went = [r for r in caplog.records if "the client went away" in r.getMessage()]
    bugs = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ([logging.INFO], [None], []) == (
        [r.levelno for r in went],
        [r.exc_info for r in went],
        bugs,
    )
    assert 0 == (await served.get("/v1/lists/red"))[1]["entries"]


@contextlib.asynccontextmanager
async def streaming(stream: api.Handler) -> AsyncIterator[int]:
    """An HTTP server with the gate's error middleware serving ``stream`` at ``/stream``
    on a free loopback port (yielded), stopped at the block's end."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_a_client_that_hangs_up_mid_answer_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed answer whose client closed its socket after the first line: the next
    write fails, which is one INFO line (no traceback, no 500 written after the start)."""
    wrote_again = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        for _ in range(int(WAIT_S / POLL_S)):  # bounded: WAIT_S
            if request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(POLL_S)
        wrote_again.set()
        await response.write(b"second\n")
        return response

    async with streaming(stream) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with caplog.at_level(logging.INFO):
            async with asyncio.timeout(WAIT_S):
                assert b"first" in await reader.readuntil(b"first\n")
            writer.close()
            await writer.wait_closed()
            await wait_for_record(caplog, "the client went away")
    messages = [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records]
    assert [
        (
            logging.INFO,
            "HTTP GET /stream: the client went away (Cannot write to closing transport)",
            None,
        )
    ] == messages
    assert wrote_again.is_set()


@pytest.mark.parametrize(
    "error",
    [RuntimeError("a bug"), StoreUnavailable("Redis at here is unreachable")],
    ids=["bug", "store"],
)
async def test_an_error_after_an_answer_began_cuts_it_without_a_second_answer(
    error: Exception,
) -> None:
    """A streamed answer that fails after its first line: no second answer (``HTTP/1.1
    500``/``503``) is written into its body, and the connection is closed without the
    chunked body's last chunk, so no client takes what came for a whole answer."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        raise error

    sent = b""
    closed = False
    async with streaming(stream) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHORT_WAIT_S):
                while chunk := await reader.read(1 << 16):
                    sent += chunk
                closed = True
        writer.close()
    assert (True, 1, False) == (closed, sent.count(b"HTTP/1.1"), sent.endswith(b"0\r\n\r\n"))
    assert sent.endswith(b"first\n\r\n")


# --- deadlines: no quiet client holds a connection --------------------------------------------

SHORT_S = 0.5  # IDLE_S and BODY_IDLE_S in these tests
CLOSED_WITHIN_S = 5.0  # the deadline, with room for a busy machine


@pytest.fixture
async def impatient(http_gate: Gate, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    """The real HTTP listener with ``IDLE_S`` and ``BODY_IDLE_S`` of ``SHORT_S``."""
    monkeypatch.setattr(http, "IDLE_S", SHORT_S)
    monkeypatch.setattr(api, "BODY_IDLE_S", SHORT_S)
    running = await serve(http_gate)
    yield running
    await running.session.close()
    await running.server.stop()


async def closed_after(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and how long that took."""
    start = time.monotonic()
    sent = await asyncio.wait_for(reader.read(), WAIT_S)
    return sent, time.monotonic() - start


async def answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """One answer with a Content-Length: its status and JSON body."""
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await reader.readexactly(length)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["nothing", "half-sent-headers"],
)
async def test_a_connection_without_a_whole_request_is_closed_at_the_deadline(
    impatient: Served, sent: bytes
) -> None:
    """A client that connects and sends nothing, or only part of its headers, is
    disconnected IDLE_S after connecting, without an answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.server.port)
    writer.write(sent)
    answered, waited_s = await closed_after(reader)
    writer.close()
    assert (b"", True) == (answered, waited_s < CLOSED_WITHIN_S)


async def test_headers_sent_a_byte_at_a_time_do_not_extend_the_deadline(
    impatient: Served,
) -> None:
    """Dripping a header (a byte every tenth of IDLE_S) still ends at the deadline, with
    no answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    start = time.monotonic()
    answered = b""
    for _ in range(int(WAIT_S / (SHORT_S / 10))):  # bounded: WAIT_S
        try:
            writer.write(b"a")
            await writer.drain()
            answered = await asyncio.wait_for(reader.read(1), SHORT_S / 10)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not answered:  # the server closed the connection
            break
    waited_s = time.monotonic() - start
    writer.close()
    assert (b"", True) == (answered, 0.9 * SHORT_S <= waited_s < CLOSED_WITHIN_S), waited_s


async def test_a_kept_alive_connection_is_closed_once_idle(impatient: Served) -> None:
    """After its answer, a keep-alive connection that sends nothing more is closed IDLE_S
    later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, body = await answer(reader)
    rest, waited_s = await closed_after(reader)
    writer.close()
    assert (200, "up", b"", True) == (status, body["status"], rest, waited_s < CLOSED_WITHIN_S)


async def test_a_stalled_body_is_408(impatient: Served) -> None:
    """A request whose body stops coming (1 byte of 100 sent) is answered 408 after
    BODY_IDLE_S, naming the wait."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.server.port)
    writer.write(
        b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_TOKEN}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    status, body = await answer(reader)
    writer.close()
    assert (408, {"error": f"the request body stalled: nothing came for {SHORT_S:g} s"}) == (
        status,
        body,
    )


async def test_a_slow_upload_that_keeps_sending_is_imported(impatient: Served) -> None:
    """A list sent in pieces over twice BODY_IDLE_S, never pausing for as long, is
    imported whole: the deadline is on silence, not on the upload's length."""
    numbers = [f"06990011{n:02d}\n".encode() for n in range(24)]
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.server.port)
    writer.write(
        b"POST /v1/lists/red/import HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        + f"Authorization: Bearer {API_TOKEN}\r\nConnection: close\r\n".encode()
        + f"Content-Length: {sum(map(len, numbers))}\r\n\r\n".encode()
    )
    start = time.monotonic()
    for number in numbers:
        writer.write(number)
        await writer.drain()
        await asyncio.sleep(SHORT_S / 10)  # pauses far shorter than the idle deadline
    sent_s = time.monotonic() - start
    answered, _ = await closed_after(reader)
    writer.close()
    assert (True, True) == (sent_s > 2 * SHORT_S, b'"event":"done"' in answered), answered
    assert 24 == (await impatient.get("/v1/lists/red"))[1]["entries"]
