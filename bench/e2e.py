"""Benchmark: post-dial delay through a real Asterisk, with the gate and without, in one run.

    python bench/e2e.py [--calls 500] [--rates 50,100] [--deadline 50ms] [--keep]

Needs root and the Asterisk chroot (``make sandbox``) and Debian's sipp. Starts, all on
loopback: a redis-server (unix socket), ``callgate run`` with the sample config
(lists, 4-per-30d cap, the given Redis deadline), and one Asterisk whose SIP context sends
``0…`` numbers through ``GoSub(callgate-agi,…)`` (dialplan/callgate.conf) and ``9…``
numbers through the same dialplan without it. For each rate, SIPp places ``--calls``
calls ungated, then as many gated (distinct numbers, so the cap never bites), and
reports the INVITE→200 time (post-dial delay) p50/p99 and the ratio
gated/ungated. Absolute numbers depend on the machine (Asterisk, SIPp, Redis and the gate
share its cores); compare the ratios within one run.

The delay comes from SIPp's ``-trace_msg`` timestamps (µs): its own ``rtd``/``-trace_rtt``
counts in whole milliseconds on a ~4 ms tick, too coarse for a loopback PBX.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from gateproc import GateProcess, callgate_dialplan, write_config  # noqa: E402
from sandbox import AsteriskSandbox, free_port  # noqa: E402
from sippuac import SippRun, run_sipp  # noqa: E402

from gate.embedded import find_redis_server  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"
WARMUP_CALLS = 20

DIALPLAN = """
#include callgate.conf

[from-sipp]
exten => _0X.,1,Goto(gated,${EXTEN},1)
exten => _9X.,1,Goto(ungated,${EXTEN:1},1)

[gated]
exten => _X.,1,GoSub(callgate-agi,s,1(${EXTEN},default,bench,campaign))
 same => n,Goto(reached,${EXTEN},1)

[ungated]
exten => _X.,1,Goto(reached,${EXTEN},1)

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


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(10)


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rates", default="50,100", help="calls per second, comma-separated")
    parser.add_argument("--deadline", default="50ms", help="the gate's [redis] deadline")
    parser.add_argument("--keep", action="store_true", help="keep the SIPp traces and logs")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="cg-bench-e2e-"))
    redis_process, redis_url = start_redis(workdir)
    port = free_port()
    config = write_config(
        workdir / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=SECRET,
        overrides={"redis": {"deadline": args.deadline}},
    )
    gate = GateProcess(config, workdir / "callgate.log", port)
    sandbox = AsteriskSandbox(
        DIALPLAN,
        extra_files={"callgate.conf": callgate_dialplan(port, fail_mode="DEFER")},
        sip_context="from-sipp",
    )
    rows: list[tuple[int, str, int, int, float, float]] = []
    try:
        gate.start()
        sandbox.start()
        warm = [f"0613{i:06d}" for i in range(WARMUP_CALLS)]
        place(sandbox, warm + ["9" + n for n in warm], 20, workdir / "warmup")
        for index, rate in enumerate(rates):
            base = (index + 1) * 100_000
            numbers = [f"06{base + i:08d}" for i in range(args.calls)]
            for mode, dialled in (("ungated", ["9" + n for n in numbers]), ("gated", numbers)):
                run = place(sandbox, dialled, rate, workdir / f"{mode}-{rate}")
                answered = sum(code == 200 for code in run.results.values())
                samples = [ms for code, ms in run.final_ms.values() if code == 200]
                samples = samples or [float("nan")]
                rows.append(
                    (rate, mode, len(dialled), answered, percentile(samples, 50),
                     percentile(samples, 99))
                )  # fmt: skip
    finally:
        sandbox.stop()
        gate.stop()
        stop(redis_process)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"post-dial delay (INVITE sent → 200 received), {args.calls} calls per row")
    print(f"{'cps':>5} {'mode':<8} {'calls':>6} {'200':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for rate, mode, calls, answered, p50, p99 in rows:
        print(f"{rate:>5} {mode:<8} {calls:>6} {answered:>5} {p50:>8.2f} {p99:>8.2f}")
    print()
    print(f"{'cps':>5} {'p50 gated/ungated':>18} {'p99 gated/ungated':>18}")
    by_rate = {(rate, mode): (p50, p99) for rate, mode, _, _, p50, p99 in rows}
    for rate in rates:
        (u50, u99), (g50, g99) = by_rate[rate, "ungated"], by_rate[rate, "gated"]
        print(f"{rate:>5} {g50 / u50:>17.2f}x {g99 / u99:>17.2f}x")
    if args.keep:
        print(f"(traces and logs kept in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
