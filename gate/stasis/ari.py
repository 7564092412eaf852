"""A thin typed ARI client: one event WebSocket and the few REST calls the gate needs.

Why in-house: the PyPI ``ari`` package is Python-2 only, and the other clients tried against
Asterisk 22 do not reconnect reliably. This module does only what the Stasis gate uses:
``event_stream()`` (``GET /ari/events?app=…`` as a WebSocket with heartbeats), ``set_variable``
(``POST /channels/{id}/variable``), ``continue_in_dialplan`` (``POST /channels/{id}/continue``,
optionally to a context and extension),
``hangup`` (``DELETE /channels/{id}?reason_code=…``), ``filter_events`` (``PUT
/applications/{app}/eventFilter``), ``channels`` (``GET /channels``) and
``channel`` (``GET /channels/{id}``).

REST over the event WebSocket: recent Asterisk releases (22.10 does) take REST requests
on the event WebSocket itself (a ``RESTRequest`` JSON message, answered by a
``RESTResponse`` with the same ``request_id``), which saves an HTTP request per call. On
each connect the client sends one (``GET asterisk/ping``) and, if Asterisk answers it
within ``WS_PROBE_S``, sends every REST call over the WebSocket while it stays open; else
(an older Asterisk, or ``rest_over_websocket=False``) over HTTP. Events that arrive
meanwhile are kept and yielded first. When the WebSocket closes, the requests waiting for
their answer fail at once (``AriUnavailable``) and the next calls go over HTTP.

Only the events it reads: ``filter_events`` asks Asterisk (``PUT
/applications/{app}/eventFilter``) to send the application the event types its caller
reads and the ``RESTResponse`` answers, not the ``StasisEnd`` (and, for a hung-up
channel, ``ChannelHangupRequest``) it would otherwise build and send for every call; an
Asterisk that refuses the filter sends them all, which works too (said once in the log).

Channel ids are one path segment: a dialer may originate with its own ``channelId`` (ARI
takes any text), so an id reaches Asterisk percent-encoded (``_segment``): ``a/../b``,
``x?reason_code=16``, ``#``, ``%``, spaces, non-ASCII, ``.`` or ``..`` name that channel
and never another resource or parameter. Asterisk splits the path on ``/`` and only then
decodes each segment (res_ari.c ``ast_ari_invoke``), over HTTP and over the WebSocket
alike. The URL is handed to aiohttp as already encoded, so that yarl does not resolve a
dot segment away; an id of Asterisk's own alphabet (``1700000000.123``) is used as is.

Guarantees: every REST call runs under a deadline; every aiohttp/socket failure and every
reply that is not what the endpoint documents becomes an ``AriError`` (``AriUnavailable``
when Asterisk cannot be reached, ``AriNotFound`` for a channel that is gone or has left
the application); credentials travel in the Authorization header only, never in a
URL, and ``repr``/messages never contain the password.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gate.core.errors import GateError

__all__ = ["UNREADABLE", "AriClient", "AriError", "AriNotFound", "AriUnavailable"]

log = logging.getLogger("callgate.ari")

#: How long a connect waits for Asterisk to answer a REST request over the event WebSocket.
WS_PROBE_S = 1.0
#: The type of the event yielded for a text frame that is not a JSON object (cut short, a
#: broken peer): what it brought is unknown, the reader may look for it another way.
UNREADABLE = "callgate.UnreadableFrame"


class AriError(GateError):
    """Asterisk's REST interface refused or failed a request."""


class AriUnavailable(AriError):
    """Asterisk could not be reached (down, restarting, wrong address)."""


class AriNotFound(AriError):
    """The channel no longer exists (usually the caller hung up) or is no longer in the
    Stasis application (HTTP 404 or 409)."""


