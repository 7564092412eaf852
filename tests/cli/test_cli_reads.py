"""The ``callgate`` command as a person reads it: help, errors, exit codes, --json,
progress, pipes, and files written whole (gate/cli.py)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from gate.cli import _build_parser
from gate.core.errors import StoreUnavailable
from gate.core.keys import Keyspace
from gate.lists import scrub as scrub_module
from gate.lists.progress import progress
from gate.store.lists import ListStore
from tests.cli.test_cli import (
    CLOSED_PORT_URL,
    INTERACTIVE,
    NUMBER,
    SUBPROCESS_TIMEOUT_S,
    Run,
    check_json,
    interactive_cli,
    run_subprocess,
    sample_config,
)
from tests.conftest import spawned_redis
from tests.ops.test_api_routes import HOSTILE_CSV, csv_cells, write_hostile_entry
from tests.ops.test_frozen_redis import fill_trail


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command path: ("check",), ("list", "add")…"""
    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append(path)
            return
        for name, sub in subs[0].choices.items():
            walk(sub, (*path, name))

    walk(_build_parser(), ())
    return found


def test_the_top_help_has_no_markup_and_lists_exit_statuses() -> None:
    """``callgate --help``: plain text (no RST ``), the exit statuses and examples."""
    text = _build_parser().format_help()
    assert ("``" in text, "exit status:" in text, "examples:" in text) == (False, True, True)


