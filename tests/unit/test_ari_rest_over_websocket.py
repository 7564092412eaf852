"""The ARI client's REST over the event WebSocket, against an in-process ARI stand-in.

The stand-in serves ``/ari/events`` (a WebSocket) and the REST routes the client uses over
HTTP, counting the HTTP requests; over the WebSocket it answers ``RESTRequest`` messages as
Asterisk 22 does (``RESTResponse`` with the request's ``request_id``, ``status_code``,
``message_body``), or, playing an older Asterisk, ignores them. The end-to-end tests run
the same client against a real Asterisk 22, which answers REST over the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from gate.stasis import ari
from gate.stasis.ari import AriClient, AriError, AriNotFound, AriUnavailable

CHANNEL = {"id": "c1", "name": "Local/1@x-0;2", "state": "Ring"}
FILTER_URI = "applications/callgate/eventFilter"


@dataclass
class StandIn:
    """What the stand-in ARI saw, and how it behaves."""

    answers_websocket: bool = True  # False: an Asterisk before REST over the WebSocket
    ping_status: int = 200  # the answer to GET asterisk/ping
    silent_for: set[str] = field(default_factory=set)  # URIs it never answers over the WS
    garbled_for: set[str] = field(default_factory=set)  # URIs answered without a status
    events_first: list[dict[str, Any]] = field(default_factory=list)  # sent on connect
    filters: bool = True  # False: an Asterisk without PUT applications/{app}/eventFilter
    filtered: list[Any] = field(default_factory=list)  # the event filters it was sent
    http: list[str] = field(default_factory=list)  # "METHOD /path" of each HTTP request
    over_websocket: list[dict[str, Any]] = field(default_factory=list)  # RESTRequests seen
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    listing: list[dict[str, Any]] = field(default_factory=lambda: [CHANNEL])  # GET channels

    def reply(self, method: str, uri: str, body: str = "") -> tuple[int, str]:
        """Status and body for a request (the same over HTTP and the WebSocket)."""
        if uri == FILTER_URI and method == "PUT" and self.filters:
            self.filtered.append(json.loads(body))
            return 200, json.dumps({"name": "callgate"})
        if uri == "asterisk/ping":
            return self.ping_status, json.dumps({"ping": "pong"})
        if uri == "channels" and method == "GET":
            return 200, json.dumps(self.listing)
        if uri == "channels/c1" and method == "DELETE":
            return 204, ""
        return 404, json.dumps({"message": "Channel not found"})


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, str]]:
    state = StandIn()

    async def events(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        state.sockets.append(ws)
        for event in state.events_first:
            await ws.send_str(json.dumps(event))
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            sent = json.loads(message.data)
            state.over_websocket.append(sent)
            if not state.answers_websocket or sent["uri"] in state.silent_for:
                continue
            status, body = state.reply(sent["method"], sent["uri"], sent.get("message_body", ""))
            answer = {"type": "RESTResponse", "request_id": sent.get("request_id", ""),
                      "status_code": status, "uri": sent["uri"]}  # fmt: skip
            if sent["uri"] in state.garbled_for:
                answer["status_code"] = "OK"
            if body:
                answer["message_body"] = body
            await ws.send_str(json.dumps(answer))
        return ws

    async def rest(request: web.Request) -> web.Response:
        state.http.append(f"{request.method} {request.path}")
        uri = request.path.removeprefix("/ari/")
        status, body = state.reply(request.method, uri, await request.text())
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


async def read_events(events: AsyncIterator[dict[str, Any]], into: list[dict[str, Any]]) -> None:
    async for event in events:
        into.append(event)


async def test_rest_goes_over_the_websocket_when_asterisk_answers_it(
    stand_in: tuple[StandIn, str],
) -> None:
    """After the probe, every REST call is a RESTRequest on the WebSocket (no HTTP), with
    the same answers and errors as over HTTP; once the WebSocket is closed, HTTP again."""
    state, url = stand_in
    async with AriClient(url, "u", "p", "callgate", rest_timeout_s=2.0) as client:
        async with client.event_stream() as events:
            reading = asyncio.create_task(read_events(events, []))
            assert client.rest_over_websocket
            assert [CHANNEL] == await client.channels()
            assert await client.hangup("c1", 21) is None
            with pytest.raises(AriNotFound):
                await client.continue_in_dialplan("gone", "callgate-decided", "ALLOW|allowed")
            reading.cancel()
        assert [] == state.http
        continued = state.over_websocket[-1]
        assert ("POST", "channels/gone/continue") == (continued["method"], continued["uri"])
        assert {"context": "callgate-decided", "extension": "ALLOW|allowed", "priority": "1"} == {
            q["name"]: q["value"] for q in continued["query_strings"]
        }
        assert not client.rest_over_websocket
        await client.channels()
        assert ["GET /ari/channels"] == state.http


async def test_an_asterisk_that_ignores_rest_over_the_websocket_gets_http(
    stand_in: tuple[StandIn, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer to the probe within WS_PROBE_S: REST over HTTP; the events that came
    while the probe waited are not lost."""
    state, url = stand_in
    state.answers_websocket = False
    start = {"type": "StasisStart", "channel": CHANNEL}
    state.events_first = [start]
    monkeypatch.setattr(ari, "WS_PROBE_S", 0.2)
    async with AriClient(url, "u", "p", "callgate") as client, client.event_stream() as events:
        seen: list[dict[str, Any]] = []
        reading = asyncio.create_task(read_events(events, seen))
        assert not client.rest_over_websocket
        assert [CHANNEL] == await client.channels()
        assert ["GET /ari/channels"] == state.http
        await asyncio.sleep(0.05)
        reading.cancel()
        assert [start] == seen


