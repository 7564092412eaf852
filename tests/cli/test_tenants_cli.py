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


def test_audit_export_of_an_unknown_tenant_or_an_inverted_range_exits_2(cli: Run) -> None:
    """audit export --tenant nosuch, or --until before --since: exit 2, one line (not an
    empty export that looks like no decisions)."""
    tenant = cli("audit", "export", "--tenant", "nosuch")
    inverted = cli("audit", "export", "--since", "2026-12-02", "--until", "2026-11-01")
    assert [(2, "", 1), (2, "", 1)] == [
        (code, out, len(err.splitlines())) for code, out, err in (tenant, inverted)
    ]
    assert tenant[2].startswith("callgate: error: tenant 'nosuch' is not configured")
    assert inverted[2].startswith("callgate: error: the time range ends before it starts")
