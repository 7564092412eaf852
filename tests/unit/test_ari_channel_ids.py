"""Channel ids in ARI request paths, against an in-process ARI stand-in.

A dialer may originate with its own ``channelId`` (ARI takes any text), so the id in
``/channels/{id}…`` is hostile input. The stand-in records each request as it arrives: the
raw HTTP path (as sent on the wire, query string included) and the ``uri`` of a
``RESTRequest`` over the event WebSocket (as Asterisk 22 reads it). Asterisk splits the
path on ``/`` before decoding each segment, so an id must arrive percent-encoded as one
segment; an id of Asterisk's own alphabet arrives as it is.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import WSMsgType, web
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.stasis import ari
from gate.stasis.ari import AriClient, AriNotFound

# channel id → the path segment Asterisk must receive
PLAIN = {
    "1700000000.123": "1700000000.123",  # Asterisk's own ids
    "callgate-4f1c_a.b": "callgate-4f1c_a.b",
    "...": "...",  # not a dot segment
}
HOSTILE = {
    "x/../../bridges/y": "x%2F..%2F..%2Fbridges%2Fy",
    "x?reason_code=16": "x%3Freason_code%3D16",
    "a#b": "a%23b",
    "100%25": "100%2525",
    "a b": "a%20b",
    "é€": "%C3%A9%E2%82%AC",
    "..": "%2E%2E",
    ".": "%2E",
}


# RFC 3986 unreserved characters (quote() keeps them) and the percent of an escape.
URI_CHARACTERS = string.ascii_letters + string.digits + "._~-%"


@dataclass
class StandIn:
    """What the stand-in ARI was asked: raw HTTP paths, and ``RESTRequest`` URIs."""

    http: list[str] = field(default_factory=list)  # "METHOD raw path?query"
    over_websocket: list[str] = field(default_factory=list)  # "METHOD uri"


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[StandIn, str]]:
    state = StandIn()

    async def events(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            sent = json.loads(message.data)
            state.over_websocket.append(f"{sent['method']} {sent['uri']}")
            status, body = reply(sent["method"])
            answer = {"type": "RESTResponse", "request_id": sent["request_id"],
                      "status_code": status, "message_body": body}  # fmt: skip
            await ws.send_str(json.dumps(answer))
        return ws

    async def rest(request: web.Request) -> web.Response:
        state.http.append(f"{request.method} {request.raw_path}")
        status, body = reply(request.method)
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


def reply(method: str) -> tuple[int, str]:
    """A channel for a GET, 204 No Content for the rest."""
    return (200, json.dumps({"id": "c1"})) if method == "GET" else (204, "")


async def call_each(client: AriClient, channel_id: str) -> None:
    """Every REST call the gate makes for one channel."""
    await client.set_variable(channel_id, "CALLGATE_DECISION", "ALLOW|allowed")
    await client.continue_in_dialplan(channel_id)
    await client.hangup(channel_id, 21)
    await client.channel(channel_id)


def expected_http(segment: str) -> list[str]:
    return [
        f"POST /ari/channels/{segment}/variable?variable=CALLGATE_DECISION&value=ALLOW%7Callowed",
        f"POST /ari/channels/{segment}/continue",
        f"DELETE /ari/channels/{segment}?reason_code=21",
        f"GET /ari/channels/{segment}",
    ]


def expected_websocket(segment: str) -> list[str]:
    return [
        f"POST channels/{segment}/variable",
        f"POST channels/{segment}/continue",
        f"DELETE channels/{segment}",
        f"GET channels/{segment}",
    ]


@pytest.mark.parametrize(("channel_id", "segment"), [*PLAIN.items(), *HOSTILE.items()])
async def test_a_channel_id_is_one_encoded_path_segment_over_http(
    stand_in: tuple[StandIn, str], channel_id: str, segment: str
) -> None:
    """Over HTTP each call's path names the channel in one segment: an id of Asterisk's
    alphabet as it is, any other percent-encoded (no ``/``, ``?``, ``#`` or dot segment of
    its own), the call's own query string unchanged."""
    state, url = stand_in
    async with AriClient(url, "u", "p", "callgate", rest_over_websocket=False) as client:
        await call_each(client, channel_id)
    assert expected_http(segment) == state.http


@pytest.mark.parametrize(("channel_id", "segment"), [*PLAIN.items(), *HOSTILE.items()])
async def test_a_channel_id_is_one_encoded_path_segment_over_the_websocket(
    stand_in: tuple[StandIn, str], channel_id: str, segment: str
) -> None:
    """Over the event WebSocket (Asterisk 22's ``RESTRequest``) the ``uri`` is encoded the
    same way (Asterisk decodes it segment by segment, as over HTTP)."""
    state, url = stand_in
    async with AriClient(url, "u", "p", "callgate") as client, client.event_stream() as events:
        reading = asyncio.create_task(drain(events))
        assert client.rest_over_websocket
        await call_each(client, channel_id)
        reading.cancel()
    assert ([], expected_websocket(segment)) == (state.http, state.over_websocket[1:])


async def test_an_empty_channel_id_addresses_nothing(stand_in: tuple[StandIn, str]) -> None:
    """An empty id would make ``/channels//variable``, which Asterisk reads as ``/channels``
    (POST: originate): AriNotFound, and nothing is sent."""
    state, url = stand_in
    async with AriClient(url, "u", "p", "callgate", rest_over_websocket=False) as client:
        for call in (
            client.set_variable("", "CALLGATE_DECISION", "ALLOW"),
            client.continue_in_dialplan(""),
            client.hangup("", 21),
            client.channel(""),
        ):
            with pytest.raises(AriNotFound):
                await call
    assert [] == state.http


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1) | st.sampled_from(["~", ".", "..", "~.", "a/b", "%2F"]))
def test_any_id_becomes_one_segment_that_decodes_back_to_it(channel_id: str) -> None:
    """Whatever the text: one segment (no ``/``, ``?``, ``#``), not a dot segment, only
    URI characters, and Asterisk's per-segment decoding gives the id back."""
    segment = ari._segment(channel_id)
    assert segment not in (".", "..")
    assert not set(segment) & set("/?#")
    assert set(segment) <= set(URI_CHARACTERS)
    assert channel_id == unquote(segment, errors="strict")


async def drain(events: AsyncIterator[dict[str, Any]]) -> None:
    async for _ in events:
        pass
