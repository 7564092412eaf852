"""Fixtures of the Sentinel tests: a fresh group of real processes per test (group.py).

``pytest_terminal_summary`` prints the failover figures the tests recorded
(``group.FAILOVER_REPORT``), so that ``make test`` shows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.sentinel.group import FAILOVER_REPORT, SentinelGroup, running_group


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """A fresh group (a failover test leaves it changed): master, replica, 3 sentinels;
    every process stopped by PID afterwards."""
    with running_group() as group:
        yield group


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The failover figures of this run, after the test results."""
    if FAILOVER_REPORT:
        terminalreporter.section("Redis Sentinel failover")
        for line in FAILOVER_REPORT:
            terminalreporter.write_line(line)
