"""List files read in bulk give exactly what reading them line by line gives (formats).

The line-by-line path (``read_entries`` over the file's text lines) is the reference: the
bulk path (``read_batches`` of ``open_lines``, blocks of bytes, regular expressions over
runs of common lines) must accept the same numbers, in the same order, reject the same
lines with the same line numbers, texts and reasons, and count the same lines.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from gate.core.errors import InputError
from gate.core.numbers import Destination, classify
from gate.core.rules import ListRule
from gate.lists import formats
from gate.lists.formats import (
    Batch,
    Rejected,
    open_lines,
    read_batches,
    read_entries,
)

BLOCK = ListRule(name="red", kind="block", scope="tenant")

digit = st.sampled_from("0123456789")
nonzero = st.sampled_from("123456789")


def digits(size: int) -> st.SearchStrategy[str]:
    return st.text(digit, min_size=size, max_size=size)


# Lines of the common shapes, their near misses, and anything else.
LINES = st.one_of(
    st.builds("+33{}{}".format, nonzero, digits(8)),  # E.164, FR
    st.builds("0{}{}".format, nonzero, digits(8)),  # FR national
    st.builds("+1{}{}{}{}".format, st.sampled_from("2345"), digits(2), nonzero, digits(6)),
    st.builds(
        "{}{}{}{}".format, st.sampled_from("2389"), digits(2), st.sampled_from("29"), digits(6)
    ),
    st.builds(
        "{}{},{}{}".format, st.sampled_from("29"), digits(2), st.sampled_from("29"), digits(6)
    ),
    st.builds("+{}{}".format, nonzero, st.text(digit, min_size=5, max_size=17)),
    st.builds("+{}".format, st.text(digit, min_size=0, max_size=16)),
    st.builds("0{}".format, st.text(digit, min_size=7, max_size=11)),
    st.builds("1{}".format, digits(10)),
    st.sampled_from(
        [
            "",
            "   ",
            "\t",
            "# a comment",
            "  # indented comment",
            "112",
            "15",
            "911",
            "3949",
            "+33 6 12 34 56 78",
            "06 12 34 56 78",
            "06.12.34.56.78",
            " +33612345678",
            "+33612345678 ",
            "\ufeff+33612345678",
            "٠٦١٢٣٤٥٦٧٨",
            "201,555,0123",
            "201 ,5550123",
            "2015550123,x",
            '"2015550123"',
            '"201","5550123"',
            '"201", "5550123",""',
            '"201,5550123"',
            '"201"5550123',
            '"2015550123',
            "phone",
            "+999123456789",
            "+0612345678",
            "+33",
            "0012025550123",
            "+44 20 7946 0958",
            "+44207946095800000",
            "abc\x85def",
            "\u2028",
            "06\x0c12345678",
            "tel:0612345678;phone-context=+44",
            "tel:+33612345678;phone-context=+33",
        ]
    ),
    st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=20),
)
ENDS = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r"])


@st.composite
def files(draw: st.DrawFn) -> str:
    """A list file's text: lines with line ends, the last one sometimes without."""
    rows = draw(st.lists(st.tuples(LINES, ENDS), max_size=60))
    text = "".join(line + end for line, end in rows)
    if rows and draw(st.booleans()):
        text = text[: -len(rows[-1][1])]  # no line end after the last line
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text


def outcome(
    batches: list[Batch],
) -> tuple[int, list[str], list[tuple[int, str, str]]]:
    lines = sum(b.lines for b in batches)
    accepted = [n for b in batches for n in b.e164s()]
    rejected = [(r.line_no, r.text, r.why) for b in batches for r in b.rejected]
    return lines, accepted, rejected


def reference(
    path: Path, region: str, fmt: str
) -> tuple[int, list[str], list[tuple[int, str, str]]]:
    """What the line-by-line path reads from ``path``."""
    lines = list(open_lines(path))
    entries = list(read_entries(iter(lines), BLOCK, region, fmt))
    accepted = [e for _, e in entries if isinstance(e, str)]
    rejected = [(e.line_no, e.text, e.why) for _, e in entries if isinstance(e, Rejected)]
    return len(lines), accepted, rejected


