"""The FastAGI server: Asterisk asks, the gate decides, one channel variable answers.

Dialplan: ``AGI(agi://127.0.0.1:4573/check?tenant=acme&campaign=spring&class=campaign)``
(parameters may also be passed as AGI arguments: ``AGI(agi://…/check,number=${EXTEN})``).
Every route answers with one ``SET VARIABLE CALLGATE_DECISION "RESULT|REASON|RULE|
RETRY_AFTER|E164|CAUSE"`` (``gate.core.params.answer_value``), which the dialplan's
``callgate-unpack`` splits into ``CALLGATE_RESULT``, ``CALLGATE_REASON`` and the rest.
Routes:

- ``check``  decide the call to ``number`` (default: the request's extension): RESULT is
  ALLOW, BLOCK or DEFER, with the reason, rule, retry delay (seconds, DEFER only), the
  E.164 number and the suggested Q.850 hangup cause (21 BLOCK, 34 DEFER, 0 ALLOW).
- ``optout`` put ``number`` on the tenant's red list (``list=`` to name another block
  list): RESULT ``OK`` (reason ``listed:<list>``) or ``ERROR``. The very next attempt
  sees it. It is answered once durable: a Redis Cluster slot being resharded is waited
  for (``gate.store.client.DURABLE_TRYAGAIN_S``), and a callee who hangs up meanwhile
  does not take the opt-out back (only the server stopping cancels it).
- ``refusal`` / ``abandoned`` / ``answered`` the call's disposition: start the packs'
  cool-off for ``number`` (France: 60 calendar days after a refusal; UK: 72 h after an
  abandoned call) and count an abandoned or answered call toward the abandoned-call ceiling of its
  ``campaign`` (UK: 3 % of live calls per 24 h): RESULT ``OK`` (reason
  ``<event>:<first rule>``) or ``ERROR`` (``<event>_no_rule`` when no pack has a rule for
  it, ``<event>_needs_campaign`` when only per-campaign ceilings would count it).

A request the server cannot serve (unknown route or parameter, malformed value, a header
or a parameter given twice) gets RESULT ``ERROR`` with reason ``bad_request:<what>``, so
the dialplan applies its fail mode.

Guarantees (model: aiosmtpd's ``_handle_client``): headers are read under a deadline with
a line-length, line-count and block-size limit, their control characters escaped (a crafted
``agi_channel`` cannot forge a log line); a peer that closes early, sends garbage or stalls
is dropped without affecting other connections; values written back are from a fixed safe
alphabet, so a crafted number cannot inject AGI commands; the one command is sent with the
end of the stream (the socket shut for writing), so Asterisk ends the AGI and its channel
goes on as soon as it has set the variable, without waiting for the gate to close;
Asterisk's reply is still read whole and checked (anything but ``200 result=1``, or a
garbled reply, is logged and counted in ``failed``); a channel that hangs up (``HANGUP``) before
its ALLOW is set made no call, so its recorded decision is undone (``Gate.undo``);
``CancelledError`` is never swallowed; every accepted connection is tracked from the
moment it is accepted, and ``stop()`` stops accepting, then drains them all (bounded,
``gate.service.InFlight``).

Who may connect: with ``[agi] allow`` (addresses, CIDR networks) a peer outside the list
is closed at once, before a byte is read (counted in ``refused``, logged once per
address). A request dropped before its headers are read whole (too long, stalled, reset)
is counted in ``dropped`` and logged at most once per ``DROP_LOG_INTERVAL_S``, with the
number dropped since: a flood of bad connections cannot flood the log (and push out the
warnings that matter, as journald's rate limit would). The routes change state
(``optout``, a recorded ``check``), so a non-loopback listener without an allow-list is
refused at start, as at config load.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agi._wire import AgiChannel, AgiHangup, AgiProtocolError, HeaderOverflow, SocketStream
from gate.config.loader import Network, is_loopback
from gate.core.errors import ConfigError, GateError, InputError, OptionError
from gate.core.model import Attempt
from gate.core.params import (
    DECISION_VARIABLE,
    BadRequest,
    answer_value,
    attempt_from_params,
    decision_value,
    error_value,
    ident_param,
    parse_pairs,
    printable,
)
from gate.lists.admin import EVENTS, ListAdmin
from gate.service import Evaluation, Gate, InFlight, Poller

__all__ = ["AgiRequest", "AgiServer", "parse_request"]

log = logging.getLogger("callgate.agi")

MAX_LINE_BYTES = 4096
MAX_HEADER_LINES = 128
# A header block in all: Asterisk's is about 1 KiB, its arguments at most the dialplan
# application's data (8 KiB) and the script twice (agi_network_script, agi_request). The
# line limits alone let one stalled peer hold half a megabyte until the header deadline.
MAX_HEADER_BYTES = 32768
COMMAND_TIMEOUT_S = 5.0
STOP_GRACE_S = 10.0
LISTEN_BACKLOG = 1024
ACCEPT_BATCH = 64  # connections taken per wake-up, so accepting cannot starve the loop
ACCEPT_RETRY_S = 1.0  # after EMFILE and the like (as asyncio's own servers do)
MAX_REFUSED_LOGGED = 256  # distinct refused addresses logged (then only counted)
DROP_LOG_INTERVAL_S = 60.0  # requests dropped unread: one warning per interval at most


@dataclass(frozen=True, slots=True)
class AgiRequest:
    """The parts of a FastAGI request the gate uses."""

    route: str
    params: Mapping[str, str] = field(default_factory=dict)
    extension: str = ""
    caller_id: str = ""
    channel: str = ""


def _failure(exc: GateError) -> str:
    """What a failed request's reason names (``optout_failed:InputError``): the error's
    class, a stable word for the dialplan; an ``OptionError`` (an input error worded per
    interface) is an ``InputError``."""
    return InputError.__name__ if isinstance(exc, OptionError) else type(exc).__name__


def header_map(lines: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The header lines (name, value) as a mapping, or ``BadRequest`` if a name repeats.

    Asterisk writes each ``agi_arg_N`` verbatim: a newline in a dialplan value adds
    header lines of its own (another ``agi_arg_1``), so a repeated name means the block
    is forged and no copy can be trusted (``bad_request:<name>``, the dialplan's fail mode).
    """
    headers: dict[str, str] = {}
    for name, value in lines:
        if name in headers:
            raise BadRequest(f"bad_request:{name}", f"header {name!r} given twice")
        headers[name] = value
    return headers


