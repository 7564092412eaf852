"""The callgate command: run the gate, check numbers, manage lists, consents and the audit trail.

Contract:
- A user mistake (bad argument, bad number, bad config, unknown tenant or list, Redis
  unreachable for an admin command) prints ONE line ``callgate: error: …`` on stderr
  naming the option or the input, and exits 2; never a traceback.
- ``check`` exits with its verdict so scripts can branch on it: 0 ALLOW, 3 BLOCK,
  4 DEFER. Every other command exits 0 when it did what it was asked.
- ``--json`` prints what the admin API answers (the same models, gate/ops/models.py): one
  JSON object, or JSON Lines for a stream of records.
- An audit listing that Redis fails once records were written (stopped, frozen: each
  read waits at most ``READ_WAIT_S``; or gone) never passes for whole: its output ends
  with the line saying it is incomplete (JSON Lines ``{"error": …}``, CSV the row
  ``error,…``; gate/ops/search.py ``incomplete``), and the error line says so (exit 2).
  A CSV export's header is written once Redis answered.
- A closed pipe (``callgate audit export | head -1``) ends the command quietly with
  status 0; Ctrl-C says how far a long command got and exits 130; SIGTERM (``kill``,
  ``timeout``, a stopping unit) says it too, then ends the process by SIGTERM (``run``
  stops serving).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import errno
import json
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import uvloop
from redis.exceptions import RedisError

from gate import __version__
from gate.config.files import DEFAULT_STATE_DIR, write_init
from gate.config.loader import Config, LoggingConfig, default_config_path, load_config
from gate.core.engine import record_time_error, window_text
from gate.core.errors import GateError, InputError, OutputError, StoreError, Term, Wording
from gate.core.model import IDENT_RE, Attempt, TrafficClass, Verdict
from gate.core.numbers import BadNumber, classify
from gate.core.params import retry_seconds
from gate.core.policy import Policy
from gate.lists.admin import EVENTS, ImportSummary, ListAdmin, unrecorded
from gate.lists.formats import (
    FORMATS,
    Batch,
    Digest,
    Rejected,
    count_lines,
    open_lines,
    read_batches,
    rereadable,
)
from gate.lists.progress import importer, progress
from gate.lists.scrub import output_target, scrub_file
from gate.ops.audit import Follower, read_range
from gate.ops.logs import configure_logging
from gate.ops.reload import config_version, request_reload
from gate.runtime import (
    METRICS_EVERY_S,
    InstanceLock,
    StasisLeadership,
    StoppedStarting,
    WorkerRole,
    Workers,
    WorkersStasis,
    check_version,
    describe_redis,
    freeze_heap,
    keeping_state,
    make_state_dir,
    open_gate,
    stasis_lock_path,
)
from gate.service import Evaluation, Gate, wait_event
from gate.store.client import translate_error
from gate.store.migrate import legacy_keys_present, migrate

# The API's models (pydantic) and the audit search are imported by the commands that print
# them (check --json, list count --json, list info, scrub --json, audit): the others
# start without them.
if TYPE_CHECKING:
    from gate.ops.models import AuditRecord

__all__ = ["EXIT_BLOCK", "EXIT_DEFER", "EXIT_USAGE", "main"]

log = logging.getLogger("callgate")
EXIT_USAGE = 2
EXIT_BLOCK = 3
EXIT_DEFER = 4
EXIT_INTERRUPTED = 130
_VERDICT_EXIT = {Verdict.ALLOW: 0, Verdict.BLOCK: EXIT_BLOCK, Verdict.DEFER: EXIT_DEFER}
# The commands that decide calls (or vouch for a config that will): they check that the
# packs' holiday calendars are the holidays package's. The others (lists, consent, events,
# audit, migrate) never read a calendar and start without that package (about 130 ms).
DECIDING = frozenset({"check", "config", "reload", "run", "scrub"})
# Admin commands are not on the call path: give Redis time, but not forever.
ADMIN_DEADLINE_S = 5.0
# The times a command may name (far from datetime's limits).
EARLIEST_YEAR, LATEST_YEAR = 2000, 2199
# How an error of shared code names an option here: by its flag (gate/ops/wording.py has
# the API's and the console's words).
CLI_WORDING: Wording = {
    "allow_empty": Term("--allow-empty", "pass --allow-empty"),
    "campaign": Term("--campaign", "pass --campaign"),
    "column": Term("--column", "pass --column"),
    "expires": Term("--expires", "pass --expires"),
    "format": Term("--format", "pass --format"),
    "granted_at": Term("--granted-at", "pass --granted-at"),
    "keep": Term("--keep", "pass --keep RESULT"),
    "list_import": Term("callgate list import", "callgate list import {list} FILE"),
    "phone_column": Term("--column", "pass --column"),
    "refreshed_at": Term("--refreshed-at", "pass --refreshed-at"),
    "replace": Term("--replace", "leave out --replace"),
}

DESCRIPTION = """\
callgate decides, before each outbound call leaves Asterisk, whether it may go:
ALLOW, BLOCK or DEFER, with a stable reason (red lists, consent, calling hours,
frequency caps, trunk CPS, caller ID).

Times (--at, --since, --expires…) are ISO-8601 with a UTC offset, such as
2026-12-01T10:30+01:00 or 2026-12-01T09:30Z; a date alone (2026-12-01) is midnight UTC.
"""
EPILOG = """\
examples:
  callgate init /etc/callgate                   write a config, the dialplan include…
  callgate config check                         validate the config, say what it enables
  callgate list add red +33612345678            an opt-out, enforced at the next call
  callgate check "06 12 34 56 78" --explain     what the gate would decide, and why
  callgate run                                  serve FastAGI (and ARI, HTTP) until stopped

exit status: 0 done (check: ALLOW), 3 BLOCK, 4 DEFER (check only), 2 a mistake in
the command, the config or the input, or Redis unreachable (one line on stderr),
130 interrupted.

The config is --config FILE, else $CALLGATE_CONFIG, else ./config/callgate.toml, else
/etc/callgate/callgate.toml. `callgate COMMAND --help` shows a command's options.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the contract above)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"callgate: error: {message} (see {self.prog} --help)\n")


# The subcommands of one parser (argparse has no public name for this type).
Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _input_path(text: str) -> Path:
    """An input FILE argument: ``-`` is standard input (read once, then from a copy)."""
    return Path("/dev/stdin") if text == "-" else Path(text)


def _ident(value: str) -> str:
    if not IDENT_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return value


def _when(value: str) -> datetime:
    """An ISO-8601 time with an offset, or a date (midnight UTC); argparse names the option."""
    example = "e.g. 2026-12-01 or 2026-12-01T10:30+01:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        detail = f" ({exc})" if "range" in str(exc) else ""
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date or an ISO-8601 time{detail}; {example}"
        ) from None
    if not EARLIEST_YEAR <= parsed.year <= LATEST_YEAR:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not between {EARLIEST_YEAR} and {LATEST_YEAR}"
        )
    if parsed.tzinfo is None:
        if "T" not in value.upper() and " " not in value:
            return parsed.replace(tzinfo=UTC)  # a date alone: midnight UTC (said in --help)
        raise argparse.ArgumentTypeError(
            f"{value!r} has no UTC offset; say which time zone, e.g. {value}+01:00 or {value}Z"
        )
    return parsed


def _actions(commands: Commands, name: str, summary: str) -> Commands:
    """A command whose ACTION subcommands the caller adds (``config check``, ``list add``…)."""
    return _add(commands, name, summary).add_subparsers(
        dest="action", required=True, parser_class=_Parser, metavar="ACTION"
    )


