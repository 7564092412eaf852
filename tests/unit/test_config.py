"""Configuration: the sample loads; every mistake names its key (gate.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gate.config.loader import load_config, parse_config, parse_duration_s
from gate.core.errors import ConfigError
from gate.core.model import TrafficClass, Verdict
from gate.core.numbers import NumberType

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "callgate.toml"


def test_sample_config_loads_and_enables_the_french_pack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """config/callgate.toml is valid: FR region, the fr pack (4 per 30 days), DEFER fail mode."""
    monkeypatch.setenv("CALLGATE_SECRET", "x" * 32)
    config = load_config(SAMPLE)
    (pack,) = config.policy.packs
    cap = pack.caps[0]
    assert ("FR", "fr", 4, 30 * 86400.0) == (
        config.policy.default_region,
        pack.id,
        cap.limit,
        cap.window_s,
    )
    assert Verdict.DEFER == config.fail_mode.verdict_for(TrafficClass.CAMPAIGN)
    assert NumberType.PREMIUM in config.policy.blocked_types[TrafficClass.CAMPAIGN]
    assert config.redis.url is None


def test_secret_file_is_created_once_and_reused(tmp_path: Path) -> None:
    """A missing secret_file gets a random secret, private, and the same one next time."""
    data = {"gate": {"state_dir": "."}, "privacy": {"secret_file": "s/secret"}}
    first = parse_config(data, "t.toml", tmp_path).secret
    second = parse_config(data, "t.toml", tmp_path).secret
    assert first == second
    assert first is not None
    assert len(first) >= 32
    assert 0o600 == (tmp_path / "s" / "secret").stat().st_mode & 0o777


SHORT_SECRET = (
    "the secret has {n}, fewer than 16: numbers hashed with it would be easy "
    "to recover; use a random one, e.g. python3 -c 'import secrets; print(secrets.token_hex(32))'"
)


@pytest.mark.parametrize(
    ("secret", "has"), [("", "0 characters"), ("k", "1 character"), ("x" * 15, "15 characters")]
)
def test_a_short_secret_in_the_config_is_refused(tmp_path: Path, secret: str, has: str) -> None:
    """privacy.secret under 16 characters (empty included: not a fallback to the secret
    file): a ConfigError naming the key and how to make one; 16 is accepted."""
    data = {"gate": {"state_dir": "."}, "privacy": {"secret": secret, "secret_file": "s"}}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    ok = {"privacy": {"secret": "x" * 16}}
    assert f"t.toml: privacy.secret: {SHORT_SECRET.format(n=has)}" == str(raised.value)
    assert b"x" * 16 == parse_config(ok, "t.toml", tmp_path).secret


def test_a_short_secret_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CALLGATE_SECRET under 16 characters: a ConfigError naming the variable (a long
    privacy.secret in the file does not hide it); an empty one is unset."""
    data = {"privacy": {"secret": "s" * 20}}
    monkeypatch.setenv("CALLGATE_SECRET", "abc")
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    monkeypatch.setenv("CALLGATE_SECRET", "")
    unset = parse_config(data, "t.toml", tmp_path)
    assert f"$CALLGATE_SECRET: {SHORT_SECRET.format(n='3 characters')}" == str(raised.value)
    assert (b"s" * 20, "privacy.secret") == (unset.secret, unset.secret_from)


