"""List administration: add, remove, count, export and import numbers.

Guarantees:
- Every entry is validated and normalised to E.164 before it reaches Redis, then stored
  as the keyspace's token (hashed unless the config says plain).
- An emergency or protected number is never put on a block list (``ProtectedNumberError``).
- ``read_numbers`` turns an import file into ``(line_no, e164)`` or ``(line_no, Rejected)``
  items, so no line is dropped silently: every rejected line is reported with its number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from gate.config import ListRule, Policy
from gate.errors import InputError, NumberError, ProtectedNumberError
from gate.keys import Keyspace
from gate.numbers import BadNumber, ShortCode, classify
from gate.store import Store

__all__ = ["ImportSummary", "ListAdmin", "Rejected", "read_numbers"]

_COMMENT = "#"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line of an import file that was not imported, and why."""

    line_no: int
    text: str
    why: str


@dataclass(frozen=True, slots=True)
class ImportSummary:
    imported: int
    duplicates: int
    rejected: int


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


def read_numbers(
    lines: Iterable[str], rule: ListRule, region: str, column: str | None = None
) -> Iterator[tuple[int, str | Rejected]]:
    """Parse an import file: one number per line, or a CSV/TSV column by name or 1-based index.

    Blank lines and lines starting with ``#`` are skipped (they are not entries). A CSV
    header row is recognised when ``column`` is a name.
    """
    index: int | None = None
    header_pending = False
    if column is not None:
        if column.isdigit() and int(column) >= 1:
            index = int(column) - 1
        else:
            header_pending = True
    dialect: type[csv.Dialect] | None = None
    for line_no, raw in enumerate(lines, start=1):
        line = raw.lstrip("\ufeff").rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith(_COMMENT):
            continue
        if column is None:
            field = line.strip()
        else:
            if dialect is None:
                dialect = _sniff(line)
            cells = next(csv.reader(io.StringIO(line), dialect))
            if header_pending:
                names = [cell.strip().lower() for cell in cells]
                if column.lower() not in names:
                    raise InputError(
                        f"line {line_no}: no column named {column!r} in header {cells!r}"
                    )
                index = names.index(column.lower())
                header_pending = False
                continue
            assert index is not None
            if index >= len(cells):
                yield line_no, Rejected(line_no, line, f"no column {index + 1}")
                continue
            field = cells[index].strip()
        try:
            yield line_no, validate_entry(rule, field, region)
        except InputError as exc:
            yield line_no, Rejected(line_no, line, str(exc))


def _sniff(line: str) -> type[csv.Dialect]:
    class Dialect(csv.excel):
        delimiter = max(",;\t|", key=line.count)

    return Dialect


class ListAdmin:
    """List operations for one tenant/campaign, by list name."""

    def __init__(self, policy: Policy, keyspace: Keyspace, store: Store) -> None:
        self.policy, self.keyspace, self.store = policy, keyspace, store

    def rule(self, name: str) -> ListRule:
        rule = self.policy.list_rule(name)
        if rule is None:
            known = ", ".join(r.name for r in self.policy.lists) or "none"
            raise InputError(f"list {name!r} is not in the config (lists: {known})")
        return rule

    def key(self, name: str, tenant: str, campaign: str) -> str:
        rule = self.rule(name)
        key = self.keyspace.list_key(rule, tenant, campaign)
        if key is None:
            raise InputError(f"list {name!r} is per campaign: pass --campaign")
        return key

    async def add(self, name: str, numbers: Iterable[str], tenant: str, campaign: str) -> int:
        """Validate every number first, then add them all; returns how many were new."""
        rule = self.rule(name)
        tokens = [
            self.keyspace.token(validate_entry(rule, n, self.policy.default_region))
            for n in numbers
        ]
        return await self.store.add_members(self.key(name, tenant, campaign), tokens)

    async def remove(self, name: str, numbers: Iterable[str], tenant: str, campaign: str) -> int:
        rule = self.rule(name)
        tokens = [
            self.keyspace.token(validate_entry(rule, n, self.policy.default_region))
            for n in numbers
        ]
        return await self.store.remove_members(self.key(name, tenant, campaign), tokens)

    async def count(self, name: str, tenant: str, campaign: str) -> int:
        return await self.store.count_members(self.key(name, tenant, campaign))

    async def export(self, name: str, tenant: str, campaign: str) -> AsyncIterator[str]:
        if self.keyspace.hashed:
            raise InputError(
                f"list {name!r} holds keyed hashes, not numbers: it cannot be exported "
                "(privacy.hash_numbers = true)"
            )
        async for member in self.store.members(self.key(name, tenant, campaign)):
            yield member

    async def import_entries(
        self,
        name: str,
        entries: Iterable[tuple[int, str | Rejected]],
        tenant: str,
        campaign: str,
        on_reject: Callable[[Rejected], None],
    ) -> ImportSummary:
        """Add every accepted entry in batches; report each rejected one to ``on_reject``."""
        key = self.key(name, tenant, campaign)
        accepted = rejected = 0
        batch: list[str] = []
        new = 0
        for _line_no, entry in entries:
            if isinstance(entry, Rejected):
                rejected += 1
                on_reject(entry)
                continue
            accepted += 1
            batch.append(self.keyspace.token(entry))
            if len(batch) >= 10_000:
                new += await self.store.add_members(key, batch)
                batch = []
        if batch:
            new += await self.store.add_members(key, batch)
        return ImportSummary(imported=new, duplicates=accepted - new, rejected=rejected)
