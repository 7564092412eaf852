"""The ``callgate`` command: decisions, list admin and its one-line error contract.

Most tests call ``gate.cli.main(argv)`` in-process with the sample config
(``config/callgate.toml``) pointed at the test's real Redis; the error-contract tests run
``python -m gate.cli`` as a subprocess to see the real exit status and stderr.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from gate.cli import EXIT_BLOCK, main
from gate.config.files import PACKS_DIR
from gate.lists.scrub import _worker_signals
from gate.store.embedded import SERVER_ENV
from tests.conftest import SAMPLE_CONFIG, TEST_SECRET

NUMBER = "+33612345678"
CLOSED_PORT_URL = "redis://127.0.0.1:1"
SUBPROCESS_TIMEOUT_S = 30.0
LISTED_RED = {
    "verdict": "BLOCK",
    "reason": "listed:red",
    "rule": "list:red",
    "retry_after_s": None,
    "destination": NUMBER,
    "shadow": [],
    "rules": None,
}
VERDICT_EXIT = {"ALLOW": 0, "BLOCK": 3, "DEFER": 4}

Settings = dict[str, dict[str, Any]]


def edit_toml(text: str, settings: Settings) -> str:
    """``text`` with ``settings[table][key]`` set (None: removed) inside existing tables."""
    table = ""
    seen: set[str] = set()
    out: list[str] = []
    for line in text.splitlines():
        header = re.match(r"^\[([A-Za-z0-9_.]+)\]\s*$", line)
        if header:
            table = header.group(1)
            seen.add(table)
            out.append(line)
            for name, value in settings.get(table, {}).items():
                if value is not None:
                    out.append(f"{name} = {json.dumps(value)}")
            continue
        assignment = re.match(r"^([A-Za-z0-9_]+)\s*=", line)
        if assignment and assignment.group(1) in settings.get(table, {}):
            continue  # replaced by (or removed in favour of) the value written above
        out.append(line)
    assert set(settings) <= seen, f"tables {set(settings) - seen} not in the sample config"
    return "\n".join(out) + "\n"


PLAIN_CAP = """
[[caps]]
id = "fr-4-per-30d"
limit = 4
window = "30d"
scope = "tenant"
"""


def sample_config(url: str | None, **settings: dict[str, Any]) -> str:
    """The sample config with a test Redis and a literal secret (no secret file)."""
    base: Settings = {
        "gate": {"packs": [], "state_dir": "."},
        "redis": {"url": url, "data_dir": None},
        "privacy": {"secret": TEST_SECRET, "secret_file": None},
    }
    for name, values in settings.items():
        base[name] = {**base.get(name, {}), **values}
    # Without the fr pack (its calling hours would make these tests depend on the clock),
    # with the same 4-per-30-days cap as a plain config cap.
    return edit_toml(SAMPLE_CONFIG.read_text(encoding="utf-8"), base) + PLAIN_CAP


@pytest.fixture(autouse=True)
def no_callgate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's CALLGATE_* variables must not leak into the command under test."""
    for name in ("CALLGATE_SECRET", "CALLGATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config_file(tmp_path: Path, redis_url: str) -> Path:
    """The sample config on the test's Redis."""
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(redis_url), encoding="utf-8")
    return path


Run = Callable[..., tuple[int, str, str]]


def run_cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    """``callgate --config CONFIG ARGS…`` in-process: (status, stdout, stderr)."""
    capsys.readouterr()
    status = main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], config_file: Path) -> Run:
    """``run_cli`` with ``config_file`` unless told another config."""

    def run(*args: str, config: Path = config_file) -> tuple[int, str, str]:
        return run_cli(capsys, config, *args)

    return run


def check_json(cli: Run, *args: str, **options: Path) -> dict[str, Any]:
    """``check … --json``: the decision without its config_version (exit status checked)."""
    status, out, _ = cli("check", *args, "--json", **options)
    result: dict[str, Any] = json.loads(out)
    assert VERDICT_EXIT[result["verdict"]] == status
    assert isinstance(result.pop("config_version"), str)
    return result


