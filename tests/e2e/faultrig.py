"""The rig of tests/e2e/test_faults.py: SIPp load through both doors while one fault is
injected, and the invariants read back from what each component left behind.

One rig is one real Asterisk (sandbox.py), one real ``callgate run`` (gateproc.py) with its
embedded Redis (append-only file; ``callgate run`` supervises it and starts it again if it
dies) and the Stasis door (``[ari] on_refuse = "continue"``: every refused channel goes
back to the dialplan, so its ``CALLGATE_REASON`` is logged), and SIPp (sippuac.py). SIP
calls to ``0…`` go through ``GoSub(callgate-agi,…)`` (the FastAGI door), to ``8…`` through
``GoSub(callgate-stasis,…)`` (the Stasis door, the number without its ``8``), as in
bench/e2e.py. A hangup handler logs one ``FAULTS`` line per call: the door, the number,
whether it reached the answering context, ``CALLGATE_RESULT`` and ``CALLGATE_REASON``
(``store_unavailable`` from the gate, ``gate_unavailable`` from the dialplan's fail mode).

What a run measures (``Row``), from independent sources:

- calls, answered (SIPp got 200), refused (403/503), other (no final response, e.g. an
  INVITE that Asterisk never saw while it restarted): SIPp's per-call log;
- fail mode: calls whose ``FAULTS`` line carries ``store_unavailable`` or
  ``gate_unavailable`` (Asterisk's log);
- answered to listed: a 200 for a number red-listed before the run, or for one whose
  opt-out was acknowledged before SIPp was due to dial it (must be 0);
- audit: the ALLOW entries of ``callgate audit export`` (a separate process) against the
  answered calls, number by number (keyed tags): ALLOW entries with no answered call, and
  answered calls with no ALLOW entry (both must be 0);
- channels left in Stasis after the run (ARI ``GET /channels``; must be 0);
- acknowledged opt-outs not enforced: every number whose opt-out (FastAGI ``optout``
  route or ``POST /v1/lists/red/add``) was acknowledged during the run is called once more
  after it, through its door; anything but a 403 with ``listed:red`` counts (must be 0).

Depends on the standard library, aiohttp, the gate package (config, keyed tags) and the
e2e helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from gateproc import GateProcess
from sandbox import AsteriskSandbox
from sippuac import SippRun, run_sipp

from gate.config.loader import load_config
from gate.core.keys import Keyspace
from gate.core.numbers import Destination, classify

DIALPLAN = """
#include callgate.conf

[from-sipp]
exten => _0X.,1,Goto(agi-gated,${EXTEN},1)
exten => _8X.,1,Goto(stasis-gated,${EXTEN:1},1)

[agi-gated]
exten => _X.,1,Set(CHANNEL(hangup_handler_push)=faults-hangup,s,1(agi,${EXTEN}))
 same => n,GoSub(callgate-agi,s,1(${EXTEN},default,faults,campaign))
 same => n,Goto(reached,${EXTEN},1)

[stasis-gated]
exten => _X.,1,Set(CHANNEL(hangup_handler_push)=faults-hangup,s,1(stasis,${EXTEN}))
 same => n,GoSub(callgate-stasis,s,1(${EXTEN},default,faults,campaign))
 same => n,Goto(reached,${EXTEN},1)

[reached]
exten => _X.,1,Set(FAULTS_REACHED=1)
 same => n,Answer()
 same => n,Wait(5)
 same => n,Hangup()

[faults-hangup]
exten => s,1,Log(NOTICE,FAULTS door=${ARG1} number=${ARG2} reached=${FAULTS_REACHED} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON} cause=${HANGUPCAUSE})
 same => n,Return()
