"""Scrubbing an uploaded leads file: ``POST /v1/scrub/file`` and ``GET /v1/scrub/file/{id}``.

The upload is the leads file itself (plain, gzip or zip; the options of ``callgate scrub``
as query parameters). It is spooled to a private temporary file, then scrubbed by
``gate.lists.scrub.scrub_file`` (the CLI's own code: the same output for the same file) in
a process of its own (with its own workers and Redis connections, at a lower CPU priority,
``NICENESS``), so the doors' decisions are not held up by reading, deciding and writing a
million leads: in a thread of the server, the reading and writing held the interpreter's
lock for long stretches, and FastAGI checks waited up to a few hundred milliseconds.

The answer streams ``progress`` events as JSON Lines, then ``done`` with the counts by
verdict and reason and the id of the annotated CSV, which ``GET /v1/scrub/file/{id}``
returns.

Guarantees: results are kept in one private directory (0700) for ``KEEP_S``, at most
``MAX_KEPT`` at a time and ``MAX_KEPT_BYTES`` together (the oldest goes first; the newest
is kept whatever its size), and removed when the server stops; a client that goes away
stops the scrub (nothing is kept); at most ``MAX_SCRUBS`` uploads are spooled or scrubbed
at a time (one more is refused, 503, before its body is read); nothing is counted or
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from gate.config.loader import Config, RedisConfig
from gate.core.errors import GateError, InputError, Wording
from gate.core.model import TrafficClass, Verdict
from gate.lists.formats import count_lines, csv_dialect, csv_error, open_lines, uri_cells
from gate.lists.scrub import ScrubSummary, column_index, ends_with_parent, scrub_file
from gate.ops._openapi import Operation
from gate.ops.api import (
    MAX_UPLOAD_BYTES,
    NDJSON,
    UPLOAD,
    UPLOAD_TYPES,
    Handler,
    RequestError,
    spool,
    wording_of,
)
from gate.ops.models import ScrubFileEvent, ScrubFileQuery, VerdictCounts, json_of, parse_query
from gate.service import Gate
from gate.store.client import Store

__all__ = ["ScrubFiles"]

log = logging.getLogger("callgate.http")

KEEP_S = 3600.0
MAX_KEPT = 8
MAX_KEPT_BYTES = 8 * 1024**3  # and at most this many bytes (the newest is always kept)
PROGRESS_EVERY_S = 0.5
ADMIN_DEADLINE_S = 5.0  # as ``callgate scrub``: batches of 200 decisions per Redis call
STOP_S = 10.0  # a stopped scrub's process ends within this (its workers' batches done)
NICENESS = 10  # the scrub's processes yield the CPU to the server's (nice(2))
# An error event's reason is cut to this many characters (a file's error may quote a huge
# header), so that each line of the scrub's process fits the server's reading of it.
MAX_WHY_CHARS = 2000
# Uploads being spooled or scrubbed at a time; one more is refused (503). Each scrub is
# three processes (its own, two workers: some 125 MB together), so an unbounded number of
# them (any local user's, on loopback without a token) could exhaust the memory and have
# the OOM killer end the server or its Redis.
MAX_SCRUBS = 4
EVENT_LINE_BYTES = 1024 * 1024  # the longest line the server reads from that process
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class ScrubFiles:
    """The scrubbed files of one HTTP listener, and the two routes that make and serve them."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._dir: Path | None = None
        # id: (the file, its download name, when it was made, its size)
        self._kept: OrderedDict[str, tuple[Path, str, float, int]] = OrderedDict()
        self._running = 0  # uploads being spooled or scrubbed (``MAX_SCRUBS``)
        self.processes: set[asyncio.subprocess.Process] = set()  # the scrubs' own
        self.stopping = False

    def operations(self) -> list[tuple[Operation, Handler]]:
        return [
            (
                Operation(
                    "POST",
                    "/v1/scrub/file",
                    "scrubFile",
                    "Scrub an uploaded leads file, with progress",
                    description="The body is the leads file (plain, gzip or zip; CSV, TSV or "
                    "semicolon-separated), read as `callgate scrub` reads it. The answer is "
                    "JSON Lines: `progress` events, then `done` with the counts and the `id` "
                    "of the annotated CSV (GET /v1/scrub/file/{id}), or `error`. Nothing is "
                    "counted.",
                    query=ScrubFileQuery,
                    streams={NDJSON: ScrubFileEvent},
                    uploads=UPLOAD_TYPES,
                    errors=(400, 401, 403, 413, 415, 503),
                ),
                self._upload,
            ),
            (
                Operation(
                    "GET",
                    "/v1/scrub/file/{id}",
                    "getScrubbedFile",
                    "The annotated CSV of a scrubbed upload (kept for an hour)",
                    path_params={"id": {"type": "string", "pattern": _ID_RE.pattern}},
                    streams={"text/csv": None},
                    errors=(401, 403, 404),
                ),
                self._download,
            ),
        ]

    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="callgate-scrubbed-"))  # 0700
        return self._dir

    def _expire(self) -> None:
        now = time.monotonic()
        size = sum(kept[3] for kept in self._kept.values())
        while self._kept and (
            len(self._kept) > MAX_KEPT
            or now - next(iter(self._kept.values()))[2] > KEEP_S
            or (size > MAX_KEPT_BYTES and len(self._kept) > 1)
        ):
            _, (path, _, _, bytes_) = self._kept.popitem(last=False)
            path.unlink(missing_ok=True)
            size -= bytes_

    def stop_scrubs(self) -> None:
        """The server stops: every running scrub is stopped now (each answer ends with an
        error event saying so), not after the server's grace for requests; no more
        starts."""
        self.stopping = True
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()

    def close(self) -> None:
        """Remove every kept file."""
        self._kept.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        query = parse_query(ScrubFileQuery, request.query)
        tenant = query.tenant or self.gate.config.default_tenant
        self.gate.config.policy.check_tenant(tenant)
        if self.stopping:
            raise RequestError(503, "the server is stopping; scrub the file once it is back")
        if self._running >= MAX_SCRUBS:
            raise RequestError(
                503,
                f"too many uploads being scrubbed (at most {MAX_SCRUBS} at a time); "
                "try again once one is done",
            )
        self._running += 1
        try:
            return await self._scrub_upload(request, query, tenant)
        finally:
            self._running -= 1

    async def _scrub_upload(
        self, request: web.Request, query: ScrubFileQuery, tenant: str
    ) -> web.StreamResponse:
        file_id = secrets.token_urlsafe(18)
        output = self._directory() / file_id
        with tempfile.TemporaryDirectory(prefix="callgate-upload-") as spool_dir:
            path = Path(spool_dir) / "upload"
            await spool(request, path)
            total = await asyncio.to_thread(count_lines, path, UPLOAD, MAX_UPLOAD_BYTES)
            # A missing column or an unreadable file fails here, before the 200 is sent.
            await asyncio.to_thread(_probe, path, query.column)
            response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await response.prepare(request)
            job = _ScrubJob(self, query, tenant, path, output, total, wording_of(request))
            summary = await job.run(response)
            if summary is not None:
                stem = Path(query.name or "leads").stem
                name = _NAME_RE.sub("_", stem)[:80] or "leads"
                made = time.monotonic()
                self._kept[file_id] = (output, f"{name}-scrubbed.csv", made, output.stat().st_size)
                self._expire()
                await response.write(json_of(job.done(file_id, summary)) + b"\n")
            await response.write_eof()
            return response

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self._expire()
        file_id = request.match_info["id"]
        kept = self._kept.get(file_id) if _ID_RE.fullmatch(file_id) else None
        if kept is None:
            raise RequestError(404, "no such scrubbed file (they are kept for an hour)")
        path, name, _, _ = kept
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{name}"',
            },
        )


