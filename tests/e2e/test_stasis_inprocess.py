"""The Stasis door in-process against a real Asterisk: decisions, reconnects, the sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import SandboxFactory
from sandbox import AsteriskSandbox

from gate.config.loader import AriConfig
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.stasis.ari import AriClient, AriNotFound, AriUnavailable
from gate.stasis.door import StasisGate
from gate.store.client import Store
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[2]
LISTED, UNLISTED = "0612345678", "0698765432"


def dialplan() -> tuple[str, dict[str, str]]:
    include = (REPO / "dialplan" / "callgate.conf").read_text()
    gated = """
#include callgate.conf
[gated]
exten => _X.,1,GoSub(callgate-stasis,s,1(${EXTEN},default,e2e,campaign))
 same => n,Set(REACHED=${CALLGATE_RESULT})
 same => n,Goto(answerer,s,1)

[answerer]
exten => s,1,Answer()
 same => n,Wait(20)
 same => n,Hangup()
"""
    return gated, {"callgate.conf": include}


async def var_eventually(
    sandbox: AsteriskSandbox, channel: str, name: str, within: float
) -> str | None:
    """A channel variable once set (None if the channel is gone or time is up)."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        try:
            value = await sandbox.get_channel_var(channel, name)
        except Exception:
            return None
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    return None


async def gone_eventually(sandbox: AsteriskSandbox, channel: str, within: float) -> bool:
    """True once the channel no longer exists."""
    for _ in range(int(within / 0.05) + 1):
        ids = {c["id"] for c in await sandbox.list_channels()}
        if channel not in ids:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def gate(redis_url: str) -> AsyncIterator[Gate]:
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config(), store)
    await ListAdmin(gate.config.policy, gate.keyspace, store).add("red", [LISTED], "default", "")
    yield gate
    await store.close()


def ari_config(sandbox: AsteriskSandbox, on_refuse: str = "hangup") -> AriConfig:
    return AriConfig(
        url=sandbox.ari_url,
        user=sandbox.ari_user,
        password=sandbox.ari_password,
        on_refuse=on_refuse,
        reconnect_max_s=1.0,
    )


@asynccontextmanager
async def serving(
    gate: Gate, sandbox: AsteriskSandbox, on_refuse: str = "hangup", connected: bool = True
) -> AsyncIterator[StasisGate]:
    """A StasisGate running for the block (connected first unless told not to wait)."""
    stasis = StasisGate(gate, ari_config(sandbox, on_refuse))
    task = asyncio.create_task(stasis.run())
    try:
        if connected:
            async with asyncio.timeout(10):
                await stasis.connected.wait()
        yield stasis
    finally:
        await stasis.stop()
        await task


async def test_listed_is_hung_up_and_unlisted_continues(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """Through Stasis: the listed number is hung up; the unlisted one reaches the answerer."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    async with serving(gate, sandbox):
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        blocked = await sandbox.originate_local(LISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
        assert await gone_eventually(sandbox, blocked, 10)


async def test_continue_mode_gives_the_dialplan_the_verdict(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """on_refuse=continue: the dialplan sees CALLGATE_RESULT=BLOCK and the reason, then hangs up."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    async with serving(gate, sandbox, "continue"):
        blocked = await sandbox.originate_local(LISTED, "gated")
        await sandbox.wait_for_log(r"callgate: BLOCK listed:red", within=10)
        assert await gone_eventually(sandbox, blocked, 10)


async def test_reconnects_after_asterisk_restart_and_gates_again(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """Asterisk restarted: the app reconnects by itself and the next call is decided."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    async with serving(gate, sandbox) as stasis:
        await asyncio.to_thread(sandbox.restart)
        for _ in range(300):  # bounded: 15 s
            if stasis.connected.is_set() and stasis.reconnects >= 1:
                break
            await asyncio.sleep(0.05)
        assert 1 <= stasis.reconnects
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)


async def test_channels_left_waiting_are_decided_on_connect(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """Channels already waiting in the app when callgate (re)connects are decided at once."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    # Keep the app registered without deciding anything: an event stream nobody reads.
    async with (
        AriClient(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password, "callgate") as client,
        client.event_stream(),
    ):
        waiting = await sandbox.originate_local(UNLISTED, "gated")
        await asyncio.sleep(0.5)
        assert await var_eventually(sandbox, waiting, "REACHED", 0.2) is None
    started = time.monotonic()
    async with serving(gate, sandbox, connected=False):
        assert "ALLOW" == await var_eventually(sandbox, waiting, "REACHED", 5)
        assert time.monotonic() - started < 5


async def test_ari_client_errors(asterisk_factory: SandboxFactory) -> None:
    """A gone channel is AriNotFound; a closed port is AriUnavailable; no password in repr."""
    sandbox = asterisk_factory("[answerer]\nexten => s,1,Answer()\n")
    async with AriClient(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password, "x") as client:
        with pytest.raises(AriNotFound):
            await client.hangup("no-such-channel", 16)
        assert sandbox.ari_password not in repr(client)
    async with AriClient("http://127.0.0.1:1/ari", "u", "p", "x") as closed:
        with pytest.raises(AriUnavailable):
            await closed.channels()