def run_subprocess(
    cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m gate.cli ARGS…`` with a clean CALLGATE_* environment (but the suite's
    choice of server binary) and ``env`` added, in ``cwd``; ``stdin`` written to it
    through a pipe."""
    return subprocess.run(
        [sys.executable, "-m", "gate.cli", *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
        cwd=cwd,
        env=cli_env(env),
        input=stdin,
    )


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``gate.cli`` subprocess: a clean CALLGATE_* environment (but
    the suite's choice of server binary), ``env`` added."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")},
        **{k: v for k, v in os.environ.items() if k == SERVER_ENV},
        **(env or {}),
    }


# Ctrl-C as a terminal delivers it: with Python's own SIGINT handler, even when the suite
# itself was started in the background (where the shell ignores SIGINT, and so would every
# process started from it).
INTERACTIVE = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    "sys.argv[0] = 'callgate'; runpy.run_module('gate.cli', run_name='__main__')"
)


def interactive_cli(cwd: Path, *args: str, session: bool = False) -> subprocess.Popen[str]:
    """``callgate ARGS…`` started as from a terminal (see ``INTERACTIVE``), its output piped;
    ``session``: in a process group of its own, as a terminal's foreground job."""
    return subprocess.Popen(
        [sys.executable, "-c", INTERACTIVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=session,
    )


# --- check ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["06 12 34 56 78", "0033 6 12 34 56 78", "tel:+33612345678", "+33 6 12 34 56 78"]
)
def test_listed_number_is_blocked_however_it_is_written(cli: Run, spelling: str) -> None:
    """A number put on red as +33… is BLOCK listed:red in every spelling of it."""
    assert (0, "1 added, 0 already listed\n", "") == cli("list", "add", "red", NUMBER)
    assert LISTED_RED == check_json(cli, spelling)


def test_check_json_has_exactly_the_decision_keys(cli: Run) -> None:
    """``check --json`` prints what the API answers: verdict, reason, rule, retry_after_s,
    destination, shadow, config_version and (without --explain) rules null."""
    status, out, _ = cli("check", "0612345678", "--json")
    expected = {
        "verdict": "ALLOW",
        "reason": "allowed",
        "rule": "",
        "retry_after_s": None,
        "destination": NUMBER,
        "shadow": [],
        "rules": None,
    }
    result = json.loads(out)
    version = result.pop("config_version")
    assert (0, expected) == (status, result)
    assert re.fullmatch(r"[0-9a-f]{12}", version)


def test_check_plain_text_is_one_line(cli: Run) -> None:
    """Without --json the decision is one line: verdict, reason, E.164."""
    assert (0, "ALLOW allowed +33612345678\n", "") == cli("check", "0612345678")


def test_adding_a_listed_number_again_says_so(cli: Run) -> None:
    """Adding a number already on the list counts it as already listed."""
    cli("list", "add", "red", NUMBER)
    assert (0, "0 added, 1 already listed\n", "") == cli("list", "add", "red", "06 12 34 56 78")


def test_adding_a_number_a_pack_list_never_checks_warns(
    cli: Run, tmp_path: Path, redis_url: str
) -> None:
    """A pack's list is read only for its regions' numbers (us: the US and its
    territories): ``list add`` of another country's number adds it, and warns on stderr."""
    us = tmp_path / "us.toml"
    us.write_text(
        sample_config(redis_url, gate={"packs": ["us"], "default_region": "US"}),
        encoding="utf-8",
    )
    added = cli("list", "add", "national_dnc", "+447911123456", "2125550123", "+17875550124",
                config=us)  # fmt: skip
    assert (
        0,
        "3 added, 0 already listed\n",
        "callgate: warning: list 'national_dnc' is checked only for numbers of its packs' "
        "regions (AS, GU, MP, PR, US, VI): +447911123456 added, but never checked against it\n",
    ) == added


def test_fifth_recorded_check_is_deferred(cli: Run) -> None:
    """Four recorded checks of one number pass; the fifth is DEFER with a retry delay."""
    results = [check_json(cli, NUMBER, "--record") for _ in range(5)]
    assert ["ALLOW"] * 4 + ["DEFER"] == [r["verdict"] for r in results]
    assert "cap:fr-4-per-30d" == results[-1]["reason"]
    assert isinstance(results[-1]["retry_after_s"], int)
    assert results[-1]["retry_after_s"] > 0


def test_check_without_record_does_not_count(cli: Run) -> None:
    """Ten plain checks count nothing: four recorded checks after them still pass."""
    plain = [check_json(cli, NUMBER)["verdict"] for _ in range(10)]
    recorded = [check_json(cli, NUMBER, "--record")["verdict"] for _ in range(4)]
    assert ["ALLOW"] * 14 == plain + recorded
    assert "DEFER" == check_json(cli, NUMBER)["verdict"]


def test_check_at_a_given_time(cli: Run) -> None:
    """``--at`` decides as of that time: four attempts now no longer count in 31 days."""
    for _ in range(4):
        check_json(cli, NUMBER, "--record")
    later = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    assert "DEFER" == check_json(cli, NUMBER)["verdict"]
    assert "ALLOW" == check_json(cli, NUMBER, "--at", later)["verdict"]


@pytest.mark.parametrize("offset", [timedelta(days=63), timedelta(days=-3), timedelta(seconds=9)])
def test_a_recorded_check_at_another_time_is_refused_and_counts_nothing(
    cli: Run, offset: timedelta
) -> None:
    """``--record --at`` more than 5 s from now: exit 2 with one line; the four real
    attempts already counted stay counted (the fifth is still DEFER)."""
    for _ in range(4):
        check_json(cli, NUMBER, "--record")
    at = (datetime.now(UTC) + offset).isoformat()
    status, out, err = cli("check", NUMBER, "--record", "--at", at)
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert err.startswith("callgate: error: --at with --record: a recorded attempt happens now")
    assert ("DEFER", "cap:fr-4-per-30d") == tuple(check_json(cli, NUMBER).values())[:2]


def test_a_recorded_check_at_now_is_accepted(cli: Run) -> None:
    """``--record --at`` within the skew of now records like ``--record``."""
    at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert "ALLOW" == check_json(cli, NUMBER, "--record", "--at", at)["verdict"]


def test_explain_lists_every_rule(cli: Run) -> None:
    """``--explain`` prints the decision, then one line per rule in evaluation order."""
    cli("list", "add", "red", NUMBER)
    status, out, _ = cli("check", NUMBER, "--explain")
    lines = out.splitlines()
    expected_rules = [
        "numbers",
        "packs",
        "list:customers",
        "list:red",
        "list:dnc",
        "cap:fr-4-per-30d",
    ]
    assert (3, "BLOCK listed:red +33612345678") == (status, lines[0])
    assert expected_rules == [line.split()[0] for line in lines[1:]]
    assert "BLOCK" == lines[4].split()[1]


def test_json_explain_includes_the_rules(cli: Run) -> None:
    """``--json --explain`` adds a "rules" list of {rule, outcome, detail}."""
    result = check_json(cli, NUMBER, "--explain")
    rules = result.pop("rules")
    assert {
        "verdict": "ALLOW",
        "reason": "allowed",
        "rule": "",
        "retry_after_s": None,
        "destination": NUMBER,
        "shadow": [],
    } == result
    assert [
        "numbers",
        "packs",
        "list:customers",
        "list:red",
        "list:dnc",
        "cap:fr-4-per-30d",
    ] == [r["rule"] for r in rules]
    assert {
        "rule": "cap:fr-4-per-30d",
        "outcome": "pass",
        "detail": "4 in 30d; 0 of 4 in window",
        "source": "",
    } == rules[-1]


def test_explain_of_a_static_decision_names_its_rule(cli: Run) -> None:
    """A decision made without Redis (emergency) explains itself in one rule line."""
    result = check_json(cli, "17", "--class", "campaign", "--explain")
    assert [
        {"rule": "emergency", "outcome": "BLOCK", "detail": "emergency", "source": ""}
    ] == result["rules"]


# --- store down -------------------------------------------------------------------------


@pytest.fixture
def store_down_config(tmp_path: Path) -> Path:
    path = tmp_path / "down.toml"
    path.write_text(sample_config(CLOSED_PORT_URL, redis={"deadline": "50ms"}), encoding="utf-8")
    return path


def test_store_down_still_allows_an_agent_to_dial_emergency(
    cli: Run, store_down_config: Path
) -> None:
    """With Redis unreachable, 17 dialled by hand is ALLOW emergency."""
    result = check_json(cli, "17", "--class", "manual", config=store_down_config)
    expected = {
        "verdict": "ALLOW",
        "reason": "emergency",
        "rule": "emergency",
        "retry_after_s": None,
        "destination": "17",
        "shadow": [],
        "rules": None,
    }
    assert expected == result


def test_store_down_defers_without_hanging(tmp_path: Path, store_down_config: Path) -> None:
    """With Redis unreachable a check is DEFER store_unavailable within seconds, no traceback."""
    started = time.monotonic()
    done = run_subprocess(
        tmp_path, "--config", str(store_down_config), "check", "0612345678", "--json"
    )
    elapsed = time.monotonic() - started
    expected = {
        "verdict": "DEFER",
        "reason": "store_unavailable",
        "rule": "fail_mode",
        "retry_after_s": 60,
        "destination": NUMBER,
        "shadow": [],
        "rules": None,
    }
    result = json.loads(done.stdout)
    result.pop("config_version")
    assert (4, expected) == (done.returncode, result)
    assert "Traceback" not in done.stderr
    assert elapsed < 5.0


def test_list_admin_with_store_down_is_one_error_line(
    tmp_path: Path, store_down_config: Path
) -> None:
    """An admin command against an unreachable Redis exits 2 with one line saying so."""
    done = run_subprocess(tmp_path, "--config", str(store_down_config), "list", "count", "red")
    assert (2, 1) == (done.returncode, len(done.stderr.splitlines()))
    assert done.stderr.startswith("callgate: error: Redis at redis://127.0.0.1:1 is unreachable")


# --- the one-line error contract --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["list", "add", "red", "17"], "emergency"),
        (["list", "add", "nosuch", NUMBER], "'nosuch' is not in the config"),
        (["list", "add", "red", "not-a-number"], "'not-a-number'"),
        (["list", "add", "red"], "required: NUMBER"),
        (["check", "0612345678", "--at", "garbage"], "argument --at: 'garbage' is not a date"),
        (["check", "0612345678", "--tenant", "a{b}"], "'a{b}'"),
        (["check", "0612345678", "--class", "robot"], "invalid choice: 'robot'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_mistake_is_exit_2_and_one_stderr_line(
    tmp_path: Path, config_file: Path, args: list[str], needle: str
) -> None:
    """A bad argument exits 2 with exactly one ``callgate: error:`` line and no traceback."""
    done = run_subprocess(tmp_path, "--config", str(config_file), *args)
    assert (2, "", 1) == (done.returncode, done.stdout, len(done.stderr.splitlines()))
    assert done.stderr.startswith("callgate: error: ")
    assert needle in done.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such config file"),
        ("[gate\ndefault_region = 'FR'\n", "not valid TOML"),
        (b"\xff\xfe[gate]\n", "not UTF-8"),
    ],
)
def test_unreadable_config_is_exit_2_naming_the_file(
    tmp_path: Path, content: str | bytes | None, needle: str
) -> None:
    """A missing, broken or non-UTF-8 config file exits 2 with one line naming the file."""
    path = tmp_path / "broken.toml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    done = run_subprocess(tmp_path, "--config", str(path), "check", NUMBER)
    assert (2, 1) == (done.returncode, len(done.stderr.splitlines()))
    assert done.stderr.startswith(f"callgate: error: {path}: ")
    assert needle in done.stderr


