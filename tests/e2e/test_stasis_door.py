"""The Stasis door end to end: a REAL Asterisk runs dialplan/callgate.conf's ``callgate-stasis``
subroutine against a REAL ``callgate run`` process (``[ari]`` configured) backed by the
session's REAL Redis.

Dialplan under test: ``gated`` pushes a hangup handler, GoSubs ``callgate-stasis`` and, only
if that returns, goes to ``reached``, which answers. Both log one ``CALLGATE-E2E`` line with
the channel's uniqueid (the ARI channel id), so each call's fate is read from the Asterisk
log: a ``reached`` line (it got through) or only a ``hangup`` line (refused, with its cause).

Observed with Asterisk 22 when the gate's WebSocket goes away (SIGKILL, SIGTERM):
- if no channel sits in the application, Asterisk drops it: ``Stasis()`` fails at once
  (``STASISSTATUS=FAILED``) and the subroutine applies ``CALLGATE_FAIL_MODE``;
- channels already in the application keep waiting in it (the application stays, inactive);
  a new ``Stasis()`` fails at once ("Stasis app 'callgate' not active"), so the fail mode
  applies to it. When the gate comes back, its connect sweep decides the waiting channels.
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateproc import GateProcess, callgate_dialplan, write_config
from sandbox import AsteriskSandbox, SandboxError, SandboxFactory, free_port
from sippuac import rejects_exactly_the_listed

from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.e2e

GateFactory = Callable[..., GateProcess]

LISTED = "0699001122"
LISTED_E164 = "+33699001122"
UNLISTED = "0612345678"
DAY_S = 86_400
CONNECTED = r"ARI connected to "

DIALPLAN = """
#include callgate.conf

[gated]
exten => _X.,1,Set(CHANNEL(hangup_handler_push)=e2e-hangup,s,1(${EXTEN}))
 same => n,GoSub(callgate-stasis,s,1(${EXTEN},default,e2e,campaign))
 same => n,Goto(reached,${EXTEN},1)

[reached]
exten => _X.,1,Log(NOTICE,CALLGATE-E2E reached id=${UNIQUEID} number=${EXTEN} result=${CALLGATE_RESULT} stasis=${STASISSTATUS} retry=${CALLGATE_RETRY_AFTER})
 same => n,Answer()
 same => n,Wait(5)
 same => n,Hangup()

[e2e-hangup]
exten => s,1,Log(NOTICE,CALLGATE-E2E hangup id=${UNIQUEID} number=${ARG1} cause=${HANGUPCAUSE} result=${CALLGATE_RESULT} stasis=${STASISSTATUS} retry=${CALLGATE_RETRY_AFTER})
 same => n,Return()

[answerer]
exten => s,1,Answer()
 same => n,Wait(10)
 same => n,Hangup()
"""  # noqa: E501 (dialplan lines cannot be wrapped)

_LINE = re.compile(
    r"NOTICE.*CALLGATE-E2E (?P<where>reached|hangup) id=(?P<id>\S+) number=(?P<number>\d*)"
    r"(?: cause=(?P<cause>\d*))? result=(?P<result>\w*) stasis=(?P<stasis>\w*)"
    r" retry=(?P<retry>[\d.]*)"
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one call ended up: ``reached`` the answering context, or only ``hangup``."""

    where: str
    result: str
    cause: str
    stasis: str


@dataclass(frozen=True, slots=True)
class Seen:
    outcome: Outcome
    number: str
    retry: str


def seen(log: str) -> dict[str, Seen]:
    """Channel id -> what the log says; a ``reached`` line wins over its later hangup."""
    found: dict[str, Seen] = {}
    for match in _LINE.finditer(log):
        if match["id"] in found and found[match["id"]].outcome.where == "reached":
            continue
        outcome = Outcome(match["where"], match["result"], match["cause"] or "", match["stasis"])
        found[match["id"]] = Seen(outcome, match["number"], match["retry"])
    return found


