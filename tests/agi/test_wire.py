"""The FastAGI dialogue's reply reading, over a real socket pair: Asterisk's side scripted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agi._wire import (
    AgiChannel,
    AgiHangup,
    AgiProtocolError,
    AgiReply,
    HeaderOverflow,
    SocketStream,
)
from gate.service import Poller

LIMIT = 4096


@dataclass
class Pair:
    channel: AgiChannel
    asterisk: asyncio.StreamWriter


@pytest.fixture(params=["asyncio streams", "SocketStream"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """An AgiChannel on one end of a socket pair, over asyncio's streams or the server's
    own ``SocketStream``; the test writes Asterisk's replies."""
    ours, theirs = socket.socketpair()
    _, asterisk = await asyncio.open_connection(sock=theirs)
    if request.param == "SocketStream":
        ours.setblocking(False)
        stream = SocketStream(ours, LIMIT)
        yield Pair(AgiChannel(stream, stream, timeout_s=2.0), asterisk)
        ours.close()
    else:
        reader, writer = await asyncio.open_connection(sock=ours, limit=LIMIT)
        yield Pair(AgiChannel(reader, writer, timeout_s=2.0), asterisk)
        writer.close()
        await writer.wait_closed()
    asterisk.close()
    await asterisk.wait_closed()


async def test_a_multi_line_usage_reply_is_read_to_its_end(pair: Pair) -> None:
    """A 520 usage reply is consumed whole: the next command reads its own reply."""
    pair.asterisk.write(
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b" Usage: SET VARIABLE <variablename> <value>\n"
        b"200 result=1\n"
        b"520 End of proper usage.\n"
        b"200 result=1\n"
    )
    first = await pair.channel.set_variable("A", "1")
    second = await pair.channel.set_variable("B", "2")
    assert (520, False, 200, True, "1") == (
        first.code,
        first.ok,
        second.code,
        second.ok,
        second.result,
    )


async def test_trying_lines_precede_the_final_reply(pair: Pair) -> None:
    """``100 Trying`` lines are skipped; the 200 after them is the reply."""
    pair.asterisk.write(b"100 result=0 Trying...\n200 result=1\n")
    assert AgiReply(200, "1", "200 result=1") == await pair.channel.set_variable("A", "1")


@pytest.mark.parametrize("answer", [b"HANGUP\n", b"200 result=-1 (hangup)\n", b"200 result=1"])
async def test_a_hangup_or_a_closed_socket_is_agi_hangup(pair: Pair, answer: bytes) -> None:
    """HANGUP, ``result=-1 (hangup)``, or the socket closing before a full line."""
    pair.asterisk.write(answer)
    pair.asterisk.write_eof()
    with pytest.raises(AgiHangup):
        await pair.channel.set_variable("A", "1")


@pytest.mark.parametrize(
    "answer", [b"200 result=1 " + b"x" * (LIMIT + 10) + b"\n", b"what?\n", b"20 short\n"]
)
async def test_an_oversized_or_garbled_reply_is_a_protocol_error(pair: Pair, answer: bytes) -> None:
    """A reply line over the stream limit, or one that is no AGI reply: AgiProtocolError."""
    pair.asterisk.write(answer)
    with pytest.raises(AgiProtocolError):
        await pair.channel.set_variable("A", "1")


async def test_reply_text_is_printable(pair: Pair) -> None:
    """Control characters in a reply are escaped in the text kept for logs."""
    pair.asterisk.write(b"510 Invalid\r\x1b[2J command\n")
    reply = await pair.channel.set_variable("A", "1")
    assert "510 Invalid\\r\\x1b[2J command" == reply.text