def _add(commands: Commands, name: str, summary: str, examples: str = "", **kw: object) -> _Parser:
    """A subcommand with its one-line summary, a description and examples."""
    epilog = "examples:\n" + examples if examples else None
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,  # type: ignore[arg-type]
    )


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="callgate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: $CALLGATE_CONFIG, ./config/callgate.toml, "
        "/etc/callgate/callgate.toml)",
    )
    parser.add_argument("--version", action="version", version=f"callgate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND"
    )
    for add in (
        _init_parser,
        _config_parsers,
        _run_parsers,
        _check_parser,
        _list_parsers,
        _consent_parsers,
        _event_parsers,
        _scrub_parser,
        _audit_parsers,
        _migrate_parser,
    ):
        add(commands)
    return parser


def _json_flag(parser: argparse.ArgumentParser, what: str = "one JSON object") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} (as the API does)")


def _scope_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant",
        type=_ident,
        metavar="T",
        help="tenant (default: gate.default_tenant; unknown tenants are refused)",
    )
    parser.add_argument(
        "--campaign",
        type=_ident,
        default=None,
        metavar="C",
        help="campaign (per-campaign lists and caps need it)",
    )


def _class_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--class",
        dest="traffic_class",
        default="campaign",
        choices=[c.value for c in TrafficClass],
        help="who dials: campaign (a dialer, the default) or manual (an agent by hand)",
    )


def _init_parser(commands: Commands) -> None:
    init = _add(
        commands,
        "init",
        "write a config, the dialplan include and the env file into a directory",
        "  callgate init /etc/callgate\n"
        "  callgate init ./gate --state-dir ./gate/state --copy-packs\n\n"
        "Existing files are never overwritten (they are listed as kept).",
    )
    init.add_argument("directory", type=Path, metavar="DIR", help="where to write (created)")
    init.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where the gate keeps its state (default {DEFAULT_STATE_DIR})",
    )
    init.add_argument(
        "--copy-packs",
        action="store_true",
        help="copy the rule packs into DIR/packs to edit them (default: use the shipped ones)",
    )


def _config_parsers(commands: Commands) -> None:
    actions = _actions(commands, "config", "validate the configuration")
    check = _add(
        actions,
        "check",
        "validate the config file and its packs and say what they enable; writes nothing",
        "  callgate --config /etc/callgate/callgate.toml config check\n"
        "  callgate config check --connect      also test the Redis connection",
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to Redis (the embedded one is started if not running)",
    )


# The event loops ``run --loop`` offers (``asyncio.Runner``'s loop factories).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def _loop_name() -> str:
    """The running loop's package, for the startup line ("event loop uvloop")."""
    return f"event loop {type(asyncio.get_running_loop()).__module__.split('.')[0]}"


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of 1 to 64")
    return int(value)


def _how_many(value: str) -> int:
    """A count of records (``audit tail -n``): 0 or more (``-n -5`` showed nothing)."""
    if not value.isascii() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number, 0 or more")
    return int(value)


def _run_parsers(commands: Commands) -> None:
    run = _add(
        commands,
        "run",
        "serve the gate until SIGTERM or Ctrl-C: FastAGI, ARI with [ari], HTTP with [http]",
        "  callgate --config /etc/callgate/callgate.toml run\n"
        "  callgate run --workers 4             FastAGI in 4 processes on one port\n\n"
        "SIGHUP (systemctl reload callgate) re-reads the config and packs.",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="worker processes serving the doors (default 1); e.g. the number of cores",
    )
    run.add_argument(
        "--loop",
        choices=LOOPS,
        default="uvloop",
        help="the event loop serving the doors (default uvloop: 7-17 %% less CPU per call "
        "than asyncio's own loop through Asterisk)",
    )
    run.add_argument("--worker", help=argparse.SUPPRESS)  # set by the parent of --workers
    _add(
        commands,
        "reload",
        "make the running gate re-read its config and packs (through its admin API)",
        "  callgate reload",
    )


def _check_parser(commands: Commands) -> None:
    check = _add(
        commands,
        "check",
        "decide one call as the gate would (nothing is counted unless --record)",
        '  callgate check "06 12 34 56 78"\n'
        "  callgate check 0698765432 --caller-id 0162000000 --at 2026-12-01T13:30+01:00 "
        "--explain\n"
        "  callgate check 17 --class manual\n"
        '  if callgate check "$n" -q; then echo may call; fi\n\n'
        "exit status: 0 ALLOW, 3 BLOCK, 4 DEFER, 2 an error.",
    )
    check.add_argument("number", metavar="NUMBER", help="as dialled: national, +E.164, tel:")
    _scope_args(check)
    check.add_argument(
        "--trunk",
        type=_ident,
        default=None,
        metavar="K",
        help="the trunk the call would leave on (its calls-per-second cap)",
    )
    check.add_argument(
        "--caller-id",
        default=None,
        metavar="N",
        help="caller ID to present (omitted: caller-ID rules are not checked)",
    )
    _class_arg(check)
    check.add_argument(
        "--at", type=_when, metavar="TIME", help="decide as of this time (default now)"
    )
    check.add_argument(
        "--record",
        action="store_true",
        help="count the attempt if allowed and keep its evidence (default: evaluate only)",
    )
    output = check.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the decision as JSON")
    output.add_argument("-q", "--quiet", action="store_true", help="print nothing (exit status)")
    check.add_argument("--explain", action="store_true", help="show each rule and its outcome")


def _list_parsers(commands: Commands) -> None:
    actions = _actions(commands, "list", "manage block, allow and consent lists")
    for name, summary, example in (
        ("add", "add numbers to a list", "  callgate list add red +33612345678 0698765432"),
        ("remove", "remove numbers from a list", "  callgate list remove red +33612345678"),
    ):
        sub = _add(actions, name, summary, example)
        sub.add_argument("list", metavar="LIST")
        sub.add_argument("numbers", nargs="+", metavar="NUMBER")
        _scope_args(sub)
    count = _add(actions, "count", "how many entries a list has", "  callgate list count red")
    count.add_argument("list", metavar="LIST")
    _scope_args(count)
    _json_flag(count)
    info = _add(
        actions,
        "info",
        "a list's entries, kind, scope and last import",
        "  callgate list info dnc\n  callgate list info red --tenant acme --json",
    )
    info.add_argument("list", metavar="LIST")
    _scope_args(info)
    _json_flag(info)
    export = _add(
        actions,
        "export",
        "print a list's numbers, one a line (only with privacy.hash_numbers = false)",
        "  callgate list export red > red.txt\n\n"
        "With hashing on (the default) a list holds keyed hashes, not numbers: keep the\n"
        "files you import, and use `list info` and `check` to see what a list holds.",
    )
    export.add_argument("list", metavar="LIST")
    _scope_args(export)
    imp = _add(
        actions,
        "import",
        "import a file of numbers: one a line, a CSV column, or a registry's format",
        "  callgate list import red optouts.txt\n"
        "  callgate list import customers crm.csv --column phone --replace\n"
        "  callgate list import dnc 212.txt.gz --format us-dnc --refreshed-at 2026-11-01\n"
        "  callgate list import bloctel_ok retour.csv --format fr-scrub --keep NON_INSCRIT\n"
        "  callgate list import reassigned rnd.csv   # lines number,disconnected_on",
    )
    imp.add_argument("list", metavar="LIST")
    imp.add_argument(
        "file",
        type=_input_path,
        metavar="FILE",
        help="plain, gzip or zip; UTF-8 (a pipe too; - for standard input)",
    )
    imp.add_argument(
        "--column", metavar="NAME|N", help="CSV/TSV column: a header name or a 1-based index"
    )
    imp.add_argument(
        "--header",
        action="store_true",
        help="the first row is a header, not a number: skipped (implied by a column name)",
    )
    imp.add_argument(
        "--rejects",
        type=Path,
        metavar="FILE",
        help="also write rejected lines to this file (whole once the import is done; "
        "never the file imported)",
    )
    imp.add_argument(
        "--refreshed-at",
        type=_when,
        metavar="TIME",
        help=(
            "when the file was produced (a registry's or scrub's date, not later than now; "
            "default now)"
        ),
    )
    imp.add_argument(
        "--format",
        choices=FORMATS,
        default="lines",
        help="lines (default), csv, us-dnc (the US registry's area-code files), fr-scrub "
        "(a French scrubbing service's Telephone;Identifiant;result file)",
    )
    imp.add_argument(
        "--keep", metavar="RESULT", help="fr-scrub: comma-separated result values to keep"
    )
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument(
        "--replace",
        action="store_true",
        help="the file is the whole list: build it beside the live one, then switch",
    )
    mode.add_argument(
        "--remove", action="store_true", help="remove the file's numbers (a deletions file)"
    )
    imp.add_argument(
        "--allow-empty",
        action="store_true",
        help="with --replace: empty the list if the file gives no entry (else refused when "
        "lines are rejected or the list has entries)",
    )
    _scope_args(imp)
    _json_flag(imp, "the counts as one JSON object")


