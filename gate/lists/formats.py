"""Reading list files: formats, compression, line-by-line validation, no line lost.

Guarantees:
- ``read_entries`` yields, for every line that is not blank or a ``#`` comment, either the
  E.164 number, a ``Rejected`` (line number and why) or a ``Skipped`` (a scrub result the
  caller did not ask to keep): no line disappears without being counted.
- ``read_batches`` gives the same answers for ``BATCH_LINES`` lines at a time (bulk
  imports: no per-line generator chain); each ``Batch`` says how many lines it read.
- Well-formed bulk lines take a fast path (a syntactic check: E.164 with a known country
  code, a French national number, a NANP ten-digit number) at about 1 µs per line, and
  bare national numbers of the default region a quicker one (~0.3 µs); any other line is
  checked by phonenumbers, which also refuses emergency numbers on block lists. The fast
  paths accept assigned-looking numbers phonenumbers might call unassigned; on a block
  list that can only ever block a number nobody can own.
- ``open_lines`` reads plain, gzip and zip files (a zip's members in order), UTF-8 with or
  without BOM, any line ending, and computes the SHA-256 of the bytes it read.
- No line is longer than ``MAX_LINE_CHARS`` characters (``MAX_LINE_BYTES`` bytes, read in
  bulk): a longer one (binary data, a file without line ends, a bomb of one line) is an
  ``InputError`` naming the file and the line, found before more than about two blocks of
  it are held in memory, so that a reader's memory, and the time it holds the GIL on one
  line (the event loop of ``callgate run`` waits as long), stay bounded.
- A zip file whose central directory is over ``MAX_ZIP_DIRECTORY_BYTES`` (about 10 000
  members) is an ``InputError`` before ``zipfile`` reads it (whole, an object per member).
- A file that cannot be decompressed (corrupt gzip or zip data, a zip member encrypted or
  compressed by a method Python cannot read) is an ``InputError`` naming it, never another
  exception (``_UNREADABLE``).
- A file that can be read only once (a pipe, a FIFO, ``/dev/stdin``, a shell's ``<(…)``)
  is copied whole into a private temporary file first (``rereadable``), so counting its
  lines, probing its format and reading it all see the same bytes; at most
  ``MAX_PIPED_BYTES`` of it (an endless stream is an ``InputError``, not a full disk).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import lzma
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import chain, islice
from pathlib import Path
from re import _constants as _sre  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import IO, TYPE_CHECKING, Any, cast

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from gate.core.errors import InputError, NumberError, OptionError, ProtectedNumberError
from gate.core.numbers import (
    FR_OVERSEAS,
    BadNumber,
    ShortCode,
    classify,
    split_international,
    stripped_prefix,
)
from gate.core.rules import ListRule

if TYPE_CHECKING:
    import _csv

__all__ = [
    "BATCH_LINES",
    "BLOCK_BYTES",
    "FORMATS",
    "MAX_LINE_BYTES",
    "MAX_LINE_CHARS",
    "MAX_ZIP_DIRECTORY_BYTES",
    "Batch",
    "Block",
    "Digest",
    "Lines",
    "Rejected",
    "Skipped",
    "batches_of",
    "column_beyond",
    "column_number",
    "count_line_ends",
    "count_lines",
    "csv_dialect",
    "csv_error",
    "csv_rows",
    "open_lines",
    "parse_block",
    "read_batches",
    "read_entries",
    "rereadable",
    "uri_cells",
    "validate_entry",
]

FORMATS = ("lines", "csv", "us-dnc", "fr-scrub")
BATCH_LINES = 10_000
_COMMENT = "#"
# ASCII digits only: other Unicode digits go to phonenumbers, which normalises them.
_E164 = re.compile(r"\+([1-9]\d{7,14})", re.ASCII)
# A French national number of a +33 number: not one of an overseas code of the French plan
# (0692… is +262 692…), which ``classify`` reads.
_FR_NATIONAL = re.compile(rf"0(?!(?:{FR_OVERSEAS})\Z)[1-9]\d{{8}}", re.ASCII)
_NANP = re.compile(r"1?([2-9]\d{2}[2-9]\d{6})", re.ASCII)
# The quicker path of bare national numbers: (full match, country prefix, digits kept).
_QUICK: dict[str, tuple[Callable[[str], object], str, int]] = {
    "FR": (_FR_NATIONAL.fullmatch, "+33", -9),
    "US": (_NANP.fullmatch, "+1", -10),
    "CA": (_NANP.fullmatch, "+1", -10),
}
_SEPARATORS = str.maketrans("", "", " .-()\t")
# A CSV cell that is a tel:, sip: or sips: URI (RFC 3966, RFC 3261), and a parameter of
# one with its value (RFC 3966 section 3: pname "=" pvalue; a SIP URI's also "@"), the
# last one of a URI in <…> with its ">". No two runs of spaces meet: a cell of spaces is
# not tried once for each way of splitting them (quadratic, the GIL held throughout).
_URI_START = re.compile(r"\s*(?:<\s*)?(?:tel|sips?):", re.ASCII | re.IGNORECASE)
_PARAMETER = r"[A-Za-z0-9-]+=[A-Za-z0-9\-_.!~*'()\[\]/:&+$%@]*"
_URI_PARAMETER = re.compile(rf"\s*{_PARAMETER}\s*(?:>\s*)?", re.ASCII)
# A URI of a line and its parameters, if any, and a quoted CSV field (its quote opens the
# field; "" is a quote inside it; it may be closed on a later line). Every URI matches,
# up to the delimiter it runs to: a search never starts again inside one (``tel:tel:…``
# scanned to the end of the line from each ``tel:`` was quadratic).
_URI_PARAMETERS = re.compile(
    rf"(?<![A-Za-z0-9+.-])((?:tel|sips?):[^;,\t|\"]*)(?:;{_PARAMETER})*",
    re.ASCII | re.IGNORECASE,
)
_QUOTED = re.compile(r'(?:^|(?<=[,;\t|]))"(?:[^"]|"")*(?:"|\Z)')


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that was not imported, and why."""

    line_no: int
    text: str
    why: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A scrub-file line left out on purpose (its result is not one to keep)."""

    line_no: int
    result: str


class Batch:
    """Consecutive lines of a list file, each one accounted for: an accepted number, a
    rejected line, a skipped line, or a blank line or comment (counted in ``lines`` only).

    Accepted numbers are in ``numbers`` (E.164 text) or, read in bulk from a file, in
    ``runs``: ``(prefix, rests)``, each number being ``prefix + rest`` in ASCII (``b"+33"``
    and the national digits of a run of French national lines); both in file order.

    A batch read in bulk (``read_batches`` of ``open_lines``) holds its ``block`` of lines
    until one of these is first read (then it is parsed here), so that an importer can have
    the block parsed elsewhere (``gate/lists/workers.py``); ``lines`` is known at once."""

    __slots__ = ("_numbers", "_rejected", "_runs", "_skipped", "block", "lines")

    def __init__(
        self,
        lines: int,
        numbers: list[str] | None = None,
        rejected: list[Rejected] | None = None,
        skipped: int = 0,
        runs: list[tuple[bytes, list[bytes]]] | None = None,
        block: Block | None = None,
    ) -> None:
        self.lines = lines  # lines read, blank lines and comments included
        self._numbers = [] if numbers is None else numbers
        self._rejected = [] if rejected is None else rejected  # in file order
        self._skipped = skipped
        self._runs = [] if runs is None else runs
        self.block = block

    def _parse(self) -> None:
        if self.block is not None:
            block, self.block = self.block, None
            parsed = block.parse()
            self._numbers, self._rejected = parsed.numbers, parsed.rejected
            self._runs, self._skipped = parsed.runs, parsed.skipped

    @property
    def numbers(self) -> list[str]:
        self._parse()
        return self._numbers

    @property
    def rejected(self) -> list[Rejected]:
        self._parse()
        return self._rejected

    @property
    def runs(self) -> list[tuple[bytes, list[bytes]]]:
        self._parse()
        return self._runs

    @property
    def skipped(self) -> int:
        self._parse()
        return self._skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._parse()
        self._skipped = value

    @property
    def accepted(self) -> int:
        """How many numbers the batch accepted."""
        return len(self.numbers) + sum(len(rests) for _, rests in self.runs)

    def e164s(self) -> list[str]:
        """Every accepted number as E.164 text, in file order."""
        return self.numbers + [
            (prefix + rest).decode() for prefix, rests in self.runs for rest in rests
        ]


@dataclass(frozen=True, slots=True)
class Block:
    """Whole lines of a plain list file, not parsed yet: ``data`` from ``offset`` in its
    stream, after ``line_no`` lines of the file; read as ``rule``, ``region``, ``fmt``.
    ``source`` names the file in errors."""

    source: str
    data: bytes
    offset: int
    line_no: int
    rule: ListRule
    region: str
    fmt: str

    def parse(self) -> Batch:
        """The block's lines as ``_line_entry`` reads them (``parse_block``)."""
        try:
            return parse_block(self.data, self.line_no, self.rule, self.region, self.fmt)
        except UnicodeDecodeError as exc:
            raise self.not_utf8(str(exc.reason), exc.start) from exc

    def not_utf8(self, reason: str, start: int) -> InputError:
        """The error of a block that is not UTF-8 (``start``: where, in the block)."""
        head = self.data[:2] if self.offset == 0 else b""
        line_no = self.line_no + count_line_ends(self.data[:start]) + 1
        return _not_utf8(self.source, head, line_no, reason, self.offset + start)