"""  # noqa: E501 (dialplan lines cannot be wrapped)

_LINE = re.compile(
    r"\] NOTICE\[.*?: FAULTS door=(?P<door>\w+) number=(?P<number>\d+) reached=(?P<reached>\d*) "
    r"result=(?P<result>\w*) reason=(?P<reason>[\w:.-]*) cause=(?P<cause>\d*)"
)
FAIL_MODE_REASONS = frozenset({"store_unavailable", "gate_unavailable"})
AGI_PREFIX, STASIS_PREFIX = "0", "8"


@dataclass(frozen=True, slots=True)
class CallLine:
    """One call as the hangup handler logged it."""

    door: str
    reached: bool
    result: str
    reason: str
    cause: str


def call_lines(log: str) -> dict[str, list[CallLine]]:
    """Dialled number (with its door prefix) -> the ``FAULTS`` lines of its calls."""
    found: dict[str, list[CallLine]] = {}
    for m in _LINE.finditer(log):
        dialled = (STASIS_PREFIX if m["door"] == "stasis" else "") + m["number"]
        line = CallLine(m["door"], m["reached"] == "1", m["result"], m["reason"], m["cause"])
        found.setdefault(dialled, []).append(line)
    return found


def plan_numbers(calls: int, series: int) -> list[str]:
    """``calls`` distinct dialled numbers (French mobiles), alternately through the FastAGI
    door (``061…``) and the Stasis door (``8`` + ``078…``); ``series`` (1-9) keeps runs
    apart."""
    out = []
    for i in range(calls):
        body = f"{series}{i // 2:06d}"
        out.append(f"061{body}" if i % 2 == 0 else f"{STASIS_PREFIX}078{body}")
    return out


def callee(dialled: str) -> str:
    """The number the gate sees for a dialled number (the Stasis door's without its 8)."""
    return dialled[1:] if dialled.startswith(STASIS_PREFIX) else dialled


# -- the processes ----------------------------------------------------------------------------


def redis_pid(state_dir: Path) -> int | None:
    """The embedded Redis's PID, as its data directory's lock file says."""
    with contextlib.suppress(OSError):
        found = re.search(r"server pid (\d+)", (state_dir / "redis" / "redis.lock").read_text())
        if found:
            return int(found[1])
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_pid(pid: int | None, within_s: float = 10.0) -> None:
    """SIGCONT (it may be stopped), SIGTERM, then SIGKILL after ``within_s``: by PID."""
    if pid is None or not alive(pid):
        return
    for signum in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + within_s
    for _ in range(int(within_s / 0.05) + 1):
        if not alive(pid) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Rig:
    """Asterisk, the gate (embedded Redis) and where they keep their state."""

    asterisk: AsteriskSandbox
    gate: GateProcess
    state_dir: Path
    workdir: Path

    def redis_pid(self) -> int | None:
        return redis_pid(self.state_dir)

    def http_port(self) -> int:
        """The gate's current HTTP port (a restarted gate listens on a new one)."""
        found = re.findall(r"HTTP on http://127\.0\.0\.1:(\d+)", self.gate.read_log())
        if not found:
            raise AssertionError(f"no HTTP line in the gate's log\n{self.gate.log_tail()}")
        return int(found[-1])

    def keyspace(self) -> Keyspace:
        config = load_config(self.gate.config_path, create_secret=False)
        return Keyspace(config.redis.namespace, config.secret if config.hash_numbers else None)

    def token(self, dialled: str, keyspace: Keyspace) -> str:
        """The keyed tag under which the audit trail names ``dialled``'s callee."""
        destination = classify(callee(dialled), "FR")
        assert isinstance(destination, Destination), dialled
        return keyspace.token(destination.e164)

    async def wait_ready(self, within_s: float = 20.0) -> None:
        """Until ``/readyz`` answers 200 (Redis answers, ARI connected); bounded."""
        deadline = time.monotonic() + within_s
        last = ""
        for _ in range(int(within_s / 0.1) + 1):
            try:
                url = f"http://127.0.0.1:{self.http_port()}/readyz"
                timeout = aiohttp.ClientTimeout(total=2)
                async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as got:
                    last = f"{got.status} {await got.text()}"
                    if got.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(f"/readyz not 200 within {within_s} s: {last}")

    async def in_stasis(self) -> int:
        """Channels sitting in ``Stasis()`` now (ARI ``GET /channels``)."""
        channels = await self.asterisk.list_channels()
        return sum(
            str((c.get("dialplan") or {}).get("app_name", "")).lower() == "stasis" for c in channels
        )

    async def left_in_stasis(self, within_s: float = 5.0) -> int:
        """Channels still in Stasis after up to ``within_s`` (a sweep may be under way)."""
        count = await self.in_stasis()
        for _ in range(int(within_s / 0.1)):
            if count == 0:
                break
            await asyncio.sleep(0.1)
            count = await self.in_stasis()
        return count

    def allow_entries(self) -> Counter[str]:
        """Keyed tag -> ALLOW entries in the audit trail (``callgate audit export``)."""
        exported = self.gate.cli("audit", "export", "--format", "jsonl", timeout_s=120)
        tokens: Counter[str] = Counter()
        for line in exported.stdout.splitlines():
            entry = json.loads(line)
            if entry.get("verdict") == "ALLOW":
                tokens[entry.get("number", "")] += 1
        return tokens


# -- opt-outs -----------------------------------------------------------------------------


OPTOUT_TIMEOUT_S = 5.0


async def agi_optout(port: int, number: str) -> bool:
    """The FastAGI ``optout`` route as Asterisk calls it; True if acknowledged (``OK``)."""
    headers = (
        "agi_network: yes\n"
        "agi_network_script: optout\n"
        f"agi_request: agi://127.0.0.1:{port}/optout\n"
        "agi_channel: Local/optout@faults-0001;2\n"
        f"agi_extension: {number}\n"
        f"agi_arg_1: number={number}\n"
        "agi_arg_2: tenant=default\n\n"
    )
    try:
        async with asyncio.timeout(OPTOUT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(headers.encode())
                await writer.drain()
                command = (await reader.readline()).decode()
                writer.write(b"200 result=1\n")
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return command.startswith('SET VARIABLE CALLGATE_DECISION "OK|')


async def api_optout(port: int, number: str) -> bool:
    """``POST /v1/lists/red/add``; True if acknowledged (200)."""
    timeout = aiohttp.ClientTimeout(total=OPTOUT_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(
                f"http://127.0.0.1:{port}/v1/lists/red/add", json={"numbers": [number]}
            ) as got,
        ):
            return got.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


@dataclass(frozen=True, slots=True)
class OptOut:
    dialled: str
    via: str
    sent: float  # time.time()
    acked_at: float | None  # None: not acknowledged


@dataclass
class OptOuts:
    """Opt-outs sent every ``every_s`` until ``stop``, each for a number of the run that
    SIPp is due to dial at least ``margin_s`` later, alternately through FastAGI and the
    API."""

    rig: Rig
    numbers: list[str]
    skip: set[str]
    started: float  # when SIPp was started (time.time())
    rate_cps: float
    every_s: float = 0.1
    margin_s: float = 3.0
    done: list[OptOut] = field(default_factory=list)

    def _target(self, now: float, used: set[str]) -> str | None:
        first = int((now + self.margin_s - self.started) * self.rate_cps) + 1
        for index in range(max(first, 0), len(self.numbers)):
            if self.numbers[index] not in used and self.numbers[index] not in self.skip:
                return self.numbers[index]
        return None

    def due(self, dialled: str) -> float:
        """The earliest time SIPp may dial ``dialled`` (it never runs ahead of its rate)."""
        return self.started + self.numbers.index(dialled) / self.rate_cps

    async def run(self, stop: asyncio.Event) -> None:
        used: set[str] = set()
        pending: set[asyncio.Task[None]] = set()
        for turn in range(10_000):
            if stop.is_set():
                break
            target = self._target(time.time(), used)
            if target is not None:
                used.add(target)
                task = asyncio.create_task(self._one(target, "agi" if turn % 2 == 0 else "api"))
                pending.add(task)
                task.add_done_callback(pending.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
        if pending:
            await asyncio.wait(pending, timeout=OPTOUT_TIMEOUT_S * 2)

    async def _one(self, dialled: str, via: str) -> None:
        sent = time.time()
        number = callee(dialled)
        try:
            if via == "agi":
                acked = await agi_optout(self.rig.gate.agi_port, number)
            else:
                acked = await api_optout(self.rig.http_port(), number)
        except AssertionError:  # the gate is down: no HTTP port yet
            acked = False
        self.done.append(OptOut(dialled, via, sent, time.time() if acked else None))

    @property
    def acknowledged(self) -> list[OptOut]:
        return [o for o in self.done if o.acked_at is not None]


# -- the run ------------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    calls: int = 0
    answered: int = 0
    refused: int = 0
    other: int = 0
    fail_mode: int = 0
    answered_to_listed: int = 0
    allow_entries: int = 0
    allow_without_call: int = 0
    allowed_then_cut: int = 0  # ALLOW entries of calls the PBX tore down (see test_faults)
    allowed_then_lost: int = 0  # ALLOW entries whose answer died with the gate (test_faults)
    answered_without_allow: int = 0
    left_in_stasis: int = 0
    optouts_acked: int = 0
    optouts_sent: int = 0
    optouts_not_enforced: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    HEADER = (
        f"{'fault':<18} {'calls':>5} {'answered':>8} {'refused':>7} {'other':>5} "
        f"{'fail mode':>9} {'answered to listed':>18} {'audit ALLOW = answered':>22} "
        f"{'left in Stasis':>14} {'opt-outs acked':>14} {'not enforced':>12}"
    )

    def line(self) -> str:
        cut, lost = self.allowed_then_cut, self.allowed_then_lost
        audit = (
            f"{self.allow_entries}={self.answered}"
            + (f"+{cut} cut" if cut else "")
            + (f"+{lost} lost" if lost else "")
            if self.allow_entries == self.answered + cut + lost
            and not (self.allow_without_call or self.answered_without_allow)
            else f"{self.allow_entries}!={self.answered} "
            f"(+{self.allow_without_call}/-{self.answered_without_allow})"
        )
        return (
            f"{self.fault:<18} {self.calls:>5} {self.answered:>8} {self.refused:>7} "
            f"{self.other:>5} {self.fail_mode:>9} {self.answered_to_listed:>18} {audit:>22} "
            f"{self.left_in_stasis:>14} {f'{self.optouts_acked}/{self.optouts_sent}':>14} "
            f"{self.optouts_not_enforced:>12}"
        )


def place(rig: Rig, numbers: list[str], name: str, rate_cps: float) -> SippRun:
    """SIPp calls every number once at ``rate_cps`` (no limit on calls at a time that a
    stalled door could reach; each call gives up 10 s after its last message)."""
    return run_sipp(
        rig.asterisk.sip_port,
        numbers,
        rig.workdir / name,
        rate_cps=rate_cps,
        limit=5000,
        timeout_s=len(numbers) / rate_cps + 45,
    )


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
