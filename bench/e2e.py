"""Benchmark: post-dial delay through a real Asterisk, with the gate and without, in one run.

    python bench/e2e.py [--calls 500] [--rates 50,100] [--workers 1] [--deadline 50ms] [--keep]
                        [--rounds 1] [--minimal] [--profile RATE] [--busy-poll 200us|0]
                        [--agi-busy-poll 200us|0]

Needs root and the Asterisk chroot (``make sandbox``) and Debian's sipp. Starts, all on
loopback: a redis-server (unix socket), ``callgate run`` with the sample config
(lists, 4-per-30d cap, the given Redis deadline) and an ``[ari]`` table (both doors), and
one Asterisk whose SIP context sends ``0…`` numbers through ``GoSub(callgate-agi,…)``
(the FastAGI door), ``8…`` numbers through ``GoSub(callgate-stasis,…)`` (the Stasis door,
dialplan/callgate.conf) and ``9…`` numbers through the same dialplan without a gate. For
each rate, SIPp places ``--calls`` calls ungated, then as many through each door
(distinct numbers, so the cap never bites), and reports the INVITE→200 time (post-dial
delay) p50/p99, the share of calls that failed (no 200; how many by final response: 503 a
DEFER or the fail mode, none no answer in time), and the ratio door/ungated.
``--rounds N`` places each row's calls in N parts, the modes taking turns (the machine is
shared: drift in its load then hits every mode alike). ``--minimal`` adds a row per rate
through ``bench/minimal_agi.py`` (``7…`` numbers): a FastAGI gate that does one SISMEMBER
and one SET VARIABLE (on uvloop, as the gate), the floor of any FastAGI gate on this
machine, and each door's
added delay is also set against it; and a row (``minsub``, ``6…`` numbers) of the same
minimal gate reached through callgate's own ``callgate-agi`` subroutine (it answers with
the ``CALLGATE_DECISION`` the subroutine unpacks), which splits the FastAGI door's delay
over the minimal gate in two: the dialplan's share (minsub over minimal) and the gate's
own (the door over minsub). Each row's CPU per call (ms, /proc) of the gate's
processes (or the minimal gate's), Redis and Asterisk says where the time goes.
``--profile RATE`` records the gate with py-spy during each door's row at RATE (every
part) and prints the top frames (``bench/pyspy.py``).
``--workers N`` runs ``callgate run --workers N``. Then it checks the goals, each against
the ungated row of the same rate in the same run: at 100 cps the added p50 is at most
1.5 ms and the p99 at most 2 x ungated p99 + 2 ms; at 300 cps fewer than 1 % fail and the
p50 is at most 2 x ungated; and it names each door's knee, the highest rate tried where
fewer than 1 % fail and the p50 is at most 2 x ungated. Absolute numbers depend on the
machine (Asterisk, SIPp, Redis and the gate share its cores); compare the ratios within
one run.

Then it counts the ARI REST requests per Stasis decision: with ``ari set debug all on``
Asterisk logs every REST request it receives, over HTTP (``<--- ARI request received …``
followed by ``METHOD channels/ID/…``) or over the event WebSocket (``<--- Received ARI
message …`` followed by the ``RESTRequest`` JSON); SIPp places ``REST_CALLS`` calls
through the Stasis door, 10 % of them to red-listed numbers, and the requests naming each
channel are counted, per verdict. By design: 1 for an allowed channel (continue to
``callgate-decided``, the decision in the extension), 1 for a refused one (DELETE with
reason_code). The same log shows the events Asterisk sent the application (``<--- Sending
ARI event …``): by design a StasisStart per channel and a RESTResponse per request (the
door's event filter keeps StasisEnd and ChannelHangupRequest away). This phase runs after
the timed rows, so the debug logging does not slow them down.

Likewise it counts the FastAGI round trips per AGI decision: with ``agi set debug on``
Asterisk logs each request it sends (``<CHANNEL>AGI Tx >> agi_request: …``, the headers)
and each command it receives (``<CHANNEL>AGI Rx << SET VARIABLE …``, each answered before
the next is read). A request's round trips are its header block plus its commands; SIPp
places ``AGI_CALLS`` calls through the FastAGI door, 10 % of them to red-listed numbers.
By design: 2 per decision (the headers, then one ``SET VARIABLE CALLGATE_DECISION``).

The delay comes from SIPp's ``-trace_msg`` timestamps (µs): its own ``rtd``/``-trace_rtt``
counts in whole milliseconds on a ~4 ms tick, too coarse for a loopback PBX.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from gateproc import GateProcess, callgate_dialplan, write_config  # noqa: E402
from sandbox import AsteriskSandbox, free_port  # noqa: E402
from sippuac import SippRun, run_sipp  # noqa: E402

from gate.store.embedded import find_redis_server  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from pyspy import recording, summary  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"
WARMUP_CALLS = 20
REST_CALLS = 40
AGI_CALLS = 40
#: modes in row order: the SIP number prefix and the context it reaches
MODES = {"ungated": "9", "agi": "", "stasis": "8"}
#: with --minimal, after the ungated row: bench/minimal_agi.py's FastAGI gate, bare and
#: through callgate's callgate-agi subroutine
MINIMAL = {"ungated": "9", "minimal": "7", "minsub": "6", "agi": "", "stasis": "8"}
#: the rows of bench/minimal_agi.py (its process is the gate whose CPU they count)
MINIMAL_ROWS = ("minimal", "minsub")

DIALPLAN = """
#include callgate.conf