async def test_a_probe_answered_with_an_error_gives_http_at_once(
    stand_in: tuple[StandIn, str],
) -> None:
    """Asterisk answers the probe, but not with 200: HTTP, without waiting WS_PROBE_S."""
    state, url = stand_in
    state.ping_status = 403
    started = time.monotonic()
    async with AriClient(url, "u", "p", "callgate") as client, client.event_stream():
        assert time.monotonic() - started < ari.WS_PROBE_S / 2
        assert not client.rest_over_websocket


async def test_a_request_waiting_on_a_websocket_that_closes_fails_at_once(
    stand_in: tuple[StandIn, str],
) -> None:
    """Asterisk goes away with a request unanswered: AriUnavailable as soon as the
    WebSocket closes, not after the REST deadline."""
    state, url = stand_in
    state.silent_for = {"channels/c1/continue"}
    async with (
        AriClient(url, "u", "p", "callgate", rest_timeout_s=10.0) as client,
        client.event_stream() as events,
    ):
        reading = asyncio.create_task(read_events(events, []))
        waiting = asyncio.create_task(client.continue_in_dialplan("c1"))
        for _ in range(100):  # bounded: 1 s
            if state.over_websocket[-1]["uri"] == "channels/c1/continue":
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await state.sockets[0].close()
        with pytest.raises(AriUnavailable):
            await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 2
        await reading


async def test_an_answer_without_a_status_is_an_ari_error(
    stand_in: tuple[StandIn, str],
) -> None:
    """A RESTResponse whose status is not a number: AriError naming the request, not a
    crash of the caller nor of the event stream (the next request is answered)."""
    state, url = stand_in
    state.garbled_for = {"channels"}
    async with AriClient(url, "u", "p", "callgate") as client, client.event_stream() as events:
        reading = asyncio.create_task(read_events(events, []))
        with pytest.raises(AriError, match="GET /channels: a RESTResponse without a status"):
            await client.channels()
        assert await client.hangup("c1", 21) is None
        reading.cancel()


async def test_rest_over_the_websocket_can_be_turned_off(stand_in: tuple[StandIn, str]) -> None:
    """rest_over_websocket=False: no probe, REST over HTTP."""
    state, url = stand_in
    async with (
        AriClient(url, "u", "p", "callgate", rest_over_websocket=False) as client,
        client.event_stream() as events,
    ):
        reading = asyncio.create_task(read_events(events, []))
        await client.channels()
        reading.cancel()
    assert ([], ["GET /ari/channels"]) == (state.over_websocket, state.http)


@pytest.mark.parametrize("over_websocket", [True, False], ids=["websocket", "http"])
async def test_the_event_filter_asks_for_the_types_read_and_the_rest_answers(
    stand_in: tuple[StandIn, str], over_websocket: bool
) -> None:
    """``filter_events``: the application's event filter allows the types asked for and
    RESTResponse (else the answers over the WebSocket would stop too); over the WebSocket
    it is a RESTRequest with a JSON body, else an HTTP PUT."""
    state, url = stand_in
    async with (
        AriClient(url, "u", "p", "callgate", rest_over_websocket=over_websocket) as client,
        client.event_stream() as events,
    ):
        reading = asyncio.create_task(read_events(events, []))
        await client.filter_events(("StasisStart",))
        reading.cancel()
    assert [{"allowed": [{"type": "StasisStart"}, {"type": "RESTResponse"}]}] == state.filtered
    sent = [(m["method"], m.get("content_type")) for m in state.over_websocket[1:]]
    if over_websocket:
        assert ([("PUT", "application/json")], []) == (sent, state.http)
    else:
        assert ([], [f"PUT /ari/{FILTER_URI}"]) == (sent, state.http)


async def test_an_asterisk_without_the_event_filter_still_serves_and_it_is_said_once(
    stand_in: tuple[StandIn, str], caplog: pytest.LogCaptureFixture
) -> None:
    """An Asterisk that answers the filter with an error (404: an older release): no
    error for the caller, the events still come, and the log says it once, not on every
    reconnect."""
    state, url = stand_in
    state.filters = False
    start = {"type": "StasisStart", "channel": CHANNEL}
    state.events_first = [start]
    caplog.set_level("INFO", logger="callgate.ari")
    async with AriClient(url, "u", "p", "callgate") as client:
        for _ in range(2):
            seen: list[dict[str, Any]] = []
            async with client.event_stream() as events:
                reading = asyncio.create_task(read_events(events, seen))
                assert await client.filter_events(("StasisStart",)) is None
                await asyncio.sleep(0.05)
                reading.cancel()
            assert [start] == seen
    said = [r.getMessage() for r in caplog.records if "does not filter" in r.getMessage()]
    assert 1 == len(said), said
    assert "PUT /applications/callgate/eventFilter: HTTP 404" in said[0]


async def test_a_listing_larger_than_4_mb_comes_over_the_websocket(
    stand_in: tuple[StandIn, str],
) -> None:
    """A busy Asterisk's GET /channels (5000 channels of about 1 kB: over aiohttp's default
    4 MB message limit) is answered over the WebSocket like any reply: it neither closes
    the WebSocket (every reconnect's sweep would close it again) nor fails."""
    state, url = stand_in
    state.listing = [
        {**CHANNEL, "id": f"1700000000.{i}", "name": f"PJSIP/trunk-{i:08x}", "pad": "x" * 900}
        for i in range(5000)
    ]
    async with AriClient(url, "u", "p", "callgate") as client, client.event_stream() as events:
        reading = asyncio.create_task(read_events(events, []))
        assert client.rest_over_websocket
        assert 5000 == len(await client.channels())
        assert client.rest_over_websocket
        assert not reading.done()
        reading.cancel()
    assert [] == state.http
