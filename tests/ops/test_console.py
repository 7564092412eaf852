"""The console's server side against a REAL gate and Redis: sign-in and sessions, the CSRF
guard, the page's files, the audit of console changes, and the views the pages read
(lists with freshness, rules, live rates, the audit feed, scrubbing an uploaded file).

The browser itself is driven in tests/console/test_browser.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

from gate.config.loader import ApiConfig, AuditConfig, ConsoleConfig, HttpConfig
from gate.core.errors import InputError
from gate.core.model import Attempt, TrafficClass
from gate.lists.admin import ListAdmin
from gate.lists.scrub import scrub_file
from gate.ops import search
from gate.ops.audit import AuditLog
from gate.ops.http import HttpServer
from gate.ops.live import LiveSampler
from gate.ops.metrics import Metrics
from gate.ops.sessions import COOKIE, CSRF_HEADER, MAX_FAILURES, Sessions
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import BASE_CONFIG, make_config
from tests.ops.conftest import API_TOKEN, AUTH, LISTS

STATIC = Path(__file__).resolve().parents[2] / "gate" / "ops" / "static"
LISTED = "+33699001122"
UNLISTED = "+33612345678"
AT = "2026-12-01T10:30:00+01:00"
URL = r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s'\"`)]*"


@dataclass
class Console:
    """A running HTTP listener with the console, its gate and its audit writer."""

    gate: Gate
    server: HttpServer
    audit: AuditLog
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def sign_in(self, token: str = API_TOKEN) -> tuple[int, dict[str, Any], SimpleCookie]:
        async with self.session.post(self.url + "/v1/session", json={"token": token}) as r:
            cookie: SimpleCookie = SimpleCookie()
            for header in r.headers.getall("Set-Cookie", []):
                cookie.load(header)
            return r.status, await r.json(), cookie

    async def signed_in(self) -> tuple[str, str]:
        """(cookie value, csrf token) of a new session."""
        status, body, cookie = await self.sign_in()
        assert 200 == status, body
        return cookie[COOKIE].value, body["csrf"]

    async def call(
        self, method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


async def start(gate: Gate, token: str | None = API_TOKEN, **kwargs: Any) -> Console:
    metrics = Metrics()
    metrics.use_config(gate.config, gate.version)
    gate.observers.append(metrics)
    audit = AuditLog(gate.store.admin_client, gate.config.redis.namespace, AuditConfig())
    gate.observers.append(audit)
    audit.start()
    server = HttpServer(
        gate,
        metrics,
        HttpConfig(host="127.0.0.1", port=0),
        ApiConfig(token=token),
        console=kwargs.pop("console", ConsoleConfig()),
        audit=audit,
        **kwargs,
    )
    await server.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    return Console(gate, server, audit, session)


async def stop(console: Console) -> None:
    await console.session.close()
    await console.server.stop()
    await console.audit.close()


@pytest.fixture
async def console(redis_url: str) -> AsyncIterator[Console]:
    """The console of a gate with BASE_CONFIG (and a consent list), token ``API_TOKEN``."""
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(make_config({"lists": LISTS}), store, "v1"))
    yield running
    await stop(running)
    await store.close()


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


# --- sign-in and sessions -------------------------------------------------------------------


async def test_sign_in_sets_an_httponly_samesite_strict_expiring_cookie(console: Console) -> None:
    """The right token gives a session: its cookie is HttpOnly, SameSite=Strict, Path=/ and
    expires with the session (8 h by default)."""
    status, body, cookie = await console.sign_in()
    morsel = cookie[COOKIE]
    attributes = (
        morsel["httponly"],
        morsel["samesite"],
        morsel["path"],
        morsel["max-age"],
        len(morsel.value) >= 40,
    )
    assert (200, True, True) == (status, body["signed_in"], body["token_required"])
    assert (True, "Strict", "/", "28800", True) == attributes


async def test_a_wrong_token_is_401_and_sets_no_cookie(console: Console) -> None:
    """A wrong token is refused with 401, one line, and no cookie."""
    status, body, cookie = await console.sign_in("not-the-token-0123456789")
    assert (401, {"error": "wrong token: use the API token ([api] token)"}, []) == (
        status,
        body,
        list(cookie),
    )


async def test_the_cookie_authenticates_reads_in_place_of_the_token(console: Console) -> None:
    """With the session cookie a GET needs no bearer token; without either it is 401."""
    value, _ = await console.signed_in()
    with_cookie, _ = await console.call("GET", "/v1/lists/red", cookie_header(value))
    without, _ = await console.call("GET", "/v1/lists/red", {})
    assert (200, 401) == (with_cookie, without)


async def test_a_change_with_the_cookie_needs_the_session_csrf_header(console: Console) -> None:
    """A POST authenticated by the cookie is 403 without the session's X-CSRF-Token (or
    with another), 200 with it."""
    value, csrf = await console.signed_in()
    body = {"numbers": [LISTED]}
    headers = cookie_header(value)
    missing = await console.call("POST", "/v1/lists/red/add", headers, json=body)
    wrong = await console.call(
        "POST", "/v1/lists/red/add", {**headers, CSRF_HEADER: "x" * 43}, json=body
    )
    right = await console.call(
        "POST", "/v1/lists/red/add", {**headers, CSRF_HEADER: csrf}, json=body
    )
    refusal = {"error": f"missing or wrong {CSRF_HEADER} header for this session"}
    assert [(403, refusal), (403, refusal), (200, {"added": 1, "already_listed": 0})] == [
        missing,
        wrong,
        right,
    ]


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "http://evil.example"}, True),
        ({}, True),  # an old browser that says nothing: the form cannot set the CSRF header
    ],
)
async def test_a_cross_site_post_with_the_session_cookie_is_refused(
    console: Console, headers: dict[str, str], form: bool
) -> None:
    """A cross-site request carrying the session cookie (an HTML form, or a script of
    another site) is refused and changes nothing."""
    value, csrf = await console.signed_in()
    sent = {**cookie_header(value), **headers}
    if form:  # <form enctype="text/plain">: no custom header possible
        status, _ = await console.call(
            "POST",
            "/v1/lists/red/add",
            {**sent, "Content-Type": "text/plain"},
            data='{"numbers": ["' + LISTED + '"], "x": "=1"}',
        )
    else:
        status, _ = await console.call(
            "POST", "/v1/lists/red/add", {**sent, CSRF_HEADER: csrf}, json={"numbers": [LISTED]}
        )
    _, info = await console.call("GET", "/v1/lists/red", AUTH)
    assert (403, 0) == (status, info["entries"])


async def test_signing_out_ends_the_session(console: Console) -> None:
    """After DELETE /v1/session the cookie is refused (401) and GET says signed out."""
    value, csrf = await console.signed_in()
    headers = cookie_header(value)
    out, body = await console.call("DELETE", "/v1/session", {**headers, CSRF_HEADER: csrf})
    after, _ = await console.call("GET", "/v1/lists/red", headers)
    _, state = await console.call("GET", "/v1/session", headers)
    assert (200, False, 401, False) == (out, body["signed_in"], after, state["signed_in"])


def test_a_session_expires_after_its_lifetime_and_when_idle() -> None:
    """A session is refused past its lifetime, and past the idle time without a request."""
    short = Sessions("t" * 16, lifetime_s=0.2)
    idle = Sessions("t" * 16, lifetime_s=60.0, idle_s=0.2)
    short_value, _ = short.sign_in("t" * 16, "127.0.0.1")
    idle_value, _ = idle.sign_in("t" * 16, "127.0.0.1")
    fresh = (short.find(short_value) is not None, idle.find(idle_value) is not None)
    time.sleep(0.3)
    assert ((True, True), (None, None)) == (fresh, (short.find(short_value), idle.find(idle_value)))


async def test_failed_sign_ins_are_throttled(console: Console) -> None:
    """Past MAX_FAILURES wrong tokens in a minute even the right one is refused with 429."""
    for _ in range(MAX_FAILURES):
        await console.sign_in("wrong-token-0123456789")
    status, body, _ = await console.sign_in()
    assert (429, "too many failed sign-ins; wait a minute before trying again") == (
        status,
        body["error"],
    )


async def test_without_a_token_sign_in_needs_none(redis_url: str) -> None:
    """With no token configured (loopback only) sign-in takes no token, as the API does."""
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(make_config(), store, "v1"), token=None)
    try:
        _, before = await running.call("GET", "/v1/session", {})
        status, body, cookie = await running.sign_in("")
    finally:
        await stop(running)
        await store.close()
    assert (False, False) == (before["signed_in"], before["token_required"])
    assert (200, True, True) == (status, body["signed_in"], COOKIE in cookie)


async def test_without_the_console_there_is_no_page_and_no_sign_in(redis_url: str) -> None:
    """[console] enabled = false: / and /v1/session are 404; the API is unchanged."""
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(make_config(), store, "v1"), console=ConsoleConfig(enabled=False))
    try:
        page, _ = await running.call("GET", "/", {})
        session, _ = await running.call("GET", "/v1/session", {})
        api, _ = await running.call("GET", "/v1/lists/red", AUTH)
    finally:
        await stop(running)
        await store.close()
    assert (404, 404, 200) == (page, session, api)


# --- the page ---------------------------------------------------------------------------------


async def test_the_page_is_served_with_a_policy_that_allows_only_this_origin(
    console: Console,
) -> None:
    """/ and its script are served with a Content-Security-Policy allowing only this
    origin (no inline script, no framing) and nosniff; a foreign Host gets 403."""
    async with console.session.get(console.url + "/") as page:
        policy = page.headers["Content-Security-Policy"]
        html = await page.text()
    async with console.session.get(console.url + "/console/console.js") as script:
        script_type = script.headers["Content-Type"]
        sniff = script.headers["X-Content-Type-Options"]
    foreign, _ = await console.call("GET", "/", {"Host": "evil.example"})
    assert {"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} <= {
        part.strip() for part in policy.split(";")
    }
    assert ('<script src="/console/console.js" defer>', "text/javascript", "nosniff", 403) == (
        re.search(r'<script src="[^"]+" defer>', html)[0],  # type: ignore[index]
        script_type.split(";")[0],
        sniff,
        foreign,
    )


@pytest.mark.parametrize("site", ["same-site", "cross-site"])
async def test_a_link_from_another_site_opens_the_page(console: Console, site: str) -> None:
    """Following a link to the console from another site (a wiki, or Grafana on another
    port of the same machine: same-site) opens the page, which changes nothing and cannot
    be framed; its script is still only for this origin, and a foreign Host still 403."""
    navigation = {
        "Sec-Fetch-Site": site,
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
    }
    page, html = await console.call("GET", "/", navigation)
    script, _ = await console.call(
        "GET",
        "/console/console.js",
        {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"},
    )
    framed, _ = await console.call("GET", "/", {**navigation, "Sec-Fetch-Dest": "iframe"})
    foreign, _ = await console.call("GET", "/", {**navigation, "Host": "evil.example"})
    assert (200, True, 403, 403, 403) == (page, "<script" in html, script, framed, foreign)


def test_the_page_loads_nothing_from_another_origin() -> None:
    """No file of the page names another origin (no CDN): the only absolute URL is the SVG
    namespace, an identifier the browser never fetches."""
    urls = {
        url
        for path in STATIC.iterdir()
        for url in re.findall(
            r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s'\"`)]*", path.read_text()
        )
    }
    assert {"http://www.w3.org/2000/svg"} == urls


def test_the_script_never_turns_data_into_markup_and_the_policy_allows_no_inline_code() -> None:
    """Caller-controlled values (a channel name, a campaign) reach the page as text only:
    the script uses no HTML sink, and the policy (a second line) runs no inline script,
    handler or eval."""
    from gate.ops.console import HEADERS

    script = (STATIC / "console.js").read_text()
    sinks = re.findall(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc"
        r"|createContextualFragment|DOMParser",
        script.split("\n", 3)[3],  # past the header comment, which names innerHTML
    )
    policy = HEADERS["Content-Security-Policy"]
    assert ([], False) == (sinks, "unsafe-" in policy)


def test_the_router_opens_only_a_page_of_its_own() -> None:
    """A link like ``#/constructor`` or ``#/__proto__`` picked an inherited property of the
    pages object (``pages[name] || pages.live``): calling it threw a TypeError and no page
    showed. The router reads a page by a name only once ``Object.hasOwn`` vouched for it."""
    script = (STATIC / "console.js").read_text()
    route = re.search(r"\n  function route\(\) \{\n(.*?)\n  \}\n", script, re.S)
    assert route is not None
    body = route[1]
    lookups = [(m.start(), m[1]) for m in re.finditer(r"\bpages\[([^\]'\"]+)\]", body)]
    unguarded = [name for at, name in lookups if f"Object.hasOwn(pages, {name})" not in body[:at]]
    assert (True, []) == (bool(lookups), unguarded)


def test_the_scripts_calling_codes_are_phonenumbers() -> None:
    """The calling codes the page masks numbers with are phonenumbers' own."""
    text = (STATIC / "console.js").read_text()
    block = re.search(r"const CALLING_CODES = new Set\(\[(.*?)\]\);", text, re.S)
    assert block is not None
    found = {int(n) for n in re.findall(r"\d+", block[1])}
    assert set(COUNTRY_CODE_TO_REGION_CODE) == found