def validate_entry(rule: ListRule, text: str, region: str) -> str:
    """The E.164 form of ``text`` for ``rule``, or an ``InputError`` saying why not."""
    target = classify(text, region)
    if isinstance(target, ShortCode):
        if target.emergency and rule.kind == "block":
            raise ProtectedNumberError(
                f"number {text!r} is an emergency/protected number; it can never be put on "
                f"block list {rule.name!r}"
            )
        raise NumberError(f"number {text!r} is a short code, not an E.164 number")
    if isinstance(target, BadNumber):
        raise NumberError(f"number {text!r}: {target.why}; give it as +<country><number>")
    return target.e164


def fast_e164(text: str, region: str) -> str | None:
    """The E.164 form of a well-formed line, or None (then phonenumbers decides): never
    another number than phonenumbers would give. An international number is taken as
    written only when phonenumbers would keep its digits (``split_international``): a
    trunk prefix after the country code (``+33 (0)6…``, ``+1 1 212…``), which
    phonenumbers drops, or Italy's leading 0 (``+39 06…``), which it keeps, is its to
    read."""
    compact = text.translate(_SEPARATORS)
    if match := _E164.fullmatch(compact):
        return compact if split_international(match.group(1)) is not None else None
    if region == "FR" and _FR_NATIONAL.fullmatch(compact):
        return "+33" + compact[1:]
    if region in ("US", "CA") and (match := _NANP.fullmatch(compact)):
        return "+1" + match.group(1)
    return None


def _entry(line_no: int, line: str, value: str, rule: ListRule, region: str) -> str | Rejected:
    if (fast := fast_e164(value, region)) is not None:
        return fast
    try:
        return validate_entry(rule, value, region)
    except InputError as exc:
        return Rejected(line_no, line, str(exc))


def _plain_entry(
    line_no: int, raw: str, fmt: str, rule: ListRule, region: str
) -> str | Rejected | None:
    """A line of the ``lines`` or ``us-dnc`` format (None: a blank line or a comment)."""
    line = raw.lstrip("\ufeff").rstrip("\r\n")
    if not line.strip() or line.lstrip().startswith(_COMMENT):
        return None
    if fmt == "us-dnc":
        fields = _us_dnc_fields(line)
        if isinstance(fields, str):
            return Rejected(line_no, line, fields)
        value = "".join(part.strip() for part in fields[:2])
    else:
        value = line.strip()
    return _entry(line_no, line, value, rule, region)


def _us_dnc_fields(line: str) -> list[str] | str:
    """The fields of a ``us-dnc`` line (ten digits, or area code and number, maybe more
    fields after), each maybe in double quotes, as a CSV export writes them
    (``"2125551234"``, ``"212","5551234"``); or why its quotes are malformed (a field
    opened and not closed, text after a closing quote)."""
    if '"' not in line:  # the registry's own files: at 0.1 µs
        return line.split(",")
    try:
        return next(csv.reader([line.strip()], strict=True, skipinitialspace=True), [])
    except csv.Error as exc:
        return (
            f"malformed double quotes ({exc}): give ten digits or area code,number, "
            'each field in quotes whole or not at all ("212","5551234")'
        )


def csv_dialect(line: str) -> type[csv.Dialect]:
    """The CSV dialect of a file whose first line is ``line``: the delimiter (, ; tab or
    |) it has most of, not counting those of a quoted field or the ``;`` before a
    parameter of a ``tel:``/``sip:`` URI (``tel:+33612345678;ext=12``): a file of ``,``
    whose URIs have parameters is no file of ``;``."""
    counted = _URI_PARAMETERS.sub(r"\1", _QUOTED.sub("", line))

    class Dialect(csv.excel):
        delimiter = max(",;\t|", key=counted.count)

    return Dialect


