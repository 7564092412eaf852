"""The audit trail end to end: real calls through a REAL Asterisk and ``callgate run``,
then ``callgate audit export`` (a separate process, as a compliance officer would run it)
finds every call with the reason it was let through or stopped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateproc import GateProcess, callgate_dialplan, write_config
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


@pytest.fixture
def callgate(redis_url: str, tmp_path: Path) -> Iterator[GateProcess]:
    """``callgate run`` writing its audit trail to the test's Redis."""
    agi_port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=agi_port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}},
    )
    with GateProcess(config, tmp_path / "callgate.log", agi_port) as process:
        yield process


@pytest.fixture
def asterisk(asterisk_factory: SandboxFactory, callgate: GateProcess) -> AsteriskSandbox:
    include = callgate_dialplan(callgate.agi_port, fail_mode="DEFER")
    return asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include}, sip_context="gated")


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