# --- console changes in the audit trail ---------------------------------------------------------


async def test_console_changes_are_kept_in_the_audit_trail_with_door_console(
    console: Console,
) -> None:
    """Sign-in, a number added and one removed through the console each leave a record
    with door console, what was done, to what, and the number as the trail names it; an
    API call with the bearer token leaves none."""
    value, csrf = await console.signed_in()
    headers = {**cookie_header(value), CSRF_HEADER: csrf}
    await console.call("POST", "/v1/lists/red/add", headers, json={"numbers": ["0699001122"]})
    await console.call("POST", "/v1/lists/red/remove", headers, json={"numbers": [LISTED]})
    await console.call("POST", "/v1/lists/red/add", AUTH, json={"numbers": [UNLISTED]})
    await console.audit.close()  # flushes what is queued
    gate = console.gate
    records = [r async for r in search.search(gate.store.admin_client, gate.config.redis.namespace)]
    token = search.number_key(LISTED, gate).name
    session = console.server.console.sessions.find(value)  # type: ignore[union-attr]
    assert session is not None
    channel = f"console/{session.label}@127.0.0.1"
    assert [
        ("console", "", "sign_in", "", "", channel),
        ("console", "", "list_add", "red", token, channel),
        ("console", "", "list_remove", "red", token, channel),
    ] == [(r.door, r.verdict, r.reason, r.rule, r.number, r.channel) for r in records]


