"""The Redis store: one atomic Lua call per decision, plus the admin primitives.

Guarantees:
- ``decide(check)`` is one EVALSHA of ``gate/store/lua/decide.lua``, sent as a
  pre-encoded request (arguments encoded here, the script's SHA1 computed once; NOSCRIPT
  loads it and sends again: the script did not run); it returns a ``StoreResult`` or
  raises ``StoreUnavailable`` / ``StoreTimeout``.
- Its time limits measure Redis, not a queue: a decision waits at most ``pool_wait`` for
  one of the ``pool_size`` connections of its server (connect.py; in a cluster, of the
  master of its slot), then at most ``deadline`` from sending the request to Redis's
  reply. A reply that misses the deadline is still read in the background and its
  connection goes back to the pool: a slow moment never turns into reconnections.
- Decision connections are channels (channel.py): opened by redis-py (the pool's, or a
  cluster node's, connection class) and then read by protocol callbacks, so a decision
  costs no pool checkout, no reader task and no stream read of its own.
- A recording call is never sent twice: if its connection fails after the request was
  sent, the script may have run, so the decision gets the fail mode and is counted at
  most once. A call that records nothing may be sent again once, on a fresh connection.
- A recorded decision that got the fail mode leaves nothing behind: when its reply misses
  the deadline (Redis stopped, busy or slow: the script may still run, or may have run),
  or its caller stops waiting, ``void.lua`` is written right behind it on the same
  connection. Redis runs one connection's commands in order, so if the decision ever runs
  it runs first, and the void then deletes its audit entry (found by its head, byte for
  byte) and, if it allowed the call, takes its attempt out of the attempt logs. When the
  connection fails instead (the reply is lost), the void is sent on a fresh connection,
  with backoff, for up to ``VOID_PATIENCE_S`` (the decision may still be waiting in a
  stalled server's socket buffer then, so that case is best effort; ``voids`` counts
  each outcome). The call's own record is the fail mode's (the audit writer keeps it).
  Replies that say the script did not run (NOSCRIPT, and in a cluster MOVED, ASK,
  TRYAGAIN, or STALE below) are followed by sending it again; TRYAGAIN (its slot being
  resharded) only within the decision's deadline, counted from its start: a decision never
  waits for a slot to move, it gets the fail mode.
- Every key a script touches is in its KEYS, named in the number's slot group
  (gate/core/keys.py). The store keeps a view of each list's live version ("version/bits",
  read from the list's directory entry); the script checks it against the group's meta
  and answers STALE instead of deciding when it is out of date, and the decision is sent
  again with what the meta holds: a decision never reads a list version other than the
  live one, and the first decision after a list swap sees the new version on every shard.
- Modes (connect.py): one server (``url``, or the embedded one) or a Sentinel-managed
  master: a decision, its CPS log and a campaign's call counts included, is one call.
  Redis Cluster (seed ``nodes``): each call is routed to the master of its slot, MOVED and
  ASK are followed and counted (``redirects``); shared state lives in a slot of its own
  (a trunk's CPS log, a campaign's call counts for its abandoned-call ceiling), so a
  decision that has some first reads it there (one call per slot, sent together; a
  recorded decision reserves its place in a CPS log), then decides in the number's slot
  with what was read, and gives a CPS reservation back if the number's checks refused:
  the CPS cap is never exceeded. Call counts are only read by decisions (written by the
  answered/abandoned events), so reading them first is exact up to the events that land
  between the two calls (as events landing just after one call). After a lost
  connection the cluster's slot map is read again before the next call.
- ``durable()`` gives a view of the store whose writes are acknowledged only once
  ``wait_replicas`` replicas hold them (``WAIT``, on every node the view wrote to), for
  the writes that must survive a failover: opt-outs, consent revocations, refusals. In a
  cluster they also outlast a slot being resharded: TRYAGAIN is followed, with backoff, for
  up to ``DURABLE_TRYAGAIN_S`` (other admin commands: ``TRYAGAIN_S``), and a cancelled
  caller stops at once.
- No redis-py exception leaves this module: each is translated into ``gate.core.errors``.
- Admin commands (lists, consents, audit) use ``admin_client`` (its own pool: long
  timeouts, never a blind retry; in a cluster, routed by key) and ``run_scripts`` /
  ``send`` / ``send_packed``; never the decision deadline. The long timeouts are for the
  long jobs (imports, ``--replace``, exports); a read someone waits on (the console, an
  API client: a list's size, a page of the audit trail) goes through ``answer_within``:
  after ``READ_WAIT_S`` without an answer (Redis stopped, frozen or swamped) it is
  cancelled and raises ``StoreTimeout`` saying so. A cancelled command never leaves its
  connection behind half read: redis-py and ``_admin_exchange`` disconnect it, and the
  next command opens a fresh one.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib.resources
import json
import logging
import re
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ExecAbortError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.config.loader import REDIS_PASSWORD_ENV, RedisConfig
from gate.core.engine import Check, CheckKind, StoreCheck, StoreResult
from gate.core.errors import NotReplicated, StoreError, StoreTimeout, StoreUnavailable
from gate.core.evidence import check_summary, hours_summary
from gate.core.keys import (
    MAX_BITS,
    MIN_BITS,
    directory_key,
    list_version,
    namespace_of,
    read_list_version,
    stored_number,
)
from gate.store.channel import Behind as _Behind
from gate.store.channel import Busy, Channel, ChannelLane
from gate.store.connect import ADMIN_TIMEOUT_S, REPLY_TIMEOUT_S, Link, LinkStatus, no_retry

__all__ = [
    "BATCH",
    "CALL_COUNTS",
    "DURABLE_TRYAGAIN_S",
    "HASH_MAX",
    "MARK_MAX",
    "READ_WAIT_S",
    "Script",
    "Store",
    "answer_within",
    "cancel_point",
    "load_script",
    "redis_error_text",
    "translate_error",
    "unreadable_list",
]

log = logging.getLogger("callgate")

BATCH = 1000
# Decisions per EVALSHA in a scrub: ~10-20 µs of Redis time each, so a few ms per call.
SCRUB_BATCH = 200
_ADMIN_TIMEOUT_S = ADMIN_TIMEOUT_S
# How long a read someone waits on (the console's pages, an API client: lists and their
# sizes, a list's info, a page of the audit trail) waits for Redis before answering that
# it did not answer (``answer_within``). Far below the admin connections' own timeout
# (``ADMIN_TIMEOUT_S`` * 2, for imports and exports), far above any healthy read.
READ_WAIT_S = 10.0
# How long close() lets replies that missed their deadline arrive before dropping them.
_CLOSE_GRACE_S = 1.0
# A decision whose list view is out of date is sent again with the meta's; a view that
# changes under it again and again (a swap in progress on every try) gives up.
_STALE_TRIES = 4
# Redirections (MOVED, ASK) and script loads followed in a row for one call (a slot
# moving, then a failover) before it gives up.
_REDIRECTS = 8
# TRYAGAIN (cluster: a multi-key command on a slot being resharded, its keys split between
# the slot's two nodes until the last of them is moved) is sent again after a backoff from
# TRYAGAIN_RETRY_S, doubling, up to TRYAGAIN_RETRY_MAX_S, for as long as the call may wait:
# a decision until its deadline (from its start: a call must not wait for a resharding, it
# gets the fail mode); an admin command about as long as eight quick rounds take
# (TRYAGAIN_S: its caller sends it again); a durable write (``Store.durable``: an opt-out,
# a consent revocation, a refusal) for DURABLE_TRYAGAIN_S.
TRYAGAIN_RETRY_S = 0.01
TRYAGAIN_RETRY_MAX_S = 0.5
TRYAGAIN_S = 0.3
# A durable write outlasts the migration of its slot. redis-cli --cluster reshard (as
# CLUSTER SETSLOT + MIGRATE, 10 keys per MIGRATE by default) moves a slot group's slot in
# one pass: its list buckets (2**(bits - 10) per list: 64 for a 10 M-entry list), consent
# HASHes, and one attempt log and cool-off marker per number called (10 M numbers: about
# 10 k keys per slot), so about a thousand MIGRATE round trips, each serialising and
# restoring its keys: a few seconds on a LAN, tens of seconds for a slot of big keys or a
# throttled reshard. 30 s covers that and stays an answer someone waits for (the CLI, an
# API client, a callee's opt-out in the IVR); past it the write fails, saying so, and is
# sent again (it is idempotent).
DURABLE_TRYAGAIN_S = 30.0
_REINIT_EVERY_S = 0.2


def load_script(name: str) -> str:
    """The text of a Lua script shipped in ``gate/store/lua/``."""
    return (
        importlib.resources.files("gate.store")
        .joinpath("lua")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


@dataclass(frozen=True, slots=True)
class Script:
    """A shipped Lua script, its SHA1 (the name EVALSHA calls it by)."""

    name: str
    text: str
    sha: bytes

    @classmethod
    def load(cls, name: str) -> Script:
        text = load_script(name)
        return cls(name, text, hashlib.sha1(text.encode()).hexdigest().encode())


CALL_COUNTS = Script.load("call_counts.lua")
DECIDE = Script.load("decide.lua")
HASH_MAX = Script.load("hash_max.lua")
LIST_COPY = Script.load("list_copy.lua")
LIST_DELTA = Script.load("list_delta.lua")
LIST_FILL = Script.load("list_fill.lua")
MARK_MAX = Script.load("mark_max.lua")
RELEASE = Script.load("release.lua")
VOID = Script.load("void.lua")
# A void looks for its decision's audit entry among this many of the stream's newest.
VOID_SEARCH = 1000
# A void sent on a fresh connection: how long each try waits for its reply, and how long
# it is tried again (backoff from VOID_RETRY_S, doubling, up to VOID_RETRY_MAX_S).
VOID_DEADLINE_S = 2.0
VOID_PATIENCE_S = 120.0
VOID_RETRY_S = 0.2
VOID_RETRY_MAX_S = 5.0


def cancel_point() -> None:
    """Raise the cancellation the current task was asked for but never received.

    On Python 3.11 ``asyncio.wait_for`` returns its result and drops a cancellation that
    arrives as the awaited call completes (fixed in 3.12); redis-py sends every command
    through it when a socket timeout is set. A long job (an import, a scrub) calls this once
    per batch, so that Ctrl-C stops it instead of being lost. Only for the body of a loop:
    cleanup code that runs after a cancellation (a ``finally``) must not call it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@asynccontextmanager
