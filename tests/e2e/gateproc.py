"""A real ``callgate run`` process for the end-to-end tests (and bench/e2e.py).

``write_config`` turns the sample ``config/callgate.toml`` (same lists, same
4-per-30d cap) into a test config: Redis at a given URL instead of the embedded one,
a literal secret instead of a secret file, the FastAGI port chosen by the test, plus
optional table overrides and extra TOML text (e.g. an ``[ari]`` table for the Stasis door).

``GateProcess`` starts ``python -m gate.cli --config CFG run`` with its stderr in a file,
waits (bounded) for its "FastAGI on agi://127.0.0.1:PORT/check" log line, and stops it by
PID: SIGTERM, then SIGKILL. ``kill()`` is the crash (SIGKILL), ``restart()`` starts it again
with the same config and port. ``cli()`` runs an admin command against the same config.
``wait_for_log()`` waits (bounded) for a log line such as "ARI connected"; ``terminate()``
is ``stop()`` returning the exit status; ``pause()``/``resume()`` freeze and thaw it.
``http_port()`` is the port of its HTTP listener (metrics, health, admin API), which
listens on any free loopback port unless the test's overrides say otherwise.

``callgate_dialplan`` is the repo's ``dialplan/callgate.conf`` pointed at the test's port.

Depends only on the standard library (and the gate package, run as a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONFIG = REPO / "config" / "callgate.toml"
DIALPLAN = REPO / "dialplan" / "callgate.conf"

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 60.0
READY_RE = re.compile(r"FastAGI on agi://127\.0\.0\.1:(\d+)/check")
HTTP_RE = re.compile(r"HTTP on http://127\.0\.0\.1:(\d+)")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: the environment must not override the config the test wrote
_ENV_DROP = ("CALLGATE_SECRET", "CALLGATE_CONFIG")


class GateProcessError(RuntimeError):
    """The callgate process could not be started or driven."""


# -- config ---------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list) and all(not isinstance(v, dict) for v in value):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise GateProcessError(f"cannot write {value!r} as a TOML value")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(path: list[str], table: Mapping[str, Any], out: list[str]) -> None:
    scalars = [
        (k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)
    ]
    if path and (scalars or not table):
        out.append(f"\n[{'.'.join(_key(p) for p in path)}]")
    out.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars)
    for name, value in table.items():
        if isinstance(value, dict):
            _table([*path, name], value, out)
    for name, value in table.items():
        if _is_table_array(value):
            for item in value:
                out.append(f"\n[[{'.'.join(_key(p) for p in [*path, name])}]]")
                out.extend(f"{_key(k)} = {_value(v)}" for k, v in item.items())


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for plain config data (tables, arrays of flat tables, scalars, lists)."""
    out: list[str] = []
    _table([], data, out)
    return "\n".join(out).lstrip("\n") + "\n"


def config_text(
    *,
    redis_url: str | None,
    agi_port: int,
    secret: str,
    overrides: Mapping[str, Any] | None = None,
    extra_toml: str = "",
    state_dir: Path | None = None,
) -> str:
    """The sample config with the test's Redis, secret and port; ``overrides`` replace keys
    inside top-level tables (or whole arrays such as ``caps``); ``extra_toml`` is appended.
    ``redis_url=None`` with a ``state_dir``: the embedded Redis, its data in
    ``state_dir/redis`` (``callgate run`` starts and supervises it)."""
    data: dict[str, Any] = tomllib.loads(SAMPLE_CONFIG.read_text())
    redis = dict(data.get("redis", {}))
    redis.pop("data_dir", None)
    if redis_url is not None:
        redis["url"] = redis_url
    elif state_dir is None:
        raise GateProcessError("an embedded Redis needs a state_dir for its data")
    privacy = dict(data.get("privacy", {}))
    privacy.pop("secret_file", None)
    privacy["secret"] = secret
    agi = {**data.get("agi", {}), "host": "127.0.0.1", "port": agi_port}
    # The HTTP listener (metrics, health, admin API) on any free port unless overridden.
    http = {**data.get("http", {}), "host": "127.0.0.1", "port": 0}
    # Real calls happen at the real time of day: without the fr pack's calling hours, with
    # the same 4-per-30-days cap as a plain config cap.
    gate = {**data.get("gate", {}), "packs": []}
    if state_dir is not None:
        gate["state_dir"] = str(state_dir)  # never the sample's ../var
    caps = [{"id": "fr-4-per-30d", "limit": 4, "window": "30d", "scope": "tenant"}]
    data.update(redis=redis, privacy=privacy, agi=agi, http=http, gate=gate, caps=caps)
    for name, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    text = dump_toml(data)
    if extra_toml:
        text += "\n" + extra_toml.strip("\n") + "\n"
    tomllib.loads(text)  # fail here, not in the child, if the result is not TOML
    return text


