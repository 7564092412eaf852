"""Call events through every door, with the uk pack against a REAL Redis: ``callgate
answered|abandoned NUMBER --campaign C``, ``POST /v1/events/{answered,abandoned}`` and the
FastAGI ``answered``/``abandoned`` routes record the inputs of the campaign's abandoned-call
ceiling (and an abandoned call still starts its 72 h cool-off); the next campaign call is
DEFERred ``abandon_rate:uk-ofcom-abandoned-3pct``. Events happen now (the doors' clock):
one abandoned call of one live call is over 3 % until its minute leaves the 24 h window."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from agi.server import AgiServer
from gate.config.loader import Config
from gate.service import Gate
from gate.store.client import Store
from tests.agi.test_server import HEADER_TIMEOUT_S, HOST, agi_call, answer
from tests.cli.test_cli import run_cli as run
from tests.cli.test_cli import sample_config
from tests.conftest import make_config
from tests.ops.conftest import LISTS, Served, serve
from tests.packs.conftest import PACKS_DIR, import_list, pack_config

RULE = "uk-ofcom-abandoned-3pct"
CALLED = "01212345678"
CALLED_E164 = "+441212345678"
CALLER_ID = "02071234567"
DAY_S = 24 * 3600


def over_the_ceiling(retry_after_s: float | None) -> bool:
    """A wait until a minute of now has left the 24 h window (and a second of slack)."""
    return retry_after_s is not None and DAY_S - 1 < retry_after_s <= DAY_S + 60


async def screened(gate: Gate) -> Gate:
    """TPS and CTPS imported (empty) a day ago: fresh."""
    for name in ("tps", "ctps"):
        await import_list(gate, name, [], datetime.now(UTC) - timedelta(days=1))
    return gate


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def uk_config(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "callgate.toml"
    path.write_text(
        sample_config(redis_url, gate={"packs": ["uk"], "default_region": "GB"}),
        encoding="utf-8",
    )
    return path


def test_the_cli_records_answered_and_abandoned_calls_of_a_campaign(
    capsys: pytest.CaptureFixture[str], uk_config: Path, tmp_path: Path
) -> None:
    """``answered`` and ``abandoned`` with --campaign count toward the ceiling (the
    abandoned call also starts its cool-off); the next call of that campaign DEFERs."""
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for name in ("tps", "ctps"):
        assert 0 == run(capsys, uk_config, "list", "import", name, str(empty),
                        "--refreshed-at", yesterday)[0]  # fmt: skip
    answered = run(capsys, uk_config, "answered", "02079460001", "--campaign", "spring")
    abandoned = run(capsys, uk_config, "abandoned", "02079460002", "--campaign", "spring")
    status, out, _ = run(capsys, uk_config, "check", CALLED, "--campaign", "spring",
                         "--caller-id", CALLER_ID, "--json")  # fmt: skip
    other = run(capsys, uk_config, "check", CALLED, "--campaign", "autumn",
                "--caller-id", CALLER_ID, "--json")  # fmt: skip
    decision = json.loads(out)
    assert [
        (0, f"answered recorded: {RULE}\n", ""),
        (0, f"abandoned recorded: uk-abandoned-72h, {RULE}\n", ""),
    ] == [answered, abandoned]
    assert (4, "DEFER", f"abandon_rate:{RULE}", True, "ALLOW") == (
        status,
        decision["verdict"],
        decision["reason"],
        over_the_ceiling(decision["retry_after_s"]),
        json.loads(other[1])["verdict"],
    )


def test_the_cli_says_when_a_campaign_is_missing(
    capsys: pytest.CaptureFixture[str], uk_config: Path
) -> None:
    """``answered`` without --campaign records nothing (exit 2, one line); ``abandoned``
    starts its cool-off and says the ceiling did not count it."""
    answered = run(capsys, uk_config, "answered", "02079460001")
    abandoned = run(capsys, uk_config, "abandoned", "02079460002")
    assert [
        (
            2,
            "",
            f"callgate: error: {RULE} counts the calls of each campaign: pass --campaign; "
            "nothing recorded\n",
        ),
        (
            0,
            "abandoned recorded: uk-abandoned-72h\n",
            f"callgate: not counted toward {RULE} (counted per campaign): give --campaign\n",
        ),
    ] == [answered, abandoned]


def test_an_answered_call_without_a_ceiling_in_force_is_refused(
    capsys: pytest.CaptureFixture[str], uk_config: Path
) -> None:
    """A French number under the uk pack alone: no rule takes it, exit 2, one line."""
    assert (
        2,
        "",
        "callgate: error: no enabled pack has an abandoned-call ceiling for '+33612345678'; "
        "nothing recorded\n",
    ) == run(capsys, uk_config, "answered", "+33612345678", "--campaign", "spring")


def test_a_call_event_dated_in_the_future_is_refused_and_holds_nothing_back(
    capsys: pytest.CaptureFixture[str], uk_config: Path, tmp_path: Path
) -> None:
    """``abandoned --at`` a century ahead: exit 2, one line, nothing recorded; the number's
    next call of that campaign is ALLOWed, not DEFERred until then."""
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for name in ("tps", "ctps"):
        assert 0 == run(capsys, uk_config, "list", "import", name, str(empty),
                        "--refreshed-at", yesterday)[0]  # fmt: skip
    status, out, err = run(capsys, uk_config, "abandoned", CALLED, "--campaign", "spring",
                           "--at", "2126-12-01T11:00Z")  # fmt: skip
    checked = run(capsys, uk_config, "check", CALLED, "--campaign", "spring",
                  "--caller-id", CALLER_ID, "--json")  # fmt: skip
    assert (2, "", 1) == (status, out, len(err.splitlines()))
    assert "not at 2126-12-01T11:00:00+00:00" in err
    assert "ALLOW" == json.loads(checked[1])["verdict"]


def test_a_call_event_too_old_for_every_rule_says_nothing_was_recorded(
    capsys: pytest.CaptureFixture[str], uk_config: Path
) -> None:
    """``abandoned --at`` years ago: its cool-off is over and its minute out of the window,
    so exit 2 with one line saying so, never "recorded"."""
    assert (
        2,
        "",
        "callgate: error: the abandoned call is too old for uk-abandoned-72h, "
        f"{RULE} (its cool-off is over, or it is out of the ceiling's window); "
        "nothing recorded\n",
    ) == run(capsys, uk_config, "abandoned", CALLED, "--campaign", "spring",
             "--at", "2020-12-01T11:00Z")  # fmt: skip


def test_a_call_event_too_old_for_one_rule_names_it(
    capsys: pytest.CaptureFixture[str], uk_config: Path
) -> None:
    """An abandoned call 30 hours ago: its 72 h cool-off is recorded, the 24 h ceiling is
    named as too old for it on stderr."""
    at = (datetime.now(UTC) - timedelta(hours=30)).isoformat()
    assert (
        0,
        "abandoned recorded: uk-abandoned-72h\n",
        f"callgate: too old for {RULE}: not recorded there\n",
    ) == run(capsys, uk_config, "abandoned", CALLED, "--campaign", "spring", "--at", at)


# --- the admin API --------------------------------------------------------------------------


@pytest.fixture
async def uk_served(redis_url: str) -> AsyncIterator[Served]:
    """The API on a config with the uk pack, TPS and CTPS fresh."""
    packs = {"default_region": "GB", "packs": ["uk"], "packs_dir": str(PACKS_DIR)}
    store = Store(redis_url, deadline_s=1.0)
    gate = await screened(
        Gate(make_config({"gate": packs, "lists": LISTS}, base=Path("/")), store, "uk1")
    )
    running = await serve(gate)
    yield running
    await running.session.close()
    await running.server.stop()
    await store.close()


async def test_the_api_records_answered_and_abandoned_calls_of_a_campaign(
    uk_served: Served,
) -> None:
    """POST /v1/events/answered and /abandoned with a campaign: the rules that took them;
    then /v1/check of that campaign DEFERs, of another campaign ALLOWs."""
    answered = await uk_served.post(
        "/v1/events/answered", {"number": "02079460001", "campaign": "spring"}
    )
    abandoned = await uk_served.post(
        "/v1/events/abandoned", {"number": "02079460002", "campaign": "spring"}
    )
    checks: list[dict[str, Any]] = [
        (
            await uk_served.post(
                "/v1/check",
                {"number": CALLED, "campaign": campaign, "caller_id": CALLER_ID},
            )
        )[1]
        for campaign in ("spring", "autumn")
    ]
    assert [
        (200, {"event": "answered", "rules": [RULE], "uncounted": []}),
        (200, {"event": "abandoned", "rules": ["uk-abandoned-72h", RULE], "uncounted": []}),
    ] == [answered, abandoned]
    assert (("DEFER", f"abandon_rate:{RULE}", True), "ALLOW") == (
        (
            checks[0]["verdict"],
            checks[0]["reason"],
            over_the_ceiling(checks[0]["retry_after_s"]),
        ),
        checks[1]["verdict"],
    )


async def test_the_api_names_the_ceilings_a_call_without_campaign_missed(
    uk_served: Served,
) -> None:
    """An abandoned call without a campaign: 200, its cool-off, and ``uncounted`` names the
    ceiling; an answered one: 422, nothing recorded."""
    abandoned = await uk_served.post("/v1/events/abandoned", {"number": "02079460002"})
    status, body = await uk_served.post("/v1/events/answered", {"number": "02079460001"})
    assert (200, {"event": "abandoned", "rules": ["uk-abandoned-72h"], "uncounted": [RULE]}) == (
        abandoned
    )
    assert (422, f"{RULE} counts the calls of each campaign: set campaign; "
            "nothing recorded") == (status, body["error"])  # fmt: skip


async def test_the_api_refuses_a_future_event_and_says_an_old_one_counts_nowhere(
    uk_served: Served,
) -> None:
    """POST /v1/events/abandoned ``at`` a century ahead: 400 with one line; years ago:
    422, nothing recorded."""
    future = await uk_served.post(
        "/v1/events/abandoned",
        {"number": "02079460002", "campaign": "spring", "at": "2126-12-01T11:00:00Z"},
    )
    past = await uk_served.post(
        "/v1/events/abandoned",
        {"number": "02079460002", "campaign": "spring", "at": "2020-12-01T11:00:00Z"},
    )
    assert (400, True, 1) == (
        future[0],
        "not at 2126-12-01T11:00:00+00:00" in future[1]["error"],
        len(future[1]["error"].splitlines()),
    )
    assert (422, True) == (past[0], past[1]["error"].endswith("; nothing recorded"))


# --- the FastAGI door ------------------------------------------------------------------------


@pytest.fixture
async def uk_agi(open_gate: Callable[[Config], Gate]) -> AsyncIterator[AgiServer]:
    """A FastAGI server on a Gate with the uk pack, TPS and CTPS fresh."""
    gate = await screened(open_gate(pack_config(["uk"], "GB")))
    server = AgiServer(gate, HOST, 0, header_timeout_s=HEADER_TIMEOUT_S)
    await server.start()
    yield server
    await server.stop()


async def test_the_agi_routes_record_answered_and_abandoned_calls_of_a_campaign(
    uk_agi: AgiServer,
) -> None:
    """``answered``/``abandoned`` with campaign= answer OK with the first rule; the next
    ``check`` of that campaign DEFERs abandon_rate; without a campaign ``answered`` is an
    ERROR the dialplan sees."""
    port = uk_agi.port
    answered = await agi_call(port, "answered?tenant=default&campaign=spring", "02079460001")
    abandoned = await agi_call(
        port, "abandoned", "02079460002", args=["tenant=default", "campaign=spring"]
    )
    checked = await agi_call(
        port, "check?tenant=default&campaign=spring", CALLED, callerid=CALLER_ID
    )
    missing = await agi_call(port, "answered?tenant=default", "02079460003")
    variables = checked.variables
    assert [
        answer("OK", f"answered:{RULE}"),
        answer("OK", "abandoned:uk-abandoned-72h"),
        answer("ERROR", "answered_needs_campaign"),
    ] == [answered.variables, abandoned.variables, missing.variables]
    assert ("DEFER", f"abandon_rate:{RULE}", CALLED_E164, True) == (
        variables["CALLGATE_RESULT"],
        variables["CALLGATE_REASON"],
        variables["CALLGATE_E164"],
        over_the_ceiling(float(variables["CALLGATE_RETRY_AFTER"])),
    )


# --- counts callgate did not write, through every door -------------------------------------

COUNTS_KEY = f"callgate:{{abandon:{RULE}:c:default:spring}}"
# A value callgate did not write at the campaign's counts key: 7 bytes, 15 bytes (under
# the totals' 16; any length not 16 + 24k), a key of another type.
UNREADABLE = ["7 bytes", "15 bytes", "hash"]


def spoil(redis_url: str, how: str) -> object:
    """Put a value callgate did not write at ``COUNTS_KEY``; what ``snapshot`` reads."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(COUNTS_KEY)
        if how == "hash":
            client.hset(COUNTS_KEY, "live", "10")
        else:
            client.set(COUNTS_KEY, b"garbage" if how == "7 bytes" else b"garbage-garbage")
    finally:
        client.close()
    return snapshot(redis_url)


