"""The FastAGI server over a real TCP socket, against a scripted Asterisk peer and real Redis.

The peer in this module plays Asterisk's side of FastAGI: it sends the ``agi_*`` request
headers and a blank line, then answers every command the server sends with
``200 result=1`` (or whatever the test scripts) until the server closes the connection.
The server answers with one ``SET VARIABLE CALLGATE_DECISION``; ``Dialogue.variables``
splits it the way dialplan/callgate.conf's ``callgate-unpack`` does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from agi.server import AgiServer, parse_request
from gate.core.errors import ConfigError, StoreError
from gate.core.params import BadRequest
from gate.lists.admin import ListAdmin
from gate.ops.audit import read_range
from gate.service import Evaluation, Gate, Observed
from gate.store.client import Store
from tests.conftest import make_config

HOST = "127.0.0.1"
PEER_TIMEOUT_S = 5.0
MAX_COMMANDS = 32
HEADER_TIMEOUT_S = 0.2
SAFE_COMMAND = re.compile(r'^SET VARIABLE (CALLGATE_[A-Z0-9_]+) "([A-Za-z0-9_.:+|\-]*)"$')
UNPACKED = (
    "CALLGATE_RESULT",
    "CALLGATE_REASON",
    "CALLGATE_RULE",
    "CALLGATE_RETRY_AFTER",
    "CALLGATE_E164",
    "CALLGATE_CAUSE",
)
ALLOWED_0612345678 = {
    "CALLGATE_REASON": "allowed",
    "CALLGATE_RULE": "",
    "CALLGATE_RETRY_AFTER": "",
    "CALLGATE_E164": "+33612345678",
    "CALLGATE_CAUSE": "0",
    "CALLGATE_RESULT": "ALLOW",
}


def answer(result: str, reason: str) -> dict[str, str]:
    """The variables of an answer that is not a decision (ERROR, OK): no rule, retry, E.164."""
    return {
        "CALLGATE_RESULT": result,
        "CALLGATE_REASON": reason,
        "CALLGATE_RULE": "",
        "CALLGATE_RETRY_AFTER": "",
        "CALLGATE_E164": "",
        "CALLGATE_CAUSE": "0",
    }


# Answers the peer gives to the n-th command (0-based); None closes the connection.
Reply = Callable[[int, str], Awaitable[str | None]]


async def always_ok(_index: int, _command: str) -> str | None:
    return "200 result=1\n"


@dataclass(frozen=True, slots=True)
class Dialogue:
    """What the server sent during one FastAGI request."""

    commands: tuple[str, ...]

    @property
    def variables(self) -> dict[str, str]:
        """The ``CALLGATE_*`` variables the dialplan gets from the one ``CALLGATE_DECISION``
        the server set (fails on any other command)."""
        found: dict[str, str] = {}
        for command in self.commands:
            match = SAFE_COMMAND.match(command)
            assert match is not None, f"unexpected command from the server: {command!r}"
            found[match.group(1)] = match.group(2)
        assert ["CALLGATE_DECISION"] == list(found), f"unexpected variables {found!r}"
        fields = found["CALLGATE_DECISION"].split("|")
        assert len(UNPACKED) == len(fields), f"malformed CALLGATE_DECISION {fields!r}"
        return dict(zip(UNPACKED, fields, strict=True))

    @property
    def names(self) -> list[str]:
        return [command.split()[2] for command in self.commands]


def request_headers(
    script: str,
    extension: str = "0612345678",
    args: Sequence[str] = (),
    callerid: str = "0102030405",
    channel: str = "PJSIP/agent-00000001",
) -> bytes:
    """The header block Asterisk sends for ``AGI(agi://127.0.0.1/<script>,<args>)``."""
    lines = [
        "agi_network: yes",
        f"agi_network_script: {script}",
        f"agi_request: agi://{HOST}:4573/{script}",
        f"agi_channel: {channel}",
        "agi_language: en",
        "agi_type: PJSIP",
        "agi_uniqueid: 1767261600.17",
        "agi_version: 20.11.0",
        f"agi_callerid: {callerid}",
        "agi_calleridname: Agent One",
        "agi_callingpres: 0",
        "agi_callingani2: 0",
        "agi_callington: 0",
        "agi_callingtns: 0",
        f"agi_dnid: {extension}",
        "agi_rdnis: unknown",
        "agi_context: outbound",
        f"agi_extension: {extension}",
        "agi_priority: 2",
        "agi_enhanced: 0.0",
        "agi_accountcode: ",
        "agi_threadid: 140234567890",
        *(f"agi_arg_{index}: {arg}" for index, arg in enumerate(args, start=1)),
    ]
    return ("\n".join(lines) + "\n\n").encode()


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def agi_call(
    port: int,
    script: str,
    extension: str = "0612345678",
    args: Sequence[str] = (),
    reply: Reply = always_ok,
    on_command: Callable[[int], None] | None = None,
    callerid: str = "0102030405",
    channel: str = "PJSIP/agent-00000001",
) -> Dialogue:
    """Play one FastAGI request; return the commands the server sent before it closed."""
    commands: list[str] = []
    async with asyncio.timeout(PEER_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request_headers(script, extension, args, callerid, channel))
            await writer.drain()
            for index in range(MAX_COMMANDS):
                line = await reader.readline()
                if not line:
                    break
                commands.append(line.decode().rstrip("\n"))
                if on_command is not None:
                    on_command(index)
                answer = await reply(index, commands[-1])
                if answer is None:
                    break
                writer.write(answer.encode())
                await writer.drain()
        finally:
            await close_quietly(writer)
    return Dialogue(tuple(commands))


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (bounded by the peer timeout)."""
    async with asyncio.timeout(PEER_TIMEOUT_S):
        return await reader.read()


@pytest.fixture
async def server(gate: Gate) -> AsyncIterator[AgiServer]:
    """A started FastAGI server on an ephemeral port, stopped after the test."""
    agi = AgiServer(gate, HOST, 0, header_timeout_s=HEADER_TIMEOUT_S)
    await agi.start()
    yield agi
    await agi.stop()


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The ERROR (or worse) records the server logged so far: a request that blew up."""
    caplog.set_level(logging.INFO, logger="callgate")
    return lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def undone(gate: Gate) -> int:
    """Recorded decisions the store has undone so far (voids run in the background)."""
    return int(getattr(gate.store, "voids", collections.Counter())["undone"])


async def red_list(gate: Gate, *numbers: str, tenant: str = "default") -> None:
    await ListAdmin(gate.config.policy, gate.keyspace, gate.store).add("red", numbers, tenant, "")


# --- check: verdicts ------------------------------------------------------------------


async def test_unlisted_number_is_allowed(server: AgiServer) -> None:
    """An unlisted number gets ALLOW, reason allowed, its E.164 and hangup cause 0."""
    dialogue = await agi_call(server.port, "check?tenant=default")
    assert ALLOWED_0612345678 == dialogue.variables


async def test_the_decision_is_one_variable_set_in_one_command(server: AgiServer) -> None:
    """One round trip after the headers: a single ``SET VARIABLE CALLGATE_DECISION``."""
    dialogue = await agi_call(server.port, "check?tenant=default")
    assert ["CALLGATE_DECISION"] == dialogue.names


@pytest.mark.parametrize("reply", ["200 result=1\n", "HANGUP\n"])
async def test_the_decision_comes_with_the_end_of_the_stream(
    gate: Gate, server: AgiServer, reply: str
) -> None:
    """The gate shuts its side after its one command, before Asterisk replies: Asterisk
    ends the AGI (its channel goes on) without waiting for the gate to close. The reply
    is still read: a 200 is no failure; a HANGUP undoes the ALLOW, as before."""
    async with asyncio.timeout(PEER_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(request_headers("check?tenant=default"))
            await writer.drain()
            command = await reader.readline()
            after_command = await reader.read()  # the end of the stream, with no reply yet
            writer.write(reply.encode())
            await writer.drain()
            for _ in range(100):  # bounded: the server reads the reply, then closes
                if not server.active:
                    break
                await asyncio.sleep(0.01)
        finally:
            await close_quietly(writer)
    for _ in range(100):  # bounded: a void runs in the background
        if reply == "200 result=1\n" or undone(gate):
            break
        await asyncio.sleep(0.02)
    assert (True, b"", 0, 0) == (
        command.startswith(b"SET VARIABLE CALLGATE_DECISION "),
        after_command,
        server.active,
        server.failed,
    )
    assert (reply == "HANGUP\n") == (undone(gate) == 1)


async def test_number_defaults_to_the_extension(server: AgiServer) -> None:
    """Without ``number=`` the dialled extension is checked."""
    dialogue = await agi_call(server.port, "check", extension="06 12 34 56 79")
    assert "+33612345679" == dialogue.variables["CALLGATE_E164"]


async def test_number_in_the_query_overrides_the_extension_and_keeps_its_plus(
    server: AgiServer,
) -> None:
    """``number=+33…`` in the query wins over the extension; the ``+`` is not a space."""
    dialogue = await agi_call(server.port, "check?number=+33612345679", extension="s")
    assert ("ALLOW", "+33612345679") == (
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_E164"],
    )


async def test_number_as_agi_argument_overrides_the_extension(server: AgiServer) -> None:
    """``AGI(agi://…/check,number=+33…)`` arrives as ``agi_arg_1`` and wins."""
    dialogue = await agi_call(
        server.port, "check?tenant=default", extension="s", args=["number=+33612345679"]
    )
    assert "+33612345679" == dialogue.variables["CALLGATE_E164"]


async def test_empty_number_argument_falls_back_to_the_extension(server: AgiServer) -> None:
    """``number=`` with an empty value (an unset ``${ARG1}``) means "not given"."""
    dialogue = await agi_call(server.port, "check", extension="0612345678", args=["number="])
    assert ALLOWED_0612345678 == dialogue.variables


async def test_listed_number_is_blocked(gate: Gate, server: AgiServer) -> None:
    """A number on the tenant's red list gets BLOCK listed:red and cause 21."""
    await red_list(gate, "+33612345678")
    dialogue = await agi_call(server.port, "check?tenant=default")
    expected = {
        "CALLGATE_REASON": "listed:red",
        "CALLGATE_RULE": "list:red",
        "CALLGATE_RETRY_AFTER": "",
        "CALLGATE_E164": "+33612345678",
        "CALLGATE_CAUSE": "21",
        "CALLGATE_RESULT": "BLOCK",
    }
    assert expected == dialogue.variables


async def test_red_list_is_per_tenant(gate: Gate, server: AgiServer) -> None:
    """Another tenant's red list does not block this tenant's call."""
    await red_list(gate, "+33612345678", tenant="acme")
    dialogue = await agi_call(server.port, "check?tenant=default")
    assert "ALLOW" == dialogue.variables["CALLGATE_RESULT"]


async def test_fifth_attempt_within_the_cap_is_deferred(server: AgiServer) -> None:
    """Four attempts to one number pass; the fifth gets DEFER with a retry delay, cause 34."""
    results = [(await agi_call(server.port, "check?tenant=default")).variables for _ in range(5)]
    assert ["ALLOW"] * 4 + ["DEFER"] == [v["CALLGATE_RESULT"] for v in results]
    fifth = results[-1]
    assert ("cap:fr-4-per-30d", "34") == (fifth["CALLGATE_REASON"], fifth["CALLGATE_CAUSE"])
    assert float(fifth["CALLGATE_RETRY_AFTER"]) > 0


async def test_retry_after_is_plain_decimal_seconds(server: AgiServer) -> None:
    """CALLGATE_RETRY_AFTER is plain decimal seconds a dialplan can compare (no exponent)."""
    for _ in range(4):
        await agi_call(server.port, "check?tenant=default")
    fifth = (await agi_call(server.port, "check?tenant=default")).variables
    assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", fifth["CALLGATE_RETRY_AFTER"]) is not None


async def test_concurrent_requests_allow_exactly_the_cap(server: AgiServer) -> None:
    """Ten simultaneous requests for one number with a cap of 4 allow exactly 4."""
    dialogues = await asyncio.gather(
        *(agi_call(server.port, "check?tenant=default") for _ in range(10))
    )
    results = collections.Counter(d.variables["CALLGATE_RESULT"] for d in dialogues)
    assert {"ALLOW": 4, "DEFER": 6} == dict(results)


async def test_manual_call_to_emergency_number_is_allowed(server: AgiServer) -> None:
    """An agent dialling 17 (police) by hand is let through, reason emergency."""
    dialogue = await agi_call(server.port, "check?class=manual", extension="17")
    assert ("ALLOW", "emergency", "0") == (
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_REASON"],
        dialogue.variables["CALLGATE_CAUSE"],
    )


async def test_campaign_call_to_emergency_number_is_blocked(server: AgiServer) -> None:
    """A dialer dialling 17 is refused, reason emergency."""
    dialogue = await agi_call(server.port, "check?class=campaign", extension="17")
    assert ("BLOCK", "emergency", "21") == (
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_REASON"],
        dialogue.variables["CALLGATE_CAUSE"],
    )


# --- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("check?tenant=default&colour=red", "bad_request:colour"),
        ("check?tenant=default&number", "bad_request:number"),
        ("check?tenant=a{b}", "bad_request:tenant"),
        ("check?tenant=default&campaign=spring:2026", "bad_request:campaign"),
        ("check?class=robot", "bad_request:class"),
        ("dial?tenant=default", "bad_request:route"),
        ("", "bad_request:route"),
    ],
)
async def test_bad_request_answers_error_and_the_server_goes_on(
    server: AgiServer, script: str, reason: str
) -> None:
    """A malformed request gets ERROR with a bad_request reason; the next one is served."""
    bad = await agi_call(server.port, script)
    good = await agi_call(server.port, "check?tenant=default")
    assert answer("ERROR", reason) == bad.variables
    assert ALLOWED_0612345678 == good.variables


