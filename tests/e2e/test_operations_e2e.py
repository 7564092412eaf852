"""Operations end to end: calls through a REAL Asterisk and a REAL ``callgate run`` process,
then ``GET /metrics`` on its HTTP listener counts each decision by verdict and reason, and
``callgate audit export`` (a separate process, as a compliance officer would run it) finds
every call with the reason it was let through or stopped.

The dialplan is the FastAGI door test's (``gated`` → ``callgate-agi`` → ``reached``); the
gate's ``[http]`` listener is on a free loopback port chosen by the test.
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateproc import GateProcess, callgate_dialplan, write_config
from prometheus_client.parser import text_string_to_metric_families
from sandbox import AsteriskSandbox, free_port
from test_agi_door import (
    BLOCKED,
    DIALPLAN,
    LISTED,
    LISTED_E164,
    REACHED_ALLOW,
    UNLISTED,
    Outcome,
    SandboxFactory,
    call,
)

from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.e2e

SCRAPE_TIMEOUT_S = 10.0


@pytest.fixture
def callgate(redis_url: str, tmp_path: Path) -> Iterator[GateProcess]:
    """``callgate run`` with its HTTP listener on a free port (see test_agi_door's fixture)."""
    agi_port, http_port = free_port(), free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=agi_port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}, "http": {"port": http_port}},
    )
    with GateProcess(config, tmp_path / "callgate.log", agi_port) as process:
        yield process


@pytest.fixture
def asterisk(asterisk_factory: SandboxFactory, callgate: GateProcess) -> AsteriskSandbox:
    include = callgate_dialplan(callgate.agi_port, fail_mode="DEFER")
    return asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include}, sip_context="gated")


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``GET /metrics`` as a real scraper does: sample name → sorted labels → value."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_count_the_decisions_of_real_calls_by_verdict(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """One red-listed call and five to one number (cap 4 per 30 days) through Asterisk:
    /metrics shows BLOCK 1, ALLOW 4 and DEFER 1 for the agi door, and 6 AGI connections."""
    await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED_E164)
    outcomes = [await call(asterisk, LISTED)] + [await call(asterisk, UNLISTED) for _ in range(5)]
    scraped = await asyncio.to_thread(scrape, callgate.http_port())

    capped = Outcome("hangup", "DEFER", "34", "SUCCESS")
    assert [BLOCKED] + [REACHED_ALLOW] * 4 + [capped] == outcomes
    agi = {
        (labels["verdict"], labels["reason"]): value
        for key, value in scraped["callgate_decisions_total"].items()
        if (labels := dict(key))["door"] == "agi"
    }
    assert {
        ("BLOCK", "listed:red"): 1.0,
        ("ALLOW", "allowed"): 4.0,
        ("DEFER", "cap:fr-4-per-30d"): 1.0,
    } == agi
    assert 6.0 == scraped["callgate_agi_connections_total"][()]
    assert 6.0 == scraped["callgate_decision_redis_seconds_count"][()]  # each needed Redis


async def test_audit_export_shows_each_real_call_with_its_reason(
    callgate: GateProcess, asterisk: AsteriskSandbox
) -> None:
    """One red-listed call, then five to one number (cap 4 per 30 days): the export has
    six agi entries, in order, with listed:red, allowed x4, cap:fr-4-per-30d."""
    await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED_E164)
    outcomes = [await call(asterisk, LISTED)] + [await call(asterisk, UNLISTED) for _ in range(5)]
    assert [BLOCKED] + [REACHED_ALLOW] * 4 + [Outcome("hangup", "DEFER", "34", "SUCCESS")] == (
        outcomes
    )
    entries: list[dict[str, str]] = []
    for _ in range(50):  # the writer flushes every 50 ms: bounded wait for all six
        exported = await asyncio.to_thread(callgate.cli, "audit", "export", "--format", "jsonl")
        entries = [json.loads(line) for line in exported.stdout.splitlines()]
        if len(entries) >= 6:
            break
        await asyncio.sleep(0.1)
    agi = [e for e in entries if e["door"] == "agi"]
    assert ["listed:red"] + ["allowed"] * 4 + ["cap:fr-4-per-30d"] == [e["reason"] for e in agi]
    assert ["BLOCK"] + ["ALLOW"] * 4 + ["DEFER"] == [e["verdict"] for e in agi]
    assert all(e["channel"].startswith("Local/") for e in agi)
    why = await asyncio.to_thread(callgate.cli, "audit", "why", UNLISTED)
    assert 5 == len(why.stdout.splitlines())
