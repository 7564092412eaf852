"""Reassigned numbers (config/packs/us.toml, ``us-tcpa-consent``) against a REAL Redis: a
consent granted on or before the number's last permanent disconnection is void (BLOCK
``reassigned:us-tcpa-consent``, decide.lua's D check); the disconnect-dates file, its
import (the latest day wins, across imports too) and the list's count, export and
removal; ``--explain``; the shadow default; the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from gate.config.loader import Config
from gate.core.engine import CheckKind, Plan, plan
from gate.core.errors import InputError
from gate.core.keys import Keyspace
from gate.core.model import Attempt, TrafficClass
from gate.core.rules import ListRule
from gate.lists.admin import ImportSummary
from gate.lists.formats import Rejected
from gate.lists.reassigned import Disconnect, latest, read_disconnects, void_before_ms
from gate.ops.metrics import Metrics, refresh_lists
from gate.service import Gate
from tests.cli.test_cli import run_cli as run
from tests.cli.test_cli import sample_config
from tests.packs.conftest import PACKS_DIR, TENANT, admin, import_list, outcome, pack_config

NEW_YORK = ZoneInfo("America/New_York")
NUMBER = "+12125550123"
OTHER = "+12125550124"
# A Monday inside the federal calling window in New York.
MONDAY = datetime(2027, 5, 3, 11, 0, tzinfo=NEW_YORK)
DISCONNECTED = date(2026, 11, 2)
REASSIGNED = ListRule(name="reassigned", kind="reassigned", scope="global")
RULE = "reassigned:us-tcpa-consent"
SOURCE = "47 U.S.C. 227(b)(1); 47 CFR 64.1200(a)(2)-(3); reassigned numbers: 47 CFR 64.1200(l), (m)"


def call(dialled: str = NUMBER, **kw: object) -> Attempt:
    return Attempt(dialled, now=MONDAY, campaign="spring", **kw)  # type: ignore[arg-type]


def refuse(rejected: Rejected) -> None:
    raise AssertionError(f"import rejected line {rejected.line_no}: {rejected.why}")


async def disconnects(gate: Gate, lines: Sequence[str]) -> ImportSummary:
    """Import ``lines`` (``number,disconnected_on``) into the ``reassigned`` list."""
    return await admin(gate).import_disconnects("reassigned", lines, TENANT, "", refuse)


async def consent(gate: Gate, granted: datetime, number: str = NUMBER) -> None:
    await admin(gate).add("tcpa_consent", [number], TENANT, "", now=granted)


@pytest.fixture
async def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """The shipped us pack; the National DNC copy imported (empty) the day before."""
    opened = open_gate(pack_config(["us"], "US"))
    await import_list(opened, "national_dnc", [], MONDAY - timedelta(days=1))
    return opened


# --- the file ----------------------------------------------------------------------------


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


# --- the plan ------------------------------------------------------------------------------


def test_the_reassigned_check_follows_its_consent_check() -> None:
    """A campaign call plans D right after the C check it judges (its index), enforced
    while the consent requirement is in shadow; an agent's call plans neither."""
    policy = pack_config(["us"], "US").policy
    campaign = plan(call(), policy, Keyspace("t", None), False)
    manual = plan(call(traffic_class=TrafficClass.MANUAL), policy, Keyspace("t", None), False)
    assert isinstance(campaign, Plan)
    assert isinstance(manual, Plan)
    checks = campaign.check.checks
    at = [c.kind for c in checks].index(CheckKind.CONSENT_REQUIRED)
    assert (
        (CheckKind.REASSIGNED, RULE, "reassigned", (at + 1,), False, True),
        [],
    ) == (
        (
            checks[at + 1].kind,
            checks[at + 1].reason,
            checks[at + 1].key,
            checks[at + 1].params,
            checks[at + 1].shadow,
            checks[at].shadow,
        ),
        [c.rule for c in manual.check.checks if "us-tcpa-consent" in c.rule],
    )


# --- dated scenarios -----------------------------------------------------------------------

