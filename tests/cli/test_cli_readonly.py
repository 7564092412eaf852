"""The command on a read-only state directory (a read-only mount: root cannot write it
either): one line saying which file or directory, why, and what to do; exit 2.

Each command runs in a mount namespace of its own (``unshare``: as root, or as a user
mapped to root in a user namespace) where the state directory is a tmpfs mounted
read-only; the test is skipped where namespaces are not allowed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_CONFIG

TIMEOUT_S = 60.0
# $1 the state directory, $2 "secret" to put a secret file and an empty data directory in
# it before it is made read-only; then the command.
MOUNT_READ_ONLY = """\
set -e
state=$1; shift
mount -t tmpfs -o size=8m,mode=0700 tmpfs "$state"
if [ "$1" = secret ]; then
    mkdir -m 0700 "$state/redis"
    echo 0123456789abcdef0123456789abcdef > "$state/callgate.secret"
fi
shift
mount -o remount,ro "$state"
exec "$@"
"""


def _unshare() -> list[str]:
    """The ``unshare`` prefix giving a private mount namespace (skip if none can be had)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    prefix = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-r", "--mount"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=TIMEOUT_S)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode(errors='replace').strip()}")
    return prefix


def _read_only(tmp_path: Path, fill: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``callgate --config … ARGS`` with its state directory a read-only tmpfs (``fill``:
    "secret" for a secret file and an empty data directory in it, else "empty")."""
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "callgate.toml"
    text = SAMPLE_CONFIG.read_text().replace('state_dir = "../var"', f'state_dir = "{state}"')
    config.write_text(text.replace("port = 4573", "port = 0").replace("port = 9473", "port = 0"))
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    if server := os.environ.get("CALLGATE_REDIS_SERVER"):
        env["CALLGATE_REDIS_SERVER"] = server
    env["PYTHONPATH"] = str(repo)
    command = [sys.executable, "-m", "gate.cli", "--config", str(config), *args]
    return subprocess.run(
        [*_unshare(), "sh", "-c", MOUNT_READ_ONLY, "sh", str(state), fill, *command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("args", [("run",), ("list", "import", "red", "numbers.txt")])
def test_a_read_only_data_directory_is_one_line_naming_it_and_what_to_do(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """``run`` and ``list import`` with the embedded Redis's data directory on a read-only
    mount: exit 2, one line naming the directory, the cause and the setting to change."""
    (tmp_path / "numbers.txt").write_text("0612345678\n")
    done = _read_only(tmp_path, "secret", *args)
    data = tmp_path / "state" / "redis"
    assert (2, "") == (done.returncode, done.stdout), done.stderr
    assert [
        f"callgate: error: embedded Redis: cannot make data directory {data} private "
        "(chmod): Read-only file system; set gate.state_dir (or redis.data_dir) in the "
        "config to a writable directory"
    ] == done.stderr.splitlines()


@pytest.mark.parametrize("args", [("run",), ("list", "import", "red", "numbers.txt")])
def test_a_secret_file_that_cannot_be_created_says_what_to_do(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A first command on a read-only, empty state directory cannot create the secret
    file: one line naming it, the cause and the three ways out; exit 2."""
    (tmp_path / "numbers.txt").write_text("0612345678\n")
    done = _read_only(tmp_path, "empty", *args)
    secret = tmp_path / "state" / "callgate.secret"
    assert (2, "") == (done.returncode, done.stdout), done.stderr
    assert [
        f"callgate: error: {tmp_path / 'callgate.toml'}: privacy.secret_file: cannot create "
        f"{secret}: "
        "Read-only file system; make its directory writable for this user, or set "
        "gate.state_dir (or privacy.secret_file) to a writable directory, or give the "
        "secret in $CALLGATE_SECRET"
    ] == done.stderr.splitlines()


def _without_root_powers(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``callgate --config CONFIG ARGS`` unable to read or pass others' files and
    directories (as root, without the powers that let it: ``setpriv``)."""
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    command = [sys.executable, "-m", "gate.cli", "--config", str(config), *args]
    return subprocess.run(
        [*prefix, *command], capture_output=True, text=True, timeout=TIMEOUT_S, env=env
    )


def test_a_secret_file_that_cannot_be_read_is_never_replaced(tmp_path: Path) -> None:
    """The secret file exists but this user may not read it (mode 0000; as root, without
    the power to read others' files): one line saying to run as its owner or to give that
    secret, exit 2, and the file is left as it was (a new secret would orphan the lists)."""
    secret = tmp_path / "callgate.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0)
    config = tmp_path / "callgate.toml"
    text = SAMPLE_CONFIG.read_text().replace('state_dir = "../var"', f'state_dir = "{tmp_path}"')
    config.write_text(text)
    done = _without_root_powers(config, "list", "count", "red")
    secret.chmod(0o600)
    assert (2, "") == (done.returncode, done.stdout), done.stderr
    assert [
        f"callgate: error: {config}: privacy.secret_file: cannot read {secret}: Permission "
        "denied; run callgate as the user that owns it, or give that secret in $CALLGATE_SECRET"
    ] == done.stderr.splitlines()
    assert "0123456789abcdef0123456789abcdef\n" == secret.read_text()


def test_a_secret_file_in_a_directory_it_cannot_enter_is_one_line(tmp_path: Path) -> None:
    """The state directory is another user's (0700; here mode 0000 and, as root, without
    the power to pass it): whether the secret file exists cannot be known, and the command
    says so in one line, run as the owner of the directory or give the secret; exit 2."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "callgate.secret").write_text("0123456789abcdef0123456789abcdef\n")
    state.chmod(0)
    config = tmp_path / "callgate.toml"
    text = SAMPLE_CONFIG.read_text().replace('state_dir = "../var"', f'state_dir = "{state}"')
    config.write_text(text)
    done = _without_root_powers(config, "list", "count", "red")
    state.chmod(0o700)
    secret = state / "callgate.secret"
    assert (2, "") == (done.returncode, done.stdout), done.stderr
    assert [
        f"callgate: error: {config}: privacy.secret_file: cannot reach {secret}: Permission "
        "denied; run callgate as the user that owns its directory, or give the secret in "
        "$CALLGATE_SECRET"
    ] == done.stderr.splitlines()
    assert "0123456789abcdef0123456789abcdef\n" == secret.read_text()
