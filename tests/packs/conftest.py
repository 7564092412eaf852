"""Shared fixtures of the rule-pack tests: a Gate on the REAL session Redis with one
shipped pack (config/packs/<id>.toml) and a ListAdmin on the same store.

The configs keep only the tenant ``red`` list (``ListAdmin.revoke`` writes to it) and no
caps of their own, so every decision comes from the pack under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gate.config.loader import Config
from gate.core.model import Decision
from gate.core.rules import (
    AbandonCeilingRule,
    CallerIdRule,
    CapRule,
    ConsentRule,
    CooloffRule,
    DestinationRule,
    FreshnessRule,
    HoursRule,
    Pack,
)
from gate.lists.admin import ListAdmin
from gate.lists.formats import Rejected
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import BASE_CONFIG, make_config

PACKS_DIR = Path(__file__).resolve().parents[2] / "config" / "packs"
TENANT = "default"


def pack_config(
    packs: list[str], region: str, packs_dir: Path = PACKS_DIR, **tables: Any
) -> Config:
    """A config enabling ``packs`` (read from an absolute ``packs_dir``) and nothing else."""
    return make_config(
        {
            "gate": {
                "default_region": region,
                "packs": packs,
                "packs_dir": str(packs_dir),
                "tenants": BASE_CONFIG["gate"]["tenants"],
            },
            "lists": [{"name": "red", "kind": "block", "scope": "tenant"}],
            "caps": [],
            **tables,
        }
    )


Rule = (
    HoursRule
    | CapRule
    | ConsentRule
    | FreshnessRule
    | CooloffRule
    | CallerIdRule
    | DestinationRule
    | AbandonCeilingRule
)


def pack_rules(pack: Pack) -> list[Rule]:
    """Every rule of ``pack``, in file order by kind."""
    return [
        *pack.hours,
        *pack.caps,
        *pack.consents,
        *pack.freshness,
        *pack.cooloffs,
        *pack.caller_ids,
        *pack.destinations,
        *pack.abandon_ceilings,
    ]


@pytest.fixture
async def open_gate(redis_url: str) -> AsyncIterator[Callable[[Config], Gate]]:
    """Builds Gates on the test's (flushed) Redis; their stores are closed at teardown."""
    stores: list[Store] = []

    def build(config: Config) -> Gate:
        store = Store(redis_url, deadline_s=1.0)
        stores.append(store)
        return Gate(config, store)

    yield build
    for store in stores:
        await store.close()


def admin(gate: Gate) -> ListAdmin:
    return ListAdmin(gate.config.policy, gate.keyspace, gate.store)


def _refuse(rejected: Rejected) -> None:
    raise AssertionError(f"import rejected line {rejected.line_no}: {rejected.why}")


async def import_list(
    gate: Gate, name: str, numbers: Sequence[str], refreshed_at: datetime, tenant: str = TENANT
) -> None:
    """Import ``numbers`` (may be empty) into ``name`` as a scrub refreshed at ``refreshed_at``."""
    entries = list(enumerate(numbers, start=1))
    await admin(gate).import_entries(
        name,
        entries,
        tenant,
        "",
        _refuse,
        refreshed_at=refreshed_at,
        meta={"source": "test"},
        clock=refreshed_at,
    )


def outcome(decision: Decision) -> tuple[str, str, float | None]:
    """What a scenario asserts: verdict, reason code, seconds to wait."""
    return (decision.verdict.value, decision.reason, decision.retry_after_s)


def upcoming(weekday: int, hour: int, minute: int, tz: Any) -> datetime:
    """The first ``weekday`` (0 = Monday) at ``hour:minute`` in ``tz`` at least two days after
    the wall clock.

    ``ListAdmin.record_event`` gives the cool-off marker a TTL counted from the clock, so a
    cool-off scenario must lie in the future or its marker expires before it is read (and
    an event dated after the clock is refused: such a test passes its own, ``now=at``).
    """
    day = (datetime.now(UTC) + timedelta(days=2)).astimezone(tz).date()
    day += timedelta(days=(weekday - day.weekday()) % 7)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
