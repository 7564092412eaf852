"""List administration: add, remove, count, export, import; consents; refusals.

Guarantees:
- Every entry is validated and normalised to E.164 before it reaches Redis, then stored
  in the keyspace's encoding (a keyed hash unless the config says plain).
- An emergency or protected number is never put on a block list (``ProtectedNumberError``).
- What must survive a Redis failover — an opt-out (an ``add`` to a block list), a
  consent revocation, a refusal or abandoned call — is acknowledged only once the store
  holds it durably (``Store.durable``: ``redis.wait_replicas`` replicas, on every master
  that took a part of it in a cluster; else ``NotReplicated`` and the caller reports a
  failure).
- Block and allow lists live in compact buckets, consent lists in HASHes token →
  ``granted_ms:expiry_ms``, both spread over the slot groups (gate/store/lists.py;
  decide.lua reads both).
- An import counts every line: imported, duplicate, rejected (each reported with its line
  number through ``on_reject``) or skipped (a scrub result not kept). It reads the file in
  batches (gate/importing.py ``read_batches``), so memory stays bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gate.core.errors import InputError, NumberError
from gate.core.hours import local_day
from gate.core.keys import Keyspace, NumberKeys
from gate.core.model import TrafficClass
from gate.core.numbers import Destination, classify
from gate.core.policy import Policy
from gate.core.rules import ListRule, in_force
from gate.lists.formats import Batch, Digest, Rejected, Skipped, batches_of, validate_entry
from gate.lists.workers import Parsed, entry_chunks
from gate.service import Gate
from gate.store.client import Store
from gate.store.lists import Chunk, ListStore

__all__ = ["ImportSummary", "ListAdmin", "consent_value"]


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
        if rule.kind == "reassigned":
            raise InputError(
                f"list {name!r} holds reassigned-number disconnect dates "
                "(gate/lists/reassigned.py); they are not stored yet: the store's "
                "reassigned-number check is still to be built"
            )
        key = self.keyspace.list_id(rule, tenant, campaign)
        if key is None:
            raise InputError(f"list {name!r} is per campaign: pass --campaign")
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
        if rule.kind != "consent":
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
    ) -> int:
        """Add numbers (consent lists: granted ``now``, optional expiry); how many were new.

        On a block list (an opt-out) the answer comes only once the store holds the
        entries durably (``Store.durable``: enough replicas, or ``NotReplicated``)."""
        rule = self.rule(name)
        checked = self._numbers(rule, numbers)
        key = self.key(name, tenant, campaign)
        when = now or datetime.now(UTC)
        if rule.kind != "block":
            return await self._write(rule, key, "add", checked, when, expires)
        async with self.store.durable(f"adding to block list {name!r}") as store:
            return await self._on(store)._write(rule, key, "add", checked, when, expires)

    async def remove(self, name: str, numbers: Iterable[str], tenant: str, campaign: str) -> int:
        rule = self.rule(name)
        checked = self._numbers(rule, numbers)
        key = self.key(name, tenant, campaign)
        return await self._write(rule, key, "remove", checked, datetime.now(UTC))

    async def count(self, name: str, tenant: str, campaign: str) -> int:
        key = self.key(name, tenant, campaign)
        if self.rule(name).kind == "consent":
            return await self.lists.consent_count(key)
        return await self.lists.count(key)

    async def info(self, name: str, tenant: str, campaign: str) -> dict[str, str]:
        """The list's entry count and metadata (version, refreshed_at, source, checksum…)."""
        rule = self.rule(name)
        key = self.key(name, tenant, campaign)
        internal: tuple[str, ...] = ("next_version", "building", "building_bits")
        if rule.kind == "consent":
            internal += ("version", "bits")
        meta = {k: v for k, v in (await self.lists.directory(key)).items() if k not in internal}
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
        if self.rule(name).kind == "consent":
            async for token in self.lists.consent_tokens(key):
                yield token
            return
        async for member in self.lists.members(key):
            yield f"+{member}"

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
    ) -> ImportSummary:
        """Import a file's batches (``read_batches``): ``mode`` "add" (delta), "remove"
        (delta) or "replace" (a new version built beside the live one, switched in one
        step). Each rejected line goes to ``on_reject``, in file order. Records
        ``refreshed_at`` and ``meta`` on the list (and the file's ``sha256`` once read)."""
        rule = self.rule(name)
        key = self.key(name, tenant, campaign)
        if mode == "replace" and rule.kind == "consent":
            raise InputError(
                f"list {name!r} is a consent list: --replace is for block and allow lists"
            )
        when = refreshed_at or datetime.now(UTC)
        tally = {"accepted": 0, "rejected": 0, "skipped": 0}
        fields = {
            "refreshed_at": str(int(when.timestamp() * 1000)),
            "imported_at": str(int(datetime.now(UTC).timestamp() * 1000)),
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
            changed = 0
            for batch in batches:
                tally_of(batch)
                checked = [self.keyspace.number(e164) for e164 in batch.e164s()]
                if checked:
                    changed += await self._write(rule, key, mode, checked, when)
            if checksum is not None:
                fields["sha256"] = checksum.hexdigest()
            await self.lists.set_meta(key, fields)
        else:
            async with contextlib.aclosing(chunks()) as source:
                if mode == "replace":
                    changed = (await self.lists.replace(key, source, expected, fields)).count
                else:
                    grow = expected if mode == "add" else 0
                    changed = await self.lists.delta_chunks(key, mode, source, expected=grow)
            if mode != "replace":
                await self.lists.set_meta(key, fields)
        return ImportSummary(
            imported=changed,
            duplicates=tally["accepted"] - changed,
            rejected=tally["rejected"],
            skipped=tally["skipped"],
        )

    async def revoke(
        self, numbers: Iterable[str], tenant: str, campaign: str, red_list: str = "red"
    ) -> int:
        """Consent withdrawn: remove from every consent list, put on ``red_list``."""
        red = self.rule(red_list)
        if red.kind != "block":
            raise InputError(f"list {red_list!r} is not a block list")
        checked = self._numbers(red, numbers)
        async with self.store.durable("the consent revocation") as store:
            return await self._on(store)._revoke(checked, tenant, campaign, red_list)

    async def _revoke(
        self, checked: list[NumberKeys], tenant: str, campaign: str, red_list: str
    ) -> int:
        consent_lists = {
            r.name: r
            for r in (*self.policy.lists, *(r for p in self.policy.packs for r in p.lists))
            if r.kind == "consent"
        }
        for rule in consent_lists.values():
            key = self.keyspace.list_id(rule, tenant, campaign)
            if key is not None:
                await self.lists.consent_remove(key, checked)
        return await self.lists.delta(
            self.key(red_list, tenant, campaign), "add", [(n.member, n.bucket32) for n in checked]
        )

    async def record_event(
        self, event: str, number: str, tenant: str, at: datetime, now: datetime | None = None
    ) -> list[str]:
        """Record a refusal/abandoned call: every cool-off rule for it starts at ``at``.

        Returns the ids of the rules that now hold the number; an empty list means no
        enabled pack has a cool-off for this event and destination.
        """
        self.policy.check_tenant(tenant)
        target = classify(number, self.policy.default_region)
        if not isinstance(target, Destination):
            raise NumberError(f"number {number!r}: not a callable number")
        async with self.store.durable(f"the {event}") as store:
            return await self._on(store)._record_event(event, target, tenant, at, now)

    async def _record_event(
        self, event: str, target: Destination, tenant: str, at: datetime, now: datetime | None
    ) -> list[str]:
        day = local_day(target.time_zones, at)
        started: list[str] = []
        for pack in self.policy.packs:
            if target.region not in pack.regions:
                continue
            for rule in pack.cooloffs:
                if rule.event != event or not any(
                    in_force(rule, target.e164, cls, day) for cls in TrafficClass
                ):
                    continue
                keys = self.keyspace.number(target.e164)
                suffix = self.keyspace.cooloff_suffix(rule, tenant)
                key = self.keyspace.number_key(keys.group, suffix, keys.token)
                at_ms = int(at.timestamp() * 1000)
                # The marker expires when the cool-off ends by the real clock (``now``:
                # callers placing events at fixed dates, such as tests, pass their own).
                clock_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
                ttl_ms = at_ms + int(rule.period_s * 1000) - clock_ms
                if ttl_ms > 0:
                    await self.lists.mark(key, str(at_ms), ttl_ms)
                started.append(rule.id)
        return started


def consent_value(granted: datetime, expires: datetime | None) -> str:
    """``granted_ms:expiry_ms`` (0: no expiry), as decide.lua reads it."""
    expiry = 0 if expires is None else int(expires.timestamp() * 1000)
    return f"{int(granted.timestamp() * 1000)}:{expiry}"
