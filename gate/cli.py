"""The ``callgate`` command: run the gate, check numbers, manage lists and config.

Contract: a user mistake (bad argument, bad number, bad config, unreachable Redis for an
admin command) prints ONE line ``callgate: error: …`` on stderr and exits with status 2;
never a traceback. A decision is printed on stdout and exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, NoReturn, TypeAlias

from prometheus_client import disable_created_metrics
from redis.exceptions import RedisError

from gate import __version__
from gate.config.loader import Config, LoggingConfig, default_config_path, load_config
from gate.core.engine import window_text
from gate.core.errors import GateError, InputError, StoreError
from gate.core.model import IDENT_RE, Attempt, TrafficClass
from gate.core.numbers import Destination, ShortCode, classify
from gate.core.params import seconds_text
from gate.lists.admin import ListAdmin
from gate.lists.formats import (
    FORMATS,
    Batch,
    Digest,
    Rejected,
    count_lines,
    csv_dialect,
    open_lines,
    read_batches,
)
from gate.lists.progress import importer, progress
from gate.lists.scrub import scrub as scrub_leads
from gate.ops.audit import FIELDS as AUDIT_FIELDS
from gate.ops.audit import follow, read_range
from gate.ops.logs import configure_logging
from gate.ops.reload import request_reload
from gate.runtime import (
    METRICS_EVERY_S,
    StasisLeadership,
    WorkerRole,
    Workers,
    WorkersStasis,
    open_gate,
    worker_expositions,
)
from gate.service import Evaluation, Gate, wait_event
from gate.store.client import translate_error

__all__ = ["main"]

log = logging.getLogger("callgate")
EXIT_USAGE = 2
# Admin commands are not on the call path: give Redis time, but not forever.
ADMIN_DEADLINE_S = 5.0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the contract above)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"callgate: error: {message} (see callgate --help)\n")


# The subcommands of one parser (argparse has no public name for this type).
Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _ident(value: str) -> str:
    if not IDENT_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return value


def _when(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--at {value!r} is not ISO-8601 (e.g. 2026-12-01T10:30+01:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def _build_parser() -> _Parser:
    parser = _Parser(prog="callgate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        type=Path,
        help="config file (default: $CALLGATE_CONFIG, "
        "./config/callgate.toml, /etc/callgate/callgate.toml)",
    )
    parser.add_argument("--version", action="version", version=f"callgate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _run_parsers,
        _check_parser,
        _list_parsers,
        _consent_parsers,
        _event_parsers,
        _scrub_parser,
        _audit_parsers,
        _config_parsers,
    ):
        add(commands)
    return parser


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"--workers {value!r}: expected a number of 1 to 64")
    return int(value)


def _run_parsers(commands: Commands) -> None:
    run = commands.add_parser(
        "run",
        help="serve the doors (FastAGI; Stasis with [ari]) and HTTP until SIGTERM/SIGINT",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="worker processes serving the doors (default 1); e.g. the number of cores",
    )
    run.add_argument("--worker", help=argparse.SUPPRESS)  # set by the parent of --workers
    commands.add_parser("reload", help="make the running gate re-read its config and packs")


def _check_parser(commands: Commands) -> None:
    check = commands.add_parser("check", help="decide one call, as the gate would")
    check.add_argument("number")
    _scope_args(check)
    check.add_argument("--trunk", type=_ident, default=None)
    check.add_argument(
        "--caller-id",
        default=None,
        help="caller ID to present (omitted: caller-ID rules are not checked)",
    )
    check.add_argument(
        "--class", dest="traffic_class", default="campaign", choices=[c.value for c in TrafficClass]
    )
    check.add_argument("--at", type=_when, help="decide as of this ISO-8601 time (default now)")
    check.add_argument(
        "--record",
        action="store_true",
        help="count the attempt if allowed (default: evaluate only)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--explain", action="store_true", help="show each rule and its outcome")


def _list_parsers(commands: Commands) -> None:
    lists = commands.add_parser("list", help="manage block and allow lists")
    actions = lists.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name in ("add", "remove"):
        sub = actions.add_parser(name, help=f"{name} numbers")
        sub.add_argument("list")
        sub.add_argument("numbers", nargs="+", metavar="NUMBER")
        _scope_args(sub)
    for name, text in (("count", "number of entries"), ("export", "print a plain list")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("list")
        _scope_args(sub)
    imp = actions.add_parser("import", help="add the numbers of a file (one a line, or CSV)")
    imp.add_argument("list")
    imp.add_argument("file", type=Path)
    imp.add_argument("--column", help="CSV/TSV column: a header name or a 1-based index")
    imp.add_argument("--rejects", type=Path, help="also write rejected lines to this file")
    imp.add_argument(
        "--refreshed-at",
        type=_when,
        help="when the file was produced (a scrub's date; default now)",
    )
    imp.add_argument(
        "--format",
        choices=FORMATS,
        default="lines",
        help="lines (default), csv, us-dnc (area-code files), fr-scrub "
        "(Telephone;Identifiant;result)",
    )
    imp.add_argument("--keep", help="fr-scrub: comma-separated result values to keep")
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument(
        "--replace",
        action="store_true",
        help="the file is the whole list: build it beside the live one, switch",
    )
    mode.add_argument(
        "--remove", action="store_true", help="remove the file's numbers (a deletions change file)"
    )
    _scope_args(imp)
    info = actions.add_parser("info", help="entries and metadata (refreshed_at, source)")
    info.add_argument("list")
    _scope_args(info)


def _consent_parsers(commands: Commands) -> None:
    consent = commands.add_parser("consent", help="record or revoke consents")
    consent_actions = consent.add_subparsers(dest="action", required=True, parser_class=_Parser)
    grant = consent_actions.add_parser(
        "add", help="record prior consent (granted now or --granted-at)"
    )
    grant.add_argument("numbers", nargs="+", metavar="NUMBER")
    grant.add_argument(
        "--list",
        default="consent",
        help="consent list (default consent; consent_outside_hours for hours)",
    )
    grant.add_argument("--granted-at", type=_when)
    grant.add_argument("--expires", type=_when)
    _scope_args(grant)
    revoke = consent_actions.add_parser("revoke", help="consent withdrawn: remove it, red-list")
    revoke.add_argument("numbers", nargs="+", metavar="NUMBER")
    revoke.add_argument("--red-list", default="red")
    _scope_args(revoke)


def _event_parsers(commands: Commands) -> None:
    for event, text in (
        ("refusal", "the callee refused during a call: start the cool-off"),
        ("abandoned", "an abandoned call: start its cool-off"),
    ):
        sub = commands.add_parser(event, help=text)
        sub.add_argument("number")
        sub.add_argument("--at", type=_when, help="when it happened (default now)")
        _scope_args(sub)


def _scrub_parser(commands: Commands) -> None:
    scrub = commands.add_parser("scrub", help="what the gate would do with each lead of a file")
    scrub.add_argument("file", type=Path, help="leads: CSV/TSV/semicolon, plain, gzip or zip")
    scrub.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="the leads with verdict, reason, retry_after_s appended",
    )
    scrub.add_argument(
        "--column",
        default="1",
        help="the phone column: a header name, or a 1-based index (default 1)",
    )
    scrub.add_argument(
        "--header", action="store_true", help="the first row is a header (implied by a column name)"
    )
    scrub.add_argument(
        "--class", dest="traffic_class", default="campaign", choices=[c.value for c in TrafficClass]
    )
    scrub.add_argument("--caller-id", default=None)
    scrub.add_argument("--at", type=_when, help="decide as of this ISO-8601 time (default now)")
    _scope_args(scrub)


def _audit_parsers(commands: Commands) -> None:
    audit = commands.add_parser("audit", help="the audit trail of decisions")
    audit_actions = audit.add_subparsers(dest="action", required=True, parser_class=_Parser)
    tail = audit_actions.add_parser("tail", help="the latest decisions (newest last)")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="then wait for new ones")
    export = audit_actions.add_parser("export", help="decisions in a time range, streamed")
    export.add_argument("--since", type=_when)
    export.add_argument("--until", type=_when)
    export.add_argument("--tenant", type=_ident)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    why = audit_actions.add_parser("why", help="every decision about one number")
    why.add_argument("number")
    why.add_argument("--since", type=_when)


def _config_parsers(commands: Commands) -> None:
    config = commands.add_parser("config", help="configuration")
    config_actions = config.add_subparsers(dest="action", required=True, parser_class=_Parser)
    config_actions.add_parser("check", help="validate the config file and say what it enables")


def _scope_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", type=_ident, help="tenant (default: gate.default_tenant)")
    parser.add_argument("--campaign", type=_ident, default=None)


def _print_evaluation(evaluation: Evaluation, as_json: bool, explain: bool) -> None:
    decision = evaluation.decision
    if as_json:
        body: dict[str, object] = {
            "verdict": decision.verdict.value,
            "reason": decision.reason,
            "rule": decision.rule,
            "retry_after_s": decision.retry_after_s,
            "e164": decision.e164,
        }
        if decision.shadow:
            body["shadow"] = list(decision.shadow)
        if explain:
            body["rules"] = [
                {"rule": r.rule, "outcome": r.outcome, "detail": r.detail, "source": r.source}
                for r in evaluation.rules
            ]
        print(json.dumps(body, ensure_ascii=False))
        return
    retry = (
        f" retry_after={seconds_text(decision.retry_after_s)}s" if decision.retry_after_s else ""
    )
    shadow = f" (shadow: {', '.join(decision.shadow)})" if decision.shadow else ""
    print(f"{decision.verdict.value} {decision.reason}{retry} {decision.e164}{shadow}".rstrip())
    if explain:
        width = max(len(r.rule) for r in evaluation.rules)
        for row in evaluation.rules:
            source = f"  [{row.source}]" if row.source else ""
            print(f"  {row.rule:<{width}}  {row.outcome:<18} {row.detail}{source}".rstrip())


async def _check(config: Config, args: argparse.Namespace) -> int:
    attempt = Attempt(
        dialled=args.number,
        now=args.at or datetime.now(UTC),
        tenant=args.tenant or config.default_tenant,
        campaign=args.campaign or "",
        trunk=args.trunk or "",
        caller_id=args.caller_id,
        traffic_class=TrafficClass(args.traffic_class),
    )
    async with open_gate(config, records=args.record) as gate:
        evaluation = await gate.evaluate(attempt, record=args.record, door="cli")
    _print_evaluation(evaluation, args.json, args.explain)
    return 0


async def _list(config: Config, args: argparse.Namespace) -> int:
    tenant = args.tenant or config.default_tenant
    args.campaign = args.campaign or ""
    async with open_gate(config, ADMIN_DEADLINE_S) as gate:
        admin = ListAdmin(config.policy, gate.keyspace, gate.store)
        admin.rule(args.list)  # unknown list: fail before touching anything
        if args.action == "add":
            added = await admin.add(args.list, args.numbers, tenant, args.campaign)
            print(f"{added} added, {len(args.numbers) - added} already listed")
        elif args.action == "remove":
            removed = await admin.remove(args.list, args.numbers, tenant, args.campaign)
            print(f"{removed} removed, {len(args.numbers) - removed} were not listed")
        elif args.action == "count":
            print(await admin.count(args.list, tenant, args.campaign))
        elif args.action == "export":
            async for number in admin.export(args.list, tenant, args.campaign):
                print(number)
        elif args.action == "info":
            for name, value in (await admin.info(args.list, tenant, args.campaign)).items():
                if name == "refreshed_at" and value.isdigit():
                    value = datetime.fromtimestamp(int(value) / 1000, UTC).isoformat()
                print(f"{name}: {value}")
        else:
            return await _import(admin, args, tenant)
    return 0


async def _import(admin: ListAdmin, args: argparse.Namespace, tenant: str) -> int:
    rule = admin.rule(args.list)
    if args.replace and args.remove:
        raise InputError("--replace and --remove do not go together")
    rejects: IO[str] | None = None
    if args.rejects:
        try:
            rejects = args.rejects.open("w", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{args.rejects}: cannot write rejects file: {exc.strerror}") from exc

    def report(entry: Rejected) -> None:
        print(f"{args.file}:{entry.line_no}: rejected: {entry.why}", file=sys.stderr)
        if rejects is not None:
            rejects.write(f"{entry.line_no}\t{entry.why}\t{entry.text}\n")

    total = count_lines(args.file)
    digest = Digest()
    keep = frozenset(v.strip() for v in (args.keep or "").split(",") if v.strip())
    mode = "replace" if args.replace else "remove" if args.remove else "add"
    try:
        with progress(total, f"importing {args.file.name}") as advance:
            batches = read_batches(
                open_lines(args.file, digest),
                rule,
                admin.policy.default_region,
                args.format,
                args.column,
                keep,
            )

            def counted(batches: Iterator[Batch]) -> Iterator[Batch]:
                for batch in batches:
                    advance(batch.lines)
                    yield batch

            summary = await admin.import_batches(
                args.list,
                counted(batches),
                tenant,
                args.campaign,
                report,
                refreshed_at=args.refreshed_at,
                meta={"source": args.file.name, "importer": importer()},
                mode=mode,
                expected=total,
                checksum=digest,
            )
    finally:
        if rejects is not None:
            rejects.close()
    verb = {"add": "imported", "remove": "removed", "replace": "in the new version"}[mode]
    skipped = f", {summary.skipped} skipped (result not kept)" if summary.skipped else ""
    print(
        f"{summary.imported} {verb}, {summary.duplicates} duplicates, "
        f"{summary.rejected} rejected{skipped}"
    )
    return 0


async def _scrub(config: Config, args: argparse.Namespace) -> int:
    lines = open_lines(args.file)
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise InputError(f"{args.file}: no leads in the file")
    dialect = csv_dialect(first)
    header = [c.strip() for c in next(csv.reader([first], dialect))]
    named = not args.column.isdigit()
    if named:
        lowered = [c.lower() for c in header]
        if args.column.lower() not in lowered:
            raise InputError(f"{args.file}: no column named {args.column!r} in header {header!r}")
        column = lowered.index(args.column.lower())
    elif int(args.column) < 1:
        raise InputError(f"--column {args.column}: columns are numbered from 1")
    else:
        column = int(args.column) - 1
    has_header = named or args.header
    body = itertools.chain([] if has_header else [first], lines)
    rows = (row for row in csv.reader(body, dialect) if any(cell.strip() for cell in row))
    try:
        out = args.output.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"{args.output}: cannot write: {exc.strerror}") from exc
    with out:
        writer = csv.writer(out, dialect)
        if has_header:
            writer.writerow([*header, "verdict", "reason", "retry_after_s"])
        async with open_gate(config, ADMIN_DEADLINE_S) as gate:
            summary = await scrub_leads(
                gate,
                rows,
                column,
                writer.writerow,
                now=args.at or datetime.now(UTC),
                tenant=args.tenant or config.default_tenant,
                campaign=args.campaign or "",
                traffic_class=TrafficClass(args.traffic_class),
                caller_id=args.caller_id,
            )
    print(summary.text())
    return 0


async def _audit(config: Config, args: argparse.Namespace) -> int:
    namespace = config.redis.namespace
    async with open_gate(config, ADMIN_DEADLINE_S) as gate:
        client = gate.store.admin_client
        try:
            if args.action == "tail":
                latest = [
                    r
                    async for r in read_range(client, namespace, reverse=True, limit=max(args.n, 0))
                ]
                for record in reversed(latest):
                    print(_audit_line(record))
                last = latest[0]["id"] if latest else "$"
                for _ in range(10**9 if args.follow else 0):  # until interrupted
                    for record in await follow(client, namespace, last):
                        print(_audit_line(record), flush=True)
                        last = record["id"]
            elif args.action == "export":
                writer = csv.DictWriter(sys.stdout, ["id", *AUDIT_FIELDS], extrasaction="ignore")
                if args.format == "csv":
                    writer.writeheader()
                async for record in read_range(client, namespace, args.since, args.until):
                    if args.tenant and record.get("tenant") != args.tenant:
                        continue
                    if args.format == "csv":
                        writer.writerow(record)
                    else:
                        print(json.dumps(record, ensure_ascii=False))
            else:
                wanted = _audit_number(args.number, config, gate)
                found = 0
                async for record in read_range(client, namespace, args.since):
                    if record.get("number") == wanted:
                        print(_audit_line(record))
                        found += 1
                print(f"{found} decisions about {args.number}", file=sys.stderr)
        except (RedisError, OSError) as exc:
            raise translate_error(exc, gate.store.where) from exc
    return 0


def _audit_number(text: str, config: Config, gate: Gate) -> str:
    """How the audit trail names ``text``: its token (or E.164, or short-code digits)."""
    target = classify(text, config.policy.default_region)
    if isinstance(target, Destination):
        return gate.keyspace.token(target.e164)
    if isinstance(target, ShortCode):
        return target.digits
    raise InputError(f"number {text!r}: {target.why}")


def _audit_line(record: Mapping[str, str]) -> str:
    when = datetime.fromtimestamp(int(record.get("ts", "0")) / 1000, UTC).isoformat(
        timespec="seconds"
    )
    retry = f" retry_after={record['retry_after_s']}s" if record.get("retry_after_s") else ""
    return (
        f"{when} {record.get('verdict', '?')} {record.get('reason', '')}{retry} "
        f"door={record.get('door', '')} tenant={record.get('tenant', '')} "
        f"campaign={record.get('campaign', '')} number={record.get('number', '')} "
        f"channel={record.get('channel', '')}"
    )


async def _consent_or_event(config: Config, args: argparse.Namespace) -> int:
    tenant = args.tenant or config.default_tenant
    campaign = args.campaign or ""
    async with open_gate(config, ADMIN_DEADLINE_S) as gate:
        admin = ListAdmin(config.policy, gate.keyspace, gate.store)
        if args.command == "consent" and args.action == "add":
            if admin.rule(args.list).kind != "consent":
                raise InputError(f"list {args.list!r} is not a consent list")
            added = await admin.add(
                args.list, args.numbers, tenant, campaign, now=args.granted_at, expires=args.expires
            )
            print(f"{added} consents recorded, {len(args.numbers) - added} updated")
        elif args.command == "consent":
            added = await admin.revoke(args.numbers, tenant, campaign, args.red_list)
            print(f"{len(args.numbers)} consents revoked; {added} added to {args.red_list}")
        else:
            rules = await admin.record_event(
                args.command, args.number, tenant, args.at or datetime.now(UTC)
            )
            if not rules:
                raise InputError(
                    f"no enabled pack has a cool-off after a {args.command} for "
                    f"{args.number!r}; nothing recorded"
                )
            print(f"{args.command} recorded: {', '.join(rules)}")
    return 0


def _config_check(config: Config) -> int:
    policy = config.policy
    redis = config.redis.url or f"embedded, data in {config.redis.data_dir}"
    print(f"{config.path}: OK")
    print(f"  region {policy.default_region}, tenant {config.default_tenant}, redis {redis}")
    print(
        f"  lists: {', '.join(f'{r.name} ({r.kind}, {r.scope})' for r in policy.lists) or 'none'}"
    )
    caps = ", ".join(f"{c.id} ({c.limit} per {window_text(c.window_s)})" for c in policy.caps)
    print(f"  caps: {caps or 'none'}")
    for pack in policy.packs:
        print(f"  packs: {pack.id} {pack.version} ({', '.join(sorted(pack.regions))})")
    print(
        f"  fail mode: campaign {config.fail_mode.campaign.value}, "
        f"manual {config.fail_mode.manual.value}"
    )
    return 0


async def _run(config: Config, args: argparse.Namespace) -> int:
    if args.worker:
        return await _run_worker(config, WorkerRole.parse(args.worker))
    if args.workers > 1:
        return await _run_workers(config, args.workers, args.verbose)
    # The CLI's other commands need neither server.
    from agi.server import AgiServer
    from gate.ops.operations import Operations
    from gate.stasis.door import StasisGate

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_gate(config, records=True) as gate:
        try:
            await gate.store.ping()
        except StoreError as exc:
            log.warning("%s; decisions will get the fail mode until it answers", exc)
        server = AgiServer(
            gate, config.agi.host, config.agi.port, config.agi.header_timeout_s, config.agi.allow
        )
        try:
            await server.start()
        except OSError as exc:
            raise InputError(
                f"agi: cannot listen on {config.agi.host}:{config.agi.port}: "
                f"{exc.strerror}; change [agi] port or stop the other server"
            ) from exc
        stasis = StasisGate(gate, config.ari) if config.ari is not None else None
        if stasis is not None:
            stasis.start()
        if config.ari is not None:
            log.info("Stasis application %r via ARI at %s", config.ari.app, config.ari.url)
        ops = await Operations.start(gate, config, server, stasis)
        log.info(
            "callgate %s: FastAGI on agi://%s:%d/check, Redis %s, config %s (version %s)",
            __version__,
            config.agi.host,
            server.port,
            gate.store.where,
            config.path,
            gate.version,
        )
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        await ops.stop()
        if stasis is not None:
            await stasis.close()
        await server.stop()
    log.info("stopped")
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _run_worker(config: Config, role: WorkerRole) -> int:
    """One worker of ``run --workers N``: FastAGI on the shared port, Stasis if it leads,
    its metrics written for the parent; reloads on SIGHUP (the parent forwards it)."""
    from agi.server import AgiServer
    from gate.ops.metrics import Metrics
    from gate.ops.reload import Reloader
    from gate.stasis.door import StasisGate

    stop = _stop_on_signals()
    loop = asyncio.get_running_loop()
    disable_created_metrics()  # type: ignore[no-untyped-call]
    async with open_gate(config, records=True) as gate:
        agi = config.agi
        server = AgiServer(
            gate, agi.host, role.agi_port, agi.header_timeout_s, agi.allow, reuse_port=True
        )
        await server.start()
        metrics = Metrics()
        metrics.use_config(config, gate.version)
        metrics.doors.agi = server
        gate.observers.append(metrics)
        leadership = None
        if config.ari is not None:
            door = StasisGate(gate, config.ari)
            metrics.doors.stasis = door
            leadership = StasisLeadership(door, role.directory / "stasis.lock", stop)
            leadership.start()
        reloader = None
        if config.path is not None:
            reloader = Reloader(
                gate, config.path, on_swap=metrics.use_config, on_result=metrics.reload_result
            )
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
        log.info(
            "callgate %s worker %d: FastAGI on agi://%s:%d/check", __version__, role.index,
            agi.host, server.port,
        )  # fmt: skip
        while not await wait_event(stop, METRICS_EVERY_S):
            partial = role.metrics_path.with_suffix(".tmp")
            partial.write_bytes(metrics.exposition())
            partial.replace(role.metrics_path)  # the parent never reads half a file
        if leadership is not None:
            await leadership.close()
        await server.stop()
        if reloader is not None:
            loop.remove_signal_handler(signal.SIGHUP)
            await reloader.close()
        gate.observers.remove(metrics)
    return 0


async def _run_workers(config: Config, count: int, verbose: bool) -> int:
    """The parent of ``run --workers N``: the workers, supervised; HTTP, metrics (theirs
    summed with its own) and reload (forwarded to them) in this process."""
    from gate.ops.operations import Operations

    stop = _stop_on_signals()
    async with open_gate(config, records=True) as gate:  # the embedded Redis, once
        # The port, held (bound, not listening) while the workers run: taken by another
        # server, it fails here, once; 0 becomes one free port, the same for every worker.
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            reserved.bind((config.agi.host, config.agi.port))
        except OSError as exc:
            reserved.close()
            raise InputError(
                f"agi: cannot listen on {config.agi.host}:{config.agi.port}: "
                f"{exc.strerror}; change [agi] port or stop the other server"
            ) from exc
        port = int(reserved.getsockname()[1])
        directory = Path(tempfile.mkdtemp(prefix="callgate-workers-"))
        command = [sys.executable, "-m", "gate.cli", "--config", str(config.path)]
        workers = Workers([*command, *(["-v"] if verbose else []), "run"], count, directory, port)
        stasis = WorkersStasis(directory) if config.ari is not None else None
        try:
            workers.start()
            ops = await Operations.start(gate, config, None, stasis)
            ops.metrics.doors.stasis = None  # the workers report their doors themselves
            ops.metrics.workers = lambda: worker_expositions(directory)
            if ops.reloader is not None:  # a reload here (SIGHUP, API) reloads the workers
                swapped = ops.reloader.on_swap

                def forward(new: Config, version: str) -> None:
                    if swapped is not None:
                        swapped(new, version)
                    workers.signal(signal.SIGHUP)

                ops.reloader.on_swap = forward
            log.info(
                "callgate %s: %d workers (pids %s) on agi://%s:%d/check, Redis %s, config %s, "
                "shared state in %s",
                __version__, count, " ".join(str(p.pid) for p in workers.processes.values()),
                config.agi.host, port, gate.store.where, config.path, directory,
            )  # fmt: skip
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(workers.supervise(stop))
                if stasis is not None:
                    tasks.create_task(stasis.follow(stop))
                await stop.wait()
            log.info("stopping: the workers finish their in-flight requests")
            await ops.stop()
        finally:
            await workers.stop()
            shutil.rmtree(directory, ignore_errors=True)
            reserved.close()
    log.info("stopped")
    return 0


async def _reload(config: Config) -> int:
    result = await request_reload(config)
    change = "unchanged" if not result.changed else f"was {result.previous}"
    print(f"reloaded: config version {result.version} ({change})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    configure_logging(LoggingConfig(), args.verbose)
    try:
        config = load_config(args.config or default_config_path())
        configure_logging(config.logging, args.verbose)
        if args.command == "reload":
            return asyncio.run(_reload(config))
        if args.command == "config":
            return _config_check(config)
        if args.command == "check":
            return asyncio.run(_check(config, args))
        if args.command == "list":
            return asyncio.run(_list(config, args))
        if args.command in ("consent", "refusal", "abandoned"):
            return asyncio.run(_consent_or_event(config, args))
        if args.command == "scrub":
            return asyncio.run(_scrub(config, args))
        if args.command == "audit":
            return asyncio.run(_audit(config, args))
        return asyncio.run(_run(config, args))
    except GateError as exc:
        print(f"callgate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `callgate list export … | head`
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
