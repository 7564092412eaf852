"""The ``callgate`` command's entry point: SIGHUP is caught before anything is imported.

``systemctl reload callgate`` right after ``start`` (the unit is ``Type=exec``) sends
SIGHUP while ``run`` is still importing its modules (a few hundred milliseconds), and
SIGHUP's default action ends the process. So the command catches it first thing, before
the imports of ``gate.cli``, and hands one that came to the command line's own early
handler (``gate.cli``: ``run`` reloads as soon as its reloader exists; any other command
gets SIGHUP's action before it back, by default its default action, and one that came
early is then delivered; ignored under nohup, it stays ignored).
"""

from __future__ import annotations

import signal

__all__ = ["main"]

EXIT_INTERRUPTED = 130  # as gate.cli's (not imported yet)


def main() -> int:
    """``callgate``: SIGHUP caught, then the command line (``gate.cli.main``). Ctrl-C
    while it imports ends it as Ctrl-C does later (exit 130), without a traceback."""
    # Ctrl-C too is only noted while importing: raised as KeyboardInterrupt, it could land
    # in a weakref callback of the import machinery, where Python prints and ignores it,
    # and the command ran on (``run`` then served, deaf to that Ctrl-C). Noted first, so
    # that a command seen catching SIGHUP notes Ctrl-C too.
    interrupted: list[int] = []
    noted = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if noted:
        signal.signal(signal.SIGINT, lambda signum, _frame: interrupted.append(signum))
    came: list[int] = []
    inherited = signal.signal(signal.SIGHUP, lambda signum, _frame: came.append(signum))
    try:
        from gate import cli
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if noted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        return EXIT_INTERRUPTED

    # From here on, the command line's handler records it; SIGHUP's action before this
    # command (SIG_IGN under nohup) is what any command but ``run`` gets back.
    cli.EARLY_SIGHUP.install(inherited)
    if came:
        cli.EARLY_SIGHUP.wanted = True
    return cli.main()