def test_invalid_config_value_is_exit_2_naming_the_key(tmp_path: Path, redis_url: str) -> None:
    """``limit = -1`` in the first cap exits 2 with one line naming the file and caps[0].limit."""
    path = tmp_path / "callgate.toml"
    text = sample_config(redis_url).replace("limit = 4", "limit = -1")
    path.write_text(text, encoding="utf-8")
    done = run_subprocess(tmp_path, "--config", str(path), "config", "check")
    assert (2, 1) == (done.returncode, len(done.stderr.splitlines()))
    assert done.stderr.startswith(f"callgate: error: {path}: caps[0].limit: ")


def test_config_check_refuses_a_pack_named_twice_in_one_line(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``packs = ["fr", "fr"]``: ``config check`` exits 2 with one line naming gate.packs
    and the pack (it said the pack's cap shared its id with the same cap: "rename one")."""
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(redis_url, gate={"packs": ["fr", "fr"]}), encoding="utf-8")
    status, out, err = run_cli(capsys, path, "config", "check")
    assert (
        2,
        "",
        [
            f"callgate: error: {path}: gate.packs: 'fr' is listed twice; list each "
            "pack once (its rules would apply twice)"
        ],
    ) == (status, out, err.splitlines())


def test_config_check_refuses_an_unknown_pack_in_one_line_naming_the_config(
    tmp_path: Path, redis_url: str
) -> None:
    """``packs = ["fr", "de"]``: ``config check`` exits 2 with one line that starts, as every
    other config error does, with the config file (it started with "gate.packs")."""
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(redis_url, gate={"packs": ["fr", "de"]}), encoding="utf-8")
    done = run_subprocess(tmp_path, "--config", str(path), "config", "check")
    assert (2, "", 1) == (done.returncode, done.stdout, len(done.stderr.splitlines()))
    assert done.stderr.startswith(f"callgate: error: {path}: gate.packs: no pack 'de' (")
    assert done.stderr.rstrip().endswith("; check gate.packs and gate.packs_dir")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:99999/0", "redis://[::1/0"]
)
def test_a_malformed_redis_url_is_exit_2_naming_it_in_every_command(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A redis.url redis-py cannot read exits 2 with one line naming redis.url, from
    ``config check`` and from a command that connects (not a traceback)."""
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(url), encoding="utf-8")
    for args in (("config", "check"), ("list", "count", "red")):
        status, out, err = run_cli(capsys, path, *args)
        assert (2, "", 1) == (status, out, len(err.splitlines()))
        assert err.startswith(f"callgate: error: {path}: redis.url: ")


def test_refused_credentials_are_exit_2_saying_so_not_unreachable(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Redis that refuses the URL's password (WRONGPASS) exits 2 with one line saying the
    credentials were refused and where to set them, not "unreachable; is it running?"."""
    sync_redis.acl_setuser("gate-test", enabled=True, passwords=["+right"], commands=["+@all"])
    try:
        path = tmp_path / "callgate.toml"
        scheme, rest = redis_url.split("://", 1)
        url = f"{scheme}://gate-test:wrong@{rest}"
        path.write_text(sample_config(url), encoding="utf-8")
        status, out, err = run_cli(capsys, path, "list", "count", "red")
    finally:
        sync_redis.acl_deluser("gate-test")
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert "refused callgate's credentials (" in err
    assert "unreachable" not in err
    assert err.rstrip().endswith(
        "set the user and password in the Redis URL or redis.username/password "
        "(or $CALLGATE_REDIS_PASSWORD)"
    )


def test_a_date_time_where_a_local_pack_wants_a_date_is_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``valid_from = 2026-08-11T00:00:00Z`` in a local copy of the fr pack exits 2 with one
    line naming the config file, the pack file and the key, from ``config check`` and from
    ``check`` (every decision failed comparing it with a day)."""
    packs = tmp_path / "packs"
    packs.mkdir()
    text = (PACKS_DIR / "fr.toml").read_text(encoding="utf-8")
    assert 1 == text.count("valid_from = 2026-08-11\n")
    text = text.replace("valid_from = 2026-08-11\n", "valid_from = 2026-08-11T00:00:00Z\n")
    (packs / "fr.toml").write_text(text, encoding="utf-8")
    path = tmp_path / "callgate.toml"
    path.write_text(
        sample_config("redis://127.0.0.1:1", gate={"packs": ["fr"], "packs_dir": "packs"}),
        encoding="utf-8",
    )
    for args in (("config", "check"), ("check", "0698765432")):
        status, out, err = run_cli(capsys, path, *args)
        assert (2, "", 1) == (status, out, len(err.splitlines()))
        assert err.startswith(
            f"callgate: error: {path}: gate.packs: {packs / 'fr.toml'}: consent[0].valid_from: "
            "expected a date like 2026-08-11 (no time of day), got 2026-08-11T00:00:00+00:00"
        )


def test_an_unknown_holiday_calendar_stops_the_deciding_commands_not_the_list_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """``holidays = ["FR", "ZZ"]`` in a local copy of the fr pack: ``config check``,
    ``check`` and ``scrub`` exit 2 naming the config and pack files and the key; ``list
    import`` never reads a calendar and runs, without importing the holidays package (its
    start's largest cost)."""
    packs = tmp_path / "packs"
    packs.mkdir()
    text = (PACKS_DIR / "fr.toml").read_text(encoding="utf-8")
    assert 1 == text.count('holidays = ["FR"]\n')
    (packs / "fr.toml").write_text(text.replace('holidays = ["FR"]\n', 'holidays = ["FR", "ZZ"]\n'))
    path = tmp_path / "callgate.toml"
    path.write_text(
        sample_config(redis_url, gate={"packs": ["fr"], "packs_dir": "packs"}), encoding="utf-8"
    )
    leads = tmp_path / "leads.csv"
    leads.write_text("phone\n0612345678\n", encoding="utf-8")
    for args in (
        ("config", "check"),
        ("check", "0698765432"),
        ("scrub", str(leads), "-o", str(tmp_path / "out.csv")),
    ):
        status, out, err = run_cli(capsys, path, *args)
        assert (2, "", 1) == (status, out, len(err.splitlines())), args
        assert re.match(
            rf"callgate: error: {re.escape(str(path))}: gate\.packs: "
            rf"{re.escape(str(packs / 'fr.toml'))}: hours\[\d+\]\.holidays: "
            "'ZZ' is not a calendar of the holidays package",
            err,
        ), err
    numbers = tmp_path / "red.txt"
    numbers.write_text("+33612345678\n", encoding="utf-8")
    argv = ["--config", str(path), "list", "import", "red", str(numbers)]
    code = (
        "import sys\n"
        "from gate.cli import main\n"
        f"status = main({argv!r})\n"
        "print(status, sorted(m for m in sys.modules if m.startswith('holidays')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert ["1 imported, 0 duplicates, 0 rejected", "0 []"] == done.stdout.splitlines()


def test_a_cap_window_under_a_second_is_refused_by_config_check(
    tmp_path: Path, redis_url: str
) -> None:
    """``window = "0.4ms"`` (would expire attempt logs at once) exits 2 naming caps[0].window."""
    path = tmp_path / "callgate.toml"
    text = sample_config(redis_url).replace('window = "30d"', 'window = "0.4ms"')
    path.write_text(text, encoding="utf-8")
    done = run_subprocess(tmp_path, "--config", str(path), "config", "check")
    assert (2, 1) == (done.returncode, len(done.stderr.splitlines()))
    assert done.stderr.startswith(f"callgate: error: {path}: caps[0].window: must be at least 1s")


def test_missing_secret_is_exit_2_naming_the_key(tmp_path: Path, redis_url: str) -> None:
    """Hashed numbers without any secret exit 2 with one line naming privacy.secret."""
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(redis_url, privacy={"secret": None}), encoding="utf-8")
    done = run_subprocess(tmp_path, "--config", str(path), "config", "check")
    assert (2, 1) == (done.returncode, len(done.stderr.splitlines()))
    assert done.stderr.startswith(f"callgate: error: {path}: privacy.secret: ")


@pytest.mark.parametrize("where", ["file", "environment"])
def test_a_short_secret_is_exit_2_saying_where_and_how_to_make_one(
    tmp_path: Path, redis_url: str, where: str
) -> None:
    """A 1-character secret, in privacy.secret or $CALLGATE_SECRET: ``config check`` exits
    2 with one line naming where it came from and how to make a random one."""
    path = tmp_path / "callgate.toml"
    in_file = where == "file"
    path.write_text(
        sample_config(redis_url, privacy={"secret": "k" if in_file else TEST_SECRET}),
        encoding="utf-8",
    )
    env = None if in_file else {"CALLGATE_SECRET": "k"}
    done = run_subprocess(tmp_path, "--config", str(path), "config", "check", env=env)
    origin = f"{path}: privacy.secret" if in_file else "$CALLGATE_SECRET"
    assert (2, "", 1) == (done.returncode, done.stdout, len(done.stderr.splitlines()))
    assert done.stderr.startswith(
        f"callgate: error: {origin}: the secret has 1 character, fewer than 16: "
    )
    assert "secrets.token_hex(32)" in done.stderr


def test_in_process_error_returns_2_with_one_line(cli: Run) -> None:
    """``main()`` returns 2 (no exception) and prints one line for a protected number."""
    status, out, err = cli("list", "add", "red", "17")
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert "emergency" in err


# --- config check -----------------------------------------------------------------------


def test_config_check_accepts_the_sample_config(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped config/callgate.toml validates (secret from $CALLGATE_SECRET)."""
    monkeypatch.setenv("CALLGATE_SECRET", TEST_SECRET)
    status, out, err = cli("config", "check", config=SAMPLE_CONFIG)
    assert (0, "") == (status, err)
    assert f"{SAMPLE_CONFIG}: OK" == out.splitlines()[0]
    assert "  packs: fr 2026.12.2 (BL, FR, GF, GP, MF, MQ, PM, RE, YT)" in out.splitlines()
    trunks = "  trunk caps: carrier-a 20 per second, any other trunk no cap (trunks.default_cps)"
    assert trunks in out.splitlines()


def test_config_check_says_what_cap_a_trunk_it_does_not_name_gets(
    cli: Run, tmp_path: Path, redis_url: str
) -> None:
    """trunks.default_cps = 5: ``config check`` says any other trunk is capped at 5."""
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(redis_url, trunks={"default_cps": 5}), encoding="utf-8")
    status, out, err = cli("config", "check", config=path)
    trunks = "  trunk caps: carrier-a 20 per second, any other trunk 5 per second "
    assert (0, "", [trunks + "(trunks.default_cps)"]) == (
        status,
        err,
        [line for line in out.splitlines() if line.startswith("  trunk caps:")],
    )


def test_config_check_shows_paths_resolved(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config reached through ``..``, whose state_dir is ``../var`` (the sample's), is
    shown with every path resolved: no ``..`` left."""
    monkeypatch.setenv("CALLGATE_SECRET", TEST_SECRET)
    (tmp_path / "etc").mkdir()
    text = sample_config(None, gate={"state_dir": "../var", "packs_dir": "./packs/.."})
    (tmp_path / "etc" / "callgate.toml").write_text(text, encoding="utf-8")
    given = tmp_path / "etc" / ".." / "etc" / "callgate.toml"
    status, out, err = cli("config", "check", config=given)
    assert (0, "") == (status, err)
    var = tmp_path.resolve() / "var"
    assert [
        f"{tmp_path.resolve() / 'etc' / 'callgate.toml'}: OK",
        f"  state in {var}, packs from {tmp_path.resolve() / 'etc'}",
    ] == [out.splitlines()[0], out.splitlines()[2]]
    assert f"data in {var / 'redis'}" in out.splitlines()[1]
    assert ".." not in out


# --- list import ------------------------------------------------------------------------

IMPORT_LINES = [
    "# opposition list, exported 2026-11-30",  # 1
    "+33612345678",  # 2
    "06 12 34 56 79",  # 3
    "",  # 4
    "0033 6 12 34 56 80",  # 5
    "not a number",  # 6 rejected
    "+33612345681",  # 7
    "   # indented comment",  # 8
    "tel:+33612345682",  # 9
    "06.12.34.56.78",  # 10 duplicate of line 2
    "17",  # 11 rejected: protected
    "",  # 12
]
IMPORTED = ["+33612345678", "+33612345679", "+33612345680", "+33612345681", "+33612345682"]


@pytest.fixture
def import_file(tmp_path: Path) -> Path:
    """A BOM-prefixed CRLF file: 5 good numbers, 1 duplicate, 2 bad lines, blanks, comments."""
    path = tmp_path / "optouts.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(IMPORT_LINES).encode())
    return path


def test_import_reports_imported_duplicates_and_rejected(cli: Run, import_file: Path) -> None:
    """Import summarises counts on stdout and reports each rejected line as FILE:LINE."""
    status, out, err = cli("list", "import", "red", str(import_file))
    assert (0, "5 imported, 1 duplicate, 2 rejected\n") == (status, out)
    assert [f"{import_file}:6:", f"{import_file}:11:"] == [
        line.split(" ")[0] for line in err.splitlines()
    ]
    assert "emergency" in err.splitlines()[1]


def test_imported_numbers_are_counted_and_blocked(cli: Run, import_file: Path) -> None:
    """After the import, red holds 5 entries and an imported number is blocked."""
    cli("list", "import", "red", str(import_file))
    assert (0, "5\n", "") == cli("list", "count", "red")
    assert "listed:red" == check_json(cli, "06 12 34 56 80")["reason"]


# International numbers written with the trunk prefix, as Europe writes them, each with
# a way the gate sees it dialled. Italy keeps its leading 0 (+39 02… is +3902…).
TRUNK_WRITTEN = [
    ("+33 (0)6 98 76 54 41", "0698765441"),
    ("+330698765442", "06 98 76 54 42"),
    ("+44 (0)20 7946 0999", "+442079460999"),
    ("+4402079460998", "0044 20 7946 0998"),
    ("+49 (0)30 12345678", "+49 30 12345678"),
    ("+49030 12345679", "+493012345679"),
    ("+39 02 1234 5678", "+390212345678"),
    ("+39 (0)2 1234 5679", "+39 02 1234 5679"),
]


def test_numbers_written_with_a_trunk_prefix_are_imported_as_the_gate_reads_them(
    cli: Run, tmp_path: Path
) -> None:
    """``+33 (0)6…``, ``+44 (0)20…``, ``+49 (0)30…`` (with or without separators) are
    imported as the numbers the gate reads dialled, and as ``list add`` stores them: each
    is BLOCK listed:red."""
    path = tmp_path / "optouts.txt"
    path.write_text("".join(f"{written}\n" for written, _ in TRUNK_WRITTEN), encoding="utf-8")
    assert (0, "8 imported, 0 duplicates, 0 rejected\n", "") == cli(
        "list", "import", "red", str(path)
    )
    assert [(dialled, "listed:red") for _, dialled in TRUNK_WRITTEN] == [
        (dialled, check_json(cli, dialled)["reason"]) for _, dialled in TRUNK_WRITTEN
    ]
    added = cli("list", "add", "red", *(written for written, _ in TRUNK_WRITTEN))
    assert (0, "0 added, 8 already listed\n", "") == added


def test_remove_then_count(cli: Run, import_file: Path) -> None:
    """Removing two listed numbers and one unlisted leaves 3 entries and unblocks them."""
    cli("list", "import", "red", str(import_file))
    assert (0, "2 removed, 1 was not listed\n", "") == cli(
        "list", "remove", "red", "0612345678", "+33612345679", "+33699999999"
    )
    assert (0, "3\n", "") == cli("list", "count", "red")
    assert "ALLOW" == check_json(cli, NUMBER)["verdict"]


def test_an_import_with_remove_says_how_many_were_not_listed(cli: Run, tmp_path: Path) -> None:
    """``list import --remove``: the lines whose number was not listed (or came again, in
    another format) are "not listed", as ``list remove`` says, not "duplicates"."""
    path = tmp_path / "out.txt"
    path.write_text("+33612345678\n06 12 34 56 78\n+33612345679\n", encoding="utf-8")
    cli("list", "add", "red", "+33612345678")
    assert (0, "1 removed, 2 were not listed, 0 rejected\n", "") == cli(
        "list", "import", "red", str(path), "--remove"
    )
    assert (0, "0 removed, 3 were not listed, 0 rejected\n", "") == cli(
        "list", "import", "red", str(path), "--remove"
    )


def test_import_writes_a_rejects_file(cli: Run, import_file: Path, tmp_path: Path) -> None:
    """``--rejects`` writes one tab-separated line per rejected line: number, why, text."""
    rejects = tmp_path / "out.tsv"
    cli("list", "import", "red", str(import_file), "--rejects", str(rejects))
    rows = [line.split("\t") for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [("6", "not a number"), ("11", "17")] == [(row[0], row[2]) for row in rows]
    assert [3, 3] == [len(row) for row in rows]


def test_import_csv_column_by_header_name(cli: Run, tmp_path: Path) -> None:
    """``--column phone`` picks the named column of a CSV with a header row."""
    path = tmp_path / "contacts.csv"
    path.write_text(
        'name,phone,city\nAlice,06 12 34 56 78,Paris\n"Bob, Jr",+33612345679,Lyon\n',
        encoding="utf-8",
    )
    status, out, _ = cli("list", "import", "red", str(path), "--column", "phone")
    assert (0, "2 imported, 0 duplicates, 0 rejected, header row (line 1) skipped\n") == (
        status,
        out,
    )
    assert "listed:red" == check_json(cli, "+33612345679")["reason"]


@pytest.mark.parametrize("column", [["--column", "2"], []], ids=["column", "no-column"])
def test_import_csv_header_flag_skips_the_header_row(
    cli: Run, tmp_path: Path, column: list[str]
) -> None:
    """``--header`` with a column number (or none: column 1) skips the first row, and the
    summary says so; it is not counted as rejected."""
    path = tmp_path / "contacts.csv"
    text = "name,phone\nA,0612345678\n" if column else "phone\n0612345678\n"
    path.write_text(text, encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(path), *column, "--header")
    assert (0, "1 imported, 0 duplicates, 0 rejected, header row (line 1) skipped\n", "") == (
        status,
        out,
        err,
    )
    assert "listed:red" == check_json(cli, "+33612345678")["reason"]
    status, out, _ = cli("list", "import", "red", str(path), *column, "--header", "--json")
    summary = json.loads(out)
    assert (0, 1, 0, 2) == (status, summary["header_line"], summary["rejected"], summary["lines"])
    status, out, _ = cli("list", "import", "red", str(path), *column, "--json")
    assert None is json.loads(out)["header_line"]  # no --header: no row was a header


def test_import_csv_header_flag_skips_only_the_first_row(cli: Run, tmp_path: Path) -> None:
    """With ``--header`` a later row without a number is rejected, with its line: only the
    first row (after comments and blank lines) is the header."""
    path = tmp_path / "contacts.csv"
    path.write_text("# export\nname,phone\nA,0612345678\nname,phone\n", encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(path), "--column", "2", "--header")
    assert (0, "1 imported, 0 duplicates, 1 rejected, header row (line 2) skipped\n") == (
        status,
        out,
    )
    assert err.startswith(f"{path}:4: rejected: number 'phone'")


def test_import_header_flag_refused_for_a_us_dnc_file(cli: Run, tmp_path: Path) -> None:
    """A us-dnc file has no header: ``--header`` with it is a one-line error."""
    path = tmp_path / "212.txt"
    path.write_text("2125550143\n", encoding="utf-8")
    status, _, err = cli("list", "import", "red", str(path), "--format", "us-dnc", "--header")
    assert (
        2,
        "callgate: error: --header: a us-dnc file has no header row; leave --header out, or "
        "give --format csv\n",
    ) == (status, err)


def test_import_csv_column_by_index_with_semicolons(cli: Run, tmp_path: Path) -> None:
    """``--column 2`` picks the second cell of a semicolon-separated file."""
    path = tmp_path / "contacts.csv"
    path.write_text("Alice;0612345678;Paris\nBob;0612345679;Lyon\nEve\n", encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(path), "--column", "2")
    assert (0, "2 imported, 0 duplicates, 1 rejected\n") == (status, out)
    assert err.startswith(f"{path}:3: rejected: no column 2")


def test_import_csv_unknown_header_name_is_an_error(cli: Run, tmp_path: Path) -> None:
    """``--column`` naming no header cell exits 2 with one line naming the file and the
    header's line (as the scrub's names the file)."""
    path = tmp_path / "contacts.csv"
    path.write_text("# CRM export\nname,phone\nAlice,0612345678\n", encoding="utf-8")
    status, _, err = cli("list", "import", "red", str(path), "--column", "mobile")
    assert (
        2,
        f"callgate: error: {path}:2: no column named 'mobile' in header ['name', 'phone']\n",
    ) == (status, err)


def test_import_gzip_file(cli: Run, tmp_path: Path) -> None:
    """A gzip-compressed list is read as text."""
    path = tmp_path / "optouts.txt.gz"
    path.write_bytes(gzip.compress("\n".join(IMPORTED).encode()))
    assert (0, "5 imported, 0 duplicates, 0 rejected\n", "") == cli(
        "list", "import", "red", str(path)
    )
    assert (0, "5\n", "") == cli("list", "count", "red")


def test_a_replace_from_the_wrong_file_is_refused_and_keeps_the_list(
    cli: Run, import_file: Path, tmp_path: Path
) -> None:
    """A CSV given without --column to --replace: every line rejected, so exit 2 with one
    error line saying what to do after the rejected lines; the list keeps its 5 entries.
    With --allow-empty the list is emptied."""
    cli("list", "import", "red", str(import_file))
    crm = tmp_path / "crm.csv"
    crm.write_text("name,phone\nAlice,0612345640\nBob,0612345641\n", encoding="utf-8")
    status, out, err = cli("list", "import", "red", str(crm), "--replace")
    kept = cli("list", "count", "red")
    emptied = cli("list", "import", "red", str(crm), "--replace", "--allow-empty")
    assert (2, "", 4) == (status, out, len(err.splitlines()))
    assert err.splitlines()[-1] == (
        "callgate: error: list 'red' is unchanged (5 entries): the file would replace it with "
        "an empty list, as none of its lines was accepted (3 rejected); check the file and its "
        "format or column, or pass --allow-empty to empty the list"
    )
    assert (0, "5\n", "") == kept
    assert (0, "0 in the new version, 0 duplicates, 3 rejected\n") == emptied[:2]


@pytest.mark.parametrize("given", ["/dev/stdin", "-"])
def test_a_replace_from_a_pipe_imports_what_it_gives(
    config_file: Path, tmp_path: Path, given: str
) -> None:
    """``list import red /dev/stdin --replace`` (or ``-``) fed through a pipe (as ``<(…)``
    is) reads it once, whole: its numbers are the list."""
    config = str(config_file)
    run_subprocess(tmp_path, "--config", config, "list", "add", "red", NUMBER)
    piped = run_subprocess(
        tmp_path, "--config", config, "list", "import", "red", given, "--replace",
        stdin="0612345640\n0612345641\n",
    )  # fmt: skip
    count = run_subprocess(tmp_path, "--config", config, "list", "count", "red")
    assert (0, "2 in the new version, 0 duplicates, 0 rejected\n", "2\n") == (
        piped.returncode,
        piped.stdout,
        count.stdout,
    )


def test_a_scrub_reads_its_leads_from_a_pipe(config_file: Path, tmp_path: Path) -> None:
    """``scrub -`` (standard input) fed through a pipe scrubs every lead it gives."""
    config, out = str(config_file), tmp_path / "out.csv"
    run_subprocess(tmp_path, "--config", config, "list", "add", "red", NUMBER)
    scrubbed = run_subprocess(
        tmp_path, "--config", config, "scrub", "-", "--column", "phone", "-o", str(out),
        stdin="name;phone\nAlice;06 12 34 56 78\nBob;+33612345679\n",
    )  # fmt: skip
    assert (0, f"2 leads scrubbed into {out}\n") == (
        scrubbed.returncode,
        scrubbed.stdout.splitlines(keepends=True)[0],
    )


IMPORT_STDIN = ("list", "import", "red", "-")


def _small_files() -> None:
    """In a child before exec: files of 100 kB at most, a larger write fails (EFBIG)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_pipe_whose_copy_cannot_be_written_is_one_error_line(
    config_file: Path, tmp_path: Path
) -> None:
    """A pipe is copied to a temporary file first: a copy the disk cannot hold (full, or
    here a file-size limit) is exit 2 with one line naming where and what to do, not
    "cannot read"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "gate.cli", "--config", str(config_file), *IMPORT_STDIN],
        input="0612345678\n" * 20_000,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=tmp_path,
        env={**env, "TMPDIR": str(tmp_path)},
        preexec_fn=_small_files,
    )
    assert (
        2,
        "callgate: error: /dev/stdin: cannot keep a copy of it in "
        f"{tmp_path}: File too large: free some space there, or set TMPDIR to a directory "
        "with room\n",
    ) == (done.returncode, done.stderr)


def test_import_of_a_missing_file_is_one_error_line(cli: Run, tmp_path: Path) -> None:
    """A missing import file exits 2 with one line naming it."""
    path = tmp_path / "nope.txt"
    status, _, err = cli("list", "import", "red", str(path))
    assert (2, 1) == (status, len(err.splitlines()))
    assert str(path) in err


def test_import_of_a_binary_file_is_one_error_line(cli: Run, tmp_path: Path) -> None:
    """A file that is not UTF-8 text exits 2 with one line saying so."""
    path = tmp_path / "list.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)))
    status, _, err = cli("list", "import", "red", str(path))
    assert (2, 1) == (status, len(err.splitlines()))
    assert "not UTF-8" in err


# --- list export ------------------------------------------------------------------------


def test_export_of_hashed_list_is_refused(cli: Run) -> None:
    """A hashed list cannot be exported: exit 2 with one line saying why."""
    cli("list", "add", "red", NUMBER)
    status, out, err = cli("list", "export", "red")
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert "cannot be exported" in err


def test_export_of_plain_list_prints_the_numbers(cli: Run, tmp_path: Path, redis_url: str) -> None:
    """With hash_numbers = false, export prints each E.164 number on its own line."""
    path = tmp_path / "plain.toml"
    path.write_text(sample_config(redis_url, privacy={"hash_numbers": False}), encoding="utf-8")
    cli("list", "add", "red", "0612345678", "+33612345679", config=path)
    status, out, err = cli("list", "export", "red", config=path)
    assert (0, "") == (status, err)
    assert ["+33612345678", "+33612345679"] == sorted(out.splitlines())


# --- embedded Redis ---------------------------------------------------------------------


def socket_answers(path: Path) -> bool:
    """True if a Redis server answers PING on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A short data directory under /tmp (unix socket paths are limited to ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cg", dir="/tmp"))
    yield path
    sock = path / "redis" / "redis.sock"
    if socket_answers(sock):  # a failed test must not leave a server behind
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        finally:
            client.close()
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_redis_keeps_lists_between_invocations(cli: Run, embedded_dir: Path) -> None:
    """Without redis.url each command runs an embedded Redis in data_dir and stops it; a
    number listed by one invocation is blocked in the next."""
    path = embedded_dir / "callgate.toml"
    sock = embedded_dir / "redis" / "redis.sock"
    path.write_text(sample_config(None, redis={"data_dir": "redis"}), encoding="utf-8")

    added = cli("list", "add", "red", NUMBER, config=path)
    running_between = socket_answers(sock)
    checked = check_json(cli, "06 12 34 56 78", config=path)

    assert (0, "1 added, 0 already listed\n", "") == added
    assert (False, LISTED_RED) == (running_between, checked)
    assert not socket_answers(sock)
    assert (embedded_dir / "redis").is_dir()


# --- scrub ------------------------------------------------------------------------------

SCRUB_ROWS = 100_000


def scrub_leads(path: Path) -> tuple[list[str], list[tuple[str, str, str]]]:
    """100 000 leads (``id,phone``): every 20th listed (5 %), 2 % malformed (1 % with an
    unreadable number, 1 % without a phone cell), the rest callable.
    Returns the listed numbers and each row's expected (verdict, reason, retry)."""
    listed: list[str] = []
    expected: list[tuple[str, str, str]] = []
    lines = ["id,phone"]
    for i in range(SCRUB_ROWS):
        if i % 100 == 1:
            lines.append(f"{i},06 12")
            expected.append(("BLOCK", "invalid_number", ""))
        elif i % 100 == 3:
            lines.append(f"{i}")
            expected.append(("ERROR", "missing_column", ""))
        elif i % 20 == 0:
            listed.append(f"0612{i:06d}")
            lines.append(f"{i},{listed[-1]}")
            expected.append(("BLOCK", "listed:red", ""))
        else:
            lines.append(f"{i},0613{i:06d}")
            expected.append(("ALLOW", "allowed", ""))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listed, expected


class StartMethods:
    """Records the start methods asked of ``multiprocessing.get_context``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked: list[str | None] = []
        real = multiprocessing.get_context

        def get_context(method: str | None = None) -> Any:
            self.asked.append(method)
            return real(method)

        monkeypatch.setattr(multiprocessing, "get_context", get_context)


@contextlib.contextmanager
def another_thread() -> Iterator[None]:
    """A second thread in this process while the block runs (stopped after it)."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(SUBPROCESS_TIMEOUT_S,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(SUBPROCESS_TIMEOUT_S)


def test_scrub_of_100k_leads_gives_exact_counts(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 000 leads, 5 % listed, 2 % malformed: the summary counts each kind exactly and
    the output has every row, in input order, with its verdict, reason and retry. With
    another thread in the process, its workers are spawned, not forked."""
    leads, out, red = tmp_path / "leads.csv", tmp_path / "out.csv", tmp_path / "red.txt"
    listed, expected = scrub_leads(leads)
    red.write_text("\n".join(listed) + "\n", encoding="utf-8")
    assert 0 == cli("list", "import", "red", str(red), "--replace")[0]
    methods = StartMethods(monkeypatch)

    with another_thread():
        status, summary, err = cli("scrub", str(leads), "--column", "phone", "-o", str(out))

    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert 0 == status
    # Progress on stderr, the last line with the whole file's lines (the header too).
    assert {True} == {line.startswith("scrubbing leads.csv: ") for line in err.splitlines()}
    assert err.splitlines()[-1].startswith(f"scrubbing leads.csv: {SCRUB_ROWS + 1} lines in ")
    assert (
        f"100000 leads scrubbed into {out}\n"
        "6000 of 100000 would be blocked: by reason listed:red 5000, invalid_number 1000\n"
        "1000 of 100000 would be unreadable: by reason missing_column 1000\n"
        "93000 of 100000 would be allowed\n"
    ) == summary
    assert ["id", "phone", "verdict", "reason", "retry_after_s"] == rows[0]
    assert [str(i) for i in range(SCRUB_ROWS)] == [row[0] for row in rows[1:]]
    assert expected == [tuple(row[-3:]) for row in rows[1:]]
    assert ["spawn"] == methods.asked


# ``callgate scrub`` as a user runs it, telling (on stderr, at its exit) the start methods
# its scrub asked of multiprocessing.
SCRUB_TOLD = """
import multiprocessing, sys
asked = []
real = multiprocessing.get_context
def get_context(method=None):
    asked.append(method)
    return real(method)
multiprocessing.get_context = get_context
from gate.cli import main
from gate.lists.scrub import _worker_signals
from gate.store.embedded import SERVER_ENV
try:
    status = main(sys.argv[1:])
finally:
    print("start methods", asked, file=sys.stderr)
sys.exit(status)
"""


def test_the_scrub_command_forks_its_workers(cli: Run, config_file: Path, tmp_path: Path) -> None:
    """``callgate scrub`` runs no other thread: its workers are forked (they start at once)
    and the output is the same, row for row, as the spawned workers' (the test above)."""
    leads, out, red = tmp_path / "leads.csv", tmp_path / "out.csv", tmp_path / "red.txt"
    listed, expected = scrub_leads(leads)
    red.write_text("\n".join(listed) + "\n", encoding="utf-8")
    assert 0 == cli("list", "import", "red", str(red), "--replace")[0]
    args = ("--config", str(config_file), "scrub", str(leads), "--column", "phone", "-o", str(out))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRUB_TOLD, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S * 4,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert (0, "start methods ['fork']") == (done.returncode, done.stderr.splitlines()[-1])
    assert [str(i) for i in range(SCRUB_ROWS)] == [row[0] for row in rows[1:]]
    assert expected == [tuple(row[-3:]) for row in rows[1:]]


def children(pid: int) -> list[int]:
    """The PIDs of the processes ``pid`` started that are still alive (Linux's /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def test_ctrl_c_during_a_forked_scrub_stops_its_workers(
    cli: Run, config_file: Path, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while forked
    workers decide: exit 130, every worker gone, no output file."""
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    leads.write_text(
        "id,phone\n" + "".join(f"{i},0613{i:06d}\n" for i in range(1_000_000)), encoding="utf-8"
    )
    process = interactive_cli(
        tmp_path,
        *("--config", str(config_file), "scrub", str(leads), "--column", "phone", "-o", str(out)),
        session=True,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            workers = children(process.pid)
            time.sleep(0.02)
        time.sleep(0.3)  # deciding by now
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert (130, 2, [], False) == (process.returncode, len(workers), alive, out.exists()), err
    assert "interrupted after" in err


@pytest.mark.parametrize("packing", ["gzip", "zip"])
def test_scrub_reads_gzip_and_zip_leads(cli: Run, tmp_path: Path, packing: str) -> None:
    """A gzip or zip lead file is scrubbed like the plain one."""
    cli("list", "add", "red", NUMBER)
    text = "name;phone\nAlice;06 12 34 56 78\nBob;+33612345679\n"
    path = tmp_path / f"leads.{packing}"
    if packing == "gzip":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("leads.csv", text)
    out = tmp_path / "out.csv"

    status, summary, _ = cli("scrub", str(path), "--column", "phone", "-o", str(out))

    assert (
        0,
        f"2 leads scrubbed into {out}\n"
        "1 of 2 would be blocked: by reason listed:red 1\n1 of 2 would be allowed\n",
    ) == (status, summary)
    assert [
        "name;phone;verdict;reason;retry_after_s",
        "Alice;06 12 34 56 78;BLOCK;listed:red;",
        "Bob;+33612345679;ALLOW;allowed;",
    ] == out.read_text(encoding="utf-8").splitlines()


def test_a_one_shot_command_does_not_load_the_http_stack() -> None:
    """``callgate list import``, ``scrub``… start without importing aiohttp, the ARI door
    and prometheus-client (only ``run`` uses them), nor the API's models (pydantic: only
    the commands that print them)."""
    code = (
        "import sys, gate.cli\n"
        "heavy = ('aiohttp', 'gate.stasis.door', 'pydantic', 'gate.ops.models', 'prometheus')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "status", "first"),
    [
        (("list", "import", "red", "FILE"), 0, "1 imported, 0 duplicates, 0 rejected"),
        (("list", "count", "red"), 0, "1"),
        (("check", "+33612345678"), EXIT_BLOCK, "BLOCK listed:red +33612345678"),
    ],
)
def test_a_command_that_prints_no_model_loads_no_api_models(
    cli: Run, config_file: Path, tmp_path: Path, args: tuple[str, ...], status: int, first: str
) -> None:
    """``list import``, ``list count`` and ``check`` (without --json) print no model of the
    API: they run without importing pydantic (their --json forms, ``list info``… do)."""
    numbers = tmp_path / "red.txt"
    numbers.write_text("+33612345678\n", encoding="utf-8")
    if args[1] != "import":
        assert cli("list", "import", "red", str(numbers))[0] == 0
    argv = ["--config", str(config_file), *(str(numbers) if a == "FILE" else a for a in args)]
    code = (
        "import sys\n"
        "from gate.cli import main\n"
        f"status = main({argv!r})\n"
        "heavy = ('pydantic', 'gate.ops.models')\n"
        "print(status, sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == [first, f"{status} []"]


def _forked_worker(signals: bool) -> None:
    if signals:
        _worker_signals()
    time.sleep(SUBPROCESS_TIMEOUT_S)


@pytest.mark.parametrize("signals", [True, False])
def test_a_forked_worker_ends_on_sigterm_and_never_wakes_its_parents_loop(
    signals: bool,
) -> None:
    """A process whose event loop handles SIGTERM (its handler, its wake-up descriptor)
    forks a worker: after ``_worker_signals`` SIGTERM ends the worker at once, and the
    parent's wake-up descriptor hears nothing; without it, the worker would live on."""
    written, read = socket.socketpair()  # the loop's self-pipe: signals write to one end
    written.setblocking(False)
    read.setblocking(False)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    previous_fd = signal.set_wakeup_fd(written.fileno(), warn_on_full_buffer=False)
    try:
        worker = multiprocessing.get_context("fork").Process(target=_forked_worker, args=(signals,))
        worker.start()
        time.sleep(0.2)  # bounded: the worker is set up by now
        worker.terminate()  # SIGTERM
        worker.join(2.0)
        ended = worker.exitcode
        if ended is None:
            worker.kill()
            worker.join(SUBPROCESS_TIMEOUT_S)
        heard = b""
        with contextlib.suppress(BlockingIOError):
            heard = read.recv(64)
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous)
        written.close()
        read.close()
    if signals:
        assert (-signal.SIGTERM, b"") == (ended, heard)
    else:
        assert (None, True) == (ended, bool(heard))
