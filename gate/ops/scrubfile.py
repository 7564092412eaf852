"""Scrubbing an uploaded leads file: ``POST /v1/scrub/file`` and ``GET /v1/scrub/file/{id}``.

The upload is the leads file itself (plain, gzip or zip; the options of ``callgate scrub``
as query parameters). It is spooled to a private temporary file, then scrubbed by
``gate.lists.scrub.scrub_file`` (the CLI's own code: the same output for the same file) in
a worker thread with its own Redis connection, so the doors' decisions are not held up by
planning thousands of leads. The answer streams ``progress`` events as JSON Lines, then
``done`` with the counts by verdict and reason and the id of the annotated CSV, which
``GET /v1/scrub/file/{id}`` returns.

Guarantees: results are kept in one private directory (0700) for ``KEEP_S``, at most
``MAX_KEPT`` at a time (the oldest goes first), and removed when the server stops; a
client that goes away stops the scrub (nothing is kept); nothing is counted or recorded.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from gate.core.errors import GateError, InputError, Wording
from gate.core.model import Verdict
from gate.lists.formats import count_lines, csv_dialect, csv_error, open_lines, uri_cells
from gate.lists.scrub import ScrubSummary, column_index, scrub_file
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
PROGRESS_EVERY_S = 0.5
ADMIN_DEADLINE_S = 5.0  # as ``callgate scrub``: batches of 200 decisions per Redis call
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class ScrubFiles:
    """The scrubbed files of one HTTP listener, and the two routes that make and serve them."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._dir: Path | None = None
        self._kept: OrderedDict[str, tuple[Path, str, float]] = OrderedDict()

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
        while self._kept and (
            len(self._kept) > MAX_KEPT or now - next(iter(self._kept.values()))[2] > KEEP_S
        ):
            _, (path, _, _) = self._kept.popitem(last=False)
            path.unlink(missing_ok=True)

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
            job = _ScrubJob(self.gate, query, tenant, path, output, total, wording_of(request))
            summary = await job.run(response)
            if summary is not None:
                stem = Path(query.name or "leads").stem
                name = _NAME_RE.sub("_", stem)[:80] or "leads"
                self._kept[file_id] = (output, f"{name}-scrubbed.csv", time.monotonic())
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
        path, name, _ = kept
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
    """One uploaded file scrubbed in a worker thread, its progress sent as it goes."""

    def __init__(
        self,
        gate: Gate,
        query: ScrubFileQuery,
        tenant: str,
        path: Path,
        output: Path,
        total: int,
        wording: Wording,
    ) -> None:
        self.gate, self.query, self.tenant = gate, query, tenant
        self.path, self.output, self.total = path, output, total
        self.wording = wording
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[ScrubFileEvent | ScrubSummary | None] = asyncio.Queue()
        self.stop = threading.Event()
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

    def _send(self, item: ScrubFileEvent | ScrubSummary | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    async def run(self, response: web.StreamResponse) -> ScrubSummary | None:
        """Stream the progress; the summary once the output is whole (None: it failed)."""
        worker = asyncio.create_task(asyncio.to_thread(self._work))
        summary: ScrubSummary | None = None
        try:
            for _ in range(10**12):  # bounded by the scrub: the worker sends None last
                item = await self.events.get()
                if item is None:
                    break
                if isinstance(item, ScrubSummary):
                    summary = item
                    continue
                await response.write(json_of(item) + b"\n")
        except BaseException:
            self.stop.set()  # the client went away (or the server stops): stop the scrub
            raise
        finally:
            await asyncio.shield(worker)
        return summary

    def _work(self) -> None:
        try:
            self._send(asyncio.run(self._scrub()))
        except GateError as exc:
            self._send(self._event(event="error", why=exc.worded(self.wording)))
        except Exception as exc:  # a bug must still end the answer
            log.exception("API scrub of an upload failed")
            self._send(self._event(event="error", why=f"internal error: {type(exc).__name__}"))
        finally:
            self._send(None)

    async def _scrub(self) -> ScrubSummary:
        active = self.gate.active
        store = Store(self.gate.store.url, ADMIN_DEADLINE_S, self.gate.store.settings)
        try:
            gate = Gate(active.config, store, active.version)
            shown = 0.0

            def written(lines: int, rows: int) -> None:
                nonlocal shown
                if self.stop.is_set():
                    raise InputError("scrub stopped: the client went away")
                self.lines = lines
                self.rows += rows
                if time.monotonic() - shown >= PROGRESS_EVERY_S:
                    shown = time.monotonic()
                    self._send(self._event(event="progress"))

            summary = await scrub_file(
                gate,
                self.path,
                self.output,
                column=self.query.column,
                header=self.query.header,
                now=self.query.at or datetime.now(UTC),
                tenant=self.tenant,
                campaign=self.query.campaign or "",
                traffic_class=self.query.traffic_class,
                caller_id=self.query.caller_id,
                written=written,
                name=UPLOAD,
                output_name="the scrubbed file",
            )
            self.lines = self.total
            self._send(self._event(event="progress"))
            return summary
        finally:
            await store.close()