async def _headers_of(
    data: bytes, max_lines: int, max_bytes: int, whole: bool
) -> tuple[object, bytes]:
    """What ``read_headers`` (``whole``) or the line-by-line reading gives for ``data``
    sent at once then closed: the lines, None or the overflow's message; then what stays
    buffered."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        stream = SocketStream(ours, 64)
        read = stream.read_headers if whole else stream._read_header_lines
        try:
            outcome: object = await read(max_lines, max_bytes)
        except HeaderOverflow as exc:
            outcome = str(exc)
        return outcome, bytes(stream._buffer)
    finally:
        ours.close()
        theirs.close()


_LINE = st.binary(max_size=70).map(lambda b: b.replace(b"\n", b"x"))


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=8),
    crlf=st.booleans(),
    blank=st.booleans(),
    rest=st.binary(max_size=20),
    max_lines=st.integers(1, 8),
    max_bytes=st.integers(1, 700),
)
def test_headers_read_at_once_are_read_as_line_by_line(
    lines: list[bytes], crlf: bool, blank: bool, rest: bytes, max_lines: int, max_bytes: int
) -> None:
    """Any header block (lines of any bytes, "\\n" or "\\r\\n" ends, with or without its
    blank line, too many or too long lines, too many bytes, more data after it): reading it
    whole gives the lines, the end of input or the overflow that reading it line by line
    gives, and leaves the same bytes buffered."""
    end = b"\r\n" if crlf else b"\n"
    data = b"".join(line + end for line in lines) + (end if blank else b"") + rest
    whole = asyncio.run(_headers_of(data, max_lines, max_bytes, whole=True))
    by_line = asyncio.run(_headers_of(data, max_lines, max_bytes, whole=False))
    assert by_line == whole


async def test_what_the_socket_holds_is_read_without_waiting_for_the_loop() -> None:
    """Data already in the socket is received at once, without the loop's readiness wait
    (``sock_recv``); an empty socket is waited for, and what arrives then is read."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    waited: list[int] = []
    sock_recv = loop.sock_recv

    async def counted(sock: socket.socket, size: int) -> bytes:
        waited.append(size)
        return await sock_recv(sock, size)

    try:
        stream = SocketStream(ours, LIMIT)
        theirs.sendall(b"agi_network: yes\n\n200 result=1\n")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loop, "sock_recv", counted)
            assert await stream.read_headers(8, 4096) == [b"agi_network: yes"]
            assert await stream.readuntil(b"\n") == b"200 result=1\n"
            assert waited == []
            loop.call_later(0.05, theirs.sendall, b"HANGUP\n")
            assert await asyncio.wait_for(stream.readuntil(b"\n"), 2) == b"HANGUP\n"
            assert waited == [65536]
    finally:
        ours.close()
        theirs.close()


async def test_the_loop_polls_for_a_header_block_and_not_for_a_reply() -> None:
    """A header block whose second half comes 20 ms after the first (a poller of 100 ms):
    the loop polled for it, and let go once it came; Asterisk's reply to a command is
    waited for asleep (not in the call's path: the channel goes on without it)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    poller = Poller(loop, 0.1)
    try:
        stream = SocketStream(ours, LIMIT, poller)
        theirs.sendall(b"agi_network: yes\n")
        loop.call_later(0.02, theirs.sendall, b"agi_request: agi://x/check\n\n")
        lines = await asyncio.wait_for(stream.read_headers(8, 4096), 2)
        polled = poller.turns
        loop.call_later(0.02, theirs.sendall, b"200 result=1\n")
        reply = await asyncio.wait_for(stream.readuntil(b"\n"), 2)
    finally:
        ours.close()
        theirs.close()
    assert lines == [b"agi_network: yes", b"agi_request: agi://x/check"]
    assert reply == b"200 result=1\n"
    assert polled >= 50
    assert (poller.turns, poller.holds) == (polled, 0)


async def test_a_header_wait_cut_short_lets_go_of_the_poller() -> None:
    """Headers that never end (the door's header timeout cuts the read): the hold is let
    go with the cancelled wait."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    poller = Poller(asyncio.get_running_loop(), 0.001)
    try:
        stream = SocketStream(ours, LIMIT, poller)
        theirs.sendall(b"agi_network: yes\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.read_headers(8, 4096), 0.05)
    finally:
        ours.close()
        theirs.close()
    assert poller.holds == 0
