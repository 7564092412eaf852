"""The Redis store: one atomic Lua call per decision, plus the admin primitives.

Guarantees:
- ``decide(check)`` is one EVALSHA of ``gate/store/lua/decide.lua`` under
  ``asyncio.timeout(deadline)``, sent as a pre-encoded request (arguments encoded here,
  the script's SHA1 computed once; NOSCRIPT loads it and sends again: the script did not
  run); it returns a ``StoreResult`` or raises ``StoreUnavailable`` / ``StoreTimeout``.
- Every key a script touches is in its KEYS, named in the number's slot group
  (gate/core/keys.py). The store keeps a view of each list's live version ("version/bits",
  read from the list's directory entry); the script checks it against the group's meta
  and answers STALE instead of deciding when it is out of date, and the decision is sent
  again with what the meta holds: a decision never reads a list version other than the
  live one, and the first decision after a list swap sees the new version on every shard.
- Two modes. One server (``url``): a decision, its CPS log included, is one call. Redis
  Cluster (``nodes``, seed URLs): each call is routed to the master of its slot, MOVED
  and ASK are followed (the script did not run, so sending it again is safe) and counted
  (``redirects``); a shared attempt log (a trunk's CPS) lives in a slot of its own, so a
  recorded decision that has one first reserves it (a call on that slot), then decides
  in the number's slot, and gives the reservation back if the number's checks refused:
  the CPS cap is never exceeded. A lost connection is never answered by sending a
  recorded decision again: the error goes up (the gate applies its fail mode) and the
  cluster's slot map is read again before the next call.
- No redis-py exception leaves this module: each is translated into ``gate.core.errors``.
- Admin commands (lists, consents, audit) use ``admin_client`` (a long timeout, routed by
  key in cluster mode) and ``run_scripts``; never the decision deadline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.resources
import json
import logging
import struct
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.core.engine import Check, CheckKind, StoreCheck, StoreResult
from gate.core.errors import StoreError, StoreTimeout, StoreUnavailable
from gate.core.evidence import check_summary
from gate.core.keys import directory_key, namespace_of

__all__ = ["BATCH", "Script", "Store", "StoreSettings", "load_script", "translate_error"]

log = logging.getLogger("callgate")

BATCH = 1000
# Decisions per EVALSHA in a scrub: ~10-20 µs of Redis time each, so a few ms per call.
SCRUB_BATCH = 200
_ADMIN_TIMEOUT_S = 60.0
# A decision whose list view is out of date is sent again with the meta's; a view that
# changes under it again and again (a swap in progress on every try) gives up.
_STALE_TRIES = 4
# Redirections followed for one call (a slot moving, then a failover).
_REDIRECTS = 8
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


DECIDE = Script.load("decide.lua")
LIST_DELTA = Script.load("list_delta.lua")
RELEASE = Script.load("release.lua")


def translate_error(exc: BaseException, where: str) -> StoreError:
    """Map a redis-py error to the gate's error tree (one line, says what to check)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return StoreTimeout(f"Redis at {where} did not answer in time")
    if isinstance(exc, RedisConnectionError | OSError):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreUnavailable(f"Redis at {where} is unreachable ({detail}); is it running?")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if text.startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")):
        return StoreUnavailable(f"Redis at {where} cannot answer now ({text})")
    return StoreError(f"Redis at {where} answered with an error: {text}")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """What a ``Store`` is opened with (picklable: scrub workers open their own)."""

    url: str
    deadline_s: float
    nodes: tuple[str, ...] = ()


def _cluster_client(nodes: Sequence[str], socket_timeout: float, retries: int) -> RedisCluster:
    """A RedisCluster over the seed ``nodes`` (redis:// or rediss:// URLs)."""
    first = urlsplit(nodes[0])
    startup = []
    for url in nodes:
        parts = urlsplit(url)
        startup.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
    return RedisCluster(
        startup_nodes=startup,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
        if retries
        else Retry(NoBackoff(), 0),
        decode_responses=False,
    )


_Reply = Any  # a decoded RESP reply, or the ResponseError an error reply raised