[from-sipp]
exten => _0X.,1,Goto(gated,${EXTEN},1)
exten => _9X.,1,Goto(ungated,${EXTEN:1},1)
exten => _8X.,1,Goto(stasis-gated,${EXTEN:1},1)
exten => _7X.,1,Goto(minimal-gated,${EXTEN:1},1)
exten => _6X.,1,Goto(minimal-subroutine,${EXTEN:1},1)

[gated]
exten => _X.,1,GoSub(callgate-agi,s,1(${EXTEN},default,bench,campaign))
 same => n,Goto(reached,${EXTEN},1)

[stasis-gated]
exten => _X.,1,GoSub(callgate-stasis,s,1(${EXTEN},default,bench,campaign))
 same => n,Goto(reached,${EXTEN},1)

[ungated]
exten => _X.,1,Goto(reached,${EXTEN},1)

[minimal-gated]
exten => _X.,1,AGI(agi://127.0.0.1:MINIMAL_PORT/check,${EXTEN})
 same => n,GotoIf($["${CALLGATE_RESULT}" = "ALLOW"]?reached,${EXTEN},1)
 same => n,Hangup(21)

[minimal-subroutine]
exten => _X.,1,Set(CALLGATE_AGI_URL=agi://127.0.0.1:MINIMAL_PORT)
 same => n,GoSub(callgate-agi,s,1(${EXTEN},default,bench,campaign))
 same => n,Goto(reached,${EXTEN},1)

[reached]
exten => _X.,1,Answer()
 same => n,Wait(5)
 same => n,Hangup()
"""


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = workdir / "redis.sock"
    process = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"unix://{sock}"
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        for _ in range(200):
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            try:
                if client.ping():
                    return process, url
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    stop(process)
    raise RuntimeError("redis-server did not answer PING within 10 s")


def start_minimal(port: int, redis_url: str) -> subprocess.Popen[bytes]:
    """bench/minimal_agi.py on 127.0.0.1:``port``, once it says it listens (10 s at most)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "minimal_agi.py"), str(port), redis_url],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    ready = select.select([process.stdout], [], [], 10)[0]
    if not ready or process.stdout.readline() != b"ready\n":
        stop(process)
        raise RuntimeError("bench/minimal_agi.py did not start within 10 s")
    return process


