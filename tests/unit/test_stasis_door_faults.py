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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import WSMsgType, web

from gate.config.loader import AriConfig
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.stasis.door import StasisGate

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
    asked: list[str] = field(default_factory=list)  # "METHOD uri" of each RESTRequest
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, method: str, uri: str) -> tuple[int, str]:
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
        if method == "GET":
            return 200, json.dumps(alive[cid])
        if method == "DELETE":
            self.waiting.pop(cid, None)
            self.dialling.pop(cid, None)
            self.done.append(("hangup", cid))
            return 204, ""
        if cid not in self.waiting:
            return 409, json.dumps({"message": "Channel not in Stasis application"})
        if parts[2:] == ["continue"]:
            chan = self.waiting.pop(cid)
            self.dialling[cid] = {**chan, "dialplan": {**chan["dialplan"], "app_name": "Dial"}}
            self.done.append(("continue", cid))
        return 204, ""

    async def send(self, frame: str | dict[str, Any]) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.sockets[-1].send_str(text)


@pytest.fixture
async def asterisk() -> AsyncIterator[tuple[Asterisk, str]]:
    state = Asterisk()

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
            status, body = state.reply(sent["method"], sent["uri"])
            answer = {"type": "RESTResponse", "request_id": sent["request_id"],
                      "status_code": status, "message_body": body}  # fmt: skip
            await ws.send_str(json.dumps(answer))
        return ws

    async def rest(request: web.Request) -> web.Response:
        status, body = state.reply(request.method, request.raw_path.split("?")[0][5:])
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
        await runner.cleanup()


@asynccontextmanager
async def serving(gate: Gate, url: str, on_refuse: str = "hangup") -> AsyncIterator[StasisGate]:
    """A door running for the block, connected and past its first sweep."""
    door = StasisGate(gate, AriConfig(url, "u", "p", on_refuse=on_refuse, reconnect_max_s=0.5))
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
