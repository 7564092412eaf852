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
exclusive lock in the state directory (``StasisLeadership``), runs the Stasis application,
so each channel is decided once, and another takes over when it dies. A second instance on
the same port fails at start, whatever its state directory (``InstanceLock``).
Every worker writes its metrics to the shared directory each second; the parent's
``/metrics`` is their sum with its own, plus the last counters of every worker that died
(so no counter goes backwards). Caps and CPS limits need nothing more: they are counted
inside the one atomic Redis call. A worker that dies is started again, after a delay that
grows while it keeps dying (logged once as an error, not at every exit); ``/readyz`` is
503 until every worker runs, reports and serves the config in force. Stopping sends
SIGTERM to every worker and waits, bounded.

Every worker serves the config version the parent has in force: the parent writes it to
the shared directory (at start and at each reload it accepts, before forwarding SIGHUP),
and a worker whose file on disk is another version (edited and not reloaded, or a reload
the parent refused) refuses to start (``check_version``: one line, exit 2); the parent
starts it again with the growing delay, so it serves once the file and the version in force
agree again (``callgate reload``, or the file restored). A worker's reload (the parent's
SIGHUP, or one sent to the worker itself) likewise swaps in only that version, else is
refused (``still serving``) and the worker serves on with its siblings. A worker never
loads a snapshot: the file is the one source, the version the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gate.config.loader import Config
from gate.core.errors import ConfigError, InputError, StoreError, StoreUnavailable
from gate.ops.audit import AuditLog
from gate.ops.reload import config_version
from gate.service import Gate, cancelling, stop_task, wait_event
from gate.store.client import Store
from gate.store.embedded import EmbeddedRedis
from gate.store.lifetime import end_with_parent

if TYPE_CHECKING:  # the ARI door (aiohttp) is imported only by ``run``, which starts it
    from gate.stasis.door import StasisGate

__all__ = [
    "InstanceLock",
    "StasisLeadership",
    "StateKeeper",
    "StoppedStarting",
    "WorkerRole",
    "Workers",
    "WorkersStasis",
    "check_version",
    "describe_redis",
    "keeping_state",
    "make_state_dir",
    "open_gate",
    "stasis_lock_path",
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
STATE_CHECK_EVERY_S = 1.0  # how often ``run`` checks the files it keeps in the state dir
STATE_STOP_S = 2.0


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
    serving: asyncio.Event | None = None,
    supervise: bool = False,
    writes: bool = False,
) -> AsyncIterator[Gate]:
    """A ready ``Gate`` for ``config``; the store is closed (and embedded Redis stopped) after.

    ``records``: this process records decisions, so it keeps their evidence (the audit
    writer, with ``[audit]`` enabled). ``supervise``: keep the embedded Redis running.
    ``writes`` (or ``records``): it writes data (lists, consents, events). Its keying must
    be the data's (``check_keying``): ``InputError`` if not.

    Redis not answering at start, the keying is compared later (``KeyingWatch``): before
    the next decision of a process that ``records``; in the background, until it can be
    and every ``KEYING_RECHECK_S`` after, in a ``serving`` process (its stop event). A
    mismatch found then stops it (``serving`` is set) and is raised on the way out.

    ``serving`` set (SIGTERM) while the embedded Redis starts or is waited for (loading a
    large append-only file, another process's server busy): ``StoppedStarting`` at once."""
    embedded: EmbeddedRedis | None = None
    url = config.redis.url
    if config.redis.mode == "single" and url is None:
        embedded = EmbeddedRedis(config.redis.data_dir, config.redis.embedded_wait_s)
        url = await _start_embedded(embedded, serving)
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
    watch = KeyingWatch(gate, config, stamp=writes or records, decides=records)
    watching: asyncio.Task[None] | None = None
    done = asyncio.Event()
    try:
        compared = await check_keying(gate, config, stamp=watch.stamp)
        if not compared:
            watch.pending()
        if serving is not None:
            watching = asyncio.create_task(
                watch.follow(compared, done, serving), name="callgate-keying-watch"
            )
        yield gate
    finally:
        done.set()
        if watching is not None:
            await stop_task(watching, KEYING_STOP_S, "the keying watch")
        if audit is not None:
            gate.observers.remove(audit)
            await audit.close()
        stop.set()
        if supervisor is not None:
            await stop_task(supervisor, SUPERVISOR_STOP_S, "the embedded Redis supervisor")
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    if watch.fault is not None:
        raise watch.fault


class StoppedStarting(Exception):
    """Stopped (SIGTERM) before the embedded Redis was ready: nothing was served."""