def test_a_short_secret_file_is_refused(tmp_path: Path) -> None:
    """A secret file holding under 16 characters: a ConfigError naming it, never
    replaced."""
    (tmp_path / "secret").write_text("short\n")
    data = {"gate": {"state_dir": "."}, "privacy": {"secret_file": "secret"}}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    where = f"t.toml: privacy.secret_file: {tmp_path / 'secret'}"
    assert (f"{where}: {SHORT_SECRET.format(n='5 characters')}", "short\n") == (
        str(raised.value),
        (tmp_path / "secret").read_text(),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"caps": [{"id": "c", "limit": -1, "window": "1d"}]}, "caps[0].limit"),
        ({"caps": [{"id": "c", "limit": 4, "window": "soon"}]}, "caps[0].window"),
        ({"caps": [{"id": "c", "limit": 4}]}, "caps[0].window"),
        ({"caps": [{"id": "c", "limit": 4, "window": "0.4ms"}]}, "caps[0].window: must be at"),
        ({"caps": [{"id": "c", "limit": 4, "window": "999ms"}]}, "caps[0].window: must be at"),
        ({"caps": [{"id": "a b", "limit": 4, "window": "1d"}]}, "caps[0].id"),
        ({"caps": [{"id": "c", "limit": 4, "window": "1d", "classes": ["robot"]}]}, "classes"),
        ({"lists": [{"name": "red", "kind": "maybe"}]}, "lists[0].kind"),
        ({"lists": [{"name": "r{x}"}]}, "lists[0].name"),
        ({"lists": [{"name": "a", "kind": "allow", "exempts": ["nope"]}]}, "lists[0].exempts"),
        ({"lists": [{"name": "a"}, {"name": "a"}]}, "defined twice"),
        ({"gate": {"default_region": "France"}}, "gate.default_region"),
        (
            {"gate": {"default_region": "ZZ"}},
            "gate.default_region: 'ZZ' is not a region whose numbers callgate can read; "
            "use an ISO 3166 code like FR, GB or US",
        ),
        ({"gate": {"colour": "blue"}}, "gate.colour: unknown key"),
        ({"redis": {"url": "http://x"}}, "redis.url"),
        ({"redis": {"deadline": 0}}, "redis.deadline"),
        ({"redis": {"mode": "ring"}}, "redis.mode: must be one of single, sentinel, cluster"),
        ({"redis": {"pool_size": 0}}, "redis.pool_size: must be 1-10000"),
        (
            {"ari": {"url": "http://a/ari", "user": "u", "password": "p", "max_deciding": 0}},
            "ari.max_deciding: must be 1-10000 channels decided at once, got 0",
        ),
        ({"redis": {"pool_wait": "soon"}}, "redis.pool_wait"),
        ({"redis": {"wait_replicas": -1}}, "redis.wait_replicas"),
        ({"redis": {"wait_timeout": "5m"}}, "redis.wait_timeout: must be at most 60s"),
        ({"redis": {"wait_timeout": "500us"}}, "redis.wait_timeout: must be at least 1ms"),
        ({"redis": {"busy_poll": "20ms"}}, "redis.busy_poll: expected a duration up to 10ms"),
        ({"redis": {"busy_poll": -1}}, "redis.busy_poll: expected a duration up to 10ms"),
        ({"agi": {"busy_poll": "soon"}}, "or 0 to turn it off, got 'soon'"),
        ({"agi": {"busy_poll": True}}, "agi.busy_poll: expected a duration up to 10ms"),
        ({"redis": {"mode": "sentinel"}}, 'redis.sentinel: mode = "sentinel" needs'),
        ({"redis": {"mode": "sentinel", "sentinel": {"service": "m"}}}, "redis.sentinel.nodes"),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"nodes": ["h"], "service": "m"}}},
            'redis.sentinel.nodes[0]: expected "host:port"',
        ),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"nodes": ["h:2637²"], "service": "m"}}},
            'redis.sentinel.nodes[0]: expected "host:port"',
        ),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"nodes": ["[::1:26379"], "service": "m"}}},
            'redis.sentinel.nodes[0]: expected "host:port"',
        ),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"nodes": ["[db1]:26379"], "service": "m"}}},
            "redis.sentinel.nodes[0]: 'db1' in [brackets] is not an IP address",
        ),
        (
            {"redis": {"mode": "sentinel", "sentinel": {"nodes": ["h:1"]}}},
            "redis.sentinel.service: is required",
        ),
        (
            {
                "redis": {
                    "mode": "sentinel",
                    "url": "redis://x",
                    "sentinel": {"nodes": ["h:1"], "service": "m"},
                }
            },
            'redis.url: mode = "sentinel" takes',
        ),
        ({"redis": {"sentinel": {"nodes": ["h:1"]}}}, "redis.sentinel: is only read with"),
        ({"redis": {"tls": True}}, 'redis.tls: is for mode = "sentinel"'),
        ({"redis": {"tls_ca_file": "nope.pem"}}, "redis.tls_ca_file"),
        ({"redis": {"mode": "cluster"}}, 'redis.nodes: mode = "cluster" needs the seed nodes'),
        ({"redis": {"mode": "cluster", "nodes": ["unix:///r.sock"]}}, "redis.nodes[0]: expected"),
        ({"redis": {"mode": "cluster", "nodes": ["redis://h"]}}, "needs a host and a port"),
        ({"redis": {"mode": "cluster", "nodes": ["redis://h:1/2"]}}, "only database 0"),
        (
            {"redis": {"mode": "cluster", "nodes": ["redis://u:pw@h:0"]}},
            "redis.nodes[0]: 'redis://h:0': the port must be 1-65535",
        ),
        (
            {"redis": {"mode": "cluster", "nodes": ["redis://h:1"], "url": "redis://h:1"}},
            "redis.url: with mode",
        ),
        ({"redis": {"nodes": ["redis://h:1"]}}, 'redis.nodes: seed nodes are for mode = "cluster"'),
        (
            {"http": {"list_refresh": "1us"}},
            "http.list_refresh: must be at least 1s (each refresh reads every list's size "
            "from Redis), got 1e-06s",
        ),
        (
            {"ari": {"url": "http://a/ari", "user": "u", "password": "p", "reconnect_max": 0.5}},
            "ari.reconnect_max: must be at least 1s (a shorter one reconnects to Asterisk in "
            "a tight loop), got 0.5s",
        ),
        (
            {"agi": {"host": "", "allow": ["10.0.0.5"]}},
            "agi.host: expected the address to listen on, e.g. 127.0.0.1 (or 0.0.0.0 for "
            "every interface), got ''",
        ),
        (
            {"http": {"host": ""}, "api": {"token": "t" * 16}},
            "http.host: expected the address to listen on",
        ),
        (
            {"gate": {"state_dir": "state"}, "redis": {"data_dir": ""}},
            "redis.data_dir: '' is the state directory ",
        ),
        ({"gate": {"state_dir": "state"}, "redis": {"data_dir": "."}}, "redis.data_dir: '.' is"),
        ({"gate": {"state_dir": "s"}, "redis": {"data_dir": "r/../.."}}, "redis.data_dir: 'r/"),
        ({"redis": {"data_dir": "/"}}, "redis.data_dir: '/' is the state directory "),
        ({"agi": {"port": 70000}}, "agi.port"),
        ({"agi": {"port": "4573"}}, "agi.port: expected an int"),
        ({"fail_mode": {"campaign": "MAYBE"}}, "fail_mode.campaign"),
        # Accepted, then the fail mode (Redis down) raised OverflowError on each decision.
        (
            {"fail_mode": {"retry_after": float("inf")}},
            "fail_mode.retry_after: expected a finite duration like 30d, 24h or 1s, got inf",
        ),
        (
            {"fail_mode": {"retry_after": float("nan")}},
            "fail_mode.retry_after: expected a finite duration like 30d, 24h or 1s, got nan",
        ),
        (
            {"fail_mode": {"retry_after": 1e300}},
            "fail_mode.retry_after: must be at most 100 years (36500d), got 1e+300",
        ),
        # Accepted, then age trimming failed every minute (a stream ID out of range).
        (
            {"audit": {"max_age": "100000000000d"}},
            "audit.max_age: must be at most 100 years (36500d), got '100000000000d'",
        ),
        (
            {"audit": {"max_len": 1000}},
            "audit.max_len: keep at least 102400 records (100 in each of the 1024 slot groups'"
            " streams), got 1000",
        ),
        ({"number_types": {"campaign_blocked": ["lava"]}}, "number_types.campaign_blocked"),
        ({"trunks": {"cps": {"t1": -5}}}, "trunks.cps.t1"),
        # ``$`` matches before a final newline: such a name is refused, not a tenant of its own
        ({"gate": {"tenants": ["acme\n"]}}, "gate.tenants"),
        ({"trunks": {"cps": {"t1\n": 5}}}, "trunks.cps"),
        (
            {"tenants": {"acme": {"calendars": [["fr-alsace-moselle"]]}}},
            "tenants.acme.calendars: ['fr-alsace-moselle'] is not an optional calendar",
        ),
        ({"privacy": {"hash_numbers": True}}, "privacy.secret"),
        ({"typo": 1}, "typo: unknown key"),
        (
            {
                "ari": {
                    "url": "http://a/ari",
                    "user": "u",
                    "password": "p",
                    "decided_context": "a b",
                }
            },
            "ari.decided_context",
        ),
        (
            {
                "ari": {
                    "url": "http://a/ari",
                    "user": "u",
                    "password": "p",
                    "rest_over_websocket": 1,
                }
            },
            "ari.rest_over_websocket: expected a bool",
        ),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], message: str, tmp_path: Path) -> None:
    """Each invalid value gives a one-line ConfigError naming the key path."""
    if "privacy" not in data:
        data = {**data, "privacy": {"secret": "s" * 20}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cg.toml", tmp_path)
    text = str(caught.value)
    assert message in text
    assert text.startswith("cg.toml: ")
    assert "\n" not in text


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    """A TOML syntax error says which file and where."""
    path = tmp_path / "bad.toml"
    path.write_text("[gate\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(path)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        (
            "utf-8-sig",
            "starts with a byte-order mark (BOM), which TOML does not allow; "
            "save it as UTF-8 without BOM",
        ),
        ("utf-16", "not UTF-8 text but UTF-16; save it as UTF-8 (without BOM)"),
    ],
)
def test_a_config_saved_with_a_byte_order_mark_says_how_to_save_it(
    tmp_path: Path, encoding: str, message: str
) -> None:
    """The sample saved by an editor with a BOM (UTF-8 or UTF-16) is refused naming the
    encoding, not "Invalid statement (at line 1, column 1)" or "not UTF-8"."""
    path = tmp_path / "bom.toml"
    path.write_text(SAMPLE.read_text(encoding="utf-8"), encoding=encoding)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: {message}" == str(caught.value)


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    """A missing config file tells the user about --config."""
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        ("30d", 2592000.0),
        ("24h", 86400.0),
        ("1s", 1.0),
        ("500ms", 0.5),
        ("2w", 1209600.0),
        ("250us", 0.00025),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations accept seconds or a number with us/ms/s/m/h/d/w."""
    assert seconds == parse_duration_s(text, "x")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:notaport/0", "the port must be a number 1-65535"),
        ("redis://127.0.0.1:99999/0", "the port must be a number 1-65535"),
        ("redis://127.0.0.1:0/0", "the port must be a number 1-65535"),
        ("redis://[::1/0", "is not a URL: Invalid IPv6 URL"),
        ("redis://[db1]:6379/0", "is not a URL"),
        ("redis:///0", "needs a host"),
        ("redis://127.0.0.1:6379/abc", "the database must be a whole number like /0"),
        ("redis://127.0.0.1:6379/1/2", "the database must be a whole number like /0"),
        ("redis://127.0.0.1:6379?db=-1", "db must be a number >= 0, got '-1'"),
        ("unix:///run/redis.sock?db=abc", "db must be a number >= 0, got 'abc'"),
        (
            "redis://h:6379/0?health_check_interval=soon",
            "health_check_interval must be a number >= 0",
        ),
        ("unix://run/redis.sock", "expected unix:///path/to/redis.sock"),
        ("unix://", "expected unix:///path/to/redis.sock"),
    ],
)
def test_a_redis_url_redis_py_cannot_read_is_refused_at_load(
    url: str, message: str, tmp_path: Path
) -> None:
    """A malformed ``redis.url`` (every command failed on it, past ``config check``) is a
    one-line error naming redis.url."""
    data = {"redis": {"url": url}, "privacy": {"secret": "s" * 20}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cg.toml", tmp_path)
    assert str(caught.value).startswith(f"cg.toml: redis.url: '{url}'")
    assert message in str(caught.value)


def test_a_malformed_redis_url_is_shown_without_its_credentials(tmp_path: Path) -> None:
    """The error about a URL with a user and password names the URL without them."""
    data = {"redis": {"url": "redis://u:hunter2@h:1/x"}, "privacy": {"secret": "s" * 20}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cg.toml", tmp_path)
    assert str(caught.value).startswith("cg.toml: redis.url: 'redis://h:1/x': the database")


@pytest.mark.parametrize(
    ("query", "instead"),
    [
        ("max_connections=2", "set redis.pool_size instead"),
        ("timeout=0.001", "set redis.pool_wait instead"),
        ("socket_timeout=0.001", "set redis.deadline instead"),
        ("socket_connect_timeout=9", "set redis.deadline instead"),
        ("username=u", "set redis.username (or user@ in the URL) instead"),
        ("password=hunter2", "set redis.password (or $CALLGATE_REDIS_PASSWORD) instead"),
        ("ssl_ca_certs=/ca.pem", "set redis.tls_ca_file instead"),
        ("ssl_certfile=/c.pem", "set redis.tls_cert_file instead"),
        ("ssl_keyfile=/k.pem", "set redis.tls_key_file instead"),
        ("retry=0", "remove it (callgate decides whether a command may be sent again)"),
        ("decode_responses=false", "remove it (callgate reads Redis's replies as bytes)"),
    ],
)
def test_a_redis_url_query_argument_that_overrides_a_setting_is_refused_naming_the_key(
    query: str, instead: str, tmp_path: Path
) -> None:
    """redis-py lets a URL's query win over the pool's settings: ``?max_connections=2``
    silently replaced pool_size. Such an argument is a one-line error naming the key to
    set instead (and never showing the URL, whose query may hold a password)."""
    name = query.split("=")[0]
    data = {"redis": {"url": f"rediss://h:6380/0?db=1&{query}"}, "privacy": {"secret": "s" * 20}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cg.toml", tmp_path)
    assert (
        f"cg.toml: redis.url: the query argument {name}= would override callgate's own "
        f"setting: {instead}"
    ) == str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://[::1]:6379/1",
        "redis://redis.example",
        "rediss://u:p%40ss@redis.example:6380/",
        "rediss://redis.example:6380/0?ssl_cert_reqs=none",
        "redis://redis.example/0?health_check_interval=30&client_name=gate",
        "unix:///run/redis/redis.sock",
        "unix://:pass@/run/redis/redis.sock?db=2",
    ],
)
def test_a_redis_url_redis_py_reads_is_kept_as_given(url: str, tmp_path: Path) -> None:
    """redis://, rediss:// (IPv6 in brackets, default port, credentials, query arguments)
    and unix:// URLs load unchanged."""
    data = {"redis": {"url": url}, "privacy": {"secret": "s" * 20}}
    assert url == parse_config(data, "cg.toml", tmp_path).redis.url


