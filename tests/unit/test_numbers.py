"""Dialled strings → E.164, short codes, or a refusal (gate.numbers)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from gate.core.errors import NumberError
from gate.core.numbers import (
    FR_OVERSEAS,
    BadNumber,
    Destination,
    NumberType,
    ShortCode,
    classify,
    parse_e164,
)

SAME_FRENCH_MOBILE = [
    "0612345678",
    "06 12 34 56 78",
    "06.12.34.56.78",
    "06-12-34-56-78",
    "(06) 12 34 56 78",
    "+33612345678",
    "+33 6 12 34 56 78",
    "+33 (0)6 12 34 56 78",
    "0033 6 12 34 56 78",
    "tel:+33612345678",
    "tel:+33-6-12-34-56-78;phone-context=x",
    "sip:0612345678@pbx.example;user=phone",
    "<sip:+33612345678@10.0.0.1>",
    "sips:+33612345678@pbx",
    "٠٦١٢٣٤٥٦٧٨",  # Arabic-Indic digits
    "\uff10\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # full-width digits
]


@pytest.mark.parametrize("dialled", SAME_FRENCH_MOBILE)
def test_every_french_spelling_gives_one_e164(dialled: str) -> None:
    """National, international, URI and non-ASCII spellings all give +33612345678."""
    result = classify(dialled, "FR")
    assert isinstance(result, Destination)
    assert ("+33612345678", NumberType.MOBILE) == (result.e164, result.number_type)


def test_destination_carries_region_and_time_zone() -> None:
    """A Réunion number is judged in Réunion's zone, not Paris's."""
    result = classify("+262 262 12 34 56", "FR")
    assert Destination("+262262123456", "RE", NumberType.FIXED_LINE, ("Indian/Reunion",)) == result


def test_a_destination_made_by_its_slots_is_the_dataclass_made_by_init() -> None:
    """``classify`` sets a ``Destination``'s slots itself: the same value as its
    ``__init__`` makes (fields, equality, hash, repr), frozen all the same."""
    result = classify("0612345678", "FR")
    assert isinstance(result, Destination)
    made = Destination(result.e164, result.region, result.number_type, result.time_zones)
    assert (result, hash(result), repr(result)) == (made, hash(made), repr(made))
    assert repr(result) == (
        "Destination(e164='+33612345678', region='FR', number_type=<NumberType.MOBILE: "
        "'mobile'>, time_zones=('Europe/Paris',))"
    )
    with pytest.raises(AttributeError):
        result.e164 = "+33700000000"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("dialled", "expected"),
    [
        ("0899123456", NumberType.PREMIUM),
        ("0810123456", NumberType.SHARED_COST),
        ("0800123456", NumberType.TOLL_FREE),
        ("0970123456", NumberType.VOIP),
        ("0140000000", NumberType.FIXED_LINE),
    ],
)
def test_number_type_comes_from_phonenumbers(dialled: str, expected: NumberType) -> None:
    """Premium, shared-cost, toll-free, VoIP and fixed lines are told apart."""
    result = classify(dialled, "FR")
    assert isinstance(result, Destination)
    assert expected == result.number_type


@pytest.mark.parametrize("dialled", ["15", "17", "18", "112", "114", "115", "116000", "119", "196"])
def test_french_emergency_numbers_are_recognised_before_normalisation(dialled: str) -> None:
    """Every French emergency/protected short number is an emergency ShortCode."""
    assert ShortCode(dialled, emergency=True) == classify(dialled, "FR")


@pytest.mark.parametrize(("dialled", "region"), [("911", "US"), ("988", "US"), ("999", "GB")])
def test_other_regions_emergency_numbers(dialled: str, region: str) -> None:
    """US 911/988 and UK 999 are emergency numbers in their regions."""
    assert ShortCode(dialled, emergency=True) == classify(dialled, region)


def test_directory_enquiry_is_a_plain_short_code() -> None:
    """118 712 (directory enquiries) is a short code, not an emergency number."""
    assert ShortCode("118712", emergency=False) == classify("118 712", "FR")


@pytest.mark.parametrize(
    "dialled",
    ["", "   ", "abc", "06 12 34 56 7x", "++33612345678", "0612", "+999123", "1" * 70, "06\n12"],
)
def test_bad_input_is_refused_without_an_exception(dialled: str) -> None:
    """Garbage gives a BadNumber with a reason, never an exception."""
    result = classify(dialled, "FR")
    assert isinstance(result, BadNumber)
    assert result.why


LOCAL_NUMBERS_WITH_A_CONTEXT = [
    "tel:0612345678;phone-context=+44",
    "tel:0612345678;phone-context=+33",
    "tel:612345678;phone-context=+33",
    "tel:5550123;phone-context=+1-212",
    "tel:2125550123;phone-context=+1",
    "tel:0612345678;Phone-Context=+44;ext=12",
    "tel:0612345678;phone-context=example.com",
    "tel:06-12-34-56-78;phone-context=pbx.example.com",
    "tel:0612345678;phone-context=+999",
    "tel:0612345678;phone-context=",
    "sip:0612345678;phone-context=+44@pbx.example;user=phone",
]


@pytest.mark.parametrize("dialled", LOCAL_NUMBERS_WITH_A_CONTEXT)
def test_a_local_number_with_a_phone_context_is_refused(dialled: str) -> None:
    """A local number's context says where it is dialled, not which number it is (RFC
    3966 section 5.1.5): it is refused, never read in the default region (0612345678 in
    +44 is no French subscriber) nor made a number by prefixing its context."""
    for region in ("FR", "US", "GB"):
        result = classify(dialled, region)
        assert isinstance(result, BadNumber), (region, result)
        assert "phone-context" in result.why


@pytest.mark.parametrize(
    ("dialled", "digits"),
    [
        ("tel:112;phone-context=+44", "112"),
        ("tel:999;phone-context=+44-20", "999"),
        ("tel:911;phone-context=+1-212", "911"),
        ("tel:17;phone-context=+33", "17"),
    ],
)
def test_an_emergency_number_in_a_global_context_is_that_countrys(
    dialled: str, digits: str
) -> None:
    """An emergency number, which has no global form (RFC 3966 section 5.1), is one in the
    country of its context's prefix, whatever the default region."""
    assert ShortCode(digits, emergency=True) == classify(dialled, "FR")
    assert ShortCode(digits, emergency=True) == classify(dialled, "US")


