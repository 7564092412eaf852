"""The FastAGI door end to end: a REAL Asterisk runs dialplan/callgate.conf against a REAL
``callgate run`` process backed by the session's REAL Redis.

Dialplan under test: ``gated`` pushes a hangup handler, GoSubs ``callgate-agi`` (the repo's
include file, pointed at the test's port) and, only if that returns, goes to ``reached``,
which answers. Both log one ``CALLGATE-E2E`` line with the channel's uniqueid (the ARI
channel id), so each call's fate is read from the Asterisk log: a ``reached`` line (it got
through, with ``CALLGATE_RESULT``) or only a ``hangup`` line (it was refused, with the
hangup cause).
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateproc import REPO, GateProcess, callgate_dialplan, write_config
from sandbox import AsteriskSandbox, SandboxError, SandboxFactory, free_port
from sippuac import rejects_exactly_the_listed

from agi.server import parse_request
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.e2e


LISTED = "0699001122"
LISTED_E164 = "+33699001122"
UNLISTED = "0612345678"
DAY_S = 86_400

DIALPLAN = """
#include callgate.conf

[gated]
exten => _X.,1,Set(CHANNEL(hangup_handler_push)=e2e-hangup,s,1(${EXTEN}))
 same => n,GoSub(callgate-agi,s,1(${EXTEN},default,e2e,campaign))
 same => n,Goto(reached,${EXTEN},1)

[reached]
exten => _X.,1,Log(NOTICE,CALLGATE-E2E reached id=${UNIQUEID} number=${EXTEN} result=${CALLGATE_RESULT} agi=${AGISTATUS})
 same => n,Answer()
 same => n,Wait(5)
 same => n,Hangup()

[e2e-hangup]
exten => s,1,Log(NOTICE,CALLGATE-E2E hangup id=${UNIQUEID} number=${ARG1} cause=${HANGUPCAUSE} result=${CALLGATE_RESULT} agi=${AGISTATUS})
 same => n,Return()

[answerer]
exten => s,1,Answer()
 same => n,Wait(10)
 same => n,Hangup()

[dispose]
exten => _X.,1,GoSub(callgate-disposition,s,1(refusal,${EXTEN},default))
 same => n,Log(NOTICE,CALLGATE-E2E disposition number=${EXTEN} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON})
 same => n,Hangup()

[optout]
exten => _X.,1,GoSub(callgate-optout,s,asked(${EXTEN},default))
 same => n,Log(NOTICE,CALLGATE-E2E optout number=${EXTEN} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON})
 same => n,Hangup()

[decided-then-optout]
exten => _X.,1,GoSub(callgate-agi,s,1(${EXTEN},default,e2e,manual))
 same => n,Log(NOTICE,CALLGATE-E2E before number=${EXTEN} result=${CALLGATE_RESULT} e164=${CALLGATE_E164})
 same => n,GoSub(callgate-optout,s,1(${EXTEN},default))
 same => n,Log(NOTICE,CALLGATE-E2E after number=${EXTEN} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON} rule=${CALLGATE_RULE} retry=${CALLGATE_RETRY_AFTER} e164=${CALLGATE_E164} cause=${CALLGATE_CAUSE})
 same => n,Hangup()

[stale-then-down]
exten => _X.,1,Set(ARRAY(CALLGATE_RESULT,CALLGATE_REASON,CALLGATE_RULE,CALLGATE_RETRY_AFTER,CALLGATE_E164,CALLGATE_CAUSE)=ALLOW,allowed,stale-rule,60,+33600000000,0)
 same => n,Set(CHANNEL(hangup_handler_push)=e2e-six,s,1(${EXTEN}))
 same => n,GoSub(callgate-agi,s,1(${EXTEN},default,e2e,campaign))
 same => n,Goto(reached,${EXTEN},1)

[e2e-six]
exten => s,1,Log(NOTICE,CALLGATE-E2E down number=${ARG1} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON} rule=${CALLGATE_RULE} retry=${CALLGATE_RETRY_AFTER} e164=${CALLGATE_E164} cause=${CALLGATE_CAUSE})
 same => n,Return()

[crafted]
exten => _X.,1,Set(CHANNEL(hangup_handler_push)=e2e-hangup,s,1(${EXTEN}))
 same => n,GoSub(callgate-agi,s,1(${CRAFTED},default,e2e,campaign))
 same => n,Goto(reached,${EXTEN},1)

[crafted-raw]
exten => _X.,1,AGI(${CALLGATE_AGI_URL}/check,number=${CRAFTED},tenant=default)
 same => n,GoSub(callgate-unpack,s,1)
 same => n,Log(NOTICE,CALLGATE-E2E raw number=${EXTEN} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON})
 same => n,Hangup()