SCENARIOS = [
    # (consent granted at, disconnect lines, expected outcome)
    pytest.param(
        datetime(2026, 10, 1, 9, 0, tzinfo=NEW_YORK),
        [f"{NUMBER},2026-11-02"],
        ("BLOCK", RULE, None),
        id="granted-a-month-before",
    ),
    pytest.param(
        datetime(2026, 11, 2, 18, 59, tzinfo=NEW_YORK),  # 23:59 UTC, the disconnect day
        [f"{NUMBER},2026-11-02"],
        ("BLOCK", RULE, None),
        id="granted-on-the-disconnect-day",
    ),
    pytest.param(
        datetime(2026, 11, 2, 19, 1, tzinfo=NEW_YORK),  # 00:01 UTC the day after
        [f"{NUMBER},2026-11-02"],
        ("ALLOW", "allowed", None),
        id="granted-after-the-disconnect-day",
    ),
    pytest.param(
        datetime(2026, 12, 1, 9, 0, tzinfo=NEW_YORK),
        [f"{NUMBER},2026-11-02"],
        ("ALLOW", "allowed", None),
        id="granted-a-month-after",
    ),
    pytest.param(
        datetime(2026, 10, 1, 9, 0, tzinfo=NEW_YORK),
        [f"{OTHER},2026-11-02"],
        ("ALLOW", "allowed", None),
        id="never-disconnected",
    ),
]


@pytest.mark.parametrize(("granted", "lines", "expected"), SCENARIOS)
async def test_a_consent_given_before_the_last_disconnect_is_void(
    gate: Gate, granted: datetime, lines: list[str], expected: tuple[str, str, None]
) -> None:
    """Consent held, number disconnected on 2 Nov 2026 (UTC day): a grant on or before that
    day BLOCKs reassigned:us-tcpa-consent, a later one lets the call go."""
    await consent(gate, granted)
    await disconnects(gate, lines)
    assert expected == outcome(await gate.decide(call(), record=True, door="cli"))


async def test_the_latest_disconnect_wins_across_imports(gate: Gate) -> None:
    """A later import of an older day leaves the newer one; a newer day replaces it."""
    await consent(gate, datetime(2026, 1, 10, tzinfo=UTC))
    first = await disconnects(gate, [f"{NUMBER},2026-11-02", f"{OTHER},2025-01-05"])
    older = await disconnects(gate, [f"{NUMBER},2025-01-05"])
    after_older = outcome(await gate.decide(call(), record=False, door="cli"))
    await consent(gate, datetime(2026, 12, 1, tzinfo=UTC))
    newer = await disconnects(gate, [f"{NUMBER},2027-01-05"])
    after_newer = outcome(await gate.decide(call(), record=False, door="cli"))
    assert [
        ImportSummary(2, 0, 0),
        ImportSummary(0, 1, 0),
        ("BLOCK", RULE, None),
        ImportSummary(1, 0, 0),
        ("BLOCK", RULE, None),
    ] == [first, older, after_older, newer, after_newer]


async def test_no_consent_is_the_consent_rules_concern_not_the_reassigned_one(
    gate: Gate,
) -> None:
    """A disconnected number without a consent: D passes, C (shadow) reports no_consent."""
    await disconnects(gate, [f"{NUMBER},2026-11-02"])
    decision = await gate.decide(call(), record=False, door="cli")
    assert (("ALLOW", "allowed", None), ("no_consent:us-tcpa-consent",)) == (
        outcome(decision),
        decision.shadow,
    )


async def test_an_expired_consent_on_a_reassigned_number_is_still_refused(gate: Gate) -> None:
    """The reassigned check judges the grant time whatever the consent's expiry."""
    granted = datetime(2026, 1, 10, tzinfo=UTC)
    await admin(gate).add(
        "tcpa_consent", [NUMBER], TENANT, "", now=granted, expires=granted + timedelta(days=30)
    )
    await disconnects(gate, [f"{NUMBER},2026-11-02"])
    assert ("BLOCK", RULE, None) == outcome(await gate.decide(call(), record=True, door="cli"))


async def test_explain_names_the_reassigned_rule_and_its_source(gate: Gate) -> None:
    """--explain: the reassigned row says BLOCK, what it judged and 64.1200(l)."""
    await consent(gate, datetime(2026, 10, 1, tzinfo=UTC))
    await disconnects(gate, [f"{NUMBER},2026-11-02"])
    evaluation = await gate.evaluate(call(), record=False, door="cli")
    row = {r.rule: r for r in evaluation.rules}[RULE]
    assert (
        "BLOCK",
        "a consent granted on or before the last disconnect day on reassigned is void; "
        "the consent predates the last disconnect",
        SOURCE,
        "pass",
    ) == (
        row.outcome,
        row.detail,
        row.source,
        {r.rule: r for r in evaluation.rules}["consent:us-tcpa-consent"].outcome,
    )


