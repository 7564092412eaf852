"""Progress of long admin commands (import, scrub): count, rate and elapsed time, on stderr.

``progress(total, what, unit)`` is a context manager yielding ``advance(units=1)``, to call
as work is done. On a terminal (stderr is a TTY) it draws a rich progress bar with the
count done of the total, the percentage, the rate, the elapsed time and the time left;
elsewhere it prints a first line for a long job, ``what: N of TOTAL unit (P %), R unit/s,
T s elapsed`` at most every ``INTERVAL_S`` seconds and a last line at the end, so a cron
job's log shows where a long command was. Interrupted (Ctrl-C, a cancelled task), it
says how far it got before the interruption goes on.
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
REDRAW_S = 0.1  # the bar's redraws, at most (rich's own refresh rate)
_BATCH = 1000
_ANNOUNCE = 100_000


def importer() -> str:
    """``user@host`` of who runs an import (list metadata)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Advance(Protocol):
    """Records ``units`` more done."""

    def __call__(self, units: int = 1) -> None: ...


def _rate(done: int, elapsed_s: float) -> str:
    return f"{done / elapsed_s:.0f}" if elapsed_s > 0 else "-"


@contextmanager
def progress(total: int, what: str, unit: str = "lines") -> Iterator[Advance]:
    started = time.monotonic()
    done = 0
    try:
        if sys.stderr.isatty():
            with _bar(total, what, unit) as advance_bar:

                def advance(units: int = 1) -> None:
                    nonlocal done
                    done += units
                    advance_bar(done)

                yield advance
                advance_bar(done, final=True)
            return
        last = started
        checked = 0
        if total >= _ANNOUNCE:  # a long job says it started, for the logs
            print(f"{what}: {total} {unit} to go", file=sys.stderr, flush=True)

        def advance_lines(units: int = 1) -> None:
            nonlocal done, last, checked
            done += units
            if done - checked < _BATCH:
                return
            checked = done
            now = time.monotonic()
            if now - last >= INTERVAL_S:
                last = now
                print(
                    f"{what}: {done} of {total} {unit} ({100 * done / max(total, 1):.0f} %), "
                    f"{_rate(done, now - started)} {unit}/s, {now - started:.0f} s elapsed",
                    file=sys.stderr,
                    flush=True,
                )

        yield advance_lines
        if done >= _BATCH:
            elapsed = time.monotonic() - started
            print(
                f"{what}: {done} {unit} in {elapsed:.1f} s ({_rate(done, elapsed)} {unit}/s)",
                file=sys.stderr,
                flush=True,
            )
    except BaseException as exc:  # Ctrl-C, a cancelled task, or an error: say how far
        if not isinstance(exc, Exception):
            print(
                f"{what}: interrupted after {done} of {total} {unit}", file=sys.stderr, flush=True
            )
        raise


@contextmanager
def _bar(total: int, what: str, unit: str) -> Iterator[_Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s")

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # Redrawn as the work advances, by the caller's thread: no refresh thread of its own
    # (a scrub may fork its workers only from a process with no other thread).
    with Progress(
        *columns, console=Console(stderr=True), transient=False, auto_refresh=False
    ) as bar:
        task = bar.add_task(what, total=total)
        shown, drawn = 0, 0.0

        def update(done: int, final: bool = False) -> None:
            nonlocal shown, drawn
            if final or done - shown >= _BATCH:
                shown = done
                now = time.monotonic()
                redraw = final or now - drawn >= REDRAW_S
                if redraw:
                    drawn = now
                bar.update(task, completed=done, refresh=redraw)

        yield update


class _Update(Protocol):
    def __call__(self, done: int, final: bool = False) -> None: ...
