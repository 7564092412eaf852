"""Progress of long admin commands: a rich bar on a terminal, periodic lines otherwise.

``progress(total, what)`` is a context manager yielding ``advance(units=1)``, to call as
work is done (bulk imports: once per batch of lines); on a terminal (stderr is a TTY) it
draws a rich progress bar, elsewhere it prints ``what: N of TOTAL (P %)`` to stderr at
most every ``INTERVAL_S`` seconds, and a last line at the end, so a cron job's log shows
where an import was.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["Advance", "importer", "progress"]

INTERVAL_S = 5.0
_BATCH = 1000


def importer() -> str:
    """``user@host`` of who runs an import (list metadata)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Advance(Protocol):
    """Records ``units`` more lines done."""

    def __call__(self, units: int = 1) -> None: ...


@contextmanager
def progress(total: int, what: str) -> Iterator[Advance]:
    done = 0
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task(what, total=total)
            shown = 0

            def advance_bar(units: int = 1) -> None:
                nonlocal done, shown
                done += units
                if done - shown >= _BATCH:
                    shown = done
                    bar.update(task, completed=done)

            yield advance_bar
            bar.update(task, completed=done)
        return
    last = time.monotonic()
    checked = 0

    def advance_lines(units: int = 1) -> None:
        nonlocal done, last, checked
        done += units
        if done - checked < _BATCH:
            return
        checked = done
        if time.monotonic() - last >= INTERVAL_S:
            last = time.monotonic()
            print(
                f"{what}: {done} of {total} lines ({100 * done / max(total, 1):.0f} %)",
                file=sys.stderr,
                flush=True,
            )

    yield advance_lines
    if done >= _BATCH:
        print(f"{what}: {done} lines read", file=sys.stderr, flush=True)
