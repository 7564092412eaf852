"""decide.lua's request as the store frames it: the same bytes as the plain encoding."""

from __future__ import annotations

import json
import random
import struct
from datetime import UTC, datetime, timedelta

import pytest

from gate.core.engine import Evidence, Plan, Planner, StoreCheck, evolve
from gate.core.keys import Keyspace
from gate.core.model import Attempt
from gate.store.client import DECIDE, _command, _encode, _packed
from tests.unit.test_engine import ALL_PACKS, KEYS, MIXED_NUMBERS

T0 = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
EVIDENCE = Evidence(
    known=(("ts", "1"), ("door", "agi"), ("tenant", "default"), ("channel", ""), ("x", 'q"é')),
    shadow=("number_type:premium",),
    min_id_ms=0,
    max_len=1000,
)


def checks(record: bool) -> list[StoreCheck]:
    planner = Planner(ALL_PACKS, KEYS, record)
    found = []
    for i, dialled in enumerate(MIXED_NUMBERS):
        a = Attempt(dialled, T0 + timedelta(seconds=i), trunk="carrier-a", campaign="spring")
        pending = planner.plan(a)
        if isinstance(pending, Plan):
            check = pending.check
            found.append(evolve(check, evidence=EVIDENCE) if record else check)
    return found


@pytest.mark.parametrize("record", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_framed_request_is_the_plain_encoding(record: bool, batch: int) -> None:
    """Each request (one decision or a scrub's batch, with and without evidence, with list
    views and without, with a shared check read by a call of its own) is byte for byte
    the command built from its KEYS and ARGV."""
    found = checks(record)
    assert len(found) > 6
    views = {c.key: "7/12" for check in found for c in check.checks if c.list_name}
    for start in range(0, len(found), batch):
        group = found[start : start + batch]
        for seen in ({}, views):
            outside = [
                {i: (2, 5, 1000) for i, c in enumerate(check.checks) if c.shared} for check in group
            ]
            for reads in ((), outside):
                encoded = _encode(group, seen, reads)
                plain = _command(DECIDE, encoded.keys, encoded.args)
                framed = encoded.command(DECIDE)
                assert (framed.packed, framed.slot) == (plain.packed, plain.slot)


def test_long_keys_are_framed_as_the_plain_encoding() -> None:
    """Keys of 256 bytes or more (a long namespace: past the table of bulk string heads)
    are framed the same way, byte for byte."""
    keys = Keyspace("n" * 300, b"test-secret-0123456789abcdef")
    planner = Planner(ALL_PACKS, keys, False)
    found = []
    for i, dialled in enumerate(MIXED_NUMBERS):
        pending = planner.plan(Attempt(dialled, T0 + timedelta(seconds=i), campaign="spring"))
        if isinstance(pending, Plan):
            found.append(pending.check)
    encoded = _encode(found, {})
    assert min(len(k) for k in encoded.keys) >= 256
    plain = _command(DECIDE, encoded.keys, encoded.args)
    assert encoded.command(DECIDE).packed == plain.packed


def test_a_shape_packs_its_constant_runs_once() -> None:
    """``_packed``: whichever numbers a decision sets (none, all, any few, runs of them),
    packing them with the shape's constant runs packed already is the same bytes as
    packing all its numbers with its format."""
    rng = random.Random(7)
    packing = ">dBHBBBHdd" + "".join(rng.choice(["BH", "BHd", "Bddd", "BBddd"]) for _ in range(9))
    limits = {"B": 255, "H": 65535, "d": 2**53}
    values = [rng.randrange(limits[code]) for code in packing[1:]]
    for own in (set(), set(range(len(values))), {0, 1}, {0, 1, 2, 3, 4, len(values) - 1}):
        for _ in range(1 + 20 * bool(own)):
            mine = set(own) | {rng.randrange(len(values)) for _ in range(rng.randrange(4))}
            packer, packed, where = _packed(packing, values, mine if own else set())
            assert set(where) == (mine if own else set())
            given = list(packed)
            changed = list(values)
            for at, to in where.items():
                changed[at] = given[to] = rng.randrange(limits[packing[1 + at]])
            assert packer.pack(*given) == struct.pack(packing, *changed)


def test_the_audit_head_is_the_fields_as_compact_json() -> None:
    """The audit entry's head starts with the known fields (the empty ones left out) as
    ``json.dumps`` writes them compactly, whatever their text (quotes, backslashes,
    control characters, non-ASCII), then the plan shape's summary."""
    odd = 'q"\\ \n\t\x00\x1f é ☎ \U0001f4de \u2028'
    evidence = evolve(
        EVIDENCE,
        known=(("ts", "1"), ("door", "agi"), ("channel", ""), ("caller_id", odd), ("x", "")),
    )
    check = evolve(checks(True)[0], evidence=evidence)
    head = _encode([check], {}).args[-1].decode()
    present = {"ts": "1", "door": "agi", "caller_id": odd}
    fields = json.dumps(present, ensure_ascii=False, separators=(",", ":"))
    assert head.startswith(fields[:-1] + ',"shadow":')
    entry = json.loads(head)
    assert {k: entry[k] for k in present} == present
    assert "channel" not in entry
    assert "x" not in entry
    assert entry["shadow"] == ["number_type:premium"]

    nothing = evolve(check, evidence=evolve(EVIDENCE, known=(("channel", ""),)))
    assert _encode([nothing], {}).args[-1].decode().startswith('{"shadow":')


def test_only_a_recorded_decision_has_something_to_undo() -> None:
    """A decision not recorded (a scrub's) has an empty undo entry, one shared by all;
    a recorded one its audit stream, its audit head and the attempt logs it counts in."""
    unrecorded = _encode(checks(False), {})
    assert unrecorded.undo
    assert all(u == ("", b"", []) for u in unrecorded.undo)
    recorded = _encode(checks(True), {})
    for stream, head, logs in recorded.undo:
        assert stream.endswith(":audit")
        assert stream in recorded.keys
        assert head.startswith(b'{"')
        assert head in recorded.args
        assert all(key in recorded.keys for key in logs)
    assert any(logs for _, _, logs in recorded.undo)