def _consent_parsers(commands: Commands) -> None:
    actions = _actions(commands, "consent", "record or revoke prior consents")
    grant = _add(
        actions,
        "add",
        "record prior consent (granted now, or at --granted-at)",
        "  callgate consent add 0698765432\n"
        "  callgate consent add 0698765432 --granted-at 2026-11-02 --expires 2027-11-02",
    )
    grant.add_argument("numbers", nargs="+", metavar="NUMBER")
    grant.add_argument(
        "--list",
        default="consent",
        metavar="LIST",
        help="consent list (default consent; consent_outside_hours for calling hours)",
    )
    grant.add_argument(
        "--granted-at", type=_when, metavar="TIME", help="when, not later than now (default now)"
    )
    grant.add_argument(
        "--expires",
        type=_when,
        metavar="TIME",
        help="when it lapses, after the grant (default never)",
    )
    _scope_args(grant)
    revoke = _add(
        actions,
        "revoke",
        "consent withdrawn: remove it from every consent list and red-list the number",
        "  callgate consent revoke 0698765432",
    )
    revoke.add_argument("numbers", nargs="+", metavar="NUMBER")
    revoke.add_argument(
        "--red-list", default="red", metavar="LIST", help="block list to add to (default red)"
    )
    _scope_args(revoke)


def _event_parsers(commands: Commands) -> None:
    for event, summary, example in (
        (
            "refusal",
            "the callee refused during a call: start the cool-off",
            "  callgate refusal 0612345678",
        ),
        (
            "abandoned",
            "an abandoned call (answered by a person, no agent): start its cool-off and "
            "count it toward the campaign's abandoned-call ceiling",
            "  callgate abandoned 02079460123 --campaign spring",
        ),
        (
            "answered",
            "a call answered by a person and put through to an agent: count it toward the "
            "campaign's abandoned-call ceiling (its live calls)",
            "  callgate answered 02079460123 --campaign spring",
        ),
    ):
        sub = _add(commands, event, summary, example)
        sub.add_argument("number", metavar="NUMBER")
        sub.add_argument("--at", type=_when, metavar="TIME", help="when it happened (default now)")
        sub.add_argument(
            "--tenant",
            type=_ident,
            metavar="T",
            help="tenant (default: gate.default_tenant; cool-offs are per tenant)",
        )
        if event != "refusal":
            sub.add_argument(
                "--campaign",
                type=_ident,
                metavar="C",
                help="the call's campaign (abandoned-call ceilings count per campaign)",
            )


def _scrub_parser(commands: Commands) -> None:
    scrub = _add(
        commands,
        "scrub",
        "what the gate would do with each lead of a file (nothing is counted)",
        "  callgate scrub leads.csv --column phone -o scrubbed.csv\n"
        "  callgate scrub leads.csv --column phone --caller-id 0162000000 "
        "--at 2026-12-01T10:00+01:00 -o out.csv --json",
    )
    scrub.add_argument(
        "file",
        type=_input_path,
        metavar="LEADS",
        help="CSV/TSV/semicolon, plain, gzip or zip (- for standard input)",
    )
    scrub.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="the leads with verdict, reason and retry_after_s as the three columns after "
        "the first row's (a shorter row padded with empty cells, a longer row's extra cells "
        "after them: no cell dropped); written whole, or not at all (a file: not standard "
        "output, a device or the leads file)",
    )
    scrub.add_argument(
        "--column",
        default="1",
        metavar="NAME|N",
        help="the phone column: a header name, or a 1-based index (default 1)",
    )
    scrub.add_argument(
        "--header", action="store_true", help="the first row is a header (implied by a name)"
    )
    _class_arg(scrub)
    scrub.add_argument(
        "--caller-id",
        default=None,
        metavar="N",
        help="caller ID the campaign presents (omitted: caller-ID rules are not checked)",
    )
    scrub.add_argument(
        "--at", type=_when, metavar="TIME", help="decide as of this time (default now)"
    )
    _scope_args(scrub)
    _json_flag(scrub, "the summary as one JSON object")


def _audit_parsers(commands: Commands) -> None:
    actions = _actions(
        commands, "audit", "the audit trail: the evidence of every recorded decision"
    )
    tail = _add(
        actions,
        "tail",
        "the latest decisions, newest last",
        "  callgate audit tail -n 50\n  callgate audit tail -f",
    )
    tail.add_argument("-n", type=_how_many, default=20, metavar="N", help="how many (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="then wait for new ones")
    _json_flag(tail, "JSON Lines, one record a line")
    export = _add(
        actions,
        "export",
        "decisions in a time range, oldest first, streamed",
        "  callgate audit export --since 2026-11-01 --until 2026-12-01 --format csv > nov.csv",
    )
    export.add_argument("--since", type=_when, metavar="TIME", help="from (default: the start)")
    export.add_argument("--until", type=_when, metavar="TIME", help="to (default: now)")
    export.add_argument("--tenant", type=_ident, metavar="T", help="only this tenant's decisions")
    export.add_argument(
        "--campaign", type=_ident, metavar="C", help="only this campaign's decisions"
    )
    export.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="jsonl: one JSON record a line (default); csv: with a header row, any text"
        " cell (tenant, campaign, reason, caller ID…) starting with = + - @ (or tab, CR)"
        " prefixed with ' so that a spreadsheet shows it instead of running it as a"
        " formula (a plain +number such as +33612345678 is kept)",
    )
    why = _add(
        actions,
        "why",
        "every decision about one number",
        '  callgate audit why "06 12 34 56 78" --since 2026-11-01',
    )
    why.add_argument("number", metavar="NUMBER")
    why.add_argument("--since", type=_when, metavar="TIME", help="from (default: the start)")
    _json_flag(why, "JSON Lines, one record a line")


def _migrate_parser(commands: Commands) -> None:
    _add(
        commands,
        "migrate",
        "move a store from the key layout of callgate before slot groups (lists, consents, "
        "counters, cool-offs, audit); stop the gates first",
        "  callgate migrate\n\nA store already in the current layout is left as it is.",
    )


# --- check -----------------------------------------------------------------------------------