async def test_a_console_import_is_kept_with_its_counts(console: Console) -> None:
    """An import through the console leaves one record with its mode and counts."""
    value, csrf = await console.signed_in()
    headers = {**cookie_header(value), CSRF_HEADER: csrf, "Content-Type": "text/csv"}
    status, _ = await console.call(
        "POST",
        "/v1/lists/red/import?mode=add",
        headers,
        data=f"{LISTED}\n{UNLISTED}\n{LISTED}\nnot-a-number\n",
    )
    await console.audit.close()
    gate = console.gate
    records = [
        r
        async for r in search.search(gate.store.admin_client, gate.config.redis.namespace)
        if r.reason != "sign_in"
    ]
    assert 200 == status
    assert [
        ("list_import:add", "red", {"imported": 2, "duplicates": 1, "rejected": 1, "skipped": 0})
    ] == [(r.reason, r.rule, r.counters) for r in records]


# --- views ------------------------------------------------------------------------------------


async def test_a_list_a_freshness_rule_needs_is_stale_until_imported_recently(
    redis_url: str,
) -> None:
    """With the uk pack, tps is stale (red) never imported, fresh after an import of
    today's registry, stale again with a registry of 40 days ago (its rule: 28 days)."""
    config = make_config({"gate": {**BASE_CONFIG["gate"], "packs": ["uk"]}})
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(config, store, "v1"))
    admin = ListAdmin.of(running.gate)

    async def tps() -> tuple[bool, list[tuple[str, bool]]]:
        _, body = await running.call("GET", "/v1/lists", AUTH)
        (row,) = [row for row in body["lists"] if row["name"] == "tps"]
        return row["stale"], [(f["rule"], f["stale"]) for f in row["freshness"]]

    async def imported(days_ago: int) -> None:
        when = datetime.now(UTC) - timedelta(days=days_ago)
        await admin.import_entries(
            "tps", [(1, "+447700900123")], "default", "", lambda _: None, refreshed_at=when
        )

    try:
        never = await tps()
        await imported(0)
        today = await tps()
        await imported(40)
        old = await tps()
    finally:
        await stop(running)
        await store.close()
    assert [
        (True, [("uk-tps-28d", True)]),
        (False, [("uk-tps-28d", False)]),
        (True, [("uk-tps-28d", True)]),
    ] == [never, today, old]