@pytest.mark.parametrize(
    "lines",
    [
        [("agi_arg_1", "number=0699001122"), ("agi_arg_1", "number=0612345678")],
        [("agi_arg_1", "number=0699001122"), ("agi_arg_1", "number=0699001122")],
        [("agi_network_script", "check"), ("agi_network_script", "optout")],
    ],
)
def test_a_header_given_twice_is_refused(lines: list[tuple[str, str]]) -> None:
    """A repeated header, even with the same value, means a value added header lines of
    its own: the request is refused, whichever copy would have won."""
    with pytest.raises(BadRequest) as refused:
        parse_request([("agi_network_script", "check?tenant=default"), *lines])
    assert f"bad_request:{lines[0][0]}" == refused.value.code


async def test_a_number_that_forges_its_own_argument_line_gets_an_error(
    gate: Gate, server: AgiServer
) -> None:
    """What Asterisk sends for a number holding a newline, a second ``agi_arg_1`` and a
    blank line: ERROR (the dialplan's fail mode), not the forged number's ALLOW."""
    await red_list(gate, "+33699001122")
    forged = "number=0699001122\nagi_arg_1: number=0612345678\n"
    dialogue = await agi_call(server.port, "check", args=[forged, "tenant=default"])
    assert answer("ERROR", "bad_request:agi_arg_1") == dialogue.variables


