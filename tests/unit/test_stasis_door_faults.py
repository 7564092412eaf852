"""The Stasis door against a hostile or broken in-process ARI stand-in (a real Redis).

The stand-in plays an Asterisk 22 with channels waiting in ``Stasis(callgate,…)``: it
serves the event WebSocket (answering REST over it, or holding chosen answers) and the
same REST routes over HTTP, and records what was done to each channel (continued,
hung up). The tests send it frames a real Asterisk would not, or would only send after a
fault, and check that each channel still gets its one decision.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import WSMsgType, web

from gate.config.loader import AriConfig
from gate.core.errors import StoreError
from gate.lists.admin import ListAdmin
from gate.ops.audit import read_range
from gate.service import Evaluation, Gate, Observed
from gate.stasis.door import StasisGate, parse_stasis_start

NUMBER = "0612345678"


def channel(channel_id: str, number: str = NUMBER) -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": f"Local/{number}@gated-{channel_id};2",
        "creationtime": "2026-01-01T00:00:00.000+0000",
        "caller": {"name": "", "number": "0140000000"},
        "dialplan": {"context": "callgate-stasis", "exten": "s", "priority": 5,
                     "app_name": "Stasis", "app_data": f"callgate,{number},tenant=default"},
    }  # fmt: skip


def stasis_start(chan: dict[str, Any], application: str = "callgate") -> dict[str, Any]:
    number = chan["dialplan"]["app_data"].split(",")[1]
    return {"type": "StasisStart", "application": application,
            "timestamp": "2026-01-01T00:00:00.001+0000",
            "args": [number, "tenant=default"], "channel": chan}  # fmt: skip


@dataclass
class Asterisk:
    """The stand-in's channels and what was done to them."""

    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)  # in Stasis(callgate)
    dialling: dict[str, dict[str, Any]] = field(default_factory=dict)  # continued, alive
    done: list[tuple[str, str]] = field(default_factory=list)  # ("continue"|"hangup", id)
    held: set[str] = field(default_factory=set)  # "METHOD uri" never answered over the WS
    failing: dict[str, int] = field(default_factory=dict)  # id -> its continues answered 500
    asked: list[str] = field(default_factory=list)  # "METHOD uri" of each RESTRequest
    # Not None: a continue over the WS is answered only once this is set (Asterisk busy),
    # the others meanwhile; ``outstanding`` counts those asked and not yet answered.
    released: asyncio.Event | None = None
    outstanding: int = 0
    most_outstanding: int = 0
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    variables: dict[str, dict[str, str]] = field(default_factory=dict)  # id -> name -> value
    extensions: list[tuple[str, str]] = field(default_factory=list)  # (id, continued to)

    def reply(self, method: str, uri: str, query: dict[str, str] | None = None) -> tuple[int, str]:
        query = query or {}
        parts = [unquote(p) for p in uri.split("/")]
        if parts[0] in ("asterisk", "applications"):
            return 200, json.dumps({})
        if parts == ["channels"] and method == "GET":
            return 200, json.dumps(list(self.waiting.values()))
        if parts[0] != "channels" or len(parts) < 2:
            return 404, ""
        cid = parts[1]
        alive = {**self.dialling, **self.waiting}
        if cid not in alive:
            return 404, json.dumps({"message": "Channel not found"})
        if method == "GET" and parts[2:] == ["variable"]:
            value = self.variables.get(cid, {}).get(query.get("variable", ""))
            if value is None:  # as Asterisk 22 answers for a variable never set
                return 404, json.dumps({"message": "Provided variable was not found"})
            return 200, json.dumps({"value": value})
        if method == "GET":
            return 200, json.dumps(alive[cid])
        if method == "DELETE":
            self.waiting.pop(cid, None)
            self.dialling.pop(cid, None)
            self.done.append(("hangup", cid))
            return 204, ""
        if cid not in self.waiting:
            return 409, json.dumps({"message": "Channel not in Stasis application"})
        if parts[2:] == ["continue"] and self.failing.get(cid, 0) > 0:
            self.failing[cid] -= 1
            return 500, json.dumps({"message": "Internal Server Error"})
        if parts[2:] == ["continue"]:
            chan = self.waiting.pop(cid)
            self.dialling[cid] = {**chan, "dialplan": {**chan["dialplan"], "app_name": "Dial"}}
            self.done.append(("continue", cid))
            self.extensions.append((cid, query.get("extension", "")))
        return 204, ""

    async def send(self, frame: str | dict[str, Any]) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.sockets[-1].send_str(text)


