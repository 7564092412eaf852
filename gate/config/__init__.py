"""Configuration: the TOML file and the rule packs, validated into frozen values.

Owns: loading and validating ``callgate.toml`` (``load_config``) and the rule packs it
enables (``config/packs/*.toml``), with errors that name the file and the key.

May import: ``gate.core`` and the standard library (tomllib, os, pathlib…). Nothing of the
store, the doors or operations.
"""

from __future__ import annotations

from gate.config.loader import Config, default_config_path, load_config, parse_config

__all__ = ["Config", "default_config_path", "load_config", "parse_config"]
