"""The import contract: the layers of callgate, and the arrows each may have.

From the top (each layer may import only the layers below it, never one above; the three
siblings in the middle never import each other):

    gate.launch               the ``callgate`` command's entry point (SIGHUP caught first)
    gate.cli                  the command line
    gate.runtime              wiring: config → Redis → store → gate, the doors, operations
    agi | gate.stasis | gate.ops
                              the two doors (FastAGI, Stasis) and operations (HTTP, API,
                              metrics, reload, audit, logs), siblings
    gate.lists                list administration, import formats, scrub
    gate.service              the per-call path every door uses
    gate.store                Redis, Lua, the embedded server
    gate.config               the TOML file and the rule packs
    gate.core                 the pure decision core (and ``gate`` itself, which re-exports it)

Besides the order:
- ``gate.core`` imports only itself, pure standard-library modules (``CORE_STDLIB``: no
  asyncio, socket, os, io, pathlib, subprocess, tomllib, logging…), phonenumbers, holidays
  and tzdata;
- a door (``agi``, ``gate.stasis``) never imports the store (``gate.store``, or redis-py
  itself), and the store never imports a door (the order already forbids it).

Imports inside functions count too. The check reads the source (AST); it runs nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Highest first; a layer is a tuple of sibling packages that may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("gate.launch",),
    ("gate.cli",),
    ("gate.runtime",),
    ("agi", "gate.stasis", "gate.ops"),
    ("gate.lists",),
    ("gate.service",),
    ("gate.store",),
    ("gate.config",),
    ("gate.core", "gate"),
)
DOORS = ("agi", "gate.stasis")
CORE_STDLIB = frozenset(
    {
        "__future__",
        "bisect",
        "collections",
        "dataclasses",
        "datetime",
        "enum",
        "functools",
        "hashlib",
        "itertools",
        "math",
        "operator",
        "re",
        "string",
        "typing",
        "unicodedata",
        "urllib.parse",
        "zoneinfo",
    }
)
CORE_THIRD_PARTY = frozenset({"phonenumbers", "holidays", "tzdata"})


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            yield node.lineno, node.module or ""


def _owner(module: str) -> tuple[int, str] | None:
    """(layer index, package) that ``module`` belongs to; None for other packages."""
    best: tuple[int, str] | None = None
    for index, layer in enumerate(LAYERS):
        for package in layer:
            inside = module == package or module.startswith(package + ".")
            if inside and (best is None or len(package) > len(best[1])):
                best = (index, package)
    return best


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(root: Path = ROOT) -> list[str]:
    """Every import that breaks the contract, as ``file:line: what``."""
    found: list[str] = []
    sources = sorted([*(root / "gate").rglob("*.py"), *(root / "agi").rglob("*.py")])
    for path in sources:
        importer = _module_name(path, root)
        mine = _owner(importer)
        assert mine is not None, f"{importer} belongs to no layer: add it to LAYERS"
        where = f"{path.relative_to(root)}"
        for line, imported in _imports(path):
            theirs = _owner(imported)
            if _within(importer, "gate.core"):
                top = imported.split(".")[0]
                allowed = (
                    _within(imported, "gate.core")
                    or imported in CORE_STDLIB
                    or top in CORE_THIRD_PARTY
                    or (top in CORE_STDLIB and top != "urllib")
                )
                if not allowed:
                    found.append(f"{where}:{line}: the pure core imports {imported}")
                continue
            if any(_within(importer, door) for door in DOORS) and (
                _within(imported, "gate.store") or imported.split(".")[0] == "redis"
            ):
                found.append(f"{where}:{line}: a door imports the store ({imported})")
                continue
            if theirs is None:
                continue
            if theirs[0] < mine[0]:
                found.append(
                    f"{where}:{line}: {mine[1]} imports {imported}, a higher layer ({theirs[1]})"
                )
            elif (
                theirs[0] == mine[0] and theirs[1] != mine[1] and "gate" not in (mine[1], theirs[1])
            ):
                found.append(f"{where}:{line}: {mine[1]} imports its sibling {imported}")
    return found


def test_every_import_follows_the_layers() -> None:
    """No module imports a higher layer, a sibling, or (core) anything impure."""
    assert [] == violations()


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("gate/core/engine.py", "import redis\n", "the pure core imports redis"),
        ("gate/core/keys.py", "import os\n", "the pure core imports os"),
        ("gate/core/numbers.py", "from gate.store import Store\n", "imports gate.store"),
        ("agi/server.py", "from gate.store.client import Store\n", "a door imports the store"),
        ("gate/stasis/door.py", "import redis.asyncio\n", "a door imports the store"),
        ("gate/store/client.py", "from gate.lists import ListAdmin\n", "a higher layer"),
        ("gate/ops/api.py", "from gate.stasis import door\n", "its sibling gate.stasis"),
        ("gate/service.py", "from gate.ops.audit import AuditLog\n", "a higher layer"),
    ],
)
def test_a_wrong_arrow_is_caught(tmp_path: Path, path: str, source: str, expected: str) -> None:
    """A deliberate bad import in a copy of the tree is reported, naming file and line."""
    for package in ("gate", "agi"):
        for file in (ROOT / package).rglob("*.py"):
            target = tmp_path / file.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(file.read_text(encoding="utf-8"), encoding="utf-8")
    bad = tmp_path / path
    bad.write_text(source + bad.read_text(encoding="utf-8"), encoding="utf-8")
    found = violations(tmp_path)
    assert 1 == len(found), found
    assert f"{path}:1:" in found[0], found
    assert expected in found[0], found
