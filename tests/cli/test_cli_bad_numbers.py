"""The ``callgate`` command with numbers no phone could dial: its documented refusals.

A number with digits that are not decimal ("²": a digit to Python, refused by int()) is
a BLOCK invalid_number for ``check``, one error line (exit 2) for ``list add``, and one
rejected line (the rest imported, exit 0) for ``list import``; never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import run_cli as run
from tests.cli.test_cli import sample_config

BAD = "061234567²"


@pytest.fixture
def config(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sample config on the test's Redis (no CALLGATE_* from the environment)."""
    for name in ("CALLGATE_SECRET", "CALLGATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config(redis_url), encoding="utf-8")
    return path


def test_check_of_a_bad_number_is_blocked_as_invalid(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """``check`` prints the BLOCK invalid_number decision and exits 3 (a BLOCK); stderr
    says why it is no number, in one line naming the character."""
    status, out, err = run(capsys, config, "check", BAD)
    assert (3, "BLOCK invalid_number") == (status, out.strip())
    assert [f"callgate: number {BAD!r}: unexpected character '²'"] == err.splitlines()


def test_adding_a_bad_number_is_one_error_line(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """``list add`` refuses it: exit 2, one line naming the character."""
    status, out, err = run(capsys, config, "list", "add", "red", BAD)
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert "unexpected character '²'" in err


def test_importing_a_bad_number_rejects_that_line_only(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    """``list import``: the bad line is rejected (with its line number), the rest imported."""
    path = tmp_path / "optouts.txt"
    path.write_text(f"0612345678\n{BAD}\n0698765432\n", encoding="utf-8")
    status, out, err = run(capsys, config, "list", "import", "red", str(path))
    assert (0, "2 imported, 0 duplicates, 1 rejected\n") == (status, out)
    assert [f"{path}:2:"] == [line.split(" ")[0] for line in err.splitlines()]
