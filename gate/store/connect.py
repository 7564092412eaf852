"""How callgate reaches Redis: pools for one server or for a Sentinel-managed master, or
the clients of a Redis Cluster.

``Link(config)`` builds, for the ``[redis]`` mode in force, the two connection pools (or,
in a cluster, the two ``RedisCluster`` clients, whose per-node connections ``client.py``
routes decisions over) a ``Store`` uses, and reports which node answers. Guarantees:

- Decisions use ``pool_size`` connections: when all are busy a decision waits for one, at
  most ``pool_wait`` (redis-py's default pool raises ``MaxConnectionsError`` past its
  limit instead, which turned a burst of calls into fail-mode answers against a healthy
  Redis). The decision pool's connection class opens them and client.py's channels
  (channel.py) hold them; the pool itself serves PING.
- No connection re-sends a command by itself (``Retry(NoBackoff(), 0)``): whether a
  command may be sent again is its caller's decision (``client.py``), because a command
  whose reply was lost may already have run.
- Mode "sentinel" uses redis-py's own ``redis.asyncio.sentinel.Sentinel`` (its master
  discovery made safe under concurrency, ``_Sentinel``): every new connection asks the
  sentinels for the master, so after a failover the pools reach the new master by
  themselves; ``status`` names the node in use and counts the master changes seen
  (``failovers``).
- Mode "cluster" uses redis-py's ``RedisCluster`` for the slot map and for each node's
  connection class and settings; ``client.py``'s channels hold at most ``pool_size``
  decision connections per master (the wait for one bounded by ``pool_wait``, as
  above); ``status`` names the master that answered the last decision and counts the
  masters replaced (``failovers``, from the slot map read again after a lost
  connection). Node URLs carry the scheme (``rediss://``: TLS) and may
  carry credentials; ``username``/``password`` of ``[redis]`` win over them.
- Admin commands get their own pool (or cluster client) with long timeouts (list imports,
  exports, audit).
- A cancel is never lost in a command's send (``cancel_safe_sends``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
import redis.asyncio.connection as redis_connection
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gate.config.loader import RedisConfig

__all__ = ["ADMIN_TIMEOUT_S", "Link", "LinkStatus", "no_retry"]

log = logging.getLogger("callgate")

ADMIN_TIMEOUT_S = 60.0
# A decision's reply is waited for ``deadline`` before the fail mode answers; the read goes
# on in the background (the connection is not thrown away) up to this bound.
REPLY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 0.5
# Sentinels are asked for the master on every new connection: one that does not accept
# the connection at once is skipped; one that accepted answers in microseconds, but under
# a burst this process may take a while to read it (a tight read timeout turned a busy
# moment into "no master found").
SENTINEL_CONNECT_TIMEOUT_S = 0.5
SENTINEL_READ_TIMEOUT_S = 2.0
# Admin commands on a cluster are retried a few times after a failover (they are
# idempotent: list versions are built by name and switched with HSET, never RENAMEd).
CLUSTER_ADMIN_RETRIES = 3
# Connections per cluster node beyond the decisions' pool_size (PING of /readyz).
PING_CONNECTIONS = 2


class _Asyncio(types.ModuleType):
    """``asyncio`` as redis-py's connection module sees it, but for ``wait_for``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(awaitable: Awaitable[Any], within_s: float | None) -> Any:
        """Python 3.12's ``wait_for`` (called with the timeout as its second argument):
        ``awaitable`` under ``asyncio.timeout``."""
        async with asyncio.timeout(within_s):
            return await awaitable


def cancel_safe_sends() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the result of an operation that is done
    when a cancel reaches it, and the cancel is lost (python/cpython#86296; 3.12 builds
    it on ``asyncio.timeout`` and has not the flaw). redis-py sends every command under it
    when a socket timeout is set, as callgate's connections have: a cancel requested while
    a command was being prepared (a signal handler runs inside the task: SIGTERM to
    ``callgate audit tail -f``) was taken at the send and lost, and the command ran on,
    deaf to it. On 3.11 redis-py's connection module gets the ``wait_for`` of 3.12."""
    namespace = vars(redis_connection)
    if sys.version_info < (3, 12) and not isinstance(namespace["asyncio"], _Asyncio):
        namespace["asyncio"] = _Asyncio("asyncio")