class Store:
    """The connection to one Redis (or a Redis Cluster) and the scripts."""

    def __init__(self, url: str, deadline_s: float, *, nodes: Sequence[str] = ()) -> None:
        self.url = url
        self.deadline_s = deadline_s
        self.nodes = tuple(nodes)
        self.cluster = bool(self.nodes)
        self.redirects: Counter[str] = Counter()
        self.answered_by = ""  # the node that answered the last decision
        self._views: dict[str, str] = {}
        self._reinit_at = 0.0
        self._stale_topology = False
        self._ask_nodes: dict[str, ClusterNode] = {}
        self._client: aioredis.Redis | None = None
        self._cluster: RedisCluster | None = None
        if self.cluster:
            self._cluster = _cluster_client(self.nodes, _ADMIN_TIMEOUT_S, 0)
        else:
            # No retry at all: a decision is never sent twice by the client library.
            self._client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=max(deadline_s, 0.5),
                socket_timeout=_ADMIN_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )
        self._admin_client: aioredis.Redis | RedisCluster | None = None

    @classmethod
    def open(cls, settings: StoreSettings) -> Store:
        return cls(settings.url, settings.deadline_s, nodes=settings.nodes)

    @property
    def settings(self) -> StoreSettings:
        return StoreSettings(self.url, self.deadline_s, self.nodes)

    @property
    def admin_client(self) -> Any:
        """A client for administration (lists, consents, audit): long timeout.

        One server: never a blind retry (redis-py's default, a 5 s socket timeout then one
        retry, re-sent a slow RENAME of a big list, which then failed "no such key" after
        the first had succeeded). Cluster: routed by key, MOVED/ASK followed, a few
        retries after a failover (admin writes are idempotent)."""
        if self._admin_client is None:
            if self.cluster:
                self._admin_client = _cluster_client(self.nodes, _ADMIN_TIMEOUT_S * 2, 3)
            else:
                self._admin_client = aioredis.Redis.from_url(
                    self.url,
                    socket_timeout=_ADMIN_TIMEOUT_S * 2,
                    socket_connect_timeout=5.0,
                    retry=None,
                )
        return self._admin_client

    @property
    def where(self) -> str:
        """The server address without credentials, for messages."""
        if self.cluster:
            return "cluster " + ",".join(u.split("@", 1)[-1] for u in self.nodes)
        return self.url.split("@", 1)[-1]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()
        for node in self._ask_nodes.values():
            await node.disconnect()
        if self._admin_client is not None:
            await self._admin_client.aclose()

    async def ping(self) -> None:
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

    def forget_views(self) -> None:
        """Read every list's version again before its next decision (tests, migrate)."""
        self._views.clear()

    # --- decisions ------------------------------------------------------------------

    async def decide(self, check: StoreCheck) -> StoreResult:
        """Run one decision's checks atomically, within the deadline."""
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self._decide(check)
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def _decide(self, check: StoreCheck) -> StoreResult:
        shared = [c for c in check.checks if c.shared] if self.cluster else []
        reserved: list[Check] = []
        outside: dict[int, tuple[int, int, int]] = {}
        if shared:
            outside, reserved = await self._reserve(check, shared)
        result: StoreResult | None = None
        try:
            for _ in range(_STALE_TRIES):
                await self._learn_views([check])
                encoded = _encode([check], self._views, [outside])
                (reply,) = await self._call([encoded.command(DECIDE)])
                results = encoded.results(_raise_error(reply), self._views)
                if results[0] is not None:
                    result = results[0]
                    return result
            raise StoreError(f"Redis at {self.where}: list versions kept changing; try again")
        finally:
            if reserved and (result is None or result.decided != 0):
                await self._give_back(reserved, check.now_ms)

    async def _reserve(
        self, check: StoreCheck, shared: list[Check]
    ) -> tuple[dict[int, tuple[int, int, int]], list[Check]]:
        """Cluster: read (and, recording, reserve) each shared attempt log in its own slot.
        Returns, per check index, what it saw (seen, limit, retry_ms: an X check of
        decide.lua) and the checks whose log holds a reservation."""
        probes = [StoreCheck(check.now_ms, check.record, check.number, "", (c,)) for c in shared]
        replies = await self._call([_encode([p], {}).command(DECIDE) for p in probes])
        outside: dict[int, tuple[int, int, int]] = {}
        reserved = []
        for c, reply in zip(shared, replies, strict=True):
            decided, retry_ms, seen = _probe(reply)
            outside[check.checks.index(c)] = (seen, c.params[0], retry_ms)
            if check.record and not decided:
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
        """Give back reservations of a decision that did not let the call go."""
        replies = await self._call([_command(RELEASE, [c.key], [now_ms]) for c in reserved])
        for reply in replies:
            _raise_error(reply)

    async def decide_many(self, checks: Sequence[StoreCheck]) -> list[StoreResult]:
        """Evaluate many decisions (never recorded): ``SCRUB_BATCH`` per EVALSHA (a few ms
        of Redis time each, so live decisions are never held up long), grouped by slot in
        cluster mode, all sent in one round trip per node. No decision deadline: a scrub
        is not a call waiting to leave."""
        if not checks:
            return []
        try:
            outside = await self._peek_shared(checks) if self.cluster else [{}] * len(checks)
            results: list[StoreResult | None] = [None] * len(checks)
            todo = list(range(len(checks)))
            for _ in range(_STALE_TRIES):
                await self._learn_views([checks[i] for i in todo])
                batches = _batches(todo, checks, self.cluster)
                encoded = [
                    _encode([checks[i] for i in batch], self._views, [outside[i] for i in batch])
                    for batch in batches
                ]
                replies = await self._call([e.command(DECIDE) for e in encoded])
                stale: list[int] = []
                for batch, enc, reply in zip(batches, encoded, replies, strict=True):
                    for index, result in zip(
                        batch, enc.results(_raise_error(reply), self._views), strict=True
                    ):
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
        """Cluster: what each shared attempt log holds (each read once), per decision and
        check index as (seen, limit, retry_ms) for an X check."""
        probes: dict[str, StoreCheck] = {}
        for check in checks:
            for c in check.checks:
                if c.shared and c.key not in probes:
                    probes[c.key] = StoreCheck(check.now_ms, False, check.number, "", (c,))
        replies = await self._call([_encode([p], {}).command(DECIDE) for p in probes.values()])
        seen: dict[str, tuple[int, int]] = {}
        for key, reply in zip(probes, replies, strict=True):
            _, retry_ms, count = _probe(reply)
            seen[key] = (count, retry_ms)
        return [
            {
                i: (seen[c.key][0], c.params[0], seen[c.key][1])
                for i, c in enumerate(check.checks)
                if c.shared
            }
            for check in checks
        ]

    # --- list views -----------------------------------------------------------------

    async def _learn_views(self, checks: Iterable[StoreCheck]) -> None:
        """Read the live version of every list these checks look up and the store has no
        view of yet (from the lists' directory entries)."""
        wanted: dict[str, str] = {}
        for check in checks:
            for c in check.checks:
                if c.kind in _MEMBERSHIP and c.key not in self._views:
                    wanted[c.key] = namespace_of(check.prefix)
        if not wanted:
            return
        client = self.admin_client
        async with client.pipeline(transaction=False) as pipe:
            for list_id, namespace in wanted.items():
                pipe.hmget(directory_key(namespace, list_id), "version", "bits")
            replies = await pipe.execute()
        for list_id, (version, bits) in zip(wanted, replies, strict=True):
            self._views[list_id] = "" if version is None else f"{int(version)}/{int(bits)}"

    # --- transport --------------------------------------------------------------------

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

    async def send_packed(self, commands: Sequence[tuple[str, bytes]]) -> list[Any]:
        """Admin: commands already in RESP, each with the key that routes it; pipelined
        (one request per node); returns each reply (an error raises)."""
        return await self._admin_call(
            [_Command(None, key_slot(key.encode()), packed) for key, packed in commands]
        )

    async def _admin_call(self, commands: list[_Command]) -> list[Any]:
        try:
            replies = await self._call(commands, admin=True)
            return [_raise_error(reply) for reply in replies]
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def _call(self, commands: list[_Command], admin: bool = False) -> list[_Reply]:
        """Send commands (one server: one request; cluster: one per node, at once) and
        return each reply; NOSCRIPT, MOVED, ASK and TRYAGAIN replies are followed."""
        replies: list[_Reply] = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, ClusterNode] = {}
        for round_ in range(_REDIRECTS):
            if not self.cluster:
                sent = await self._send_single([commands[i].packed for i in pending], admin)
                self.answered_by = self.where
                routed: list[tuple[Any, list[int], list[_Reply]]] = [(None, pending, sent)]
            else:
                routed = await self._send_cluster(commands, pending, asking, admin)
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
                        await self._cluster_for(admin).nodes_manager.move_slot(reply)
                        retry.append(index)
                    elif isinstance(reply, AskError) and self.cluster:
                        self.redirects["ask"] += 1
                        asking[index] = self._ask_node(reply.host, int(reply.port), admin)
                        retry.append(index)
                    elif isinstance(reply, TryAgainError):
                        self.redirects["tryagain"] += 1
                        retry.append(index)
            if not retry:
                return replies
            for node, scripts in loads.items():
                await self._load_scripts(node, scripts, admin)
            if any(isinstance(replies[i], TryAgainError) for i in retry):
                await asyncio.sleep(0.01 * (round_ + 1))
            pending = retry
        return replies

    def _cluster_for(self, admin: bool) -> RedisCluster:
        cluster = self.admin_client if admin else self._cluster
        assert isinstance(cluster, RedisCluster)
        return cluster

    async def _send_single(self, packed: list[bytes], admin: bool = False) -> list[_Reply]:
        client = self.admin_client if admin else self._client
        assert client is not None
        pool = client.connection_pool
        connection = await pool.get_connection()
        try:
            return await _exchange(connection, b"".join(packed), len(packed))
        except BaseException:
            await connection.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(connection)

    async def _send_cluster(
        self,
        commands: list[_Command],
        pending: list[int],
        asking: dict[int, ClusterNode],
        admin: bool,
    ) -> list[tuple[Any, list[int], list[_Reply]]]:
        cluster = self._cluster_for(admin)
        await self._refresh_topology(cluster)
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
            connection = node.acquire_connection()
            try:
                replies = await _exchange(connection, request, expected)
            except BaseException:
                await connection.disconnect()
                self._stale_topology = True
                raise
            finally:
                node.release(connection)
            if not admin:
                self.answered_by = node.name
            return replies[1::2] if ask else replies

        results = await asyncio.gather(
            *(one(node, indexes, ask) for node, indexes, ask in by_node.values())
        )
        return [
            (node, indexes, replies)
            for (node, indexes, _), replies in zip(by_node.values(), results, strict=True)
        ]

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

    async def _refresh_topology(self, cluster: RedisCluster) -> None:
        """Read the cluster's slot map again after a lost connection (a failover), at most
        every ``_REINIT_EVERY_S``."""
        now = time.monotonic()
        if self._stale_topology and now - self._reinit_at >= _REINIT_EVERY_S:
            self._reinit_at = now
            self._stale_topology = False
            await cluster.nodes_manager.initialize()
        else:
            await cluster.initialize()

    async def _load_scripts(self, node: Any, scripts: set[Script], admin: bool) -> None:
        for script in scripts:
            if node is None:
                client = self.admin_client if admin else self._client
                assert client is not None
                await client.script_load(script.text)
            else:
                await node.execute_command("SCRIPT", "LOAD", script.text)


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