def _print_evaluation(evaluation: Evaluation, version: str, args: argparse.Namespace) -> None:
    decision = evaluation.decision
    if args.quiet:
        return
    if args.json:
        from gate.ops.models import decision_out, json_of, rule_outcomes

        rules = rule_outcomes(evaluation.rules) if args.explain else None
        print(json_of(decision_out(decision, version, rules)).decode())
        return
    seconds = retry_seconds(decision.retry_after_s)  # as decision_out gives it
    retry = f" retry_after={seconds}s" if seconds is not None else ""
    shadow = f" (shadow: {', '.join(decision.shadow)})" if decision.shadow else ""
    print(f"{decision.verdict.value} {decision.reason}{retry} {decision.e164}{shadow}".rstrip())
    if args.explain:
        rows = evaluation.rules
        width = max(len(r.rule) for r in rows)
        for row in rows:
            source = f"  [{row.source}]" if row.source else ""
            print(f"  {row.rule:<{width}}  {row.outcome:<18} {row.detail}{source}".rstrip())


async def _check(config: Config, args: argparse.Namespace) -> int:
    clock = datetime.now(UTC)
    if args.record and args.at is not None and (why := record_time_error(args.at, clock)):
        raise InputError(f"--at with --record: {why}")
    attempt = Attempt(
        dialled=args.number,
        now=args.at or clock,
        tenant=args.tenant or config.default_tenant,
        campaign=args.campaign or "",
        trunk=args.trunk or "",
        caller_id=args.caller_id,
        traffic_class=TrafficClass(args.traffic_class),
    )
    async with open_gate(config, records=args.record) as gate:
        evaluation = await gate.evaluate(attempt, record=args.record, door="cli")
        version = gate.version
    _print_evaluation(evaluation, version, args)
    if evaluation.decision.reason == "invalid_number" and not args.quiet:
        # Why it is no number (the decision's reason only says that it is not), as
        # ``list add`` says it: on stderr, stdout keeps the decision alone.
        found = classify(args.number, config.policy.default_region)
        if isinstance(found, BadNumber):
            print(f"callgate: number {args.number!r}: {found.why}", file=sys.stderr)
    return _VERDICT_EXIT[evaluation.decision.verdict]


# --- lists -----------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _info_lines(info: dict[str, object]) -> Iterator[str]:
    for name, value in info.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        if isinstance(value, dict):  # an unfinished switch: its one-line note says it all
            value = value["note"]
        yield f"{name}: {value}"


def _unchecked_warning(policy: Policy, name: str, numbers: list[str]) -> str:
    """The warning of a ``list add`` of numbers no decision checks against the list."""
    regions = ", ".join(sorted(policy.list_regions(name) or ()))
    return (
        f"callgate: warning: list {name!r} is checked only for numbers of its packs' regions "
        f"({regions}): {', '.join(numbers)} added, but never checked against it"
    )


async def _list(config: Config, args: argparse.Namespace) -> int:
    tenant = args.tenant or config.default_tenant
    campaign = args.campaign or ""
    writes = args.action not in ("count", "export", "info")
    async with open_gate(config, ADMIN_DEADLINE_S, writes=writes) as gate:
        admin = ListAdmin(config.policy, gate.keyspace, gate.store)
        admin.key(args.list, tenant, campaign)  # unknown list or tenant: fail first
        if args.action == "add":
            added = await admin.add(args.list, args.numbers, tenant, campaign)
            print(f"{added} added, {len(args.numbers) - added} already listed")
            if unchecked := admin.unchecked(args.list, args.numbers):
                print(_unchecked_warning(config.policy, args.list, unchecked), file=sys.stderr)
        elif args.action == "remove":
            removed = await admin.remove(args.list, args.numbers, tenant, campaign)
            absent = len(args.numbers) - removed
            print(f"{removed} removed, {absent} {'was' if absent == 1 else 'were'} not listed")
        elif args.action == "count":
            entries = await admin.count(args.list, tenant, campaign)
            if args.json:
                from gate.ops.models import ListCount, json_of, list_info

                info = list_info(await admin.info(args.list, tenant, campaign), tenant, campaign)
                body = ListCount(
                    name=args.list, tenant=info.tenant, campaign=info.campaign, entries=entries
                )
                print(json_of(body).decode())
            else:
                print(entries)
        elif args.action == "export":
            async for number in admin.export(args.list, tenant, campaign):
                print(number)
        elif args.action == "info":
            from gate.ops.models import json_of, list_info

            again = f"with `{admin.reimport_command(args.list, tenant, campaign)}`"
            raw = await admin.info(args.list, tenant, campaign)
            info = list_info(raw, tenant, campaign, again)
            if args.json:
                print(json_of(info).decode())
            else:
                for line in _info_lines(info.model_dump(mode="json")):
                    print(line)
        else:
            return await _import(admin, args, tenant, campaign)
    return 0


async def _import_numbers(
    admin: ListAdmin,
    args: argparse.Namespace,
    tenant: str,
    campaign: str,
    report: Callable[[Rejected], None],
    advance: Callable[[int], None],
    digest: Digest,
    keep: frozenset[str],
    mode: str,
    total: int,
    source: Path,
    on_header: Callable[[int], None],
) -> ImportSummary:
    """``list import`` of a list of numbers (block, allow, consent) in ``args.format``, read
    from ``source`` (``args.file``, or its copy); ``on_header`` is told the line of a
    header row skipped."""
    batches = read_batches(
        open_lines(source, digest),
        admin.rule(args.list),
        admin.policy.default_region,
        args.format,
        args.column,
        keep,
        header=args.header,
        on_header=on_header,
    )

    def counted(batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            advance(batch.lines)
            yield batch

    return await admin.import_batches(
        args.list,
        counted(batches),
        tenant,
        campaign,
        report,
        refreshed_at=args.refreshed_at,
        meta={"source": args.file.name, "importer": importer()},
        mode=mode,
        expected=total,
        checksum=digest,
        allow_empty=args.allow_empty,
    )


class _Rejects:
    """The ``--rejects`` file of an import: written beside its place and renamed there once
    the import is done (whole, or not at all: an import interrupted or refused leaves
    none, and an existing one as it was); a stream (/dev/stderr, a named pipe) is written
    straight. A write that fails is an ``OutputError`` naming the option, saying ``left``
    (what became of the list)."""

    def __init__(self, path: Path, source: Path, left: str) -> None:
        self.path, self.left = path, left
        self.partial: str | None = None
        if _same_file(path, source):
            raise InputError(
                f"--rejects {path}: is the file imported, which it would overwrite; "
                "name another file"
            )
        try:
            if _not_a_file(path) is not None:
                self.file = path.open("a", encoding="utf-8")  # a shared file: its end
                return
            target, mode = output_target(path)
            fd, self.partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            self.target = target
            os.fchmod(fd, mode)
            self.file = os.fdopen(fd, "w", encoding="utf-8")
        except OSError as exc:
            self.discard()
            raise InputError(
                f"--rejects {path}: cannot write the rejects file there: {exc.strerror}"
            ) from exc

    def write(self, text: str) -> None:
        try:
            self.file.write(text)
        except OSError as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(
            f"--rejects {self.path}: cannot write: {exc.strerror or exc}; free some space "
            f"there, or write it elsewhere; import stopped: {self.left}"
        )

    def keep(self) -> None:
        """The import is done: the rejects file in its place."""
        try:
            self.file.close()
            if self.partial is not None:
                os.replace(self.partial, self.target)
                self.partial = None
        except OSError as exc:
            self.discard()
            raise InputError(
                f"--rejects {self.path}: cannot write: {exc.strerror or exc}; the import is "
                "done, its rejected lines are above"
            ) from exc

    def discard(self) -> None:
        """No rejects file (the partial one removed), unless ``keep`` put it in place."""
        if hasattr(self, "file"):
            with contextlib.suppress(OSError):
                self.file.close()
        if self.partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.partial)
            self.partial = None


