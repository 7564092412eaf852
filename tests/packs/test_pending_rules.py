"""Rules designed ahead of their store checks: the US reassigned-numbers consent option and
the UK abandoned-call ceiling. They load and validate; ``plan()`` never sends their checks
(decide.lua does not run them yet) and ``--explain`` reports them "not enforced" with
their source; the disconnect-dates import format; how ``conclude`` will read the checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gate.config.loader import Config
from gate.core.engine import (
    PENDING_KINDS,
    Check,
    CheckKind,
    Plan,
    StoreResult,
    conclude,
    plan,
)
from gate.core.errors import InputError
from gate.core.keys import Keyspace
from gate.core.model import Attempt, TrafficClass
from gate.core.rules import ListRule
from gate.lists.formats import Rejected
from gate.lists.reassigned import Disconnect, latest, read_disconnects, void_before_ms
from gate.service import Gate
from tests.packs.conftest import TENANT, admin, import_list, pack_config

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
NY_NUMBER = "+12125550123"
UK_NUMBER = "+442079460123"
MONDAY_NY = datetime(2027, 5, 3, 11, 0, tzinfo=NEW_YORK)
MONDAY_LONDON = datetime(2027, 5, 3, 11, 0, tzinfo=LONDON)
REASSIGNED = ListRule(name="reassigned", kind="reassigned", scope="global")


def test_pending_kinds_are_the_reassigned_and_abandon_rate_checks() -> None:
    """D (reassigned number, a BLOCK) and Q (abandoned-call ceiling, a DEFER) are pending."""
    assert ({"D", "Q"}, True, False) == (
        {kind.value for kind in PENDING_KINDS},
        CheckKind.REASSIGNED.blocks,
        CheckKind.ABANDON_RATE.blocks,
    )


PLANS = [
    pytest.param(["us"], "US", NY_NUMBER, MONDAY_NY, id="us"),
    pytest.param(["uk"], "GB", UK_NUMBER, MONDAY_LONDON, id="uk"),
]


@pytest.mark.parametrize(("packs", "region", "dialled", "when"), PLANS)
def test_plan_never_sends_a_pending_check(
    packs: list[str], region: str, dialled: str, when: datetime
) -> None:
    """A campaign call under the us and uk packs plans no D or Q check."""
    pending = plan(
        Attempt(dialled, now=when, campaign="spring"),
        pack_config(packs, region).policy,
        Keyspace("t", None),
        False,
    )
    assert isinstance(pending, Plan)
    assert [] == [c.kind for c in pending.check.checks if c.kind in PENDING_KINDS]


@pytest.fixture
def us_gate(open_gate: Callable[[Config], Gate]) -> Gate:
    return open_gate(pack_config(["us"], "US"))


async def test_us_explain_reports_the_reassigned_check_not_enforced(us_gate: Gate) -> None:
    """--explain on a campaign call: the reassigned-number row says "not enforced" and cites
    64.1200(l); the consent requirement is shadow; the call goes out."""
    await import_list(us_gate, "national_dnc", [], MONDAY_NY - timedelta(days=1))
    evaluation = await us_gate.evaluate(
        Attempt(NY_NUMBER, now=MONDAY_NY, caller_id="+12125550100"), record=False, door="cli"
    )
    rows = {row.rule: row for row in evaluation.rules}
    reassigned = rows["reassigned:us-tcpa-consent"]
    assert (
        ("ALLOW", ("no_consent:us-tcpa-consent",)),
        "not enforced",
        "47 U.S.C. 227(b)(1); 47 CFR 64.1200(a)(2)-(3); reassigned numbers: 47 CFR 64.1200(l), (m)",
        "shadow BLOCK",
    ) == (
        (evaluation.decision.verdict.value, evaluation.decision.shadow),
        reassigned.outcome,
        reassigned.source,
        rows["consent:us-tcpa-consent"].outcome,
    )


async def test_us_manual_call_has_no_consent_rows(us_gate: Gate) -> None:
    """The consent rule governs campaign traffic only: an agent's call lists neither row."""
    await import_list(us_gate, "national_dnc", [], MONDAY_NY - timedelta(days=1))
    evaluation = await us_gate.evaluate(
        Attempt(NY_NUMBER, now=MONDAY_NY, traffic_class=TrafficClass.MANUAL),
        record=False,
        door="cli",
    )
    assert [] == [row.rule for row in evaluation.rules if "us-tcpa-consent" in row.rule]


