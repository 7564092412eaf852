"""The TOML configuration, validated into frozen values before anything runs.

Guarantees: ``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` whose
message names the file, the key (``caps[0].limit``) and what is wrong. Nothing is read
lazily later: a ``Config`` that exists is complete and consistent.

Paths: ``gate.packs_dir`` and ``gate.state_dir``, when relative, are relative to the
file's own directory; without ``packs_dir`` the packs shipped with callgate are used. The
state paths (``redis.data_dir``, ``privacy.secret_file``), when relative, are relative to
``gate.state_dir``, whose default is ``$STATE_DIRECTORY`` (set by systemd's
``StateDirectory=``), else ``/var/lib/callgate``: state never lands beside a config file
in ``/etc``. A path the file gives is resolved (no ``..`` left in it), as commands use it
and messages show it.

Loading has one side effect, and only when asked (``create_secret``, what ``run`` and the
admin commands do): a missing ``privacy.secret_file`` is created with a random secret.
``callgate config check`` loads without it.
"""

from __future__ import annotations

import codecs
import dataclasses
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gate.config._reader import IDENT_RE, Reader, parse_duration_s
from gate.config.files import DEFAULT_STATE_DIR, PACKS_DIR
from gate.config.packs import (
    load_pack,
    optional_calendars,
    pack_origin,
    parse_caps,
    parse_lists,
    validate_references,
)
from gate.core.errors import ConfigError, GateError
from gate.core.evidence import MIN_MAX_LEN
from gate.core.keys import SLOT_GROUPS
from gate.core.model import TrafficClass, Verdict
from gate.core.numbers import NumberType, is_known_region, parse_e164
from gate.core.policy import FailMode, Policy
from gate.core.rules import CapRule, CooloffRule, ListRule, Pack

__all__ = [
    "AgiConfig",
    "ApiConfig",
    "AriConfig",
    "AuditConfig",
    "Config",
    "ConsoleConfig",
    "HttpConfig",
    "LoggingConfig",
    "Network",
    "RedisConfig",
    "SentinelConfig",
    "default_config_path",
    "is_loopback",
    "load_config",
    "parse_duration_s",
]

SECRET_ENV = "CALLGATE_SECRET"
# The shortest number-hashing secret accepted, wherever it comes from: under a short one
# the stored hashes of phone numbers (a small space) are recovered by trying every
# secret. The secret file callgate creates holds 64 hex characters.
MIN_SECRET_CHARS = 16
_MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_hex(32))'"
# Set by systemd for a unit with StateDirectory= (the first directory if several).
STATE_DIRECTORY_ENV = "STATE_DIRECTORY"
CONFIG_ENV = "CALLGATE_CONFIG"
ARI_PASSWORD_ENV = "CALLGATE_ARI_PASSWORD"
API_TOKEN_ENV = "CALLGATE_API_TOKEN"
REDIS_PASSWORD_ENV = "CALLGATE_REDIS_PASSWORD"
SENTINEL_PASSWORD_ENV = "CALLGATE_SENTINEL_PASSWORD"
# How long the event loop polls for a reply due soon (Redis's, the rest of a FastAGI header
# block) instead of sleeping: the guest kernel's own default halt polling, longer than a
# decision's round trip to a Redis nearby (gate/store/poll.py).
DEFAULT_BUSY_POLL_S = 200e-6


