"""What both doors write back to Asterisk: one ``CALLGATE_DECISION`` value, built in one place."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.core.model import Decision, Verdict
from gate.core.params import (
    DECISION_FIELDS,
    BadRequest,
    answer_value,
    attempt_from_params,
    decision_value,
    error_value,
    ident_param,
    parse_pairs,
    printable,
)


def test_one_variable_carries_the_whole_decision() -> None:
    """RESULT|REASON|RULE|RETRY|E164|CAUSE, split by the callgate-unpack subroutine."""
    decision = Decision(
        Verdict.DEFER, "cap:fr-4-per-30d", "cap:fr-4-per-30d", "+33612345678", 2592000.0
    )
    assert "DEFER|cap:fr-4-per-30d|cap:fr-4-per-30d|2592000|+33612345678|34" == decision_value(
        decision
    )


def test_an_allowed_decision_has_no_retry_and_cause_zero() -> None:
    """ALLOW: empty rule and retry, hangup cause 0."""
    decision = Decision(Verdict.ALLOW, "allowed", "", "+33612345678")
    assert "ALLOW|allowed|||+33612345678|0" == decision_value(decision)


def test_an_error_names_its_reason_and_nothing_else() -> None:
    """A request the door could not serve: ERROR, the reason, cause 0."""
    assert "ERROR|bad_request:tenant||||0" == error_value("bad_request:tenant")


def test_no_field_can_add_a_field_or_break_the_value() -> None:
    """A ``|``, comma (the dialplan's ARRAY separator), quote or newline in any field
    becomes ``_``: always six safe fields."""
    value = answer_value("OK", 'listed:a|b"\n', rule="x|y,z", e164="+33|6")
    assert ("OK|listed:a_b__|x_y_z||+33_6|0", 6) == (value, len(value.split("|")))


def test_the_fields_are_the_documented_variables_in_order() -> None:
    """The unpacked names, in field order (dialplan/callgate.conf's callgate-unpack)."""
    assert (
        "CALLGATE_RESULT",
        "CALLGATE_REASON",
        "CALLGATE_RULE",
        "CALLGATE_RETRY_AFTER",
        "CALLGATE_E164",
        "CALLGATE_CAUSE",
    ) == DECISION_FIELDS


def test_the_dialplan_unpacks_every_field_from_its_position() -> None:
    """callgate-unpack sets each CALLGATE_* from its field of CALLGATE_DECISION, all six in
    one Set: ARRAY over the value with its ``|`` written as commas."""
    conf = (Path(__file__).resolve().parents[2] / "dialplan" / "callgate.conf").read_text()
    section = conf.split("[callgate-unpack]", 1)[1].split("\n[", 1)[0]
    found = re.findall(
        r"Set\(ARRAY\(([A-Z0-9_,]+)\)=\$\{REPLACE\(CALLGATE_DECISION,\|,\\,\)\}\)", section
    )
    assert [",".join(DECISION_FIELDS)] == found


def test_both_doors_unpack_the_decision_as_the_subroutine_does() -> None:
    """callgate-agi and callgate-stasis unpack inline (two dialplan steps fewer per call
    than a GoSub): the same Set as callgate-unpack's, right after their check."""
    conf = (Path(__file__).resolve().parents[2] / "dialplan" / "callgate.conf").read_text()

    def steps(context: str) -> list[str]:
        """The applications of ``context``'s ``s`` extension, in priority order."""
        section = conf.split(f"[{context}]", 1)[1].split("\n[", 1)[0]
        return re.findall(r"^(?:exten => s,1| same => n(?:\(\w+\))?),(.*)$", section, re.M)

    unpack = steps("callgate-unpack")[0]
    for door in ("callgate-agi", "callgate-stasis"):
        assert unpack == steps(door)[3], door


@given(st.text())
def test_printable_escapes_exactly_the_control_characters(text: str) -> None:
    """Whatever the text, the result is the text with each C0/C1 control, DEL, U+2028 and
    U+2029 written as its escape, and nothing else changed (the fast path for text with
    none of them included)."""
    expected = "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029"
        else ch
        for ch in text
    )
    assert expected == printable(text)


def test_a_parameter_given_twice_with_different_values_is_refused() -> None:
    """A crafted number that adds a ``number=`` of its own: neither copy is trusted."""
    with pytest.raises(BadRequest) as refused:
        parse_pairs(["number=0699001122", "tenant=acme", "number=0612345678"])
    assert "bad_request:number" == refused.value.code


def test_a_parameter_given_twice_with_the_same_value_is_accepted() -> None:
    """The same value twice (query string and argument) changes nothing."""
    assert {"tenant": "acme"} == parse_pairs(["tenant=acme", "tenant=%61cme"])


def test_a_uri_encoded_number_decodes_to_the_number() -> None:
    """What ``${URIENCODE(...)}`` makes of a number, a plus sign and a crafted newline."""
    assert {"number": "+33612345678", "tenant": "acme"} == parse_pairs(
        ["number=%2B33612345678", "tenant=acme"]
    )
    assert {"number": "0699001122\nagi_arg_1: number=1"} == parse_pairs(
        ["number=0699001122%0Aagi_arg_1%3A%20number%3D1"]
    )


def test_an_identifier_with_a_trailing_newline_is_refused() -> None:
    """``$`` also matches before a final newline: ``acme\\n`` is no identifier (it would
    name a tenant or campaign of its own, with lists and caps of its own)."""
    with pytest.raises(BadRequest, match="campaign"):
        ident_param({"campaign": "spring\n"}, "campaign", "")
    assert "spring" == ident_param({"campaign": "spring"}, "campaign", "")


@pytest.mark.parametrize(
    ("given", "kept"),
    [("+33612345678\t", "+33612345678"), ("\nanonymous\r\n", "anonymous"), ("01\x1b2", "01\\x1b2")],
)
def test_a_door_caller_id_is_stripped_before_its_control_characters_are_escaped(
    given: str, kept: str
) -> None:
    """A Stasis channel's caller number "+33612345678\\t" is the number, as at the CLI and
    the API (the engine strips them): not "+33612345678\\\\t", an invalid number."""
    now = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    made = attempt_from_params(
        {}, number="0612345678", caller_id=given, channel="c", default_tenant="t", now=now
    )
    assert kept == made.caller_id