async def _start_embedded(embedded: EmbeddedRedis, serving: asyncio.Event | None) -> str:
    """``embedded.start``; ``serving`` set meanwhile ends its wait (``StoppedStarting``). A
    SIGTERM then waited for the server, up to ``redis.embedded_wait`` (60 s), and the
    process ended with an error line, or started serving only to stop."""
    cancel = threading.Event()
    if serving is None:
        return await _in_thread(embedded.start, cancel)
    watcher = asyncio.create_task(serving.wait(), name="callgate-stop-while-starting")
    watcher.add_done_callback(lambda _: cancel.set())
    try:
        return await _in_thread(embedded.start, cancel)
    except StoreError:
        if serving.is_set():
            raise StoppedStarting from None
        raise
    finally:
        watcher.cancel()


KEYING_RETRY_S = 1.0  # a keying not compared yet (Redis not answering) is tried this often…
KEYING_RECHECK_S = 30.0  # …and, compared, again this often (a Redis flushed or replaced)
KEYING_STOP_S = 2.0


class KeyingWatch:
    """The keying comparison of a process that could not make it at start (Redis not
    answering), or that serves long enough for its Redis to be flushed, replaced, or
    stamped by another keying. ``decides``: its decisions wait for the comparison."""

    def __init__(self, gate: Gate, config: Config, *, stamp: bool, decides: bool) -> None:
        self.gate = gate
        self.config = config
        self.stamp = stamp
        self.decides = decides
        self.fault: InputError | None = None
        self._lock = asyncio.Lock()

    def pending(self) -> None:
        """Not compared (Redis not answering): the next decision compares first."""
        if self.decides:
            self.gate.precondition = self.precondition

    async def precondition(self) -> None:
        """Before a decision (``Gate.precondition``): compare, once for all the decisions
        waiting. ``StoreError`` while Redis does not answer; ``InputError``: a mismatch."""
        if self.fault is not None:
            raise self.fault
        if self._lock.locked():  # another decision compares: this one does not queue
            raise StoreUnavailable("the keying of the data in Redis is not compared yet")
        async with self._lock:
            if self.gate.precondition is not None:  # no decision compared it meanwhile
                await self.compare(self.gate.store.deadline_s)

    async def compare(self, within_s: float | None = None) -> None:
        """Compare (and stamp); passed, decisions no longer wait for it. A mismatch is
        kept as the fault: every decision from now on takes the fail mode."""
        try:
            await compare_keying(self.gate, self.config, stamp=self.stamp, within_s=within_s)
        except InputError as exc:
            self.fault = exc
            self.pending()
            raise
        except StoreError:
            self.pending()
            raise
        self.gate.precondition = None

    async def follow(self, compared: bool, stop: asyncio.Event, serving: asyncio.Event) -> None:
        """Until ``stop``: compare every ``KEYING_RETRY_S`` until Redis answers, then every
        ``KEYING_RECHECK_S``; a mismatch is logged and stops the process (``serving``)."""
        while not await wait_event(stop, KEYING_RECHECK_S if compared else KEYING_RETRY_S):
            try:
                await self.compare()
            except StoreError:
                if cancelling():  # a cancel the client library turned into an error
                    raise
                compared = False
                continue
            except InputError as exc:
                log.error("%s; stopping", exc)
                serving.set()
                return
            compared = True


async def check_keying(gate: Gate, config: Config, *, stamp: bool) -> bool:
    """``compare_keying``; False if Redis did not answer (nothing compared: the process's
    own requests say so, ``KeyingWatch`` compares later)."""
    try:
        await compare_keying(gate, config, stamp=stamp)
    except StoreError:
        return False
    return True


async def compare_keying(
    gate: Gate, config: Config, *, stamp: bool, within_s: float | None = None
) -> None:
    """Refuse (``InputError``) a process whose number-hashing secret is not the one the data
    in Redis was written with: it would read and write other keys, silently (an opt-out
    it added never seen by the gate; the lists it checks empty to it). The first process
    that writes data stamps the fingerprint of its keying (``stamp``); every process
    compares. ``StoreError``: Redis did not answer (within ``within_s``, if given)."""
    keyspace = gate.keyspace
    held = await gate.store.keying(keyspace.keying_key, keyspace.fingerprint, stamp, within_s)
    if held is None or held == keyspace.fingerprint:
        return
    key, own = keyspace.keying_key, keyspace.fingerprint
    if "plain" in (held, own):
        what = (
            "numbers are stored plain" if held == "plain" else "numbers are stored hashed",
            "privacy.hash_numbers differs",
        )
    else:
        what = ("numbers are hashed with another secret", f"this one is from {config.secret_from}")
    raise InputError(
        f"privacy: the data in Redis was written with another keying ({what[0]}: {key} holds "
        f"{held}, this process has {own}; {what[1]}); run with the gate's secret and "
        f"privacy settings (as the service's user, with its environment), or, if the data "
        f"is new and this keying is the right one, delete {key}"
    )