async def outcomes_of(
    sandbox: AsteriskSandbox, channel_ids: list[str], within: float = 10.0
) -> list[Outcome]:
    """Wait (bounded) until every channel's fate is logged; their outcomes, in order."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        found = seen(sandbox.read_log())
        if all(c in found for c in channel_ids):
            return [found[c].outcome for c in channel_ids]
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    missing = [c for c in channel_ids if c not in seen(sandbox.read_log())]
    raise SandboxError(f"no outcome within {within} s for {missing}")


async def settled(
    sandbox: AsteriskSandbox, channel_ids: list[str], within: float
) -> list[Outcome | None]:
    """Like ``outcomes_of`` but without raising: None for a channel still undecided."""
    with contextlib.suppress(SandboxError):
        return list(await outcomes_of(sandbox, channel_ids, within))
    found = seen(sandbox.read_log())
    return [found[c].outcome if c in found else None for c in channel_ids]


async def call(sandbox: AsteriskSandbox, number: str, within: float = 10.0) -> Outcome:
    """Originate ``Local/NUMBER@gated`` and wait (bounded) until its fate is logged."""
    channel_id = await sandbox.originate_local(number, "gated")
    return (await outcomes_of(sandbox, [channel_id], within))[0]


async def in_stasis(sandbox: AsteriskSandbox) -> set[str]:
    """Ids of the channels sitting in ``Stasis()`` right now."""
    return {
        c["id"]
        for c in await sandbox.list_channels()
        if str((c.get("dialplan") or {}).get("app_name", "")).lower() == "stasis"
    }


async def wait_in_stasis(sandbox: AsteriskSandbox, ids: set[str], within: float = 5.0) -> None:
    """Wait (bounded) until all ``ids`` sit in ``Stasis()``."""
    for _ in range(int(within / 0.05) + 1):
        if ids <= await in_stasis(sandbox):
            return
        await asyncio.sleep(0.05)
    raise SandboxError(
        f"channels not in Stasis within {within} s: {ids - await in_stasis(sandbox)}"
    )


REACHED_ALLOW = Outcome("reached", "ALLOW", "", "SUCCESS")
#: on_refuse = "hangup": callgate hangs the channel up inside Stasis (DELETE ?reason_code=…),
#: so the subroutine never sets CALLGATE_RESULT
HUNG_UP_BLOCK = Outcome("hangup", "", "21", "SUCCESS")
HUNG_UP_DEFER = Outcome("hangup", "", "34", "SUCCESS")
#: Stasis() failed: the subroutine applied CALLGATE_FAIL_MODE=DEFER
FAIL_MODE_DEFER = Outcome("hangup", "DEFER", "34", "FAILED")


@pytest.fixture
def agi_port() -> int:
    """The gate's FastAGI port (unused by these calls; the include file names it)."""
    return free_port()


@pytest.fixture
def asterisk(asterisk_factory: SandboxFactory, agi_port: int) -> AsteriskSandbox:
    """Asterisk with the gated dialplan; SIP calls from SIPp land in ``gated`` too."""
    include = callgate_dialplan(agi_port, fail_mode="DEFER")
    return asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include}, sip_context="gated")


@pytest.fixture
def callgate_factory(
    redis_url: str, tmp_path: Path, asterisk: AsteriskSandbox, agi_port: int
) -> Iterator[GateFactory]:
    """``callgate run`` with an ``[ari]`` table for the sandbox, started and connected;
    every process is resumed and stopped by PID at teardown.

    The Redis deadline is 1 s instead of the sample's 50 ms: Asterisk, SIPp, Redis and the
    gate share two cores here, and a stall must not turn into a DEFER the test did not ask for.
    """
    made: list[GateProcess] = []

    def make(on_refuse: str = "hangup") -> GateProcess:
        ari = (
            "[ari]\n"
            f'url = "{asterisk.ari_url}"\n'
            f'user = "{asterisk.ari_user}"\n'
            f'password = "{asterisk.ari_password}"\n'
            f'on_refuse = "{on_refuse}"\n'
            'reconnect_max = "1s"\n'
        )
        config = write_config(
            tmp_path / f"callgate-{len(made)}.toml",
            redis_url=redis_url,
            agi_port=agi_port,
            secret=TEST_SECRET,
            overrides={"redis": {"deadline": "1s"}},
            extra_toml=ari,
        )
        process = GateProcess(config, tmp_path / f"callgate-{len(made)}.log", agi_port)
        made.append(process)
        process.start()
        process.wait_for_log(CONNECTED, within_s=10)
        return process

    yield make
    for process in made:
        process.resume()
        process.stop()


@pytest.fixture
def callgate(callgate_factory: GateFactory) -> GateProcess:
    """One connected gate with on_refuse = "hangup"."""
    return callgate_factory()


