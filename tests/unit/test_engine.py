"""The pure decision core: static rules, the store check it plans, the decision it concludes."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.core.engine import (
    Check,
    CheckKind,
    Plan,
    Planner,
    StoreCheck,
    StoreResult,
    conclude,
    evolve,
    explain,
    fail_mode_decision,
    plan,
)
from gate.core.evidence import check_summary, hours_summary, stored_record
from gate.core.keys import Keyspace
from gate.core.model import Attempt, Decision, TrafficClass, Verdict
from tests.conftest import TEST_SECRET, make_config

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
POLICY = make_config().policy
KEYS = Keyspace("callgate", TEST_SECRET.encode())


def attempt(dialled: str, **kw: object) -> Attempt:
    return Attempt(dialled=dialled, now=NOW, **kw)  # type: ignore[arg-type]


def planned(a: Attempt, record: bool = True) -> Plan:
    result = plan(a, POLICY, KEYS, record)
    assert isinstance(result, Plan)
    return result


@pytest.mark.parametrize(
    ("dialled", "traffic_class", "expected"),
    [
        ("17", TrafficClass.MANUAL, (Verdict.ALLOW, "emergency")),
        ("17", TrafficClass.CAMPAIGN, (Verdict.BLOCK, "emergency")),
        ("112", TrafficClass.CAMPAIGN, (Verdict.BLOCK, "emergency")),
        ("118712", TrafficClass.CAMPAIGN, (Verdict.BLOCK, "number_type:short")),
        ("3919", TrafficClass.MANUAL, (Verdict.ALLOW, "short_number")),
        ("0899123456", TrafficClass.CAMPAIGN, (Verdict.BLOCK, "number_type:premium")),
        ("0810123456", TrafficClass.CAMPAIGN, (Verdict.BLOCK, "number_type:shared_cost")),
        ("not a number", TrafficClass.CAMPAIGN, (Verdict.BLOCK, "invalid_number")),
        ("0612", TrafficClass.MANUAL, (Verdict.BLOCK, "invalid_number")),
    ],
)
def test_static_rules_decide_without_the_store(
    dialled: str, traffic_class: TrafficClass, expected: tuple[Verdict, str]
) -> None:
    """Emergency, short, premium and invalid numbers are decided before any Redis work."""
    result = plan(attempt(dialled, traffic_class=traffic_class), POLICY, KEYS, True)
    assert isinstance(result, Decision)
    assert expected == (result.verdict, result.reason)


def test_manual_traffic_may_dial_premium_numbers() -> None:
    """number_types.manual_blocked is empty by default: an agent may call an 089 number."""
    assert isinstance(
        plan(attempt("0899123456", traffic_class=TrafficClass.MANUAL), POLICY, KEYS, True), Plan
    )


def keys_of(p: Plan) -> list[str]:
    return [c.key for c in p.check.checks if c.key]


def test_plan_names_keys_in_the_numbers_slot_group_and_cps_in_its_own() -> None:
    """The number's checks name keys relative to it (the store puts them in its slot
    group, the plan's prefix); the trunk's CPS log is a whole key with its own hash tag."""
    p = planned(attempt("0612345678", tenant="acme", campaign="spring", trunk="carrier-a"))
    number = KEYS.number("+33612345678")
    own = [c.key for c in p.check.checks if c.key and not c.shared]
    shared = [c.key for c in p.check.checks if c.shared]
    assert (5, ["callgate:{cps:carrier-a}"]) == (len(own), shared)
    assert not any("{" in key for key in own)
    assert KEYS.prefix(number.group) == p.check.prefix
    assert (True, True) == (p.check.prefix.startswith("callgate:{"), p.check.prefix.endswith("}:"))


def test_plan_scopes_keys_by_tenant_and_campaign() -> None:
    """Tenant lists and caps are per tenant; campaign lists only apply with a campaign."""
    with_campaign = planned(attempt("0612345678", tenant="acme", campaign="spring"))
    without = planned(attempt("0612345678", tenant="acme"))
    assert "red:t:acme" in keys_of(with_campaign)
    assert "camp:c:acme:spring" in keys_of(with_campaign)
    assert ["list:customers", "list:red", "list:dnc"] == [
        c.rule for c in without.check.checks if c.kind in "AB"
    ]


def test_plan_encodes_allow_list_exemptions() -> None:
    """dnc is exempted by customers (check 1, an allow list); red by nobody."""
    p = planned(attempt("0612345678"))
    checks = {c.rule: c for c in p.check.checks}
    assert ("A", (), (1,)) == (
        checks["list:customers"].kind,
        checks["list:red"].exempt_by,
        checks["list:dnc"].exempt_by,
    )


def test_numbers_at_rest_are_tokens_not_numbers() -> None:
    """With a secret, neither keys nor the token contain the number."""
    p = planned(attempt("0612345678"))
    assert "33612345678" not in p.check.number.token
    assert all("33612345678" not in key for key in keys_of(p))
    assert 16 == len(p.check.number.token)


def test_plain_storage_is_an_explicit_option() -> None:
    """Without a secret the token is the E.164 number itself."""
    p = plan(attempt("0612345678"), POLICY, Keyspace("callgate", None), True)
    assert isinstance(p, Plan)
    assert "+33612345678" == p.check.number.token


def test_caps_apply_to_their_traffic_classes_only() -> None:
    """A cap limited to campaign traffic is not in a manual attempt's plan."""
    config = make_config(
        {"caps": [{"id": "c", "limit": 1, "window": "1d", "classes": ["campaign"]}]}
    )
    manual = plan(
        attempt("0612345678", traffic_class=TrafficClass.MANUAL), config.policy, KEYS, True
    )
    assert isinstance(manual, Plan)
    assert [] == [c for c in manual.check.checks if c.kind == "L"]


