"""The Stasis door in-process against a real Asterisk: decisions, reconnects, the sweep.

Faults of Asterisk's REST interface (a failed continue, a listing that is not a list, a
dropped event stream) are injected by ``FaultyClient``, the door's own ARI client with
one call made to fail; everything else goes to the real Asterisk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sandbox import AsteriskSandbox, SandboxFactory

from gate.config.loader import AriConfig
from gate.core.errors import StoreError
from gate.lists.admin import ListAdmin
from gate.ops.audit import read_range
from gate.service import Evaluation, Gate, Observed
from gate.stasis.ari import AriClient, AriError, AriNotFound, AriUnavailable
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

[gated-twice]
exten => _X.,1,GoSub(callgate-stasis,s,1(${EXTEN},default,e2e,campaign,trunk-a))
 same => n,Set(FIRST=${CALLGATE_RESULT})
 same => n,GoSub(callgate-stasis,s,1(${EXTEN},default,e2e,campaign,trunk-b))
 same => n,Set(REACHED=${FIRST}+${CALLGATE_RESULT})
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


def ari_config(
    sandbox: AsteriskSandbox, on_refuse: str = "hangup", decided_context: str = "callgate-decided"
) -> AriConfig:
    return AriConfig(
        url=sandbox.ari_url,
        user=sandbox.ari_user,
        password=sandbox.ari_password,
        on_refuse=on_refuse,
        reconnect_max_s=1.0,
        decided_context=decided_context,
    )


class Recorded:
    """A decision observer: the numbers of the recorded decisions, in order."""

    def __init__(self) -> None:
        self.numbers: list[str] = []

    def decided(self, observed: Observed) -> None:
        if observed.record:
            self.numbers.append(observed.attempt.dialled)

    def undone(self, evaluation: Evaluation) -> None:
        pass

    def store_failed(self, error: StoreError) -> None:
        pass


class FaultyClient(AriClient):
    """The door's ARI client with faults on demand; everything else reaches Asterisk."""

    def __init__(self, sandbox: AsteriskSandbox) -> None:
        super().__init__(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password, "callgate")
        self.failing_continues = 0  # this many continues fail (AriUnavailable)
        self.lost_replies = 0  # this many continues are carried out, then fail (reply lost)
        self.hangups_first = 0  # this many continues hang the channel up first (it leaves)
        self.continue_delay_s = 0.0  # a continue returns this late (after it took effect)
        self.bad_listings = 0  # this many GET /channels answer null
        self.buggy_sweeps = 0  # this many GET /channels raise a bug (TypeError)
        self.continues = 0
        self.listings = 0  # GET /channels answered (the sweeps done)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST request
        self.drop = asyncio.Event()  # set: the event stream ends (a lost connection)
        self.events: list[str] = []  # the type of every event the door was given
        # A listing taken while a channel waits, answered only after its continue has
        # (as a reply over HTTP may be): set to hold the next GET /channels so.
        self.late_listing = False
        self._started = asyncio.Event()  # a StasisStart was given to the door
        self._listed = asyncio.Event()  # the held listing was taken
        self._continued = asyncio.Event()  # a continue was answered after it

    async def continue_in_dialplan(
        self, channel_id: str, context: str = "", extension: str = ""
    ) -> None:
        self.continues += 1
        if self.hangups_first > 0:
            self.hangups_first -= 1
            await self.hangup(channel_id, 16)  # the real DELETE: the continue then answers 404
            # Asterisk answers the DELETE before the channel has gone: wait (bounded) until
            # it has, so that the continue below meets a channel that left.
            for _ in range(100):  # bounded: 2 s
                try:
                    await super().channel(channel_id)
                except AriNotFound:
                    break
                await asyncio.sleep(0.02)
        if self.failing_continues > 0:
            self.failing_continues -= 1
            raise AriUnavailable("injected: the continue request failed")
        if self.late_listing:
            await bounded(self._listed.wait())  # the listing shows the channel waiting
        await super().continue_in_dialplan(channel_id, context, extension)
        if self.lost_replies > 0:
            self.lost_replies -= 1
            raise AriUnavailable("injected: the continue's reply was lost")
        self._continued.set()
        await asyncio.sleep(self.continue_delay_s)

    async def _request(self, method: str, path: str, params: Any = None, body: Any = None) -> Any:
        self.requests.append((method, path))
        if (method, path) == ("GET", "/channels") and self.bad_listings > 0:
            self.bad_listings -= 1
            return None
        reply = await super()._request(method, path, params, body)
        if (method, path) == ("GET", "/channels"):
            self.listings += 1
        return reply

    def requests_for(self, channel_id: str) -> list[str]:
        """The REST requests that named ``channel_id``: ``"POST continue"``…"""
        prefix = f"/channels/{channel_id}"
        return [
            f"{method} {path[len(prefix) + 1 :] or 'channel'}"
            for method, path in self.requests
            if path.startswith(prefix)
        ]

    async def channels(self) -> list[dict[str, Any]]:
        if self.buggy_sweeps > 0:
            self.buggy_sweeps -= 1
            raise TypeError("injected: a bug in the sweep")
        if not self.late_listing:
            return await super().channels()
        self.late_listing = False
        await bounded(self._started.wait())  # a channel is in the application
        listing = await super().channels()
        self._listed.set()
        await bounded(self._continued.wait())
        await asyncio.sleep(0.2)  # its answer comes well after the continue's
        return listing

    @asynccontextmanager
    async def event_stream(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        async with super().event_stream() as events:
            yield self._until_dropped(events)

    async def _until_dropped(
        self, events: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        iterator = events.__aiter__()
        dropped = asyncio.ensure_future(self.drop.wait())
        try:
            while True:
                following = asyncio.ensure_future(iterator.__anext__())
                await asyncio.wait({following, dropped}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    self.drop.clear()
                    return
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                self.events.append(str(event.get("type")))
                if event.get("type") == "StasisStart":
                    self._started.set()
                yield event
        finally:
            dropped.cancel()


async def bounded(waiting: Awaitable[object], within: float = 10.0) -> None:
    """Wait for ``waiting`` at most ``within`` seconds (a stand-in's hold never hangs)."""
    async with asyncio.timeout(within):
        await waiting


async def logged(caplog: pytest.LogCaptureFixture, text: str, within: float) -> bool:
    """True once a log record containing ``text`` was emitted (bounded wait)."""
    for _ in range(int(within / 0.05) + 1):
        if any(text in r.getMessage() for r in caplog.records):
            return True
        await asyncio.sleep(0.05)
    return False


async def swept(client: FaultyClient) -> None:
    """Wait (bounded) until the door's sweep on connecting is over, so that a call placed
    now is brought by its StasisStart alone, not by that sweep as well."""
    for _ in range(200):  # bounded: 10 s
        if client.listings:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the door never listed the channels on connecting")


@asynccontextmanager
async def serving(
    gate: Gate,
    sandbox: AsteriskSandbox,
    on_refuse: str = "hangup",
    connected: bool = True,
    client: AriClient | None = None,
    decided_context: str = "callgate-decided",
) -> AsyncIterator[StasisGate]:
    """A StasisGate running for the block (connected first unless told not to wait)."""
    stasis = StasisGate(gate, ari_config(sandbox, on_refuse, decided_context), client)
    task = asyncio.create_task(stasis.run())
    try:
        if connected:
            async with asyncio.timeout(10):
                await stasis.connected.wait()
        yield stasis
    finally:
        await stasis.stop()
        await task


@pytest.mark.parametrize("over_websocket", [True, False], ids=["rest-over-websocket", "http"])
async def test_listed_is_hung_up_and_unlisted_continues(
    asterisk_factory: SandboxFactory, gate: Gate, over_websocket: bool
) -> None:
    """Through Stasis: the listed number is hung up; the unlisted one reaches the answerer.
    REST goes over the event WebSocket (Asterisk 22.10 takes it there), or over HTTP
    with rest_over_websocket=False."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = AriClient(
        sandbox.ari_url,
        sandbox.ari_user,
        sandbox.ari_password,
        "callgate",
        rest_over_websocket=over_websocket,
    )
    async with serving(gate, sandbox, client=client):
        assert over_websocket == client.rest_over_websocket
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        blocked = await sandbox.originate_local(LISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
        assert await gone_eventually(sandbox, blocked, 10)


async def test_an_allowed_or_refused_channel_costs_one_ari_request(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """One REST request per decision: an ALLOW is continued to the decided context (its
    extension carries CALLGATE_DECISION), a refusal in continue mode too, a refusal in
    hangup mode is one DELETE; the dialplan sees the same variables as before."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    async with serving(gate, sandbox, "continue", client=client):
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        refused = await sandbox.originate_local(LISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
        assert await gone_eventually(sandbox, refused, 10)
    async with serving(gate, sandbox, "hangup", client=client):
        hung_up = await sandbox.originate_local(LISTED, "gated")
        assert await gone_eventually(sandbox, hung_up, 10)
    assert (["POST continue"], ["POST continue"], ["DELETE channel"]) == (
        client.requests_for(allowed),
        client.requests_for(refused),
        client.requests_for(hung_up),
    )


async def test_asterisk_sends_the_door_only_the_events_it_reads(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """On connecting the door sets the application's event filter, so the real Asterisk sends
    an allowed or a hung-up channel's StasisStart (and the REST answers) only: without it,
    the door is also sent each channel's StasisEnd and a hung-up one's
    ChannelHangupRequest, which it never reads."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    async with serving(gate, sandbox, "hangup", client=client):
        for _ in range(100):  # bounded: 5 s (the door asks right after connecting)
            application = await sandbox.ari("GET", "/applications/callgate")
            if application["events_allowed"]:
                break
            await asyncio.sleep(0.05)
        await swept(client)
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        refused = await sandbox.originate_local(LISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
        assert await gone_eventually(sandbox, refused, 10)
        await asyncio.sleep(0.5)  # time for the events a channel's end would bring
    assert [{"type": "StasisStart"}, {"type": "RESTResponse"}] == application["events_allowed"]
    assert ["StasisStart", "StasisStart"] == client.events
    assert (["POST continue"], ["DELETE channel"]) == (
        client.requests_for(allowed),
        client.requests_for(refused),
    )


async def test_without_a_decided_context_a_decision_is_set_then_continued(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """``decided_context = ""`` (a dialplan without [callgate-decided]): two REST requests,
    set CALLGATE_DECISION then continue after Stasis(); the dialplan sees ALLOW."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    async with serving(gate, sandbox, client=client, decided_context=""):
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
    assert ["POST variable", "POST continue"] == client.requests_for(allowed)


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


async def test_a_second_stasis_on_the_same_channel_is_decided_again(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """Trunk failover runs the subroutine twice on one channel: both stays are decided
    (and both attempts recorded), none is left parked."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox):
        twice = await sandbox.originate_local(UNLISTED, "gated-twice")
        assert "ALLOW+ALLOW" == await var_eventually(sandbox, twice, "REACHED", 10)
    assert [UNLISTED, UNLISTED] == recorded.numbers


async def test_a_new_stay_that_starts_while_the_continue_returns_is_decided(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """The channel is back in Stasis (failover) before the first continue has returned:
    the new stay is decided once the first decision is done."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    client.continue_delay_s = 0.5
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox, client=client):
        twice = await sandbox.originate_local(UNLISTED, "gated-twice")
        assert "ALLOW+ALLOW" == await var_eventually(sandbox, twice, "REACHED", 10)
    assert [UNLISTED, UNLISTED] == recorded.numbers


async def test_a_failed_continue_is_retried_with_the_same_decision(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """Two continues fail: the door retries the same decision; the call goes through and
    its ALLOW is recorded once."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    client.failing_continues = 2
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox, client=client):
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
    assert ([UNLISTED], 3) == (recorded.numbers, client.continues)


async def test_an_allow_whose_channel_left_before_the_continue_is_undone(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """The channel hangs up between its decision and its continue (404): no call went out,
    so its ALLOW is neither counted nor kept in the audit trail."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    client.hangups_first = 1
    async with serving(gate, sandbox, client=client):
        await swept(client)
        gone = await sandbox.originate_local(UNLISTED, "gated")
        assert await gone_eventually(sandbox, gone, 10)
        for _ in range(100):  # bounded: the void runs in the background
            if getattr(gate.store, "voids", Counter())["undone"]:
                break
            await asyncio.sleep(0.05)
    entries = [r async for r in read_range(gate.store.admin_client, "callgate")]
    assert (1, []) == (client.continues, [e["verdict"] for e in entries])


async def test_a_channel_decided_while_the_sweep_lists_it_is_not_decided_again(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """The listing of the sweep on connecting is taken while a channel waits in the
    application, and answered after the channel, decided on its StasisStart, was
    continued: the sweep does not decide it a second time (a second attempt recorded, and
    a DELETE or continue sent to a call already on its way)."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    client.late_listing = True
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox, client=client):
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
        await swept(client)
        await asyncio.sleep(0.6)  # the listing's answer (0.2 s late) and what follows it
    assert ([UNLISTED], ["POST continue"]) == (recorded.numbers, client.requests_for(allowed))


class Broken:
    """A decision observer with a bug: it raises on every decision."""

    def decided(self, observed: Observed) -> None:
        raise RuntimeError("injected: a bug after the decision")

    def undone(self, evaluation: Evaluation) -> None:
        pass

    def store_failed(self, error: StoreError) -> None:
        pass


async def test_a_channel_whose_decision_fails_on_a_bug_gets_the_fail_mode(
    asterisk_factory: SandboxFactory, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug while deciding (here an observer that raises) is logged, and the channel is
    continued with an ERROR for the dialplan's fail mode (DEFER: hung up), not left
    waiting in the application with nobody to decide it."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    gate.observers.append(Broken())
    async with serving(gate, sandbox, client=client):
        await swept(client)
        failed = await sandbox.originate_local(UNLISTED, "gated")
        assert await gone_eventually(sandbox, failed, 10)
    assert ["POST continue"] == client.requests_for(failed)
    assert await logged(caplog, "the dialplan's fail mode applies", 1)


async def test_the_sweep_reapplies_a_decision_it_could_not_apply_and_never_decides_again(
    asterisk_factory: SandboxFactory, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """Every continue fails until the connection drops; after the reconnect the sweep finds
    the channel and re-applies its decision: one ALLOW recorded, the call goes through."""
    caplog.set_level(logging.INFO, logger="callgate")
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    client.failing_continues = 2
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox, client=client) as stasis:
        stasis.apply_tries, stasis.apply_backoff_s = 2, 0.05
        await swept(client)
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert await logged(caplog, "the next sweep applies it", 10)
        client.drop.set()
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
    assert [UNLISTED] == recorded.numbers


async def test_a_decision_a_closed_door_could_not_apply_is_applied_by_the_next_door(
    asterisk_factory: SandboxFactory, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """Every continue of a door fails until it is closed (as a killed leader of ``--workers``,
    or a restart): the next door, a new one on the same Redis, continues the waiting
    channel with the first decision, never decides it again: one ALLOW recorded, the call
    goes through, and the decision saved in Redis is deleted."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    failing = FaultyClient(sandbox)
    failing.failing_continues = 10**9  # every continue of this door fails
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox, client=failing) as stasis:
        # Still trying when closed (0.05 s doubled: 20 tries take some 14 hours); a stop
        # makes the tries left at once, and they fail too.
        stasis.apply_tries, stasis.apply_backoff_s = 20, 0.05
        await swept(failing)
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert await logged(caplog, "could not apply the decision (try 3", 10)
    saved = gate.keyspace.stasis_key(allowed)
    assert 1 == await gate.store.admin_client.exists(saved)
    next_gate = Gate(make_config(), gate.store)  # a new process's: only Redis is shared
    next_gate.observers.append(recorded)
    client = FaultyClient(sandbox)
    async with serving(next_gate, sandbox, client=client):
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
    assert ([UNLISTED], ["POST continue"], 0) == (
        recorded.numbers,
        client.requests_for(allowed),
        await gate.store.admin_client.exists(saved),
    )


async def test_a_saved_decision_is_deleted_when_a_new_stay_begins(
    asterisk_factory: SandboxFactory, gate: Gate
) -> None:
    """The first continue is carried out but its reply is lost (the decision is saved), and
    the channel enters the application again (failover): the new stay is decided, and
    the first stay's saved decision is deleted, never left for a sweep to apply to it."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    client.lost_replies = 1
    recorded = Recorded()
    gate.observers.append(recorded)
    async with serving(gate, sandbox, client=client):
        await swept(client)
        twice = await sandbox.originate_local(UNLISTED, "gated-twice")
        assert "ALLOW+ALLOW" == await var_eventually(sandbox, twice, "REACHED", 10)
    assert ([UNLISTED, UNLISTED], 0) == (
        recorded.numbers,
        await gate.store.admin_client.exists(gate.keyspace.stasis_key(twice)),
    )


async def test_a_decision_redis_cannot_save_is_still_retried_and_applied(
    asterisk_factory: SandboxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis is down (the decision is the fail mode's) and two continues fail: saving the
    decision fails, logged once, and the door goes on retrying it as before: the third
    continue carries it out."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    store = Store("redis://127.0.0.1:1", deadline_s=0.2)  # nothing listens there
    client = FaultyClient(sandbox)
    client.failing_continues = 2
    try:
        async with serving(Gate(make_config(), store), sandbox, "continue", client=client) as s:
            s.apply_tries, s.apply_backoff_s = 3, 0.05
            await swept(client)
            channel = await sandbox.originate_local(UNLISTED, "gated")
            for _ in range(200):  # bounded: 10 s
                if client.requests_for(channel):  # the continue that reached Asterisk
                    break
                await asyncio.sleep(0.05)
    finally:
        await store.close()
    saving = [r for r in caplog.records if "could not save an unapplied decision" in r.message]
    assert (3, ["POST continue"], 1) == (
        client.continues,
        client.requests_for(channel),
        len(saving),
    )


@pytest.mark.parametrize("fault", ["bad_listings", "buggy_sweeps"])
async def test_a_failure_in_the_door_is_logged_and_the_door_reconnects(
    asterisk_factory: SandboxFactory, gate: Gate, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """GET /channels answers null, or the sweep hits a bug: the door logs it, reconnects,
    and goes on deciding calls."""
    caplog.set_level(logging.INFO, logger="callgate")
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    client = FaultyClient(sandbox)
    setattr(client, fault, 1)
    async with serving(gate, sandbox, client=client, connected=False) as stasis:
        for _ in range(200):  # bounded: 10 s
            if stasis.reconnects >= 1 and stasis.connected.is_set():
                break
            await asyncio.sleep(0.05)
        allowed = await sandbox.originate_local(UNLISTED, "gated")
        assert "ALLOW" == await var_eventually(sandbox, allowed, "REACHED", 10)
    expected = {"bad_listings": "ARI failed", "buggy_sweeps": "Stasis door failed"}[fault]
    assert 1 == stasis.reconnects
    assert [expected] == [
        expected for r in caplog.records if r.levelno >= logging.WARNING and expected in r.message
    ]


async def test_close_returns_within_its_bound(asterisk_factory: SandboxFactory, gate: Gate) -> None:
    """close() of a connected door returns promptly and leaves it disconnected."""
    text, files = dialplan()
    sandbox = asterisk_factory(text, extra_files=files)
    stasis = StasisGate(gate, ari_config(sandbox))
    stasis.start()
    async with asyncio.timeout(10):
        await stasis.connected.wait()
    started = time.monotonic()
    await stasis.close()
    assert time.monotonic() - started < 2.0
    assert not stasis.connected.is_set()


async def test_a_reply_that_is_not_json_is_an_ari_error() -> None:
    """An ARI endpoint answering 200 with something that is not JSON (here a broken HTTP
    peer standing where Asterisk should be) is an AriError, not a ValueError."""

    async def not_json(_request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>")

    app = web.Application()
    app.router.add_get("/ari/channels", not_json)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "x") as client:
            with pytest.raises(AriError, match="not JSON"):
                await client.channels()
    finally:
        await runner.cleanup()