async def test_the_us_packs_reassigned_list_is_listed_and_read_like_the_others(
    redis_url: str,
) -> None:
    """With the us pack, GET /v1/lists (the Lists page) and GET /v1/lists/reassigned
    answer 200 with the list of kind ``reassigned``: both were a 500 (a kind the answer's
    model did not know)."""
    config = make_config({"gate": {**BASE_CONFIG["gate"], "packs": ["us"]}})
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(config, store, "v1"))
    try:
        await ListAdmin.of(running.gate).import_disconnects(
            "reassigned", ["+12125550123,2026-11-02"], "default", "", lambda _: None
        )
        lists_status, lists = await running.call("GET", "/v1/lists", AUTH)
        info_status, info = await running.call("GET", "/v1/lists/reassigned", AUTH)
    finally:
        await stop(running)
        await store.close()
    (row,) = [row for row in lists["lists"] if row["name"] == "reassigned"]
    assert (200, "reassigned", 1) == (lists_status, row["kind"], row["info"]["entries"])
    assert (200, "reassigned", 1) == (info_status, info["kind"], info["entries"])


async def test_rules_lists_the_packs_and_every_rule_with_its_source(redis_url: str) -> None:
    """GET /v1/rules names the packs in force with their versions and each rule with its
    source and shadow flag, and the config version."""
    config = make_config({"gate": {**BASE_CONFIG["gate"], "packs": ["fr"]}})
    store = Store(redis_url, deadline_s=1.0)
    running = await start(Gate(config, store, "v7"))
    try:
        status, body = await running.call("GET", "/v1/rules", AUTH)
    finally:
        await stop(running)
        await store.close()
    rules = {(r["pack"], r["id"]): r for r in body["rules"]}
    hours = rules[("fr", "fr-d223-9-hours")]
    assert (200, "v7", ["fr"]) == (status, body["config_version"], [p["id"] for p in body["packs"]])
    assert (
        "hours",
        "Mon-Fri 10:00-13:00, 14:00-20:00; Sat-Sun closed (the callee's local time); "
        "no calls on holidays",
        False,
        True,
    ) == (hours["kind"], hours["summary"], hours["shadow"], "D223-9" in hours["source"])
    assert "at most 4 in 30d per tenant" == rules[(None, "fr-4-per-30d")]["summary"]


