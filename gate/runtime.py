"""Wiring for a running process: config → Redis (URL or embedded) → Store → Gate.

``open_gate(config)`` is the one place that decides which Redis to talk to: the
configured URL, else an embedded ``redis-server`` with its data in ``redis.data_dir``
(reused if already running, stopped on exit only if this process started it). The audit
writer runs only for a process that records decisions (``records=True``: ``run``,
``check --record``); it is closed, bounded, before the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gate.config.loader import Config
from gate.ops.audit import AuditLog
from gate.ops.reload import config_version
from gate.service import Gate
from gate.store.client import Store
from gate.store.embedded import EmbeddedRedis

__all__ = ["open_gate"]


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
    store = Store(url, config.redis.deadline_s if deadline_s is None else deadline_s)
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