def uri_cells(cells: list[str], delimiter: str) -> list[str]:
    """The cells of a CSV row of ``delimiter`` with each ``tel:``/``sip:`` URI whole: in a
    file of ``;``, the cells after a URI's that are its parameters (``name=value``, RFC
    3966: ``tel:0612345678;phone-context=+44``) joined back to it, so that its
    phone-context is read with its number and no cell after it moves to another column."""
    if delimiter != ";" or ":" not in "".join(cells):  # most rows: no URI, at 0.1 µs
        return cells
    if not any(_URI_START.match(cell) for cell in cells):
        return cells
    joined: list[str] = []
    in_uri = False
    for cell in cells:
        if in_uri and _URI_PARAMETER.fullmatch(cell):
            joined[-1] += ";" + cell
        else:
            in_uri = _URI_START.match(cell) is not None
            joined.append(cell)
        in_uri = in_uri and not cell.rstrip().endswith(">")  # a URI in <…> ends at ">"
    return joined


def column_number(spec: str, option: str = "column") -> int | None:
    """The 0-based index of the column ``spec`` names by its 1-based number (ASCII
    digits), or None when ``spec`` is a header name: "²" or "٢" are names, not numbers
    (``str.isdigit`` is true of both; ``int`` refuses the first and reads the second as 2).
    ``OptionError`` for 0, naming ``spec`` as given to option ``option``."""
    if not (spec.isascii() and spec.isdecimal()):
        return None
    if int(spec) < 1:
        raise OptionError(f"{{{option}}} {{spec}}: columns are numbered from 1", spec=spec)
    return int(spec) - 1


def column_beyond(
    source: object, line_no: int, index: int, count: int, spec: str, option: str = "column"
) -> OptionError:
    """The one-line error of column ``spec`` (0-based ``index``, as given to option
    ``option``) past the ``count`` cells of the first row of file ``source``, on line
    ``line_no``: read on, every row would be rejected for it (a wrong number, or a
    delimiter the file does not use), so nothing is read."""
    cells, numbers = (
        ("1 column", "1") if count == 1 else (f"{count} columns", f"a number from 1 to {count}")
    )
    return OptionError(
        "{source}:{line_no}: no column {number} ({" + option + "} {spec}): the file's first "
        "row has {cells}; give {" + option + "} {numbers}, or a header name",
        source=source,
        line_no=line_no,
        number=index + 1,
        spec=spec,
        cells=cells,
        numbers=numbers,
    )


def csv_error(source: object, line_no: int, exc: csv.Error) -> InputError:
    """The one-line error of a CSV row the csv module refused, the row starting on line
    ``line_no`` of file ``source``. A field over the module's limit (128 KiB) is nearly
    always a quote never closed, which makes the rest of the file one field."""
    if "field limit" in str(exc):
        return InputError(
            f"{source}:{line_no}: a field of the row starting on this line is longer than "
            f"{csv.field_size_limit()} characters (a quote never closed?): close the "
            "quote, or remove it"
        )
    return InputError(f"{source}:{line_no}: not readable as CSV: {exc}")


def read_entries(
    lines: Iterable[str],
    rule: ListRule,
    region: str,
    fmt: str = "lines",
    column: str | None = None,
    keep: frozenset[str] = frozenset(),
    header: bool = False,
    on_header: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, str | Rejected | Skipped]]:
    """Parse a list file line by line.

    - ``lines``: one number per line (``column`` or ``header`` given: as ``csv``).
    - ``csv``: CSV/TSV/semicolon (sniffed), ``column`` a header name or a 1-based index
      (default 1 with ``header``).
    - ``us-dnc``: the US registry's area-code files: ten digits, or "area code,number";
      a field may be in double quotes (a CSV export's ``"212","5551234"``).
    - ``fr-scrub``: a French scrubbing service's return file ``Telephone;Identifiant;
      <result>``; only rows whose result is in ``keep`` are entries (others: Skipped).

    A header row is no entry: the first row when ``header`` is true or ``column`` is a
    header name, or a ``fr-scrub`` file's first row if it has no digit. ``on_header`` is
    told its line number; only the first row is ever taken for a header.

    A row without column ``column`` is rejected, but the first row of numbers without it
    is an ``OptionError`` (``column_beyond``), before any entry: the number given is past
    the file's columns, and every row would be rejected.
    """
    if fmt not in FORMATS:
        raise OptionError(
            "{format} {fmt!r}: use one of {formats}", fmt=fmt, formats=", ".join(FORMATS)
        )
    if fmt == "lines" and (column is not None or header):
        fmt = "csv"
    if fmt == "csv" and header:
        column = column or "1"
    if fmt == "fr-scrub":
        if not keep:
            raise OptionError(
                "{format} fr-scrub needs the results to keep: {keep:ask} (the result value "
                "of numbers that may be called, as written in the file)"
            )
        column = column or "1"
    if fmt == "us-dnc":
        region = "US"
    index = None if column is None else column_number(column)
    header_pending = fmt == "fr-scrub" or (column is not None and index is None) or header
    if fmt in ("lines", "us-dnc"):
        for line_no, raw in enumerate(lines, start=1):
            entry = _plain_entry(line_no, raw, fmt, rule, region)
            if entry is not None:
                yield line_no, entry
        return
    source = _source(lines)
    first = True  # the first row of numbers: has it the column?
    for line_no, cells, text in _csv_rows(lines, source):
        if header_pending:
            names = [cell.strip().lower() for cell in cells]
            if column is not None and index is None:
                if column.lower() not in names:
                    raise InputError(
                        f"{source}:{line_no}: no column named {column!r} in header {cells!r}"
                    )
                index = names.index(column.lower())
                header_pending = False
                if on_header is not None:
                    on_header(line_no)
                continue  # the header row
            header_pending = False
            # --header's row, or a scrub file's header row (Telephone;Identifiant;…)
            if header or not any(c.isdigit() for c in "".join(cells)):
                if on_header is not None:
                    on_header(line_no)
                continue
        assert index is not None
        if index >= len(cells):
            if first:  # a column number past the file's columns: every line would be
                raise column_beyond(source, line_no, index, len(cells), column or "1")
            yield line_no, Rejected(line_no, text, f"no column {index + 1}")
            continue
        first = False
        if fmt == "fr-scrub":
            if len(cells) < 3:
                yield line_no, Rejected(line_no, text, "expected Telephone;Identifiant;result")
                continue
            result = cells[2].strip()
            if result not in keep:
                yield line_no, Skipped(line_no, result)
                continue
        yield line_no, _entry(line_no, text, cells[index].strip(), rule, region)