def test_the_embedded_redis_data_dir_is_below_the_state_dir(tmp_path: Path) -> None:
    """redis.data_dir, relative to gate.state_dir, may be any directory of its own there
    or elsewhere (only the state directory itself, or above it, is refused)."""
    data = {"gate": {"state_dir": "state"}, "privacy": {"secret": "s" * 20}}
    default = parse_config(data, "cg.toml", tmp_path).redis.data_dir
    elsewhere = parse_config(
        {**data, "redis": {"data_dir": str(tmp_path / "srv")}}, "cg.toml", tmp_path
    ).redis.data_dir
    assert (tmp_path / "state" / "redis", tmp_path / "srv") == (default, elsewhere)


def test_config_paths_are_resolved(tmp_path: Path) -> None:
    """A relative state_dir, packs_dir or secret_file is resolved: no ``..`` in what
    commands use and messages show."""
    data = {
        "gate": {"state_dir": "../var", "packs_dir": "packs/../packs"},
        "privacy": {"secret_file": "keys/../callgate.secret"},
    }
    config = parse_config(data, "cg.toml", tmp_path / "etc")
    var = tmp_path.resolve() / "var"
    assert (var, tmp_path.resolve() / "etc" / "packs", var / "callgate.secret", var / "redis") == (
        config.state_dir,
        config.packs_dir,
        config.secret_file,
        config.redis.data_dir,
    )


