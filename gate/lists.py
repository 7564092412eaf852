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
from datetime import UTC, datetime

from gate.config import Policy
from gate.errors import InputError, NumberError, ProtectedNumberError
from gate.hours import zone
from gate.keys import Keyspace
from gate.model import TrafficClass
from gate.numbers import BadNumber, Destination, ShortCode, classify
from gate.rules import ListRule, in_force
from gate.store import Store

__all__ = ["ImportSummary", "ListAdmin", "Rejected", "consent_value", "read_numbers"]

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
    """List, consent and event operations, by list name, for one tenant/campaign."""

    def __init__(self, policy: Policy, keyspace: Keyspace, store: Store) -> None:
        self.policy, self.keyspace, self.store = policy, keyspace, store

    def rule(self, name: str) -> ListRule:
        rule = self.policy.list_rule(name)
        if rule is None:
            known = [
                r.name
                for r in (*self.policy.lists, *(r for p in self.policy.packs for r in p.lists))
            ]
            raise InputError(
                f"list {name!r} is not in the config or its packs "
                f"(lists: {', '.join(known) or 'none'})"
            )
        return rule

    def key(self, name: str, tenant: str, campaign: str) -> str:
        rule = self.rule(name)
        key = self.keyspace.list_key(rule, tenant, campaign)
        if key is None:
            raise InputError(f"list {name!r} is per campaign: pass --campaign")
        return key

    def _tokens(self, rule: ListRule, numbers: Iterable[str]) -> list[str]:
        """Validate every number first (nothing is written if one is wrong)."""
        region = self.policy.default_region
        return [self.keyspace.token(validate_entry(rule, n, region)) for n in numbers]

    async def _write(
        self, rule: ListRule, key: str, tokens: list[str], now: datetime, expires: datetime | None
    ) -> int:
        if rule.kind == "consent":
            value = consent_value(now, expires)
            return await self.store.set_fields(key, ((t, value) for t in tokens))
        return await self.store.add_members(key, tokens)

    async def add(
        self,
        name: str,
        numbers: Iterable[str],
        tenant: str,
        campaign: str,
        now: datetime | None = None,
        expires: datetime | None = None,
    ) -> int:
        """Add numbers (consent lists: granted ``now``, optional expiry); how many were new."""
        rule = self.rule(name)
        tokens = self._tokens(rule, numbers)
        when = now or datetime.now(UTC)
        return await self._write(rule, self.key(name, tenant, campaign), tokens, when, expires)

    async def remove(self, name: str, numbers: Iterable[str], tenant: str, campaign: str) -> int:
        rule = self.rule(name)
        tokens = self._tokens(rule, numbers)
        key = self.key(name, tenant, campaign)
        if rule.kind == "consent":
            return await self.store.remove_fields(key, tokens)
        return await self.store.remove_members(key, tokens)

    async def count(self, name: str, tenant: str, campaign: str) -> int:
        key = self.key(name, tenant, campaign)
        if self.rule(name).kind == "consent":
            return await self.store.count_fields(key)
        return await self.store.count_members(key)

    async def info(self, name: str, tenant: str, campaign: str) -> dict[str, str]:
        """The list's metadata (refreshed_at, source…) and its current entry count."""
        rule = self.rule(name)
        meta_key = self.keyspace.meta_key(rule, tenant, campaign)
        meta = await self.store.get_fields(meta_key) if meta_key else {}
        return {
            "name": name,
            "kind": rule.kind,
            "scope": rule.scope,
            "entries": str(await self.count(name, tenant, campaign)),
            **meta,
        }

    async def export(self, name: str, tenant: str, campaign: str) -> AsyncIterator[str]:
        if self.keyspace.hashed:
            raise InputError(
                f"list {name!r} holds keyed hashes, not numbers: it cannot be exported "
                "(privacy.hash_numbers = true)"
            )
        hashed = self.rule(name).kind == "consent"
        async for member in self.store.members(self.key(name, tenant, campaign), hashed):
            yield member

    async def import_entries(
        self,
        name: str,
        entries: Iterable[tuple[int, str | Rejected]],
        tenant: str,
        campaign: str,
        on_reject: Callable[[Rejected], None],
        refreshed_at: datetime | None = None,
        source: str = "",
    ) -> ImportSummary:
        """Add every accepted entry in batches; report each rejected one to ``on_reject``.

        Records the list's ``refreshed_at`` (the freshness rules read it) when done.
        """
        rule = self.rule(name)
        key = self.key(name, tenant, campaign)
        when = refreshed_at or datetime.now(UTC)
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
                new += await self._write(rule, key, batch, when, None)
                batch = []
        if batch:
            new += await self._write(rule, key, batch, when, None)
        meta_key = self.keyspace.meta_key(rule, tenant, campaign)
        if meta_key:
            await self.store.set_fields(
                meta_key,
                [
                    ("refreshed_at", str(int(when.timestamp() * 1000))),
                    ("source", source),
                    ("imported", str(new)),
                ],
            )
        return ImportSummary(imported=new, duplicates=accepted - new, rejected=rejected)

    async def revoke(
        self, numbers: Iterable[str], tenant: str, campaign: str, red_list: str = "red"
    ) -> int:
        """Consent withdrawn: remove from every consent list, put on ``red_list``."""
        red = self.rule(red_list)
        if red.kind != "block":
            raise InputError(f"list {red_list!r} is not a block list")
        tokens = self._tokens(red, numbers)
        consent_lists = {
            r.name: r
            for r in (*self.policy.lists, *(r for p in self.policy.packs for r in p.lists))
            if r.kind == "consent"
        }
        for rule in consent_lists.values():
            key = self.keyspace.list_key(rule, tenant, campaign)
            if key is not None:
                await self.store.remove_fields(key, tokens)
        return await self.store.add_members(self.key(red_list, tenant, campaign), tokens)

    async def record_event(
        self, event: str, number: str, tenant: str, at: datetime, now: datetime | None = None
    ) -> list[str]:
        """Record a refusal/abandoned call: every cool-off rule for it starts at ``at``.

        Returns the ids of the rules that now hold the number; an empty list means no
        enabled pack has a cool-off for this event and destination.
        """
        target = classify(number, self.policy.default_region)
        if not isinstance(target, Destination):
            raise NumberError(f"number {number!r}: not a callable number")
        zones = target.time_zones
        day = at.astimezone(zone(zones[0])).date() if zones else at.date()
        started: list[str] = []
        for pack in self.policy.packs:
            if target.region not in pack.regions:
                continue
            for rule in pack.cooloffs:
                if rule.event != event or not any(
                    in_force(rule, target.e164, cls, day) for cls in TrafficClass
                ):
                    continue
                key = self.keyspace.cooloff_key(rule, tenant, self.keyspace.token(target.e164))
                at_ms = int(at.timestamp() * 1000)
                # The marker expires when the cool-off ends by the real clock (``now``:
                # callers placing events at fixed dates, such as tests, pass their own).
                clock_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
                ttl_ms = at_ms + int(rule.period_s * 1000) - clock_ms
                if ttl_ms > 0:
                    await self.store.mark(key, str(at_ms), ttl_ms)
                started.append(rule.id)
        return started


def consent_value(granted: datetime, expires: datetime | None) -> str:
    """``granted_ms:expiry_ms`` (0: no expiry), as decide.lua reads it."""
    expiry = 0 if expires is None else int(expires.timestamp() * 1000)
    return f"{int(granted.timestamp() * 1000)}:{expiry}"
