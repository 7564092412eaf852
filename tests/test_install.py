"""Installing callgate as an admin would: the wheel, a fresh venv outside the checkout,
``callgate init``, and a gate that answers; the systemd unit; the Makefile; the
Containerfile's edits.

The wheel is built from a copy of this tree, offline (``--no-build-isolation``: the test
venv has setuptools and wheel). The fresh venv gets callgate from the wheel only; its
dependencies come from the test venv's site-packages through a ``.pth`` line (no network),
and ``pip check`` proves the wheel declares them all.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gate.config.files import init_config
from gate.config.loader import load_config
from tests.test_run import agi_check

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 120.0
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def run(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """callgate's wheel, built from a copy of this tree."""
    source = tmp_path_factory.mktemp("src") / "callgate"
    shutil.copytree(ROOT, source, symlinks=True, ignore=IGNORED)
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        "dist",
        ".",
        cwd=source,
    )
    assert 0 == built.returncode, built.stderr
    (found,) = (source / "dist").glob("callgate-*.whl")
    return found


def test_the_wheel_carries_the_packs_samples_lua_and_console(wheel: Path) -> None:
    """Every pack of config/packs, the sample config, the dialplan include, the unit, every
    Lua script and every file of the console's page are in the wheel, as the files of
    this tree (the console needs nothing from elsewhere)."""
    expected = {
        **{f"gate/config/packs/{p.name}": p for p in (ROOT / "config" / "packs").glob("*.toml")},
        "gate/config/sample/callgate.toml": ROOT / "config" / "callgate.toml",
        "gate/config/sample/callgate.conf": ROOT / "dialplan" / "callgate.conf",
        "gate/config/sample/callgate.service": ROOT / "config" / "callgate.service",
        **{f"gate/store/lua/{p.name}": p for p in (ROOT / "gate" / "store" / "lua").glob("*.lua")},
        **{f"gate/ops/static/{p.name}": p for p in (ROOT / "gate" / "ops" / "static").iterdir()},
    }
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in expected if name in archive.namelist()}
    assert {name: path.read_bytes() for name, path in expected.items()} == shipped


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with callgate installed from the wheel."""
    venv = tmp_path_factory.mktemp("venv") / "callgate"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    assert 0 == made.returncode, made.stderr
    installed = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        wheel,
        cwd=venv.parent,
    )
    assert 0 == installed.returncode, installed.stderr
    purelib = run(
        venv / "bin" / "python",
        "-c",
        "import sysconfig; print(sysconfig.get_path('purelib'))",
        cwd=venv.parent,
    ).stdout.strip()
    # The dependencies, from the test venv (a plain path: its own .pth files, such as the
    # editable install of this checkout, are not run).
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


@pytest.fixture
def admin_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CALLGATE_", "STATE_"))}


def test_the_installed_package_is_the_wheels_and_its_dependencies_are_declared(
    fresh_venv: Path, tmp_path: Path
) -> None:
    """gate imports from the fresh venv (not this checkout); pip check finds every
    dependency the wheel declares."""
    where = run(
        fresh_venv / "bin" / "python", "-c", "import gate; print(gate.__file__)", cwd=tmp_path
    )
    checked = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        fresh_venv / "bin" / "python",
        "check",
        cwd=tmp_path,
    )
    assert (True, 0) == (where.stdout.startswith(str(fresh_venv)), checked.returncode), (
        checked.stdout
    )


@pytest.fixture
def gate_dir() -> Iterator[Path]:
    """A short directory under /tmp (the embedded Redis's unix socket path is bounded)."""
    path = Path(tempfile.mkdtemp(prefix="cgi", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_wheel_to_a_running_gate(
    fresh_venv: Path, gate_dir: Path, admin_env: dict[str, str]
) -> None:
    """From the wheel: init, config check (writes nothing), list add, check, and `run`
    answering one FastAGI request and serving the console's script from the package, with
    the embedded Redis; then SIGTERM stops it."""
    callgate = fresh_venv / "bin" / "callgate"
    etc, state = gate_dir / "etc", gate_dir / "state"
    init = run(callgate, "init", etc, "--state-dir", state, cwd=gate_dir, env=admin_env)
    config = etc / "callgate.toml"
    config.write_text(
        config.read_text().replace("port = 4573", "port = 0").replace("port = 9473", "port = 0")
    )
    checked = run(callgate, "--config", config, "config", "check", cwd=gate_dir, env=admin_env)
    state_after_check = state.exists()
    added = run(
        callgate,
        "--config",
        config,
        "list",
        "add",
        "red",
        "+33612345678",
        cwd=gate_dir,
        env=admin_env,
    )
    decided = run(
        callgate, "--config", config, "check", "06 12 34 56 78", cwd=gate_dir, env=admin_env
    )
    assert (0, 0, False) == (init.returncode, checked.returncode, state_after_check), checked.stderr
    assert (0, "1 added, 0 already listed\n") == (added.returncode, added.stdout), added.stderr
    assert (3, "BLOCK listed:red +33612345678\n") == (decided.returncode, decided.stdout)

    process = subprocess.Popen(
        [str(callgate), "--config", str(config), "run"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=state,
        env={**admin_env, "PYTHONUNBUFFERED": "1"},
        umask=0o077,  # as the unit's UMask=
    )
    try:
        assert process.stderr is not None
        port = http_port = 0
        for _ in range(200):  # bounded: the start logs a handful of lines
            line = process.stderr.readline()
            if not line:
                break
            if found := re.search(r"HTTP on http://127\.0\.0\.1:(\d+)", line):
                http_port = int(found[1])
            if found := re.search(r"FastAGI on agi://127\.0\.0\.1:(\d+)/check", line):
                port = int(found[1])
                break
        assert port, "callgate run did not log its FastAGI address"
        variables = asyncio.run(agi_check(port, "0612345678"))
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/console/console.js") as page:
            console_js = page.read()
        process.send_signal(signal.SIGTERM)
        stopped = process.wait(DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    assert (0, "BLOCK", "listed:red") == (
        stopped,
        variables["CALLGATE_RESULT"],
        variables["CALLGATE_REASON"],
    )
    assert (ROOT / "gate" / "ops" / "static" / "console.js").read_bytes() == console_js
    assert 0o600 == (state / "callgate.secret").stat().st_mode & 0o777


def test_the_unit_rates_ok_or_better_under_systemd_analyze() -> None:
    """`systemd-analyze security --offline` rates config/callgate.service 4.9 or less
    ("OK"; the threshold is in tenths), and `systemd-analyze verify` accepts it."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    unit = ROOT / "config" / "callgate.service"
    rated = run(analyze, "security", "--offline=true", "--threshold=49", unit, cwd=ROOT)
    level = re.search(r"Overall exposure level for callgate.service: ([\d.]+) (\w+)", rated.stdout)
    assert level is not None, rated.stdout + rated.stderr
    assert (0, "OK") == (rated.returncode, level[2]) or level[2] in ("SAFE", "PERFECT")


def test_the_unit_parses_with_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every directive of the unit is known and well-formed (ExecStart pointed at a real
    callgate, since verify checks the binary exists)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    unit = tmp_path / "callgate.service"
    text = (ROOT / "config" / "callgate.service").read_text()
    unit.write_text(
        text.replace("/opt/callgate/bin/callgate", str(Path(sys.executable).parent / "callgate"))
    )
    verified = run(analyze, "verify", unit, cwd=tmp_path)
    assert (0, "") == (verified.returncode, verified.stderr.strip())


def test_make_run_installs_no_test_tools() -> None:
    """`make run` installs callgate alone; `make test` adds the test extra."""
    dry_run = run("make", "-n", "run", "VENV=/nonexistent/venv", cwd=ROOT)
    dry_test = run("make", "-n", "test", "VENV=/nonexistent/venv", cwd=ROOT)
    installs = re.findall(r"pip install -q -e (\S+)", dry_run.stdout)
    assert (["."], True) == (installs, "-e '.[test]'" in dry_test.stdout)


def test_make_wheel_installs_the_build_tools_only() -> None:
    """`make wheel` installs pyproject.toml's build requirements, and neither callgate's
    dependencies nor the test tools; `make run` keeps setuptools' editable-install
    warning out of its output."""
    dry_wheel = run("make", "-n", "wheel", "VENV=/nonexistent/venv", cwd=ROOT).stdout
    dry_run = run("make", "-n", "run", "VENV=/nonexistent/venv", cwd=ROOT).stdout
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    installs = [
        shlex.split(line.split("pip install -q ", 1)[1])
        for line in dry_wheel.splitlines()
        if "pip install -q " in line and "--upgrade pip" not in line
    ]
    assert ([build], False) == (installs, "-e" in dry_wheel)
    assert "PYTHONWARNINGS='ignore:Editable installation' " in dry_run


def _compiled(source: Path) -> bool:
    """Whether ``source`` has bytecode Python loads instead of compiling it: a timestamp
    pyc whose header holds the source's mtime and size."""
    cached = Path(importlib.util.cache_from_source(str(source)))
    if not cached.is_file():
        return False
    header, stat = cached.read_bytes()[4:16], source.stat()
    flags, mtime, size = (int.from_bytes(header[i : i + 4], "little") for i in (0, 4, 8))
    return (0, int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF) == (flags, mtime, size)


def test_make_run_and_test_compile_callgate_first(tmp_path: Path) -> None:
    """`make run` and `make test` compile callgate's modules first (as pip does for a
    wheel): then every module of gate and agi has current bytecode, and no process
    compiles it at its start (as every one would under PYTHONDONTWRITEBYTECODE)."""
    command = "/nonexistent/venv/bin/python -m compileall -q gate agi"
    dry_run = run("make", "-n", "run", "VENV=/nonexistent/venv", cwd=ROOT)
    dry_test = run("make", "-n", "test", "VENV=/nonexistent/venv", cwd=ROOT)
    assert (True, True) == (command in dry_run.stdout, command in dry_test.stdout)
    for package in ("gate", "agi"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=IGNORED)
    before = [p for p in sorted(tmp_path.rglob("*.py")) if _compiled(p)]
    compiled = run(sys.executable, *command.split()[1:], cwd=tmp_path)
    stale = [p.relative_to(tmp_path) for p in sorted(tmp_path.rglob("*.py")) if not _compiled(p)]
    assert (0, [], []) == (compiled.returncode, before, stale), compiled.stdout + compiled.stderr


def test_the_containerfile_edits_apply_to_the_config_init_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Containerfile's sed opens exactly the [agi] and [http] hosts (FastAGI to the
    private networks), and the result loads (with the API token a container is given)."""
    containerfile = (ROOT / "Containerfile").read_text()
    expressions = re.findall(r"-e '([^']+)'", containerfile)
    config = tmp_path / "callgate.toml"
    before = init_config(Path("/var/lib/callgate"), False)
    config.write_text(before)
    edited = run(
        "sed", "-i", *(arg for e in expressions for arg in ("-e", e)), config, cwd=tmp_path
    )
    changed = [
        (old, new)
        for old, new in zip(before.splitlines(), config.read_text().splitlines(), strict=True)
        if old != new
    ]
    assert (
        0,
        [
            ('host = "127.0.0.1"', 'host = "0.0.0.0"'),
            (
                '# allow = ["10.0.0.5", "10.1.0.0/16"]',
                'allow = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]',
            ),
            ('host = "127.0.0.1"', 'host = "0.0.0.0"'),
        ],
    ) == (edited.returncode, changed)
    monkeypatch.setenv("CALLGATE_API_TOKEN", "t" * 32)
    assert "0.0.0.0" == load_config(config, create_secret=False).agi.host  # a valid config
