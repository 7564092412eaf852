"""Fixtures for the end-to-end tests against a real Asterisk (see sandbox.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox import AsteriskSandbox, SandboxFactory

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
PROVISION = REPO / "scripts" / "asterisk-sandbox"
PROVISION_TIMEOUT = 900.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e with the ``e2e`` marker."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def asterisk_root() -> Path:
    """The provisioned chroot (built or reused by scripts/asterisk-sandbox); fails if absent."""
    try:
        done = subprocess.run(
            ["bash", str(PROVISION)],
            capture_output=True,
            text=True,
            timeout=PROVISION_TIMEOUT,
            check=False,
            env=os.environ.copy(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{PROVISION} did not finish within {PROVISION_TIMEOUT:.0f} s")
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        pytest.fail(f"{PROVISION} failed with exit code {done.returncode}:\n{tail}")
    lines = done.stdout.strip().splitlines()
    root = Path(lines[-1]) if lines else Path()
    if not lines or not (root / "usr" / "sbin" / "asterisk").exists():
        pytest.fail(f"{PROVISION} printed no usable chroot root: {done.stdout!r}")
    return root


@pytest.fixture
def asterisk_factory(asterisk_root: Path) -> Iterator[SandboxFactory]:
    """Build and start AsteriskSandbox instances; every one is stopped at teardown."""
    made: list[AsteriskSandbox] = []

    def make(dialplan: str, **kwargs: Any) -> AsteriskSandbox:
        sandbox = AsteriskSandbox(dialplan, root=asterisk_root, **kwargs)
        made.append(sandbox)
        return sandbox.start()

    yield make
    errors: list[str] = []
    for sandbox in reversed(made):
        try:
            sandbox.stop()
        except Exception as error:  # keep stopping the others
            errors.append(repr(error))
    if errors:
        pytest.fail("stopping Asterisk failed: " + "; ".join(errors))
