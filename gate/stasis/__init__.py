"""The Stasis door: Asterisk's ARI, a Stasis application that decides each channel.

Owns: the thin ARI client (``ari``: the event WebSocket and the REST calls used) and the
door itself (``door.StasisGate``).

May import: ``gate.core``, ``gate.config``, ``gate.service``, ``gate.lists``, aiohttp and the
standard library. Never ``gate.store`` (the store is reached through the service), nor the
other door (``agi``) or ``gate.ops``.
"""

from __future__ import annotations

__all__: list[str] = []