def test_a_data_dir_through_a_symlinked_state_dir_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data_dir = "."`` under a state directory reached through a symlink (systemd's
    $STATE_DIRECTORY) is still the state directory: refused."""
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    data = {"redis": {"data_dir": "."}, "privacy": {"secret": "s" * 20}}
    with pytest.raises(ConfigError, match=r"redis\.data_dir: '\.' is the state directory"):
        parse_config(data, "cg.toml", tmp_path)


def test_cluster_mode_keeps_its_seed_nodes(tmp_path: Path) -> None:
    """``[redis] mode = "cluster"`` with seed nodes: the config carries them, no url."""
    config = parse_config(
        {
            "redis": {"mode": "cluster", "nodes": ["redis://10.0.0.1:6379", "rediss://b:7000/0"]},
            "privacy": {"secret": "s" * 20},
        },
        "cg.toml",
        tmp_path,
    )
    assert ("cluster", ("redis://10.0.0.1:6379", "rediss://b:7000/0"), None) == (
        config.redis.mode,
        config.redis.nodes,
        config.redis.url,
    )


def test_the_stasis_door_continues_to_the_decided_context_unless_told_not_to(
    tmp_path: Path,
) -> None:
    """[ari] decided_context defaults to the include file's callgate-decided; "" turns the
    one-request continue off."""
    ari = {"url": "http://127.0.0.1:8088/ari", "user": "u", "password": "p"}
    secret = {"secret": "s" * 20}
    default = parse_config({"ari": ari, "privacy": secret}, "cg.toml", tmp_path).ari
    off = parse_config(
        {"ari": {**ari, "decided_context": ""}, "privacy": secret}, "cg.toml", tmp_path
    ).ari
    assert ("callgate-decided", "") == (
        default.decided_context if default else None,
        off.decided_context if off else None,
    )


def test_rest_goes_over_the_event_websocket_unless_turned_off(tmp_path: Path) -> None:
    """[ari] rest_over_websocket defaults to true (used when Asterisk answers it)."""
    ari = {"url": "http://127.0.0.1:8088/ari", "user": "u", "password": "p"}
    secret = {"secret": "s" * 20}
    default = parse_config({"ari": ari, "privacy": secret}, "cg.toml", tmp_path).ari
    off = parse_config(
        {"ari": {**ari, "rest_over_websocket": False}, "privacy": secret}, "cg.toml", tmp_path
    ).ari
    assert (True, False) == (
        default.rest_over_websocket if default else None,
        off.rest_over_websocket if off else None,
    )


SENTINEL = {
    "mode": "sentinel",
    "sentinel": {"nodes": ["10.0.0.1:26379", "[::1]:26380"], "service": "callgate"},
}


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (None, 200e-6),
        ("50us", 50e-6),
        ("1ms", 0.001),
        (0.002, 0.002),
        (0, 0.0),
        ("0", 0.0),
        (False, 0.0),
    ],
)
def test_busy_poll_defaults_to_200us_and_0_or_false_turns_it_off(
    given: object, seconds: float, tmp_path: Path
) -> None:
    """``busy_poll`` in [redis] (Redis's replies) and [agi] (a header block's lines): 200 µs
    when absent, a duration up to 10 ms, or 0 / false for none."""
    data: dict[str, Any] = {"privacy": {"secret": "s" * 20}}
    if given is not None:
        data |= {"redis": {"busy_poll": given}, "agi": {"busy_poll": given}}
    config = parse_config(data, "cg.toml", tmp_path)
    assert (config.redis.busy_poll_s, config.agi.busy_poll_s) == pytest.approx((seconds, seconds))


def test_sentinel_mode_reads_nodes_and_is_durable_by_default(tmp_path: Path) -> None:
    """mode = "sentinel": nodes as (host, port), the service, and opt-outs wait for one
    replica by default (a single server waits for none)."""
    sentinel = parse_config(
        {"redis": SENTINEL, "privacy": {"secret": "s" * 20}}, "cg.toml", tmp_path
    ).redis
    single = parse_config({"privacy": {"secret": "s" * 20}}, "cg.toml", tmp_path).redis
    assert sentinel.sentinel is not None
    assert ((("10.0.0.1", 26379), ("::1", 26380)), "callgate") == (
        sentinel.sentinel.nodes,
        sentinel.sentinel.service,
    )
    assert (1, 0) == (sentinel.wait_replicas, single.wait_replicas)
    assert (50, 1.0) == (single.pool_size, single.pool_wait_s)


def test_redis_passwords_come_from_the_environment_and_are_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CALLGATE_REDIS_PASSWORD and $CALLGATE_SENTINEL_PASSWORD win over the file, and a
    printed config never shows them."""
    monkeypatch.setenv("CALLGATE_REDIS_PASSWORD", "from-env-1")
    monkeypatch.setenv("CALLGATE_SENTINEL_PASSWORD", "from-env-2")
    data = {"redis": {**SENTINEL, "password": "in-file"}, "privacy": {"secret": "s" * 20}}
    redis = parse_config(data, "cg.toml", tmp_path).redis
    assert redis.sentinel is not None
    assert ("from-env-1", "from-env-2") == (redis.password, redis.sentinel.password)
    assert "from-env" not in repr(redis)