@dataclass(frozen=True, slots=True)
class SentinelConfig:
    """The sentinels that watch a Redis master (``[redis.sentinel]``, mode "sentinel")."""

    nodes: tuple[tuple[str, int], ...]
    service: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """How callgate reaches Redis (gate/store/connect.py) and what it waits for.

    ``mode``: "single" (``url``, or without one the embedded server in ``data_dir``),
    "sentinel" (the master that ``sentinel`` names) or "cluster" (a Redis Cluster reached
    through the seed ``nodes``). ``pool_size`` connections serve the decisions (per
    master in a cluster); a decision waits at most ``pool_wait_s`` for one, then at most
    ``deadline_s`` for Redis's answer. Opt-outs, consent revocations and refusals are
    acknowledged only once ``wait_replicas`` replicas hold them (``WAIT``, at most
    ``wait_timeout_s``). While Redis's answer is due, the event loop polls for it instead of
    sleeping, for ``busy_poll_s`` at most (0: never; gate/store/poll.py)."""

    url: str | None = None
    data_dir: Path = DEFAULT_STATE_DIR / "redis"
    namespace: str = "callgate"
    deadline_s: float = 0.05
    mode: str = "single"
    nodes: tuple[str, ...] = ()  # cluster: seed nodes, redis:// or rediss:// URLs
    pool_size: int = 50
    pool_wait_s: float = 1.0
    embedded_wait_s: float = 60.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    sentinel: SentinelConfig | None = None
    wait_replicas: int = 0
    wait_timeout_s: float = 1.0
    busy_poll_s: float = DEFAULT_BUSY_POLL_S


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AgiConfig:
    """The FastAGI door: where it listens and who may connect."""

    host: str = "127.0.0.1"
    port: int = 4573
    header_timeout_s: float = 2.0
    # How long the event loop polls for the rest of a header block instead of sleeping, at
    # most (0: never; gate/store/poll.py).
    busy_poll_s: float = DEFAULT_BUSY_POLL_S
    # Peers (addresses or CIDR networks) allowed to connect; empty: anyone who can reach
    # the address, which only a loopback host may have (a non-loopback one must list them).
    allow: tuple[Network, ...] = ()


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
    # The dialplan context (dialplan/callgate.conf's ``callgate-decided``) a decided channel
    # is continued to, its extension carrying CALLGATE_DECISION: one REST call per ALLOW.
    # "": set the variable, then continue after Stasis() (two REST calls).
    decided_context: str = "callgate-decided"
    # REST requests over the event WebSocket when Asterisk answers them there (recent
    # releases, e.g. 22.10; probed on each connect), else over HTTP. False: always HTTP.
    rest_over_websocket: bool = True
    # Channels decided at once (each a Redis decision and its REST calls); the others (a
    # flood of StasisStart, an Asterisk replaying) wait their turn, none dropped.
    max_deciding: int = 256


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """One HTTP listener for /metrics, /healthz, /readyz and the admin API (gate/http.py)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9473  # 0: any free port (logged at start)
    # How often list sizes and ages are re-read from Redis for /metrics.
    list_refresh_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The admin API's bearer token (required unless the listener is loopback-only)."""

    token: str | None = field(default=None, repr=False)
    # Host names (or addresses) of this server that clients use besides loopback and
    # http.host: the API refuses any other Host or Origin (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The web console at ``/`` of the HTTP listener (gate/ops/console.py)."""

    enabled: bool = True
    # A session (the API token exchanged for a cookie) ends this long after sign-in, or
    # after 30 minutes without a request (gate/ops/sessions.py), whichever comes first.
    session_s: float = 8 * 3600.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit trail (gate/audit.py): a Redis Stream capped by age and by length."""

    enabled: bool = True
    max_age_s: float = 90 * 86400.0
    max_len: int = 5_000_000


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str = "text"  # "text" | "logfmt" | "json"
    stream: str = "stderr"  # "stderr" | "stdout" (stdout also carries command output)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    policy: Policy
    redis: RedisConfig
    agi: AgiConfig
    fail_mode: FailMode
    default_tenant: str
    hash_numbers: bool
    # None while hashing is on only when loaded without ``create_secret`` and the secret
    # file does not exist yet (``config check``): such a Config cannot open a gate.
    secret: bytes | None
    ari: AriConfig | None = None
    http: HttpConfig = HttpConfig()
    api: ApiConfig = ApiConfig()
    console: ConsoleConfig = ConsoleConfig()
    logging: LoggingConfig = LoggingConfig()
    audit: AuditConfig = AuditConfig()
    state_dir: Path = DEFAULT_STATE_DIR
    packs_dir: Path = PACKS_DIR
    secret_file: Path | None = None  # privacy.secret_file, resolved (None: not used)
    secret_from: str = ""  # where the secret came from: $CALLGATE_SECRET, a file… (messages)


_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_config_path() -> Path:
    """``$CALLGATE_CONFIG``, else ``config/callgate.toml`` here, else ``/etc/callgate/``'s."""
    if env := os.environ.get(CONFIG_ENV):
        return Path(env)
    local = Path("config/callgate.toml")
    return local if local.exists() else Path("/etc/callgate/callgate.toml")


def _verdict(reader: Reader, key: str, default: Verdict) -> Verdict:
    return Verdict(reader.choice(key, tuple(v.value for v in Verdict), default.value))


def _number_types(reader: Reader) -> dict[TrafficClass, frozenset[NumberType]]:
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


def _check_lists(
    lists: tuple[ListRule, ...], packs: tuple[Pack, ...], origin: str, packs_dir: Path
) -> None:
    """Exemptions name block lists; packs' rules name lists that exist with the right kind
    (an error in a pack's rule names the config file, then the pack file: ``load_pack``)."""
    kinds = {rule.name: rule.kind for rule in lists}
    # A list two packs define (and the config does not) must be the same list in both:
    # list commands resolve a name in the first pack naming it, a decision in the first
    # pack of the number's region, so with another scope an opt-out added for one pack's
    # numbers would land in a key (global, or per tenant) the other pack's decisions never
    # read, and its numbers be called.
    first: dict[str, tuple[str, ListRule]] = {}
    for pack in packs:
        for rule in pack.lists:
            kinds.setdefault(rule.name, rule.kind)
            if any(own.name == rule.name for own in lists):
                continue
            seen = first.setdefault(rule.name, (pack.id, rule))
            if (seen[1].kind, seen[1].scope) != (rule.kind, rule.scope):
                raise ConfigError(
                    f"{origin}: pack {pack.id} defines list {rule.name!r} as a {rule.scope} "
                    f"{rule.kind} list, pack {seen[0]} as a {seen[1].scope} {seen[1].kind} "
                    f"list; define [[lists]] {rule.name!r} in the config (it takes "
                    "precedence) or rename it in one pack"
                )
    for index, rule in enumerate(lists):
        for target in rule.exempts:
            if kinds.get(target) != "block":
                raise ConfigError(
                    f"{origin}: lists[{index}].exempts: {target!r} is not a block list"
                )
    for pack in packs:
        validate_references(pack, lists, pack_origin(origin, packs_dir / f"{pack.id}.toml"))


