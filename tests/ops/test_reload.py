"""Hot reload (gate/reload.py): validated first, swapped whole between decisions."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gate.config.loader import load_config
from gate.core.errors import ConfigError
from gate.core.model import Attempt, Verdict
from gate.ops.reload import Reloader, config_version
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import SAMPLE_CONFIG, TEST_SECRET

CONFIG = """
[gate]
default_region = "FR"
packs = {packs}
packs_dir = "packs"

[privacy]
secret = "{secret}"

[redis]
url = "{url}"
deadline = "1s"

[agi]
port = {agi_port}

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
WORKERS = 8
PAIRS_PER_PHASE = 3  # per worker, before and after the swap
RUN_DEADLINE_S = 30.0
MAX_PAIRS_PER_WORKER = 2_000


def write(path: Path, url: str, limit: int | str, agi_port: int = 4573, packs: str = "[]") -> Path:
    path.write_text(
        CONFIG.format(url=url, secret=TEST_SECRET, limit=limit, agi_port=agi_port, packs=packs)
    )
    return path


@dataclass
class Running:
    gate: Gate
    reloader: Reloader
    path: Path
    url: str


@pytest.fixture
async def running(redis_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    """A gate loaded from a config file with a cap of 3 attempts per 30 days."""
    path = write(tmp_path / "callgate.toml", redis_url, 3)
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(load_config(path), store, config_version(path))
    yield Running(gate, Reloader(gate, path), path, redis_url)
    await store.close()


def attempt(number: str) -> Attempt:
    return Attempt(number, datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Pair:
    """Two recorded attempts on one fresh number, and when they ran relative to the swap."""

    after_swap: bool  # the first attempt started after the reload returned
    before_swap: bool  # the second attempt ended before the reload started
    verdicts: tuple[Verdict, Verdict]
    reasons: tuple[str, str]


async def test_a_changed_cap_applies_from_the_swap_on_while_decisions_run(
    running: Running,
) -> None:
    """Deciding without pause, a reload from 3 to 1 attempts: no errors; every pair begun
    after the swap gets ALLOW then DEFER cap:attempts, every pair ended before it two ALLOWs."""
    swap_started, swap_done, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    pairs: list[list[Pair]] = [[] for _ in range(WORKERS)]
    counts = {False: 0, True: 0}
    enough = {False: asyncio.Event(), True: asyncio.Event()}  # by "begun after the swap"

    async def worker(index: int) -> None:
        for serial in range(MAX_PAIRS_PER_WORKER):
            if stop.is_set():
                return
            number = f"+336{10_000_000 + index * MAX_PAIRS_PER_WORKER + serial}"
            after = swap_done.is_set()
            first = await running.gate.decide(attempt(number), record=True, door="cli")
            second = await running.gate.decide(attempt(number), record=True, door="cli")
            pairs[index].append(
                Pair(
                    after,
                    not swap_started.is_set(),
                    (first.verdict, second.verdict),
                    (first.reason, second.reason),
                )
            )
            counts[after] += 1
            if counts[after] >= WORKERS * PAIRS_PER_PHASE:
                enough[after].set()

    async with asyncio.timeout(RUN_DEADLINE_S):
        tasks = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
        await enough[False].wait()
        swap_started.set()
        write(running.path, running.url, 1)
        result = await running.reloader.reload()
        swap_done.set()
        await enough[True].wait()
        stop.set()
        await asyncio.gather(*tasks)

    done = [p for w in pairs for p in w]
    before = {(p.verdicts, p.reasons) for p in done if p.before_swap}
    after = {(p.verdicts, p.reasons) for p in done if p.after_swap}
    during = {(p.verdicts, p.reasons) for p in done if not p.before_swap and not p.after_swap}
    both_allowed = ((Verdict.ALLOW, Verdict.ALLOW), ("allowed", "allowed"))
    capped = ((Verdict.ALLOW, Verdict.DEFER), ("allowed", "cap:attempts"))
    assert ({both_allowed}, {capped}) == (before, after)
    assert during <= {both_allowed, capped}
    assert (True, config_version(running.path)) == (result.changed, running.gate.version)


async def test_a_broken_file_leaves_the_old_config_serving(running: Running) -> None:
    """Bad TOML, then a bad value: each reload raises, the version and the cap stay."""
    version = running.gate.version
    running.path.write_text("[gate\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        await running.reloader.reload()
    write(running.path, running.url, '"three"')
    with pytest.raises(ConfigError, match=r"caps\[0\]\.limit"):
        await running.reloader.reload()
    verdicts = [
        (await running.gate.decide(attempt("+33612345678"), record=True, door="cli")).verdict
        for _ in range(4)
    ]
    assert version == running.gate.version
    assert [Verdict.ALLOW] * 3 + [Verdict.DEFER] == verdicts


async def test_a_refused_reload_is_logged_on_one_line(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal names the version still serving and the file's error, on one line."""
    running.path.write_text("[gate\n")
    with pytest.raises(ConfigError):
        await running.reloader.reload()
    [message] = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert message.startswith(
        f"reload refused, still serving config version {running.gate.version}: "
    )
    assert "\n" not in message


async def test_settings_bound_at_start_are_refused(running: Running) -> None:
    """A changed [agi] port cannot apply by reload: refused, naming it."""
    version = running.gate.version
    write(running.path, running.url, 3, agi_port=4574)
    with pytest.raises(ConfigError, match="agi changed; these apply only at start"):
        await running.reloader.reload()
    assert version == running.gate.version


async def test_reloading_an_unchanged_file_keeps_the_version(running: Running) -> None:
    """Same bytes, same version; the reload says it changed nothing."""
    result = await running.reloader.reload()
    assert (False, running.gate.version) == (result.changed, result.version)


def test_the_version_covers_the_pack_files(tmp_path: Path) -> None:
    """Editing an enabled pack file changes the version; the config alone did not change."""
    shutil.copytree(SAMPLE_CONFIG.parent / "packs", tmp_path / "packs")
    path = write(tmp_path / "callgate.toml", "redis://127.0.0.1:1/0", 4, packs='["fr"]')
    before = config_version(path)
    pack = tmp_path / "packs" / "fr.toml"
    pack.write_text(pack.read_text() + "\n# edited\n")
    assert (12, True) == (len(before), before != config_version(path))


async def test_a_sighup_style_request_reloads_in_the_background(running: Running) -> None:
    """request() (the SIGHUP handler) reloads without being awaited; close() waits for it."""
    write(running.path, running.url, 1)
    running.reloader.request()
    deadline = time.monotonic() + 10
    await running.reloader.close()
    assert time.monotonic() < deadline
    assert 1 == running.gate.config.policy.caps[0].limit


async def test_a_deleted_file_is_named_with_what_to_do_here(running: Running) -> None:
    """The config file deleted under a running gate: the reload (API, console, SIGHUP) says
    to put it back, not to pass --config (a flag of the command line that started it)."""
    running.path.unlink()
    with pytest.raises(ConfigError) as refused:
        await running.reloader.reload()
    assert (
        f"{running.path}: no such config file (moved or deleted?); put it back and reload, or "
        "restart callgate with the new path"
    ) == str(refused.value)


async def test_a_reload_that_changes_the_number_keying_is_refused(running: Running) -> None:
    """Another secret, by reload, would read and write other keys than the lists': every
    opt-out unseen. Refused, naming privacy; the gate serves on with its own."""
    version = running.gate.version
    running.path.write_text(
        running.path.read_text().replace(TEST_SECRET, "another-secret-0123456789")
    )
    with pytest.raises(ConfigError, match="privacy changed; these apply only at start"):
        await running.reloader.reload()
    assert version == running.gate.version