def test_trunk_cps_only_for_capped_trunks() -> None:
    """A trunk with no configured cap plans no CPS check."""
    capped = planned(attempt("0612345678", trunk="carrier-a")).check.checks
    other = planned(attempt("0612345678", trunk="other")).check.checks
    assert (["cps:carrier-a"], []) == (
        [c.rule for c in capped if c.rule.startswith("cps:")],
        [c.rule for c in other if c.rule.startswith("cps:")],
    )


def test_a_trunk_not_in_trunks_cps_gets_the_default_cap_and_says_so() -> None:
    """With trunks.default_cps, a trunk [trunks.cps] does not name is capped by it; its
    explain row says the default cap applied (detail, source), a named trunk's does not."""
    policy = make_config({"trunks": {"default_cps": 5, "cps": {"carrier-a": 20}}}).policy
    rows = {}
    for trunk in ("carrier-a", "carier-a"):
        pending = plan(attempt("0612345678", trunk=trunk), policy, KEYS, True)
        assert isinstance(pending, Plan)
        seen = tuple(0 for _ in pending.check.checks)
        rows.update(
            {r.rule: (r.detail, r.source) for r in explain(pending, StoreResult(0, 0, seen))}
        )
    default = "5 per second, the default cap: carier-a is not in [trunks.cps]; 0 of 5 in window"
    assert (("20 per second; 0 of 20 in window", ""), (default, "trunks.default_cps")) == (
        rows["cps:carrier-a"],
        rows["cps:carier-a"],
    )


PLAN = planned(attempt("0612345678", trunk="carrier-a"))
INDEX = {c.rule: i for i, c in enumerate(PLAN.check.checks, start=1)}
NOTHING = tuple(0 for _ in PLAN.check.checks)


def result(rule: str = "", retry_ms: int = 0) -> StoreResult:
    return StoreResult(INDEX[rule] if rule else 0, retry_ms, NOTHING)


@pytest.mark.parametrize(
    ("store_result", "expected"),
    [
        (result(), Decision(Verdict.ALLOW, "allowed", "", "+33612345678")),
        (result("list:red"), Decision(Verdict.BLOCK, "listed:red", "list:red", "+33612345678")),
        (
            result("cap:fr-4-per-30d", 86_400_000),
            Decision(
                Verdict.DEFER, "cap:fr-4-per-30d", "cap:fr-4-per-30d", "+33612345678", 86400.0
            ),
        ),
        (
            result("cps:carrier-a", 40),
            Decision(Verdict.DEFER, "cps:carrier-a", "cps:carrier-a", "+33612345678", 0.04),
        ),
    ],
)
def test_conclude_maps_the_deciding_check(store_result: StoreResult, expected: Decision) -> None:
    """The deciding check becomes its verdict, stable reason code and retry time."""
    assert expected == conclude(PLAN, store_result)