async def answer_within(where: str, seconds: float | None = None) -> AsyncIterator[None]:
    """Bound what the block waits for Redis to ``seconds`` (by default ``READ_WAIT_S``,
    read at each call): past it the block is cancelled (its command's connection is
    closed, never reused) and ``StoreTimeout`` says that the Redis at ``where`` did not
    answer and what to do. Only for reads someone waits on: never around an import, a
    ``--replace`` or a whole export (bound each of an export's reads instead)."""
    if seconds is None:
        seconds = READ_WAIT_S
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            yield
    except TimeoutError as exc:
        if not bound.expired():
            raise
        raise StoreTimeout(
            f"Redis at {where} did not answer within {seconds:g} s (stopped, frozen or "
            "overloaded?); check it (/readyz, redis-cli ping) and try again"
        ) from exc


# Error replies that redis-py raises as classes of their own, their code cut off the text
# (most specific first), and their codes, put back by ``redis_error_text``: those saying
# Redis cannot answer now (a cluster failover, a slot moving), then the others (a replica
# after a failover, a full Redis, a missing script, an ACL, an aborted transaction).
_ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (MasterDownError, "MASTERDOWN"),
    (ClusterDownError, "CLUSTERDOWN"),
    (TryAgainError, "TRYAGAIN"),
    (ReadOnlyError, "READONLY"),
    (OutOfMemoryError, "OOM"),
    (NoScriptError, "NOSCRIPT"),
    (NoPermissionError, "NOPERM"),
    (ExecAbortError, "EXECABORT"),
)


def _caused_by(
    exc: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    """Whether ``exc`` or one of its causes is a ``kind``: redis-py raises a failed
    connection's handshake as a ConnectionError, the reason only its cause (Redis refused
    the credentials, NOAUTH or WRONGPASS, yet is up; or it did not answer in time)."""
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__
    return False


# redis-py's wrappings of an error reply, cut off by ``redis_error_text``: a pipeline's
# (the command, up to 100 characters: a list's numbers, an audit record) and a script's
# (Redis 6: its function name and line; Redis 7: its SHA and line at the end, Valkey:
# its line).
_PIPELINE_WRAP = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
_SCRIPT_WRAP = re.compile(r"^Error running script \(call to \w+\): (?:@user_script: ?\d+: ?)*-?")
_SCRIPT_TAIL = re.compile(r",? *script: (?:\w+, )?on @\w+:\d+\.?$")
_MAX_ERROR_TEXT = 300  # characters of the server's text kept in a message


def redis_error_text(exc: BaseException) -> str:
    """The server's own words in a redis-py error, as one clean line: without the
    pipeline's command or the script's name and line that redis-py or Redis wrap it in
    (they may carry a number, a record or Lua source), with the code that redis-py cuts
    off the errors it has classes for (``READONLY``, ``OOM``…: ``_ERROR_CODES``), at most
    ``_MAX_ERROR_TEXT`` characters."""
    text = str(exc)
    if wrapped := _PIPELINE_WRAP.match(text):
        text = text[wrapped.end() :]
        if text.startswith("(") and text.endswith(",)"):  # redis.asyncio: the args' repr
            with contextlib.suppress(ValueError, SyntaxError):
                text = str(ast.literal_eval(text)[0])
    text = _SCRIPT_TAIL.sub("", _SCRIPT_WRAP.sub("", text.strip()))
    text = " ".join(text.split())
    for kind, code in _ERROR_CODES:  # redis-py cut it off: the line says it as Redis did
        if isinstance(exc, kind):
            if not text.startswith(code):
                text = f"{code} {text}".rstrip()
            break
    text = text or type(exc).__name__
    if len(text) > _MAX_ERROR_TEXT:
        text = text[: _MAX_ERROR_TEXT - 1] + "…"
    return text


def translate_error(exc: BaseException, where: str) -> StoreError:
    """Map a redis-py error to the gate's error tree (one line, says what to check)."""
    if isinstance(exc, StoreError):
        return exc
    if _caused_by(exc, (TimeoutError, RedisTimeoutError)):  # a handshake's: a ConnectionError
        return StoreTimeout(f"Redis at {where} did not answer in time")
    if isinstance(exc, BusyLoadingError):  # a ConnectionError to redis-py, yet Redis is up
        return StoreUnavailable(f"Redis at {where} is loading its data; it answers once loaded")
    if _caused_by(exc, AuthenticationError):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreUnavailable(
            f"Redis at {where} refused callgate's credentials ({detail}); set the user and "
            f"password in the Redis URL or redis.username/password (or ${REDIS_PASSWORD_ENV})"
        )
    if isinstance(exc, RedisConnectionError | OSError):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreUnavailable(f"Redis at {where} is unreachable ({detail}); is it running?")
    text = redis_error_text(exc)  # with the code redis-py cut off (``_ERROR_CODES``)
    if text.startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")):
        return StoreUnavailable(f"Redis at {where} cannot answer now ({text})")
    if text == "BUSY" or text.startswith("BUSY "):  # not BUSYKEY (RESTORE's: a key exists)
        # A script (or function) running past busy-reply-threshold (lua-time-limit): Redis
        # answers every other command BUSY until it ends or is killed. Down for the gate.
        return StoreUnavailable(
            f"Redis at {where} is busy running a script and answers nothing else ({text}); "
            "it answers once the script ends: see SLOWLOG / CLIENT LIST, or SCRIPT KILL it"
        )
    if text.startswith("MISCONF"):  # stop-writes-on-bgsave-error after a failed snapshot
        return StoreError(
            f"Redis at {where} refuses every write (MISCONF): it could not save its data to "
            "disk, and stop-writes-on-bgsave-error is on; see Redis's log, fix its disk or "
            "its dir, then try again"
        )
    return StoreError(f"Redis at {where} answered with an error: {text}")


_Reply = Any  # a decoded RESP reply, or the ResponseError an error reply raised


@dataclass(frozen=True, slots=True)
class _Use:
    """How a call is sent: over the admin connections or a decision's, whether it records
    (never sent twice after a lost reply), and how long its reply is waited for (None: no
    decision deadline, only the socket's long timeout: a scrub)."""

    admin: bool = False
    records: bool = False
    deadline_s: float | None = None
    # How long TRYAGAIN replies are followed by sending again (seconds from ``since``, a
    # ``time.monotonic()``; None: from the call's start).
    tryagain_s: float = TRYAGAIN_S
    since: float | None = None
    # A durable view's write (never cleanup code): its long TRYAGAIN wait ends at once when
    # its task is cancelled, even if a redis-py call dropped the cancellation (cancel_point).
    durable: bool = False


_SCRUB = _Use()
_VOID_USE = _Use(deadline_s=VOID_DEADLINE_S)  # a void may be sent again: it is idempotent


@dataclass(frozen=True, slots=True)
class _Undo:
    """How to undo one recorded decision (a void.lua call, built only when needed)."""

    command: Callable[[], _Command]
    asking: bool = False  # its decision went behind ASKING (cluster): the void does too
    why: str = "it got the fail mode"  # for the log: a late decision, or a call never made
    key: str = ""  # the number's audit stream the void looks in (for the log)


def _asking(undo: _Undo) -> _Undo:
    return dataclasses.replace(undo, asking=True)


class _Expired(Exception):
    """A decision's deadline passed before its reply (set on the reply's future)."""


class _Deadline:
    """Fails ``reply`` with ``_Expired`` ``seconds`` after the send, unless it is done;
    once, when the reply has reached this process unread (the event loop's own backlog,
    not Redis being slow: ``waiting()`` says so), it waits ``seconds`` more."""

    __slots__ = ("_extended", "_handle", "_reply", "_seconds", "_waiting")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reply: asyncio.Future[Any],
        waiting: Callable[[], bool],
        seconds: float | None,
    ) -> None:
        self._reply, self._waiting, self._seconds = reply, waiting, seconds
        self._extended = False
        self._handle = None if seconds is None else loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        if self._reply.done():
            return
        if not self._extended and self._seconds is not None and self._waiting():
            self._extended = True
            self._handle = self._reply.get_loop().call_later(self._seconds, self._fire)
            return
        self._reply.set_exception(_Expired())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _delivered(reply: asyncio.Future[Any]) -> bool:
    """Whether the reader gave ``reply`` its replies or its connection's failure."""
    return reply.done() and not reply.cancelled() and not isinstance(reply.exception(), _Expired)


