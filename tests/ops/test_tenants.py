"""Tenants are checked once, centrally (gate/core/policy.py ``check_tenant``): an unknown
tenant is refused by every door, and never becomes a metric label."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from agi.server import AgiServer
from gate.config.loader import load_config
from gate.core.errors import OptionError
from gate.core.model import Attempt
from gate.core.policy import UnknownTenant
from gate.lists.admin import ListAdmin
from gate.ops.metrics import Metrics
from gate.service import Gate
from gate.store.client import Store
from tests.agi.test_server import HOST, agi_call
from tests.conftest import BASE_CONFIG, SAMPLE_CONFIG, make_config
from tests.ops.conftest import Served

NUMBER = "+33612345678"


async def test_a_tenant_spelt_differently_is_refused_not_decided(gate: Gate) -> None:
    """ "Default" is not "default": the decision is refused before any rule runs, so the
    red list of "default" cannot be skipped by a capital letter."""
    await ListAdmin.of(gate).add("red", [NUMBER], "default", "")
    with pytest.raises(UnknownTenant, match="tenant 'Default' is not configured"):
        await gate.decide(Attempt(NUMBER, datetime.now(UTC), "Default"), record=True, door="agi")


async def test_the_agi_door_answers_bad_request_tenant(gate: Gate) -> None:
    """FastAGI check?tenant=Default: CALLGATE_RESULT=ERROR, REASON bad_request:tenant (the
    dialplan then applies its fail mode)."""
    server = AgiServer(gate, HOST, 0, header_timeout_s=1.0)
    await server.start()
    try:
        dialogue = await agi_call(server.port, "check?tenant=Default")
    finally:
        await server.stop()
    assert ("ERROR", "bad_request:tenant") == (
        dialogue.variables["CALLGATE_RESULT"],
        dialogue.variables["CALLGATE_REASON"],
    )


async def test_the_api_answers_400_for_an_unknown_tenant(served: Served) -> None:
    """POST /v1/check and list changes with an unknown tenant: 400 naming it."""
    check = await served.post("/v1/check", {"number": NUMBER, "tenant": "Default"})
    add = await served.post("/v1/lists/red/add", {"numbers": [NUMBER], "tenant": "nobody"})
    assert (400, 400) == (check[0], add[0])
    assert check[1]["error"].startswith("tenant 'Default' is not configured")


@pytest.fixture
async def open_gate_(redis_url: str) -> AsyncIterator[Gate]:
    """A gate whose config opts into open tenants, with metrics."""
    store = Store(redis_url, deadline_s=1.0)
    config = make_config({"gate": {**BASE_CONFIG["gate"], "open_tenants": True}})
    gate = Gate(config, store)
    yield gate
    await store.close()


async def test_open_tenants_are_decided_but_labelled_other(open_gate_: Gate) -> None:
    """With open_tenants any name is its own tenant; metrics label it "other", so a
    number typed into the tenant field never becomes a series."""
    metrics = Metrics()
    metrics.use_config(open_gate_.config, "v1")
    open_gate_.observers.append(metrics)
    await ListAdmin.of(open_gate_).add("red", [NUMBER], "0612345678", "")
    decision = await open_gate_.decide(
        Attempt(NUMBER, datetime.now(UTC), "0612345678"), record=False, door="api"
    )
    exposition = metrics.exposition().decode()
    assert "listed:red" == decision.reason
    assert "0612345678" not in exposition
    assert 'tenant="other"' in exposition


def test_the_sample_config_names_the_readme_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample config accepts its default tenant and the README's example tenant
    (acme), and no other."""
    monkeypatch.setenv("CALLGATE_SECRET", "x" * 32)
    config = load_config(SAMPLE_CONFIG)
    assert (frozenset({"default", "acme"}), False) == (
        config.policy.tenants,
        config.policy.open_tenants,
    )


@pytest.fixture
async def consent_gate(redis_url: str) -> AsyncIterator[Gate]:
    """A gate with a per-tenant consent list, beside BASE_CONFIG's lists."""
    store = Store(redis_url, deadline_s=1.0)
    consent = {"name": "consent", "kind": "consent", "scope": "tenant"}
    yield Gate(make_config({"lists": [*BASE_CONFIG["lists"], consent]}), store)
    await store.close()


async def test_a_refused_revocation_leaves_the_consent_in_place(consent_gate: Gate) -> None:
    """A revocation refused (an unknown tenant, a per-campaign red list without a
    campaign) writes nothing: the consent was removed first and the error came after,
    leaving the number with neither its consent nor a red-list entry."""
    admin = ListAdmin.of(consent_gate)
    await admin.add("consent", [NUMBER], "acme", "")
    gone = ListAdmin(
        make_config({"gate": {**BASE_CONFIG["gate"], "tenants": ["default"]}}).policy,
        admin.keyspace,
        admin.store,
    )
    with pytest.raises(UnknownTenant):
        await gone.revoke([NUMBER], "acme", "")
    with pytest.raises(OptionError, match="per campaign"):
        await admin.revoke([NUMBER], "acme", "", red_list="camp")
    assert 1 == await admin.count("consent", "acme", "")


async def test_a_revocation_removes_the_consent_of_the_list_in_force(redis_url: str) -> None:
    """The config's "consent" list (global) takes precedence over the fr pack's (per
    tenant) for decisions and list commands; revoke resolved the name the other way
    (the last definition), removed the consent from the pack's per-tenant key, and
    left the one in force."""
    store = Store(redis_url, deadline_s=1.0)
    consent = {"name": "consent", "kind": "consent", "scope": "global"}
    config = make_config(
        {
            "gate": {**BASE_CONFIG["gate"], "packs": ["fr"]},
            "lists": [*BASE_CONFIG["lists"], consent],
        }
    )
    admin = ListAdmin.of(Gate(config, store))
    try:
        await admin.add("consent", [NUMBER], "acme", "")
        await admin.revoke([NUMBER], "acme", "")
        assert (0, 1) == (
            await admin.count("consent", "acme", ""),
            await admin.count("red", "acme", ""),
        )
    finally:
        await store.close()


async def test_a_global_list_a_pack_defines_per_tenant_is_one_global_series(
    redis_url: str,
) -> None:
    """The config's "consent" list (global) over the fr pack's (per tenant): its size is
    one series without a tenant, not the global count repeated under every tenant."""
    from gate.ops.metrics import refresh_lists

    store = Store(redis_url, deadline_s=1.0)
    consent = {"name": "consent", "kind": "consent", "scope": "global"}
    config = make_config(
        {
            "gate": {**BASE_CONFIG["gate"], "packs": ["fr"]},
            "lists": [*BASE_CONFIG["lists"], consent],
        }
    )
    gate = Gate(config, store)
    metrics = Metrics()
    metrics.use_config(config, "v1")
    try:
        await ListAdmin.of(gate).add("consent", [NUMBER], "acme", "")
        await refresh_lists(metrics, gate)
    finally:
        await store.close()
    series = [
        line
        for line in metrics.exposition().decode().splitlines()
        if line.startswith('callgate_list_entries{list="consent"')
    ]
    assert ['callgate_list_entries{list="consent",tenant=""} 1.0'] == series
