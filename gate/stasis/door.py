"""The Stasis door: ``Stasis(callgate,${NUMBER},tenant=…,campaign=…,class=…)`` in the dialplan.

On ``StasisStart`` the channel's attempt is decided by the same ``Gate`` as the FastAGI
door, then either continued into the dialplan with ``CALLGATE_DECISION`` set, or, for
BLOCK/DEFER with ``on_refuse = "hangup"``, hung up with the decision's Q.850 cause (1 REST
call). Continuing is 1 REST call: ``POST /channels/{id}/continue`` to extension
``<the decision value>`` of the ``[ari] decided_context`` (dialplan/callgate.conf's
``callgate-decided``, which sets ``CALLGATE_DECISION`` from ``${EXTEN}`` and goes back into
the ``callgate-stasis`` subroutine, whose GoSub stack is untouched); the value's alphabet
(``A-Z a-z 0-9 _ . : + - |``) is legal in an extension, and it starts with an upper-case
letter (ALLOW, BLOCK, DEFER, ERROR) as the context's pattern wants. A value too long for an
extension (Asterisk's ``AST_MAX_EXTENSION``, 80 bytes with its NUL: a long rule id in a
refusal), or ``decided_context = ""``, takes 2 REST calls: set the variable, then continue
after ``Stasis()``.

Guarantees:
- It reconnects forever with exponential backoff and jitter, logging each state change
  once (connected / lost), and uses WebSocket heartbeats to notice a dead peer. Any
  failure of a connection (an ARI error, a reply that is not what ARI documents, a bug)
  is logged and followed by a reconnect: the door never dies silently. A channel's field
  that ARI documents as an object but that is not one is read as absent, never fails the
  connection; a ``StasisStart`` whose ``args`` are not a list gets ERROR
  (``bad_request:args``, the dialplan's fail mode).
- No channel is left waiting: on every (re)connect it lists the channels sitting in the
  application (``GET /channels``, ``dialplan.app_name == "Stasis"``) and decides them too.
  A decision whose REST calls all failed (Asterisk answering errors, or not at all, while
  the event WebSocket stays up) is re-applied while connected, with no reconnect needed:
  a listing of the channels waiting, ``reapply_s`` (1 s) after it is kept, then with the
  wait doubled up to ``reapply_max_s`` (8 s) while such decisions keep failing; the
  channels of those still waiting get their decision again (``_APPLY_TRIES`` tries), the
  others are dropped (deleted from Redis). One task per connection does it, idle (no
  timer) while no decision is kept, ended with the connection or ``stop()`` (bounded by
  a REST timeout); nothing is added to a decision whose first try succeeds.
- Each stay in the application is decided once. A channel seen again while its decision
  is in flight (the same stay, as an event and by the sweep) is skipped; a
  ``StasisStart`` for it after its continue was sent is a new stay (trunk failover runs
  the subroutine again): it is decided again once the first decision is done, if the
  channel is still waiting in the application. A decision whose REST calls fail is
  re-applied (with backoff, then by the re-applying while connected and by the next
  connect's sweep), never decided again: an ALLOW is never counted twice, and a retry
  never carries an old decision into a new stay. A stay is named by its ``StasisStart``'s
  timestamp: one with the timestamp of the stay being decided, or of the stay whose
  decision is kept, is that stay's replayed (the channel still waits, its continue having
  failed), not a new stay: it is skipped, or the kept decision is re-applied at once.
- At most ``[ari] max_deciding`` (256) decisions are in flight at once; the
  channels past it (a flood of ``StasisStart``, an Asterisk replaying) wait their turn, in
  order, each still decided once, none dropped.
- A ``StasisStart`` for a channel whose decision is done, one of the last ``_RECENT_MAX``,
  is decided only if the channel still waits in the application (one ``GET
  /channels/{id}``; Asterisk failing to say counts as waiting): a ``StasisStart`` replayed
  after its continue (after a reconnect, by a proxy) never decides again, nor hangs up, a
  call on its way.
- A ``StasisStart`` of another application is ignored. One the door cannot read (a frame
  that is not JSON, a channel that is not an object or has no id) starts a sweep (one at
  a time), so that the channel it brought is not left waiting until the next connect.
- From its first failed try such a decision is also saved in Redis (``Keyspace.stasis_key``:
  the channel's id, for ``SAVED_TTL_S``), and a sweep looks a listed channel up there
  before deciding it: the next leader of ``callgate run --workers`` (its leader killed),
  or the door after a restart, re-applies it too, never decides it again. A decision
  whose first try succeeds costs no Redis command. A saved decision is its stay's only:
  it names the channel's creation time (a reused id never takes it), and it is deleted
  once applied, once its channel is gone (else Redis drops it after ``SAVED_TTL_S``), and
  when a new stay of the channel begins (read by the door holding it). One re-applied by
  another door is not undone if its channel has left (the recorded decision stayed with
  the door that made it): it stays counted. Redis failing for these (logged once, each
  command bounded by ``SAVED_WITHIN_S``) never holds the door up: the decision is kept in
  this process only, as before.
- A door killed after its decision was recorded (decide.lua: audit entry and attempt
  counted) but before Asterisk carried out its continue saved nothing: the next sweep
  finds the channel waiting, and before deciding a listed channel with no decision
  kept or saved it looks in its number's audit stream for the newest entry of the
  Stasis door for the channel's name and number, decided at or after the channel's
  creation. It re-applies that decision (never decided nor counted again) only if
  the channel is surely on its first stay: ``GOSUB_RETVAL`` never set (one ``GET``),
  as the ``callgate-stasis`` subroutine leaves by ``Return()`` on every path but a
  hangup: a channel back for another stay (trunk failover) is decided anew, a
  previous stay's ALLOW never re-applied to it. Redis or Asterisk failing for these:
  decided anew (logged). Only sweeps do it: nothing on the path of a decision.
- A channel that leaves before its ALLOW reaches it (the first REST call answers 404) made
  no call: its recorded decision is undone (``Gate.undo``: the audit entry deleted, the
  attempt uncounted). After a failed try a 404 proves nothing (the try may have been
  carried out), so the decision then stands.
- ``stop()`` stops taking channels (the last events read are still decided), lets
  in-flight decisions finish (bounded: a REST call that fails meanwhile, as those waiting
  on the event WebSocket do when it closes, is tried again at once, over HTTP), then
  ``run()`` returns; ``close()`` is
  ``stop()`` with a bound on ``run()`` itself and a logged cancel after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gate.config.loader import AriConfig
from gate.core.engine import Plan
from gate.core.errors import StoreError
from gate.core.evidence import stored_record, stream_len
from gate.core.model import Attempt, Decision, Verdict
from gate.core.params import (
    DECISION_VARIABLE,
    BadRequest,
    attempt_from_params,
    decision_value,
    error_value,
    parse_pairs,
    printable,
)
from gate.core.redact import redact
from gate.service import Evaluation, Gate, InFlight, cancelling, stop_task, wait_event
from gate.stasis.ari import UNREADABLE, AriClient, AriError, AriNotFound

__all__ = ["StasisChannel", "StasisGate", "parse_app_data", "parse_stasis_start"]

log = logging.getLogger("callgate.ari")

STOP_GRACE_S = 10.0
CLOSE_WITHIN_S = STOP_GRACE_S + 5.0  # the drain, plus a final sweep and the socket close
_RECONNECT_BASE_S = 0.2
_APPLY_TRIES = 5  # REST attempts per decision before leaving it to the next sweep
_APPLY_BACKOFF_S = 0.2  # doubled after each failed attempt: 0.2, 0.4, 0.8, 1.6 s
# While connected, decisions whose tries all failed are re-applied by a sweep of their own
# channels, _REAPPLY_S after one is kept, then with the wait doubled up to _REAPPLY_MAX_S
# while any is left. Each re-application makes its _APPLY_TRIES again (about 3 s): a
# caller waits at most about 11 s past Asterisk's recovery, and a failing Asterisk gets at
# most one listing, and _APPLY_TRIES requests per channel kept, every 11 s or so.
_REAPPLY_S = 1.0
_REAPPLY_MAX_S = 8.0
_UNAPPLIED_MAX = 4096  # decisions remembered for re-application (oldest dropped, logged)
_RECENT_MAX = 4096  # channels whose decision is done, remembered (a StasisStart again: rechecked)
SAVED_TTL_S = 3600  # a decision saved in Redis outlives any wait in the application
SAVED_WITHIN_S = 2.0  # how long a save, look-up or delete of one waits for Redis
EVENTS_READ = ("StasisStart",)  # all the door reads: Asterisk is asked for no other
# A sweep looks for a decision recorded but not applied (the door died in between) in the
# audit stream, a page at a time, from this long before the channel's creation (Redis's
# clock, which names the entries, behind Asterisk's).
_AUDIT_PAGE = 200
_SKEW_MS = 5000
AST_MAX_EXTENSION = 80  # Asterisk's extension buffer (include/asterisk/channel.h), NUL included


@dataclass(frozen=True, slots=True)
class StasisChannel:
    """A channel waiting in the application, with the arguments ``Stasis()`` gave it."""

    id: str
    name: str
    args: tuple[str, ...]
    caller_id: str
    extension: str
    created: str = ""  # ARI's creationtime: with the id, names the channel (ids may recur)
    malformed: str = ""  # what of its StasisStart could not be read: decided as ERROR
    # Its StasisStart's timestamp ("" from a listing): with the id, names the stay (a
    # StasisStart again with the same one is that stay's, replayed, not a new stay).
    started: str = ""


@dataclass(slots=True)
class _Stay:
    """The decision in flight for one channel's stay in the application."""

    continue_sent: bool = False  # from then on a StasisStart is a new stay
    superseded: bool = False  # a new stay began: stop applying this one's decision
    next: StasisChannel | None = None  # the new stay, decided once this one is done
    saved: bool = False  # its decision may be saved in Redis: deleted once done
    started: str = ""  # its StasisStart's timestamp ("" unknown: begun by a sweep)