def _source(lines: Iterable[str]) -> object:
    """How an error names the file of ``lines``: its name (``open_lines``: its path, or
    the name given, "the upload"), else "input"."""
    if isinstance(lines, _Counted):
        lines = lines.source
    return lines.name if isinstance(lines, Lines) else "input"


def csv_rows(reader: _csv.Reader, source: object, before: int) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) of each row of ``reader``, a ``csv.reader`` of the lines
    of file ``source`` after its first ``before``, each URI a cell (``uri_cells``); a row
    the csv module refuses is an ``InputError`` naming the line it starts on
    (``csv_error``)."""
    delimiter = reader.dialect.delimiter
    read = 0  # lines read by the rows given so far
    for _ in range(1 << 62):  # bounded by the file: the reader stops at its end
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise csv_error(source, before + read + 1, exc) from exc
        line_no, read = before + read + 1, reader.line_num
        yield line_no, uri_cells(cells, delimiter)


def _csv_rows(lines: Iterable[str], source: object) -> Iterator[tuple[int, list[str], str]]:
    """(first line number, cells, the row as one line of text) of each CSV row that is not
    blank or a ``#`` comment, read by the csv module as a stream: a quoted field may span
    lines. The dialect (, ; tab or |) is that of the first such line. A row the csv module
    refuses (a field over its limit) is an ``InputError`` naming ``source`` and the line
    the row starts on (``csv_error``)."""
    source_lines = iter(lines)
    skipped = 0
    first = ""
    for raw in source_lines:
        first = raw.lstrip("\ufeff")
        if first.strip() and not first.lstrip().startswith(_COMMENT):
            break
        skipped += 1
    else:
        return
    dialect = csv_dialect(first)
    reader = csv.reader(chain([first], source_lines), dialect)
    for line_no, cells in csv_rows(reader, source, skipped):
        if not any(cell.strip() for cell in cells) or cells[0].lstrip().startswith(_COMMENT):
            continue
        text = dialect.delimiter.join(cells).replace("\r", " ").replace("\n", " ")
        yield line_no, cells, text


def read_batches(
    lines: Iterable[str],
    rule: ListRule,
    region: str,
    fmt: str = "lines",
    column: str | None = None,
    keep: frozenset[str] = frozenset(),
    size: int = BATCH_LINES,
    header: bool = False,
    on_header: Callable[[int], None] | None = None,
) -> Iterator[Batch]:
    """``read_entries`` by batches of ``size`` lines: the same numbers, rejects (with their
    line numbers) and skips, in file order (a header row skipped as it does, ``on_header``
    told). A file opened by ``open_lines`` in a plain format (``lines`` without a column
    or header, ``us-dnc``) is read in bulk instead, by blocks of about ``BLOCK_BYTES``
    (``parse_block``)."""
    if fmt not in FORMATS:
        raise OptionError(
            "{format} {fmt!r}: use one of {formats}", fmt=fmt, formats=", ".join(FORMATS)
        )
    if fmt == "us-dnc" or (fmt == "lines" and column is None and not header):
        region = "US" if fmt == "us-dnc" else region
        if isinstance(lines, Lines) and lines.unread:
            yield from _bulk_batches(lines, rule, region, fmt)
        else:
            yield from _plain_batches(lines, rule, region, fmt, size)
        return
    counted = _Counted(lines)
    batch, start = Batch(0), 0
    entries = read_entries(counted, rule, region, fmt, column, keep, header, on_header)
    for _line_no, entry in entries:
        if isinstance(entry, str):
            batch.numbers.append(entry)
        elif isinstance(entry, Rejected):
            batch.rejected.append(entry)
        else:
            batch.skipped += 1
        if counted.lines - start >= size:
            batch.lines = counted.lines - start
            yield batch
            batch, start = Batch(0), counted.lines
    batch.lines = counted.lines - start
    yield batch


def batches_of(entries: Iterable[tuple[int, str | Rejected | Skipped]]) -> Iterator[Batch]:
    """``read_entries``-style entries grouped into batches (``lines``: entries)."""
    batch = Batch(0)
    for _line_no, entry in entries:
        batch.lines += 1
        if isinstance(entry, str):
            batch.numbers.append(entry)
        elif isinstance(entry, Rejected):
            batch.rejected.append(entry)
        else:
            batch.skipped += 1
        if batch.lines >= BATCH_LINES:
            yield batch
            batch = Batch(0)
    yield batch


class _Counted:
    """Iterates over lines, counting them."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.source = lines
        self._lines = iter(lines)
        self.lines = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.lines += 1
        return line


def _plain_batches(
    lines: Iterable[str], rule: ListRule, region: str, fmt: str, size: int
) -> Iterator[Batch]:
    """The ``lines`` and ``us-dnc`` formats, line by line (``_line_entry``)."""
    quick = _QUICK.get(region)
    line_no = 0
    for chunk in iter(partial(_take, iter(lines), size), []):
        batch = Batch(len(chunk))
        accept = batch.numbers.append
        for raw in chunk:
            line_no += 1
            entry = _line_entry(line_no, raw, rule, region, fmt, quick)
            if isinstance(entry, str):
                accept(entry)
            elif entry is not None:
                batch.rejected.append(entry)
        yield batch


def _line_entry(
    line_no: int,
    raw: str,
    rule: ListRule,
    region: str,
    fmt: str,
    quick: tuple[Callable[[str], object], str, int] | None,
) -> str | Rejected | None:
    """One line of the ``lines`` or ``us-dnc`` format: a bare national number of
    ``region`` is accepted by one regular expression, any other line by ``_plain_entry``
    (None: a blank line or a comment)."""
    value = raw.strip()
    if fmt == "us-dnc" and "," in value:
        parts = value.split(",")
        value = parts[0] + parts[1] if len(parts) == 2 else ""
    if quick is not None and quick[0](value):
        return quick[1] + value[quick[2] :]
    return _plain_entry(line_no, raw, fmt, rule, region)


# --- files read in bulk ------------------------------------------------------------------
#
# A file opened by ``open_lines`` and read in a plain format is read as blocks of whole
# lines (bytes). A run of consecutive lines of one common shape is matched by one regular
# expression over the block and split at once; any other line goes through
# ``_line_entry``, the line-by-line path, so that both accept and reject exactly the same
# lines (tests/unit/test_formats.py compares them over generated files). The shapes, each
# a subset of what ``_line_entry`` accepts, giving the same number:
# - ``+<digits>`` (8-15 digits, the first not 0) starting with a known country code and
#   going on with what phonenumbers keeps as written (``_national_guard``): the line
#   itself (``fast_e164``);
# - in region FR, ``0`` and 9 digits, the first not 0, of a +33 number (not
#   ``FR_OVERSEAS``): +33 and the last 9;
# - in regions US and CA (and ``us-dnc`` files), NANP's 10 digits, or ``us-dnc``'s
#   ``area,number``: +1 and the 10 digits;
# each line ending with \n or \r\n (no spaces, no separators).

