"""Dialled strings to canonical numbers: the first step of every decision.

Guarantees:
- ``classify(dialled, region)`` never raises, whatever the string; it returns a ``Destination``
  (a valid E.164 number with its type and time zones) or a ``ShortCode`` (an emergency,
  protected or other short number, recognised on the dialled string *before* any
  normalisation, since short codes are not E.164) or a ``BadNumber`` with a one-line why.
- A local number of a ``tel:`` URI (or of a SIP URI's user part) with a ``phone-context``
  (RFC 3966 section 5.1.5: ``tel:0612345678;phone-context=+44``) is never read in the
  default region, nor made a global number by prefixing its context: it is an emergency
  or protected number of the context's country, or a ``BadNumber`` (``_classify_local``
  says why). A global number (``+…``) is read as written, whatever context is beside it.
- In a region of the French plan (FR and its overseas départements and collectivités),
  a national number is the number of the plan's code that owns it (0692… is +262 692…,
  ``FR_OVERSEAS``); one the plan's data gives to two codes, or +33 and an overseas
  number's digits, is a ``BadNumber``: never keyed as another subscriber.
- ``parse_e164(text, region)`` is the strict form for admin input (list entries, CLI):
  it raises ``NumberError`` with the same message instead.

phonenumbers' metadata decides validity, number type and time zones (its type rules are
compiled once here: ``number_type_and_region``, tested equal to phonenumbers' own); this
module cleans the dialled string (URIs, separators, non-ASCII digits) and holds the table of
protected numbers that phonenumbers' short-number data does not mark as emergency.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, shortnumberinfo, timezone
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from gate.core.errors import NumberError

__all__ = [
    "FR_OVERSEAS",
    "BadNumber",
    "Destination",
    "NumberType",
    "ShortCode",
    "classify",
    "is_known_region",
    "is_protected",
    "number_type_and_region",
    "parse_e164",
    "split_international",
    "stripped_prefix",
]


class NumberType(enum.StrEnum):
    """Stable names of phonenumbers' number types (used in reason codes and config)."""

    FIXED_LINE = "fixed_line"
    MOBILE = "mobile"
    FIXED_LINE_OR_MOBILE = "fixed_line_or_mobile"
    TOLL_FREE = "toll_free"
    PREMIUM = "premium"
    SHARED_COST = "shared_cost"
    VOIP = "voip"
    PERSONAL = "personal"
    PAGER = "pager"
    UAN = "uan"
    VOICEMAIL = "voicemail"
    UNKNOWN = "unknown"
    SHORT = "short"


_TYPE_NAMES: dict[int, NumberType] = {
    phonenumbers.PhoneNumberType.FIXED_LINE: NumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.MOBILE: NumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE: NumberType.FIXED_LINE_OR_MOBILE,
    phonenumbers.PhoneNumberType.TOLL_FREE: NumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.PREMIUM_RATE: NumberType.PREMIUM,
    phonenumbers.PhoneNumberType.SHARED_COST: NumberType.SHARED_COST,
    phonenumbers.PhoneNumberType.VOIP: NumberType.VOIP,
    phonenumbers.PhoneNumberType.PERSONAL_NUMBER: NumberType.PERSONAL,
    phonenumbers.PhoneNumberType.PAGER: NumberType.PAGER,
    phonenumbers.PhoneNumberType.UAN: NumberType.UAN,
    phonenumbers.PhoneNumberType.VOICEMAIL: NumberType.VOICEMAIL,
}

