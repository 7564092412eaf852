"""TOML reading helpers shared by the configuration and the rule packs.

``_Reader`` gives typed access to one TOML table and raises ``ConfigError`` messages that
name the file and the key path (``caps[0].limit: …``); ``done()`` rejects unknown keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from gate.core.errors import ConfigError
from gate.core.model import IDENT_RE, TrafficClass

__all__ = ["IDENT_RE", "Reader", "parse_duration_s"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)?\s*$")
_UNIT_S = {
    "us": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    None: 1.0,
}


# The longest duration a setting may name: longer ones (inf, "99999999999999d") overflowed
# where they are used (a retry time in ms, a stream ID, a date).
MAX_DURATION_S = 36500 * 86400.0


def parse_duration_s(value: object, where: str) -> float:
    """``30`` (seconds), ``"30d"``, ``"24h"``, ``"1s"``, ``"500ms"``, ``"200us"`` → seconds
    (> 0, at most ``MAX_DURATION_S``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like 30d, 24h or 1s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ConfigError(f"{where}: expected a duration like 30d, 24h or 1s, got {value!r}")
    if not math.isfinite(seconds):  # TOML's inf and nan, or more digits than a float holds
        raise ConfigError(f"{where}: expected a finite duration like 30d, 24h or 1s, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{where}: must be longer than zero, got {value!r}")
    if seconds > MAX_DURATION_S:  # a fail mode's retry_after of 1e300 raised
        raise ConfigError(f"{where}: must be at most 100 years (36500d), got {value!r}")
    return seconds


class Reader:
    """Typed access to one TOML table, with errors that name the key path."""

    def __init__(self, data: Mapping[str, Any], where: str, origin: str) -> None:
        self.data, self.where, self.origin = data, where, origin
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        # A key with a space or control character is shown quoted, as TOML writes it (a
        # newline in a key must not split the one-line error).
        plain = key.isprintable() and not any(c.isspace() for c in key)
        shown = key if plain else json.dumps(key)
        return f"{self.where}.{shown}" if self.where else shown

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {self._key(key)}: {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        # A TOML date-time is a datetime, a subclass of date that cannot be compared with one.
        if kind is date and isinstance(value, datetime):
            raise self.fail(
                key, f"expected a date like 2026-08-11 (no time of day), got {value.isoformat()}"
            )
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"expected {_article(names)}, got {value!r}")
        return value

    def ident(self, key: str, default: str | None = None) -> str:
        value = self.get(key, str, default)
        if value is None:
            raise self.fail(key, "is required")
        if not IDENT_RE.fullmatch(value):
            raise self.fail(key, f"{value!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        return str(value)

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = str(self.get(key, str, default))
        if value not in allowed:
            raise self.fail(key, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def duration(self, key: str, default: str | None) -> float:
        value = self.get(key, (int, float, str), default)
        if value is None:
            raise self.fail(key, "is required (a duration like 30d, 24h or 1s)")
        try:
            return parse_duration_s(value, self._key(key))
        except ConfigError as exc:
            raise ConfigError(f"{self.origin}: {exc}") from None

    def table(self, key: str) -> Reader:
        return Reader(self.get(key, dict, {}), self._key(key), self.origin)

    def tables(self, key: str) -> list[Reader]:
        items = self.get(key, list, [])
        readers = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{index}]", "expected a table ([[" + key + "]])")
            readers.append(Reader(item, f"{self._key(key)}[{index}]", self.origin))
        return readers

    def once_each(self, key: str, values: Sequence[Hashable], entry: str, why: str = "") -> None:
        """Refuse the list ``key`` if it names one ``entry`` (pack, tenant…) twice: each
        entry names a distinct thing, so a repeat is a slip (another one was meant), or
        worse (``why``: what the repeat would do)."""
        seen: set[Hashable] = set()
        for value in values:
            if value in seen:
                because = f" ({why})" if why else ""
                raise self.fail(key, f"{value!r} is listed twice; list each {entry} once{because}")
            seen.add(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key (misspelt?)")


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def common_fields(reader: Reader) -> dict[str, Any]:
    """The fields every rule may carry: id, source, verify, shadow, validity, reach."""
    classes = reader.get("classes", list, [c.value for c in TrafficClass])
    try:
        parsed_classes = frozenset(TrafficClass(c) for c in classes)
    except ValueError:
        raise reader.fail(
            "classes", f"entries must be campaign or manual, got {classes!r}"
        ) from None
    prefixes = reader.get("prefixes", list, [])
    for prefix in prefixes:
        if not isinstance(prefix, str) or not re.fullmatch(r"\+\d{1,15}", prefix):
            raise reader.fail(
                "prefixes", f"entries must be E.164 prefixes like +1305, got {prefix!r}"
            )
    valid_from = reader.get("valid_from", date, None)
    valid_to = reader.get("valid_to", date, None)
    if valid_from and valid_to and valid_to < valid_from:
        raise reader.fail("valid_to", f"{valid_to} is before valid_from {valid_from}")
    return {
        "id": reader.ident("id"),
        "source": str(reader.get("source", str, "")),
        "verify": bool(reader.get("verify", bool, False)),
        "shadow": bool(reader.get("shadow", bool, False)),
        "valid_from": valid_from,
        "valid_to": valid_to,
        "classes": parsed_classes,
        "prefixes": tuple(prefixes),
    }
