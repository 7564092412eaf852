"""Every request and response of the admin API, defined once as a typed model.

The same models validate what comes in, serialise what goes out (the API, and the CLI's
``--json``), and generate ``/openapi.json`` (gate/ops/_openapi.py): the description cannot
drift from the server.

Why pydantic v2 rather than msgspec (both are on PyPI): its JSON Schema generator is the
complete one (JSON Schema 2020-12, what OpenAPI 3.1 uses: separate validation and
serialisation schemas, ``additionalProperties: false`` from ``extra="forbid"``, ``$ref``
components), its strict mode refuses ``"1"`` for an integer and ``1`` for a string, its
errors carry the location of the bad field (turned into one line below), and its JSON
parser (pydantic-core's jiter) has a nesting limit, so a hostile ``[[[[…`` is a 400, not a
``RecursionError``. msgspec is faster, but its schema output is thinner and the API's time
is Redis's, not parsing's. It is also what a web console built on this API (TypeScript
types from the spec) most likely expects.

Guarantees:
- Requests: unknown fields, keys given twice, wrong JSON types, bad identifiers, numbers
  longer than ``MAX_NUMBER_CHARS``, times that are not RFC 3339 with an offset or outside
  ``EARLIEST``-``LATEST``, batches over ``MAX_BATCH`` (413) are refused with a
  ``RequestError`` whose one-line message names the field (``numbers[3]: …``).
- Responses: counts and list versions are integers, times RFC 3339 strings, retry times
  whole seconds; every field is always present (``null`` when it has no value).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from gate.core.engine import RuleOutcome
from gate.core.errors import InputError
from gate.core.keys import SLOT_GROUPS
from gate.core.model import IDENT_RE, Decision, TrafficClass, Verdict
from gate.core.params import retry_seconds
from gate.lists.admin import switch_note

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_BATCH",
    "MAX_NUMBER_CHARS",
    "AuditQuery",
    "AuditRecord",
    "CheckRequest",
    "ConsentRequest",
    "ConsentResponse",
    "DecisionOut",
    "DoorsOut",
    "ErrorOut",
    "EventRequest",
    "EventResponse",
    "FreshnessOut",
    "Health",
    "ImportEvent",
    "ImportQuery",
    "ListAddResponse",
    "ListChange",
    "ListCount",
    "ListInfo",
    "ListQuery",
    "ListRemoveResponse",
    "ListStatus",
    "ListSwitch",
    "ListsOut",
    "LiveOut",
    "PackOut",
    "Ready",
    "RedisCheck",
    "ReloadFailed",
    "ReloadResponse",
    "RequestError",
    "RevokeRequest",
    "RevokeResponse",
    "RuleOut",
    "RuleOutcomeOut",
    "RulesOut",
    "ScrubFileEvent",
    "ScrubFileQuery",
    "ScrubRequest",
    "ScrubResponse",
    "ScrubResult",
    "ScrubSummaryOut",
    "SeriesOut",
    "SessionOut",
    "SessionRequest",
    "VerdictCounts",
    "check_query",
    "decision_out",
    "dump",
    "json_of",
    "list_info",
    "parse_body",
    "parse_query",
    "query_names",
    "retry_seconds",
    "rule_outcomes",
]

MAX_BATCH = 10_000
MAX_NUMBER_CHARS = 32
# The times a request may name: enough for any plan, far from datetime's limits (a year
# 9999 with a negative offset overflows when converted to UTC).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# RFC 3339 date-time (the OpenAPI "date-time" format), exactly what ``_instant`` accepts.
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:[0-5]\d(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})$"
_RFC3339_RE = re.compile(RFC3339, re.ASCII)
IDENT_TEXT = "1-64 of A-Z a-z 0-9 _ . -"


class RequestError(InputError):
    """A request the API refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _instant(value: object) -> datetime:
    if not isinstance(value, str) or not _RFC3339_RE.fullmatch(value):
        raise PydanticCustomError(
            "rfc3339",
            "{value} is not an RFC 3339 date-time with an offset (e.g. 2026-12-01T10:30:00+01:00)",
            {"value": _short(value)},
        )
    try:
        parsed = datetime.fromisoformat(value.upper())
        if not EARLIEST.year <= parsed.year < LATEST.year or not EARLIEST <= parsed < LATEST:
            raise OverflowError
    except (ValueError, OverflowError):
        raise PydanticCustomError(
            "time_range",
            "{value} is not a time between {earliest} and {latest}",
            {"value": _short(value), "earliest": EARLIEST.year, "latest": LATEST.year},
        ) from None
    return parsed