# Emergency and protected short numbers per region, matched on the dialled digits.
# phonenumbers knows most emergency codes; these add the protected social/helpline
# numbers it does not flag. Sources: ARCEP list of emergency numbers (FR: 15 SAMU,
# 17 police, 18 pompiers, 112, 114 deaf/hard-of-hearing, 115 homeless, 116000 missing
# children, 116117 on-call doctors, 119 child abuse, 191 air rescue, 196 sea rescue,
# 197 terror/abduction alert); 47 CFR 64.1200(a)(1) (US: 911, 988 crisis line);
# UK 999 and 112; EU 112 and the harmonised 116xxx range.
_PROTECTED: dict[str, frozenset[str]] = {
    "FR": frozenset(
        {"15", "17", "18", "112", "114", "115", "116000", "116117", "119", "191", "196", "197"}
    ),
    "US": frozenset({"911", "988", "112"}),
    "CA": frozenset({"911", "988", "112"}),
    "GB": frozenset({"999", "112", "116000", "116111", "116123"}),
}
# The harmonised European 116xxx social numbers are protected in every EU/EEA region.
_EU_116 = "116"
_EU_REGIONS = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    ]
)
# Dialled strings this short or shorter are never national numbers anywhere we serve.
_MAX_SHORT_DIGITS = 6
_SEPARATORS = frozenset(" .-()/\t")
_ASCII_DIGITS = frozenset("0123456789")
# Emergency and protected numbers are short (116xxx is the longest here).
_MAX_PROTECTED_DIGITS = 8
_PLAIN = re.compile(r"\+?[0-9][0-9 .\-]*")
_DROP_SEPARATORS = str.maketrans("", "", " .-")
_NANP_REGIONS = frozenset({"US", "CA"})
# In the North American plan (+1) every area code of a territory or country is its own:
# phonenumbers' zone data has the zone of each geographic area code, and none for the
# non-geographic ones (toll-free 8xx, 5xx, 600, 900...), which fall back to all of +1.
# phonenumbers reads a number of a type it calls non-geographic (American Samoa's
# mobiles, +1 684 7xx) at the country level: every NANP zone from Guam to Newfoundland,
# so the calling hours of the territory's own zone were never met. Read by area code.
_NANP_CODE = 1
_MAX_DIALLED_CHARS = 64
_NO_ZONE: tuple[str, ...] = (timezone.UNKNOWN_TIMEZONE,)
# The French national numbering plan (today ARCEP décision n° 2018-0881 of 24 July 2018,
# annex 1; its country codes 33, 262, 508, 590, 594 and 596 are listed in ARCEP décision
# n° 2006-0509; ten digits in the overseas départements since ARCEP décisions n° 2000-382
# and n° 2000-534) also covers the overseas départements and collectivités, under their
# own country codes: anywhere in it, a number is dialled 0 and
# its nine national digits (0692 12 34 56 is +262 692 12 34 56, 0596 30 12 34 is
# +596 596 30 12 34), Saint-Pierre-et-Miquelon's six-digit ones 0508 and six digits (+508).
# phonenumbers reads such a national number in region FR as +33 (0692…: invalid; 0596…,
# 0269…: a valid-looking +33 number that is not the subscriber's), and a metropolitan one
# in region RE as +262. Their 08 numbers are the plan's own, one set for all of it.
_FRENCH_PLAN = frozenset({"FR", "RE", "YT", "GP", "BL", "MF", "GF", "MQ", "PM"})
_OVERSEAS_REGIONS = ("RE", "YT", "GP", "BL", "MF", "GF", "MQ", "PM")
_NATIONAL_PLAN_DIGITS = 9


def _overseas_patterns() -> tuple[tuple[int, int, re.Pattern[str]], ...]:
    """(country code, leading digits to drop, pattern of the nine national digits) of
    the overseas numbers of the French plan: each region's fixed, mobile and VoIP numbers
    (phonenumbers' patterns), none beginning with 8."""
    found: dict[tuple[int, int], list[str]] = {}
    for region in _OVERSEAS_REGIONS:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert metadata is not None, region
        code = metadata.country_code
        assert code is not None, region
        for desc in (metadata.fixed_line, metadata.mobile, metadata.voip):
            if desc is None or not desc.national_number_pattern:
                continue
            lengths = desc.possible_length or ()
            if not lengths or _NATIONAL_PLAN_DIGITS in lengths:
                found.setdefault((code, 0), []).append(desc.national_number_pattern)
            if str(code) == "508" and 6 in lengths:  # 0508 + six digits
                found.setdefault((code, 3), []).append(desc.national_number_pattern)
    return tuple(
        (code, drop, re.compile("(?!8)" + "508" * bool(drop) + f"(?:{'|'.join(pats)})"))
        for (code, drop), pats in found.items()
    )


_OVERSEAS = _overseas_patterns()
# The plan's blocks given whole to an overseas code (ARCEP), by the first three of the nine
# national digits: a number of such a block outside the ranges above is no +33 number.
_OVERSEAS_BLOCKS = {
    **dict.fromkeys(("262", "263", "269", "639", "692", "693"), 262),  # Réunion, Mayotte
    **dict.fromkeys(("590", "690", "691"), 590),  # Guadeloupe, St-Barthélemy, St-Martin
    **dict.fromkeys(("594", "694"), 594),  # Guyane
    **dict.fromkeys(("596", "696", "697"), 596),  # Martinique
    "508": 508,  # Saint-Pierre-et-Miquelon
}
#: A regular expression matching the nine national digits (after the trunk 0) of every
#: number of the French plan that is not a +33 number (an overseas one, or in an overseas
#: block): such a national number is read by ``classify`` only, never by a fast path.
FR_OVERSEAS = "|".join(
    [
        *(f"(?:{pattern.pattern})" for _, _, pattern in _OVERSEAS),
        f"(?:{'|'.join(sorted(_OVERSEAS_BLOCKS))})\\d{{6}}",
    ]
)