@pytest.fixture
async def asterisk() -> AsyncIterator[tuple[Asterisk, str]]:
    state = Asterisk()
    answering: set[asyncio.Task[None]] = set()

    async def answer_later(ws: web.WebSocketResponse, sent: dict[str, Any]) -> None:
        assert state.released is not None
        await state.released.wait()
        state.outstanding -= 1
        query = {q["name"]: q["value"] for q in sent.get("query_strings", [])}
        status, body = state.reply(sent["method"], sent["uri"], query)
        answer = {"type": "RESTResponse", "request_id": sent["request_id"],
                  "status_code": status, "message_body": body}  # fmt: skip
        if not ws.closed:
            await ws.send_str(json.dumps(answer))

    async def events(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        state.sockets.append(ws)
        state.connected.set()
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            sent = json.loads(message.data)
            state.asked.append(f"{sent['method']} {sent['uri']}")
            if f"{sent['method']} {sent['uri']}" in state.held:
                continue
            if state.released is not None and sent["uri"].endswith("/continue"):
                state.outstanding += 1
                state.most_outstanding = max(state.most_outstanding, state.outstanding)
                task = asyncio.create_task(answer_later(ws, sent))
                answering.add(task)
                task.add_done_callback(answering.discard)
                continue
            query = {q["name"]: q["value"] for q in sent.get("query_strings", [])}
            status, body = state.reply(sent["method"], sent["uri"], query)
            answer = {"type": "RESTResponse", "request_id": sent["request_id"],
                      "status_code": status, "message_body": body}  # fmt: skip
            await ws.send_str(json.dumps(answer))
        return ws

    async def rest(request: web.Request) -> web.Response:
        uri = request.raw_path.split("?")[0][5:]
        status, body = state.reply(request.method, uri, dict(request.query))
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/ari/events", events)
    app.router.add_route("*", "/ari/{tail:.*}", rest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield state, f"http://127.0.0.1:{runner.addresses[0][1]}/ari"
    finally:
        for task in list(answering):
            task.cancel()
        await asyncio.gather(*answering, return_exceptions=True)
        await runner.cleanup()


@asynccontextmanager
async def serving(
    gate: Gate, url: str, on_refuse: str = "hangup", max_deciding: int = 256
) -> AsyncIterator[StasisGate]:
    """A door running for the block, connected and past its first sweep."""
    config = AriConfig(
        url, "u", "p", on_refuse=on_refuse, reconnect_max_s=0.5, max_deciding=max_deciding
    )
    door = StasisGate(gate, config)
    task = asyncio.create_task(door.run())
    try:
        async with asyncio.timeout(5):
            await door.connected.wait()
        await asyncio.sleep(0.1)  # the sweep on connecting (nothing waits yet)
        yield door
    finally:
        await door.stop()
        async with asyncio.timeout(15):
            await task


async def until(condition: Any, within: float = 3.0) -> bool:
    """True once ``condition()`` is (bounded wait)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return bool(condition())


@pytest.mark.parametrize("frame", ["truncated", "channel-null", "no-id"])
async def test_a_stasis_start_the_door_cannot_read_still_gets_its_channel_decided(
    asterisk: tuple[Asterisk, str], gate: Gate, frame: str
) -> None:
    """A StasisStart cut short (not JSON) or whose channel is not an object: the door cannot
    tell which channel it brought, so it lists the waiting ones (a sweep) and decides it,
    rather than leaving it parked until the next reconnect, which may never come."""
    state, url = asterisk
    async with serving(gate, url):
        state.waiting["c1"] = chan = channel("c1")
        text = json.dumps(stasis_start(chan))
        if frame == "truncated":
            await state.send(text[: len(text) // 2])
        elif frame == "channel-null":
            await state.send({**stasis_start(chan), "channel": None})
        else:
            await state.send(stasis_start({k: v for k, v in chan.items() if k != "id"}))
        assert await until(lambda: state.done)
    assert [("continue", "c1")] == state.done


async def test_a_replayed_stasis_start_never_decides_a_continued_channel_again(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """The StasisStart of a channel already continued comes again (replayed after a
    reconnect, by a proxy): the channel has left the application, so it is not decided
    again: its call, on its way, is never hung up by a second decision (here a BLOCK,
    the number having been opted out meanwhile)."""
    state, url = asterisk
    async with serving(gate, url):
        state.waiting["c1"] = chan = channel("c1")
        event = stasis_start(chan)
        await state.send(event)
        assert await until(lambda: state.done)
        await ListAdmin(gate.config.policy, gate.keyspace, gate.store).add(
            "red", [NUMBER], "default", ""
        )
        await state.send(event)
        await asyncio.sleep(0.5)
    assert [("continue", "c1")] == state.done


async def test_a_stasis_start_for_another_application_is_left_alone(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """A StasisStart of another application (a broken Asterisk or proxy mixing streams):
    that channel is not callgate's to decide (ARI would continue it all the same)."""
    state, url = asterisk
    async with serving(gate, url):
        other = channel("d1")
        other["dialplan"]["app_data"] = f"dialer,{NUMBER}"
        state.waiting["d1"] = other
        await state.send(stasis_start(other, application="dialer"))
        state.waiting["c1"] = chan = channel("c1")
        await state.send(stasis_start(chan))
        assert await until(lambda: state.done)
        await asyncio.sleep(0.3)
    assert [("continue", "c1")] == state.done


async def test_a_stop_while_a_continue_is_unanswered_still_continues_the_channel(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """The door is stopped (SIGTERM) while the continue it sent over the WebSocket waits
    for its answer: closing the WebSocket fails that request, and the door tries again
    (over HTTP) before it exits: the channel goes on, never left parked in Stasis."""
    state, url = asterisk
    state.held = {"POST channels/c1/continue"}
    async with serving(gate, url):
        state.waiting["c1"] = chan = channel("c1")
        await state.send(stasis_start(chan))
        assert await until(lambda: "POST channels/c1/continue" in state.asked)
    assert ([("continue", "c1")], {}) == (state.done, state.waiting)


class Decided:
    """A decision observer: the numbers of the decisions made, in order."""

    def __init__(self) -> None:
        self.numbers: list[str] = []

    def decided(self, observed: Observed) -> None:
        self.numbers.append(observed.attempt.dialled)

    def undone(self, evaluation: Evaluation) -> None:
        pass

    def store_failed(self, error: StoreError) -> None:
        pass


def quick_retries(door: StasisGate) -> None:
    """The door's tries (5) and re-applications made quick, as a test can wait for them."""
    door.apply_backoff_s, door.reapply_s, door.reapply_max_s = 0.02, 0.1, 0.4


async def audited(gate: Gate) -> Counter[tuple[str, str]]:
    """(channel id, verdict) of each entry of the audit trail (the number in the channel's
    name is kept hashed: its id, after ``@gated-``, is not)."""
    entries = [r async for r in read_range(gate.store.admin_client, "callgate")]
    return Counter((e["channel"].split("@gated-")[-1].split(";")[0], e["verdict"]) for e in entries)


def continues(state: Asterisk, cid: str) -> int:
    return state.asked.count(f"POST channels/{cid}/continue")


async def test_a_decision_asterisk_failed_to_apply_is_reapplied_without_a_reconnect(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """Asterisk answers the continue with 500 more times than the door tries it, while the
    event WebSocket stays up (no reconnect, so no connect's sweep): the door re-applies the
    decision it kept, with backoff, until a continue goes through: the channel is continued
    once, its ALLOW decided and counted once, its saved copy deleted from Redis."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    async with serving(gate, url) as door:
        quick_retries(door)
        failures = 2 * door.apply_tries + 2  # two re-applications fail too
        state.failing["c1"] = failures
        state.waiting["c1"] = chan = channel("c1")
        await state.send(stasis_start(chan))
        assert await until(lambda: state.done, within=6.0)
        await asyncio.sleep(0.3)  # a second continue, or decision, would come meanwhile
        assert 0 == door.reconnects
        saved = await gate.store.admin_client.exists(gate.keyspace.stasis_key("c1"))
        assert (failures + 1, {}, 0) == (continues(state, "c1"), dict(door._unapplied), saved)
    assert [("continue", "c1")] == state.done
    assert [NUMBER] == decided.numbers
    assert Counter({("c1", "ALLOW"): 1}) == await audited(gate)


async def test_a_channel_gone_while_its_decision_is_kept_is_dropped_not_decided_again(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """Two channels' continues keep failing (500) with the WebSocket up; one hangs up while
    its decision is kept for re-application: it is dropped (its saved copy deleted), never
    decided again nor continued, while the other is re-applied once Asterisk recovers:
    one decision each, one continue in all."""
    state, url = asterisk
    other = "0698765432"
    decided = Decided()
    gate.observers.append(decided)
    async with serving(gate, url) as door:
        quick_retries(door)
        state.failing = {"c1": 1000, "c2": 1000}
        state.waiting["c1"] = first = channel("c1")
        state.waiting["c2"] = second = channel("c2", other)
        await state.send(stasis_start(first))
        await state.send(stasis_start(second))
        assert await until(lambda: {"c1", "c2"} <= set(door._unapplied), within=3.0)
        del state.waiting["c2"]  # the caller hangs up: a listing, or a continue (404), says
        assert await until(lambda: "c2" not in door._unapplied and "c2" not in door._deciding)
        state.failing["c1"] = 0  # Asterisk recovers
        assert await until(lambda: state.done, within=3.0)
        await asyncio.sleep(0.3)  # a second continue, or decision, would come meanwhile
        saved = await gate.store.admin_client.exists(
            gate.keyspace.stasis_key("c1"), gate.keyspace.stasis_key("c2")
        )
        assert (0, {}, 0) == (door.reconnects, dict(door._unapplied), saved)
    assert [("continue", "c1")] == state.done
    assert sorted([NUMBER, other]) == sorted(decided.numbers)
    # c1's ALLOW counted once; c2's stands (its failed tries may have been carried out),
    # or is undone (gone at the first try of a re-application its listing showed waiting)
    entries = await audited(gate)
    assert {("c1", "ALLOW"): 1} == {k: n for k, n in entries.items() if k[0] != "c2"}
    assert entries[("c2", "ALLOW")] <= 1


async def test_a_door_reapplying_kept_decisions_stops_promptly(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """Asterisk never carries out the continue: the door goes on re-applying the decision
    while connected, and its stop still ends ``run()`` promptly (the re-applying ends with
    the connection; the stop's last sweep tries the decision once more, at once)."""
    state, url = asterisk
    door = StasisGate(gate, AriConfig(url, "u", "p", reconnect_max_s=0.5))
    task = asyncio.create_task(door.run())
    try:
        async with asyncio.timeout(5):
            await door.connected.wait()
        quick_retries(door)
        state.failing["c1"] = 1_000_000
        state.waiting["c1"] = chan = channel("c1")
        await state.send(stasis_start(chan))
        assert await until(lambda: continues(state, "c1") > 2 * door.apply_tries, within=5.0)
    finally:
        await door.stop()
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(15):
            await task
    assert asyncio.get_running_loop().time() - started < 2.0
    assert ([], 0) == (state.done, door.reconnects)


async def test_a_flood_of_stasis_starts_is_decided_a_bounded_number_at_a_time(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """Many channels enter the application at once (a flood, or an Asterisk replaying):
    the door decides at most ``deciding_max`` of them at a time, the others waiting their
    turn: never more continues outstanding than that, and every channel is still decided
    and continued, once."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    count = 30
    state.released = asyncio.Event()  # Asterisk holds the continues: decisions pile up
    async with serving(gate, url, max_deciding=4) as door:
        for n in range(count):  # numbers of their own: no attempt cap refuses one
            state.waiting[f"c{n}"] = chan = channel(f"c{n}", f"06{n:08d}")
            await state.send(stasis_start(chan))
        # every StasisStart read, and as many continues outstanding as may be
        assert await until(lambda: len(door._deciding) == count and state.outstanding >= 4)
        state.released.set()
        assert 4 == state.most_outstanding
        assert await until(lambda: len(state.done) == count)
    assert sorted(("continue", f"c{n}") for n in range(count)) == sorted(state.done)
    assert sorted(f"06{n:08d}" for n in range(count)) == sorted(decided.numbers)


async def test_a_stasis_start_replayed_while_a_continue_fails_is_not_decided_again(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """The channel's StasisStart comes again (replayed) while the continue of its decision
    is under way, and that continue then fails (500): the channel is still waiting, but
    the replay is of the stay being decided: the decision's next try continues it, and it
    is never decided again (one decision, one ALLOW counted)."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    state.released = asyncio.Event()
    state.failing["c1"] = 1
    async with serving(gate, url) as door:
        quick_retries(door)
        state.waiting["c1"] = chan = channel("c1")
        event = stasis_start(chan)
        await state.send(event)
        assert await until(lambda: continues(state, "c1") == 1)
        await state.send(event)  # the replay, read while the continue waits
        # the door reads frames in order: c2's continue asked, the replay was read
        state.waiting["c2"] = marker = channel("c2")
        await state.send(stasis_start(marker))
        assert await until(lambda: continues(state, "c2") == 1)
        state.released.set()  # c1's continue: 500; the next try goes through
        assert await until(lambda: len(state.done) == 2)
    assert [("continue", "c1"), ("continue", "c2")] == sorted(state.done)
    assert [NUMBER, NUMBER] == decided.numbers
    assert Counter({("c1", "ALLOW"): 1, ("c2", "ALLOW"): 1}) == await audited(gate)


async def test_a_stasis_start_replayed_while_its_decision_is_kept_reapplies_it(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """Every try of the channel's continue failed (500): its decision is kept for
    re-application; then its StasisStart comes again (replayed). The channel still waits,
    but in the same stay: the kept decision is re-applied, the channel never decided
    again (one decision, one ALLOW counted, one continue carried out)."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    async with serving(gate, url) as door:
        quick_retries(door)
        door.reapply_s = door.reapply_max_s = 60.0  # only the replay may re-apply it
        state.failing["c1"] = door.apply_tries
        state.waiting["c1"] = chan = channel("c1")
        event = stasis_start(chan)
        await state.send(event)
        assert await until(lambda: "c1" in door._unapplied and "c1" not in door._deciding)
        await state.send(event)  # the replay
        assert await until(lambda: state.done)
    assert [("continue", "c1")] == state.done
    assert [NUMBER] == decided.numbers
    assert Counter({("c1", "ALLOW"): 1}) == await audited(gate)
    assert door.apply_tries + 1 == continues(state, "c1")


async def test_a_new_stay_of_a_channel_whose_decision_is_kept_is_decided(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """The decision of the channel's first stay is kept (its tries all failed), and a
    StasisStart of a later stay comes (another timestamp: the continue was carried out,
    its replies lost, and trunk failover brought the channel back): that stay is decided,
    never given the first stay's decision."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    async with serving(gate, url, on_refuse="continue") as door:
        quick_retries(door)
        door.reapply_s = door.reapply_max_s = 60.0  # only the new stay may continue it
        state.failing["c1"] = door.apply_tries
        state.waiting["c1"] = chan = channel("c1")
        await state.send(stasis_start(chan))
        assert await until(lambda: "c1" in door._unapplied and "c1" not in door._deciding)
        await state.send({**stasis_start(chan), "timestamp": "2026-01-01T00:00:09.000+0000"})
        assert await until(lambda: state.done)
    assert [("continue", "c1")] == state.done
    assert [NUMBER, NUMBER] == decided.numbers
    assert door.apply_tries + 1 == continues(state, "c1")


def created(shift_s: float) -> str:
    """A ``creationtime`` ``shift_s`` from now, as ARI writes it."""
    when = datetime.now(UTC) + timedelta(seconds=shift_s)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


async def killed_after_deciding(gate: Gate, url: str, chan: dict[str, Any]) -> str:
    """What a door SIGKILLed between its decision and its continue leaves: the decision
    recorded (audit entry, attempt counted), nothing saved, the channel still waiting.
    Returns the value it was about to continue the channel with."""
    door = StasisGate(gate, AriConfig(url, "u", "p"))
    stay = parse_stasis_start(stasis_start(chan))
    assert stay is not None
    action = await door._decide(stay)
    await door.client.close()
    assert action.value.startswith("ALLOW|")
    return action.value


async def test_a_decision_recorded_by_a_door_killed_before_its_continue_is_reapplied(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """The gate is killed after its decision was recorded (audit entry, attempt counted)
    but before Asterisk carried out the continue: the restarted door's sweep finds the
    channel waiting, on its first stay, with that decision in the audit trail: it is
    re-applied (the same value), never decided and counted again."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    state.waiting["c1"] = chan = {**channel("c1"), "creationtime": created(-1.0)}
    value = await killed_after_deciding(gate, url, chan)
    async with serving(gate, url):
        assert await until(lambda: state.done)
        await asyncio.sleep(0.3)  # a second decision would come meanwhile
    assert ([("continue", "c1")], [("c1", value)]) == (state.done, state.extensions)
    assert [NUMBER] == decided.numbers
    assert Counter({("c1", "ALLOW"): 1}) == await audited(gate)


async def test_a_channel_waiting_with_no_recorded_decision_is_decided_on_a_sweep(
    asterisk: tuple[Asterisk, str], gate: Gate
) -> None:
    """A channel that entered the application while no door ran, with no decision in the
    audit trail (another channel's is there): the sweep decides it, once."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    state.waiting["c2"] = other = {**channel("c2"), "creationtime": created(-1.0)}
    await killed_after_deciding(gate, url, other)  # the same number, another channel
    state.waiting.pop("c2")  # hung up meanwhile
    state.waiting["c1"] = {**channel("c1"), "creationtime": created(-1.0)}
    async with serving(gate, url):
        assert await until(lambda: state.done)
        await asyncio.sleep(0.3)
    assert [("continue", "c1")] == state.done
    assert [NUMBER, NUMBER] == decided.numbers
    assert Counter({("c1", "ALLOW"): 1, ("c2", "ALLOW"): 1}) == await audited(gate)


@pytest.mark.parametrize("why", ["second-stay", "second-stay-no-gosub", "earlier-channel"])
async def test_a_recorded_decision_of_another_stay_is_never_reapplied(
    asterisk: tuple[Asterisk, str], gate: Gate, why: str
) -> None:
    """The audit trail holds an ALLOW for the channel's name, but not for the stay now
    waiting: the channel is back for a second stay (trunk failover: its first stay's
    ALLOW went out and the subroutine returned, setting GOSUB_RETVAL; or, in a dialplan
    of its own that runs Stasis() again without a subroutine, CALLGATE_DECISION still
    holds the first stay's decision), or it is a new channel of the same name (Asterisk
    restarted), created after that decision. The
    sweep decides it anew: an old ALLOW re-applied would let a call out uncounted."""
    state, url = asterisk
    decided = Decided()
    gate.observers.append(decided)
    chan = {**channel("c1"), "creationtime": created(-1.0)}
    if why.startswith("second-stay"):
        async with serving(gate, url):
            state.waiting["c1"] = chan
            await state.send(stasis_start(chan))
            assert await until(lambda: state.done)
        state.dialling.pop("c1")  # Return() from callgate-stasis, Dial fails, GoSub again
        if why == "second-stay":
            state.variables["c1"] = {"GOSUB_RETVAL": ""}
        else:  # Dial fails, Stasis() again: the decision the first stay was given is there
            state.variables["c1"] = {"CALLGATE_DECISION": state.extensions[0][1]}
    else:
        state.waiting["c1"] = chan
        await killed_after_deciding(gate, url, chan)
        state.done.append(("hangup", "c1"))  # gone; Asterisk restarts, the name recurs
        chan = {**chan, "creationtime": created(1.0)}
        await asyncio.sleep(1.1)  # the new channel's decision is after its creation
    state.waiting["c1"] = chan
    async with serving(gate, url):
        assert await until(lambda: len(state.done) == 2)
        await asyncio.sleep(0.3)
    assert "continue" == state.done[-1][0]
    assert [NUMBER, NUMBER] == decided.numbers
    assert Counter({("c1", "ALLOW"): 2}) == await audited(gate)