def write_config(path: Path, **kwargs: Any) -> Path:
    """Write ``config_text(**kwargs)`` to ``path``; return ``path``."""
    path.write_text(config_text(**kwargs))
    return path


def callgate_dialplan(agi_port: int, fail_mode: str | None = None) -> str:
    """The repo's dialplan/callgate.conf, pointed at ``agi_port`` (and ``fail_mode``)."""
    text = DIALPLAN.read_text()
    url_line = "CALLGATE_AGI_URL=agi://127.0.0.1:4573"
    if url_line not in text.splitlines():
        raise GateProcessError(f"{DIALPLAN} has no line {url_line!r} to point at the test port")
    text = text.replace(url_line, f"CALLGATE_AGI_URL=agi://127.0.0.1:{agi_port}")
    if fail_mode is not None:
        text, count = re.subn(
            r"(?m)^CALLGATE_FAIL_MODE=\w*$", f"CALLGATE_FAIL_MODE={fail_mode}", text
        )
        if count != 1:
            raise GateProcessError(f"{DIALPLAN} has no single CALLGATE_FAIL_MODE= line")
    return text


# -- process --------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class GateProcess:
    """One ``callgate --config CFG run`` child process, stopped by PID."""

    def __init__(
        self, config_path: Path, log_path: Path, agi_port: int, run_args: tuple[str, ...] = ()
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.agi_port = agi_port
        self.run_args = run_args  # e.g. ("--workers", "2")
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def start(self, timeout_s: float = START_TIMEOUT_S) -> GateProcess:
        """Start the process; return once it logs its FastAGI address (bounded)."""
        if self._proc is not None:
            raise GateProcessError("callgate already started")
        offset = len(self.read_log())
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gate.cli",
                    "--config",
                    str(self.config_path),
                    "run",
                    *self.run_args,
                ],
                cwd=REPO,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        try:
            self._wait_ready(offset, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, offset: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.05) + 1):
            assert self._proc is not None
            found = READY_RE.search(self.read_log()[offset:])
            if found is not None:
                if int(found[1]) != self.agi_port:
                    raise GateProcessError(f"callgate listens on {found[1]}, not {self.agi_port}")
                return
            code = self._proc.poll()
            if code is not None:
                raise GateProcessError(f"callgate exited with {code}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise GateProcessError(f"callgate not ready within {timeout_s:.0f} s\n{self.log_tail()}")

    def _signal_and_wait(self, signum: int) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
        self._proc = None

    def stop(self) -> None:
        """SIGTERM (graceful: in-flight requests finish), SIGKILL after a deadline. Idempotent."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the gate crashes without closing anything."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> None:
        """Stop (if running) and start again with the same config and port."""
        self.stop()
        self.start()

    def wait_for_log(
        self, pattern: str, within_s: float = START_TIMEOUT_S, since: int = 0, count: int = 1
    ) -> re.Match[str]:
        """Wait (bounded) until the log from offset ``since`` holds ``count`` lines matching
        the regex ``pattern`` (e.g. ``"ARI connected"``); return the last match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within_s
        for _ in range(int(within_s / 0.05) + 1):
            found = list(regex.finditer(self.read_log()[since:]))
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise GateProcessError(
            f"no {count} log line(s) matching {pattern!r} within {within_s:.0f} s\n"
            f"{self.log_tail()}"
        )

    def http_port(self, since: int = 0) -> int:
        """The port of the HTTP listener (metrics, health, admin API), from its log line
        (after offset ``since``: a restarted process listens on a new port)."""
        return int(self.wait_for_log(HTTP_RE.pattern, since=since)[1])

    def log_size(self) -> int:
        """The log's current length: a ``since`` offset for ``wait_for_log``."""
        return len(self.read_log())

    def terminate(self) -> int | None:
        """``stop()`` (SIGTERM, SIGKILL after a deadline); the exit status, None if not running."""
        proc = self._proc
        self.stop()
        return None if proc is None else proc.returncode

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but handles nothing until ``resume()``."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def cli(self, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run ``callgate --config CFG ARGS…`` (an admin command); raise unless it exits 0."""
        done = subprocess.run(
            [sys.executable, "-m", "gate.cli", "--config", str(self.config_path), *args],
            cwd=REPO,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise GateProcessError(
                f"callgate {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def __enter__(self) -> GateProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
