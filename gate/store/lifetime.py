"""Processes that must not outlive the process that started them.

A worker left behind by a parent that was killed (SIGKILL, the OOM killer) goes on as if
nothing happened: a FastAGI worker serving a port a new gate shares, a scrub's worker
blocked for ever on its parent's queue, a scrub holding Redis connections. On Linux the
kernel sends such a process a signal when its parent dies (``PR_SET_PDEATHSIG``,
prctl(2)), if asked first. The signal comes when the THREAD that started the process
ends, so only processes started from a parent's main thread (or a thread as long-lived)
may rely on it; callgate starts them all from its event loop's thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["end_with_parent"]

_PR_SET_PDEATHSIG = 1  # prctl(2)


def end_with_parent(parent_pid: int) -> bool:
    """Have this process get SIGTERM when its parent dies (Linux; elsewhere nothing is
    set); whether that parent, ``parent_pid``, is still alive (False: it died before, and
    no signal will come: the caller should end). ``OSError``: the signal could not be set."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    return os.getppid() == parent_pid
