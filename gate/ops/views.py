"""Read-only views of a gate for the console: every list with its freshness, every rule.

``lists_view`` answers ``GET /v1/lists``: each list of the config and its packs for one
tenant (and campaign) with its size, last refresh and, for each ``[[freshness]]`` rule that
names it, whether it is stale (the rule is in force today and the list was never imported,
or its source is older than the rule allows). ``rules_view`` answers ``GET /v1/rules``: the
packs in force with their versions, and every rule with a one-line summary, its source,
and whether it is shadowed or marked ``[verify]`` (``enforced`` is true for every rule
callgate ships: the store runs them all).

Both read only what the configuration in force says (one ``Active``, whole) and, for the
lists, ``ListAdmin.info``; ``GET /v1/lists`` waits at most ``READ_WAIT_S`` for all of them
(gate/store/client.py ``answer_within``), then 503: a stopped or frozen Redis never hangs
the console's Lists page.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime

from aiohttp import web

from gate.core.engine import period_text, window_text
from gate.core.errors import InputError, Wording
from gate.core.rules import (
    AbandonCeilingRule,
    CalendarRule,
    CallerIdRule,
    CapRule,
    ConsentRule,
    CooloffRule,
    DestinationRule,
    FreshnessRule,
    HoursRule,
    ListRule,
    Pack,
)
from gate.lists.admin import ListAdmin
from gate.ops._openapi import Operation
from gate.ops.api import Handler, json_response, wording_of
from gate.ops.live import RECENT, AuditFeed, LiveSampler, follow_events
from gate.ops.models import (
    AuditRecord,
    FreshnessOut,
    ListQuery,
    ListScope,
    ListsOut,
    ListStatus,
    LiveOut,
    PackOut,
    RuleOut,
    RulesOut,
    list_info,
    parse_query,
)
from gate.ops.wording import API_WORDING
from gate.service import Gate

__all__ = ["Views", "lists_view", "rules_view"]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _all_lists(gate: Gate) -> list[ListRule]:
    policy = gate.config.policy
    seen: dict[str, ListRule] = {}
    for rule in (*policy.lists, *(r for pack in policy.packs for r in pack.lists)):
        seen.setdefault(rule.name, rule)
    return list(seen.values())


def _in_force_today(rule: FreshnessRule, today: date) -> bool:
    return (rule.valid_from is None or rule.valid_from <= today) and (
        rule.valid_to is None or today <= rule.valid_to
    )


async def lists_view(
    gate: Gate, tenant: str, campaign: str | None, wording: Wording = API_WORDING
) -> ListsOut:
    """Every list for ``tenant`` (and ``campaign``), with its freshness; a list it cannot
    show has a ``note`` saying why, options named as ``wording`` names them."""
    active = gate.active
    gate.config.policy.check_tenant(tenant)
    admin = ListAdmin(active.config.policy, active.keyspace, gate.store)
    today = datetime.now(UTC).date()
    now_s = time.time()
    freshness: dict[str, list[tuple[Pack, FreshnessRule]]] = {}
    for pack in active.config.policy.packs:
        for fresh_rule in pack.freshness:
            freshness.setdefault(fresh_rule.list, []).append((pack, fresh_rule))
    out: list[ListStatus] = []
    for rule in _all_lists(gate):
        info = None
        note = None
        try:
            raw = await admin.info(rule.name, tenant, campaign or "")
            info = list_info(raw, tenant, campaign)
        except InputError as exc:  # a per-campaign list without a campaign
            note = exc.worded(wording)
        refreshed = info.refreshed_at if info is not None else None
        age_s = None if refreshed is None else max(0, round(now_s - refreshed.timestamp()))
        checks = []
        for pack, fresh in freshness.get(rule.name, []):
            in_force = _in_force_today(fresh, today)
            stale = in_force and info is not None and (age_s is None or age_s > fresh.max_age_s)
            checks.append(
                FreshnessOut(
                    rule=fresh.id,
                    pack=pack.id,
                    max_age_s=round(fresh.max_age_s),
                    in_force=in_force,
                    shadow=fresh.shadow,
                    source=fresh.source,
                    stale=stale,
                )
            )
        out.append(
            ListStatus(
                name=rule.name,
                kind=rule.kind,
                scope=ListScope(rule.scope),
                description=rule.description,
                info=info,
                note=note,
                age_s=age_s,
                freshness=checks,
                stale=any(c.stale and not c.shadow for c in checks),
            )
        )
    return ListsOut(tenant=tenant, campaign=campaign, lists=out, config_version=active.version)


def _minutes(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _hours_summary(rule: HoursRule) -> str:
    """``Mon-Fri 10:00-13:00, 14:00-20:00; Sat closed…`` (days with the same windows grouped)."""
    texts = [
        ", ".join(f"{_minutes(a)}-{_minutes(b)}" for a, b in day) or "closed"
        for day in rule.windows
    ]
    parts: list[str] = []
    start = 0
    for index in range(1, len(texts) + 1):
        if index == len(texts) or texts[index] != texts[start]:
            days = _DAYS[start] if index - 1 == start else f"{_DAYS[start]}-{_DAYS[index - 1]}"
            parts.append(f"{days} {texts[start]}")
            start = index
    zone = f" ({rule.zone})" if rule.zone else " (the callee's local time)"
    holidays = " no calls on holidays" if rule.holidays or rule.calendars else ""
    return "; ".join(parts) + zone + (";" + holidays if holidays else "")


def _summary(rule: object) -> tuple[str, str]:
    """(kind, one-line summary) of a pack or config rule."""
    if isinstance(rule, CapRule):
        return "cap", f"at most {rule.limit} in {window_text(rule.window_s)} per {rule.scope}"
    if isinstance(rule, HoursRule):
        return "hours", _hours_summary(rule)
    if isinstance(rule, ConsentRule):
        unless = f" unless on {', '.join(rule.exempt_lists)}" if rule.exempt_lists else ""
        return "consent", f"needs an entry on {rule.list}{unless}"
    if isinstance(rule, FreshnessRule):
        return "freshness", f"{rule.list} refreshed within {window_text(rule.max_age_s)}"
    if isinstance(rule, CooloffRule):
        return "cooloff", f"{period_text(rule)} after {_an(rule.event)}"
    if isinstance(rule, CallerIdRule):
        parts = []
        if rule.forbid_masked:
            parts.append("no masked caller ID")
        if rule.forbidden_prefixes:
            parts.append(f"not {', '.join(rule.forbidden_prefixes)}")
        if rule.allowed_prefixes:
            parts.append(f"except {', '.join(rule.allowed_prefixes)}")
        return "caller_id", "; ".join(parts) or "a valid caller ID"
    if isinstance(rule, DestinationRule):
        blocked = sorted(t.value for t in rule.blocked_types) + list(rule.blocked_prefixes)
        return "destinations", f"never {', '.join(blocked)}"
    if isinstance(rule, CalendarRule):
        optional = " (optional: tenants opt in)" if rule.optional else ""
        places = f" for {', '.join(sorted(rule.places))}" if rule.places else ""
        return "calendar", f"holidays{places}{optional}"
    if isinstance(rule, AbandonCeilingRule):
        return "abandon_ceiling", (
            f"at most {rule.ceiling:.1%} of live calls abandoned per {rule.scope} over "
            f"{window_text(rule.window_s)}"
        )
    return type(rule).__name__, ""


def _an(event: str) -> str:
    return "an abandoned call" if event == "abandoned" else f"a {event}"


def _pack_rules(pack: Pack) -> Iterator[object]:
    yield from pack.hours
    yield from pack.calendars
    yield from pack.caps
    yield from pack.consents
    yield from pack.freshness
    yield from pack.cooloffs
    yield from pack.caller_ids
    yield from pack.destinations
    yield from pack.abandon_ceilings


def _rule_out(pack: str | None, rule: object) -> RuleOut:
    kind, summary = _summary(rule)
    valid_from = getattr(rule, "valid_from", None)
    valid_to = getattr(rule, "valid_to", None)
    if isinstance(rule, ConsentRule) and rule.reassigned_list is not None:
        summary += (
            f"; consents predating the number's last disconnection ({rule.reassigned_list}) "
            f"are void{' (shadow)' if rule.reassigned_shadow else ''}"
        )
    return RuleOut(
        pack=pack,
        kind=kind,
        id=str(getattr(rule, "id", "")),
        summary=summary,
        source=str(getattr(rule, "source", "")),
        shadow=bool(getattr(rule, "shadow", False)),
        verify=bool(getattr(rule, "verify", False)),
        enforced=True,
        valid_from=None if valid_from is None else valid_from.isoformat(),
        valid_to=None if valid_to is None else valid_to.isoformat(),
        classes=sorted(c.value for c in getattr(rule, "classes", ())),
    )


def rules_view(gate: Gate) -> RulesOut:
    """The packs in force and every rule (the config file's own first)."""
    active = gate.active
    policy = active.config.policy
    rules: list[RuleOut] = []
    for rule in policy.lists:
        rules.append(_list_rule_out(None, rule))
    for cap in policy.caps:
        rules.append(_rule_out(None, cap))
    for trunk, cps in sorted(policy.trunk_cps.items()):
        rules.append(_cps_out(trunk, f"at most {cps} calls per second on trunk {trunk}", ""))
    # A call on a trunk [trunks.cps] does not name is capped by the default (engine.py
    # ``_cps_check``): shown too, else the Rules page hid a cap every such call gets.
    if policy.default_trunk_cps:
        rules.append(
            _cps_out(
                "*",
                f"at most {policy.default_trunk_cps} calls per second on each trunk "
                "[trunks.cps] does not name",
                "trunks.default_cps",
            )
        )
    packs = []
    for pack in policy.packs:
        packs.append(
            PackOut(
                id=pack.id,
                version=pack.version,
                description=pack.description,
                regions=sorted(pack.regions),
            )
        )
        rules.extend(_list_rule_out(pack.id, rule) for rule in pack.lists)
        rules.extend(_rule_out(pack.id, rule) for rule in _pack_rules(pack))
    return RulesOut(
        config_version=active.version,
        default_region=policy.default_region,
        packs=packs,
        rules=rules,
    )


def _cps_out(trunk: str, summary: str, source: str) -> RuleOut:
    """A calls-per-second cap of the config (``trunk`` "*": the default cap)."""
    return RuleOut(
        pack=None,
        kind="cps",
        id=trunk,
        summary=summary,
        source=source,
        shadow=False,
        verify=False,
        enforced=True,
        valid_from=None,
        valid_to=None,
        classes=["campaign", "manual"],
    )


def _list_rule_out(pack: str | None, rule: ListRule) -> RuleOut:
    what = {
        "block": "refuses the numbers on it",
        "allow": f"exempts from {', '.join(rule.exempts)}" if rule.exempts else "an allow list",
        "consent": "holds consents",
        "reassigned": "holds the day each number was last disconnected",
    }.get(rule.kind, rule.kind)
    return RuleOut(
        pack=pack,
        kind="list",
        id=rule.name,
        summary=f"{'global' if rule.scope == 'global' else 'per-' + rule.scope} {rule.kind} "
        f"list: {what}",
        source=rule.description,
        shadow=False,
        verify=False,
        enforced=True,
        valid_from=None,
        valid_to=None,
        classes=["campaign", "manual"],
    )


class Views:
    """The read-only routes the console's pages poll: lists, rules, live, the trail's feed."""

    def __init__(self, gate: Gate, live: LiveSampler, feed: AuditFeed) -> None:
        self.gate = gate
        self.live = live
        self.feed = feed

    def operations(self) -> list[tuple[Operation, Handler]]:
        return [
            (
                Operation(
                    "GET",
                    "/v1/lists",
                    "getLists",
                    "Every list with its size, last refresh and freshness",
                    query=ListQuery,
                    responses={200: ListsOut},
                ),
                self._lists,
            ),
            (
                Operation(
                    "GET",
                    "/v1/rules",
                    "getRules",
                    "The packs in force and every rule, with its source",
                    responses={200: RulesOut},
                    errors=(401, 403),
                ),
                self._rules,
            ),
            (
                Operation(
                    "GET",
                    "/v1/live",
                    "getLive",
                    "Decisions per second over the last hour, and the doors' health",
                    responses={200: LiveOut},
                    errors=(401, 403),
                ),
                self._live,
            ),
            (
                Operation(
                    "GET",
                    "/v1/audit/follow",
                    "followAudit",
                    "The audit trail as it is written (Server-Sent Events)",
                    description="Each event (`event: decision`, `id`: its stream id) holds "
                    f"one AuditRecord as JSON: the last {RECENT} first, then each new one; "
                    "a comment line keeps the connection alive.",
                    streams={"text/event-stream": AuditRecord},
                    errors=(401, 403, 503),
                ),
                self._follow,
            ),
        ]

    async def _lists(self, request: web.Request) -> web.Response:
        query = parse_query(ListQuery, request.query)
        tenant = query.tenant or self.gate.config.default_tenant
        async with self.gate.store.answer_within():  # every list's size, all in one bound
            view = await lists_view(self.gate, tenant, query.campaign, wording_of(request))
        return json_response(view)

    async def _rules(self, _request: web.Request) -> web.Response:
        return json_response(rules_view(self.gate))

    async def _live(self, _request: web.Request) -> web.Response:
        return json_response(self.live.live())

    async def _follow(self, request: web.Request) -> web.StreamResponse:
        return await follow_events(request, self.feed)
