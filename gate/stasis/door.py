"""The Stasis door: ``Stasis(callgate,${NUMBER},tenant=…,campaign=…,class=…)`` in the dialplan.

On ``StasisStart`` the channel's attempt is decided by the same ``Gate`` as the FastAGI
door, then either continued into the dialplan with ``CALLGATE_DECISION`` set (2 REST calls:
set variable, continue; the ``callgate-stasis`` subroutine splits it into the ``CALLGATE_*``
variables), or, for BLOCK/DEFER with ``on_refuse = "hangup"``, hung up with the decision's
Q.850 cause (1 REST call).

Guarantees:
- It reconnects forever with exponential backoff and jitter, logging each state change
  once (connected / lost), and uses WebSocket heartbeats to notice a dead peer.
- No channel is left waiting: on every (re)connect it lists the channels sitting in the
  application (``GET /channels``, ``dialplan.app_name == "Stasis"``) and decides them too;
  a channel is decided once even if it is seen both ways.
- ``stop()`` stops taking channels, lets in-flight decisions finish (bounded), then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gate.config.loader import AriConfig
from gate.core.model import Decision, Verdict
from gate.core.params import (
    DECISION_VARIABLE,
    BadRequest,
    attempt_from_params,
    decision_value,
    error_value,
    parse_pairs,
)
from gate.service import Gate
from gate.stasis.ari import AriClient, AriError, AriNotFound

__all__ = ["StasisChannel", "StasisGate", "parse_app_data", "parse_stasis_start"]

log = logging.getLogger("callgate.ari")

STOP_GRACE_S = 10.0
_RECONNECT_BASE_S = 0.2
_RECENT = 4096  # channel ids remembered to decide each channel once


@dataclass(frozen=True, slots=True)
class StasisChannel:
    """A channel waiting in the application, with the arguments ``Stasis()`` gave it."""

    id: str
    name: str
    args: tuple[str, ...]
    caller_id: str
    extension: str


def _channel(channel: Mapping[str, Any], args: tuple[str, ...]) -> StasisChannel:
    caller = channel.get("caller") or {}
    dialplan = channel.get("dialplan") or {}
    return StasisChannel(
        id=str(channel.get("id", "")),
        name=str(channel.get("name", "")),
        args=args,
        caller_id=str(caller.get("number", "")),
        extension=str(dialplan.get("exten", "")),
    )


def parse_stasis_start(event: Mapping[str, Any]) -> StasisChannel | None:
    """The channel of a ``StasisStart`` event (None for any other event)."""
    if event.get("type") != "StasisStart" or not isinstance(event.get("channel"), dict):
        return None
    return _channel(event["channel"], tuple(str(a) for a in event.get("args", ())))


def parse_app_data(channel: Mapping[str, Any], app: str) -> StasisChannel | None:
    """A channel from ``GET /channels`` if it sits in ``Stasis(app,…)``, else None."""
    dialplan = channel.get("dialplan") or {}
    if str(dialplan.get("app_name", "")).lower() != "stasis":
        return None
    name, *args = str(dialplan.get("app_data", "")).split(",")
    if name.strip() != app:
        return None
    return _channel(channel, tuple(a.strip() for a in args))


class StasisGate:
    """Runs the Stasis application until ``stop()``."""

    def __init__(self, gate: Gate, config: AriConfig, client: AriClient | None = None) -> None:
        self.gate = gate
        self.config = config
        self.client = client or AriClient(
            config.url, config.user, config.password, config.app, config.rest_timeout_s
        )
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def run(self) -> None:
        """Connect, decide channels, reconnect on loss; return after ``stop()``."""
        failures = 0
        was_connected: bool | None = None
        try:
            while not self._stopping.is_set():
                try:
                    async with self.client.event_stream() as events:
                        self.connected.set()
                        if was_connected is not True:
                            log.info(
                                "ARI connected to %s, application %r",
                                self.config.url,
                                self.config.app,
                            )
                        if was_connected is not None:
                            self.reconnects += 1
                        was_connected, failures = True, 0
                        await self._sweep()
                        await self._consume(events)
                        if self._stopping.is_set():
                            # Stopping: StasisStarts not yet read are lost with the socket
                            # while their channels still wait; decide those too.
                            await self._sweep()
                except AriError as exc:
                    if was_connected is not False:
                        log.warning("ARI unavailable (%s); retrying with backoff", exc)
                    was_connected = False
                else:
                    if not self._stopping.is_set():
                        log.warning("ARI connection to %s lost; reconnecting", self.config.url)
                        was_connected = False
                finally:
                    self.connected.clear()
                failures += 1
                await self._backoff(failures)
        finally:
            await self._drain()
            await self.client.close()

    async def stop(self) -> None:
        """Stop taking channels; in-flight decisions finish before ``run()`` returns."""
        self._stopping.set()

    async def _backoff(self, failures: int) -> None:
        delay = min(self.config.reconnect_max_s, _RECONNECT_BASE_S * 2 ** min(failures, 16))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                await self._stopping.wait()

    async def _consume(self, events: Any) -> None:
        """Handle events until the stream ends or ``stop()`` is called."""
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            iterator = events.__aiter__()
            while True:
                next_event = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait(
                    {next_event, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                if stop in done:
                    next_event.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await next_event
                    return
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    return
                channel = parse_stasis_start(event)
                if channel is not None:
                    self._spawn(channel)
        finally:
            stop.cancel()

    async def _sweep(self) -> None:
        """Decide every channel already waiting in the application (after a restart)."""
        waiting = [
            c
            for raw in await self.client.channels()
            if (c := parse_app_data(raw, self.config.app)) is not None
        ]
        if waiting:
            log.info(
                "ARI: %d channel(s) were waiting in %r; deciding them",
                len(waiting),
                self.config.app,
            )
        for channel in waiting:
            self._spawn(channel)

    def _spawn(self, channel: StasisChannel) -> None:
        if channel.id in self._recent:
            return
        self._recent[channel.id] = None
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        task = asyncio.create_task(self._handle(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, channel: StasisChannel) -> None:
        try:
            try:
                number, *rest = channel.args or (channel.extension,)
                attempt = attempt_from_params(
                    parse_pairs(rest),
                    number=number or channel.extension,
                    caller_id=channel.caller_id,
                    channel=channel.name,
                    default_tenant=self.gate.config.default_tenant,
                    now=datetime.now(UTC),
                )
            except BadRequest as exc:
                log.warning("Stasis channel %s: %s", channel.name, exc)
                await self._apply_error(channel, exc.code)
                return
            decision = await self.gate.decide(attempt, record=True, door="stasis")
            await self._apply(channel, decision)
        except AriNotFound:
            log.info("Stasis channel %s hung up before its decision was applied", channel.name)
        except AriError as exc:
            log.warning("Stasis channel %s: could not apply the decision: %s", channel.name, exc)
            self._recent.pop(channel.id, None)  # the next sweep may try again
        except Exception:  # a bug for one channel must not stop the application
            log.exception("Stasis channel %s: decision failed", channel.name)

    async def _apply(self, channel: StasisChannel, decision: Decision) -> None:
        if decision.verdict is not Verdict.ALLOW and self.config.on_refuse == "hangup":
            await self.client.hangup(channel.id, decision.hangup_cause)
            return
        await self.client.set_variable(channel.id, DECISION_VARIABLE, decision_value(decision))
        await self.client.continue_in_dialplan(channel.id)

    async def _apply_error(self, channel: StasisChannel, reason: str) -> None:
        await self.client.set_variable(channel.id, DECISION_VARIABLE, error_value(reason))
        await self.client.continue_in_dialplan(channel.id)
