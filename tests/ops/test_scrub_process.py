"""A console upload is scrubbed in a process of its own, never in the server's.

Read, decided and written in a thread of the server, a million-lead upload held the
interpreter's lock for long stretches, and the doors' FastAGI checks waited up to a few
hundred milliseconds. Its own process (and that process's workers) must also end with the
scrub, however it ends: the client goes away, the process is killed (the OOM killer), or
the server itself is killed. The workers of ``callgate scrub`` too end with it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gate.lists import scrub
from gate.ops import scrubfile
from gate.service import Gate
from gate.store.client import Store
from tests.cli.test_cli import config_file, interactive_cli  # noqa: F401 (a fixture)
from tests.conftest import TEST_SECRET, make_config
from tests.e2e.gateproc import GateProcess, write_config
from tests.ops.conftest import AUTH, LISTS
from tests.ops.test_console import Console, console, start  # noqa: F401 (a fixture)
from tests.ops.test_run_ops import free_port

ROWS = 60_000  # over the scrub's PARALLEL_FROM: its process starts workers of its own
GONE_S = 15.0  # the scrub's processes end within this (a stop is bounded by 10 s)
UPLOAD = "/v1/scrub/file?column=phone&name=leads.csv"
CSV = {**AUTH, "Content-Type": "text/csv"}
MARK = b"_scrub_process"  # in the command line of the scrub's process (and its forks)


def _leads(rows: int = ROWS) -> bytes:
    lines = ["name,phone", *(f"lead{i},06{i:08d}" for i in range(rows))]
    return ("\n".join(lines) + "\n").encode()


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie left to a parent that does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def scrub_processes(server: int) -> list[int]:
    """The scrub's processes under the server ``server``: its child that runs the scrub,
    then that child's own (its workers)."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    parents = {pid: _parent(pid) for pid in pids}

    def marked(pid: int) -> bool:
        try:
            return MARK in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    scrubs = [pid for pid, parent in parents.items() if parent == server and marked(pid)]
    return scrubs + [pid for pid, parent in parents.items() if parent in scrubs]


def _children(pid: int) -> list[int]:
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [child for child in pids if _parent(child) == pid]


