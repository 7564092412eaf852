"""Wiring for a running process: config → Redis (URL, sentinels, cluster or embedded) → Store
→ Gate, and the worker processes of ``callgate run --workers N``.

``open_gate(config)`` is the one place that decides which Redis to talk to: the
configured URL, sentinels or Redis Cluster seed nodes (``[redis] mode``), else an embedded
``redis-server`` with its data in ``redis.data_dir`` (shared if already running, stopped
on exit only if this process started it). The audit writer runs only for a process that
records decisions (``records=True``: ``run``, ``check --record``); it is closed, bounded,
before the store.

With ``supervise=True`` (``callgate run``; with ``--workers``, the parent) the embedded
server is watched: if it dies it is started again (after 0.2 s, doubling up to 5 s while
it keeps dying), and if the server this process shared with another one goes away, this
process starts its own. Meanwhile decisions get the fail mode and ``/readyz`` is 503
(Redis does not answer PING); ``Store.status.restarts`` counts the restarts begun. The
supervisor stops on an explicit event, within a bound.

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
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gate.config.loader import Config
from gate.core.errors import StoreError
from gate.ops.audit import AuditLog
from gate.ops.reload import config_version
from gate.service import Gate, stop_task, wait_event
from gate.store.client import Store
from gate.store.embedded import EmbeddedRedis

if TYPE_CHECKING:  # the ARI door (aiohttp) is imported only by ``run``, which starts it
    from gate.stasis.door import StasisGate

__all__ = [
    "StasisLeadership",
    "WorkerRole",
    "Workers",
    "WorkersStasis",
    "describe_redis",
    "open_gate",
    "supervise_embedded",
    "worker_expositions",
]

log = logging.getLogger("callgate")
_T = TypeVar("_T")

SUPERVISE_EVERY_S = 0.1
# A share of another process's server is checked less often (a lock and a connect).
ADOPT_EVERY_S = 1.0
# An owned server's exit wakes its supervisor at once (its pidfd); it also looks this often.
OWNED_CHECK_EVERY_S = 1.0
RESTART_DELAY_MIN_S = 0.2
RESTART_DELAY_MAX_S = 5.0
# A server that ran this long since its last start is healthy: the next delay is the minimum.
HEALTHY_AFTER_S = 30.0
SUPERVISOR_STOP_S = 5.0


def describe_redis(config: Config) -> str:
    """Which Redis ``config`` uses, in words (``config check``)."""
    redis = config.redis
    if redis.mode == "sentinel" and redis.sentinel is not None:
        nodes = ", ".join(f"{host}:{port}" for host, port in redis.sentinel.nodes)
        return (
            f"sentinel: master of service {redis.sentinel.service!r} via {nodes}; "
            f"opt-outs wait for {redis.wait_replicas} replica(s)"
        )
    if redis.mode == "cluster":
        nodes = ", ".join(node.split("@", 1)[-1] for node in redis.nodes)
        return (
            f"cluster, seed nodes {nodes}; opt-outs wait for {redis.wait_replicas} replica(s) "
            "of the master that took them"
        )
    if redis.url is not None:
        where = redis.url.split("@", 1)[-1]
        replicas = (
            f"; opt-outs wait for {redis.wait_replicas} replica(s)" if redis.wait_replicas else ""
        )
        return f"{where}{replicas}"
    return f"embedded, data in {redis.data_dir}"


@asynccontextmanager
async def open_gate(
    config: Config,
    deadline_s: float | None = None,
    *,
    records: bool = False,
    supervise: bool = False,
) -> AsyncIterator[Gate]:
    """A ready ``Gate`` for ``config``; the store is closed (and embedded Redis stopped) after.

    ``records``: this process records decisions, so it keeps their evidence (the audit
    writer, with ``[audit]`` enabled). ``supervise``: keep the embedded Redis running."""
    embedded: EmbeddedRedis | None = None
    url = config.redis.url
    if config.redis.mode == "single" and url is None:
        embedded = EmbeddedRedis(config.redis.data_dir, config.redis.embedded_wait_s)
        url = await _in_thread(embedded.start, threading.Event())
    store = Store(url, config.redis.deadline_s if deadline_s is None else deadline_s, config.redis)
    gate = Gate(config, store, config_version(config.path))
    audit: AuditLog | None = None
    stop = asyncio.Event()
    supervisor: asyncio.Task[None] | None = None
    if embedded is not None and supervise:
        supervisor = asyncio.create_task(
            supervise_embedded(embedded, store, stop), name="callgate-embedded-redis"
        )
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
        stop.set()
        if supervisor is not None:
            await stop_task(supervisor, SUPERVISOR_STOP_S, "the embedded Redis supervisor")
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


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
        from prometheus_client.parser import text_string_to_metric_families

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


# -- the embedded Redis, supervised ------------------------------------------------------


async def supervise_embedded(embedded: EmbeddedRedis, store: Store, stop: asyncio.Event) -> None:
    """Keep the embedded server of ``embedded``'s data directory running until ``stop``."""
    cancel = threading.Event()
    delay = RESTART_DELAY_MIN_S
    started = time.monotonic()
    next_adopt = 0.0
    try:
        while not stop.is_set():
            pid = embedded.pid if embedded.owned else None
            if await (
                _until_exit(pid, stop, OWNED_CHECK_EVERY_S)
                if pid is not None
                else wait_event(stop, SUPERVISE_EVERY_S)
            ):
                return
            if not embedded.owned:
                if time.monotonic() >= next_adopt:
                    next_adopt = time.monotonic() + ADOPT_EVERY_S
                    if await _run(embedded.adopt, cancel):
                        store.status.restarts += 1
                        log.warning(
                            "the embedded Redis in %s had stopped; this process now runs it "
                            "(pid %s)",
                            embedded.data_dir,
                            embedded.pid,
                        )
                continue
            if embedded.running():
                if time.monotonic() - started >= HEALTHY_AFTER_S:
                    delay = RESTART_DELAY_MIN_S
                continue
            log.error(
                "the embedded Redis in %s exited; decisions get the fail mode; "
                "restarting it in %g s",
                embedded.data_dir,
                delay,
            )
            if await wait_event(stop, delay):
                return
            delay = min(delay * 2, RESTART_DELAY_MAX_S)
            begun = time.monotonic()
            store.status.restarts += 1
            if await _run(embedded.restart, cancel):
                started = time.monotonic()
                log.warning(
                    "the embedded Redis in %s is back (pid %s) after %.2f s",
                    embedded.data_dir,
                    embedded.pid,
                    started - begun,
                )
    finally:
        cancel.set()


async def _until_exit(pid: int, stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait until process ``pid`` (a child) exits, ``stop`` is set or ``timeout_s`` passed,
    woken by the process's pidfd (no polling); True if ``stop`` is set. Without pidfd
    (Linux < 5.3), a wait of ``SUPERVISE_EVERY_S``."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return await wait_event(stop, SUPERVISE_EVERY_S)
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        return await wait_event(stop, timeout_s, exited)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _in_thread(action: Callable[[threading.Event], _T], cancel: threading.Event) -> _T:
    """``action(cancel)`` in a thread; if the caller is cancelled, so is the action (it
    watches ``cancel``), and the cancellation goes on."""
    try:
        return await asyncio.to_thread(action, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise


async def _run(action: Callable[[threading.Event], object], cancel: threading.Event) -> bool:
    """``_in_thread``, reporting a failure (logged) as False."""
    try:
        result = await _in_thread(action, cancel)
    except StoreError as exc:
        log.error("%s", exc)
        return False
    except OSError as exc:  # EMFILE, ENOMEM, a data directory gone: the next turn retries
        log.error("the embedded Redis could not be started: %s; trying again", exc)
        return False
    return result is not False