def _check_rule_ids(caps: tuple[CapRule, ...], packs: tuple[Pack, ...], origin: str) -> None:
    """No two caps (the config's and the packs') nor two packs' cool-offs share an id and
    a scope: their state is keyed by id and scope (gate/core/keys.py ``cap_suffix``,
    ``cooloff_suffix``), so they would share one attempt log or marker, each counting the
    other's attempts (or events) for its own classes, prefixes and regions. Ids are
    unique within one table already (gate/config/packs.py ``_unique``); the config's caps
    add to the packs' (they do not override them)."""
    seen: dict[tuple[str, str, str], str] = {}

    def claim(kind: str, rule: CapRule | CooloffRule, where: str) -> None:
        key = (kind, rule.id, rule.scope)
        if key in seen:
            raise ConfigError(
                f"{origin}: {where} has the id {rule.id!r} and the scope {rule.scope} of "
                f"{seen[key]}: both would use one {kind}; rename one of them"
            )
        seen[key] = where

    for index, cap in enumerate(caps):
        claim("attempt log", cap, f"caps[{index}]")
    for pack in packs:
        for index, cap in enumerate(pack.caps):
            claim("attempt log", cap, f"pack {pack.id} caps[{index}]")
        for index, cool in enumerate(pack.cooloffs):
            claim("cool-off marker", cool, f"pack {pack.id} cooloff[{index}]")


def _tenants(
    reader: Reader, region: str, optional: frozenset[str]
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """Per tenant: the caller IDs it may present, and the optional pack calendars it opted
    in to (``calendars``: ids of ``optional`` ``[[calendars]]`` of the enabled packs)."""
    caller_ids: dict[str, frozenset[str]] = {}
    calendars: dict[str, frozenset[str]] = {}
    for tenant in list(reader.data):
        table = reader.table(tenant)
        if not IDENT_RE.fullmatch(tenant):
            raise reader.fail(tenant, "tenant names must be 1-64 of A-Z a-z 0-9 _ . -")
        # Each caller ID as written, by its E.164 number: "01 23 45 67 89" and
        # "+33123456789" are one number, the second spelling not another caller ID.
        numbers: dict[str, str] = {}
        for value in table.get("caller_ids", list, []):
            try:
                number = parse_e164(str(value), region)
            except GateError as exc:
                raise table.fail("caller_ids", str(exc)) from None
            if number in numbers:
                first = numbers[number]
                what = (
                    f"{first!r} is listed twice"
                    if first == str(value)
                    else f"{str(value)!r} is {number}, listed already as {first!r}"
                )
                raise table.fail("caller_ids", f"{what}; list each caller ID once")
            numbers[number] = str(value)
        opted = table.get("calendars", list, [])
        for name in opted:
            if not isinstance(name, str) or name not in optional:
                known = ", ".join(sorted(optional)) or "none"
                raise table.fail(
                    "calendars",
                    f"{name!r} is not an optional calendar of the enabled packs ({known})",
                )
        table.once_each("calendars", opted, "calendar")
        table.done()
        caller_ids[tenant] = frozenset(numbers)
        if opted:
            calendars[tenant] = frozenset(str(name) for name in opted)
    reader.done()
    return caller_ids, calendars


def _trunks(reader: Reader) -> tuple[dict[str, int], int]:
    default = reader.get("default_cps", int, 0)
    caps: dict[str, int] = {}
    cps = reader.table("cps")
    for name in list(cps.data):
        if not IDENT_RE.fullmatch(name):
            raise cps.fail(name, "trunk names must be 1-64 of A-Z a-z 0-9 _ . -")
        value = cps.get(name, int, 0)
        if value < 0:
            raise cps.fail(name, f"calls per second must be >= 0 (0 = no cap), got {value}")
        caps[name] = value
    if default < 0:
        raise reader.fail("default_cps", f"must be >= 0 (0 = no cap), got {default}")
    reader.done()
    return caps, default


def _ari(reader: Reader) -> AriConfig | None:
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
        reconnect_max_s=_loop_interval(
            reader, "reconnect_max", "30s", "a shorter one reconnects to Asterisk in a tight loop"
        ),
        decided_context=_context(reader, "decided_context", "callgate-decided"),
        rest_over_websocket=bool(reader.get("rest_over_websocket", bool, True)),
        max_deciding=_max_deciding(reader),
    )
    reader.done()
    return config


def _max_deciding(reader: Reader) -> int:
    value = int(reader.get("max_deciding", int, 256))
    if not 1 <= value <= MAX_DECIDING:
        raise reader.fail(
            "max_deciding", f"must be 1-{MAX_DECIDING} channels decided at once, got {value}"
        )
    return value


def _context(reader: Reader, key: str, default: str) -> str:
    """A dialplan context name, or "" (not used)."""
    value = reader.get(key, str, default)
    if value and not IDENT_RE.fullmatch(value):
        raise reader.fail(
            key, f"expected a dialplan context name (A-Z a-z 0-9 _ . -), got {value!r}"
        )
    return str(value)


# The shortest pause of a loop that runs for ever (ari.reconnect_max, http.list_refresh):
# at 1us the list refresher took a whole CPU and sent Redis 150 000 commands a second,
# and the Stasis door retried a down Asterisk 7000 times a second.
MIN_LOOP_INTERVAL_S = 1.0


def _loop_interval(reader: Reader, key: str, default: str, why: str) -> float:
    """A duration that paces a long-lived loop: at least ``MIN_LOOP_INTERVAL_S``."""
    seconds = reader.duration(key, default)
    if seconds < MIN_LOOP_INTERVAL_S:
        raise reader.fail(
            key, f"must be at least {MIN_LOOP_INTERVAL_S:g}s ({why}), got {seconds:g}s"
        )
    return seconds


