"""``callgate config check`` refuses a FastAGI port open to anyone."""

from __future__ import annotations

from pathlib import Path

import pytest

from gate.cli import main
from tests.cli.test_cli import sample_config


def test_config_check_refuses_a_non_loopback_agi_host_without_allow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """agi.host = 0.0.0.0 without agi.allow: exit 2, one line naming the key and the fix."""
    for name in ("CALLGATE_SECRET", "CALLGATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "callgate.toml"
    path.write_text(sample_config("redis://127.0.0.1:1", agi={"host": "0.0.0.0"}))
    status = main(["--config", str(path), "config", "check"])
    out, err = capsys.readouterr()
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert "agi.allow: is required when agi.host is '0.0.0.0'" in err