Instant = Annotated[
    datetime,
    PlainValidator(_instant, json_schema_input_type=str),
    PlainSerializer(lambda when: when.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339}),
]
Ident = Annotated[str, StringConstraints(pattern=IDENT_RE.pattern)]
Number = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NUMBER_CHARS)]
Numbers = Annotated[list[Number], Field(min_length=1, max_length=MAX_BATCH)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Query(BaseModel):
    """Query parameters: strings in, converted (not strict), unknown names refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    # Every field is always serialised, so every field is required in the spec.
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )


class Scope(_Request):
    tenant: Ident | None = Field(None, description="default: gate.default_tenant")
    campaign: Ident | None = Field(None, description="required for per-campaign lists")


class _AttemptFields(Scope):
    trunk: Ident | None = None
    caller_id: Number | None = Field(
        None, description="presented caller ID; omitted: caller-ID rules are not checked"
    )
    traffic_class: TrafficClass = Field(TrafficClass.CAMPAIGN, alias="class")
    at: Instant | None = Field(None, description="decide as of this time (default: now)")


class CheckRequest(_AttemptFields):
    """Decide one call as the gate would."""

    number: Number
    record: bool = Field(False, description="count the attempt if allowed (and keep evidence)")
    explain: bool = Field(False, description="add each rule in force and its outcome")


class ScrubRequest(_AttemptFields):
    """Evaluate a batch of numbers (nothing is counted)."""

    numbers: Numbers


class ListChange(Scope):
    """Numbers to add to or remove from a list."""

    numbers: Numbers


class ConsentRequest(Scope):
    """Prior consents to record (granted now or at ``granted_at``)."""

    numbers: Numbers
    list_name: Ident = Field("consent", alias="list")
    granted_at: Instant | None = None
    expires: Instant | None = None


class RevokeRequest(Scope):
    """Consent withdrawn: removed from every consent list, the numbers red-listed."""

    numbers: Numbers
    red_list: Ident = "red"


class EventRequest(_Request):
    """A refusal or an abandoned call: its cool-off starts at ``at`` (default now); an
    answered or abandoned call counts toward the abandoned-call ceilings of ``campaign``."""

    number: Number
    tenant: Ident | None = None
    campaign: Ident | None = Field(
        None, description="the call's campaign (abandoned-call ceilings count per campaign)"
    )
    at: Instant | None = None


class ListQuery(_Query):
    tenant: Ident | None = None
    campaign: Ident | None = None


class ImportMode(enum.StrEnum):
    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


class ImportQuery(ListQuery):
    """How to read an uploaded list file (the options of ``callgate list import``)."""

    format: Literal["lines", "csv", "us-dnc", "fr-scrub"] = "lines"
    column: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="CSV column: a header name or a 1-based index"
    )
    keep: str | None = Field(None, description="fr-scrub: comma-separated result values to keep")
    mode: ImportMode = Field(
        ImportMode.ADD,
        description="add (a delta), remove (a deletions file) or replace (the whole list, "
        "built beside the live one and switched in one step)",
    )
    refreshed_at: Instant | None = Field(None, description="when the file was produced")
    allow_empty: bool = Field(
        False,
        description="replace: empty the list if the file gives no entry (else refused, the "
        "list kept, when lines are rejected or the list has entries)",
    )


class AuditFormat(enum.StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"


class AuditQuery(_Query):
    """Which decisions of the audit trail to return, oldest first."""

    number: Number | None = Field(None, description="only decisions about this number (why)")
    since: Instant | None = None
    until: Instant | None = None
    tenant: Ident | None = None
    campaign: Ident | None = None
    verdict: Verdict | None = None
    format: AuditFormat = AuditFormat.NDJSON
    limit: Annotated[int, Field(ge=1, le=10_000_000)] | None = None


class SessionRequest(_Request):
    """Sign in to the console: the API token (any, or none, when none is configured)."""

    token: Annotated[str, StringConstraints(max_length=1024)] = ""


class ScrubFileQuery(ListQuery):
    """How to read an uploaded leads file (the options of ``callgate scrub``)."""

    column: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        "1", description="the phone column: a header name, or a 1-based index"
    )
    header: bool = Field(False, description="the first row is a header (implied by a name)")
    caller_id: Number | None = Field(
        None, description="caller ID the campaign presents; omitted: not checked"
    )
    traffic_class: TrafficClass = Field(TrafficClass.CAMPAIGN, alias="class")
    at: Instant | None = Field(None, description="decide as of this time (default: now)")
    name: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="the file's name, for the download's name"
    )


# --- responses ----------------------------------------------------------------------------


class ErrorOut(_Response):
    """An error: what is wrong, naming the field."""

    error: str


class RuleOutcomeOut(_Response):
    """One rule in force, its outcome and its source (``--explain``)."""

    rule: str
    outcome: str
    detail: str
    source: str


class DecisionOut(_Response):
    """A decision, as the API returns it and ``callgate check --json`` prints it."""

    verdict: Verdict
    reason: str = Field(examples=["listed:red"])
    rule: str = Field(description='the rule that decided ("" when allowed)')
    retry_after_s: int | None = Field(
        description="DEFER: whole seconds until the call may be tried again (rounded up)"
    )
    destination: str | None = Field(
        description="the number as the gate read it: E.164 (+33612345678), or the digits of "
        "a short or emergency number (17); null when it is not a usable number"
    )
    shadow: list[str] = Field(description="reasons of shadow rules that would have refused it")
    config_version: str
    rules: list[RuleOutcomeOut] | None = Field(
        description="with explain: each rule in force and its outcome; else null"
    )


class ScrubResult(_Response):
    """One number of a scrub, in request order."""

    number: str
    verdict: Verdict
    reason: str
    rule: str
    retry_after_s: int | None
    destination: str | None


class VerdictCounts(_Response):
    """How many of each verdict."""

    ALLOW: int = 0
    BLOCK: int = 0
    DEFER: int = 0


class ScrubResponse(_Response):
    """Each number's result, in order, and counts by verdict."""

    results: list[ScrubResult]
    counts: VerdictCounts
    config_version: str


class ListAddResponse(_Response):
    """How many numbers were new to the list, and how many were already on it."""

    added: int
    already_listed: int


class ListRemoveResponse(_Response):
    """How many numbers were removed, and how many were not on the list."""

    removed: int
    not_listed: int


class ListKind(enum.StrEnum):
    BLOCK = "block"
    ALLOW = "allow"
    CONSENT = "consent"
    REASSIGNED = "reassigned"  # a number's last disconnect day (the us pack's)


class ListScope(enum.StrEnum):
    GLOBAL = "global"
    TENANT = "tenant"
    CAMPAIGN = "campaign"


class ListInfo(_Response):
    """A list as an admin sees it (``callgate list info``)."""

    name: str
    kind: ListKind
    scope: ListScope
    tenant: str | None = Field(description="the tenant of a per-tenant list; else null")
    campaign: str | None = Field(description="the campaign of a per-campaign list; else null")
    entries: int
    hashed: bool = Field(description="entries are keyed hashes (privacy.hash_numbers)")
    refreshed_at: datetime | None = Field(description="when its source was produced")
    imported_at: datetime | None = Field(description="when it was last imported")
    source: str | None = Field(description="the file it was last imported from")
    importer: str | None = Field(description="user@host of that import")
    sha256: str | None = Field(description="SHA-256 of that file")
    unfinished_switch: ListSwitch | None = Field(
        description="null unless an import's switch to a new version is unfinished (under "
        "way, or cut off by a failover): then refreshed_at, imported_at, source, importer "
        "and sha256 are still the previous import's, and the list cannot be exported"
    )


class ListSwitch(_Response):
    """An import's switch to a new version of a list, unfinished: under way, or cut off by
    a failover (the next import in replace mode completes it first)."""

    version: int = Field(description="the version switched to")
    deciding_groups: int = Field(description="slot groups whose decisions already use it")
    slot_groups: int = Field(description="slot groups in all")
    source: str | None = Field(description="the file of that import")
    note: str = Field(description="one line: what this means, and what to do")


class ListCount(_Response):
    """How many entries a list has (``callgate list count --json``)."""

    name: str
    tenant: str | None
    campaign: str | None
    entries: int


class ConsentResponse(_Response):
    """Consents recorded anew, and consents updated (granted again)."""

    recorded: int
    updated: int


class RevokeResponse(_Response):
    """Numbers whose consents were revoked, and how many were new on the red list."""

    revoked: int
    red_listed: int


class EventResponse(_Response):
    """The event recorded: the cool-off rules it started and the abandoned-call ceilings it
    counts toward; the per-campaign ceilings it could not count toward (no campaign)."""

    event: Literal["refusal", "abandoned", "answered"]
    rules: list[str] = Field(
        description="the cool-off rules that now hold the number and the abandoned-call "
        "ceilings the call counts toward"
    )
    uncounted: list[str] = Field(
        default_factory=list,
        description="abandoned-call ceilings in force that count per campaign: not counted, "
        "as no campaign was given",
    )


class ReloadResponse(_Response):
    """The config version in force after the reload, and the one before."""

    config_version: str
    previous: str
    changed: bool


class ReloadFailed(_Response):
    """The file was refused (the error says why); the running config stays."""

    error: str
    config_version: str = Field(description="the version still in force")


class ImportEvent(_Response):
    """One line of an import's NDJSON answer: progress, each rejected line, the result."""

    event: Literal["progress", "rejected", "done", "error"]
    lines: int = Field(description="lines read so far")
    total: int = Field(description="lines in the file")
    line: int | None = Field(description="rejected: its line number")
    why: str | None = Field(description="rejected: why; error: what went wrong")
    imported: int | None = Field(description="done: numbers added, removed or in the new list")
    duplicates: int | None
    rejected: int | None
    skipped: int | None


class AuditRecord(_Response):
    """One decision of the audit trail (NDJSON export)."""

    id: str = Field(description="the stream entry id")
    time: datetime
    verdict: str
    reason: str
    rule: str
    door: str
    tenant: str
    campaign: str
    trunk: str
    traffic_class: str = Field(alias="class")
    number: str = Field(description="the number's keyed hash (E.164 with hashing off)")
    caller_id: str
    channel: str
    config_version: str
    packs: list[str]
    lists: dict[str, int] = Field(description="list name → version consulted")
    counters: dict[str, int] = Field(description="cap rule → attempts seen in its window")
    shadow: list[str]
    retry_after_s: int | None
    latency_us: int
    redis_us: int


class SessionOut(_Response):
    """Whether this browser is signed in to the console, and what the console shows."""

    signed_in: bool
    token_required: bool = Field(description="false: no API token is configured (loopback)")
    session: str | None = Field(description="the session's label (in the log and audit)")
    csrf: str | None = Field(description="send it as X-CSRF-Token with every change")
    expires_at: datetime | None
    config_version: str
    hashed: bool = Field(description="numbers are stored as keyed hashes (tags in the trail)")
    default_region: str
    default_tenant: str
    tenants: list[str]


class FreshnessOut(_Response):
    """A rule that needs a list refreshed within ``max_age_s``, and whether it is."""

    rule: str
    pack: str
    max_age_s: int
    in_force: bool = Field(description="the rule applies today (valid_from/valid_to)")
    shadow: bool
    source: str
    stale: bool = Field(description="in force, and never imported or older than max_age_s")


class ListStatus(_Response):
    """One list of the config or its packs, as the console's Lists page shows it."""

    name: str
    kind: str
    scope: ListScope
    description: str
    info: ListInfo | None = Field(
        description="null when it cannot be read here (a per-campaign list without a "
        "campaign, a list not stored yet): see note"
    )
    note: str | None
    age_s: int | None = Field(description="seconds since its source was produced")
    freshness: list[FreshnessOut]
    stale: bool


class ListsOut(_Response):
    """Every list for one tenant (and campaign)."""

    tenant: str
    campaign: str | None
    lists: list[ListStatus]
    config_version: str


class PackOut(_Response):
    """A rule pack in force."""

    id: str
    version: str
    description: str
    regions: list[str]


class RuleOut(_Response):
    """One rule, as the Rules page shows it."""

    pack: str | None = Field(description="the pack it comes from; null: the config file")
    kind: str
    id: str = Field(
        description='a cps cap\'s trunk, or "*": the cap of every trunk [trunks.cps] does not '
        "name (trunks.default_cps)"
    )
    summary: str
    source: str
    shadow: bool = Field(description="evaluated and reported, never enforced")
    verify: bool = Field(description="its value comes from a secondary source")
    enforced: bool = Field(description="false: validated, but the store cannot run it yet")
    valid_from: str | None
    valid_to: str | None
    classes: list[str]


class RulesOut(_Response):
    """The packs and every rule in force, and the config version."""

    config_version: str
    default_region: str
    packs: list[PackOut]
    rules: list[RuleOut]


class SeriesOut(_Response):
    """Decisions per second over the last hour, one value per ``step_s`` from ``start``."""

    start: datetime | None = Field(description="the time of the first value (null: none yet)")
    step_s: float
    verdicts: dict[str, list[float]]
    reasons: dict[str, list[float]] = Field(description="the busiest reasons, refusals first")


class DoorsOut(_Response):
    """The doors' and Redis's health, as the Live page shows it."""

    agi: bool = Field(description="the FastAGI door is served")
    agi_active: int = Field(description="FastAGI connections being served")
    agi_connections: int
    agi_failed: int = Field(description="answers Asterisk refused or garbled")
    stasis: bool | None = Field(description="the Stasis application is connected (null: no [ari])")
    stasis_reconnects: int | None
    redis: bool
    redis_ping_ms: float | None = Field(description="a PING's round trip just now")
    redis_decision_ms: float | None = Field(
        description="mean Redis time of a decision over the last minute"
    )
    redis_error: str | None
    fail_mode_total: int = Field(description="decisions answered by the fail mode since start")
    fail_mode_last_hour: int


class LiveOut(_Response):
    """What the Live page polls: the charts' series and the doors' health."""

    now: datetime
    config_version: str
    uptime_s: float
    series: SeriesOut
    doors: DoorsOut


class ScrubFileEvent(_Response):
    """One line of a leads upload's NDJSON answer: progress, then the summary."""

    event: Literal["progress", "done", "error"]
    lines: int = Field(description="lines read so far")
    total: int = Field(description="lines in the file")
    rows: int = Field(description="leads decided so far")
    id: str | None = Field(description="done: GET /v1/scrub/file/{id} downloads the CSV")
    counts: VerdictCounts | None
    unreadable: int | None
    reasons: dict[str, int] | None = Field(description="done: 'VERDICT reason' → rows")
    why: str | None = Field(description="error: what went wrong")


class ScrubSummaryOut(_Response):
    """``callgate scrub --json``: what was written where, and the counts."""

    output: str
    rows: int
    counts: VerdictCounts
    unreadable: int
    reasons: dict[str, int] = Field(description="'VERDICT reason' → rows")


class Check(_Response):
    """One readiness check."""

    ok: bool
    error: str | None
    reconnects: int | None = Field(
        description="ari: reconnections since start; workers: workers started again; else null"
    )


class RedisCheck(Check):
    """The Redis readiness check, naming the Redis that answers (gate/store/connect.py)."""

    mode: str = Field(description="single, sentinel or cluster")
    node: str = Field(
        description="the node decisions go to (with sentinels, the master in use; in a "
        "cluster, the master that answered the last decision)"
    )
    failovers: int = Field(description="changes of master followed since start")
    restarts: int = Field(description="restarts of the embedded Redis begun by callgate run")
    redirects: dict[str, int] = Field(
        description="Redis Cluster redirections followed since start, by kind (moved, ask, "
        "tryagain)"
    )


class Health(_Response):
    """The process is up."""

    status: Literal["up"]
    version: str
    config_version: str
    uptime_s: float


class Ready(_Response):
    """Whether the gate can decide: Redis answers and, with [ari], ARI is connected."""

    ready: bool
    config_version: str
    checks: dict[str, RedisCheck | Check] = Field(
        description="redis; ari when configured; workers with run --workers"
    )


# --- conversions ---------------------------------------------------------------------------


def decision_out(
    decision: Decision, version: str, rules: list[RuleOutcomeOut] | None = None
) -> DecisionOut:
    return DecisionOut(
        verdict=decision.verdict,
        reason=decision.reason,
        rule=decision.rule,
        retry_after_s=retry_seconds(decision.retry_after_s),
        destination=decision.e164 or None,
        shadow=list(decision.shadow),
        config_version=version,
        rules=rules,
    )


def rule_outcomes(rules: Iterable[RuleOutcome]) -> list[RuleOutcomeOut]:
    return [
        RuleOutcomeOut(rule=r.rule, outcome=r.outcome, detail=r.detail, source=r.source)
        for r in rules
    ]


def _time_ms(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value and value.isdigit() else None


def list_info(
    raw: Mapping[str, str], tenant: str, campaign: str | None, again: str = "in replace mode"
) -> ListInfo:
    """``ListAdmin.info`` as an admin reads it: typed, without the storage internals.
    ``again`` is how the reader imports the list again, whole (a note names it)."""
    scope = ListScope(raw["scope"])
    switch = None
    if raw.get("switch_version"):
        version, groups = _int(raw["switch_version"]), _int(raw.get("switch_groups"))
        source = raw.get("switch_source") or None
        switch = ListSwitch(
            version=version,
            deciding_groups=groups,
            slot_groups=SLOT_GROUPS,
            source=source,
            note=switch_note(version, groups, source, again),
        )
    return ListInfo(
        name=raw["name"],
        kind=ListKind(raw["kind"]),
        scope=scope,
        tenant=tenant if scope is not ListScope.GLOBAL else None,
        campaign=campaign if scope is ListScope.CAMPAIGN else None,
        entries=_int(raw.get("entries")),
        hashed=raw.get("hashed") == "yes",
        refreshed_at=_time_ms(raw.get("refreshed_at")),
        imported_at=_time_ms(raw.get("imported_at")),
        source=raw.get("source") or None,
        importer=raw.get("importer") or None,
        sha256=raw.get("sha256") or None,
        unfinished_switch=switch,
    )


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _retry(text: str) -> int | None:
    """``retry_after_s`` as stored (a decimal, or "" for none); None also for a value
    callgate did not write (an entry set by hand)."""
    try:
        seconds = float(text) if text else None
    except ValueError:
        return None
    return retry_seconds(seconds) if seconds is not None and 0 <= seconds < 1e12 else None


def _pairs(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.rpartition("=") if "=" in item else item.rpartition("@")
        out[name] = _int(value)
    return out


def audit_record(record: Mapping[str, str]) -> AuditRecord:
    """A stored audit entry (flat strings) as a typed record."""
    retry = record.get("retry_after_s") or ""
    return AuditRecord(
        id=record.get("id", ""),
        time=datetime.fromtimestamp(_int(record.get("ts")) / 1000, UTC),
        verdict=record.get("verdict", ""),
        reason=record.get("reason", ""),
        rule=record.get("rule", ""),
        door=record.get("door", ""),
        tenant=record.get("tenant", ""),
        campaign=record.get("campaign", ""),
        trunk=record.get("trunk", ""),
        **{"class": record.get("class", "")},
        number=record.get("number", ""),
        caller_id=record.get("caller_id", ""),
        channel=record.get("channel", ""),
        config_version=record.get("config", ""),
        packs=[p for p in record.get("packs", "").split(",") if p],
        lists=_pairs(record.get("lists", "")),
        counters=_pairs(record.get("counters", "")),
        shadow=[s for s in record.get("shadow", "").split(",") if s],
        retry_after_s=_retry(retry),
        latency_us=_int(record.get("latency_us")),
        redis_us=_int(record.get("redis_us")),
    )


# --- parsing, with one-line errors ------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    """``body`` (JSON bytes) as ``model``, or a ``RequestError`` naming the field; a key
    given twice in an object is refused (400 naming it), as a repeated query parameter is."""
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise request_error(exc) from None
    # jiter keeps the last of a repeated key without a word; read once more to find one
    # (the body is valid JSON within jiter's nesting limit by now: no RecursionError).
    json.loads(body, object_pairs_hook=_members_once)
    return parsed


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members; ``RequestError`` for a key given twice (which value was
    meant is not ours to guess)."""
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise RequestError(400, f"{key}: given more than once; give it once")
        members[key] = value
    return members


def query_names(model: type[BaseModel] | None) -> tuple[str, ...]:
    """The query parameters ``model`` reads, as a client spells them (``class``, not
    ``traffic_class``); none without a model."""
    if model is None:
        return ()
    return tuple(field.alias or name for name, field in model.model_fields.items())


def check_query(model: type[BaseModel] | None, query: Mapping[str, str]) -> None:
    """400 naming the first parameter of ``query`` that ``model`` does not read, and the
    ones it does: a typo (``?tenent=acme``) must not pass for an unfiltered answer."""
    accepted = query_names(model)
    for key in query:
        if key not in accepted:
            name = key if key.isidentifier() else repr(key)  # one line, whatever was sent
            use = f"use {', '.join(accepted)}" if accepted else "this route takes none"
            raise RequestError(400, f"{name}: unknown query parameter; {use}")


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    """Query parameters as ``model``; a parameter given more than once is refused (400
    naming it: which one was meant is not ours to guess), and so is one it does not read
    (``check_query``)."""
    check_query(model, query)
    seen: set[str] = set()
    for key, _ in query.items():  # a MultiDict (aiohttp's request.query) lists each repeat
        if key in seen:
            raise RequestError(400, f"{key}: given more than once; give it once")
        seen.add(key)
    try:
        return model.model_validate(dict(query))
    except ValidationError as exc:
        raise request_error(exc) from None


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "list_type": "a list",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "dict_type": "a JSON object",
}


def request_error(exc: ValidationError) -> RequestError:
    """The first problem of ``exc`` as one line naming the field."""
    error = exc.errors(include_url=False)[0]
    kind, loc, ctx = error["type"], tuple(error["loc"]), error.get("ctx", {})
    where = _where(loc)
    given = error.get("input")
    if kind == "json_invalid":
        return RequestError(400, f"the body is not JSON ({ctx.get('error', error['msg'])})")
    if not where:
        return RequestError(400, f"the body must be a JSON object, got {_short(given)}")
    if kind == "missing":
        return RequestError(400, f"{where}: is required")
    if kind == "extra_forbidden":
        return RequestError(400, f"{where}: unknown field")
    if kind == "too_long" and loc == ("numbers",) and isinstance(given, list):
        return RequestError(
            413, f"{where}: {len(given)} numbers; at most {ctx['max_length']} per request"
        )
    if kind == "too_short":
        return RequestError(400, f"{where}: expected a non-empty list")
    if kind == "string_pattern_mismatch":
        return RequestError(400, f"{where}: {_short(given)} must be {IDENT_TEXT}")
    if kind == "string_too_long":
        return RequestError(400, f"{where}: longer than {ctx['max_length']} characters")
    if kind == "string_too_short":
        return RequestError(400, f"{where}: must not be empty")
    if kind in _EXPECTED:
        return RequestError(400, f"{where}: expected {_EXPECTED[kind]}, got {_short(given)}")
    if kind in ("enum", "literal_error"):
        return RequestError(400, f"{where}: must be {ctx.get('expected')}, got {_short(given)}")
    return RequestError(400, f"{where}: {error['msg']}")


def json_of(model: BaseModel) -> bytes:
    """The model as JSON (by alias: ``class``, ``list``)."""
    return model.model_dump_json(by_alias=True).encode()


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)
