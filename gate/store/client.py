"""The Redis store: one atomic Lua call per decision, plus the list admin commands.

Guarantees:
- ``decide(check)`` is one EVALSHA of ``gate/lua/decide.lua`` (loaded from the package,
  registered once, re-sent by redis-py on NOSCRIPT) under ``asyncio.timeout(deadline)``;
  it returns a ``StoreResult`` or raises ``StoreUnavailable`` / ``StoreTimeout``.
- No redis-py exception leaves this module: each is translated into ``gate.errors``.
- Admin commands (list add/remove/count/export) use the same connection settings but no
  decision deadline; list entries are sent in batches of ``BATCH`` members per command.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.core.engine import StoreCheck, StoreResult
from gate.core.errors import StoreError, StoreTimeout, StoreUnavailable

__all__ = ["BATCH", "Store", "encode_checks", "load_script", "translate_error"]

BATCH = 1000
# Decisions per EVALSHA in a scrub: ~20-30 µs of Redis time each, so ~5 ms per call.
SCRUB_BATCH = 200
_ADMIN_TIMEOUT_S = 60.0


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
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return StoreTimeout(f"Redis at {where} did not answer in time")
    if isinstance(exc, RedisConnectionError | OSError):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreUnavailable(f"Redis at {where} is unreachable ({detail}); is it running?")
    return StoreError(f"Redis at {where} answered with an error: {exc}")


class Store:
    """A connection pool to one Redis (or compatible) server, and the decision script."""

    def __init__(self, url: str, deadline_s: float) -> None:
        self.url = url
        self.deadline_s = deadline_s
        # One quick reconnect on a stale pooled connection (Redis restarted); everything
        # else is bounded by the decision deadline, never by redis-py's retry schedule.
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=max(deadline_s, 0.5),
            socket_timeout=_ADMIN_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        self._decide = self._client.register_script(load_script("decide.lua"))
        self._admin_client: aioredis.Redis | None = None

    @property
    def admin_client(self) -> aioredis.Redis:
        """A second pool for list administration: long timeout, never a blind retry.

        redis-py's default (a 5 s socket timeout, then one retry) re-sent a slow RENAME of
        a big list, which then failed "no such key" after the first one had succeeded
        (measured on a 10 M-member list): admin commands are not idempotent."""
        if self._admin_client is None:
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
        return self.url.split("@", 1)[-1]

    async def close(self) -> None:
        await self._client.aclose()
        if self._admin_client is not None:
            await self._admin_client.aclose()

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(max(self.deadline_s, 1.0)):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def decide(self, check: StoreCheck) -> StoreResult:
        """Run one decision's checks atomically, within the deadline."""
        keys, args = encode_checks(check)
        try:
            async with asyncio.timeout(self.deadline_s):
                reply = await self._decide(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc
        return _result(reply[0])

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
            return [await connection.read_response() for _ in range(replies)]
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _admin(self, command: str, *args: Any) -> Any:
        try:
            async with asyncio.timeout(_ADMIN_TIMEOUT_S):
                return await self._client.execute_command(command, *args)  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

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
        evidence = check.evidence if check.record else None
        if evidence is None:
            args.append("")
            continue
        if evidence.stream not in index:
            keys.append(evidence.stream)
            index[evidence.stream] = len(keys)
        labels = "".join(f"{c.rule}\t{c.reason}\t{c.list_name}\n" for c in check.checks)
        args += [
            json.dumps(dict(evidence.known), ensure_ascii=False, separators=(",", ":"))[:-1],
            ",".join(evidence.shadow) + "\n" + labels,
            index[evidence.stream],
            evidence.min_id_ms,
        ]
    return keys, args


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
