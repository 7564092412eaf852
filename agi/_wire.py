"""The FastAGI dialogue after the request headers: one command, Asterisk's reply, checked.

Asterisk's res_agi answers each command with one line (``res_agi.c``, ``agi_handle_command``
and the ``ast_agi_send`` calls around it):

- ``200 result=<n> [(<data>)]`` done (``result=-1 (hangup)`` if the channel hung up);
- ``100 result=0 Trying...`` before some final replies;
- ``510 Invalid or unknown command``;
- ``511 Command Not Permitted on a dead channel or intercept routine``;
- ``520 Invalid command syntax.  Proper usage not available.``, or a multi-line usage
  reply: ``520-Invalid command syntax.  Proper usage follows:``, the usage text, then
  ``520 End of proper usage.``;

and it writes ``HANGUP`` on the socket when the channel hangs up. Every reply is read
whole (a multi-line one up to its closing line), so the dialogue never falls out of step;
a line longer than the stream's limit (``MAX_LINE_BYTES``), or one that is none of the
above, is an ``AgiProtocolError``. Reply text kept for logs is made printable first.

Commands go one at a time, each answered before the next is sent: Asterisk's res_agi does
not answer pipelined commands (it reads them through a buffered stream after poll(); seen
on Asterisk 22, every reply then waited for the socket to close). The last command can be
sent with the end of the stream (``last``: the socket is shut for writing once it is out):
res_agi runs it, replies, then reads the end and ends the AGI (``AGISTATUS`` SUCCESS), its
channel going on with the dialplan at once instead of waiting for this side to read the
reply and close; the reply is still read and checked as any other.

This replaces panoramisk 1.4 (untyped; its ``Application.handler`` spins on EOF, and its
reply parser neither reads multi-line replies nor survives an unparseable one).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from dataclasses import dataclass
from typing import Protocol

from gate.core.params import printable
from gate.service import Poller

__all__ = [
    "AgiChannel",
    "AgiHangup",
    "AgiProtocolError",
    "AgiReply",
    "HeaderOverflow",
    "SocketStream",
]

MAX_REPLY_LINES = 64  # a usage text is a dozen lines; "100 Trying" lines are few
_REPLY = re.compile(r"(\d{3})([ -])(.*)", re.ASCII | re.DOTALL)
_RESULT = re.compile(r"result=(\S*)(?:\s+\((.*)\))?", re.ASCII | re.DOTALL)


class AgiHangup(Exception):
    """Asterisk hung the channel up (or closed the socket) during the dialogue."""


class AgiProtocolError(Exception):
    """Asterisk's reply could not be read: too long, or not an AGI reply."""


@dataclass(frozen=True, slots=True)
class AgiReply:
    """Asterisk's final reply to one command."""

    code: int  # 200 done; 510, 511, 520 refused
    result: str  # the ``result=`` value of a 200 reply ("" otherwise)
    text: str  # its first line, printable (for logs)

    @property
    def ok(self) -> bool:
        return self.code == 200


class HeaderOverflow(Exception):
    """A request's header block broke a limit (a line too long, too many lines, or too many
    bytes in all)."""


class _Reader(Protocol):
    async def readuntil(self, separator: bytes = b"\n") -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...