async def test_a_shadow_consent_rule_shadows_its_reassigned_check_by_default(
    open_gate: Callable[[Config], Gate], tmp_path: Path
) -> None:
    """Without reassigned_shadow the check follows the rule: shadow BLOCK, the call goes."""
    text = (PACKS_DIR / "us.toml").read_text(encoding="utf-8")
    assert "reassigned_shadow = false\n" in text
    (tmp_path / "us.toml").write_text(text.replace("reassigned_shadow = false\n", ""), "utf-8")
    gate = open_gate(pack_config(["us"], "US", packs_dir=tmp_path))
    await import_list(gate, "national_dnc", [], MONDAY - timedelta(days=1))
    await consent(gate, datetime(2026, 10, 1, tzinfo=UTC))
    await disconnects(gate, [f"{NUMBER},2026-11-02"])
    decision = await gate.decide(call(), record=False, door="cli")
    assert (("ALLOW", "allowed", None), (RULE,)) == (outcome(decision), decision.shadow)


# --- the list's administration ---------------------------------------------------------------


async def test_the_list_counts_removes_and_refuses_entries_without_a_date(gate: Gate) -> None:
    """count, remove (a deletions file), and a one-line error for ``add``."""
    lists = admin(gate)
    await disconnects(gate, [f"{NUMBER},2026-11-02", f"{OTHER},2026-11-03"])
    counted = await lists.count("reassigned", TENANT, "")
    removed = await lists.import_disconnects(
        "reassigned", [f"{OTHER},2026-11-03"], TENANT, "", refuse, mode="remove"
    )
    with pytest.raises(InputError) as caught:
        await lists.add("reassigned", [NUMBER], TENANT, "")
    assert (2, ImportSummary(1, 0, 0), 1) == (
        counted,
        removed,
        await lists.count("reassigned", TENANT, ""),
    )
    assert str(caught.value).startswith(
        "list 'reassigned' holds the day each number was last disconnected: import them"
    )


@pytest.mark.parametrize("garbage", ["garbage", "", "1.7e12", "99999999999999999"])
async def test_an_unreadable_disconnect_entry_voids_the_consent_until_imported_again(
    gate: Gate, sync_redis: redis.Redis, garbage: str
) -> None:
    """An entry callgate did not write (by hand, another tool) says nothing of when the
    number was disconnected: its consent counts as void (BLOCK, not an error nor a call);
    importing the number's disconnection again replaces it (counted as imported)."""
    await consent(gate, datetime(2026, 12, 1, tzinfo=UTC))
    await disconnects(gate, [f"{NUMBER},2026-11-02"])
    keys = gate.keyspace.number(NUMBER)
    entry = gate.keyspace.consent_key(keys.group, admin(gate).key("reassigned", TENANT, ""))
    sync_redis.hset(entry, keys.token, garbage)
    held = outcome(await gate.decide(call(), record=True, door="cli"))
    again = await disconnects(gate, [f"{NUMBER},2026-11-02"])
    assert [("BLOCK", RULE, None), ImportSummary(1, 0, 0), ("ALLOW", "allowed", None)] == [
        held,
        again,
        outcome(await gate.decide(call(), record=True, door="cli")),
    ]


async def test_list_metrics_count_a_reassigned_list(gate: Gate) -> None:
    """The list gauges are refreshed with the us pack on, the reassigned list among them
    (its info used to fail, and with it every list's gauge)."""
    await disconnects(gate, [f"{NUMBER},2026-11-02", f"{OTHER},2026-11-03"])
    metrics = Metrics()
    await refresh_lists(metrics, gate)
    assert 2.0 == metrics.registry.get_sample_value(
        "callgate_list_entries", {"list": "reassigned", "tenant": ""}
    )


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def us_config(tmp_path: Path, redis_url: str) -> Path:
    """The sample config with the us pack, numbers stored plain (export)."""
    path = tmp_path / "callgate.toml"
    path.write_text(
        sample_config(
            redis_url,
            gate={"packs": ["us"], "default_region": "US"},
            privacy={"hash_numbers": False},
        ),
        encoding="utf-8",
    )
    return path