# -- callgate run --workers N ---------------------------------------------------------------

WORKER_RESTART_S = 1.0  # a worker that dies is started again after this at first…
WORKER_RESTART_MAX_S = 30.0  # …doubling while it keeps dying, up to this
WORKER_HEALTHY_S = 30.0  # a worker that ran this long is healthy again: the next delay is 1 s
WORKER_STOP_S = 20.0  # a worker's own bounded stop (doors drained, Stasis closed), plus room
LEADER_POLL_S = 0.5  # how often a follower tries to take the Stasis lead
# A Stasis lock file seen, then gone: the leader makes it again; a follower, after this.
LEADER_TAKEOVER_S = 3 * LEADER_POLL_S
METRICS_EVERY_S = 1.0  # how often a worker writes its metrics for the parent's /metrics
# A worker whose metrics file is older than this is not serving (hung, or not started yet).
WORKER_STALE_S = 3 * METRICS_EVERY_S
EXPECTED_VERSION = "config-version"  # the shared file naming the config version in force


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What the parent tells a worker process: its index, the shared directory (the
    metrics files, the config version in force), the FastAGI port every worker
    listens on and the parent's PID (the worker ends with it: ``follow_parent``)."""

    index: int
    directory: Path
    agi_port: int
    parent_pid: int

    def argument(self) -> str:
        return f"{self.index}:{self.agi_port}:{self.parent_pid}:{self.directory}"

    @classmethod
    def parse(cls, text: str) -> WorkerRole:
        index, port, parent, directory = text.split(":", 3)
        return cls(int(index), Path(directory), int(port), int(parent))

    def follow_parent(self) -> None:
        """End this worker when its parent dies, however it dies (Linux: the parent-death
        signal, SIGTERM, so the worker stops as on ``systemctl stop``); ``InputError`` if
        the parent is already gone. A worker outliving a SIGKILLed parent would go on
        serving the port, which a new ``run --workers`` would share with it
        (``SO_REUSEPORT``), its calls split with a gate nobody supervises or reloads."""
        try:
            alive = end_with_parent(self.parent_pid)
        except OSError as exc:
            raise InputError(
                f"worker {self.index}: cannot set the parent-death signal: {exc.strerror}"
            ) from exc
        if not alive:
            raise InputError(
                f"worker {self.index}: its parent (pid {self.parent_pid}) is gone; not serving"
            )

    @property
    def metrics_path(self) -> Path:
        return self.directory / f"worker-{self.index}.prom"

    def publish(self, exposition: bytes) -> None:
        """Write this worker's metrics for the parent, whole (written aside, then renamed).
        Nothing when the shared directory is gone: the parent died and a sibling worker,
        ending, removed it (``leave``), or it was removed under a live parent, which makes
        it again (``Workers.supervise``): the next turn writes them. It raised, and every
        worker exited, started again to exit again, for as long as the parent ran."""
        partial = self.metrics_path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            partial.write_bytes(exposition)
            partial.replace(self.metrics_path)

    def leave(self) -> None:
        """At this worker's end: remove the shared directory if the parent is gone. A parent
        killed without warning (the OOM killer, ``kill -9``) could not remove it, and
        each such end would leave one in the temporary directory. The first worker to
        end removes it; its siblings find it gone."""
        if os.getppid() != self.parent_pid:
            shutil.rmtree(self.directory, ignore_errors=True)

    def expected_version(self) -> str | None:
        """The config version the parent has in force (None: not written, an older parent)."""
        try:
            return (self.directory / EXPECTED_VERSION).read_text().strip()
        except OSError:
            return None


def freeze_heap() -> None:
    """Once a gate process has started (a worker: before it listens), keep the objects
    alive now (modules, config, servers, some 85 000 in a running gate) out of the garbage
    collector's full collections. Each full collection scanned them all, 40 to 60 ms on a
    shared 2-core machine during which no call was answered. ``gc.freeze`` moves them to
    the permanent generation; a full collection then scans only what came after. What is
    garbage already is freed first (once, at start). A reloaded config is not frozen: the
    config it replaces may hold reference cycles, which frozen would never be freed."""
    gc.collect()
    gc.freeze()


def worker_expositions(directory: Path) -> list[str]:
    """The metrics the workers last wrote (a worker that just started may have none)."""
    texts = []
    for path in sorted(directory.glob("worker-*.prom")):
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    return texts