class SocketStream:
    """One FastAGI connection read and written through the event loop's socket calls.

    Lighter than asyncio's streams (no transport, protocol, reader and writer objects per
    connection; a call's header block and reply take about four receives): the per-call
    path of the server. ``readuntil`` and ``write``/``drain`` behave as ``StreamReader``'s and
    ``StreamWriter``'s for ``AgiChannel`` (the same exceptions at EOF and past ``limit``).
    """

    __slots__ = ("_buffer", "_limit", "_loop", "_out", "_poller", "_sock")

    def __init__(self, sock: socket.socket, limit: int, poller: Poller | None = None) -> None:
        self._sock = sock
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._out = bytearray()
        self._poller = poller  # polls for the header block's lines (gate/store/poll.py)

    async def _fill(self, soon: bool = False) -> bool:
        """Receive what the peer sent next; False at EOF.

        What is already in the socket is taken at once: uvloop's ``sock_recv`` always
        waits for the loop to report the socket readable first (a watch added and removed,
        one more loop turn: ~10 µs), and Asterisk writes its header block a line at a time,
        so the next lines are often there already (about half the receives of a call
        through Asterisk 22). Only an empty socket is waited for; ``soon`` (the header
        block, whose lines follow each other at once): with the loop polling for it."""
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            poller = self._poller if soon else None
            if poller is None:
                data = await self._loop.sock_recv(self._sock, 65536)
            else:
                started = poller.hold()
                try:
                    data = await self._loop.sock_recv(self._sock, 65536)
                finally:
                    poller.release(started)
        self._buffer += data
        return bool(data)

    async def read_headers(self, max_lines: int, max_bytes: int) -> list[bytes] | None:
        """The lines of the header block up to its blank line (None: EOF before it).

        Raises ``HeaderOverflow`` as soon as a line is longer than the limit, there are
        more than ``max_lines`` lines, or the block (its blank line included) is longer than
        ``max_bytes``: what a connection holds while its block comes is bounded, whatever
        the peer sends. Whatever follows the blank line stays buffered."""
        buffer = self._buffer
        if not buffer and not await self._fill(soon=True):
            return None
        # The usual case, whole in the first receive: "\n"-ended lines, no blank one before
        # the end, none too long, not too many: split at once. Anything else line by line.
        end = buffer.find(b"\n\n")
        if 0 < end <= max_bytes - 2 and buffer[0] != 0x0A and buffer.find(b"\r", 0, end) < 0:
            lines = bytes(buffer[:end]).split(b"\n")
            if len(lines) <= max_lines and max(map(len, lines)) <= self._limit:
                del buffer[: end + 2]
                return lines
        return await self._read_header_lines(max_lines, max_bytes)

    async def _read_header_lines(self, max_lines: int, max_bytes: int) -> list[bytes] | None:
        """``read_headers``, line by line."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                if len(self._buffer) - start > self._limit:
                    raise HeaderOverflow(f"a header line longer than {self._limit} bytes")
                if len(self._buffer) > max_bytes:
                    raise HeaderOverflow(f"a header block longer than {max_bytes} bytes")
                if not await self._fill(soon=True):
                    return None
                continue
            if end - start > self._limit:
                raise HeaderOverflow(f"a header line longer than {self._limit} bytes")
            if end >= max_bytes:  # the block up to this line: end + 1 bytes
                raise HeaderOverflow(f"a header block longer than {max_bytes} bytes")
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line:
                del self._buffer[:start]
                return lines
            if len(lines) == max_lines:
                raise HeaderOverflow(f"more than {max_lines} header lines")
            lines.append(line)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        while True:
            end = self._buffer.find(separator)
            if end >= 0:
                end += len(separator)
                if end > self._limit:
                    raise asyncio.LimitOverrunError("separator found past the limit", end)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError("no separator within the limit", self._limit)
            if not await self._fill():
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)

    def write(self, data: bytes) -> None:
        self._out += data

    async def drain(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            await self._loop.sock_sendall(self._sock, data)

    def write_eof(self) -> None:
        """Shut the socket for writing (what is sent stays sent; reading goes on). A peer
        already gone is left to the next read to tell (EOF or reset)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)


class AgiChannel:
    """Sends AGI commands on one FastAGI connection, each under a deadline."""

    def __init__(self, reader: _Reader, writer: _Writer, timeout_s: float) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s

    async def set_variable(self, name: str, value: str, *, last: bool = False) -> AgiReply:
        """``SET VARIABLE name "value"`` and Asterisk's reply; ``value`` must be safe.
        ``last``: the dialogue's last command, sent with the end of the stream."""
        async with asyncio.timeout(self._timeout_s):
            self._writer.write(f'SET VARIABLE {name} "{value}"\n'.encode())
            await self._writer.drain()
            if last:
                self._writer.write_eof()
            return await self._reply()

    async def _line(self) -> str:
        try:
            raw = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise AgiHangup("connection closed") from exc
        except asyncio.LimitOverrunError as exc:
            raise AgiProtocolError(f"a reply line longer than {exc.consumed} bytes") from exc
        return printable(raw.decode("utf-8", "replace").rstrip("\r\n"))

    async def _reply(self) -> AgiReply:
        for _ in range(MAX_REPLY_LINES):
            line = await self._line()
            if line == "HANGUP":
                raise AgiHangup("channel hung up")
            match = _REPLY.fullmatch(line)
            if match is None:
                raise AgiProtocolError(f"not an AGI reply: {line[:80]!r}")
            code, continued, rest = int(match[1]), match[2] == "-", match[3]
            if continued:
                await self._skip_to_end_of(code)
                return AgiReply(code, "", line[:200])
            if code == 100:
                continue
            if code != 200:
                return AgiReply(code, "", line[:200])
            result = _RESULT.match(rest)
            if result is not None and result[2] == "hangup":
                raise AgiHangup("channel hung up")
            return AgiReply(code, result[1] if result is not None else "", line[:200])
        raise AgiProtocolError(f"no final reply within {MAX_REPLY_LINES} lines")

    async def _skip_to_end_of(self, code: int) -> None:
        """Read the rest of a multi-line reply, up to its ``<code> …`` closing line."""
        closing = f"{code} "
        for _ in range(MAX_REPLY_LINES):
            if (await self._line()).startswith(closing):
                return
        raise AgiProtocolError(f"a {code} reply with no closing line in {MAX_REPLY_LINES}")
