"""README.md is kept true: its "Try it" commands are run against a fresh store and print
what it shows, and its command synopsis names every option the command has."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from gate.cli import _build_parser, main
from tests.cli.test_cli import edit_toml
from tests.conftest import SAMPLE_CONFIG

README = Path(__file__).resolve().parent.parent / "README.md"
PROGRAM = ".venv/bin/callgate"
# The config version is a hash of the config file (which here points at the test's Redis)
# and its packs: README shows it as VERSION_SHOWN, and the output run is masked so.
VERSION = re.compile(r'"config_version":"[0-9a-f]{12}"')
VERSION_SHOWN = '"config_version":"…"'
VERDICT_STATUS = {"ALLOW": 0, "BLOCK": 3, "DEFER": 4}


def code_block(heading: str, language: str) -> list[str]:
    """The lines of the first ```language block after ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start : section.index("\n```", start)].splitlines()


def try_it() -> list[tuple[list[str], str]]:
    """(argv, the output shown) for each command of "Try it"."""
    steps: list[tuple[list[str], str]] = []
    for line in code_block("## Try it", "sh"):
        if line.startswith(PROGRAM + " "):
            steps.append((shlex.split(line)[1:], ""))
        else:
            assert line == "#" or line.startswith("# "), f"not a command or its output: {line!r}"
            argv, shown = steps[-1]
            steps[-1] = (argv, shown + line[2:] + "\n")
    return steps


@pytest.fixture
def readme_config(tmp_path: Path, redis_url: str) -> Path:
    """The sample config as `make run` uses it, on the test's (empty) Redis."""
    path = tmp_path / "callgate.toml"
    text = edit_toml(
        SAMPLE_CONFIG.read_text(encoding="utf-8"),
        {"gate": {"state_dir": str(tmp_path / "var")}, "redis": {"url": redis_url}},
    )
    path.write_text(text, encoding="utf-8")
    return path


def expected_status(argv: list[str], shown: str) -> int:
    """What a command shown printing ``shown`` exits with: a check, its verdict's status."""
    if argv[0] != "check":
        return 0
    first = shown.split()[0]
    verdict = json.loads(shown)["verdict"] if first.startswith("{") else first
    return VERDICT_STATUS[verdict]


def test_try_it_prints_what_the_readme_shows(
    readme_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each "Try it" command, run in order on a fresh store, prints exactly the lines shown
    under it (the config version aside), and a check exits with its verdict's status."""
    monkeypatch.delenv("CALLGATE_SECRET", raising=False)
    ran: list[tuple[str, int, str]] = []
    shown: list[tuple[str, int, str]] = []
    for argv, expected in try_it():
        capsys.readouterr()
        status = main(["--config", str(readme_config), *argv])
        out = capsys.readouterr().out
        command = " ".join(argv)
        ran.append((command, status, VERSION.sub(VERSION_SHOWN, out)))
        shown.append(
            (command, expected_status(argv, expected), VERSION.sub(VERSION_SHOWN, expected))
        )
    assert shown == ran


def test_try_it_shows_no_config_version_of_its_own() -> None:
    """The config version is a hash of the config file and its packs: "Try it" shows it
    as …, never a value that goes stale with the next edit of either."""
    shown = [output for _, output in try_it() if '"config_version"' in output]
    assert (True, []) == (
        bool(shown) and all(VERSION_SHOWN in output for output in shown),
        [match.group() for output in shown for match in VERSION.finditer(output)],
    )


def synopsis() -> dict[str, str]:
    """The "For admins" synopsis: each command line → its text with its continuation lines."""
    entries: dict[str, str] = {}
    last = ""
    for line in code_block("## For admins", ""):
        if line.startswith("callgate "):
            last = line
            entries[line] = line
        elif line.startswith(" ") and last:
            entries[last] += " " + line.strip()
    return entries


def leaf_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[path] = parser
            return
        for name, sub in subs[0].choices.items():
            walk(sub, (*path, name))

    walk(_build_parser(), ())
    return found


def _names(line: str) -> list[str]:
    """The command words of a synopsis line: "callgate list count|info LIST" → the
    alternatives of each word position, as written."""
    words = line.split()[1:]
    if words[:2] == ["[--config", "FILE]"]:
        words = words[2:]
    return words


@pytest.mark.parametrize("path", list(leaf_parsers()), ids=" ".join)
def test_the_synopsis_names_every_option(path: tuple[str, ...]) -> None:
    """Each command's synopsis line (and its continuation lines) names each of its options."""
    entries = synopsis()
    matching = [
        text
        for line, text in entries.items()
        if len(_names(line)) >= len(path)
        and all(part in _names(line)[i].split("|") for i, part in enumerate(path))
    ]
    assert matching, f"no synopsis line for callgate {' '.join(path)}"
    parser = leaf_parsers()[path]
    words = {w.strip("[]|,.…") for text in matching for w in re.split(r"[\s\[\]|]", text)}
    missing = [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and action.dest != "help"
        and action.help != argparse.SUPPRESS
        and not words.intersection(action.option_strings)
    ]
    assert [] == missing
