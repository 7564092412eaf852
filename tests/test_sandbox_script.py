"""``scripts/asterisk-sandbox``'s download of the sid Redis builds (``sid_download``), run
by bash from the script itself with ``chroot`` replaced by a stand-in for ``apt-get
download`` in the chroot (no root, no network)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "asterisk-sandbox"
FUNCTIONS = ("die", "log", "restore_resolv", "sid_download")
LOOPBACK = "nameserver 127.0.0.1"
# apt-get download in the chroot: the package of version $VERSION, then $STATUS.
CHROOT = (
    'chroot() { touch "$ROOT/var/cache/callgate-debs/redis-server_$VERSION.deb"; '
    'return "$STATUS"; }'
)


def sid_download(root: Path, into: Path, version: str, status: int) -> int:
    text = SCRIPT.read_text()
    functions = [re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.M | re.S) for name in FUNCTIONS]
    assert all(functions), f"{SCRIPT} defines no longer all of {FUNCTIONS}"
    script = "\n".join(
        [
            "set -euo pipefail",
            f"ROOT={root}",
            f"RESOLV_WANTED='{LOOPBACK}'",
            *(f[0] for f in functions if f is not None),
            CHROOT,
            f"sid_download {into} redis-server",
        ]
    )
    done = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "VERSION": version, "STATUS": str(status)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode


def test_a_failed_download_is_never_unpacked_with_the_next(tmp_path: Path) -> None:
    """The packages a failed download left in the chroot (8.0.2) are not moved into the
    next build with its own (8.0.3); the chroot's loopback-only DNS is back either way."""
    root, into = tmp_path / "root", tmp_path / "debs"
    (root / "etc").mkdir(parents=True)
    into.mkdir()
    failed = sid_download(root, into, "8.0.2", 1)
    after_failure = (root / "etc" / "resolv.conf").read_text().strip()
    done = sid_download(root, into, "8.0.3", 0)
    assert (1, LOOPBACK, 0, ["redis-server_8.0.3.deb"]) == (
        failed,
        after_failure,
        done,
        sorted(p.name for p in into.iterdir()),
    )
    assert LOOPBACK == (root / "etc" / "resolv.conf").read_text().strip()
