"""Validation of the pack tables for local law (gate/config/packs.py): ``[[calendars]]``,
an hours rule's ``calendars`` and fixed ``zone``, the ``reassigned`` list kind and the
consent rule's ``reassigned_list``, ``[[abandon_ceiling]]``, a cool-off's ``calendar_days``.
Pure: no Redis."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from gate.config.packs import parse_pack, validate_references
from gate.core.errors import ConfigError
from gate.core.rules import AbandonCeilingRule, CalendarRule, Pack

HEAD = {"id": "xx", "regions": ["FR", "GP"]}
HOURS = {"id": "h", "weekdays": ["10:00-20:00"], "source": "test"}


def pack(**tables: Any) -> Pack:
    return parse_pack({"pack": HEAD, **tables}, "xx.toml")


def error(**tables: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_references(pack(**tables), (), "xx.toml")
    return str(caught.value)


def test_calendar_reads_annual_and_one_off_dates_places_and_package_calendars() -> None:
    """A calendar: "MM-DD" every year, "YYYY-MM-DD" once, places, package calendars."""
    parsed = pack(
        calendars=[
            {
                "id": "c",
                "places": ["GP"],
                "dates": ["05-27", "2027-03-26"],
                "holidays": ["FR-971"],
                "optional": True,
            }
        ]
    )
    assert (
        CalendarRule(
            id="c",
            places=frozenset({"GP"}),
            holidays=(("FR", "971"),),
            annual=frozenset({(5, 27)}),
            days=frozenset({date(2027, 3, 26)}),
            optional=True,
        ),
    ) == parsed.calendars


def test_hours_rule_carries_the_calendars_it_names_and_its_zone() -> None:
    """``calendars`` resolves to the pack's tables; ``zone`` is kept as given."""
    parsed = pack(
        calendars=[{"id": "c", "dates": ["05-27"]}],
        hours=[{**HOURS, "calendars": ["c"], "zone": "Etc/GMT+6"}],
    )
    (rule,) = parsed.hours
    assert (("c",), "Etc/GMT+6") == (tuple(c.id for c in rule.calendars), rule.zone)


ERRORS = [
    pytest.param(
        {"calendars": [{"id": "c", "dates": ["27-05"]}]},
        'xx.toml: calendars[0].dates: entries look like "05-27" (every year) or '
        "\"2027-03-26\", got '27-05'",
        id="bad-date",
    ),
    pytest.param(
        {"calendars": [{"id": "c", "dates": ["02-30"]}]},
        'xx.toml: calendars[0].dates: entries look like "05-27" (every year) or '
        "\"2027-03-26\", got '02-30'",
        id="no-such-day",
    ),
    pytest.param(
        {"calendars": [{"id": "c"}]},
        "xx.toml: calendars[0].dates: a calendar needs dates or holidays",
        id="empty-calendar",
    ),
    pytest.param(
        {"calendars": [{"id": "c", "dates": ["05-27"], "places": ["RE"]}]},
        "xx.toml: calendars[0].places: 'RE' is not one of the pack's regions (FR, GP)",
        id="place-outside-the-pack",
    ),
    pytest.param(
        {"calendars": [{"id": "c", "holidays": ["FR-GF"]}]},
        "xx.toml: calendars[0].holidays: 'FR-GF' is not a calendar of the holidays package "
        "(Entity `FR` does not have subdivision GF)",
        id="unknown-package-subdivision",
    ),
    pytest.param(
        {"hours": [{**HOURS, "holidays": ["XX"]}]},
        "xx.toml: hours[0].holidays: 'XX' is not a calendar of the holidays package "
        "(Country XX not available)",
        id="unknown-package-country",
    ),
    pytest.param(
        {"hours": [{**HOURS, "calendars": ["nope"]}]},
        "xx.toml: hours[0].calendars: no [[calendars]] 'nope' in this pack (none)",
        id="unknown-calendar",
    ),
    pytest.param(
        {"hours": [{**HOURS, "valid_from": datetime(2026, 8, 11, tzinfo=UTC)}]},
        "xx.toml: hours[0].valid_from: expected a date like 2026-08-11 (no time of day), "
        "got 2026-08-11T00:00:00+00:00",
        id="date-time-for-a-date",
    ),
    pytest.param(
        {"caps": [{"id": "c", "limit": 4, "window": "30d", "valid_to": datetime(2027, 1, 1)}]},
        "xx.toml: caps[0].valid_to: expected a date like 2026-08-11 (no time of day), "
        "got 2027-01-01T00:00:00",
        id="local-date-time-for-a-date",
    ),
    pytest.param(
        {
            "calendars": [{"id": "c", "dates": ["05-27"]}],
            "hours": [{**HOURS, "calendars": [["c"]]}],
        },
        "xx.toml: hours[0].calendars: no [[calendars]] ['c'] in this pack (c)",
        id="calendar-name-not-a-string",
    ),
    pytest.param(
        {"hours": [{**HOURS, "consent_list": ""}]},
        "xx.toml: hours[0].consent_list: expected the name of a consent list, got '' "
        "(leave the key out for none)",
        id="empty-consent-list",
    ),
    pytest.param(
        {"hours": [{**HOURS, "consent_list": "nope"}]},
        "xx.toml: hours[0].consent_list: list 'nope' must be a consent list (it is undefined)",
        id="unknown-consent-list",
    ),
    pytest.param(
        {"hours": [{**HOURS, "zone": "Central Standard Time"}]},
        "xx.toml: hours[0].zone: 'Central Standard Time' is not a time zone name (e.g. Etc/GMT+6)",
        id="unknown-zone",
    ),
    pytest.param(
        {
            "lists": [{"name": "consent", "kind": "consent"}, {"name": "rnd", "kind": "block"}],
            "consent": [{"id": "c", "list": "consent", "reassigned_list": "rnd"}],
        },
        "xx.toml: consent[0].reassigned_list: list 'rnd' must be a reassigned list (it is block)",
        id="reassigned-list-of-the-wrong-kind",
    ),
    pytest.param(
        {
            "lists": [{"name": "file", "kind": "allow"}, {"name": "rnd", "kind": "reassigned"}],
            "consent": [{"id": "c", "list": "file", "reassigned_list": "rnd"}],
        },
        "xx.toml: consent[0].list (with reassigned_list): list 'file' must be a consent "
        "list (it is allow)",
        id="reassigned-needs-grant-times",
    ),
    pytest.param(
        {
            "lists": [{"name": "consent", "kind": "consent"}],
            "consent": [{"id": "c", "list": "consent", "reassigned_shadow": False}],
        },
        "xx.toml: consent[0].reassigned_shadow: needs reassigned_list",
        id="reassigned-shadow-alone",
    ),
    pytest.param(
        {"cooloff": [{"id": "r", "period": "36h", "calendar_days": True}]},
        "xx.toml: cooloff[0].calendar_days: needs a period of whole days (e.g. 60d), got 129600s",
        id="calendar-days-of-a-part-day-period",
    ),
    pytest.param(
        {"cooloff": [{"id": "r", "period": "60d", "calendar_days": "yes"}]},
        "xx.toml: cooloff[0].calendar_days: expected a bool, got 'yes'",
        id="calendar-days-not-a-bool",
    ),
    pytest.param(
        {"abandon_ceiling": [{"id": "a", "ceiling_percent": 0}]},
        "xx.toml: abandon_ceiling[0].ceiling_percent: must be a percentage above 0 and below "
        "100, got 0",
        id="ceiling-zero",
    ),
    pytest.param(
        {"abandon_ceiling": [{"id": "a", "ceiling_percent": 3, "scope": "global"}]},
        "xx.toml: abandon_ceiling[0].scope: must be one of campaign, tenant, got 'global'",
        id="ceiling-scope",
    ),
]