def _probe(reply: _Reply) -> tuple[int, int, int]:
    """(decided, retry_ms, seen) of a one-check decision (a shared attempt log)."""
    (item,) = _raise_error(reply)
    decided, retry_ms, seen = (int(n) for n in item.split(b","))
    return decided, retry_ms, seen


def _raise_error(reply: _Reply) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply


@dataclass(frozen=True, slots=True)
class _Command:
    """One pre-encoded command (an EVALSHA of ``script``, or None) and its slot."""

    script: Script | None
    slot: int
    packed: bytes


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
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


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
    layout: list[tuple[StoreCheck, list[str]]]  # per decision: its meta fields

    def command(self, script: Script) -> _Command:
        return _command(script, self.keys, self.args)

    def results(self, reply: list[Any], views: dict[str, str]) -> list[StoreResult | None]:
        """Each decision's result, or None when it was STALE (``views`` updated)."""
        out: list[StoreResult | None] = []
        for (check, fields), item in zip(self.layout, reply, strict=True):
            if isinstance(item, list):  # STALE: what the meta holds
                for name, value in zip(fields, item, strict=True):
                    if not name.endswith(":r"):
                        views[name] = "" if value is None else value.decode()
                out.append(None)
                continue
            numbers = [int(n) for n in item.split(b",")]
            results = tuple(numbers[2:])
            versions = tuple(
                _version(c, views) if seen >= 0 else ""
                for c, seen in zip(check.checks, results, strict=True)
            )
            out.append(StoreResult(numbers[0], numbers[1], results, versions))
        return out


