"""Rule packs: the law of a destination region as versioned TOML data.

A pack file (``config/packs/fr.toml``) has a ``[pack]`` table (id, version, description,
regions: the destination regions it governs, optional pack-wide ``shadow``) and arrays of
rules: ``[[lists]]``, ``[[calendars]]``, ``[[hours]]``, ``[[caps]]``, ``[[consent]]``,
``[[freshness]]``, ``[[cooloff]]`` (``calendar_days = true``: a whole-day period counted
in calendar days of the callee's zone: gate/core/rules.py ``CooloffRule``),
``[[caller_id]]``, ``[[destinations]]``, ``[[abandon_ceiling]]``. Every rule has an
``id`` and should carry its ``source``; see gate/core/rules.py for the common fields.
Guarantees: a pack that loads is consistent (every list a rule names exists with the
right kind, every calendar an hours rule names exists, every holiday calendar and time
zone is known); errors name the file and the key (loaded for a config: the config
file first, then the pack file: ``load_pack``).

Holiday calendars: ``holidays = ["FR", "US-UT"]`` on an hours rule or a calendar names the
``holidays`` package's calendars (country, optional subdivision). A ``[[calendars]]``
table adds ``dates`` ("05-27" every year, "2027-03-26" that day only), ``places`` (the
callee's regions it applies to) and ``optional`` (only for tenants that opt in with
``[tenants.<name>] calendars = [...]``); hours rules name them in ``calendars``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from gate.config._reader import IDENT_RE, Reader, common_fields
from gate.core.errors import ConfigError
from gate.core.numbers import NumberType, is_known_region
from gate.core.rules import (
    LIST_KINDS,
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

__all__ = [
    "load_pack",
    "optional_calendars",
    "pack_origin",
    "parse_caps",
    "parse_lists",
    "parse_pack",
    "validate_references",
]

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_E164_PREFIX_RE = re.compile(r"^\+\d{1,15}$")
_ANNUAL_RE = re.compile(r"^(\d{2})-(\d{2})$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REGION_RE = re.compile(r"[A-Z]{2}")


def parse_lists(root: Reader) -> tuple[ListRule, ...]:
    rules: list[ListRule] = []
    for reader in root.tables("lists"):
        kind = reader.choice("kind", LIST_KINDS, "block")
        exempts = reader.get("exempts", list, [])
        if kind != "allow" and exempts:
            raise reader.fail("exempts", "only an allow list can exempt from other lists")
        reader.once_each("exempts", [str(name) for name in exempts], "list name")
        rules.append(
            ListRule(
                name=reader.ident("name"),
                kind=kind,
                scope=reader.choice("scope", ("global", "tenant", "campaign"), "tenant"),
                exempts=tuple(str(name) for name in exempts),
                description=str(reader.get("description", str, "")),
            )
        )
        reader.done()
    _unique(root, "lists", "name", [rule.name for rule in rules])
    return tuple(rules)


def parse_caps(root: Reader) -> tuple[CapRule, ...]:
    rules: list[CapRule] = []
    for reader in root.tables("caps"):
        limit = reader.get("limit", int, None)
        if limit is None or limit < 1:
            raise reader.fail("limit", f"must be a whole number of attempts >= 1, got {limit!r}")
        window_s = reader.duration("window", None)
        if window_s < 1:
            # Attempt logs expire with their window in whole milliseconds, and a cap over
            # less than a second is a CPS cap: that is [trunks].
            raise reader.fail(
                "window", f"must be at least 1s, got {window_s:g}s (per-second caps: [trunks])"
            )
        rules.append(
            CapRule(
                limit=int(limit),
                window_s=window_s,
                scope=reader.choice("scope", ("global", "tenant", "campaign"), "tenant"),
                **common_fields(reader),
            )
        )
        reader.done()
    _unique(root, "caps", "id", [rule.id for rule in rules])
    return tuple(rules)


def _unique(root: Reader, key: str, field: str, names: Sequence[str]) -> None:
    """No two tables of ``[[key]]`` share their ``field`` (a rule's id, a list's name):
    named at the second, with the first."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if (where := first.setdefault(name, index)) != index:
            raise root.fail(
                f"{key}[{index}].{field}",
                f"{name!r} is defined twice (also {key}[{where}]); rename or remove one of them",
            )