def parse_request(lines: Iterable[tuple[str, str]]) -> AgiRequest:
    """Build an ``AgiRequest`` from the ``agi_*`` header lines, or raise ``BadRequest``.

    The caller ID is passed on as Asterisk gives it: the engine treats ``unknown`` (and
    the other masked forms) as a masked caller ID.
    """
    headers = header_map(lines)
    script = headers.get("agi_network_script", "")
    route, _, query = script.partition("?")
    pairs = [p for p in query.split("&") if p]
    index = 1
    while f"agi_arg_{index}" in headers and index <= MAX_HEADER_LINES:
        if headers[f"agi_arg_{index}"]:
            pairs.append(headers[f"agi_arg_{index}"])
        index += 1
    params = parse_pairs(pairs)
    return AgiRequest(
        route=route.strip("/"),
        params=params,
        extension=headers.get("agi_extension", ""),
        caller_id=headers.get("agi_callerid", ""),
        channel=headers.get("agi_channel", ""),
    )


def build_attempt(request: AgiRequest, default_tenant: str, now: datetime) -> Attempt:
    """The attempt a ``check`` request describes (number: the extension unless given)."""
    return attempt_from_params(
        request.params,
        number=request.extension,
        caller_id=request.caller_id,
        channel=request.channel,
        default_tenant=default_tenant,
        now=now,
    )


