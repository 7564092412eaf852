"""With ``privacy.hash_numbers = true`` no callee's number is kept in the clear anywhere:
not in Redis (every key, value and stream entry), not in the log, not in the metrics, not
in the data directory (the AOF, Redis's own log); and that directory is private.

One real ``callgate run`` (the sample config as ``callgate init`` writes it, an embedded
Redis) serves FastAGI checks, opt-outs (one with a malformed number, which is logged),
a check whose tenant field holds a number, API checks and list changes, a CLI list change;
then everything it wrote is searched for the digits of the numbers it was given.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.agi.test_server import agi_call

DEADLINE_S = 30.0
# The callees, and the core digits that give each away in any spelling (0688888888,
# +33688888888, 33688888888, 06 88 88 88 88 all contain "688888888" once separators go).
NUMBERS = {
    "0688888888": "688888888",  # FastAGI check, recorded; also in the channel name
    "069999999": "69999999",  # a malformed opt-out (9 digits): logged as refused
    "0677777777": "677777777",  # FastAGI opt-out
    "0655555555": "655555555",  # a number typed into the tenant field
    "0644444444": "644444444",  # API check, recorded, and API list add
    "0633333333": "633333333",  # CLI list add
}
CHANNEL = "Local/0688888888@outbound-gated-0000002a;1"


@pytest.fixture
def gate_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cgp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gate.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
        env=env,
    )


def redis_dump(sock: Path) -> bytes:
    """Every key, and every value of every type, of the embedded Redis."""
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
    out: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            out.append(key)
            kind = client.type(key)
            value: Any
            if kind == b"string":
                value = client.get(key)
            elif kind == b"hash":
                value = client.hgetall(key)
            elif kind == b"set":
                value = client.smembers(key)
            elif kind == b"zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"list":
                value = client.lrange(key, 0, -1)
            elif kind == b"stream":
                value = client.xrange(key)
            else:
                value = kind
            out.append(repr(value).encode())
    finally:
        client.close()
    return b"\n".join(out)


def found(data: bytes) -> list[str]:
    """The test numbers whose digits occur in ``data`` (spelt with or without separators)."""
    squeezed = re.sub(rb"[ .\-]", b"", data)
    return [number for number, core in NUMBERS.items() if core.encode() in squeezed]


async def drive(agi_port: int, http_port: int) -> str:
    """The requests that hand the gate every test number; returns /metrics."""
    await agi_call(agi_port, "check?tenant=default", extension="0688888888", channel=CHANNEL)
    await agi_call(agi_port, "optout?number=069999999", channel=CHANNEL)
    await agi_call(agi_port, "optout?number=0677777777", channel=CHANNEL)
    await agi_call(agi_port, "check?tenant=0655555555", extension="0612345678")
    base = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE_S)) as http:
        for body in (
            {"number": "0644444444", "record": True},
            {"number": "0644444444", "tenant": "0655555555"},
        ):
            async with http.post(base + "/v1/check", json=body) as response:
                await response.read()
        async with http.post(base + "/v1/lists/red/add", json={"numbers": ["0644444444"]}) as r:
            await r.read()
        async with http.get(base + "/metrics") as response:
            return await response.text()


def test_no_raw_number_is_kept_anywhere(gate_dir: Path) -> None:
    """Redis, the log, /metrics and the data directory hold none of the numbers; the data
    directory is 0700 and every file in it 0600."""
    etc, state = gate_dir / "etc", gate_dir / "state"
    subprocess.run(
        [sys.executable, "-m", "gate.cli", "init", str(etc), "--state-dir", str(state)],
        check=True,
        capture_output=True,
        timeout=DEADLINE_S,
    )
    config = etc / "callgate.toml"
    config.write_text(
        config.read_text().replace("port = 4573", "port = 0").replace("port = 9473", "port = 0")
    )
    log_path = gate_dir / "callgate.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gate.cli", "--config", str(config), "run"],
            stderr=log,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        try:
            ports: dict[str, int] = {}
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and len(ports) < 2:
                text = log_path.read_text()
                if m := re.search(r"FastAGI on agi://127\.0\.0\.1:(\d+)/check", text):
                    ports["agi"] = int(m[1])
                if m := re.search(r"HTTP on http://127\.0\.0\.1:(\d+)", text):
                    ports["http"] = int(m[1])
                time.sleep(0.05)
            assert 2 == len(ports), log_path.read_text()
            metrics = asyncio.run(drive(ports["agi"], ports["http"]))
            assert 0 == cli(config, "list", "add", "red", "0633333333").returncode
            time.sleep(1.5)  # the AOF is fsynced every second
            in_redis = found(redis_dump(state / "redis" / "redis.sock"))
            process.send_signal(signal.SIGTERM)
            assert 0 == process.wait(DEADLINE_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    on_disk = {
        str(path.relative_to(state)): found(path.read_bytes())
        for path in state.rglob("*")
        if path.is_file()
    }
    modes = {
        str(path.relative_to(state)): stat.S_IMODE(path.stat().st_mode)
        for path in (state, *state.rglob("*"))
        if not path.is_socket()
    }
    leaks = {
        "redis": in_redis,
        "log": found(log_path.read_bytes()),
        "metrics": found(metrics.encode()),
        "files": {name: numbers for name, numbers in on_disk.items() if numbers},
        "modes": {
            name: oct(mode)
            for name, mode in modes.items()
            if mode != (0o700 if (state / name).is_dir() else 0o600)
        },
    }
    assert {"redis": [], "log": [], "metrics": [], "files": {}, "modes": {}} == leaks
