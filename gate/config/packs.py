"""Rule packs: the law of a destination region as versioned TOML data.

A pack file (``config/packs/fr.toml``) has a ``[pack]`` table (id, version, description,
regions: the destination regions it governs, optional pack-wide ``shadow``) and arrays of
rules: ``[[lists]]``, ``[[hours]]``, ``[[caps]]``, ``[[consent]]``, ``[[freshness]]``,
``[[cooloff]]``, ``[[caller_id]]``, ``[[destinations]]``. Every rule has an ``id`` and
should carry its ``source``; see gate/rules.py for the common fields. Guarantees: a pack
that loads is consistent (every list a rule names exists with the right kind); errors
name the file and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gate.config._reader import IDENT_RE, Reader, common_fields
from gate.core.errors import ConfigError
from gate.core.numbers import NumberType
from gate.core.rules import (
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

__all__ = ["load_pack", "parse_caps", "parse_lists", "parse_pack", "validate_references"]

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_E164_PREFIX_RE = re.compile(r"^\+\d{1,15}$")


def parse_lists(root: Reader) -> tuple[ListRule, ...]:
    rules: list[ListRule] = []
    for reader in root.tables("lists"):
        kind = reader.choice("kind", ("block", "allow", "consent"), "block")
        exempts = reader.get("exempts", list, [])
        if kind != "allow" and exempts:
            raise reader.fail("exempts", "only an allow list can exempt from other lists")
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
    names = [rule.name for rule in rules]
    for index, rule in enumerate(rules):
        if names.count(rule.name) > 1:
            raise root.fail(f"lists[{index}].name", f"{rule.name!r} is defined twice")
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
    _unique(root, "caps", [rule.id for rule in rules])
    return tuple(rules)


def _unique(root: Reader, key: str, ids: Sequence[str]) -> None:
    for index, rule_id in enumerate(ids):
        if ids.count(rule_id) > 1:
            raise root.fail(f"{key}[{index}].id", f"{rule_id!r} is defined twice")


def _windows(reader: Reader, key: str, default: list[str]) -> tuple[tuple[int, int], ...]:
    windows = []
    for text in reader.get(key, list, default):
        match = _WINDOW_RE.match(str(text))
        if not match:
            raise reader.fail(key, f'windows look like "10:00-13:00", got {text!r}')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if not (0 <= start < end <= 24 * 60 and m1 < 60 and m2 < 60):
            raise reader.fail(key, f"{text!r} is not a window within one day")
        windows.append((start, end))
    return tuple(sorted(windows))


def _hours(reader: Reader) -> HoursRule:
    weekdays = reader.get("weekdays", list, [])
    windows = tuple(
        _windows(reader, day, weekdays if index < 5 else []) for index, day in enumerate(_DAYS)
    )
    calendars = []
    for item in reader.get("holidays", list, []):
        country, _, subdivision = str(item).partition("-")
        if not re.fullmatch(r"[A-Z]{2}", country):
            raise reader.fail("holidays", f'entries look like "FR" or "US-FL", got {item!r}')
        calendars.append((country, subdivision or None))
    consent_list = reader.get("consent_list", str, None)
    return HoursRule(
        windows=windows,
        holidays=tuple(calendars),
        consent_list=consent_list,
        **common_fields(reader),
    )


def _prefixes(reader: Reader, key: str) -> tuple[str, ...]:
    values = reader.get(key, list, [])
    for value in values:
        if not isinstance(value, str) or not _E164_PREFIX_RE.match(value):
            raise reader.fail(key, f"entries must be E.164 prefixes like +3389, got {value!r}")
    return tuple(values)


def _rules(root: Reader, key: str, build: Any) -> tuple[Any, ...]:
    rules = []
    for reader in root.tables(key):
        rules.append(build(reader))
        reader.done()
    _unique(root, key, [rule.id for rule in rules])
    return tuple(rules)


def parse_pack(data: Mapping[str, Any], origin: str) -> Pack:
    """Validate one pack document."""
    root = Reader(data, "", origin)
    head = root.table("pack")
    regions = head.get("regions", list, None)
    if not regions or not all(isinstance(r, str) and re.fullmatch(r"[A-Z]{2}", r) for r in regions):
        raise head.fail("regions", 'list the destination regions, e.g. ["FR", "RE"]')
    pack_id = head.ident("id")
    version = str(head.get("version", str, ""))
    description = str(head.get("description", str, ""))
    pack_shadow = bool(head.get("shadow", bool, False))
    head.done()
    allowed_types = tuple(t.value for t in NumberType)

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
        hours=_rules(root, "hours", _hours),
        caps=parse_caps(root),
        consents=_rules(
            root,
            "consent",
            lambda r: ConsentRule(
                list=r.ident("list"),
                exempt_lists=tuple(str(n) for n in r.get("exempt_lists", list, [])),
                **common_fields(r),
            ),
        ),
        freshness=_rules(
            root,
            "freshness",
            lambda r: FreshnessRule(
                list=r.ident("list"),
                max_age_s=r.duration("max_age", None),
                exempt_lists=tuple(str(n) for n in r.get("exempt_lists", list, [])),
                **common_fields(r),
            ),
        ),
        cooloffs=_rules(
            root,
            "cooloff",
            lambda r: CooloffRule(
                event=r.choice("event", ("refusal", "abandoned"), "refusal"),
                period_s=r.duration("period", None),
                scope=r.choice("scope", ("global", "tenant"), "tenant"),
                **common_fields(r),
            ),
        ),
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
        consents=shadowed(pack.consents),
        freshness=shadowed(pack.freshness),
        cooloffs=shadowed(pack.cooloffs),
        caller_ids=shadowed(pack.caller_ids),
        destinations=shadowed(pack.destinations),
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
    for index, fresh in enumerate(pack.freshness):
        need(fresh.list, ("block", "allow", "consent"), f"freshness[{index}].list")
        for name in fresh.exempt_lists:
            need(name, ("allow", "consent"), f"freshness[{index}].exempt_lists")
    for index, hours in enumerate(pack.hours):
        if hours.consent_list:
            need(hours.consent_list, ("consent",), f"hours[{index}].consent_list")


def load_pack(name: str, directory: Path) -> Pack:
    """Read ``directory/<name>.toml``."""
    if not IDENT_RE.match(name):
        raise ConfigError(f"gate.packs: {name!r} is not a pack name")
    path = directory / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"gate.packs: no pack {name!r} ({path} does not exist); check gate.packs_dir"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pack: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    pack = parse_pack(data, str(path))
    if pack.id != name:
        raise ConfigError(f"{path}: pack.id is {pack.id!r}, expected {name!r} (the file name)")
    return pack
