"""The files the commands write (``scrub -o``, ``list import --rejects``): never one the
operator did not mean to replace (the input itself, a device, a named pipe), and written
whole or not at all; a write that fails is one error line, not a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gate import cli as cli_module
from gate.cli import EXIT_BLOCK
from gate.store import lists as lists_module
from tests.cli.test_cli import SUBPROCESS_TIMEOUT_S, Run, sample_config

LEADS = "+33612345678\n0698765432\n"


def _device(tmp_path: Path) -> Path:
    """A character device as /dev/null is (1, 3), made in ``tmp_path`` (never the real
    /dev/null, which a failing test would replace)."""
    path = tmp_path / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


@pytest.mark.parametrize("kind", ["device", "named pipe"])
def test_a_scrub_output_that_is_a_device_or_a_named_pipe_is_refused_and_left_as_it_is(
    cli: Run, tmp_path: Path, kind: str
) -> None:
    """``-o /dev/null`` (or a FIFO a reader waits on) was replaced by a regular file (the
    scrub writes beside its output and renames over it): as root, /dev/null itself. Now
    one line, exit 2, the node untouched."""
    leads = tmp_path / "leads.txt"
    leads.write_text(LEADS, encoding="utf-8")
    if kind == "device":
        out, is_kind = _device(tmp_path), stat.S_ISCHR
    else:
        out, is_kind = tmp_path / "fifo", stat.S_ISFIFO
        os.mkfifo(out)
    status, stdout, err = cli("scrub", str(leads), "-o", str(out))
    assert (2, "") == (status, stdout)
    assert (
        f"callgate: error: -o {out}: is a {kind}, not a file: the scrubbed file would "
        "replace it; name a file to write\n"
    ) == err
    assert is_kind(out.lstat().st_mode)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "callgate.toml")
    assert sorted(["leads.txt", out.name]) == left


def test_a_scrub_into_its_own_leads_file_is_refused_and_the_leads_kept(
    cli: Run, tmp_path: Path
) -> None:
    """``scrub leads.csv -o leads.csv`` (or a link to it) replaced the leads file with the
    scrubbed one (a gzip's with plain CSV): refused, the leads as they were."""
    leads = tmp_path / "leads.txt"
    leads.write_text(LEADS, encoding="utf-8")
    link = tmp_path / "link.csv"  # the same file under another name
    link.symlink_to(leads)
    status, out, err = cli("scrub", str(leads), "-o", str(link))
    assert (2, "") == (status, out)
    assert (
        f"callgate: error: -o {link}: is the leads file itself, which the scrubbed file "
        "would replace; write to another file\n"
    ) == err
    assert LEADS == leads.read_text(encoding="utf-8")


def test_a_scrub_to_dash_is_refused_not_written_to_a_file_named_dash(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LEADS ``-`` is standard input, so ``-o -`` reads as standard output; it wrote a file
    named ``-`` and said "scrubbed into -". Refused in one line saying what to give."""
    monkeypatch.chdir(tmp_path)
    Path("leads.txt").write_text(LEADS, encoding="utf-8")
    status, out, err = cli("scrub", "leads.txt", "-o", "-")
    assert (2, "") == (status, out)
    assert (
        "callgate: error: -o -: a scrub writes a file (whole, or not at all), not standard "
        "output; name the file to write (e.g. -o scrubbed.csv)\n"
    ) == err
    assert not Path("-").exists()


@pytest.mark.parametrize("spelling", ["named", "stdin"])
def test_rejects_into_the_file_imported_is_refused_and_the_file_kept(
    cli: Run, config_file: Path, tmp_path: Path, spelling: str
) -> None:
    """``list import red optouts.txt --rejects optouts.txt`` (or ``- < optouts.txt``)
    emptied the opt-outs file before reading it: "0 imported", exit 0, the opt-outs gone.
    Refused, the file kept."""
    optouts = tmp_path / "optouts.txt"
    optouts.write_text("+33612345678\nbad\n", encoding="utf-8")
    source = "-" if spelling == "stdin" else str(optouts)
    args = ("--config", str(config_file), "list", "import", "red", source)
    with optouts.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "gate.cli", *args, "--rejects", str(optouts)],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            cwd=tmp_path,
        )
    assert (2, "") == (done.returncode, done.stdout)
    assert (
        f"callgate: error: --rejects {optouts}: is the file imported, which it would "
        "overwrite; name another file\n"
    ) == done.stderr
    assert "+33612345678\nbad\n" == optouts.read_text(encoding="utf-8")
    assert (0, "0\n") == cli("list", "count", "red")[:2]


@pytest.mark.parametrize(
    ("mode", "left"),
    [
        ("--replace", "list 'red' is unchanged (the new version was not switched in)"),
        ("--add", "the numbers of the batches sent before the error are on the list"),
    ],
)
def test_rejects_that_cannot_be_written_are_one_error_line(
    cli: Run, tmp_path: Path, mode: str, left: str
) -> None:
    """A rejects file on a full disk (/dev/full: every write fails with ENOSPC) was an
    OSError traceback, exit 1: now one line naming --rejects and saying what became of
    the list, once (the import's own "stopped" sentence is not said again)."""
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(f"bad{i}\n" for i in range(20_000)), encoding="utf-8")
    given = [mode] if mode != "--add" else []
    status, out, err = cli("list", "import", "red", str(bad), *given, "--rejects", "/dev/full")
    assert (2, "") == (status, out)
    last = err.splitlines()[-1]
    assert (
        "callgate: error: --rejects /dev/full: cannot write: No space left on device; free "
        f"some space there, or write it elsewhere; import stopped: {left}"
    ) == last
    assert "Traceback" not in err


def test_a_refused_import_leaves_an_existing_rejects_file_as_it_was(
    cli: Run, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    """The rejects file was opened (emptied) first thing: an import then refused (here by
    another import's lock) left the last run's rejects empty. Now written whole at the
    end, or not at all."""
    sync_redis.set("callgate:{lists}:red:t:default:lock", "f1e6a8ae1b19dca0", px=60_000)
    optouts, rejects = tmp_path / "optouts.txt", tmp_path / "rejects.txt"
    optouts.write_text("+33612345678\nbad\n", encoding="utf-8")
    rejects.write_text("2\tlast run's reject\tbad\n", encoding="utf-8")
    status, _, err = cli(
        "list", "import", "red", str(optouts), "--replace", "--rejects", str(rejects)
    )
    assert 2 == status
    assert "another import or resize is running" in err
    assert "2\tlast run's reject\tbad\n" == rejects.read_text(encoding="utf-8")
    assert ["optouts.txt", "rejects.txt"] == sorted(
        p.name for p in tmp_path.iterdir() if p.name != "callgate.toml"
    )
    sync_redis.delete("callgate:{lists}:red:t:default:lock")
    assert (0, "1 in the new version, 0 duplicates, 1 rejected\n") == cli(
        "list", "import", "red", str(optouts), "--replace", "--rejects", str(rejects)
    )[:2]
    assert rejects.read_text(encoding="utf-8").startswith("2\tnumber 'bad'")


@pytest.mark.parametrize(
    "command",
    [("config", "check"), ("list", "count", "red"), ("check", "+33612345678")],
    ids=["config-check", "list-count", "check"],
)
def test_output_to_a_full_disk_is_one_error_line_not_a_traceback(
    config_file: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """``callgate list count red > n.txt`` (any command's output) on a full disk
    (/dev/full) was an OSError traceback, exit 1: one line saying the output is
    incomplete, exit 2 (for check too: its verdict was not written)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "gate.cli", "--config", str(config_file), *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            env=env,
            cwd=tmp_path,
        )
    assert (
        2,
        "callgate: error: cannot write the output: No space left on device; free some space "
        "there, or write it elsewhere: the output is incomplete\n",
    ) == (done.returncode, done.stderr)


def test_an_opt_out_added_during_a_replace_is_kept_and_counted_without_negative_duplicates(
    cli: Run, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``list add`` (another shell, a real process) while a --replace is being built
    lands in the new version too, so the new version has one entry more than the file:
    the summary said "-1 duplicates". Now 0, the count true, the opt-out kept."""
    path = tmp_path / "optouts.txt"
    path.write_text("".join(f"+3361{i:07d}\n" for i in range(50_000)), encoding="utf-8")
    read = cli_module.read_batches
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}

    def with_an_add_meanwhile(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for at, batch in enumerate(read(*args, **kwargs)):
            yield batch
            if at == 0:  # the new version is being built: an opt-out comes in
                added = subprocess.run(
                    [sys.executable, "-m", "gate.cli", "--config", str(config_file), "list",
                     "add", "red", "0799999999"],
                    capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, env=env,
                )  # fmt: skip
                assert (0, "1 added, 0 already listed\n") == (added.returncode, added.stdout)

    monkeypatch.setattr(cli_module, "read_batches", with_an_add_meanwhile)
    status, out, err = cli("list", "import", "red", str(path), "--replace")
    assert (0, "50001 in the new version, 0 duplicates, 0 rejected\n") == (status, out), err
    assert EXIT_BLOCK == cli("check", "0799999999")[0]
    assert (0, "50001\n") == cli("list", "count", "red")[:2]


def test_an_export_during_which_the_list_is_replaced_fails_instead_of_ending_short(
    cli: Run, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``list export red > red.txt`` while another shell's ``list import red --replace``
    switched the list: the replace removed the old version's buckets not read yet, and the
    export ended short (about half of 2 M numbers in a run by hand), exit 0. Now exit 2
    with one line saying the listing is incomplete. (The export reads 64 buckets a request
    here, so that a small list takes many; the replace is a real process, run once the
    export has given its first number.)"""
    plain = tmp_path / "plain.toml"
    plain.write_text(sample_config(redis_url, privacy={"hash_numbers": False}), encoding="utf-8")
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("".join(f"+3361{i:07d}\n" for i in range(20_000)), encoding="utf-8")
    new.write_text("+33799999999\n", encoding="utf-8")
    assert 0 == cli("list", "import", "red", str(old), "--replace", config=plain)[0]
    monkeypatch.setattr(lists_module, "_COMMANDS", 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    replaced: list[int] = []

    def replaced_after_the_first(*args: Any, **kwargs: Any) -> None:
        if not replaced:
            done = subprocess.run(
                [sys.executable, "-m", "gate.cli", "--config", str(plain), "list", "import",
                 "red", str(new), "--replace"],
                capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, env=env,
            )  # fmt: skip
            replaced.append(done.returncode)
        print(*args, **kwargs)

    monkeypatch.setattr(cli_module, "print", replaced_after_the_first, raising=False)
    status, out, err = cli("list", "export", "red", config=plain)
    assert [0] == replaced
    assert 20_000 > len(out.splitlines())
    assert (
        2,
        "callgate: error: list red:t:default: replaced by another import while its entries "
        "were read (those not read yet were removed): the listing is incomplete; run it "
        "again\n",
    ) == (status, err)


def test_rejects_to_dev_stderr_redirected_to_a_file_keep_the_messages(
    config_file: Path, tmp_path: Path
) -> None:
    """``--rejects /dev/stderr 2> errors.log``: the rejects file is written straight into
    the stream, after what is there (it was opened for writing from the start: the
    "rejected" message before it overwritten)."""
    optouts, log = tmp_path / "optouts.txt", tmp_path / "errors.log"
    optouts.write_text("+33612345678\nbad\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "gate.cli", "--config", str(config_file), "list", "import",
             "red", str(optouts), "--rejects", "/dev/stderr"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=SUBPROCESS_TIMEOUT_S,
            env=env, cwd=tmp_path,
        )  # fmt: skip
    assert (0, "1 imported, 0 duplicates, 1 rejected\n") == (done.returncode, done.stdout)
    why = "number 'bad': unexpected character 'b'; give it as +<country><number>"
    assert [f"{optouts}:2: rejected: {why}", f"2\t{why}\tbad"] == log.read_text().splitlines()


def test_a_scrub_to_dev_stdout_redirected_to_a_file_is_refused(
    config_file: Path, tmp_path: Path
) -> None:
    """``scrub leads -o /dev/stdout > out.csv``: /dev/stdout led to out.csv, which the
    scrubbed file replaced by a rename (its summary then written to the file unlinked),
    exit 0. Refused in one line; out.csv left as the shell made it."""
    leads, out = tmp_path / "leads.txt", tmp_path / "out.csv"
    leads.write_text(LEADS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    with out.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "gate.cli", "--config", str(config_file), "scrub",
             str(leads), "-o", "/dev/stdout"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=SUBPROCESS_TIMEOUT_S,
            env=env, cwd=tmp_path,
        )  # fmt: skip
    assert (
        2,
        "callgate: error: -o /dev/stdout: is a process's stream, not a file: the scrubbed "
        "file would replace it; name a file to write\n",
        "",
    ) == (done.returncode, done.stderr, out.read_text())