@pytest.mark.parametrize(
    ("script", "extension", "args"),
    [
        ("check?number=%22%0AEXEC%20Dial", "s", ()),
        ("check?number=%22%0D%0AHANGUP%0A", "s", ()),
        ("check", '06"\\ EXEC Dial(PJSIP/x)', ()),
        ("check?tenant=%22%0AEXEC%20Dial", "0612345678", ()),
        ("check?%22%0AEXEC%20Dial=1", "0612345678", ()),
        ("optout?list=%22%0AEXEC", "0612345678", ()),
        ("check", "s", ['number="\\"; EXEC Dial(PJSIP/x)']),
        ("check", "0612345678", ['class=manual" EXEC Dial']),
        ("check?%7CALLOW%7C=1", "0612345678", ()),
        ("check", "06|ALLOW|x", ()),
    ],
)
async def test_crafted_values_cannot_inject_agi_commands(
    server: AgiServer, script: str, extension: str, args: tuple[str, ...]
) -> None:
    """Quotes, spaces, newlines and ``|`` in a request never reach the wire: only one safe
    SET VARIABLE with its six fields."""
    dialogue = await agi_call(server.port, script, extension=extension, args=args)
    unsafe = [c for c in dialogue.commands if SAFE_COMMAND.match(c) is None]
    assert [] == unsafe
    assert ["CALLGATE_DECISION"] == dialogue.names
    assert "ALLOW" != dialogue.variables["CALLGATE_RESULT"]


