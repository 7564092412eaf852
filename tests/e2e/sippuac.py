"""A SIPp UAC for the end-to-end tests and bench/e2e.py: one INVITE per CSV line.

The scenario sends INVITE sip:NUMBER@asterisk (NUMBER from a SEQUENTIAL ``-inf`` CSV),
accepts 200 (ACK, short pause, BYE) or a final rejection (ACK), and logs one line per
call, ``RESULT <number> <code>``, to its ``-trace_logs`` file, so a test can map every
number to its final response. The 200 carries ``rtd="true"``: with ``-trace_rtt`` SIPp
writes each answered call's INVITE→200 time (post-dial delay) to ``*_rtt.csv``.

Depends only on the standard library and Debian's ``sip-tester`` (/usr/bin/sipp 3.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: final responses the scenario accepts (and logs) instead of 200
REJECT_CODES = (403, 404, 480, 486, 488, 500, 503, 603)

_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="callgate e2e uac">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
@REJECTS@
  <recv response="200" rtd="true">
    <action><log message="RESULT [field0] 200"/></action>
  </recv>
  <send>
    <![CDATA[
      ACK sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <pause milliseconds="@HOLD_MS@"/>
  <send retrans="500">
    <![CDATA[
      BYE sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>
  <nop next="9"/>
  <label id="1"/>
  <send>
    <![CDATA[
      ACK sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <label id="9"/>
</scenario>
"""


def scenario_xml(hold_ms: int = 200) -> str:
    """The UAC scenario: 200 → ACK, hold ``hold_ms``, BYE; any REJECT_CODES → ACK."""
    rejects = "\n".join(
        f'  <recv response="{code}" optional="true" next="1">\n'
        f'    <action><log message="RESULT [field0] {code}"/></action>\n'
        "  </recv>"
        for code in REJECT_CODES
    )
    return _SCENARIO.replace("@REJECTS@", rejects).replace("@HOLD_MS@", str(hold_ms))


@dataclass(frozen=True, slots=True)
class SippRun:
    """What one SIPp run left behind."""

    exit_code: int
    #: number -> final response code, one entry per call that got a final response
    results: dict[str, int]
    #: INVITE→200 times of the answered calls, in ms (SIPp's rtd: whole ms, ~4 ms ticks)
    rtt_ms: list[float]
    #: with ``trace_msg``: INVITE sent → final response received, per call, in ms (µs
    #: resolution, from SIPp's message trace timestamps), as (status code, delay) by Call-ID
    final_ms: dict[str, tuple[int, float]]
    errors: str
    output: str


def _free_udp_port(span: int = 1) -> int:
    """A port ``p`` with ``p`` … ``p + span - 1`` free on 127.0.0.1 (UDP and TCP) now.

    SIPp's media port (``-mp``) takes four in a row (RTP and RTCP, audio and video)."""
    for _ in range(50):
        with (
            contextlib.ExitStack() as held,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                for offset in range(span):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        if (offset, kind) == (0, socket.SOCK_DGRAM):
                            continue
                        probe = held.enter_context(socket.socket(socket.AF_INET, kind))
                        probe.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no {span} free UDP ports in a row on 127.0.0.1 after 50 tries")


# SIPp's exit status -2 (254): "fatal error binding a socket" (its -p, -mp or -cp port was
# taken between our probe and its bind); nothing was sent, so it is run again, new ports.
_SIPP_BIND_FAILED = 254
_BIND_TRIES = 3


def _sipp(
    sipp: str,
    sip_port: int,
    scenario: Path,
    injection: Path,
    workdir: Path,
    calls: int,
    limit: int,
    rate_cps: float,
    timeout_s: float,
    trace_msg: bool,
) -> int:
    """Run SIPp once (bounded: killed ``timeout_s`` + 15 s later at most); its exit status."""
    command = [
        sipp,
        f"127.0.0.1:{sip_port}",
        "-sf", str(scenario),
        "-inf", str(injection),
        "-i", "127.0.0.1",
        "-p", str(_free_udp_port()),
        "-mp", str(_free_udp_port(span=4)),
        "-cp", str(_free_udp_port()),
        "-m", str(calls),
        "-l", str(limit),
        "-r", f"{rate_cps:g}",
        "-recv_timeout", "10000",
        "-timeout", f"{timeout_s:g}s",
        "-timeout_error",
        "-nostdin",
        "-trace_logs",
        "-trace_err",
        "-trace_rtt",
        "-rtt_freq", "1",
        *(["-trace_msg"] if trace_msg else []),
    ]  # fmt: skip
    with open(workdir / "sipp.out", "ab") as out:
        try:
            done = subprocess.run(
                command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                timeout=timeout_s + 15.0, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:  # subprocess.run killed it
            return -1
    return done.returncode


def run_sipp(
    sip_port: int,
    numbers: Iterable[str],
    workdir: Path,
    *,
    rate_cps: float,
    limit: int = 200,
    hold_ms: int = 200,
    timeout_s: float = 60.0,
    trace_msg: bool = False,
) -> SippRun:
    """Call every number once at ``rate_cps`` (at most ``limit`` calls at a time), in
    ``workdir``; SIPp gets ``-timeout`` and is killed ``timeout_s`` + 15 s later at most.
    ``trace_msg`` also records every message (``-trace_msg``) to time the final responses."""
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp missing: scripts/asterisk-sandbox installs Debian's sip-tester")
    workdir.mkdir(parents=True, exist_ok=True)
    listed = list(numbers)
    scenario = workdir / "uac.xml"
    scenario.write_text(scenario_xml(hold_ms))
    injection = workdir / "numbers.csv"
    injection.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in listed))
    (workdir / "sipp.out").write_bytes(b"")  # each try's output appended
    for _ in range(_BIND_TRIES):
        code = _sipp(sipp, sip_port, scenario, injection, workdir, len(listed), limit, rate_cps,
                     timeout_s, trace_msg)  # fmt: skip
        if code != _SIPP_BIND_FAILED:
            break
        for trace in workdir.glob("*_*.*"):  # the failed try's (empty) traces
            if trace.suffix in (".log", ".csv"):
                trace.unlink()
    logs = "".join(path.read_text() for path in workdir.glob("*_logs.log"))
    errors = "".join(path.read_text() for path in workdir.glob("*_errors.log"))
    results = {number: int(status) for number, status in re.findall(r"RESULT (\d+) (\d+)", logs)}
    rtt_ms: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines():
            fields = line.split(";")
            if len(fields) >= 2 and re.fullmatch(r"\d+(\.\d+)?", fields[1]):
                rtt_ms.append(float(fields[1]))
    final_ms: dict[str, tuple[int, float]] = {}
    for path in workdir.glob("*_messages.log"):
        final_ms.update(final_response_delays_ms(path.read_text(errors="replace")))
    output = (workdir / "sipp.out").read_text(errors="replace")
    return SippRun(code, results, rtt_ms, final_ms, errors, output)


