"""The decision core: pure functions and frozen values, no I/O.

Owns: the model (``Attempt``, ``Decision``, ``Verdict``), the one error tree, number
classification, rule values, calling hours, Redis key names and number encodings, the
engine (plan → store checks → conclusion), the policy the engine reads, the door
parameters and the decision value both doors hand to Asterisk, and the evidence (audit
record) of a decision.

May import: itself, the standard library's pure modules (no asyncio, socket, os, io,
pathlib, subprocess, tomllib, logging…), phonenumbers, holidays and tzdata. Nothing here
reads the clock: ``now`` is always an argument. ``tests/test_layers.py`` holds this.
"""

from __future__ import annotations

from gate.core.model import Attempt, Decision, TrafficClass, Verdict

__all__ = ["Attempt", "Decision", "TrafficClass", "Verdict"]