def bulk(path: Path, region: str, fmt: str) -> tuple[int, list[str], list[tuple[int, str, str]]]:
    source = open_lines(path)
    assert source.unread
    batches = list(read_batches(source, BLOCK, region, fmt))
    assert all(b.block is not None for b in batches)  # read in bulk
    return outcome(batches)


@pytest.mark.parametrize(
    ("region", "fmt"), [("FR", "lines"), ("US", "lines"), ("GB", "lines"), ("CA", "us-dnc")]
)
@pytest.mark.parametrize("block_bytes", [7, 64, 1 << 20])
@settings(max_examples=150, deadline=None, database=None)
@given(text=files())
def test_bulk_reading_equals_line_by_line(
    text: str, region: str, fmt: str, block_bytes: int
) -> None:
    """Numbers, rejects (line, text, why) and line counts are those of the per-line path,
    whatever the block size (line ends split across blocks included)."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
        patch.setattr(formats, "BLOCK_BYTES", block_bytes)
        path = Path(tmp) / "list.txt"
        path.write_bytes(text.encode("utf-8"))
        assert reference(path, region, fmt) == bulk(path, region, fmt)


def test_common_lines_are_read_in_runs() -> None:
    """A block of E.164 and French national lines is read as runs: prefix and the rest."""
    batch = formats.parse_block(
        b"+33612345678\r\n+33698765432\n0611111111\n0622222222\nbad\n+33633333333\n",
        0,
        BLOCK,
        "FR",
        "lines",
    )
    assert [
        (b"", [b"+33612345678", b"+33698765432"]),
        (b"+33", [b"611111111", b"622222222"]),
        (b"", [b"+33633333333"]),
    ] == batch.runs
    assert (6, [5]) == (batch.lines, [r.line_no for r in batch.rejected])


@pytest.mark.parametrize("whole", [False, True])
def test_a_us_dnc_file_takes_quoted_fields_and_rejects_broken_quotes(
    tmp_path: Path, whole: bool
) -> None:
    """A US registry file exported as CSV, its fields in double quotes, is read as the
    registry's own (they were rejected: 'unexpected character \'"\''); a line whose quotes
    are malformed is rejected, by its line number, saying so."""
    path = tmp_path / "212.csv"
    path.write_text(
        '"2125550101"\n"212","5550102"\n212, "5550103"\n"212","5550104","2024-01-02"\n'
        '"212"5550105\n"2125550106\n2125550107\n'
    )
    read = reference(path, "US", "us-dnc") if whole else bulk(path, "US", "us-dnc")
    lines, accepted, rejected = read
    assert (7, [f"+121255501{n:02d}" for n in (1, 2, 3, 4, 7)]) == (lines, accepted)
    assert [5, 6] == [line_no for line_no, _, _ in rejected]
    assert all(why.startswith("malformed double quotes (") for _, _, why in rejected)


def test_the_e164_run_is_built_once() -> None:
    """The run of E.164 lines is compiled on first use, then the same pattern each time."""
    assert formats._e164_run() is formats._e164_run()
    assert formats._e164_run() is formats._runs("FR", "lines")[0][0]


# A fresh interpreter: the test's own may have built the run already.
_FIRST_USE = """
import sys
from gate.core.rules import ListRule
from gate.lists import formats
assert formats._e164_run.cache_info().currsize == 0, "built at import"
assert "phonenumbers.data.region_NL" not in sys.modules, "all regions loaded at import"
batch = formats.parse_block(
    b"+31201234567\\n+33612345678\\n", 0, ListRule("red", "block", "tenant"), "FR", "lines"
)
assert batch.runs == [(b"", [b"+31201234567", b"+33612345678"])], batch.runs
assert formats._e164_run.cache_info().currsize == 1
"""


def test_the_e164_run_is_built_on_first_use_not_at_import() -> None:
    """Importing the formats builds no run of E.164 lines (nor reads every region's
    metadata): the first file read in bulk builds it, and reads its lines in runs."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_USE],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("packing", ["gzip", "zip"])