def _http(reader: Reader) -> HttpConfig:
    port = reader.get("port", int, 9473)
    if not 0 <= port <= 65535:
        raise reader.fail("port", f"must be 0-65535 (0: any free port), got {port}")
    config = HttpConfig(
        enabled=bool(reader.get("enabled", bool, True)),
        host=_listen_host(reader),
        port=port,
        list_refresh_s=_loop_interval(
            reader, "list_refresh", "60s", "each refresh reads every list's size from Redis"
        ),
    )
    reader.done()
    return config


def _api(reader: Reader, http: HttpConfig) -> ApiConfig:
    token = os.environ.get(API_TOKEN_ENV) or reader.get("token", str, None)
    reader.seen.add("token")
    hosts = reader.get("allowed_hosts", list, [])
    for host in hosts:
        if not isinstance(host, str) or not (_HOST_RE.fullmatch(host) or _is_address(host)):
            raise reader.fail(
                "allowed_hosts", f"entries must be host names or addresses, got {host!r}"
            )
    reader.done()
    if token is not None and len(token) < 16:
        raise reader.fail("token", "must be at least 16 characters (e.g. openssl rand -hex 32)")
    if http.enabled and not token and not is_loopback(http.host):
        raise reader.fail(
            "token",
            f"is required when http.host is {http.host!r} (not loopback): set api.token "
            f"or ${API_TOKEN_ENV}",
        )
    return ApiConfig(token=token or None, allowed_hosts=tuple(h.lower() for h in hosts))


def _console(reader: Reader) -> ConsoleConfig:
    session_s = reader.duration("session", "8h")
    if not 60 <= session_s <= 30 * 86400:
        raise reader.fail("session", "must be between 1m and 30d")
    config = ConsoleConfig(enabled=bool(reader.get("enabled", bool, True)), session_s=session_s)
    reader.done()
    return config


def _logging(reader: Reader) -> LoggingConfig:
    config = LoggingConfig(
        format=reader.choice("format", ("text", "logfmt", "json"), "text"),
        stream=reader.choice("stream", ("stderr", "stdout"), "stderr"),
    )
    reader.done()
    return config


