"""Errors of shared code in each interface's words: the CLI's flags, the API's parameters,
the console's fields (gate/core/errors.py ``OptionError``, gate/ops/wording.py)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from gate.cli import CLI_WORDING
from gate.core.errors import OptionError, Wording
from gate.core.rules import ListRule
from gate.lists.formats import column_number, read_entries
from gate.ops.wording import API_WORDING, CONSOLE_WORDING, OPTIONS

CONSOLE_JS = Path(__file__).resolve().parents[2] / "gate" / "ops" / "static" / "console.js"
RED = ListRule(name="red", kind="block", scope="tenant")


@pytest.mark.parametrize("wording", [CLI_WORDING, API_WORDING, CONSOLE_WORDING])
def test_every_interface_names_every_option(wording: Wording) -> None:
    """Each wording has a term for each option shared code may name."""
    assert OPTIONS == set(wording)


def test_the_console_names_its_own_fields() -> None:
    """A console term names a label the page shows (a field, a panel)."""
    page = CONSOLE_JS.read_text()
    shown = set(OPTIONS) - {"allow_empty", "replace"}
    assert {key: True for key in shown} == {
        key: f"'{CONSOLE_WORDING[key].name}" in page for key in shown
    }


def test_fr_scrub_without_keep_in_each_interface() -> None:
    """fr-scrub without the results to keep: --keep on the command line, keep in the API,
    the Keep field in the console; the log line names the option by its key."""
    with pytest.raises(OptionError) as refused:
        next(read_entries(["0612345678;1;NON_INSCRIT"], RED, "FR", "fr-scrub"))
    error = refused.value
    why = "(the result value of numbers that may be called, as written in the file)"
    assert [
        f"--format fr-scrub needs the results to keep: pass --keep RESULT {why}",
        f"format fr-scrub needs the results to keep: set keep=RESULT {why}",
        f"Format fr-scrub needs the results to keep: fill in Keep {why}",
        f"format fr-scrub needs the results to keep: give keep {why}",
    ] == [
        error.worded(CLI_WORDING),
        error.worded(API_WORDING),
        error.worded(CONSOLE_WORDING),
        str(error),
    ]
    assert ("format", "keep") == error.options


def test_a_column_numbered_zero_names_the_field_it_came_from() -> None:
    """Column 0 of a list file is the CSV column field in the console, of a leads file its
    Phone column field; --column on the command line, column in the API."""
    words = []
    for option in ("column", "phone_column"):
        with pytest.raises(OptionError) as refused:
            column_number("0", option)
        words.append([refused.value.worded(w) for w in (CLI_WORDING, API_WORDING, CONSOLE_WORDING)])
    assert [
        ["--column 0: columns are numbered from 1", "column 0: columns are numbered from 1",
         "CSV column 0: columns are numbered from 1"],
        ["--column 0: columns are numbered from 1", "column 0: columns are numbered from 1",
         "Phone column 0: columns are numbered from 1"],
    ] == words  # fmt: skip


def test_values_are_data_never_templates() -> None:
    """A value with braces (a list name, a value given) is printed as given."""
    error = OptionError("{column} {spec}: columns are numbered from 1", spec="{campaign}")
    assert "--column {campaign}: columns are numbered from 1" == error.worded(CLI_WORDING)


@pytest.mark.parametrize(
    "duplicate",
    [
        copy.copy,
        copy.deepcopy,
        lambda error: pickle.loads(pickle.dumps(error)),
    ],
    ids=["copy", "deepcopy", "pickle"],
)
def test_an_option_error_survives_copy_and_pickle_with_braces_in_its_values(
    duplicate: Callable[[OptionError], OptionError],
) -> None:
    """A copy or a pickled error (a worker process's) keeps its template, values, message
    and wording, even when a value holds braces (a list named ``{x}``, ``{x:y}``)."""
    error = OptionError(
        "list {name!r} is a campaign list: {campaign:ask} ({spec})", name="{x}", spec="{x:y}"
    )
    error.add_note("while importing")
    copied = duplicate(error)
    assert (
        OptionError,
        error.template,
        error.values,
        str(error),
        error.args,
        error.worded(CLI_WORDING),
        ["while importing"],
    ) == (
        type(copied),
        copied.template,
        copied.values,
        str(copied),
        copied.args,
        copied.worded(CLI_WORDING),
        copied.__notes__,
    )
    assert "list '{x}' is a campaign list: give campaign ({x:y})" == str(copied)
