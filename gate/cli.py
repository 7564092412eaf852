"""The ``callgate`` command: run the gate, check numbers, manage lists and config.

Contract: a user mistake (bad argument, bad number, bad config, unreachable Redis for an
admin command) prints ONE line ``callgate: error: …`` on stderr and exits with status 2;
never a traceback. A decision is printed on stdout and exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, NoReturn

from gate import __version__
from gate._reader import IDENT_RE
from gate.config import Config, default_config_path, load_config
from gate.engine import window_text
from gate.errors import GateError, InputError, StoreError
from gate.lists import ListAdmin, Rejected, read_numbers
from gate.model import Attempt, TrafficClass
from gate.params import seconds_text
from gate.runtime import open_gate
from gate.service import Evaluation

__all__ = ["main"]

log = logging.getLogger("callgate")
EXIT_USAGE = 2
# Admin commands are not on the call path: give Redis time, but not forever.
ADMIN_DEADLINE_S = 5.0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the contract above)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"callgate: error: {message} (see callgate --help)\n")


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

    commands.add_parser("run", help="serve FastAGI (and later ARI) until SIGTERM/SIGINT")

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
    _scope_args(imp)
    info = actions.add_parser("info", help="entries and metadata (refreshed_at, source)")
    info.add_argument("list")
    _scope_args(info)

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

    for event, text in (
        ("refusal", "the callee refused during a call: start the cool-off"),
        ("abandoned", "an abandoned call: start its cool-off"),
    ):
        sub = commands.add_parser(event, help=text)
        sub.add_argument("number")
        sub.add_argument("--at", type=_when, help="when it happened (default now)")
        _scope_args(sub)

    config = commands.add_parser("config", help="configuration")
    config_actions = config.add_subparsers(dest="action", required=True, parser_class=_Parser)
    config_actions.add_parser("check", help="validate the config file and say what it enables")
    return parser


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
    async with open_gate(config) as gate:
        evaluation = await gate.evaluate(attempt, record=args.record)
    _print_evaluation(evaluation, args.json, args.explain)
    return 0


def _open_text(path: Path) -> Iterator[str]:
    """Lines of a text file, gzip-compressed or not, UTF-8 (with or without BOM)."""
    try:
        with path.open("rb") as probe:
            magic = probe.read(2)
        handle: IO[str]
        opener = gzip.open if magic == b"\x1f\x8b" else open
        handle = opener(path, "rt", encoding="utf-8-sig", newline="")  # closed by the with below
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    with handle:
        try:
            yield from handle
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


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

    try:
        entries = read_numbers(
            _open_text(args.file), rule, admin.policy.default_region, args.column
        )
        summary = await admin.import_entries(
            args.list,
            entries,
            tenant,
            args.campaign,
            report,
            refreshed_at=args.refreshed_at,
            source=args.file.name,
        )
    finally:
        if rejects is not None:
            rejects.close()
    print(
        f"{summary.imported} imported, {summary.duplicates} duplicates, {summary.rejected} rejected"
    )
    return 0


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


async def _run(config: Config) -> int:
    # The CLI's other commands need neither server.
    from agi.server import AgiServer
    from gate.stasis import StasisGate

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_gate(config) as gate:
        try:
            await gate.store.ping()
        except StoreError as exc:
            log.warning("%s; decisions will get the fail mode until it answers", exc)
        server = AgiServer(gate, config.agi.host, config.agi.port, config.agi.header_timeout_s)
        try:
            await server.start()
        except OSError as exc:
            raise InputError(
                f"agi: cannot listen on {config.agi.host}:{config.agi.port}: "
                f"{exc.strerror}; change [agi] port or stop the other server"
            ) from exc
        stasis = StasisGate(gate, config.ari) if config.ari is not None else None
        stasis_task = asyncio.create_task(stasis.run()) if stasis is not None else None
        if config.ari is not None:
            log.info("Stasis application %r via ARI at %s", config.ari.app, config.ari.url)
        log.info(
            "callgate %s: FastAGI on agi://%s:%d/check, Redis %s, config %s",
            __version__,
            config.agi.host,
            server.port,
            gate.store.where,
            config.path,
        )
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        if stasis is not None and stasis_task is not None:
            await stasis.stop()
            await stasis_task
        await server.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config or default_config_path())
        if args.command == "config":
            return _config_check(config)
        if args.command == "check":
            return asyncio.run(_check(config, args))
        if args.command == "list":
            return asyncio.run(_list(config, args))
        if args.command in ("consent", "refusal", "abandoned"):
            return asyncio.run(_consent_or_event(config, args))
        return asyncio.run(_run(config))
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
