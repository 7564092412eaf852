"""Typed wrapper around panoramisk's FastAGI command/response handling.

panoramisk 1.4 ships no types and its ``Application.handler`` spins on EOF (a bare TCP
connect+close wedges it at 100 % CPU), so callgate reads the AGI headers itself (see
``agi.server``) and uses panoramisk only for the command dialogue: ``Request.send_command``
(which follows "100 Trying" and "520" usage replies) and ``parse_agi_result``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from panoramisk.fast_agi import Request

__all__ = ["AgiChannel", "AgiHangup"]


class AgiHangup(Exception):
    """Asterisk hung the channel up (or closed the socket) during the dialogue."""


class AgiChannel:
    """Sends AGI commands on one FastAGI connection, each under a deadline."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        timeout_s: float,
    ) -> None:
        self._request: Any = Request(app=None, headers=headers, reader=reader, writer=writer)
        self._reader = reader
        self._timeout_s = timeout_s

    async def command(self, line: str) -> dict[str, Any]:
        """Send one AGI command; return panoramisk's parsed result, or raise AgiHangup."""
        if self._reader.at_eof():
            raise AgiHangup("connection closed")
        async with asyncio.timeout(self._timeout_s):
            try:
                result: dict[str, Any] = await self._request.send_command(line)
            except ValueError as exc:  # panoramisk: int('') on EOF or an unparseable reply
                raise AgiHangup("connection closed or unreadable reply") from exc
        if result.get("error") == "AGIResultHangup" or (
            not result.get("line") and self._reader.at_eof()
        ):
            raise AgiHangup(str(result.get("msg", "hangup")))
        return result

    async def set_variable(self, name: str, value: str) -> None:
        """``SET VARIABLE name "value"``; ``value`` must already be safe (see server)."""
        await self.command(f'SET VARIABLE {name} "{value}"')