@dataclass(frozen=True, slots=True)
class Destination:
    """A valid number in canonical form, with what phonenumbers knows of it."""

    e164: str
    region: str
    number_type: NumberType
    time_zones: tuple[str, ...]


# ``Destination``'s slots, set as its frozen ``__init__`` sets them (``object.__setattr__``)
# but without looking each up by name: ``classify`` makes one per number.
_SET_E164, _SET_REGION, _SET_TYPE, _SET_ZONES = (
    Destination.__dict__[name].__set__ for name in ("e164", "region", "number_type", "time_zones")
)
assert Destination.__slots__ == ("e164", "region", "number_type", "time_zones")
assert not hasattr(Destination, "__post_init__")  # it would be skipped


@dataclass(frozen=True, slots=True)
class ShortCode:
    """A short number dialled as such: emergency, protected, or another short code."""

    digits: str
    emergency: bool


@dataclass(frozen=True, slots=True)
class BadNumber:
    """A dialled string that is not a usable number, and why (one line)."""

    dialled: str
    why: str


# Regions dialling the emergency and protected numbers of another region's table. The
# French national numbering plan (ARCEP décision n° 2018-0881, which lists the numéros
# d'urgence) covers the overseas départements and collectivités: 15, 17, 18, 112, 115,
# 119... are theirs too, and phonenumbers' short-number data flags only some of them per
# place (17 and 18 not in Mayotte, 112 not in Guadeloupe): read in RE, GP or YT they were
# invalid numbers, and an agent's call to them was blocked. The US territories, under the
# Communications Act like the states (47 U.S.C. 153), have 911 and the 988 crisis line
# (47 CFR 64.1200(a)(1); 988 designated by 47 CFR 52.200), which phonenumbers does not flag.
_PROTECTED_AS = {
    **dict.fromkeys(("RE", "YT", "GP", "BL", "MF", "GF", "MQ", "PM"), "FR"),
    **dict.fromkeys(("PR", "VI", "GU", "MP", "AS"), "US"),
}


def is_protected(digits: str, region: str) -> bool:
    """True if ``digits`` is an emergency or protected number when dialled in ``region``."""
    plan = _PROTECTED_AS.get(region, region)
    if digits in _PROTECTED.get(plan, frozenset()):
        return True
    if plan in _EU_REGIONS and digits.startswith(_EU_116) and len(digits) == 6:
        return True
    try:
        return bool(shortnumberinfo.is_emergency_number(digits, region))
    except Exception:  # phonenumbers raises on regions it has no data for
        return False


def _fast_parse(cleaned: str, region: str) -> tuple[int, str] | None:
    """``(country code, national significant number)`` of a plainly written number,
    without phonenumbers.parse (25 µs) or a PhoneNumber object.

    Handles ``+CC…`` and ``00CC…`` (international: ``split_international``) and, for
    NANP regions, the national form (the French plan's: ``_french_national``); None for
    anything else (phonenumbers.parse then decides), so the national digits given back
    are those phonenumbers' ``national_significant_number`` would give.
    """
    if cleaned.startswith("+"):
        return split_international(cleaned[1:])
    if cleaned.startswith("00") and region not in _NANP_REGIONS:
        return split_international(cleaned[2:])
    if region in _NANP_REGIONS and len(cleaned) in (10, 11):
        national = cleaned[1:] if len(cleaned) == 11 and cleaned[0] == "1" else cleaned
        if len(national) == 10 and national[0] not in "01":
            return 1, national
    return None