async def test_rules_shows_the_default_cps_cap_of_unnamed_trunks(redis_url: str) -> None:
    """With ``[trunks] default_cps``, GET /v1/rules (the Rules page's rows) has a cps rule
    for every trunk [trunks.cps] does not name, its source the setting, beside the named
    trunks' caps; without it, none. The default cap used to be missing: a cap applied to
    every unnamed trunk's call did not show."""
    bodies = []
    for trunks in ({"cps": {"carrier-a": 20}, "default_cps": 5}, {"cps": {"carrier-a": 20}}):
        store = Store(redis_url, deadline_s=1.0)
        running = await start(Gate(make_config({"trunks": trunks}), store, "v1"))
        try:
            status, body = await running.call("GET", "/v1/rules", AUTH)
        finally:
            await stop(running)
            await store.close()
        assert 200 == status
        bodies.append(body)
    with_default, without = (
        [(r["id"], r["summary"], r["source"]) for r in b["rules"] if r["kind"] == "cps"]
        for b in bodies
    )
    named = ("carrier-a", "at most 20 calls per second on trunk carrier-a", "")
    default = (
        "*",
        "at most 5 calls per second on each trunk [trunks.cps] does not name",
        "trunks.default_cps",
    )
    assert ([named, default], [named]) == (with_default, without)


async def test_live_counts_decisions_per_second_by_verdict_and_reason(console: Console) -> None:
    """Between two samples, 3 refusals of a red-listed number and 2 allowed calls are
    3 BLOCK, 2 ALLOW and 3 listed:red over the samples' interval; scrub evaluations are
    not calls."""
    gate = console.gate
    await ListAdmin.of(gate).add("red", [LISTED], "default", "")
    sampler = LiveSampler(console.server.metrics, gate, step_s=10.0)
    await sampler.sample()
    when = datetime.fromisoformat(AT)
    for number in (LISTED, LISTED, LISTED, UNLISTED, "0612345679"):
        await gate.decide(Attempt(number, when, "default"), record=False, door="agi")
    await gate.decide(Attempt(LISTED, when, "default"), record=False, door="scrub")
    await sampler.sample()
    series = sampler.series()
    (first, second) = list(sampler._samples)
    span = second.at - first.at
    counts = {
        "ALLOW": round(series.verdicts["ALLOW"][0] * span),
        "BLOCK": round(series.verdicts["BLOCK"][0] * span),
        "listed:red": round(series.reasons["listed:red"][0] * span),
    }
    assert {"ALLOW": 2, "BLOCK": 3, "listed:red": 3} == counts