def test_compressed_files_read_in_bulk_as_line_by_line(tmp_path: Path, packing: str) -> None:
    """gzip and zip files (two members, the first without a last line end) give the same
    as the per-line path, and the same SHA-256 of what was read."""
    first = "".join(f"+3361234{i:04d}\n" for i in range(3000)) + "0612345678"
    second = "\ufeff" + "".join(f"06{i:08d}\r\n" for i in range(1, 3000)) + "oops\n"
    path = tmp_path / f"list.{packing}"
    if packing == "gzip":
        path.write_bytes(gzip.compress((first + "\n" + second).encode()))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.txt", first)
            archive.writestr("b.txt", second)
    digests = [formats.Digest(), formats.Digest()]
    text = list(open_lines(path, digests[0]))
    batches = list(read_batches(open_lines(path, digests[1]), BLOCK, "FR"))
    entries = list(read_entries(iter(text), BLOCK, "FR"))
    assert [e for _, e in entries if isinstance(e, str)] == [n for b in batches for n in b.e164s()]
    assert [e.line_no for _, e in entries if isinstance(e, Rejected)] == [
        r.line_no for b in batches for r in b.rejected
    ]
    assert digests[0].hexdigest() == digests[1].hexdigest()


def test_a_file_that_is_not_utf8_is_refused_in_bulk(tmp_path: Path) -> None:
    """A line that is not UTF-8 is an InputError naming the file and the byte."""
    path = tmp_path / "list.txt"
    path.write_bytes(b"+33612345678\n06\xff12345678\n")
    with pytest.raises(InputError) as caught:
        [b.rejected for b in read_batches(open_lines(path), BLOCK, "FR")]  # parsed when read
    assert f"{path}:2: not UTF-8 text (invalid start byte at byte 15); save it as UTF-8" == str(
        caught.value
    )


@pytest.mark.parametrize("column", [None, "1"], ids=["bulk", "csv"])
@pytest.mark.parametrize(
    ("data", "why"),
    [
        (
            b"0612345678\r\n" * 10_000 + "0612345678\n06é\n".encode() + b"06\xff1234567\n",
            ":10003: not UTF-8 text (invalid start byte at byte 120018); save it as UTF-8",
        ),
        ("phone\n0612345678\n".encode("utf-16"), ": not UTF-8 text but UTF-16; save it as UTF-8"),
    ],
    ids=["far", "utf-16"],
)
def test_a_file_that_is_not_utf8_is_named_by_its_line_and_byte_or_as_utf16(
    tmp_path: Path, column: str | None, data: bytes, why: str
) -> None:
    """Read as text (CSV) or in bulk: the line and the byte of the file (not of a chunk
    the text reader read ahead: it said byte 3506 for byte 110 002), or UTF-16 by its
    byte-order mark; and what to do."""
    path = tmp_path / "list.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(InputError) as caught:
        [b.rejected for b in read_batches(open_lines(path), BLOCK, "FR", column=column)]
    assert f"{path}{why}" == str(caught.value)


def phonenumbers_e164(text: str, region: str) -> str:
    """phonenumbers' own E.164 form of ``text`` (what ``callgate list add`` stores)."""
    import phonenumbers

    parsed = phonenumbers.parse(text, region)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# International numbers written with the national trunk prefix, as Europe writes them,
# and other digits phonenumbers reads differently after the country code than as written.
TRUNK_SPELLINGS = [
    "+33 (0)6 98 76 54 41",  # FR: the 0 dropped
    "+33 06 98 76 54 41",
    "+44 (0)20 7946 0999",  # GB
    "+44 (0) 7911 123456",
    "+49 (0)30 12345678",  # DE
    "+49 (0)151 12345678",
    "+39 06 6988 1234",  # IT: the 0 is part of the number, kept
    "+39 (0)2 1234 5678",
    "+39 02 1234 5678",
    "+43 (0)1 234567890",  # AT
    "+41 (0)44 668 18 00",  # CH
    "+31 (0)20 123 4567",  # NL
    "+353 (0)1 234 5678",  # IE
    "+61 (0)2 9876 5432",  # AU
    "+1 1 212 555 0123",  # NANP: the 1 dropped
    "+7 8 495 123 4567",  # RU: the 8 dropped
    "+55 90 11 91234 5678",  # BR: the carrier code dropped
]


