"""The console's Live page end to end: a REAL call through a REAL Asterisk's FastAGI door
(dialplan/callgate.conf) to a REAL ``callgate run``, watched in a REAL headless Chromium.

The decision reaches the page through the audit trail (the AGI door records it, the
console follows the trail with Server-Sent Events): the row must appear within 2 s of
the call being placed.
"""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateproc import GateProcess, callgate_dialplan, write_config
from sandbox import SandboxFactory, free_port

from gate.core.keys import Keyspace
from tests.conftest import TEST_SECRET
from tests.console.browser import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TOKEN = "console-e2e-token-0123456789"
LISTED = "0699001122"
LISTED_E164 = "+33699001122"
WITHIN_S = 2.0

DIALPLAN = """
#include callgate.conf

[gated]
exten => _X.,1,GoSub(callgate-agi,s,1(${EXTEN},default,live-e2e,campaign))
 same => n,Answer()
 same => n,Wait(2)
 same => n,Hangup()

[answerer]
exten => s,1,Answer()
 same => n,Wait(5)
 same => n,Hangup()
"""


@pytest.fixture
def callgate(redis_url: str, tmp_path: Path) -> Iterator[GateProcess]:
    """``callgate run`` with an API token (the console's sign-in) and a 1 s Redis deadline."""
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}, "api": {"token": TOKEN}},
    )
    with GateProcess(config, tmp_path / "callgate.log", port) as process:
        yield process


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    running = Browser(tmp_path / "downloads")
    yield running
    running.quit()


async def test_a_call_through_the_agi_door_appears_on_the_live_page_within_2_s(
    callgate: GateProcess,
    asterisk_factory: SandboxFactory,
    browser: Browser,
    tmp_path: Path,
) -> None:
    """A red-listed number dialled through the FastAGI door shows on the Live page as an
    agi BLOCK listed:red row, its number as the trail's tag, within 2 s of the call."""
    include = callgate_dialplan(callgate.agi_port, fail_mode="DEFER")
    asterisk = asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include})
    await asyncio.to_thread(callgate.cli, "list", "add", "red", LISTED_E164)
    url = f"http://127.0.0.1:{callgate.http_port()}"
    await asyncio.to_thread(browser.sign_in, url, TOKEN)
    await asyncio.to_thread(
        browser.wait, "the live stream", lambda: browser.find("#live-status").text == "streaming"
    )

    def agi_rows() -> list[list[str]]:
        return [
            [cell.text for cell in row.find_elements("css selector", "td")]
            for row in browser.find_all("#live-rows tr")
            if "agi" in row.text
        ]

    placed = time.monotonic()
    await asterisk.originate_local(LISTED, "gated")
    rows = await asyncio.to_thread(browser.wait, "the call's row", agi_rows, WITHIN_S)
    seen_after_s = time.monotonic() - placed
    browser.screenshot(tmp_path / "live-call.png")
    tag = "#" + Keyspace("callgate", TEST_SECRET.encode()).token(LISTED_E164)[:8]
    print(f"\nthe call's row appeared on the Live page {seen_after_s:.3f} s after it was placed")
    assert [["agi", "BLOCK", "listed:red", tag, "default", "live-e2e"]] == [r[1:] for r in rows]