async def _import(admin: ListAdmin, args: argparse.Namespace, tenant: str, campaign: str) -> int:
    rule = admin.rule(args.list)
    digest = Digest()
    keep = frozenset(v.strip() for v in (args.keep or "").split(",") if v.strip())
    mode = "replace" if args.replace else "remove" if args.remove else "add"
    left = {
        "replace": f"list {args.list!r} is unchanged (the new version was not switched in)",
        "add": "the numbers of the batches sent before the {stop} are on the list",
        "remove": "the numbers of the batches sent before the {stop} are removed",
    }[mode]
    rejects: _Rejects | None = None

    def report(entry: Rejected) -> None:
        print(f"{args.file}:{entry.line_no}: rejected: {entry.why}", file=sys.stderr)
        if rejects is not None:
            rejects.write(f"{entry.line_no}\t{entry.why}\t{entry.text}\n")

    if rule.kind == "reassigned" and (
        args.format != "lines" or args.column or args.header or keep or args.replace
    ):
        raise InputError(
            f"list {args.list!r} is a reassigned list: its file has lines "
            "number,disconnected_on (no --format, --column, --header, --keep or --replace)"
        )
    if args.header and args.format == "us-dnc":
        raise InputError(
            "--header: a us-dnc file has no header row; leave --header out, or give --format csv"
        )
    headers: list[int] = []  # the line of the header row skipped, if any
    if args.allow_empty and not args.replace:
        raise InputError("--allow-empty goes with --replace")
    if args.rejects:
        rejects = _Rejects(args.rejects, args.file, left.format(stop="error"))
    done = False
    try:
        with contextlib.ExitStack() as files:
            # A pipe is read once: counted, then read, from a copy (rereadable).
            source = files.enter_context(rereadable(args.file))
            total = count_lines(source)
            advance = files.enter_context(progress(total, f"importing {args.file.name}"))
            if rule.kind == "reassigned":
                summary = await admin.import_disconnects(
                    args.list,
                    open_lines(source, digest),
                    tenant,
                    campaign,
                    report,
                    refreshed_at=args.refreshed_at,
                    meta={"source": args.file.name, "importer": importer()},
                    mode=mode,
                    checksum=digest,
                    on_lines=advance,
                )
            else:
                summary = await _import_numbers(
                    admin,
                    args,
                    tenant,
                    campaign,
                    report,
                    advance,
                    digest,
                    keep,
                    mode,
                    total,
                    source,
                    headers.append,
                )
        done = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        said = left.format(stop="interruption")
        phase = admin.lists.phase.get(admin.key(args.list, tenant, campaign))
        if mode == "replace" and phase == "switched":
            said = f"list {args.list!r} is replaced (its new version was switched in)"
        elif mode == "replace" and phase == "switching":
            said = (
                f"list {args.list!r} may already use its new version (interrupted as it was "
                f"switched in): `callgate list info {args.list}` tells; the next import of "
                "the list completes the switch"
            )
        print(f"callgate: import interrupted: {said}", file=sys.stderr)
        raise
    finally:
        if rejects is not None and not done:
            rejects.discard()  # never a rejects file half written
    if rejects is not None:
        rejects.keep()
    if args.json:
        counts = {
            "imported": summary.imported,
            "duplicates": summary.duplicates,
            "rejected": summary.rejected,
            "skipped": summary.skipped,
            "lines": total,
            "mode": mode,
            "header_line": headers[0] if headers else None,  # the header row skipped
        }
        print(json.dumps(counts))
        return 0
    verb = {"add": "imported", "remove": "removed", "replace": "in the new version"}[mode]
    skipped = f", {summary.skipped} skipped (result not kept)" if summary.skipped else ""
    header = f", header row (line {headers[0]}) skipped" if headers else ""
    # A remove's "duplicates" are the numbers not listed (or given again), as list remove
    # says; "0 removed, 4 duplicates" read as if they were removed before.
    others = (
        f"{summary.duplicates} {'was' if summary.duplicates == 1 else 'were'} not listed"
        if mode == "remove"
        else _plural(summary.duplicates, "duplicate")
    )
    print(f"{summary.imported} {verb}, {others}, {summary.rejected} rejected{skipped}{header}")
    return 0


# --- consents and events ------------------------------------------------------------------------


async def _consent_or_event(config: Config, args: argparse.Namespace) -> int:
    tenant = args.tenant or config.default_tenant
    campaign = getattr(args, "campaign", None) or ""
    async with open_gate(config, ADMIN_DEADLINE_S, writes=True) as gate:
        admin = ListAdmin(config.policy, gate.keyspace, gate.store)
        if args.command == "consent" and args.action == "add":
            if admin.rule(args.list).kind != "consent":
                raise InputError(f"--list {args.list!r} is not a consent list")
            added = await admin.add(
                args.list, args.numbers, tenant, campaign, now=args.granted_at, expires=args.expires
            )
            print(f"{_plural(added, 'consent')} recorded, {len(args.numbers) - added} updated")
        elif args.command == "consent":
            added = await admin.revoke(args.numbers, tenant, campaign, args.red_list)
            print(
                f"{_plural(len(args.numbers), 'number')}: consents revoked; "
                f"{added} added to {args.red_list}"
            )
        else:
            record = await admin.record_event(
                args.command, args.number, tenant, args.at or datetime.now(UTC), None, campaign
            )
            why = unrecorded(args.command, args.number, record)
            if why is not None:
                raise why
            print(f"{args.command} recorded: {', '.join(record.rules)}")
            if record.uncounted:
                print(
                    f"callgate: not counted toward {', '.join(record.uncounted)} "
                    "(counted per campaign): give --campaign",
                    file=sys.stderr,
                )
            if record.expired:
                print(
                    f"callgate: too old for {', '.join(record.expired)}: not recorded there",
                    file=sys.stderr,
                )
    return 0


# --- scrub ----------------------------------------------------------------------------------