@dataclass(frozen=True, slots=True)
class _Action:
    """What to do with a channel once decided: continue it with ``value`` set, or hang it
    up with ``cause``; ``evaluation``: the recorded decision behind it (undone if the
    channel leaves before an ALLOW reaches it)."""

    value: str = ""
    hangup_cause: int | None = None
    evaluation: Evaluation | None = None
    started: str = ""  # the stay it is for, kept for re-application (``_Stay.started``)


def _object(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a field ARI documents as an
    object but sent as something else is read as absent, never fails the door)."""
    return value if isinstance(value, dict) else {}


def _channel(
    channel: Mapping[str, Any], args: tuple[str, ...], malformed: str = "", started: str = ""
) -> StasisChannel:
    caller = _object(channel.get("caller"))
    dialplan = _object(channel.get("dialplan"))
    return StasisChannel(
        id=str(channel.get("id", "")),
        name=printable(str(channel.get("name", ""))),  # logged: no forged lines
        args=args,
        caller_id=str(caller.get("number", "")),
        extension=str(dialplan.get("exten", "")),
        created=str(channel.get("creationtime", "")),
        malformed=malformed,
        started=started,
    )


def _saved_text(channel: StasisChannel, action: _Action) -> str:
    """``action`` as saved in Redis for ``channel``'s stay (no evaluation: not undoable)."""
    saved = {
        "created": channel.created,
        "value": action.value,
        "cause": action.hangup_cause,
        "started": action.started,
    }
    return json.dumps(saved, separators=(",", ":"))