def _exists(path: Path) -> bool | None:
    """Whether ``path`` exists; None when that cannot be known (a directory on the way
    that this user may not enter: ``Path.exists`` raises then)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None
    return True


def _short_secret(value: str) -> str | None:
    """Why ``value`` is too short to be the number-hashing secret (None: it is not)."""
    if len(value) >= MIN_SECRET_CHARS:
        return None
    chars = f"{len(value)} character{'' if len(value) == 1 else 's'}"
    return (
        f"the secret has {chars}, fewer than {MIN_SECRET_CHARS}: numbers "
        f"hashed with it would be easy to recover; use a random one, e.g. {_MAKE_SECRET}"
    )


def _secret(
    reader: Reader, path: Path | None, hash_numbers: bool, create: bool
) -> tuple[bytes | None, str]:
    """The number-hashing secret and where it came from (for messages); one shorter than
    ``MIN_SECRET_CHARS`` is refused wherever it comes from (an empty ``$CALLGATE_SECRET``
    is unset, as an empty ``$CALLGATE_API_TOKEN`` is)."""
    literal: str | None = reader.get("secret", str, None)
    reader.done()
    if env := os.environ.get(SECRET_ENV):
        if (why := _short_secret(env)) is not None:
            raise ConfigError(f"${SECRET_ENV}: {why}")
        return env.encode(), f"${SECRET_ENV}"
    if literal is not None:
        if (why := _short_secret(literal)) is not None:
            raise reader.fail("secret", why)
        return literal.encode(), "privacy.secret"
    if path is not None:
        if not create and _exists(path) is False:
            return None, str(path)  # config check: created by the first command that needs it
        try:
            if _exists(path) is False:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(32) + "\n")
            value: str = path.read_text().strip()
        except OSError as exc:
            exists = _exists(path)
            if exists is None:  # its directory cannot be entered: another user's
                what = (
                    f"cannot reach {path}: {exc.strerror}; run callgate as the user that "
                    f"owns its directory, or give the secret in ${SECRET_ENV}"
                )
            elif exists:  # the secret of the lists already stored: never replaced
                what = (
                    f"cannot read {path}: {exc.strerror}; run callgate as the user that "
                    f"owns it, or give that secret in ${SECRET_ENV}"
                )
            else:
                what = (
                    f"cannot create {path}: {exc.strerror}; make its directory writable "
                    f"for this user, or set gate.state_dir (or privacy.secret_file) to a "
                    f"writable directory, or give the secret in ${SECRET_ENV}"
                )
            raise reader.fail("secret_file", what) from exc
        if (why := _short_secret(value)) is not None:
            raise reader.fail("secret_file", f"{path}: {why}")
        return value.encode(), str(path)
    if hash_numbers:
        raise reader.fail(
            "secret",
            f"numbers are hashed but no secret is set; set ${SECRET_ENV}, privacy.secret_file "
            "or privacy.secret (or privacy.hash_numbers = false)",
        )
    return None, "none"


def _cluster_nodes(reader: Reader) -> tuple[str, ...]:
    """``[redis] nodes``: seed nodes of a Redis Cluster, ``redis://host:port`` each (a port
    1-65535)."""
    nodes = reader.get("nodes", list, [])
    if not nodes:
        raise reader.fail(
            "nodes",
            'mode = "cluster" needs the seed nodes, e.g. nodes = ["redis://10.0.0.1:6379", '
            '"redis://10.0.0.2:6379"]',
        )
    seen: dict[tuple[str, int], int] = {}
    for index, node in enumerate(nodes):
        key = f"nodes[{index}]"
        if not isinstance(node, str) or not node.startswith(("redis://", "rediss://")):
            raise reader.fail(
                key, f"expected redis://host:port or rediss://host:port, got {node!r}"
            )
        try:
            parts = urlsplit(node)
            port = parts.port
        except ValueError as exc:
            raise reader.fail(key, f"{node!r} is not a URL: {exc}") from None
        if not parts.hostname or port is None:
            raise reader.fail(key, f"{node!r} needs a host and a port (redis://host:port)")
        if port == 0:  # gate/store/connect.py (as redis-py) would take it for 6379
            raise reader.fail(key, f"{_without_credentials(node)!r}: the port must be 1-65535")
        if parts.path.strip("/") not in ("", "0"):
            raise reader.fail(key, f"{node!r}: a Redis Cluster has only database 0")
        # A seed node listed twice is one seed fewer than the list shows (urlsplit gives
        # the host name in lower case).
        if (where := seen.setdefault((parts.hostname, port), index)) != index:
            raise reader.fail(
                key,
                f"{_without_credentials(node)!r} is the node of nodes[{where}] again; list "
                "each seed node once",
            )
    return tuple(str(node) for node in nodes)


# The query arguments redis-py casts to numbers (redis/connection.py,
# URL_QUERY_ARGUMENT_PARSERS): one that is not a number fails every command's connection.
_URL_NUMBER_ARGUMENTS: dict[str, type[int] | type[float]] = {
    "db": int,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_read_size": int,
    "max_connections": int,
    "health_check_interval": int,
    "ssl_min_version": int,
    "timeout": float,
    "protocol": int,
}
_URL_DB_PATH_RE = re.compile(r"/?[0-9]*")
# The query arguments that would replace what callgate gives redis-py's pool for the same
# setting (from_url lets the query win): each with where to set it instead. gate/store/
# connect.py passes pool_size as max_connections, pool_wait as timeout, timeouts derived
# from deadline (the admin pool's own long ones too), the [redis] credentials and TLS
# files, and a retry policy that never re-sends.
_URL_SETTINGS_OF_CALLGATE: dict[str, str] = {
    "max_connections": "set redis.pool_size instead",
    "timeout": "set redis.pool_wait instead",
    "socket_timeout": "set redis.deadline instead",
    "socket_connect_timeout": "set redis.deadline instead",
    "username": "set redis.username (or user@ in the URL) instead",
    "password": "set redis.password (or $CALLGATE_REDIS_PASSWORD) instead",
    "ssl_ca_certs": "set redis.tls_ca_file instead",
    "ssl_certfile": "set redis.tls_cert_file instead",
    "ssl_keyfile": "set redis.tls_key_file instead",
    "retry": "remove it (callgate decides whether a command may be sent again)",
    "decode_responses": "remove it (callgate reads Redis's replies as bytes)",
}


def _check_redis_url(reader: Reader, url: str) -> None:
    """``[redis] url`` as redis-py's ``from_url`` reads it, checked now rather than by every
    command: redis://host[:port][/db], rediss://… or unix:///path[?db=N]; a port 1-65535
    (redis-py would take 0 for 6379), a database that is a whole number (redis-py would
    take /abc for 0), numbers in the query arguments it casts, and no query argument
    that would replace one of callgate's settings (``?max_connections=`` for pool_size…).
    Messages leave out the credentials."""
    shown = _without_credentials(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise reader.fail("url", f"expected redis://, rediss:// or unix://, got {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address, a bracketed non-address
        raise reader.fail("url", f"{shown!r} is not a URL: {exc}") from None
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme == "unix":
        if parts.hostname or port is not None or not parts.path.startswith("/"):
            raise reader.fail(
                "url", f"{shown!r}: expected unix:///path/to/redis.sock (an absolute path)"
            )
    else:
        if port is not None and not 1 <= port <= 65535:
            raise reader.fail("url", f"{shown!r}: the port must be a number 1-65535")
        if not parts.hostname:
            raise reader.fail(
                "url", f"{shown!r} needs a host (redis://host:port/db, IPv6 in [brackets])"
            )
        path = unquote(parts.path)
        if not _URL_DB_PATH_RE.fullmatch(path):
            raise reader.fail(
                "url", f"{shown!r}: the database must be a whole number like /0, got {path!r}"
            )
    for name, values in parse_qs(parts.query).items():
        if name in _URL_SETTINGS_OF_CALLGATE:
            raise reader.fail(
                "url",
                # Not the URL: the value of ?password= is in it.
                f"the query argument {name}= would override callgate's own setting: "
                f"{_URL_SETTINGS_OF_CALLGATE[name]}",
            )
        cast = _URL_NUMBER_ARGUMENTS.get(name)
        if cast is None:
            continue
        try:
            number = cast(values[0])
        except ValueError:
            number = -1
        if not number >= 0:  # NaN too
            raise reader.fail("url", f"{shown!r}: {name} must be a number >= 0, got {values[0]!r}")


def _without_credentials(url: str) -> str:
    """``url`` without the user name and password it may carry, for a message."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return scheme + sep + netloc.rpartition("@")[2] + slash + path


REDIS_MODES = ("single", "sentinel", "cluster")
MAX_BUSY_POLL_S = 0.01