def tree_cpu_s(root: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and its descendants
    (from /proc; 0 when ``root`` is None)."""
    if root is None:
        return 0.0
    table: dict[int, tuple[int, int]] = {}  # pid -> (parent, ticks)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        ticks += table.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(10)


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def unanswered(results: dict[str, int], dialled: list[str]) -> Counter[str]:
    """The calls of ``dialled`` that got no 200, by SIPp's final response ("503": the
    dialplan hung up with cause 34, a DEFER or the fail mode; "none": no final response
    before SIPp gave up, an overloaded box)."""
    return Counter(
        "none" if (code := results.get(number)) is None else str(code)
        for number in dialled
        if results.get(number) != 200
    )


def unanswered_text(counts: Counter[str]) -> str:
    """``503 x25, none x2`` (the most frequent first), or ``-`` for none."""
    return ", ".join(f"{code} x{n}" for code, n in counts.most_common()) or "-"


def place(sandbox: AsteriskSandbox, numbers: list[str], rate: int, workdir: Path) -> SippRun:
    run = run_sipp(
        sandbox.sip_port,
        numbers,
        workdir,
        rate_cps=rate,
        timeout_s=len(numbers) / rate + 30,
        trace_msg=True,
    )
    if run.exit_code != 0 or len(run.final_ms) != len(numbers):
        print(f"  sipp exit {run.exit_code}, {len(run.final_ms)} timed calls; see {workdir}")
    return run


_ARI_REQUEST = re.compile(
    r"<--- ARI request received from: (?P<peer>\S+) --->\n(?P<method>[A-Z]+) (?P<path>\S+)"
)


_ARI_EVENT = re.compile(r"<--- Sending ARI event to \S+ --->\n(\{\n.*?\n\})\n", re.S)


_ARI_MESSAGE = re.compile(r"<--- Received ARI message from \S+ --->\n(\{\n.*?\n\})\n", re.S)


def count_rest_calls(log: str) -> tuple[dict[str, int], int, int]:
    """From Asterisk's ``ari set debug`` log: channel id -> REST requests naming it (the
    originate ``POST channels`` names none), the requests naming no channel, and how many
    of all came over the event WebSocket (``RESTRequest`` messages) rather than HTTP."""
    paths = [match["path"] for match in _ARI_REQUEST.finditer(log)]
    over_websocket = 0
    for block in _ARI_MESSAGE.findall(log):
        with contextlib.suppress(ValueError):
            message = json.loads(block)
            if isinstance(message, dict) and message.get("type") == "RESTRequest":
                paths.append(str(message.get("uri", "")))
                over_websocket += 1
    per_channel: dict[str, int] = {}
    other = 0
    for path in paths:
        parts = path.split("?")[0].strip("/").split("/")
        if parts[0] == "channels" and len(parts) >= 2:
            per_channel[parts[1]] = per_channel.get(parts[1], 0) + 1
        else:
            other += 1
    return per_channel, other, over_websocket


def rest_calls_per_decision(
    sandbox: AsteriskSandbox, gate: GateProcess, workdir: Path
) -> list[str]:
    """Place REST_CALLS SIPp calls through the Stasis door with ARI debug on; report lines."""
    numbers = [f"0614{i:06d}" for i in range(REST_CALLS)]
    listed = set(numbers[::10])
    red = workdir / "rest-red.txt"
    red.write_text("".join(f"{n}\n" for n in sorted(listed)))
    gate.cli("list", "import", "red", str(red))
    since = len(sandbox.read_log())
    sandbox.cli("ari set debug all on")
    try:
        run = place(sandbox, ["8" + n for n in numbers], 10, workdir / "rest")
        time.sleep(1.0)  # the last decisions' log lines
    finally:
        sandbox.cli("ari set debug all off")
    log = sandbox.read_log()[since:]
    per_channel, other, over_websocket = count_rest_calls(log)
    # Which number each channel dialled: from the StasisStart events in the same debug log.
    number_of: dict[str, str] = {}
    name_of: dict[str, str] = {}
    event_types: Counter[str] = Counter()
    for block in _ARI_EVENT.findall(log):
        with contextlib.suppress(ValueError):
            event = json.loads(block)
            event_types[str(event.get("type"))] += 1
            if event.get("type") == "StasisStart" and event.get("args"):
                number_of[str(event["channel"]["id"])] = str(event["args"][0])
                name_of[str(event["channel"]["id"])] = str(event["channel"]["name"])
    priorities = count_priorities(log, STASIS_CONTEXTS)
    by_verdict: dict[str, list[int]] = {"allowed": [], "refused": []}
    steps: dict[str, list[int]] = {"allowed": [], "refused": []}
    for channel, count in per_channel.items():
        number = number_of.get(channel)
        if number is not None:
            verdict = "refused" if number in listed else "allowed"
            by_verdict[verdict].append(count)
            steps[verdict].append(priorities.get(name_of[channel], 0))
    codes = list(run.results.values())
    lines = [
        f"ARI REST requests per Stasis decision ({REST_CALLS} SIPp calls, "
        f"{len(listed)} red-listed; from Asterisk's `ari set debug all on` log)",
        f"  SIPp final responses: {codes.count(200)} x 200, {codes.count(403)} x 403",
    ]
    for verdict, counts in by_verdict.items():
        spread = f"min {min(counts)} max {max(counts)}" if counts else "no sample"
        mean = statistics.fmean(counts) if counts else float("nan")
        ran = statistics.fmean(steps[verdict]) if counts else float("nan")
        lines.append(
            f"  {verdict:<8} {len(counts):>3} channels, {mean:.2f} requests each ({spread}), "
            f"{ran:.2f} dialplan priorities in callgate-stasis and callgate-decided"
        )
    lines.append(
        f"  requests naming no channel (e.g. the sweep's GET /channels, the connect's probe): "
        f"{other}"
    )
    sent = ", ".join(f"{count} {kind}" for kind, count in sorted(event_types.items()))
    lines.append(f"  events Asterisk sent the application: {sent or 'none'}")
    total = sum(per_channel.values()) + other
    lines.append(f"  over the event WebSocket: {over_websocket} of {total} (the rest over HTTP)")
    return lines


_AGI_LINE = re.compile(r"<(?P<channel>[^>\n]+)>AGI (?:Tx >> agi_request: |Rx << (?P<command>.*))")
_AGI_VERDICT = re.compile(r'^SET VARIABLE CALLGATE_(?:DECISION "(\w+)\||RESULT "(\w+)")')


def count_agi_round_trips(log: str) -> dict[str, tuple[int, str]]:
    """From Asterisk's ``agi set debug on`` log: channel -> (round trips, verdict set).

    A round trip is the request's header block (``agi_request:`` sent) or one command
    received from the gate (each is answered before Asterisk reads the next)."""
    trips: dict[str, int] = {}
    verdicts: dict[str, str] = {}
    for match in _AGI_LINE.finditer(log):
        channel = match["channel"]
        trips[channel] = trips.get(channel, 0) + 1
        if match["command"] and (found := _AGI_VERDICT.match(match["command"])):
            verdicts[channel] = found[1] or found[2]
    return {channel: (count, verdicts.get(channel, "?")) for channel, count in trips.items()}


#: a dialplan priority run, from Asterisk's verbose log (``-- Executing [s@ctx:3] App("chan", …``)
_EXECUTING = re.compile(
    r'Executing \[[^@\]\n]*@(?P<context>[^:\]\n]+):\d+\] \w+\("(?P<channel>[^"\n]+)"'
)
#: the contexts of dialplan/callgate.conf a gated call runs through, per door
AGI_CONTEXTS = ("callgate-agi",)
STASIS_CONTEXTS = ("callgate-stasis", "callgate-decided")


def count_priorities(log: str, contexts: tuple[str, ...]) -> dict[str, int]:
    """From Asterisk's verbose log: channel name -> the dialplan priorities it ran in
    ``contexts`` (callgate's subroutine: the dialplan's share of a decision's cost)."""
    return dict(Counter(m["channel"] for m in _EXECUTING.finditer(log) if m["context"] in contexts))


def agi_round_trips_per_decision(
    sandbox: AsteriskSandbox, gate: GateProcess, workdir: Path
) -> list[str]:
    """Place AGI_CALLS SIPp calls through the FastAGI door with AGI debug on; report lines."""
    numbers = [f"0615{i:06d}" for i in range(AGI_CALLS)]
    listed = set(numbers[::10])
    red = workdir / "agi-red.txt"
    red.write_text("".join(f"{n}\n" for n in sorted(listed)))
    gate.cli("list", "import", "red", str(red))
    since = len(sandbox.read_log())
    sandbox.cli("agi set debug on")
    try:
        run = place(sandbox, numbers, 10, workdir / "agi-debug")
        time.sleep(1.0)  # the last decisions' log lines
    finally:
        sandbox.cli("agi set debug off")
    log = sandbox.read_log()[since:]
    per_channel = count_agi_round_trips(log)
    priorities = count_priorities(log, AGI_CONTEXTS)
    by_verdict: dict[str, list[int]] = {}
    steps: dict[str, list[int]] = {}
    for channel, (count, verdict) in per_channel.items():
        by_verdict.setdefault(verdict, []).append(count)
        steps.setdefault(verdict, []).append(priorities.get(channel, 0))
    codes = list(run.results.values())
    lines = [
        f"FastAGI round trips per decision ({AGI_CALLS} SIPp calls, {len(listed)} red-listed; "
        "from Asterisk's `agi set debug on` log: the headers + each command)",
        f"  SIPp final responses: {codes.count(200)} x 200, {codes.count(403)} x 403",
    ]
    for verdict, counts in sorted(by_verdict.items()):
        lines.append(
            f"  {verdict:<8} {len(counts):>3} requests, {statistics.fmean(counts):.2f} round "
            f"trips each (min {min(counts)} max {max(counts)}), "
            f"{statistics.fmean(steps[verdict]):.2f} dialplan priorities in callgate-agi"
        )
    return lines


def goal_lines(rows: list[tuple[int, str, int, int, float, float]], rates: list[int]) -> list[str]:
    """Each door against the ungated row of the same rate: ratios, the goals, the knee;
    with a minimal FastAGI gate's rows, each door's added delay against the minimal's."""
    by_rate = {
        (rate, mode): (calls, answered, p50, p99) for rate, mode, calls, answered, p50, p99 in rows
    }
    doors = [d for d in (*MINIMAL_ROWS, "agi", "stasis") if (rates[0], d) in by_rate]
    lines = [
        f"{'cps':>5} {'door':<8} {'added p50':>10} {'p50/ungated':>12} {'p99/ungated':>12} "
        f"{'p99 bound':>10} {'failed':>7}"
    ]

    def failed_at(rate: int, mode: str) -> float:
        calls, answered = by_rate[rate, mode][:2]
        return (calls - answered) / calls

    knee: dict[str, int | None] = dict.fromkeys(doors)
    verdicts: list[str] = []
    floor: list[str] = []
    for rate in rates:
        _, _, u50, u99 = by_rate[rate, "ungated"]
        for door in doors:
            g50, g99 = by_rate[rate, door][2:]
            failed = failed_at(rate, door)
            bound = 2 * u99 + 2
            lines.append(
                f"{rate:>5} {door:<8} {g50 - u50:>+9.2f}ms {g50 / u50:>11.2f}x {g99 / u99:>11.2f}x "
                f"{bound:>8.2f}ms {100 * failed:>6.1f}%"
            )
            holds = failed < 0.01 and g50 <= 2 * u50
            if holds and (knee[door] is None or rate > (knee[door] or 0)):
                knee[door] = rate
            if door in MINIMAL_ROWS:
                continue
            if "minimal" in doors:
                m50 = by_rate[rate, "minimal"][2]
                floor.append(
                    f"{rate} cps {door}: added p50 {g50 - u50:.2f} ms, the minimal FastAGI "
                    f"gate's {m50 - u50:.2f} ms: {g50 - m50:+.2f} ms over it"
                )
                if door == "agi" and "minsub" in doors:
                    s50 = by_rate[rate, "minsub"][2]
                    floor[-1] += (
                        f" (the minimal gate through callgate-agi {s50 - u50:.2f} ms: the "
                        f"subroutine {s50 - m50:+.2f} ms, the gate's own {g50 - s50:+.2f} ms)"
                    )
            if rate == 100:
                ok = g50 - u50 <= 1.5 and g99 <= bound
                verdicts.append(
                    f"goal 100 cps {door}: added p50 {g50 - u50:.2f} ms (<= 1.5), p99 {g99:.2f} ms "
                    f"(<= {bound:.2f}): {'met' if ok else 'NOT met'}"
                )
            if rate == 300:
                verdicts.append(
                    f"goal 300 cps {door}: failed {100 * failed:.1f} % (< 1), p50 {g50 / u50:.2f}x "
                    f"ungated (<= 2): {'met' if holds else 'NOT met'}"
                )
    lines += ["", *verdicts]

    def served(mode: str) -> str:
        """Up to which rate fewer than 1 % failed, and the first rate where more did,
        beside the ungated calls' own failures there (the box's limit, not the gate's)."""
        up_to = max((r for r in rates if failed_at(r, mode) < 0.01), default=None)
        said = (
            f"fewer than 1 % failed up to {up_to} cps"
            if up_to
            else "1 % or more failed at every rate tried"
        )
        first = next((r for r in rates if failed_at(r, mode) >= 0.01), None)
        if first is not None:
            said += f"; at {first} cps {100 * failed_at(first, mode):.1f} % failed"
            if mode != "ungated":
                said += f", ungated {100 * failed_at(first, 'ungated'):.1f} %"
        return said

    lines.append(f"ungated: {served('ungated')}")
    for door, rate in knee.items():
        lines.append(
            f"knee {door}: {f'holds up to {rate} cps' if rate else 'fails at every rate tried'} "
            f"(< 1 % failed, p50 <= 2x ungated); {served(door)}"
        )
    if floor:
        lines += ["", *floor]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rates", default="50,100", help="calls per second, comma-separated")
    parser.add_argument("--deadline", default="50ms", help="the gate's [redis] deadline")
    parser.add_argument("--workers", type=int, default=1, help="callgate run --workers N")
    parser.add_argument(
        "--busy-poll",
        help="the gate's redis.busy_poll and agi.busy_poll (default: the config's; 0: off)",
    )
    parser.add_argument(
        "--agi-busy-poll",
        help="the gate's agi.busy_poll alone (after --busy-poll; 0: off)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the SIPp traces and logs")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="RATE",
        help="record the gate with py-spy during each door's row at RATE cps (one of --rates)"
        " and print its top frames",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split each row's calls in this many parts, the modes taking turns",
    )
    parser.add_argument(
        "--minimal",
        action="store_true",
        help="add a row per rate through bench/minimal_agi.py, a minimal FastAGI gate",
    )
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    modes = MINIMAL if args.minimal else MODES
    if args.profile is not None and args.profile not in rates:
        parser.error(f"--profile {args.profile}: not one of --rates {args.rates}")

    polling = {} if args.busy_poll is None else {"busy_poll": args.busy_poll}
    agi_polling = polling if args.agi_busy_poll is None else {"busy_poll": args.agi_busy_poll}
    workdir = Path(tempfile.mkdtemp(prefix="cg-bench-e2e-"))
    redis_process, redis_url = start_redis(workdir)
    port, minimal_port = free_port(), free_port()
    sandbox = AsteriskSandbox(
        DIALPLAN.replace("MINIMAL_PORT", str(minimal_port)),
        extra_files={"callgate.conf": callgate_dialplan(port, fail_mode="DEFER")},
        sip_context="from-sipp",
    )
    ari = (
        f'[ari]\nurl = "{sandbox.ari_url}"\nuser = "{sandbox.ari_user}"\n'
        f'password = "{sandbox.ari_password}"\nreconnect_max = "1s"\n'
    )
    config = write_config(
        workdir / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=SECRET,
        overrides={
            "redis": {"deadline": args.deadline, **polling},
            **({"agi": agi_polling} if agi_polling else {}),
        },
        extra_toml=ari,
    )
    gate = GateProcess(config, workdir / "callgate.log", port, ("--workers", str(args.workers)))
    rows: list[tuple[int, str, int, int, float, float]] = []
    not_200: dict[tuple[int, str], str] = {}  # the calls without a 200, by final response
    rest_lines: list[str] = []
    agi_lines: list[str] = []
    profiles: list[Path] = []
    profile_lines: list[str] = []
    minimal: subprocess.Popen[bytes] | None = None
    # (rate, mode) -> CPU ms per call of: the gate (or the minimal gate), Redis, Asterisk
    cpu: dict[tuple[int, str], tuple[float, float, float]] = {}
    try:
        sandbox.start()
        gate.start()
        if args.minimal:
            minimal = start_minimal(minimal_port, redis_url)
        gate.wait_for_log("ARI connected", within_s=10)
        warm = [f"0613{i:06d}" for i in range(WARMUP_CALLS)]
        place(
            sandbox,
            [prefix + n for prefix in modes.values() for n in warm],
            20,
            workdir / "warmup",
        )
        for index, rate in enumerate(rates):
            # Each mode's calls in --rounds parts, the modes taking turns: drift in the
            # machine's load (it is shared) hits every mode alike.
            pooled: dict[str, list[float]] = {mode: [] for mode in modes}
            answered: Counter[str] = Counter()
            missed: dict[str, Counter[str]] = {mode: Counter() for mode in modes}
            used: dict[str, list[float]] = {mode: [0.0, 0.0, 0.0] for mode in modes}
            share = -(-args.calls // args.rounds)
            for part in range(args.rounds):
                for offset, (mode, prefix) in enumerate(modes.items()):
                    base = (index * len(modes) + offset + 1) * 100_000 + part * share
                    count = min(share, args.calls - part * share)
                    dialled = [f"{prefix}06{base + i:08d}" for i in range(count)]
                    gate_pid = minimal.pid if mode in MINIMAL_ROWS and minimal else gate.pid
                    pids = (gate_pid, redis_process.pid, sandbox.pid)
                    with contextlib.ExitStack() as stack:
                        if rate == args.profile and mode != "ungated" and gate_pid:
                            profiles.append(workdir / f"{mode}-{rate}-{part}.pyspy")
                            stack.enter_context(recording(gate_pid, profiles[-1]))
                        before = [tree_cpu_s(pid) for pid in pids]
                        run = place(sandbox, dialled, rate, workdir / f"{mode}-{rate}-{part}")
                        after = [tree_cpu_s(pid) for pid in pids]
                    for k in range(3):
                        used[mode][k] += after[k] - before[k]
                    answered[mode] += sum(code == 200 for code in run.results.values())
                    missed[mode] += unanswered(run.results, dialled)
                    pooled[mode] += [ms for code, ms in run.final_ms.values() if code == 200]
            for mode in modes:
                per_call = [1000 * seconds / args.calls for seconds in used[mode]]
                gate_ms = 0.0 if mode == "ungated" else per_call[0]
                cpu[rate, mode] = (gate_ms, per_call[1], per_call[2])
                samples = pooled[mode] or [float("nan")]
                not_200[rate, mode] = unanswered_text(missed[mode])
                rows.append(
                    (rate, mode, args.calls, answered[mode], percentile(samples, 50),
                     percentile(samples, 99))
                )  # fmt: skip
        rest_lines = rest_calls_per_decision(sandbox, gate, workdir)
        agi_lines = agi_round_trips_per_decision(sandbox, gate, workdir)
        by_row: dict[str, list[Path]] = {}
        for path in profiles:
            by_row.setdefault(path.name.rsplit("-", 1)[0], []).append(path)
        profile_lines = [
            line for first, *rest in by_row.values() for line in summary(first, more=rest)
        ]
    finally:
        sandbox.stop()
        gate.stop()
        if minimal is not None:
            stop(minimal)
        stop(redis_process)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"post-dial delay (INVITE sent → 200 received), {args.calls} calls per row, "
        f"callgate run --workers {args.workers}"
    )
    print(
        f"{'cps':>5} {'mode':<8} {'calls':>6} {'200':>5} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}"
        "  not 200, by final response"
    )
    for rate, mode, calls, answered, p50, p99 in rows:
        failed = 100 * (calls - answered) / calls
        print(
            f"{rate:>5} {mode:<8} {calls:>6} {answered:>5} {failed:>6.1f}% {p50:>8.2f} {p99:>8.2f}"
            f"  {not_200[rate, mode]}"
        )
    print()
    print("CPU per call (ms), from /proc, during each row")
    print(f"{'cps':>5} {'mode':<8} {'gate':>6} {'Redis':>6} {'Asterisk':>9}")
    for (rate, mode), (gate_ms, redis_ms, asterisk_ms) in cpu.items():
        print(f"{rate:>5} {mode:<8} {gate_ms:>6.2f} {redis_ms:>6.2f} {asterisk_ms:>9.2f}")
    print()
    for line in goal_lines(rows, rates):
        print(line)
    print()
    print("\n".join(rest_lines))
    print()
    print("\n".join(agi_lines))
    if profile_lines:
        print()
        print(f"py-spy, the gate's processes during each door's row at {args.profile} cps:")
        print("\n".join(profile_lines))
    if args.keep:
        print(f"(traces and logs kept in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
