"""Smoke tests of the real-Asterisk sandbox: dialplan, FastAGI, Stasis, restart, SIPp."""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sandbox import AsteriskSandbox, SandboxFactory, dead_port
from sippuac import run_sipp

pytestmark = pytest.mark.e2e


NUMBER = "0612345678"

ANSWERER = """
[answerer]
exten => s,1,Answer()
 same => n,Wait(10)
 same => n,Hangup()
"""


async def poll_var(
    sandbox: AsteriskSandbox, channel_id: str, name: str, expected: str, within: float = 10.0
) -> str | None:
    """Read a channel variable until it equals ``expected`` or time is up; return it."""
    value: str | None = None
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        value = await sandbox.get_channel_var(channel_id, name)
        if value == expected or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    return value


async def hang_up_all(sandbox: AsteriskSandbox) -> None:
    for channel in await sandbox.list_channels():
        await sandbox.hangup(str(channel["id"]))


async def test_dialplan_variable_is_visible_over_ari_and_in_the_log(
    asterisk_factory: SandboxFactory,
) -> None:
    """A variable set by an #included gated context is readable over ARI and in the log."""
    gated = """
[gated]
exten => _X.,1,Set(GATE_SEEN=yes)
 same => n,Log(NOTICE,CALLGATE-E2E gated number=${EXTEN} seen=${GATE_SEEN})
 same => n,Goto(answerer,s,1)
"""
    sandbox = asterisk_factory(
        "#include callgate.conf\n" + ANSWERER, extra_files={"callgate.conf": gated}
    )
    channel_id = await sandbox.originate_local(NUMBER, "gated")
    try:
        assert "yes" == await poll_var(sandbox, channel_id, "GATE_SEEN", "yes")
        assert None is await sandbox.get_channel_var(channel_id, "NEVER_SET")
        found = await sandbox.wait_for_log(r"CALLGATE-E2E gated number=(\d+) seen=(\w+)")
        assert (NUMBER, "yes") == found.groups()
        ids = {str(channel["id"]) for channel in await sandbox.list_channels()}
        assert channel_id in ids
    finally:
        await hang_up_all(sandbox)


async def test_fastagi_sets_a_variable_the_dialplan_reads(
    asterisk_factory: SandboxFactory,
) -> None:
    """A raw FastAGI server's SET VARIABLE reaches the dialplan; a dead one gives FAILURE."""
    requests: list[dict[str, str]] = []
    replies: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers: dict[str, str] = {}
        try:
            for _ in range(200):
                line = await asyncio.wait_for(reader.readline(), 5.0)
                if not line.strip():
                    break
                key, _, value = line.decode().rstrip("\r\n").partition(": ")
                headers[key] = value
            requests.append(headers)
            writer.write(b'SET VARIABLE CALLGATE_RESULT "ALLOW"\n')
            await writer.drain()
            replies.append((await asyncio.wait_for(reader.readline(), 5.0)).decode().strip())
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    agi_port = int(server.sockets[0].getsockname()[1])
    refusing = contextlib.ExitStack()
    dead = refusing.enter_context(dead_port())
    dialplan = (
        """
[gated]
exten => _X.,1,AGI(agi://127.0.0.1:@AGI_PORT@/check?campaign=x&tenant=y,extra)
 same => n,Set(SEEN_RESULT=${CALLGATE_RESULT})
 same => n,Set(SEEN_STATUS=${AGISTATUS})
 same => n,Goto(answerer,s,1)

[gated-dead]
exten => _X.,1,AGI(agi://127.0.0.1:@DEAD_PORT@/check)
 same => n,Set(SEEN_STATUS=${AGISTATUS})
 same => n,Goto(answerer,s,1)
""".replace("@AGI_PORT@", str(agi_port)).replace("@DEAD_PORT@", str(dead))
        + ANSWERER
    )
    try:
        sandbox = asterisk_factory(dialplan)
        channel_id = await sandbox.originate_local(NUMBER, "gated")
        dead_id = await sandbox.originate_local(NUMBER, "gated-dead")
        try:
            # Both at once: each channel lives 10 s after its AGI (the answerer); neither
            # read waits on the other.
            statuses = await asyncio.gather(
                poll_var(sandbox, channel_id, "SEEN_STATUS", "SUCCESS"),
                poll_var(sandbox, dead_id, "SEEN_STATUS", "FAILURE"),
            )
            assert ["SUCCESS", "FAILURE"] == statuses
            assert "ALLOW" == await sandbox.get_channel_var(channel_id, "SEEN_RESULT")
        finally:
            await hang_up_all(sandbox)
    finally:
        refusing.close()
        server.close()
        await server.wait_closed()

    assert 1 == len(requests)
    headers = requests[0]
    print("FastAGI request headers:", json.dumps(headers, indent=1, sort_keys=True))
    print("FastAGI reply:", replies)
    assert "check?campaign=x&tenant=y" == headers["agi_network_script"]
    assert f"agi://127.0.0.1:{agi_port}/check?campaign=x&tenant=y" == headers["agi_request"]
    assert NUMBER == headers["agi_extension"]
    assert "gated" == headers["agi_context"]
    assert "extra" == headers["agi_arg_1"]
    assert ["200 result=1"] == replies