[crafted-dispose]
exten => _X.,1,GoSub(callgate-disposition,s,1(refusal,${FILTER(0-9+,${CRAFTED})},default))
 same => n,Log(NOTICE,CALLGATE-E2E disposition number=${EXTEN} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON})
 same => n,Hangup()
"""  # noqa: E501 (dialplan lines cannot be wrapped)

# The six result variables as the ``after`` and ``down`` lines above log them.
_SIX = (
    r"result=(?P<result>\w*) reason=(?P<reason>[\w:.-]*) rule=(?P<rule>[\w:.-]*)"
    r" retry=(?P<retry>\d*) e164=(?P<e164>\+?\d*) cause=(?P<cause>\d*)"
)

_LINE = re.compile(
    r"CALLGATE-E2E (?P<where>reached|hangup) id=(?P<id>\S+) number=(?P<number>\d*)"
    r"(?: cause=(?P<cause>\d*))? result=(?P<result>\w*) agi=(?P<agi>\w*)"
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one call ended up: ``reached`` the answering context, or only ``hangup``."""

    where: str
    result: str
    cause: str
    agi: str


def outcomes(log: str) -> dict[str, Outcome]:
    """Channel id -> outcome; a ``reached`` line wins over the same call's later hangup."""
    found: dict[str, Outcome] = {}
    for match in _LINE.finditer(log):
        if match["id"] in found and found[match["id"]].where == "reached":
            continue
        found[match["id"]] = Outcome(
            match["where"], match["result"], match["cause"] or "", match["agi"]
        )
    return found


async def call(sandbox: AsteriskSandbox, number: str, within: float = 10.0) -> Outcome:
    """Originate ``Local/NUMBER@gated`` and wait (bounded) until its fate is logged."""
    channel_id = await sandbox.originate_local(number, "gated")
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        if (outcome := outcomes(sandbox.read_log()).get(channel_id)) is not None:
            return outcome
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    raise SandboxError(f"call {channel_id} to {number}: no outcome within {within} s")


REACHED_ALLOW = Outcome("reached", "ALLOW", "", "SUCCESS")
BLOCKED = Outcome("hangup", "BLOCK", "21", "SUCCESS")


@pytest.fixture
def callgate(redis_url: str, tmp_path: Path) -> Iterator[GateProcess]:
    """``callgate run`` on the sample config's lists and cap, the test's Redis and a free port.

    The Redis deadline is 1 s instead of the sample's 50 ms: Asterisk, SIPp, Redis and the
    gate share two cores here, and a stall must not turn into a DEFER the test did not ask for.
    """
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}},
    )
    with GateProcess(config, tmp_path / "callgate.log", port) as process:
        yield process


@pytest.fixture
def asterisk(asterisk_factory: SandboxFactory, callgate: GateProcess) -> AsteriskSandbox:
    """Asterisk with the gated dialplan; SIP calls from SIPp land in ``gated`` too."""
    include = callgate_dialplan(callgate.agi_port, fail_mode="DEFER")
    return asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include}, sip_context="gated")


async def test_listed_number_is_rejected_and_unlisted_reaches_the_answerer(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """A red-listed number is hung up with cause 21; an unlisted one is answered with ALLOW."""
    added = await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED_E164)
    assert "1 added, 0 already listed" == added.stdout.strip()

    assert BLOCKED == await call(asterisk, LISTED)
    channel_id = await asterisk.originate_local(UNLISTED, "gated")
    found = await asterisk.wait_for_log(rf"CALLGATE-E2E reached id={channel_id} .*result=(\w+)")
    assert "ALLOW" == found[1]
    assert "ALLOW" == await asterisk.get_channel_var(channel_id, "CALLGATE_RESULT")
    assert "+33612345678" == await asterisk.get_channel_var(channel_id, "CALLGATE_E164")


async def test_fifth_attempt_within_the_cap_window_is_deferred(
    asterisk: AsteriskSandbox,
) -> None:
    """Four attempts to one number pass; the fifth within 30 days is DEFERred (cause 34)."""
    seen = [await call(asterisk, UNLISTED) for _ in range(5)]
    assert [REACHED_ALLOW] * 4 + [Outcome("hangup", "DEFER", "34", "SUCCESS")] == seen
    found = await asterisk.wait_for_log(r"callgate: DEFER (\S+) retry_after=([^\s\")]*)")
    assert "cap:fr-4-per-30d" == found[1]
    # Plain decimal seconds (dialplan math), about 30 days: the first attempt's expiry.
    assert re.fullmatch(r"\d+(\.\d+)?", found[2]), found[2]
    assert 29 * DAY_S < float(found[2]) <= 30 * DAY_S


