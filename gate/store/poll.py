"""Busy polling of the event loop while a reply is due soon (Redis's answer to a decision,
the rest of a FastAGI request's header block), so that it is read as it comes instead of
after a sleep.

When nothing is ready the event loop sleeps in the kernel (epoll) and an idle CPU halts; a
reply then waits for its CPU to wake up. On a virtual machine whose guest does not poll
before halting, that wake costs more than the round trip itself: a PING across the two
vCPUs of the machine this was measured on took 57 µs (p50) with the client asleep and
21 µs with the client polling, for the same CPU time per PING (the wake costs CPU too).
Halt polling in the guest kernel (``/sys/module/haltpoll/parameters/guest_halt_poll_ns``)
does the same for every process; this does it for callgate's own short waits, whatever
the host.

``Poller.hold()`` says a reply is due; ``Poller.release(started)`` that it came (or never
will). While a hold is on and its budget lasts, a callback keeps the loop turning (the
loop then polls its descriptors without sleeping) and yields the CPU at each turn
(``sched_yield``: another process runnable on this CPU, Asterisk or Redis itself, runs
first). The budget adapts as the kernel's halt polling does: it doubles (up to ``max_s``)
while replies come within ``max_s``, and halves (down to none) when one takes longer, so
that a busy event loop, a busy server or a distant one does not keep a CPU spinning.
"""

from __future__ import annotations

import asyncio
import os
import time

__all__ = ["Poller"]

# Where the budget starts again when it grows from none.
_GROW_FROM_S = 10e-6


class Poller:
    """Keeps one event loop polling while a hold is on (see the module)."""

    __slots__ = ("_budget", "_deadline", "_holds", "_loop", "_max", "_turning", "turns")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_s: float) -> None:
        self._loop = loop
        self._max = self._budget = max_s
        self._holds = 0
        self._deadline = 0.0
        self._turning = False
        self.turns = 0  # loop turns made polling, since the start

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def max_s(self) -> float:
        return self._max

    @property
    def budget_s(self) -> float:
        """How long the next hold keeps the loop polling, at most."""
        return self._budget

    @property
    def holds(self) -> int:
        """Replies due now (holds not released)."""
        return self._holds

    def hold(self) -> float:
        """A reply is due: keep the loop polling for it, within the budget. Returns the
        hold's start, to give to ``release``."""
        now = time.perf_counter()
        self._holds += 1
        if self._budget > 0.0:
            self._deadline = max(self._deadline, now + self._budget)
            if not self._turning:
                self._turning = True
                self._loop.call_soon(self._turn)
        return now

    def release(self, started: float) -> None:
        """The reply of the hold that started at ``started`` came, or never will."""
        self._holds -= 1
        if time.perf_counter() - started > self._max:
            budget = self._budget / 2
            self._budget = budget if budget >= _GROW_FROM_S else 0.0
        elif self._budget < self._max:
            self._budget = min(self._max, max(_GROW_FROM_S, self._budget * 2))

    def _turn(self) -> None:
        if self._holds <= 0 or time.perf_counter() >= self._deadline:
            self._turning = False
            return
        self.turns += 1
        os.sched_yield()
        self._loop.call_soon(self._turn)