# --- peers that misbehave ---------------------------------------------------------------


async def test_bare_tcp_probes_do_not_wedge_the_server(server: AgiServer) -> None:
    """Connect-and-close probes (panoramisk 1.4 spun on them) leave the server responsive."""
    for _ in range(5):
        _, writer = await asyncio.open_connection(HOST, server.port)
        await close_quietly(writer)
    started = time.monotonic()
    dialogue = await agi_call(server.port, "check?tenant=default")
    assert ALLOWED_0612345678 == dialogue.variables
    assert time.monotonic() - started < 2.0


async def test_peer_closing_mid_headers_is_dropped(server: AgiServer) -> None:
    """A peer that closes before the blank line gets nothing; the server goes on."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(request_headers("check")[:60])
    writer.write_eof()
    sent = await read_until_closed(reader)
    await close_quietly(writer)
    assert b"" == sent
    assert ALLOWED_0612345678 == (await agi_call(server.port, "check")).variables


async def test_header_line_longer_than_limit_is_dropped(server: AgiServer) -> None:
    """A header line over 4096 bytes closes the connection unanswered; the server goes on."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"agi_network_script: check?number=" + b"6" * 5000 + b"\n\n")
    sent = await read_until_closed(reader)
    await close_quietly(writer)
    assert b"" == sent
    assert ALLOWED_0612345678 == (await agi_call(server.port, "check")).variables


async def test_endless_header_lines_are_dropped(server: AgiServer) -> None:
    """More than 128 header lines without the blank line closes the connection unanswered."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"".join(f"agi_x{i}: y\n".encode() for i in range(200)))
    sent = await read_until_closed(reader)
    await close_quietly(writer)
    assert b"" == sent
    assert ALLOWED_0612345678 == (await agi_call(server.port, "check")).variables


@pytest.mark.parametrize("blank", [b"", b"\n"], ids=["stalled", "complete"])
async def test_a_header_block_over_32_kib_is_dropped_at_once(gate: Gate, blank: bytes) -> None:
    """100 header lines of 400 bytes (each line within the limits, 40 KB in all) close the
    connection unanswered as soon as they are read, blank line or not: a peer cannot make
    one connection hold half a megabyte until the header deadline (1000 such peers held
    1 GB), nor get a block that size served."""
    agi = AgiServer(gate, HOST, 0, header_timeout_s=PEER_TIMEOUT_S * 2)
    await agi.start()
    try:
        reader, writer = await asyncio.open_connection(HOST, agi.port)
        writer.write(b"".join(b"agi_x%d: " % i + b"y" * 400 + b"\n" for i in range(100)) + blank)
        sent = await read_until_closed(reader)  # PEER_TIMEOUT_S: before the header deadline
        await close_quietly(writer)
        following = await agi_call(agi.port, "check")
    finally:
        await agi.stop()
    assert b"" == sent
    assert ALLOWED_0612345678 == following.variables


async def test_stalled_peer_is_dropped_after_the_header_timeout(server: AgiServer) -> None:
    """A peer that never finishes its headers is closed after header_timeout_s."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"agi_network: yes\nagi_network_script: check\n")
    started = time.monotonic()
    sent = await read_until_closed(reader)
    waited = time.monotonic() - started
    await close_quietly(writer)
    assert b"" == sent
    assert HEADER_TIMEOUT_S * 0.5 <= waited < HEADER_TIMEOUT_S + 2.0
    assert ALLOWED_0612345678 == (await agi_call(server.port, "check")).variables