@pytest.mark.parametrize("spelling", TRUNK_SPELLINGS)
@pytest.mark.parametrize("compact", [False, True])
def test_a_trunk_prefix_after_the_country_code_is_read_as_phonenumbers_reads_it(
    spelling: str, compact: bool
) -> None:
    """Read line by line or in bulk, as written or without separators, such a number is
    the E.164 number phonenumbers (and so ``list add`` and the gate) makes of it."""
    text = spelling.translate(str.maketrans("", "", " ()")) if compact else spelling
    expected = phonenumbers_e164(text, "FR")
    entries = [entry for _, entry in read_entries([text + "\n"], BLOCK, "FR")]
    batch = formats.parse_block(text.encode() + b"\n", 0, BLOCK, "FR", "lines")
    assert ([expected], [expected]) == (entries, batch.e164s())


CALLING_CODES = sorted(COUNTRY_CODE_TO_REGION_CODE)


@settings(max_examples=1500, deadline=None, database=None)
@given(
    code=st.sampled_from([1, 7, 33, 39, 44, 49, 55, 61, 54, 52, 57, 82, 86, 370, 375])
    | st.sampled_from(CALLING_CODES),
    national=st.text(digit, min_size=5, max_size=13),
    spelling=st.sampled_from(["+{}{}", "+{} {}", "+{} (0){}", "+{} (0) {}", "+{} 0{}"]),
)
def test_a_number_read_without_phonenumbers_is_the_one_phonenumbers_gives(
    code: int, national: str, spelling: str
) -> None:
    """Whatever digits follow a calling code, and however a trunk prefix is written, the
    fast paths (``fast_e164``, runs read in bulk) give phonenumbers' E.164 number or leave
    the line to phonenumbers: never another number."""
    text = spelling.format(code, national)
    fast = formats.fast_e164(text, "FR")
    bulk = formats.parse_block(text.encode() + b"\n", 0, BLOCK, "FR", "lines").e164s()
    expected = phonenumbers_e164(text, "FR")
    assert fast in (None, expected)
    assert bulk in ([], [expected])


OVERSEAS_LINES = ["0692123456", "0596301234", "0269612345", "+33596301234", "0976012345"]


@pytest.mark.parametrize("line", OVERSEAS_LINES)
def test_an_overseas_line_of_the_french_plan_is_read_as_classify_reads_it(line: str) -> None:
    """In bulk, by the quick path and line by line, such a line is classify's number (0692…
    is +262 692…) or rejected as classify refuses it: never +33 and its digits."""

    found = classify(line, "FR")
    expected = [found.e164] if isinstance(found, Destination) else []
    entries = [e for _, e in read_entries([line + "\n"], BLOCK, "FR") if isinstance(e, str)]
    batch = formats.parse_block(line.encode() + b"\r\n", 0, BLOCK, "FR", "lines")
    assert (expected, expected, expected) == (
        entries,
        batch.e164s(),
        [n for b in formats.read_batches([line + "\n"], BLOCK, "FR") for n in b.e164s()],
    )