def stasis_lock_path(config: Config) -> Path:
    """The lock whose holder runs ``config``'s Stasis application: in the state directory,
    so every ``run --workers`` instance on this machine sharing it elects one leader."""
    assert config.ari is not None
    return config.state_dir / f"stasis-{config.ari.app}.lock"


def make_state_dir(path: Path) -> None:
    """Create the state directory (the locks of ``run --workers`` live there) unless it
    exists; ``InputError`` saying so if it cannot be."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"run: cannot create the state directory {path}: {exc.strerror}; "
            "set [gate] state_dir to a writable directory"
        ) from exc


def _same_file(fd: int, path: Path) -> bool:
    """Whether the file at ``path`` is the one ``fd`` has open (False: gone, or another)."""
    held = os.fstat(fd)
    try:
        there = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


class StateKeeper:
    """What ``callgate run`` (with ``--workers``, the parent) keeps in the state directory,
    made again every ``STATE_CHECK_EVERY_S`` if deleted under it (a cleanup of the state
    directory, ``rm -rf``; the embedded Redis's data directory is its supervisor's):

    - the secret file the number-hashing secret came from, written again from the secret
      in force. Gone, the next command (a CLI one, a worker started again, a reload)
      made a new random one: refused against the data's keying, and the data keyed with
      the lost secret was useless after a restart. A file holding another secret (made
      while it was missing) is never overwritten: said, with what to do;
    - the instance lock (``InstanceLock.keep``).

    Each failure is said once, until that file is right again."""

    def __init__(self, config: Config, instance: InstanceLock | None = None) -> None:
        self.config = config
        self.instance = instance
        self._said: set[str] = set()

    async def follow(self, done: asyncio.Event) -> None:
        while not await wait_event(done, STATE_CHECK_EVERY_S):
            self.check()

    def check(self) -> None:
        self._keep("secret", self._keep_secret)
        if self.instance is not None:
            self._keep("instance lock", self._keep_instance)

    def _keep(self, what: str, keep: Callable[[], str | None]) -> None:
        """Run ``keep``; the problem it returns or raises (``OSError``), said once."""
        try:
            problem = keep()
        except OSError as exc:
            problem = f"cannot make the {what} again: {exc}; trying again"
        if problem is None:
            self._said.discard(what)
        elif what not in self._said:
            self._said.add(what)
            log.error("%s", problem)

    def _keep_secret(self) -> str | None:
        config = self.config
        path, secret = config.secret_file, config.secret
        if path is None or secret is None or config.secret_from != str(path):
            return None  # the secret came from elsewhere ($CALLGATE_SECRET, privacy.secret)
        try:
            held: bytes | None = path.read_bytes().strip()
        except FileNotFoundError:
            held = None
        if held == secret:
            return None
        if held is not None:
            return (
                f"the secret file {path} holds another secret than the one this gate runs "
                "with (made while it was missing? by a command or a worker started then): "
                "the data is keyed with this gate's, and a gate started again would refuse "
                f"it; delete {path}: this gate writes its own back"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secret + b"\n")
            os.link(aside, path)  # whole, and never over a file made meanwhile
        except FileExistsError:
            return None  # made meanwhile: compared on the next turn
        finally:
            aside.unlink(missing_ok=True)
        log.warning(
            "the secret file %s was deleted under the running gate (the state directory "
            "deleted?); written again with the secret in force (without it, the hashed "
            "lists would be useless once the gate restarts)",
            path,
        )
        return None

    def _keep_instance(self) -> str | None:
        instance = self.instance
        assert instance is not None
        if instance.in_place:
            return None
        if not instance.keep():
            return (
                f"the instance lock {instance.path} was deleted and another process locked "
                "the one made since (a second callgate run with this state directory?); "
                "stop it; trying again"
            )
        log.warning(
            "the instance lock %s was deleted under the running gate (the state directory "
            "deleted?); made and locked again",
            instance.path,
        )
        return None


@asynccontextmanager
async def keeping_state(
    config: Config, instance: InstanceLock | None = None
) -> AsyncIterator[StateKeeper]:
    """A ``StateKeeper`` following ``config``'s state directory while in the block."""
    keeper = StateKeeper(config, instance)
    done = asyncio.Event()
    task = asyncio.create_task(keeper.follow(done), name="callgate-state-keeper")
    try:
        yield keeper
    finally:
        done.set()
        await stop_task(task, STATE_STOP_S, "the state directory keeper")