def _not_a_file(path: Path) -> str | None:
    """What ``path`` is when it exists and is no regular file of its own (a named pipe, a
    device such as /dev/null, a socket, or a process's stream such as /dev/stderr, which
    may be a shell's redirection to a file), else None: a file written beside it and
    renamed over it at the end would replace it (``/dev/null`` would become a regular
    file, ``2> errors.log`` be replaced and the messages after it lost)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # a new file (or one stat cannot see: the write says why)
    if stat.S_ISDIR(mode):
        return None
    if os.path.realpath(path).startswith("/proc/") or (
        stat.S_ISREG(mode) and os.path.realpath(path.parent) == "/dev"
    ):
        return "a process's stream"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a socket" if stat.S_ISSOCK(mode) else "a device"


def _same_file(path: Path, other: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(path, other)
    return False


def _scrub_output(output: Path, leads: Path) -> None:
    """Refuse, before any lead is read, an ``-o`` the scrub could not write at its end, or
    whose writing would destroy what is there: standard output (``-``: the scrub writes a
    file whole or not at all), a named pipe or a device (replaced by a regular file),
    the leads file itself."""
    if str(output) == "-":
        raise InputError(
            "-o -: a scrub writes a file (whole, or not at all), not standard output; name "
            "the file to write (e.g. -o scrubbed.csv)"
        )
    if (kind := _not_a_file(output)) is not None:
        raise InputError(
            f"-o {output}: is {kind}, not a file: the scrubbed file would replace it; name "
            "a file to write"
        )
    if _same_file(output, leads):
        raise InputError(
            f"-o {output}: is the leads file itself, which the scrubbed file would replace; "
            "write to another file"
        )
    if output.is_dir():
        raise InputError(
            f"-o {output}: is a directory; name the file to write "
            f"(e.g. -o {output / 'scrubbed.csv'})"
        )
    if not output.parent.is_dir():
        raise InputError(
            f"-o {output}: no directory {output.parent}; create it, or write elsewhere"
        )


async def _scrub(config: Config, args: argparse.Namespace) -> int:
    output: Path = args.output
    _scrub_output(output, args.file)
    # A pipe is read once: counted, then read, from a copy (rereadable).
    with rereadable(args.file) as source:
        total = count_lines(source)
        async with open_gate(config, ADMIN_DEADLINE_S) as gate:
            with progress(total, f"scrubbing {args.file.name}") as advance:
                done = 0

                def written(lines: int, rows: int) -> None:
                    nonlocal done
                    advance(lines - done)
                    done = lines

                summary = await scrub_file(
                    gate,
                    source,
                    output,
                    column=args.column,
                    header=args.header,
                    now=args.at or datetime.now(UTC),
                    tenant=args.tenant or config.default_tenant,
                    campaign=args.campaign or "",
                    traffic_class=TrafficClass(args.traffic_class),
                    caller_id=args.caller_id,
                    written=written,
                    fork=True,  # a one-shot command: its workers may be forked from it
                    output_name=f"-o {output}",
                )
    if args.json:
        from gate.ops.models import ScrubSummaryOut, VerdictCounts, json_of

        counts = VerdictCounts(**{v.value: summary.verdicts[v.value] for v in Verdict})
        out_model = ScrubSummaryOut(
            output=str(output),
            rows=summary.rows,
            counts=counts,
            unreadable=summary.verdicts["ERROR"],
            reasons=dict(summary.reasons.most_common()),
        )
        print(json_of(out_model).decode())
    else:
        print(f"{_plural(summary.rows, 'lead')} scrubbed into {output}")
        print(summary.text())
    return 0


# --- audit -----------------------------------------------------------------------------------


def _audit_line(record: AuditRecord) -> str:
    retry = f" retry_after={record.retry_after_s}s" if record.retry_after_s is not None else ""
    return (
        f"{record.time.isoformat(timespec='seconds')} {record.verdict} {record.reason}{retry} "
        f"door={record.door} tenant={record.tenant} campaign={record.campaign} "
        f"number={record.number} channel={record.channel}"
    )


async def _audit(config: Config, args: argparse.Namespace) -> int:
    from gate.ops import search
    from gate.ops.models import audit_record, json_of

    namespace = config.redis.namespace
    async with open_gate(config, ADMIN_DEADLINE_S) as gate:
        client = gate.store.admin_client
        where = gate.store.where
        # Each read someone waits on is bounded (READ_WAIT_S), never the whole export: a
        # frozen Redis is reported within it, not after the admin connections' timeout.
        read_wait = gate.store.answer_within
        as_json = getattr(args, "json", False)
        given = 0  # records written to stdout

        def show(record: AuditRecord) -> None:
            nonlocal given
            print(json_of(record).decode() if as_json else _audit_line(record), flush=True)
            given += 1

        try:
            if args.action == "tail":
                # The follower notes where each group stream ends before the latest are
                # read: a decision made in between is shown once, after them.
                follower = Follower(client, namespace, read_wait)
                try:
                    if args.follow:
                        await follower.start()
                except (RedisError, OSError) as exc:
                    raise translate_error(exc, where) from exc
                newest = read_range(
                    client, namespace, reverse=True, limit=args.n, read_wait=read_wait
                )
                latest = [audit_record(r) async for r in search.translated(newest, where)]
                for record in reversed(latest):
                    show(record)
                for _ in range(10**9 if args.follow else 0):  # until interrupted
                    try:
                        found = await follower.poll()
                    except (RedisError, OSError) as exc:
                        raise translate_error(exc, where) from exc
                    for stored in found:
                        show(audit_record(stored))
            elif args.action == "export":
                search.check_filter(args.since, args.until)
                records = search.search(
                    client,
                    namespace,
                    since=args.since,
                    until=args.until,
                    tenant=args.tenant,
                    campaign=args.campaign,
                    read_wait=read_wait,
                )
                as_json = args.format != "csv"
                writer = csv.writer(sys.stdout)
                async for record in search.translated(records, where):
                    if not as_json and given == 0:  # once Redis answered (as the API)
                        writer.writerow(search.CSV_HEADER)
                    if as_json:
                        print(json_of(record).decode())
                    else:
                        writer.writerow(search.csv_row(record))
                    given += 1
                if not as_json and given == 0:
                    writer.writerow(search.CSV_HEADER)
            else:
                wanted = search.number_key(args.number, gate)
                records = search.search(
                    client, namespace, since=args.since, number=wanted, read_wait=read_wait
                )
                async for record in search.translated(records, where):
                    show(record)
                print(f"{_plural(given, 'decision')} about {args.number}", file=sys.stderr)
        except StoreError as exc:
            if given == 0:
                raise  # nothing written: the error alone
            raise _cut_short(exc, given, f"audit {args.action}", as_json, args) from exc
    return 0


def _cut_short(
    error: StoreError, given: int, command: str, as_json: bool, args: argparse.Namespace
) -> StoreError:
    """A Redis failure once ``given`` records were written: what was written is ended
    with the line saying it is incomplete (JSON Lines: ``{"error": …}``; CSV: the row
    ``error,…``; a text listing has only the error on stderr), and the error to report
    says so too (exit 2)."""
    from gate.ops import search

    why = search.incomplete(given, error)
    if getattr(args, "format", "") == "csv":
        csv.writer(sys.stdout).writerow(search.error_row(why))
    elif as_json:
        sys.stdout.write(search.error_line(why).decode())
    sys.stdout.flush()
    return StoreError(f"{command} {why}")


# --- config ----------------------------------------------------------------------------------


def _config_check(config: Config, args: argparse.Namespace) -> int:
    policy = config.policy
    redis = describe_redis(config)
    # Resolved, as the paths under it are: the file checked, whatever ``..`` led to it.
    print(f"{config.path.resolve() if config.path is not None else 'config'}: OK")
    print(f"  region {policy.default_region}, tenant {config.default_tenant}, redis {redis}")
    print(f"  state in {config.state_dir}, packs from {config.packs_dir}")
    if config.hash_numbers:
        if config.secret_file is not None and config.secret is None:
            secret = f"{config.secret_file} (does not exist yet: created on first use)"
        elif config.secret_file is not None and not os.environ.get("CALLGATE_SECRET"):
            secret = str(config.secret_file)
        else:
            secret = "set"
        print(f"  numbers hashed, secret {secret}")
    else:
        print("  numbers stored plain (privacy.hash_numbers = false)")
    print(
        f"  lists: {', '.join(f'{r.name} ({r.kind}, {r.scope})' for r in policy.lists) or 'none'}"
    )
    caps = ", ".join(f"{c.id} ({c.limit} per {window_text(c.window_s)})" for c in policy.caps)
    print(f"  caps: {caps or 'none'}")
    print(f"  trunk caps: {_trunk_caps(policy)}")
    for pack in policy.packs:
        print(f"  packs: {pack.id} {pack.version} ({', '.join(sorted(pack.regions))})")
    print(
        f"  fail mode: campaign {config.fail_mode.campaign.value}, "
        f"manual {config.fail_mode.manual.value}"
    )
    if args.connect:
        asyncio.run(_ping(config))
    return 0


def _trunk_caps(policy: Policy) -> str:
    """The calls-per-second caps per trunk, and what a trunk [trunks.cps] does not name
    gets (trunks.default_cps): a call on an unnamed trunk is capped by it, not by none."""

    def cap(cps: int) -> str:
        return f"{cps} per second" if cps else "no cap"

    named = [f"{trunk} {cap(cps)}" for trunk, cps in sorted(policy.trunk_cps.items())]
    other = f"any other trunk {cap(policy.default_trunk_cps)} (trunks.default_cps)"
    return ", ".join([*named, other])


async def _ping(config: Config) -> None:
    async with open_gate(config, ADMIN_DEADLINE_S) as gate:
        await gate.store.ping()
        print(f"  redis: {gate.store.where} answers")
        if warning := await _eviction_warning(gate):
            print(f"  warning: {warning}")


async def _eviction_warning(gate: Gate) -> str | None:
    """What to say of a Redis whose ``maxmemory-policy`` evicts keys: an evicted opt-out
    (a list entry, a refusal's cool-off) is a number called that must not be."""
    policy = await gate.store.eviction_policy()
    if policy is None or policy == "noeviction":
        return None
    return (
        f"Redis at {gate.store.where} has maxmemory-policy {policy}: at maxmemory it deletes "
        "keys, so opted-out numbers could be called; set maxmemory-policy noeviction"
    )


def _init(args: argparse.Namespace) -> int:
    for path, written in write_init(args.directory, args.state_dir, args.copy_packs):
        print(f"{'wrote' if written else 'kept (exists)'} {path}")
    config = args.directory / "callgate.toml"
    print(
        f"next: callgate --config {config} config check; copy "
        f"{args.directory / 'callgate.conf'} to /etc/asterisk/ and #include it"
    )
    return 0


# --- run, reload --------------------------------------------------------------------------------


async def _run(config: Config, args: argparse.Namespace) -> int:
    if args.worker:
        role = WorkerRole.parse(args.worker)
        try:
            return await _run_worker(config, role)
        finally:
            role.leave()
    if args.workers > 1:
        return await _run_workers(config, args.workers, args.verbose, args.loop)
    # The CLI's other commands need neither server.
    from agi.server import AgiServer
    from gate.ops.operations import Operations
    from gate.stasis.door import StasisGate

    stop = _stop_on_signals()
    async with (
        open_gate(config, records=True, serving=stop, supervise=True) as gate,
        keeping_state(config),
    ):
        await _check_store(gate)
        server = AgiServer(
            gate,
            config.agi.host,
            config.agi.port,
            config.agi.header_timeout_s,
            config.agi.allow,
            busy_poll_s=config.agi.busy_poll_s,
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
        freeze_heap()
        if ops.reloader is not None and _SIGHUP.taken():  # sent while starting: reload now
            ops.reloader.request()
        log.info(
            "callgate %s: FastAGI on agi://%s:%d/check, Redis %s, config %s (version %s), %s",
            __version__,
            config.agi.host,
            server.port,
            gate.store.where,
            config.path,
            gate.version,
            _loop_name(),
        )
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
        await ops.stop()
        if stasis is not None:
            await stasis.close()
        await server.stop()
    log.info("stopped")
    return 0


async def _check_store(gate: Gate) -> None:
    """At start: say (logged, never fatal) if Redis does not answer yet, or holds keys of
    the layout before slot groups, which decisions do not see."""
    try:
        await gate.store.ping()
        if warning := await _eviction_warning(gate):
            log.warning("%s", warning)
        if await legacy_keys_present(gate.store, gate.keyspace, quick=True):
            log.error(
                "Redis holds keys of the old layout (namespace %r): lists, consents and "
                "counters there are not seen; stop and run `callgate migrate`",
                gate.keyspace.namespace,
            )
    except StoreError as exc:
        log.warning("%s; decisions will get the fail mode until it answers", exc)


async def _migrate(config: Config) -> int:
    async with open_gate(config, ADMIN_DEADLINE_S, writes=True) as gate:
        if not await legacy_keys_present(gate.store, gate.keyspace):
            namespace = gate.keyspace.namespace
            print(f"nothing to migrate: no keys of the old layout in namespace {namespace!r}")
            return 0
        done = await migrate(gate.store, gate.keyspace, lambda text: log.info("migrate: %s", text))
    print(done.text())
    return 0


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set, from now on. Both are held back while the loop's
    handlers replace the ones before: one that came in between was handled by the new,
    no-op Python handler without reaching the loop, and ``run`` served on, deaf to it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held one is delivered now
    return stop


async def _run_worker(config: Config, role: WorkerRole) -> int:
    """One worker of ``run --workers N``: FastAGI on the shared port, Stasis if it leads,
    its metrics written for the parent; reloads on SIGHUP (the parent forwards it)."""
    from prometheus_client import disable_created_metrics

    from agi.server import AgiServer
    from gate.ops.metrics import Metrics
    from gate.ops.reload import Reloader
    from gate.stasis.door import StasisGate

    stop = _stop_on_signals()
    role.follow_parent()  # its SIGTERM sets ``stop``: in-flight requests finish
    loop = asyncio.get_running_loop()
    disable_created_metrics()  # type: ignore[no-untyped-call]
    check_version(role, config_version(config.path), config.path)
    async with open_gate(config, records=True, serving=stop) as gate:
        agi = config.agi
        server = AgiServer(
            gate,
            agi.host,
            role.agi_port,
            agi.header_timeout_s,
            agi.allow,
            reuse_port=True,
            busy_poll_s=agi.busy_poll_s,
        )
        # Before it listens: the kernel gives a listening worker its share of the calls
        # at once (SO_REUSEPORT), which would wait out the collection.
        freeze_heap()
        await server.start()
        metrics = Metrics()
        metrics.use_config(config, gate.version)
        metrics.doors.agi = server
        gate.observers.append(metrics)
        leadership = None
        if config.ari is not None:
            door = StasisGate(gate, config.ari)
            metrics.doors.stasis = door
            leadership = StasisLeadership(door, stasis_lock_path(config), stop)
            leadership.start()
        reloader = None
        if config.path is not None:
            # Only the version the parent has in force: a SIGHUP sent to this worker
            # itself (``kill -HUP``, ``systemctl kill -s HUP``) after an edit made it serve
            # a file its parent never accepted (maybe one it refused), its siblings the
            # old one. The parent's own reload writes its version, then forwards SIGHUP.
            path = config.path
            reloader = Reloader(
                gate,
                path,
                on_swap=metrics.use_config,
                on_result=metrics.reload_result,
                accept=lambda version: check_version(role, version, path),
            )
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
            if _SIGHUP.taken():  # sent while this worker was starting: reload now
                reloader.request()
        log.info(
            "callgate %s worker %d: FastAGI on agi://%s:%d/check, %s", __version__, role.index,
            agi.host, server.port, _loop_name(),
        )  # fmt: skip
        while not await wait_event(stop, METRICS_EVERY_S):
            role.publish(metrics.exposition())
        if leadership is not None:
            await leadership.close()
        await server.stop()
        if reloader is not None:
            loop.remove_signal_handler(signal.SIGHUP)
            await reloader.close()
        gate.observers.remove(metrics)
    return 0


async def _run_workers(config: Config, count: int, verbose: bool, loop: str) -> int:
    """The parent of ``run --workers N``: the workers, supervised; HTTP, metrics (theirs
    summed with its own) and reload (forwarded to them) in this process; one instance per
    FastAGI port on this machine (``InstanceLock``)."""
    stop = _stop_on_signals()
    make_state_dir(config.state_dir)  # the Stasis lock's, even with agi.port = 0
    instance = InstanceLock(config.state_dir, config.agi.port) if config.agi.port else None
    if instance is not None:
        instance.acquire()
    try:
        async with keeping_state(config, instance):
            return await _serve_workers(config, count, verbose, loop, stop)
    finally:
        if instance is not None:
            instance.release()


async def _serve_workers(
    config: Config, count: int, verbose: bool, loop: str, stop: asyncio.Event
) -> int:
    from gate.ops.operations import Operations

    # The embedded Redis, once.
    async with open_gate(config, records=True, serving=stop, supervise=True) as gate:
        await _check_store(gate)
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
        run = [*command, *(["-v"] if verbose else []), "run", "--loop", loop]
        workers = Workers(run, count, directory, port, gate.version)
        stasis = WorkersStasis(workers.expositions) if config.ari is not None else None
        try:
            workers.start()
            ops = await Operations.start(gate, config, None, stasis, workers)
            ops.metrics.doors.stasis = None  # the workers report their doors themselves
            ops.metrics.workers = workers.expositions
            freeze_heap()
            if ops.reloader is not None:  # a reload here (SIGHUP, API) reloads the workers
                swapped = ops.reloader.on_swap

                def forward(new: Config, version: str) -> None:
                    if swapped is not None:
                        swapped(new, version)
                    workers.version = version  # the one a worker started from now serves
                    workers.signal(signal.SIGHUP)

                ops.reloader.on_swap = forward
                if _SIGHUP.taken():  # sent while this process was starting: reload now
                    ops.reloader.request()
            log.info(
                "callgate %s: %d workers (pids %s) on agi://%s:%d/check, Redis %s, config %s, "
                "shared state in %s",
                __version__, count, ", ".join(str(p.pid) for p in workers.processes.values()),
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


# A write refused for want of room: a full disk (ENOSPC), a quota (EDQUOT), a file size
# limit (EFBIG).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop quietly (Python's recommended recipe)."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


Command = Callable[[Config, argparse.Namespace], int]


class _EarlySighup:
    """SIGHUP asks ``run`` to reload, and may come while it starts (``systemctl reload``
    right after ``start``: the unit is ``Type=exec``). Its default action would end the
    process, so ``run`` catches it first thing (the ``callgate`` command even before its
    imports, gate.launch); the reload it asked for runs as soon as the reloader exists
    (``taken``), which then installs its own handler."""

    def __init__(self) -> None:
        self.wanted = False
        # SIGHUP's action before ``install``: SIG_IGN under ``nohup``, which every command
        # but ``run`` keeps (``release``).
        self.inherited: Any = signal.SIG_DFL

    def install(self, inherited: Any = None) -> None:
        """Catch SIGHUP; ``inherited``: its action before (gate.launch, whose own handler
        this replaces), else the one this replaces."""
        previous = signal.signal(signal.SIGHUP, self._set)
        if previous != self._set:
            self.inherited = previous if inherited is None else inherited
        # A worker of ``run --workers N`` starts with SIGHUP blocked (gate.runtime
        # ``Workers``): one its parent forwarded meanwhile is taken here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def release(self) -> None:
        """Not ``run``: SIGHUP's inherited action again (by default it ends the process;
        ignored under ``nohup``), and one that came early (through the ``callgate``
        command, gate.launch) delivered."""
        if signal.getsignal(signal.SIGHUP) != self._set:
            return
        ignored = self.inherited == signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL)
        if self.taken() and not ignored:
            os.kill(os.getpid(), signal.SIGHUP)

    def _set(self, _signum: int, _frame: object) -> None:
        self.wanted = True

    def taken(self) -> bool:
        """Whether a SIGHUP came before the reloader's handler; it is taken (reset)."""
        wanted, self.wanted = self.wanted, False
        return wanted


EARLY_SIGHUP = _SIGHUP = _EarlySighup()


_TERMINATED: list[int] = []  # SIGTERM came (main then ends the process by it)
_MAIN_TASK: list[asyncio.Task[int]] = []  # the command's, while it runs (``_command``)


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends a command as Ctrl-C does: it says how far it got and cleans up (an
    import releases its list's lock), where SIGTERM's default action ended it silently,
    the lock held for its lease (15 min: "another import is running"); then the process
    ends by SIGTERM all the same (its status, 143 to a shell). With Ctrl-C ignored (a
    script's background job: asyncio then installs no handler of its own) the command's
    task is cancelled here, as asyncio's Ctrl-C would; a second SIGTERM, or one before
    or after the command's task, is SIGTERM's own action."""
    first = not _TERMINATED
    _TERMINATED.append(signum)
    interrupt = signal.getsignal(signal.SIGINT)
    # Not Python's own (before the command's loop): its KeyboardInterrupt, raised in
    # whatever runs (a weakref callback of the import machinery, where Python prints and
    # ignores it), could be lost, and the command ran on.
    if callable(interrupt) and interrupt is not signal.default_int_handler:
        interrupt(signum, frame)  # asyncio.Runner's: cancels the main task first
    elif first and _MAIN_TASK and not _MAIN_TASK[0].done():
        task = _MAIN_TASK[0]
        task.cancel()
        task.get_loop().call_soon_threadsafe(lambda: None)  # wakes the loop to run it
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


def _command(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, its task known to ``_terminated`` while it runs."""

    async def tracked() -> int:
        task = asyncio.current_task()
        assert task is not None
        _MAIN_TASK[:] = [task]
        try:
            return await main
        finally:
            _MAIN_TASK.clear()

    return asyncio.run(tracked())


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its exit status."""
    configure_logging(LoggingConfig(), args.verbose)
    if args.command == "init":
        return _init(args)
    config_check = args.command == "config"
    config = load_config(
        args.config or default_config_path(),
        create_secret=not config_check,
        check_holidays=args.command in DECIDING,
    )
    configure_logging(config.logging, args.verbose, config.hash_numbers, config.secret)
    if config_check:
        return _config_check(config, args)
    if args.command == "reload":
        return _command(_reload(config))
    if args.command == "check":
        return _command(_check(config, args))
    if args.command == "list":
        return _command(_list(config, args))
    if args.command in ("consent", *EVENTS):
        return _command(_consent_or_event(config, args))
    if args.command == "scrub":
        return _command(_scrub(config, args))
    if args.command == "audit":
        return _command(_audit(config, args))
    if args.command == "migrate":
        return _command(_migrate(config))
    with asyncio.Runner(loop_factory=LOOPS[args.loop]) as runner:
        try:
            return runner.run(_run(config, args))
        except StoppedStarting:  # SIGTERM while its embedded Redis started: a stop
            log.info("stopped before the embedded Redis was ready: nothing was served")
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C as it starts: as later, no traceback
        return EXIT_INTERRUPTED
    # Signal handlers are the main thread's (a test may run a command in another).
    main_thread = threading.current_thread() is threading.main_thread()
    terminate = signal.getsignal(signal.SIGTERM)
    _TERMINATED.clear()
    if args.command == "run":
        _SIGHUP.install()  # already, through the ``callgate`` command (gate.launch)
    else:
        _SIGHUP.release()
        if main_thread:
            signal.signal(signal.SIGTERM, _terminated)
    try:
        status = _dispatch(args)
        sys.stdout.flush()  # here, not at exit: a write that fails is reported below
        return status
    except GateError as exc:
        print(f"callgate: error: {exc.worded(CLI_WORDING)}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, asyncio.CancelledError):
        # CancelledError: the command's task cancelled by SIGTERM with Ctrl-C ignored
        # (``_terminated``); any other is not ours to end the process with.
        if not _TERMINATED and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            raise
        if _TERMINATED:
            with contextlib.suppress(OSError):
                sys.stdout.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        # Every file a command writes says so itself (InputError): this is its output,
        # redirected to a file on a full disk (``list export red > red.txt``).
        with contextlib.suppress(OSError):
            print(
                f"callgate: error: cannot write the output: {exc.strerror}; free some space "
                "there, or write it elsewhere: the output is incomplete",
                file=sys.stderr,
            )
        _quiet_broken_pipe()  # no second failure as the process ends
        return EXIT_USAGE
    finally:
        if main_thread and terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":
    sys.exit(main())
