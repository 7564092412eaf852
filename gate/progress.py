"""Progress of long admin commands: a rich bar on a terminal, periodic lines otherwise.

``progress(total, what)`` is a context manager yielding ``advance()``, to call once per
unit of work; on a terminal (stderr is a TTY) it draws a rich progress bar, elsewhere it
prints ``what: N of TOTAL (P %)`` to stderr at most every ``INTERVAL_S`` seconds, and a
last line at the end, so a cron job's log shows where an import was.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["importer", "progress"]

INTERVAL_S = 5.0
_BATCH = 1000


def importer() -> str:
    """``user@host`` of who runs an import (list metadata)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[], None]]:
    done = 0
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task(what, total=total)

            def advance_bar() -> None:
                nonlocal done
                done += 1
                if done % _BATCH == 0:
                    bar.update(task, completed=done)

            yield advance_bar
            bar.update(task, completed=done)
        return
    last = time.monotonic()

    def advance_lines() -> None:
        nonlocal done, last
        done += 1
        if done % _BATCH == 0 and time.monotonic() - last >= INTERVAL_S:
            last = time.monotonic()
            print(
                f"{what}: {done} of {total} lines ({100 * done / max(total, 1):.0f} %)",
                file=sys.stderr,
                flush=True,
            )

    yield advance_lines
    if done >= _BATCH:
        print(f"{what}: {done} lines read", file=sys.stderr, flush=True)