async def _next_event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next ARI event of type ``kind`` (other events are skipped; bounded)."""
    deadline = time.monotonic() + 10.0
    for _ in range(100):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        message = await ws.receive(timeout=remaining)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"websocket closed or failed while waiting for {kind}: {message}")
        event: dict[str, Any] = json.loads(message.data)
        if event.get("type") == kind:
            return event
    raise AssertionError(f"no {kind} event within 10 s")


async def test_stasis_app_sets_variable_and_continues(asterisk_factory: SandboxFactory) -> None:
    """A Stasis app sees the number in args, sets a variable, continues; no app gives FAILED."""
    dialplan = (
        """
[gated]
exten => _X.,1,Stasis(testapp,${EXTEN},campaign=x)
 same => n,Set(AFTER_STATUS=${STASISSTATUS})
 same => n,Set(AFTER_RESULT=${CALLGATE_RESULT})
 same => n,Log(NOTICE,CALLGATE-E2E stasis status=${STASISSTATUS} result=${CALLGATE_RESULT})
 same => n,Goto(answerer,s,1)
"""
        + ANSWERER
    )
    sandbox = asterisk_factory(dialplan)
    events_url = sandbox.ari_url.replace("http://", "ws://", 1) + "/events"
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.ws_connect(
                events_url,
                params={"app": "testapp", "subscribeAll": "false"},
                headers=sandbox.auth_headers,
            ) as ws,
        ):
            channel_id = await sandbox.originate_local(NUMBER, "gated")
            start = await _next_event(ws, "StasisStart")
            print("StasisStart args:", start["args"])
            assert [NUMBER, "campaign=x"] == start["args"]
            assert channel_id == start["channel"]["id"]
            await sandbox.set_channel_var(channel_id, "CALLGATE_RESULT", "ALLOW")
            await sandbox.continue_in_dialplan(channel_id)
            end = await _next_event(ws, "StasisEnd")
            assert channel_id == end["channel"]["id"]
        assert "ALLOW" == await poll_var(sandbox, channel_id, "AFTER_RESULT", "ALLOW")
        assert "SUCCESS" == await sandbox.get_channel_var(channel_id, "AFTER_STATUS")
        found = await sandbox.wait_for_log(r"CALLGATE-E2E stasis status=(\w+) result=(\w*)")
        assert ("SUCCESS", "ALLOW") == found.groups()

        # The websocket is closed now: the app is gone and Stasis() returns at once.
        for _ in range(100):
            apps = await sandbox.ari("GET", "/applications")
            if "testapp" not in {app["name"] for app in apps}:
                break
            await asyncio.sleep(0.05)
        orphan_id = await sandbox.originate_local(NUMBER, "gated")
        assert "FAILED" == await poll_var(sandbox, orphan_id, "AFTER_STATUS", "FAILED")
        assert "" == await sandbox.get_channel_var(orphan_id, "AFTER_RESULT")
    finally:
        await hang_up_all(sandbox)


async def test_restart_keeps_config_and_ports(asterisk_factory: SandboxFactory) -> None:
    """After restart() Asterisk runs again with a new PID on the same ports and config."""
    sandbox = asterisk_factory(ANSWERER)
    before = (sandbox.pid, sandbox.http_port, sandbox.sip_port, sandbox.config_dir)
    info = await sandbox.ari("GET", "/asterisk/info")
    assert "system" in info
    sandbox.restart()
    after = (sandbox.pid, sandbox.http_port, sandbox.sip_port, sandbox.config_dir)
    assert before[1:] == after[1:]
    assert before[0] != after[0]
    assert "system" in await sandbox.ari("GET", "/asterisk/info")
    assert "Asterisk" in sandbox.cli("core show version")


def test_stop_cleans_up_and_listens_only_on_loopback(asterisk_root: Path) -> None:
    """Asterisk's TCP and SIP sockets are on 127.0.0.1; stop() removes dir and process."""
    sandbox = AsteriskSandbox(ANSWERER, root=asterisk_root)
    with sandbox:
        pid = sandbox.pid
        config_dir = sandbox.config_dir
        sockets = subprocess.run(
            ["ss", "-H", "-lntup"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        mine = [line.split() for line in sockets.splitlines() if f"pid={pid}," in line]
        tcp = sorted(fields[4] for fields in mine if fields[0] == "tcp")
        udp = [fields[4] for fields in mine if fields[0] == "udp"]
        assert [f"127.0.0.1:{sandbox.http_port}"] == tcp
        assert f"127.0.0.1:{sandbox.sip_port}" in udp
        # pjproject's DNS client sockets (IPv4 + IPv6, ephemeral, talking to the chroot's
        # resolv.conf, i.e. 127.0.0.1) are the only ones not bound to loopback.
        others = [addr for addr in udp if not addr.startswith("127.0.0.1:")]
        assert len(others) <= 2, udp
        assert "nameserver 127.0.0.1\n" in (asterisk_root / "etc" / "resolv.conf").read_text()
    assert not config_dir.exists()
    assert not sandbox.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


#: number -> what the dialplan does with it
SIPP_CALLS = {
    "0611111111": "answer",
    "0622222222": "answer",
    "0699999999": "hangup21",
    "0633333333": "answer",
    "0644444444": "answer",
}


async def test_sipp_sees_200_for_answer_and_403_for_hangup_21(
    asterisk_factory: SandboxFactory, tmp_path: Path
) -> None:
    """Five SIPp INVITEs: answered numbers get 200, the Hangup(21) one gets 403."""
    dialplan = """
[from-sipp]
exten => _X.,1,GotoIf($["${EXTEN}" = "0699999999"]?reject)
 same => n,Answer()
 same => n,Wait(5)
 same => n,Hangup()
 same => n(reject),Hangup(21)
"""
    sandbox = asterisk_factory(dialplan, sip_context="from-sipp")
    run = await asyncio.to_thread(
        run_sipp, sandbox.sip_port, SIPP_CALLS, tmp_path, rate_cps=5, limit=2, timeout_s=40
    )
    print("SIPp final codes:", run.results)
    assert 0 == run.exit_code, (
        f"sipp exit {run.exit_code}\n{run.errors[-2000:]}\n{sandbox.log_tail()}"
    )
    expected = {n: (403 if what == "hangup21" else 200) for n, what in SIPP_CALLS.items()}
    assert expected == run.results


async def test_sipp_is_run_again_when_a_port_it_was_given_is_taken_before_it_binds(
    asterisk_factory: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIPp's own port taken between the probe and SIPp's bind (it exits -2, nothing
    sent): ``run_sipp`` runs it again on new ports, and every call is placed once."""
    import sippuac

    dialplan = """
[from-sipp]
exten => _X.,1,Answer()
 same => n,Wait(1)
 same => n,Hangup()
"""
    sandbox = asterisk_factory(dialplan, sip_context="from-sipp")
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    probe = sippuac._free_udp_port
    given: list[int] = []

    def first_taken(span: int = 1) -> int:
        given.append(taken.getsockname()[1] if not given else probe(span))
        return given[-1]

    monkeypatch.setattr(sippuac, "_free_udp_port", first_taken)
    numbers = ["0611111111", "0622222222"]
    try:
        run = await asyncio.to_thread(
            run_sipp, sandbox.sip_port, numbers, tmp_path, rate_cps=5, limit=2, timeout_s=30
        )
    finally:
        taken.close()
    assert (0, {n: 200 for n in numbers}) == (run.exit_code, run.results)
    assert "binding" in run.output.lower() or "bind" in run.output.lower(), run.output[-2000:]
