"""A real Asterisk, run from a Debian-sid chroot, for end-to-end tests.

Everything listens on 127.0.0.1 only, on ports chosen free at run time. Each
:class:`AsteriskSandbox` gets its own config dir inside the chroot
(``ROOT/etc/callgate-test-XXXX``) holding its configuration and its run, log, spool,
lib and cache dirs, so two instances never share a control socket or an AstDB.

The chroot itself is provisioned by ``scripts/asterisk-sandbox``. This module depends
only on the standard library and aiohttp (not on the gate package).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_ROOT = "/var/cache/callgate/asterisk-sid"
ASTERISK_BIN = "/usr/sbin/asterisk"

#: Modules that must not load: hardware or foreign channel drivers, anything that would
#: listen beyond loopback or talk to the network, databases, and modules that conflict.
NOLOAD_MODULES: tuple[str, ...] = (
    "chan_iax2.so",
    "chan_unistim.so",
    "chan_motif.so",
    "chan_console.so",
    "chan_alsa.so",
    "chan_oss.so",
    "chan_sip.so",
    "chan_dahdi.so",
    "chan_mobile.so",
    "chan_audiosocket.so",
    "app_audiosocket.so",
    "res_audiosocket.so",
    "res_xmpp.so",
    "pbx_dundi.so",
    "pbx_lua.so",
    "res_hep.so",
    "res_hep_pjsip.so",
    "res_hep_rtcp.so",
    "res_phoneprov.so",
    "res_pjsip_phoneprov_provider.so",
    "res_snmp.so",
    "res_statsd.so",
    "res_prometheus.so",
    "res_smdi.so",
    "res_rtp_multicast.so",
    "res_stun_monitor.so",
    "res_resolver_unbound.so",
    "res_stir_shaken.so",
    "res_pjsip_stir_shaken.so",
    "res_calendar.so",
    "res_calendar_caldav.so",
    "res_calendar_ews.so",
    "res_calendar_exchange.so",
    "res_calendar_icalendar.so",
    "res_config_ldap.so",
    "res_config_pgsql.so",
    "res_config_odbc.so",
    "res_config_curl.so",
    "res_config_mysql.so",
    "res_odbc.so",
    "res_odbc_transaction.so",
    "func_odbc.so",
    "cdr_odbc.so",
    "cdr_adaptive_odbc.so",
    "cdr_pgsql.so",
    "cdr_tds.so",
    "cdr_radius.so",
    "cel_odbc.so",
    "cel_pgsql.so",
    "cel_tds.so",
    "cel_radius.so",
    "app_voicemail_odbc.so",
    "app_jack.so",
    "app_festival.so",
)

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_HTTP_TIMEOUT = 10.0


class SandboxError(RuntimeError):
    """Asterisk could not be set up, started or driven."""


class AriError(SandboxError):
    """An ARI request answered with an unexpected status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"ARI {method} {path} answered {status}: {body[:300]}")
        self.status = status
        self.body = body


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a port on 127.0.0.1 that is free for both TCP and UDP right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            try:
                with socket.socket(socket.AF_INET, other) as second:
                    second.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SandboxError("no free port found on 127.0.0.1 after 50 tries")


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses every TCP connection while the block runs.

    The port stays bound (never listening) until the block ends: a port only probed free
    can be taken meanwhile by a server the test starts, or be picked as the source port of
    the very connection that tries it (a TCP self-connect), and then it answers.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])
    finally:
        holder.close()


def default_root() -> Path:
    """The chroot root: $CALLGATE_ASTERISK_ROOT or the default cache location."""
    return Path(os.environ.get("CALLGATE_ASTERISK_ROOT") or DEFAULT_ROOT)


_RESOLV_CONF = "# callgate test sandbox: DNS stays on loopback\nnameserver 127.0.0.1\n"


def ensure_loopback_dns(root: Path) -> None:
    """Point the chroot's resolver at 127.0.0.1 only, so no DNS query leaves loopback.

    pjproject creates a DNS client for the nameservers it finds in /etc/resolv.conf;
    scripts/asterisk-sandbox writes the same file, this covers chroots built otherwise.
    """
    path = root / "etc" / "resolv.conf"
    try:
        if not path.is_symlink() and path.read_text() == _RESOLV_CONF:
            return
    except OSError:
        pass
    path.unlink(missing_ok=True)
    path.write_text(_RESOLV_CONF)


