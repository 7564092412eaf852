"""What ``callgate run`` serves beside the doors: metrics, health, admin API, hot reload.

``Operations.start(gate, config, agi, stasis)`` attaches the metrics to the gate and the
doors, installs the SIGHUP handler (reload) and starts the HTTP listener when ``[http]``
is enabled; ``stop()`` undoes all of it. Guarantees: a listener that cannot bind is a
one-line ``InputError`` naming the address; SIGHUP never interrupts a decision (the
reload runs as a task and swaps between decisions).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import disable_created_metrics

from gate.config.loader import Config
from gate.core.errors import InputError
from gate.ops.audit import AuditLog
from gate.ops.http import HttpServer
from gate.ops.metrics import AgiStats, Metrics, StasisStats, WorkersStats
from gate.ops.reload import Reloader
from gate.service import Gate

__all__ = ["Operations"]

log = logging.getLogger("callgate")


class Operations:
    """Metrics, reload and the HTTP listener of one running gate."""

    def __init__(self, gate: Gate, metrics: Metrics, reloader: Reloader | None) -> None:
        self.gate = gate
        self.metrics = metrics
        self.reloader = reloader
        self.http: HttpServer | None = None
        self._sighup = False

    @classmethod
    async def start(
        cls,
        gate: Gate,
        config: Config,
        agi: AgiStats | None,
        stasis: StasisStats | None,
        workers: WorkersStats | None = None,
    ) -> Operations:
        # One series per counter, not two: Prometheus has no use for the *_created ones.
        # (prometheus-client leaves this function unannotated.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        metrics = Metrics()
        metrics.use_config(config, gate.version)
        metrics.doors.agi, metrics.doors.stasis = agi, stasis
        metrics.redis.store = gate.store
        gate.observers.append(metrics)
        reloader = None
        if config.path is not None:
            reloader = Reloader(
                gate, config.path, on_swap=metrics.use_config, on_result=metrics.reload_result
            )
        ops = cls(gate, metrics, reloader)
        if reloader is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.request)
            ops._sighup = True
        if config.http.enabled:
            # The audit writer of this process (open_gate's, when it records decisions)
            # keeps the console's changes too.
            audit = next((o for o in gate.observers if isinstance(o, AuditLog)), None)
            http = HttpServer(
                gate,
                metrics,
                config.http,
                config.api,
                reloader,
                stasis,
                config.console,
                audit,
                workers=workers,
            )
            try:
                await http.start()
            except OSError as exc:
                await ops.stop()
                raise InputError(
                    f"http: cannot listen on {config.http.host}:{config.http.port}: "
                    f"{exc.strerror}; change [http] port or set [http] enabled = false"
                ) from exc
            except BaseException:
                await ops.stop()
                raise
            ops.http = http
            console = " / (console)" if http.console is not None else ""
            log.info("HTTP on %s:%s /metrics /healthz /readyz /v1/ (admin API)", http.url, console)
        return ops

    async def stop(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.reloader is not None:
            await self.reloader.close()
        self.gate.observers.remove(self.metrics)
