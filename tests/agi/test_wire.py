"""The FastAGI dialogue's reply reading, over a real socket pair: Asterisk's side scripted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from agi._wire import AgiChannel, AgiHangup, AgiProtocolError, AgiReply, SocketStream

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
