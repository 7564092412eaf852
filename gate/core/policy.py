"""The policy: everything the pure decision core needs from the configuration, and nothing else.

``Policy`` (lists, caps, packs, number types, trunk CPS caps, the tenants, their caller IDs
and opted-in holiday calendars) and ``FailMode`` (what to answer when the store cannot) are
built by ``gate.config`` from the TOML file; the core only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gate.core.model import TrafficClass, Verdict
from gate.core.numbers import NumberType
from gate.core.params import BadRequest
from gate.core.rules import CapRule, ListRule, Pack

__all__ = ["FailMode", "Policy", "UnknownTenant"]


class UnknownTenant(BadRequest):
    """A tenant the configuration does not name (and tenants are not open): refused, never
    decided with another tenant's empty lists. The doors answer ``bad_request:tenant``."""

    def __init__(self, tenant: str) -> None:
        super().__init__(
            "bad_request:tenant",
            f"tenant {tenant!r} is not configured (gate.tenants, gate.default_tenant or a "
            "[tenants.<name>] table); names are case-sensitive",
        )
        self.tenant = tenant


@dataclass(frozen=True, slots=True)
class FailMode:
    """What to answer, per traffic class, when Redis is down or slower than the deadline."""

    campaign: Verdict = Verdict.DEFER
    manual: Verdict = Verdict.DEFER
    retry_after_s: float = 60.0

    def verdict_for(self, traffic_class: TrafficClass) -> Verdict:
        return self.campaign if traffic_class is TrafficClass.CAMPAIGN else self.manual


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the pure decision core needs, and nothing else."""

    default_region: str = "FR"
    lists: tuple[ListRule, ...] = ()
    caps: tuple[CapRule, ...] = ()
    blocked_types: Mapping[TrafficClass, frozenset[NumberType]] = field(default_factory=dict)
    trunk_cps: Mapping[str, int] = field(default_factory=dict)
    default_trunk_cps: int = 0
    packs: tuple[Pack, ...] = ()
    # Per tenant, the caller IDs (E.164) it may present; absent: no tenant restriction.
    caller_ids: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Per tenant, the optional holiday calendars of the packs it opted in to (their ids,
    # e.g. "fr-alsace-moselle"); absent: none.
    tenant_calendars: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The tenants decisions and list operations may name; others are refused unless
    # ``open_tenants`` (any well-formed name is then its own tenant).
    tenants: frozenset[str] = frozenset({"default"})
    open_tenants: bool = False

    def check_tenant(self, tenant: str) -> None:
        """Raise ``UnknownTenant`` unless ``tenant`` may be used."""
        if not self.open_tenants and tenant not in self.tenants:
            raise UnknownTenant(tenant)

    def list_rule(self, name: str) -> ListRule | None:
        """The list called ``name``, from the config or any enabled pack."""
        for rule in (*self.lists, *(r for pack in self.packs for r in pack.lists)):
            if rule.name == name:
                return rule
        return None

    def list_regions(self, name: str) -> frozenset[str] | None:
        """The regions whose numbers the list called ``name`` is checked for: None (every
        region) for a list of the config; else the regions of the packs that name it, as a
        pack's lists are read only for the numbers its rules govern."""
        if any(rule.name == name for rule in self.lists):
            return None
        return frozenset(
            region
            for pack in self.packs
            if any(rule.name == name for rule in pack.lists)
            for region in pack.regions
        )

    def cps_for(self, trunk: str) -> int:
        return self.trunk_cps.get(trunk, self.default_trunk_cps) if trunk else 0