async def test_uk_explain_reports_the_abandon_ceiling_not_enforced(
    open_gate: Callable[[Config], Gate],
) -> None:
    """--explain on a UK campaign call: the 3 % ceiling row says "not enforced", with Ofcom."""
    gate = open_gate(pack_config(["uk"], "GB"))
    for name in ("tps", "ctps"):
        await import_list(gate, name, [], MONDAY_LONDON - timedelta(days=1))
    evaluation = await gate.evaluate(
        Attempt(UK_NUMBER, now=MONDAY_LONDON, caller_id="+442071234567", campaign="spring"),
        record=False,
        door="cli",
    )
    (row,) = [row for row in evaluation.rules if row.rule.startswith("abandon_rate:")]
    assert (
        "abandon_rate:uk-ofcom-abandoned-3pct",
        "not enforced",
        "at most 3.0% of live calls abandoned per campaign over 1d; the store's campaign "
        "counters are not built yet",
        "Ofcom, Persistent misuse: statement of policy (20 Dec 2016, applies from 1 Mar 2017),"
        " Annexes 2-3 [verify]",
        "ALLOW",
    ) == (row.rule, row.outcome, row.detail, row.source, evaluation.decision.verdict.value)


async def test_a_reassigned_list_refuses_entries_until_the_store_holds_them(
    us_gate: Gate,
) -> None:
    """Adding to a reassigned list is a one-line error, not a wrongly stored list."""
    with pytest.raises(InputError) as caught:
        await admin(us_gate).add("reassigned", [NY_NUMBER], TENANT, "")
    assert str(caught.value).startswith("list 'reassigned' holds reassigned-number disconnect")


def test_conclude_reads_a_reassigned_hit_as_block_and_a_ceiling_as_defer() -> None:
    """When decide.lua runs them: D seeing 1 BLOCKs reassigned:<id>; Q's wait DEFERs."""
    pending = plan(
        Attempt(NY_NUMBER, now=MONDAY_NY),
        pack_config(["us"], "US").policy,
        Keyspace("t", None),
        False,
    )
    assert isinstance(pending, Plan)
    extra = (
        Check(CheckKind.REASSIGNED, "reassigned:us-tcpa-consent", "reassigned:us-tcpa-consent"),
        Check(CheckKind.ABANDON_RATE, "abandon_rate:x", "abandon_rate:x", params=(30000, 1, 0)),
    )
    checks = pending.check.checks + extra
    widened = dataclasses.replace(pending, check=dataclasses.replace(pending.check, checks=checks))
    seen = (0,) * len(pending.check.checks)
    blocked = conclude(widened, StoreResult(len(checks) - 1, 0, (*seen, 1, 0)))
    deferred = conclude(widened, StoreResult(len(checks), 90_000, (*seen, 0, 90_000)))
    assert [("BLOCK", "reassigned:us-tcpa-consent", None), ("DEFER", "abandon_rate:x", 90.0)] == [
        (d.verdict.value, d.reason, d.retry_after_s) for d in (blocked, deferred)
    ]


def test_disconnect_file_lines_become_entries_or_rejects() -> None:
    """Header, comments and blanks skipped; dates and times with offset read; bad lines
    rejected with their line number and why."""
    lines = [
        "number,disconnected_on",
        "# from the Reassigned Numbers Database, answers 'yes'",
        "+12125550123,2026-11-02",
        "",
        "(212) 555-0124, 2026-11-03T23:30:00-05:00",
        "+12125550125",
        "+12125550126,02/11/2026",
        "911,2026-11-02",
    ]
    assert [
        Disconnect(3, "+12125550123", date(2026, 11, 2)),
        Disconnect(5, "+12125550124", date(2026, 11, 4)),
        Rejected(
            6, "+12125550125", "expected number,disconnected_on, e.g. +12125550123,2026-11-02"
        ),
        Rejected(
            7,
            "+12125550126,02/11/2026",
            "'02/11/2026' is not a date YYYY-MM-DD or an ISO-8601 time with offset",
        ),
        Rejected(8, "911,2026-11-02", "number '911' is a short code, not an E.164 number"),
    ] == list(read_disconnects(lines, REASSIGNED, "US"))


def test_the_last_disconnect_counts_and_voids_grants_up_to_the_end_of_its_day() -> None:
    """A number listed twice keeps its latest day; grants before the next UTC midnight are
    void."""
    days = latest(
        [
            Disconnect(1, "+12125550123", date(2026, 11, 2)),
            Disconnect(2, "+12125550123", date(2025, 1, 5)),
            Disconnect(3, "+12125550124", date(2025, 1, 5)),
        ]
    )
    midnight_after = datetime(2026, 11, 3, tzinfo=UTC).timestamp() * 1000
    assert (
        {"+12125550123": date(2026, 11, 2), "+12125550124": date(2025, 1, 5)},
        midnight_after,
    ) == (dict(days), void_before_ms(date(2026, 11, 2)))
