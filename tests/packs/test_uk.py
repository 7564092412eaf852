"""The United Kingdom pack (config/packs/uk.toml) against a REAL Redis: TPS/CTPS screening
and its 28-day freshness, the 72 h pause after an abandoned call, caller-ID display and the
ban on 09 numbers as CLI."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gate.config.loader import Config
from gate.core.model import Attempt, TrafficClass
from gate.service import Gate
from tests.packs.conftest import (
    TENANT,
    admin,
    import_list,
    outcome,
    pack_config,
    pack_rules,
    upcoming,
)

LONDON = ZoneInfo("Europe/London")
CONSUMER = "+442079460123"
BUSINESS = "+441212345678"
CALLER_ID = "+442071234567"
TUESDAY = datetime(2026, 12, 1, 11, 0, tzinfo=LONDON)
CAMPAIGN, MANUAL = TrafficClass.CAMPAIGN, TrafficClass.MANUAL


def call(
    at: datetime,
    dialled: str = CONSUMER,
    caller_id: str = CALLER_ID,
    traffic_class: TrafficClass = CAMPAIGN,
) -> Attempt:
    return Attempt(dialled, now=at, caller_id=caller_id, traffic_class=traffic_class)


async def screen(
    gate: Gate, at: datetime, tps: Sequence[str] = (), ctps: Sequence[str] = ()
) -> None:
    """TPS and CTPS imports refreshed a day before ``at``."""
    await import_list(gate, "tps", tps, at - timedelta(days=1))
    await import_list(gate, "ctps", ctps, at - timedelta(days=1))


@pytest.fixture
def gate(open_gate: Callable[[Config], Gate]) -> Gate:
    """A Gate with the shipped uk pack (UK dialling)."""
    return open_gate(pack_config(["uk"], "GB"))


def test_pack_loads_with_sources_and_verify_marks() -> None:
    """uk.toml loads; every rule names its source; the Ofcom and CLI rules are verify."""
    (pack,) = pack_config(["uk"], "GB").policy.packs
    rules = pack_rules(pack)
    assert ({"GB"}, {"tps", "ctps"}) == (set(pack.regions), {rule.name for rule in pack.lists})
    assert [] == [rule.id for rule in rules if not rule.source]
    assert ["uk-abandoned-72h", "uk-cli", "uk-ofcom-abandoned-3pct"] == [
        rule.id for rule in rules if rule.verify
    ]


LISTS = [
    # (TPS entries, CTPS entries, expected outcome for CONSUMER)
    pytest.param([], [], ("ALLOW", "allowed", None), id="not-registered"),
    pytest.param([CONSUMER], [], ("BLOCK", "listed:tps", None), id="tps"),
    pytest.param([], [CONSUMER], ("BLOCK", "listed:ctps", None), id="ctps"),
    pytest.param([BUSINESS], [BUSINESS], ("ALLOW", "allowed", None), id="other-number-listed"),
]


@pytest.mark.parametrize(("tps", "ctps", "expected"), LISTS)
async def test_tps_and_ctps_registered_numbers_are_blocked(
    gate: Gate, tps: list[str], ctps: list[str], expected: tuple[str, str, float | None]
) -> None:
    """PECR reg. 21: no unsolicited live marketing call to a TPS/CTPS number."""
    await screen(gate, TUESDAY, tps, ctps)
    assert expected == outcome(await gate.decide(call(TUESDAY), record=True, door="cli"))


FRESHNESS = [
    # (age of the TPS import, age of the CTPS import, expected outcome)
    pytest.param(27, 27, ("ALLOW", "allowed", None), id="both-27-days"),
    pytest.param(30, 1, ("DEFER", "stale_list:tps", 3600.0), id="tps-30-days"),
    pytest.param(1, 30, ("DEFER", "stale_list:ctps", 3600.0), id="ctps-30-days"),
]


@pytest.mark.parametrize(("tps_age", "ctps_age", "expected"), FRESHNESS)
async def test_tps_and_ctps_rescreened_every_28_days(
    gate: Gate, tps_age: int, ctps_age: int, expected: tuple[str, str, float | None]
) -> None:
    """PECR reg. 21: a screening older than 28 days defers every call."""
    await import_list(gate, "tps", [], TUESDAY - timedelta(days=tps_age))
    await import_list(gate, "ctps", [], TUESDAY - timedelta(days=ctps_age))
    assert expected == outcome(await gate.decide(call(TUESDAY), record=True, door="cli"))


async def test_abandoned_call_pauses_the_number_72_hours(gate: Gate) -> None:
    """After an abandoned call, a dialer may not call again for 72 h; an agent by hand may.
    Without its campaign, the call is not counted toward the campaign's ceiling (and says
    so)."""
    at = upcoming(1, 11, 0, LONDON)  # after the wall clock: see conftest.upcoming
    await screen(gate, at)
    started = await admin(gate).record_event("abandoned", CONSUMER, TENANT, at, at)
    later = at + timedelta(hours=1)
    assert (["uk-abandoned-72h"], ["uk-ofcom-abandoned-3pct"]) == (
        started.rules,
        started.uncounted,
    )
    assert [
        ("DEFER", "abandoned:uk-abandoned-72h", 71 * 3600.0),
        ("ALLOW", "allowed", None),
        ("ALLOW", "allowed", None),
    ] == [
        outcome(await gate.decide(call(later), record=True, door="cli")),
        outcome(await gate.decide(call(later, traffic_class=MANUAL), record=True, door="cli")),
        outcome(await gate.decide(call(at + timedelta(hours=72)), record=True, door="cli")),
    ]


@pytest.mark.parametrize("newest_first", [False, True], ids=["in-order", "newest-first"])
async def test_a_late_report_of_an_older_abandoned_call_leaves_the_pause_of_the_newer(
    gate: Gate, newest_first: bool
) -> None:
    """Two abandoned calls a day apart, in either order: 72 h from the later one."""
    later = upcoming(1, 11, 0, LONDON)
    abandoned = [later - timedelta(days=1), later]
    await screen(gate, later)
    for at in reversed(abandoned) if newest_first else abandoned:
        await admin(gate).record_event("abandoned", CONSUMER, TENANT, at, later)
    decision = await gate.decide(call(later + timedelta(hours=1)), record=True, door="cli")
    assert ("DEFER", "abandoned:uk-abandoned-72h", 71 * 3600.0) == outcome(decision)


CALLER_IDS = [
    # (caller ID presented, traffic class, expected outcome)
    pytest.param(CALLER_ID, CAMPAIGN, ("ALLOW", "allowed", None), id="geographic"),
    pytest.param("+449090000000", CAMPAIGN, ("BLOCK", "caller_id:forbidden_range", None), id="09"),
    pytest.param(
        "09090000000", MANUAL, ("BLOCK", "caller_id:forbidden_range", None), id="09-manual"
    ),
    pytest.param("", CAMPAIGN, ("BLOCK", "caller_id:masked", None), id="masked"),
    pytest.param("restricted", MANUAL, ("BLOCK", "caller_id:masked", None), id="restricted"),
    pytest.param("+4412345", CAMPAIGN, ("BLOCK", "caller_id:invalid", None), id="not-dialable"),
]


@pytest.mark.parametrize(("caller_id", "traffic_class", "expected"), CALLER_IDS)
async def test_caller_id_shown_valid_and_never_09(
    gate: Gate, caller_id: str, traffic_class: TrafficClass, expected: tuple[str, str, None]
) -> None:
    """PECR as amended / Ofcom GC C6: CLI shown, valid and dialable; 09 banned as CLI."""
    await screen(gate, TUESDAY)
    decision = await gate.decide(
        call(TUESDAY, caller_id=caller_id, traffic_class=traffic_class), record=True, door="cli"
    )
    assert expected == outcome(decision)
