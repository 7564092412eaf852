"""Searching the audit trail: one filter for ``callgate audit`` and ``GET /v1/audit``.

``search`` streams the stored records (gate/ops/audit.py ``read_range``: the group
streams merged in time order, bounded memory) that match a number, a time range, a
tenant, a campaign or a verdict, up to ``limit``; a number's records are read from its
own slot group's stream only. ``translated`` turns a Redis failure while streaming into
the gate's ``StoreError``; ``number_key`` is how the trail names a number (its keyed hash
with hashing on) and where its records are. ``csv_row`` is a record as a CSV row that a
spreadsheet opens without running anything (``as_text``).

A search that fails once records were given (Redis stopped or frozen mid-export) must
never pass for a whole answer: ``incomplete`` is the one line saying so, which the API and
the command end their output with, ``{"error": "…"}`` in JSON Lines (``error_line``) or
the row ``error,…`` in CSV (``error_row``: a row that is no record, so a strict CSV
loader fails on it and a person opening the file sees it as its last row), before they
fail (the API: the connection is closed without the body's end; the command: exit 2).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError

from gate.core.errors import InputError
from gate.core.numbers import Destination, ShortCode, classify
from gate.ops.audit import ReadWait, read_range
from gate.ops.models import AuditRecord, audit_record
from gate.service import Gate
from gate.store.client import translate_error

__all__ = [
    "CSV_HEADER",
    "NumberKey",
    "as_text",
    "check_filter",
    "csv_row",
    "error_line",
    "error_row",
    "incomplete",
    "number_key",
    "search",
    "translated",
]

CSV_HEADER = (
    "id",
    "time",
    "verdict",
    "reason",
    "rule",
    "door",
    "tenant",
    "campaign",
    "trunk",
    "class",
    "number",
    "caller_id",
    "channel",
    "config_version",
    "packs",
    "lists",
    "counters",
    "shadow",
    "retry_after_s",
    "latency_us",
    "redis_us",
)


@dataclass(frozen=True, slots=True)
class NumberKey:
    """How the audit trail names a number, and the slot group whose stream holds it."""

    name: str  # its token (or E.164 with hashing off), or a short code's digits
    group: int


def number_key(text: str, gate: Gate) -> NumberKey:
    """How the audit trail names ``text`` and where its decisions are (a short code's, in
    group 0)."""
    target = classify(text, gate.config.policy.default_region)
    if isinstance(target, Destination):
        number = gate.keyspace.number(target.e164)
        return NumberKey(number.token, number.group)
    if isinstance(target, ShortCode):
        return NumberKey(target.digits, 0)
    raise InputError(f"number {text!r}: {target.why}")


def check_filter(since: datetime | None, until: datetime | None) -> None:
    """Refuse a filter that matches nothing by mistake: a range that ends before it starts
    (``InputError``). A tenant the configuration no longer names is searched all the same:
    its entries are evidence kept for their retention time."""
    if since is not None and until is not None and until < since:
        raise InputError(
            f"the time range ends before it starts: until {until.isoformat()} is before"
            f" since {since.isoformat()}"
        )


async def search(
    client: Any,  # the store's admin client (a Redis or a RedisCluster)
    namespace: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    number: NumberKey | None = None,
    tenant: str | None = None,
    campaign: str | None = None,
    verdict: str | None = None,
    limit: int | None = None,
    read_wait: ReadWait = contextlib.nullcontext,
) -> AsyncIterator[AuditRecord]:
    """The matching records, oldest first (each read of the streams bounded by
    ``read_wait``: ``read_range``)."""
    given = 0
    groups = None if number is None else [number.group]
    records = read_range(client, namespace, since, until, groups=groups, read_wait=read_wait)
    async for stored in records:
        if limit is not None and given >= limit:
            return
        if (
            (number is not None and stored.get("number") != number.name)
            or (tenant is not None and stored.get("tenant") != tenant)
            or (campaign is not None and stored.get("campaign") != campaign)
            or (verdict is not None and stored.get("verdict") != verdict)
        ):
            continue
        given += 1
        yield audit_record(stored)


T = TypeVar("T")


async def translated(records: AsyncIterator[T], where: str) -> AsyncIterator[T]:
    """``records``, a Redis failure raised as ``StoreError`` (a broken pipe to the reader
    is not one: only the stream's own errors are translated)."""
    iterator = aiter(records)
    for _ in range(10**12):  # bounded by the stream
        try:
            record = await anext(iterator)
        except StopAsyncIteration:
            return
        except (RedisError, OSError) as exc:
            raise translate_error(exc, where) from exc
        yield record


# A cell starting with one of these is taken for a formula by spreadsheets (OWASP, "CSV
# Injection": =HYPERLINK(…), +cmd|…, -2+3, @SUM(…); a tab or CR before any of them).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"\+[0-9]{1,20}", re.ASCII)  # a caller ID as E.164


def as_text(cell: str) -> str:
    """``cell`` prefixed with ``'`` if it starts like a formula (``=``, ``+``, ``-``, ``@``,
    tab, CR), so that a spreadsheet shows it as text instead of evaluating it; a plain
    international number (``+33612345678``: a ``+`` and digits, no formula) is kept."""
    if cell.startswith(_FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def csv_row(record: AuditRecord) -> list[str]:
    """A record in ``CSV_HEADER`` order, every text cell ``as_text``: a cell that starts
    like a formula is written with a leading ``'`` (a campaign ``=HYPERLINK(…)`` as
    ``'=HYPERLINK(…)``), so that a spreadsheet shows it instead of running it.

    Which cells, and why:
    - tenant, campaign, trunk, caller ID and channel come from outside the gate (the
      dialer, the dialplan's arguments, the channel's caller ID and name);
    - reason and rule name rules, ``packs``, ``lists``, ``counters`` and ``shadow`` name
      packs, lists and rules: ids from rule packs and the config, files a third party may
      write; verdict, door, class and the config version are the gate's own codes. None
      of them legitimately starts with ``= + - @``, so escaping them changes no real value
      and holds for an entry written by another version, or by anyone who can write to
      Redis;
    - number and caller ID keep a plain ``+`` and digits (E.164: ``+33612345678`` is no
      formula); the number is otherwise a hex token or a short code's digits.
    Not escaped: the entry id and time (made by Redis and the gate: digits first) and the
    integers (``retry_after_s``, ``latency_us``, ``redis_us``: never negative, and a
    number is no formula anyway).
    """
    return [
        record.id,
        record.time.isoformat(),
        as_text(record.verdict),
        as_text(record.reason),
        as_text(record.rule),
        as_text(record.door),
        as_text(record.tenant),
        as_text(record.campaign),
        as_text(record.trunk),
        as_text(record.traffic_class),
        as_text(record.number),
        as_text(record.caller_id),
        as_text(record.channel),
        as_text(record.config_version),
        as_text(",".join(record.packs)),
        as_text(",".join(f"{name}@{version}" for name, version in record.lists.items())),
        as_text(",".join(f"{rule}={seen}" for rule, seen in record.counters.items())),
        as_text(",".join(record.shadow)),
        "" if record.retry_after_s is None else str(record.retry_after_s),
        str(record.latency_us),
        str(record.redis_us),
    ]


def incomplete(given: int, error: Exception) -> str:
    """Why a search that already gave ``given`` records ends there: one line naming the
    cause and saying that what was given is not the whole answer."""
    return (
        f"incomplete: the search stopped after {given} record(s), which are not the whole"
        f" answer (run it again once Redis answers): {error}"
    )


def error_line(message: str) -> bytes:
    """``message`` as the last line of a JSON Lines answer: ``{"error": "…"}``."""
    return json.dumps({"error": message}).encode() + b"\n"


def error_row(message: str) -> list[str]:
    """``message`` as the last row of a CSV answer: ``error`` and the message (two cells,
    not a record's: no id, no time)."""
    return ["error", as_text(message)]