def _probe(path: Path, column: str) -> None:
    """Read the first row as the scrub will (the file's text, its phone column)."""
    lines = open_lines(path, name=UPLOAD)
    try:
        found = next(((n, line) for n, line in enumerate(lines, 1) if line.strip()), None)
        if found is None:
            raise InputError("the upload has no leads")
        line_no, first = found
        dialect = csv_dialect(first)
        try:
            head = next(csv.reader([first], dialect), [])
        except csv.Error as exc:  # a first line longer than the csv module's limit
            raise csv_error(UPLOAD, line_no, exc) from exc
        cells = uri_cells(head, dialect.delimiter)  # as ``csv_rows`` gives the scrub
        column_index(column, [c.strip() for c in cells], UPLOAD)
    finally:
        lines.close()


class _ScrubJob:
    """One uploaded file scrubbed in a process of its own (``_scrub_process``), its
    progress sent on as it comes."""

    def __init__(
        self,
        files: ScrubFiles,
        query: ScrubFileQuery,
        tenant: str,
        path: Path,
        output: Path,
        total: int,
        wording: Wording,
    ) -> None:
        self.files = files
        active = files.gate.active
        self.task = _Task(
            active.config,
            active.version,
            files.gate.store.settings,
            path,
            output,
            query.column,
            query.header,
            query.at or datetime.now(UTC),
            tenant,
            query.campaign or "",
            query.traffic_class,
            query.caller_id,
            wording,
            os.getpid(),
        )
        self.total = total
        self.lines = 0
        self.rows = 0

    def _event(self, **fields: Any) -> ScrubFileEvent:
        values: dict[str, Any] = {
            "lines": self.lines,
            "total": self.total,
            "rows": self.rows,
            "id": None,
            "counts": None,
            "unreadable": None,
            "reasons": None,
            "why": None,
        }
        values.update(fields)
        return ScrubFileEvent(**values)

    def done(self, file_id: str, summary: ScrubSummary) -> ScrubFileEvent:
        counts = VerdictCounts(**{v.value: summary.verdicts[v.value] for v in Verdict})
        return self._event(
            event="done",
            id=file_id,
            counts=counts,
            unreadable=summary.verdicts["ERROR"],
            reasons=dict(summary.reasons.most_common()),
        )

    async def run(self, response: web.StreamResponse) -> ScrubSummary | None:
        """Stream the progress; the summary once the output is whole (None: it failed).
        The client going away, or the server stopping, stops the scrub's process."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _BOOT,
                json.dumps(sys.path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=EVENT_LINE_BYTES,
                start_new_session=True,  # the server's Ctrl-C is not its: the server stops it
            )
        except OSError as exc:  # no process left (EAGAIN), no memory, no interpreter
            log.error("API scrub of an upload: cannot start its process: %s", exc)
            why = f"the scrub could not start its process: {exc.strerror or exc}; try again later"
            await response.write(json_of(self._event(event="error", why=why)) + b"\n")
            return None
        self.files.processes.add(process)
        try:
            if self.files.stopping:  # it started as the server began to stop
                process.terminate()
            return await self._follow(process, response)
        finally:
            # Shielded whole: cancelled again while it waits, the handler still leaves no
            # process running and nothing behind.
            await asyncio.shield(asyncio.ensure_future(self._end(process)))

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        await _stop(process)
        self.files.processes.discard(process)
        # What a killed process left: its output, being written beside the target.
        for partial in self.task.output.parent.glob(f".{self.task.output.name}.*"):
            partial.unlink(missing_ok=True)

    async def _follow(
        self, process: asyncio.subprocess.Process, response: web.StreamResponse
    ) -> ScrubSummary | None:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(pickle.dumps(self.task))
        with contextlib.suppress(ConnectionError):  # it ended at once: told below
            await process.stdin.drain()
        process.stdin.close()
        for _ in range(10**12):  # bounded by the scrub: its process ends
            line = await process.stdout.readline()
            if not line:
                break
            event = _event_of(line)
            if event is None:  # not an event: printed by an import of its (a .pth file)
                log.warning("API scrub of an upload: its process printed %r", line[:200])
                continue
            kind, value = event
            if kind == "progress":
                self.lines, self.rows = value
                await response.write(json_of(self._event(event="progress")) + b"\n")
            elif kind == "done":
                summary = ScrubSummary(value["rows"], Counter(value["verdicts"]))
                summary.reasons.update(value["reasons"])
                self.lines, self.rows = self.total, summary.rows
                await response.write(json_of(self._event(event="progress")) + b"\n")
                return summary
            else:
                await response.write(json_of(self._event(event="error", why=value)) + b"\n")
                return None
        code = await process.wait()
        if self.files.stopping:
            why = "the scrub stopped: the server is stopping; nothing was kept"
            await response.write(json_of(self._event(event="error", why=why)) + b"\n")
            return None
        ended = (
            f"was killed by signal {-code} (out of memory?)"
            if code < 0
            else f"ended with exit status {code}"
        )
        log.error("API scrub of an upload: its process %s", ended)
        why = f"the scrub stopped: its process {ended}; nothing was kept"
        await response.write(json_of(self._event(event="error", why=why)) + b"\n")
        return None


@dataclass(frozen=True, slots=True)
class _Task:
    """What the scrub's process is given (pickled on its standard input)."""

    config: Config
    version: str
    settings: RedisConfig
    path: Path
    output: Path
    column: str
    header: bool
    now: datetime
    tenant: str
    campaign: str
    traffic_class: TrafficClass
    caller_id: str | None
    wording: Wording
    server_pid: int


