"""Typed wrapper around panoramisk's FastAGI reply parsing.

panoramisk 1.4 ships no types and its ``Application.handler`` spins on EOF (a bare TCP
connect+close wedges it at 100 % CPU), so callgate reads the AGI headers itself (see
``agi.server``) and uses panoramisk for what it does well: parsing Asterisk's replies
(``parse_agi_result``: ``200 result=1``, ``HANGUP``, ``510``/``520`` errors).

Commands go one at a time, each answered before the next is sent: Asterisk's res_agi does
not answer pipelined commands (it reads them through a buffered stream after poll(); seen
on Asterisk 22, every reply then waited for the socket to close).
"""

from __future__ import annotations

import asyncio
from typing import Any

from panoramisk.utils import parse_agi_result

__all__ = ["AgiChannel", "AgiHangup"]


class AgiHangup(Exception):
    """Asterisk hung the channel up (or closed the socket) during the dialogue."""


class AgiChannel:
    """Sends AGI commands on one FastAGI connection, under a deadline."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s

    async def _reply(self) -> dict[str, Any]:
        for _ in range(8):  # "100 Trying" lines precede the final reply; bounded
            raw = await self._reader.readline()
            if not raw:
                raise AgiHangup("connection closed")
            try:
                result: dict[str, Any] = parse_agi_result(
                    raw.decode("utf-8", "replace").rstrip("\r\n")
                )
            except ValueError as exc:  # panoramisk: int() of an unparseable reply
                raise AgiHangup(f"unreadable reply {raw[:80]!r}") from exc
            if result.get("error") == "AGIResultHangup":
                raise AgiHangup("channel hung up")
            if result.get("status_code") != 100:
                return result
        raise AgiHangup("no final reply after 8 lines")

    async def set_variable(self, name: str, value: str) -> dict[str, Any]:
        """``SET VARIABLE name "value"`` and Asterisk's reply; ``value`` must be safe."""
        async with asyncio.timeout(self._timeout_s):
            self._writer.write(f'SET VARIABLE {name} "{value}"\n'.encode())
            await self._writer.drain()
            return await self._reply()