def _busy_poll(reader: Reader) -> float:
    """``busy_poll``: how long the event loop polls for a reply due soon instead of
    sleeping, at most (``DEFAULT_BUSY_POLL_S`` when absent; 0 or false: never)."""
    value = reader.get("busy_poll", (int, float, str), None)
    if value is None:
        return DEFAULT_BUSY_POLL_S
    if value in (0, "0"):  # false too (False == 0)
        return 0.0
    try:
        seconds = parse_duration_s(value, "busy_poll")
    except ConfigError:
        seconds = -1.0
    if not 0 < seconds <= MAX_BUSY_POLL_S:
        raise reader.fail(
            "busy_poll",
            f"expected a duration up to {MAX_BUSY_POLL_S * 1000:g}ms like 200us (a longer "
            f"poll only spins the CPU), or 0 to turn it off, got {value!r}",
        )
    return seconds


MAX_POOL_SIZE = 10_000
MAX_DECIDING = 10_000  # [ari] max_deciding: past it the cap bounds nothing a flood strains
MAX_WAIT_REPLICAS = 16


def _redis(reader: Reader, state_dir: Path, base: Path) -> RedisConfig:
    """``[redis]``: the embedded server's data under ``state_dir``; TLS files relative to
    the config file (``base``)."""
    mode = reader.choice("mode", REDIS_MODES, "single")
    url = reader.get("url", str, None)
    if url is not None:
        _check_redis_url(reader, url)
    pool_size = reader.get("pool_size", int, 50)
    if not 1 <= pool_size <= MAX_POOL_SIZE:
        raise reader.fail("pool_size", f"must be 1-{MAX_POOL_SIZE} connections, got {pool_size}")
    sentinel = _sentinel(reader) if mode == "sentinel" else None
    if mode == "sentinel" and url:
        raise reader.fail("url", 'mode = "sentinel" takes [redis.sentinel] nodes, not a url')
    if mode != "sentinel" and "sentinel" in reader.data:
        raise reader.fail("sentinel", 'is only read with mode = "sentinel"')
    if mode != "sentinel" and "tls" in reader.data:
        raise reader.fail(
            "tls", 'is for mode = "sentinel"; a single server or a cluster uses rediss:// URLs'
        )
    nodes: tuple[str, ...] = ()
    if mode == "cluster":
        if url is not None:
            raise reader.fail("url", 'with mode = "cluster" give the seed nodes in redis.nodes')
        nodes = _cluster_nodes(reader)
    elif "nodes" in reader.data:
        raise reader.fail("nodes", 'seed nodes are for mode = "cluster"; set it, or use url')
    # Safe by default: with sentinels or a cluster there are replicas, and an opt-out
    # acknowledged by a master alone can vanish in a failover (replication is asynchronous).
    wait_replicas = reader.get("wait_replicas", int, 0 if mode == "single" else 1)
    if not 0 <= wait_replicas <= MAX_WAIT_REPLICAS:
        raise reader.fail(
            "wait_replicas", f"must be 0-{MAX_WAIT_REPLICAS} replicas, got {wait_replicas}"
        )
    wait_timeout_s = reader.duration("wait_timeout", "1s")
    if wait_timeout_s > 60:
        raise reader.fail("wait_timeout", "must be at most 60s (a user waits for the answer)")
    if wait_timeout_s < 0.001:
        # WAIT takes whole milliseconds, and WAIT with 0 waits for the replicas for ever.
        raise reader.fail("wait_timeout", f"must be at least 1ms, got {wait_timeout_s:g}s")
    password = os.environ.get(REDIS_PASSWORD_ENV) or reader.get("password", str, None)
    reader.seen.add("password")
    config = RedisConfig(
        url=url or None,
        data_dir=_data_dir(reader, state_dir),
        namespace=reader.ident("namespace", "callgate"),
        deadline_s=reader.duration("deadline", "50ms"),
        mode=mode,
        nodes=nodes,
        pool_size=pool_size,
        pool_wait_s=reader.duration("pool_wait", "1s"),
        embedded_wait_s=reader.duration("embedded_wait", "60s"),
        username=reader.get("username", str, None),
        password=password or None,
        tls=bool(reader.get("tls", bool, False)),
        tls_ca_file=_file(reader, base, "tls_ca_file"),
        tls_cert_file=_file(reader, base, "tls_cert_file"),
        tls_key_file=_file(reader, base, "tls_key_file"),
        sentinel=sentinel,
        wait_replicas=wait_replicas,
        wait_timeout_s=wait_timeout_s,
        busy_poll_s=_busy_poll(reader),
    )
    reader.done()
    return config


def _data_dir(reader: Reader, state_dir: Path) -> Path:
    """``data_dir``: the embedded Redis's directory, relative to ``state_dir``, and never
    the state directory itself or one above it: the server makes its directory and every
    file in it private, and writes its data there, beside the secret file."""
    given = str(reader.get("data_dir", str, "redis"))
    data_dir = _under(state_dir, given)
    if state_dir.resolve().is_relative_to(data_dir):  # both resolved: through any symlink
        raise reader.fail(
            "data_dir",
            f"{given!r} is the state directory {state_dir} or one above it; give the embedded "
            'Redis a directory of its own, e.g. data_dir = "redis"',
        )
    return data_dir


# "host:port": a host name or address, an IPv6 address in brackets; the port in ASCII digits
# (str.isdigit also takes "²", which int() refuses).
_SENTINEL_NODE_RE = re.compile(r"(\[[^\[\]]+\]|[^\[\]]+):([0-9]{1,5})")


