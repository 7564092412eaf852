"""callgate: an outbound call gate for Asterisk.

The public surface: build an ``Attempt``, ask a ``Gate`` for its ``Decision``.
"""

from __future__ import annotations

from gate.core.model import Attempt, Decision, TrafficClass, Verdict

__version__ = "0.1.0"

__all__ = ["Attempt", "Decision", "TrafficClass", "Verdict", "__version__"]