async def test_stalled_peer_does_not_hold_up_others(gate: Gate) -> None:
    """While one peer stalls in its headers, another request is answered at once."""
    agi = AgiServer(gate, HOST, 0, header_timeout_s=PEER_TIMEOUT_S)
    await agi.start()
    try:
        _, stalled = await asyncio.open_connection(HOST, agi.port)
        stalled.write(b"agi_network: yes\n")
        started = time.monotonic()
        dialogue = await agi_call(agi.port, "check")
        elapsed = time.monotonic() - started
        await close_quietly(stalled)
    finally:
        await agi.stop()
    assert ALLOWED_0612345678 == dialogue.variables
    assert elapsed < PEER_TIMEOUT_S / 2


async def test_a_flood_of_stalled_peers_is_counted_and_logged_once(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """100 peers that stall in their headers are each dropped and counted, with one warning
    in all (then one per interval, with the count since): a flood of bad connections cannot
    flood the log, and the server goes on."""
    caplog.set_level(logging.INFO, logger="callgate")
    agi = AgiServer(gate, HOST, 0, header_timeout_s=HEADER_TIMEOUT_S)
    await agi.start()
    try:
        async with asyncio.timeout(PEER_TIMEOUT_S):
            writers = []
            for _ in range(100):
                _, writer = await asyncio.open_connection(HOST, agi.port)
                writer.write(b"agi_network: yes\n")
                writers.append(writer)
            for _ in range(200):  # the header deadline drops them all
                if not agi.active:
                    break
                await asyncio.sleep(0.02)
            for writer in writers:
                await close_quietly(writer)
        following = await agi_call(agi.port, "check")
    finally:
        await agi.stop()
    drops = [r.getMessage() for r in caplog.records if "dropped a request" in r.getMessage()]
    assert (1, 100) == (len(drops), getattr(agi, "dropped", None))
    assert ALLOWED_0612345678 == following.variables


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (RST), as the kernel of a killed peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("when", ["in its headers", "after the command"])
async def test_a_peer_that_resets_is_dropped_and_the_server_goes_on(
    server: AgiServer, errors_logged: Callable[[], list[str]], when: str
) -> None:
    """A connection reset part-way through the headers (waited for, or already waiting in
    the socket), or once the command is out, ends that request only: nothing blows up,
    nothing is counted as refused by Asterisk, and the next request is served."""
    loop = asyncio.get_running_loop()
    for pause_s in (0.0, 0.05):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, server.port))
        if when == "in its headers":
            await loop.sock_sendall(sock, request_headers("check")[:60])
        else:
            await loop.sock_sendall(sock, request_headers("check"))
            command = b""
            while not command.endswith(b"\n"):  # bounded by the test's timeout
                command += await loop.sock_recv(sock, 4096)
            assert command.startswith(b"SET VARIABLE CALLGATE_DECISION")
        await asyncio.sleep(pause_s)
        reset(sock)
    following = await agi_call(server.port, "check")
    assert [] == errors_logged()
    assert 0 == server.failed
    assert ALLOWED_0612345678 == following.variables


async def test_hangup_after_first_command_ends_the_request_quietly(
    server: AgiServer, errors_logged: Callable[[], list[str]]
) -> None:
    """A channel that answers HANGUP gets no further command, nothing blows up, and the
    server serves the next request."""

    async def hang_up(_index: int, _command: str) -> str | None:
        return "HANGUP\n"

    dialogue = await agi_call(server.port, "check", reply=hang_up)
    following = await agi_call(server.port, "check")
    assert 1 == len(dialogue.commands)
    assert [] == errors_logged()
    assert ALLOWED_0612345678 == following.variables


async def test_result_hangup_after_first_command_ends_the_request_quietly(
    server: AgiServer, errors_logged: Callable[[], list[str]]
) -> None:
    """``200 result=-1 (hangup)`` ends the dialogue like HANGUP does."""

    async def hang_up(_index: int, _command: str) -> str | None:
        return "200 result=-1 (hangup)\n"

    dialogue = await agi_call(server.port, "check", reply=hang_up)
    following = await agi_call(server.port, "check")
    assert (1, []) == (len(dialogue.commands), errors_logged())
    assert ALLOWED_0612345678 == following.variables


async def test_peer_closing_after_first_command_ends_the_request_quietly(
    server: AgiServer, errors_logged: Callable[[], list[str]]
) -> None:
    """A channel that closes the socket mid-dialogue is a hangup, not a server error."""

    async def close(_index: int, _command: str) -> str | None:
        return None

    dialogue = await agi_call(server.port, "check", reply=close)
    following = await agi_call(server.port, "check")
    assert ALLOWED_0612345678 == following.variables
    assert 1 == len(dialogue.commands)
    assert [] == errors_logged()


