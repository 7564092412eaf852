"""The groups `make test` runs on one pytest-xdist worker (tests/conftest.py) still name
the files they mean: a test file renamed, or a new one that starts Asterisk elsewhere,
would otherwise run beside the others of its kind."""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

from pathlib import Path

from tests.conftest import ONE_WORKER_FILES, one_worker_group

ROOT = Path(__file__).resolve().parent.parent


def test_every_file_of_a_one_worker_group_exists() -> None:
    assert [] == [path for path in sorted(ONE_WORKER_FILES) if not (ROOT / path).is_file()]


def test_every_test_file_that_starts_asterisk_is_in_the_asterisk_group() -> None:
    starting = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if "asterisk_factory" in path.read_text() and path != Path(__file__).resolve()
    )
    assert len(starting) >= 5
    assert {path: "asterisk" for path in starting} == {
        path: one_worker_group(f"{path}::test_x") for path in starting
    }


def test_a_file_outside_every_group_runs_test_by_test() -> None:
    assert None is one_worker_group("tests/unit/test_numbers.py::test_x[1]")
    assert None is one_worker_group("tests/e2e/test_redis_builds.py::test_x[redis-7]")
    assert "tests/store/test_cluster.py" == one_worker_group("tests/store/test_cluster.py::t")