def test_a_due_retry_is_never_zero() -> None:
    """A DEFER always says to wait at least a millisecond."""
    assert 0.001 == conclude(PLAN, result("cap:fr-4-per-30d", 0)).retry_after_s


@pytest.mark.parametrize(
    ("traffic_class", "verdict", "retry"),
    [(TrafficClass.CAMPAIGN, Verdict.DEFER, 60.0), (TrafficClass.MANUAL, Verdict.ALLOW, None)],
)
def test_fail_mode_is_per_traffic_class(
    traffic_class: TrafficClass, verdict: Verdict, retry: float | None
) -> None:
    """store_unavailable takes the configured verdict of the attempt's class."""
    config = make_config({"fail_mode": {"manual": "ALLOW"}})
    a = attempt("0612345678", traffic_class=traffic_class)
    decision = fail_mode_decision(a, planned(a), config.fail_mode)
    assert (verdict, "store_unavailable", retry) == (
        decision.verdict,
        decision.reason,
        decision.retry_after_s,
    )


@pytest.mark.parametrize(
    ("at", "retry_after", "expected"),
    [
        # Tuesday 19:59:30 Paris: 60 s later the D223-9 hours are closed until Wednesday
        # 10:00 (14 h 0 min 30 s).
        (datetime(2026, 12, 1, 18, 59, 30, tzinfo=UTC), "60s", 50430.0),
        (datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "60s", 60.0),  # 11:00: open then
        (datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "200us", 0.001),  # never 0 (rounded)
    ],
)
def test_a_fail_mode_retry_is_a_legal_calling_time(
    at: datetime, retry_after: str, expected: float
) -> None:
    """store_unavailable DEFERs to the first opening of the hours in force at or after
    ``retry_after``, to the millisecond at least, as a store's DEFER does."""
    config = make_config(
        {
            "gate": {"default_region": "FR", "packs": ["fr"], "packs_dir": str(PACKS_DIR)},
            "fail_mode": {"retry_after": retry_after},
        }
    )
    a = Attempt(dialled="0612345678", now=at)
    pending = plan(a, config.policy, KEYS, True)
    assert isinstance(pending, Plan)
    decision = fail_mode_decision(a, pending, config.fail_mode)
    assert (Verdict.DEFER, "store_unavailable", expected) == (
        decision.verdict,
        decision.reason,
        decision.retry_after_s,
    )


def test_explain_names_each_rule_in_force() -> None:
    """--explain lists the number, packs, each list and each cap with its outcome."""
    p = planned(attempt("0612345678"))
    seen = tuple(1 if c.rule == "list:red" else 0 for c in p.check.checks)
    decided = next(i for i, c in enumerate(p.check.checks, start=1) if c.rule == "list:red")
    rows = explain(p, StoreResult(decided, 0, seen))
    assert [
        ("numbers", "pass"),
        ("packs", "none"),
        ("list:customers", "not listed"),
        ("list:red", "BLOCK"),
        ("list:dnc", "pass"),
        ("cap:fr-4-per-30d", "pass"),
    ] == [(r.rule, r.outcome) for r in rows]


def test_shadow_checks_are_reported_not_enforced() -> None:
    """A shadow check that would decide shows up in Decision.shadow; the call is allowed."""
    check = Check(
        CheckKind.ATTEMPT_LOG, "cap:trial", "cap:trial", "cap:trial", (1, 1000), shadow=True
    )
    p = planned(attempt("0612345678"))
    shadowed = Plan(
        p.attempt,
        p.destination,
        p.packs,
        p.static,
        p.shadow,
        replace(p.check, record=True, checks=(check,)),
    )
    decision = conclude(shadowed, StoreResult(0, 0, (3,)))
    assert (Verdict.ALLOW, ("cap:trial",)) == (decision.verdict, decision.shadow)


def test_hangup_causes() -> None:
    """BLOCK suggests Q.850 cause 21 (call rejected), DEFER 34, ALLOW 0."""
    assert [21, 34, 0] == [
        Decision(Verdict.BLOCK, "r", "r").hangup_cause,
        Decision(Verdict.DEFER, "r", "r").hangup_cause,
        Decision(Verdict.ALLOW, "r", "r").hangup_cause,
    ]