async def test_peer_closing_after_first_command_does_not_stop_the_server(
    server: AgiServer,
) -> None:
    """Whatever is logged, a peer that vanishes mid-dialogue leaves the server serving."""

    async def close(_index: int, _command: str) -> str | None:
        return None

    for _ in range(3):
        await agi_call(server.port, "check", reply=close)
    assert ALLOWED_0612345678 == (await agi_call(server.port, "check")).variables


# --- optout -----------------------------------------------------------------------------


async def test_optout_lists_the_number_for_the_very_next_check(server: AgiServer) -> None:
    """``optout`` answers OK, and the next check of that number is BLOCK listed:red."""
    optout = await agi_call(server.port, "optout?tenant=default", extension="0612345678")
    check = await agi_call(server.port, "check?tenant=default", extension="+33612345678")
    assert answer("OK", "listed:red") == optout.variables
    assert ("BLOCK", "listed:red") == (
        check.variables["CALLGATE_RESULT"],
        check.variables["CALLGATE_REASON"],
    )


async def test_optout_of_an_emergency_number_is_refused(server: AgiServer) -> None:
    """17 can never go on a block list: optout answers ERROR and 17 stays dialable by hand."""
    optout = await agi_call(server.port, "optout?tenant=default", extension="17")
    manual = await agi_call(server.port, "check?class=manual", extension="17")
    assert answer("ERROR", "optout_failed:ProtectedNumberError") == optout.variables
    assert "ALLOW" == manual.variables["CALLGATE_RESULT"]


async def test_a_local_number_with_a_phone_context_is_never_read_as_another(
    server: AgiServer,
) -> None:
    """Through the door, tel:0612345678;phone-context=+44 is refused: optout answers ERROR,
    a check is BLOCK invalid_number, and the French +33612345678 is put on no list."""
    number = "number=tel%3A0612345678%3Bphone-context%3D%2B44"
    optout = await agi_call(server.port, f"optout?tenant=default&{number}")
    check = await agi_call(server.port, f"check?tenant=default&{number}")
    french = await agi_call(server.port, "check?tenant=default", extension="+33612345678")
    assert answer("ERROR", "optout_failed:NumberError") == optout.variables
    assert ("BLOCK", "invalid_number") == (
        check.variables["CALLGATE_RESULT"],
        check.variables["CALLGATE_REASON"],
    )
    assert ALLOWED_0612345678 == french.variables


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("optout?list=customers", "optout_failed:InputError"),
        ("optout?list=nosuch", "optout_failed:InputError"),
        ("optout?list=camp", "optout_failed:InputError"),
    ],
)
async def test_optout_to_a_list_it_cannot_use_is_refused(
    server: AgiServer, script: str, reason: str
) -> None:
    """An allow list, an unknown list, or a campaign list without campaign= is refused."""
    optout = await agi_call(server.port, script)
    assert answer("ERROR", reason) == optout.variables


# --- store down -------------------------------------------------------------------------


@pytest.fixture
async def server_without_store() -> AsyncIterator[AgiServer]:
    """A server whose Redis is a closed port."""
    store = Store("redis://127.0.0.1:1", deadline_s=0.05)
    agi = AgiServer(Gate(make_config(), store), HOST, 0, header_timeout_s=HEADER_TIMEOUT_S)
    await agi.start()
    yield agi
    await agi.stop()
    await store.close()


async def test_store_down_defers_promptly(server_without_store: AgiServer) -> None:
    """With Redis unreachable a campaign call gets DEFER store_unavailable, within a second."""
    started = time.monotonic()
    dialogue = await agi_call(server_without_store.port, "check?tenant=default")
    elapsed = time.monotonic() - started
    expected = {
        "CALLGATE_REASON": "store_unavailable",
        "CALLGATE_RULE": "fail_mode",
        "CALLGATE_RETRY_AFTER": "60",
        "CALLGATE_E164": "+33612345678",
        "CALLGATE_CAUSE": "34",
        "CALLGATE_RESULT": "DEFER",
    }
    assert expected == dialogue.variables
    assert elapsed < 1.0


async def test_store_down_still_lets_an_agent_dial_emergency(
    server_without_store: AgiServer,
) -> None:
    """Emergency decisions never touch Redis: 17 by hand is ALLOW even with Redis down."""
    dialogue = await agi_call(server_without_store.port, "check?class=manual", extension="17")
    assert "ALLOW" == dialogue.variables["CALLGATE_RESULT"]


# --- lifecycle --------------------------------------------------------------------------