class InstanceLock:
    """One ``callgate run --workers`` per FastAGI port on this machine. The workers share
    their port (``SO_REUSEPORT``), which would let a second instance's workers join the
    first's silently and split the calls between two gates (two configs, maybe two Redis:
    a number opted out through one is called through the other). Two locks make the second
    one fail at start:

    - an exclusive ``flock`` on ``<state_dir>/run-agi-<port>.lock`` holding the holder's
      PID (the same config twice: the message names the first's PID);
    - on Linux, a unix socket bound at the abstract name ``callgate/agi-port/<port>``: the
      same network namespace as the port itself, whatever the state directory (another
      config, another state directory). It is keyed on the port alone, so two instances on
      the same port of two addresses of one machine are refused too (use two ports).

    The kernel releases both when the holder exits, however it exits."""

    def __init__(self, state_dir: Path, agi_port: int) -> None:
        self.port = agi_port
        self.path = state_dir / f"run-agi-{agi_port}.lock"
        self._fd: int | None = None
        self._claim: socket.socket | None = None

    def acquire(self) -> None:
        """Take the locks; ``InputError`` naming the holder if another instance has one."""
        make_state_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise InputError(
                f"run: cannot create the instance lock {self.path}: {exc.strerror}; "
                "set [gate] state_dir to a writable directory"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(
                f"run: another callgate (pid {holder}) already serves FastAGI port "
                f"{self.port} (lock {self.path}); stop it or change [agi] port"
            ) from None
        try:
            self._claim = self._claim_port()
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _claim_port(self) -> socket.socket | None:
        """The machine-wide claim on the port (Linux; None elsewhere)."""
        if not sys.platform.startswith("linux"):
            return None
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0callgate/agi-port/{self.port}")
        except OSError as exc:
            claim.close()
            if exc.errno != errno.EADDRINUSE:
                raise InputError(
                    f"run: cannot claim FastAGI port {self.port}: {exc.strerror}"
                ) from exc
            raise InputError(
                f"run: another callgate run --workers, with another state directory, "
                f"already serves FastAGI port {self.port} on this machine (its workers "
                f"would share the port and split the calls); stop it or change [agi] port "
                f"(ss -xlp | grep callgate/agi-port/{self.port} shows its pid)"
            ) from None
        return claim

    @property
    def in_place(self) -> bool:
        """Whether the lock file at its path is the one held (True while none is held)."""
        return self._fd is None or _same_file(self._fd, self.path)

    def keep(self) -> bool:
        """The lock file deleted under this instance (its state directory deleted): made
        again, locked and holding this PID. Else a second instance with this state
        directory found the file lock free and went on (refused on Linux by the port's
        claim alone, with a message naming another state directory). True once in place;
        False if another process holds the file made meanwhile; ``OSError`` if it cannot
        be made."""
        if self.in_place:
            return True
        held = self._fd
        assert held is not None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        os.close(held)
        return True

    def release(self) -> None:
        if self._claim is not None:
            self._claim.close()
            self._claim = None
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


class StasisLeadership:
    """Exactly one worker runs the Stasis application: the one holding an exclusive
    ``flock`` on the lock file (``stasis_lock_path``). The others try again every
    ``LEADER_POLL_S``; the kernel releases the lock when its holder dies, however it dies,
    so another worker takes the lead (its connect sweep decides the channels left waiting).

    The lock file (or the whole state directory) deleted under the workers (a cleanup of
    the state directory): the leader lives on holding the deleted file, and a follower
    making a new one would lead too (two applications, each channel decided twice). So
    the leader, which checks every ``LEADER_POLL_S``, makes it again (locked before it
    appears: made aside, then linked in); a follower that had seen it waits
    ``LEADER_TAKEOVER_S`` before making it itself (the leader may be gone too). It raised
    ``FileNotFoundError``, which ended the followers' tries: once the leader died, no
    worker ran the application again. Were another worker to lead through a file made
    meanwhile, the old leader stops (the parent starts it again, as a follower)."""

    def __init__(self, door: StasisGate, lock_path: Path, stop: asyncio.Event) -> None:
        self.door = door
        self.lock_path = lock_path
        self._stop = stop
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen = False  # the lock file was there: gone, its leader may live on
        self._gone_since: float | None = None
        self._failed = ""  # the failure said last (each said once)

    @property
    def leading(self) -> bool:
        return self._fd is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callgate-stasis-leadership")

    def _try_lock(self) -> bool:
        """Take the lead if the lock is free (``OSError``: the lock file cannot be made)."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except FileNotFoundError:
            if self._seen:
                now = time.monotonic()
                if self._gone_since is None:
                    self._gone_since = now
                    log.warning(
                        "the Stasis lock %s is gone (the state directory deleted?); the "
                        "leading worker makes it again, else this one in %g s",
                        self.lock_path, LEADER_TAKEOVER_S,
                    )  # fmt: skip
                if now - self._gone_since < LEADER_TAKEOVER_S:
                    return False
            made = self._make_locked()
            if made is None:
                return False  # another worker made it meanwhile: tried again next turn
            self._fd = made
            self._seen, self._gone_since = True, None
            return True
        self._seen, self._gone_since = True, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _make_locked(self) -> int | None:
        """A new lock file at ``lock_path`` (its directory made again if gone), locked
        before it appears there: None if another appeared there first."""
        self.lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = self.lock_path.with_name(f".{self.lock_path.name}.{os.getpid()}")
        fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else has it open
            os.link(aside, self.lock_path)
        except FileExistsError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            aside.unlink(missing_ok=True)
        return fd

    def _keep_lock(self) -> bool:
        """The leader's turn: the lock file made again if it was deleted; False if another
        worker leads through a file made meanwhile (this one must stop leading)."""
        assert self._fd is not None
        if _same_file(self._fd, self.lock_path):
            return True
        log.warning(
            "the Stasis lock %s was deleted while this worker leads (the state directory "
            "deleted?); making it again",
            self.lock_path,
        )
        fd = self._make_locked()
        if fd is None:  # another worker made it first: lead through it if free
            fd = os.open(self.lock_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        return True

    def _failing(self, exc: OSError) -> None:
        """Say a failure to make or take the lock once (while the same), at error level:
        no worker may run the Stasis application meanwhile."""
        said = f"{exc.strerror or exc}"
        if said != self._failed:
            self._failed = said
            log.error(
                "the Stasis lock %s: %s; the Stasis application may run in no worker until "
                "it can be made; trying again every %g s",
                self.lock_path, said, LEADER_POLL_S,
            )  # fmt: skip

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                led = self._try_lock()
            except OSError as exc:
                self._failing(exc)
                led = False
            if led:
                self._failed = ""
                log.info("worker %d leads the Stasis application", os.getpid())
                self.door.start()
                break
            await wait_event(self._stop, LEADER_POLL_S)
        while not await wait_event(self._stop, LEADER_POLL_S):
            try:
                if not self._keep_lock():
                    log.error(
                        "another worker leads the Stasis application through %s, made "
                        "again: this worker stops (started again as a follower)",
                        self.lock_path,
                    )
                    self._stop.set()
                    return
                self._failed = ""
            except OSError as exc:
                self._failing(exc)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task, LEADER_POLL_S * 2, "the Stasis leadership")
        await self.door.close()
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


@dataclass(slots=True)
class _Slot:
    """One worker's place: its process, when it started, how it has been dying."""

    process: subprocess.Popen[bytes]
    started: float
    exits: int = 0  # exits in a row, each before WORKER_HEALTHY_S of running
    delay_s: float = WORKER_RESTART_S
    crashing: bool = False  # said once, loudly, while it keeps dying


class Workers:
    """The parent of ``callgate run --workers N``: starts the worker processes, starts
    again any that dies (after ``WORKER_RESTART_S``, doubling up to ``WORKER_RESTART_MAX_S``
    while it keeps dying; a worker that keeps dying is logged once as an error, and once
    again when it runs), and stops them all (bounded: SIGTERM, then SIGKILL, logged).

    The config version in force (``version``) is written to the shared directory; a worker
    serves only that version (``check_version``). The counters of a worker that died are
    kept (``expositions``), so the sum over the workers never goes backwards."""

    def __init__(
        self, command: list[str], count: int, directory: Path, agi_port: int, version: str = ""
    ) -> None:
        self.command = command
        self.directory = directory
        self.roles = [WorkerRole(i, directory, agi_port, os.getpid()) for i in range(count)]
        self.slots: dict[int, _Slot] = {}
        self.restarts = 0
        self._baselines: dict[int, str] = {}
        self.version = version

    @property
    def processes(self) -> dict[int, subprocess.Popen[bytes]]:
        return {index: slot.process for index, slot in self.slots.items()}

    @property
    def version(self) -> str:
        """The config version in force, which every worker must serve."""
        return self._version

    @version.setter
    def version(self, version: str) -> None:
        self._version = version
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # removed under us
        partial = self.directory / f"{EXPECTED_VERSION}.tmp"
        partial.write_text(f"{version}\n")
        partial.replace(self.directory / EXPECTED_VERSION)

    def start(self) -> None:
        for role in self.roles:
            self._spawn(role)

    def _spawn(self, role: WorkerRole) -> None:
        # Forked from the event loop's thread, which lives as long as this process: the
        # worker's parent-death signal (``WorkerRole.follow_parent``) follows that thread.
        self._keep_counts(role)
        # The worker starts with SIGHUP blocked (a signal mask is inherited), until its
        # command line's handler is in place (gate.cli ``_EarlySighup.install``): the
        # reload this process forwards may come while it imports its modules, and SIGHUP's
        # default action would end it. Blocked, it waits, and the worker reloads once up.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process = subprocess.Popen(
                [*self.command, "--worker", role.argument()], stdin=subprocess.DEVNULL
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        slot = self.slots.get(role.index)
        if slot is None:
            self.slots[role.index] = _Slot(process, time.monotonic(), delay_s=WORKER_RESTART_S)
        else:
            slot.process, slot.started = process, time.monotonic()

    def _keep_counts(self, role: WorkerRole) -> None:
        """Add a dead worker's last counters to its baseline; remove its file."""
        from gate.ops.metrics import counters_only, merge_expositions

        try:
            text = role.metrics_path.read_text()
        except OSError:
            return
        role.metrics_path.unlink(missing_ok=True)
        try:
            counts = counters_only(text)
        except ValueError:  # never half-written (renamed into place); a bug: log it
            log.exception("worker %d: its last metrics could not be read", role.index)
            return
        before = self._baselines.get(role.index)
        self._baselines[role.index] = (
            counts if before is None else merge_expositions([before, counts]).decode()
        )

    def expositions(self) -> list[str]:
        """What the workers counted: the live ones' last metrics, plus the counters of
        every worker that died (a counter never goes backwards: Prometheus would take it
        for a reset). Gauges are the live workers' only."""
        return [*self._baselines.values(), *worker_expositions(self.directory)]

    def problems(self) -> list[str]:
        """Why the workers are not all serving, in words (``/readyz``); [] when they are:
        each worker's process runs, wrote its metrics within ``WORKER_STALE_S`` and serves
        the config version in force."""
        problems = []
        now = time.time()
        for role in self.roles:
            slot = self.slots.get(role.index)
            if slot is None or slot.process.poll() is not None:
                problems.append(f"worker {role.index} is not running")
                continue
            try:
                written = role.metrics_path.stat().st_mtime
                text = role.metrics_path.read_text()
            except OSError:
                problems.append(f"worker {role.index} is starting")
                continue
            if now - written > WORKER_STALE_S:
                problems.append(f"worker {role.index} has not reported for {now - written:.0f} s")
                continue
            served = _config_version_in(text)
            if served is not None and served != (self.version or "none"):
                problems.append(
                    f"worker {role.index} serves config version {served}, not {self.version}"
                )
        return problems

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every live worker (SIGHUP: reload)."""
        for slot in self.slots.values():
            if slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Until ``stop``: start again every worker that exits, each after its own delay."""
        due: dict[int, float] = {}  # worker index → when to start it again (monotonic)
        while not await wait_event(stop, 0.2):
            self._keep_directory()
            now = time.monotonic()
            for role in self.roles:
                slot = self.slots[role.index]
                if role.index in due:
                    if now >= due[role.index]:
                        del due[role.index]
                        self.restarts += 1
                        self._spawn(role)
                    continue
                code = slot.process.poll()
                if code is None:
                    if now - slot.started >= WORKER_HEALTHY_S:
                        if slot.crashing:
                            log.warning(
                                "worker %d is running again (pid %d) after %d exits in a row",
                                role.index, slot.process.pid, slot.exits,
                            )  # fmt: skip
                            slot.crashing = False
                        slot.exits, slot.delay_s = 0, WORKER_RESTART_S
                    continue
                due[role.index] = now + self._exited(role, slot, code)

    def _keep_directory(self) -> None:
        """Make the shared directory again, with the version in force, if it was removed
        while the workers run (``rm -rf /tmp/callgate-*``, a temporary-files cleaner): the
        workers write their metrics there and a worker started again reads the version it
        must serve there. Its metrics files come back at the workers' next turn."""
        if self.directory.is_dir():
            return
        log.warning("the workers' shared directory %s was removed; making it again", self.directory)
        try:
            self.version = self._version
        except OSError as exc:
            log.error("cannot make %s again: %s; trying again", self.directory, exc.strerror)

    def _exited(self, role: WorkerRole, slot: _Slot, code: int) -> float:
        """Log a worker's exit (the first of a series, then once when it keeps exiting);
        the delay before it is started again. Its counters go to its baseline at once, its
        gauges (``callgate_ari_connected``…) out of the sum: a dead worker connects nothing."""
        self._keep_counts(role)
        slot.exits += 1
        delay = slot.delay_s
        slot.delay_s = min(slot.delay_s * 2, WORKER_RESTART_MAX_S)
        if slot.exits == 1:
            log.warning(
                "worker %d (pid %d) exited with %s; starting it again",
                role.index, slot.process.pid, code,
            )  # fmt: skip
        elif not slot.crashing:
            slot.crashing = True
            log.error(
                "worker %d keeps exiting (%d times in a row, last with %s): it is down "
                "between restarts and /readyz is 503; starting it again in %g s, waiting "
                "up to %g s between tries",
                role.index, slot.exits, code, delay, WORKER_RESTART_MAX_S,
            )  # fmt: skip
        else:
            log.debug("worker %d exited again with %s", role.index, code)
        return delay

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


def check_version(role: WorkerRole, version: str, path: Path | None) -> None:
    """In a worker at start: ``ConfigError`` unless the config it loaded (``version``) is
    the one the parent has in force (the file was edited and not reloaded, or the parent
    refused its reload): a worker started again never serves other rules than its
    siblings."""
    expected = role.expected_version()
    if expected is not None and expected != version:
        raise ConfigError(
            f"worker {role.index}: {path} is now config version {version}, but the gate "
            f"serves version {expected} (edited and not reloaded, or its reload was "
            "refused): not serving it; run callgate reload, or restore the file"
        )


def _config_version_in(text: str) -> str | None:
    """The version label of ``callgate_config_info`` in an exposition (None: absent)."""
    for line in text.splitlines():
        if line.startswith('callgate_config_info{version="'):
            return line.split('"', 2)[1]
    return None


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


class WorkersStasis:
    """The Stasis door's state as the parent of the workers sees it (``/readyz``): connected
    while the leading worker's application is, from the metrics the workers write (its
    reconnects counted over the workers that died too)."""

    def __init__(self, expositions: Callable[[], list[str]]) -> None:
        self.expositions = expositions
        self.connected = asyncio.Event()
        self.reconnects = 0

    def refresh(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        connected = reconnects = 0.0
        for text in self.expositions():
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
    failed: list[str] = []  # the failures of a relocation, each said once
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
                if not embedded.intact():
                    if await _relocate(embedded, store, cancel, failed):
                        started = time.monotonic()
                        failed.clear()
                    continue
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
                failed.clear()
                log.warning(
                    "the embedded Redis in %s is back (pid %s) after %.2f s",
                    embedded.data_dir,
                    embedded.pid,
                    started - begun,
                )
    finally:
        cancel.set()


async def _relocate(
    embedded: EmbeddedRedis, store: Store, cancel: threading.Event, failed: list[str]
) -> bool:
    """The owned server's data directory is gone (``EmbeddedRedis.intact``): move its data
    into a new one and start it there (``EmbeddedRedis.relocate``), saying what happened
    once; True once done. A failure is said once (as long as it is the same) and tried
    again on the next turn: the server, which then holds the only copy of the data, runs on
    and serves the decisions meanwhile; stopping it, or this process, would lose that copy.
    """
    pid = embedded.pid
    if not failed:
        log.error(
            "the embedded Redis's data directory %s is gone (deleted while callgate ran? its "
            "socket, lock or append-only file is missing): its server (pid %s) lives on with "
            "the data in memory, but no CLI command can reach it and one would start a "
            "second, empty server there; making the directory again, locked, and moving the "
            "data into it, then restarting the server there: decisions get the fail mode "
            "meanwhile",
            embedded.data_dir,
            pid,
        )
    begun = time.monotonic()
    store.status.restarts += 1
    try:
        aside = await _in_thread(embedded.relocate, cancel)
    except (StoreError, OSError) as exc:
        said = str(exc)
        if said not in failed:
            failed.append(said)
            if embedded.running():
                risk = (
                    f"every list entry, consent and counter is only in the memory of "
                    f"redis-server pid {pid} (its files were deleted): it is lost if that "
                    "server or callgate stops, so stop neither; CLI commands cannot reach it "
                    "meanwhile (they fail, or wait for it if the directory is locked again)"
                )
            else:
                risk = (
                    f"redis-server pid {pid} has stopped: it is started again from what it "
                    f"wrote in {embedded.data_dir}"
                )
            log.error(
                "the embedded Redis's data could not be moved into %s: %s; %s; trying again",
                embedded.data_dir,
                said,
                risk,
            )
        return False
    log.warning(
        "the embedded Redis in %s is back (pid %s) after %.2f s with its data rewritten there "
        "from the memory of pid %s; decisions got the fail mode meanwhile; check what deleted "
        "the directory (a cleanup of the state directory?) and that nothing else was in it",
        embedded.data_dir,
        embedded.pid,
        time.monotonic() - begun,
        pid,
    )
    if aside:
        log.error(
            "a second redis-server wrote in %s while it was missing: what it held is set aside "
            "in %s and is NOT in force here; run again the CLI commands (list add, consent, "
            "...) run at that moment",
            embedded.data_dir,
            ", ".join(str(path) for path in aside),
        )
    return True


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
