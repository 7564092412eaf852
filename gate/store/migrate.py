"""``callgate migrate``: move a store from key layout version 1 to version 2, in place.

Layout 1 (callgate before slot groups) kept every key under the one hash tag
``{<namespace>}``: list heads ``{ns}:list:<L>`` (a HASH with version and bits, entries in
``<head>:v<version>:<bucket>``; a consent list's head held its entries, its metadata in
``<head>:meta``), attempt logs ``{ns}:cap:<suffix>:<token>``, cool-off markers
``{ns}:cool:<suffix>:<token>``, CPS logs ``{ns}:cps:<trunk>`` and the audit stream
``{ns}:audit``. Layout 2 is gate/core/keys.py.

Guarantees:
- Everything comes through: each list's live version (as a new version built and switched
  like ``list import --replace``, with its metadata: refreshed_at, source, checksum…),
  consents with their grant and expiry, attempt logs (sorted) and cool-off markers with
  their remaining time to live, CPS logs, and every audit entry with its id, each in its
  number's slot group.
- The old keys are removed only after everything was copied; a migration interrupted
  before that can be run again (lists are rebuilt, counters overwritten, audit entries
  already copied skipped), and a store with nothing of layout 1 is left as it is.
- A key of layout 1 callgate did not write (by hand, another tool: a name that is not
  UTF-8, a token that is not a number's, another Redis type, a field that is not UTF-8)
  stops it in one line naming the key and what to do, before any old key is removed.
- Run it with the gates stopped: a gate of the old version would keep writing layout 1,
  one of the new version would not see it until migrated.
"""

from __future__ import annotations

import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from gate.core.errors import StoreError
from gate.core.keys import MAX_BITS, Keyspace, NumberKeys, group_of, stored_number
from gate.store.client import Store, redis_error_text, translate_error
from gate.store.lists import ListStore

__all__ = ["Migration", "legacy_keys_present", "migrate"]

_SCAN = 1000
_QUICK_SCANS = 20
_CHUNK = 100_000
_AUDIT_BATCH = 1000
_INTERNAL = frozenset({"version", "bits", "count", "next_version", "building", "building_bits"})
# A number's token as callgate writes it: a keyed hash's hex digest (Keyspace.number), or
# the E.164 number itself when numbers are stored plain.
_HEX_TOKEN = re.compile(r"[0-9a-f]{16}")
_PLAIN_TOKEN = re.compile(r"\+[0-9]+")
_FIX_LIST = (
    "correct it, or delete that list's layout-1 keys and import the list again once migrated"
)
_FIX_KEY = "correct, rename or delete that key"

_T = TypeVar("_T")


@dataclass
class Migration:
    """What ``migrate`` moved."""

    lists: dict[str, int] = field(default_factory=dict)  # list instance → entries
    consents: dict[str, int] = field(default_factory=dict)
    caps: int = 0
    cooloffs: int = 0
    cps: int = 0
    audit: int = 0
    removed: int = 0

    def text(self) -> str:
        lists = ", ".join(f"{name} {count}" for name, count in sorted(self.lists.items()))
        consents = ", ".join(f"{name} {count}" for name, count in sorted(self.consents.items()))
        return (
            f"lists: {lists or 'none'}\n"
            f"consents: {consents or 'none'}\n"
            f"attempt logs {self.caps}, cool-offs {self.cooloffs}, CPS logs {self.cps}, "
            f"audit entries {self.audit}\n"
            f"{self.removed} keys of layout 1 removed"
        )


async def _legacy_keys(store: Store, keyspace: Keyspace) -> AsyncIterator[bytes]:
    async for key in store.admin_client.scan_iter(match=keyspace.legacy_pattern, count=_SCAN):
        yield key


async def legacy_keys_present(store: Store, keyspace: Keyspace, quick: bool = False) -> bool:
    """True if the store holds keys of layout 1 (``callgate migrate`` moves them).

    ``quick`` (a gate starting): the old audit stream, then at most ``_QUICK_SCANS`` SCAN
    steps (a store of layout 1 has many keys), not the whole keyspace. Layout 1 kept all
    its keys in one slot: on a cluster, one node is scanned."""
    client = store.admin_client
    legacy = "{" + keyspace.namespace + "}"
    try:
        if await client.exists(legacy + ":audit"):
            return True
        node = client.get_node_from_key(legacy) if store.cluster else None
        cursor = 0
        for _ in range(_QUICK_SCANS if quick else 10**12):
            if node is None:
                cursor, found = await client.scan(
                    cursor, match=keyspace.legacy_pattern, count=_SCAN
                )
            else:
                cursors, found = await client.scan(
                    cursor, match=keyspace.legacy_pattern, count=_SCAN, target_nodes=node
                )
                cursor = cursors[node.name]
            if found:
                return True
            if int(cursor) == 0:
                return False
    except (RedisError, OSError) as exc:
        raise translate_error(exc, store.where) from exc
    return False


def _group_of_token(keyspace: Keyspace, token: str) -> int:
    return group_of(keyspace.bucket32_of_token(token))