async def test_stop_waits_for_the_request_in_flight(gate: Gate) -> None:
    """stop() returns only after a slow in-flight dialogue has received every variable,
    and the port no longer accepts connections."""
    agi = AgiServer(gate, HOST, 0, header_timeout_s=HEADER_TIMEOUT_S)
    await agi.start()
    port = agi.port
    first_command = asyncio.Event()
    received: list[int] = []

    def seen(index: int) -> None:
        received.append(index)
        first_command.set()

    async def slow_first(index: int, _command: str) -> str | None:
        if index == 0:
            await asyncio.sleep(0.3)
        return "200 result=1\n"

    call = asyncio.create_task(agi_call(port, "check", reply=slow_first, on_command=seen))
    try:
        async with asyncio.timeout(PEER_TIMEOUT_S):
            await first_command.wait()
            await agi.stop()
            received_when_stopped = len(received)
            dialogue = await call
        assert 1 == received_when_stopped
        assert ALLOWED_0612345678 == dialogue.variables
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, port)
    finally:
        await agi.stop()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call


async def test_connections_accepted_just_before_stop_are_drained(gate: Gate) -> None:
    """stop() right after a burst of connects: every request the server accepted is
    answered before stop() returns (a peer it did not accept is refused, not left hanging)."""
    agi = AgiServer(gate, HOST, 0, header_timeout_s=PEER_TIMEOUT_S)
    await agi.start()
    port = agi.port
    stopped = asyncio.Event()
    answered_after_stop: list[int] = []
    answered: list[int] = []

    async def peer(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request_headers("check?tenant=default", extension=f"06123456{index:02d}"))
            line = await reader.readline()
            if line:
                (answered_after_stop if stopped.is_set() else answered).append(index)
                writer.write(b"200 result=1\n")
                await reader.read()
        finally:
            await close_quietly(writer)

    async with asyncio.timeout(PEER_TIMEOUT_S * 2):
        peers = [asyncio.create_task(peer(i)) for i in range(40)]
        for _ in range(3):
            await asyncio.sleep(0)
        await agi.stop()
        stopped.set()
        await asyncio.gather(*peers, return_exceptions=True)
    assert [] == answered_after_stop
    assert answered


@pytest.mark.parametrize("callerid", ["unknown", ""])
async def test_unknown_caller_id_counts_as_masked(
    redis_url: str, tmp_path: Path, callerid: str
) -> None:
    """Asterisk's ``agi_callerid: unknown`` (or none) is a masked caller ID: a pack that
    forbids masked numbers blocks the call with caller_id:masked."""
    (tmp_path / "cid.toml").write_text(
        '[pack]\nid = "cid"\nversion = "1"\nregions = ["FR"]\n\n'
        '[[caller_id]]\nid = "cid-no-masked"\nsource = "test"\n'
    )
    config = make_config(
        {"gate": {"default_region": "FR", "packs": ["cid"], "packs_dir": str(tmp_path)}}
    )
    store = Store(redis_url, deadline_s=1.0)
    agi = AgiServer(Gate(config, store), HOST, 0, header_timeout_s=HEADER_TIMEOUT_S)
    await agi.start()
    try:
        dialogue = await agi_call(agi.port, "check?tenant=default", callerid=callerid)
    finally:
        await agi.stop()
        await store.close()
    assert ("BLOCK", "caller_id:masked") == (
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_REASON"],
    )


@pytest.mark.parametrize("extension", ["061234567²", "+3361234567²", "06①2345678"])
async def test_a_number_with_digits_that_are_not_decimal_is_blocked_as_invalid(
    server: AgiServer, errors_logged: Callable[[], list[str]], extension: str
) -> None:
    """Digits such as "²" (int() refuses them) give BLOCK invalid_number, never a traceback."""
    dialogue = await agi_call(server.port, "check?tenant=default", extension=extension)
    assert ("BLOCK", "invalid_number", []) == (
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_REASON"],
        errors_logged(),
    )


# --- who may connect --------------------------------------------------------------------


async def test_a_peer_outside_the_allow_list_is_closed_unserved(gate: Gate) -> None:
    """allow = 10.0.0.0/8: a peer on 127.0.0.1 gets nothing, is counted as refused, and
    nothing is decided."""
    allow = [ipaddress.ip_network("10.0.0.0/8")]
    agi = AgiServer(gate, HOST, 0, header_timeout_s=HEADER_TIMEOUT_S, allow=allow)
    await agi.start()
    try:
        dialogue = await agi_call(agi.port, "optout?tenant=default")
    finally:
        await agi.stop()
    assert ((), 1, 0) == (dialogue.commands, agi.refused, agi.accepted)
    assert 0 == await ListAdmin.of(gate).count("red", "default", "")


async def test_a_peer_in_the_allow_list_is_served(gate: Gate) -> None:
    """allow = [10.0.0.0/8, 127.0.0.1]: the loopback peer is served as usual."""
    allow = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32")]
    agi = AgiServer(gate, HOST, 0, header_timeout_s=HEADER_TIMEOUT_S, allow=allow)
    await agi.start()
    try:
        dialogue = await agi_call(agi.port, "check?tenant=default")
    finally:
        await agi.stop()
    assert (ALLOWED_0612345678, 0) == (dialogue.variables, agi.refused)


