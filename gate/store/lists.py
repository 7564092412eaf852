"""Lists in Redis at registry scale: compact buckets in every slot group, atomic replacement.

Layout (gate/core/keys.py): a list instance ``L`` has a directory entry (the authoritative
version, bits, next_version, building, refreshed_at, source, checksum, importer…) and, per
version, ``2**bits`` bucket SETs of 64-bit integers spread over the 1024 slot groups (a
bucket lies in the group of its numbers), each kept at about 128-256 members so it stays
an intset under Redis's DEFAULT configuration (8 bytes per entry). Every group's meta
replicates what a decision there needs: ``L`` (the live "version/bits"), ``L:b`` (the
version being built), ``L:r`` (refreshed_at) and ``L:n`` (the group's entries). Consent
lists are a HASH token → "granted_ms:expiry_ms" per group.

Guarantees:
- ``delta`` (add/remove) is atomic per group and batch (``lua/list_delta.lua``) and
  reaches decisions at once; while a replacement is being built it also applies to that
  version (each group's meta says so, checked in the same script), so nothing added
  during a replacement is lost. An overfull list is resized (rebuilt with more buckets,
  from the live version's members read once the new version takes deltas: an opt-out
  recorded during a resize is in it too; each copied only if still in the live version,
  atomically with the deltas (``lua/list_copy.lua``): a remove during a resize stays
  removed).
- ``replace`` builds a new version beside the live one, then switches every group's meta
  to it. On one server the switch is ONE transaction over all groups: decisions see the
  old version whole, then the new one whole. On a cluster each group switches atomically
  (a number sees the old version, then the new one) and, once ``replace`` returns, every
  group on every shard holds the new version. A replacement that fails (Redis refusing a
  write, out of memory) or that its caller refuses once built (``accept``, told both
  versions' entry counts) or that is interrupted (a cancellation: Ctrl-C, SIGTERM) is
  removed at once (best effort, bounded), the live list untouched. One that is killed
  (SIGKILL), or whose removal fails, leaves the live list untouched
  too; the directory remembers the version it was building, which the next replacement
  removes (until then deltas also write into it). One cut off while switching (a
  failover: some groups already decide with the new version, whole) fails saying so, and
  the next replacement or resize completes that switch first: a version a group's meta
  names as live is never removed. Until then the directory still names the version before
  it (its metadata, its members): ``unfinished_switch`` tells, so that no reader takes
  that version for the one deciding.
  Replacements hold a per-list lock (a lease, so a killed
  importer does not block the next one forever).
- Old versions are removed by name, once switched from (the directory names the one being
  removed, ``dropping``: a removal cut off by an error or a kill is finished by the next
  replacement or resize; an error there no longer fails an import that replaced the list),
  UNLINK in small batches per slot (no long Redis stall;
  measured here: a RENAME over a live 10 M-member SET froze Redis 11 s, as the old value
  is freed synchronously, unless ``lazyfree-lazy-server-del yes``).
- Writes go through the store's admin connections: a long timeout, never a blind retry
  of a command that may have run (redis-py's default timeout plus retry re-sent a slow
  RENAME, which then failed after the first had succeeded).
- A replacement is written in bounded memory: entries are grouped per bucket over at most
  ``_FLUSH_MAX`` entries, then sent as pre-built requests of SADDs (each small, so
  decisions interleave) while the next group is being read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gate.core.errors import GateError, InputError, OptionError, OutputError, StoreError
from gate.core.keys import (
    GROUP_BITS,
    MAX_BITS,
    MIN_BITS,
    SLOT_GROUPS,
    Keyspace,
    ListEntry,
    NumberKeys,
    list_version,
    read_list_version,
    stored_number,
)
from gate.store.client import (
    LIST_COPY,
    LIST_DELTA,
    LIST_FILL,
    MARK_MAX,
    Script,
    Store,
    cancel_point,
    translate_error,
    unreadable_list,
)

if TYPE_CHECKING:
    from gate.store._bulk import Sorted

__all__ = ["Chunk", "ListStore", "Replaced", "Switch", "bits_for"]

# Entries column-wise: (members, buckets32), as lists (``EntryChunk``) or numpy arrays.
Chunk = tuple[Any, Any]
Chunks = Iterable[Chunk] | AsyncIterable[Chunk]

# Aim for 128-256 entries per bucket: far below the 512 at which Redis (default
# set-max-intset-entries) would convert a bucket to a hash table.
TARGET_FILL = 256
RESIZE_FILL = 384
# Entries per delta batch: grouped by slot group, one script call per group.
_DELTA_BATCH = 200_000
# Entries grouped before a send: at least ~16 per bucket (fewer, larger SADDs), bounded
# (about 40 bytes an entry while it is sorted and encoded).
_FLUSH_MIN = 1_000_000
_FLUSH_MAX = 2_000_000
_FLUSH_PER_BUCKET = 16
# Entries per bucket in a flush from which one SADD per bucket beats a script per group.
_SADD_FILL = 16
_COMMANDS = 4096  # commands per admin request when reading buckets
_GROUPS_PER_REQUEST = 128  # group scripts per admin request when counting
_LOCK_LEASE_MS = 15 * 60 * 1000
_ABANDON_S = 60.0  # removing a failed replacement's version, well within the lock's lease
# Releasing the lock is tried this long (a failover: a promoted replica holds it), backoff
# from _UNLOCK_RETRY_S, doubling, up to _UNLOCK_RETRY_MAX_S.
_UNLOCK_S = 30.0
_UNLOCK_RETRY_S = 0.2
_UNLOCK_RETRY_MAX_S = 2.0
# The directory's fields of a replacement under way (the version built, its metadata).
_BUILDING = ("building", "building_bits", "building_meta")
# The directory's field naming the version a switch replaced ("version/bits") until it is
# removed: one whose removal was cut off (an error, a kill) is removed by the next.
_DROPPING = "dropping"
_UNLINK_BATCH = 500
_FIELDS_BATCH = 1000
_STALE_TRIES = 20


def bits_for(entries: int) -> int:
    """Bucket bits so that ``entries`` spread at most TARGET_FILL per bucket (never fewer
    than one bucket per slot group)."""
    return max(MIN_BITS, math.ceil(math.log2(max(entries, 1) / TARGET_FILL)))


log = logging.getLogger("callgate")


class _Busy(InputError):
    """A list's replacement lock is held: another import or resize is running."""