def split_international(digits: str) -> tuple[int, str] | None:
    """``(country code, national significant number)`` of the ASCII digits written after
    ``+`` (or ``00``) when phonenumbers.parse surely reads them as written: the calling
    code it would find (the first known of their first 1, 2 or 3 digits), then national
    digits that start neither with 0 nor with what phonenumbers would strip as a national
    prefix or carrier code even after a country code (``stripped_prefix``).

    None otherwise, for phonenumbers to decide: the trunk prefix written in international
    form (``+33 (0)6…``, ``+44 (0)20…``, ``+1 1 212…``, ``+55 90…``), which it drops when
    what is left has a possible length, or Italy's leading 0 (``+39 06…``), which it keeps;
    and an overseas number of the French plan written after +33 (``FR_OVERSEAS``).
    """
    for size in (1, 2, 3):
        code = int(digits[:size]) if len(digits) > size else 0
        if code in COUNTRY_CODE_TO_REGION_CODE:
            national = digits[size:]
            if not national or national[0] == "0":
                return None
            prefix = stripped_prefix(code)
            if prefix is not None and (found := prefix.match(national)) and found.end():
                return None
            if code == _FRANCE and _is_overseas(national):
                return None  # not a +33 number: classify says so
            return code, national
    return None


_FRANCE = 33


def _overseas_owners(national: str) -> list[tuple[int, str]]:
    """The overseas numbers (country code, national number) that the nine digits
    ``national`` of the French plan (after its trunk 0) are, one per country code."""
    if len(national) != _NATIONAL_PLAN_DIGITS:
        return []
    owners: list[tuple[int, str]] = []
    for code, drop, pattern in _OVERSEAS:
        if pattern.fullmatch(national) and all(code != c for c, _ in owners):
            owners.append((code, national[drop:]))
    return owners


_ANY_OVERSEAS = re.compile(FR_OVERSEAS)


def _is_overseas(national: str) -> bool:
    """Whether the nine digits ``national`` of the French plan are no +33 number (one
    match of ``FR_OVERSEAS``: every national and +33 number is asked)."""
    return len(national) == _NATIONAL_PLAN_DIGITS and bool(_ANY_OVERSEAS.fullmatch(national))


def _french_national(nine: str, region: str) -> tuple[int, str] | str | None:
    """``(country code, national number)`` of a national number of the French plan
    (``0`` and the nine digits ``nine``) dialled in ``region``, one of the plan's; a
    one-line why when the plan's data gives it to several country codes; None for an 08
    number dialled outside metropolitan France (phonenumbers then reads it)."""
    if not _is_overseas(nine):
        return None if nine[0] == "8" and region != "FR" else (_FRANCE, nine)
    owners = _overseas_owners(nine)
    if len(owners) > 1:
        codes = " or ".join(f"+{code} {national}" for code, national in owners)
        return f"ambiguous: 0{nine} may be {codes}"
    if owners:
        return owners[0]
    return f"0{nine} is in a range of +{_OVERSEAS_BLOCKS[nine[:3]]} but no number of it"


_STRIPPED: dict[int, re.Pattern[str] | None] = {}


def stripped_prefix(code: int) -> re.Pattern[str] | None:
    """The national prefix (and carrier code) pattern phonenumbers.parse strips from the
    start of a number of calling code ``code``, in international format too, when what
    is left has a possible length: its main region's ``national_prefix_for_parsing``."""
    if code not in _STRIPPED:
        region = phonenumbers.region_code_for_country_code(code)
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        pattern = metadata.national_prefix_for_parsing if metadata is not None else None
        _STRIPPED[code] = re.compile(pattern) if pattern else None
    return _STRIPPED[code]


def _is_short_code(digits: str, region: str) -> bool:
    """True if phonenumbers knows ``digits`` as a valid short number in ``region``."""
    try:
        parsed = phonenumbers.parse(digits, region)
        return bool(shortnumberinfo.is_valid_short_number_for_region(parsed, region))
    except phonenumbers.NumberParseException:
        return False


def _strip_uri(text: str) -> tuple[str, str | None]:
    """The telephone-subscriber of a ``tel:`` URI, or the user part of a ``sip:``/``sips:``
    one (RFC 3261 section 19.1.6: a tel URI's number and parameters), without its
    parameters, and the value of its ``phone-context`` parameter (None: none given);
    ``text`` unchanged, without a context, when it is no such URI."""
    text = text.strip().strip("<>").strip()
    lowered = text.lower()
    if lowered.startswith("tel:"):
        subscriber = text[4:]
    elif lowered.startswith(("sip:", "sips:")):
        subscriber = text[text.index(":") + 1 :].split("@", 1)[0]
    else:
        return text, None
    number, *params = subscriber.split(";")
    context = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "phone-context":  # parameter names ignore case (RFC 3966)
            context = value.strip()
    return number, context