def _windows(reader: Reader, key: str, default: list[str]) -> tuple[tuple[int, int], ...]:
    windows = []
    for text in reader.get(key, list, default):
        match = _WINDOW_RE.fullmatch(str(text))
        if not match:
            raise reader.fail(key, f'windows look like "10:00-13:00", got {text!r}')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if not (0 <= start < end <= 24 * 60 and m1 < 60 and m2 < 60):
            raise reader.fail(key, f"{text!r} is not a window within one day")
        windows.append((start, end))
    return tuple(sorted(windows))


def _holiday_calendars(reader: Reader, check: bool) -> tuple[tuple[str, str | None], ...]:
    """``holidays = ["FR", "US-UT", "FR-974"]``: calendars the holidays package knows
    (``check`` False: their form only, for a command that never reads them)."""
    calendars = []
    for item in reader.get("holidays", list, []):
        country, _, subdivision = str(item).partition("-")
        if not _REGION_RE.fullmatch(country):
            raise reader.fail("holidays", f'entries look like "FR" or "US-FL", got {item!r}')
        if check:
            _known_calendar(reader, item, country, subdivision or None)
        calendars.append((country, subdivision or None))
    return tuple(calendars)


def _known_calendar(reader: Reader, item: object, country: str, subdivision: str | None) -> None:
    # Imported here: the holidays package loads every country's calendar on first use
    # (about 130 ms, a fifth of a list command's start).
    import holidays

    try:
        holidays.country_holidays(country, subdiv=subdivision)
    except NotImplementedError as exc:
        raise reader.fail(
            "holidays", f"{item!r} is not a calendar of the holidays package ({exc})"
        ) from None


def _calendar(reader: Reader, regions: frozenset[str], check: bool) -> CalendarRule:
    annual: set[tuple[int, int]] = set()
    days: set[date] = set()
    for text in reader.get("dates", list, []):
        value = str(text)
        try:
            if match := _ANNUAL_RE.fullmatch(value):
                month, day = int(match.group(1)), int(match.group(2))
                date(2024, month, day)  # a leap year: 02-29 is a valid annual date
                annual.add((month, day))
            elif _DAY_RE.fullmatch(value):
                days.add(date.fromisoformat(value))
            else:
                raise ValueError
        except ValueError:
            raise reader.fail(
                "dates", f'entries look like "05-27" (every year) or "2027-03-26", got {text!r}'
            ) from None
    places = reader.get("places", list, [])
    for place in places:
        if not isinstance(place, str) or place not in regions:
            known = ", ".join(sorted(regions))
            raise reader.fail("places", f"{place!r} is not one of the pack's regions ({known})")
    calendar = CalendarRule(
        places=frozenset(places),
        holidays=_holiday_calendars(reader, check),
        annual=frozenset(annual),
        days=frozenset(days),
        optional=bool(reader.get("optional", bool, False)),
        **common_fields(reader),
    )
    if not (calendar.holidays or calendar.annual or calendar.days):
        raise reader.fail("dates", "a calendar needs dates or holidays")
    return calendar


