"""Key layout version 2 (gate/core/keys.py): slot groups, their hash tags, key names."""

from __future__ import annotations

import binascii
import collections
import dataclasses

import pytest

from gate.core._slots import SLOT_TAGS
from gate.core.keys import GROUP_BITS, SLOT_GROUPS, Keyspace, NumberKeys, group_of

KEYS = Keyspace("callgate", b"test-secret-0123456789abcdef")


def redis_slot(key: str) -> int:
    """Redis Cluster's slot of ``key``: CRC16 (XMODEM) of its hash tag, modulo 16384."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start >= 0 and end > start + 1:
        key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % 16384


def test_slot_tags_fall_on_every_sixteenth_slot_as_generated() -> None:
    """Group g's tag hashes to slot 16 g, and the table is what its documented rule
    (first base-36 texts, in order) gives."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    regenerated: list[str | None] = [None] * SLOT_GROUPS
    for n in range(10**6):
        text, rest = "", n
        while True:
            text, rest = digits[rest % 36] + text, rest // 36
            if rest == 0:
                break
        slot = binascii.crc_hqx(text.encode(), 0) % 16384
        if slot % 16 == 0 and regenerated[slot // 16] is None:
            regenerated[slot // 16] = text
        if all(regenerated):
            break
    assert list(SLOT_TAGS) == regenerated
    assert [16 * g for g in range(SLOT_GROUPS)] == [redis_slot(t) for t in SLOT_TAGS]


def test_numbers_spread_evenly_over_the_groups_and_three_shards() -> None:
    """100 000 numbers: every group used; with the slots split in three ranges as
    redis-cli --cluster create does, the fullest shard holds at most 1.02x the emptiest."""
    groups = collections.Counter(KEYS.number(f"+3361{i:07d}").group for i in range(100_000))
    shards = collections.Counter(
        min(2, redis_slot(KEYS.meta_key(g)) * 3 // 16384) for g in groups.elements()
    )
    assert SLOT_GROUPS == len(groups)
    assert max(shards.values()) <= 1.02 * min(shards.values())


def test_a_numbers_keys_share_its_groups_slot() -> None:
    """Meta, buckets, consents, caps, cool-offs and the audit stream of a number: one slot."""
    number = KEYS.number("+33612345678")
    g = number.group
    bits = 12
    keys = [
        KEYS.meta_key(g),
        KEYS.bucket_key("red:t:acme", 3, bits, number.bucket32 >> (32 - bits)),
        KEYS.consent_key(g, "consent:t:acme"),
        KEYS.number_key(g, "cap:fr-4:t:acme", number.token),
        KEYS.number_key(g, "cool:fr-refusal:t:acme", number.token),
        KEYS.audit_key(g),
    ]
    assert {16 * g} == {redis_slot(k) for k in keys}
    assert g == group_of(number.bucket32) == number.bucket32 >> (32 - GROUP_BITS)


def test_shared_state_has_its_own_slots() -> None:
    """A trunk's CPS log and the list directory are not in a number's slot group."""
    assert "callgate:{cps:carrier-a}" == KEYS.cps_key("carrier-a")
    assert "callgate:{lists}:red:t:acme" == KEYS.directory_key("red:t:acme")


def test_a_numbers_encodings_are_its_keyed_blake2b_digest() -> None:
    """Stored data depends on them: the token is the hex of the 8-byte BLAKE2b of the
    E.164 number keyed with the secret, the list member that digest as a signed 64-bit
    integer, the bucket its first 32 bits; bulk imports encode alike; unhashed, the number
    itself and its digits."""
    import hashlib

    for e164 in ("+33612345678", "+12125550123", "+447911123456"):
        digest = hashlib.blake2b(
            e164.encode(), key=b"test-secret-0123456789abcdef", digest_size=8
        ).digest()
        number = KEYS.number(e164)
        assert (number.token, number.member, number.bucket32) == (
            digest.hex(),
            int.from_bytes(digest, "big", signed=True),
            int.from_bytes(digest[:4], "big"),
        )
        assert KEYS.list_entry(e164) == (number.member, number.bucket32)
        plain = Keyspace("callgate", None).number(e164)
        assert (plain.token, plain.member) == (e164, int(e164[1:]))


def test_number_keys_made_by_their_slots_are_the_dataclass_made_by_init() -> None:
    """``Keyspace.number`` sets a ``NumberKeys``' slots itself: the same value as its
    ``__init__`` makes (equality, hash, repr), frozen all the same, hashed or plain."""
    for keys in (KEYS, Keyspace("callgate", None)):
        found = keys.number("+33612345678")
        made = NumberKeys(found.token, found.member, found.bucket32)
        assert (found, hash(found), repr(found)) == (made, hash(made), repr(made))
        assert dataclasses.astuple(found) == (found.token, found.member, found.bucket32)
        with pytest.raises(dataclasses.FrozenInstanceError):
            found.token = ""  # type: ignore[misc]
    assert Keyspace("callgate", None).number("+33612345678") == NumberKeys(
        "+33612345678", 33612345678, Keyspace("callgate", None).bucket32_of(33612345678)
    )