@pytest.mark.parametrize("path", leaf_commands(), ids=" ".join)
def test_every_command_has_help_examples_and_help_for_every_option(path: tuple[str, ...]) -> None:
    """Each command's --help has a description, examples, and a help text for every option."""
    parser = _build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    undocumented = [
        a.dest for a in parser._actions if a.option_strings and not a.help and a.dest != "help"
    ]
    text = parser.format_help()
    assert ([], True, False) == (undocumented, "examples:\n  callgate" in text, "``" in text)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["consent", "add", NUMBER, "--expires", "2026-02-30"],
            "argument --expires: '2026-02-30' is not a date or an ISO-8601 time (day is out of "
            "range for month); e.g. 2026-12-01 or 2026-12-01T10:30+01:00",
        ),
        (
            ["audit", "export", "--since", "yesterday"],
            "argument --since: 'yesterday' is not a date or an ISO-8601 time; "
            "e.g. 2026-12-01 or 2026-12-01T10:30+01:00",
        ),
        (
            ["check", NUMBER, "--at", "2026-12-01T10:00"],
            "argument --at: '2026-12-01T10:00' has no UTC offset; say which time zone, "
            "e.g. 2026-12-01T10:00+01:00 or 2026-12-01T10:00Z",
        ),
        (
            ["check", NUMBER, "--at", "9999-12-31T23:59-01:00"],
            "argument --at: '9999-12-31T23:59-01:00' is not between 2000 and 2199",
        ),
        # A name with a final newline (``$`` matches before it).
        (
            ["check", NUMBER, "--tenant", "acme\n"],
            "argument --tenant: 'acme\\n' must be 1-64 of A-Z a-z 0-9 _ . -",
        ),
        # A negative count showed nothing, exit 0, as if the trail were empty.
        (["audit", "tail", "-n", "-5"], "argument -n: '-5': expected a number, 0 or more"),
    ],
)
def test_a_bad_time_or_name_names_its_own_option(
    cli: Run, args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each time option reports its own name and what is wrong; a time without an offset
    is refused (never silently taken as UTC)."""
    with pytest.raises(SystemExit) as exited:
        cli(*args)
    err = capsys.readouterr().err
    command = " ".join(args[:2] if args[0] in ("consent", "audit") else args[:1])
    assert (2, f"callgate: error: {error} (see callgate {command} --help)\n") == (
        exited.value.code,
        err,
    )


def test_an_unknown_list_is_named_with_each_known_list_once(tmp_path: Path, redis_url: str) -> None:
    """With the fr pack (which also defines customers), the error names each list once."""
    path = tmp_path / "fr.toml"
    path.write_text(sample_config(redis_url, gate={"packs": ["fr"]}), encoding="utf-8")
    done = run_subprocess(tmp_path, "--config", str(path), "list", "add", "nosuch", NUMBER)
    known = done.stderr.split("(lists: ")[1].rstrip(")\n").split(", ")
    assert (2, len(known)) == (done.returncode, len(set(known)))
    assert "customers" in known


def consent_config(tmp_path: Path, redis_url: str) -> Path:
    """The sample config with a consent list (``consent``, per tenant)."""
    path = tmp_path / "consent.toml"
    lists = '\n[[lists]]\nname = "consent"\nkind = "consent"\nscope = "tenant"\n'
    path.write_text(sample_config(redis_url) + lists, encoding="utf-8")
    return path


def test_consent_wording_counts_in_the_singular(cli: Run, tmp_path: Path, redis_url: str) -> None:
    """One consent recorded reads "1 consent recorded", two "2 consents"."""
    path = consent_config(tmp_path, redis_url)
    one = cli("consent", "add", NUMBER, config=path)
    two = cli("consent", "add", "0612345679", "0612345670", config=path)
    assert (0, "1 consent recorded, 0 updated\n", "") == one
    assert (0, "2 consents recorded, 0 updated\n", "") == two


def test_list_summaries_count_in_the_singular(cli: Run, tmp_path: Path) -> None:
    """One duplicate reads "1 duplicate", two "2 duplicates"; one number not listed reads
    "1 was not listed", two "2 were not listed"."""
    path = tmp_path / "optouts.txt"
    path.write_text("0612345678\n0612345678\n0612345679\n0612345679\n", encoding="utf-8")
    imported = cli("list", "import", "red", str(path))
    again = cli("list", "import", "red", str(path))
    one = cli("list", "remove", "red", "0612345678", "0612345670")
    two = cli("list", "remove", "red", "0612345671", "0612345670")
    assert [
        (0, "2 imported, 2 duplicates, 0 rejected\n", ""),
        (0, "0 imported, 4 duplicates, 0 rejected\n", ""),
        (0, "1 removed, 1 was not listed\n", ""),
        (0, "0 removed, 2 were not listed\n", ""),
    ] == [imported, again, one, two]
    path.write_text("0612345680\n0612345680\n", encoding="utf-8")
    assert (0, "1 imported, 1 duplicate, 0 rejected\n", "") == cli(
        "list", "import", "red", str(path)
    )


def test_a_consent_granted_in_the_future_is_one_error_line_and_not_recorded(
    cli: Run, tmp_path: Path, redis_url: str
) -> None:
    """A grant a day ahead of the clock has not happened (decide.lua reads only the expiry:
    it would count at once): exit 2, one line naming --granted-at, nothing recorded. A
    grant a minute ahead (another host's clock, a time written to the minute) is taken."""
    path = consent_config(tmp_path, redis_url)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    refused = cli("consent", "add", NUMBER, "--granted-at", tomorrow.isoformat(), config=path)
    count = cli("list", "count", "consent", config=path)
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    taken = cli("consent", "add", NUMBER, "--granted-at", soon, config=path)
    status, out, err = refused
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert err.startswith(
        f"callgate: error: --granted-at {tomorrow.isoformat()}: later than the gate's clock ("
    )
    assert err.endswith(
        "); a consent counts once given: give the time it was given, or none for now\n"
    )
    assert (0, "0\n", "") == count
    assert (0, "1 consent recorded, 0 updated\n", "") == taken


@pytest.mark.parametrize(
    ("times", "why"),
    [
        (
            ["--granted-at", "2026-06-01", "--expires", "2026-01-01"],
            "--expires 2026-01-01T00:00:00+00:00: not after --granted-at 2026-06-01T00:00:00+00:00",
        ),
        (
            ["--granted-at", "2026-06-01T02:00+02:00", "--expires", "2026-06-01T00:00Z"],
            "--expires 2026-06-01T00:00:00+00:00: not after --granted-at 2026-06-01T02:00:00+02:00",
        ),
        (["--expires", "2026-01-01"], "--expires 2026-01-01T00:00:00+00:00: not after the grant"),
    ],
    ids=["before", "same-instant", "before-now"],
)
def test_a_consent_expiring_at_or_before_its_grant_is_one_error_line_and_not_recorded(
    cli: Run, tmp_path: Path, redis_url: str, times: list[str], why: str
) -> None:
    """An expiry at or before the grant (--granted-at, else now) makes a consent void from
    the start: exit 2, one line naming --expires and the grant, nothing recorded."""
    path = consent_config(tmp_path, redis_url)
    status, out, err = cli("consent", "add", NUMBER, *times, config=path)
    assert (2, "", 1, True) == (
        status,
        out,
        len(err.splitlines()),
        err.startswith(f"callgate: error: {why}"),
    )
    assert err.endswith(
        "; a consent lapses after it is given: give a later --expires, or none for a consent "
        "that does not lapse\n"
    )
    assert (0, "0\n", "") == cli("list", "count", "consent", config=path)


def test_a_consent_file_dated_in_the_future_is_one_error_line_and_nothing_imported(
    cli: Run, tmp_path: Path, redis_url: str
) -> None:
    """A consent list's import records its consents as given at --refreshed-at: one a day
    ahead of the clock is refused (exit 2, one line naming --refreshed-at), none imported."""
    path = consent_config(tmp_path, redis_url)
    consents = tmp_path / "consents.txt"
    consents.write_text("0612345678\n0612345679\n", encoding="utf-8")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    status, out, err = cli(
        "list", "import", "consent", str(consents), "--refreshed-at", tomorrow.isoformat(),
        config=path,
    )  # fmt: skip
    assert (2, "", 1, True) == (
        status,
        out,
        len(err.splitlines()),
        err.startswith(
            f"callgate: error: --refreshed-at {tomorrow.isoformat()}: later than the gate's clock"
        ),
    )
    assert (0, "0\n", "") == cli("list", "count", "consent", config=path)


def test_an_abandoned_call_without_a_cool_off_reads_well(cli: Run) -> None:
    """Without a pack that has one: "…after an abandoned call…", exit 2."""
    status, _, err = cli("abandoned", NUMBER)
    assert (
        2,
        "callgate: error: no enabled pack has a cool-off after an abandoned call or an "
        "abandoned-call ceiling for '+33612345678'; nothing recorded\n",
    ) == (status, err)


@pytest.mark.parametrize(
    ("listed", "args", "verdict", "status"),
    [
        (False, [], "ALLOW", 0),
        (True, [], "BLOCK", 3),
        (False, ["--trunk", "carrier-a", "--at", "2026-12-01T10:00+01:00"], "ALLOW", 0),
    ],
)
def test_check_exits_with_its_verdict(
    cli: Run, listed: bool, args: list[str], verdict: str, status: int
) -> None:
    """0 ALLOW, 3 BLOCK (and 4 DEFER, below): scripts branch on the exit status."""
    if listed:
        cli("list", "add", "red", NUMBER)
    done, out, _ = cli("check", NUMBER, *args)
    assert (status, verdict) == (done, out.split()[0])


def test_a_deferred_check_exits_4_with_whole_retry_seconds(cli: Run) -> None:
    """The fifth recorded attempt is DEFER: exit 4, retry_after in whole seconds."""
    for _ in range(4):
        cli("check", NUMBER, "--record")
    status, out, _ = cli("check", NUMBER)
    assert 4 == status
    assert re.fullmatch(r"DEFER cap:fr-4-per-30d retry_after=\d+s \+33612345678\n", out)


def test_quiet_check_prints_nothing(cli: Run) -> None:
    """-q: no output, the verdict in the exit status."""
    cli("list", "add", "red", NUMBER)
    assert (3, "", "") == cli("check", NUMBER, "-q")


def test_list_count_and_info_in_json(cli: Run) -> None:
    """--json on list count and info: integer counts, typed fields, no storage internals."""
    cli("list", "add", "red", NUMBER, "0612345679")
    _, count, _ = cli("list", "count", "red", "--json")
    _, info, _ = cli("list", "info", "red", "--json")
    assert {"name": "red", "tenant": "default", "campaign": None, "entries": 2} == json.loads(count)
    assert {
        "name": "red",
        "kind": "block",
        "scope": "tenant",
        "tenant": "default",
        "campaign": None,
        "entries": 2,
        "hashed": True,
        "refreshed_at": None,
        "imported_at": None,
        "source": None,
        "importer": None,
        "sha256": None,
        "unfinished_switch": None,
    } == json.loads(info)


def test_list_info_shows_no_internals(cli: Run, tmp_path: Path) -> None:
    """list info: entries and ISO times, never bits, version, count or epoch milliseconds."""
    path = tmp_path / "red.txt"
    path.write_text("0612345678\n0612345679\n", encoding="utf-8")
    cli("list", "import", "red", str(path), "--refreshed-at", "2026-11-01")
    status, out, _ = cli("list", "info", "red")
    names = [line.split(":")[0] for line in out.splitlines()]
    assert (
        0,
        [
            "name",
            "kind",
            "scope",
            "tenant",
            "entries",
            "hashed",
            "refreshed_at",
            "imported_at",
            "source",
            "importer",
            "sha256",
        ],
    ) == (status, names)
    assert "refreshed_at: 2026-11-01T00:00:00Z" in out.splitlines()


def test_export_of_a_hashed_list_says_what_to_do_instead(cli: Run) -> None:
    """Hashed lists cannot be exported; the error points to keeping the imported files,
    list info and check."""
    cli("list", "add", "red", NUMBER)
    status, _, err = cli("list", "export", "red")
    assert 2 == status
    assert "keep the files you import" in err
    assert "`callgate list info`" in err


@pytest.mark.timeout(60)
def test_a_cut_off_switch_is_told_by_list_info_and_refuses_export_until_imported_again(
    cli: Run, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import --replace cut off while switching (a failover): list info (text and
    --json) says which version decides, in how many slot groups, and which command
    completes the switch; list export refuses in one line (exit 2); once the list is
    imported again both are as usual."""
    config = tmp_path / "plain.toml"
    config.write_text(sample_config(redis_url, privacy={"hash_numbers": False}), "utf-8")
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("0612345678\n", encoding="utf-8")
    new.write_text("0612345679\n0612345680\n", encoding="utf-8")
    cli("list", "import", "red", str(old), "--replace", config=config)

    async def cut_off(self: ListStore, *args: Any) -> None:
        raise StoreUnavailable("Redis at test is unreachable (cut off)")

    with monkeypatch.context() as patched:
        patched.setattr(ListStore, "_switched", cut_off)
        failed, _, _ = cli("list", "import", "red", str(new), "--replace", config=config)
    _, text, _ = cli("list", "info", "red", config=config)
    _, as_json, _ = cli("list", "info", "red", "--json", config=config)
    refused = cli("list", "export", "red", config=config)
    again = cli("list", "import", "red", str(new), "--replace", config=config)[0]
    _, settled, _ = cli("list", "info", "red", "--json", config=config)
    exported = cli("list", "export", "red", config=config)
    note = (
        "an import's switch to version 2 is unfinished (under way, or cut off by a failover): "
        "1024 of 1024 slot groups decide with it; entries counts what decides, but "
        "refreshed_at, imported_at, source, importer and sha256 are still the previous "
        "import's, and the list cannot be exported; when no import is running, import the "
        "list again with `callgate list import red FILE --replace --tenant default`, e.g. "
        "that import's file (source 'new.txt'), which completes the switch first"
    )
    switch = {"version": 2, "deciding_groups": 1024, "slot_groups": 1024, "source": "new.txt"}
    assert (2, 0) == (failed, again)
    assert ("entries: 2", "source: old.txt", f"unfinished_switch: {note}") == (
        text.splitlines()[4],
        text.splitlines()[8],
        text.splitlines()[-1],
    )
    assert {**switch, "note": note} == json.loads(as_json)["unfinished_switch"]
    assert (2, "") == refused[:2]
    assert [
        "callgate: error: list 'red' is not exported: an import's switch to version 2 is "
        "unfinished (under way, or cut off by a failover): 1024 of 1024 slot groups decide "
        "with it, so the version stored as the list's is not the one in force; when no "
        "import is running, import the list again with `callgate list import red FILE "
        "--replace --tenant default`, e.g. that import's file (source 'new.txt'), which "
        "completes the switch first, then export it"
    ] == refused[2].splitlines()
    assert (None, "new.txt") == (
        json.loads(settled)["unfinished_switch"], json.loads(settled)["source"]
    )  # fmt: skip
    assert (0, "+33612345679\n+33612345680\n", "") == exported


def test_csv_import_reads_quoted_multi_line_fields(cli: Run, tmp_path: Path) -> None:
    """A CSV whose quoted cell spans two lines imports every row's phone."""
    path = tmp_path / "crm.csv"
    path.write_text(
        'name,note,phone\nAlice,"call after 5\nnot Mondays",0612345678\nBob,,0612345679\n',
        encoding="utf-8",
    )
    assert (0, "2 imported, 0 duplicates, 0 rejected, header row (line 1) skipped\n", "") == cli(
        "list", "import", "red", str(path), "--column", "phone"
    )


# Each file's number column holds tel: URIs whose parameters are written after ";" (RFC
# 3966), unquoted: line 3's is a local number of the UK (phone-context=+44), never the
# default region's +33612345679.
TEL_URI_FILES = {
    "semicolons": (
        "name;phone;city\n"
        "Alice;tel:+33612345678;ext=12;Paris\n"
        "Bob;tel:0612345679;phone-context=+44;Lyon\n"
        'Eve;"tel:+33612345680;ext=3";Nice\n',
        "phone",
    ),
    "commas": (
        "tel:+33612345678;phone-context=+33;ext=12,Alice\n"
        "tel:+33612345681;isub=1;ext=1,Carol\n"
        "tel:0612345679;phone-context=+44,Bob\n",
        "1",
    ),
}


@pytest.mark.parametrize("name", list(TEL_URI_FILES))
def test_csv_import_reads_tel_uris_whose_parameters_follow_a_semicolon(
    cli: Run, tmp_path: Path, name: str
) -> None:
    """The ";" of a tel URI's parameters is no delimiter, in a file of ";" or of ",":
    the URI is read whole, so its phone-context is never dropped and its local number
    never taken as one of the default region."""
    text, column = TEL_URI_FILES[name]
    path = tmp_path / "crm.csv"
    path.write_text(text, encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(path), "--column", column)
    header = ", header row (line 1) skipped" if column == "phone" else ""
    assert (0, f"2 imported, 0 duplicates, 1 rejected{header}\n", 1) == (
        status,
        out,
        len(err.splitlines()),
    )
    assert err.startswith(
        f"{path}:3: rejected: number 'tel:0612345679;phone-context=+44': a local number"
    )
    assert "ALLOW" == check_json(cli, "+33612345679")["verdict"]


def test_scrub_keeps_a_tel_uri_with_its_parameters_in_its_column(cli: Run, tmp_path: Path) -> None:
    """A ";" file's tel URIs with parameters are scrubbed whole (the local number of
    phone-context=+44 is no French number) and written back as one quoted cell, the
    verdicts under their headers."""
    cli("list", "add", "red", NUMBER)
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    leads.write_text(TEL_URI_FILES["semicolons"][0], encoding="utf-8")
    status, _, _ = cli("scrub", str(leads), "--column", "phone", "-o", str(out))
    assert (
        0,
        [
            "name;phone;city;verdict;reason;retry_after_s",
            'Alice;"tel:+33612345678;ext=12";Paris;BLOCK;listed:red;',
            'Bob;"tel:0612345679;phone-context=+44";Lyon;BLOCK;invalid_number;',
            'Eve;"tel:+33612345680;ext=3";Nice;ALLOW;allowed;',
        ],
    ) == (status, out.read_text(encoding="utf-8").splitlines())


def test_import_progress_counts_every_line_exactly(cli: Run, tmp_path: Path) -> None:
    """Off a terminal the last progress line counts the file's lines, not one more."""
    path = tmp_path / "many.txt"
    path.write_text("".join(f"06123{i:05d}\n" for i in range(1500)), encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(path), "--json")
    assert (0, 1500) == (status, json.loads(out)["imported"])
    assert err.startswith("importing many.txt: 1500 lines in ")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_shows_count_rate_and_elapsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rich bar has the count done of the total, the rate and the elapsed time."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(3000, "importing x.txt") as advance:
        advance(3000)
    shown = terminal.getvalue()
    assert ("3000/3000" in shown, "lines/s" in shown, "0:00:0" in shown) == (True, True, True)


def test_the_progress_bar_runs_no_thread_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar is redrawn by the caller's own advances: no refresh thread (a scrub forks
    its workers only from a process running no other thread)."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    before = threading.active_count()
    with progress(3000, "scrubbing x.csv") as advance:
        during = threading.active_count()
        advance(3000)
    assert before == during


def test_an_interrupted_progress_says_how_far_it_got(capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C during a long command: a line says how much was done before it stops."""

    def interrupted_at(done: int) -> None:
        with progress(5000, "importing x.txt") as advance:
            advance(done)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_at(1200)
    assert "importing x.txt: interrupted after 1200 of 5000 lines\n" == capsys.readouterr().err


def test_scrub_summary_in_json_names_the_output(cli: Run, tmp_path: Path) -> None:
    """scrub --json: the output file, the rows and counts by verdict and reason."""
    cli("list", "add", "red", NUMBER)
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    leads.write_text("id,phone\n1,0612345678\n2,0612345679\n3,\n", encoding="utf-8")
    status, text, _ = cli("scrub", str(leads), "--column", "phone", "-o", str(out), "--json")
    assert (
        0,
        {
            "output": str(out),
            "rows": 3,
            "counts": {"ALLOW": 1, "BLOCK": 2, "DEFER": 0},
            "unreadable": 0,
            "reasons": {"BLOCK listed:red": 1, "BLOCK invalid_number": 1},
        },
    ) == (status, json.loads(text))


def test_a_scrubbed_file_is_readable_as_a_new_file_is_and_a_symlink_stays(
    cli: Run, tmp_path: Path
) -> None:
    """A new output gets the mode a new file gets (0666 less the umask; it was mkstemp's
    0600, unreadable by a dialer's own user); one that replaces a file keeps that file's
    mode; ``-o LINK`` writes the link's target and leaves the link."""
    import os
    import stat

    leads = tmp_path / "leads.csv"
    leads.write_text("id,phone\n1,0612345678\n", encoding="utf-8")
    new, kept, target, link = (tmp_path / n for n in ("new.csv", "kept.csv", "t.csv", "l.csv"))
    kept.write_text("old\n", encoding="utf-8")
    kept.chmod(0o660)
    target.write_text("old\n", encoding="utf-8")
    link.symlink_to(target)
    old_mask = os.umask(0o027)
    try:
        for out in (new, kept, link):
            status, _, err = cli("scrub", str(leads), "--column", "phone", "-o", str(out))
            assert (0, "") == (status, err)
    finally:
        os.umask(old_mask)
    assert [0o640, 0o660, True, "l.csv"] == [
        stat.S_IMODE(new.stat().st_mode),
        stat.S_IMODE(kept.stat().st_mode),
        link.is_symlink(),
        link.name,
    ]
    assert target.read_text(encoding="utf-8").startswith("id,phone,verdict,reason,retry_after_s")
    assert [] == [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_scrub_verdicts_stay_under_their_headers_in_short_and_long_rows(
    cli: Run, tmp_path: Path, header: bool
) -> None:
    """A row with fewer cells than the first row is padded with empty cells and one with
    more keeps its extra cells after the verdict columns: verdict, reason and retry_after_s
    are always the columns after the first row's, and no cell is lost."""
    cli("list", "add", "red", NUMBER)
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    rows = ["1,0612345678,Paris", "2,0612345679", "3", "4,0612345678,Lyon,VIP,note"]
    leads.write_text("\n".join(["id,phone,city"] * header + rows) + "\n", encoding="utf-8")
    column = "phone" if header else "2"
    status, _, _ = cli("scrub", str(leads), "--column", column, "-o", str(out))
    expected = [
        "1,0612345678,Paris,BLOCK,listed:red,",
        "2,0612345679,,ALLOW,allowed,",
        "3,,,ERROR,missing_column,",
        "4,0612345678,Lyon,BLOCK,listed:red,,VIP,note",
    ]
    written = out.read_text(encoding="utf-8").splitlines()
    assert (0, ["id,phone,city,verdict,reason,retry_after_s"] * header + expected) == (
        status,
        written,
    )


def test_scrub_with_redis_down_writes_no_file(tmp_path: Path) -> None:
    """Redis unreachable: exit 2 with one line, and no output file (not even a header)."""
    config = tmp_path / "down.toml"
    config.write_text(sample_config(CLOSED_PORT_URL), encoding="utf-8")
    leads = tmp_path / "leads.csv"
    leads.write_text("id,phone\n1,0612345678\n", encoding="utf-8")
    done = run_subprocess(
        tmp_path, "--config", str(config), "scrub", str(leads), "--column", "phone", "-o", "out.csv"
    )
    assert (2, 1, []) == (
        done.returncode,
        len(done.stderr.splitlines()),
        sorted(p.name for p in tmp_path.iterdir() if p.name not in ("down.toml", "leads.csv")),
    )


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("missing/out.csv", "no directory {tmp}/missing; create it, or write elsewhere"),
        ("leads.csv/out.csv", "no directory {tmp}/leads.csv; create it, or write elsewhere"),
        ("", "is a directory; name the file to write (e.g. -o {tmp}/scrubbed.csv)"),
    ],
    ids=["missing-directory", "file-as-directory", "directory"],
)
def test_a_scrub_output_that_cannot_be_written_is_one_error_line_naming_o(
    cli: Run, tmp_path: Path, output: str, why: str
) -> None:
    """``-o`` in a directory that does not exist, or naming a directory: exit 2 with one
    line naming ``-o`` and the path, before any lead is read; nothing is written."""
    leads = tmp_path / "leads.csv"
    leads.write_text("id,phone\n1,0612345678\n", encoding="utf-8")
    target = tmp_path / output
    status, out, err = cli("scrub", str(leads), "--column", "phone", "-o", str(target))
    assert (
        2,
        "",
        f"callgate: error: -o {target}: {why.format(tmp=tmp_path)}\n",
        ["leads.csv"],
    ) == (
        status,
        out,
        err,
        sorted(p.name for p in tmp_path.iterdir() if p.name != "callgate.toml"),
    )


@pytest.mark.parametrize(
    "command", [("scrub",), ("list", "import", "red")], ids=["scrub", "import"]
)
@pytest.mark.parametrize(
    ("column", "why"),
    [
        ("²", "no column named '²' in header ['id', 'phone']"),  # isdigit(), not a number
        ("٢", "no column named '٢' in header ['id', 'phone']"),  # int() reads it as 2
        ("0", "--column 0: columns are numbered from 1"),
    ],
    ids=["superscript", "arabic-indic", "zero"],
)
def test_a_column_that_is_no_ascii_number_nor_a_header_is_one_error_line(
    cli: Run, tmp_path: Path, command: tuple[str, ...], column: str, why: str
) -> None:
    """``--column`` takes a 1-based number in ASCII digits or a header name: a superscript
    or another script's digit is a name (none such here), column 0 does not exist; each is
    exit 2 with one line, and the scrub writes nothing."""
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    leads.write_text("id,phone\n1,0612345678\n", encoding="utf-8")
    output = ("-o", str(out)) if command == ("scrub",) else ()
    status, _, err = cli(*command, str(leads), "--column", column, *output)
    assert (2, 1, True, False) == (
        status,
        len(err.splitlines()),
        err.endswith(why + "\n"),
        out.exists(),
    )


@pytest.mark.parametrize(
    "command",
    [("scrub",), ("list", "import", "red"), ("list", "import", "red", "--replace")],
    ids=["scrub", "import", "replace"],
)
def test_a_column_number_past_the_first_rows_cells_is_one_error_line_and_changes_nothing(
    cli: Run, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``--column 5`` of a file of four columns would reject every line (the import) or
    make every row ERROR missing_column (the scrub), and exit 0: exit 2 instead, one line
    naming the file, the column and the first row's columns; nothing imported (the list
    in force kept by --replace), no scrubbed file."""
    cli("list", "add", "red", NUMBER)
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    rows = [f"{i},061234567{i},Paris,VIP" for i in range(4)]
    leads.write_text("\n".join(rows) + "\n", encoding="utf-8")
    output = ("-o", str(out)) if command == ("scrub",) else ()
    status, stdout, err = cli(*command, str(leads), "--column", "5", *output)
    assert (
        2,
        "",
        f"callgate: error: {leads}:1: no column 5 (--column 5): the file's first row has 4 "
        "columns; give --column a number from 1 to 4, or a header name\n",
        False,
    ) == (status, stdout, err, out.exists())
    assert (0, "1\n", "") == cli("list", "count", "red")


def test_a_column_number_past_the_first_row_of_numbers_skips_a_scrub_files_header(
    cli: Run, tmp_path: Path
) -> None:
    """An fr-scrub file's header row (no digit) is not its first row of numbers: the
    error names the row after it, and the cells it has."""
    scrubbed = tmp_path / "retour.csv"
    scrubbed.write_text(
        "Telephone;Identifiant;Resultat\n0612345678;1;NON_INSCRIT\n", encoding="utf-8"
    )
    status, _, err = cli(
        "list", "import", "red", str(scrubbed), "--format", "fr-scrub", "--keep", "NON_INSCRIT",
        "--column", "4",
    )  # fmt: skip
    assert (
        2,
        f"callgate: error: {scrubbed}:2: no column 4 (--column 4): the file's first row has 3 "
        "columns; give --column a number from 1 to 3, or a header name\n",
    ) == (status, err)


def unclosed_quote_leads(path: Path) -> Path:
    """20 000 leads (``id,phone``) whose fourth line opens a quote it never closes: the
    rest of the file is one field, over the csv module's limit (128 KiB)."""
    lines = ["id,phone", *(f"{i},0613{i:06d}" for i in range(20_000))]
    lines[3] = '2,"0613000002'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "command", [("scrub",), ("list", "import", "red")], ids=["scrub", "import"]
)
def test_a_field_over_the_csv_limit_is_one_error_line_naming_its_row(
    cli: Run, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A quote never closed makes a field of the rest of the file: ``scrub`` and ``list
    import --column`` exit 2 with one line naming the file and the line its row starts on,
    and saying what to do; the scrub writes no file."""
    leads, out = unclosed_quote_leads(tmp_path / "leads.csv"), tmp_path / "out.csv"
    output = ("-o", str(out)) if command == ("scrub",) else ()
    status, _, err = cli(*command, str(leads), "--column", "phone", *output)
    assert (
        2,
        f"callgate: error: {leads}:4: a field of the row starting on this line is longer "
        "than 131072 characters (a quote never closed?): close the quote, or remove it\n",
        False,
    ) == (status, err, out.exists())


@pytest.fixture
def audit_rows(redis_url: str) -> int:
    """5000 audit entries written straight into a group's stream (as the gate keeps them)."""
    fill_trail(redis_url, 5000, channel=None)
    return 5000


def test_audit_export_into_a_closed_pipe_exits_0_quietly(
    tmp_path: Path, config_file: Path, audit_rows: int
) -> None:
    """``audit export | head -1``: the first record, then exit 0 with nothing on stderr
    (a closed pipe is not a Redis fault)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gate.cli", "--config", str(config_file), "audit", "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    status = process.wait(SUBPROCESS_TIMEOUT_S)
    err = process.stderr.read().decode()
    process.stderr.close()
    assert (0, "", "ALLOW") == (status, err, first["verdict"])


# The read bound in the command's process, shortened from its 10 s default
# (gate/store/client.py READ_WAIT_S, read at each call): the export must end within it and
# say so, whatever its value. The command runs as ``python -m gate.cli`` runs it.
CLI_READ_WAIT_S = 2.0
SHORT_READ_WAIT = (
    "import runpy, gate.store.client as c; "
    f"c.READ_WAIT_S = {CLI_READ_WAIT_S!r}; "
    "runpy.run_module('gate.cli', run_name='__main__', alter_sys=True)"
)


@pytest.mark.parametrize(
    ("stop", "fmt"),
    [(signal.SIGSTOP, "jsonl"), (signal.SIGKILL, "csv")],
    ids=["frozen-jsonl", "dead-csv"],
)
def test_audit_export_cut_mid_stream_says_so_on_stdout_and_stderr_and_exits_2(
    tmp_path: Path, stop: signal.Signals, fmt: str
) -> None:
    """Redis stopped (SIGSTOP) or gone (SIGKILL) mid ``audit export``: within READ_WAIT_S
    (not the admin connections' minutes) the output ends with the line saying it is
    incomplete (``{"error": …}``; CSV: the row ``error,…``), stderr is one line
    ``callgate: error: audit export incomplete: …`` (no traceback), and the status is 2."""
    with spawned_redis(tmp_path) as (url, redis_process):
        fill_trail(url)
        config = tmp_path / "callgate.toml"
        config.write_text(sample_config(url), encoding="utf-8")
        command = ["--config", str(config), "audit", "export", "--format", fmt]
        process = subprocess.Popen(
            [sys.executable, "-c", SHORT_READ_WAIT, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            bufsize=0,
        )
        try:
            assert process.stdout is not None
            first = b""
            while not first.endswith(b"\n") and (byte := process.stdout.read(1)):
                first += byte  # unbuffered: the rest is still in the pipe
            redis_process.send_signal(stop)
            out, err = process.communicate(timeout=CLI_READ_WAIT_S + SUBPROCESS_TIMEOUT_S / 3)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    text = (first + out).decode()
    errors = err.decode().splitlines()
    if fmt == "csv":
        header, *records, last = list(csv.reader(io.StringIO(text)))
        error = last[1] if last[0] == "error" else ""
        assert "id" == header[0]
    else:
        *records, last = [json.loads(line) for line in text.splitlines()]
        error = last.get("error", "")
    said = f"incomplete: the search stopped after {len(records)} record(s)"
    assert (2, 1, True) == (process.returncode, len(errors), error.startswith(said))
    assert f"callgate: error: audit export {error}" == errors[0]
    if stop == signal.SIGSTOP:  # the bound in force, not the admin connections' timeout
        assert f"did not answer within {CLI_READ_WAIT_S:g} s" in error


def test_audit_export_with_redis_gone_from_the_start_writes_no_header(
    tmp_path: Path,
) -> None:
    """``audit export --format csv`` with Redis gone: nothing on stdout (not a header
    that passes for an empty export), one error line, status 2."""
    with spawned_redis(tmp_path) as (url, redis_process):
        config = tmp_path / "callgate.toml"
        config.write_text(sample_config(url), encoding="utf-8")
        redis_process.send_signal(signal.SIGKILL)
        redis_process.wait(10)
        done = run_subprocess(
            tmp_path, "--config", str(config), "audit", "export", "--format", "csv"
        )
    errors = done.stderr.splitlines()
    assert (2, "", 1) == (done.returncode, done.stdout, len(errors))
    assert errors[0].startswith("callgate: error: Redis at ")


def test_audit_export_csv_writes_a_cell_that_starts_like_a_formula_as_text(
    cli: Run, redis_url: str
) -> None:
    """``audit export --format csv``: every text cell starting with =, +, -, @, tab or CR
    gets a leading ' (a number and caller ID in E.164 are kept), as in the API's CSV, and
    the csv module reads the row back whole."""
    write_hostile_entry(redis_url, Keyspace("callgate", None).audit_key(0))
    status, out, err = cli("audit", "export", "--format", "csv")
    assert (0, "", [HOSTILE_CSV]) == (status, err, csv_cells(out))


def test_audit_why_and_tail_in_json(cli: Run, audit_rows: int) -> None:
    """audit tail --json: JSON Lines of typed records (integer latency, RFC 3339 time)."""
    status, out, _ = cli("audit", "tail", "-n", "2", "--json")
    records: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert (0, ["n4998", "n4999"], [90, 90]) == (
        status,
        [r["number"] for r in records],
        [r["latency_us"] for r in records],
    )
    assert records[0]["time"].endswith("Z")


def _signalled_import(
    tmp_path: Path, config_file: Path, signum: int, background: bool = False
) -> tuple[int, str]:
    """A --replace import of 3 M numbers (several seconds: still running when the signal
    comes, even on a loaded machine) sent ``signum`` once under way: its status, stderr.
    ``background``: started with Ctrl-C ignored, as a shell script's background job is."""
    path = tmp_path / "big.txt"
    path.write_text("".join(f"+3361{i:07d}\n" for i in range(3_000_000)), encoding="utf-8")
    args = ("--config", str(config_file), "list", "import", "red", str(path), "--replace")
    if background:
        program = INTERACTIVE.replace("signal.default_int_handler", "signal.SIG_IGN")
        assert program != INTERACTIVE
        process = subprocess.Popen(
            [sys.executable, "-c", program, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
    else:
        process = interactive_cli(tmp_path, *args)
    assert process.stderr is not None
    try:
        process.stderr.readline()  # the first progress line: the import is under way
        process.send_signal(signum)
        _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return process.returncode, err


def test_sigint_during_an_import_says_what_was_kept(tmp_path: Path, config_file: Path) -> None:
    """Ctrl-C during a --replace import: exit 130 and a line saying the list is unchanged."""
    status, err = _signalled_import(tmp_path, config_file, signal.SIGINT)
    assert 130 == status
    assert "callgate: import interrupted: list 'red' is unchanged" in err


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "ctrl-c-ignored"])
def test_sigterm_during_an_import_says_what_was_kept_and_frees_the_list(
    tmp_path: Path, config_file: Path, cli: Run, background: bool
) -> None:
    """SIGTERM (``kill``, ``timeout``, a stopping unit) during a --replace import ends it as
    Ctrl-C does: a line saying the list is unchanged, and its lock released, so the next
    --replace runs at once (not "another import is running" for 15 min); the process
    still ends by SIGTERM. The same for a shell script's background job, whose Ctrl-C is
    ignored."""
    status, err = _signalled_import(tmp_path, config_file, signal.SIGTERM, background)
    assert -signal.SIGTERM == status
    assert "callgate: import interrupted: list 'red' is unchanged" in err
    small = tmp_path / "small.txt"
    small.write_text("+33612345678\n", encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(small), "--replace")
    assert (0, "") == (status, err)
    assert out.startswith("1 in the new version")


def test_ctrl_c_after_a_replace_switched_says_the_list_is_replaced(
    tmp_path: Path, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once the new version is switched in (while the one it replaced is removed):
    the line says the list is replaced, not unchanged (it was); the next import removes
    what is left of the old version."""
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("+33612345678\n", encoding="utf-8")
    second.write_text("+33612345679\n", encoding="utf-8")
    assert 0 == cli("list", "import", "red", str(first), "--replace")[0]
    drop = ListStore._drop

    async def interrupted(self: ListStore, list_id: str, version: int, bits: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C as the old version is removed

    monkeypatch.setattr(ListStore, "_drop", interrupted)
    status, _, err = cli("list", "import", "red", str(second), "--replace")
    monkeypatch.setattr(ListStore, "_drop", drop)
    assert (130, "callgate: import interrupted: list 'red' is replaced") == (
        status,
        err.strip().splitlines()[-1].split(" (")[0],
    )
    assert (0, "1\n", "") == cli("list", "count", "red")
    assert (0, 3) == (
        cli("check", "+33612345678")[0],
        cli("check", "+33612345679")[0],
    )  # allow, block


def test_a_lock_left_by_a_killed_import_says_when_it_expires(
    tmp_path: Path, config_file: Path, cli: Run, sync_redis: redis.Redis
) -> None:
    """A --replace refused by the lock of an import killed with SIGKILL (its lease of
    15 min still running) says that one may have been killed and when the lock expires,
    not only "another import is running; try later"."""
    sync_redis.set("callgate:{lists}:red:t:default:lock", "f1e6a8ae1b19dca0", px=15 * 60_000)
    small = tmp_path / "small.txt"
    small.write_text("+33612345678\n", encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(small), "--replace")
    assert (2, "") == (status, out)
    assert (
        "callgate: error: list red:t:default: another import or resize is running, or one "
        "was killed (its lock expires within 15 min); try later\n"
    ) == err


def test_a_scrub_whose_output_fills_the_disk_is_one_error_line_and_no_file(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of the output that fails (a full disk: /dev/full) is exit 2 with one line
    naming ``-o`` and what to do, not an OSError traceback; no file is left."""
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    leads.write_text("id,phone\n" + "1,0612345678\n" * 5000, encoding="utf-8")
    opened = scrub_module.os.fdopen

    def full_disk(fd: int, *args: Any, **kwargs: Any) -> Any:
        scrub_module.os.close(fd)
        return opened(scrub_module.os.open("/dev/full", scrub_module.os.O_WRONLY), *args, **kwargs)

    monkeypatch.setattr(scrub_module.os, "fdopen", full_disk)
    status, _, err = cli("scrub", str(leads), "--column", "phone", "-o", str(out))
    assert (
        2,
        f"callgate: error: -o {out}: cannot write: No space left on device: free some disk "
        "space there, or write the output elsewhere; nothing was written\n",
        ["callgate.toml", "leads.csv"],
    ) == (status, err, sorted(p.name for p in tmp_path.iterdir()))


def test_a_command_without_its_action_points_at_its_own_help(
    cli: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """``callgate list`` alone: the help that lists the actions is ``callgate list --help``."""
    with pytest.raises(SystemExit) as exited:
        cli("list")
    err = capsys.readouterr().err
    assert (2, "(see callgate list --help)\n") == (exited.value.code, err[err.index("(see") :])


@pytest.mark.parametrize("mode", [[], ["--replace"]])
def test_a_block_list_dated_in_the_future_is_one_error_line_and_nothing_imported(
    cli: Run, tmp_path: Path, mode: list[str]
) -> None:
    """A block list's freshness checks count from its --refreshed-at: one a year ahead (a
    typo) would pass them for a year more. Refused (exit 2, one line saying why), nothing
    imported, the list's date unchanged."""
    listed = tmp_path / "red.txt"
    listed.write_text("0612345678\n0612345679\n", encoding="utf-8")
    ahead = (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0)
    status, out, err = cli(
        "list", "import", "red", str(listed), *mode, "--refreshed-at", ahead.isoformat()
    )
    assert (2, "", 1) == (status, out, len(err.splitlines())), err
    assert err.startswith(
        f"callgate: error: --refreshed-at {ahead.isoformat()}: later than the gate's clock"
    )
    assert "the list's freshness counts from then: give the time the file was drawn" in err
    assert (0, "0\n", "") == cli("list", "count", "red")