def test_the_french_run_guard_refuses_only_lines_the_overseas_pattern_would_not_match() -> None:
    """``_fr_run()`` tries FR_OVERSEAS only on a line whose first digits can start one of its
    matches (``_heads``): every line of a sample of each 4-digit start, and the overseas
    lines, is taken or refused as by the pattern without the guard."""
    import random
    import re

    from gate.core.numbers import FR_OVERSEAS

    heads = formats._heads(FR_OVERSEAS, 9)
    assert heads is not None
    assert len(heads) < 1000  # a guard that refuses most lines
    unguarded = re.compile(rb"(?:0(?!(?:%b)\r?\n)[1-9][0-9]{8}\r?\n)+" % FR_OVERSEAS.encode())
    overseas = re.compile(FR_OVERSEAS)
    rng = random.Random(20261202)
    lines = [line.encode() for line in OVERSEAS_LINES if line.startswith("0")]
    for start in range(1000, 10000):
        lines += [b"0%d%05d" % (start, rng.randrange(100_000)) for _ in range(20)]
    for line in lines:
        for end in (b"\n", b"\r\n"):
            assert bool(formats._fr_run().match(line + end)) == bool(unguarded.match(line + end))
        if overseas.fullmatch(line[1:].decode()):
            assert line[1:5].decode() in heads
    # A run is cut at the first overseas line, as before.
    block = b"0612345678\n0692123456\n0612345679\n"
    assert formats._fr_run().match(block).end() == unguarded.match(block).end() == 11
    # What it cannot read (a backreference) gives no guard; what cannot be 9 digits, none.
    assert formats._heads(r"(\d)\1\d{7}", 9) is None
    assert formats._heads(r"6\d{4}", 9) == set()
    assert formats._heads(r"6[0-2]\d{7}|7\d{3,9}", 9) == {
        *(f"6{d}{e}{f}" for d in "012" for e in "0123456789" for f in "0123456789"),
        *(f"7{d}{e}{f}" for d in "0123456789" for e in "0123456789" for f in "0123456789"),
    }
    assert re.fullmatch(formats._trie({"12", "13", "45"}), "13")


@pytest.mark.parametrize(
    "line", ["tel:0612345678;phone-context=+44", "tel:0612345678;phone-context=example.com"]
)
def test_a_local_number_with_a_phone_context_is_rejected(line: str) -> None:
    """Read line by line or in bulk, a local number of a tel URI with a context is
    rejected with why, never put on the list as the default region's +33612345678."""
    entries = [e for _, e in read_entries([line + "\n"], BLOCK, "FR")]
    batch = formats.parse_block(line.encode() + b"\n", 0, BLOCK, "FR", "lines")
    assert 1 == len(entries)
    assert isinstance(entries[0], Rejected)
    assert "phone-context" in entries[0].why
    assert ([], [entries[0].why]) == (batch.e164s(), [r.why for r in batch.rejected])


@pytest.mark.parametrize(
    ("line", "delimiter"),
    [
        ("name;phone;city", ";"),
        ("Alice;tel:+33612345678;ext=12;Paris", ";"),
        ("Alice;tel:0612345678;phone-context=+44", ";"),
        ("tel:+33612345678;phone-context=+33;ext=12,Alice", ","),
        ('Alice,"tel:+33612345678;isub=1;ext=12"', ","),
        ('"Bob; Jr","a ""b; c""";0612345678,Lyon', ","),
        ("sip:+33612345678;phone-context=+33@example.com;user=phone|Alice", "|"),
    ],
)
def test_the_delimiter_is_guessed_without_quoted_fields_or_uri_parameters(
    line: str, delimiter: str
) -> None:
    """The ``;`` of a quoted field or before a URI's ``name=value`` parameter is not
    counted: a file of ``,`` whose URIs have parameters is read as a file of ``,``."""
    assert delimiter == formats.csv_dialect(line + "\n").delimiter


@pytest.mark.parametrize(
    ("cells", "joined"),
    [
        (
            ["Alice", "tel:+33612345678", "ext=12", "Paris"],
            ["Alice", "tel:+33612345678;ext=12", "Paris"],
        ),
        (
            ["<TEL:0612345678", "Phone-Context=+44", "ext=1>", "x"],
            ["<TEL:0612345678;Phone-Context=+44;ext=1>", "x"],
        ),
        (["<tel:+33612345678", "ext=3>", "id=4"], ["<tel:+33612345678;ext=3>", "id=4"]),
        (["tel:+33612345678;ext=3", "Nice"], None),
        (["id=1", "tel:+33612345678", "Paris", "ext=12"], None),
        (["0612345678", "ext=12"], None),
    ],
)
def test_a_uri_split_at_its_parameters_is_one_cell_again(
    cells: list[str], joined: list[str] | None
) -> None:
    """In a file of ``;``, the cells after a URI's that are ``name=value`` parameters are
    joined back to it (None: the cells are kept as they are); in a file of ``,`` every
    cell is kept."""
    assert ((cells if joined is None else joined), cells) == (
        formats.uri_cells(cells, ";"),
        formats.uri_cells(cells, ","),
    )