def test_a_short_number_in_a_context_of_another_country_is_refused() -> None:
    """17 is an emergency number in France, not in the US: in context +1 it is refused."""
    assert isinstance(classify("tel:17;phone-context=+1", "FR"), BadNumber)
    assert isinstance(classify("tel:112;phone-context=example.com", "FR"), BadNumber)


def test_parse_e164_refuses_a_local_number_in_one_line() -> None:
    """The admin form names the input, what is wrong with it and what to give instead."""
    with pytest.raises(NumberError) as caught:
        parse_e164("tel:0612345678;phone-context=+44", "FR")
    message = str(caught.value)
    assert "'tel:0612345678;phone-context=+44'" in message
    assert "phone-context +44" in message
    assert "give it as +<country><number>" in message
    assert "\n" not in message


def test_parse_e164_raises_a_one_line_number_error() -> None:
    """The strict admin form says which input and what to do."""
    with pytest.raises(NumberError) as caught:
        parse_e164("06 12", "FR")
    assert "'06 12'" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_e164_refuses_an_emergency_number() -> None:
    """An emergency number is not an E.164 entry."""
    with pytest.raises(NumberError, match="emergency"):
        parse_e164("17", "FR")


def _reference(dialled: str, region: str) -> tuple[str, str, tuple[str, ...]] | None:
    """phonenumbers' own answer: E.164, number type and zones, or None if not valid. The
    zones of a North American (+1) number are its area code's whatever its type, as the
    gate places it (phonenumbers gives a non-geographical one, a +1 310 UAN, every zone of
    the plan), and all of them: those of its exchange first, then every other zone
    phonenumbers' data gives a prefix of the area code (the calling hours must hold
    wherever in the area code the callee is; +1 907 555 is Adak and Anchorage by its
    exchange, Juneau and Honolulu by others of 907)."""
    import phonenumbers
    from phonenumbers import timezone
    from phonenumbers.tzdata import TIMEZONE_DATA

    try:
        parsed = phonenumbers.parse(dialled, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    national = phonenumbers.national_significant_number(parsed)
    if parsed.country_code == 33 and re.fullmatch(FR_OVERSEAS, national):
        return None  # an overseas number of the French plan under +33: no one's number
    if parsed.country_code == 1:
        found = timezone.time_zones_for_geographical_number(parsed)
    else:
        found = timezone.time_zones_for_number(parsed)
    zones = tuple(z for z in found if z != "Etc/Unknown")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if parsed.country_code == 1:
        area = {z for p, zs in TIMEZONE_DATA.items() if p.startswith(e164[1:5]) for z in zs}
        zones += tuple(sorted(area - set(zones) - {"Etc/Unknown"}))
    return e164, str(phonenumbers.number_type(parsed)), zones


SAMPLES = [
    *(f"06{i:08d}" for i in range(0, 10**8, 7_654_321)),
    *(f"0{d}{i:08d}" for d in (1, 2, 3, 4, 5, 7, 8, 9) for i in (0, 12345678, 99999999)),
    *(f"+1{a}5550{i:03d}" for a in (212, 213, 305, 800, 907, 808) for i in (0, 123)),
    *(f"00{cc}" for cc in ("442079460000", "4930123456", "390612345678", "33612345678")),
    "+390612345678",
    "+447911123456",
    "+4915112345678",
    "+262262123456",
    "+59069012345",
    "0612",
    "06123456789",
    "+3361234567",
    "+999123456789",
]


@pytest.mark.parametrize("dialled", SAMPLES)
def test_fast_parse_agrees_with_phonenumbers(dialled: str) -> None:
    """The shortcut around phonenumbers.parse gives phonenumbers' own answer."""
    from gate.core.numbers import _TYPE_NAMES

    result = classify(dialled, "FR")
    reference = _reference(dialled, "FR")
    if reference is None:
        assert not isinstance(result, Destination)
        return
    assert isinstance(result, Destination)
    e164, raw_type, zones = reference
    assert (e164, zones) == (result.e164, result.time_zones)
    assert _TYPE_NAMES[int(raw_type)] == result.number_type


@pytest.mark.parametrize(
    ("dialled", "zones"),
    [
        ("+2250123456789", ("Africa/Abidjan",)),  # every Ivorian number begins with 0
        ("+4702000", ("Arctic/Longyearbyen", "Europe/Oslo")),  # a Norwegian UAN
        ("+22708123456", ("Africa/Niamey",)),  # a toll-free number of Niger
    ],
)
def test_a_national_number_with_a_leading_zero_has_its_countrys_zones(
    dialled: str, zones: tuple[str, ...]
) -> None:
    """A non-geographical number whose national number begins with 0 has its calling
    code's zones, as phonenumbers gives them, and so has every later number of that
    country and type (they had none: the number, asked about again rebuilt from an
    integer, lost its zero, and that empty answer was kept for the whole country)."""
    import phonenumbers

    first = classify(dialled, "FR")
    national = str(phonenumbers.parse(dialled).national_number)  # the same, without the 0
    code = dialled[1 : len(dialled) - len(national) - 1]
    later = classify(f"+{code}0{national[:-1]}{(int(national[-1]) + 1) % 10}", "FR")
    reference = _reference(dialled, "FR")
    assert isinstance(first, Destination)
    assert isinstance(later, Destination)
    assert reference is not None
    assert (first.time_zones, later.time_zones, reference[2]) == (zones, zones, zones)


@pytest.mark.parametrize(
    ("dialled", "zones"),
    [
        # Exchanges phonenumbers places in one zone of an area code spanning two.
        ("+18502341234", ("America/Chicago", "America/New_York")),  # 850 (Florida)
        ("+18505551234", ("America/New_York", "America/Chicago")),
        ("+18072231234", ("America/Winnipeg", "America/Toronto")),  # 807 (Ontario)
        ("+14189371234", ("America/Halifax", "America/Toronto")),  # 418 (Québec)
        # Area codes of one zone: unchanged.
        ("+12125550123", ("America/New_York",)),
        ("+14165550123", ("America/Toronto",)),
        ("+33612345678", ("Europe/Paris",)),  # not NANP: unchanged
    ],
)
def test_a_nanp_number_has_every_zone_of_its_area_code(
    dialled: str, zones: tuple[str, ...]
) -> None:
    """A NANP number's zones are all those of its area code, its exchange's first: the
    calling hours hold in each (47 CFR 64.1200(c)(1); a mobile or ported number keeps its
    area code anywhere in it). phonenumbers gives +1 850 234 Chicago only, so a call at
    20:30 Central (21:30 Eastern) was allowed."""
    result = classify(dialled, "US")
    assert isinstance(result, Destination)
    assert zones == result.time_zones


def test_the_area_codes_spanning_zones() -> None:
    """The area codes known to span zones are in the table with several."""
    from gate.core.numbers import _NANP_AREA_ZONES

    spanning = {area[1:] for area, zones in _NANP_AREA_ZONES.items() if len(zones) > 1}
    wanted = {"850", "423", "270", "906", "812", "541", "308", "785", "928"}
    wanted |= {"807", "867", "250", "418"}  # Canada
    assert wanted <= spanning
    assert "212" not in spanning


@settings(max_examples=1500, deadline=None, database=None)
@given(
    code=st.sampled_from([1, 1, 1, 33, 33, 44, 49, 7, 39, 262, 590, 61, 55, 86, 52, 54, 91])
    | st.sampled_from(sorted(COUNTRY_CODE_TO_REGION_CODE)),
    national=st.from_regex(r"[1-9][0-9]{5,11}", fullmatch=True),
)
# A national prefix or carrier code after the country code, which phonenumbers strips
# when what is left has a possible length: +1 1 201…, +55 90 30…
@example(code=1, national="12012000000")
@example(code=55, national="9030000000")
@example(code=7, national="84951234567")
@example(code=33, national="596301234")  # phonenumbers' FR data: valid; it is +596 596…
def test_classify_agrees_with_phonenumbers_on_any_international_number(
    code: int, national: str
) -> None:
    """E.164 number, type and time zones as phonenumbers gives them, for any digits under
    calling codes with zones by area (+1, +33, +44, +49, +7, +61, +55, +86, +52, +54, +91:
    the longest-prefix zone lookup) and shared codes (+262, +590), or under any calling
    code (half the examples)."""
    from gate.core.numbers import _TYPE_NAMES

    dialled = f"+{code}{national}"
    result = classify(dialled, "FR")
    reference = _reference(dialled, "FR")
    if reference is None:
        assert isinstance(result, BadNumber)
        return
    assert isinstance(result, Destination)
    e164, raw_type, zones = reference
    assert (result.e164, result.time_zones) == (e164, zones)
    assert result.number_type == _TYPE_NAMES[int(raw_type)]


def _examples() -> list[tuple[int, str]]:
    """(calling code, national number) of phonenumbers' example number of every type of
    every region and non-geographical code, and each one a digit shorter and longer."""
    import phonenumbers

    kinds = [v for k, v in vars(phonenumbers.PhoneNumberType).items() if k.isupper()]
    found: set[tuple[int, str]] = set()
    for code, regions in COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            for kind in kinds:
                example = (
                    phonenumbers.example_number_for_non_geo_entity(code)
                    if region == "001"
                    else phonenumbers.example_number_for_type(region, kind)
                )
                if example is not None:
                    national = str(example.national_number)
                    found |= {(code, national), (code, national[:-1]), (code, national + "7")}
    return sorted(found)


def _phonenumbers_type(code: int, national: str) -> tuple[int, str | None]:
    import phonenumbers

    parsed = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
    return phonenumbers.number_type(parsed), phonenumbers.region_code_for_number(parsed)


def test_number_type_and_region_agree_with_phonenumbers_on_every_example() -> None:
    """The compiled type rules give phonenumbers' number_type and region_code_for_number
    for the example number of every type of every region (and one digit off each way)."""
    import phonenumbers

    from gate.core.numbers import number_type_and_region

    examples = _examples()
    assert len(examples) > 1500
    differ = [
        (code, national)
        for code, national in examples
        if number_type_and_region(
            phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
        )
        != _phonenumbers_type(code, national)
    ]
    assert differ == []


@settings(max_examples=1500, deadline=None, database=None)
@given(
    code=st.sampled_from([1, 1, 1, 33, 44, 7, 39, 262, 590, 599, 61, 800, 882, 86, 47, 358]),
    national=st.from_regex(r"[1-9][0-9]{3,13}", fullmatch=True),
)
def test_number_type_and_region_agree_with_phonenumbers_on_any_digits(
    code: int, national: str
) -> None:
    """Any national digits under calling codes shared by several regions (+1, +7, +44,
    +262, +590, +599, +61, +47, +358), single ones and non-geographical ones."""
    import phonenumbers

    from gate.core.numbers import number_type_and_region

    parsed = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
    assert number_type_and_region(parsed) == _phonenumbers_type(code, national)


def test_number_types_whose_patterns_have_groups_are_tested_one_by_one() -> None:
    """A type pattern with a group of its own (a back reference: none in phonenumbers'
    data today) is not joined with the others, where its group number would shift: the
    types are then tested one at a time, as phonenumbers does."""
    from types import SimpleNamespace

    import phonenumbers
    from phonenumbers import PhoneNumberDesc
    from phonenumbers import phonenumberutil as util

    from gate.core.numbers import _Types

    def desc(pattern: str) -> PhoneNumberDesc:
        return PhoneNumberDesc(national_number_pattern=pattern, possible_length=(9,))

    metadata = SimpleNamespace(
        general_desc=desc(r"\d{9}"),
        fixed_line=desc(r"(\d)\1\d{7}"),  # the first two digits alike
        mobile=desc(r"[67]\d{8}"),
        same_mobile_and_fixed_line_pattern=False,
        leading_digits=None,
        **{name: None for name, _ in _Types._ORDER},
    )
    metadata.toll_free = desc(r"80\d{7}")
    types = _Types(metadata)  # type: ignore[arg-type]
    for national in ("112345678", "123456789", "612345678", "661234567", "801234567"):
        assert types.of(national) == util._number_type_helper(national, metadata), national
    assert types.of("661234567") == phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE


# --- hostile input: classify never raises -------------------------------------------------

REGIONS = ["FR", "US", "CA", "GB", "DE", "IT", "RE", "ZZ"]
# Text that looks like numbers, with the digits Unicode has beside ASCII: decimal digits of
# other scripts (mapped), and digits that are not decimal ("²", "①": refused).
NUMBERISH = st.text(
    alphabet=st.sampled_from("0123456789+ .-()/\t#*²³¹⁰₀①٣٤۵०０１:;@<>sip tel"),
    max_size=40,
)


WITH_A_CONTEXT = st.builds(
    "{}:{};phone-context={}".format,
    st.sampled_from(["tel", "sip", "TEL"]),
    NUMBERISH,
    st.text(alphabet=st.sampled_from("+0123456789-.()ex;="), max_size=10),
)


@settings(max_examples=2000, deadline=None, database=None)
@given(
    dialled=st.one_of(st.text(max_size=80), NUMBERISH, WITH_A_CONTEXT),
    region=st.sampled_from(REGIONS),
)
def test_classify_never_raises_on_any_text(dialled: str, region: str) -> None:
    """Any string, in any region: a Destination, a ShortCode or a BadNumber, never an error."""
    assert isinstance(classify(dialled, region), Destination | ShortCode | BadNumber)


@pytest.mark.parametrize("dialled", ["061234567²", "+3361234567²", "06123456①8", "0⁶12345678"])
def test_digits_that_are_not_decimal_are_refused(dialled: str) -> None:
    """Superscript and circled digits are digits to Python, but no number is written with
    them: a BadNumber naming the character."""
    result = classify(dialled, "FR")
    assert isinstance(result, BadNumber)
    assert result.why.startswith("unexpected character")


@pytest.mark.parametrize(
    ("dialled", "region", "e164", "home"),
    [
        ("0692123456", "FR", "+262692123456", "RE"),
        ("06 92 12 34 56", "FR", "+262692123456", "RE"),
        ("0269612345", "FR", "+262269612345", "YT"),
        ("0596301234", "FR", "+596596301234", "MQ"),
        ("0690123456", "FR", "+590690123456", "GP"),
        ("0508412345", "FR", "+508412345", "PM"),
        ("0612345678", "RE", "+33612345678", "FR"),
        ("0262161234", "RE", "+262262161234", "RE"),
        ("0800123456", "FR", "+33800123456", "FR"),
        ("0612345678", "FR", "+33612345678", "FR"),
    ],
)
def test_a_national_number_of_the_french_plan_is_its_own_codes(
    dialled: str, region: str, e164: str, home: str
) -> None:
    """In any region of the French plan, 0 and nine digits is the number of the plan's
    code that owns them (0692… is +262 692…, 0612… from Réunion +33 612…)."""
    result = classify(dialled, region)
    assert isinstance(result, Destination)
    assert (e164, home) == (result.e164, result.region)


@pytest.mark.parametrize(
    "dialled", ["+33596301234", "0033 6 92 12 34 56", "+33 (0)2 69 61 23 45", "0976012345"]
)
def test_a_french_plan_spelling_of_no_one_subscriber_is_refused(dialled: str) -> None:
    """+33 and an overseas number's digits, or digits of two overseas codes: BadNumber."""
    assert isinstance(classify(dialled, "FR"), BadNumber)
