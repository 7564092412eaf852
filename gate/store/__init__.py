"""The store: Redis, the Lua scripts, the list storage, the embedded server.

Owns: the connection to Redis (``connect.Link``: the pools of a single server or of a
Sentinel-managed master, or the clients of a Redis Cluster; one atomic EVALSHA per
decision, routed by slot in a cluster, ``client.Store``), the bucketed list and consent
storage spread over the slot groups and its atomic replacement (``lists.ListStore``), the
move from the previous key layout (``migrate``), the embedded ``redis-server``
(``embedded.EmbeddedRedis``) and the scripts in ``lua/``. Every redis-py error is
translated into ``gate.core.errors`` here.

May import: ``gate.core``, ``gate.config``, redis-py and the standard library. Never a door
(``agi``, ``gate.stasis``), ``gate.lists``, ``gate.service`` or ``gate.ops``.
"""

from __future__ import annotations

from gate.store.client import Store

__all__ = ["Store"]