# RFC 3966 section 3: global-number-digits = "+" *phonedigit DIGIT *phonedigit, where a
# phonedigit is a digit or a visual separator.
_GLOBAL_CONTEXT = re.compile(r"\+[0-9.()\-]*[0-9][0-9.()\-]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class _Local:
    """A local number (RFC 3966 section 5.1.5: digits without ``+``, with a
    ``phone-context``) whose context is a global number prefix, and the regions of that
    prefix's country code."""

    digits: str
    context: str
    regions: tuple[str, ...]


def _local_number(digits: str, context: str, dialled: str) -> _Local | BadNumber:
    """The local number ``digits`` of context ``context``, or why it is refused: a
    context that is no global number prefix of a known country code (a domain name names
    no numbering plan callgate could read the number in)."""
    if not _GLOBAL_CONTEXT.fullmatch(context):
        return BadNumber(
            dialled,
            f"a local number in phone-context {context!r}, which is no global number "
            "prefix: no numbering plan to read it in",
        )
    prefix = "".join(ch for ch in context if ch in _ASCII_DIGITS)
    for size in range(1, min(3, len(prefix)) + 1):
        regions = COUNTRY_CODE_TO_REGION_CODE.get(int(prefix[:size]))
        if regions is not None:
            return _Local(digits, context, tuple(regions))
    return BadNumber(dialled, f"phone-context {context} begins with no country code")


def _ascii_digits(text: str) -> str:
    """Map every Unicode decimal digit (Arabic-Indic, full-width, ...) to ASCII."""
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


def _clean(dialled: str) -> str | BadNumber | _Local:
    """Reduce a dialled string to ``+`` and digits, or say why it cannot be; a local
    number of a URI with a global number ``phone-context`` is a ``_Local``."""
    if len(dialled) > _MAX_DIALLED_CHARS:
        return BadNumber(dialled[:_MAX_DIALLED_CHARS] + "…", "longer than 64 characters")
    if dialled.isascii() and dialled.isdigit():  # the commonest case, nothing to drop
        return dialled
    if _PLAIN.fullmatch(dialled):  # the common case, without the character loop
        return dialled.translate(_DROP_SEPARATORS)
    number, context = _strip_uri(dialled)
    text = _ascii_digits(number)
    out: list[str] = []
    for index, ch in enumerate(text):
        # ASCII digits only: str.isdigit() is also true of "²", "①" and other characters
        # that are digits but not decimal ones (int() refuses them).
        if ch in _ASCII_DIGITS or (ch == "+" and not out and "+" not in text[:index]):
            out.append(ch)
        elif ch in _SEPARATORS:
            continue
        else:
            return BadNumber(dialled, f"unexpected character {ch!r}")
    cleaned = "".join(out)
    if not cleaned.lstrip("+"):
        return BadNumber(dialled, "no digits")
    if context is not None and not cleaned.startswith("+"):
        # A global number (+…) is the same everywhere (RFC 3966 section 5.1.4): a
        # context beside it changes nothing. A local number is read only in its context.
        return _local_number(cleaned, context, dialled)
    return cleaned


def classify(dialled: str, region: str) -> Destination | ShortCode | BadNumber:
    """Turn any dialled string into a destination, a short code, or a refusal."""
    cleaned = _clean(dialled)
    if isinstance(cleaned, BadNumber):
        return cleaned
    if isinstance(cleaned, _Local):
        return _classify_local(cleaned, dialled)
    if not cleaned.startswith("+") and len(cleaned) <= _MAX_PROTECTED_DIGITS:
        if is_protected(cleaned, region):
            return ShortCode(cleaned, emergency=True)
        if len(cleaned) <= _MAX_SHORT_DIGITS and _is_short_code(cleaned, region):
            return ShortCode(cleaned, emergency=False)
    if region in _FRENCH_PLAN and len(cleaned) == 10 and cleaned[0] == "0" != cleaned[1]:
        fast = _french_national(cleaned[1:], region)
        if isinstance(fast, str):
            return BadNumber(dialled, fast)
    else:
        fast = _fast_parse(cleaned, region)
    if fast is None:
        try:
            parsed = phonenumbers.parse(cleaned, region)
        except phonenumbers.NumberParseException as exc:
            return BadNumber(dialled, f"not a phone number ({exc._msg})")
        country_code = parsed.country_code or 0
        national = phonenumbers.national_significant_number(parsed)
        if country_code == _FRANCE and _is_overseas(national):
            # +33 and an overseas number's digits: a national number converted by
            # prefixing +33, reaching no one (the subscriber is under its own code). The
            # fast paths never give such a +33 number (``_french_national``,
            # ``split_international``): asked here only.
            found = _french_national(national, "FR")
            why = f"+33 {national} is no number: " + (
                f"0{national} is +{found[0]}{found[1]}" if isinstance(found, tuple) else str(found)
            )
            return BadNumber(dialled, why)
    else:
        country_code, national = fast
    # One number-type computation serves validity, type, region and zones: phonenumbers'
    # is_valid_number, region_code_for_number and time_zones_for_number would each compute
    # it again (3x the cost of a decision's whole parse, measured by bench/decide.py).
    raw_type, home = _type_and_region(country_code, national)
    if raw_type == phonenumbers.PhoneNumberType.UNKNOWN:
        return BadNumber(dialled, f"not a valid number for region {region} or its own country")
    e164 = f"+{country_code}{national}"
    if country_code == _NANP_CODE:
        # NANP: the area code is the place, whatever the type (``_NANP_CODE``), and all of
        # it: every zone of the area code (``_nanp_zones``).
        zones = _nanp_zones(e164)
    elif phonenumbers.is_number_type_geographical(raw_type, country_code):
        zones = _geographical_zones(e164)
    else:
        zones = _country_zones(country_code)
    # ``Destination(...)`` by its slots' setters (0.3 µs instead of its ``__init__``'s 0.8).
    made = object.__new__(Destination)
    _SET_E164(made, e164)
    _SET_REGION(made, home or region)
    _SET_TYPE(made, _TYPE_NAMES.get(raw_type, NumberType.UNKNOWN))
    _SET_ZONES(made, zones)
    return made


def _classify_local(local: _Local, dialled: str) -> ShortCode | BadNumber:
    """An emergency or protected number of the context's country (the numbers RFC 3966
    section 5.1 names as needing a context: they have no global form); any other local
    number is refused. Its context is the place where it is dialled, not a prefix that
    makes it a global number (section 5.1.5): 5550123 in +1-212 may be +1 212 555 0123,
    +1 646 555 0123 (the same place) or a PBX's extension; 0612345678 in +44 is no British
    number, and read in the default region it is a French subscriber's. The local dialling
    rules of the context's owner are not callgate's to guess: a wrong guess keys another
    subscriber than the one on the list, and an opted-out number could be called. So such a
    number is blocked as invalid, with what to send instead (its global form)."""
    digits = local.digits
    if len(digits) <= _MAX_PROTECTED_DIGITS and any(
        is_protected(digits, region) for region in local.regions
    ):
        return ShortCode(digits, emergency=True)
    return BadNumber(
        dialled,
        f"a local number in phone-context {local.context}, which tells where it is "
        "dialled, not which number it is (RFC 3966 section 5.1.5)",
    )


class _Types:
    """phonenumbers' number-type rules of one region's metadata, compiled once.

    ``of(national)`` is ``phonenumbers.number_type`` for a number of this metadata: the
    same descriptions tested in the same order (a type matches when the national number
    has one of its possible lengths, if it lists any, and matches its whole pattern). For
    each length met, the patterns of the types that length allows are joined into one
    (the first alternative that matches the whole number wins, as the first type does).
    """

    __slots__ = ("by_length", "fixed", "general", "leading", "mobile", "ordered", "same")

    _ORDER = (
        ("premium_rate", phonenumbers.PhoneNumberType.PREMIUM_RATE),
        ("toll_free", phonenumbers.PhoneNumberType.TOLL_FREE),
        ("shared_cost", phonenumbers.PhoneNumberType.SHARED_COST),
        ("voip", phonenumbers.PhoneNumberType.VOIP),
        ("personal_number", phonenumbers.PhoneNumberType.PERSONAL_NUMBER),
        ("pager", phonenumbers.PhoneNumberType.PAGER),
        ("uan", phonenumbers.PhoneNumberType.UAN),
        ("voicemail", phonenumbers.PhoneNumberType.VOICEMAIL),
    )

    def __init__(self, metadata: phonenumbers.PhoneMetadata) -> None:
        self.general = _desc(metadata.general_desc)
        self.fixed = _desc(metadata.fixed_line)
        self.mobile = _desc(metadata.mobile)
        self.same = bool(metadata.same_mobile_and_fixed_line_pattern)
        ordered: list[tuple[_Desc | None, int]] = [
            (desc, kind)
            for name, kind in self._ORDER
            if (desc := _desc(getattr(metadata, name))) is not None
        ]
        ordered.append((self.fixed, phonenumbers.PhoneNumberType.FIXED_LINE))
        if not self.same:  # else a fixed line is always also a mobile
            ordered.append((self.mobile, phonenumbers.PhoneNumberType.MOBILE))
        self.ordered = tuple((desc, kind) for desc, kind in ordered if desc is not None)
        leading = metadata.leading_digits
        self.leading = re.compile(leading) if leading is not None else None
        self.by_length: dict[int, tuple[re.Pattern[str] | None, dict[str, int]]] = {}

    def of(self, national: str) -> int:
        if not _matches(self.general, national):
            return phonenumbers.PhoneNumberType.UNKNOWN
        size = len(national)
        joined = self.by_length.get(size)
        if joined is None:
            joined = self.by_length[size] = self._join(size)
        pattern, kinds = joined
        if pattern is None:  # nothing this long, or patterns that cannot be joined
            kind = next(
                (k for desc, k in self.ordered if _matches(desc, national)),
                phonenumbers.PhoneNumberType.UNKNOWN,
            )
        else:
            found = pattern.fullmatch(national)
            if found is None or found.lastgroup is None:
                return phonenumbers.PhoneNumberType.UNKNOWN
            kind = kinds[found.lastgroup]
        if kind == phonenumbers.PhoneNumberType.FIXED_LINE and (
            self.same or _matches(self.mobile, national)
        ):
            return phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE
        return kind

    def _join(self, size: int) -> tuple[re.Pattern[str] | None, dict[str, int]]:
        """One pattern of the types whose lengths allow ``size``, each a group ``tN``,
        and the type of each group by its name."""
        allowed = [(d, k) for d, k in self.ordered if not d[0] or size in d[0]]
        if not allowed or any(d[1].groups for d, _ in allowed):
            # Groups of their own (none in phonenumbers' data today) would shift in a
            # joined pattern: then each type is tested on its own.
            return None, {}
        joined = "|".join(f"(?P<t{i}>{d[1].pattern})" for i, (d, _) in enumerate(allowed))
        return re.compile(joined), {f"t{i}": k for i, (_, k) in enumerate(allowed)}


_Desc = tuple[frozenset[int], "re.Pattern[str]"]


def _desc(desc: phonenumbers.PhoneNumberDesc | None) -> _Desc | None:
    """A description's possible lengths and compiled pattern (None: it never matches)."""
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length or ()), re.compile(desc.national_number_pattern)