# The scrub's process: the server's import path (as multiprocessing's spawn gives its
# children), then ``_scrub_process``.
_BOOT = (
    "import json, os, sys; events = os.dup(1); os.dup2(2, 1); "
    "sys.path[:] = json.loads(sys.argv[1]); "
    "from gate.ops.scrubfile import _scrub_process; sys.exit(_scrub_process(events))"
)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Stop the scrub's process (if it still runs) and wait for it: SIGTERM (it removes
    its partial output and stops its workers), then, after ``STOP_S``, SIGKILL to its
    whole process group (its workers too)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(STOP_S):
                await process.wait()
        except TimeoutError:
            log.warning("API scrub of an upload: its process did not stop; killed")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its workers, if any outlived it
    await process.wait()


def _scrub_process(events_fd: int) -> int:
    """The scrub's process: the task from standard input, ``[kind, value]`` JSON lines to
    ``events_fd``, its standard output as it started (``progress``: the lines read and
    the rows written so far; then ``done``: the summary, or ``error``: the one-line
    error). Anything else written to standard output, from the start (``_BOOT``), goes to
    standard error (the server's log). SIGTERM stops the scrub; the server's death sends
    SIGTERM."""
    task: _Task = pickle.load(sys.stdin.buffer)
    events = os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not ends_with_parent(task.server_pid):
        return 1  # the server is already gone
    os.nice(NICENESS)  # the doors' calls first (its workers inherit it)
    try:
        asyncio.run(_scrub(task, lambda kind, value: print(json.dumps([kind, value]), file=events)))
    except asyncio.CancelledError:  # SIGTERM: stopped; the output was removed
        return 1
    return 0


