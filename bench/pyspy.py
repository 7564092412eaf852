"""Sampling profiles of a running callgate (py-spy), and their top frames.

    python bench/pyspy.py FILE [FILE ...]     # the summary of recorded raw profiles

``bench/e2e.py --profile RATE`` records the gate's processes (``--subprocesses``: every
worker) with py-spy while SIPp places the calls of each door at that rate, and prints this
summary per door. py-spy samples without pausing the gate (``--nonblocking``) and, by
default, only threads that are running: a sample is CPU time, so ``busy`` (samples over
duration x rate) is the share of one core the gate used.

The summary lists the frames where the samples were (self time, by function and file, line
numbers merged), callgate's own frames with what they call (inclusive), and the share per
area (the file's package: the doors, the store, redis-py, asyncio, the standard library...).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

RATE_HZ = 200
#: a frame of py-spy's raw (collapsed) output: ``function (file:line)``
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
#: areas by path fragment, first match wins
_AREAS = (
    ("/agi/", "agi door"),
    ("/gate/stasis/", "stasis door"),
    ("/gate/store/", "gate.store"),
    ("/gate/core/", "gate.core"),
    ("/gate/ops/", "gate.ops"),
    ("/gate/", "gate (other)"),
    ("/panoramisk/", "panoramisk"),
    ("/redis/", "redis-py"),
    ("/aiohttp/", "aiohttp"),
    ("/phonenumbers/", "phonenumbers"),
    ("/prometheus_client/", "prometheus-client"),
    ("/asyncio/", "asyncio"),
)


def py_spy() -> str:
    """The py-spy executable (``pip install py-spy``; in the test extras)."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: install it with `pip install py-spy` (or `make .venv`)")
    return found


@contextlib.contextmanager
def recording(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples process ``pid`` and its children into ``out`` (raw) while the block
    runs; stopped by SIGINT (it then writes the file), killed if it takes over 20 s."""
    process = subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
         "--full-filenames", "--rate", str(RATE_HZ), "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    started = time.monotonic()
    try:
        time.sleep(0.5)  # attached before the calls start
        yield
    finally:
        duration = time.monotonic() - started
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate(timeout=5)
        if not out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-400:]}")
        out.with_suffix(".seconds").write_text(f"{duration:.3f}\n")


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return match["function"], match["file"]


def _area(path: str) -> str:
    for fragment, name in _AREAS:
        if fragment in path:
            return name
    if "/python3" in path or path.startswith("<"):
        return "python stdlib"
    return "other"


def summary(raw: Path, top: int = 12, more: Sequence[Path] = ()) -> list[str]:
    """Lines: the samples and busy share, the top ``top`` self frames, the areas (of
    ``raw`` and the ``more`` profiles recorded alike, taken as one)."""
    own: Counter[tuple[str, str]] = Counter()
    under: Counter[tuple[str, str]] = Counter()  # callgate's own frames, inclusive
    areas: Counter[str] = Counter()
    total = 0
    recorded = (raw, *more)
    lines_of = (line for path in recorded for line in path.read_text().splitlines())
    for line in lines_of:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        parsed = [_frame(f) for f in frames]
        for frame in set(parsed):
            if "/gate/" in frame[1] or "/agi/" in frame[1]:
                under[frame] += n
        function, path = parsed[-1]
        own[(function, path)] += n
        areas[_area(path)] += n
        total += n
    timed = [path.with_suffix(".seconds") for path in recorded]
    busy = ""
    if all(path.exists() for path in timed) and total:
        seconds = sum(float(path.read_text()) for path in timed)
        busy = f", busy {100 * total / (seconds * RATE_HZ):.0f} % of one core over {seconds:.1f} s"
    parts = f" (+{len(more)} more)" if more else ""
    lines = [f"{raw.name}{parts}: {total} samples{busy}"]
    if not total:
        return lines
    lines.append(f"  {'self %':>6}  frame")
    for (function, path), n in own.most_common(top):
        where = "/".join(Path(path).parts[-2:]) if path else "?"
        lines.append(f"  {100 * n / total:>6.1f}  {function} ({where})")
    lines.append(f"  {'incl %':>6}  callgate's frames, with what they call")
    for (function, path), n in under.most_common(top):
        where = "/".join(Path(path).parts[-2:])
        lines.append(f"  {100 * n / total:>6.1f}  {function} ({where})")
    shares = ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in areas.most_common())
    lines.append(f"  by area: {shares}")
    return lines


def main() -> int:
    files = [Path(a) for a in sys.argv[1:]]
    if not files:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in files:
        if not path.is_file():
            print(f"{path}: no such profile; record one with bench/e2e.py --profile RATE")
            return 2
        print("\n".join(summary(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
