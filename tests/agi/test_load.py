"""Many simultaneous calls through the real FastAGI port of a real ``callgate run``.

The gate runs as its own process (as in production: Asterisk is another process) against
the session's real Redis, with the default pool. The peers in this module play Asterisk
for hundreds of calls at once; a healthy Redis must answer all of them, never the fail
mode. The deadline is 250 ms, not the default 50 ms: on a 2-core machine running Redis,
the gate and 500 peers at once, Redis itself was seen to take over 50 ms for about one
call in 7 500 (CPU contention, not the gate). That the deadline counts only Redis's time,
not the wait for a pooled connection, is tested in tests/store/test_pool.py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agi.test_server import agi_call
from tests.conftest import TEST_SECRET
from tests.e2e.gateproc import GateProcess, write_config
from tests.ops.test_run_ops import free_port

CONCURRENT_CALLS = 500
CONCURRENT_MANUAL = 120
# Each peer's whole dialogue is bounded by agi_call's own timeout; the burst by this.
BURST_TIMEOUT_S = 60.0
LISTED = "+33612345678"


def burst_number(index: int) -> str:
    """A distinct French mobile number per call (no cap is reached)."""
    return f"0613{index:06d}"


@pytest.fixture
def gate_process(redis_url: str, tmp_path: Path) -> Iterator[GateProcess]:
    """``callgate run`` on the session Redis with the default pool, a 250 ms deadline and
    the documented ``fail_mode.manual = "ALLOW"``; stopped by PID."""
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={
            "redis": {"deadline": "250ms"},
            "fail_mode": {"campaign": "DEFER", "manual": "ALLOW"},
        },
    )
    with GateProcess(config, tmp_path / "callgate.log", port) as process:
        yield process


async def burst(port: int, scripts: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Play every (script, extension) FastAGI request at once; the variables of each."""
    async with asyncio.timeout(BURST_TIMEOUT_S):
        dialogues = await asyncio.gather(
            *(agi_call(port, script, extension=extension) for script, extension in scripts)
        )
    return [dialogue.variables for dialogue in dialogues]


def outcomes(answers: list[dict[str, str]]) -> collections.Counter[str]:
    return collections.Counter(
        f"{a.get('CALLGATE_RESULT', 'none')} {a.get('CALLGATE_REASON', '')}" for a in answers
    )


async def test_500_concurrent_decisions_against_a_healthy_redis_never_get_the_fail_mode(
    gate_process: GateProcess,
) -> None:
    """500 simultaneous FastAGI checks against a healthy Redis: 500 decisions, 0
    store_unavailable (the pool waits for a connection instead of failing)."""
    scripts = [("check?tenant=default", burst_number(i)) for i in range(CONCURRENT_CALLS)]
    answers = await burst(gate_process.agi_port, scripts)
    assert {"ALLOW allowed": CONCURRENT_CALLS} == dict(outcomes(answers))


async def test_manual_fail_mode_allow_never_lets_a_listed_number_out_under_load(
    gate_process: GateProcess,
) -> None:
    """With fail_mode.manual = ALLOW, 120 simultaneous manual checks of a red-listed number
    are all BLOCK: a healthy Redis is never mistaken for a dead one."""
    gate_process.cli("list", "add", "red", LISTED)
    scripts = [("check?tenant=default&class=manual", LISTED)] * CONCURRENT_MANUAL
    answers = await burst(gate_process.agi_port, scripts)
    assert {"BLOCK listed:red": CONCURRENT_MANUAL} == dict(outcomes(answers))
