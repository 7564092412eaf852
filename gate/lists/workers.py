"""Bulk imports on every core: worker processes parse and hash blocks of a list file.

``entry_chunks`` turns the batches of ``read_batches`` into list entries for the store.
A batch read in bulk (a ``Block`` of a plain file, not parsed yet) is handed to one of
``workers`` child processes, which parses it (``Block.parse``: the same code as here) and
computes the keyed hashes of its numbers (``Keyspace.list_digests``), while this process
reads the file, sorts and encodes entries (``gate.store.lists``) and talks to Redis.

Guarantees:
- the batches come back in file order, each with the counts and rejects that parsing it
  here gives (the first block is parsed here while the workers start);
- a worker is ``python -m gate.lists.workers``, which loads only the parser and the
  keyspace, fed through its stdin and stdout with length-prefixed pickled frames (its own
  child: nothing else writes to them); it ignores SIGINT, its parent stops it;
- at most ``_IN_FLIGHT`` blocks wait per worker (memory stays bounded);
- ``Workers.close()`` ends every worker it started, by PID: stdin closed (the worker exits
  at its end), a bounded wait, then SIGKILL; it runs whatever ends the import (the end,
  an error, a cancellation). A worker that fails (a bug) fails the import with its error;
  one that ended (killed: the out-of-memory killer, a signal) fails it with a
  ``WorkerError``, at once, whether or not it had blocks to answer (a block sent to it
  after its end was never answered: the import waited forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
import traceback
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gate.core.errors import WorkerError
from gate.core.keys import Keyspace
from gate.lists.formats import Batch, Block, Rejected

__all__ = ["WORKERS", "Parsed", "Workers", "entry_chunks"]

WORKERS = min(2, os.cpu_count() or 1)
_IN_FLIGHT = 4  # blocks sent to a worker and not answered yet, at most
_STOP_S = 2.0
_FRAME = struct.Struct("<Q")
_SOURCE = str(Path(__file__).resolve().parent.parent.parent)  # where gate/ is: the same code


@dataclass(slots=True)
class Parsed:
    """A batch's outcome: its counts, rejects and the list entries of what it accepted
    (``members`` and ``buckets32`` arrays, see ``gate.store.lists.ListStore.entries``)."""

    lines: int
    accepted: int
    skipped: int
    rejected: list[Rejected] = field(default_factory=list)
    chunk: tuple[Any, Any] | None = None


def _frame(value: object) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(payload)) + payload


class _Worker:
    """One child process and the replies it owes, in order."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.waiting: deque[asyncio.Future[tuple[Any, ...]]] = deque()
        # Set once its stdout has ended (the worker exited or was killed): a block sent
        # then is answered at once with this error, never by the worker.
        self.ended: tuple[str, str] | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Hand each reply to the oldest waiting block; at the worker's end, fail the
        rest (an import never waits forever for a worker that died)."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            for _ in range(1 << 62):  # bounded by the worker: its stdout ends
                try:
                    header = await stdout.readexactly(_FRAME.size)
                    payload = await stdout.readexactly(_FRAME.unpack(header)[0])
                except asyncio.IncompleteReadError:
                    break
                if self.waiting:
                    future = self.waiting.popleft()
                    if not future.done():
                        future.set_result(pickle.loads(payload))
            self.ended = ("ended", f"the import worker (pid {self.process.pid}) ended")
            while self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(self.ended)
        finally:
            for future in self.waiting:
                future.cancel()

    def send(self, block: Block) -> asyncio.Future[tuple[Any, ...]]:
        stdin = self.process.stdin
        assert stdin is not None
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        if self.ended is not None:
            # Its reader is done: nothing would ever answer (the import waited forever).
            future.set_result(self.ended)
            return future
        self.waiting.append(future)
        stdin.write(_frame(block))  # bounded by _IN_FLIGHT: no need to wait for a drain
        return future