# What makes a national prefix pattern's match depend on what follows or precedes it.
_FRANCE = 33
_sre_parse = _parser.parse
_ANCHORS = ("$", "^", "\\A", "\\Z", "\\b", "\\B", "(?=", "(?!", "(?<")


def _national_guard(code: int) -> str | None:
    """A negative lookahead, put after calling code ``code`` in ``_e164_run``, that
    refuses every national number ``split_international`` refuses (maybe more): one
    starting with 0 or matched by the code's ``stripped_prefix``, or after +33 the digits
    of an overseas number of the French plan (a match of a pattern
    without anchors or lookarounds on the number's digits is one on the line too; a
    pattern that can match nothing refuses them all). None for a pattern with anchors:
    that code's lines are then read line by line, by ``fast_e164``."""
    refused = ["0"]
    prefix = stripped_prefix(code)
    if prefix is not None:
        if not prefix.pattern.isascii() or any(a in prefix.pattern for a in _ANCHORS):
            return None
        refused.append(f"(?:{prefix.pattern})")
    if code == _FRANCE:  # +33 and an overseas number's digits (``split_international``)
        refused.append(f"(?:{FR_OVERSEAS})\\r?\\n")
    return f"(?!{'|'.join(refused)})"


def _prefix_pattern(guards: dict[str, str], prefix: str = "") -> str:
    """A regular expression matching the digits that start with one of the calling codes
    of ``guards`` (and a calling code is never the start of another), each followed by
    what its guard allows."""
    ends: dict[str, str] = {}  # the last digits of the codes ending here, by guard
    for digit in "0123456789":
        if prefix + digit in guards:
            guard = guards[prefix + digit]
            ends[guard] = ends.get(guard, "") + digit
    parts = [f"[{digits}]{guard}" for guard, digits in ends.items()]
    for digit in "0123456789":
        longer = prefix + digit
        if longer not in guards and any(code.startswith(longer) for code in guards):
            parts.append(f"{digit}(?:{_prefix_pattern(guards, longer)})")
    return "|".join(parts)


@cache
def _e164_run() -> re.Pattern[bytes]:
    """A run of ``+<digits>`` lines read in bulk (the first shape above), built on first use:
    the guards read the metadata of every calling code's main region (about 215 of them),
    which only a file read in bulk needs, so a command that reads none starts without it."""
    guards = {
        str(code): guard
        for code in COUNTRY_CODE_TO_REGION_CODE
        if (guard := _national_guard(code)) is not None
    }
    return re.compile(rb"(?:\+(?=%b)[1-9][0-9]{7,14}\r?\n)+" % _prefix_pattern(guards).encode())


_DIGITS = "0123456789"
_HEAD = 4  # digits of a number's start that ``_heads`` tells apart


def _class_digits(items: list[tuple[Any, Any]]) -> set[str] | None:
    """The ASCII digits a parsed character class accepts (None: a class it cannot read)."""
    found: set[str] = set()
    for op, arg in items:
        if op is _sre.LITERAL:
            found.add(chr(arg))
        elif op is _sre.RANGE:
            found.update(d for d in _DIGITS if arg[0] <= ord(d) <= arg[1])
        elif op is _sre.CATEGORY and arg is _sre.CATEGORY_DIGIT:
            found.update(_DIGITS)
        else:
            return None
    return found & set(_DIGITS)


def _extend(items: Any, states: set[tuple[str, int]], size: int) -> set[tuple[str, int]] | None:
    """Where matching the parsed ``items`` from ``states`` may get: (the first ``_HEAD``
    digits taken, how many taken), digits only, at most ``size``; None for what it cannot
    read. Assertions and anchors take nothing (a superset, never fewer)."""
    for op, arg in items:
        new: set[tuple[str, int]] | None
        if op is _sre.LITERAL or op is _sre.IN:
            chars = ({chr(arg)} & set(_DIGITS)) if op is _sre.LITERAL else _class_digits(arg)
            if chars is None:
                return None
            new = set()
            for head, taken in states:
                if taken >= size:
                    continue
                if len(head) < _HEAD:
                    new.update((head + c, taken + 1) for c in chars)
                else:  # its head is whole: the digit changes only the count
                    new.add((head, taken + 1))
        elif op is _sre.SUBPATTERN:
            new = _extend(arg[3], states, size)
        elif op is _sre.BRANCH:
            new = set()
            for branch in arg[1]:
                part = _extend(branch, states, size)
                if part is None:
                    return None
                new |= part
        elif op is _sre.MAX_REPEAT or op is _sre.MIN_REPEAT:
            low, high, sub = arg
            now: set[tuple[str, int]] | None = states
            for _ in range(min(low, size + 1)):
                now = _extend(sub, now, size) if now is not None else None
            if now is None:
                return None
            new = set(now)
            more = size + 1 if high is _sre.MAXREPEAT else min(high, size + 1) - low
            for _ in range(max(0, more)):  # each repeat past ``size`` digits takes none
                now = _extend(sub, now, size)
                if now is None:
                    return None
                if now <= new:
                    break
                new |= now
        elif op is _sre.ASSERT or op is _sre.ASSERT_NOT or op is _sre.AT:
            new = states
        else:
            return None
        if new is None:
            return None
        states = new
    return states


def _heads(pattern: str, size: int) -> set[str] | None:
    """The first ``_HEAD`` digits of every string of ``size`` ASCII digits that
    ``pattern`` matches whole (maybe more, never fewer); None if it cannot tell."""
    states = _extend(_sre_parse(pattern), {("", 0)}, size)
    return None if states is None else {head for head, taken in states if taken == size}


def _trie(heads: set[str]) -> str:
    """A regular expression matching the start of a string that starts with one of
    ``heads`` (strings of one length), one character tried after another."""
    if heads == {""}:
        return ""
    rests: dict[str, set[str]] = {}
    for head in heads:
        rests.setdefault(head[0], set()).add(head[1:])
    firsts: dict[str, list[str]] = {}
    for char, rest in sorted(rests.items()):
        firsts.setdefault(_trie(rest), []).append(char)
    parts = []
    for rest_pattern, chars in firsts.items():
        lead = chars[0] if len(chars) == 1 else "[" + "".join(chars) + "]"
        parts.append(lead + (f"(?:{rest_pattern})" if "|" in rest_pattern else rest_pattern))
    return "|".join(parts)


