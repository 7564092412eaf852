"""List administration: add, remove, import, export, consents, events, and the scrub.

Owns: list operations by name for a tenant/campaign (``admin.ListAdmin``), the import file
formats (``formats``), the pre-campaign scrub (``scrub``) and the progress display of long
commands (``progress``).

May import: ``gate.core``, ``gate.config``, ``gate.store``, ``gate.service`` and the
standard library (plus rich for progress). Never a door or ``gate.ops``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gate.lists.admin import ListAdmin

__all__ = ["ListAdmin"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: an import worker (gate/lists/workers.py) loads only the parser.
    if name == "ListAdmin":
        from gate.lists.admin import ListAdmin

        return ListAdmin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