def _matches(desc: _Desc | None, national: str) -> bool:
    if desc is None:
        return False
    lengths, pattern = desc
    if lengths and len(national) not in lengths:
        return False
    return pattern.fullmatch(national) is not None


_TYPES: dict[str, _Types | None] = {}


def _types(region: str, country_code: int) -> _Types | None:
    """The compiled rules of ``region`` (``"001"``: the non-geographical ``country_code``)."""
    key = region if region != "001" else f"001/{country_code}"
    if key not in _TYPES:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
            country_code, region
        )
        _TYPES[key] = None if metadata is None else _Types(metadata)
    return _TYPES[key]


def number_type_and_region(parsed: phonenumbers.PhoneNumber) -> tuple[int, str | None]:
    """``(phonenumbers.number_type(parsed), phonenumbers.region_code_for_number(parsed))``
    in one pass: the region of a calling code shared by several (NANP's +1) is found with
    the same type tests, not computed a second time."""
    return _type_and_region(
        parsed.country_code or 0, phonenumbers.national_significant_number(parsed)
    )


def _type_and_region(country_code: int, national: str) -> tuple[int, str | None]:
    """``number_type_and_region`` of the number ``country_code`` and ``national`` (its
    national significant number)."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    unknown = phonenumbers.PhoneNumberType.UNKNOWN
    if regions is None:
        return unknown, None
    if len(regions) == 1:
        types = _types(regions[0], country_code)
        return (unknown if types is None else types.of(national)), regions[0]
    for region in regions:  # phonenumbers' _region_code_for_number_from_list
        types = _types(region, country_code)
        if types is None:
            continue
        if types.leading is not None:
            if types.leading.match(national):
                return types.of(national), region
        elif (kind := types.of(national)) != unknown:
            return kind, region
    return unknown, None


_COUNTRY_ZONES: dict[int, tuple[str, ...]] = {}
_GEO_ZONES: dict[tuple[str, ...], tuple[str, ...]] = {}


def _known(zones: Sequence[str]) -> tuple[str, ...]:
    """The zones without phonenumbers' "unknown" zone."""
    return tuple(z for z in zones if z != timezone.UNKNOWN_TIMEZONE)


