"""``[agi]``: who may connect to the FastAGI port (``allow``), and for how long a request's
headers are waited for (``header_timeout``), checked when the config loads."""

from __future__ import annotations

import ipaddress

import pytest

from gate.core.errors import ConfigError
from tests.conftest import make_config


def test_loopback_needs_no_allow_list() -> None:
    """The default 127.0.0.1 listener: no allow-list, nothing refused."""
    assert () == make_config({"agi": {"host": "127.0.0.1"}}).agi.allow


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "pbx.example"])
def test_a_non_loopback_host_without_allow_is_refused(host: str) -> None:
    """Anyone who can reach that address could opt numbers out and count attempts."""
    with pytest.raises(ConfigError, match=r"agi\.allow: is required when agi\.host is"):
        make_config({"agi": {"host": host}})


def test_allow_takes_addresses_and_networks() -> None:
    """Addresses become /32 (/128) networks; host bits of a network are tolerated."""
    config = make_config(
        {"agi": {"host": "0.0.0.0", "allow": ["10.0.0.5", "10.1.2.3/16", "fd00::/8"]}}
    )
    assert (
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
    ) == config.agi.allow


@pytest.mark.parametrize("entry", ["10.0.0.300", "pbx.example", 10, ""])
def test_an_allow_entry_that_is_no_address_names_its_index(entry: object) -> None:
    """A bad entry is one error naming ``agi.allow[1]``."""
    with pytest.raises(ConfigError, match=r"agi\.allow\[1\]: expected an address or network"):
        make_config({"agi": {"host": "0.0.0.0", "allow": ["10.0.0.5", entry]}})


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1" * 400 + "s"])
def test_a_header_timeout_that_is_no_finite_duration_is_refused(value: object) -> None:
    """TOML's ``inf`` (or more digits than a float holds) would let a peer that never ends
    its headers hold its connection for ever; ``nan`` made every request time out at once
    (uvloop: fail with a ValueError), so that every call got the dialplan's fail mode."""
    with pytest.raises(ConfigError, match=r"agi\.header_timeout: expected a finite duration"):
        make_config({"agi": {"header_timeout": value}})