def _hours(reader: Reader, calendars: Mapping[str, CalendarRule], check: bool) -> HoursRule:
    weekdays = reader.get("weekdays", list, [])
    windows = tuple(
        _windows(reader, day, weekdays if index < 5 else []) for index, day in enumerate(_DAYS)
    )
    named = []
    for name in reader.get("calendars", list, []):
        if not isinstance(name, str) or name not in calendars:
            known = ", ".join(sorted(calendars)) or "none"
            raise reader.fail("calendars", f"no [[calendars]] {name!r} in this pack ({known})")
        named.append(calendars[name])
    reader.once_each("calendars", [calendar.id for calendar in named], "calendar")
    fixed_zone = reader.get("zone", str, None)
    if fixed_zone is not None:
        try:
            zoneinfo.ZoneInfo(fixed_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise reader.fail(
                "zone", f"{fixed_zone!r} is not a time zone name (e.g. Etc/GMT+6)"
            ) from None
    consent_list = reader.get("consent_list", str, None)
    if consent_list is not None and not IDENT_RE.fullmatch(consent_list):
        # "" was taken for no list: the rule silently had no consent exemption.
        raise reader.fail(
            "consent_list",
            f"expected the name of a consent list, got {consent_list!r} (leave the key out "
            "for none)",
        )
    return HoursRule(
        windows=windows,
        holidays=_holiday_calendars(reader, check),
        calendars=tuple(named),
        zone=fixed_zone,
        consent_list=consent_list,
        **common_fields(reader),
    )


def _consent(reader: Reader) -> ConsentRule:
    common = common_fields(reader)
    reassigned = reader.ident("reassigned_list") if "reassigned_list" in reader.data else None
    if reassigned is None and "reassigned_shadow" in reader.data:
        raise reader.fail("reassigned_shadow", "needs reassigned_list")
    return ConsentRule(
        list=reader.ident("list"),
        exempt_lists=_exempt_lists(reader),
        reassigned_list=reassigned,
        reassigned_shadow=bool(reader.get("reassigned_shadow", bool, common["shadow"])),
        **common,
    )


def _exempt_lists(reader: Reader) -> tuple[str, ...]:
    """``exempt_lists``: the lists whose numbers a rule lets through, each named once."""
    names = tuple(str(name) for name in reader.get("exempt_lists", list, []))
    reader.once_each("exempt_lists", names, "list name")
    return names


def _cooloff(reader: Reader) -> CooloffRule:
    period_s = reader.duration("period", None)
    calendar_days = bool(reader.get("calendar_days", bool, False))
    if calendar_days and period_s % 86400:
        raise reader.fail(
            "calendar_days", f"needs a period of whole days (e.g. 60d), got {period_s:g}s"
        )
    return CooloffRule(
        event=reader.choice("event", ("refusal", "abandoned"), "refusal"),
        period_s=period_s,
        scope=reader.choice("scope", ("global", "tenant"), "tenant"),
        calendar_days=calendar_days,
        **common_fields(reader),
    )


def _abandon_ceiling(reader: Reader) -> AbandonCeilingRule:
    percent = reader.get("ceiling_percent", (int, float), None)
    if percent is None or not 0 < percent < 100:
        raise reader.fail(
            "ceiling_percent", f"must be a percentage above 0 and below 100, got {percent!r}"
        )
    min_live = reader.get("min_live_calls", int, 0)
    if min_live < 0:
        raise reader.fail("min_live_calls", f"must be >= 0, got {min_live}")
    return AbandonCeilingRule(
        ceiling=float(percent) / 100,
        window_s=reader.duration("window", "24h"),
        scope=reader.choice("scope", ("campaign", "tenant"), "campaign"),
        min_live_calls=int(min_live),
        **common_fields(reader),
    )


def _prefixes(reader: Reader, key: str) -> tuple[str, ...]:
    values = reader.get(key, list, [])
    for value in values:
        if not isinstance(value, str) or not _E164_PREFIX_RE.fullmatch(value):
            raise reader.fail(key, f"entries must be E.164 prefixes like +3389, got {value!r}")
    return tuple(values)


def _rules(root: Reader, key: str, build: Any) -> tuple[Any, ...]:
    rules = []
    for reader in root.tables(key):
        rules.append(build(reader))
        reader.done()
    _unique(root, key, "id", [rule.id for rule in rules])
    return tuple(rules)


def parse_pack(data: Mapping[str, Any], origin: str, *, check_holidays: bool = True) -> Pack:
    """Validate one pack document (``check_holidays`` False: its holiday calendars' form
    only, not that the holidays package knows them; for a command that never decides)."""
    root = Reader(data, "", origin)
    head = root.table("pack")
    regions = head.get("regions", list, None)
    if not regions or not all(isinstance(r, str) and re.fullmatch(r"[A-Z]{2}", r) for r in regions):
        raise head.fail("regions", 'list the destination regions, e.g. ["FR", "RE"]')
    for region in regions:
        if not is_known_region(region):  # no destination is ever placed there
            raise head.fail(
                "regions",
                f"{region!r} is not a region whose numbers callgate can read; use ISO 3166 "
                'codes, e.g. ["FR", "RE"]',
            )
    pack_id = head.ident("id")
    version = str(head.get("version", str, ""))
    description = str(head.get("description", str, ""))
    pack_shadow = bool(head.get("shadow", bool, False))
    head.done()
    allowed_types = tuple(t.value for t in NumberType)
    calendars = _rules(
        root, "calendars", lambda r: _calendar(r, frozenset(regions), check_holidays)
    )
    by_id = {calendar.id: calendar for calendar in calendars}

    def destination(reader: Reader) -> DestinationRule:
        types = reader.get("blocked_types", list, [])
        bad = [t for t in types if t not in allowed_types]
        if bad:
            raise reader.fail("blocked_types", f"unknown number type {bad[0]!r}")
        return DestinationRule(
            blocked_types=frozenset(NumberType(t) for t in types),
            blocked_prefixes=_prefixes(reader, "blocked_prefixes"),
            **common_fields(reader),
        )

    pack = Pack(
        id=pack_id,
        version=version,
        description=description,
        regions=frozenset(regions),
        lists=parse_lists(root),
        hours=_rules(root, "hours", lambda r: _hours(r, by_id, check_holidays)),
        caps=parse_caps(root),
        consents=_rules(
            root,
            "consent",
            _consent,
        ),
        freshness=_rules(
            root,
            "freshness",
            lambda r: FreshnessRule(
                list=r.ident("list"),
                max_age_s=r.duration("max_age", None),
                exempt_lists=_exempt_lists(r),
                **common_fields(r),
            ),
        ),
        cooloffs=_rules(root, "cooloff", _cooloff),
        caller_ids=_rules(
            root,
            "caller_id",
            lambda r: CallerIdRule(
                forbid_masked=bool(r.get("forbid_masked", bool, True)),
                require_valid=bool(r.get("require_valid", bool, True)),
                forbidden_prefixes=_prefixes(r, "forbidden_prefixes"),
                allowed_prefixes=_prefixes(r, "allowed_prefixes"),
                **common_fields(r),
            ),
        ),
        destinations=_rules(root, "destinations", destination),
        calendars=calendars,
        abandon_ceilings=_rules(root, "abandon_ceiling", _abandon_ceiling),
    )
    root.done()
    if pack_shadow:
        pack = _all_shadow(pack)
    return pack


def _all_shadow(pack: Pack) -> Pack:
    """The same pack with every rule in shadow mode."""

    def shadowed(rules: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(dataclasses.replace(rule, shadow=True) for rule in rules)

    return dataclasses.replace(
        pack,
        hours=shadowed(pack.hours),
        caps=shadowed(pack.caps),
        consents=tuple(
            dataclasses.replace(rule, shadow=True, reassigned_shadow=True) for rule in pack.consents
        ),
        freshness=shadowed(pack.freshness),
        cooloffs=shadowed(pack.cooloffs),
        caller_ids=shadowed(pack.caller_ids),
        destinations=shadowed(pack.destinations),
        abandon_ceilings=shadowed(pack.abandon_ceilings),
    )


def validate_references(pack: Pack, config_lists: Sequence[ListRule], origin: str) -> None:
    """Every list a rule names exists (in the pack or the config) with the right kind."""
    kinds = {rule.name: rule.kind for rule in config_lists}
    for rule in pack.lists:
        kinds.setdefault(rule.name, rule.kind)

    def need(name: str, wanted: tuple[str, ...], where: str) -> None:
        if kinds.get(name) not in wanted:
            found = kinds.get(name, "undefined")
            raise ConfigError(
                f"{origin}: {where}: list {name!r} must be a "
                f"{' or '.join(wanted)} list (it is {found})"
            )

    for index, listed in enumerate(pack.lists):
        for name in listed.exempts:
            need(name, ("block",), f"lists[{index}].exempts")
    for index, consent in enumerate(pack.consents):
        need(consent.list, ("consent", "allow"), f"consent[{index}].list")
        for name in consent.exempt_lists:
            need(name, ("allow", "consent"), f"consent[{index}].exempt_lists")
        if consent.reassigned_list:
            need(consent.reassigned_list, ("reassigned",), f"consent[{index}].reassigned_list")
            need(consent.list, ("consent",), f"consent[{index}].list (with reassigned_list)")
    for index, fresh in enumerate(pack.freshness):
        need(fresh.list, ("block", "allow", "consent"), f"freshness[{index}].list")
        for name in fresh.exempt_lists:
            need(name, ("allow", "consent"), f"freshness[{index}].exempt_lists")
    for index, hours in enumerate(pack.hours):
        if hours.consent_list is not None:
            need(hours.consent_list, ("consent",), f"hours[{index}].consent_list")


def optional_calendars(packs: Sequence[Pack], origin: str) -> frozenset[str]:
    """The ids of the packs' calendars a tenant may opt in to (``origin``: the config file).

    Two packs' optional calendars with one id must be one definition: a tenant opts in by
    id (``[tenants.<name>] calendars``), so it would turn on both, the one it meant and
    another it never saw."""
    first: dict[str, tuple[str, int, CalendarRule]] = {}
    for pack in packs:
        for index, calendar in enumerate(pack.calendars):
            if not calendar.optional:
                continue
            seen = first.setdefault(calendar.id, (pack.id, index, calendar))
            if seen[2] != calendar:
                raise ConfigError(
                    f"{origin}: gate.packs: pack {pack.id} calendars[{index}] and pack "
                    f"{seen[0]} calendars[{seen[1]}] are both the optional calendar "
                    f"{calendar.id!r}, defined differently (a tenant opting in to it would "
                    "turn on both); rename one of them, or define them alike"
                )
    return frozenset(first)


def pack_origin(origin: str, path: Path) -> str:
    """What an error in the pack file ``path`` starts with: the config file (``origin``)
    that enables it, its key, then the pack file."""
    return f"{origin}: gate.packs: {path}"


def load_pack(name: str, directory: Path, *, origin: str, check_holidays: bool = True) -> Pack:
    """Read ``directory/<name>.toml`` for the config file ``origin``, which every error
    names first (``check_holidays``: see ``parse_pack``)."""
    if not IDENT_RE.fullmatch(name):
        raise ConfigError(
            f"{origin}: gate.packs: {name!r} is not a pack name; name packs by their file "
            'in gate.packs_dir without .toml, e.g. "fr"'
        )
    path = directory / f"{name}.toml"
    where = pack_origin(origin, path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        shipped = (
            sorted(found.stem for found in directory.glob("*.toml")) if directory.is_dir() else []
        )
        there = f"packs there: {', '.join(shipped)}" if shipped else "no pack there"
        raise ConfigError(
            f"{origin}: gate.packs: no pack {name!r} ({path} does not exist; {there}); "
            "check gate.packs and gate.packs_dir"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read pack: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    pack = parse_pack(data, where, check_holidays=check_holidays)
    if pack.id != name:
        raise ConfigError(f"{where}: pack.id is {pack.id!r}, expected {name!r} (the file name)")
    return pack