cancel_safe_sends()


def no_retry() -> Retry:
    """redis-py's "never re-send" policy (its default re-sends up to 3 times)."""
    return Retry(NoBackoff(), 0)


@dataclass(slots=True)
class LinkStatus:
    """What ``/readyz`` and the metrics say about the Redis in use."""

    mode: str
    node: str
    failovers: int = 0
    restarts: int = 0  # of the embedded server begun by ``callgate run``'s supervisor


class _Sentinel(Sentinel):
    """redis-py's ``Sentinel`` with a ``discover_master`` that is safe when called
    concurrently (every new connection calls it, so a failover calls it from many tasks).

    redis-py moves the sentinel that answered to the front of its list by the index it had
    before an ``await``; two discoveries at once can then leave one sentinel twice in the
    list and drop another (observed here: a sentinel lost from the list, and its pooled
    connections garbage-collected unclosed). Here the list is walked as a snapshot and
    the swap finds the sentinel by identity, after the ``await``: the list stays a
    permutation of the configured sentinels."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters: Any = await sentinel.sentinel_masters()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                position = self.sentinels.index(sentinel)
                self.sentinels[0], self.sentinels[position] = sentinel, self.sentinels[0]
                return str(state["ip"]), int(state["port"])
        detail = f" : {', '.join(errors)}" if errors else ""
        raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, telling its ``Link`` about every master address it uses."""

    link: Link | None = None

    async def get_master_address(self) -> Any:
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        if self.link is not None:
            self.link.saw_master(f"{address[0]}:{address[1]}")
        return address


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """The Sentinel pool that waits (bounded) for a free connection instead of raising."""


