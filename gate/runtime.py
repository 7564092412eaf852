"""Wiring for a running process: config → Redis (URL or embedded) → Store → Gate, and the
worker processes of ``callgate run --workers N``.

``open_gate(config)`` is the one place that decides which Redis to talk to: the
configured URL, else an embedded ``redis-server`` with its data in ``redis.data_dir``
(reused if already running, stopped on exit only if this process started it). The audit
writer runs only for a process that records decisions (``records=True``: ``run``,
``check --record``); it is closed, bounded, before the store.

``callgate run --workers N`` (``Workers``): the parent starts N worker processes and keeps
the HTTP listener (metrics, health, admin API, reload). Each worker serves FastAGI on the
same port (``SO_REUSEPORT``: the kernel spreads connections); one of them, the holder of an
exclusive lock (``StasisLeadership``), runs the Stasis application, so each channel is
decided once, and another takes over when it dies. Every worker writes its metrics to the
shared directory each second; the parent's ``/metrics`` is their sum with its own. Caps and
CPS limits need nothing more: they are counted inside the one atomic Redis call. A worker
that dies is started again; stopping sends SIGTERM to every worker and waits, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gate.config.loader import Config
from gate.ops.audit import AuditLog
from gate.ops.reload import config_version
from gate.service import Gate, stop_task, wait_event
from gate.stasis.door import StasisGate
from gate.store.client import Store
from gate.store.embedded import EmbeddedRedis

__all__ = [
    "StasisLeadership",
    "WorkerRole",
    "Workers",
    "WorkersStasis",
    "open_gate",
    "worker_expositions",
]

log = logging.getLogger("callgate")


@asynccontextmanager
async def open_gate(
    config: Config, deadline_s: float | None = None, *, records: bool = False
) -> AsyncIterator[Gate]:
    """A ready ``Gate`` for ``config``; the store is closed (and embedded Redis stopped) after.

    ``records``: this process records decisions, so it keeps their evidence (the audit
    writer, with ``[audit]`` enabled)."""
    embedded: EmbeddedRedis | None = None
    url = config.redis.url
    if url is None:
        embedded = EmbeddedRedis(config.redis.data_dir)
        url = embedded.start()
    store = Store(url, config.redis.deadline_s if deadline_s is None else deadline_s, config.redis)
    gate = Gate(config, store, config_version(config.path))
    audit: AuditLog | None = None
    if records and config.audit.enabled:
        audit = AuditLog(store.admin_client, config.redis.namespace, config.audit)
        gate.observers.append(audit)
        audit.start()
    try:
        yield gate
    finally:
        if audit is not None:
            gate.observers.remove(audit)
            await audit.close()
        await store.close()
        if embedded is not None:
            embedded.stop()


# -- callgate run --workers N ---------------------------------------------------------------

WORKER_RESTART_S = 1.0  # a worker that dies is started again after this (bounded churn)
WORKER_STOP_S = 20.0  # a worker's own bounded stop (doors drained, Stasis closed), plus room
LEADER_POLL_S = 0.5  # how often a follower tries to take the Stasis lead
METRICS_EVERY_S = 1.0  # how often a worker writes its metrics for the parent's /metrics


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What the parent tells a worker process: its index, the shared directory (the
    Stasis lock, the metrics files) and the FastAGI port every worker listens on."""

    index: int
    directory: Path
    agi_port: int

    def argument(self) -> str:
        return f"{self.index}:{self.agi_port}:{self.directory}"

    @classmethod
    def parse(cls, text: str) -> WorkerRole:
        index, port, directory = text.split(":", 2)
        return cls(int(index), Path(directory), int(port))

    @property
    def metrics_path(self) -> Path:
        return self.directory / f"worker-{self.index}.prom"


def worker_expositions(directory: Path) -> list[str]:
    """The metrics the workers last wrote (a worker that just started may have none)."""
    texts = []
    for path in sorted(directory.glob("worker-*.prom")):
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    return texts


class StasisLeadership:
    """Exactly one worker runs the Stasis application: the one holding an exclusive
    ``flock`` on the shared lock file. The others try again every ``LEADER_POLL_S``; the
    kernel releases the lock when its holder dies, however it dies, so another worker
    takes the lead (its connect sweep decides the channels left waiting)."""

    def __init__(self, door: StasisGate, lock_path: Path, stop: asyncio.Event) -> None:
        self.door = door
        self.lock_path = lock_path
        self._stop = stop
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callgate-stasis-leadership")

    def _try_lock(self) -> bool:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            if self._try_lock():
                log.info("worker %d leads the Stasis application", os.getpid())
                self.door.start()
                return
            await wait_event(self._stop, LEADER_POLL_S)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task, LEADER_POLL_S * 2, "the Stasis leadership")
        await self.door.close()
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


class Workers:
    """The parent of ``callgate run --workers N``: starts the worker processes, starts
    again any that dies, and stops them all (bounded: SIGTERM, then SIGKILL, logged)."""

    def __init__(self, command: list[str], count: int, directory: Path, agi_port: int) -> None:
        self.command = command
        self.directory = directory
        self.roles = [WorkerRole(i, directory, agi_port) for i in range(count)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self._stopping = False

    def start(self) -> None:
        for role in self.roles:
            self._spawn(role)

    def _spawn(self, role: WorkerRole) -> None:
        role.metrics_path.unlink(missing_ok=True)  # a dead worker's counts are gone
        self.processes[role.index] = subprocess.Popen(
            [*self.command, "--worker", role.argument()], stdin=subprocess.DEVNULL
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every live worker (SIGHUP: reload)."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Until ``stop``: start again every worker that exits."""
        while not await wait_event(stop, 0.2):
            for role in self.roles:
                code = self.processes[role.index].poll()
                if code is None:
                    continue
                log.warning(
                    "worker %d (pid %d) exited with %s; starting it again",
                    role.index,
                    self.processes[role.index].pid,
                    code,
                )
                if await wait_event(stop, WORKER_RESTART_S):
                    return
                self.restarts += 1
                self._spawn(role)

    async def stop(self) -> None:
        """SIGTERM every worker; SIGKILL those still running after ``WORKER_STOP_S``."""
        self.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_STOP_S
        for index, process in self.processes.items():
            left = max(0.0, deadline - loop.time())
            if not await asyncio.to_thread(_exited_within, process, left):
                log.error("worker %d did not stop within %.0f s; killing it", index, WORKER_STOP_S)
                process.kill()
                await asyncio.to_thread(process.wait)


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


class WorkersStasis:
    """The Stasis door's state as the parent of the workers sees it (``/readyz``): connected
    while the leading worker's application is, from the metrics the workers write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.connected = asyncio.Event()
        self.reconnects = 0

    def refresh(self) -> None:
        connected = reconnects = 0.0
        for text in worker_expositions(self.directory):
            with contextlib.suppress(ValueError):  # a file caught half-written: next time
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "callgate_ari_connected":
                            connected += sample.value
                        elif sample.name == "callgate_ari_reconnects_total":
                            reconnects += sample.value
        self.reconnects = int(reconnects)
        if connected:
            self.connected.set()
        else:
            self.connected.clear()

    async def follow(self, stop: asyncio.Event) -> None:
        while not await wait_event(stop, LEADER_POLL_S):
            self.refresh()
