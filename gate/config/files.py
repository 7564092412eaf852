"""The files callgate ships as package data, beside the code that reads them.

- ``PACKS_DIR``: the rule packs (``fr``, ``us``, ``uk``, ``ca``), used unless
  ``[gate] packs_dir`` names another directory;
- ``SAMPLE_DIR``: the sample configuration (``callgate.toml``), the dialplan include
  (``callgate.conf``), the systemd unit (``callgate.service``) and the Grafana dashboard,
  which ``callgate init`` writes out.

``write_init`` writes what an installed gate needs into a directory (``callgate init``),
never overwriting a file that exists.

In the source tree these are symlinks to the canonical files at the top (``config/`` and
``dialplan/``); building the wheel follows them, so an installed callgate has real files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gate.core.errors import InputError

__all__ = [
    "DEFAULT_STATE_DIR",
    "PACKS_DIR",
    "SAMPLE_DIR",
    "init_config",
    "sample_text",
    "write_init",
]

_HERE = Path(__file__).parent
PACKS_DIR = _HERE / "packs"
SAMPLE_DIR = _HERE / "sample"
# Where an installed gate keeps its state (the systemd unit's StateDirectory=callgate).
DEFAULT_STATE_DIR = Path("/var/lib/callgate")


def sample_text(name: str) -> str:
    """The text of a shipped sample file (``callgate.toml``, ``callgate.conf``…)."""
    return (SAMPLE_DIR / name).read_text(encoding="utf-8")


# The lines of the sample config that ``init`` rewrites (a test keeps them in the sample).
SAMPLE_STATE_LINE = 'state_dir = "../var"'
SAMPLE_PACKS_LINE = '# packs_dir = "packs"'
SAMPLE_STATE_NOTE = "# This sample (`make run` in the source tree) keeps its state in var/ there:"
ENV_TEMPLATE = """\
# Secrets of the callgate service (EnvironmentFile= of callgate.service); keep it 0600.
# The number-hashing key (else privacy.secret_file is used): back it up with the data,
# hashed lists are useless without it. 16+ characters, e.g. openssl rand -hex 32
#CALLGATE_SECRET=
# The admin API's bearer token (16+ characters; required off loopback).
#CALLGATE_API_TOKEN=
# The ARI password of the [ari] user, with the Stasis door.
#CALLGATE_ARI_PASSWORD=
"""


def init_config(state_dir: Path, copy_packs: bool) -> str:
    """The sample config for an installed gate: state in ``state_dir``, packs shipped or
    copied beside it."""
    text = sample_text("callgate.toml")
    for line in (SAMPLE_STATE_LINE, SAMPLE_PACKS_LINE, SAMPLE_STATE_NOTE):
        if text.count(line + "\n") != 1:
            raise RuntimeError(f"the sample config lost its line {line!r}")
    text = text.replace(SAMPLE_STATE_LINE, f"state_dir = {_toml_string(str(state_dir))}")
    if copy_packs:
        text = text.replace(SAMPLE_PACKS_LINE, SAMPLE_PACKS_LINE.lstrip("# "))
    return text.replace(SAMPLE_STATE_NOTE, "# Written by `callgate init`:")


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_init(
    directory: Path, state_dir: Path, copy_packs: bool = False
) -> Iterator[tuple[Path, bool]]:
    """Write the config, the dialplan include, the env file (0600) and, with
    ``copy_packs``, the packs into ``directory``; (path, written) for each, a file that
    exists is kept as it is."""
    files: list[tuple[Path, str, int]] = [
        (directory / "callgate.toml", init_config(state_dir, copy_packs), 0o640),
        (directory / "callgate.conf", sample_text("callgate.conf"), 0o644),
        (directory / "callgate.env", ENV_TEMPLATE, 0o600),
    ]
    if copy_packs:
        for pack in sorted(PACKS_DIR.glob("*.toml")):
            files.append((directory / "packs" / pack.name, pack.read_text("utf-8"), 0o644))
    for path, text, mode in files:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # FileExistsError too: a file where the directory goes
            why = "not a directory" if path.parent.exists() else exc.strerror
            raise InputError(f"{path.parent}: cannot create the directory: {why}") from exc
        yield path, _write_new(path, text, mode)


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _write_new(path: Path, text: str, mode: int) -> bool:
    """Write ``path`` whole (beside it, then linked in: a full disk or a kill leaves no
    half-written config that a later init would keep), unless it exists; whether written."""
    if os.path.lexists(path):
        return False
    partial = None
    try:
        fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, mode & ~_umask())  # as a file created with ``mode``
            handle.write(text)
        try:
            os.link(partial, path)  # never replaces a file that came meanwhile
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP) or os.path.lexists(path):
                raise
            os.rename(partial, path)  # a file system without hard links (FAT)
    except FileExistsError:
        return False
    except OSError as exc:
        raise InputError(
            f"{path}: cannot write: {exc.strerror or exc}; nothing was written there"
        ) from exc
    finally:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)
    return True
