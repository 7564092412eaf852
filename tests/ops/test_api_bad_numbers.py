"""The admin API with numbers no phone could dial: a refusal per number, never a 500."""

from __future__ import annotations

from tests.ops.conftest import Served

BAD = "061234567²"  # "²" is a digit to Python, not a decimal one


async def test_check_of_a_bad_number_is_blocked_as_invalid(served: Served) -> None:
    """/v1/check of a number with a superscript digit: 200, BLOCK invalid_number."""
    status, body = await served.post("/v1/check", {"number": BAD})
    assert (200, "BLOCK", "invalid_number") == (status, body["verdict"], body["reason"])


async def test_scrub_with_a_bad_number_refuses_that_row_only(served: Served) -> None:
    """/v1/scrub: the bad number is its row's BLOCK invalid_number; the batch is answered."""
    status, body = await served.post("/v1/scrub", {"numbers": [BAD, "0612345678"]})
    rows = [(r["number"], r["verdict"], r["reason"]) for r in body["results"]]
    assert (200, [(BAD, "BLOCK", "invalid_number"), ("0612345678", "ALLOW", "allowed")]) == (
        status,
        rows,
    )