@cache
def _fr_run() -> re.Pattern[bytes]:
    """A run of French national lines (``0`` and 9 digits), none of an overseas number.
    FR_OVERSEAS, an alternation of some 40 patterns, is tried only on a line whose first
    national digits can start one of its matches (``_heads``): tried on every line it took
    1.1 µs a line, 90% of parsing a file of mobiles. The same lines as without the guard:
    it refuses only what FR_OVERSEAS would not match. Built on first use (~30 ms), as
    ``_e164_run``."""
    heads = _heads(FR_OVERSEAS, 9)
    guard = "" if heads is None else f"(?={_trie(heads) or '(?!)'})"
    return re.compile(
        rb"(?:0(?!%b(?:%b)\r?\n)[1-9][0-9]{8}\r?\n)+" % (guard.encode(), FR_OVERSEAS.encode())
    )


_NANP_RUN = re.compile(rb"(?:[2-9][0-9]{2}[2-9][0-9]{6}\r?\n)+")
_AREA_RUN = re.compile(rb"(?:[2-9][0-9]{2},[2-9][0-9]{6}\r?\n)+")
_BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 1 << 20
# The largest central directory of a zip file: a member's entry is 46 bytes and its name
# (APPNOTE.TXT 4.3.12), so about 10 000 members of names of 50 characters.
MAX_ZIP_DIRECTORY_BYTES = 1 << 20
# What a pipe may give (copied whole to a temporary file first: ``rereadable``), at most: a
# stream that never ends would fill the disk (the one Redis may save to, too).
MAX_PIPED_BYTES = 8 * 1024**3
_EOCD = struct.Struct("<4s4H2LH")  # APPNOTE.TXT 4.3.16: end of central directory record
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 4.3.15: zip64 end of central directory locator
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # 4.3.14: zip64 end of central directory record
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
# The longest line of a list or leads file: a row of a wide CSV export is a few KiB; the
# csv module already refuses a field over 128 KiB.
MAX_LINE_CHARS = 1 << 20
MAX_LINE_BYTES = MAX_LINE_CHARS


def _line_too_long(name: str, line_no: int, limit: int, unit: str) -> InputError:
    return InputError(
        f"{name}:{line_no}: a line longer than {limit} {unit} (binary data, or a file "
        "without line ends?): give a text file of one row per line"
    )


class _LongLine(Exception):
    """A line longer than ``MAX_LINE_BYTES`` in a stream read in blocks (the reader of the
    blocks, which counts their lines, names it)."""


def _runs(region: str, fmt: str) -> list[tuple[re.Pattern[bytes], bytes, int]]:
    """The shapes read in bulk for ``region`` and ``fmt``: (a run of them, prefix of the
    number, 1 to drop each line's first byte, -1 its comma)."""
    runs = [(_e164_run(), b"", 0)]
    if fmt == "us-dnc":
        runs += [(_NANP_RUN, b"+1", 0), (_AREA_RUN, b"+1", -1)]
    elif region == "FR":
        runs.append((_fr_run(), b"+33", 1))
    elif region in ("US", "CA"):
        runs.append((_NANP_RUN, b"+1", 0))
    return runs


def _split_run(run: bytes, drop: int) -> list[bytes]:
    """The lines of a run (each ending with \n or \r\n) without their ends; ``drop`` 1:
    without their first byte; -1: without the comma of ``area,number``."""
    if b"\r" in run:
        run = run.replace(b"\r\n", b"\n")
    if drop == 1:
        return run[1:-1].split(b"\n" + run[:1])  # every line starts with the same byte
    if drop == -1:
        run = run.replace(b",", b"")
    return run[:-1].split(b"\n")


def _line_end(block: bytes, start: int) -> int:
    """Where the line starting at ``start`` ends (after its \n, \r or \r\n, as text
    files are read with universal newlines), or the block's end."""
    newline = block.find(b"\n", start)
    ret = block.find(b"\r", start, None if newline < 0 else newline)
    if ret >= 0:
        return ret + 2 if block[ret + 1 : ret + 2] == b"\n" else ret + 1
    return len(block) if newline < 0 else newline + 1


def parse_block(block: bytes, line_no: int, rule: ListRule, region: str, fmt: str) -> Batch:
    """The lines of ``block`` (bytes of whole lines, the first numbered ``line_no + 1``) as
    ``_line_entry`` reads them, in bulk where they are of a common shape. A line that is
    not UTF-8 raises ``UnicodeDecodeError`` (``start``: its offset in the block)."""
    batch = Batch(0)
    runs = _runs(region, fmt)
    quick = _QUICK.get(region)
    pos, size, first = 0, len(block), line_no
    while pos < size:
        for pattern, prefix, drop in runs:
            found = pattern.match(block, pos)
            if found is not None:
                rests = _split_run(block[pos : found.end()], drop)
                batch.runs.append((prefix, rests))
                line_no += len(rests)
                pos = found.end()
                break
        else:
            end = _line_end(block, pos)
            try:
                raw = block[pos:end].decode("utf-8")
            except UnicodeDecodeError as exc:
                exc.start += pos
                raise
            line_no += 1
            entry = _line_entry(line_no, raw, rule, region, fmt, quick)
            if isinstance(entry, str):
                if batch.runs and batch.runs[-1][0] == b"":
                    batch.runs[-1][1].append(entry.encode())
                else:
                    batch.runs.append((b"", [entry.encode()]))
            elif entry is not None:
                batch.rejected.append(entry)
            pos = end
    batch.lines = line_no - first
    return batch


def _bulk_batches(source: Lines, rule: ListRule, region: str, fmt: str) -> Iterator[Batch]:
    """``read_batches`` of a file in a plain format: a batch per block, parsed when first
    read (``Batch``)."""
    line_no = 0
    blocks = source.blocks()
    for _ in range(1 << 62):  # bounded by the file: the blocks end with it
        try:
            offset, data = next(blocks)
        except StopIteration:
            return
        except _LongLine as exc:  # it starts right after the blocks given so far
            raise _line_too_long(source.name, line_no + 1, MAX_LINE_BYTES, "bytes") from exc
        lines = count_line_ends(data)
        if data[-1:] not in (b"\n", b"\r"):
            lines += 1  # the last line of a stream, without a line end
        block = Block(source.name, data, offset, line_no, rule, region, fmt)
        line_no += lines
        yield Batch(lines, block=block)