PACKS_DIR = Path(__file__).resolve().parents[2] / "config" / "packs"
MIXED_NUMBERS = [
    "0612345678",
    "0712345678",
    "0612345678",
    "0145678901",
    "0899123456",
    "0810123456",
    "17",
    "3919",
    "not a number",
    "+12125551234",
    "+14055551234",
    "+12405551234",
    "+18005551234",
    "+447911123456",
    "+442071234567",
    "+14165551234",
    "+16045551234",
    # US territories: regions of their own under the us pack (Puerto Rico, Guam).
    "+17875551234",
    "+16712345678",
    "+3361234567",
    # Overseas: a calling code shared by regions whose calendars the fr pack names apart
    # (Guadeloupe's mobiles also serve Saint-Barthélemy and Saint-Martin; Réunion/Mayotte).
    "+590690123456",
    "+590590271234",
    "+262262123456",
    "+262639123456",
]


ALL_PACKS = make_config(
    {
        "gate": {
            "default_region": "FR",
            "packs": ["fr", "us", "uk", "ca"],
            "packs_dir": str(PACKS_DIR),
        },
        "caps": [
            {"id": "tenant-3-per-day", "limit": 3, "window": "1d", "scope": "tenant"},
            {"id": "campaign-2-per-h", "limit": 2, "window": "1h", "scope": "campaign"},
        ],
        "trunks": {"cps": {"carrier-a": 10}},
    }
).policy
# Instants within two days of dates that matter (both DST changes, the fr pack's
# 2026-08-11 switch, French, US and overseas holidays, a weekend), to the millisecond:
# many attempts share a callee-local day, at open and closed hours.
INSTANTS = st.builds(
    lambda day, ms: day + timedelta(milliseconds=ms),
    st.sampled_from(
        [
            datetime(2026, 3, 7, tzinfo=UTC),
            datetime(2026, 3, 28, tzinfo=UTC),
            datetime(2026, 7, 3, tzinfo=UTC),
            datetime(2026, 8, 10, tzinfo=UTC),
            datetime(2026, 12, 5, tzinfo=UTC),
            datetime(2026, 12, 24, tzinfo=UTC),
            datetime(2027, 5, 26, tzinfo=UTC),
        ]
    ),
    st.integers(0, 2 * 86_400_000),
)
CONTEXTS = st.fixed_dictionaries(
    {
        "tenant": st.sampled_from(["default", "acme"]),
        "campaign": st.sampled_from(["", "spring"]),
        "trunk": st.sampled_from(["", "carrier-a"]),
        "caller_id": st.sampled_from([None, "", "unknown", "+33162000000", "0612345678"]),
        "traffic_class": st.sampled_from(list(TrafficClass)),
    }
)
CALLS = st.tuples(
    st.integers(0, 2),  # which context
    st.sampled_from(MIXED_NUMBERS),
    st.integers(0, 6 * 3_600_000),  # ms after the first call: same local day or the next
    st.sampled_from(["", "PJSIP/sipp-00000001", "Local/0612345678@gated-0000;1"]),
)


@settings(max_examples=300, deadline=None)
@given(
    contexts=st.lists(CONTEXTS, min_size=3, max_size=3),
    start=INSTANTS,
    calls=st.lists(CALLS, min_size=5, max_size=40),
    record=st.booleans(),
)
def test_a_live_planner_plans_every_attempt_exactly_like_plan(
    contexts: list[dict[str, Any]],
    start: datetime,
    calls: list[tuple[int, str, int, str]],
    record: bool,
) -> None:
    """The doors' Planner, which reuses plans across numbers and instants, gives each
    attempt (any number, instant, tenant, campaign, trunk, caller ID, class, channel) the
    very plan ``plan`` gives it, in any order."""
    planner = Planner(ALL_PACKS, KEYS, record)
    for which, dialled, after_ms, channel in calls:
        now = start + timedelta(milliseconds=after_ms)
        a = Attempt(dialled, now, channel=channel, **contexts[which])
        assert plan(a, ALL_PACKS, KEYS, record) == planner.plan(a)