def test_a_csv_of_semicolons_reads_its_tel_uris_whole_and_its_quoted_fields() -> None:
    """A local number with a phone-context is rejected, not read in the default region;
    a quoted URI and the cells after a URI are read as written."""
    lines = [
        "name;phone;city\n",
        "Alice;tel:0612345678;phone-context=+44;Paris\n",
        'Bob;"tel:+33612345679;ext=2";Lyon\n',
        "Carol;tel:+33612345680;isub=7;ext=3;Nice\n",
    ]
    entries = dict(read_entries(lines, BLOCK, "FR", "csv", "phone"))
    cities = dict(read_entries(lines, BLOCK, "FR", "csv", "city"))
    assert isinstance(entries[2], Rejected)
    assert (
        "Alice;tel:0612345678;phone-context=+44;Paris",
        "+33612345679",
        "+33612345680",
    ) == (entries[2].text, entries[3], entries[4])
    assert ["Paris", "Lyon", "Nice"] == [
        e.text.split(";")[-1] if isinstance(e, Rejected) else e for e in cities.values()
    ]


@pytest.mark.parametrize(
    "read",
    [
        lambda: formats.uri_cells(["tel:+33612345678", " " * 40_000], ";"),
        lambda: formats.uri_cells(["tel:+33612345678", "ext=" + " " * 40_000 + "x"], ";"),
        lambda: formats.csv_dialect("tel:" * 10_000 + "\n"),
    ],
    ids=["spaces", "parameter", "first line"],
)
def test_a_long_cell_or_first_line_is_read_in_linear_time(read: Callable[[], object]) -> None:
    """A cell of spaces, a parameter followed by spaces, a first line of ``tel:tel:…``
    take milliseconds, not a pass per split of the spaces or per ``tel:`` (quadratic:
    seconds, and the GIL held, so the console's event loop stalled as long)."""
    started = time.monotonic()
    read()
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("column", [None, "1"], ids=["bulk", "csv"])
def test_a_line_over_the_limit_is_refused_naming_it_before_it_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str | None
) -> None:
    """A line longer than ``MAX_LINE_CHARS`` (a gzip of zeros without a line end) is an
    InputError naming the file and the line, read no further than a few blocks: read
    whole, 1 GB of zeros took 2 GB of memory and held the GIL for half a minute."""
    monkeypatch.setattr(formats, "MAX_LINE_CHARS", 100)
    monkeypatch.setattr(formats, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(formats, "BLOCK_BYTES", 64)
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(b"0612345678\n" * 2 + b"\0" * 100_000))
    with pytest.raises(InputError) as caught:
        [b.rejected for b in read_batches(open_lines(path), BLOCK, "FR", column=column)]
    unit = "bytes" if column is None else "characters"
    assert (
        f"{path}:3: a line longer than 100 {unit} (binary data, or a file without line "
        "ends?): give a text file of one row per line"
    ) == str(caught.value)


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_a_line_at_the_limit_is_read_whole_with_its_line_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """A line of ``MAX_LINE_CHARS`` characters is one line, whatever its line end."""
    monkeypatch.setattr(formats, "MAX_LINE_CHARS", 20)
    path = tmp_path / "list.txt"
    path.write_bytes(f"{'0' * 20}{end}{'1' * 20}{end}".encode())
    assert [f"{'0' * 20}{end}", f"{'1' * 20}{end}"] == list(open_lines(path))