async def test_calls_are_still_gated_after_asterisk_restarts(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """After Asterisk restarts mid-run, a listed number is rejected and an unlisted allowed."""
    await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED)
    before = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    pid = asterisk.pid
    await asyncio.to_thread(asterisk.restart)
    assert pid != asterisk.pid
    after = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    assert [BLOCKED, REACHED_ALLOW] == before
    assert [BLOCKED, REACHED_ALLOW] == after


async def test_gate_down_applies_the_fail_mode_then_recovers(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """With the gate killed no call gets through (fail mode DEFER); restarted, gating resumes."""
    await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED)
    await asyncio.to_thread(callgate.kill)
    assert not callgate.running

    down = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    assert [Outcome("hangup", "DEFER", "34", "FAILURE")] * 2 == down
    found = await asterisk.wait_for_log(r"callgate unavailable \(AGISTATUS=(\w+) .*fail mode (\w+)")
    assert ("FAILURE", "DEFER") == found.groups()

    await asyncio.to_thread(callgate.start)
    up = [await call(asterisk, LISTED), await call(asterisk, UNLISTED)]
    assert [BLOCKED, REACHED_ALLOW] == up
    assert 2 == callgate.starts


SIPP_CALLS = 500
SIPP_RATE_CPS = 50


async def test_sipp_500_calls_at_50_cps_reject_exactly_the_listed_numbers(
    callgate: GateProcess, asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    """500 SIPp calls at 50/s, 10 % red-listed: exactly those get 403, all others 200."""
    await rejects_exactly_the_listed(callgate, asterisk, tmp_path, SIPP_CALLS, SIPP_RATE_CPS)


async def test_a_disposition_gives_the_dialplan_its_result_and_reason(
    asterisk_factory: SandboxFactory, redis_url: str, tmp_path: Path
) -> None:
    """GoSub(callgate-disposition) for a refusal: the dialplan sees CALLGATE_RESULT=OK and
    the cool-off rule it started, unpacked from the one CALLGATE_DECISION."""
    port = free_port()
    packs = {"packs": ["fr"], "packs_dir": str(REPO / "config" / "packs")}
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}, "gate": packs},
    )
    with GateProcess(config, tmp_path / "callgate.log", port):
        include = callgate_dialplan(port, fail_mode="DEFER")
        sandbox = asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include})
        await sandbox.originate_local(UNLISTED, "dispose")
        found = await sandbox.wait_for_log(
            r"CALLGATE-E2E disposition number=(\d+) result=(\w*) reason=([\w:.-]*)"
        )
    assert (UNLISTED, "OK", "refusal:fr-d223-9-refusal") == found.groups()