def _token_group(keyspace: Keyspace, plain: bool, token: str) -> int:
    """The slot group of a layout-1 key's or field's ``token``, or ``ValueError`` if it
    is not a token callgate writes: not hex, ``int(token[:8], 16)`` raised past the
    command's one-line errors, and a sign or too few digits put the key in a group the
    gate never reads."""
    if not (_PLAIN_TOKEN if plain else _HEX_TOKEN).fullmatch(token):
        raise ValueError(f"token {token[:40]!r}, not a number's token")
    return _group_of_token(keyspace, token)


async def migrate(
    store: Store, keyspace: Keyspace, progress: Callable[[str], None] = lambda _: None
) -> Migration:
    """Move every key of layout 1 under ``keyspace``'s namespace to layout 2."""
    try:
        return await _migrate(store, keyspace, progress)
    except (RedisError, OSError) as exc:
        raise translate_error(exc, store.where) from exc


async def _migrate(store: Store, keyspace: Keyspace, progress: Callable[[str], None]) -> Migration:
    client = store.admin_client
    where = store.where
    old = "{" + keyspace.namespace + "}:"
    done = Migration()
    keys: list[str] = []
    for raw in sorted({k async for k in _legacy_keys(store, keyspace)}):
        try:
            keys.append(raw.decode())
        except UnicodeDecodeError:
            shown = raw.decode("utf-8", "backslashreplace")
            raise _unreadable(where, shown, "its name is not UTF-8", _FIX_KEY) from None
    # Every attempt log's and cool-off's place in layout 2 before anything is written: a
    # key that is not callgate's stops the migration with nothing written.
    plain = keyspace.fingerprint == "plain"
    targets: dict[str, str] = {}
    for key in keys:
        rest = key[len(old) :]
        if rest.partition(":")[0] in ("cap", "cool"):
            suffix, _, token = rest.rpartition(":")
            try:
                group = _token_group(keyspace, plain, token)
            except ValueError as exc:
                raise _unreadable(where, key, exc, _FIX_KEY) from None
            targets[key] = keyspace.number_key(group, suffix, token)
    lists = ListStore(store, keyspace)
    for key in keys:
        rest = key[len(old) :]
        kind, _, name = rest.partition(":")
        if kind == "list":
            await _list(client, lists, key, name, done, progress)
        elif kind in ("cap", "cool"):
            if await _copy_value(client, where, key, targets[key], sort_log=kind == "cap"):
                if kind == "cap":
                    done.caps += 1
                else:
                    done.cooloffs += 1
        elif kind == "cps":
            if await _copy_value(client, where, key, keyspace.cps_key(name), sort_log=True):
                done.cps += 1
        elif kind == "audit" and not name:
            done.audit += await _audit(client, where, keyspace, key)
            progress(f"audit: {done.audit} entries")
    for start in range(0, len(keys), _SCAN):
        done.removed += int(await client.unlink(*keys[start : start + _SCAN]))
    return done


def _unreadable(where: str, key: str, error: object, fix: str = _FIX_LIST) -> StoreError:
    """A key of layout 1 holds what callgate never wrote there (``error`` says what; ``fix``
    what to do): the migration stops before removing anything, and can be run again."""
    return StoreError(
        f"Redis at {where}: the layout-1 key {key} is unreadable ({error}; not written by "
        f"callgate: by hand, another tool?): {fix}, then run `callgate migrate` again"
    )


async def _read(
    client: Any, where: str, key: str, expected: str, reply: Awaitable[_T], fix: str = _FIX_LIST
) -> _T:
    """``reply``, a read of ``key``. A key of another Redis type than the ``expected`` one
    callgate writes there is unreadable: Redis's bare WRONGTYPE named neither the key nor
    what to do."""
    try:
        return await reply
    except ResponseError as exc:
        if not redis_error_text(exc).startswith("WRONGTYPE"):
            raise
    kind = (await client.type(key)).decode().upper()
    raise _unreadable(where, key, f"a {kind}, not the {expected} callgate writes there", fix)


def _text_fields(where: str, key: str, fields: dict[bytes, bytes]) -> dict[str, str]:
    """A list head's or metadata's fields as text; one that is not UTF-8 is unreadable
    (``decode()`` raised UnicodeDecodeError past the command's one-line errors)."""
    text: dict[str, str] = {}
    for name, value in fields.items():
        try:
            text[name.decode()] = value.decode()
        except UnicodeDecodeError:
            shown = name.decode("utf-8", "backslashreplace")[:40]
            raise _unreadable(where, key, f"field {shown!r}, not UTF-8") from None
    return text


def stored_member(value: bytes) -> int:
    """A list bucket's member as callgate writes it (a signed 64-bit integer), or
    ``ValueError``."""
    text = value.decode("utf-8", "replace")
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19):
        raise ValueError(f"member {text[:40]!r}, not a 64-bit integer")
    number = int(text)
    if not -(1 << 63) <= number < 1 << 63:
        raise ValueError(f"member {number}, not a 64-bit integer")
    return number


