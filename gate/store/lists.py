"""Block and allow lists in Redis at registry scale: compact buckets, atomic replacement.

Layout (gate/keys.py): a list head HASH (``version``, ``bits``, ``count``,
``refreshed_at``, ``source``, ``checksum``, ``importer``, ``imported_at``…) and, per
version, ``2**bits`` bucket SETs of 64-bit integers, each kept at about 128-256 members so
it stays an intset under Redis's DEFAULT configuration (8 bytes per entry).

Guarantees:
- ``delta`` (add/remove) is atomic per batch (``gate/lua/list_delta.lua``) and reaches
  decisions at once; it also applies to a version being built, so nothing added during a
  replacement is lost. An overfull list is resized (rebuilt with more buckets).
- ``replace`` builds a new version beside the live one and switches with ONE ``HSET`` of
  the head (in a MULTI with the end of the build marker): decisions see the old version
  whole, then the new one whole. A replacement that fails or is killed leaves the live
  list untouched; its partial buckets are removed by the next replacement, which holds a
  per-list lock (a lease, so a killed importer does not block the next one forever).
- Old versions are removed with SCAN + UNLINK in small batches (no long Redis stall;
  measured here: a RENAME over a live 10 M-member SET froze Redis 11 s, as the old value
  is freed synchronously, unless ``lazyfree-lazy-server-del yes``).
- This module's connection has a long timeout and never retries a command blindly
  (redis-py's default timeout plus retry re-sent a slow RENAME, which then failed after
  the first had succeeded).
- A replacement is written in bounded memory: entries are grouped per bucket over at most
  ``_FLUSH_MAX`` entries, then sent as one pre-built request of SADDs (each small, so
  decisions interleave) on an admin connection, while the next group is being read.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from gate.core.errors import InputError
from gate.core.keys import EntryChunk, Keyspace, ListEntry
from gate.store.client import Store, load_script, translate_error

__all__ = ["ListStore", "bits_for"]

# Aim for 128-256 entries per bucket: far below the 512 at which Redis (default
# set-max-intset-entries) would convert a bucket to a hash table.
TARGET_FILL = 256
RESIZE_FILL = 384
_DELTA_BATCH = 1000
# Entries grouped before a send: at least ~16 per bucket (fewer, larger SADDs), bounded.
_FLUSH_MIN = 200_000
_FLUSH_MAX = 1_000_000
_FLUSH_PER_BUCKET = 16
_COUNT_BATCH = 10_000
# A whole pre-built request (up to _FLUSH_MAX entries, ~2 s) must be answered in this time.
_SEND_TIMEOUT_S = 120.0
_CHUNK = 100_000
_LOCK_LEASE_MS = 15 * 60 * 1000
_SCAN_BATCH = 500


def bits_for(entries: int) -> int:
    """Bucket bits so that ``entries`` spread at most TARGET_FILL per bucket."""
    return max(0, math.ceil(math.log2(max(entries, 1) / TARGET_FILL)))


@dataclass(frozen=True, slots=True)
class Replaced:
    version: int
    bits: int
    count: int


class ListStore:
    """List storage operations on one Redis, for one keyspace."""

    def __init__(self, store: Store, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        self._client = store.admin_client
        self._delta = self._client.register_script(load_script("list_delta.lua"))
        self.where = store.where

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.where) from exc

    async def head(self, head: str) -> dict[str, str]:
        raw = await self._call(self._client.hgetall(head))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def delta(self, head: str, op: str, numbers: Iterable[ListEntry]) -> int:
        """Add or remove entries (batches of 1000, each atomic); returns how many changed."""
        changed = 0
        batch: list[str | int] = []
        bits, count = 0, 0
        for member, bucket32 in numbers:
            batch += [member, bucket32]
            if len(batch) >= 2 * _DELTA_BATCH:
                changed_now, bits, count = await self._delta_call(head, op, batch)
                changed += changed_now
                batch = []
        if batch:
            changed_now, bits, count = await self._delta_call(head, op, batch)
            changed += changed_now
        if op == "add" and count > RESIZE_FILL * 2**bits:
            await self.resize(head)
        return changed

    async def _delta_call(self, head: str, op: str, batch: list[str | int]) -> tuple[int, int, int]:
        reply = await self._call(self._delta(keys=[head], args=[op, *batch]))
        return int(reply[0]), int(reply[1]), int(reply[2])

    async def members(self, head: str) -> AsyncIterator[int]:
        """Every entry of the live version (constant memory: one bucket at a time)."""
        layout = await self.head(head)
        if "version" not in layout:
            return
        version, bits = int(layout["version"]), int(layout["bits"])
        for bucket in range(2**bits):
            key = f"{head}:v{version}:{bucket}"
            for member in await self._call(self._client.smembers(key)):
                yield int(member)

    async def replace(
        self,
        head: str,
        chunks: Iterable[EntryChunk],
        expected: int,
        meta: Mapping[str, str],
    ) -> Replaced:
        """Build a new version from ``chunks`` of entries (about ``expected`` in all), then
        switch to it."""
        lock = f"{head}:lock"
        lease = secrets.token_hex(8)
        if not await self._call(self._client.set(lock, lease, nx=True, px=_LOCK_LEASE_MS)):
            raise InputError(f"list {head}: another import or resize is running; try later")
        try:
            await self._drop_versions(head, keep=await self._live_version(head))
            version = int(await self._call(self._client.hincrby(head, "next_version", 1)))
            bits = bits_for(expected)
            await self._call(
                self._client.hset(head, mapping={"building": version, "building_bits": bits})
            )
            await self._write(head, version, bits, chunks)
            count = await self._count(head, version, bits)
            fields: dict[Any, Any] = {
                "version": version,
                "bits": bits,
                "count": count,
            }
            fields.update(meta)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(head)
                pipe.hset(head, mapping=fields)
                pipe.hdel(head, "building", "building_bits")
                before, *_ = await self._call(pipe.execute())
            old = before.get(b"version")
            if old is not None:
                await self._drop_versions(head, keep=version)
            return Replaced(version, bits, count)
        finally:
            # Release only our own lease (a slow import may have lost it).
            if (await self._call(self._client.get(lock))) == lease.encode():
                await self._call(self._client.delete(lock))

    async def resize(self, head: str) -> Replaced:
        """Rebuild the live version with buckets sized for its entry count."""
        layout = await self.head(head)
        count = int(layout.get("count", "0"))
        members = [m async for m in self.members(head)]
        meta = {
            k: v
            for k, v in layout.items()
            if k not in ("version", "bits", "count", "next_version", "building", "building_bits")
        }
        bucket32_of = self.keyspace.bucket32_of
        chunks = (
            (part, [bucket32_of(m) for m in part])
            for part in (members[i : i + _CHUNK] for i in range(0, len(members), _CHUNK))
        )
        return await self.replace(head, chunks, max(count, len(members)), meta)

    async def _live_version(self, head: str) -> int | None:
        value = await self._call(self._client.hget(head, "version"))
        return None if value is None else int(value)

    async def _write(
        self, head: str, version: int, bits: int, chunks: Iterable[EntryChunk]
    ) -> None:
        """SADD every entry into its bucket: entries grouped per bucket over a flush, each
        flush sent as one request while the next is being read (Redis works while Python
        parses: the event loop runs the send between chunks)."""
        shift = 32 - bits  # bucket32 < 2**32: with 0 bits every entry is in bucket 0
        prefix = f"{head}:v{version}:"
        flush_at = min(_FLUSH_MAX, max(_FLUSH_MIN, _FLUSH_PER_BUCKET << bits))
        groups: list[list[int]] = [[] for _ in range(1 << bits)]
        pending = 0
        in_flight: asyncio.Task[int] | None = None
        try:
            for members, buckets32 in chunks:
                for member, bucket32 in zip(members, buckets32, strict=True):
                    groups[bucket32 >> shift].append(member)
                pending += len(members)
                if pending >= flush_at:
                    request, commands = _sadd_request(prefix, groups)
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.create_task(self._send(request, commands))
                    groups = [[] for _ in range(1 << bits)]
                    pending = 0
                await asyncio.sleep(0)  # let the send in flight write and read replies
            if in_flight is not None:
                await in_flight
            if pending:
                await self._send(*_sadd_request(prefix, groups))
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
                await asyncio.gather(in_flight, return_exceptions=True)

    async def _send(self, request: bytes, commands: int) -> int:
        """Send ``commands`` pre-built commands on one admin connection and read every
        reply (an error reply raises); returns the sum of the integer replies."""
        pool = self._client.connection_pool
        connection = await self._call(pool.get_connection())  # type: ignore[no-untyped-call]
        total = 0
        try:
            async with asyncio.timeout(_SEND_TIMEOUT_S):
                await connection.send_packed_command(request)
                for _ in range(commands):
                    # One deadline for the whole request instead of one per reply.
                    total += int(await connection.read_response(timeout=math.inf))
        except BaseException as exc:
            await connection.disconnect()  # replies may be left unread: never reuse it
            if isinstance(exc, RedisError | OSError | TimeoutError):
                raise translate_error(exc, self.where) from exc
            raise
        finally:
            await pool.release(connection)
        return total

    async def _count(self, head: str, version: int, bits: int) -> int:
        total = 0
        buckets = 1 << bits
        for start in range(0, buckets, _COUNT_BATCH):
            stop = min(buckets, start + _COUNT_BATCH)
            keys = [f"{head}:v{version}:{bucket}" for bucket in range(start, stop)]
            total += await self._send(_request("SCARD", keys), len(keys))
        return total

    async def _drop_versions(self, head: str, keep: int | None) -> int:
        """UNLINK every bucket of ``head`` whose version is not ``keep`` (small batches)."""
        pattern = head.replace("{", "\\{").replace("}", "\\}") + ":v*"
        prefix = f"{head}:v".encode()
        dropped = 0
        cursor = 0
        for _ in range(10**9):  # bounded: SCAN ends when the cursor returns to 0
            cursor, keys = await self._call(
                self._client.scan(cursor, match=pattern, count=_SCAN_BATCH)
            )
            stale = [
                k
                for k in keys
                if k.startswith(prefix) and k[len(prefix) :].split(b":", 1)[0] != str(keep).encode()
            ]
            if stale:
                dropped += int(await self._call(self._client.unlink(*stale)))
            if int(cursor) == 0:
                return dropped
        return dropped


def _bulk(text: str) -> str:
    return f"${len(text.encode())}\r\n{text}\r\n"


def _request(command: str, keys: Sequence[str]) -> bytes:
    """``command key`` for every key, in the Redis protocol (RESP)."""
    head = f"*2\r\n{_bulk(command)}"
    return "".join([head + _bulk(key) for key in keys]).encode()


def _sadd_request(prefix: str, groups: Sequence[list[int]]) -> tuple[bytes, int]:
    """One ``SADD <prefix><bucket> member…`` per non-empty group, in RESP, and how many."""
    parts: list[str] = []
    commands = 0
    for bucket, members in enumerate(groups):
        if not members:
            continue
        commands += 1
        parts.append(f"*{len(members) + 2}\r\n$4\r\nSADD\r\n{_bulk(prefix + str(bucket))}")
        parts += [f"${len(m)}\r\n{m}\r\n" for m in map(str, members)]
    return "".join(parts).encode(), commands