def test_config_check_names_the_sentinels_and_the_durability(tmp_path: Path) -> None:
    """``config check`` says a sentinel config uses the sentinels' master and that
    opt-outs wait for a replica (not "embedded")."""
    from gate.runtime import describe_redis

    config = parse_config({"redis": SENTINEL, "privacy": {"secret": "s" * 20}}, "cg.toml", tmp_path)
    assert (
        "sentinel: master of service 'callgate' via 10.0.0.1:26379, ::1:26380; "
        "opt-outs wait for 1 replica(s)"
    ) == describe_redis(config)


def test_an_unknown_pack_names_the_packs_there(tmp_path: Path) -> None:
    """A typo in gate.packs: one line naming the file it looked for and the packs that
    exist (a pack directory of one's own lists its own)."""
    packs = SAMPLE.parent / "packs"
    data = {
        "gate": {"packs": ["fr", "de"], "packs_dir": str(packs)},
        "privacy": {"secret": "x" * 32},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    shipped = ", ".join(sorted(path.stem for path in packs.glob("*.toml")))
    assert str(raised.value) == (
        f"t.toml: gate.packs: no pack 'de' ({packs / 'de.toml'} does not exist; packs there: "
        f"{shipped}); check gate.packs and gate.packs_dir"
    )
    assert "fr, " in shipped


def test_the_stasis_door_decides_a_bounded_number_of_channels_at_once(tmp_path: Path) -> None:
    """[ari] max_deciding defaults to 256 channels decided at once."""
    ari = {"url": "http://127.0.0.1:8088/ari", "user": "u", "password": "p"}
    secret = {"secret": "s" * 20}
    default = parse_config({"ari": ari, "privacy": secret}, "cg.toml", tmp_path).ari
    few = parse_config(
        {"ari": {**ari, "max_deciding": 8}, "privacy": secret}, "cg.toml", tmp_path
    ).ari
    assert (256, 8) == (
        default.max_deciding if default else None,
        few.max_deciding if few else None,
    )


def _pack_defining(directory: Path, pack_id: str, region: str, scope: str) -> None:
    """A pack of ``region`` whose one list, "natdnc", is a block list of ``scope``."""
    (directory / f"{pack_id}.toml").write_text(
        f'[pack]\nid = "{pack_id}"\nversion = "1"\ndescription = "x"\nregions = ["{region}"]\n'
        f'\n[[lists]]\nname = "natdnc"\nkind = "block"\nscope = "{scope}"\n'
    )


def test_two_packs_defining_one_list_with_other_scopes_are_refused(tmp_path: Path) -> None:
    """A list named by two packs, one global, one per tenant: list commands wrote the
    first pack's key (global) while the second pack's decisions read the tenant's, so a
    number added for its region was never refused. Refused at load, naming both packs;
    the config's own definition of the list settles it."""
    _pack_defining(tmp_path, "pa", "FR", "global")
    _pack_defining(tmp_path, "pb", "GB", "tenant")
    data: dict[str, Any] = {
        "gate": {"packs": ["pa", "pb"], "packs_dir": str(tmp_path)},
        "privacy": {"secret": "x" * 32},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    assert str(raised.value).startswith(
        "t.toml: pack pb defines list 'natdnc' as a tenant block list, pack pa as a global "
        "block list; define [[lists]] 'natdnc' in the config"
    )
    own = {"name": "natdnc", "kind": "block", "scope": "tenant"}
    config = parse_config({**data, "lists": [own]}, "t.toml", tmp_path)
    assert config.policy.list_rule("natdnc") == config.policy.lists[0]


def _pack_with(directory: Path, pack_id: str, region: str, body: str) -> None:
    """A pack of ``region`` holding ``body`` (TOML tables)."""
    (directory / f"{pack_id}.toml").write_text(
        f'[pack]\nid = "{pack_id}"\nversion = "1"\ndescription = "x"\nregions = ["{region}"]\n'
        f"\n{body}"
    )


_CAP = '[[caps]]\nid = "daily"\nlimit = {limit}\nwindow = "24h"\nscope = "{scope}"\n'


def test_a_cap_sharing_its_id_and_scope_with_another_tables_is_refused(tmp_path: Path) -> None:
    """A config cap and a pack cap (or two packs' caps) with one id and scope were keyed
    to one attempt log (cap:<id>:t:<tenant>), each counting the other's attempts: refused
    at load, naming both; another scope (another log) is accepted."""
    _pack_with(tmp_path, "pa", "FR", _CAP.format(limit=2, scope="tenant"))
    _pack_with(tmp_path, "pb", "GB", _CAP.format(limit=3, scope="tenant"))
    base: dict[str, Any] = {"privacy": {"secret": "x" * 32}}
    own = {"id": "daily", "limit": 5, "window": "24h", "scope": "tenant"}
    one = {**base, "gate": {"packs": ["pa"], "packs_dir": str(tmp_path)}}
    with pytest.raises(ConfigError) as raised:
        parse_config({**one, "caps": [own]}, "t.toml", tmp_path)
    assert str(raised.value) == (
        "t.toml: pack pa caps[0] has the id 'daily' and the scope tenant of caps[0]: both "
        "would use one attempt log; rename one of them"
    )
    two = {**base, "gate": {"packs": ["pa", "pb"], "packs_dir": str(tmp_path)}}
    with pytest.raises(
        ConfigError, match=r"pack pb caps\[0\] has the id 'daily' .* of pack pa caps\[0\]"
    ):
        parse_config(two, "t.toml", tmp_path)
    config = parse_config({**one, "caps": [{**own, "scope": "global"}]}, "t.toml", tmp_path)
    assert [("daily", "global")] == [(cap.id, cap.scope) for cap in config.policy.caps]


def test_two_packs_cooloffs_sharing_an_id_and_scope_are_refused(tmp_path: Path) -> None:
    """Two packs' cool-offs with one id and scope read one marker (cool:<id>:t:<tenant>):
    a refusal recorded for one would hold the number under the other's abandoned-call
    cool-off. Refused at load, naming both packs."""
    cool = '[[cooloff]]\nid = "hold"\nevent = "{event}"\nperiod = "72h"\nscope = "tenant"\n'
    _pack_with(tmp_path, "pa", "FR", cool.format(event="refusal"))
    _pack_with(tmp_path, "pb", "GB", cool.format(event="abandoned"))
    data = {
        "gate": {"packs": ["pa", "pb"], "packs_dir": str(tmp_path)},
        "privacy": {"secret": "x" * 32},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    assert str(raised.value) == (
        "t.toml: pack pb cooloff[0] has the id 'hold' and the scope tenant of pack pa "
        "cooloff[0]: both would use one cool-off marker; rename one of them"
    )


@pytest.mark.parametrize("pack", ["fr", "ca"])
def test_a_pack_named_twice_is_refused_naming_it(pack: str, tmp_path: Path) -> None:
    """``packs = ["ca", "ca"]`` loaded the pack twice (each of its rules checked twice on
    every call); ``["fr", "fr"]`` was refused as a cap sharing its id with another table's
    ("rename one of them", of the same pack). Either is refused naming the pack."""
    data = {"gate": {"packs": [pack, pack]}, "privacy": {"secret": "x" * 32}}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    assert str(raised.value) == (
        f"t.toml: gate.packs: {pack!r} is listed twice; list each pack once (its rules would "
        "apply twice)"
    )


_BLOCK_AND_ALLOW: list[dict[str, Any]] = [
    {"name": "red", "kind": "block"},
    {"name": "vip", "kind": "allow", "exempts": ["red", "red"]},
]
_SENTINELS = {"mode": "sentinel", "sentinel": {"service": "m", "nodes": ["h1:26379", "H1:26379"]}}
_SEEDS = ["redis://u:pw@h1:6379", "redis://h2:6379", "redis://H1:6379"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"gate": {"tenants": ["acme", "beta", "acme"]}},
            "gate.tenants: 'acme' is listed twice; list each tenant once",
        ),
        (
            {"tenants": {"acme": {"caller_ids": ["+33123456789", "+33123456789"]}}},
            "tenants.acme.caller_ids: '+33123456789' is listed twice; list each caller ID once",
        ),
        (
            {"tenants": {"acme": {"caller_ids": ["+33123456789", "01 23 45 67 89"]}}},
            "tenants.acme.caller_ids: '01 23 45 67 89' is +33123456789, listed already as "
            "'+33123456789'; list each caller ID once",
        ),
        (
            {
                "gate": {"packs": ["fr"]},
                "tenants": {"acme": {"calendars": ["fr-alsace-moselle", "fr-alsace-moselle"]}},
            },
            "tenants.acme.calendars: 'fr-alsace-moselle' is listed twice; list each calendar once",
        ),
        (
            {"lists": _BLOCK_AND_ALLOW},
            "lists[1].exempts: 'red' is listed twice; list each list name once",
        ),
        (
            {"redis": _SENTINELS},
            "redis.sentinel.nodes[1]: 'H1:26379' is the sentinel of nodes[0] again; list each "
            "sentinel once",
        ),
        (
            {"redis": {"mode": "cluster", "nodes": _SEEDS}},
            "redis.nodes[2]: 'redis://H1:6379' is the node of nodes[0] again; list each seed "
            "node once",
        ),
        (
            {"lists": [{"name": "red"}, {"name": "vip"}, {"name": "red"}]},
            "lists[2].name: 'red' is defined twice (also lists[0]); rename or remove one of them",
        ),
        (
            {"caps": [{"id": "c", "limit": 4, "window": "1d"}] * 2},
            "caps[1].id: 'c' is defined twice (also caps[0]); rename or remove one of them",
        ),
    ],
)
def test_an_entry_listed_twice_is_refused_naming_it(
    data: dict[str, Any], message: str, tmp_path: Path
) -> None:
    """A tenant, caller ID (however written), opted-in calendar, exempted list, sentinel or
    seed node named twice was silently taken once: another one was surely meant (the
    sentinels or seeds fewer than the list shows). A list or cap defined twice said so
    without saying which other one, nor what to do. Each is one line naming the key."""
    with pytest.raises(ConfigError) as raised:
        parse_config({**data, "privacy": {"secret": "x" * 32}}, "t.toml", tmp_path)
    assert f"t.toml: {message}" == str(raised.value)