class AriClient:
    """REST calls and the event WebSocket of one Asterisk, for one Stasis application."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        rest_timeout_s: float = 2.0,
        heartbeat_s: float = 10.0,
        rest_over_websocket: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_encoded = str(URL(self.base_url))  # the request paths are encoded already
        self.app = app
        # An Authorization header, not aiohttp.BasicAuth (deprecated in aiohttp 3.14) and
        # never user:password@ in a URL that could be logged.
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._rest_timeout = aiohttp.ClientTimeout(total=rest_timeout_s)
        self._heartbeat_s = heartbeat_s
        self._session: aiohttp.ClientSession | None = None
        self._try_websocket = rest_over_websocket
        # The event WebSocket while REST requests go over it; their answers, by request id.
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._unfiltered_said = False

    def __repr__(self) -> str:
        return f"AriClient({self.base_url!r}, app={self.app!r})"

    async def __aenter__(self) -> AriClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def rest_over_websocket(self) -> bool:
        """Whether REST requests go over the event WebSocket now (else over HTTP)."""
        return self._ws is not None and not self._ws.closed

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        ws = self._ws
        if ws is not None and not ws.closed:
            status, text = await self._over_websocket(ws, method, path, params, body)
            return _answer(method, path, status, text)
        url = URL(f"{self._base_encoded}{path}", encoded=True)
        try:
            async with self.session.request(
                method, url, params=params, json=body, timeout=self._rest_timeout
            ) as response:
                return _answer(method, path, response.status, await response.text())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(
                f"ARI at {self.base_url} unreachable ({type(exc).__name__}); is Asterisk up "
                "with http.conf and ari.conf enabled?"
            ) from exc

    async def _over_websocket(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Any,
    ) -> tuple[int, str]:
        """One REST request over the event WebSocket: its status and body."""
        request_id = f"callgate-{next(self._ids)}"
        message = _rest_request(request_id, method, path, params, body)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            async with asyncio.timeout(self._rest_timeout.total):
                await ws.send_str(json.dumps(message))
                response = await answer
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(
                f"ARI at {self.base_url}: no answer over the event WebSocket ({type(exc).__name__})"
            ) from exc
        finally:
            self._waiting.pop(request_id, None)
        status, text = response.get("status_code"), response.get("message_body") or ""
        if not isinstance(status, int) or not isinstance(text, str):
            raise AriError(f"ARI {method} {path}: a RESTResponse without a status")
        return status, text

    async def info(self) -> dict[str, Any]:
        """``GET /asterisk/info``: a cheap readiness probe."""
        result: dict[str, Any] = await self._request("GET", "/asterisk/info")
        return result

    async def filter_events(self, types: tuple[str, ...]) -> None:
        """Have Asterisk send the application only events of ``types`` (and the answers to
        REST over the event WebSocket); an Asterisk that refuses (an older release) keeps
        sending them all, said once in the log. ``AriUnavailable`` if it cannot be asked."""
        allowed = [{"type": kind} for kind in (*types, "RESTResponse")]
        try:
            await self._request(
                "PUT", f"/applications/{_segment(self.app)}/eventFilter", body={"allowed": allowed}
            )
        except AriUnavailable:
            raise
        except AriError as exc:
            if not self._unfiltered_said:
                self._unfiltered_said = True
                log.info(
                    "ARI: Asterisk does not filter the application's events (%s); reading them all",
                    exc,
                )

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._request(
            "POST", f"/channels/{_segment(channel_id)}/variable", {"variable": name, "value": value}
        )

    async def continue_in_dialplan(
        self, channel_id: str, context: str = "", extension: str = ""
    ) -> None:
        """Leave Stasis and carry on at the next priority after ``Stasis()``, or at
        priority 1 of ``extension`` in ``context`` when they are given."""
        params = {"context": context, "extension": extension, "priority": "1"} if context else None
        await self._request("POST", f"/channels/{_segment(channel_id)}/continue", params)

    async def hangup(self, channel_id: str, reason_code: int) -> None:
        """Hang up with a Q.850 cause (21: call rejected → SIP 403)."""
        await self._request(
            "DELETE", f"/channels/{_segment(channel_id)}", {"reason_code": str(reason_code)}
        )

    async def channel(self, channel_id: str) -> dict[str, Any]:
        """``GET /channels/{id}``: one channel (``AriNotFound`` if it is gone)."""
        path = f"/channels/{_segment(channel_id)}"
        result = await self._request("GET", path)
        if not isinstance(result, dict):
            raise AriError(f"ARI GET {path}: not a channel: {type(result)}")
        return result

    async def variable(self, channel_id: str, name: str) -> str:
        """``GET /channels/{id}/variable``: a channel variable's value (``AriNotFound`` if
        the variable was never set, or the channel is gone)."""
        path = f"/channels/{_segment(channel_id)}/variable"
        result = await self._request("GET", path, {"variable": name})
        if not isinstance(result, dict):
            raise AriError(f"ARI GET {path}: not a variable: {type(result)}")
        return str(result.get("value", ""))

    async def channels(self) -> list[dict[str, Any]]:
        """``GET /channels``: every channel (``AriError`` if the reply is not a list of them)."""
        result = await self._request("GET", "/channels")
        if not isinstance(result, list) or not all(isinstance(c, dict) for c in result):
            raise AriError(f"ARI GET /channels: expected a list of channels, got {type(result)}")
        return result

    @asynccontextmanager
    async def event_stream(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Connect the application's event WebSocket; yield an iterator of its events.

        The iterator ends when the WebSocket closes (Asterisk stopped, network cut, missed
        heartbeats); a text frame that is not a JSON object is yielded as an event of type
        ``UNREADABLE``. Raises ``AriUnavailable`` if the connection cannot be made. REST
        requests go over this WebSocket while it is open if Asterisk answers them on it
        (see the module's docstring); their answers are taken out of the events, so the
        iterator must be read for them to arrive.
        """
        try:
            ws = await self.session.ws_connect(
                f"{self.base_url}/events",
                params={"app": self.app, "subscribeAll": "false"},
                heartbeat=self._heartbeat_s,
                timeout=aiohttp.ClientWSTimeout(ws_close=self._rest_timeout.total),
                # No size limit, as over HTTP: the answer to GET /channels lists every
                # channel of the Asterisk (about 1 kB each); past aiohttp's default 4 MB
                # it would close the WebSocket, and every reconnect's sweep again.
                max_msg_size=0,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(
                f"ARI events at {self.base_url} unreachable ({type(exc).__name__})"
            ) from exc
        async with ws:
            try:
                early = await self._probe(ws) if self._try_websocket else []
                yield self._events(ws, early)
            finally:
                self._closed(ws)

    async def _probe(self, ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
        """Whether Asterisk answers REST over ``ws`` (then REST goes over it): one
        ``GET asterisk/ping`` answered within ``WS_PROBE_S``. Returns the events read
        meanwhile."""
        request_id = f"callgate-probe-{next(self._ids)}"
        probe = _rest_request(request_id, "GET", "asterisk/ping", None)
        early: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(WS_PROBE_S):
                await ws.send_str(json.dumps(probe))
                while True:
                    message = await ws.receive()
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        if message.type in _ENDS:
                            return early  # the events iterator sees the end too
                        continue
                    event = _json_object(message.data)
                    if event is None:
                        early.append({"type": UNREADABLE})
                        continue
                    if event.get("type") != "RESTResponse":
                        early.append(event)
                    elif event.get("request_id") == request_id:
                        if event.get("status_code") == 200:
                            self._ws = ws
                        return early
        except (aiohttp.ClientError, OSError, TimeoutError):
            return early  # no REST over this WebSocket: HTTP

    async def _events(
        self, ws: aiohttp.ClientWebSocketResponse, early: list[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        for kept in early:
            yield kept
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    event = _json_object(message.data)
                    if event is None:  # not a JSON object: Asterisk never sends that
                        yield {"type": UNREADABLE}
                        continue
                    if event.get("type") == "RESTResponse":
                        answer = self._waiting.get(str(event.get("request_id")))
                        if answer is not None and not answer.done():
                            answer.set_result(event)
                        continue
                    yield event
                elif message.type in _ENDS:
                    return
        finally:
            self._closed(ws)

    def _closed(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """``ws`` is closing: REST goes over HTTP again, and the requests that wait for an
        answer on it fail now (nothing will answer them)."""
        if self._ws is ws:
            self._ws = None
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(AriUnavailable("the ARI event WebSocket closed"))


_ENDS = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
         aiohttp.WSMsgType.ERROR)  # fmt: skip


# A path segment that needs no encoding: RFC 3986 unreserved characters but "~" (what
# Asterisk's own channel ids are made of), and not a dot segment ("." or "..").
_PLAIN_SEGMENT = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._-]+", re.ASCII)


def _segment(name: str) -> str:
    """``name`` (a channel id, the application) as one path segment of an ARI URI:
    percent-encoded (``/``, ``?``, ``#``, ``%``, spaces, UTF-8 bytes), the dots of ``.``
    and ``..`` too; an id of Asterisk's own alphabet is returned as is (a regex match,
    no encoding on the per-call path). An empty id would let the path address the
    collection (``POST /channels//variable`` is read as ``POST /channels``, an
    originate): ``AriNotFound``, as for a channel that is gone."""
    if _PLAIN_SEGMENT.fullmatch(name):
        return name
    if not name:
        raise AriNotFound("ARI: a channel without an id cannot be addressed")
    quoted = quote(name, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _rest_request(
    request_id: str, method: str, path: str, params: Mapping[str, str] | None, body: Any = None
) -> dict[str, Any]:
    """A ``RESTRequest`` message of the event WebSocket."""
    message: dict[str, Any] = {
        "type": "RESTRequest",
        "request_id": request_id,
        "method": method,
        "uri": path.lstrip("/"),
    }
    if params:
        message["query_strings"] = [{"name": k, "value": v} for k, v in params.items()]
    if body is not None:
        message["content_type"] = "application/json"
        message["message_body"] = json.dumps(body)
    return message


def _json_object(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _answer(method: str, path: str, status: int, text: str) -> Any:
    """A REST reply (HTTP or over the WebSocket): its decoded JSON, None when empty."""
    if status in (404, 409):  # 409: not in the Stasis application
        raise AriNotFound(f"ARI {method} {path}: HTTP {status}")
    if status >= 400:
        raise AriError(f"ARI {method} {path}: HTTP {status} {text[:200].replace(chr(10), ' ')!r}")
    if status == 204 or not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError
        raise AriError(f"ARI {method} {path}: the reply is not JSON") from exc