def _sentinel(redis: Reader) -> SentinelConfig:
    """``[redis.sentinel]``: nodes = ["host:port", …], service, and the sentinels' own auth."""
    if "sentinel" not in redis.data:
        raise redis.fail("sentinel", 'mode = "sentinel" needs a [redis.sentinel] table')
    reader = redis.table("sentinel")
    nodes = reader.get("nodes", list, None)
    if not nodes:
        raise reader.fail("nodes", 'is required: the sentinels as ["host:26379", …]')
    parsed: list[tuple[str, int]] = []
    for index, node in enumerate(nodes):
        match = _SENTINEL_NODE_RE.fullmatch(node) if isinstance(node, str) else None
        if not match:
            raise reader.fail(f"nodes[{index}]", f'expected "host:port", got {node!r}')
        host, port = match.group(1), int(match.group(2))
        if host.startswith("[") and not _is_address(host := host[1:-1]):
            raise reader.fail(f"nodes[{index}]", f"{host!r} in [brackets] is not an IP address")
        if not 0 < port <= 65535:
            raise reader.fail(f"nodes[{index}]", f"port must be 1-65535, got {port}")
        # A sentinel listed twice is one sentinel fewer than the list shows (host names
        # are not case-sensitive).
        same = [i for i, (h, p) in enumerate(parsed) if (h.lower(), p) == (host.lower(), port)]
        if same:
            raise reader.fail(
                f"nodes[{index}]",
                f"{node!r} is the sentinel of nodes[{same[0]}] again; list each sentinel once",
            )
        parsed.append((host, port))
    password = os.environ.get(SENTINEL_PASSWORD_ENV) or reader.get("password", str, None)
    reader.seen.add("password")
    config = SentinelConfig(
        nodes=tuple(parsed),
        service=reader.ident("service"),
        username=reader.get("username", str, None),
        password=password or None,
        tls=bool(reader.get("tls", bool, bool(redis.data.get("tls", False)))),
    )
    reader.done()
    return config


def _file(reader: Reader, base: Path, key: str) -> Path | None:
    """An optional path (relative to the config file) that must name a readable file."""
    value = reader.get(key, str, None)
    if value is None:
        return None
    path = _under(base, str(value))
    if not path.is_file():
        raise reader.fail(key, f"{path} is not a file")
    return path


def _listen_host(reader: Reader) -> str:
    """``host`` of a listener: an address or a name, never "" (which asyncio and aiohttp
    take for every interface, IPv4 and IPv6)."""
    host = str(reader.get("host", str, "127.0.0.1"))
    if not host:
        raise reader.fail(
            "host",
            "expected the address to listen on, e.g. 127.0.0.1 (or 0.0.0.0 for every "
            "interface), got ''",
        )
    return host


def _agi(reader: Reader) -> AgiConfig:
    port = reader.get("port", int, 4573)
    if not 0 <= port <= 65535:
        raise reader.fail("port", f"must be 0-65535, got {port}")
    host = _listen_host(reader)
    allow: list[Network] = []
    for index, entry in enumerate(reader.get("allow", list, [])):
        try:
            if not isinstance(entry, str):
                raise TypeError(entry)
            allow.append(ipaddress.ip_network(entry.strip(), strict=False))
        except (TypeError, ValueError):
            raise reader.fail(
                f"allow[{index}]", f"expected an address or network like 10.0.0.0/8, got {entry!r}"
            ) from None
    if not allow and not is_loopback(host):
        raise reader.fail(
            "allow",
            f"is required when agi.host is {host!r} (not loopback): list the Asterisk servers "
            'that may connect, e.g. allow = ["10.0.0.5", "10.1.0.0/16"]',
        )
    config = AgiConfig(
        host=host,
        port=port,
        header_timeout_s=reader.duration("header_timeout", "2s"),
        allow=tuple(allow),
        busy_poll_s=_busy_poll(reader),
    )
    reader.done()
    return config


def _fail_mode(reader: Reader) -> FailMode:
    config = FailMode(
        campaign=_verdict(reader, "campaign", Verdict.DEFER),
        manual=_verdict(reader, "manual", Verdict.DEFER),
        retry_after_s=reader.duration("retry_after", "60s"),
    )
    reader.done()
    return config


def _audit(reader: Reader) -> AuditConfig:
    max_len = reader.get("max_len", int, 5_000_000)
    if max_len < MIN_MAX_LEN:
        raise reader.fail(
            "max_len",
            f"keep at least {MIN_MAX_LEN} records ({MIN_MAX_LEN // SLOT_GROUPS} in each of"
            f" the {SLOT_GROUPS} slot groups' streams), got {max_len}",
        )
    config = AuditConfig(
        enabled=bool(reader.get("enabled", bool, True)),
        max_age_s=reader.duration("max_age", "90d"),
        max_len=max_len,
    )
    reader.done()
    return config


@dataclass(frozen=True, slots=True)
class _GateSection:
    region: str
    default_tenant: str
    pack_names: tuple[str, ...]
    packs_dir: Path
    state_dir: Path
    tenants: frozenset[str]
    open_tenants: bool


def _under(base: Path, given: str) -> Path:
    """Path ``given`` of the config, relative to ``base`` (as is if absolute), resolved as
    the file's own directory is: what commands use and messages show, without the ``..``
    of ``state_dir = "../var"`` (``config check`` showed ``/etc/callgate/../var``)."""
    return (base / given).resolve()


def _state_dir(reader: Reader, base: Path) -> Path:
    given = str(reader.get("state_dir", str, ""))
    if given:
        return _under(base, given)
    from_systemd = os.environ.get(STATE_DIRECTORY_ENV, "").split(":")[0]
    return Path(from_systemd) if from_systemd else DEFAULT_STATE_DIR


