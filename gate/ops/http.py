"""The HTTP listener of ``callgate run``: metrics, health, the admin API and the console
on one port.

Routes: ``GET /metrics`` (Prometheus text format), ``GET /healthz``, ``GET /readyz``,
``GET /openapi.json``, the admin API under ``/v1/`` (gate/ops/api.py, with the console's
views: gate/ops/views.py, gate/ops/scrubfile.py), and the console at ``/`` unless
``[console] enabled = false`` (gate/ops/console.py).

Guarantees:
- Loopback by default (``[http]``); ``start()`` refuses (``ConfigError``) a non-loopback
  address without an API token, whatever built the config.
- ``/healthz`` answers 200 while the process runs and never touches Redis.
- ``/readyz`` answers 200 only when Redis answers PING (within the store's admin bound)
  and, when ``[ari]`` is configured, the Stasis application is connected; else 503. Its
  Redis check names the mode and the node answering, and counts failovers and restarts.
  With ``run --workers N`` (the parent), every worker must be running, reporting its
  metrics and serving the config version in force (the ``workers`` check, whose
  ``reconnects`` counts the workers started again).
  Both bodies are JSON and carry the config version in force.
- Metrics and health are not authenticated (they hold no numbers); ``/v1/`` is.
- No connection is held by a quiet client: one idle (or whose request headers are not
  all in) for ``IDLE_S`` is closed, and a request body that stalls for ``BODY_IDLE_S``
  is refused (408); a slow upload that keeps sending is never cut.
- ``stop()`` ends the console's event streams, stops the live sampler and the list-metrics
  refresher, then the listener (in-flight requests get ``STOP_GRACE_S`` to finish), then
  removes the scrubbed files it kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from aiohttp import web

from gate import __version__
from gate.config.loader import ApiConfig, ConsoleConfig, HttpConfig, is_loopback
from gate.core.errors import ConfigError, StoreError
from gate.ops._openapi import Operation
from gate.ops.api import (
    MAX_BODY_BYTES,
    AdminApi,
    Handler,
    HostGuard,
    error_middleware,
    json_response,
)
from gate.ops.audit import AuditLog
from gate.ops.console import Console, ConsoleAudit
from gate.ops.live import AuditFeed, LiveSampler
from gate.ops.metrics import CONTENT_TYPE, ListRefresher, Metrics, StasisStats, WorkersStats
from gate.ops.models import Check, Health, Ready, RedisCheck
from gate.ops.reload import Reloader
from gate.ops.scrubfile import ScrubFiles
from gate.ops.sessions import Sessions
from gate.ops.views import Views
from gate.service import Gate

__all__ = ["HttpServer"]

log = logging.getLogger("callgate.http")

STOP_GRACE_S = 5.0
# A connection is closed once it has been idle this long: kept alive after an answer, or
# opened (or answered) without sending a whole request line and headers since. This is
# aiohttp's keepalive_timeout, which from aiohttp 3.14.5 (setup.cfg's floor) also runs
# from the connection's start; 3.14.3 left a connection that never sent a request open.
# A body that stalls is refused after BODY_IDLE_S (gate/ops/api.py).
IDLE_S = 60.0


class HttpServer:
    """Serves one gate's metrics, health and admin API until ``stop()``."""

    def __init__(
        self,
        gate: Gate,
        metrics: Metrics,
        http: HttpConfig,
        api: ApiConfig,
        reloader: Reloader | None = None,
        stasis: StasisStats | None = None,
        console: ConsoleConfig | None = None,
        audit: AuditLog | None = None,
        live_step_s: float | None = None,
        workers: WorkersStats | None = None,
    ) -> None:
        self.gate = gate
        self.metrics = metrics
        metrics.redis.store = gate.store
        self.http = http
        self.api = api
        self.stasis = stasis
        self.workers = workers
        self.started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._refresher = ListRefresher(metrics, gate, http.list_refresh_s)
        self.live = LiveSampler(metrics, gate, *([live_step_s] if live_step_s else []))
        self.feed = AuditFeed(gate)
        self.scrubbed = ScrubFiles(gate)
        self.app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        guard = HostGuard(http.host, api.allowed_hosts)
        console = console or ConsoleConfig()
        extra: list[tuple[Operation, Handler]] = [
            *Views(gate, self.live, self.feed).operations(),
            *self.scrubbed.operations(),
        ]
        sessions = None
        self.console: Console | None = None
        actions = ConsoleAudit(gate, audit)
        if console.enabled:
            sessions = Sessions(api.token, console.session_s)
            self.console = Console(gate, sessions, guard, actions)
            self.console.add_routes(self.app)
            extra.extend(self.console.operations())
        AdminApi(
            gate,
            api.token,
            reloader,
            guard,
            OPERATIONS,
            sessions=sessions,
            extra=extra,
            on_action=actions.record,
        ).add_routes(self.app)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        assert self._runner is not None, "server not started"
        address = self._runner.addresses[0]
        return int(address[1])

    @property
    def url(self) -> str:
        host = self.http.host if ":" not in self.http.host else f"[{self.http.host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen (``OSError`` if the port is taken) and start the list-metrics refresher."""
        if not self.api.token and not is_loopback(self.http.host):
            raise ConfigError(
                f"http: refusing to serve the admin API on {self.http.host!r} without a token; "
                "set api.token or $CALLGATE_API_TOKEN, or listen on 127.0.0.1"
            )
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=STOP_GRACE_S, keepalive_timeout=IDLE_S
        )
        await runner.setup()
        site = web.TCPSite(runner, self.http.host, self.http.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        if not self.api.token:
            log.warning("admin API without a token: any local user can change lists")
        self._refresher.start()
        self.live.start()

    async def stop(self) -> None:
        self.scrubbed.stop_scrubs()  # not after the requests' grace: they end at once
        await self.feed.close()
        await self.live.close()
        await self._refresher.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None
        self.scrubbed.close()

    async def _metrics(self, _request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def _healthz(self, _request: web.Request) -> web.Response:
        return json_response(
            Health(
                status="up",
                version=__version__,
                config_version=self.gate.version,
                uptime_s=round(time.monotonic() - self.started, 3),
            )
        )

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks: dict[str, Check | RedisCheck] = {}
        store = self.gate.store
        error: str | None = None
        try:
            await store.ping()
        except StoreError as exc:
            error = str(exc)
        # Which Redis answers: mode, node (the master in use), failovers, restarts and
        # cluster redirections seen.
        checks["redis"] = RedisCheck(
            ok=error is None,
            error=error,
            reconnects=None,
            redirects=dict(store.redirects),
            **dataclasses.asdict(store.status),
        )
        if self.stasis is not None:
            connected = self.stasis.connected.is_set()
            checks["ari"] = Check(
                ok=connected,
                error=None if connected else "the Stasis application is not connected to ARI",
                reconnects=self.stasis.reconnects,
            )
        if self.workers is not None:
            problems = self.workers.problems()
            checks["workers"] = Check(
                ok=not problems,
                error="; ".join(problems) or None,
                reconnects=self.workers.restarts,
            )
        ready = all(check.ok for check in checks.values())
        body = Ready(ready=ready, config_version=self.gate.version, checks=checks)
        return json_response(body, status=200 if ready else 503)


# The routes above, for /openapi.json (no token needed: they hold no numbers).
OPERATIONS = (
    Operation(
        "GET",
        "/healthz",
        "getHealth",
        "The process is up (never touches Redis)",
        responses={200: Health},
        errors=(),
        auth=False,
    ),
    Operation(
        "GET",
        "/readyz",
        "getReadiness",
        "Redis answers PING, with [ari] ARI is connected, with --workers every worker serves",
        responses={200: Ready, 503: Ready},
        errors=(),
        auth=False,
    ),
    Operation(
        "GET",
        "/metrics",
        "getMetrics",
        "Prometheus text format",
        streams={"text/plain": None},
        errors=(),
        auth=False,
    ),
)