def count_line_ends(data: bytes) -> int:
    """Line ends in ``data``: \n, \r and \r\n (one each), as text files are read."""
    if b"\r" not in data:
        return data.count(b"\n")
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _take(lines: Iterator[str], size: int) -> list[str]:
    return list(islice(lines, size))


@dataclass
class Digest:
    """The SHA-256 of the bytes read so far."""

    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


class _Hashing(io.RawIOBase):
    """A binary reader that feeds every byte it returns to a digest."""

    def __init__(self, raw: IO[bytes], digest: Digest) -> None:
        self._raw, self._digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        self._digest.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


def _zip_directory_bytes(archive: IO[bytes]) -> int | None:
    """The size of the central directory of zip file ``archive`` as its end record says
    (the Zip64 one's if the classic one is saturated; APPNOTE.TXT 4.3.14-4.3.16), or None
    if there is no end record (``zipfile`` then refuses the file)."""
    size = archive.seek(0, io.SEEK_END)
    start = max(0, size - _EOCD.size - 0xFFFF)  # the record, then a comment of 64 KiB at most
    archive.seek(start)
    tail = archive.read()
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    _, _, _, _, entries, directory, _, _ = _EOCD.unpack_from(tail, at)
    if entries != 0xFFFF and directory != 0xFFFFFFFF:
        return int(directory)
    locator = start + at - _ZIP64_LOCATOR.size
    if locator < 0:
        return None
    archive.seek(locator)
    signature, _, record, _ = _ZIP64_LOCATOR.unpack(archive.read(_ZIP64_LOCATOR.size))
    if signature != _ZIP64_LOCATOR_SIGNATURE:
        return None
    archive.seek(record)
    data = archive.read(_ZIP64_EOCD.size)
    if len(data) < _ZIP64_EOCD.size or not data.startswith(_ZIP64_EOCD_SIGNATURE):
        return None
    return int(_ZIP64_EOCD.unpack(data)[8])


# What reading a file may raise when its bytes cannot be read or decompressed: corrupt
# deflate data in a gzip or zip file is zlib.error, corrupt LZMA data in a zip member
# lzma.LZMAError (a corrupt bzip2 member is an OSError), neither an OSError.
_UNREADABLE = (OSError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)
# The zip compression methods zipfile reads (any other: NotImplementedError on open).
_ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def _zip_member_error(name: str, info: zipfile.ZipInfo) -> InputError | None:
    """Why zip member ``info`` of file ``name`` cannot be read (None: it can): encrypted
    (zipfile raises RuntimeError), or compressed by another method (NotImplementedError)."""
    if info.flag_bits & 0x1:
        return InputError(
            f"{name}: zip member {info.filename!r} is encrypted: zip it again without a password"
        )
    if info.compress_type not in _ZIP_METHODS:
        return InputError(
            f"{name}: zip member {info.filename!r} is compressed by method "
            f"{info.compress_type}, which callgate cannot read: zip it again with "
            f"{', '.join(_ZIP_METHODS.values())} (or send it as plain text or gzip)"
        )
    return None


def _cannot_read(name: str, exc: Exception) -> InputError:
    """The error of file ``name`` whose reading raised ``exc`` (one of ``_UNREADABLE``)."""
    if isinstance(exc, zlib.error | lzma.LZMAError):
        return InputError(
            f"{name}: cannot read: its compressed data is corrupt ({exc}): compress the "
            "file again, or send it uncompressed"
        )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return InputError(f"{name}: cannot read: {detail}")


def _streams(path: Path, name: str) -> Generator[IO[bytes], None, None]:
    with path.open("rb") as probe:
        magic = probe.read(4)
        directory = _zip_directory_bytes(probe) if magic.startswith(b"PK\x03\x04") else None
    if directory is not None and directory > MAX_ZIP_DIRECTORY_BYTES:
        # zipfile reads the whole directory at once, an object per member (1.5 KiB each):
        # 300 000 members of a 30 MB zip took 450 MB and stalled callgate run's doors for
        # 2 s (the garbage collector walking them).
        raise InputError(
            f"{name}: a zip of too many members (a directory of {directory} bytes, more "
            f"than {MAX_ZIP_DIRECTORY_BYTES}: about {MAX_ZIP_DIRECTORY_BYTES // 100} "
            "members): put the lines in fewer files, or unzip it and read its files"
        )
    if magic.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    if (error := _zip_member_error(name, info)) is not None:
                        raise error
                    with archive.open(info) as member:
                        yield member
        return
    with path.open("rb") as raw:
        yield cast(IO[bytes], gzip.GzipFile(fileobj=raw)) if magic[:2] == b"\x1f\x8b" else raw


class Lines:
    """The text lines of a list file (iterate), or its blocks of whole lines (``blocks``,
    to read it in bulk): one or the other. ``close()`` stops the reading. Errors name the
    file ``name`` (by default its path)."""

    def __init__(self, path: Path, digest: Digest | None, name: str | None = None) -> None:
        self.path, self._digest = path, digest
        self.name = str(path) if name is None else name
        self._lines: Generator[str, None, None] | None = None
        self._blocks: Generator[tuple[int, bytes], None, None] | None = None

    @property
    def unread(self) -> bool:
        return self._lines is None and self._blocks is None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._lines is None:
            if self._blocks is not None:
                raise RuntimeError(f"{self.path} is being read in blocks")
            self._lines = _text_lines(self.path, self._digest, self.name)
        return next(self._lines)

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        """(offset, block): blocks of about ``BLOCK_BYTES`` bytes of whole lines (a block
        ends with a line end, or where its stream ends), each a file's (or a zip member's)
        decompressed bytes, without the byte-order mark that starts a stream."""
        if not self.unread:
            raise RuntimeError(f"{self.path} is already being read")
        self._blocks = _byte_blocks(self.path, self._digest, self.name)
        return self._blocks

    def close(self) -> None:
        for reader in (self._lines, self._blocks):
            if reader is not None:
                reader.close()


def open_lines(path: Path, digest: Digest | None = None, name: str | None = None) -> Lines:
    """The text lines of ``path`` (plain, gzip or zip), feeding ``digest`` as it reads.
    Errors name the file ``name`` (by default its path: a server names an upload so, not
    by the temporary file it was spooled to)."""
    return Lines(path, digest, name)