async def add_red(callgate: GateProcess, number: str) -> None:
    added = await asyncio.to_thread(callgate.cli, "list", "add", "red", number)
    assert "1 added, 0 already listed" == added.stdout.strip()


async def test_listed_number_is_hung_up_by_the_gate_and_unlisted_reaches_the_answerer(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """A red-listed number is hung up by callgate with cause 21; an unlisted one gets ALLOW."""
    await add_red(callgate, LISTED_E164)

    assert HUNG_UP_BLOCK == await call(asterisk, LISTED)
    channel_id = await asterisk.originate_local(UNLISTED, "gated")
    assert [REACHED_ALLOW] == await outcomes_of(asterisk, [channel_id])
    assert "ALLOW" == await asterisk.get_channel_var(channel_id, "CALLGATE_RESULT")
    assert "+33612345678" == await asterisk.get_channel_var(channel_id, "CALLGATE_E164")
    reached = {s.number for s in seen(asterisk.read_log()).values() if s.outcome.where == "reached"}
    assert {UNLISTED} == reached


async def test_a_channel_id_that_is_no_plain_path_segment_is_decided_as_itself(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """A dialer's own channel id (ARI takes any text) with ``/``, ``..``, ``?``, ``#``,
    ``%`` and non-ASCII reaches Asterisk as one segment over the event WebSocket's REST
    requests: the listed number is hung up (DELETE), the unlisted one continues with its
    variables set (POST …/variable, …/continue), each on its own channel."""
    await add_red(callgate, LISTED_E164)
    hostile = f"gated-{uuid.uuid4().hex}/../x?reason_code=16#%41~é"
    blocked = await asterisk.originate_local(LISTED, "gated", channel_id=hostile + "-b")
    allowed = await asterisk.originate_local(UNLISTED, "gated", channel_id=hostile + "-a")
    assert [HUNG_UP_BLOCK, REACHED_ALLOW] == await outcomes_of(asterisk, [blocked, allowed])
    assert "ALLOW" == await asterisk.get_channel_var(allowed, "CALLGATE_RESULT")


async def test_fifth_attempt_within_the_cap_window_is_hung_up_with_cause_34(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """Four attempts to one number pass; callgate hangs the fifth within 30 days up (34)."""
    outcomes = [await call(asterisk, UNLISTED) for _ in range(5)]
    assert [REACHED_ALLOW] * 4 + [HUNG_UP_DEFER] == outcomes


async def test_continue_mode_lets_the_dialplan_see_defer_and_retry_after(
    callgate_factory: GateFactory, asterisk: AsteriskSandbox
) -> None:
    """on_refuse=continue: the fifth attempt returns DEFER and CALLGATE_RETRY_AFTER to the
    dialplan, which hangs up with 34."""
    callgate_factory(on_refuse="continue")
    ids: list[str] = []
    outcomes: list[Outcome] = []
    for _ in range(5):  # one after the other: each is decided before the next is placed
        ids.append(await asterisk.originate_local(UNLISTED, "gated"))
        outcomes += await outcomes_of(asterisk, ids[-1:])
    assert [REACHED_ALLOW] * 4 + [Outcome("hangup", "DEFER", "34", "SUCCESS")] == outcomes
    found = await asterisk.wait_for_log(r"callgate: DEFER (\S+) retry_after=([^\s\")]*)")
    assert "cap:fr-4-per-30d" == found[1]
    retry = seen(asterisk.read_log())[ids[4]].retry
    assert found[2] == retry
    # Plain decimal seconds (dialplan math), about 30 days: the first attempt's expiry.
    assert re.fullmatch(r"\d+(\.\d+)?", retry), retry
    assert 29 * DAY_S < float(retry) <= 30 * DAY_S


async def test_gate_reconnects_after_asterisk_restarts_and_gates_again(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """Asterisk restarted mid-run: the gate logs the loss, reconnects by itself, gates again."""
    await add_red(callgate, LISTED)
    before = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    since, pid = callgate.log_size(), asterisk.pid
    await asyncio.to_thread(asterisk.restart)
    assert pid != asterisk.pid
    await asyncio.to_thread(callgate.wait_for_log, r"ARI connection to \S+ lost", 10, since)
    await asyncio.to_thread(callgate.wait_for_log, CONNECTED, 10, since)
    after = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    assert [HUNG_UP_BLOCK, REACHED_ALLOW] == before
    assert [HUNG_UP_BLOCK, REACHED_ALLOW] == after
    assert callgate.running


async def test_gate_killed_while_calls_wait_decides_them_within_5s_of_its_restart(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """SIGKILL with 5 calls waiting in Stasis: they keep waiting, calls placed meanwhile get
    the fail mode, and a restarted gate decides every waiting one within 5 s."""
    await add_red(callgate, LISTED)
    numbers = [LISTED, *(f"06123456{i:02d}" for i in range(4))]
    callgate.pause()  # the application stays registered but decides nothing
    waiting = [await asterisk.originate_local(n, "gated") for n in numbers]
    await wait_in_stasis(asterisk, set(waiting))
    await asyncio.to_thread(callgate.kill)

    meanwhile = [await call(asterisk, UNLISTED) for _ in range(2)]
    assert [FAIL_MODE_DEFER] * 2 == meanwhile
    await asterisk.wait_for_log(r"Stasis app 'callgate' not active")
    assert set(waiting) == await in_stasis(asterisk) & set(waiting)

    started = time.monotonic()
    since = callgate.log_size()
    await asyncio.to_thread(callgate.start)
    decided = await outcomes_of(asterisk, waiting, within=5.0)
    elapsed_s = time.monotonic() - started
    assert [HUNG_UP_BLOCK] + [REACHED_ALLOW] * 4 == decided
    assert elapsed_s < 5.0
    assert set() == await in_stasis(asterisk)
    found = callgate.wait_for_log(r"ARI: (\d+) channel\(s\) were waiting", 1, since)
    assert "5" == found[1]
    reached = [s.number for s in seen(asterisk.read_log()).values() if s.outcome.where == "reached"]
    assert sorted(numbers[1:]) == sorted(reached)


async def test_gate_killed_with_no_call_waiting_means_stasis_fails_and_fail_mode_applies(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """SIGKILL with the application empty: Asterisk drops it, Stasis() fails at once (DEFER)."""
    await asyncio.to_thread(callgate.kill)
    assert [FAIL_MODE_DEFER] * 2 == [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    assert set() == await in_stasis(asterisk)


async def test_gate_never_started_means_stasis_fails_and_no_call_gets_through(
    asterisk: AsteriskSandbox,
) -> None:
    """No application registered: STASISSTATUS=FAILED, CALLGATE_FAIL_MODE=DEFER hangs up (34)."""
    outcomes = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    assert [FAIL_MODE_DEFER] * 2 == outcomes
    found = await asterisk.wait_for_log(
        r"callgate unavailable \(STASISSTATUS=(\w+) .*fail mode (\w+)"
    )
    assert ("FAILED", "DEFER") == found.groups()
    assert [] == [s for s in seen(asterisk.read_log()).values() if s.outcome.where == "reached"]


SIPP_CALLS = 500
SIPP_RATE_CPS = 50


async def test_sipp_500_calls_at_50_cps_reject_exactly_the_listed_numbers(
    callgate: GateProcess, asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    """500 SIPp calls at 50/s through Stasis, 10 % red-listed: exactly those get 403."""
    await rejects_exactly_the_listed(callgate, asterisk, tmp_path, SIPP_CALLS, SIPP_RATE_CPS)


async def test_sigterm_exits_0_and_leaves_no_channel_waiting_in_stasis(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """SIGTERM with StasisStart events in flight: exit 0, every channel decided or failed over."""
    await add_red(callgate, LISTED)
    numbers = [LISTED, *(f"06123457{i:02d}" for i in range(4))]
    callgate.pause()  # the calls arrive; their StasisStart events wait in the socket
    in_flight = [await asterisk.originate_local(n, "gated") for n in numbers]
    await wait_in_stasis(asterisk, set(in_flight))
    exit_code = await asyncio.to_thread(_terminate_paused, callgate)
    after = [await call(asterisk, UNLISTED) for _ in range(2)]
    decided = await settled(asterisk, in_flight, within=5.0)

    assert 0 == exit_code
    assert [FAIL_MODE_DEFER] * 2 == after
    assert set() == await in_stasis(asterisk)
    assert [HUNG_UP_BLOCK] + [REACHED_ALLOW] * 4 == decided


def _terminate_paused(callgate: GateProcess) -> int | None:
    """SIGTERM a paused gate, then let it run: it sees the stop and the pending events."""
    assert callgate.pid is not None
    os.kill(callgate.pid, signal.SIGTERM)
    callgate.resume()
    return callgate.terminate()