async def wait_gone(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running after ``GONE_S`` (none, once the scrub ended)."""
    deadline = time.monotonic() + GONE_S
    for _ in range(int(GONE_S / 0.05) + 1):
        if time.monotonic() > deadline or not any(_alive(pid) for pid in pids):
            break
        await asyncio.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


def _kept_files(running: Console) -> list[str]:
    directory = running.server.scrubbed._dir
    return [] if directory is None else sorted(p.name for p in directory.iterdir())


async def test_a_client_that_goes_away_ends_the_scrubs_processes(
    console: Console,  # noqa: F811 (the fixture)
    session: aiohttp.ClientSession,
) -> None:
    """While an upload is scrubbed, its scrub runs in a child process with workers of its
    own; the client closing the connection ends them all, and nothing is left behind."""
    async with session.post(
        console.url + UPLOAD,
        data=io.BytesIO(_leads()),
        headers={**AUTH, "Content-Type": "text/csv"},
    ) as response:
        first = json.loads(await response.content.readline())
        running = scrub_processes(os.getpid())
        response.close()
    left = await wait_gone(running)
    assert ("progress", 3, []) == (first["event"], len(running), left)
    assert [] == _kept_files(console)


async def test_a_killed_scrub_process_ends_the_answer_with_its_error(
    console: Console,  # noqa: F811 (the fixture)
    session: aiohttp.ClientSession,
) -> None:
    """The scrub's process killed (the OOM killer): the answer ends with an error event
    that says so, its workers end too, and its partial output is removed."""
    async with session.post(
        console.url + UPLOAD,
        data=io.BytesIO(_leads()),
        headers={**AUTH, "Content-Type": "text/csv"},
    ) as response:
        await response.content.readline()
        running = scrub_processes(os.getpid())
        os.kill(running[0], signal.SIGKILL)
        events = [json.loads(line) for line in (await response.text()).splitlines()]
    left = await wait_gone(running)
    last: dict[str, Any] = events[-1]
    assert (
        "error",
        "the scrub stopped: its process was killed by signal 9 (out of memory?); nothing was kept",
    ) == (last["event"], last["why"])
    assert ([], []) == (left, _kept_files(console))


async def test_the_scrub_of_a_killed_server_ends_too(
    redis_url: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``callgate run`` SIGKILLed during an upload's scrub: the scrub's process gets the
    parent-death signal and ends, with its workers (no orphan goes on using Redis)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what the killed server leaves, removed
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml", redis_url=redis_url, agi_port=port, secret=TEST_SECRET
    )
    with GateProcess(config, tmp_path / "callgate.log", port) as gate:
        url = f"http://127.0.0.1:{gate.http_port()}{UPLOAD}"
        async with session.post(
            url, data=io.BytesIO(_leads()), headers={"Content-Type": "text/csv"}
        ) as response:
            first = json.loads(await response.content.readline())
            assert gate.pid is not None
            running = scrub_processes(gate.pid)
            gate.kill()
    left = await wait_gone(running)
    assert ("progress", 3, []) == (first["event"], len(running), left)


async def test_kept_results_are_bounded_in_bytes_and_the_newest_is_kept(
    console: Console,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``MAX_KEPT_BYTES`` together, the oldest scrubbed file is removed (a few huge
    uploads must not fill the server's disk for an hour); the newest stays, however big."""
    monkeypatch.setattr(scrubfile, "MAX_KEPT_BYTES", 1)
    ids = []
    for _ in range(2):
        status, events = await console.call("POST", UPLOAD, CSV, data="phone\n0612345678\n")
        ids.append(json.loads(events.strip().splitlines()[-1])["id"])
    statuses = []
    for file_id in ids:
        status, _ = await console.call("GET", f"/v1/scrub/file/{file_id}", AUTH)
        statuses.append(status)
    assert [404, 200] == statuses
    assert [ids[1]] == _kept_files(console)


async def test_the_workers_of_a_killed_scrub_command_end_too(
    tmp_path: Path,
    config_file: Path,  # noqa: F811 (the fixture)
) -> None:
    """``callgate scrub`` SIGKILLed: its two worker processes get the parent-death signal
    and end (they were left blocked for ever on its queue, each with a Redis connection)."""
    leads = tmp_path / "leads.csv"
    leads.write_bytes(_leads(300_000))
    out = tmp_path / "out.csv"
    args = ("--config", str(config_file), "scrub", str(leads), "--column", "phone", "-o", str(out))
    process = interactive_cli(tmp_path, *args)
    try:
        workers: list[int] = []
        for _ in range(int(GONE_S / 0.05)):  # the workers start within a second or two
            workers = _children(process.pid)
            if len(workers) == 2 or process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        process.kill()
    finally:
        process.communicate(timeout=GONE_S)
    left = await wait_gone(workers)
    assert (2, []) == (len(workers), left)


async def test_an_error_too_long_for_a_line_still_ends_the_answer(
    console: Console,  # noqa: F811 (the fixture)
) -> None:
    """An error raised in the scrub's process may quote a huge header (here the header the
    scrub reads, a quoted newline in its first cell, is not the one the probe read): the
    answer still ends with that error, cut to ``MAX_WHY_CHARS``, not with a cut stream."""
    columns = ",".join(f"column_{i:05d}_with_a_long_name" for i in range(3000))
    leads = f'"phone\nx",{columns}\n0612345678\n'
    status, text = await console.call("POST", UPLOAD, CSV, data=leads)
    last = json.loads(text.strip().splitlines()[-1]) if isinstance(text, str) else text
    why = last.get("why") or ""
    assert (200, "error", scrubfile.MAX_WHY_CHARS) == (status, last.get("event"), len(why))
    assert why.startswith("the upload: no column named 'phone' in header ['phone\\nx', ")


async def test_an_upload_past_max_scrubs_is_refused_with_503(
    console: Console,  # noqa: F811 (the fixture)
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each scrub is three processes: past ``MAX_SCRUBS`` at a time, an upload is refused
    with 503 and one line (an unbounded number of them exhausted the memory); once the
    running one ends, an upload is taken again."""
    monkeypatch.setattr(scrubfile, "MAX_SCRUBS", 1)
    async with session.post(console.url + UPLOAD, data=io.BytesIO(_leads()), headers=CSV) as first:
        await first.content.readline()
        refused = await console.call("POST", UPLOAD, CSV, data="phone\n0612345678\n")
        await first.read()
    status, events = await console.call("POST", UPLOAD, CSV, data="phone\n0612345678\n")
    assert (
        503,
        {
            "error": "too many uploads being scrubbed (at most 1 at a time); "
            "try again once one is done"
        },
    ) == refused
    assert (200, "done") == (status, json.loads(events.strip().splitlines()[-1])["event"])


async def test_a_scrub_process_that_cannot_start_ends_the_answer_with_its_error(
    console: Console,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scrub's process cannot be started (no process left, no memory, the interpreter
    gone): the answer, already begun, ends with an error event that says so."""
    monkeypatch.setattr(scrubfile.sys, "executable", "/nonexistent/python")
    status, text = await console.call("POST", UPLOAD, CSV, data="phone\n0612345678\n")
    last = json.loads(text.strip().splitlines()[-1]) if isinstance(text, str) else text
    assert (
        200,
        "error",
        "the scrub could not start its process: No such file or directory; try again later",
    ) == (status, last.get("event"), last.get("why"))


async def test_a_server_that_stops_ends_its_scrubs_at_once(
    redis_url: str, session: aiohttp.ClientSession
) -> None:
    """The server stopping (SIGTERM, ``systemctl stop``) stops a running scrub first, so
    its answer ends with an error saying why, and the server does not wait for it (the
    scrub ran on through the requests' grace, then was cut off)."""
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(make_config({"lists": LISTS}), store, "v1"))
    try:
        async with session.post(running.url + UPLOAD, data=io.BytesIO(_leads()), headers=CSV) as r:
            await r.content.readline()
            scrubs = scrub_processes(os.getpid())
            stopping = asyncio.create_task(running.server.stop())
            events = [json.loads(line) for line in (await r.text()).splitlines()]
            await stopping
    finally:
        await running.session.close()
        await running.audit.close()
        await store.close()
    assert (
        "error",
        "the scrub stopped: the server is stopping; nothing was kept",
        3,
        [],
    ) == (events[-1]["event"], events[-1]["why"], len(scrubs), await wait_gone(scrubs))


async def test_an_upload_while_the_server_stops_is_refused_with_503(
    console: Console,  # noqa: F811 (the fixture)
) -> None:
    """Once the server has begun to stop, an upload starts no scrub: 503 and one line."""
    console.server.scrubbed.stop_scrubs()
    refused = await console.call("POST", UPLOAD, CSV, data="phone\n0612345678\n")
    assert (503, {"error": "the server is stopping; scrub the file once it is back"}) == refused


async def test_a_line_the_scrub_process_prints_that_is_no_event_is_logged_and_skipped(
    console: Console,  # noqa: F811 (the fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Something the scrub's process prints before it can send its own output aside (a
    ``sitecustomize`` or ``.pth`` file of the installation) is logged and skipped; the
    answer goes on to its summary."""
    (tmp_path / "sitecustomize.py").write_text("print('hello from sitecustomize')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    status, text = await console.call("POST", UPLOAD, CSV, data="phone\n0612345678\n")
    printed = [r.getMessage() for r in caplog.records if "printed" in r.getMessage()]
    assert (200, "done") == (status, json.loads(text.strip().splitlines()[-1])["event"])
    assert ["API scrub of an upload: its process printed b'hello from sitecustomize\\n'"] == printed


def test_a_scrub_process_refused_the_parent_death_signal_runs_without_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where prctl is refused (a strict seccomp profile), a scrub's worker or process
    runs on without the signal, saying so, instead of breaking every parallel scrub."""

    def refused(_parent: int) -> bool:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(scrub, "end_with_parent", refused)
    alive = scrub.ends_with_parent(os.getppid())
    gone = scrub.ends_with_parent(os.getpid())  # not this process's parent: "gone"
    assert (True, False) == (alive, gone)
    assert (
        "scrub: no parent-death signal ([Errno 1] Operation not permitted): a killed parent "
        "leaves it running"
    ) == caplog.records[0].getMessage()