@pytest.mark.parametrize(
    ("dialled", "around"),
    [
        # Paris (UTC+1 in December): the fr hours close at 13:00 and 20:00, open at 14:00.
        ("0612345678", datetime(2026, 12, 7, 11, 58, 0, tzinfo=UTC)),
        ("0612345678", datetime(2026, 12, 7, 18, 58, 0, tzinfo=UTC)),
        ("0612345678", datetime(2026, 12, 7, 12, 58, 0, tzinfo=UTC)),
        # Réunion (UTC+4): its own hours, the same rule in another zone.
        ("+262262123456", datetime(2026, 12, 7, 15, 58, 0, tzinfo=UTC)),
        # New York (UTC-5): the us pack's window closes at 21:00.
        ("+12125550123", datetime(2026, 12, 8, 1, 58, 0, tzinfo=UTC)),
    ],
)
def test_a_live_planner_follows_the_hours_across_their_bounds(
    dialled: str, around: datetime
) -> None:
    """The Planner makes the hours check once per minute while the hours are open: at
    every step of 1.5 s over four minutes around a bound (and back and forth inside a
    minute), its plan is the one ``plan`` makes at that instant."""
    planner = Planner(ALL_PACKS, KEYS, True)
    steps = [around + timedelta(milliseconds=1500 * i) for i in range(160)]
    steps += [around + timedelta(seconds=s) for s in (119.9, 60.0, 119.999, 59.999, 120.0)]
    waits = set()
    for now in steps:
        a = Attempt(dialled, now, trunk="carrier-a", caller_id="+33162000000")
        expected = plan(a, ALL_PACKS, KEYS, True)
        assert planner.plan(a) == expected
        assert isinstance(expected, Plan)
        waits |= {c.params[0] == 0 for c in expected.check.checks if c.kind is CheckKind.WINDOW}
    assert waits == {True, False}  # the steps crossed a bound


def test_the_hours_check_is_kept_a_minute_only_in_whole_minute_zones() -> None:
    """A zone whose offset is not whole minutes (Monrovia kept -0:44:30 until 1972) gets its
    hours check made at every instant; today's zones are whole minutes."""
    from gate.core.engine import _whole_minute_offsets, _Window

    rule = next(r for pack in ALL_PACKS.packs for r in pack.hours if not r.zone)
    window = _Window(0, (rule,), ("Africa/Monrovia",), ())
    assert not _whole_minute_offsets(window, datetime(1971, 6, 1, tzinfo=UTC))
    assert _whole_minute_offsets(window, datetime(2026, 6, 1, tzinfo=UTC))


def test_evolve_gives_what_dataclasses_replace_gives() -> None:
    """``evolve`` (the gate's fast ``replace`` of an attempt, a plan, its store check) gives
    values equal to ``dataclasses.replace``'s, and leaves the original as it was."""
    a = attempt("0612345678", channel="Local/0612345678@out-0001")
    pending = planned(a)
    cases = [
        (a, {"channel": "Local/<redacted>@out-0001"}),
        (pending, {"attempt": evolve(a, tenant="acme")}),
        (pending.check, {"now_ms": 1, "evidence": None, "prefix": "{x}"}),
    ]
    for value, changes in cases:
        before = replace(value)
        assert replace(value, **changes) == evolve(value, **changes)
        assert before == value


@dataclass(frozen=True, slots=True)
class _Checked:
    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count < 0")


def test_evolve_refuses_a_value_whose_post_init_it_would_skip() -> None:
    """``evolve`` sets the fields by their slots, so a ``__post_init__`` (a check, a
    derived field) would never run: such a value is a TypeError, never a copy that
    ``dataclasses.replace`` would refuse (here: a negative count)."""
    with pytest.raises(TypeError, match="has a __post_init__"):
        evolve(_Checked(1), count=-1)


@pytest.mark.parametrize("when", [NOW, datetime(2026, 12, 6, 22, 0, tzinfo=UTC)])
@pytest.mark.parametrize("caller_id", [None, "", "+33162000000", "+33612345678"])
def test_planner_plans_exactly_like_plan(when: datetime, caller_id: str | None) -> None:
    """A scrub's Planner gives, number after number, the very plan ``plan`` gives."""
    config = make_config(
        {
            "gate": {
                "default_region": "FR",
                "packs": ["fr", "us", "uk", "ca"],
                "packs_dir": str(PACKS_DIR),
            }
        }
    )
    planner = Planner(config.policy, KEYS, False)
    for dialled in MIXED_NUMBERS * 2:
        for traffic_class in TrafficClass:
            a = Attempt(dialled, when, caller_id=caller_id, traffic_class=traffic_class)
            assert plan(a, config.policy, KEYS, False) == planner.plan(a)


