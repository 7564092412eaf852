"""Entries by the million: the vectorised RESP encoding and bucket layout (gate.store._bulk)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.store._bulk import Sorted, resp_bulk

EDGES = [0, 1, -1, 9, 10, -10, 99, 10**9, -(10**9), 10**18, -(10**18), 2**63 - 1, -(2**63)]


def python_resp(values: list[int]) -> list[bytes]:
    return [b"$%d\r\n%b\r\n" % (len(str(v)), str(v).encode()) for v in values]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50))
def test_resp_bulk_writes_what_redis_py_would(values: list[int]) -> None:
    """Each int64 as ``$<len>\\r\\n<decimal>\\r\\n``; the offsets delimit each one."""
    values = EDGES + values
    blob, offsets = resp_bulk(np.array(values, dtype=np.int64))
    expected = python_resp(values)
    assert b"".join(expected) == blob
    assert expected == [blob[offsets[i] : offsets[i + 1]] for i in range(len(values))]


def test_resp_bulk_in_pieces_is_one_blob() -> None:
    """A million values (encoded piece by piece) give one blob and offsets into it."""
    values = np.random.default_rng(7).integers(-(2**63), 2**63 - 1, 1_000_000, dtype=np.int64)
    blob, offsets = resp_bulk(values)
    picks = [0, 1, 262_143, 262_144, 262_145, 999_999]
    assert python_resp([int(values[i]) for i in picks]) == [
        blob[offsets[i] : offsets[i + 1]] for i in picks
    ]
    assert (len(blob), 1_000_001) == (int(offsets[-1]), len(offsets))


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300),
    st.sampled_from([10, 11, 13]),
    st.booleans(),
)
def test_layout_puts_each_entry_in_its_bucket_and_group(
    values: list[int], bits: int, hashed: bool
) -> None:
    """Per bucket and per slot group, the entries of a ``Sorted`` batch are those whose
    bucket32 says so (hashed: the member's top 32 bits; plain: any bucket32)."""
    members = np.array(values, dtype=np.int64)
    if hashed:
        buckets32 = (members.view(np.uint64) >> np.uint64(32)).astype(np.uint32)
    else:
        buckets32 = np.array([hash(v) % 2**32 for v in values], dtype=np.uint32)
    batch = Sorted(members, buckets32, hashed)
    layout = batch.layout(bits, 10)
    found: dict[int, list[int]] = {}
    for at, bucket in enumerate(layout.buckets):
        start, end = layout.starts[at], layout.starts[at + 1]
        found[bucket] = sorted(int(m) for m in batch.members[start:end])
        assert python_resp([int(m) for m in batch.members[start:end]]) == [
            batch.members_resp(i, i + 1) for i in range(start, end)
        ]
    expected: dict[int, list[int]] = {}
    for value, bucket32 in sorted(zip(values, buckets32.tolist(), strict=True)):
        expected.setdefault(bucket32 >> (32 - bits), []).append(value)
    assert expected == found
    for group in range(1024):
        first, last = layout.bucket_at[group], layout.bucket_at[group + 1]
        assert all(b >> (bits - 10) == group for b in layout.buckets[first:last])
        start, end = layout.entry_at[group], layout.entry_at[group + 1]
        assert sorted(m for b in layout.buckets[first:last] for m in found[b]) == sorted(
            int(m) for m in batch.members[start:end]
        )