def test_the_cli_imports_exports_and_enforces_a_reassigned_list(
    capsys: pytest.CaptureFixture[str], us_config: Path, tmp_path: Path
) -> None:
    """``list import reassigned FILE`` (a bad line reported), ``list count``, ``list export``
    as ``number,disconnected_on``, and ``check --explain`` refusing the void consent."""
    rnd = tmp_path / "rnd.csv"
    rnd.write_text(
        f"number,disconnected_on\n{NUMBER},2026-11-02\n{OTHER},2026-11-03\n{OTHER},2025-01-01\n"
        "+12125550125,yesterday\n",
        encoding="utf-8",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    cli = [
        run(capsys, us_config, "list", "import", "reassigned", str(rnd)),
        run(capsys, us_config, "list", "count", "reassigned"),
    ]
    exported = run(capsys, us_config, "list", "export", "reassigned")
    run(capsys, us_config, "list", "import", "national_dnc", str(empty), "--refreshed-at",
        "2026-11-30T00:00Z")  # fmt: skip
    run(capsys, us_config, "consent", "add", NUMBER, "--list", "tcpa_consent", "--granted-at",
        "2026-10-01T09:00-04:00")  # fmt: skip
    status, out, _ = run(
        capsys, us_config, "check", NUMBER, "--campaign", "spring", "--at",
        "2027-05-03T11:00-04:00", "--json", "--explain",
    )  # fmt: skip
    result = json.loads(out)
    rows = {row["rule"]: row for row in result["rules"]}
    assert [
        (0, "2 imported, 1 duplicate, 1 rejected\n"),
        (0, "2\n"),
    ] == [(s, o) for s, o, _ in cli]
    assert "rnd.csv:5: rejected: 'yesterday' is not a date" in cli[0][2]
    assert (0, [f"{NUMBER},2026-11-02", f"{OTHER},2026-11-03"]) == (
        exported[0],
        sorted(exported[1].split()),
    )
    assert (3, "BLOCK", RULE, "BLOCK") == (
        status,
        result["verdict"],
        result["reason"],
        rows[RULE]["outcome"],
    )


def test_the_cli_export_names_an_unreadable_disconnect_entry(
    capsys: pytest.CaptureFixture[str], us_config: Path, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """``list export`` of a reassigned list holding an entry callgate did not write: one
    line naming the HASH, the number and what to do; after the import that replaces it, the
    export works."""
    rnd = tmp_path / "rnd.csv"
    rnd.write_text(f"{NUMBER},2026-11-02\n", encoding="utf-8")
    run(capsys, us_config, "list", "import", "reassigned", str(rnd))
    (entry,) = (k for k in sync_redis.scan_iter(count=1000) if sync_redis.type(k) == b"hash"
                and sync_redis.hlen(k) == 1 and b":c:" in k)  # fmt: skip
    (token,) = sync_redis.hkeys(entry)
    sync_redis.hset(entry, token, "yesterday")
    refused = run(capsys, us_config, "list", "export", "reassigned")
    run(capsys, us_config, "list", "import", "reassigned", str(rnd))
    assert [
        (
            2,
            "",
            f"callgate: error: {entry.decode()} holds 'yesterday' for {token.decode()}, not the "
            "time callgate writes (it counts as a void consent): import that number's "
            "disconnection again, which replaces it, then export again\n",
        ),
        (0, f"{NUMBER},2026-11-02\n", ""),
    ] == [refused, run(capsys, us_config, "list", "export", "reassigned")]


def test_the_cli_tells_a_reassigned_lists_info_as_json(
    capsys: pytest.CaptureFixture[str], us_config: Path, tmp_path: Path
) -> None:
    """``list info reassigned --json`` answers the typed info (kind ``reassigned``); it
    ended in a traceback (a kind the answer's model did not know)."""
    rnd = tmp_path / "rnd.csv"
    rnd.write_text(f"{NUMBER},2026-11-02\n", encoding="utf-8")
    run(capsys, us_config, "list", "import", "reassigned", str(rnd))
    status, out, _ = run(capsys, us_config, "list", "info", "reassigned", "--json")
    info = json.loads(out)
    assert (0, "reassigned", 1) == (status, info["kind"], info["entries"])


@pytest.mark.parametrize(
    "options",
    [["--format", "csv"], ["--column", "1"], ["--header"], ["--replace"]],
    ids=["format", "column", "header", "replace"],
)
def test_the_cli_refuses_options_a_reassigned_file_does_not_take(
    capsys: pytest.CaptureFixture[str], us_config: Path, tmp_path: Path, options: list[str]
) -> None:
    """A reassigned list's file has one format: other options are a one-line error."""
    rnd = tmp_path / "rnd.csv"
    rnd.write_text(f"{NUMBER},2026-11-02\n", encoding="utf-8")
    status, _, err = run(capsys, us_config, "list", "import", "reassigned", str(rnd), *options)
    assert (
        2,
        "callgate: error: list 'reassigned' is a reassigned list: its file has lines "
        "number,disconnected_on (no --format, --column, --header, --keep or --replace)\n",
    ) == (status, err)