@dataclass(frozen=True, slots=True)
class Replaced:
    version: int
    bits: int
    count: int


@dataclass(frozen=True, slots=True)
class Switch:
    """A replacement's switch not finished: ``version`` is live in ``groups`` of the
    SLOT_GROUPS slot groups (decisions there use it), while the directory still names the
    version before it. ``meta`` is what that replacement records once switched (its
    refreshed_at, source, checksum…)."""

    version: int
    groups: int
    meta: Mapping[str, str]


@dataclass(slots=True)
class _Progress:
    """How many entries a replacement has written so far (for its error message)."""

    entries: int = 0


def _bulk(word: str | int) -> bytes:
    data = word.encode() if isinstance(word, str) else b"%d" % word
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _packed(words: Sequence[str | int]) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(_bulk(w) for w in words)


def _evalsha(sha: bytes, keys: int, args: int) -> bytes:
    """The start of an EVALSHA with ``keys`` keys and ``args`` arguments, up to its keys."""
    return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n" % (3 + keys + args, sha) + _bulk(keys)


def _joined(members: list[Any], buckets: list[Any]) -> tuple[Any, Any]:
    """Chunks of entry arrays as one pair of arrays."""
    import numpy as np

    return np.concatenate(members), np.concatenate(buckets)


async def _each(chunks: Chunks) -> AsyncIterator[Chunk]:
    """Each chunk; a cancellation a redis-py send dropped stops the job here."""
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            cancel_point()
            yield chunk
    else:
        for chunk in chunks:
            cancel_point()
            yield chunk


def _read_version(
    directory: Mapping[str, str], fields: tuple[str, str] = ("version", "bits")
) -> tuple[int, int]:
    """The (version, bits) the directory entry holds in ``fields``; ``ValueError`` if it
    is not what callgate writes there (see ``keys.stored_number``)."""
    version, bits = fields
    return (
        stored_number(version, directory.get(version), 0, 10**18),
        stored_number(bits, directory.get(bits), MIN_BITS, MAX_BITS),
    )


class _Versions:
    """The (live, building) versions a delta sends to each group: the directory's, or
    what a group's meta answered instead (a replacement started or switched)."""

    def __init__(self, directory: Mapping[str, str], where: str, key: str) -> None:
        try:
            live = list_version(*_read_version(directory))
            building = ""
            if "building" in directory:
                building = list_version(*_read_version(directory, _BUILDING[:2]))
        except ValueError as exc:
            raise unreadable_list(where, key, exc) from None
        self.default = (live, building)
        self.of: dict[int, tuple[str, str]] = {}

    def get(self, group: int) -> tuple[str, str]:
        return self.of.get(group, self.default)