# ---------------------------------------------------------------------------------------
# /proc and /dev bind mounts, shared by every sandbox of this process.
# ---------------------------------------------------------------------------------------

_MOUNT_LOCK = threading.Lock()
#: bind mounts this process made: target path -> number of sandboxes using it
_MOUNT_REFS: dict[Path, int] = {}


def _is_mountpoint(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)], check=False).returncode == 0


def _acquire_mounts(root: Path) -> list[Path]:
    """Bind-mount /proc and /dev into ROOT unless already mounted; return what we hold."""
    held: list[Path] = []
    with _MOUNT_LOCK:
        for name in ("proc", "dev"):
            target = root / name
            if target in _MOUNT_REFS:
                _MOUNT_REFS[target] += 1
                held.append(target)
                continue
            if _is_mountpoint(target):
                continue  # mounted by someone else: use it, never unmount it
            target.mkdir(exist_ok=True)
            done = subprocess.run(
                ["mount", "--bind", f"/{name}", str(target)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                _release_locked(held)
                raise SandboxError(f"mount --bind /{name} {target} failed: {done.stderr.strip()}")
            _MOUNT_REFS[target] = 1
            held.append(target)
    return held


def _release_locked(held: list[Path]) -> None:
    for target in held:
        refs = _MOUNT_REFS.get(target, 0) - 1
        if refs > 0:
            _MOUNT_REFS[target] = refs
            continue
        _MOUNT_REFS.pop(target, None)
        if _is_mountpoint(target):
            done = subprocess.run(["umount", str(target)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _release_mounts(held: list[Path]) -> None:
    with _MOUNT_LOCK:
        _release_locked(held)


# ---------------------------------------------------------------------------------------


class AsteriskSandbox:
    """One Asterisk process on loopback, with its own config dir inside the chroot.

    ``dialplan`` is the body of extensions.conf; ``extra_files`` are more files to put in
    the config dir (for example ``{"callgate.conf": ...}`` to ``#include`` from the
    dialplan). Calls from SIPp at 127.0.0.1 land in ``sip_context``.
    """

    def __init__(
        self,
        dialplan: str,
        *,
        root: str | Path | None = None,
        extra_files: Mapping[str, str] | None = None,
        sip_context: str = "from-sipp",
        start_timeout: float = _START_TIMEOUT,
        rtp_ports: int = 200,
    ) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.dialplan = dialplan
        self.extra_files = dict(extra_files or {})
        self.sip_context = sip_context
        self.start_timeout = start_timeout
        self.http_port = free_port(socket.SOCK_STREAM)
        self.sip_port = free_port(socket.SOCK_DGRAM)
        # An even RTP range well away from the usual defaults (10000-20000); each call
        # holds two ports (RTP, RTCP) until it ends, so ``rtp_ports`` bounds the calls
        # in progress (beyond it Asterisk answers 488).
        self.rtp_ports = rtp_ports
        self.rtp_start = random.randrange(30000, 63000 - rtp_ports, 2)
        self.ari_user = "callgate-test"
        self.ari_password = secrets.token_hex(16)
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._mounts: list[Path] = []
        self._config_dir: Path | None = None

    # -- paths ----------------------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        """The per-run dir on the host (inside ROOT/etc)."""
        if self._config_dir is None:
            raise SandboxError("sandbox not set up yet (call start())")
        return self._config_dir

    @property
    def chroot_config_dir(self) -> str:
        """The per-run dir as Asterisk sees it inside the chroot."""
        return "/" + str(self.config_dir.relative_to(self.root))

    @property
    def asterisk_conf(self) -> str:
        return f"{self.chroot_config_dir}/asterisk.conf"

    @property
    def log_path(self) -> Path:
        """The logger's file log (verbose, notice, warning, error)."""
        return self.config_dir / "log" / "full.log"

    @property
    def console_path(self) -> Path:
        """Asterisk's own stdout/stderr."""
        return self.config_dir / "log" / "console.out"

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/ari"

    # -- configuration --------------------------------------------------------------------

    def _write_config(self) -> None:
        if not (self.root / ASTERISK_BIN.lstrip("/")).exists():
            raise SandboxError(
                f"no Asterisk in {self.root} (run scripts/asterisk-sandbox to provision it)"
            )
        ensure_loopback_dns(self.root)
        etc = self.root / "etc"
        self._config_dir = Path(tempfile.mkdtemp(prefix="callgate-test-", dir=etc))
        os.chmod(self._config_dir, 0o755)
        inner = self.chroot_config_dir
        for sub in ("run", "log", "spool", "lib", "cache"):
            (self.config_dir / sub).mkdir()
        files: dict[str, str] = {
            "asterisk.conf": f"""\
[directories]
astetcdir => {inner}
astrundir => {inner}/run
astlogdir => {inner}/log
astspooldir => {inner}/spool
astvarlibdir => {inner}/lib
astdbdir => {inner}/lib
astkeydir => {inner}/lib
astcachedir => {inner}/cache
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astsbindir => /usr/sbin

[options]
verbose = 3
nocolor = yes
""",
            "modules.conf": "[modules]\nautoload = yes\n"
            + "".join(f"noload => {name}\n" for name in NOLOAD_MODULES),
            "logger.conf": """\
[general]
dateformat = %F %T.%3q

[logfiles]
full.log => verbose,notice,warning,error
""",
            "http.conf": f"""\
[general]
enabled = yes
bindaddr = 127.0.0.1
bindport = {self.http_port}
tlsenable = no
""",
            "ari.conf": f"""\
[general]
enabled = yes

[{self.ari_user}]
type = user
read_only = no
password = {self.ari_password}
password_format = plain
""",
            "manager.conf": "[general]\nenabled = no\n",
            "rtp.conf": (
                f"[general]\nrtpstart = {self.rtp_start}\n"
                f"rtpend = {self.rtp_start + self.rtp_ports}\n"
            ),
            "pjsip.conf": f"""\
[transport-udp]
type = transport
protocol = udp
bind = 127.0.0.1:{self.sip_port}

[sipp]
type = endpoint
transport = transport-udp
context = {self.sip_context}
disallow = all
allow = ulaw
direct_media = no
media_address = 127.0.0.1
bind_rtp_to_media_address = yes
rtp_symmetric = yes

[sipp-identify]
type = identify
endpoint = sipp
match = 127.0.0.1
""",
            "extensions.conf": self.dialplan,
        }
        for name, text in self.extra_files.items():
            if "/" in name or name.startswith("."):
                raise SandboxError(f"extra file name must be a plain file name: {name!r}")
            files[name] = text
        for name, text in files.items():
            (self.config_dir / name).write_text(text)
        # The ARI password is in ari.conf: keep it from other users.
        os.chmod(self.config_dir / "ari.conf", 0o600)

    # -- process --------------------------------------------------------------------------

    def _command(self, *args: str) -> list[str]:
        return ["chroot", str(self.root), ASTERISK_BIN, "-C", self.asterisk_conf, *args]

    def start(self) -> AsteriskSandbox:
        """Start Asterisk (writing the config on first start); wait until ARI answers."""
        if self._proc is not None:
            raise SandboxError("already started")
        if self._config_dir is None:
            self._write_config()
        if not self._mounts:
            self._mounts = _acquire_mounts(self.root)
        with open(self.console_path, "ab") as console:
            self._proc = subprocess.Popen(
                self._command("-f", "-vvv"),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._proc.pid
        try:
            self._wait_ready()
        except BaseException:
            self._stop_process()
            raise
        return self

    def _ready_once(self) -> bool:
        request = urllib.request.Request(
            f"{self.ari_url}/asterisk/info",
            headers={"Authorization": self._basic_header()},
        )
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        for _ in range(int(self.start_timeout / 0.1) + 1):
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise SandboxError(f"Asterisk exited with {code} while starting\n{self.log_tail()}")
            if self._ready_once():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise SandboxError(
            f"ARI did not answer 200 at {self.ari_url}/asterisk/info within "
            f"{self.start_timeout:.0f} s\n{self.log_tail()}"
        )

    def _stop_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT)
        self._proc = None
        self.pid = None

    def stop(self) -> None:
        """Stop Asterisk, release the mounts and remove the per-run dir. Idempotent."""
        try:
            self._stop_process()
        finally:
            if self._mounts:
                held, self._mounts = self._mounts, []
                _release_mounts(held)
            if self._config_dir is not None:
                shutil.rmtree(self._config_dir, ignore_errors=True)
                self._config_dir = None

    def restart(self) -> None:
        """Stop the process and start it again with the same config and ports."""
        self._stop_process()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> AsteriskSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def cli(self, command: str, timeout: float = 15.0) -> str:
        """Run one CLI command on the running Asterisk (``asterisk -rx``)."""
        done = subprocess.run(
            self._command("-rx", command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise SandboxError(f"asterisk -rx {command!r} failed: {done.stderr.strip()}")
        return done.stdout

    # -- logs -----------------------------------------------------------------------------

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        parts: list[str] = []
        for path in (self.console_path, self.log_path):
            try:
                text = path.read_text(errors="replace")
            except (FileNotFoundError, SandboxError):
                continue
            parts.append(f"--- {path.name} (last {lines} lines) ---")
            parts.extend(text.splitlines()[-lines:])
        return "\n".join(parts)

    async def wait_for_log(self, pattern: str, within: float = 10.0) -> re.Match[str]:
        """Wait up to ``within`` seconds for a file-log line matching the regex ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        for _ in range(int(within / 0.05) + 1):
            found = regex.search(self.read_log())
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        raise SandboxError(f"no log line matching {pattern!r} within {within} s\n{self.log_tail()}")

    # -- ARI ------------------------------------------------------------------------------

    def _basic_header(self) -> str:
        token = base64.b64encode(f"{self.ari_user}:{self.ari_password}".encode()).decode()
        return f"Basic {token}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """The ARI credentials as an HTTP Basic ``Authorization`` header.

        (aiohttp 3.14 deprecates ``aiohttp.BasicAuth``; a header works with every version,
        for requests and for ``ws_connect`` alike, and keeps the password out of URLs.)
        """
        return {"Authorization": self._basic_header()}

    async def ari(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200, 204),
    ) -> Any:
        """One ARI request; returns the decoded JSON body (None when empty)."""
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        async with (
            aiohttp.ClientSession(headers=self.auth_headers, timeout=timeout) as session,
            session.request(method, f"{self.ari_url}{path}", params=params, json=json) as response,
        ):
            body = await response.text()
            if response.status not in ok:
                raise AriError(method, path, response.status, body)
            if not body:
                return None
            return await response.json(content_type=None)

    async def originate_local(
        self,
        number: str,
        gated_context: str,
        answer_context: str = "answerer",
        variables: Mapping[str, str] | None = None,
        channel_id: str | None = None,
    ) -> str:
        """Originate ``Local/NUMBER@GATED_CONTEXT``; return the id of the half running it
        (``channel_id`` when given: ARI takes any text as an id).

        The Local channel's ``;2`` half runs ``NUMBER@GATED_CONTEXT`` (that is the one
        whose variables and Stasis events the test sees); once it answers, the ``;1``
        half runs ``s@ANSWER_CONTEXT``.
        """
        base = channel_id or f"gated-{uuid.uuid4().hex}"
        caller = f"caller-{uuid.uuid4().hex}"
        params = {
            "endpoint": f"Local/{number}@{gated_context}",
            "extension": "s",
            "context": answer_context,
            "priority": "1",
            "channelId": caller,
            "otherChannelId": base,
            "timeout": "30",
        }
        body = {"variables": dict(variables)} if variables else None
        await self.ari("POST", "/channels", params=params, json=body)
        return base

    async def get_channel_var(self, channel_id: str, name: str) -> str | None:
        """A channel variable's value, or None when the variable is not set."""
        try:
            data = await self.ari(
                "GET", f"/channels/{quote(channel_id, safe='')}/variable", params={"variable": name}
            )
        except AriError as error:
            if error.status == 404 and "variable" in error.body.lower():
                return None
            raise
        value = data.get("value") if isinstance(data, dict) else None
        return None if value is None else str(value)

    async def set_channel_var(self, channel_id: str, name: str, value: str) -> None:
        await self.ari(
            "POST",
            f"/channels/{channel_id}/variable",
            params={"variable": name, "value": value},
        )

    async def continue_in_dialplan(self, channel_id: str) -> None:
        await self.ari("POST", f"/channels/{channel_id}/continue")

    async def hangup(self, channel_id: str, reason_code: int | None = None) -> None:
        params = {"reason_code": str(reason_code)} if reason_code is not None else None
        await self.ari("DELETE", f"/channels/{channel_id}", params=params, ok=(200, 204, 404))

    async def list_channels(self) -> list[dict[str, Any]]:
        data = await self.ari("GET", "/channels")
        return list(data) if isinstance(data, list) else []


#: A fixture that starts a sandbox (tests/e2e/conftest.py ``asterisk_factory``).
SandboxFactory = Callable[..., AsteriskSandbox]