class Link:
    """The pools of one ``[redis]`` configuration (``url`` given: the single server there)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self._sentinel: Sentinel | None = None
        if config.mode == "cluster":
            if not config.nodes:
                raise ValueError("a Redis Cluster needs seed nodes (redis.nodes)")
            nodes = ",".join(node.split("@", 1)[-1] for node in config.nodes)
            self.where = f"cluster {nodes}"
            self.status = LinkStatus("cluster", "")
        elif config.mode == "sentinel":
            assert config.sentinel is not None, "the loader requires [redis.sentinel]"
            nodes = ",".join(f"{host}:{port}" for host, port in config.sentinel.nodes)
            self.where = f"sentinel service {config.sentinel.service!r} at {nodes}"
            self.status = LinkStatus("sentinel", "")
        else:
            if config.url is None:
                raise ValueError("a single Redis needs a URL (the embedded server's or redis.url)")
            self.where = config.url.split("@", 1)[-1]
            self.status = LinkStatus("single", self.where)

    def saw_master(self, node: str) -> None:
        """A pool connected to ``node`` as the master: count and log a change."""
        previous = self.status.node
        if node == previous:
            return
        self.status.node = node
        if previous:
            self.status.failovers += 1
            log.warning("Redis master is now %s (was %s): failover followed", node, previous)
        else:
            log.info("Redis master is %s (%s)", node, self.where)

    def answered(self, node: str) -> None:
        """A cluster master answered a decision."""
        self.status.node = node

    def masters_replaced(self, lost: Iterable[str], masters: Iterable[str]) -> None:
        """The cluster's slot map, read again, no longer has the masters ``lost``."""
        gone = sorted(lost)
        if gone:
            self.status.failovers += len(gone)
            log.warning(
                "Redis Cluster masters %s replaced (masters now %s): failover followed",
                ", ".join(gone),
                ", ".join(sorted(masters)),
            )

    def _auth(self) -> dict[str, Any]:
        config = self.config
        options: dict[str, Any] = {}
        if config.username:
            options["username"] = config.username
        if config.password:
            options["password"] = config.password
        if config.tls:
            options["ssl"] = True
        for option, path in (
            ("ssl_ca_certs", config.tls_ca_file),
            ("ssl_certfile", config.tls_cert_file),
            ("ssl_keyfile", config.tls_key_file),
        ):
            if path is not None:
                options[option] = str(path)
        return options

    def _sentinels(self) -> Sentinel:
        if self._sentinel is None:
            sentinel = self.config.sentinel
            assert sentinel is not None
            options: dict[str, Any] = {
                "socket_timeout": SENTINEL_READ_TIMEOUT_S,
                "socket_connect_timeout": SENTINEL_CONNECT_TIMEOUT_S,
                "retry": no_retry(),
            }
            if sentinel.username:
                options["username"] = sentinel.username
            if sentinel.password:
                options["password"] = sentinel.password
            if sentinel.tls:
                options["ssl"] = True
                if self.config.tls_ca_file is not None:
                    options["ssl_ca_certs"] = str(self.config.tls_ca_file)
            self._sentinel = _Sentinel(list(sentinel.nodes), sentinel_kwargs=options)  # type: ignore[no-untyped-call]
        return self._sentinel

    def _pool(self, pool_class: type[ConnectionPool], **options: Any) -> ConnectionPool:
        options = {**self._auth(), "retry": no_retry(), **options}
        if self.config.mode == "sentinel":
            assert self.config.sentinel is not None
            sentinel_class = (
                _BlockingSentinelPool if pool_class is BlockingConnectionPool else _SentinelPool
            )
            client = self._sentinels().master_for(
                self.config.sentinel.service, connection_pool_class=sentinel_class, **options
            )
            pool = client.connection_pool
            assert isinstance(pool, _SentinelPool)
            pool.link = self
            return pool
        assert self.config.url is not None
        return pool_class.from_url(self.config.url, **options)

    def decision_pool(self) -> ConnectionPool:
        """``pool_size`` connections; a caller waits at most ``pool_wait`` for one."""
        return self._pool(
            BlockingConnectionPool,
            max_connections=self.config.pool_size,
            timeout=self.config.pool_wait_s,
            socket_connect_timeout=max(self.config.deadline_s, CONNECT_TIMEOUT_S),
            socket_timeout=max(self.config.deadline_s, REPLY_TIMEOUT_S),
        )

    def admin_pool(self) -> ConnectionPool:
        """Long timeouts, never a blind retry: admin commands are not idempotent (a slow
        RENAME re-sent by redis-py's default retry failed "no such key" after the first one
        had succeeded, measured on a 10 M-member list)."""
        return self._pool(
            ConnectionPool,
            socket_timeout=ADMIN_TIMEOUT_S * 2,
            socket_connect_timeout=5.0,
        )

    def cluster(self, admin: bool) -> RedisCluster:
        """A client of the cluster (mode "cluster"): for decisions (``admin`` False: at most
        ``pool_size`` connections per node, reply timeouts as a decision pool's, no retry:
        ``client.py`` sends over its nodes' connections itself) or for administration
        (long timeouts, a few retries after a failover)."""
        config = self.config
        first = urlsplit(config.nodes[0])
        startup = []
        for url in config.nodes:
            parts = urlsplit(url)
            startup.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))
        options = self._auth()
        options.setdefault("username", unquote(first.username) if first.username else None)
        options.setdefault("password", unquote(first.password) if first.password else None)
        if first.scheme == "rediss":
            options["ssl"] = True
        if admin:
            timeouts: dict[str, Any] = {
                "socket_timeout": ADMIN_TIMEOUT_S * 2,
                "socket_connect_timeout": 5.0,
                "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), CLUSTER_ADMIN_RETRIES),
            }
        else:
            timeouts = {
                "socket_timeout": max(config.deadline_s, REPLY_TIMEOUT_S),
                "socket_connect_timeout": max(config.deadline_s, CONNECT_TIMEOUT_S),
                "retry": no_retry(),
                # client.py holds decisions to pool_size per node; room for PING beside.
                "max_connections": config.pool_size + PING_CONNECTIONS,
            }
        return RedisCluster(startup_nodes=startup, decode_responses=False, **options, **timeouts)

    def client(self, pool: ConnectionPool) -> aioredis.Redis:
        """A client on ``pool`` (which the client does not close: ``close()`` does)."""
        return aioredis.Redis(connection_pool=pool)

    async def close(self, *pools: ConnectionPool) -> None:
        for pool in pools:
            await pool.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()