class AgiServer:
    """Serves the ``check``, ``optout`` and call-event (``refusal``, ``abandoned``,
    ``answered``) FastAGI routes for one ``Gate``, until ``stop()``."""

    def __init__(
        self,
        gate: Gate,
        host: str,
        port: int,
        header_timeout_s: float,
        allow: Sequence[Network] = (),
        reuse_port: bool = False,
        busy_poll_s: float = 0.0,
    ) -> None:
        self.gate = gate
        self.host, self.requested_port = host, port
        # SO_REUSEPORT: worker processes each listen on the same port, and the kernel
        # spreads the connections among them (``callgate run --workers N``).
        self.reuse_port = reuse_port
        self.header_timeout_s = header_timeout_s
        self.allow = tuple(allow)
        # The loop polls for a header block's lines for this long at most (0: sleeps).
        self.busy_poll_s = busy_poll_s
        self._poller: Poller | None = None
        self._listener: socket.socket | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._requests = InFlight("FastAGI", STOP_GRACE_S)
        self._refused_from: set[str] = set()
        self.accepted = 0  # connections served since start (metrics)
        self.refused = 0  # connections closed unserved: peer not in the allow-list
        self.failed = 0  # requests whose answer Asterisk refused or garbled (metrics)
        self.dropped = 0  # requests dropped before their headers were read whole
        self._drops_logged = 0  # ``dropped`` when a drop was last logged
        self._drop_logged_at = float("-inf")

    @property
    def lists(self) -> ListAdmin:
        """List operations under the gate's configuration in force (it may be reloaded)."""
        return ListAdmin.of(self.gate)

    @property
    def active(self) -> int:
        """Connections being served now (metrics)."""
        return len(self._requests)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        assert self._listener is not None, "server not started"
        return int(self._listener.getsockname()[1])

    async def start(self) -> None:
        """Listen on the first address ``host`` resolves to (``OSError`` if it cannot;
        ``ConfigError`` for a non-loopback host without an allow-list)."""
        if not self.allow and not is_loopback(self.host):
            raise ConfigError(
                f"agi: refusing to listen on {self.host!r} without agi.allow: list the "
                "Asterisk servers that may connect, or listen on 127.0.0.1"
            )
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(address)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        if self.busy_poll_s > 0:
            self._poller = Poller(loop, self.busy_poll_s)
        loop.add_reader(listener.fileno(), self._accept_ready)

    async def stop(self) -> None:
        """Stop accepting; let every accepted request finish (bounded), cancel the rest."""
        listener, self._listener = self._listener, None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        await self._requests.drain()

    def _accept_ready(self) -> None:
        """The listening socket is readable: take the waiting connections, each tracked
        at once (nothing accepted can slip past ``stop()``)."""
        listener = self._listener
        if listener is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                connection, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS…: pause, as asyncio's servers do
                log.warning("FastAGI: cannot accept connections (%s); retrying in 1 s", exc)
                loop = asyncio.get_running_loop()
                loop.remove_reader(listener.fileno())
                self._retry = loop.call_later(ACCEPT_RETRY_S, self._resume_accepting)
                return
            if not self._allowed(peer):
                connection.close()
                self._refuse(peer)
                continue
            self.accepted += 1
            connection.setblocking(False)
            self._requests.spawn(functools.partial(self._connection, connection))

    def _allowed(self, peer: object) -> bool:
        """Whether ``peer`` (the address ``accept()`` gave) is in the allow-list."""
        if not self.allow:
            return True
        try:
            address = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener's IPv4 peer
        return any(address in network for network in self.allow)

    def _refuse(self, peer: object) -> None:
        self.refused += 1
        who = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if who not in self._refused_from and len(self._refused_from) < MAX_REFUSED_LOGGED:
            self._refused_from.add(who)
            log.warning("FastAGI: refused a connection from %s: not in agi.allow", who)

    def _resume_accepting(self) -> None:
        self._retry = None
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept_ready)

    async def _connection(self, connection: socket.socket) -> None:
        try:
            await self._serve(SocketStream(connection, MAX_LINE_BYTES, self._poller))
        except Exception:  # a bug in one request must not take the server down
            log.exception("FastAGI request failed")
        finally:
            connection.close()

    async def _read_headers(self, stream: SocketStream) -> list[tuple[str, str]] | None:
        """The request's header lines (name, value) in order, or None if the peer closed,
        stalled or sent garbage."""
        try:
            async with asyncio.timeout(self.header_timeout_s):
                lines = await stream.read_headers(MAX_HEADER_LINES, MAX_HEADER_BYTES)
        except HeaderOverflow as exc:
            self._drop(str(exc))
            return None
        except (TimeoutError, OSError) as exc:  # a stall, a reset
            self._drop(f"its headers were unreadable ({type(exc).__name__})")
            return None
        if lines is None:
            return None  # EOF before the blank line: a probe or a dead peer
        headers: list[tuple[str, str]] = []
        for raw in lines:
            name, sep, value = raw.decode("utf-8", "replace").partition(": ")
            if sep:  # control characters escaped: a header cannot forge a log line
                headers.append((printable(name), printable(value)))
        return headers

    def _drop(self, why: str) -> None:
        """Count a request dropped unread; log it unless one was logged within the interval."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._drop_logged_at < DROP_LOG_INTERVAL_S:
            return
        unlogged = self.dropped - self._drops_logged - 1
        self._drop_logged_at, self._drops_logged = now, self.dropped
        since = f" ({unlogged} more dropped since the last such warning)" if unlogged else ""
        log.warning("FastAGI: dropped a request: %s%s", why, since)

    async def _serve(self, stream: SocketStream) -> None:
        headers = await self._read_headers(stream)
        if headers is None:
            return
        channel = AgiChannel(stream, stream, COMMAND_TIMEOUT_S)
        name = next((value for key, value in headers if key == "agi_channel"), "?")
        value, evaluation = await self._answer(headers)
        try:
            reply = await channel.set_variable(DECISION_VARIABLE, value, last=True)
        except (AgiHangup, TimeoutError, ConnectionError) as exc:
            log.info(
                "FastAGI: channel %s went away during the dialogue (%s)", name, type(exc).__name__
            )
            if isinstance(exc, AgiHangup) and evaluation is not None:
                # It hung up: its dialplan goes no further, so an ALLOW let no call go.
                self.gate.undo(evaluation)
            return
        except AgiProtocolError as exc:
            self.failed += 1
            log.warning("FastAGI: channel %s: unreadable reply from Asterisk: %s", name, exc)
            return
        if not reply.ok or reply.result != "1":  # res_agi's SET VARIABLE: "200 result=1"
            self.failed += 1
            log.warning(
                "FastAGI: channel %s: Asterisk refused %s: %s", name, DECISION_VARIABLE, reply.text
            )

    async def _answer(self, headers: Iterable[tuple[str, str]]) -> tuple[str, Evaluation | None]:
        """Decide (or opt out, or record a disposition): the ``CALLGATE_DECISION`` value,
        and the recorded decision behind it (a ``check``)."""
        try:
            request = parse_request(headers)
            if request.route == "check":
                attempt = build_attempt(request, self.gate.config.default_tenant, datetime.now(UTC))
                evaluation = await self.gate.evaluate(attempt, record=True, door="agi")
                return decision_value(evaluation.decision), evaluation
            if request.route == "optout":
                return await self._optout(request), None
            if request.route in EVENTS:
                return await self._event(request), None
            raise BadRequest("bad_request:route", f"unknown route {request.route!r}")
        except BadRequest as exc:
            log.warning("FastAGI: %s", exc)
            return error_value(exc.code), None

    async def _event(self, request: AgiRequest) -> str:
        """The call's disposition: the callee refused, or the call was abandoned or
        answered (by a person, put through to an agent)."""
        event = request.route
        number = request.params.get("number") or request.extension
        tenant = ident_param(request.params, "tenant", self.gate.config.default_tenant)
        campaign = ident_param(request.params, "campaign", "")
        try:
            record = await self.lists.record_event(
                event, number, tenant, datetime.now(UTC), None, campaign
            )
        except GateError as exc:
            log.warning("FastAGI %s refused: %s", event, exc)
            return error_value(f"{event}_failed:{_failure(exc)}")
        if record.uncounted:
            log.warning(
                "FastAGI %s without a campaign: not counted toward %s",
                event,
                ", ".join(record.uncounted),
            )
        if not record.rules:
            return error_value(
                f"{event}_needs_campaign" if record.uncounted else f"{event}_no_rule"
            )
        return answer_value("OK", f"{event}:{record.rules[0]}")

    async def _optout(self, request: AgiRequest) -> str:
        """The callee asked never to be called again: on a block list at once."""
        number = request.params.get("number") or request.extension
        tenant = ident_param(request.params, "tenant", self.gate.config.default_tenant)
        list_name = ident_param(request.params, "list", "red")
        try:
            rule = self.lists.rule(list_name)
            if rule.kind != "block":
                raise InputError(f"list {list_name!r} is not a block list")
            await self.lists.add(
                list_name, [number], tenant, ident_param(request.params, "campaign", "")
            )
        except GateError as exc:
            log.warning("FastAGI optout refused: %s", exc)
            return error_value(f"optout_failed:{_failure(exc)}")
        log.info("FastAGI optout: a number was added to list %s for tenant %s", list_name, tenant)
        return answer_value("OK", f"listed:{list_name}")
