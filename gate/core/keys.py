"""Redis key names and number encodings, computed without I/O.

Layout (version 2; ``callgate migrate`` moves a store from version 1, where every key
carried the one hash tag ``{<namespace>}``):

- A number belongs to one of ``SLOT_GROUPS`` (1024) slot groups: the top 10 bits of its
  ``bucket32``. Every key about the number carries its group's hash tag
  (``<namespace>:{<tag>}:…``, gate/core/_slots.py), so one decision touches one Redis
  Cluster slot (one atomic script), and different numbers spread evenly over all slots,
  hence over all shards. In a group:

  ====================================  ================================================
  ``…:meta``                            HASH: per list instance ``L`` its live version
                                        ``L`` = "version/bits", the version being built
                                        ``L:b``, ``L:r`` refreshed_at (ms) and ``L:n``
                                        the entries in this group (block/allow lists);
                                        replicated in every group, so that a decision
                                        reads them in its own slot
  ``…:l:<L>:<version>:<bucket>``        SET of 64-bit integers: the list's entries
                                        whose bucket (top ``bits`` bits of bucket32) it is
  ``…:c:<L>``                           HASH token → "granted_ms:expiry_ms" (consents),
                                        or token → void_before_ms (reassigned lists:
                                        gate/lists/reassigned.py)
  ``…:cap:<rule>[:t:…|:c:…]:<token>``   the attempt log of a cap (packed doubles)
  ``…:cool:<rule>[:t:…]:<token>``       the time (ms) the cool-off runs from: the last
                                        refusal/abandoned call's (calendar days: its
                                        end less the period, gate/lists/admin.py)
  ``…:audit``                           the audit stream of the group's decisions
  ====================================  ================================================

- Shared state has its own slot: ``<namespace>:{cps:<trunk>}`` (a trunk's one-second
  attempt log), ``<namespace>:{abandon:<rule>:c:<tenant>:<campaign>}`` (or
  ``…:t:<tenant>}`` for a tenant-wide rule: the live and abandoned calls counted for an
  abandoned-call ceiling, per minute over the rule's window; one key per rule, as the
  window is the rule's) and ``<namespace>:{lists}:<L>``, the list's directory entry
  (version, bits, next_version, building, refreshed_at, source, checksum, importer…), the
  authoritative copy of what the groups' meta replicate.
  ``<namespace>:{stasis:<channel id>}`` (a STRING, with a TTL) is a decision of the
  Stasis door that a REST call failed to carry out, kept for any process's next sweep to
  re-apply (gate/stasis/door.py).
- ``L`` (a list instance) is ``<name>``, ``<name>:t:<tenant>`` or
  ``<name>:c:<tenant>:<campaign>`` by the list's scope.

Numbers at rest are never stored in clear by default: ``number(e164)`` gives the keyed
64-bit BLAKE2b MAC of the number (RFC 7693 keyed mode, with the config's secret; CNIL
expects hashed red lists) as a hex ``token`` (consents, counters) and as a signed 64-bit
``member`` (list buckets); with ``hash_numbers = false`` the member is the E.164 number's
digits and the token the E.164 string. A hashed entry is identified by 64 bits: a number
not on a list of n entries matches one by accident with probability n / 2**64 per lookup
(1.4e-11 at 250 million, about one wrongly blocked call in 70 billion). Such a collision
can only block, never allow.

A list has ``2**bits`` buckets (``bits`` >= 10, so each bucket lies in one group), each
holding about 128-256 members, under Redis's default ``set-max-intset-entries`` (512): a
bucket stays a compact intset, 8 bytes per member plus a share of the bucket's key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from gate.core._slots import SLOT_GROUPS, SLOT_TAGS
from gate.core.rules import AbandonCeilingRule, CapRule, CooloffRule, ListRule

__all__ = [
    "GROUP_BITS",
    "MAX_BITS",
    "MIN_BITS",
    "SLOT_GROUPS",
    "EntryChunk",
    "Keyspace",
    "ListEntry",
    "NumberKeys",
    "directory_key",
    "group_of",
    "list_version",
    "namespace_of",
    "read_list_version",
    "stored_number",
]

# A list entry: (member, bucket32). See the module doc.
ListEntry = tuple[int, int]
# Many list entries, column-wise: (members, bucket32s), in the same order.
EntryChunk = tuple[list[int], list[int]]

GROUP_BITS = 10
# A list's bucket bits are never fewer than the group bits: a bucket lies in one group.
MIN_BITS = GROUP_BITS
# ... and never more than a number's bucket32 has (its bucket: bucket32 >> (32 - bits)).
MAX_BITS = 32
_TOKEN_BYTES = 8
_GROUP_SHIFT = 32 - GROUP_BITS


# What ``Keyspace.fingerprint`` MACs: not a number, so the fingerprint keys no entry.
_FINGERPRINT_TEXT = b"callgate keying fingerprint"


def group_of(bucket32: int) -> int:
    """The slot group of a number (or list entry) by its ``bucket32``."""
    return bucket32 >> _GROUP_SHIFT


def directory_key(namespace: str, list_id: str) -> str:
    """The list's directory entry: version, bits, building, metadata (one slot)."""
    return f"{namespace}:{{lists}}:{list_id}"