def snapshot(redis_url: str) -> object:
    client = redis.Redis.from_url(redis_url)
    try:
        if client.type(COUNTS_KEY) == b"hash":
            return client.hgetall(COUNTS_KEY)
        return client.get(COUNTS_KEY)
    finally:
        client.close()


def refused(event: str) -> str:
    """What every door says of an ``event`` call not counted in unreadable counts."""
    return (
        f"{RULE}: the value at Redis key {COUNTS_KEY} (the abandoned-call counts of campaign "
        f"'spring') was not written by callgate: the {event} call was not counted toward it, "
        f"and the calls it governs are deferred while it is there; delete that key, then "
        f"record the {event} call again"
    )


@pytest.mark.parametrize("how", UNREADABLE)
def test_the_cli_refuses_to_count_a_call_in_counts_it_did_not_write(
    capsys: pytest.CaptureFixture[str], uk_config: Path, redis_url: str, how: str
) -> None:
    """``answered`` and ``abandoned`` with unreadable counts: exit 2, one line naming the
    rule, the key and the campaign and saying to delete the key (no traceback, no Redis
    error); the value is left as it is."""
    before = spoil(redis_url, how)
    answered = run(capsys, uk_config, "answered", "02079460001", "--campaign", "spring")
    abandoned = run(capsys, uk_config, "abandoned", "02079460002", "--campaign", "spring")
    assert [
        (2, "", f"callgate: error: {refused('answered')}\n"),
        (2, "", f"callgate: error: {refused('abandoned')}\n"),
    ] == [answered, abandoned]
    assert before == snapshot(redis_url)


