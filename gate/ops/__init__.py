"""Operations: the HTTP listener, admin API, metrics, hot reload, audit trail and logs.

Owns: ``http`` (one listener: /metrics, /healthz, /readyz, /v1/, the console at /),
``api`` and its OpenAPI description, ``console`` (the web page, its files in ``static/``,
sign-in) with ``sessions``, ``views`` (lists, rules), ``live`` (rates, door health, the
audit feed) and ``scrubfile`` (leads uploads), ``metrics`` (Prometheus), ``reload``
(SIGHUP / ``callgate reload``), ``audit`` (the evidence stream's writer and readers),
``logs`` and ``operations`` (all of it attached to a running gate).

May import: ``gate.core``, ``gate.config``, ``gate.store``, ``gate.service``, ``gate.lists``,
aiohttp, prometheus-client and the standard library. Never a door (``agi``,
``gate.stasis``): doors are handed in as objects.
"""

from __future__ import annotations

__all__: list[str] = []