def _country_zones(country_code: int) -> tuple[str, ...]:
    """Zones of a valid non-geographical number: its calling code's, as phonenumbers'
    ``time_zones_for_number`` gives them (its country-level lookup: the code's longest
    prefix in the zone data), computed once per code. Not by asking phonenumbers about
    the number again: rebuilt from an integer, a national number with a leading zero
    (every Ivorian number, +225 07…; Norway's +47 02…) loses it, is then invalid and has
    no zone."""
    zones = _COUNTRY_ZONES.get(country_code)
    if zones is None:
        code = str(country_code)
        found = _NO_ZONE
        for size in range(TIMEZONE_LONGEST_PREFIX, 0, -1):
            found = TIMEZONE_DATA.get(code[: 1 + size], _NO_ZONE)
            if found is not _NO_ZONE:
                break
        zones = _COUNTRY_ZONES[country_code] = _known(found)
    return zones


def _longest_prefix_zones(e164: str) -> tuple[str, ...]:
    """phonenumbers' zone data for the longest prefix of ``e164`` it has (``_NO_ZONE``
    if none), unfiltered."""
    found = _NO_ZONE
    for size in range(min(TIMEZONE_LONGEST_PREFIX, len(e164) - 1), 0, -1):
        found = TIMEZONE_DATA.get(e164[1 : 1 + size], _NO_ZONE)
        if found is not _NO_ZONE:
            break
    return found