def _saved_action(channel: StasisChannel, saved: bytes) -> _Action | None:
    """The action ``_saved_text`` saved for ``channel`` (None: for an earlier channel of
    the same id, or unreadable)."""
    try:
        fields = json.loads(saved)
        if fields["created"] != channel.created:
            return None
        cause = fields["cause"]
        started = str(fields.get("started", ""))  # saved before it was: unknown
        value, hangup_cause = str(fields["value"]), None if cause is None else int(cause)
        return _Action(value, hangup_cause, started=started)
    except (ValueError, TypeError, KeyError):
        return None


def _epoch_ms(created: str) -> int | None:
    """ARI's ``creationtime`` (``2026-01-01T00:00:00.000+0000``) in ms, None if unreadable."""
    try:
        return int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _audit_record(fields: Any) -> dict[str, str]:
    """An audit stream entry's fields (a flat list, as Redis sends them) as its record:
    one decide.lua wrote (``h`` and ``r``) concluded again, as gate/ops/audit.py reads it;
    {} for one that cannot be read."""
    try:
        pairs = dict(zip(fields[::2], fields[1::2], strict=True))
        head, seen = pairs.get(b"h"), pairs.get(b"r")
        if head is not None and seen is not None and len(pairs) == 2:
            return stored_record(json.loads(head), _text(seen))
        return {_text(k): _text(v) for k, v in pairs.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


def parse_stasis_start(event: Mapping[str, Any]) -> StasisChannel | None:
    """The channel of a ``StasisStart`` event (None for any other event)."""
    if event.get("type") != "StasisStart" or not isinstance(event.get("channel"), dict):
        return None
    args = event.get("args", [])
    started = str(event.get("timestamp", ""))
    if not isinstance(args, list):  # ARI sends a list: neither number nor tenant is known
        return _channel(event["channel"], (), malformed="args", started=started)
    return _channel(event["channel"], tuple(str(a) for a in args), started=started)


def parse_app_data(channel: Mapping[str, Any], app: str) -> StasisChannel | None:
    """A channel from ``GET /channels`` if it sits in ``Stasis(app,…)``, else None."""
    dialplan = _object(channel.get("dialplan"))
    if str(dialplan.get("app_name", "")).lower() != "stasis":
        return None
    name, *args = str(dialplan.get("app_data", "")).split(",")
    if name.strip() != app:
        return None
    return _channel(channel, tuple(a.strip() for a in args))


class StasisGate:
    """Runs the Stasis application until ``stop()`` (or ``close()``)."""

    def __init__(self, gate: Gate, config: AriConfig, client: AriClient | None = None) -> None:
        self.gate = gate
        self.config = config
        self.client = client or AriClient(
            config.url,
            config.user,
            config.password,
            config.app,
            config.rest_timeout_s,
            rest_over_websocket=config.rest_over_websocket,
        )
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._stopping = asyncio.Event()
        self._decisions = InFlight("Stasis", STOP_GRACE_S)
        self._deciding: dict[str, _Stay] = {}  # channel id -> its decision in flight
        # At most ``deciding_max`` decisions run at once (``[ari] max_deciding``); the
        # channels past it (a flood of StasisStart, an Asterisk replaying) wait here, their
        # stays already in ``_deciding``, started in order as decisions end.
        self.deciding_max = config.max_deciding
        self._running = 0
        self._queued: deque[tuple[str, _Stay, Callable[[], Awaitable[None]]]] = deque()
        self._unapplied: OrderedDict[str, _Action] = OrderedDict()
        # Per listing of a sweep in flight: the channels whose stay ended meanwhile (the
        # listing may show them still waiting: they are not decided again).
        self._listings: list[set[str]] = []
        # The channels whose stay was decided lately: a StasisStart for one of them again
        # (failover, or one replayed) is decided only if the channel still waits.
        self._recent: OrderedDict[str, None] = OrderedDict()
        # The sweep run because an event could not be read; asked again while it runs.
        self._resweeping: asyncio.Task[None] | None = None
        self._resweep_again = False
        self._task: asyncio.Task[None] | None = None
        self._redis_failing = False  # saved decisions: Redis failed (logged once)
        # How hard a decision's REST calls are retried before the next sweep takes over.
        self.apply_tries = _APPLY_TRIES
        self.apply_backoff_s = _APPLY_BACKOFF_S
        # How soon, and how often at most, the decisions kept are re-applied while connected.
        self.reapply_s = _REAPPLY_S
        self.reapply_max_s = _REAPPLY_MAX_S
        self._kept = asyncio.Event()  # a decision was kept for re-application
        self._reapply_after = 0.0  # the wait before the next re-application (0: reapply_s)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Run the application in a task of its own (``close()`` ends it)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="callgate-stasis")

    async def stop(self) -> None:
        """Stop taking channels; in-flight decisions finish before ``run()`` returns."""
        self._stopping.set()

    async def close(self) -> None:
        """``stop()``, then wait for the task ``start()`` made (bounded; cancelled and
        logged past ``CLOSE_WITHIN_S``)."""
        await self.stop()
        if self._task is not None:
            await stop_task(self._task, CLOSE_WITHIN_S, "the Stasis door")
            self._task = None

    async def run(self) -> None:
        """Connect, decide channels, reconnect on any failure; return after ``stop()``.

        Supervision: each connection is one ``_session`` (a task group reading events
        and sweeping waiting channels); whatever ends it, the loop logs it and reconnects
        after a backoff. Decisions run as tracked tasks (``InFlight``), drained on exit.
        """
        async with contextlib.AsyncExitStack() as exits:
            exits.push_async_callback(self.client.close)  # last: decisions need it
            exits.push_async_callback(self._decisions.drain)
            failures = 0
            was_connected: bool | None = None
            while not self._stopping.is_set():
                try:
                    async with self.client.event_stream() as events:
                        self._on_connected(was_connected)
                        was_connected, failures = True, 0
                        await self._session(events)
                    if self._stopping.is_set():
                        # The WebSocket is closed: Asterisk has unregistered the
                        # application, so a Stasis() from now on fails at once (the
                        # dialplan's fail mode). Channels that entered before, whose
                        # StasisStart was not read, still wait: decide those too.
                        await self._sweep()
                    else:
                        log.warning("ARI connection to %s lost; reconnecting", self.config.url)
                        was_connected = False
                except* AriError as group:
                    if was_connected is not False:
                        log.warning(
                            "ARI failed (%s); reconnecting with backoff", group.exceptions[0]
                        )
                    was_connected = False
                except* Exception as group:  # a bug or an unexpected reply: log, reconnect
                    for error in group.exceptions:
                        log.error("Stasis door failed; reconnecting", exc_info=error)
                    was_connected = False
                finally:
                    self.connected.clear()
                if cancelling():  # a cancel that aiohttp reported as one of its errors
                    raise asyncio.CancelledError
                failures += 1
                await self._backoff(failures)

    def _on_connected(self, was_connected: bool | None) -> None:
        self.connected.set()
        if was_connected is not True:
            log.info(
                "ARI connected to %s, application %r (REST over %s)",
                self.config.url,
                self.config.app,
                "the event WebSocket" if self.client.rest_over_websocket else "HTTP",
            )
        if was_connected is not None:
            self.reconnects += 1

    async def _session(self, events: AsyncIterator[dict[str, Any]]) -> None:
        """One connection: read events while sweeping the waiting channels, re-applying
        the decisions kept (``_reapplying``) and asking Asterisk for the ``EVENTS_READ``
        only, until the stream ends or ``stop()``; a failure of any ends all (and the
        session)."""
        over = asyncio.Event()  # the session ends: the re-applying returns (bounded)
        async with asyncio.TaskGroup() as group:
            reading = group.create_task(self._read(events), name="callgate-ari-events")
            group.create_task(self.client.filter_events(EVENTS_READ), name="callgate-ari-filter")
            group.create_task(self._sweep(), name="callgate-ari-sweep")
            group.create_task(self._reapplying(over), name="callgate-ari-reapply")
            stopping = group.create_task(self._stopping.wait(), name="callgate-ari-stop")
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            over.set()
            reading.cancel()
            stopping.cancel()

    async def _reapplying(self, over: asyncio.Event) -> None:
        """Re-apply the decisions kept after their tries all failed (``_unapplied``) while
        connected: a sweep of their channels only, ``reapply_s`` after one is kept, then
        with the wait doubled up to ``reapply_max_s`` for as long as they fail again (the
        wait is reset by a re-application that ends, and on each connect). Idle while
        none is kept: no timer. Returns once ``over`` (the session ends) or ``stop()`` is
        set, within a REST timeout (a listing in flight); the sweeps of the next connect,
        or of the stop, take over."""
        self._reapply_after = 0.0
        while not (over.is_set() or self._stopping.is_set()):
            if not self._unapplied:
                self._kept.clear()
                await wait_event(self._kept, None, over, self._stopping)
                continue
            delay = self._reapply_after or self.reapply_s
            if await wait_event(over, delay, self._stopping) or self._stopping.is_set():
                return
            self._reapply_after = min(delay * 2, self.reapply_max_s)
            try:
                await self._sweep(reapply=True)
            except AriError as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning(
                    "ARI: could not list the waiting channels to re-apply %d decision(s) (%s)",
                    len(self._unapplied),
                    exc,
                )

    async def _backoff(self, failures: int) -> None:
        delay = min(self.config.reconnect_max_s, _RECONNECT_BASE_S * 2 ** min(failures, 16))
        await wait_event(self._stopping, delay * random.uniform(0.5, 1.0))

    async def _read(self, events: AsyncIterator[dict[str, Any]]) -> None:
        """Take each ``StasisStart`` until the stream ends."""
        app = self.config.app
        async for event in events:
            if event.get("application", app) != app:
                continue  # another application's channel (a broken peer): not ours
            channel = parse_stasis_start(event)
            if channel is None or not channel.id:
                if event.get("type") in ("StasisStart", UNREADABLE):
                    self._resweep()  # it may have brought a channel: find it by a listing
                continue
            stay = self._deciding.get(channel.id)
            kept = self._unapplied.get(channel.id)
            if channel.started and stay is not None and stay.started == channel.started:
                continue  # the StasisStart of the stay being decided, again (replayed)
            if channel.started and stay is None and kept and kept.started == channel.started:
                # Replayed while the decision of that stay is kept (its tries all
                # failed; the channel still waits): re-apply it now, never decide again.
                self._spawn(channel, reapply=True)
                continue
            if stay is None:
                # A new stay: decide it, even if an earlier stay of this channel awaits
                # a re-application (that stay is over: its saved decision is deleted).
                # A channel decided lately is decided again only if it still waits (a
                # StasisStart replayed after its continue must not decide, or hang up,
                # a call on its way).
                earlier = self._unapplied.pop(channel.id, None)
                recheck = channel.id in self._recent
                self._spawn(channel, recheck=recheck, forget=earlier is not None)
            elif stay.continue_sent:
                stay.superseded, stay.next = True, channel
            # else: the stay being decided, seen by the sweep first

    def _resweep(self) -> None:
        """An event that may have brought a channel could not be read: list the waiting
        channels and decide them (one such sweep at a time, run once more if asked while
        it runs), rather than leave that channel parked until the next connect."""
        if self._resweeping is not None and not self._resweeping.done():
            self._resweep_again = True
            return
        log.warning("ARI: an event could not be read; looking for the channels waiting")
        self._resweeping = self._decisions.spawn(self._resweeps)

    async def _resweeps(self) -> None:
        self._resweep_again = True
        while self._resweep_again:
            self._resweep_again = False
            try:
                await self._sweep()
            except AriError as exc:
                log.warning("ARI: could not list the waiting channels (%s)", exc)
                return  # the next connect's sweep finds them

    async def _sweep(self, reapply: bool = False) -> None:
        """Decide every channel already waiting in the application (after a restart), or
        re-apply the decision it already got; ``reapply``: only re-apply the decisions
        kept in this process (``_unapplied``), deciding no channel. Either way a kept
        decision whose channel is no longer listed as waiting is dropped (and deleted
        from Redis)."""
        ended: set[str] = set()
        self._listings.append(ended)
        try:
            listed = await self.client.channels()
        finally:
            self._listings = [e for e in self._listings if e is not ended]
        # A channel whose stay ended while the listing came (decided on its StasisStart,
        # its continue answered first: a reply over HTTP may come before an earlier one)
        # is listed as waiting, but it has gone on with its decision: not decided again
        # (a second decision would count it twice, or hang up an allowed call), unless
        # its decision is still to be applied.
        waiting = [
            c
            for raw in listed
            if (c := parse_app_data(raw, self.config.app)) is not None
            and (c.id not in ended or c.id in self._unapplied)
            and (c.id in self._unapplied or not reapply)
        ]
        if reapply and waiting:
            log.info("ARI: re-applying the kept decisions of %d channel(s)", len(waiting))
        elif waiting:
            log.info(
                "ARI: %d channel(s) were waiting in %r; deciding them",
                len(waiting),
                self.config.app,
            )
        present = {c.id for c in waiting}
        gone = [c for c in self._unapplied if c not in present]
        for channel_id in gone:
            del self._unapplied[channel_id]  # gone, or continued by a try whose reply was lost
        if gone:
            self._decisions.spawn(lambda: self._forget(gone))
        for channel in waiting:
            self._spawn(channel, lookup=not reapply, reapply=reapply)

    def _spawn(
        self,
        channel: StasisChannel,
        recheck: bool = False,
        lookup: bool = False,
        forget: bool = False,
        reapply: bool = False,
    ) -> None:
        """Decide ``channel`` (or re-apply its decision) unless one is in flight for it;
        ``recheck``: first make sure it still waits in the application; ``lookup``: first
        look for a decision saved in Redis (a sweep); ``forget``: first delete the one
        saved for an earlier stay; ``reapply``: only re-apply the decision kept for it,
        never decide it (none kept any more: nothing done)."""
        if channel.id in self._deciding:
            return  # the same stay, seen both as an event and by the sweep
        stay = self._deciding[channel.id] = _Stay(started=channel.started)
        work = functools.partial(self._handle, channel, stay, recheck, lookup, forget, reapply)
        self._queued.append((channel.id, stay, work))
        self._start_queued()

    def _start_queued(self) -> None:
        """Start the decisions waiting their turn, up to ``deciding_max`` in flight."""
        while self._queued and self._running < self.deciding_max:
            channel_id, stay, work = self._queued.popleft()
            self._running += 1
            task = self._decisions.spawn(work)
            task.add_done_callback(functools.partial(self._done, channel_id, stay))

    def _done(self, channel_id: str, stay: _Stay, task: asyncio.Task[None]) -> None:
        self._running -= 1
        if task.cancelled() and self._queued:
            # Cancelled (the drain past its grace, or run() itself): so is the door; the
            # decisions waiting their turn are not started (said, not silently lost).
            log.error("Stasis: %d channel(s) left undecided (cancelled)", len(self._queued))
            for queued_id, _, _ in self._queued:
                self._deciding.pop(queued_id, None)
            self._queued.clear()
        if self._deciding.get(channel_id) is stay:
            del self._deciding[channel_id]
        self._recent[channel_id] = None
        self._recent.move_to_end(channel_id)
        if len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        for ended in self._listings:
            ended.add(channel_id)
        if stay.next is not None and not self._stopping.is_set():
            self._spawn(stay.next, recheck=True)
        self._start_queued()  # a decision ended: the next channel waiting its turn

    # -- one channel ----------------------------------------------------------------------

    async def _handle(
        self,
        channel: StasisChannel,
        stay: _Stay,
        recheck: bool,
        lookup: bool,
        forget: bool,
        reapply: bool = False,
    ) -> None:
        try:
            if forget:  # before this stay's own decision may be saved
                await self._forget([channel.id])
            if recheck and not await self._waiting(channel):
                return
            action = self._unapplied.pop(channel.id, None)
            if action is not None:
                stay.started = stay.started or action.started  # a sweep's: the kept stay's
            if action is None and reapply:
                return  # dropped meanwhile (gone, or taken by a new stay): never decided
            if action is None and lookup:
                action = await self._lookup(channel) or await self._recorded(channel)
            if action is None:
                action = await self._decide(channel)
            else:
                stay.saved = True
            await self._apply(channel, stay, action)
            if reapply and channel.id not in self._unapplied:
                self._reapply_after = 0.0  # Asterisk answered it: no longer backing off
        except Exception as exc:  # a bug for one channel must not stop the application
            if cancelling():
                raise asyncio.CancelledError from exc
            log.exception("Stasis channel %s: decision failed", channel.name)

    async def _waiting(self, channel: StasisChannel) -> bool:
        """Whether ``channel`` still sits in the application (a StasisStart that came
        while its previous stay was being continued, or again after it). Asterisk failing
        to say: taken as waiting (decided: never left parked)."""
        try:
            raw = await self.client.channel(channel.id)
        except AriNotFound:
            return False
        except AriError as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.warning("Stasis channel %s: could not check it waits (%s)", channel.name, exc)
            return True
        return parse_app_data(raw, self.config.app) is not None

    def _attempt(self, channel: StasisChannel) -> Attempt:
        """The attempt of ``channel``'s stay (``BadRequest``: its arguments are wrong)."""
        if channel.malformed:
            raise BadRequest(
                f"bad_request:{channel.malformed}",
                f"its StasisStart's {channel.malformed} could not be read",
            )
        number, *rest = channel.args or (channel.extension,)
        return attempt_from_params(
            parse_pairs(rest),
            number=number or channel.extension,
            caller_id=channel.caller_id,
            channel=channel.name,
            default_tenant=self.gate.config.default_tenant,
            now=datetime.now(UTC),
        )

    async def _decide(self, channel: StasisChannel) -> _Action:
        try:
            attempt = self._attempt(channel)
            evaluation = await self.gate.evaluate(attempt, record=True, door="stasis")
        except BadRequest as exc:  # a malformed parameter, or an unknown tenant
            log.warning("Stasis channel %s: %s", channel.name, exc)
            return _Action(error_value(exc.code))
        except Exception as exc:  # a bug: the channel gets the fail mode, not a wait forever
            if cancelling():
                raise asyncio.CancelledError from exc
            log.exception(
                "Stasis channel %s: decision failed; the dialplan's fail mode applies",
                channel.name,
            )
            return _Action(error_value("internal_error"))
        return self._action(evaluation)

    def _action(self, evaluation: Evaluation) -> _Action:
        return self._action_for(evaluation.decision, evaluation)

    def _action_for(self, decision: Decision, evaluation: Evaluation | None = None) -> _Action:
        if decision.verdict is not Verdict.ALLOW and self.config.on_refuse == "hangup":
            return _Action(hangup_cause=decision.hangup_cause, evaluation=evaluation)
        return _Action(decision_value(decision), evaluation=evaluation)

    def _gone(self, channel: StasisChannel, action: _Action, undo: bool) -> None:
        """``channel`` left before its decision reached it: an ALLOW let no call go, so
        (``undo``) its recorded decision is undone."""
        log.info("Stasis channel %s left before its decision was applied", channel.name)
        if undo and action.evaluation is not None:
            self.gate.undo(action.evaluation)

    async def _apply(self, channel: StasisChannel, stay: _Stay, action: _Action) -> None:
        """Carry the decision out, retrying with backoff; if Asterisk keeps failing, keep
        it for the next sweep (re-applied, not decided again), in Redis too from the first
        failed try (any door's next sweep); delete it from there once it is done with."""
        delay = self.apply_backoff_s
        for attempt in range(1, self.apply_tries + 1):
            if stay.superseded:
                break  # the stay this decision was for is over: a new one is decided
            try:
                if action.hangup_cause is not None:
                    await self.client.hangup(channel.id, action.hangup_cause)
                elif self._in_one_request(action.value):
                    stay.continue_sent = True
                    await self.client.continue_in_dialplan(
                        channel.id, self.config.decided_context, action.value
                    )
                else:
                    await self.client.set_variable(channel.id, DECISION_VARIABLE, action.value)
                    stay.continue_sent = True
                    await self.client.continue_in_dialplan(channel.id)
                await self._unsave(channel, stay)
                return
            except AriNotFound:
                # Gone. After a failed try its request may have been carried out (the
                # reply lost): the call may have gone, so only a first try undoes.
                self._gone(channel, action, undo=attempt == 1)
                await self._unsave(channel, stay)
                return
            except AriError as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning(
                    "Stasis channel %s: could not apply the decision (try %d of %d): %s",
                    channel.name,
                    attempt,
                    self.apply_tries,
                    exc,
                )
            if not stay.saved:  # this process may die before a try succeeds
                stay.saved = True
                await self._save(channel, action)
            if attempt < self.apply_tries:
                # Once stopping, the tries left are made at once (no backoff), bounded by
                # the drain: a stop closes the event WebSocket, failing the requests that
                # waited on it, and the channel must not be left parked for that.
                await wait_event(self._stopping, delay)
            delay *= 2
        if stay.superseded:
            await self._unsave(channel, stay)
        else:
            self._remember(channel, replace(action, started=stay.started))

    def _in_one_request(self, value: str) -> bool:
        """Whether ``value`` can travel as the extension of the decided context."""
        return bool(self.config.decided_context) and len(value) < AST_MAX_EXTENSION

    def _remember(self, channel: StasisChannel, action: _Action) -> None:
        self._unapplied[channel.id] = action
        self._kept.set()  # the re-applying (while connected) takes it up
        if len(self._unapplied) > _UNAPPLIED_MAX:
            dropped, _ = self._unapplied.popitem(last=False)
            log.error("Stasis: too many unapplied decisions; forgot channel %s", dropped)
        log.warning(
            "Stasis channel %s: decision kept; the next sweep applies it (within %g s while "
            "connected, else on connecting)",
            channel.name,
            self.reapply_max_s,
        )

    # -- decisions saved in Redis ----------------------------------------------------------

    async def _save(self, channel: StasisChannel, action: _Action) -> None:
        """Save ``action`` for ``channel``'s stay, for any door's next sweep."""
        key = self.gate.keyspace.stasis_key(channel.id)
        text = _saved_text(channel, action)
        await self._redis("save", [(key, ["SET", key, text, "EX", SAVED_TTL_S])])

    async def _lookup(self, channel: StasisChannel) -> _Action | None:
        """The decision a door saved for ``channel``'s stay (None: none, or Redis failed)."""
        key = self.gate.keyspace.stasis_key(channel.id)
        replies = await self._redis("look up", [(key, ["GET", key])])
        if not replies or replies[0] is None:
            return None
        action = _saved_action(channel, replies[0])
        if action is None:
            await self._forget([channel.id])  # an earlier channel's of the same id
            return None
        log.info("Stasis channel %s: re-applying the decision a door saved", channel.name)
        return action

    async def _unsave(self, channel: StasisChannel, stay: _Stay) -> None:
        """The stay's decision is done with: delete it from Redis if it may be there."""
        if stay.saved:
            stay.saved = False
            await self._forget([channel.id])

    async def _forget(self, channel_ids: list[str]) -> None:
        keys = [self.gate.keyspace.stasis_key(channel_id) for channel_id in channel_ids]
        await self._redis("delete", [(key, ["DEL", key]) for key in keys])

    # -- decisions recorded, not applied (the door died in between) -------------------------

    async def _recorded(self, channel: StasisChannel) -> _Action | None:
        """The decision recorded for ``channel``'s stay by a door that died before applying
        it (killed between decide.lua and the continue; nothing saved, as its first try
        had not failed), from the audit trail: re-applied, it is not decided (and counted)
        again. None: none, or not surely this stay's (decided anew, as before), or a
        failure (Redis, Asterisk: logged). Only a sweep asks, for a channel with no
        decision in flight, kept or saved: no command on the path of a decision."""
        try:
            found = await self._recorded_for(channel)
        except Exception as exc:  # a bug: the channel is decided, never left waiting
            if cancelling():
                raise asyncio.CancelledError from exc
            log.exception(
                "Stasis channel %s: looking for its recorded decision failed", channel.name
            )
            return None
        if found is not None:
            log.info("Stasis channel %s: re-applying its recorded decision", channel.name)
        return found

    async def _recorded_for(self, channel: StasisChannel) -> _Action | None:
        created_ms = _epoch_ms(channel.created)
        if created_ms is None or channel.malformed:
            return None
        active = self.gate.active
        try:
            attempt = self._attempt(channel)
            active.config.policy.check_tenant(attempt.tenant)
        except BadRequest:
            return None  # decided as ERROR: nothing recorded
        pending = active.planner(False).plan(attempt)
        if not isinstance(pending, Plan):
            return None  # decided before Redis (nothing counted): the same decision again
        name = attempt.channel
        if active.config.hash_numbers:  # as Gate.evaluate records it
            name = redact(name, active.config.secret)
        record = await self._audit_entry(
            active.keyspace.audit_key(pending.check.number.group),
            stream_len(active.config.audit.max_len),
            created_ms,
            lambda r: (
                (r.get("door"), r.get("channel"), r.get("number"))
                == ("stasis", name, pending.check.number.token)
            ),
        )
        if record is None or not await self._first_stay(channel):
            return None
        retry = record.get("retry_after_s", "")
        try:
            verdict = Verdict(record.get("verdict", ""))
            retry_s = float(retry) if retry else None
        except ValueError:
            return None  # not as callgate writes it: decided anew
        decision = Decision(
            verdict,
            record.get("reason", ""),
            record.get("rule", ""),
            pending.destination.e164,
            retry_s,
        )
        return self._action_for(decision)

    async def _audit_entry(
        self,
        key: str,
        kept: int,
        created_ms: int,
        matches: Callable[[Mapping[str, str]], bool],
    ) -> dict[str, str] | None:
        """The newest record of the audit stream ``key`` that ``matches``, decided at or
        after ``created_ms`` (the channel's creation: an earlier channel of the same name,
        Asterisk restarted, is not it). Read newest first, a page at a time, from
        ``_SKEW_MS`` before ``created_ms`` (the entry ids are Redis's clock): bounded by
        the stream's length (``kept``, plus a node)."""
        high, low = "+", str(max(created_ms - _SKEW_MS, 0))
        for _ in range(kept // _AUDIT_PAGE + 2):
            command = ["XREVRANGE", key, high, low, "COUNT", _AUDIT_PAGE]
            replies = await self._redis("look for the audit entry of", [(key, command)])
            if replies is None:
                return None
            for _, fields in replies[0]:
                record = _audit_record(fields)
                ts = record.get("ts", "")
                if ts.isdigit() and int(ts) >= created_ms and matches(record):
                    return record
            if len(replies[0]) < _AUDIT_PAGE:
                return None
            high = "(" + _text(replies[0][-1][0])
        return None

    async def _first_stay(self, channel: StasisChannel) -> bool:
        """Whether ``channel`` is on its first stay in the application, so that a decision
        recorded for it since its creation is this stay's: no subroutine has returned on
        it (``GOSUB_RETVAL`` never set), and no decision reached it (``CALLGATE_DECISION``
        never set, or emptied). dialplan/callgate.conf's ``callgate-stasis`` leaves on
        every path but a hangup by ``Return()``, which sets the first: a channel back for
        a new stay (trunk failover) has it; a dialplan of its own that runs ``Stasis()``
        again without a subroutine still has the decision the first stay was given. Such
        a channel is decided anew (a previous stay's ALLOW re-applied to it would let a
        call out uncounted). Not sure (Asterisk failing, a subroutine returned before):
        False."""
        for name in ("GOSUB_RETVAL", DECISION_VARIABLE):
            try:
                value = await self.client.variable(channel.id, name)
            except AriNotFound:
                continue  # never set (or the channel is gone: its continue will say)
            except AriError as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning(
                    "Stasis channel %s: could not read its variables (%s)", channel.name, exc
                )
                return False
            if name == "GOSUB_RETVAL" or value:
                return False
        return True

    async def _redis(self, what: str, commands: list[tuple[str, list[Any]]]) -> list[Any] | None:
        """``commands`` (one key each) on the store's admin path, within ``SAVED_WITHIN_S``;
        None when Redis failed (the first failure of an incident is logged, and the
        recovery)."""
        try:
            async with asyncio.timeout(SAVED_WITHIN_S):
                replies = await self.gate.store.send(commands)
        except (StoreError, TimeoutError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            if not self._redis_failing:
                self._redis_failing = True
                log.warning(
                    "Stasis: could not %s an unapplied decision in Redis (%s); such "
                    "decisions are kept in this process only",
                    what,
                    str(exc) or f"no answer within {SAVED_WITHIN_S:g} s",
                )
            return None
        if self._redis_failing:
            self._redis_failing = False
            log.info("Stasis: Redis keeps unapplied decisions again")
        return replies