async def test_an_opt_out_the_gate_does_not_take_gives_the_dialplan_an_error(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """callgate-optout once the callee pressed 9: CALLGATE_RESULT=OK listed:red while the
    gate is up; with the gate down, ERROR gate_unavailable and a WARNING saying the number
    is not on the list (never an empty result the dialplan would take for nothing)."""
    line = r"CALLGATE-E2E optout number={} result=(\w*) reason=([\w:.-]*)"
    await asterisk.originate_local(UNLISTED, "optout")
    up = await asterisk.wait_for_log(line.format(UNLISTED))
    await asyncio.to_thread(callgate.kill)
    await asterisk.originate_local(LISTED, "optout")
    down = await asterisk.wait_for_log(line.format(LISTED))
    warned = await asterisk.wait_for_log(
        r"callgate optout FAILED \(AGISTATUS=(\w+) reason=(\w+)\): the number is NOT on the list"
    )
    assert ("OK", "listed:red") == up.groups()
    assert ("ERROR", "gate_unavailable") == down.groups()
    assert ("FAILURE", "gate_unavailable") == warned.groups()


async def test_each_subroutine_leaves_only_its_own_outcome_in_the_result_variables(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """An opt-out the callee does not take leaves the six result variables empty, not the
    ALLOW of the decision before it; with the gate down, callgate-agi's fail mode leaves
    no rule, retry, E.164 or cause of an earlier outcome beside its DEFER."""
    nothing = dict.fromkeys(("result", "reason", "rule", "retry", "e164", "cause"), "")
    await asterisk.originate_local(UNLISTED, "decided-then-optout")
    before = await asterisk.wait_for_log(
        rf"CALLGATE-E2E before number={UNLISTED} result=(\w*) e164=(\+?\d*)"
    )
    # callgate-optout's Read waits 5 s for the key that never comes.
    after = await asterisk.wait_for_log(rf"CALLGATE-E2E after number={UNLISTED} {_SIX}", 15.0)
    await asyncio.to_thread(callgate.kill)
    await asterisk.originate_local(LISTED, "stale-then-down")
    down = await asterisk.wait_for_log(rf"CALLGATE-E2E down number={LISTED} {_SIX}")
    assert ("ALLOW", "+33612345678") == before.groups()
    assert nothing == after.groupdict()
    assert {**nothing, "result": "DEFER", "reason": "gate_unavailable"} == down.groupdict()


FORGED = f"{LISTED}\nagi_arg_1: number={UNLISTED}\n\n"


async def test_a_number_that_forges_agi_argument_lines_is_never_allowed(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """A listed number followed by a newline, its own ``agi_arg_1`` (an unlisted number)
    and a blank line: through callgate-agi it arrives URI-encoded, whole, and is refused
    as the number it is; passed raw, Asterisk sends a repeated ``agi_arg_1`` and the gate
    answers ERROR, so the subroutine would apply its fail mode. Never the forged ALLOW."""
    await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED_E164)
    channel_id = await asterisk.originate_local(LISTED, "crafted", variables={"CRAFTED": FORGED})
    found = await asterisk.wait_for_log(
        rf"CALLGATE-E2E (reached|hangup) id={channel_id} .*cause=(\d*) result=(\w*)"
    )
    await asterisk.originate_local(LISTED, "crafted-raw", variables={"CRAFTED": FORGED})
    raw = await asterisk.wait_for_log(r"CALLGATE-E2E raw number=\d+ result=(\w*) reason=([\w:.-]*)")
    assert ("hangup", "21", "BLOCK") == found.groups()
    assert ("ERROR", "bad_request:agi_arg_1") == raw.groups()


async def test_a_comma_in_a_disposition_number_does_not_change_the_tenant(
    asterisk_factory: SandboxFactory, redis_url: str, tmp_path: Path
) -> None:
    """``0611111111,acme`` given to callgate-disposition as documented (``FILTER``ed): the
    refusal is recorded for 0611111111 under the tenant named, not for tenant acme, so the
    next call to it from tenant default is refused by the cool-off."""
    port = free_port()
    packs = {"packs": ["fr"], "packs_dir": str(REPO / "config" / "packs")}
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}, "gate": packs},
    )
    with GateProcess(config, tmp_path / "callgate.log", port):
        include = callgate_dialplan(port, fail_mode="DEFER")
        sandbox = asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include})
        variables = {"CRAFTED": f"{UNLISTED},acme"}
        await sandbox.originate_local(UNLISTED, "crafted-dispose", variables=variables)
        found = await sandbox.wait_for_log(
            r"CALLGATE-E2E disposition number=\d+ result=(\w*) reason=([\w:.-]*)"
        )
        after = await call(sandbox, UNLISTED)
    assert ("OK", "refusal:fr-d223-9-refusal") == found.groups()
    assert ("hangup", "BLOCK") == (after.where, after.result)


async def test_the_subroutine_asks_in_one_request_line_whatever_the_number_holds(
    asterisk_factory: SandboxFactory,
) -> None:
    """callgate-agi puts its parameters in the URL's query, each URI-encoded: one
    ``agi_network_script`` line and no ``agi_arg_N`` (Asterisk writes each request line
    with a system call of its own). A number holding ``&``, ``=`` and ``%`` arrives whole,
    the tenant and the rest as given."""
    crafted = f"{LISTED}&number={UNLISTED}&tenant=evil%0A"
    requests: list[list[tuple[str, str]]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: list[tuple[str, str]] = []
        try:
            for _ in range(200):
                line = await asyncio.wait_for(reader.readline(), 5.0)
                if not line.strip():
                    break
                name, _, value = line.decode().rstrip("\n").partition(": ")
                lines.append((name, value))
            requests.append(lines)
            writer.write(b'SET VARIABLE CALLGATE_DECISION "BLOCK|listed:red|list:red|||21"\n')
            await writer.drain()
            await asyncio.wait_for(reader.readline(), 5.0)
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        include = callgate_dialplan(port, fail_mode="DEFER")
        sandbox = asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include})
        await sandbox.originate_local(UNLISTED, "crafted", variables={"CRAFTED": crafted})
        found = await sandbox.wait_for_log(r"CALLGATE-E2E hangup id=\S+ .*cause=(\d*) result=(\w*)")
    finally:
        server.close()
        await server.wait_closed()
    assert 1 == len(requests)
    request = parse_request(requests[0])
    assert ([], "check") == ([n for n, _ in requests[0] if n.startswith("agi_arg_")], request.route)
    assert {"number": crafted, "tenant": "default", "campaign": "e2e", "class": "campaign"} == {
        k: v for k, v in request.params.items() if v
    }
    assert ("21", "BLOCK") == found.groups()