class Workers:
    """``count`` worker processes parsing and hashing blocks for ``keyspace``."""

    def __init__(self, keyspace: Keyspace, count: int = WORKERS) -> None:
        self.keyspace, self.count = keyspace, count
        self._workers: list[_Worker] = []
        self._next = 0

    async def start(self) -> None:
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _SOURCE + (os.pathsep + path if path else "")}
        for _ in range(self.count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gate.lists.workers",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            worker = _Worker(process)
            self._workers.append(worker)
            assert process.stdin is not None
            process.stdin.write(_frame(self.keyspace))

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    @property
    def room(self) -> bool:
        """Whether a worker can take another block now."""
        return any(len(w.waiting) < _IN_FLIGHT for w in self._workers)

    def submit(self, block: Block) -> asyncio.Future[tuple[Any, ...]]:
        """Send ``block`` to the least busy worker; the future is its reply."""
        worker = min(self._workers, key=lambda w: len(w.waiting))
        return worker.send(block)

    async def close(self) -> None:
        """Stop every worker (stdin closed, a bounded wait, then SIGKILL by PID)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), _STOP_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGKILL)
                await worker.process.wait()
            finally:
                worker.reader.cancel()
                await asyncio.gather(worker.reader, return_exceptions=True)


async def entry_chunks(
    batches: Iterable[Batch],
    keyspace: Keyspace,
    entries: Callable[[list[tuple[bytes, list[bytes]]]], tuple[Any, Any]],
    workers: int = WORKERS,
) -> AsyncGenerator[Parsed, None]:
    """Each batch's ``Parsed``, in order: batches of blocks parsed and hashed by
    ``workers`` processes (from the second block on), others here (``entries`` makes the
    entries of accepted numbers here)."""
    pool: Workers | None = None
    pending: deque[tuple[Batch, asyncio.Future[tuple[Any, ...]] | None]] = deque()
    blocks = 0
    try:
        for batch in batches:
            block = batch.block
            future = None
            if block is not None and workers > 0:
                blocks += 1
                if pool is None and blocks == 2:  # a file of more than one block
                    pool = Workers(keyspace, workers)
                    await pool.start()
                if pool is not None:
                    future = pool.submit(block)
            pending.append((batch, future))
            while pending and (pending[0][1] is None or pool is None or not pool.room):
                yield await _outcome(*pending.popleft(), keyspace, entries)
            await asyncio.sleep(0)  # let replies in
        while pending:
            yield await _outcome(*pending.popleft(), keyspace, entries)
    finally:
        if pool is not None:
            await pool.close()


async def _outcome(
    batch: Batch,
    future: asyncio.Future[tuple[Any, ...]] | None,
    keyspace: Keyspace,
    entries: Callable[[list[tuple[bytes, list[bytes]]]], tuple[Any, Any]],
) -> Parsed:
    if future is None:
        runs = [*batch.runs, (b"", [n.encode() for n in batch.numbers])]
        accepted = batch.accepted
        chunk = entries(runs) if accepted else None
        return Parsed(batch.lines, accepted, batch.skipped, batch.rejected, chunk)
    reply = await future
    block = batch.block
    assert block is not None
    if reply[0] == "utf8":
        raise block.not_utf8(reply[1], reply[2])
    if reply[0] == "ended":
        raise WorkerError(f"{reply[1]} (killed: out of memory, a signal?)")
    if reply[0] == "error":
        raise RuntimeError(f"import worker failed: {reply[1]}")
    _, lines, accepted, skipped, rejected, digests, runs = reply
    if digests is not None:
        from gate.store._bulk import members_of

        chunk = members_of(digests) if accepted else None
    else:
        chunk = entries(runs) if accepted else None
    return Parsed(lines, accepted, skipped, rejected, chunk)


def _read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    return pickle.loads(stream.read(_FRAME.unpack(header)[0]))


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """A worker: the keyspace, then blocks until stdin ends; one reply per block."""
    keyspace: Keyspace = _read_frame(stdin)
    for _ in range(1 << 62):  # bounded by stdin: _read_frame returns None at its end
        block: Block | None = _read_frame(stdin)
        if block is None:
            return
        reply: tuple[Any, ...]
        try:
            batch = block.parse()
            runs = [*batch.runs, (b"", [n.encode() for n in batch.numbers])]
            digests = None
            if keyspace.hashed:
                digests = b"".join(keyspace.list_digests(p, rests) for p, rests in runs)
            reply = (
                "ok",
                batch.lines,
                batch.accepted,
                batch.skipped,
                batch.rejected,
                digests,
                None if keyspace.hashed else runs,
            )
        except Exception as exc:
            cause = exc.__cause__
            if isinstance(cause, UnicodeDecodeError):
                reply = ("utf8", str(cause.reason), cause.start)
            else:
                reply = ("error", traceback.format_exc())
        stdout.write(_frame(reply))
        stdout.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers
    _serve(sys.stdin.buffer, sys.stdout.buffer)
