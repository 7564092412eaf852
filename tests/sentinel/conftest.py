"""Fixtures of the Sentinel tests: a fresh group of real processes per test (group.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sentinel.group import SentinelGroup, running_group


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    """A fresh group (a failover test leaves it changed): master, replica, 3 sentinels;
    every process stopped by PID afterwards."""
    with running_group() as group:
        yield group
