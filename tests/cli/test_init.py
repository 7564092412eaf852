"""``callgate init`` and ``callgate config check``: a working config, nothing overwritten,
no side effects unless asked (gate/config/files.py, gate/cli.py)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from gate.config.files import PACKS_DIR, sample_text
from gate.config.loader import load_config
from tests.cli.test_cli import CLOSED_PORT_URL, TEST_SECRET, Run, sample_config
from tests.conftest import spawned_redis

RUN_START_S = 20.0


def test_init_writes_a_config_the_dialplan_and_a_private_env_file(cli: Run, tmp_path: Path) -> None:
    """init DIR: callgate.toml (state in /var/lib/callgate, the shipped packs), the dialplan
    include as shipped, and callgate.env readable by its owner only."""
    target = tmp_path / "etc"
    status, out, _ = cli("init", str(target))
    config = load_config(target / "callgate.toml", create_secret=False)
    assert (0, ["wrote"] * 3) == (status, [line.split()[0] for line in out.splitlines()[:3]])
    assert (Path("/var/lib/callgate"), PACKS_DIR, Path("/var/lib/callgate/redis")) == (
        config.state_dir,
        config.packs_dir,
        config.redis.data_dir,
    )
    assert sample_text("callgate.conf") == (target / "callgate.conf").read_text()
    assert 0o600 == (target / "callgate.env").stat().st_mode & 0o777


def test_init_never_overwrites_a_file(cli: Run, tmp_path: Path) -> None:
    """A second init keeps every file as it is, an edited one included."""
    target = tmp_path / "etc"
    cli("init", str(target))
    edited = target / "callgate.toml"
    edited.write_text("# mine\n", encoding="utf-8")
    status, out, _ = cli("init", str(target))
    assert (0, ["kept"] * 3) == (status, [line.split()[0] for line in out.splitlines()[:3]])
    assert "# mine\n" == edited.read_text(encoding="utf-8")


def test_init_can_copy_the_packs_to_edit_them(cli: Run, tmp_path: Path) -> None:
    """--copy-packs: DIR/packs holds the shipped packs and the config reads them there."""
    target = tmp_path / "etc"
    cli("init", str(target), "--copy-packs", "--state-dir", str(tmp_path / "state"))
    config = load_config(target / "callgate.toml", create_secret=False)
    assert (target / "packs", tmp_path / "state") == (config.packs_dir, config.state_dir)
    assert sorted(p.name for p in PACKS_DIR.glob("*.toml")) == sorted(
        p.name for p in (target / "packs").iterdir()
    )


def test_config_check_writes_nothing(cli: Run, tmp_path: Path) -> None:
    """config check on a fresh init: OK, says the secret file will be created, creates
    nothing (no secret, no state directory)."""
    state = tmp_path / "state"
    cli("init", str(tmp_path / "etc"), "--state-dir", str(state))
    status, out, err = cli("config", "check", config=tmp_path / "etc" / "callgate.toml")
    assert (0, "") == (status, err)
    assert (
        f"  numbers hashed, secret {state}/callgate.secret (does not exist yet: created on "
        "first use)" in out.splitlines()
    )
    assert not state.exists()


def test_config_check_connect_reports_an_unreachable_redis(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--connect tests the connection: an unreachable Redis is exit 2 with one line."""
    monkeypatch.setenv("CALLGATE_SECRET", TEST_SECRET)
    path = tmp_path / "callgate.toml"
    text = (Path(__file__).parents[2] / "config" / "callgate.toml").read_text()
    path.write_text(
        text.replace('# url = "redis://127.0.0.1:6379/0"', f'url = "{CLOSED_PORT_URL}"')
    )
    plain = cli("config", "check", config=path)
    status, _, err = cli("config", "check", "--connect", config=path)
    assert 0 == plain[0]
    assert (2, 1) == (status, len(err.splitlines()))
    assert err.startswith("callgate: error: Redis at redis://127.0.0.1:1 is unreachable")


def test_config_check_connect_says_redis_answers(cli: Run, config_file: Path) -> None:
    """--connect against the test's Redis: one more line saying it answers."""
    status, out, _ = cli("config", "check", "--connect", config=config_file)
    assert (0, True) == (status, out.splitlines()[-1].endswith(" answers"))


