"""List administration: add, remove, count, export, import; consents; call events.

Guarantees:
- Every entry is validated and normalised to E.164 before it reaches Redis, then stored
  in the keyspace's encoding (a keyed hash unless the config says plain).
- An emergency or protected number is never put on a block list (``ProtectedNumberError``).
- What must survive a Redis failover — an opt-out (an ``add`` to a block list), a
  consent revocation, a refusal or abandoned call — is acknowledged only once the store
  holds it durably (``Store.durable``: ``redis.wait_replicas`` replicas, on every master
  that took a part of it in a cluster; else ``NotReplicated`` and the caller reports a
  failure). In a cluster such a write into a slot being resharded waits for the move (up
  to ``DURABLE_TRYAGAIN_S``), where a decision gets the fail mode at its deadline.
- Block and allow lists live in compact buckets, consent lists in HASHes token →
  ``granted_ms:expiry_ms``, reassigned lists in HASHes token → ``void_before_ms`` (the
  latest disconnection imported wins: an older date never replaces a newer one), all
  spread over the slot groups (gate/store/lists.py; decide.lua reads them).
- A consent has been given: ``add`` refuses a grant time later than the clock (beyond
  ``GRANT_SKEW_S``; decide.lua would count it at once, as it reads the expiry only), and
  an expiry at or before the grant (a consent void from the start). An ``import`` refuses a
  ``refreshed_at`` later than the clock: a consent list's grant time, any other list's
  freshness.
- Call events (``record_event``): a refusal or an abandoned call starts the packs'
  cool-offs for the number; an answered or abandoned call counts toward the packs'
  abandoned-call ceilings of its campaign (``call_counts.lua``). An event has happened:
  one dated later than the clock (beyond ``RECORD_SKEW_S``) is refused, and one too old
  for a rule (its cool-off over, its minute out of the ceiling's window) is not recorded
  under that rule but named in ``EventRecord.expired``. Counts callgate did not write (a
  key of another type, a value of another length: decide.lua DEFERs the calls they
  govern) are left as they are: an ``InputError`` names the key, to delete.
- While a replacement's switch is unfinished (under way, or cut off by a failover: some slot
  groups decide with the new version, the directory still names the one before) ``info``
  says so (``switch_note``) and ``export`` refuses: the version it would read is not the
  one in force. The next ``replace`` completes the switch first.
- A ``replace`` never empties a list by mistake: a file that gives no number is refused
  (the list in force kept) when lines of it were rejected or the list in force has
  entries, unless the caller allows it (``allow_empty``): a wrong file, a wrong
  ``--column``, an empty pipe would otherwise wipe a do-not-call list (down to the
  opt-outs recorded while it was read, which its new version holds too).
- An import counts every line: imported, duplicate, rejected (each reported with its line
  number through ``on_reject``) or skipped (a scrub result not kept). It reads the file in
  batches (gate/importing.py ``read_batches``), so memory stays bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gate.core.engine import RECORD_SKEW_S
from gate.core.errors import (
    GateError,
    InputError,
    NumberError,
    OptionError,
    OutputError,
    StoreError,
    WorkerError,
)
from gate.core.hours import end_of_calendar_days, local_day
from gate.core.keys import SLOT_GROUPS, Keyspace, NumberKeys
from gate.core.model import TrafficClass
from gate.core.numbers import Destination, classify
from gate.core.policy import Policy
from gate.core.rules import AbandonCeilingRule, CooloffRule, ListRule, in_force
from gate.lists.formats import (
    BATCH_LINES,
    Batch,
    Digest,
    Rejected,
    Skipped,
    batches_of,
    validate_entry,
)
from gate.lists.reassigned import Disconnect, latest, read_disconnects, void_before_ms
from gate.lists.workers import Parsed, entry_chunks
from gate.service import Gate
from gate.store.client import CALL_COUNTS, HASH_MAX, Store
from gate.store.lists import Chunk, ListStore

__all__ = [
    "EVENTS",
    "GRANT_SKEW_S",
    "EventRecord",
    "ImportSummary",
    "ListAdmin",
    "consent_value",
    "switch_note",
    "unrecorded",
]

# The call events a door records: a refusal during the call, an abandoned call (answered
# by a person, no agent), an answered call that reached an agent.
EVENTS = ("refusal", "abandoned", "answered")
# Fields per HASH_MAX call (a reassigned list's import).
_FIELDS_BATCH = 500
# An abandoned-call ceiling counts calls by the minute (call_counts.lua).
_MINUTE_MS = 60_000
# What a delta import stopped by an error (Redis lost, a line not UTF-8, a worker killed)
# did to the list: its batches are applied in file order, each group's share atomically
# (a block or allow list's; a consent or reassigned list's by commands of up to 1000).
# ``confirmed``: how many the store confirmed, when it says (" (2000 confirmed)"), or "".
_STOPPED = {
    "add": "the import stopped part-way: the numbers sent before the error{confirmed} are on "
    "the list, the rest not; import the file again to add them all (those on the list stay "
    "as they are)",
    "remove": "the import stopped part-way: the numbers sent before the error{confirmed} are "
    "removed, the rest still listed; import the file again to remove them all",
    # A consent imported again is granted again, at the import's refreshed_at (or now).
    "consent": "the import stopped part-way: the consents sent before the error{confirmed} "
    "are recorded, the rest not; import the file again to record them all (those recorded "
    "are recorded again, as given at its refreshed_at, or now)",
}
# A consent's grant time may be this much later than the gate's clock: it comes from
# another host's clock (a CRM's) or is written by hand to the minute. Later, it has not
# happened yet (a call event, told as it happens, gets RECORD_SKEW_S).
GRANT_SKEW_S = 300.0


@dataclass(frozen=True, slots=True)
class EventRecord:
    """What a call event did: the rules that took it (cool-offs started, ceilings it counts
    toward), the per-campaign ceilings in force that it could not count toward, as no
    campaign was given, and the rules it came too late for (``expired``: the cool-off it
    would start is already over, or its minute has left the ceiling's window)."""

    rules: list[str] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ImportSummary:
    imported: int
    duplicates: int
    rejected: int
    skipped: int = 0


class ListAdmin:
    """List, consent and event operations, by list name, for one tenant/campaign."""

    def __init__(self, policy: Policy, keyspace: Keyspace, store: Store) -> None:
        self.policy, self.keyspace, self.store = policy, keyspace, store
        self.lists = ListStore(store, keyspace)

    @classmethod
    def of(cls, gate: Gate) -> ListAdmin:
        """List operations under the gate's configuration in force (it may be reloaded)."""
        active = gate.active
        return cls(active.config.policy, active.keyspace, gate.store)

    def _on(self, store: Store) -> ListAdmin:
        """The same operations on ``store`` (a durable view of this one's)."""
        return ListAdmin(self.policy, self.keyspace, store)

    def rule(self, name: str) -> ListRule:
        rule = self.policy.list_rule(name)
        if rule is None:
            # A list of the config may also be a pack's: name each once, in order.
            known = list(
                dict.fromkeys(
                    r.name
                    for r in (*self.policy.lists, *(r for p in self.policy.packs for r in p.lists))
                )
            )
            raise InputError(
                f"list {name!r} is not in the config or its packs "
                f"(lists: {', '.join(known) or 'none'})"
            )
        return rule

    def key(self, name: str, tenant: str, campaign: str) -> str:
        """The list instance of ``name`` for this tenant/campaign (gate/core/keys.py)."""
        rule = self.rule(name)
        self.policy.check_tenant(tenant)
        key = self.keyspace.list_id(rule, tenant, campaign)
        if key is None:
            raise OptionError("list {list!r} is per campaign: {campaign:ask}", list=name)
        return key

    def _numbers(self, rule: ListRule, numbers: Iterable[str]) -> list[NumberKeys]:
        """Validate every number first (nothing is written if one is wrong)."""
        region = self.policy.default_region
        return [self.keyspace.number(validate_entry(rule, n, region)) for n in numbers]

    async def _write(
        self,
        rule: ListRule,
        key: str,
        op: str,
        numbers: list[NumberKeys],
        now: datetime,
        expires: datetime | None = None,
    ) -> int:
        if rule.kind not in ("consent", "reassigned"):
            return await self.lists.delta(key, op, [(n.member, n.bucket32) for n in numbers])
        if op == "remove":
            return await self.lists.consent_remove(key, numbers)
        value = consent_value(now, expires)
        return await self.lists.consent_set(key, ((n, value) for n in numbers))

    async def add(
        self,
        name: str,
        numbers: Iterable[str],
        tenant: str,
        campaign: str,
        now: datetime | None = None,
        expires: datetime | None = None,
        clock: datetime | None = None,
    ) -> int:
        """Add numbers (consent lists: granted ``now``, optional expiry); how many were new.

        A consent granted later than ``clock`` (default: the time now; callers placing
        consents at fixed dates, such as tests, pass their own) by more than
        ``GRANT_SKEW_S``, or expiring at or before its grant, is refused (an
        ``OptionError`` naming ``granted_at`` or ``expires``), nothing written.

        On a block list (an opt-out) the answer comes only once the store holds the
        entries durably (``Store.durable``: enough replicas, or ``NotReplicated``)."""
        rule = self.rule(name)
        if rule.kind == "reassigned":
            raise OptionError(
                "list {list!r} holds the day each number was last disconnected: import "
                "them as lines number,disconnected_on ({list_import:ask})",
                list=name,
            )
        checked = self._numbers(rule, numbers)
        key = self.key(name, tenant, campaign)
        clock = clock or datetime.now(UTC)
        when = now or clock
        if rule.kind == "consent":
            _check_grant(now, expires, clock)
        if rule.kind != "block":
            return await self._write(rule, key, "add", checked, when, expires)
        async with self.store.durable(f"adding to block list {name!r}") as store:
            return await self._on(store)._write(rule, key, "add", checked, when, expires)

    def unchecked(self, name: str, numbers: Iterable[str]) -> list[str]:
        """The numbers (E.164, in order) among ``numbers`` that no decision checks against
        list ``name``: those of a region outside every pack that names it
        (``Policy.list_regions``); none for a list of the config. Invalid numbers are left
        out (``add`` refuses them)."""
        regions = self.policy.list_regions(name)
        if regions is None:
            return []
        found = (classify(n, self.policy.default_region) for n in numbers)
        return [t.e164 for t in found if isinstance(t, Destination) and t.region not in regions]

    async def remove(self, name: str, numbers: Iterable[str], tenant: str, campaign: str) -> int:
        rule = self.rule(name)
        checked = self._numbers(rule, numbers)
        key = self.key(name, tenant, campaign)
        return await self._write(rule, key, "remove", checked, datetime.now(UTC))

    async def count(self, name: str, tenant: str, campaign: str) -> int:
        key = self.key(name, tenant, campaign)
        if self.rule(name).kind in ("consent", "reassigned"):
            return await self.lists.consent_count(key)
        return await self.lists.count(key)

    async def info(self, name: str, tenant: str, campaign: str) -> dict[str, str]:
        """The list's entry count and metadata (version, refreshed_at, source, checksum…).

        While a replacement's switch is unfinished (under way, or cut off by a failover:
        ``ListStore.unfinished_switch``) the metadata is still the version before it's,
        and ``switch_version``, ``switch_groups`` (of ``SLOT_GROUPS``) and, if known,
        ``switch_source`` say which version decides where."""
        rule = self.rule(name)
        key = self.key(name, tenant, campaign)
        internal: tuple[str, ...] = (
            "next_version",
            "building",
            "building_bits",
            "building_meta",
            "dropping",
        )
        if rule.kind in ("consent", "reassigned"):
            internal += ("version", "bits")
        directory = await self.lists.directory(key)
        meta = {k: v for k, v in directory.items() if k not in internal}
        if rule.kind not in ("consent", "reassigned"):
            switch = await self.lists.unfinished_switch(key, directory)
            if switch is not None:
                meta["switch_version"] = str(switch.version)
                meta["switch_groups"] = str(switch.groups)
                if switch.meta.get("source"):
                    meta["switch_source"] = switch.meta["source"]
        return {
            "name": name,
            "kind": rule.kind,
            "scope": rule.scope,
            "entries": str(await self.count(name, tenant, campaign)),
            "hashed": "yes" if self.keyspace.hashed else "no",
            **meta,
        }

    async def export(self, name: str, tenant: str, campaign: str) -> AsyncIterator[str]:
        if self.keyspace.hashed:
            raise InputError(
                f"list {name!r} holds keyed hashes, not numbers (privacy.hash_numbers = true), "
                "so it cannot be exported; keep the files you import as its source, and use "
                "`callgate list info` for its size and `callgate check` for a number"
            )
        key = self.key(name, tenant, campaign)
        kind = self.rule(name).kind
        if kind == "reassigned":
            async for line in self._disconnect_lines(key):
                yield line
            return
        if kind == "consent":
            async for token in self.lists.consent_tokens(key):
                yield token
            return
        # The directory's version is not the one deciding while a switch is unfinished:
        # exporting it would hand over a list that is not the one in force.
        if (switch := await self.lists.unfinished_switch(key)) is not None:
            again = f"with `{self.reimport_command(name, tenant, campaign)}`"
            raise InputError(
                f"list {name!r} is not exported: {_switch_what(switch.version, switch.groups)}"
                f", so the version stored as the list's is not the one in force; "
                f"{_switch_do(again, switch.meta.get('source'))}, then export it"
            )
        async for member in self.lists.members(key):
            yield f"+{member}"

    def reimport_command(self, name: str, tenant: str, campaign: str) -> str:
        """The CLI command that imports list ``name`` again, whole (``--replace``)."""
        scope = self.rule(name).scope
        words = ["callgate list import", name, "FILE --replace"]
        if scope != "global":
            words.append(f"--tenant {tenant}")
        if scope == "campaign":
            words.append(f"--campaign {campaign}")
        return " ".join(words)

    async def import_entries(
        self,
        name: str,
        entries: Iterable[tuple[int, str | Rejected | Skipped]],
        tenant: str,
        campaign: str,
        on_reject: Callable[[Rejected], None],
        refreshed_at: datetime | None = None,
        meta: Mapping[str, str] | None = None,
        mode: str = "add",
        expected: int = 0,
        checksum: Digest | None = None,
        allow_empty: bool = False,
        clock: datetime | None = None,
    ) -> ImportSummary:
        """``import_batches`` of ``read_entries``-style entries (one per line)."""
        return await self.import_batches(
            name,
            batches_of(entries),
            tenant,
            campaign,
            on_reject,
            refreshed_at=refreshed_at,
            meta=meta,
            mode=mode,
            expected=expected,
            checksum=checksum,
            allow_empty=allow_empty,
            clock=clock,
        )

    def check_refreshed_at(
        self, name: str, refreshed_at: datetime | None, clock: datetime | None = None
    ) -> None:
        """Refuse an import into list ``name`` dated later than ``clock`` (default: the time
        now) by more than ``GRANT_SKEW_S``. A consent list's consents are recorded as given
        at ``refreshed_at`` (decide.lua, reading only the expiry, would count them at
        once); any other list's freshness checks count from it (a list dated a year ahead
        by a typo would pass them for a year more). A door may call it before it reads
        the file."""
        clock = clock or datetime.now(UTC)
        if refreshed_at is None or not _not_yet(refreshed_at, clock):
            return
        if self.rule(name).kind == "consent":
            why = "the consents of a file are recorded as given then"
        else:
            why = "the list's freshness counts from then"
        raise OptionError(
            "{refreshed_at} {when}: later than the gate's clock ({clock}); " + why + ": give "
            "the time the file was drawn, or none for now",
            when=_shown(refreshed_at),
            clock=_shown(clock),
        )

    async def import_batches(
        self,
        name: str,
        batches: Iterable[Batch],
        tenant: str,
        campaign: str,
        on_reject: Callable[[Rejected], None],
        refreshed_at: datetime | None = None,
        meta: Mapping[str, str] | None = None,
        mode: str = "add",
        expected: int = 0,
        checksum: Digest | None = None,
        allow_empty: bool = False,
        clock: datetime | None = None,
    ) -> ImportSummary:
        """Import a file's batches (``read_batches``): ``mode`` "add" (delta), "remove"
        (delta) or "replace" (a new version built beside the live one, switched in one
        step). Each rejected line goes to ``on_reject``, in file order. Records
        ``refreshed_at`` and ``meta`` on the list (and the file's ``sha256`` once read).
        ``refreshed_at`` may not be later than ``clock`` (default: the time now; tests
        placing lists at fixed dates pass their own): ``check_refreshed_at``.

        A replace whose file gives no number (its new version may still hold opt-outs
        recorded meanwhile), while lines were rejected or the list in force has entries,
        is refused (``OptionError`` naming option ``allow_empty``)
        and changes nothing."""
        rule = self.rule(name)
        key = self.key(name, tenant, campaign)
        if rule.kind == "reassigned":
            raise OptionError(
                "list {list!r} is a reassigned list: its file has lines "
                "number,disconnected_on, read without {format}, {column} or {keep}",
                list=name,
            )
        if mode == "replace" and rule.kind == "consent":
            raise OptionError(
                "list {list!r} is a consent list: {replace} is for block and allow lists",
                list=name,
            )
        clock = clock or datetime.now(UTC)
        self.check_refreshed_at(name, refreshed_at, clock)
        when = refreshed_at or clock
        tally = {"accepted": 0, "rejected": 0, "skipped": 0}
        fields = {
            "refreshed_at": str(int(when.timestamp() * 1000)),
            "imported_at": str(int(clock.timestamp() * 1000)),
            **(meta or {}),
        }

        def tally_of(batch: Batch | Parsed) -> None:
            for rejected in batch.rejected:
                on_reject(rejected)
            tally["rejected"] += len(batch.rejected)
            tally["skipped"] += batch.skipped
            tally["accepted"] += batch.accepted

        async def chunks() -> AsyncGenerator[Chunk, None]:
            parsed = entry_chunks(batches, self.keyspace, self.lists.entries)
            async with contextlib.aclosing(parsed) as outcomes:
                async for outcome in outcomes:
                    tally_of(outcome)
                    if outcome.chunk is not None:
                        yield outcome.chunk
            if checksum is not None:  # the file has been read whole: its digest is final
                fields["sha256"] = checksum.hexdigest()

        if rule.kind == "consent":
            changed = given = confirmed = 0
            try:
                for batch in batches:
                    tally_of(batch)
                    checked = [self.keyspace.number(e164) for e164 in batch.e164s()]
                    if checked:
                        given += len(checked)
                        changed += await self._write(rule, key, mode, checked, when)
                        confirmed += len(checked)
            except (OptionError, OutputError):
                raise
            except (InputError, StoreError, WorkerError) as exc:
                if not given:
                    raise  # nothing sent: the list as it was
                raise _stopped(name, "consent" if mode == "add" else mode, exc, confirmed) from exc
            if checksum is not None:
                fields["sha256"] = checksum.hexdigest()
            await self.lists.set_meta(key, fields)
        else:

            def accept(entries: int, in_force: int) -> None:
                # What the file gave, not the new version's entries: an opt-out recorded
                # while it was built is among them (a wrong file left only that one).
                rejected = tally["rejected"]
                if tally["accepted"] or allow_empty or not (rejected or in_force):
                    return
                given = (
                    f"none of its lines was accepted ({rejected} rejected)"
                    if rejected
                    else "it has no number"
                )
                raise OptionError(
                    "list {list!r} is unchanged ({in_force} entries): the file would replace "
                    "it with an empty list, as {given}; check the file and its format or "
                    "column, or {allow_empty:ask} to empty the list",
                    list=name,
                    in_force=in_force,
                    given=given,
                )

            if mode == "replace":
                async with contextlib.aclosing(chunks()) as source:
                    replaced = await self.lists.replace(key, source, expected, fields, accept)
                changed = replaced.count
            else:
                changed = await self._delta_import(rule, key, mode, chunks(), expected, fields)
        return ImportSummary(
            imported=changed,
            # A replace's new version also holds the numbers added while it was built (an
            # opt-out is never lost): more entries than the file gave, never fewer than 0
            # duplicates.
            duplicates=max(0, tally["accepted"] - changed),
            rejected=tally["rejected"],
            skipped=tally["skipped"],
        )

    async def _delta_import(
        self,
        rule: ListRule,
        key: str,
        mode: str,
        chunks: AsyncGenerator[Chunk, None],
        expected: int,
        fields: Mapping[str, str],
    ) -> int:
        """Add (``mode`` "add") or remove the entries of ``chunks``, then record ``fields``;
        into a block list (opt-outs), acknowledged only once durable, as ``add`` is."""
        async with contextlib.AsyncExitStack() as stack:
            lists = self.lists
            if rule.kind == "block":
                what = f"importing into block list {rule.name!r}"
                lists = self._on(await stack.enter_async_context(self.store.durable(what))).lists
            source = await stack.enter_async_context(contextlib.aclosing(chunks))
            grow = expected if mode == "add" else 0
            given = [0]  # entries handed to the store

            async def counted() -> AsyncGenerator[Chunk, None]:
                async for chunk in source:
                    given[0] += len(chunk[0])
                    yield chunk

            try:
                changed = await lists.delta_chunks(key, mode, counted(), expected=grow)
            except (OptionError, OutputError):
                raise
            except (InputError, StoreError, WorkerError) as exc:
                if not given[0]:
                    raise  # nothing sent: the list as it was
                # Part of the file may be in force: say so, and how to complete it (once:
                # an update cut off after batches went in says how many, not again).
                cause: GateError = exc
                if isinstance(exc, StoreError) and exc.confirmed is not None:
                    cause = exc.__cause__ if isinstance(exc.__cause__, StoreError) else exc
                    raise _stopped(rule.name, mode, exc, exc.confirmed, cause) from exc
                raise _stopped(rule.name, mode, exc, 0) from exc
            await lists.set_meta(key, fields)
        return changed

    async def import_disconnects(
        self,
        name: str,
        lines: Iterable[str],
        tenant: str,
        campaign: str,
        on_reject: Callable[[Rejected], None],
        refreshed_at: datetime | None = None,
        meta: Mapping[str, str] | None = None,
        mode: str = "add",
        checksum: Digest | None = None,
        on_lines: Callable[[int], None] | None = None,
        clock: datetime | None = None,
    ) -> ImportSummary:
        """Import a reassigned list's file (lines ``number,disconnected_on``,
        gate/lists/reassigned.py): ``mode`` "add" keeps each number's latest disconnect
        day (the file's or the one stored, whichever is later), "remove" removes the
        file's numbers. ``on_lines`` is told how many lines were read, now and then."""
        rule = self.rule(name)
        if rule.kind != "reassigned":
            raise InputError(f"list {name!r} is a {rule.kind} list, not a reassigned list")
        if mode not in ("add", "remove"):
            raise OptionError(
                "list {list!r} is a reassigned list: {replace} is for block and allow lists",
                list=name,
            )
        key = self.key(name, tenant, campaign)
        clock = clock or datetime.now(UTC)
        self.check_refreshed_at(name, refreshed_at, clock)
        when = refreshed_at or clock
        fields = {
            "refreshed_at": str(int(when.timestamp() * 1000)),
            "imported_at": str(int(clock.timestamp() * 1000)),
            **(meta or {}),
        }

        def counted() -> Iterator[str]:
            read = 0
            for line in lines:
                read += 1
                if read == BATCH_LINES and on_lines is not None:
                    on_lines(read)
                    read = 0
                yield line
            if on_lines is not None:
                on_lines(read)

        accepted = rejected = changed = given = confirmed = 0
        chunk: list[Disconnect] = []

        async def store(chunk: list[Disconnect]) -> int:
            nonlocal given, confirmed
            given += len(chunk)
            done = await self._store_disconnects(key, chunk, mode)
            confirmed += len(chunk)
            return done

        try:
            for entry in read_disconnects(counted(), rule, self.policy.default_region):
                if isinstance(entry, Rejected):
                    on_reject(entry)
                    rejected += 1
                    continue
                accepted += 1
                chunk.append(entry)
                if len(chunk) >= BATCH_LINES:
                    changed += await store(chunk)
                    chunk = []
            if chunk:
                changed += await store(chunk)
        except (OptionError, OutputError):
            raise
        except (InputError, StoreError, WorkerError) as exc:
            if not given:
                raise  # nothing sent: the list as it was
            raise _stopped(name, mode, exc, confirmed) from exc
        if checksum is not None:
            fields["sha256"] = checksum.hexdigest()
        await self.lists.set_meta(key, fields)
        return ImportSummary(
            imported=changed, duplicates=accepted - changed, rejected=rejected, skipped=0
        )

    async def _store_disconnects(self, key: str, chunk: list[Disconnect], mode: str) -> int:
        """Store (or remove) a chunk's entries; how many changed the list."""
        days = latest(chunk)
        numbers = {e164: self.keyspace.number(e164) for e164 in days}
        if mode == "remove":
            return await self.lists.consent_remove(key, numbers.values())
        by_group: dict[int, list[str]] = {}
        for e164, day in days.items():
            number = numbers[e164]
            by_group.setdefault(number.group, []).extend((number.token, str(void_before_ms(day))))
        calls: list[tuple[list[str], list[str]]] = []
        for group, pairs in by_group.items():
            hash_key = self.keyspace.consent_key(group, key)
            for start in range(0, len(pairs), 2 * _FIELDS_BATCH):
                calls.append(([hash_key], pairs[start : start + 2 * _FIELDS_BATCH]))
        replies = await self.store.run_scripts(HASH_MAX, calls)
        return sum(int(new) + int(raised) for new, raised in replies)

    async def _disconnect_lines(self, key: str) -> AsyncIterator[str]:
        """``number,disconnected_on`` per entry of a reassigned list (plain numbers only)."""
        for group in range(len(self.keyspace.prefixes)):
            hash_key = self.keyspace.consent_key(group, key)
            (reply,) = await self.store.send([(hash_key, ["HGETALL", hash_key])])
            # A map under RESP3, a flat array of field, value under RESP2.
            pairs = (
                reply.items()
                if isinstance(reply, dict)
                else zip(reply[::2], reply[1::2], strict=True)
            )
            for token, value in pairs:
                if not value.isdigit() or len(value) > 13:  # as decide.lua reads it
                    shown = value[:40].decode(errors="replace")
                    raise StoreError(
                        f"{hash_key} holds {shown!r} for {token.decode()}, not the time "
                        "callgate writes (it counts as a void consent): import that number's "
                        "disconnection again, which replaces it, then export again"
                    )
                day = datetime.fromtimestamp(int(value) / 1000 - 86400, UTC).date()
                yield f"{token.decode()},{day.isoformat()}"

    async def revoke(
        self, numbers: Iterable[str], tenant: str, campaign: str, red_list: str = "red"
    ) -> int:
        """Consent withdrawn: remove from every consent list, put on ``red_list``."""
        red = self.rule(red_list)
        if red.kind != "block":
            raise InputError(f"list {red_list!r} is not a block list")
        checked = self._numbers(red, numbers)
        # Before any consent is removed: an unknown tenant or a per-campaign red list
        # without a campaign, refused after, left the number with neither.
        red_key = self.key(red_list, tenant, campaign)
        async with self.store.durable("the consent revocation") as store:
            return await self._on(store)._revoke(checked, tenant, campaign, red_key)

    async def _revoke(
        self, checked: list[NumberKeys], tenant: str, campaign: str, red_key: str
    ) -> int:
        # Each name as decisions and list commands resolve it (``Policy.list_rule``: the
        # config's, else the first pack's), not the last definition: another scope is
        # another key, and the consent in force would be left in place.
        names = dict.fromkeys(
            r.name for r in (*self.policy.lists, *(r for p in self.policy.packs for r in p.lists))
        )
        for name in names:
            rule = self.rule(name)
            if rule.kind != "consent":
                continue
            key = self.keyspace.list_id(rule, tenant, campaign)
            if key is not None:
                await self.lists.consent_remove(key, checked)
        return await self.lists.delta(red_key, "add", [(n.member, n.bucket32) for n in checked])

    async def record_event(
        self,
        event: str,
        number: str,
        tenant: str,
        at: datetime,
        now: datetime | None = None,
        campaign: str = "",
    ) -> EventRecord:
        """Record a call event at ``at`` (``EVENTS``): a refusal or an abandoned call
        starts every cool-off rule for it (which runs from the latest such event, to the
        latest end: one older than an event already recorded changes nothing, unless its
        end is later; a rule counted in calendar days ends at 00:00 local, in the callee's
        zones, after its last day); an answered or abandoned call
        counts toward every abandoned-call ceiling in force, of ``campaign`` (or of the
        tenant). Acknowledged once the store holds it durably (``Store.durable``).

        Its ``rules`` empty means no enabled pack has a rule for this event and number, or
        that ``at`` is too long ago for each of them (``expired``); ``at`` later than the
        clock by more than ``RECORD_SKEW_S`` is refused (an ``InputError``: it would hold
        the number's calls back until that date), and so is a ceiling's counts key holding
        a value callgate did not write (it is left as it is; the error names it, to delete).
        ``now`` is the clock (callers placing events at fixed dates, such as tests, pass
        their own)."""
        if event not in EVENTS:
            raise InputError(f"unknown event {event!r}; use {', '.join(EVENTS)}")
        clock = now or datetime.now(UTC)
        if (at - clock).total_seconds() > RECORD_SKEW_S:
            raise InputError(
                f"a call event has happened (at most {RECORD_SKEW_S:g} s after the gate's "
                f"clock), not at {at.isoformat()}: give the time the call ended, or none for now"
            )
        self.policy.check_tenant(tenant)
        target = classify(number, self.policy.default_region)
        if not isinstance(target, Destination):
            raise NumberError(f"number {number!r}: not a callable number")
        what = "answered call" if event == "answered" else event
        async with self.store.durable(f"the {what}") as store:
            return await self._on(store)._record_event(event, target, tenant, campaign, at, clock)

    async def _record_event(
        self,
        event: str,
        target: Destination,
        tenant: str,
        campaign: str,
        at: datetime,
        now: datetime,
    ) -> EventRecord:
        day = local_day(target.time_zones, at)
        keys = self.keyspace.number(target.e164)
        at_ms = int(at.timestamp() * 1000)
        clock_ms = int(now.timestamp() * 1000)
        record = EventRecord()

        def applies(rule: CooloffRule | AbandonCeilingRule) -> bool:
            return any(in_force(rule, target.e164, cls, day) for cls in TrafficClass)

        packs = [pack for pack in self.policy.packs if target.region in pack.regions]
        for rule in (r for pack in packs for r in pack.cooloffs):
            if rule.event != event or not applies(rule):
                continue
            suffix = self.keyspace.cooloff_suffix(rule, tenant)
            key = self.keyspace.number_key(keys.group, suffix, keys.token)
            period_ms = int(rule.period_s * 1000)
            # The marker holds the instant the cool-off runs from (decide.lua's R check
            # waits until it + the period): the event's time, or, for a rule counted in
            # calendar days (to 00:00 local after the last one, in the callee's zones),
            # that end less the period: a plain time every gate reads alike.
            start_ms = at_ms
            if rule.calendar_days:
                days = round(rule.period_s / 86400)
                end = end_of_calendar_days(target.time_zones, at, days)
                start_ms = int(end.timestamp() * 1000) - period_ms
            # The marker expires when the cool-off ends by the clock; an event whose
            # cool-off ends sooner than the one held (reported late) leaves it in place.
            ttl_ms = start_ms + period_ms - clock_ms
            if ttl_ms <= 0:
                record.expired.append(rule.id)
                continue
            await self.lists.mark(key, start_ms, ttl_ms)
            record.rules.append(rule.id)
        if event == "refusal":
            return record
        abandoned = 1 if event == "abandoned" else 0
        counted: list[str] = []
        for ceiling in (r for pack in packs for r in pack.abandon_ceilings):
            if not applies(ceiling):
                continue
            counts = self.keyspace.ceiling_key(ceiling, tenant, campaign)
            if counts is None:
                record.uncounted.append(ceiling.id)
                continue
            window_ms = int(ceiling.window_s * 1000)
            # Its minute has left the window: call_counts.lua would not count it.
            if at_ms - at_ms % _MINUTE_MS + _MINUTE_MS + window_ms <= clock_ms:
                record.expired.append(ceiling.id)
                continue
            # An abandoned call is a live call too (answered by a person): both counts.
            args = [at_ms, clock_ms, window_ms, 1, abandoned]
            (totals,) = await self.store.run_scripts(CALL_COUNTS, [([counts], args)])
            if totals is None:  # a value callgate did not write: left as it is
                raise _unreadable_counts(event, ceiling, counts, tenant, campaign, counted)
            record.rules.append(ceiling.id)
            counted.append(ceiling.id)
        return record


def _stopped(
    name: str, mode: str, exc: GateError, confirmed: int, cause: GateError | None = None
) -> GateError:
    """``exc`` (of its type) saying what a delta import of list ``name`` stopped by it did
    to the list (``_STOPPED``), after some entries were sent: ``confirmed`` of them the
    store took (0: not known), then ``cause`` (default: ``exc``)."""
    counted = f" ({confirmed} confirmed)" if confirmed else ""
    stopped = _STOPPED[mode].format(confirmed=counted)
    return type(exc)(f"list {name!r}: {stopped}: {cause or exc}")


def _unreadable_counts(
    event: str,
    ceiling: AbandonCeilingRule,
    key: str,
    tenant: str,
    campaign: str,
    counted: list[str],
) -> InputError:
    """call_counts.lua found a value callgate did not write at ``key``, the counts of
    ``ceiling`` (decide.lua DEFERs the calls it governs while it is there): one line, what
    and what to do. ``counted``: the ceilings the call was counted toward before it."""
    whose = f"tenant {tenant!r}" if ceiling.scope == "tenant" else f"campaign {campaign!r}"
    if counted:
        what = (
            f"delete that key (the call was counted toward {', '.join(counted)}: recording "
            "it again would count it twice there)"
        )
    else:
        what = f"delete that key, then record the {event} call again"
    return InputError(
        f"{ceiling.id}: the value at Redis key {key} (the abandoned-call counts of {whose}) "
        f"was not written by callgate: the {event} call was not counted toward it, and the "
        f"calls it governs are deferred while it is there; {what}"
    )


def unrecorded(event: str, number: str, record: EventRecord) -> InputError | None:
    """Why ``record`` recorded nothing (one line, each door wording it), or None."""
    if record.rules:
        return None
    if record.uncounted:
        return OptionError(
            "{rules} counts the calls of each campaign: {campaign:ask}; nothing recorded",
            rules=", ".join(record.uncounted),
        )
    if record.expired:
        call = "refusal" if event == "refusal" else f"{event} call"
        return InputError(
            f"the {call} is too old for {', '.join(record.expired)} (its cool-off is over, "
            "or it is out of the ceiling's window); nothing recorded"
        )
    rules = {
        "refusal": "a cool-off after a refusal",
        "abandoned": "a cool-off after an abandoned call or an abandoned-call ceiling",
        "answered": "an abandoned-call ceiling",
    }[event]
    return InputError(f"no enabled pack has {rules} for {number!r}; nothing recorded")


def _switch_what(version: int, groups: int) -> str:
    return (
        f"an import's switch to version {version} is unfinished (under way, or cut off by a "
        f"failover): {groups} of {SLOT_GROUPS} slot groups decide with it"
    )


def _switch_do(again: str, source: str | None) -> str:
    example = f"that import's file (source {source!r})" if source else "that import's file"
    return (
        f"when no import is running, import the list again {again}, e.g. {example}, which "
        "completes the switch first"
    )


def switch_note(version: int, groups: int, source: str | None, again: str) -> str:
    """``ListAdmin.info``'s unfinished switch explained in one line: what, what the figures
    shown are, what to do (``again``: how the reader's interface imports the list again,
    whole: "in replace mode", "with `callgate list import …`")."""
    return (
        f"{_switch_what(version, groups)}; entries counts what decides, but refreshed_at, "
        "imported_at, source, importer and sha256 are still the previous import's, and the "
        f"list cannot be exported; {_switch_do(again, source)}"
    )


def _shown(when: datetime) -> str:
    """A time in an error, to the second, in the zone it was given in."""
    return when.isoformat(timespec="seconds")


def _not_yet(when: datetime, clock: datetime) -> bool:
    """``when`` (a grant time) has not come yet by ``clock``, beyond ``GRANT_SKEW_S``."""
    return (when - clock).total_seconds() > GRANT_SKEW_S


def _check_grant(granted: datetime | None, expires: datetime | None, clock: datetime) -> None:
    """Refuse a consent not given yet (``granted`` later than ``clock``: decide.lua reads
    only the expiry, so it would count at once) or void from the start (``expires`` at or
    before the grant: ``granted``, else ``clock``)."""
    if granted is not None and _not_yet(granted, clock):
        raise OptionError(
            "{granted_at} {grant}: later than the gate's clock ({clock}); a consent counts "
            "once given: give the time it was given, or none for now",
            grant=_shown(granted),
            clock=_shown(clock),
        )
    if expires is not None and expires <= (granted or clock):
        grant = "the grant (now, {grant})" if granted is None else "{granted_at} {grant}"
        raise OptionError(
            "{expires} {expiry}: not after " + grant + "; a consent lapses after it is "
            "given: give a later {expires}, or none for a consent that does not lapse",
            expiry=_shown(expires),
            grant=_shown(granted or clock),
        )


def consent_value(granted: datetime, expires: datetime | None) -> str:
    """``granted_ms:expiry_ms`` (0: no expiry), as decide.lua reads it."""
    expiry = 0 if expires is None else int(expires.timestamp() * 1000)
    return f"{int(granted.timestamp() * 1000)}:{expiry}"