@pytest.mark.parametrize("when", [NOW, datetime(2026, 12, 6, 22, 0, tzinfo=UTC)])
@pytest.mark.parametrize("caller_id", [None, "+33162000000", "+33612345678"])
def test_planner_checks_are_the_checks_of_plan(when: datetime, caller_id: str | None) -> None:
    """A scrub's ``Planner.checks`` (one attempt, many numbers) gives, number after
    number, the store check of the plan ``plan`` makes (or its decision)."""
    config = make_config(
        {"gate": {"default_region": "FR", "packs": ["fr", "us"], "packs_dir": str(PACKS_DIR)}}
    )
    planner = Planner(config.policy, KEYS, False)
    # Numbers alike but for their digits: their checks are made from one plan's model.
    numbers = [*MIXED_NUMBERS, "0612345679", "0698765432", "0145678902", "+12125559876"] * 2
    for traffic_class in TrafficClass:
        template = Attempt("", when, caller_id=caller_id, traffic_class=traffic_class)
        expected = []
        for dialled in numbers:
            made = plan(evolve(template, dialled=dialled), config.policy, KEYS, False)
            expected.append(made.check if isinstance(made, Plan) else made)
        assert planner.checks(template, numbers) == expected
        assert {type(c) for c in expected} == {StoreCheck, Decision}


@pytest.mark.parametrize("reverse", [False, True])
def test_planner_checks_tell_apart_numbers_a_rule_prefix_tells_apart(
    tmp_path: Path, reverse: bool
) -> None:
    """``Planner.checks`` reuses a plan model for the numbers of one region, type and zones
    that begin alike: mobiles of one zone that a rule's prefix tells apart by their 7th
    character (+336123 refused, +336124 not) or their 5th (+3373 refused, +3377 not) each
    get the decision or check of the plan ``plan`` makes, in either order."""
    fr = (PACKS_DIR / "fr.toml").read_text()
    (tmp_path / "fr.toml").write_text(
        fr + '\n[[destinations]]\nid = "test-prefix"\nclasses = ["campaign"]\n'
        'blocked_prefixes = ["+336123", "+3373"]\nsource = "a test"\n'
    )
    config = make_config(
        {"gate": {"default_region": "FR", "packs": ["fr"], "packs_dir": str(tmp_path)}}
    )
    numbers = ["0612445678", "0612345678", "0612455678", "0612355678", "0773123456"]
    numbers += ["0732345678", "0612345679", "0612445679"]
    numbers = numbers[::-1] if reverse else numbers
    template = Attempt("", NOW, caller_id="+33162000000")
    expected = []
    for dialled in numbers:
        made = plan(evolve(template, dialled=dialled), config.policy, KEYS, False)
        expected.append(made.check if isinstance(made, Plan) else made)
    got = Planner(config.policy, KEYS, False).checks(template, numbers)
    assert expected == got
    refused = {n for n, c in zip(numbers, got, strict=True) if isinstance(c, Decision)}
    assert {"0612345678", "0612355678", "0732345678", "0612345679"} == refused
    assert {c.reason for c in got if isinstance(c, Decision)} == {"number_type:test-prefix"}


def test_a_cap_retry_moves_to_an_opening_in_every_zone_of_the_number() -> None:
    """A cap's wait that ends outside the calling hours retries when they are open in every
    zone of the number: a Réunion/Mayotte mobile (fr pack; UTC+4, UTC+3) whose cap ends at
    13:30 in Réunion retries at 15:00 there, when Mayotte's lunch break (13:00-14:00) ends."""
    now = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)  # 11:30 Réunion, 10:30 Mayotte: open
    a = Attempt("+262692123456", now, caller_id="+33162000000")
    pending = plan(a, ALL_PACKS, KEYS, True)
    assert isinstance(pending, Plan)
    checks = pending.check.checks
    cap = 1 + [c.rule for c in checks].index("cap:tenant-3-per-day")
    seen = tuple(0 for _ in checks)
    decision = conclude(pending, StoreResult(cap, 2 * 3_600_000, seen))  # ends at 09:30 UTC
    opens = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)  # 15:00 Réunion, 14:00 Mayotte
    assert (Verdict.DEFER, "cap:tenant-3-per-day", (opens - now).total_seconds()) == (
        decision.verdict,
        decision.reason,
        decision.retry_after_s,
    )