def test_config_check_connect_warns_of_a_redis_that_evicts_keys(cli: Run, tmp_path: Path) -> None:
    """--connect against a Redis with maxmemory-policy allkeys-lru (it would delete list
    entries at maxmemory: opted-out numbers called) warns, naming the fix."""
    with spawned_redis(tmp_path) as (url, _):
        with redis.Redis.from_url(url) as client:
            client.config_set("maxmemory-policy", "allkeys-lru")
        path = tmp_path / "callgate.toml"
        path.write_text(sample_config(url), encoding="utf-8")
        status, out, _ = cli("config", "check", "--connect", config=path)
    assert 0 == status
    assert (
        f"  warning: Redis at {url} has maxmemory-policy allkeys-lru: at maxmemory it "
        "deletes keys, so opted-out numbers could be called; set maxmemory-policy noeviction"
    ) == out.splitlines()[-1]


def test_run_warns_at_start_of_a_redis_that_evicts_keys(tmp_path: Path) -> None:
    """``callgate run`` on a Redis with maxmemory-policy allkeys-lru logs the same warning
    at start, before it says it serves (and serves on: a warning, not a refusal)."""
    with spawned_redis(tmp_path) as (url, _):
        with redis.Redis.from_url(url) as client:
            client.config_set("maxmemory-policy", "allkeys-lru")
        path = tmp_path / "callgate.toml"
        path.write_text(sample_config(url, agi={"port": 0}, http={"port": 0}), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "gate.cli", "--config", str(path), "run"]
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        try:
            assert process.stderr is not None
            deadline = time.monotonic() + RUN_START_S
            while time.monotonic() < deadline and process.poll() is None:
                lines.append(process.stderr.readline())
                if "FastAGI on agi://" in lines[-1]:
                    break
            process.send_signal(signal.SIGTERM)
            code = process.wait(RUN_START_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            if process.stderr is not None:
                process.stderr.close()
    warnings = [line.split(" WARNING callgate: ", 1)[-1].rstrip() for line in lines]
    expected = (
        f"Redis at {url} has maxmemory-policy allkeys-lru: at maxmemory it deletes keys, "
        "so opted-out numbers could be called; set maxmemory-policy noeviction"
    )
    assert (0, True, True) == (
        code,
        expected in warnings,
        "FastAGI on agi://" in lines[-1],
    ), "".join(lines)


def test_init_into_a_file_is_one_error_line_not_files_kept(cli: Run, tmp_path: Path) -> None:
    """``init DIR`` where DIR is a file said "kept (exists) DIR/callgate.toml" three times
    and exit 0 (mkdir's "file exists" taken for the config's), with nothing written: now
    one line saying DIR is no directory, exit 2."""
    target = tmp_path / "callgate.toml"
    target.write_text("# mine\n", encoding="utf-8")
    status, out, err = cli("init", str(target))
    assert (2, "") == (status, out)
    assert f"callgate: error: {target}: cannot create the directory: not a directory\n" == err
    assert "# mine\n" == target.read_text(encoding="utf-8")


def _files_of_4k() -> None:
    """In a child before exec: files of 4 kB at most, a larger write fails (EFBIG), as on
    a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_init_on_a_full_disk_writes_no_half_config_that_a_later_init_would_keep(
    cli: Run, tmp_path: Path
) -> None:
    """A config the disk could not hold was an OSError traceback, leaving the first 4 kB
    of callgate.toml, which the next init then "kept (exists)": now one line, exit 2, no
    file; the next init writes it whole."""
    target = tmp_path / "etc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "gate.cli", "init", str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        preexec_fn=_files_of_4k,
    )
    assert (2, "") == (done.returncode, done.stdout)
    assert (
        f"callgate: error: {target}/callgate.toml: cannot write: File too large; nothing was "
        "written there\n"
    ) == done.stderr
    assert [] == sorted(p.name for p in target.iterdir())
    status, out, _ = cli("init", str(target))
    assert (0, ["wrote"] * 3) == (status, [line.split()[0] for line in out.splitlines()[:3]])
    load_config(target / "callgate.toml", create_secret=False)
