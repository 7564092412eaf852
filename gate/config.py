"""The TOML configuration, validated into frozen values before anything runs.

Guarantees: ``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` whose
message names the file, the key (``caps[0].limit``) and what is wrong. Nothing is read
lazily later: a ``Config`` that exists is complete and consistent. Relative paths in the
file are relative to the file's own directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate.errors import ConfigError
from gate.model import TrafficClass, Verdict
from gate.numbers import NumberType

__all__ = [
    "AgiConfig",
    "AriConfig",
    "CapRule",
    "Config",
    "FailMode",
    "ListRule",
    "Policy",
    "RedisConfig",
    "default_config_path",
    "load_config",
    "parse_duration_s",
]

SECRET_ENV = "CALLGATE_SECRET"
CONFIG_ENV = "CALLGATE_CONFIG"
ARI_PASSWORD_ENV = "CALLGATE_ARI_PASSWORD"
# Identifiers end up inside Redis key names: no braces (hash tags), no colons (separators).
IDENT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class ListRule:
    """A named list. ``block`` lists refuse; ``allow`` lists exempt from the block lists
    named in ``exempts``. ``scope`` says whose list it is: one ``global`` list, one per
    ``tenant``, or one per tenant's ``campaign``."""

    name: str
    kind: str  # "block" | "allow"
    scope: str  # "global" | "tenant" | "campaign"
    exempts: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class CapRule:
    """At most ``limit`` allowed attempts to one destination per rolling ``window_s``."""

    id: str
    limit: int
    window_s: float
    scope: str  # "global" | "tenant" | "campaign"
    classes: frozenset[TrafficClass]
    source: str = ""


@dataclass(frozen=True, slots=True)
class FailMode:
    """What to answer, per traffic class, when Redis is down or slower than the deadline."""

    campaign: Verdict = Verdict.DEFER
    manual: Verdict = Verdict.DEFER
    retry_after_s: float = 60.0

    def verdict_for(self, traffic_class: TrafficClass) -> Verdict:
        return self.campaign if traffic_class is TrafficClass.CAMPAIGN else self.manual


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the pure decision core needs, and nothing else."""

    default_region: str = "FR"
    lists: tuple[ListRule, ...] = ()
    caps: tuple[CapRule, ...] = ()
    blocked_types: Mapping[TrafficClass, frozenset[NumberType]] = field(default_factory=dict)
    trunk_cps: Mapping[str, int] = field(default_factory=dict)
    default_trunk_cps: int = 0

    def list_rule(self, name: str) -> ListRule | None:
        return next((rule for rule in self.lists if rule.name == name), None)

    def cps_for(self, trunk: str) -> int:
        return self.trunk_cps.get(trunk, self.default_trunk_cps) if trunk else 0


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str | None = None
    data_dir: Path = Path("var/redis")
    namespace: str = "callgate"
    deadline_s: float = 0.05


@dataclass(frozen=True, slots=True)
class AgiConfig:
    host: str = "127.0.0.1"
    port: int = 4573
    header_timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class AriConfig:
    """The Stasis door: where Asterisk's ARI is and what to do with refused calls."""

    url: str
    user: str
    password: str = field(repr=False)
    app: str = "callgate"
    # "hangup": BLOCK/DEFER channels are hung up with the decision's cause (1 REST call);
    # "continue": every channel continues with CALLGATE_DECISION set (the dialplan decides).
    on_refuse: str = "hangup"
    rest_timeout_s: float = 2.0
    reconnect_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    policy: Policy
    redis: RedisConfig
    agi: AgiConfig
    fail_mode: FailMode
    default_tenant: str
    hash_numbers: bool
    secret: bytes | None
    ari: AriConfig | None = None


def default_config_path() -> Path:
    """``$CALLGATE_CONFIG``, else ``config/callgate.toml`` here, else ``/etc/callgate/``'s."""
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    local = Path("config/callgate.toml")
    return local if local.exists() else Path("/etc/callgate/callgate.toml")