def _version(check: Check, views: dict[str, str]) -> str:
    if check.kind not in _MEMBERSHIP:
        return ""
    return views.get(check.key, "").split("/", 1)[0]


def _encode(
    decisions: Sequence[StoreCheck],
    views: dict[str, str],
    outside: Sequence[dict[int, tuple[int, int, int]]] = (),
) -> _Encoded:
    """KEYS and ARGV of decide.lua (its header is the contract). ``outside[d][i]``: check
    i of decision d is a shared attempt log already read in its own slot (an X check:
    seen, limit, retry_ms)."""
    encoder = _Encoder(len(decisions))
    for d, check in enumerate(decisions):
        encoder.add(check, views, outside[d] if outside else {})
    return _Encoded(encoder.keys, encoder.args, encoder.layout)


@functools.lru_cache(maxsize=256)
def _mask(exempt_by: tuple[int, ...]) -> int:
    """The bit mask of the checks that exempt (bit i-1: check i)."""
    return sum(1 << (index - 1) for index in exempt_by)


@functools.lru_cache(maxsize=1024)
def _summary_json(
    checks: tuple[Check, ...], versions: tuple[str, ...], shadow: tuple[str, ...]
) -> str:
    """``"shadow":[…],"checks":[…]}``: the end of an audit entry's head (the same for every
    decision of one plan shape, so made once)."""
    body = {"shadow": shadow, "checks": check_summary(checks, versions)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))[1:]


