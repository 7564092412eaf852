"""Call dispositions end to end: a REAL Asterisk runs dialplan/callgate.conf's
``callgate-disposition`` (with its campaign argument) against a REAL ``callgate run`` with
the uk pack, on the session's REAL Redis. An answered and an abandoned call of campaign
``spring`` reported from the dialplan put the campaign over its abandoned-call ceiling
(1 abandoned of 2 live calls): its next call through ``callgate-agi`` is refused (DEFER,
cause 34) ``abandon_rate:uk-ofcom-abandoned-3pct``, another campaign's goes."""

# House style for tests is `assert expected == actual`.

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gateproc import REPO, GateProcess, callgate_dialplan, write_config
from sandbox import SandboxFactory, free_port

from gate.config.loader import load_config
from gate.lists.admin import ListAdmin
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.e2e

RULE = "uk-ofcom-abandoned-3pct"

DIALPLAN = """
#include callgate.conf

[dispose]
exten => _[a-z].,1,GoSub(callgate-disposition,s,1(${CUT(EXTEN,-,1)},${CUT(EXTEN,-,2)},default,spring))
 same => n,Log(NOTICE,CALLGATE-E2E disposition ${CUT(EXTEN,-,1)} result=${CALLGATE_RESULT} reason=${CALLGATE_REASON})
 same => n,Hangup()

[gated]
exten => _[a-z].,1,Set(CALLERID(num)=02071234567)
 same => n,Set(CHANNEL(hangup_handler_push)=e2e-hangup,s,1(${CUT(EXTEN,-,1)}))
 same => n,GoSub(callgate-agi,s,1(${CUT(EXTEN,-,2)},default,${CUT(EXTEN,-,1)},campaign))
 same => n,Log(NOTICE,CALLGATE-E2E call ${CUT(EXTEN,-,1)} reached)
 same => n,Hangup()

[e2e-hangup]
exten => s,1,Log(NOTICE,CALLGATE-E2E call ${ARG1} ended cause=${HANGUPCAUSE} reason=${CALLGATE_REASON})
 same => n,Return()

[answerer]
exten => s,1,Answer()
 same => n,Wait(5)
 same => n,Hangup()
"""  # noqa: E501 (dialplan lines cannot be wrapped)

# Extensions are "<word>-<number>": the event (or the campaign) and the national number.
DISPOSITION = r"CALLGATE-E2E disposition {event} result=(\w*) reason=([\w:.-]*)"
CALL = r"CALLGATE-E2E call {campaign} (reached|ended cause=(\d*) reason=([\w:.-]*))"


async def test_dispositions_with_a_campaign_feed_its_abandoned_call_ceiling(
    asterisk_factory: SandboxFactory, redis_url: str, tmp_path: Path
) -> None:
    """answered and abandoned through callgate-disposition (campaign spring): OK with the
    rules that took them; then spring's next call is refused DEFER abandon_rate (cause
    34), autumn's reaches the callee."""
    port = free_port()
    packs = {"packs": ["uk"], "packs_dir": str(REPO / "config" / "packs"), "default_region": "GB"}
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}, "gate": packs},
    )
    loaded = load_config(config)
    store = Store(redis_url, deadline_s=1.0)
    try:
        lists = ListAdmin.of(Gate(loaded, store))
        yesterday = datetime.now(UTC) - timedelta(days=1)
        for name in ("tps", "ctps"):
            await lists.import_entries(name, [], "default", "", print, refreshed_at=yesterday)
    finally:
        await store.close()
    with GateProcess(config, tmp_path / "callgate.log", port):
        include = callgate_dialplan(port, fail_mode="DEFER")
        sandbox = asterisk_factory(DIALPLAN, extra_files={"callgate.conf": include})
        found = []
        for event, number in (("answered", "02079460001"), ("abandoned", "02079460002")):
            await sandbox.originate_local(f"{event}-{number}", "dispose")
            found.append((await sandbox.wait_for_log(DISPOSITION.format(event=event))).groups())
        calls = []
        for campaign in ("spring", "autumn"):
            await sandbox.originate_local(f"{campaign}-01212345678", "gated")
            calls.append((await sandbox.wait_for_log(CALL.format(campaign=campaign))).groups())
    assert [("OK", f"answered:{RULE}"), ("OK", "abandoned:uk-abandoned-72h")] == found
    assert [
        (f"ended cause=34 reason=abandon_rate:{RULE}", "34", f"abandon_rate:{RULE}"),
        ("reached", None, None),
    ] == calls