async def test_live_reports_the_doors_and_redis(console: Console) -> None:
    """GET /v1/live: Redis answers (a PING time), no Stasis configured, no fail mode."""
    await console.server.live.sample()
    status, body = await console.call("GET", "/v1/live", AUTH)
    doors = body["doors"]
    assert (200, True, None, 0) == (
        status,
        doors["redis"] and doors["redis_ping_ms"] > 0,
        doors["stasis"],
        doors["fail_mode_total"],
    )


async def test_the_audit_feed_streams_new_records_as_server_sent_events(
    console: Console,
) -> None:
    """GET /v1/audit/follow sends each new audit record as an SSE event with its id."""
    gate = console.gate
    got: list[dict[str, Any]] = []
    async with console.session.get(console.url + "/v1/audit/follow", headers=AUTH) as response:
        content_type = response.headers["Content-Type"]
        await asyncio.sleep(0.2)  # the feed is following
        when = datetime.fromisoformat(AT)
        await gate.decide(
            Attempt(LISTED, when, "default", campaign="spring"), record=True, door="agi"
        )
        async with asyncio.timeout(10):
            for _ in range(1000):  # bounded: the decision's event comes within the timeout
                line = (await response.content.readline()).decode()
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    break
    assert "text/event-stream" == content_type
    assert [("agi", "ALLOW", "spring")] == [(r["door"], r["verdict"], r["campaign"]) for r in got]


async def test_a_scrub_tells_the_lines_read_and_the_rows_written(
    console: Console, tmp_path: Path
) -> None:
    """``scrub_file`` tells its caller (the CLI's progress, an upload's progress events)
    after each batch: every line read counts (blank ones before the header, a quoted
    field's second line), every row written counts once, blank rows are not rows."""
    source = tmp_path / "leads.csv"
    source.write_text(
        '\n\nname,phone\n\nann,0699001122\n"bob\nsmith",0612345678\n   \ncid,not a number\n'
    )
    told: list[tuple[int, int]] = []
    summary = await scrub_file(
        console.gate,
        source,
        tmp_path / "out.csv",
        column="phone",
        now=datetime.fromisoformat(AT),
        tenant="default",
        written=lambda lines, rows: told.append((lines, rows)),
    )
    assert [(9, 3)] == told
    assert (3, 1) == (summary.rows, summary.reasons["BLOCK invalid_number"])


@pytest.mark.parametrize(
    ("output", "why"),
    [("missing/out.csv", "No such file or directory"), ("out", "Is a directory")],
    ids=["missing-directory", "directory"],
)
async def test_a_scrub_output_that_cannot_be_written_is_an_input_error_naming_it(
    console: Console, tmp_path: Path, output: str, why: str
) -> None:
    """``scrub_file`` into a directory that does not exist, or onto a directory: an
    InputError naming the output, and nothing left beside it."""
    source = tmp_path / "leads.csv"
    source.write_text("name,phone\nann,0699001122\n")
    (tmp_path / "out").mkdir()
    target = tmp_path / output
    with pytest.raises(InputError) as caught:
        await scrub_file(
            console.gate,
            source,
            target,
            column="phone",
            now=datetime.fromisoformat(AT),
            tenant="default",
        )
    left = sorted(await asyncio.to_thread(os.listdir, tmp_path))
    assert (f"{target}: cannot write there: {why}", ["leads.csv", "out"]) == (
        str(caught.value),
        left,
    )