def _gate(reader: Reader, base: Path) -> _GateSection:
    region = str(reader.get("default_region", str, "FR")).upper()
    if len(region) != 2 or not region.isalpha():
        raise reader.fail(
            "default_region", f"expected a two-letter region code like FR, got {region!r}"
        )
    if not is_known_region(region):
        # Every national number would be BLOCK invalid_number.
        raise reader.fail(
            "default_region",
            f"{region!r} is not a region whose numbers callgate can read; use an ISO 3166 "
            "code like FR, GB or US",
        )
    packs_dir = str(reader.get("packs_dir", str, ""))
    tenants = reader.get("tenants", list, [])
    for name in tenants:
        if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
            raise reader.fail("tenants", f"entries must be 1-64 of A-Z a-z 0-9 _ . -, got {name!r}")
    reader.once_each("tenants", tenants, "tenant")
    pack_names = tuple(str(n) for n in reader.get("packs", list, []))
    # A pack named twice was loaded twice: its rules checked twice on each call, and its
    # caps and cool-offs refused as another table's ("rename one of them").
    reader.once_each("packs", pack_names, "pack", "its rules would apply twice")
    section = _GateSection(
        region=region,
        default_tenant=reader.ident("default_tenant", "default"),
        pack_names=pack_names,
        packs_dir=_under(base, packs_dir) if packs_dir else PACKS_DIR,
        state_dir=_state_dir(reader, base),
        tenants=frozenset(tenants),
        open_tenants=bool(reader.get("open_tenants", bool, False)),
    )
    reader.done()
    return section


def _policy(root: Reader, gate: _GateSection, origin: str, check_holidays: bool) -> Policy:
    trunk_cps, default_cps = _trunks(root.table("trunks"))
    lists = parse_lists(root)
    packs = tuple(
        load_pack(name, gate.packs_dir, origin=origin, check_holidays=check_holidays)
        for name in gate.pack_names
    )
    _check_lists(lists, packs, origin, gate.packs_dir)
    caps = parse_caps(root)
    _check_rule_ids(caps, packs, origin)
    caller_ids, calendars = _tenants(
        root.table("tenants"), gate.region, optional_calendars(packs, origin)
    )
    return Policy(
        default_region=gate.region,
        lists=lists,
        caps=caps,
        packs=packs,
        caller_ids=caller_ids,
        tenant_calendars=calendars,
        tenants=frozenset({gate.default_tenant, *gate.tenants, *caller_ids, *calendars}),
        open_tenants=gate.open_tenants,
        blocked_types=_number_types(root.table("number_types")),
        trunk_cps=trunk_cps,
        default_trunk_cps=default_cps,
    )


def parse_config(
    data: Mapping[str, Any],
    origin: str,
    base: Path,
    *,
    create_secret: bool = True,
    check_holidays: bool = True,
) -> Config:
    """Validate an already-parsed TOML document (``base``: the directory relative paths
    start from; ``create_secret``: create a missing secret file; ``check_holidays`` False:
    the packs' holiday calendars are checked for their form only, not looked up in the
    holidays package, for a command that never decides)."""
    root = Reader(data, "", origin)
    gate = _gate(root.table("gate"), base)
    redis = _redis(root.table("redis"), gate.state_dir, base)
    agi = _agi(root.table("agi"))
    fail_mode = _fail_mode(root.table("fail_mode"))
    ari = _ari(root.table("ari")) if "ari" in data else None
    http = _http(root.table("http"))
    api = _api(root.table("api"), http)
    console = _console(root.table("console"))
    logging = _logging(root.table("logging"))
    audit = _audit(root.table("audit"))
    privacy = root.table("privacy")
    hash_numbers = bool(privacy.get("hash_numbers", bool, True))
    secret_name = privacy.get("secret_file", str, None)
    secret_file = _under(gate.state_dir, secret_name) if secret_name else None
    secret, secret_from = _secret(privacy, secret_file, hash_numbers, create_secret)
    policy = _policy(root, gate, origin, check_holidays)
    root.done()
    return Config(
        path=None,
        policy=policy,
        redis=redis,
        agi=agi,
        fail_mode=fail_mode,
        default_tenant=gate.default_tenant,
        hash_numbers=hash_numbers,
        secret=secret,
        ari=ari,
        http=http,
        api=api,
        console=console,
        logging=logging,
        audit=audit,
        state_dir=gate.state_dir,
        packs_dir=gate.packs_dir,
        secret_file=secret_file,
        secret_from=secret_from,
    )


def load_config(path: Path, *, create_secret: bool = True, check_holidays: bool = True) -> Config:
    """Read and validate ``path``; every problem is a one-line ``ConfigError``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file; pass --config FILE or set ${CONFIG_ENV}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    # An editor's byte-order mark: tomllib would say "Invalid statement (at line 1, column 1)"
    # of a line that looks right, or "not UTF-8" of a file saved as "Unicode".
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(f"{path}: not UTF-8 text but UTF-16; save it as UTF-8 (without BOM)")
    if raw.startswith(codecs.BOM_UTF8):
        raise ConfigError(
            f"{path}: starts with a byte-order mark (BOM), which TOML does not allow; "
            "save it as UTF-8 without BOM"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(
        data,
        str(path),
        path.resolve().parent,
        create_secret=create_secret,
        check_holidays=check_holidays,
    )
    return dataclasses.replace(config, path=path)
