"""Redis key names and number encodings, computed without I/O.

Guarantees:
- Every key starts with ``{<namespace>}:`` so all keys one decision touches share one
  Redis Cluster hash slot. List bucket keys are derived inside the Lua scripts from a
  declared list head key plus a suffix, so they share that slot too.
- Numbers at rest are never stored in clear by default: ``number(e164)`` gives the keyed
  64-bit BLAKE2b MAC of the number (RFC 7693 keyed mode, with the config's secret; CNIL
  expects hashed red lists) as a hex ``token`` (consent lists, counters) and as a signed
  64-bit ``member`` (list buckets); with ``hash_numbers = false`` the member is the E.164
  number's digits and the token the E.164 string.
- A hashed list entry is identified by 64 bits: a number not on a list of n entries
  matches one by accident with probability n / 2**64 per lookup (1.4e-11 at 250 million,
  i.e. about one wrongly blocked call in 70 billion). Such a collision can only block,
  never allow.
- List layout (see gate/lua/decide.lua and gate/liststore.py): the list's head is a HASH
  (``version``, ``bits``, ``count``, ``refreshed_at``, …); its entries live in
  ``2**bits`` SETs ``<head>:v<version>:<bucket>`` of 64-bit integers, the bucket being
  the top ``bits`` bits of ``bucket32``. Buckets hold about 128-256 members, under Redis's
  default ``set-max-intset-entries`` (512), so each stays a compact intset: 8 bytes per
  member plus a share of the bucket's key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from gate.core.rules import CapRule, CooloffRule, ListRule

__all__ = ["EntryChunk", "Keyspace", "ListEntry", "NumberKeys", "bucket_key"]

# A list entry: (member, bucket32). See the module doc.
ListEntry = tuple[int, int]
# Many list entries, column-wise: (members, bucket32s), in the same order.
EntryChunk = tuple[list[int], list[int]]

_TOKEN_BYTES = 8


@dataclass(frozen=True, slots=True)
class NumberKeys:
    """One number's encodings: ``token`` (hex or E.164), list ``member`` and ``bucket32``."""

    token: str
    member: int
    bucket32: int


def bucket_key(head: str, version: int, bits: int, bucket32: int) -> str:
    """The SET of a list version that holds entries whose ``bucket32`` is given."""
    return f"{head}:v{version}:{bucket32 >> (32 - bits) if bits else 0}"


