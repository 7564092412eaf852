"""Benchmark: lists at registry scale, in one session against a real Redis.

    python bench/lists.py [--sizes 1000000,10000000] [--regions FR,US] [--decisions 5000]

Starts its own redis-server (default configuration: nothing tuned for callgate) on a free
loopback port. For each region and size it writes a synthetic list file (FR: national
metropolitan 06/07 numbers; US: the registry's "area code,number" lines), imports it with the
same code as ``callgate list import --replace`` and reports:
- bytes per number: Redis ``used_memory`` after the import minus before, over the count;
- import rate: numbers per second from the file (parse, hash, bucket, send, switch);
- decision latency p50/p99 (``Gate.decide``, evaluate only) against this list, and the
  ratio to the same measurement against a 1 000-number list in the same session: two
  gates configured alike (one global block list each, same probes mix), measured in
  interleaved rounds so that drift of the machine hits both alike.
Goals (issue 5): <= 10 bytes per number, >= 300 k numbers/s, lookup ratio <= 1.2.

Then the commands themselves (``--cli-size``, default 2 000 000; 0 skips them), each timed
from its start to its exit as a user runs it (``python -m gate.cli`` with the sample
config, the ``fr`` pack and hashing on, on the same Redis; callgate's modules compiled
first, as an install does): ``list import dnc --replace``
and ``list import red`` (a delta into the empty list), of an E.164 file and of a
national-format file, and ``scrub`` of ``--cli-size / 10`` leads (CSV, national numbers).
The baseline in the same session is ``list count dnc``: a command's fixed cost (start,
config, connect). Goals (issue 12): imports >= 500 k numbers/s, scrub >= 50 k leads/s.
Each row also gives the CPU it cost: the command's (its worker processes included) and
Redis's (``INFO cpu``), per item, and the rate that CPU allows at most with every core of
this machine busy with nothing else (the command's fixed cost included): a goal above
that bound needs less work per item, not more parallelism.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import compile_bytecode, redis_server

from gate.config.loader import Config, parse_config
from gate.core.model import Attempt
from gate.lists.admin import ListAdmin
from gate.lists.formats import Rejected, count_lines, open_lines, read_batches
from gate.service import Gate
from gate.store.client import Store

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 10


# The blocks of metropolitan mobile numbers (the first three of their nine national
# digits): 06 but for 0639 and 0690-0697, Mayotte's, Guadeloupe's, Guyane's, Martinique's
# and Réunion's (numbers of the French plan under their own codes), and 073-079.
FR_MOBILE_BLOCKS = [
    *(f"6{i:02d}" for i in range(100) if i != 39 and not 90 <= i <= 97),
    *(f"7{i:02d}" for i in range(30, 100)),
]


def fr_national(value: int) -> str:
    """The national metropolitan mobile number ``value`` (0 <= value < FR_MOBILES)."""
    block, rest = divmod(value, 10**6)
    return f"0{FR_MOBILE_BLOCKS[block]}{rest:06d}"


FR_MOBILES = len(FR_MOBILE_BLOCKS) * 10**6


def write_file(path: Path, region: str, count: int, rng: random.Random) -> list[str]:
    """A list file of ``count`` distinct numbers; returns a sample of them in E.164."""
    sample: list[str] = []
    picks = rng.sample(range(10**8 if region == "FR" else 8 * 10**9), count)
    with path.open("w") as out:
        for i, value in enumerate(picks):
            if region == "FR":
                line = fr_national(value)
                e164 = "+33" + line[1:]
            else:
                area, rest = 201 + value // 10**7 % 700, 2_000_000 + value % 8_000_000
                line, e164 = f"{area},{rest}", f"+1{area}{rest}"
            out.write(line + "\n")
            if i % max(1, count // 2000) == 0:
                sample.append(e164)
    return sample


def unlisted(region: str, rng: random.Random, count: int) -> list[str]:
    """Numbers outside the synthetic ranges (never listed)."""
    if region == "FR":
        return [f"+339{rng.randrange(10**8):08d}" for _ in range(count)]
    return [f"+1989{rng.randrange(2_000_000, 10**7)}" for _ in range(count)]


def fail(rejected: Rejected) -> None:
    raise SystemExit(f"bench file rejected line {rejected.line_no}: {rejected.why}")


async def import_file(admin: ListAdmin, name: str, path: Path, fmt: str) -> tuple[int, float]:
    """``callgate list import NAME PATH --replace``, minus the progress bar: (count, s)."""
    rule = admin.rule(name)
    total = count_lines(path)
    started = time.perf_counter()
    batches = read_batches(open_lines(path), rule, admin.policy.default_region, fmt)
    summary = await admin.import_batches(
        name, batches, "default", "", fail, mode="replace", expected=total
    )
    return summary.imported, time.perf_counter() - started


async def latencies(gate: Gate, numbers: list[str], rounds: int) -> list[float]:
    now = datetime.now(UTC)
    out = []
    for i in range(rounds):
        number = numbers[i % len(numbers)]
        start = time.perf_counter()
        await gate.decide(Attempt(number, now), record=False, door="cli")
        out.append((time.perf_counter() - start) * 1e6)
    return out


async def compare(
    gate: Gate, numbers: list[str], base: Gate, base_numbers: list[str], decisions: int
) -> tuple[list[float], list[float]]:
    """Latencies of both gates in ``ROUNDS`` interleaved rounds (order alternating)."""
    measured: list[float] = []
    baseline: list[float] = []
    per_round = max(1, decisions // ROUNDS)
    await latencies(gate, numbers, per_round)  # warm-up, not kept
    await latencies(base, base_numbers, per_round)
    for i in range(ROUNDS):
        rng = random.Random(i)
        mine, theirs = (
            rng.sample(numbers, len(numbers)),
            rng.sample(base_numbers, len(base_numbers)),
        )
        if i % 2:
            baseline += await latencies(base, theirs, per_round)
            measured += await latencies(gate, mine, per_round)
        else:
            measured += await latencies(gate, mine, per_round)
            baseline += await latencies(base, theirs, per_round)
    return measured, baseline


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def one_list(region: str, name: str, tmp: str) -> Config:
    """A config with exactly one list: ``name``, a global block list."""
    return parse_config(
        {
            "gate": {"default_region": region},
            "privacy": {"secret": "bench-secret-0123456789"},
            "lists": [{"name": name, "kind": "block", "scope": "global"}],
        },
        "bench",
        Path(tmp),
    )


async def run(url: str, sizes: list[int], regions: list[str], decisions: int) -> None:
    client = aioredis.Redis.from_url(url)
    rng = random.Random(20261128)
    print(
        f"{'list':>14} {'numbers':>11} {'B/number':>9} {'import/s':>10} "
        f"{'p50 µs':>8} {'p99 µs':>8} {'p50 vs 1k':>10} {'p99 vs 1k':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="cg-lists-") as tmp:
        for region in regions:
            store = Store(url, deadline_s=2.0)
            gate = Gate(one_list(region, "big", tmp), store)
            base = Gate(one_list(region, "small", tmp), store)
            fmt = "lines" if region == "FR" else "us-dnc"
            for size in sizes:
                await client.flushall()
                small_path = Path(tmp) / "small.txt"
                small_sample = write_file(small_path, region, 1000, rng)
                await import_file(ListAdmin.of(base), "small", small_path, fmt)
                path = Path(tmp) / f"{region}-{size}.txt"
                sample = write_file(path, region, size, rng)
                before = int((await client.info("memory"))["used_memory"])
                imported, seconds = await import_file(ListAdmin.of(gate), "big", path, fmt)
                after = int((await client.info("memory"))["used_memory"])
                path.unlink()
                # Same mix for both: as many listed samples as unlisted probes.
                probes = unlisted(region, rng, decisions // 2)
                listed = rng.sample(sample, min(len(sample), len(small_sample)))
                measured, baseline = await compare(
                    gate, listed + probes, base, small_sample[: len(listed)] + probes, decisions
                )
                print(
                    f"{region + ' ' + format(size, ','):>14} {imported:>11,} "
                    f"{(after - before) / imported:>9.2f} {imported / seconds:>10,.0f} "
                    f"{pct(measured, 50):>8.0f} {pct(measured, 99):>8.0f} "
                    f"{pct(measured, 50) / pct(baseline, 50):>9.2f}x "
                    f"{pct(measured, 99) / pct(baseline, 99):>9.2f}x",
                    flush=True,
                )
            await store.close()
    await client.aclose()


def cli_config(url: str, tmp: Path) -> Path:
    """The sample config (fr pack, hashing on) on the bench's Redis, its state in ``tmp``."""
    text = (ROOT / "config" / "callgate.toml").read_text()
    text = text.replace('state_dir = "../var"', f'state_dir = "{tmp}"', 1)
    text = text.replace("[redis]\n", f'[redis]\nurl = "{url}"\n', 1)
    text = text.replace(
        'packs = ["fr"]', f'packs = ["fr"]\npacks_dir = "{ROOT / "config" / "packs"}"', 1
    )
    path = tmp / "callgate.toml"
    path.write_text(text)
    return path


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children waited for so far, their own
    children waited for included (a command's worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def redis_cpu_s(client: aioredis.Redis) -> float:
    """Redis's own CPU seconds (user + system) since it started (``INFO cpu``)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def timed(config: Path, *args: str) -> float:
    """Seconds from the command's start to its exit (which must be 0)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gate.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"callgate {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return seconds


async def cli_rows(url: str, size: int) -> None:
    """The commands, start to exit, each after a FLUSHALL (see the module docstring)."""
    client = aioredis.Redis.from_url(url)
    rng = random.Random(20261130)
    with tempfile.TemporaryDirectory(prefix="cg-cli-") as name:
        tmp = Path(name)
        config = cli_config(url, tmp)
        picks = rng.sample(range(FR_MOBILES), size)
        national = [fr_national(v) for v in picks]
        files = {"E.164": tmp / "e164.txt", "national": tmp / "national.txt"}
        files["E.164"].write_text("".join(f"+33{n[1:]}\n" for n in national))
        files["national"].write_text("".join(f"{n}\n" for n in national))
        leads = tmp / "leads.csv"
        leads.write_text(
            "id,phone\n" + "".join(f"{i},{n}\n" for i, n in enumerate(national[: size // 10]))
        )
        await client.flushall()
        floor = min(timed(config, "list", "count", "dnc") for _ in range(3))
        print(
            f"\ncommands, start to exit ({size:,} numbers; baseline `list count dnc` {floor:.2f} s)"
        )
        cores = os.cpu_count() or 1
        print(
            f"{'command':>44} {'wall s':>8} {'rate /s':>10} {'vs goal':>8}"
            f" {'CPU s: cmd':>11} {'Redis':>6} {'µs/item':>8} {f'bound on {cores} cores':>18}"
        )
        rows: list[tuple[str, list[str], int, int]] = []
        for fmt, path in files.items():
            rows.append(
                (
                    f"list import dnc --replace ({fmt})",
                    ["list", "import", "dnc", str(path), "--replace"],
                    size,
                    500_000,
                )
            )
            rows.append(
                (
                    f"list import red, delta ({fmt})",
                    ["list", "import", "red", str(path)],
                    size,
                    500_000,
                )
            )
        rows.append(
            (
                "scrub, fr pack (leads)",
                [
                    "scrub",
                    str(leads),
                    "--column",
                    "phone",
                    "--caller-id",
                    "0162000000",
                    "-o",
                    str(tmp / "out.csv"),
                ],
                size // 10,
                50_000,
            )
        )
        for label, args, count, goal in rows:
            await client.flushall()
            command_before, redis_before = children_cpu_s(), await redis_cpu_s(client)
            seconds = timed(config, *args)
            command_s = children_cpu_s() - command_before
            redis_s = await redis_cpu_s(client) - redis_before
            per_item_us = (command_s + redis_s) / count * 1e6
            # Were every core busy with this command and its Redis only (the command's
            # fixed cost included), at most this many items per second.
            bound = cores * 1e6 / per_item_us
            print(
                f"{label:>44} {seconds:>8.2f} {count / seconds:>10,.0f} "
                f"{count / seconds / goal:>7.2f}x {command_s:>11.2f} {redis_s:>6.2f}"
                f" {per_item_us:>8.1f} {bound:>18,.0f}",
                flush=True,
            )
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--regions", default="FR,US")
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--cli-size", type=int, default=2_000_000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    regions = [r.strip().upper() for r in args.regions.split(",")]
    with redis_server() as url:
        if sizes != [0]:
            asyncio.run(run(url, sizes, regions, args.decisions))
        if args.cli_size:
            compile_bytecode()
            asyncio.run(cli_rows(url, args.cli_size))


if __name__ == "__main__":
    main()
