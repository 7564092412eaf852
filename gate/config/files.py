"""The files callgate ships as package data, beside the code that reads them.

- ``PACKS_DIR``: the rule packs (``fr``, ``us``, ``uk``, ``ca``), used unless
  ``[gate] packs_dir`` names another directory;
- ``SAMPLE_DIR``: the sample configuration (``callgate.toml``), the dialplan include
  (``callgate.conf``), the systemd unit (``callgate.service``) and the Grafana dashboard,
  which ``callgate init`` writes out.

In the source tree these are symlinks to the canonical files at the top (``config/`` and
``dialplan/``); building the wheel follows them, so an installed callgate has real files.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_STATE_DIR", "PACKS_DIR", "SAMPLE_DIR", "sample_text"]

_HERE = Path(__file__).parent
PACKS_DIR = _HERE / "packs"
SAMPLE_DIR = _HERE / "sample"
# Where an installed gate keeps its state (the systemd unit's StateDirectory=callgate).
DEFAULT_STATE_DIR = Path("/var/lib/callgate")


def sample_text(name: str) -> str:
    """The text of a shipped sample file (``callgate.toml``, ``callgate.conf``…)."""
    return (SAMPLE_DIR / name).read_text(encoding="utf-8")
