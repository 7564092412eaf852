"""A thin typed ARI client: one event WebSocket and the few REST calls the gate needs.

Why in-house: the PyPI ``ari`` package is Python-2 only, and the other clients tried against
Asterisk 22 do not reconnect reliably. This module does only what the Stasis gate uses:
``event_stream()`` (``GET /ari/events?app=…`` as a WebSocket with heartbeats), ``set_variable``
(``POST /channels/{id}/variable``), ``continue_in_dialplan`` (``POST /channels/{id}/continue``,
optionally to a context and extension),
``hangup`` (``DELETE /channels/{id}?reason_code=…``), ``channels`` (``GET /channels``) and
``channel`` (``GET /channels/{id}``).

Guarantees: every REST call runs under a deadline; every aiohttp/socket failure and every
reply that is not what the endpoint documents becomes an ``AriError`` (``AriUnavailable``
when Asterisk cannot be reached, ``AriNotFound`` for a channel that is gone or has left
the application); credentials travel in the Authorization header only, never in a
URL, and ``repr``/messages never contain the password.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from gate.core.errors import GateError

__all__ = ["AriClient", "AriError", "AriNotFound", "AriUnavailable"]


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.app = app
        # An Authorization header, not aiohttp.BasicAuth (deprecated in aiohttp 3.14) and
        # never user:password@ in a URL that could be logged.
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {token}"}
        self._rest_timeout = aiohttp.ClientTimeout(total=rest_timeout_s)
        self._heartbeat_s = heartbeat_s
        self._session: aiohttp.ClientSession | None = None

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
        url = f"{self.base_url}{path}"
        try:
            async with self.session.request(
                method, url, params=params, json=body, timeout=self._rest_timeout
            ) as response:
                if response.status in (404, 409):  # 409: not in the Stasis application
                    raise AriNotFound(f"ARI {method} {path}: HTTP {response.status}")
                if response.status >= 400:
                    text = (await response.text())[:200].replace("\n", " ")
                    raise AriError(f"ARI {method} {path}: HTTP {response.status} {text!r}")
                if response.status == 204 or response.content_length == 0:
                    return None
                try:
                    return await response.json(content_type=None)
                except ValueError as exc:  # JSONDecodeError, or an undecodable body
                    raise AriError(f"ARI {method} {path}: the reply is not JSON") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(
                f"ARI at {self.base_url} unreachable ({type(exc).__name__}); is Asterisk up "
                "with http.conf and ari.conf enabled?"
            ) from exc

    async def info(self) -> dict[str, Any]:
        """``GET /asterisk/info``: a cheap readiness probe."""
        result: dict[str, Any] = await self._request("GET", "/asterisk/info")
        return result

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._request(
            "POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value}
        )

    async def continue_in_dialplan(
        self, channel_id: str, context: str = "", extension: str = ""
    ) -> None:
        """Leave Stasis and carry on at the next priority after ``Stasis()``, or at
        priority 1 of ``extension`` in ``context`` when they are given."""
        params = {"context": context, "extension": extension, "priority": "1"} if context else None
        await self._request("POST", f"/channels/{channel_id}/continue", params)

    async def hangup(self, channel_id: str, reason_code: int) -> None:
        """Hang up with a Q.850 cause (21: call rejected → SIP 403)."""
        await self._request("DELETE", f"/channels/{channel_id}", {"reason_code": str(reason_code)})

    async def channel(self, channel_id: str) -> dict[str, Any]:
        """``GET /channels/{id}``: one channel (``AriNotFound`` if it is gone)."""
        result = await self._request("GET", f"/channels/{channel_id}")
        if not isinstance(result, dict):
            raise AriError(f"ARI GET /channels/{channel_id}: not a channel: {type(result)}")
        return result

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
        heartbeats). Raises ``AriUnavailable`` if the connection cannot be made.
        """
        try:
            ws = await self.session.ws_connect(
                f"{self.base_url}/events",
                params={"app": self.app, "subscribeAll": "false"},
                heartbeat=self._heartbeat_s,
                timeout=aiohttp.ClientWSTimeout(ws_close=self._rest_timeout.total),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AriUnavailable(
                f"ARI events at {self.base_url} unreachable ({type(exc).__name__})"
            ) from exc
        async with ws:
            yield _events(ws)


async def _events(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            try:
                event = json.loads(message.data)
            except ValueError:
                continue  # not JSON: Asterisk never sends that; nothing to act on
            if isinstance(event, dict):
                yield event
        elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
            return