_LISTS = (
    '[[lists]]\nname = "dnc"\nkind = "block"\n\n'
    '[[lists]]\nname = "optin"\nkind = "consent"\n\n'
    '[[lists]]\nname = "vip"\nkind = "allow"\n\n'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[consent]]\nid = "c"\nlist = "optin"\nexempt_lists = ["vip", "vip"]\n',
            "consent[0].exempt_lists: 'vip' is listed twice; list each list name once",
        ),
        (
            '[[freshness]]\nid = "f"\nlist = "dnc"\nmax_age = "30d"\n'
            'exempt_lists = ["optin", "vip", "optin"]\n',
            "freshness[0].exempt_lists: 'optin' is listed twice; list each list name once",
        ),
        (
            '[[calendars]]\nid = "bank"\ndates = ["05-27"]\n\n'
            '[[hours]]\nid = "h"\nweekdays = ["09:00-18:00"]\ncalendars = ["bank", "bank"]\n',
            "hours[0].calendars: 'bank' is listed twice; list each calendar once",
        ),
    ],
)
def test_a_pack_rule_naming_a_list_or_calendar_twice_is_refused(
    body: str, message: str, tmp_path: Path
) -> None:
    """A pack's rule that names one exempting list or one calendar twice (another one
    surely meant) is refused naming the config file, the pack file and the key."""
    _pack_with(tmp_path, "pa", "FR", _LISTS + body)
    data = {
        "gate": {"packs": ["pa"], "packs_dir": str(tmp_path)},
        "privacy": {"secret": "x" * 32},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    assert f"t.toml: gate.packs: {tmp_path / 'pa.toml'}: {message}" == str(raised.value)


@pytest.mark.parametrize(
    ("packs", "files", "message"),
    [
        (["../pa"], {}, "gate.packs: '../pa' is not a pack name; name packs by their file"),
        (["pa"], {"pa": "[pack\n"}, "gate.packs: {dir}/pa.toml: not valid TOML: "),
        (["pa"], {"pa": b"\xff"}, "gate.packs: {dir}/pa.toml: cannot read pack: "),
        (
            ["pa"],
            {"pa": '[pack]\nid = "pb"\nregions = ["FR"]\n'},
            "gate.packs: {dir}/pa.toml: pack.id is 'pb', expected 'pa' (the file name)",
        ),
        (
            ["pa"],
            {"pa": '[pack]\nid = "pa"\nregions = ["FR"]\n\n[[caps]]\nid = "c"\nlimit = 0\n'},
            "gate.packs: {dir}/pa.toml: caps[0].limit: must be a whole number of attempts",
        ),
        (
            ["pa"],
            {"pa": '[pack]\nid = "pa"\nregions = ["FR"]\n\n[[consent]]\nid = "c"\nlist = "x"\n'},
            "gate.packs: {dir}/pa.toml: consent[0].list: list 'x' must be a consent or allow "
            "list (it is undefined)",
        ),
    ],
)
def test_an_error_loading_a_pack_names_the_config_file_first(
    packs: list[str], files: dict[str, str | bytes], message: str, tmp_path: Path
) -> None:
    """Every other config error starts with the config file; those of gate.packs (a pack
    name, its file, a rule in it) started with the pack file or with "gate.packs", which
    named no file. Each is one line: the config file, gate.packs, the pack file if any."""
    for name, text in files.items():
        path = tmp_path / f"{name}.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    data = {"gate": {"packs": packs, "packs_dir": str(tmp_path)}, "privacy": {"secret": "x" * 32}}
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "t.toml", tmp_path)
    text = str(raised.value)
    assert text.startswith("t.toml: " + message.format(dir=tmp_path)), text
    assert "\n" not in text