def _byte_blocks(
    path: Path, digest: Digest | None, name: str
) -> Generator[tuple[int, bytes], None, None]:
    try:
        for stream in _streams(path, name):
            carry, offset, first = b"", 0, True
            for _ in range(1 << 62):  # bounded by the stream: read() returns b"" at its end
                data = stream.read(BLOCK_BYTES)
                if digest is not None:
                    digest.sha256.update(data)
                if first and data.startswith(_BOM):
                    data, offset = data[len(_BOM) :], len(_BOM)
                first = False
                if not data:
                    if carry:
                        yield offset, carry
                    break
                buffer = carry + data
                cut = buffer.rfind(b"\n") + 1
                if not cut:  # no \n: a lone \r ends a line, unless \n may follow it
                    cut = buffer.rfind(b"\r", 0, len(buffer) - 1) + 1
                if not cut:
                    if len(buffer) > MAX_LINE_BYTES:
                        raise _LongLine
                    carry = buffer  # a line longer than a block: read on
                    continue
                yield offset, buffer[:cut]
                offset += cut
                carry = buffer[cut:]
    except _UNREADABLE as exc:
        raise _cannot_read(name, exc) from exc


def _text_lines(path: Path, digest: Digest | None, name: str) -> Generator[str, None, None]:
    # A line of at most MAX_LINE_CHARS characters and its line end ("\r\n" never split):
    # readline(limit) returns a shorter line whole, a line of ``limit`` whole if it ends
    # with "\n"; anything else of that length is the start of a longer line.
    limit = MAX_LINE_CHARS + 2
    line_no = 0
    try:
        for member, stream in enumerate(_streams(path, name)):
            first = line_no  # lines of the members before this one
            source: IO[bytes] = stream
            if digest is not None:
                source = io.BufferedReader(_Hashing(stream, digest), 1 << 16)
            text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
            try:
                for line in iter(partial(text.readline, limit), ""):
                    line_no += 1
                    if len(line) == limit and line[-1] != "\n":
                        raise _line_too_long(name, line_no, MAX_LINE_CHARS, "characters")
                    yield line
            except UnicodeDecodeError as exc:  # its start is in a chunk read ahead
                raise _first_not_utf8(path, name, member, first) from exc
    except _UNREADABLE as exc:
        raise _cannot_read(name, exc) from exc


def _not_utf8(name: str, head: bytes, line_no: int, reason: str, at: int) -> InputError:
    """The error of a file (or zip member) that is not UTF-8: its first bytes ``head``,
    its first such byte at ``at`` (from the start of the member), on line ``line_no``."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 byte-order mark
        return InputError(f"{name}: not UTF-8 text but UTF-16; save it as UTF-8")
    return InputError(f"{name}:{line_no}: not UTF-8 text ({reason} at byte {at}); save it as UTF-8")


def _first_not_utf8(path: Path, name: str, member: int, first: int) -> InputError:
    """The error of stream ``member`` of ``path`` (after ``first`` lines of the members
    before it), found not UTF-8 by a text reader: read again to say where."""
    with contextlib.closing(_streams(path, name)) as streams:
        stream = next(islice(streams, member, None))
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, line_no, head, last = 0, first, b"", b""
        for _ in range(1 << 62):  # bounded by the stream: read() returns b"" at its end
            chunk = stream.read(BLOCK_BYTES)
            head = head or chunk[:2]
            buffered = len(decoder.getstate()[0])  # bytes of a character begun before
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - buffered + exc.start
                before = (last + chunk)[: len(last) + max(0, exc.start - buffered)]
                line_no += count_line_ends(before) - count_line_ends(last)
                return _not_utf8(name, head, line_no + 1, str(exc.reason), at)
            if not chunk:
                break
            line_no += count_line_ends(last + chunk) - count_line_ends(last)
            offset, last = offset + len(chunk), chunk[-1:]
    return InputError(f"{name}: not UTF-8 text; save it as UTF-8")


@contextlib.contextmanager
def rereadable(path: Path) -> Iterator[Path]:
    """``path`` itself if it is a regular file, else (a pipe, a FIFO, ``/dev/stdin``, a
    shell's ``<(…)``: bytes that can be read once) a private copy of all it gives, in a
    temporary directory removed on exit. Either can be opened as often as needed."""
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if regular:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="callgate-input-") as spool_dir:
        copy = Path(spool_dir) / path.name
        try:
            source = path.open("rb")
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        with source:

            def cannot_keep(exc: OSError) -> InputError:
                return InputError(
                    f"{path}: cannot keep a copy of it in {Path(spool_dir).parent}: "
                    f"{exc.strerror or exc}: free some space there, or set TMPDIR to a "
                    "directory with room"
                )

            try:
                # Unbuffered: nothing is left to write on closing it (a disk full then
                # would be an OSError that replaces the error below).
                spool = copy.open("xb", buffering=0)  # in a directory of mode 0700
            except OSError as exc:
                raise cannot_keep(exc) from exc
            with spool:
                size = 0
                for _ in range(MAX_PIPED_BYTES // BLOCK_BYTES + 2):  # bounded by the check below
                    try:
                        data = source.read(BLOCK_BYTES)
                    except OSError as exc:
                        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
                    if not data:
                        break
                    size += len(data)
                    if size > MAX_PIPED_BYTES:
                        raise InputError(
                            f"{path}: more than {MAX_PIPED_BYTES} bytes from a pipe (a stream "
                            "that never ends?): save it to a file first, and give that file"
                        )
                    left = memoryview(data)
                    for _ in range(len(data)):  # a write can be short (a disk nearly full)
                        try:
                            left = left[spool.write(left) :]
                        except OSError as exc:
                            raise cannot_keep(exc) from exc
                        if not left:
                            break
        yield copy


def count_lines(path: Path, name: str | None = None, max_bytes: int | None = None) -> int:
    """Lines in ``path`` (decompressed; a last line without a line end counts, an empty
    file has none; ``\\n``, ``\\r\\n`` and ``\\r`` all end a line), to size an import.
    Errors name the file ``name`` (by default its path). ``max_bytes``: an ``InputError``
    as soon as more than that many bytes were read decompressed (a gzip or zip bomb: 1 GB
    of zeros is 1 MB of gzip), so that no later pass reads more."""
    total = 0
    size = 0
    try:
        for stream in _streams(path, str(path) if name is None else name):
            last = b""
            for _ in range(10**9):  # bounded by the file: read() returns b"" at its end
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise InputError(
                        f"{path if name is None else name}: more than {max_bytes} bytes "
                        "decompressed (a compression bomb?): split the file into smaller "
                        "ones, or read it with the callgate command"
                    )
                # \r\n split across two chunks is one line end, not two.
                pending_cr = last == b"\r" and chunk[:1] == b"\n"
                total += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
                total -= pending_cr
                last = chunk[-1:]
            if last not in (b"", b"\n", b"\r"):
                total += 1
    except _UNREADABLE as exc:
        raise _cannot_read(str(path) if name is None else name, exc) from exc
    return total