class _NodeOpener:
    """Makes the decision connections of a cluster node: its own connection class and
    settings, never re-sending by itself (``client.py`` decides what may be re-sent)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def make_connection(self) -> AbstractConnection:
        options = {**self.node.connection_kwargs, "retry": no_retry()}
        connection: AbstractConnection = self.node.connection_class(**options)
        return connection


def _busy(where: str, settings: RedisConfig) -> StoreUnavailable:
    return StoreUnavailable(
        f"Redis at {where}: all {settings.pool_size} connections stayed busy for "
        f"{settings.pool_wait_s:g} s (raise redis.pool_size?)"
    )


_Release = Callable[[Any], Awaitable[None]]


class _Pinned:
    """The admin connections a durable view wrote on, one per node ("" for one server),
    held until its ``WAIT``; each used by one request at a time."""

    def __init__(self) -> None:
        self.connections: dict[str, tuple[Any, _Release]] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    async def release_all(self) -> None:
        held, self.connections = self.connections, {}
        for connection, release in held.values():
            await release(connection)


class Store:
    """The connections to one Redis deployment (connect.py: a server, a Sentinel-managed
    master or a Redis Cluster) and the scripts.

    ``Store(url, deadline_s)`` talks to the single server at ``url``; ``config`` (the
    ``[redis]`` section) adds the mode, the pool, auth and durability settings; ``nodes``
    (seed URLs) makes it a Redis Cluster's."""

    def __init__(
        self,
        url: str | None,
        deadline_s: float,
        config: RedisConfig | None = None,
        *,
        nodes: Sequence[str] = (),
    ) -> None:
        settings = config or RedisConfig()
        if nodes:
            settings = dataclasses.replace(settings, mode="cluster", nodes=tuple(nodes))
        if settings.mode != "single":
            url = None
        elif url is None:
            url = settings.url
        self.settings = dataclasses.replace(settings, url=url, deadline_s=deadline_s)
        self.url = url
        self.deadline_s = deadline_s
        self.cluster = self.settings.mode == "cluster"
        self.link = Link(self.settings)
        self.redirects: Counter[str] = Counter()
        self._views: dict[str, str] = {}
        self._reinit_at = {False: 0.0, True: 0.0}
        self._stale_topology = {False: False, True: False}  # by admin: re-read the slot map
        self._ask_nodes: dict[str, ClusterNode] = {}
        self._node_lanes: dict[str, ChannelLane] = {}
        self._pool: ConnectionPool | None = None
        self._client: aioredis.Redis | None = None
        self._cluster: RedisCluster | None = None
        if self.cluster:
            self._cluster = self.link.cluster(admin=False)
        else:
            self._pool = self.link.decision_pool()
            self._client = self.link.client(self._pool)
            self._lane = ChannelLane(
                self._pool,
                self.settings.pool_size,
                self.settings.pool_wait_s,
                poll_s=self.settings.busy_poll_s,
            )
        self._admin_pool: ConnectionPool | None = None
        self._admin_client: aioredis.Redis | RedisCluster | None = None
        # Background work: voids sent on a fresh connection, and the closing of the
        # channels of a cluster node that is no longer a master.
        self._exchanges: set[asyncio.Task[Any]] = set()
        # Late recorded decisions undone: "undone" (it had run: its entry deleted, its
        # attempt uncounted), "not_run", "failed" (no void could be sent in time).
        self.voids: Counter[str] = Counter()
        # A durable view's connections (None: not a durable view, or no WAIT).
        self._pinned: _Pinned | None = None
        # A durable view (``durable()``): its admin commands follow TRYAGAIN for
        # DURABLE_TRYAGAIN_S, not TRYAGAIN_S.
        self._durable = False

    @classmethod
    def open(cls, settings: RedisConfig) -> Store:
        """A store for ``settings`` (as ``store.settings`` gives them: scrub workers and
        the API's import thread open their own)."""
        return cls(settings.url, settings.deadline_s, settings)

    @property
    def admin_client(self) -> Any:
        """A client for administration (lists, consents, audit): long timeouts.

        One server: its own pool, never a blind retry (redis-py's default, a 5 s socket
        timeout then one retry, re-sent a slow RENAME of a big list, which then failed "no
        such key" after the first had succeeded). Cluster: routed by key, MOVED/ASK
        followed, a few retries after a failover (admin writes are idempotent)."""
        if self._admin_client is None:
            if self.cluster:
                self._admin_client = self.link.cluster(admin=True)
            else:
                self._admin_pool = self.link.admin_pool()
                self._admin_client = self.link.client(self._admin_pool)
        return self._admin_client

    @property
    def where(self) -> str:
        """The server (or cluster, or sentinels) without credentials, for messages."""
        return self.link.where

    def answer_within(self, seconds: float | None = None) -> AbstractAsyncContextManager[None]:
        """``answer_within`` for this store's Redis: a read someone waits on gives up after
        ``seconds`` (by default ``READ_WAIT_S``) with ``StoreTimeout`` instead of the admin
        connections' long timeout."""
        return answer_within(self.where, seconds)

    @property
    def status(self) -> LinkStatus:
        """Mode, the node answering, failovers and restarts seen (``/readyz``, metrics)."""
        return self.link.status

    @property
    def answered_by(self) -> str:
        """The node that answers decisions (in a cluster: the master of the last one)."""
        return self.link.status.node

    async def close(self) -> None:
        """Let background work finish (at most ``_CLOSE_GRACE_S``), cancel the rest and
        wait (bounded) for it; then let the channels' replies still awaited arrive (at most
        ``_CLOSE_GRACE_S`` again) and close everything."""
        if self._exchanges:
            await asyncio.wait(set(self._exchanges), timeout=_CLOSE_GRACE_S)
        if self._exchanges:
            pending = set(self._exchanges)
            log.warning("Redis at %s: %d tasks still running at close", self.where, len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CLOSE_GRACE_S)
        lanes = [*self._node_lanes.values(), *([] if self.cluster else [self._lane])]
        self._node_lanes = {}
        await asyncio.gather(*(lane.close(_CLOSE_GRACE_S) for lane in lanes))
        if self._client is not None:
            await self._client.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()
        for node in self._ask_nodes.values():
            await node.disconnect()
        if self._admin_client is not None:
            await self._admin_client.aclose()
        pools = [p for p in (self._pool, self._admin_pool) if p is not None]
        await self.link.close(*pools)

    async def ping(self) -> None:
        """PING within ``max(deadline, 1 s)`` (an embedded server still loading its data
        answers LOADING: not ready; a cluster: every master)."""
        try:
            async with asyncio.timeout(max(self.deadline_s, 1.0)):
                if self._cluster is not None:
                    await self._cluster.initialize()
                    await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
                else:
                    assert self._client is not None
                    await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy`` (from INFO: CONFIG may be renamed away on a managed
        Redis); None in a cluster (not read there) or when INFO does not say."""
        if self._cluster is not None:
            return None
        assert self._client is not None
        try:
            async with asyncio.timeout(max(self.deadline_s, 1.0)):
                info = await self._client.info("memory")
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc
        policy = info.get("maxmemory_policy")
        return None if policy is None else str(policy)

    async def keying(
        self, key: str, fingerprint: str, stamp: bool, within_s: float | None = None
    ) -> str | None:
        """The keying fingerprint the data was written with (``Keyspace.fingerprint``),
        held at ``key``; with ``stamp``, ``fingerprint`` is written there first if none is
        (by the first process that writes data). None: none held, none written. Bounded
        by ``within_s`` (a decision's deadline) or an admin command's bound."""
        bound = max(self.deadline_s, 1.0) if within_s is None else within_s
        try:
            async with asyncio.timeout(bound):
                held = await self.admin_client.eval(_KEYING, 1, key, fingerprint, int(stamp))
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc
        return None if held is None else held.decode("utf-8", "replace")

    def forget_views(self) -> None:
        """Read every list's version again before its next decision (tests, migrate)."""
        self._views.clear()

    # --- decisions ------------------------------------------------------------------

    async def decide(self, check: StoreCheck) -> StoreResult:
        """Run one decision's checks atomically: each call waits at most ``pool_wait`` for
        a connection, then at most ``deadline`` from sending the request to Redis's reply
        (see the module's guarantees)."""
        try:
            return await self._decide(check)
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def _decide(self, check: StoreCheck) -> StoreResult:
        # TRYAGAIN (a slot being resharded) is followed within the decision's deadline, from
        # its start: past it the decision gets the fail mode, it never waits for the move.
        use = _Use(
            records=check.record,
            deadline_s=self.deadline_s,
            tryagain_s=self.deadline_s,
            since=time.monotonic(),
        )
        shared = [c for c in check.checks if c.shared] if self.cluster else []
        reserved: list[Check] = []
        outside: dict[int, tuple[int, int, int]] = {}
        if shared:
            outside, reserved = await self._reserve(check, shared, use)
        result: StoreResult | None = None
        try:
            for _ in range(_STALE_TRIES):
                await self._learn_views([check], use)
                encoded = _encode([check], self._views, [outside])
                void = encoded.receipt(0) if check.record else None
                (reply,) = await self._call([encoded.command(DECIDE)], use, void)
                try:
                    with _readable(self.where, DECIDE):
                        results = encoded.results(_raise_error(reply), self._views, self.where)
                except StoreError:
                    if void is not None:  # whatever ran may have recorded: undo it
                        self._void_later(void)
                    raise
                if results[0] is not None:
                    result = results[0]
                    return result
            raise StoreError(f"Redis at {self.where}: list versions kept changing; try again")
        finally:
            if reserved and (result is None or result.decided != 0):
                await self._give_back(reserved, check.now_ms)

    async def _reserve(
        self, check: StoreCheck, shared: list[Check], use: _Use
    ) -> tuple[dict[int, tuple[int, int, int]], list[Check]]:
        """Cluster: read each shared check in its own slot (and, recording, reserve a place
        in each shared attempt log).
        Returns, per check index, what it saw (seen, limit, retry_ms: an X check of
        decide.lua) and the checks whose log holds a reservation."""
        probes = [StoreCheck(check.now_ms, check.record, check.number, "", (c,)) for c in shared]
        replies = await self._call([_encode([p], {}).command(DECIDE) for p in probes], use)
        outside: dict[int, tuple[int, int, int]] = {}
        reserved = []
        for c, reply in zip(shared, replies, strict=True):
            decided, retry_ms, seen = _probe(reply, self.where)
            outside[check.checks.index(c)] = _outside(c, seen, retry_ms)
            # Only an attempt log counts (reserves) the attempt; call counts are read-only.
            if check.record and not decided and c.kind is CheckKind.ATTEMPT_LOG:
                reserved.append(c)
        return outside, reserved

    async def _give_back(self, reserved: list[Check], now_ms: int) -> None:
        """``_release``, bounded by the deadline; a failure leaves the reservation to leave
        its log with its window (one second for a CPS log): fewer calls, never more."""
        try:
            async with asyncio.timeout(self.deadline_s):
                await self._release(reserved, now_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("a CPS reservation was not given back (%s); it expires with its window", exc)

    async def _release(self, reserved: list[Check], now_ms: int) -> None:
        """Give back reservations of a decision that did not let the call go (never sent
        twice: a second release could give back another decision's reservation)."""
        use = _Use(records=True, deadline_s=self.deadline_s, tryagain_s=self.deadline_s)
        replies = await self._call([_command(RELEASE, [c.key], [now_ms]) for c in reserved], use)
        for reply in replies:
            _raise_error(reply)

    async def decide_many(self, checks: Sequence[StoreCheck]) -> list[StoreResult]:
        """Evaluate many decisions (never recorded) for their verdicts: ``SCRUB_BATCH`` per
        EVALSHA (a few ms of Redis time each, so live decisions are never held up long),
        grouped by slot in cluster mode, all sent in one round trip per node. No decision
        deadline: a scrub is not a call waiting to leave.
        Each decision stops at its first check that BLOCKs: the later ones are not run and
        their results are -1, so a result gives the verdict (``engine.outcome``), not the
        shadow rules' or an explanation (``Store.decide`` runs every check)."""
        if not checks:
            return []
        try:
            outside = await self._peek_shared(checks) if self.cluster else [{}] * len(checks)
            results: list[StoreResult | None] = [None] * len(checks)
            todo = list(range(len(checks)))
            for _ in range(_STALE_TRIES):
                await self._learn_views([checks[i] for i in todo], _SCRUB)
                batches = _batches(todo, checks, self.cluster)
                encoded = [
                    _encode(
                        [checks[i] for i in batch],
                        self._views,
                        [outside[i] for i in batch],
                        verdicts=True,
                    )
                    for batch in batches
                ]
                replies = await self._call([e.command(DECIDE) for e in encoded], _SCRUB)
                stale: list[int] = []
                for batch, enc, reply in zip(batches, encoded, replies, strict=True):
                    with _readable(self.where, DECIDE):
                        read = enc.results(_raise_error(reply), self._views, self.where)
                    for index, result in zip(batch, read, strict=True):
                        if result is None:
                            stale.append(index)
                        results[index] = result
                if not stale:
                    return [r for r in results if r is not None]
                todo = stale
            raise StoreError(f"Redis at {self.where}: list versions kept changing; try again")
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def _peek_shared(
        self, checks: Sequence[StoreCheck]
    ) -> list[dict[int, tuple[int, int, int]]]:
        """Cluster: what each shared check sees (each key read once), per decision and
        check index as (seen, limit, retry_ms) for an X check."""
        probes: dict[str, StoreCheck] = {}
        for check in checks:
            for c in check.checks:
                if c.shared and c.key not in probes:
                    probes[c.key] = StoreCheck(check.now_ms, False, check.number, "", (c,))
        commands = [_encode([p], {}).command(DECIDE) for p in probes.values()]
        replies = await self._call(commands, _SCRUB)
        seen: dict[str, tuple[int, int]] = {}
        for key, reply in zip(probes, replies, strict=True):
            _, retry_ms, count = _probe(reply, self.where)
            seen[key] = (count, retry_ms)
        return [
            {i: _outside(c, *seen[c.key]) for i, c in enumerate(check.checks) if c.shared}
            for check in checks
        ]

    # --- list views -----------------------------------------------------------------

    async def _learn_views(self, checks: Iterable[StoreCheck], use: _Use) -> None:
        """Read the live version of every list these checks look up and the store has no
        view of yet (from the lists' directory entries), over the decision connections
        (``use``'s deadline, as the decision's)."""
        wanted = self._missing(checks)
        if not wanted:
            return
        commands = []
        for list_id, namespace in wanted.items():
            key = directory_key(namespace, list_id).encode()
            commands.append(
                _Command(None, key_slot(key), _resp([b"HMGET", key, b"version", b"bits"]))
            )
        replies = await self._call(commands, dataclasses.replace(use, records=False))
        for (list_id, namespace), reply in zip(wanted.items(), replies, strict=True):
            version, bits = _raise_error(reply)
            if version is None:
                self._views[list_id] = ""
                continue
            # A value callgate did not write there (by hand, a bad migration) is a fault
            # of the store, whose decisions get the fail mode: read as a number, it raised
            # past it on every decision that looks the list up.
            try:
                view = list_version(
                    stored_number("version", version, 0, 10**18),
                    stored_number("bits", bits, MIN_BITS, MAX_BITS),
                )
            except ValueError as exc:
                raise unreadable_list(self.where, directory_key(namespace, list_id), exc) from None
            self._views[list_id] = view

    def _missing(self, checks: Iterable[StoreCheck]) -> dict[str, str]:
        """The lists these checks look up that have no view yet → their namespace."""
        wanted: dict[str, str] = {}
        # The checks tuples (by identity: held by the checks) whose lists all have a view:
        # a scrub's batch of thousands shares a handful, each looked at once.
        seen: set[int] = set()
        for check in checks:
            if id(check.checks) in seen:
                continue
            complete = True
            for c in check.checks:
                if c.kind in _MEMBERSHIP and c.key not in self._views:
                    wanted[c.key] = namespace_of(check.prefix)
                    complete = False
            if complete:
                seen.add(id(check.checks))
        return wanted

    # --- admin ------------------------------------------------------------------------

    async def run_scripts(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Admin: EVALSHA ``script`` once per (keys, args), routed by slot, pipelined;
        returns each reply (an error reply raises ``StoreError``)."""
        commands = [_command(script, keys, args) for keys, args in calls]
        return await self._admin_call(commands)

    async def send(self, commands: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Admin: commands given as (the key that routes it, its words), pre-encoded and
        pipelined (one request per node); returns each reply (an error raises)."""
        packed = [
            _Command(None, key_slot(key.encode()), _resp([_word(w) for w in words]))
            for key, words in commands
        ]
        return await self._admin_call(packed)

    async def send_packed(
        self, commands: Sequence[tuple[str, bytes]], script: Script | None = None
    ) -> list[Any]:
        """Admin: commands already in RESP, each with the key that routes it; pipelined
        (one request per node); returns each reply (an error raises). With ``script``,
        the commands are EVALSHAs of it (NOSCRIPT loads it and sends them again)."""
        return await self._admin_call(
            [_Command(script, key_slot(key.encode()), packed) for key, packed in commands]
        )

    async def _admin_call(self, commands: list[_Command]) -> list[Any]:
        if self._durable:
            use = _Use(admin=True, tryagain_s=DURABLE_TRYAGAIN_S, durable=True)
        else:
            use = _Use(admin=True)
        try:
            replies = await self._call(commands, use)
            refused = next((r for r in replies if isinstance(r, TryAgainError)), None)
            if use.durable and refused is not None:
                raise StoreUnavailable(
                    f"{translate_error(refused, self.where)} for {DURABLE_TRYAGAIN_S:g} s "
                    "(a slot being resharded?): not all written, send it again"
                ) from refused
            return [_raise_error(reply) for reply in replies]
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    @asynccontextmanager
    async def durable(self, what: str) -> AsyncIterator[Store]:
        """A view of this store for writes that must survive a failover (``what``: "the
        opt-out", for messages). Its admin requests go over connections it keeps (one per
        node written to); on leaving, ``WAIT`` on each until ``wait_replicas`` replicas
        hold what that node took (bounded by ``wait_timeout``), else ``NotReplicated``:
        the write is in force on the master(s) but not acknowledged, and may be sent again
        (these writes are idempotent).

        ``WAIT`` covers every write a node replicated up to the view's last write there
        (Redis counts a connection's last replicated write), so writes the view made
        through ``admin_client`` (list directory entries) are covered as long as a request
        of the view reaches that node after them, as the list operations do.

        In a cluster, a command of the view that meets a slot being resharded (TRYAGAIN) is
        sent again for up to ``DURABLE_TRYAGAIN_S`` (MOVED and ASK followed meanwhile),
        then fails as Redis unavailable; cancelling the caller stops it at once."""
        replicas = self.settings.wait_replicas
        _ = self.admin_client  # made before the copy: the view shares it, close() closes it
        view = copy.copy(self)
        view._durable = True
        if replicas == 0:
            yield view
            return
        pinned = view._pinned = _Pinned()
        try:
            yield view
            held = await self._wait(pinned, replicas)
        finally:
            await pinned.release_all()
        if held < replicas:
            masters = "master" if len(pinned.locks) <= 1 else "masters"
            raise NotReplicated(
                f"{what} is in force on the Redis {masters} but only {held} of {replicas} "
                f"replica(s) confirmed it within {self.settings.wait_timeout_s:g} s, so it "
                "could be lost in a failover: not acknowledged, send it again"
            )

    async def _wait(self, pinned: _Pinned, replicas: int) -> int:
        """``WAIT replicas timeout`` on each kept connection; the fewest replicas seen."""
        timeout_s = self.settings.wait_timeout_s
        request = _resp([b"WAIT", b"%d" % replicas, b"%d" % int(timeout_s * 1000)])

        async def wait(connection: Any) -> int:
            await connection.send_packed_command(request)
            return int(await connection.read_response(timeout=timeout_s + _ADMIN_TIMEOUT_S))

        connections = [connection for connection, _ in pinned.connections.values()]
        try:
            held = await asyncio.gather(*(wait(c) for c in connections))
        except (RedisError, OSError) as exc:
            raise translate_error(exc, self.where) from exc
        return min(held, default=replicas)

    # --- transport --------------------------------------------------------------------

    async def _call(
        self, commands: list[_Command], use: _Use, void: _Undo | None = None
    ) -> list[_Reply]:
        """Send commands (one server: one request; cluster: one per node, at once) and
        return each reply; NOSCRIPT, MOVED, ASK and TRYAGAIN replies (the command did not
        run) are followed by sending those commands again: up to ``_REDIRECTS`` rounds in
        a row of redirections, and TRYAGAIN with backoff for ``use.tryagain_s``; past
        that, those replies are returned as they are. ``void`` (one recorded decision):
        how to undo it if its reply is not waited for (see ``_live``)."""
        replies: list[_Reply] = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, ClusterNode] = {}
        give_up = (time.monotonic() if use.since is None else use.since) + use.tryagain_s
        backoff_s = TRYAGAIN_RETRY_S
        hops = 0
        while True:
            if not self.cluster:
                sent = await self._send_single([commands[i].packed for i in pending], use, void)
                routed: list[tuple[Any, list[int], list[_Reply]]] = [(None, pending, sent)]
            else:
                routed = await self._send_cluster(commands, pending, asking, use, void)
            retry: list[int] = []
            asking = {}
            loads: dict[Any, set[Script]] = {}
            for node, indexes, sent in routed:
                for index, reply in zip(indexes, sent, strict=True):
                    replies[index] = reply
                    script = commands[index].script
                    if isinstance(reply, NoScriptError) and script is not None:
                        loads.setdefault(node, set()).add(script)
                        retry.append(index)
                    elif isinstance(reply, MovedError) and self.cluster:
                        self.redirects["moved"] += 1
                        await self._cluster_for(use.admin).nodes_manager.move_slot(reply)
                        retry.append(index)
                    elif isinstance(reply, AskError) and self.cluster:
                        self.redirects["ask"] += 1
                        asking[index] = self._ask_node(reply.host, int(reply.port), use.admin)
                        retry.append(index)
                    elif isinstance(reply, TryAgainError):
                        self.redirects["tryagain"] += 1
                        retry.append(index)
            if not retry:
                return replies
            if any(isinstance(replies[i], TryAgainError) for i in retry):
                if time.monotonic() + backoff_s > give_up:
                    return replies
                if use.durable:
                    cancel_point()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, TRYAGAIN_RETRY_MAX_S)
                hops = 0
            else:
                hops += 1
                if hops >= _REDIRECTS:
                    return replies
            for node, scripts in loads.items():
                await self._load_scripts(node, scripts, use)
            pending = retry

    def _cluster_for(self, admin: bool) -> RedisCluster:
        cluster = self.admin_client if admin else self._cluster
        assert isinstance(cluster, RedisCluster)
        return cluster

    async def _send_single(
        self, packed: list[bytes], use: _Use, void: _Undo | None = None
    ) -> list[_Reply]:
        request = b"".join(packed)
        if use.admin:
            return await self._admin_exchange(None, request, len(packed))
        return await self._live(self._lane, request, len(packed), use, void)

    async def _send_cluster(
        self,
        commands: list[_Command],
        pending: list[int],
        asking: dict[int, ClusterNode],
        use: _Use,
        void: _Undo | None = None,
    ) -> list[tuple[Any, list[int], list[_Reply]]]:
        cluster = self._cluster_for(use.admin)
        await self._refresh_topology(cluster, use.admin)
        by_node: dict[str, tuple[ClusterNode, list[int], bool]] = {}
        for index in pending:
            ask = index in asking
            node = (
                asking[index]
                if ask
                else cluster.nodes_manager.get_node_from_slot(commands[index].slot)
            )
            group_key = node.name + ("/ask" if ask else "")
            by_node.setdefault(group_key, (node, [], ask))[1].append(index)

        async def one(node: ClusterNode, indexes: list[int], ask: bool) -> list[_Reply]:
            request = b"".join((_ASKING if ask else b"") + commands[i].packed for i in indexes)
            expected = len(indexes) * (2 if ask else 1)
            if use.admin:
                replies = await self._admin_exchange(node, request, expected)
            else:
                undo = _asking(void) if ask and void is not None else void
                replies = await self._live(self._node_lane(node), request, expected, use, undo)
                self.link.answered(node.name)
            return replies[1::2] if ask else replies

        results = await asyncio.gather(
            *(one(node, indexes, ask) for node, indexes, ask in by_node.values())
        )
        return [
            (node, indexes, replies)
            for (node, indexes, _), replies in zip(by_node.values(), results, strict=True)
        ]

    def _node_lane(self, node: ClusterNode) -> ChannelLane:
        """The decision channels of a cluster master (a lost one re-reads the slot map)."""
        lane = self._node_lanes.get(node.name)
        if lane is None:
            lane = self._node_lanes[node.name] = ChannelLane(
                _NodeOpener(node),
                self.settings.pool_size,
                self.settings.pool_wait_s,
                node.name,
                functools.partial(self._stale_topology.__setitem__, False, True),
                self.settings.busy_poll_s,
            )
        return lane

    def _drop_lanes(self, masters: set[str]) -> None:
        """Close, in the background, the channels of nodes that are no longer masters."""
        for name in [n for n in self._node_lanes if n not in masters]:
            lane = self._node_lanes.pop(name)
            self._let_finish(asyncio.create_task(lane.close(_CLOSE_GRACE_S)))

    async def _live(
        self,
        lane: ChannelLane,
        request: bytes,
        replies: int,
        use: _Use,
        void: _Undo | None = None,
    ) -> list[_Reply]:
        """Send ``request`` on a decision channel of ``lane`` and wait for its ``replies``
        replies: at most ``use.deadline_s`` from the send (see the module's guarantees).
        The channel reads the replies itself (channel.py) and goes back to its lane once
        they are read, whether anyone still waits for them or not. A broken connection is
        sent on again (once, on a fresh connection) only when the call records nothing.
        ``void`` (a recorded decision): written behind the request on its connection if
        its reply is not waited for (the deadline passed, or the caller was cancelled),
        sent on a fresh connection if the connection failed."""
        # A decision's read is bounded as the pool's socket timeout (connect.py); a
        # scrub's by the admin timeout.
        if use.deadline_s is None:
            read_timeout_s = _ADMIN_TIMEOUT_S
        else:
            read_timeout_s = max(self.settings.deadline_s, REPLY_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            retry = not use.records and attempt == 0
            channel = await self._checkout(lane)
            reply: asyncio.Future[list[_Reply]] = loop.create_future()
            behind = _Behind()
            try:
                channel.exchange(request, replies, reply, behind, read_timeout_s)
            except RedisConnectionError:  # closed before the write: nothing was sent
                channel.close()
                lane.failed()
                if retry:
                    continue
                raise
            clock = _Deadline(loop, reply, channel.reply_waiting, use.deadline_s)
            try:
                return await reply
            except _Expired:
                deadline_ms = (use.deadline_s or 0) * 1000
                raise StoreTimeout(
                    f"Redis at {lane.name or self.where} did not answer within {deadline_ms:g} ms"
                ) from None
            except RedisConnectionError:
                lane.failed()
                if void is not None:
                    self._void_later(void)
                if not retry:
                    raise
            finally:
                clock.stop()
                if not _delivered(reply):
                    # Nobody waits for it any more (the deadline passed, or the caller
                    # was cancelled): the channel reads it, then the void right behind it.
                    if not reply.done():
                        reply.cancel()
                    if void is not None:
                        self._void_behind(channel, behind, void)
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _checkout(self, lane: ChannelLane) -> Channel:
        """A channel of ``lane`` (waits at most ``pool_wait`` for one)."""
        where = lane.name or self.where
        try:
            return await lane.checkout()
        except Busy:
            raise _busy(where, self.settings) from None
        except (RedisError, OSError) as exc:
            lane.failed()
            raise translate_error(exc, where) from exc

    # --- undoing a recorded decision nobody waited for ------------------------------------

    def _void_behind(self, channel: Channel, behind: _Behind, void: _Undo) -> None:
        """Write the void right behind its decision on the decision's channel (which reads
        its reply); on a fresh connection if this one cannot take it or has read the
        decision's reply already."""
        command = void.command().packed
        behind.replies = 2 if void.asking else 1
        behind.settle = functools.partial(self._settle_void, void)
        if not channel.write_behind(behind, _ASKING + command if void.asking else command):
            behind.replies, behind.settle = 0, None
            self._void_later(void)

    def _settle_void(self, void: _Undo, reply: _Reply | None) -> None:
        """The void's reply (None: its connection failed first): counted and logged; a void
        that did not run is sent again on a fresh connection."""
        if reply is None or isinstance(reply, Exception):
            self._void_later(void)
            return
        self._voided(void, reply)

    def _voided(self, void: _Undo, reply: _Reply) -> None:
        """Count and log the void's reply ("found,decided,removed"). One callgate cannot
        read (a proxy or a module in between, a Redis that is not one) is a fault of the
        store, counted and logged as a void that failed: whether it undid anything is not
        known. Never raised: this runs in the background (a channel's reply callback, a
        task nobody waits for), where it would end as a traceback and an unknown outcome."""
        try:
            found, decided, removed = _void_numbers(reply)
        except ValueError:
            self.voids["failed"] += 1
            log.error(
                "a recorded decision to undo (%s) got a reply callgate cannot read from "
                "Redis at %s (%s for %s): if it ran, its attempt may stay counted and its "
                "audit entry may stay",
                void.why,
                self.where,
                repr(reply)[:_MAX_ERROR_TEXT],
                void.key or "its audit stream",
            )
            return
        if found == 0:
            self.voids["not_run"] += 1
            log.info("a recorded decision to undo (%s) had not run: nothing to undo", void.why)
            return
        self.voids["undone"] += 1
        log.warning(
            "a recorded decision to undo (%s) had run in Redis (%s); undone: "
            "its audit entry removed, %d attempt(s) uncounted",
            void.why,
            "allowed" if decided == 0 else "refused" if decided > 0 else "no audit entry",
            removed,
        )

    def undo(self, receipt: object) -> None:
        """Undo a recorded decision whose call never went out (its channel left before the
        decision reached it): in the background, as a late decision's void (``voids``)."""
        if isinstance(receipt, _Undo):
            self._void_later(dataclasses.replace(receipt, why="its call never went out"))

    def _void_later(self, void: _Undo) -> None:
        """Send the void on a fresh connection, in the background (``close()`` bounds it)."""
        self._let_finish(asyncio.create_task(self._send_void(void), name="callgate-void"))

    async def _send_void(self, void: _Undo) -> None:
        command = void.command()
        delay = VOID_RETRY_S
        give_up = time.monotonic() + VOID_PATIENCE_S
        error: BaseException | None = None
        for _ in range(int(VOID_PATIENCE_S / VOID_RETRY_S) + 1):
            try:
                (reply,) = await self._call([command], _VOID_USE)
                self._voided(void, _raise_error(reply))
                return
            except (RedisError, OSError, StoreError, TimeoutError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                error = exc
            if time.monotonic() + delay > give_up:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, VOID_RETRY_MAX_S)
        self.voids["failed"] += 1
        log.error(
            "a recorded decision to undo (%s) could not be undone within %g s "
            "(%s): if it ran, its attempt stays counted and its audit entry stays",
            void.why,
            VOID_PATIENCE_S,
            error,
        )

    def _let_finish(self, work: asyncio.Task[Any]) -> None:
        """Let background work nobody waits for end by itself (``close()`` bounds it)."""
        self._exchanges.add(work)
        work.add_done_callback(_forget(self._exchanges))

    async def _admin_exchange(
        self, node: ClusterNode | None, request: bytes, replies: int
    ) -> list[_Reply]:
        """An admin request on a connection of the admin pool (or of ``node``'s), or, in a
        durable view, on the connection it keeps for that node."""
        pinned = self._pinned
        if pinned is None:
            connection, release = await self._admin_connection(node)
            try:
                return await _exchange(connection, request, replies)
            except BaseException:
                await connection.disconnect()  # replies may be left unread: never reuse it
                if node is not None:
                    self._stale_topology[True] = True
                raise
            finally:
                await release(connection)
        name = "" if node is None else node.name
        async with pinned.lock(name):
            held = pinned.connections.get(name)
            if held is None:
                held = pinned.connections[name] = await self._admin_connection(node)
            connection, release = held
            try:
                return await _exchange(connection, request, replies)
            except BaseException:
                del pinned.connections[name]
                await connection.disconnect()
                await release(connection)
                raise

    async def _admin_connection(self, node: ClusterNode | None) -> tuple[Any, _Release]:
        """An admin connection and how to give it back."""
        if node is not None:

            async def release_to_node(connection: Any) -> None:
                node.release(connection)

            return node.acquire_connection(), release_to_node
        pool = self.admin_client.connection_pool
        return await pool.get_connection(), pool.release

    def _ask_node(self, host: str, port: int, admin: bool) -> ClusterNode:
        cluster = self._cluster_for(admin)
        node = cluster.get_node(host=host, port=port)
        if node is None:
            name = f"{host}:{port}/{'admin' if admin else 'decide'}"
            node = self._ask_nodes.get(name)
            if node is None:
                node = self._ask_nodes[name] = ClusterNode(
                    host, port, **cluster.nodes_manager.connection_kwargs
                )
        return node

    async def _refresh_topology(self, cluster: RedisCluster, admin: bool) -> None:
        """Read the cluster's slot map again after a lost connection (a failover), at most
        every ``_REINIT_EVERY_S``; masters gone from it count as failovers."""
        now = time.monotonic()
        if self._stale_topology[admin] and now - self._reinit_at[admin] >= _REINIT_EVERY_S:
            self._reinit_at[admin] = now
            self._stale_topology[admin] = False
            before = {node.name for node in cluster.get_primaries()}
            await cluster.nodes_manager.initialize()
            if not admin:
                after = {node.name for node in cluster.get_primaries()}
                self.link.masters_replaced(before - after, after)
                self._drop_lanes(after)
        else:
            await cluster.initialize()

    async def _load_scripts(self, node: Any, scripts: set[Script], use: _Use) -> None:
        """SCRIPT LOAD on the server (``node`` None) or cluster node that answered NOSCRIPT,
        over the connections the call itself used (a decision's: its lane, bounded)."""
        if use.admin:
            for script in scripts:
                if node is None:
                    await self.admin_client.script_load(script.text)
                else:
                    await node.execute_command("SCRIPT", "LOAD", script.text)
            return
        lane = self._lane if node is None else self._node_lane(node)
        request = b"".join(_resp([b"SCRIPT", b"LOAD", s.text.encode()]) for s in scripts)
        for reply in await self._live(lane, request, len(scripts), _Use(deadline_s=use.deadline_s)):
            _raise_error(reply)


_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_MEMBERSHIP = frozenset({CheckKind.ALLOW_LIST, CheckKind.BLOCK_LIST, CheckKind.PRESENCE_REQUIRED})


async def _exchange(connection: Any, request: bytes, replies: int) -> list[_Reply]:
    """Write ``request`` and read ``replies`` replies; an error reply is returned (the
    connection stays in step), any other failure raises."""
    await connection.send_packed_command(request)
    out: list[_Reply] = []
    for _ in range(replies):
        try:
            out.append(await connection.read_response())
        except ResponseError as exc:
            out.append(exc)
    return out


def _forget(tasks: set[asyncio.Task[Any]]) -> Any:
    """A done-callback: drop the task from ``tasks`` and consume its outcome (a void's
    failure is counted and logged where it happens; nobody reads it here)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _probe(reply: _Reply, where: str) -> tuple[int, int, int]:
    """(decided, retry_ms, seen) of a one-check decision (a shared check)."""
    replied = _raise_error(reply)
    with _readable(where, DECIDE):
        (item,) = replied
        decided, retry_ms, seen = _numbers(item, 1)
    return decided, retry_ms, seen


@contextlib.contextmanager
def _readable(where: str, script: Script) -> Iterator[None]:
    """Reading ``script``'s reply: one that is not of the shape the script returns (a
    script of another callgate version under its name, a proxy or a module in between) is
    a fault of the store, ``StoreError`` (the decision gets the fail mode, never an answer
    read out of it), not a bug of its caller."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:_MAX_ERROR_TEXT] or type(exc).__name__
        raise StoreError(
            f"Redis at {where} answered {script.name} with a reply callgate cannot read "
            f"({detail}): is a script of another callgate version loaded there?"
        ) from exc


def _numbers(item: Any, checks: int) -> list[int]:
    """A decision's reply string, "decided,retry_ms,r1,…", as its numbers: ``ValueError``
    unless it holds one number per check of the decision (``checks``) and ``decided`` names
    one of them or none (0)."""
    if not isinstance(item, bytes):
        raise ValueError(f"{type(item).__name__} for a decision, not a string")
    numbers = [int(n) for n in item.split(b",")]
    if len(numbers) != 2 + checks or not 0 <= numbers[0] <= checks:
        raise ValueError(f"{item[:60]!r} for a decision of {checks} check(s)")
    return numbers


def unreadable_list(
    where: str, key: str, error: ValueError, field: str = "", what: str = "version"
) -> StoreError:
    """A list's version (or ``what`` else of the list), as the directory entry or a
    group's meta at ``key`` holds it (``field``: the meta's field), is not what callgate
    writes there (``error`` says what): the list cannot be read until it is written
    again."""
    held = f"{key} field {field!r}" if field else key
    return StoreError(
        f"Redis at {where}: the list {what} at {held} is unreadable ({error}; not "
        "written by callgate: by hand, another tool, a bad migration?): import the list "
        "again whole (`callgate list import NAME FILE --replace`) to write it anew"
    )


def _void_numbers(reply: _Reply) -> tuple[int, int, int]:
    """void.lua's reply, "found,decided,removed", as its numbers: ``ValueError`` unless it
    is that (found -1, 0 or 1; removed at least 0)."""
    if not isinstance(reply, bytes):
        raise ValueError(f"{type(reply).__name__} for a void, not a string")
    numbers = [int(n) for n in reply.split(b",")]
    if len(numbers) != 3 or not -1 <= numbers[0] <= 1 or numbers[2] < 0:
        raise ValueError(f"{reply[:60]!r} for a void")
    found, decided, removed = numbers
    return found, decided, removed


def _outside(check: Check, seen: int, retry_ms: int) -> tuple[int, int, int]:
    """A shared check read by its own call, as decide.lua's X check (seen, limit, retry_ms):
    an attempt log (L) refuses at its limit, call counts (Q) when they see a wait."""
    limit = 1 if check.kind is CheckKind.ABANDON_RATE else check.params[0]
    return seen, limit, retry_ms


def _raise_error(reply: _Reply) -> Any:
    """The reply, or raise it if it is an error reply (redis-py parses most as a
    ``ResponseError``, but LOADING as a ``BusyLoadingError``, a ``ConnectionError``)."""
    if isinstance(reply, Exception):
        raise reply
    return reply


@dataclass(frozen=True, slots=True)
class _Command:
    """One pre-encoded command (an EVALSHA of ``script``, or None) and its slot."""

    script: Script | None
    slot: int
    packed: bytes


# Store.keying: the fingerprint held, after writing ARGV[1] if none is and ARGV[2] is 1.
_KEYING = """
local held = redis.call("GET", KEYS[1])
if not held and ARGV[2] == "1" then
  redis.call("SET", KEYS[1], ARGV[1])
  return ARGV[1]
end
return held
"""


def _word(word: Any) -> bytes:
    if isinstance(word, bytes):
        return word
    if isinstance(word, int):
        return b"%d" % word
    return str(word).encode()


def _command(script: Script, keys: Sequence[str], args: Sequence[Any]) -> _Command:
    parts = [b"EVALSHA", script.sha, b"%d" % len(keys)]
    parts += [k.encode() for k in keys]
    parts += [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return _Command(script, key_slot(parts[3]) if keys else 0, _resp(parts))


def _resp(parts: Sequence[bytes]) -> bytes:
    """One command in the Redis protocol."""
    return b"*%d\r\n" % len(parts) + b"".join([b"$%d\r\n%b\r\n" % (len(p), p) for p in parts])


def _bulk(part: bytes) -> bytes:
    """One bulk string in the Redis protocol."""
    return b"$%d\r\n%b\r\n" % (len(part), part)


def _batches(indexes: list[int], checks: Sequence[StoreCheck], cluster: bool) -> list[list[int]]:
    """Decisions per EVALSHA: at most SCRUB_BATCH, and one slot group each in a cluster."""
    groups: dict[str, list[int]] = {}
    for index in indexes:
        groups.setdefault(checks[index].prefix if cluster else "", []).append(index)
    return [
        part[start : start + SCRUB_BATCH]
        for part in groups.values()
        for start in range(0, len(part), SCRUB_BATCH)
    ]


@dataclass
class _Encoded:
    """The KEYS and ARGV of decide.lua for some decisions, and how to read the reply."""

    keys: list[str]
    args: list[bytes]
    layout: list[tuple[StoreCheck, _Shape]]  # per decision: its check and its shape
    # per decision: (its audit stream, its audit head or b"", the attempt logs it counts in)
    undo: list[tuple[str, bytes, list[str]]]
    framed: list[bytes]  # the keys, then the args, as RESP bulk strings (``_resp``'s)

    def command(self, script: Script) -> _Command:
        """``_command(script, keys, args)``, from the parts framed as they were added."""
        count = b"%d" % len(self.keys)
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            3 + len(self.keys) + len(self.args),
            len(script.sha),
            script.sha,
            len(count),
            count,
        )
        slot = key_slot(self.keys[0].encode()) if self.keys else 0
        return _Command(script, slot, head + b"".join(self.framed))

    def void(self, index: int) -> _Command:
        """The void.lua call that undoes decision ``index`` (EVAL: a void is rare, and
        never gets NOSCRIPT on a server that restarted meanwhile)."""
        check = self.layout[index][0]
        stream, head, logs = self.undo[index]
        parts = [b"EVAL", VOID.text.encode(), b"%d" % (1 + len(logs)), stream.encode()]
        parts += [k.encode() for k in logs]
        parts += [head, b"%d" % check.now_ms, b"%d" % VOID_SEARCH]
        return _Command(None, key_slot(stream.encode()), _resp(parts))

    def receipt(self, index: int) -> _Undo:
        """How to undo decision ``index`` (recorded)."""
        return _Undo(functools.partial(self.void, index), key=self.undo[index][0])

    def results(
        self, reply: list[Any], views: dict[str, str], where: str
    ) -> list[StoreResult | None]:
        """Each decision's result, or None when it was STALE (``views`` updated; a meta's
        list version callgate cannot read is a ``StoreError`` of Redis at ``where``)."""
        out: list[StoreResult | None] = []
        # An evaluation's result is its shape's reading of its reply: read once per
        # distinct pair (a scrub's batch of thousands has a handful).
        read: dict[tuple[int, bytes], StoreResult] = {}
        for d, ((check, shape), item) in enumerate(zip(self.layout, reply, strict=True)):
            if isinstance(item, list):  # STALE: what the meta holds
                for name, value in zip(shape.fields, item, strict=True):
                    if name.endswith(":r"):
                        continue
                    try:
                        views[name] = (
                            "" if value is None else list_version(*read_list_version(value))
                        )
                    except ValueError as exc:  # see ``_learn_views``
                        raise unreadable_list(where, f"{check.prefix}meta", exc, name) from None
                out.append(None)
                continue
            if not check.record:
                known = read.get((id(shape), item))
                if known is not None:
                    out.append(known)
                    continue
            numbers = _numbers(item, len(check.checks))
            results = tuple(numbers[2:])
            # The versions the script confirmed (its meta matched what was sent), for the
            # checks that read them (-1: a lookup nothing needed).
            versions = shape.versions
            if results and min(results) < 0:
                versions = tuple(
                    v if seen >= 0 else "" for v, seen in zip(versions, results, strict=True)
                )
            receipt = self.receipt(d) if check.record else None
            result = StoreResult(numbers[0], numbers[1], results, versions, receipt)
            if not check.record:  # no receipt: the same for every (shape, reply)
                read[id(shape), item] = result
            out.append(result)
        return out


def _encode(
    decisions: Sequence[StoreCheck],
    views: dict[str, str],
    outside: Sequence[dict[int, tuple[int, int, int]]] = (),
    verdicts: bool = False,
) -> _Encoded:
    """KEYS and ARGV of decide.lua (its header is the contract). ``outside[d][i]``: check
    i of decision d is a shared check already read in its own slot (an X check:
    seen, limit, retry_ms). ``verdicts``: the decisions not recorded are run only as far
    as their verdict needs (record 2: no check after the first that BLOCKs)."""
    encoder = _Encoder(len(decisions), verdicts)
    for d, check in enumerate(decisions):
        encoder.add(check, views, outside[d] if outside else {})
    framed = [*encoder.framed_keys, *encoder.framed]
    return _Encoded(encoder.keys, encoder.args, encoder.layout, encoder.undo, framed)


@functools.lru_cache(maxsize=1024)
def _summary_json(
    checks: tuple[Check, ...], versions: tuple[str, ...], shadow: tuple[str, ...], hours: str
) -> str:
    """``"shadow":[…],"checks":[…],"hours":[…]}``: the end of an audit entry's head (the
    same for every decision of one plan shape, so made once); ``hours``: the calling
    hours' JSON (``evidence.hours_summary``; "": none)."""
    body = {"shadow": shadow, "checks": check_summary(checks, versions)}
    text = _compact_json(body)[1:]
    return f'{text[:-1]},"hours":{hours}}}' if hours else text


# json.dumps with these options builds a new encoder on every call (2 µs of a decision).
_compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# A JSON string, as ``_compact_json`` writes one (C's encoder when there is one).
_json_text: Callable[[str], str] = json.encoder.encode_basestring


# The undo entry of every decision not recorded (a scrub's): nothing to void.
_NOT_RECORDED: tuple[str, bytes, list[str]] = ("", b"", [])

# RESP bulk string heads by length (``_Encoder.add``'s framing in parts: a bulk string is
# its head, its bytes, then _CRLF), and a bulk string's end with the next one's head.
_HEADS_MAX = 256
_HEADS = tuple(b"$%d\r\n" % size for size in range(_HEADS_MAX))
_NEXT = tuple(b"\r\n$%d\r\n" % size for size in range(_HEADS_MAX))
_CRLF = b"\r\n"

# Each check's kind as decide.lua reads it (a character code; lowercase: shadow).
_CODES = {kind: (ord(kind.value), ord(kind.value.lower())) for kind in CheckKind}
_X = (ord("X"), ord("x"))

# How a decision's key is named (``_Shape.keys``): the text as is (a shared key in a slot
# of its own), after the number's slot-group prefix, with the number's token after it, or
# with the number's bucket of the list version after it.
_WHOLE, _GROUP, _TOKEN, _BUCKET = range(4)
# Where the decision's own numbers are in its head (before ``_packed``: in
# ``_Shape.values``, the instant and record stay first).
_HEAD_NOW, _HEAD_RECORD, _HEAD_META, _HEAD_AUDIT, _HEAD_MIN_ID, _HEAD_MAX_LEN = 0, 1, 2, 6, 7, 8


@dataclass(frozen=True, slots=True)
class _Shape:
    """How every decision of one plan shape is encoded (its checks, the list versions it
    reads, its X checks, whether it carries evidence): all of decide.lua's arguments for
    it but the number's keys and encodings, the instant, the X checks' readings and the
    audit entry's own fields, which ``_Encoder.add`` puts in. Made once per shape
    (``_shape``): a gate's decisions and a scrub's leads share a few."""

    packing: bytes  # the struct format of the decision's numbers (the head's, then the checks')
    # ``packing`` with each run of the numbers that are the same in every decision of the
    # shape as its bytes (``_packed``): ``packer.pack(*values)`` with the decision's own
    # numbers put in ``values`` is ``struct.pack(packing, ...)`` of all of them.
    packer: struct.Struct
    # ``packing`` as a RESP bulk string, then the head of the packed numbers' (their size is
    # the shape's: ``packer.size``)
    framed_head: bytes
    # The decision's numbers as ``packer`` takes them: its own (the instant, record, key
    # indexes, X readings, evidence bounds: 0 here) each in its place, the runs of the
    # others between them packed already.
    values: tuple[float | bytes, ...]
    # (index in ``values``, how the key is named, its text, list bits, an attempt log?):
    # the checks' keys in order, then the meta's and the audit stream's (if read, written)
    keys: tuple[tuple[int, int, str, int, bool], ...]
    reads: tuple[tuple[int, int], ...]  # (check index, index in ``values``) of X checks
    bounds: int  # with evidence: the index in ``values`` of its min_id_ms (max_len next)
    fields: tuple[str, ...]  # the meta fields read (their expected values follow)
    field_args: tuple[bytes, ...]  # the fields' names, then their expected values
    framed_tail: bytes  # the CRLF ending the token's bulk string, then ``field_args`` framed
    versions: tuple[str, ...]  # per check: the list version it reads ("" if none)
    tail: str  # the end of the audit head (``_summary_json``; "" without evidence)


@functools.lru_cache(maxsize=1024)
def _shape(
    checks: tuple[Check, ...],
    seen_views: tuple[str, ...],
    reads: tuple[int, ...],
    shadow: tuple[str, ...] | None,
    hours: str = "",
) -> _Shape:
    """The shape of decisions with ``checks``; ``seen_views``: the list view (version/bits,
    "" for none) of each membership check in order; ``reads``: the indexes of the checks
    read by a call of their own (X checks); ``shadow``: the evidence's shadow reasons
    (None: no evidence); ``hours``: the evidence's calling hours (``hours_summary`` of
    ``checks``: a check's hours are not part of its equality, so of this cache's key)."""
    fields: dict[str, str] = {}  # meta field → expected value, in order
    fmt: list[str] = []
    values: list[float] = []
    keys: list[tuple[int, int, str, int, bool]] = []
    found: list[tuple[int, int]] = []
    versions: list[str] = []
    views = iter(seen_views)

    def key(how: int, text: str, bits: int = 0, log: bool = False) -> int:
        keys.append((len(values) + 1, how, text, bits, log))
        return 0

    for i, c in enumerate(checks):
        kind = c.kind
        code = _CODES[kind][c.shadow]
        mask = sum(1 << (index - 1) for index in c.exempt_by)
        version = ""
        if i in reads:  # shared state read by its own call: (seen, limit, retry_ms)
            found.append((i, len(values) + 1))
            fmt.append("Bddd")
            values += (_X[c.shadow], 0, 0, 0)
            if kind in _MEMBERSHIP:
                next(views)
        elif kind in _MEMBERSHIP:
            view = next(views)
            fields[c.key] = view
            at = 0
            if view:
                version, bits = view.split("/")
                at = key(_BUCKET, f"l:{c.key}:{version}:", int(bits))
            fmt.append("BH" if kind is CheckKind.ALLOW_LIST else "BHd")
            values += (code, at) if kind is CheckKind.ALLOW_LIST else (code, at, mask)
        elif kind is CheckKind.CONSENT_HELD:
            fmt.append("BH")
            values += (code, key(_GROUP, f"c:{c.key}"))
        elif kind is CheckKind.CONSENT_REQUIRED:
            fmt.append("BHd")
            values += (code, key(_GROUP, f"c:{c.key}"), mask)
        elif kind is CheckKind.COOLOFF:
            fmt.append("BHd")
            values += (code, key(_TOKEN, c.key), c.params[0])
        elif kind is CheckKind.FRESHNESS:
            fields.setdefault(f"{c.key}:r", "*")
            j = list(fields).index(f"{c.key}:r") + 1
            fmt.append("BBddd")
            values += (code, j, c.params[0], c.params[1], mask)
        elif kind is CheckKind.WINDOW:
            fmt.append("Bdd")
            values += (code, c.params[0], mask)
        elif kind is CheckKind.REASSIGNED:
            fmt.append("BHB")
            values += (code, key(_GROUP, f"c:{c.key}"), c.params[0])
        elif kind is CheckKind.ABANDON_RATE:
            fmt.append("BHddd")
            values += (code, key(_WHOLE, c.key), *c.params)
        else:  # an attempt log
            at = key(_WHOLE, c.key, log=True) if c.shared else key(_TOKEN, c.key, log=True)
            fmt.append("BHdd")
            values += (code, at, c.params[0], c.params[1])
        versions.append(version)
    field_args = (*(f.encode() for f in fields), *(e.encode() for e in fields.values()))
    tail = "" if shadow is None else _summary_json(checks, tuple(versions), shadow, hours)
    # The head (decide.lua's header): now_ms, record and the evidence bounds are the
    # decision's own (``_Encoder.add``), the meta's and the audit stream's key indexes
    # follow the checks' keys.
    head: list[float] = [0, 0, 0, len(fields), len(checks), 0 if shadow is None else 1]
    if shadow is not None:
        head += (0, 0, 0)
    shift = len(head)
    keys = [(at + shift, how, text, bits, log) for at, how, text, bits, log in keys]
    if fields:
        keys.append((_HEAD_META, _GROUP, "meta", 0, False))
    if shadow is not None:
        keys.append((_HEAD_AUDIT, _GROUP, "audit", 0, False))
    packing = (">dBHBBB" if shadow is None else ">dBHBBBHdd") + "".join(fmt)
    reads_at = [(i, at + shift) for i, at in found]
    own = {_HEAD_NOW, _HEAD_RECORD, *(at for at, *_ in keys)}
    own.update(at + j for _, at in reads_at for j in range(3))
    if shadow is not None:
        own.update((_HEAD_MIN_ID, _HEAD_MAX_LEN))
    packer, packed, where = _packed(packing, [*head, *values], own)
    return _Shape(
        packing.encode(),
        packer,
        _bulk(packing.encode()) + b"$%d\r\n" % packer.size,
        packed,
        tuple((where[at], how, text, bits, log) for at, how, text, bits, log in keys),
        tuple((i, where[at]) for i, at in reads_at),
        where.get(_HEAD_MIN_ID, -1),
        tuple(fields),
        field_args,
        b"\r\n" + b"".join(_bulk(arg) for arg in field_args),
        tuple(versions),
        tail,
    )


def _packed(
    packing: str, values: list[float], own: set[int]
) -> tuple[struct.Struct, tuple[float | bytes, ...], dict[int, int]]:
    """``packing`` (big-endian, one character per number: no padding, so the bytes of a
    run of numbers are the same wherever it is) with each run of ``values`` not in ``own``
    (the indexes a decision sets) as one string of its packed bytes: (that format
    compiled, the values it takes, the index there of each of ``own``). One struct call
    of a few values and strings instead of 30 numbers: 0.25 µs instead of 0.5."""
    codes = packing[1:]
    assert packing[0] == ">", packing
    assert len(codes) == len(values), packing
    fmt: list[str] = [">"]
    out: list[float | bytes] = []
    where: dict[int, int] = {}
    run: list[int] = []
    for i, code in enumerate([*codes, ""]):
        if run and (i in own or not code):
            data = struct.pack(">" + "".join(codes[j] for j in run), *[values[j] for j in run])
            fmt.append(f"{len(data)}s")
            out.append(data)
            run = []
        if not code:
            break
        if i in own:
            where[i] = len(out)
            fmt.append(code)
            out.append(values[i])
        else:
            run.append(i)
    return struct.Struct("".join(fmt)), tuple(out), where


# The shapes made for each checks tuple still in use, by identity: the decisions of one
# plan model share their checks tuple (a scrub's leads, a door's calls in one minute), so
# most find their shape without hashing every check (``_shape``'s cache key).
# id → (the checks, their membership checks' list names, shapes by (views, reads, shadow),
# their calling hours for the evidence: ``hours_summary``)
_RECENT: dict[
    int, tuple[tuple[Check, ...], tuple[str, ...], dict[tuple[object, ...], _Shape], str]
] = {}
_RECENT_MAX = 256
_RECENT_SHAPES = 16  # per checks tuple (list views, X checks, shadow reasons)


def _hours_json(checks: tuple[Check, ...]) -> str:
    """The audit head's calling hours of ``checks`` (``hours_summary``) as compact JSON,
    "" for none: encoded once per window (a plan model's, kept by identity)."""
    window = next((c.hours for c in checks if c.hours is not None), None)
    if window is None:
        return ""
    found = _HOURS.get(id(window))
    if found is not None and found[0] is window:
        return found[1]
    if len(_HOURS) >= _HOURS_MAX:
        _HOURS.clear()
    spec = hours_summary(checks)
    text = "" if spec is None else _compact_json(spec)
    _HOURS[id(window)] = (window, text)
    return text


# id of a plan model's calling-hours window → (the window, its ``_hours_json``)
_HOURS: dict[int, tuple[object, str]] = {}
_HOURS_MAX = 1024


def _shape_of(
    checks: tuple[Check, ...],
    views: dict[str, str],
    reads: tuple[int, ...],
    shadow: tuple[str, ...] | None,
) -> _Shape:
    """``_shape`` of ``checks`` under the list ``views`` (name → "version/bits"), looked up
    first by the identity of ``checks`` (held, so never reused)."""
    hit = _RECENT.get(id(checks))
    if hit is None or hit[0] is not checks:
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        lists = tuple(c.key for c in checks if c.kind in _MEMBERSHIP)
        hit = _RECENT[id(checks)] = (checks, lists, {}, _hours_json(checks))
    seen_views = tuple([views.get(name, "") for name in hit[1]])
    shapes = hit[2]
    shape = shapes.get((seen_views, reads, shadow))
    if shape is None:
        if len(shapes) >= _RECENT_SHAPES:
            shapes.clear()
        hours = "" if shadow is None else hit[3]
        shape = shapes[seen_views, reads, shadow] = _shape(checks, seen_views, reads, shadow, hours)
    return shape


# An encoder's last decision: its checks, list views, X checks read, shadow reasons; shape.
_Last = tuple[tuple[Check, ...], dict[str, str], tuple[int, ...], tuple[str, ...] | None, _Shape]


class _Encoder:
    """Accumulates the KEYS (each once) and ARGV of decide.lua, decision by decision."""

    __slots__ = (
        "args",
        "framed",
        "framed_keys",
        "index",
        "keys",
        "last",
        "layout",
        "undo",
        "verdicts",
    )

    def __init__(self, decisions: int, verdicts: bool = False) -> None:
        self.verdicts = verdicts  # evaluations run only as far as their verdict needs
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.args: list[bytes] = [b"%d" % decisions]
        self.layout: list[tuple[StoreCheck, _Shape]] = []
        self.undo: list[tuple[str, bytes, list[str]]] = []
        # The keys and the args as RESP bulk strings, framed as they come (a shape's
        # constant args framed once with it).
        self.framed_keys: list[bytes] = []
        self.framed: list[bytes] = [_bulk(self.args[0])]
        # The last decision's (checks, list views, X checks, shadow) and shape: the next
        # decision of the same plan model (a scrub's batch, mostly) takes it as it is.
        self.last: _Last | None = None

    def add(
        self, check: StoreCheck, views: dict[str, str], read: dict[int, tuple[int, int, int]]
    ) -> None:
        evidence = check.evidence if check.record else None
        reads = tuple(read)
        shadow = None if evidence is None else evidence.shadow
        last = self.last
        if (
            last is not None
            and last[0] is check.checks
            and last[1] is views
            and last[2] == reads
            and last[3] == shadow
        ):
            shape = last[4]
        else:
            shape = _shape_of(check.checks, views, reads, shadow)
            self.last = (check.checks, views, reads, shadow, shape)
        number, prefix = check.number, check.prefix
        values = list(shape.values)
        values[_HEAD_NOW] = check.now_ms
        if check.record:
            values[_HEAD_RECORD] = 1
        elif self.verdicts:
            values[_HEAD_RECORD] = 2
        if evidence is not None:
            values[shape.bounds] = evidence.min_id_ms
            values[shape.bounds + 1] = evidence.max_len
        index, keys, framed_keys = self.index, self.keys, self.framed_keys
        bucket32, token = number.bucket32, number.token
        # the attempt logs this decision counts in (None: not recorded, none voided)
        logs: list[str] | None = [] if check.record else None
        heads = _HEADS
        for at, how, text, bits, log in shape.keys:
            if how == _GROUP:  # the most common first (the tests are exclusive)
                name = prefix + text
            elif how == _TOKEN:
                name = f"{prefix}{text}:{token}"
            elif how == _BUCKET:
                name = f"{prefix}{text}{bucket32 >> (32 - bits)}"
            else:
                name = text
            found = index.get(name)
            if found is None:  # each key once in KEYS, framed as ``_bulk`` does, in parts
                keys.append(name)
                raw = name.encode()
                size = len(raw)
                framed_keys += (heads[size] if size < _HEADS_MAX else b"$%d\r\n" % size, raw, _CRLF)
                found = index[name] = len(keys)
            values[at] = found
            if log and logs is not None:
                logs.append(name)
        for i, at in shape.reads:
            values[at : at + 3] = read[i]
        packed = shape.packer.pack(*values)
        member, encoded = b"%d" % number.member, token.encode()
        self.args += (shape.packing, packed, member, encoded, *shape.field_args)
        # Framed in parts, each bulk string's end and the next one's head as one (a format
        # of the three strings at once costs 3x as much: they are joined once, ``command``).
        size, length = len(member), len(encoded)
        self.framed += (
            shape.framed_head,
            packed,
            _NEXT[size] if size < _HEADS_MAX else b"\r\n$%d\r\n" % size,
            member,
            _NEXT[length] if length < _HEADS_MAX else b"\r\n$%d\r\n" % length,
            encoded,
            shape.framed_tail,
        )
        if evidence is not None:
            # The entry's fields as a JSON object ("" is implied), then the shape's end:
            # ``_compact_json`` of the fields, without its per-call encoder set-up.
            quote = _json_text
            head = ",".join([f"{quote(k)}:{quote(v)}" for k, v in evidence.known if v])
            self.args.append(f"{{{head}{',' if head else ''}{shape.tail}".encode())
            self.framed.append(_bulk(self.args[-1]))
        self.layout.append((check, shape))
        if logs is not None:
            self.undo.append((prefix + "audit", self.args[-1] if evidence else b"", logs))
        else:  # one shared entry (never read: ``void`` is for recorded decisions only)
            self.undo.append(_NOT_RECORDED)