def namespace_of(prefix: str) -> str:
    """The namespace of a slot group's key prefix (``<namespace>:{<tag>}:``)."""
    return prefix[: prefix.index(":{")]


def list_version(version: int, bits: int) -> str:
    """How a group's meta names a list version: "version/bits"."""
    return f"{version}/{bits}"


def stored_number(field: str, value: str | bytes | None, low: int, high: int) -> int:
    """``value``, read from Redis as ``field``, as the whole number from ``low`` to
    ``high`` callgate writes there; ``ValueError`` saying what the field holds instead
    (a value written by hand, by another tool, a bad migration), never a number read out
    of it."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if text is None:
        raise ValueError(f"no {field}")
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ValueError(f"{field} {text[:40]!r}, not a whole number")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"{field} {number}, not within {low}..{high}")
    return number


def read_list_version(text: str | bytes) -> tuple[int, int]:
    """A list version as a group's meta (or the directory's ``dropping``) names it,
    "version/bits" (``list_version``): (version, bits), or ``ValueError`` (see
    ``stored_number``)."""
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    version, slash, bits = raw.partition("/")
    if not slash:
        raise ValueError(f"list version {raw[:40]!r}, not version/bits")
    return (
        stored_number("version", version, 0, 10**18),
        stored_number("bits", bits, MIN_BITS, MAX_BITS),
    )


@dataclass(frozen=True, slots=True)
class NumberKeys:
    """One number's encodings: ``token`` (hex or E.164), list ``member`` and ``bucket32``."""

    token: str
    member: int
    bucket32: int

    @property
    def group(self) -> int:
        return self.bucket32 >> _GROUP_SHIFT


# ``NumberKeys``' slots, set as its frozen ``__init__`` sets them (``object.__setattr__``)
# but without looking each up by name: ``_number_keys``.
_SET_TOKEN, _SET_MEMBER, _SET_BUCKET32 = (
    NumberKeys.__dict__[name].__set__ for name in ("token", "member", "bucket32")
)
assert NumberKeys.__slots__ == ("token", "member", "bucket32")
assert not hasattr(NumberKeys, "__post_init__")  # it would be skipped


def _number_keys(token: str, member: int, bucket32: int) -> NumberKeys:
    """``NumberKeys(token, member, bucket32)`` by its slots' setters (0.25 µs instead of
    its frozen ``__init__``'s 0.6: one per number decided or scrubbed)."""
    made = object.__new__(NumberKeys)
    _SET_TOKEN(made, token)
    _SET_MEMBER(made, member)
    _SET_BUCKET32(made, bucket32)
    return made