_TRACE_SPLIT = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6})\s*$", re.M)
_CALL_ID = re.compile(r"^(?:Call-ID|i):\s*(\S+)", re.M | re.I)
_CSEQ = re.compile(r"^CSeq:\s*\d+\s+(\w+)", re.M | re.I)


def final_response_delays_ms(trace: str) -> dict[str, tuple[int, float]]:
    """From a ``-trace_msg`` file: Call-ID -> (final status, ms from the first INVITE sent
    to the first final response received)."""
    parts = _TRACE_SPLIT.split(trace)
    invite_sent: dict[str, float] = {}
    final: dict[str, tuple[int, float]] = {}
    for stamp, body in zip(parts[1::2], parts[2::2], strict=True):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        head, _, message = body.strip().partition("\n")
        message = message.lstrip()
        call_id, cseq = _CALL_ID.search(message), _CSEQ.search(message)
        if call_id is None or cseq is None or cseq[1].upper() != "INVITE":
            continue
        first = message.split("\n", 1)[0]
        if "sent" in head and first.startswith("INVITE "):
            invite_sent.setdefault(call_id[1], at)
        elif "received" in head and (status := re.match(r"SIP/2\.0 (\d{3})", first)):
            code = int(status[1])
            if code >= 200 and call_id[1] in invite_sent and call_id[1] not in final:
                final[call_id[1]] = (code, (at - invite_sent[call_id[1]]) * 1000.0)
    return final


async def rejects_exactly_the_listed(
    callgate: Any, asterisk: Any, workdir: Path, calls: int = 500, rate_cps: float = 50
) -> None:
    """``calls`` SIPp calls at ``rate_cps``, 10 % red-listed through ``callgate list import``:
    exactly the listed get 403, all others 200 and reach the answering context (the gated
    context logs ``CALLGATE-E2E reached id=… number=…``)."""
    numbers = [f"061200{i:04d}" for i in range(calls)]  # distinct: the cap never bites
    listed = set(numbers[::10])
    red = workdir / "red.txt"
    red.write_text("".join(f"{n}\n" for n in sorted(listed)))
    imported = await asyncio.to_thread(callgate.cli, "list", "import", "red", str(red))
    assert f"{len(listed)} imported, 0 duplicates, 0 rejected" == imported.stdout.strip()

    run = await asyncio.to_thread(
        run_sipp, asterisk.sip_port, numbers, workdir / "sipp", rate_cps=rate_cps
    )
    assert 0 == run.exit_code, f"{run.output[-1500:]}\n{run.errors[-1500:]}"
    expected = {n: 403 if n in listed else 200 for n in numbers}
    assert expected == run.results
    reached = set(re.findall(r"CALLGATE-E2E reached id=\S+ number=(\d+)", asterisk.read_log()))
    assert set(numbers) - listed == reached
