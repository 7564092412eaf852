"""The Redis store: one atomic Lua call per decision, plus the list admin commands.

Guarantees:
- ``decide(check)`` is one EVALSHA of ``gate/lua/decide.lua`` (loaded from the package,
  registered once, loaded again on NOSCRIPT) and returns a ``StoreResult`` or raises
  ``StoreUnavailable`` / ``StoreTimeout``.
- Its time limits measure Redis, not a queue: a decision waits at most ``pool_wait`` for
  one of the ``pool_size`` pooled connections (connect.py), then at most ``deadline`` for
  Redis's reply. A reply that misses the deadline is still read in the background and
  its connection goes back to the pool: a slow moment never turns into reconnections.
- A recording decision is never sent twice: if its connection fails after the request
  was sent, the script may have run, so the decision gets the fail mode and is counted
  at most once. An evaluation that records nothing may be sent again once, on a fresh
  connection.
- ``durable()`` gives a view of the store whose writes are acknowledged only once
  ``wait_replicas`` replicas hold them (``WAIT``), for the writes that must survive a
  failover: opt-outs, consent revocations, refusals.
- No redis-py exception leaves this module: each is translated into ``gate.errors``.
- Admin commands (list add/remove/count/export) use their own pool, with long timeouts
  and no blind retry; list entries are sent in batches of ``BATCH`` members per command.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import importlib.resources
import logging
import select
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.config.loader import RedisConfig
from gate.core.engine import StoreCheck, StoreResult
from gate.core.errors import NotReplicated, StoreError, StoreTimeout, StoreUnavailable
from gate.store.connect import ADMIN_TIMEOUT_S, Link, LinkStatus

__all__ = ["BATCH", "Store", "encode_checks", "load_script", "translate_error"]

log = logging.getLogger("callgate")

BATCH = 1000
# Decisions per EVALSHA in a scrub: ~20-30 µs of Redis time each, so ~5 ms per call.
SCRUB_BATCH = 200
_ADMIN_TIMEOUT_S = ADMIN_TIMEOUT_S
# How long close() lets replies that missed their deadline arrive before dropping them.
_CLOSE_GRACE_S = 1.0


def load_script(name: str) -> str:
    """The text of a Lua script shipped in ``gate/lua/``."""
    return (
        importlib.resources.files("gate.store")
        .joinpath("lua")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def translate_error(exc: BaseException, where: str) -> StoreError:
    """Map a redis-py error to the gate's error tree (one line, says what to check)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return StoreTimeout(f"Redis at {where} did not answer in time")
    if isinstance(exc, RedisConnectionError | OSError):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreUnavailable(f"Redis at {where} is unreachable ({detail}); is it running?")
    return StoreError(f"Redis at {where} answered with an error: {exc}")