class Keyspace:
    """Names keys and encodes numbers for one namespace and one hashing choice."""

    __slots__ = ("_mac", "_prefixes", "_secret", "hashed", "namespace")

    def __init__(self, namespace: str, secret: bytes | None) -> None:
        self.namespace = namespace
        self._prefixes = tuple(f"{namespace}:{{{tag}}}:" for tag in SLOT_TAGS)
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
        return Keyspace, (self.namespace, self._secret)

    # --- numbers --------------------------------------------------------------------

    def number(self, e164: str) -> NumberKeys:
        """The encodings of ``e164`` (keyed hash unless numbers are stored plain)."""
        if self._mac is None:
            spread = hashlib.blake2b(e164.encode(), digest_size=4).digest()
            return _number_keys(e164, int(e164[1:]), int.from_bytes(spread, "big"))
        mac = self._mac.copy()
        mac.update(e164.encode())
        digest = mac.digest()
        member = int.from_bytes(digest, "big", signed=True)
        return _number_keys(digest.hex(), member, (member % 2**64) >> 32)

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

    def list_digests(self, prefix: bytes, rests: Iterable[bytes]) -> bytes:
        """The 8-byte keyed digests (big-endian) of the numbers ``prefix + rest``, one
        after the other: each digest, read as a signed integer, is the number's list
        ``member`` (bulk imports: ~0.4 µs a number, no object kept per number). Only with
        hashing on."""
        if self._mac is None:
            raise ValueError("list_digests: numbers are stored plain (no keyed hash)")
        keyed = self._mac.copy()
        keyed.update(prefix)
        fresh = keyed.copy
        digests: list[bytes] = []
        keep = digests.append
        for rest in rests:
            mac = fresh()
            mac.update(rest)
            keep(mac.digest())
        return b"".join(digests)

    def token(self, e164: str) -> str:
        """The form in which ``e164`` names consent entries and counter keys."""
        return self.number(e164).token

    def bucket32_of(self, member: int) -> int:
        """``bucket32`` of a stored list member (to move it when a list is resized)."""
        if self._secret is None:
            e164 = f"+{member}"
            return int.from_bytes(hashlib.blake2b(e164.encode(), digest_size=4).digest(), "big")
        return (member % 2**64) >> 32

    def bucket32_of_token(self, token: str) -> int:
        """``bucket32`` of a number by its token (consents, counters, audit entries)."""
        if self._secret is None:
            return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "big")
        return int(token[:8], 16)

    # --- list instances -------------------------------------------------------------

    @staticmethod
    def list_id(rule: ListRule, tenant: str, campaign: str) -> str | None:
        """The list instance for this tenant/campaign (None: not applicable)."""
        if rule.scope == "global":
            return rule.name
        if rule.scope == "tenant":
            return f"{rule.name}:t:{tenant}"
        return f"{rule.name}:c:{tenant}:{campaign}" if campaign else None

    # --- keys in a number's slot group ----------------------------------------------

    def prefix(self, group: int) -> str:
        """``<namespace>:{<tag>}:``, the start of every key of slot group ``group``."""
        return self._prefixes[group]

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._prefixes

    def meta_key(self, group: int) -> str:
        return self._prefixes[group] + "meta"

    def bucket_key(self, list_id: str, version: int, bits: int, bucket: int) -> str:
        """The SET of a list version holding the entries of ``bucket``."""
        return f"{self._prefixes[bucket >> (bits - GROUP_BITS)]}l:{list_id}:{version}:{bucket}"

    def consent_key(self, group: int, list_id: str) -> str:
        return f"{self._prefixes[group]}c:{list_id}"

    def audit_key(self, group: int) -> str:
        """The audit stream of slot group ``group`` (gate/ops/audit.py merges them)."""
        return self._prefixes[group] + "audit"

    def number_key(self, group: int, suffix: str, token: str) -> str:
        """A per-number key: ``cap_suffix``/``cooloff_suffix`` + the number's token."""
        return f"{self._prefixes[group]}{suffix}:{token}"

    @staticmethod
    def cap_suffix(rule: CapRule, tenant: str, campaign: str) -> str | None:
        """Names the attempt log of ``rule`` for a destination (None: not applicable)."""
        base = f"cap:{rule.id}"
        if rule.scope == "global":
            return base
        if rule.scope == "tenant":
            return f"{base}:t:{tenant}"
        return f"{base}:c:{tenant}:{campaign}" if campaign else None

    @staticmethod
    def cooloff_suffix(rule: CooloffRule, tenant: str) -> str:
        """Names the marker holding the time (ms) of the number's last ``rule.event``."""
        base = f"cool:{rule.id}"
        return base if rule.scope == "global" else f"{base}:t:{tenant}"

    # --- shared keys (their own slots) ----------------------------------------------

    def cps_key(self, trunk: str) -> str:
        """The one-second attempt log of a trunk (its own slot)."""
        return f"{self.namespace}:{{cps:{trunk}}}"

    def ceiling_key(self, rule: AbandonCeilingRule, tenant: str, campaign: str) -> str | None:
        """The live and abandoned call counts of ``rule`` for this tenant (scope
        ``tenant``) or campaign (its own slot; None: a per-campaign rule, no campaign)."""
        if rule.scope == "tenant":
            return f"{self.namespace}:{{abandon:{rule.id}:t:{tenant}}}"
        if not campaign:
            return None
        return f"{self.namespace}:{{abandon:{rule.id}:c:{tenant}:{campaign}}}"

    def stasis_key(self, channel_id: str) -> str:
        """A Stasis channel's decision not yet applied (its own slot; any tenant)."""
        return f"{self.namespace}:{{stasis:{channel_id}}}"

    def directory_key(self, list_id: str) -> str:
        """The list's directory entry: version, bits, building, metadata (one slot)."""
        return directory_key(self.namespace, list_id)

    def lock_key(self, list_id: str) -> str:
        return f"{self.namespace}:{{lists}}:{list_id}:lock"

    @property
    def keying_key(self) -> str:
        """The fingerprint of the keying the namespace's data was written with (its own
        slot; ``fingerprint``)."""
        return f"{self.namespace}:{{keying}}"

    @property
    def fingerprint(self) -> str:
        """Names this keyspace's encoding of numbers without revealing its secret: "plain"
        (numbers stored as they are), else 16 hex digits of a BLAKE2b MAC, keyed with the
        secret, of a fixed text (no number). A process with another secret reads and
        writes other keys than the data's: its opt-outs would go unseen by the gate, and
        the gate's lists by it; the store compares fingerprints to refuse such a process."""
        if self._secret is None:
            return "plain"
        return hashlib.blake2b(_FINGERPRINT_TEXT, key=self._secret, digest_size=8).hexdigest()

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this namespace."""
        return f"{self.namespace}:*"

    @property
    def legacy_pattern(self) -> str:
        """A SCAN pattern matching the keys of layout version 1 (``callgate migrate``)."""
        return "\\{" + self.namespace + "\\}:*"


assert len(SLOT_TAGS) == SLOT_GROUPS == 1 << GROUP_BITS
