"""Decision connections read by protocol callbacks: a decision's request and its reply
with no pool checkout, no reader task and no stream read of its own.

redis-py opens and authenticates each connection (the decision pool's connection class:
TCP, unix socket or TLS, a Sentinel-managed master found through the sentinels, AUTH,
SELECT); a ``Channel`` then takes its transport over and parses Redis's replies with
hiredis as they arrive (``data_received``), completing the waiting future at once. A
``ChannelLane`` holds up to ``pool_size`` channels to one server (a Sentinel master, a
Redis Cluster master).

Guarantees (those of the pooled redis-py connections they replace, see client.py):

- A caller waits at most ``pool_wait`` for a free channel (``Busy``); a channel that could
  not be opened gives its place to the next caller. Opening one (its handshake included)
  takes at most its connection's connect timeout, even from a server that accepts but
  never answers.
- One request at a time per channel, its replies read in order (an error reply is a
  value: the channel stays in step), then the replies of what was written behind it
  (``Behind``: a void, client.py), and only then is the channel free again.
- A channel whose connection fails, or whose replies do not all arrive within its read
  timeout, is closed: what it waits for fails (``ConnectionError`` / ``TimeoutError``),
  what was behind it is settled with None (its fate unknown), and it never returns to the
  lane.
- Sentinel: a READONLY reply (the master was demoted) closes the channel and fails the
  request with ``ConnectionError``, so that the next channel asks the sentinels for the
  master again (redis-py's rule for its Sentinel-managed connections).
- ``close(grace)`` lets requests in flight finish (at most ``grace`` seconds), then closes
  every channel.
- While a request's replies are due, the event loop polls for them instead of sleeping
  (the lane's ``poll_s`` at most, ``redis.busy_poll``; gate/store/poll.py); the hold is let
  go when they have come or the channel fails.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.store.poll import Poller

__all__ = ["Behind", "Busy", "Channel", "ChannelLane"]


@dataclass(slots=True)
class Behind:
    """A request written behind another on its channel once nobody waits for the first's
    replies: the channel reads its ``replies`` too (the last is its answer), then calls
    ``settle`` with it (None: the channel failed first)."""

    replies: int = 0
    settle: Callable[[Any], None] | None = None


class Opener(Protocol):
    """Makes the connections of one node (a redis-py pool, or a cluster node's class)."""

    def make_connection(self) -> AbstractConnection: ...


class Busy(Exception):
    """Every channel of the lane stayed in use for ``pool_wait``."""


class Channel(asyncio.Protocol):
    """One decision connection, read by protocol callbacks (see the module)."""

    def __init__(self, lane: ChannelLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.checked_out = False
        self.streams: tuple[object, object] | None = None
        self._parser = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        self._want = 0
        self._got: list[Any] = []
        self._reply: asyncio.Future[list[Any]] | None = None
        self._behind: Behind | None = None
        self._extra = 0
        self._timer: asyncio.TimerHandle | None = None
        self._poller: Poller | None = None
        self._held = 0.0

    # --- use ------------------------------------------------------------------------------

    def exchange(
        self,
        request: bytes,
        replies: int,
        reply: asyncio.Future[list[Any]],
        behind: Behind,
        timeout_s: float,
    ) -> None:
        """Write ``request``; ``reply`` gets its ``replies`` replies (or the channel's
        failure); then those of ``behind``; then the channel goes back to its lane."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise RedisConnectionError("Connection closed by server.")
        self._want, self._got, self._reply, self._behind, self._extra = (
            replies,
            [],
            reply,
            behind,
            0,
        )
        loop = reply.get_loop()
        self._timer = loop.call_later(timeout_s, self._timed_out)
        transport.write(request)
        self._poller = self.lane.poller(loop)
        if self._poller is not None:  # the reply is due soon: the loop polls for it
            self._held = self._poller.hold()

    def write_behind(self, behind: Behind, request: bytes) -> bool:
        """Write ``request`` behind the exchange given ``behind``, still in flight (False:
        the channel cannot take it, or that exchange's replies were all read already, as
        when its caller went away in the turn they arrived: the channel may be serving
        another request by now, whose reply this one's would be taken for)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if self._behind is not behind:
            return False
        transport.write(request)
        return True

    def reply_waiting(self) -> bool:
        """Whether bytes of Redis's reply wait in the socket unread (the event loop's own
        backlog under a burst of calls, not Redis being slow)."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return False
        poller = select.poll()  # not select.select: descriptors above 1023 are common here
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Close the connection; what it waits for fails."""
        self._fail(RedisConnectionError("Connection closed by callgate."))

    # --- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's, or another loop's with the same interface (uvloop's
        # are no subclass of asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        try:
            parser.feed(data)
            while not self.closed and (item := parser.gets()) is not False:
                self._received(item)
        except InvalidResponse as exc:
            self._fail(RedisConnectionError(f"Protocol error from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else "."
        self._fail(RedisConnectionError(f"Connection closed by server{detail}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost fails what waits

    # --- inside ---------------------------------------------------------------------------

    def _received(self, item: Any) -> None:
        reply = self._reply
        if reply is None or self.closed:
            self._fail(RedisConnectionError("Redis sent a reply nobody asked for"))
            return
        if self.lane.sentinel and isinstance(item, ReadOnlyError):
            self._fail(RedisConnectionError("The previous master is now a replica"))
            return
        if len(self._got) < self._want:
            self._got.append(item)
            if len(self._got) < self._want:
                return
            self._unhold()
            if not reply.done():
                reply.set_result(self._got)
        else:
            self._extra += 1
        behind = self._behind
        if behind is not None and self._extra < behind.replies:
            return
        if behind is not None and behind.settle is not None:
            settle, behind.settle = behind.settle, None
            settle(item)
        self._done()

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._reply = self._behind = None
        self._got = []
        self.lane.release(self)

    def _unhold(self) -> None:
        if self._poller is not None:
            self._poller.release(self._held)
            self._poller = None

    def _timed_out(self) -> None:
        self._fail(RedisTimeoutError("Timeout reading from Redis"))

    def _fail(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self._unhold()
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()
        reply, behind = self._reply, self._behind
        self._timer = self._reply = self._behind = None
        if reply is not None and not reply.done():
            reply.set_exception(error)
        if behind is not None and behind.settle is not None:
            settle, behind.settle = behind.settle, None
            settle(None)
        self.lane.discard(self)


class ChannelLane:
    """Up to ``size`` channels to the node ``name`` whose connections ``pool`` makes (it
    opens and authenticates each, see the module); ``on_failure`` is told when one fails."""

    def __init__(
        self,
        pool: Opener,
        size: int,
        wait_s: float,
        name: str = "",
        on_failure: Callable[[], None] | None = None,
        poll_s: float = 0.0,
    ) -> None:
        self.pool, self.size, self.wait_s, self.name = pool, size, wait_s, name
        self.sentinel = isinstance(pool, SentinelConnectionPool) and pool.is_master
        # How long the loop polls for a reply, at most, instead of sleeping (poll.py).
        self.poll_s = poll_s
        self._poller: Poller | None = None
        self._on_failure = on_failure
        self._channels: set[Channel] = set()
        self._idle: list[Channel] = []
        self._opening = 0  # places taken by channels being opened
        self._waiters: deque[asyncio.Future[Channel | None]] = deque()
        self._quiet: asyncio.Event | None = None
        self._closed = False

    async def checkout(self) -> Channel:
        """A free channel, or a new one if the lane has room; else waits at most
        ``wait_s`` for one (``Busy``)."""
        if self._closed:
            raise RedisConnectionError("Connection pool closed.")
        if self._idle:
            channel = self._idle.pop()
            channel.checked_out = True
            return channel
        if self._waiters or len(self._channels) + self._opening >= self.size:
            given = await self._wait()
            if given is not None:
                return given
        else:
            self._opening += 1
        return await self._open_one()  # the place is counted in _opening

    def poller(self, loop: asyncio.AbstractEventLoop) -> Poller | None:
        """The lane's poller on ``loop`` (None: no polling, ``poll_s`` is 0)."""
        if self.poll_s <= 0.0:
            return None
        poller = self._poller
        if poller is None or poller.loop is not loop or poller.max_s != self.poll_s:
            poller = self._poller = Poller(loop, self.poll_s)
        return poller

    def release(self, channel: Channel) -> None:
        """``channel`` finished its exchange: to the first waiter, else idle."""
        channel.checked_out = False
        if not channel.closed:
            self._free(channel)
        self._wake_if_quiet()

    def discard(self, channel: Channel) -> None:
        """``channel`` closed: its place goes to the first waiter (to open another)."""
        if channel.checked_out:
            channel.checked_out = False
        elif channel in self._idle:
            self._idle.remove(channel)
        self._channels.discard(channel)
        self._give_place()
        self._wake_if_quiet()

    def failed(self) -> None:
        """A channel's connection failed (a cluster re-reads its slot map)."""
        if self._on_failure is not None:
            self._on_failure()

    async def close(self, grace_s: float) -> None:
        """Let exchanges in flight finish (at most ``grace_s``), then close every channel;
        a caller still waiting for one gets ``ConnectionError``."""
        self._closed = True
        if self._busy():
            self._quiet = asyncio.Event()
            try:
                async with asyncio.timeout(grace_s):
                    await self._quiet.wait()
            except TimeoutError:
                pass  # closed below: their callers get ConnectionError
            finally:
                self._quiet = None
        while self._waiters:
            self._waiters.popleft().cancel()
        for channel in list(self._channels):
            channel.close()

    # --- inside ---------------------------------------------------------------------------

    async def _wait(self) -> Channel | None:
        """Wait for a released channel, or (None) a place to open one."""
        waiter: asyncio.Future[Channel | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._pass_on(waiter.result())  # given just as the wait ended
            else:
                waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise Busy from None
            raise

    def _pass_on(self, given: Channel | None) -> None:
        if given is None:
            self._opening -= 1
            self._give_place()
        else:
            self.release(given)

    def _free(self, channel: Channel) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                channel.checked_out = True
                waiter.set_result(channel)
                return
        self._idle.append(channel)

    def _give_place(self) -> None:
        """A place to open a channel is free: the first waiter takes it."""
        while self._waiters and len(self._channels) + self._opening < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._opening += 1
                waiter.set_result(None)
                return

    def _busy(self) -> bool:
        """Whether a channel is checked out (an exchange in flight, or about to be)."""
        return any(channel.checked_out for channel in self._channels)

    def _wake_if_quiet(self) -> None:
        if self._quiet is not None and not self._busy():
            self._quiet.set()

    async def _open_one(self) -> Channel:
        try:
            connection = self.pool.make_connection()
            # Its handshake (HELLO/AUTH, CLIENT SETINFO, SELECT) is bounded as its connect:
            # a server that accepts connections but never answers (stopped, frozen) held a
            # decision for the reply timeout (5 s) here, against a 50 ms deadline. The
            # channel reads its replies under timers of its own, never this timeout.
            connection.socket_timeout = connection.socket_connect_timeout
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            self._opening -= 1
            self._give_place()
            raise
        # No await from here on: the channel is counted before any callback can run.
        self._opening -= 1
        writer, reader = connection._writer, connection._reader
        if self._closed or writer is None or reader is None or getattr(reader, "_buffer", None):
            await connection.disconnect()
            self._give_place()
            if self._closed:  # closed while this one was opening
                raise RedisConnectionError("Connection pool closed.")
            raise RedisConnectionError("Redis sent data before any request")
        channel = Channel(self)
        # The transport is the channel's from now on: redis-py must neither read it nor
        # close it when its connection object is collected; the channel keeps the streams
        # (a StreamWriter collected while its transport is open closes it).
        channel.streams = (reader, writer)
        connection._writer = connection._reader = None
        transport = writer.transport
        transport.set_protocol(channel)
        channel.connection_made(transport)
        self._channels.add(channel)
        channel.checked_out = True
        return channel
