"""The store: Redis, the Lua scripts, the list storage, the embedded server.

Owns: the connection to Redis (the pools of a single server or of a Sentinel-managed
master, ``connect.Link``; one atomic EVALSHA per decision, ``client.Store``), the
bucketed list storage and its atomic replacement (``lists.ListStore``), the embedded
``redis-server`` (``embedded.EmbeddedRedis``) and the scripts in ``lua/``. Every redis-py
error is translated into ``gate.core.errors`` here.

May import: ``gate.core``, ``gate.config``, redis-py and the standard library. Never a door
(``agi``, ``gate.stasis``), ``gate.lists``, ``gate.service`` or ``gate.ops``.
"""

from __future__ import annotations

from gate.store.client import Store

__all__ = ["Store"]