def parse_duration_s(value: object, where: str) -> float:
    """``30`` (seconds), ``"30d"``, ``"24h"``, ``"1s"``, ``"500ms"`` → seconds (> 0)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration like 30d, 24h or 1s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ConfigError(f"{where}: expected a duration like 30d, 24h or 1s, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{where}: must be longer than zero, got {value!r}")
    return seconds


class _Reader:
    """Typed access to one TOML table, with errors that name the key path."""

    def __init__(self, data: Mapping[str, Any], where: str, origin: str) -> None:
        self.data, self.where, self.origin = data, where, origin
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.origin}: {self._key(key)}: {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"expected {_article(names)}, got {value!r}")
        return value

    def ident(self, key: str, default: str | None = None) -> str:
        value = self.get(key, str, default)
        if value is None:
            raise self.fail(key, "is required")
        if not IDENT_RE.match(value):
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

    def table(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict, {}), self._key(key), self.origin)

    def tables(self, key: str) -> list[_Reader]:
        items = self.get(key, list, [])
        readers = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{index}]", "expected a table ([[" + key + "]])")
            readers.append(_Reader(item, f"{self._key(key)}[{index}]", self.origin))
        return readers

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key (misspelt?)")


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _verdict(reader: _Reader, key: str, default: Verdict) -> Verdict:
    return Verdict(reader.choice(key, tuple(v.value for v in Verdict), default.value))


def _lists(root: _Reader) -> tuple[ListRule, ...]:
    rules: list[ListRule] = []
    for reader in root.tables("lists"):
        kind = reader.choice("kind", ("block", "allow"), "block")
        exempts = reader.get("exempts", list, [])
        if kind == "block" and exempts:
            raise reader.fail("exempts", "only an allow list can exempt from other lists")
        rules.append(
            ListRule(
                name=reader.ident("name"),
                kind=kind,
                scope=reader.choice("scope", ("global", "tenant", "campaign"), "tenant"),
                exempts=tuple(str(name) for name in exempts),
                description=str(reader.get("description", str, "")),
            )
        )
        reader.done()
    names = [rule.name for rule in rules]
    for index, rule in enumerate(rules):
        if names.count(rule.name) > 1:
            raise root.fail(f"lists[{index}].name", f"{rule.name!r} is defined twice")
        for target in rule.exempts:
            found = next((r for r in rules if r.name == target), None)
            if found is None or found.kind != "block":
                raise root.fail(f"lists[{index}].exempts", f"{target!r} is not a block list")
    return tuple(rules)


def _caps(root: _Reader) -> tuple[CapRule, ...]:
    rules: list[CapRule] = []
    for reader in root.tables("caps"):
        limit = reader.get("limit", int, None)
        if limit is None or limit < 1:
            raise reader.fail("limit", f"must be a whole number of attempts >= 1, got {limit!r}")
        classes = reader.get("classes", list, [c.value for c in TrafficClass])
        try:
            parsed_classes = frozenset(TrafficClass(c) for c in classes)
        except ValueError:
            raise reader.fail(
                "classes", f"entries must be campaign or manual, got {classes!r}"
            ) from None
        rules.append(
            CapRule(
                id=reader.ident("id"),
                limit=int(limit),
                window_s=reader.duration("window", None),
                scope=reader.choice("scope", ("global", "tenant", "campaign"), "tenant"),
                classes=parsed_classes,
                source=str(reader.get("source", str, "")),
            )
        )
        reader.done()
    ids = [rule.id for rule in rules]
    for index, rule in enumerate(rules):
        if ids.count(rule.id) > 1:
            raise root.fail(f"caps[{index}].id", f"{rule.id!r} is defined twice")
    return tuple(rules)


def _number_types(reader: _Reader) -> dict[TrafficClass, frozenset[NumberType]]:
    allowed = tuple(t.value for t in NumberType)
    out: dict[TrafficClass, frozenset[NumberType]] = {}
    for traffic_class in TrafficClass:
        key = f"{traffic_class.value}_blocked"
        default = (
            ["premium", "shared_cost", "short"] if traffic_class is TrafficClass.CAMPAIGN else []
        )
        values = reader.get(key, list, default)
        bad = [v for v in values if v not in allowed]
        if bad:
            raise reader.fail(
                key, f"unknown number type {bad[0]!r}; use one of {', '.join(allowed)}"
            )
        out[traffic_class] = frozenset(NumberType(v) for v in values)
    reader.done()
    return out


def _trunks(reader: _Reader) -> tuple[dict[str, int], int]:
    default = reader.get("default_cps", int, 0)
    caps: dict[str, int] = {}
    cps = reader.table("cps")
    for name in list(cps.data):
        if not IDENT_RE.match(name):
            raise cps.fail(name, "trunk names must be 1-64 of A-Z a-z 0-9 _ . -")
        value = cps.get(name, int, 0)
        if value < 0:
            raise cps.fail(name, f"calls per second must be >= 0 (0 = no cap), got {value}")
        caps[name] = value
    if default < 0:
        raise reader.fail("default_cps", f"must be >= 0 (0 = no cap), got {default}")
    reader.done()
    return caps, default


def _ari(reader: _Reader) -> AriConfig | None:
    if not reader.get("enabled", bool, True):
        reader.seen.update(reader.data)
        return None
    url = reader.get("url", str, None)
    if not url or not url.startswith(("http://", "https://")):
        raise reader.fail(
            "url", f"expected the ARI base URL like http://127.0.0.1:8088/ari, got {url!r}"
        )
    if "@" in url.split("//", 1)[1].split("/", 1)[0]:
        raise reader.fail("url", "put the credentials in ari.user and ari.password, not the URL")
    user = reader.get("user", str, None)
    if not user:
        raise reader.fail("user", "is required (the ari.conf user)")
    password = os.environ.get(ARI_PASSWORD_ENV) or reader.get("password", str, None)
    reader.seen.add("password")
    if not password:
        raise reader.fail("password", f"is required (or set ${ARI_PASSWORD_ENV})")
    config = AriConfig(
        url=url.rstrip("/"),
        user=user,
        password=password,
        app=reader.ident("app", "callgate"),
        on_refuse=reader.choice("on_refuse", ("hangup", "continue"), "hangup"),
        rest_timeout_s=reader.duration("rest_timeout", "2s"),
        reconnect_max_s=reader.duration("reconnect_max", "30s"),
    )
    reader.done()
    return config


def _secret(reader: _Reader, base: Path, hash_numbers: bool) -> bytes | None:
    literal: str | None = reader.get("secret", str, None)
    secret_file = reader.get("secret_file", str, None)
    reader.done()
    if env := os.environ.get(SECRET_ENV):
        return env.encode()
    if literal:
        return literal.encode()
    if secret_file:
        path = base / secret_file
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32) + "\n")
            value: str = path.read_text().strip()
        except OSError as exc:
            raise reader.fail(
                "secret_file", f"cannot read or create {path}: {exc.strerror}"
            ) from exc
        if len(value) < 16:
            raise reader.fail("secret_file", f"{path} holds fewer than 16 characters")
        return value.encode()
    if hash_numbers:
        raise reader.fail(
            "secret",
            f"numbers are hashed but no secret is set; set ${SECRET_ENV}, privacy.secret_file "
            "or privacy.secret (or privacy.hash_numbers = false)",
        )
    return None


def parse_config(data: Mapping[str, Any], origin: str, base: Path) -> Config:
    """Validate an already-parsed TOML document (``base``: where relative paths start)."""
    root = _Reader(data, "", origin)
    gate = root.table("gate")
    region = str(gate.get("default_region", str, "FR")).upper()
    if len(region) != 2 or not region.isalpha():
        raise gate.fail(
            "default_region", f"expected a two-letter region code like FR, got {region!r}"
        )
    default_tenant = gate.ident("default_tenant", "default")
    gate.done()

    redis = root.table("redis")
    url = redis.get("url", str, None)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise redis.fail("url", f"expected redis://, rediss:// or unix://, got {url!r}")
    redis_config = RedisConfig(
        url=url or None,
        data_dir=base / str(redis.get("data_dir", str, "var/redis")),
        namespace=redis.ident("namespace", "callgate"),
        deadline_s=redis.duration("deadline", "50ms"),
    )
    redis.done()

    agi = root.table("agi")
    port = agi.get("port", int, 4573)
    if not 0 <= port <= 65535:
        raise agi.fail("port", f"must be 0-65535, got {port}")
    agi_config = AgiConfig(
        host=str(agi.get("host", str, "127.0.0.1")),
        port=port,
        header_timeout_s=agi.duration("header_timeout", "2s"),
    )
    agi.done()

    fail = root.table("fail_mode")
    fail_mode = FailMode(
        campaign=_verdict(fail, "campaign", Verdict.DEFER),
        manual=_verdict(fail, "manual", Verdict.DEFER),
        retry_after_s=fail.duration("retry_after", "60s"),
    )
    fail.done()

    ari_config = _ari(root.table("ari")) if "ari" in data else None

    privacy = root.table("privacy")
    hash_numbers = bool(privacy.get("hash_numbers", bool, True))
    secret = _secret(privacy, base, hash_numbers)

    trunk_cps, default_cps = _trunks(root.table("trunks"))
    policy = Policy(
        default_region=region,
        lists=_lists(root),
        caps=_caps(root),
        blocked_types=_number_types(root.table("number_types")),
        trunk_cps=trunk_cps,
        default_trunk_cps=default_cps,
    )
    root.done()
    return Config(
        path=None,
        policy=policy,
        redis=redis_config,
        agi=agi_config,
        fail_mode=fail_mode,
        default_tenant=default_tenant,
        hash_numbers=hash_numbers,
        secret=secret,
        ari=ari_config,
    )


def load_config(path: Path) -> Config:
    """Read and validate ``path``; every problem is a one-line ``ConfigError``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file; pass --config FILE or set ${CONFIG_ENV}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return dataclasses.replace(parse_config(data, str(path), path.resolve().parent), path=path)