def _geographical_zones(e164: str) -> tuple[str, ...]:
    """``time_zones_for_geographical_number`` of the number ``e164``: the zones of the
    longest prefix phonenumbers' zone data has for it, from the E.164 string already made
    (phonenumbers formats it again for each lookup)."""
    found = _longest_prefix_zones(e164)
    known = _GEO_ZONES.get(found)
    if known is None:
        known = _GEO_ZONES[found] = _known(found)
    return known


# The NANP area code ("1" and its three digits) of each prefix of phonenumbers' zone data,
# its digits' key length.
_NANP_AREA = 1 + 3


def _nanp_area_zones() -> dict[str, frozenset[str]]:
    """Every zone phonenumbers' data gives any prefix of each NANP area code, by area code
    ("1850": Chicago and New York). Built once at import (a few ms over its 3,200 prefixes)."""
    found: dict[str, set[str]] = {}
    for prefix, zones in TIMEZONE_DATA.items():
        if prefix[0] == "1" and len(prefix) >= _NANP_AREA:
            found.setdefault(prefix[:_NANP_AREA], set()).update(_known(zones))
    return {area: frozenset(zones) for area, zones in found.items() if zones}


# The zones of each NANP area code (``_nanp_zones``).
_NANP_AREA_ZONES = _nanp_area_zones()
_NANP_ZONES: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}


def _nanp_zones(e164: str) -> tuple[str, ...]:
    """The zones of a NANP number: every zone of its area code, those phonenumbers gives its
    exchange first (the local day is read in the first: ``hours.local_day``), the others in
    name order.

    phonenumbers places a number by its exchange (+1 850 234: Chicago only, though 850 also
    covers Eastern time), but a number's place is not certain (a mobile or ported number
    keeps its area code wherever it is), and the calling hours are the called party's
    (47 CFR 64.1200(c)(1); the CRTC's in the recipient's time): a call must be inside the
    window in every zone of the area code. An area code without zone data (toll-free 8xx,
    5xx...) keeps phonenumbers' answer (every zone of +1). One dict lookup per call, once
    the (area code, exchange zones) pair was seen."""
    found = _longest_prefix_zones(e164)
    key = (e164[1 : 1 + _NANP_AREA], found)
    zones = _NANP_ZONES.get(key)
    if zones is None:
        own = _known(found)
        others = sorted(_NANP_AREA_ZONES.get(key[0], frozenset()).difference(own))
        zones = _NANP_ZONES[key] = (*own, *others)
    return zones


def is_known_region(region: str) -> bool:
    """Whether phonenumbers has the numbering plan of ``region`` (an ISO 3166 code like
    "FR"): a number is read, and a destination placed, only in such a region."""
    return region in phonenumbers.SUPPORTED_REGIONS


def parse_e164(text: str, region: str) -> str:
    """Strict form for admin input: the E.164 number, or ``NumberError`` saying why."""
    result = classify(text, region)
    if isinstance(result, Destination):
        return result.e164
    if isinstance(result, ShortCode):
        kind = "an emergency/protected number" if result.emergency else "a short code"
        raise NumberError(f"number {text!r}: {kind}, not an E.164 number")
    raise NumberError(f"number {text!r}: {result.why}; give it as +<country><number>")
