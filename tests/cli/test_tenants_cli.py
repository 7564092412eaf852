"""Unknown tenants at the command line: exit 2 with one line (gate/core/policy.py)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_cli import Run, sample_config

NUMBER = "+33612345678"


def test_the_cli_exits_2_for_an_unknown_tenant(cli: Run) -> None:
    """callgate check/list with an unknown tenant: exit 2, one line."""
    checked = cli("check", NUMBER, "--tenant", "Default")
    listed = cli("list", "add", "red", NUMBER, "--tenant", "Default")
    assert (2, 2) == (checked[0], listed[0])
    assert checked[2].startswith("callgate: error: tenant 'Default' is not configured")


def test_configured_tenants_are_accepted(tmp_path: Path, redis_url: str, cli: Run) -> None:
    """gate.tenants and [tenants.<name>] tables name the tenants that may be used."""
    path = tmp_path / "t.toml"
    text = sample_config(redis_url, gate={"tenants": ["acme"]})
    path.write_text(text + '\n[tenants.globex]\ncaller_ids = ["+33162000000"]\n')
    assert (0, 0, 0) == (
        cli("check", NUMBER, "--tenant", "acme", config=path)[0],
        cli("check", NUMBER, "--tenant", "default", config=path)[0],
        cli("list", "add", "red", NUMBER, "--tenant", "globex", config=path)[0],
    )


def test_audit_export_of_an_inverted_range_exits_2_and_a_removed_tenant_is_searched(
    cli: Run,
) -> None:
    """audit export --until before --since: exit 2, one line (not an empty export that
    looks like no decisions). --tenant of a tenant the configuration no longer names is
    searched all the same (its entries are kept evidence): exit 0."""
    tenant = cli("audit", "export", "--tenant", "gone")
    inverted = cli("audit", "export", "--since", "2026-12-02", "--until", "2026-11-01")
    assert [(0, 0), (2, 1)] == [
        (tenant[0], len(tenant[2].splitlines())),
        (inverted[0], len(inverted[2].splitlines())),
    ]
    assert inverted[2].startswith("callgate: error: the time range ends before it starts")