class Store:
    """Connection pools to one Redis deployment (connect.py), and the decision script.

    ``Store(url, deadline_s)`` talks to the single server at ``url``; ``config`` (the
    ``[redis]`` section) adds the mode, the pool, auth and durability settings."""

    def __init__(
        self, url: str | None, deadline_s: float, config: RedisConfig | None = None
    ) -> None:
        settings = config or RedisConfig()
        url = url if url is not None else settings.url
        self.settings = dataclasses.replace(settings, url=url, deadline_s=deadline_s)
        self.url = url
        self.deadline_s = deadline_s
        self.link = Link(self.settings)
        self._pool: ConnectionPool = self.link.decision_pool()
        self._client: aioredis.Redis = self.link.client(self._pool)
        self._decide = self._client.register_script(load_script("decide.lua"))
        self._admin_pool: ConnectionPool | None = None
        self._admin_client: aioredis.Redis | None = None
        # Reply readers in flight (a reply that missed its deadline is still read).
        self._exchanges: set[asyncio.Task[Any]] = set()

    @property
    def admin_client(self) -> aioredis.Redis:
        """A second pool for list administration: long timeout, never a blind retry."""
        if self._admin_client is None:
            self._admin_pool = self.link.admin_pool()
            self._admin_client = self.link.client(self._admin_pool)
        return self._admin_client

    @property
    def where(self) -> str:
        """The server address without credentials, for messages."""
        return self.link.where

    @property
    def status(self) -> LinkStatus:
        """Mode, the node answering, failovers and restarts seen (``/readyz``, metrics)."""
        return self.link.status

    async def close(self) -> None:
        """Let replies still awaited arrive (at most ``_CLOSE_GRACE_S``), cancel the rest
        and wait (bounded) until they have let go of their connections; then close."""
        if self._exchanges:
            await asyncio.wait(set(self._exchanges), timeout=_CLOSE_GRACE_S)
        if self._exchanges:
            pending = set(self._exchanges)
            log.warning("Redis at %s: %d replies still awaited at close", self.where, len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CLOSE_GRACE_S)
        await self._client.aclose()
        if self._admin_client is not None:
            await self._admin_client.aclose()
        pools = [self._pool] + ([self._admin_pool] if self._admin_pool is not None else [])
        await self.link.close(*pools)

    async def ping(self) -> None:
        """PING within ``max(deadline, 1 s)`` (an embedded server still loading its data
        answers LOADING: not ready)."""
        try:
            async with asyncio.timeout(max(self.deadline_s, 1.0)):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def decide(self, check: StoreCheck) -> StoreResult:
        """Run one decision's checks atomically: at most ``pool_wait`` for a connection,
        then at most ``deadline`` from sending the request to Redis's reply (see the
        module's guarantees)."""
        keys, args = encode_checks(check)
        command = ("EVALSHA", self._decide.sha, len(keys), *keys, *args)
        connection = await self._checkout()
        try:
            await connection.send_command(*command)
        except BaseException as exc:
            await connection.disconnect()
            await self._pool.release(connection)
            if isinstance(exc, RedisError | OSError):
                raise translate_error(exc, self.where) from exc
            raise
        # The deadline starts now that the request is on its way: time spent waiting for
        # a connection or for this task's turn in the event loop is not Redis's.
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        exchange = asyncio.create_task(self._reply(connection, command, check.record, reply))
        self._let_finish(exchange)
        try:
            done, _ = await asyncio.wait({reply}, timeout=self.deadline_s)
            if not done and _reply_waiting(connection):
                # Redis has answered; only this process's own backlog kept it unread.
                done, _ = await asyncio.wait({reply}, timeout=self.deadline_s)
        finally:
            if not reply.done():
                # Nobody waits for it any more; its connection goes back to the pool once
                # the reply is read (or the connection fails).
                reply.cancel()
        if not done:
            raise StoreTimeout(
                f"Redis at {self.where} did not answer within {self.deadline_s * 1000:g} ms"
            )
        try:
            result = reply.result()
        except (RedisError, OSError) as exc:
            raise translate_error(exc, self.where) from exc
        return _result(result[0])

    def _let_finish(self, exchange: asyncio.Task[Any]) -> None:
        """Let an exchange nobody waits for end by itself (``close()`` bounds it)."""
        self._exchanges.add(exchange)
        exchange.add_done_callback(_forget(self._exchanges))

    async def _checkout(self) -> AbstractConnection:
        """A pooled connection, connected (waits at most ``pool_wait`` for a free one)."""
        try:
            connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            return connection
        except RedisConnectionError as exc:
            if "No connection available" in str(exc):
                raise StoreUnavailable(
                    f"Redis at {self.where}: all {self.settings.pool_size} connections stayed "
                    f"busy for {self.settings.pool_wait_s:g} s (raise redis.pool_size?)"
                ) from exc
            raise translate_error(exc, self.where) from exc
        except (RedisError, OSError) as exc:
            raise translate_error(exc, self.where) from exc

    async def _reply(
        self,
        connection: AbstractConnection,
        command: tuple[Any, ...],
        record: bool,
        reply: asyncio.Future[Any],
    ) -> None:
        """Read the reply to ``command`` (already sent on ``connection``) into ``reply``,
        then release the connection, whatever happens (the decision does not wait for
        the release: the pool's lock may be busy under a burst).

        NOSCRIPT means the script did not run: load it and send again. A broken
        connection is sent on again (once, reconnected) only when nothing is recorded:
        a recording call may have run already, and must not be counted twice."""
        try:
            for attempt in range(3):
                try:
                    if attempt:
                        await connection.send_command(*command)
                    answer = await connection.read_response()
                except NoScriptError as exc:
                    if attempt == 2:
                        _settle(reply, exc)
                        return
                    await connection.send_command("SCRIPT", "LOAD", self._decide.script)
                    await connection.read_response()
                except (RedisError, OSError) as exc:
                    if (
                        record
                        or attempt == 2
                        or not isinstance(exc, RedisConnectionError | OSError)
                    ):
                        _settle(reply, exc)
                        return
                    await connection.disconnect()
                else:
                    if not reply.done():
                        reply.set_result(answer)
                    return
        except (RedisError, OSError) as exc:
            _settle(reply, exc)
        finally:
            await self._pool.release(connection)

    async def decide_many(self, checks: Sequence[StoreCheck]) -> list[StoreResult]:
        """Evaluate many decisions: ``SCRUB_BATCH`` per EVALSHA (a few ms of Redis time
        each, so live decisions are never held up long), all batches pipelined in one
        round trip. No decision deadline: a scrub is not a call waiting to leave."""
        if not checks:
            return []
        # The EVALSHAs are sent as one pre-built RESP request: redis-py's per-argument
        # encoding cost more than the decisions themselves (a scrub of 1 M leads).
        request = bytearray()
        calls = 0
        for start in range(0, len(checks), SCRUB_BATCH):
            keys, args = encode_checks(*checks[start : start + SCRUB_BATCH])
            request += _resp(
                [
                    b"EVALSHA",
                    self._decide.sha.encode(),
                    b"%d" % len(keys),
                    *(k.encode() for k in keys),
                    *(str(a).encode() for a in args),
                ]
            )
            calls += 1
        for attempt in range(2):  # a second time after loading the script (NOSCRIPT)
            try:
                replies = await self._send(bytes(request), calls)
                return [_result(reply) for batch in replies for reply in batch]
            except NoScriptError:
                if attempt:
                    raise
                await self._client.script_load(self._decide.script)
            except (RedisError, OSError, TimeoutError) as exc:
                raise translate_error(exc, self.where) from exc
        raise AssertionError("unreachable")

    async def _send(self, request: bytes, replies: int) -> list[Any]:
        """Send pre-built commands on one pooled connection and read ``replies`` replies
        (an error reply raises; the connection is then dropped, never reused)."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(request)
            return [
                await connection.read_response(timeout=_ADMIN_TIMEOUT_S) for _ in range(replies)
            ]
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _admin(self, command: str, *args: Any) -> Any:
        try:
            async with asyncio.timeout(_ADMIN_TIMEOUT_S):
                return await self.admin_client.execute_command(command, *args)  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    @asynccontextmanager
    async def durable(self, what: str) -> AsyncIterator[Store]:
        """A view of this store for writes that must survive a failover (``what``: "the
        opt-out", for messages). Its admin commands all go over one connection; on
        leaving, ``WAIT`` until ``wait_replicas`` replicas hold them (bounded by
        ``wait_timeout``), else ``NotReplicated``: the write is in force on the master but
        not acknowledged, and may be sent again (these writes are idempotent)."""
        replicas = self.settings.wait_replicas
        if replicas == 0:
            yield self
            return
        pinned = aioredis.Redis(
            connection_pool=self.admin_client.connection_pool, single_connection_client=True
        )
        view = copy.copy(self)
        view._admin_client = pinned
        try:
            yield view
            timeout_ms = int(self.settings.wait_timeout_s * 1000)
            held = int(await view._admin("WAIT", replicas, timeout_ms))
        finally:
            await pinned.aclose()
        if held < replicas:
            raise NotReplicated(
                f"{what} is in force on the Redis master but only {held} of {replicas} "
                f"replica(s) confirmed it within {self.settings.wait_timeout_s:g} s, so it "
                "could be lost in a failover: not acknowledged, send it again"
            )

    async def set_fields(self, key: str, fields: Iterable[tuple[str, str]]) -> int:
        """HSET in batches (consent lists: token → "granted_ms:expiry_ms"); returns new fields."""
        added = 0
        batch: list[str] = []
        for name, value in fields:
            batch += [name, value]
            if len(batch) >= 2 * BATCH:
                added += int(await self._admin("HSET", key, *batch))
                batch = []
        if batch:
            added += int(await self._admin("HSET", key, *batch))
        return added

    async def remove_fields(self, key: str, names: Iterable[str]) -> int:
        removed = 0
        for batch in _batches(names):
            removed += int(await self._admin("HDEL", key, *batch))
        return removed

    async def count_fields(self, key: str) -> int:
        return int(await self._admin("HLEN", key))

    async def get_fields(self, key: str) -> dict[str, str]:
        raw = await self._admin("HGETALL", key)
        if isinstance(raw, dict):
            return {k.decode(): v.decode() for k, v in raw.items()}
        pairs = list(raw)
        return {pairs[i].decode(): pairs[i + 1].decode() for i in range(0, len(pairs), 2)}

    async def mark(self, key: str, value: str, ttl_ms: int) -> None:
        """SET key value PX ttl_ms (cool-off markers)."""
        await self._admin("SET", key, value, "PX", max(ttl_ms, 1))

    async def members(self, key: str, hashed: bool = False) -> AsyncIterator[str]:
        """Every member of a list SET (or field of a consent HASH), by SCAN: constant memory."""
        command = "HSCAN" if hashed else "SSCAN"
        cursor = 0
        for _ in range(10**9):  # bounded: the scan ends when the cursor returns to 0
            cursor, batch = await self._admin(command, key, cursor, "COUNT", BATCH)
            items = batch[::2] if hashed else batch
            for member in items:
                yield member.decode()
            if int(cursor) == 0:
                return

    async def flush_namespace(self, pattern: str) -> None:
        """Delete every key matching ``pattern`` (tests and ``callgate reset``)."""
        cursor = 0
        for _ in range(10**9):
            cursor, keys = await self._admin("SCAN", cursor, "MATCH", pattern, "COUNT", BATCH)
            if keys:
                await self._admin("UNLINK", *keys)
            if int(cursor) == 0:
                return


def encode_checks(*decisions: StoreCheck) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of decide.lua for one or more decisions (its header is the contract)."""
    keys: list[str] = []
    index: dict[str, int] = {}
    args: list[str | int] = [len(decisions)]
    for check in decisions:
        number = check.number
        args += [
            check.now_ms,
            1 if check.record else 0,
            number.token,
            number.member,
            number.bucket32,
            len(check.checks),
        ]
        for item in check.checks:
            fields = [item.kind, "1" if item.shadow else "0"]
            if item.key:
                if item.key not in index:
                    keys.append(item.key)
                    index[item.key] = len(keys)
                fields.append(str(index[item.key]))
            fields += [str(p) for p in item.params]
            if item.exempt_by:
                fields.append(",".join(str(i) for i in item.exempt_by))
            args.append("|".join(fields))
    return keys, args


def _settle(reply: asyncio.Future[Any], error: BaseException) -> None:
    if not reply.done():
        reply.set_exception(error)


def _reply_waiting(connection: AbstractConnection) -> bool:
    """Whether bytes of Redis's reply have reached this process but were not read yet
    (in the stream's buffer, or waiting in the socket): then a missed deadline is the
    event loop's backlog under a burst of calls, not Redis being slow.

    Reads redis-py's ``_reader``/``_writer`` (as redis-py's own ``Connection`` does); if
    they change shape this answers False, and the deadline is applied strictly."""
    reader = getattr(connection, "_reader", None)
    if reader is None:
        return False
    if getattr(reader, "_buffer", None):
        return True
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return False
    poller = select.poll()  # not select.select: descriptors above 1023 are common here
    try:
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


def _forget(tasks: set[asyncio.Task[Any]]) -> Any:
    """A done-callback: drop the task from ``tasks`` and consume its outcome (a reply that
    came too late, or the error that ended its connection, is of no use any more)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _resp(parts: Sequence[bytes]) -> bytes:
    """One command in the Redis protocol."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


def _result(reply: Any) -> StoreResult:
    decided, retry_ms, results, versions = reply
    return StoreResult(
        int(decided),
        int(retry_ms),
        tuple(int(r) for r in results),
        tuple(v.decode() if isinstance(v, bytes) else str(v) for v in versions),
    )


def _batches(members: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for member in members:
        batch.append(member)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