@pytest.mark.parametrize(("tables", "expected"), ERRORS)
def test_bad_tables_are_one_line_errors(tables: dict[str, Any], expected: str) -> None:
    """Every mistake names the file, the key and what is wrong."""
    assert expected == error(**tables)


def test_a_pack_region_phonenumbers_does_not_know_is_refused() -> None:
    """A pack for "ZZ" loaded and never applied (no destination is placed in it): it is a
    one-line error naming pack.regions."""
    with pytest.raises(ConfigError) as caught:
        parse_pack({"pack": {**HEAD, "regions": ["FR", "ZZ"]}}, "xx.toml")
    assert (
        "xx.toml: pack.regions: 'ZZ' is not a region whose numbers callgate can read; use "
        'ISO 3166 codes, e.g. ["FR", "RE"]'
    ) == str(caught.value)


def test_a_cool_off_counts_calendar_days_only_when_it_says() -> None:
    """``calendar_days = true`` on a whole-day period is kept; by default a cool-off counts
    its period from the event's instant."""
    rules = pack(
        cooloff=[
            {"id": "cal", "period": "60d", "calendar_days": True},
            {"id": "plain", "period": "72h"},
        ]
    ).cooloffs
    assert [("cal", 5184000.0, True), ("plain", 259200.0, False)] == [
        (rule.id, rule.period_s, rule.calendar_days) for rule in rules
    ]


def test_abandon_ceiling_defaults_to_24_hours_per_campaign() -> None:
    """ceiling_percent = 3 → 0.03 of live calls, per campaign, over 24 h."""
    parsed = pack(abandon_ceiling=[{"id": "a", "ceiling_percent": 3, "source": "s"}])
    assert (
        AbandonCeilingRule(id="a", source="s", ceiling=0.03, window_s=86400.0),
    ) == parsed.abandon_ceilings


def test_reassigned_list_kind_and_consent_option_load() -> None:
    """A consent rule may name a reassigned list; the list kind exists."""
    parsed = pack(
        lists=[{"name": "consent", "kind": "consent"}, {"name": "rnd", "kind": "reassigned"}],
        consent=[{"id": "c", "list": "consent", "reassigned_list": "rnd"}],
    )
    validate_references(parsed, (), "xx.toml")
    assert ("rnd", "reassigned") == (parsed.consents[0].reassigned_list, parsed.lists[1].kind)


@pytest.mark.parametrize(
    ("pack_shadow", "rule", "expected"),
    [
        pytest.param(False, {}, (False, False), id="enforced"),
        pytest.param(False, {"shadow": True}, (True, True), id="follows-the-rule"),
        pytest.param(
            False, {"shadow": True, "reassigned_shadow": False}, (True, False), id="own-choice"
        ),
        pytest.param(
            True, {"shadow": True, "reassigned_shadow": False}, (True, True), id="pack-shadow"
        ),
    ],
)
def test_the_reassigned_check_is_shadow_as_its_rule_unless_it_says(
    pack_shadow: bool, rule: dict[str, Any], expected: tuple[bool, bool]
) -> None:
    """reassigned_shadow defaults to the rule's shadow; a shadow pack shadows both."""
    parsed = parse_pack(
        {
            "pack": {**HEAD, "shadow": pack_shadow},
            "lists": [
                {"name": "consent", "kind": "consent"},
                {"name": "rnd", "kind": "reassigned"},
            ],
            "consent": [{"id": "c", "list": "consent", "reassigned_list": "rnd", **rule}],
        },
        "xx.toml",
    )
    (consent,) = parsed.consents
    assert expected == (consent.shadow, consent.reassigned_shadow)