async def test_a_scrubbed_upload_is_the_file_callgate_scrub_writes(
    console: Console, tmp_path: Path
) -> None:
    """POST /v1/scrub/file streams progress and a summary; the CSV it serves is the one
    scrub_file (callgate scrub) writes for the same leads, options and time."""
    gate = console.gate
    await ListAdmin.of(gate).add("red", [LISTED], "default", "")
    leads = "name;phone\nann;0699001122\nbob;0612345678\ncid;not a number\ndan;\n"
    source = tmp_path / "leads.csv"
    source.write_text(leads)
    expected = tmp_path / "expected.csv"
    await scrub_file(
        gate,
        source,
        expected,
        column="phone",
        now=datetime.fromisoformat(AT),
        tenant="default",
        traffic_class=TrafficClass.CAMPAIGN,
    )
    status, events = await console.call(
        "POST",
        f"/v1/scrub/file?column=phone&at={AT.replace('+', '%2B')}&name=leads.csv",
        {**AUTH, "Content-Type": "text/csv"},
        data=leads,
    )
    done = json.loads(events.strip().splitlines()[-1])
    async with console.session.get(
        console.url + f"/v1/scrub/file/{done['id']}", headers=AUTH
    ) as download:
        served = await download.read()
        disposition = download.headers["Content-Disposition"]
    assert (200, "done", 4) == (status, done["event"], done["rows"])
    assert {"ALLOW": 1, "BLOCK": 3, "DEFER": 0} == done["counts"]
    assert expected.read_bytes() == served
    assert 'attachment; filename="leads-scrubbed.csv"' == disposition
    rows = list(csv.reader(io.StringIO(served.decode()), delimiter=";"))
    assert ["name", "phone", "verdict", "reason", "retry_after_s"] == rows[0]


async def test_an_upload_without_its_column_is_400_before_anything_runs(console: Console) -> None:
    """A leads file without the named column is refused with 400 naming it."""
    status, body = await console.call(
        "POST",
        "/v1/scrub/file?column=phone",
        {**AUTH, "Content-Type": "text/csv"},
        data="name,tel\nann,0612345678\n",
    )
    assert (400, "the upload: no column named 'phone' in header ['name', 'tel']") == (
        status,
        body["error"],
    )


async def test_an_upload_whose_first_line_is_over_the_csv_limit_is_400(console: Console) -> None:
    """A first line longer than the csv module's limit (128 KiB) is refused with 400 and
    the one-line error of ``callgate scrub``."""
    status, body = await console.call(
        "POST",
        "/v1/scrub/file?column=phone",
        {**AUTH, "Content-Type": "text/csv"},
        data='\nname,"phone' + "0" * 140_000 + "\n",
    )
    assert (
        400,
        "the upload:2: a field of the row starting on this line is longer than 131072 "
        "characters (a quote never closed?): close the quote, or remove it",
    ) == (status, body["error"])


# --- errors in the console's words -------------------------------------------------------------


async def test_an_error_of_a_console_request_names_the_console_field(console: Console) -> None:
    """A per-campaign list without a campaign: the console is told to fill in its Campaign
    field (and its Lists page says so), an API client to set its campaign parameter; neither
    is told of a CLI flag."""
    cookie, csrf = await console.signed_in()
    by_console = {**cookie_header(cookie), CSRF_HEADER: csrf}
    body = {"numbers": [UNLISTED]}
    in_console = await console.call("POST", "/v1/lists/camp/add", by_console, json=body)
    in_api = await console.call("POST", "/v1/lists/camp/add", AUTH, json=body)
    status, lists = await console.call("GET", "/v1/lists", cookie_header(cookie))
    note = next(item["note"] for item in lists["lists"] if item["name"] == "camp")
    assert (
        (400, {"error": "list 'camp' is per campaign: fill in Campaign"}),
        (400, {"error": "list 'camp' is per campaign: set campaign"}),
        (200, "list 'camp' is per campaign: fill in Campaign"),
    ) == (in_console, in_api, (status, note))


async def test_an_upload_error_of_a_console_request_names_the_console_field(
    console: Console,
) -> None:
    """A consent list given mode replace, from the console's Import form: the stream's error
    names its Mode field, not --replace."""
    cookie, csrf = await console.signed_in()
    headers = {**cookie_header(cookie), CSRF_HEADER: csrf, "Content-Type": "text/csv"}
    status, text = await console.call(
        "POST", "/v1/lists/consent/import?mode=replace", headers, data=b"0612345678\n"
    )
    lines = text.splitlines() if isinstance(text, str) else [json.dumps(text)]
    events = [json.loads(line) for line in lines]
    assert (200, "list 'consent' is a consent list: Mode replace is for block and allow lists") == (
        status,
        events[-1]["why"],
    )
