"""The ``callgate`` command with the overseas numbers of the French national plan.

From anywhere in the plan an overseas number is dialled 0 and its nine national digits
(0692 12 34 56 is +262 692 12 34 56), so a French config's list file or dialplan holds
them that way. A number listed in one spelling is BLOCK in the other, through the real
import (its bulk path and its line path), ``list add``, ``check`` and ``scrub`` against a
real Redis, hashed or not; a spelling that names no one subscriber is refused, never keyed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.cli.test_cli import run_cli, sample_config

pytestmark = pytest.mark.timeout(60)

# (national spelling in a French config, the subscriber's E.164 number)
OVERSEAS = [
    pytest.param("0692123456", "+262692123456", id="reunion-mobile"),
    pytest.param("0262161234", "+262262161234", id="reunion-fixed"),
    pytest.param("0639012345", "+262639012345", id="mayotte-mobile"),
    pytest.param("0269612345", "+262269612345", id="mayotte-fixed"),
    pytest.param("0690123456", "+590690123456", id="guadeloupe-mobile"),
    pytest.param("0590821234", "+590590821234", id="guadeloupe-fixed"),
    pytest.param("0694201234", "+594694201234", id="guyane-mobile"),
    pytest.param("0596301234", "+596596301234", id="martinique-fixed"),
    pytest.param("0939901234", "+262939901234", id="reunion-voip"),
]


def decision(capsys: pytest.CaptureFixture[str], config: Path, number: str) -> tuple[str, str]:
    """(verdict, destination) of ``check NUMBER --json``, nothing recorded."""
    _, out, _ = run_cli(capsys, config, "check", number, "--json")
    result = json.loads(out)
    return result["verdict"], result["destination"]


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "plain"])
@pytest.mark.parametrize(("national", "e164"), OVERSEAS)
def test_an_overseas_number_imported_nationally_is_blocked_as_dialled_in_e164(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    redis_url: str,
    national: str,
    e164: str,
    hashed: bool,
) -> None:
    """A national line (read in bulk, and with separators, line by line) is the
    overseas number: BLOCK listed:red for +262…, and for the national spelling."""
    config = tmp_path / "callgate.toml"
    config.write_text(sample_config(redis_url, privacy={"hash_numbers": hashed}), encoding="utf-8")
    spaced = " ".join(national[i : i + 2] for i in range(0, 10, 2))
    for spelling, name in ((national, "red"), (spaced, "dnc")):
        path = tmp_path / f"{name}.txt"
        path.write_text(f"{spelling}\n", encoding="utf-8")
        status, out, err = run_cli(capsys, config, "list", "import", name, str(path))
        assert (0, "1 imported, 0 duplicates, 0 rejected\n", "") == (status, out, err)
    _, out, _ = run_cli(capsys, config, "check", e164, "--json")
    assert ("BLOCK", "listed:red", e164) == tuple(
        json.loads(out)[k] for k in ("verdict", "reason", "destination")
    )
    assert ("BLOCK", e164) == decision(capsys, config, national)


@pytest.mark.parametrize(("national", "e164"), OVERSEAS)
def test_an_overseas_number_listed_in_e164_is_blocked_as_dialled_nationally(
    capsys: pytest.CaptureFixture[str], config_file: Path, national: str, e164: str
) -> None:
    """Listed as +596 596…, the number the dialplan passes as 0596… is BLOCK listed:red."""
    assert 0 == run_cli(capsys, config_file, "list", "add", "red", e164)[0]
    _, out, _ = run_cli(capsys, config_file, "check", national, "--json")
    assert ("BLOCK", "listed:red", e164) == tuple(
        json.loads(out)[k] for k in ("verdict", "reason", "destination")
    )


def test_a_scrub_of_national_overseas_leads_finds_them_listed(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    """``scrub``: leads written nationally are the numbers listed in E.164."""
    assert 0 == run_cli(capsys, config_file, "list", "add", "red", "+262692123456")[0]
    leads, out = tmp_path / "leads.csv", tmp_path / "out.csv"
    leads.write_text("phone\n0692123456\n06 92 12 34 56\n", encoding="utf-8")
    status, _, _ = run_cli(
        capsys, config_file, "scrub", str(leads), "--column", "phone", "-o", str(out)
    )
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert 0 == status
    assert [("BLOCK", "listed:red")] * 2 == [(r["verdict"], r["reason"]) for r in rows]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        # A national number converted by prefixing +33: no one's number.
        ("+33596301234", "+33 596301234 is no number: 0596301234 is +596596301234"),
        ("+33692123456", "+33 692123456 is no number: 0692123456 is +262692123456"),
        # phonenumbers' data gives these digits to two overseas codes.
        ("0976012345", "ambiguous: 0976012345 may be +590 976012345 or +594 976012345"),
        # Martinique's block, outside its assigned ranges: not a +33 number either.
        ("0596123456", "0596123456 is in a range of +596 but no number of it"),
    ],
)
def test_a_spelling_of_no_one_subscriber_is_rejected_with_its_reason(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path, line: str, why: str
) -> None:
    """Such a line is rejected (file, line, what is wrong, what to do), the rest imported;
    ``list add`` refuses it in one line; ``check`` BLOCKs it as invalid."""
    path = tmp_path / "optouts.txt"
    path.write_text(f"0612345678\n{line}\n", encoding="utf-8")
    status, out, err = run_cli(capsys, config_file, "list", "import", "red", str(path))
    assert (0, "1 imported, 0 duplicates, 1 rejected\n") == (status, out)
    assert [f"{path}:2: rejected: number {line!r}: {why}; give it as +<country><number>"] == [
        line_ for line_ in err.splitlines() if line_.startswith(str(path))
    ]
    status, out, err = run_cli(capsys, config_file, "list", "add", "red", line)
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert why in err
    assert ("BLOCK", None) == decision(capsys, config_file, line)
