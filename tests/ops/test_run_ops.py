"""`callgate run` as a process: its HTTP listener, SIGHUP and `callgate reload`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_SECRET

STARTUP_DEADLINE_S = 20.0
CLI_TIMEOUT_S = 30.0
CONFIG = """
[gate]
default_region = "FR"

[privacy]
secret = "{secret}"

[redis]
url = "{url}"
deadline = "1s"

[agi]
port = 0

[http]
port = {http_port}

[logging]
format = "{log_format}"

[[lists]]
name = "red"
kind = "block"
scope = "tenant"

[[caps]]
id = "attempts"
limit = {limit}
window = "30d"
scope = "tenant"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Gated:
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    http_port: int
    redis_url: str

    def write(self, limit: int | str, log_format: str = "logfmt") -> None:
        self.config.write_text(
            CONFIG.format(
                secret=TEST_SECRET,
                url=self.redis_url,
                http_port=self.http_port,
                limit=limit,
                log_format=log_format,
            )
        )

    def get(self, path: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gate.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
            env=_env(),
        )

    def wait_for_log(self, pattern: str, count: int = 1) -> str:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        for _ in range(int(STARTUP_DEADLINE_S / 0.05) + 1):
            text = self.log.read_text()
            if len(re.findall(pattern, text)) >= count:
                return text
            assert self.process.poll() is None, text
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log:\n{self.log.read_text()}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def gated(redis_url: str, tmp_path: Path) -> Iterator[Gated]:
    """`callgate run` on the test's Redis with a cap of 3 and logfmt logs; stopped by PID."""
    log = tmp_path / "callgate.log"
    gated = Gated(tmp_path / "callgate.toml", log, None, free_port(), redis_url)  # type: ignore[arg-type]
    gated.write(3)
    with log.open("wb") as out:
        gated.process = subprocess.Popen(
            [sys.executable, "-m", "gate.cli", "--config", str(gated.config), "run"],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )
    try:
        gated.wait_for_log(r"FastAGI on agi://")
        yield gated
    finally:
        if gated.process.poll() is None:
            gated.process.send_signal(signal.SIGTERM)
            try:
                gated.process.wait(STARTUP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                gated.process.kill()
                gated.process.wait(10)


def test_run_serves_health_and_logs_logfmt(gated: Gated) -> None:
    """/healthz and /readyz answer with the version the start line logged, in logfmt."""
    text = gated.wait_for_log(r"HTTP on http://127\.0\.0\.1:\d+")
    version = re.search(r"\(version (\w+)\)", text)
    assert version is not None, text
    health, ready = gated.get("/healthz"), gated.get("/readyz")
    assert (200, version[1]) == (health[0], health[1]["config_version"])
    assert (200, True, version[1]) == (ready[0], ready[1]["ready"], ready[1]["config_version"])
    assert re.search(r'^ts=\S+Z level=info logger=callgate msg="callgate ', text, re.M), text


def test_callgate_reload_and_sighup_swap_the_config_or_keep_it(gated: Gated) -> None:
    """`callgate reload` applies a changed cap; a broken file sent by SIGHUP is refused and
    the version stays; SIGTERM then stops the process with status 0."""
    _, before = gated.get("/healthz")
    gated.write(1)
    reloaded = gated.cli("reload")
    _, after = gated.get("/healthz")
    gated.config.write_text("[gate\n")
    gated.process.send_signal(signal.SIGHUP)
    text = gated.wait_for_log(r"reload refused, still serving config version")
    _, kept = gated.get("/healthz")
    gated.process.send_signal(signal.SIGTERM)
    assert 0 == gated.process.wait(STARTUP_DEADLINE_S)
    assert (
        0,
        f"reloaded: config version {after['config_version']} (was {before['config_version']})",
    ) == (
        reloaded.returncode,
        reloaded.stdout.strip(),
    )
    assert before["config_version"] != after["config_version"]
    assert after["config_version"] == kept["config_version"]
    assert "not valid TOML" in text


def test_callgate_reload_with_a_broken_file_fails_without_touching_the_gate(gated: Gated) -> None:
    """The CLI validates the file first: exit 2, one line on stderr, version unchanged."""
    _, before = gated.get("/healthz")
    gated.write('"three"')
    done = gated.cli("reload")
    _, after = gated.get("/healthz")
    assert (2, 1) == (done.returncode, len(done.stderr.strip().splitlines()))
    assert "caps[0].limit" in done.stderr
    assert before["config_version"] == after["config_version"]


def test_callgate_reload_without_a_running_gate_says_so(redis_url: str, tmp_path: Path) -> None:
    """Nobody listening on [http]: exit 2 and a one-line hint."""
    gated = Gated(tmp_path / "c.toml", tmp_path / "log", None, free_port(), redis_url)  # type: ignore[arg-type]
    gated.write(3)
    done = gated.cli("reload")
    assert 2 == done.returncode
    assert re.fullmatch(
        r"callgate: error: no callgate answered at http://127\.0\.0\.1:\d+/v1/reload .*running\?\n",
        done.stderr,
    ), done.stderr