class ListStore:
    """List and consent storage operations, for one keyspace."""

    def __init__(self, store: Store, keyspace: Keyspace) -> None:
        self.store = store
        self.keyspace = keyspace
        self._client = store.admin_client
        # How far this process's replacement of a list got: "switching" (the switch sent,
        # its outcome not known yet), then "switched" (the directory names the new
        # version). What an interrupted import says of the list.
        self.phase: dict[str, str] = {}

    # --- directory and group meta -----------------------------------------------------

    async def directory(self, list_id: str) -> dict[str, str]:
        """The list's directory entry (empty: the list was never written)."""
        raw = await self._call(self._client.hgetall(self.keyspace.directory_key(list_id)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def live(self, list_id: str, directory: Mapping[str, str]) -> tuple[int, int]:
        """The (version, bits) of the directory entry's live version, or ``StoreError``
        naming the key and the field callgate did not write (by hand, a bad migration):
        read as numbers, they raised past the CLI's one-line errors (text), or sized a
        read of 2**bits buckets (bits past 32). An import ``--replace`` writes them anew."""
        try:
            return _read_version(directory)
        except ValueError as exc:
            key = self.keyspace.directory_key(list_id)
            raise unreadable_list(self.store.where, key, exc) from None

    async def unfinished_switch(
        self, list_id: str, directory: Mapping[str, str] | None = None
    ) -> Switch | None:
        """The switch to the version being built, if some groups' meta already name it
        live while the directory does not: an import in its switch phase, or one cut off
        there (a failover) that the next replacement completes (``_settle``). None, at the
        cost of the directory read alone (``directory``, if given, is that read), when no
        replacement is under way."""
        if directory is None:
            directory = await self.directory(list_id)
        if "building" not in directory:
            return None
        try:
            version, bits = _read_version(directory, _BUILDING[:2])
        except ValueError as exc:
            key = self.keyspace.directory_key(list_id)
            raise unreadable_list(self.store.where, key, exc) from None
        building = list_version(version, bits).encode()
        live = await self._groups([["HGET", "{meta}", list_id]], atomic=False)
        groups = sum(1 for named in live if named == building)
        if not groups:
            return None
        meta: dict[str, str] = json.loads(directory.get("building_meta") or "{}")
        return Switch(version, groups, meta)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise translate_error(exc, self.store.where) from exc

    async def _groups(self, commands: Sequence[Sequence[str | int]], atomic: bool) -> list[Any]:
        """The same command (its key's ``{g}`` replaced by each group's meta) in every slot
        group: one transaction on one server when ``atomic``, else pipelined."""
        packed: list[tuple[str, bytes]] = []
        for group in range(SLOT_GROUPS):
            meta = self.keyspace.meta_key(group)
            for words in commands:
                packed.append((meta, _packed([meta if w == "{meta}" else w for w in words])))
        if atomic and not self.store.cluster:
            first = self.keyspace.meta_key(0)
            replies = await self.store.send_packed(
                [(first, _packed(["MULTI"])), *packed, (first, _packed(["EXEC"]))]
            )
            return list(replies[-1])
        return await self.store.send_packed(packed)

    async def ensure(self, list_id: str) -> dict[str, str]:
        """The list's directory entry, creating version 1 (and every group's meta) if the
        list does not exist yet."""
        directory = await self.directory(list_id)
        if "version" in directory:
            return directory
        key = self.keyspace.directory_key(list_id)
        async with self._client.pipeline(transaction=not self.store.cluster) as pipe:
            pipe.hsetnx(key, "version", 1)
            pipe.hsetnx(key, "bits", MIN_BITS)
            pipe.hsetnx(key, "next_version", 1)
            await self._call(pipe.execute())
        directory = await self.directory(list_id)
        live = list_version(*self.live(list_id, directory))
        await self._groups([["HSETNX", "{meta}", list_id, live]], atomic=False)
        return directory

    async def set_meta(self, list_id: str, fields: Mapping[str, str]) -> None:
        """Record metadata on the list (refreshed_at, source, checksum…); refreshed_at is
        also replicated to every group's meta (freshness rules read it there)."""
        if not fields:
            return
        await self._call(
            self._client.hset(self.keyspace.directory_key(list_id), mapping=dict(fields))
        )
        if "refreshed_at" in fields:
            await self._groups(
                [["HSET", "{meta}", f"{list_id}:r", fields["refreshed_at"]]], atomic=True
            )

    async def count(self, list_id: str, recount: Mapping[str, str] | None = None) -> int:
        """Entries of the live version: the sum of every group's ``L:n``. A group's that is
        not what callgate writes there (text, by hand or a bad migration) is a
        ``StoreError`` naming the key and the field: read as a number, it raised past the
        CLI's one-line errors (``callgate list info``, ``list count``, the API's list
        routes). An import ``--replace`` writes every group's anew: it passes its
        ``recount`` (the directory entry), and the live version's buckets are counted
        instead (0 if the directory names no readable version either)."""
        field = f"{list_id}:n"
        replies = await self._groups([["HGET", "{meta}", field]], atomic=False)
        total = 0
        for group, reply in enumerate(replies):
            if reply is None:  # no entry of the list ever reached this group
                continue
            try:
                total += stored_number(field, reply, 0, 10**18)
            except ValueError as exc:
                if recount is None:
                    key = self.keyspace.meta_key(group)
                    where = self.store.where
                    raise unreadable_list(where, key, exc, field, "entry count") from None
                try:
                    version, bits = _read_version(recount)
                except ValueError:
                    return 0
                return sum(await self._count_groups(list_id, version, bits))
        return total

    def entries(self, runs: Iterable[tuple[bytes, Sequence[bytes]]]) -> Chunk:
        """The entries of the numbers ``prefix + rest`` of ``runs`` (ASCII E.164), as
        arrays (keyed hashes computed here, nothing kept per number)."""
        from gate.store._bulk import entries_of

        return entries_of(self.keyspace, runs)

    # --- deltas -----------------------------------------------------------------------

    async def delta(self, list_id: str, op: str, numbers: Iterable[ListEntry]) -> int:
        """Add or remove entries (each group's share atomically); returns how many
        changed."""
        pairs = list(numbers)
        chunk = ([m for m, _ in pairs], [b for _, b in pairs])
        return await self.delta_chunks(list_id, op, [chunk])

    async def delta_chunks(
        self,
        list_id: str,
        op: str,
        chunks: Chunks,
        expected: int = 0,
    ) -> int:
        """Add or remove chunks of entries; returns how many changed. Entries are sent by
        batches of about ``_DELTA_BATCH``, each group's share of a batch atomically
        (``lua/list_delta.lua``), one batch on its way to Redis while the next is read.
        ``expected`` (entries to come, at most) lets an add grow the list's buckets
        first, so that they never outgrow their compact encoding on the way."""

        directory = await (self.ensure(list_id) if op == "add" else self.directory(list_id))
        if "version" not in directory:
            return 0
        if op == "add" and expected:
            directory = await self._grow(list_id, directory, expected)
        versions = _Versions(directory, self.store.where, self.keyspace.directory_key(list_id))
        tally = [0, 0]  # changed, the most entries a group holds
        progress = _Progress()

        async def send(batch: Sorted) -> None:
            await self._delta_batch(list_id, op, batch, versions, tally)
            progress.entries += len(batch)

        try:
            await self._pipelined(chunks, _DELTA_BATCH, send)
        except StoreError as exc:
            if not progress.entries:
                raise
            # Batches went in before the failure: they are in force (an import cut off
            # is not undone), which the error alone did not say.
            done = "added" if op == "add" else "removed"
            error = type(exc)(
                f"list {list_id}: the update stopped with {progress.entries} entries "
                f"confirmed {done} ({tally[0]} of them changed the list), the others maybe "
                f"not; run it again to apply the rest (it is idempotent): {exc}"
            )
            error.confirmed = progress.entries
            raise error from exc
        changed, fullest = tally
        # A group holds 2**(bits - GROUP_BITS) buckets; resize when one of them overfills.
        if op == "add":
            directory = await self.directory(list_id)
            if fullest > RESIZE_FILL << (self.live(list_id, directory)[1] - GROUP_BITS):
                await self._resize_unless_busy(list_id)
        return changed

    async def _resize_unless_busy(self, list_id: str) -> None:
        """``resize`` an overfull list, unless a replacement or resize of it is running:
        the entries are in (in the version it builds too), which its switch sizes; the next
        add resizes the list if it is still overfull. Refused (``_Busy``), an add that was
        done said "another import or resize is running" (an opt-out of the API a 400,
        though recorded; an import the same, once done)."""
        if await self._call(self._client.exists(self.keyspace.lock_key(list_id))):
            return
        try:
            await self.resize(list_id)
        except _Busy:  # taken meanwhile
            log.info("list %s: not resized now (another import or resize is running)", list_id)

    async def _grow(self, list_id: str, directory: dict[str, str], expected: int) -> dict[str, str]:
        """Resize the list first if ``expected`` more entries would overfill its buckets
        and the list is smaller than that (an import into a small list: resizing it costs
        less than the import); the directory as it is then."""
        bits = self.live(list_id, directory)[1]
        count = await self.count(list_id)
        if count >= expected or count + expected <= RESIZE_FILL << bits:
            return directory  # growing would cost more than the import (or is not needed)
        lock = self.keyspace.lock_key(list_id)
        if await self._call(self._client.exists(lock)):
            return directory  # a replacement is running: its switch decides the buckets
        try:
            await self.resize(list_id, count + expected)
        except _Busy:  # one started meanwhile
            return directory
        return await self.directory(list_id)

    async def _delta_batch(
        self, list_id: str, op: str, batch: Sorted, versions: _Versions, tally: list[int]
    ) -> None:
        """Apply ``batch`` (each group's share in one script call); adds to ``tally`` the
        entries changed and the most entries a group now holds."""
        groups = batch.layout(GROUP_BITS, GROUP_BITS).groups()
        for _ in range(_STALE_TRIES):
            requests = [self._delta_request(list_id, op, batch, g, versions) for g in groups]
            replies = await self.store.send_packed(requests, LIST_DELTA)
            stale: list[int] = []
            for group, reply in zip(groups, replies, strict=True):
                if reply[0] == -2:  # the group's entry count is not callgate's
                    field = f"{list_id}:n"
                    shown = reply[1][:40].decode("utf-8", "replace")
                    exc = ValueError(f"{field} {shown!r}, not a whole number")
                    key = self.keyspace.meta_key(group)
                    raise unreadable_list(self.store.where, key, exc, field, "entry count")
                if int(reply[0]) < 0:  # a replacement started or switched: its versions
                    # Read as the directory's are: a meta's version callgate did not write
                    # raised ValueError (a traceback) when the next request was built.
                    versions.of[group] = (
                        self._meta_version(list_id, group, reply[1]),
                        self._meta_version(list_id, group, reply[2], ":b"),
                    )
                    stale.append(group)
                else:
                    tally[0] += int(reply[0])
                    tally[1] = max(tally[1], int(reply[1]))
            if not stale:
                return
            groups = stale
            await asyncio.sleep(0.01)
        raise StoreError(f"list {list_id}: versions kept changing during the update; try again")

    def _meta_version(self, list_id: str, group: int, held: bytes, suffix: str = "") -> str:
        """A version (field ``list_id + suffix``) as ``group``'s meta holds it, checked
        ("version/bits", or "" for none); else ``StoreError`` naming the key and field."""
        if not held:
            return ""
        try:
            version = list_version(*read_list_version(held))
            if version.encode() != held:  # "01/10": sent back as is, it never matched
                raise ValueError(f"list version {held[:40].decode()!r}, not version/bits")
            return version
        except ValueError as exc:
            key = self.keyspace.meta_key(group)
            raise unreadable_list(self.store.where, key, exc, list_id + suffix) from None

    def _delta_request(
        self, list_id: str, op: str, batch: Sorted, group: int, versions: _Versions
    ) -> tuple[str, bytes]:
        """The EVALSHA of list_delta.lua for ``group``'s share of ``batch``."""
        live, building = versions.get(group)
        meta = self.keyspace.meta_key(group)
        keys = [_bulk(meta)]
        counts: list[bytes] = []
        sizes = []
        for version in (live, building):
            if not version:
                sizes.append(0)
                continue
            number, bits = (int(v) for v in version.split("/"))
            layout = batch.layout(bits, GROUP_BITS)
            first, last = layout.bucket_at[group], layout.bucket_at[group + 1]
            keys += self._bucket_keys(list_id, number, bits, layout.buckets[first:last])
            counts.append(layout.counts[layout.count_offsets[first] : layout.count_offsets[last]])
            sizes.append(last - first)
        entry_at = batch.layout(GROUP_BITS, GROUP_BITS).entry_at
        start, end = entry_at[group], entry_at[group + 1]
        args = [_bulk(w) for w in (op, list_id, live, building, sizes[0], sizes[1])]
        head = _evalsha(LIST_DELTA.sha, len(keys), len(args) + sum(sizes) + end - start)
        body = b"".join([head, *keys, *args, *counts, batch.members_resp(start, end)])
        return meta, body

    def _bucket_keys(
        self, list_id: str, version: int, bits: int, buckets: Sequence[int]
    ) -> list[bytes]:
        """The RESP bulk strings of these buckets' keys."""
        bucket_key = self.keyspace.bucket_key
        return [_bulk(bucket_key(list_id, version, bits, b)) for b in buckets]

    # --- reading --------------------------------------------------------------------

    def _buckets(self, list_id: str, version: int, bits: int) -> list[str]:
        return [self.keyspace.bucket_key(list_id, version, bits, b) for b in range(1 << bits)]

    async def members(self, list_id: str) -> AsyncIterator[int]:
        """Every entry of the live version (bounded memory: a few thousand buckets at once).
        A version replaced meanwhile (another import's switch, which then removes its
        buckets: those not read yet were gone, the listing silently short) is an
        ``InputError`` once the entries read are given."""
        directory = await self.directory(list_id)
        if "version" not in directory:
            return
        version, bits = self.live(list_id, directory)
        keys = self._buckets(list_id, version, bits)
        for start in range(0, len(keys), _COMMANDS):
            chunk = keys[start : start + _COMMANDS]
            replies = await self.store.send_packed([(k, _packed(["SMEMBERS", k])) for k in chunk])
            for members in replies:
                for member in members:
                    yield int(member)
        after = await self.directory(list_id)
        if (after.get("version"), after.get("bits")) != (str(version), str(bits)):
            raise InputError(
                f"list {list_id}: replaced by another import while its entries were read "
                "(those not read yet were removed): the listing is incomplete; run it again"
            )

    async def _count_groups(self, list_id: str, version: int, bits: int) -> list[int]:
        """Entries of a version per slot group (list_fill.lua counting: one call a group)."""
        per_group = 1 << (bits - GROUP_BITS)
        zeros = _bulk(0) * per_group
        requests = []
        for group in range(SLOT_GROUPS):
            buckets = range(group * per_group, (group + 1) * per_group)
            keys = self._bucket_keys(list_id, version, bits, buckets)
            body = b"".join([_evalsha(LIST_FILL.sha, per_group, per_group), *keys, zeros])
            requests.append((self.keyspace.meta_key(group), body))
        counts: list[int] = []
        for start in range(0, SLOT_GROUPS, _GROUPS_PER_REQUEST):
            part = requests[start : start + _GROUPS_PER_REQUEST]
            counts += [int(held) for _, held in await self.store.send_packed(part, LIST_FILL)]
        return counts

    # --- replacement ------------------------------------------------------------------

    async def replace(
        self,
        list_id: str,
        chunks: Chunks,
        expected: int,
        meta: Mapping[str, str],
        accept: Callable[[int, int], None] | None = None,
    ) -> Replaced:
        """Build a new version from ``chunks`` of entries (about ``expected`` in all), then
        switch to it, unless ``accept`` (told the new version's entries, then the live
        one's) raises or building fails: then the new version is removed, the live one
        kept, and the error goes to the caller (a Redis failure saying how many entries
        were written)."""
        async with self._locked(list_id):
            directory = await self._settle(list_id)
            return await self._replace(list_id, directory, chunks, expected, meta, accept)

    @asynccontextmanager
    async def _locked(self, list_id: str) -> AsyncIterator[None]:
        """Hold the list's replacement lock (a lease) for the block, or ``InputError``."""
        lock = self.keyspace.lock_key(list_id)
        lease = secrets.token_hex(8)
        try:
            # Inside the try: a cancellation while the SET's reply is on its way (the lock
            # taken, the reply never read) still releases it below.
            if not await self._call(self._client.set(lock, lease, nx=True, px=_LOCK_LEASE_MS)):
                # Its holder may be gone (SIGKILL, a lost host): say when the lease ends.
                left_ms = await self._call(self._client.pttl(lock))
                raise _Busy(
                    f"list {list_id}: another import or resize is running, or one was killed "
                    f"(its lock expires within {max(1, math.ceil(left_ms / 60_000))} min); "
                    "try later"
                )
            yield
        finally:
            await self._unlock(list_id, lock, lease)

    async def _unlock(self, list_id: str, lock: str, lease: str) -> None:
        """Release only our own lease (a slow import may have lost it). Redis unreachable
        (a failover under way: the lock is on the promoted replica too) is tried again,
        with backoff, for up to ``_UNLOCK_S``: else every import of the list would be
        refused until the lease ends. A failure is logged, not raised: the operation's
        own outcome or error stands."""
        delay = _UNLOCK_RETRY_S
        give_up = time.monotonic() + _UNLOCK_S
        error: StoreError | None = None
        for _ in range(int(_UNLOCK_S / _UNLOCK_RETRY_S) + 1):
            try:
                if (await self._call(self._client.get(lock))) == lease.encode():
                    await self._call(self._client.delete(lock))
                return
            except StoreError as exc:
                error = exc
            if time.monotonic() + delay > give_up:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, _UNLOCK_RETRY_MAX_S)
        log.warning(
            "list %s: its import lock was not released (%s); it expires within %d min",
            list_id,
            error,
            _LOCK_LEASE_MS // 60_000,
        )

    async def _replace(
        self,
        list_id: str,
        directory: Mapping[str, str],
        chunks: Chunks,
        expected: int,
        meta: Mapping[str, str],
        accept: Callable[[int, int], None] | None,
        copy_of: tuple[int, int] | None = None,
    ) -> Replaced:
        """``replace`` under the lock, ``directory`` the list's entry as ``_settle`` left it.
        ``copy_of`` (a resize: the live version and bits ``chunks`` are read from): only
        entries still in that version when written are, ``_write``."""
        key = self.keyspace.directory_key(list_id)
        version = int(await self._call(self._client.hincrby(key, "next_version", 1)))
        bits = bits_for(expected)
        building = list_version(version, bits)
        progress = _Progress()
        built = False
        try:
            await self._call(
                self._client.hset(
                    key,
                    mapping={
                        "building": version,
                        "building_bits": bits,
                        # What ``_switched`` records: a switch cut off is completed with it.
                        "building_meta": json.dumps(dict(meta)),
                    },
                )
            )
            await self._groups([["HSET", "{meta}", f"{list_id}:b", building]], atomic=False)
            await self._write(list_id, version, bits, chunks, progress, copy_of)
            counts = await self._count_groups(list_id, version, bits)
            built = True
            if accept is not None:
                accept(sum(counts), await self.count(list_id, directory))
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Interrupted (Ctrl-C, SIGTERM): removed too (bounded), as the
            # lock is released; left, it held its memory for good (registry-size: GBs,
            # toward maxmemory) and took every opt-out a second time, until the next one.
            await self._give_up(list_id, version, bits)
            raise
        except Exception as exc:
            # Left in place, a partial version would hold its memory and take every
            # delta (an opt-out) too, until the next replacement.
            await self._give_up(list_id, version, bits)
            told = isinstance(exc, OptionError | OutputError)  # what became of the list said
            if built or told or not isinstance(exc, GateError):
                raise
            if not isinstance(exc, StoreError):  # the file (not UTF-8…), a worker killed
                what = f"list {list_id}: the import stopped, the list unchanged: {exc}"
                raise type(exc)(what) from exc
            raise type(exc)(
                f"list {list_id}: the import stopped with {progress.entries} of about "
                f"{expected} entries confirmed written, the list unchanged: {exc}"
            ) from exc
        try:
            self.phase[list_id] = "switching"
            await self._switch(list_id, building, counts, meta.get("refreshed_at"))
            await self._switched(list_id, version, bits, meta, directory)
            self.phase[list_id] = "switched"
        except StoreError as exc:
            raise type(exc)(
                f"list {list_id}: the import was cut off while switching to its new "
                f"version ({sum(counts)} entries), which part of the list may already "
                f"use; the next import or resize of the list completes the switch: {exc}"
            ) from exc
        await self._drop_replaced(list_id)
        return Replaced(version, bits, sum(counts))

    async def _switched(
        self,
        list_id: str,
        version: int,
        bits: int,
        meta: Mapping[str, str],
        directory: Mapping[str, str],
    ) -> None:
        """Record in the directory that every group has switched to ``version``, and that
        the version ``directory`` named, if another, is to be removed (``_DROPPING``: the
        next replacement removes what its removal left, were it cut off)."""
        fields: dict[str, Any] = {"version": version, "bits": bits, **meta}
        if "version" in directory:
            try:
                before = _read_version(directory)
            except ValueError as exc:  # written anew here: the import is the way to fix it
                log.warning(
                    "list %s: the version it replaced is unreadable (%s), so its buckets "
                    "are left in Redis",
                    list_id,
                    exc,
                )
            else:
                if before[0] != version:
                    fields[_DROPPING] = list_version(*before)
        key = self.keyspace.directory_key(list_id)
        async with self._client.pipeline(transaction=not self.store.cluster) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.hdel(key, *_BUILDING)
            await self._call(pipe.execute())

    async def _drop_replaced(self, list_id: str) -> None:
        """Remove the version a switch replaced (``_DROPPING``), if any. Its failure is
        logged, not raised: the list is replaced (an error said the import had failed),
        and the next replacement removes it."""
        key = self.keyspace.directory_key(list_id)
        try:
            dropping = await self._call(self._client.hget(key, _DROPPING))
            if dropping is None:
                return
            try:
                version, bits = read_list_version(dropping)
            except ValueError as exc:  # not callgate's: nothing to remove by that name
                log.warning("list %s: %s is unreadable (%s); forgotten", list_id, _DROPPING, exc)
            else:
                await self._drop(list_id, version, bits)
            await self._call(self._client.hdel(key, _DROPPING))
        except (StoreError, RedisError, OSError) as exc:
            log.warning(
                "list %s: the version it replaced was not all removed (%s); the next "
                "replacement removes it",
                list_id,
                exc,
            )

    async def _settle(self, list_id: str) -> dict[str, str]:
        """The directory entry once an earlier replacement that did not end is dealt with
        (the caller holds the list's lock). Its version was only partly written (a killed
        import): removed. Or it was whole and its switch was cut off (a failover, a lost
        connection: some groups' meta already name it, and decisions and opt-outs there
        use it alone): the switch is completed and the version before it removed, never
        the version in force."""
        directory = await self.directory(list_id)
        if _DROPPING in directory:  # a version replaced, not all removed
            await self._drop_replaced(list_id)
        if "building" not in directory:
            return directory
        try:
            version, bits = _read_version(directory, _BUILDING[:2])
        except ValueError as exc:  # not callgate's: stop building it, nothing to remove
            log.warning(
                "list %s: the version being built is unreadable (%s); forgotten", list_id, exc
            )
            await self._groups([["HDEL", "{meta}", f"{list_id}:b"]], atomic=False)
            await self._call(self._client.hdel(self.keyspace.directory_key(list_id), *_BUILDING))
            return await self.directory(list_id)
        switch = await self.unfinished_switch(list_id, directory)
        if switch is None:
            await self._drop(list_id, version, bits)
            return directory
        log.warning(
            "list %s: completing the switch to version %d that an earlier import began",
            list_id,
            version,
        )
        # The cut-off import's metadata (its refreshed_at, source, checksum): the version
        # in force is its file, whatever the directory said before.
        meta = dict(switch.meta)
        counts = await self._count_groups(list_id, version, bits)
        await self._switch(list_id, list_version(version, bits), counts, meta.get("refreshed_at"))
        await self._switched(list_id, version, bits, meta, directory)
        await self._drop_replaced(list_id)
        return await self.directory(list_id)

    async def _give_up(self, list_id: str, version: int, bits: int) -> None:
        """``_abandon``, bounded by ``_ABANDON_S``; a failure leaves the version to the
        next replacement (the directory still names it) and is logged."""
        try:
            async with asyncio.timeout(_ABANDON_S):
                await self._abandon(list_id, version, bits)
        except (GateError, RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "list %s: the partial version %d was not removed (%s); the next replacement "
                "removes it",
                list_id,
                version,
                exc,
            )

    async def _abandon(self, list_id: str, version: int, bits: int) -> None:
        """Stop building ``version`` (deltas no longer write to it), then remove it."""
        await self._groups([["HDEL", "{meta}", f"{list_id}:b"]], atomic=False)
        directory = self.keyspace.directory_key(list_id)
        await self._call(self._client.hdel(directory, *_BUILDING))
        await self._drop(list_id, version, bits)

    async def _switch(
        self, list_id: str, live: str, counts: list[int], refreshed: str | None
    ) -> None:
        """Every group's meta to the new version (one transaction on one server)."""
        packed: list[tuple[str, bytes]] = []
        for group in range(SLOT_GROUPS):
            meta = self.keyspace.meta_key(group)
            words: list[str | int] = ["HSET", meta, list_id, live, f"{list_id}:n", counts[group]]
            if refreshed is not None:
                words += [f"{list_id}:r", refreshed]
            packed.append((meta, _packed(words)))
            packed.append((meta, _packed(["HDEL", meta, f"{list_id}:b"])))
        if self.store.cluster:
            await self.store.send_packed(packed)
            return
        first = self.keyspace.meta_key(0)
        await self.store.send_packed(
            [(first, _packed(["MULTI"])), *packed, (first, _packed(["EXEC"]))]
        )

    async def resize(self, list_id: str, entries: int = 0) -> Replaced:
        """Rebuild the live version with buckets sized for its entry count (or for
        ``entries``, if more: entries about to be added)."""
        async with self._locked(list_id):
            # Settled first: the members are those of the version in force.
            directory = await self._settle(list_id)
            meta = {
                k: v
                for k, v in directory.items()
                if k not in ("version", "bits", "next_version", _DROPPING, *_BUILDING)
            }
            expected = max(await self.count(list_id), entries)
            # Read as ``_replace`` writes them, once the new version takes deltas: an entry
            # added meanwhile is in what is read or is added to it. Read before (as it was),
            # an opt-out recorded while millions of members were read went to the live
            # version alone, and was lost at the switch.
            chunks = self._rebucketed(list_id)
            # Copied only if still live when written: an entry removed after it was read
            # (from both versions, before the copy) was put back into the new version, an
            # allow list's exemption taken off kept in force.
            live = None
            if "version" in directory:
                live = self.live(list_id, directory)
            return await self._replace(list_id, directory, chunks, expected, meta, None, live)

    async def _rebucketed(self, list_id: str) -> AsyncIterator[Chunk]:
        """The live version's members with their bucket32, by chunks of ``_FLUSH_MIN``."""
        part: list[int] = []
        async for member in self.members(list_id):
            part.append(member)
            if len(part) >= _FLUSH_MIN:
                yield self._rebucketed_chunk(part)
                part = []
        if part:
            yield self._rebucketed_chunk(part)

    def _rebucketed_chunk(self, part: list[int]) -> Chunk:
        """Stored members with their bucket32."""
        from gate.store._bulk import arrays

        if self.keyspace.hashed:  # the bucket is in the member's top 32 bits
            values, _ = arrays(part, [])
            return values, (values.view("uint64") >> 32).astype("uint32")
        bucket32_of = self.keyspace.bucket32_of
        return part, [bucket32_of(m) for m in part]

    async def _write(
        self,
        list_id: str,
        version: int,
        bits: int,
        chunks: Chunks,
        progress: _Progress,
        copy_of: tuple[int, int] | None = None,
    ) -> None:
        """SADD every entry into its bucket: entries gathered over a flush (sorted by
        bucket), sent as one ``lua/list_fill.lua`` call per slot group while the next flush
        is being read (Redis works while Python parses); ``progress`` counts the entries
        of the flushes Redis took. With ``copy_of`` (the live version and bits, a resize),
        each group's share goes through ``lua/list_copy.lua`` instead: only the entries
        still in that version are written (one removed since it was read stays out)."""

        flush_at = min(_FLUSH_MAX, max(_FLUSH_MIN, _FLUSH_PER_BUCKET << bits))

        async def send(batch: Sorted) -> None:
            if copy_of is None:
                await self.store.send_packed(*self._fills(list_id, version, bits, batch))
            else:
                await self.store.send_packed(
                    self._copies(list_id, copy_of, (version, bits), batch), LIST_COPY
                )
            progress.entries += len(batch)

        await self._pipelined(chunks, flush_at, send)

    async def _pipelined(
        self, chunks: Chunks, flush_at: int, send: Callable[[Sorted], Coroutine[Any, Any, None]]
    ) -> None:
        """The entries of ``chunks`` gathered into batches of about ``flush_at`` (sorted by
        bucket), each given to ``send`` while the next is read: one batch on its way to
        Redis at a time, so that Redis works while Python parses."""
        from gate.store._bulk import Sorted, arrays

        members: list[Any] = []
        buckets: list[Any] = []
        pending = 0
        in_flight: asyncio.Task[None] | None = None
        hashed = self.keyspace.hashed
        try:
            async for chunk_members, chunk_buckets in _each(chunks):
                part = arrays(chunk_members, chunk_buckets)
                members.append(part[0])
                buckets.append(part[1])
                pending += len(part[0])
                if pending >= flush_at:
                    batch = Sorted(*_joined(members, buckets), hashed)
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.create_task(send(batch))
                    members, buckets, pending = [], [], 0
                await asyncio.sleep(0)  # let the batch in flight write and read replies
            if in_flight is not None:
                await in_flight
            if pending:
                await send(Sorted(*_joined(members, buckets), hashed))
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
                await asyncio.gather(in_flight, return_exceptions=True)

    def _fills(
        self, list_id: str, version: int, bits: int, batch: Sorted
    ) -> tuple[list[tuple[str, bytes]], Script | None]:
        """The requests that add ``batch`` to its buckets: one SADD per bucket when the
        batch fills them well (Redis's cheapest way), else one list_fill.lua call per slot
        group (fewer commands and replies when buckets are many)."""
        layout = batch.layout(bits, GROUP_BITS)
        out = []
        if len(batch) >= _SADD_FILL << bits:
            for at, bucket in enumerate(layout.buckets):
                start, end = layout.starts[at], layout.starts[at + 1]
                key = self.keyspace.bucket_key(list_id, version, bits, bucket)
                head = b"*%d\r\n$4\r\nSADD\r\n" % (end - start + 2) + _bulk(key)
                out.append((key, head + batch.members_resp(start, end)))
            return out, None
        for group in layout.groups():
            first, last = layout.bucket_at[group], layout.bucket_at[group + 1]
            start, end = layout.entry_at[group], layout.entry_at[group + 1]
            keys = self._bucket_keys(list_id, version, bits, layout.buckets[first:last])
            counts = layout.counts[layout.count_offsets[first] : layout.count_offsets[last]]
            head = _evalsha(LIST_FILL.sha, len(keys), len(keys) + end - start)
            body = b"".join([head, *keys, counts, batch.members_resp(start, end)])
            out.append((self.keyspace.meta_key(group), body))
        return out, LIST_FILL

    def _copies(
        self, list_id: str, source: tuple[int, int], target: tuple[int, int], batch: Sorted
    ) -> list[tuple[str, bytes]]:
        """The ``lua/list_copy.lua`` calls (one per slot group) that copy ``batch`` from
        version ``source`` into version ``target`` (each a (version, bits)), those entries
        still in ``source`` only."""
        layouts = [batch.layout(bits, GROUP_BITS) for _, bits in (source, target)]
        entry_at = batch.layout(GROUP_BITS, GROUP_BITS).entry_at
        out = []
        for group in batch.layout(GROUP_BITS, GROUP_BITS).groups():
            keys: list[bytes] = []
            counts: list[bytes] = []
            sizes: list[int] = []
            for (version, bits), layout in zip((source, target), layouts, strict=True):
                first, last = layout.bucket_at[group], layout.bucket_at[group + 1]
                keys += self._bucket_keys(list_id, version, bits, layout.buckets[first:last])
                offsets = layout.count_offsets
                counts.append(layout.counts[offsets[first] : offsets[last]])
                sizes.append(last - first)
            start, end = entry_at[group], entry_at[group + 1]
            args = [_bulk(sizes[0]), _bulk(sizes[1])]
            head = _evalsha(LIST_COPY.sha, len(keys), len(args) + sum(sizes) + end - start)
            body = b"".join([head, *keys, *args, *counts, batch.members_resp(start, end)])
            out.append((self.keyspace.meta_key(group), body))
        return out

    async def _drop(self, list_id: str, version: int, bits: int) -> None:
        """UNLINK every bucket of a version, by name, a few hundred of one slot at a time."""
        keys = self._buckets(list_id, version, bits)
        per_group = 1 << (bits - GROUP_BITS)
        commands: list[tuple[str, bytes]] = []
        for start in range(0, len(keys), per_group):  # the buckets of one group
            group_keys = keys[start : start + per_group]
            for at in range(0, len(group_keys), _UNLINK_BATCH):
                part = group_keys[at : at + _UNLINK_BATCH]
                commands.append((part[0], _packed(["UNLINK", *part])))
            if len(commands) >= 64:
                await self.store.send_packed(commands)
                commands = []
        if commands:
            await self.store.send_packed(commands)

    # --- consents ---------------------------------------------------------------------

    async def consent_set(self, list_id: str, items: Iterable[tuple[NumberKeys, str]]) -> int:
        """HSET token → value in each number's group; returns how many were new."""
        by_group: dict[int, list[tuple[str, str]]] = {}
        for number, value in items:
            by_group.setdefault(number.group, []).append((number.token, value))
        commands = []
        for group, pairs in by_group.items():
            key = self.keyspace.consent_key(group, list_id)
            for start in range(0, len(pairs), _FIELDS_BATCH):
                words: list[str | int] = ["HSET", key]
                for token, value in pairs[start : start + _FIELDS_BATCH]:
                    words += [token, value]
                commands.append((key, _packed(words)))
        return sum(int(r) for r in await self.store.send_packed(commands))

    async def consent_remove(self, list_id: str, numbers: Iterable[NumberKeys]) -> int:
        by_group: dict[int, list[str]] = {}
        for number in numbers:
            by_group.setdefault(number.group, []).append(number.token)
        commands = []
        for group, tokens in by_group.items():
            key = self.keyspace.consent_key(group, list_id)
            for start in range(0, len(tokens), _FIELDS_BATCH):
                commands.append(
                    (key, _packed(["HDEL", key, *tokens[start : start + _FIELDS_BATCH]]))
                )
        return sum(int(r) for r in await self.store.send_packed(commands))

    async def consent_count(self, list_id: str) -> int:
        keys = [self.keyspace.consent_key(g, list_id) for g in range(SLOT_GROUPS)]
        replies = await self.store.send_packed([(k, _packed(["HLEN", k])) for k in keys])
        return sum(int(r) for r in replies)

    async def consent_tokens(self, list_id: str) -> AsyncIterator[str]:
        """Every token of a consent list (one group at a time)."""
        for group in range(SLOT_GROUPS):
            key = self.keyspace.consent_key(group, list_id)
            (tokens,) = await self.store.send_packed([(key, _packed(["HKEYS", key]))])
            for token in tokens:
                yield token.decode()

    async def mark(self, key: str, at_ms: int, ttl_ms: int) -> bool:
        """Set a cool-off marker to ``at_ms``, living ``ttl_ms``, unless it holds a later
        time (``lua/mark_max.lua``, one key): events reported out of order leave the
        latest in force. Whether it was set."""
        (reply,) = await self.store.run_scripts(MARK_MAX, [([key], [at_ms, max(ttl_ms, 1)])])
        return bool(reply)