def _event_of(line: bytes) -> tuple[str, Any] | None:
    """A line of the scrub's process read as ``[kind, value]`` (None: not an event)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(event, list) and len(event) == 2 and event[0] in _KINDS):
        return None
    return event[0], event[1]


_KINDS = ("progress", "done", "error")


def _cut(why: str) -> str:
    """``why``, at most ``MAX_WHY_CHARS`` long (its end replaced by "…")."""
    return why if len(why) <= MAX_WHY_CHARS else why[: MAX_WHY_CHARS - 1] + "…"


async def _scrub(task: _Task, send: Callable[[str, Any], None]) -> None:
    current = asyncio.current_task()
    assert current is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    store = Store(task.settings.url, ADMIN_DEADLINE_S, task.settings)
    try:
        gate = Gate(task.config, store, task.version)
        shown = 0.0
        rows = 0

        def written(lines: int, batch: int) -> None:
            nonlocal shown, rows
            rows += batch
            if time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                send("progress", [lines, rows])

        summary = await scrub_file(
            gate,
            task.path,
            task.output,
            column=task.column,
            header=task.header,
            now=task.now,
            tenant=task.tenant,
            campaign=task.campaign,
            traffic_class=task.traffic_class,
            caller_id=task.caller_id,
            written=written,
            fork=True,  # this process runs no other thread
            name=UPLOAD,
            output_name="the scrubbed file",
        )
        send(
            "done",
            {"rows": summary.rows, "verdicts": summary.verdicts, "reasons": summary.reasons},
        )
    except GateError as exc:
        send("error", _cut(exc.worded(task.wording)))
    except Exception as exc:  # a bug must still end the answer
        log.exception("API scrub of an upload failed")
        send("error", f"internal error: {type(exc).__name__}")
    finally:
        await store.close()