class Keyspace:
    """Names keys and encodes numbers for one namespace and one hashing choice."""

    __slots__ = ("_mac", "_prefix", "_secret", "hashed")

    def __init__(self, namespace: str, secret: bytes | None) -> None:
        self._prefix = "{" + namespace + "}:"
        # BLAKE2b takes keys of up to 64 bytes; a longer secret is first hashed to 64.
        if secret is not None and len(secret) > 64:
            secret = hashlib.blake2b(secret).digest()
        self._secret = secret
        self.hashed = secret is not None
        # Keyed once: copying a keyed state is 3x cheaper than keying per number.
        self._mac = (
            None if secret is None else hashlib.blake2b(key=secret, digest_size=_TOKEN_BYTES)
        )

    def __reduce__(self) -> tuple[type[Keyspace], tuple[str, bytes | None]]:
        """Pickled as its arguments (a scrub's worker processes rebuild the same one)."""
        return Keyspace, (self._prefix[1:-2], self._secret)

    def number(self, e164: str) -> NumberKeys:
        """The encodings of ``e164`` (keyed hash unless numbers are stored plain)."""
        if self._secret is None:
            spread = hashlib.blake2b(e164.encode(), digest_size=4).digest()
            return NumberKeys(e164, int(e164[1:]), int.from_bytes(spread, "big"))
        digest = hashlib.blake2b(e164.encode(), key=self._secret, digest_size=_TOKEN_BYTES).digest()
        return NumberKeys(
            digest.hex(),
            int.from_bytes(digest, "big", signed=True),
            int.from_bytes(digest[:4], "big"),
        )

    def list_entry(self, e164: str) -> ListEntry:
        """``(member, bucket32)`` of ``e164``: ``number()`` without the rest (bulk imports)."""
        if self._secret is None:
            spread = hashlib.blake2b(e164.encode(), digest_size=4).digest()
            return int(e164[1:]), int.from_bytes(spread, "big")
        digest = hashlib.blake2b(e164.encode(), key=self._secret, digest_size=_TOKEN_BYTES).digest()
        member = int.from_bytes(digest, "big", signed=True)
        return member, (member % 2**64) >> 32

    def list_entries(self, numbers: Iterable[str]) -> EntryChunk:
        """``list_entry`` of many numbers at once, column-wise (bulk imports: ~0.5 µs each)."""
        if self._mac is None:
            pairs = [self.list_entry(e164) for e164 in numbers]
            return [m for m, _ in pairs], [b for _, b in pairs]
        fresh, from_bytes = self._mac.copy, int.from_bytes
        members: list[int] = []
        for e164 in numbers:
            mac = fresh()
            mac.update(e164.encode())
            members.append(from_bytes(mac.digest(), "big", signed=True))
        return members, [(m % 2**64) >> 32 for m in members]

    def token(self, e164: str) -> str:
        """The form in which ``e164`` names consent entries and counter keys."""
        return self.number(e164).token

    def bucket32_of(self, member: int) -> int:
        """``bucket32`` of a stored list member (to move it when a list is resized)."""
        if self._secret is None:
            e164 = f"+{member}"
            return int.from_bytes(hashlib.blake2b(e164.encode(), digest_size=4).digest(), "big")
        return (member % 2**64) >> 32

    def list_key(self, rule: ListRule, tenant: str, campaign: str) -> str | None:
        """The list's head for this tenant/campaign (None: not applicable).

        Block and allow lists: a HASH (version, bits, count, refreshed_at…) whose entries
        live in bucket SETs; consent lists: a HASH token → ``granted_ms:expiry_ms``.
        """
        base = f"{self._prefix}list:{rule.name}"
        if rule.scope == "global":
            return base
        if rule.scope == "tenant":
            return f"{base}:t:{tenant}"
        return f"{base}:c:{tenant}:{campaign}" if campaign else None

    def meta_key(self, rule: ListRule, tenant: str, campaign: str) -> str | None:
        """Where a list's ``refreshed_at`` and other metadata live (its head; consent
        lists, whose head holds the entries, keep theirs beside it)."""
        key = self.list_key(rule, tenant, campaign)
        if key is None or rule.kind != "consent":
            return key
        return f"{key}:meta"

    def cap_key(self, rule: CapRule, tenant: str, campaign: str, token: str) -> str | None:
        """The attempt log of ``rule`` for one destination (None: not applicable)."""
        base = f"{self._prefix}cap:{rule.id}"
        if rule.scope == "global":
            return f"{base}:{token}"
        if rule.scope == "tenant":
            return f"{base}:t:{tenant}:{token}"
        return f"{base}:c:{tenant}:{campaign}:{token}" if campaign else None

    def cooloff_key(self, rule: CooloffRule, tenant: str, token: str) -> str:
        """Holds the time (ms) of the number's last ``rule.event``; expires with the period."""
        base = f"{self._prefix}cool:{rule.id}"
        return f"{base}:{token}" if rule.scope == "global" else f"{base}:t:{tenant}:{token}"

    def audit_key(self) -> str:
        """The audit stream (gate/ops/audit.py)."""
        return f"{self._prefix}audit"

    def cps_key(self, trunk: str) -> str:
        """The one-second attempt log of a trunk."""
        return f"{self._prefix}cps:{trunk}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this namespace."""
        return self._prefix.replace("{", "\\{").replace("}", "\\}") + "*"