_OPTIONAL = '[[calendars]]\nid = "local"\ndates = ["{date}"]\noptional = true\n'


def test_two_packs_optional_calendars_sharing_an_id_are_refused_unless_alike(
    tmp_path: Path,
) -> None:
    """A tenant opts in to an optional calendar by id: with two packs each defining one
    under that id, ``calendars = ["local"]`` silently turned on both. Refused at load,
    naming both packs and the id; two alike definitions (one calendar) are accepted."""
    _pack_with(tmp_path, "pa", "FR", _OPTIONAL.format(date="05-27"))
    _pack_with(tmp_path, "pb", "GB", _OPTIONAL.format(date="06-10"))
    _pack_with(tmp_path, "pc", "DE", _OPTIONAL.format(date="05-27"))
    base: dict[str, Any] = {
        "privacy": {"secret": "x" * 32},
        "tenants": {"acme": {"calendars": ["local"]}},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(
            {**base, "gate": {"packs": ["pa", "pb"], "packs_dir": str(tmp_path)}},
            "t.toml",
            tmp_path,
        )
    assert str(raised.value) == (
        "t.toml: gate.packs: pack pb calendars[0] and pack pa calendars[0] are both the "
        "optional calendar 'local', defined differently (a tenant opting in to it would turn "
        "on both); rename one of them, or define them alike"
    )
    config = parse_config(
        {**base, "gate": {"packs": ["pa", "pc"], "packs_dir": str(tmp_path)}}, "t.toml", tmp_path
    )
    assert {"acme": frozenset({"local"})} == dict(config.policy.tenant_calendars)