def zip_of(path: Path, members: int, zip64: bool = False) -> Path:
    """A zip of ``members`` one-line members; ``zip64``: with Zip64 end records, the
    classic one saturated (0xFFFF members, a directory of 0xFFFFFFFF bytes)."""
    with pytest.MonkeyPatch.context() as patch:
        if zip64:
            patch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)  # zipfile writes Zip64 records
        with zipfile.ZipFile(path, "w") as archive:
            for member in range(members):
                archive.writestr(f"{member:05d}.txt", "0612345678\n")
    if zip64:
        data = bytearray(path.read_bytes())
        data[-12:-4] = b"\xff\xff\xff\xff\xff\xff\xff\xff"  # members (twice), directory size
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_a_zip_of_too_many_members_is_refused_before_its_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64: bool
) -> None:
    """A zip whose central directory is over ``MAX_ZIP_DIRECTORY_BYTES`` (here 1 000: 20
    members of 55 bytes each) is one InputError, by its end record (Zip64's too), before
    zipfile builds an object per member (300 000 members: 450 MB); one of 10 is read."""
    monkeypatch.setattr(formats, "MAX_ZIP_DIRECTORY_BYTES", 1000)
    many, few = zip_of(tmp_path / "many.zip", 20, zip64), zip_of(tmp_path / "few.zip", 10, zip64)
    with pytest.raises(InputError) as caught:
        formats.count_lines(many, "the upload")
    assert (
        "the upload: a zip of too many members (a directory of 1100 bytes, more than 1000: "
        "about 10 members): put the lines in fewer files, or unzip it and read its files",
        10,
    ) == (str(caught.value), formats.count_lines(few))


def test_a_pipe_that_never_ends_is_refused_past_the_bound_and_its_copy_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rereadable`` of a stream that never ends (``yes``) stops at ``MAX_PIPED_BYTES``
    (here 3 blocks) with one InputError saying what to do, and its partial copy is
    removed: it was copied whole, until the disk (maybe Redis's) was full."""
    monkeypatch.setattr(formats, "MAX_PIPED_BYTES", 3 * formats.BLOCK_BYTES)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    endless = subprocess.Popen(["yes", "0612345678"], stdout=subprocess.PIPE)
    try:
        assert endless.stdout is not None
        piped = Path(f"/dev/fd/{endless.stdout.fileno()}")
        with pytest.raises(InputError) as caught, formats.rereadable(piped):
            pass
    finally:
        endless.kill()
        endless.communicate(timeout=10)
    assert (
        f"{piped}: more than {3 * formats.BLOCK_BYTES} bytes from a pipe (a stream that never "
        "ends?): save it to a file first, and give that file",
        [],
    ) == (str(caught.value), list(tmp_path.iterdir()))


_FULL_DISK = """
import resource, signal, subprocess, sys
from pathlib import Path
from gate.lists import formats
size, limit = int(sys.argv[1]), int(sys.argv[2])
feed = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead: a disk full, as it writes
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
piped = f"/dev/fd/{feed.stdout.fileno()}"
try:
    with formats.rereadable(Path(piped)) as copy:
        print("copied", copy.stat().st_size)
except formats.InputError as exc:
    print(str(exc).replace(piped, "PIPE"))
finally:
    feed.wait()
"""


@pytest.mark.parametrize(
    ("size", "limit"),
    [
        (formats.BLOCK_BYTES + 100, formats.BLOCK_BYTES),  # the last bytes, less than a buffer
        (2 * formats.BLOCK_BYTES, formats.BLOCK_BYTES + 10),  # a block written in part
        (100, 10),  # only bytes less than a buffer
    ],
)
def test_a_pipe_whose_copy_the_disk_cannot_hold_is_one_error(
    tmp_path: Path, size: int, limit: int
) -> None:
    """``rereadable`` of a pipe whose copy the disk cannot hold (here: a file size limit,
    EFBIG, as ENOSPC would be) is one InputError saying where and what to do, whichever
    write fails: the last bytes, kept in a buffer, were written by the close and their
    OSError escaped (a traceback), replacing the InputError."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    ran = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(size), str(limit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (
        f"PIPE: cannot keep a copy of it in {tmp_path}: File too large: free some space "
        "there, or set TMPDIR to a directory with room\n",
        "",
        [],
    ) == (ran.stdout, ran.stderr, list(tmp_path.iterdir()))
