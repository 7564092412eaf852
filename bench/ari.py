"""Benchmark: one ARI REST request over the event WebSocket, against the same over HTTP.

    python bench/ari.py [--n 4000] [--rounds 4]

Needs root and the Asterisk chroot (``make sandbox``). Starts one Asterisk on loopback and
callgate's ARI client twice, each with its event WebSocket open (as the Stasis door runs
it): one sends its REST requests over that WebSocket (what Asterisk 22.10 allows), the
other over HTTP (``rest_over_websocket=False``, as before). A call is parked in a third
Stasis application (its events go to neither client); each client sends ``n`` requests ``POST
/channels/{id}/variable`` on it (a request on a channel, like the door's continue) one at
a time, the two taking turns in ``--rounds`` parts, and reports
the p50/p99 latency per request, the CPU per request of this process (the client's side)
and of Asterisk, and the ratios HTTP / WebSocket. Absolute numbers depend on the machine;
compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e import tree_cpu_s  # noqa: E402
from sandbox import AsteriskSandbox  # noqa: E402

from gate.stasis.ari import AriClient, AriError  # noqa: E402

MODES = ("websocket", "http")


async def drain(events: AsyncIterator[dict[str, Any]]) -> None:
    """Read the event stream (over the WebSocket, the REST answers arrive through it)."""
    async for _ in events:
        pass


async def measure(sandbox: AsteriskSandbox, n: int, rounds: int) -> dict[str, dict[str, float]]:
    clients = {
        mode: AriClient(
            sandbox.ari_url,
            sandbox.ari_user,
            sandbox.ari_password,
            f"bench-{mode}",
            rest_over_websocket=mode == "websocket",
        )
        for mode in MODES
    }
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    own: dict[str, float] = dict.fromkeys(MODES, 0.0)
    asterisk: dict[str, float] = dict.fromkeys(MODES, 0.0)
    park = AriClient(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password, "bench-park")
    async with (
        clients["websocket"],
        clients["http"],
        park,
        clients["websocket"].event_stream() as over_ws,
        clients["http"].event_stream() as over_http,
        park.event_stream() as parked,
    ):
        streams = (over_ws, over_http, parked)
        readers = [asyncio.create_task(drain(stream)) for stream in streams]
        if not clients["websocket"].rest_over_websocket:
            raise SystemExit("this Asterisk does not take REST requests over the WebSocket")
        channel = await sandbox.originate_local("s", "parked")
        for _ in range(100):  # bounded: 5 s for the call to enter Stasis(bench-park)
            try:
                await park.set_variable(channel, "BENCH", "parked")
                break
            except AriError:
                await asyncio.sleep(0.05)
        for client in clients.values():  # warm up: connections, caches
            for _ in range(200):
                await client.set_variable(channel, "BENCH", "warm")
        share = n // rounds
        for part in range(rounds):
            for mode in MODES if part % 2 == 0 else MODES[::-1]:
                client = clients[mode]
                cpu, ast = time.process_time(), tree_cpu_s(sandbox.pid)
                for _ in range(share):
                    started = time.perf_counter()
                    await client.set_variable(channel, "BENCH", mode)
                    latencies[mode].append((time.perf_counter() - started) * 1e6)
                own[mode] += time.process_time() - cpu
                asterisk[mode] += tree_cpu_s(sandbox.pid) - ast
        for reader in readers:
            reader.cancel()
    return {
        mode: {
            "p50": statistics.median(latencies[mode]),
            "p99": statistics.quantiles(latencies[mode], n=100)[98],
            "own": 1e6 * own[mode] / len(latencies[mode]),
            "asterisk": 1e6 * asterisk[mode] / len(latencies[mode]),
        }
        for mode in MODES
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="requests per mode")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    sandbox = AsteriskSandbox(
        "[parked]\nexten => s,1,Answer()\n same => n,Stasis(bench-park)\n"
        "[answerer]\nexten => s,1,Answer()\n same => n,Wait(600)\n"
    )
    sandbox.start()
    try:
        figures = asyncio.run(measure(sandbox, args.n, args.rounds))
    finally:
        sandbox.stop()
    print(
        f"ARI POST /channels/{{id}}/variable, {args.n} requests per mode, one at a time, "
        f"{args.rounds} parts"
    )
    header = f"{'REST over':<10}{'p50 µs':>8}{'p99 µs':>8}{'client CPU µs':>15}"
    print(f"{header}{'Asterisk CPU µs':>17}")
    for mode, f in figures.items():
        print(f"{mode:<10}{f['p50']:>8.0f}{f['p99']:>8.0f}{f['own']:>15.0f}{f['asterisk']:>17.0f}")
    ws, http = figures["websocket"], figures["http"]
    print(
        f"HTTP / WebSocket: p50 {http['p50'] / ws['p50']:.2f}x, client CPU "
        f"{http['own'] / ws['own']:.2f}x, Asterisk CPU {http['asterisk'] / ws['asterisk']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