def _list_parts(name: str) -> tuple[str, str]:
    """``red:t:acme:v3:17`` → (``red:t:acme``, ``v3:17``): the list instance and the rest."""
    parts = name.split(":")
    size = 1
    if len(parts) > 2 and parts[1] == "t":
        size = 3
    elif len(parts) > 3 and parts[1] == "c":
        size = 4
    return ":".join(parts[:size]), ":".join(parts[size:])


async def _list(
    client: Any,
    lists: ListStore,
    key: str,
    name: str,
    done: Migration,
    progress: Callable[[str], None],
) -> None:
    """A list head (the rest of the list, its buckets, follow from it) or a consent
    list's metadata; buckets, locks and others are skipped (removed at the end)."""
    where = lists.store.where
    list_id, rest = _list_parts(name)
    if rest == "meta":
        meta = await _read(client, where, key, "HASH", client.hgetall(key))
        await lists.set_meta(list_id, _text_fields(where, key, meta))
        return
    if rest:
        return
    # A head of another type is not callgate's: it was skipped, then removed unsaid.
    head = _text_fields(where, key, await _read(client, where, key, "HASH", client.hgetall(key)))
    if not head:  # deleted since the scan (Redis keeps no empty HASH): not an empty list
        return
    if "version" not in head:  # a consent list: token → "granted_ms:expiry_ms"
        keyspace = lists.keyspace
        plain = keyspace.fingerprint == "plain"
        items = []
        for token, value in head.items():
            try:
                _token_group(keyspace, plain, token)
            except ValueError as exc:
                raise _unreadable(where, key, exc) from None
            items.append((NumberKeys(token, 0, keyspace.bucket32_of_token(token)), value))
        await lists.consent_set(list_id, items)
        done.consents[list_id] = len(items)
        progress(f"consents {list_id}: {len(items)}")
        return
    # Checked, not int()ed: text there (by hand, another tool) raised ValueError past the
    # command's one-line errors, and bits past 32 sized a read of 2**bits buckets.
    try:
        version = stored_number("version", head["version"], 0, 10**18)
        bits = stored_number("bits", head.get("bits", "0"), 0, MAX_BITS)
    except ValueError as exc:
        raise _unreadable(where, key, exc) from None
    members: list[int] = []
    for bucket in range(1 << bits):
        bucket_key = f"{key}:v{version}:{bucket}"
        for member in await _read(client, where, bucket_key, "SET", client.smembers(bucket_key)):
            try:
                members.append(stored_member(member))
            except ValueError as exc:
                raise _unreadable(where, bucket_key, exc) from None
    bucket32_of = lists.keyspace.bucket32_of
    chunks = (
        (part, [bucket32_of(m) for m in part])
        for part in (members[i : i + _CHUNK] for i in range(0, len(members), _CHUNK))
    )
    meta = {k: v for k, v in head.items() if k not in _INTERNAL}
    replaced = await lists.replace(list_id, chunks, len(members), meta)
    done.lists[list_id] = replaced.count
    progress(f"list {list_id}: {replaced.count}")


async def _copy_value(client: Any, where: str, key: str, target: str, sort_log: bool) -> bool:
    """Copy a STRING with its time to live (an attempt log is put in time order); False if
    it is gone (expired, deleted since the scan)."""
    value = await _read(client, where, key, "STRING", client.get(key), _FIX_KEY)
    ttl_ms = int(await client.pttl(key))
    if value is None or ttl_ms == -2:
        return False
    if sort_log and len(value) % 8 == 0:
        times = sorted(struct.unpack(f">{len(value) // 8}d", value))
        value = struct.pack(f">{len(times)}d", *times)
    if ttl_ms > 0:
        await client.set(target, value, px=ttl_ms)
    else:
        await client.set(target, value)
    return True


async def _audit(client: Any, where: str, keyspace: Keyspace, key: str) -> int:
    """Every entry, with its id, into its number's group stream (entries already there,
    from an interrupted run, are skipped)."""
    last: dict[str, tuple[int, int]] = {}
    copied = 0
    low = "-"
    for _ in range(10**12):  # bounded by the stream: each batch moves the cursor on
        batch = await _read(
            client,
            where,
            key,
            "STREAM",
            client.xrange(key, min=low, max="+", count=_AUDIT_BATCH),
            _FIX_KEY,
        )
        if not batch:
            return copied
        async with client.pipeline(transaction=False) as pipe:
            for entry_id, fields in batch:
                # Not UTF-8 (not callgate's): copied as it is, into group 0's stream.
                number = fields.get(b"number", b"").decode("utf-8", "replace")
                group = 0
                if number and (len(number) == 16 or number.startswith("+")):
                    try:
                        group = _group_of_token(keyspace, number)
                    except ValueError:
                        group = 0
                target = keyspace.audit_key(group)
                if target not in last:
                    tail = await client.xrevrange(target, count=1)
                    last[target] = _order(tail[0][0]) if tail else (-1, -1)
                if _order(entry_id) <= last[target]:
                    continue
                pipe.xadd(target, fields, id=entry_id)
                last[target] = _order(entry_id)
                copied += 1
            await pipe.execute()
        low = "(" + batch[-1][0].decode()
        if len(batch) < _AUDIT_BATCH:
            return copied
    return copied


def _order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