@pytest.mark.parametrize("how", UNREADABLE)
async def test_the_api_refuses_to_count_a_call_in_counts_it_did_not_write(
    uk_served: Served, redis_url: str, how: str
) -> None:
    """POST /v1/events/answered with unreadable counts: 400, the line as the CLI says it
    (not a 503 "Redis answered with an error", not a 500); the value left as it is; the
    campaign's next call DEFERs abandon_rate for the whole window."""
    before = spoil(redis_url, how)
    answered = await uk_served.post(
        "/v1/events/answered", {"number": "02079460001", "campaign": "spring"}
    )
    _, checked = await uk_served.post(
        "/v1/check", {"number": CALLED, "campaign": "spring", "caller_id": CALLER_ID}
    )
    assert (400, {"error": refused("answered")}) == answered
    assert before == snapshot(redis_url)
    assert ("DEFER", f"abandon_rate:{RULE}", DAY_S) == (
        checked["verdict"],
        checked["reason"],
        checked["retry_after_s"],
    )


async def test_the_agi_route_refuses_to_count_a_call_in_counts_it_did_not_write(
    uk_agi: AgiServer, redis_url: str
) -> None:
    """The FastAGI ``answered`` route with unreadable counts: an ERROR the dialplan sees
    (``answered_failed:InputError``), the value left as it is."""
    before = spoil(redis_url, "hash")
    answered = await agi_call(uk_agi.port, "answered?tenant=default&campaign=spring", "02079460001")
    assert answer("ERROR", "answered_failed:InputError") == answered.variables
    assert before == snapshot(redis_url)
