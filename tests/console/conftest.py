"""Fixtures for the console's browser tests: a REAL ``callgate run`` process (the sample
config with the ``fr`` pack, an API token, the session's Redis) and a REAL headless
Chromium (tests/console/browser.py), both for the whole module, stopped by PID.

Screenshots of each page are written to ``$CALLGATE_ARTIFACTS/console`` when that is set
(CI keeps them), else to the session's pytest temporary directory; the path is printed.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import TEST_SECRET

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from gateproc import GateProcess, write_config

from tests.console.browser import Browser

TOKEN = "console-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningGate:
    """A ``callgate run`` process and the URL of its console."""

    process: GateProcess
    url: str
    config: Path


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots and the Live page's measurements go."""
    root = os.environ.get("CALLGATE_ARTIFACTS")
    path = Path(root) / "console" if root else tmp_path_factory.mktemp("console-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def running_gate(
    redis_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGate]:
    """``callgate run`` with the fr pack and a token, on an emptied session Redis."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    directory = tmp_path_factory.mktemp("console-gate")
    port = free_port()
    config = write_config(
        directory / "callgate.toml",
        redis_url=redis_server_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={
            "redis": {"deadline": "1s"},
            "gate": {"packs": ["fr"], "tenants": ["acme"]},
            "api": {"token": TOKEN},
        },
    )
    with GateProcess(config, directory / "callgate.log", port) as process:
        yield RunningGate(process, f"http://127.0.0.1:{process.http_port()}", config)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A headless Chromium for the module (quit at teardown)."""
    running = Browser(tmp_path_factory.mktemp("downloads"))
    yield running
    running.quit()