# Numbers whose calling hours have place calendars (Guadeloupe's mobiles), two zones
# (Réunion/Mayotte mobiles), state rules with their own calendars and fixed zones (US).
HOURS_NUMBERS = ["+590690123456", "+262692123456", "+12125550123", "+18015550123", "+33612345678"]


@settings(max_examples=200, deadline=None)
@given(
    dialled=st.sampled_from(HOURS_NUMBERS),
    when=st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    wait_ms=st.integers(1, 70 * 86_400_000),
)
def test_an_audit_entry_reads_back_the_retry_the_decision_gave(
    dialled: str, when: datetime, wait_ms: int
) -> None:
    """A cap's DEFER read back from its audit head (JSON, as decide.lua stores it: the
    checks' summary and the calling hours) has the decision's retry, moved or not."""
    pending = plan(Attempt(dialled, when, caller_id="+33162000000"), ALL_PACKS, KEYS, True)
    assert isinstance(pending, Plan)
    checks = pending.check.checks
    cap = next(i for i, c in enumerate(checks, 1) if c.kind is CheckKind.ATTEMPT_LOG)
    seen = tuple(0 for _ in checks)
    decision = conclude(pending, StoreResult(cap, wait_ms, seen))
    hours = hours_summary(checks)
    head = json.loads(
        json.dumps(
            {
                "ts": str(pending.check.now_ms),
                "shadow": [],
                "checks": check_summary(checks, [""] * len(checks)),
                **({"hours": hours} if hours is not None else {}),
            }
        )
    )
    reply = ",".join(str(n) for n in (cap, wait_ms, *seen))
    assert decision.retry_after_s is not None
    expected = f"{decision.retry_after_s:.3f}".rstrip("0").rstrip(".")
    assert expected == stored_record(head, reply)["retry_after_s"]


@pytest.mark.parametrize(
    "caller_id",
    [
        "unavailable",
        "Unavailable",
        "WITHHELD",
        "sip:anonymous@anonymous.invalid",
        '"Anonymous" <anonymous>',
        '"Acme" <sip:Anonymous@example.com;user=phone>',
    ],
)
def test_every_spelling_of_a_withheld_caller_id_is_masked(tmp_path: Path, caller_id: str) -> None:
    """A withheld caller ID however written (carriers' "unavailable", SIP's anonymous URI,
    CALLERID(all)'s display name form) is masked: a rule that forbids masked caller IDs
    but lets invalid ones pass refuses it, as it does "anonymous"."""
    (tmp_path / "cid.toml").write_text(
        '[pack]\nid = "cid"\nversion = "1"\nregions = ["FR"]\n\n'
        '[[caller_id]]\nid = "cid-shown"\nrequire_valid = false\nsource = "test"\n'
    )
    config = make_config(
        {"gate": {"default_region": "FR", "packs": ["cid"], "packs_dir": str(tmp_path)}}
    )
    result = plan(attempt("0612345678", caller_id=caller_id), config.policy, KEYS, True)
    assert isinstance(result, Decision)
    assert (Verdict.BLOCK, "caller_id:masked") == (result.verdict, result.reason)


@pytest.mark.parametrize("named", ['"Acme" <+33612345678>', "Acme <+33612345678>"])
def test_a_caller_id_with_a_display_name_is_read_as_its_number(named: str) -> None:
    """CALLERID(all)'s ``"Acme" <+33612345678>`` presents +33612345678: the fr pack's
    rules judge that number (a mobile, forbidden to a dialer), as for the bare number."""
    bare = plan(attempt("0612345678", caller_id="+33612345678"), ALL_PACKS, KEYS, True)
    shown = plan(attempt("0612345678", caller_id=named), ALL_PACKS, KEYS, True)
    assert isinstance(bare, Decision)
    assert isinstance(shown, Decision)
    assert ("caller_id:forbidden_range", bare.reason) == (shown.reason, shown.reason)