async def test_a_non_loopback_listener_without_allow_list_does_not_start(gate: Gate) -> None:
    """Whatever built the config, the server refuses to listen on 0.0.0.0 unrestricted."""
    agi = AgiServer(gate, "0.0.0.0", 0, header_timeout_s=HEADER_TIMEOUT_S)
    with pytest.raises(ConfigError, match=r"without agi\.allow"):
        await agi.start()


# --- hostile replies and headers ----------------------------------------------------------

USAGE_REPLY = (
    "520-Invalid command syntax.  Proper usage follows:\n"
    " Usage: SET VARIABLE <variablename> <value>\n"
    "200 result=1 (a usage line that looks like a reply)\n"
    "520 End of proper usage.\n"
)


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        (USAGE_REPLY, "520-Invalid command syntax"),
        ("510 Invalid or unknown command\n", "510 Invalid or unknown command"),
        ("200 result=-1\n", "refused CALLGATE_DECISION: 200 result=-1"),
        ("200 result=0\n", "refused CALLGATE_DECISION: 200 result=0"),
        ("511 Command Not Permitted on a dead channel or intercept routine\n", "511 Command"),
        ("200 result=1 " + "x" * 5000 + "\n", "unreadable reply"),
        ("NOT AN AGI REPLY\n", "unreadable reply"),
    ],
)
async def test_an_answer_asterisk_refuses_or_garbles_is_logged_and_counted(
    server: AgiServer,
    caplog: pytest.LogCaptureFixture,
    errors_logged: Callable[[], list[str]],
    answer: str,
    logged: str,
) -> None:
    """A refused SET VARIABLE (510, 511, a multi-line 520 read to its end, a 200 whose
    result is not 1), a reply line over 4 KiB or a garbled one: one warning, one failed
    request, no error, the server goes on."""

    async def refuse(_index: int, _command: str) -> str | None:
        return answer

    await agi_call(server.port, "check?tenant=default", reply=refuse)
    following = await agi_call(server.port, "check?tenant=default", extension="0612345679")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (1, [], "ALLOW") == (
        server.failed,
        errors_logged(),
        following.variables["CALLGATE_RESULT"],
    )
    assert 1 == len([w for w in warnings if logged in w]), warnings


class Channels:
    """A decision observer: the channel names decisions were made for."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def decided(self, observed: Observed) -> None:
        self.names.append(observed.attempt.channel)

    def undone(self, evaluation: Evaluation) -> None:
        pass

    def store_failed(self, error: StoreError) -> None:
        pass


@pytest.mark.parametrize(
    "channel",
    [
        "PJSIP/x\r2026-01-01 ERROR callgate: forged",
        "PJSIP/x\x1b[2J\x1b[31mred",
        "PJSIP/x\u2028forged",
        "PJSIP/x\x85forged",
        "PJSIP/x\x00nul",
    ],
)
async def test_control_characters_in_headers_cannot_forge_log_lines(
    gate: Gate, server: AgiServer, caplog: pytest.LogCaptureFixture, channel: str
) -> None:
    """A CR, an escape sequence or a line separator in agi_channel is escaped before it is
    logged or kept with the decision."""
    caplog.set_level(logging.INFO, logger="callgate")
    channels = Channels()
    gate.observers.append(channels)

    async def hang_up(_index: int, _command: str) -> str | None:
        return "HANGUP\n"  # the server then logs the channel name

    await agi_call(server.port, "check?tenant=default", reply=hang_up, channel=channel)
    messages = [r.getMessage() for r in caplog.records]
    assert any("went away" in m for m in messages)
    assert [] == [m for m in [*messages, *channels.names] if CONTROL.search(m)]


CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


async def test_control_characters_in_a_caller_id_parameter_are_escaped_before_kept(
    gate: Gate, server: AgiServer
) -> None:
    """A percent-encoded ``caller_id`` (decoded after the headers were escaped) reaches the
    audit trail escaped, as the ``agi_callerid`` header does."""
    await agi_call(server.port, "check?tenant=default&caller_id=0102%1B%5B2J%0D%E2%80%A8x")
    entries = [r async for r in read_range(gate.store.admin_client, "callgate")]
    assert ["0102\\x1b[2J\\r\\u2028x"] == [e["caller_id"] for e in entries]


async def test_an_allow_the_channel_hung_up_before_receiving_is_undone(
    gate: Gate, server: AgiServer
) -> None:
    """Five channels hang up (HANGUP) before their ALLOW reaches them: no call went out, so
    none is counted or kept as an ALLOW in the audit trail; with the cap of 4 attempts in
    30 days, the next call is still allowed."""

    async def hang_up(_index: int, _command: str) -> str | None:
        return "HANGUP\n"

    for _ in range(5):
        await agi_call(server.port, "check", reply=hang_up)
    for _ in range(100):  # bounded: the voids run in the background
        if undone(gate) >= 5:
            break
        await asyncio.sleep(0.02)
    entries = [r async for r in read_range(gate.store.admin_client, "callgate")]
    following = await agi_call(server.port, "check")
    assert [] == [e["verdict"] for e in entries]
    assert ALLOWED_0612345678 == following.variables
