"""A command whose number-hashing keying (secret, ``privacy.hash_numbers``) is not the one the
data in Redis was written with is refused in one line, before it reads or writes anything:
with another secret it would read and write other keys, silently (an admin's opt-out never
seen by the gate, which runs with the service's secret; the lists empty to a check). The
first command that writes data stamps its keying's fingerprint; read-only commands only
compare. Real ``python -m gate.cli`` processes on a real Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.cli.test_cli import NUMBER, run_subprocess, sample_config
from tests.conftest import TEST_SECRET, spawned_redis

OTHER_SECRET = "another-secret-0123456789abcdef"
KEYING_KEY = "callgate:{keying}"


def configs(tmp_path: Path, redis_url: str) -> dict[str, Path]:
    """The service's config, one with another secret, one that stores numbers plain."""
    made = {
        "service": sample_config(redis_url),
        "other": sample_config(
            redis_url, privacy={"secret": OTHER_SECRET}, agi={"port": 0}, http={"port": 0}
        ),
        "plain": sample_config(redis_url, privacy={"hash_numbers": False}),
    }
    paths = {}
    for name, text in made.items():
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(text, encoding="utf-8")
    return paths


def callgate(tmp_path: Path, config: Path, *args: str) -> tuple[int, list[str], str]:
    done = run_subprocess(tmp_path, "--config", str(config), *args)
    return done.returncode, done.stderr.strip().splitlines(), done.stdout


def test_a_command_with_another_secret_is_refused_and_changes_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """An admin's list add, a check, and the gate itself (``run``), each with a secret
    other than the one the red list was written with: refused in one line that says
    which keying differs and what to do; nothing written."""
    paths = configs(tmp_path, redis_url)
    status, _, out = callgate(tmp_path, paths["service"], "list", "add", "red", NUMBER)
    assert (0, "1 added") == (status, out.split(",")[0]), out
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(client.keys("*"))
        for args in (("list", "add", "red", "+33698765432"), ("check", NUMBER), ("run",)):
            status, lines, out = callgate(tmp_path, paths["other"], *args)
            assert (2, 1, "") == (status, len(lines), out), lines
            assert lines[0].startswith(
                "callgate: error: privacy: the data in Redis was written with another keying "
                "(numbers are hashed with another secret: callgate:{keying} holds "
            ), lines[0]
            assert "this one is from privacy.secret); run with the gate's secret" in lines[0]
            assert lines[0].endswith(f"delete {KEYING_KEY}")
        status, lines, _ = callgate(tmp_path, paths["plain"], "list", "add", "red", NUMBER)
        assert (2, True) == (status, "(numbers are stored hashed: " in lines[0]), lines
        assert keys == sorted(client.keys("*"))  # nothing written by the refused ones
        # The service's own keying still reads its data.
        status, _, out = callgate(tmp_path, paths["service"], "check", NUMBER)
        assert (3, "BLOCK listed:red") == (status, out.split(" +")[0]), out
    finally:
        client.close()


def test_read_only_commands_compare_but_do_not_stamp(tmp_path: Path, redis_url: str) -> None:
    """A check (or a list count) on a store nobody wrote yet leaves no fingerprint: the
    first writer's keying is the data's, whatever a reader had."""
    paths = configs(tmp_path, redis_url)
    assert 0 == callgate(tmp_path, paths["other"], "check", NUMBER)[0]
    assert 0 == callgate(tmp_path, paths["other"], "list", "count", "red")[0]
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(KEYING_KEY) is None
        status, lines, _ = callgate(tmp_path, paths["service"], "list", "add", "customers", NUMBER)
        assert 0 == status, lines
        stamped = client.get(KEYING_KEY)
        assert stamped is not None
        assert (16, False) == (len(stamped), TEST_SECRET.encode() in stamped)
        # What to do when the data is new and the other keying is the right one.
        client.delete(KEYING_KEY)
        assert 0 == callgate(tmp_path, paths["other"], "list", "add", "red", NUMBER)[0]
        assert stamped != client.get(KEYING_KEY)
    finally:
        client.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_gate_started_before_its_redis_stops_when_redis_answers_with_another_keying(
    tmp_path: Path, workers: int
) -> None:
    """``run`` started while its Redis is down serves (the fail mode); when Redis answers,
    holding data the service's secret wrote, the gate with another secret compares, stops
    by itself and exits 2 with the one-line error; it wrote nothing. (Redis is reached
    through a symlink made once it is ready, so the gate cannot reach it earlier.)"""
    (tmp_path / "redis").mkdir()
    link = tmp_path / "gate.sock"
    other = tmp_path / "other.toml"
    other.write_text(
        sample_config(
            f"unix://{link}", privacy={"secret": OTHER_SECRET}, agi={"port": 0}, http={"port": 0}
        ),
        encoding="utf-8",
    )
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    with spawned_redis(tmp_path / "redis") as (url, _), log.open("wb") as sink:
        service = tmp_path / "service.toml"
        service.write_text(sample_config(url), encoding="utf-8")
        assert 0 == callgate(tmp_path, service, "list", "add", "red", NUMBER)[0]
        client = redis.Redis.from_url(url)
        keys = sorted(client.keys("*"))
        process = subprocess.Popen(
            [sys.executable, "-m", "gate.cli", "--config", str(other), "run", "--workers",
             str(workers)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30.0
            started = "FastAGI on" if workers == 1 else f"{workers} workers (pids"
            while started not in log.read_text(errors="replace"):
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
            link.symlink_to(url.removeprefix("unix://"))
            status = process.wait(30.0)
            lines = log.read_text(errors="replace").strip().splitlines()
            assert (2, True) == (status, lines[-1].startswith(
                "callgate: error: privacy: the data in Redis was written with another keying"
            )), lines  # fmt: skip
            assert keys == sorted(client.keys("*"))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10.0)
            client.close()