# Each check's kind as decide.lua reads it (a character code; lowercase: shadow).
_CODES = {kind: (ord(kind.value), ord(kind.value.lower())) for kind in CheckKind}
_X = (ord("X"), ord("x"))


class _Encoder:
    """Accumulates the KEYS (each once) and ARGV of decide.lua, decision by decision."""

    __slots__ = ("args", "index", "keys", "layout")

    def __init__(self, decisions: int) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.args: list[bytes] = [b"%d" % decisions]
        self.layout: list[tuple[StoreCheck, list[str]]] = []

    def key(self, key: str) -> int:
        found = self.index.get(key)
        if found is None:
            self.keys.append(key)
            found = self.index[key] = len(self.keys)
        return found

    def add(
        self, check: StoreCheck, views: dict[str, str], read: dict[int, tuple[int, int, int]]
    ) -> None:
        number, prefix = check.number, check.prefix
        fields: dict[str, str] = {}  # meta field → expected value, in order
        fmt: list[str] = []
        values: list[float] = []
        for i, c in enumerate(check.checks):
            kind = c.kind
            code = _CODES[kind][c.shadow]
            mask = _mask(c.exempt_by)
            if kind in _MEMBERSHIP:
                view = views.get(c.key, "")
                fields[c.key] = view
                at = 0
                if view:
                    version, bits = view.split("/")
                    bucket = number.bucket32 >> (32 - int(bits))
                    at = self.key(f"{prefix}l:{c.key}:{version}:{bucket}")
                if kind is CheckKind.ALLOW_LIST:
                    fmt.append("BH")
                    values += (code, at)
                else:
                    fmt.append("BHd")
                    values += (code, at, mask)
            elif kind is CheckKind.CONSENT_HELD:
                fmt.append("BH")
                values += (code, self.key(f"{prefix}c:{c.key}"))
            elif kind is CheckKind.CONSENT_REQUIRED:
                fmt.append("BHd")
                values += (code, self.key(f"{prefix}c:{c.key}"), mask)
            elif kind is CheckKind.COOLOFF:
                fmt.append("BHd")
                values += (code, self.key(f"{prefix}{c.key}:{number.token}"), c.params[0])
            elif kind is CheckKind.FRESHNESS:
                fields.setdefault(f"{c.key}:r", "*")
                j = list(fields).index(f"{c.key}:r") + 1
                fmt.append("BBddd")
                values += (code, j, c.params[0], c.params[1], mask)
            elif kind is CheckKind.WINDOW:
                fmt.append("Bdd")
                values += (code, c.params[0], mask)
            elif i in read:  # a shared log read by its own call: (seen, limit, retry_ms)
                fmt.append("Bddd")
                values += (_X[c.shadow], *read[i])
            else:
                at = self.key(c.key if c.shared else f"{prefix}{c.key}:{number.token}")
                fmt.append("BHdd")
                values += (code, at, c.params[0], c.params[1])
        evidence = check.evidence if check.record else None
        head: list[float] = [
            check.now_ms,
            1 if check.record else 0,
            self.key(prefix + "meta") if fields else 0,
            len(fields),
            len(check.checks),
        ]
        if evidence is None:
            layout = ">dBHBBB"
            head.append(0)
        else:
            layout = ">dBHBBBHdd"
            head += (1, self.key(prefix + "audit"), evidence.min_id_ms, evidence.max_len)
        packing = layout + "".join(fmt)
        self.args += (
            packing.encode(),
            struct.pack(packing, *head, *values),
            b"%d" % number.member,
            number.token.encode(),
            *(f.encode() for f in fields),
            *(e.encode() for e in fields.values()),
        )
        if evidence is not None:
            versions = tuple(_version(c, views) for c in check.checks)
            present = {name: value for name, value in evidence.known if value}  # "" is implied
            known = json.dumps(present, ensure_ascii=False, separators=(",", ":"))
            tail = _summary_json(check.checks, versions, evidence.shadow)
            joint = "," if present else ""
            self.args.append(f"{known[:-1]}{joint}{tail}".encode())
        self.layout.append((check, list(fields)))
