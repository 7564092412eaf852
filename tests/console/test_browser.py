"""The console in a REAL headless Chromium against a REAL ``callgate run`` (fixtures in
conftest.py): sign-in, Check, Lists (one number, a 100 000-number import), Scrub (a
10 000-lead file, downloaded and compared with ``callgate scrub``), Audit, Rules, a
cross-site form refused, and the Live page's weight and time to first render.

The tests share one gate and one browser (module fixtures) and run in file order; each
uses numbers of its own. A screenshot of each page is saved (see conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gate.cli import main
from gate.core.errors import StoreUnavailable
from gate.store.lists import ListStore
from tests.conftest import TEST_SECRET
from tests.console.browser import Browser
from tests.console.conftest import TOKEN, GateProcess, RunningGate, free_port, write_config

pytestmark = pytest.mark.browser

RED = "+33699001122"
ADDED = "0611223344"
ASSETS_GOAL_BYTES = 300 * 1024
AT_LOCAL = "2026-12-01T10:30:00"  # a Tuesday, inside the fr pack's calling hours


def shot(browser: Browser, artifacts: Path, name: str) -> None:
    browser.screenshot(artifacts / f"{name}.png")


@contextlib.contextmanager
def own_gate(redis_url: str, tmp_path: Path, **overrides: Any) -> Iterator[RunningGate]:
    """A ``callgate run`` of the test's own (no token; ``overrides`` of the sample config
    besides a 1 s Redis deadline), stopped at the block's end."""
    port = free_port()
    config = write_config(
        tmp_path / "callgate.toml",
        redis_url=redis_url,
        agi_port=port,
        secret=TEST_SECRET,
        overrides={"redis": {"deadline": "1s"}, **overrides},
    )
    with GateProcess(config, tmp_path / "callgate.log", port) as process:
        yield RunningGate(process, f"http://127.0.0.1:{process.http_port()}", config)


def open_page(browser: Browser, gate: RunningGate, page: str, ready_css: str) -> None:
    browser.get(f"{gate.url}/#/{page}")
    browser.wait(f"the {page} page", lambda: browser.find_all(ready_css))


def at_with_offset(browser: Browser) -> str:
    """AT_LOCAL as the browser's console sends it: with the browser's own UTC offset."""
    minutes = browser.run(f"return -new Date('{AT_LOCAL}').getTimezoneOffset();")
    sign = "+" if minutes >= 0 else "-"
    return f"{AT_LOCAL}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def test_a_wrong_token_is_refused_and_the_right_one_signs_in(
    running_gate: RunningGate, browser: Browser, artifacts: Path
) -> None:
    """A wrong token leaves the sign-in form with the reason; the API token opens Live."""
    browser.get(running_gate.url + "/")
    browser.wait("the sign-in form", lambda: browser.find("#token").is_displayed())
    browser.fill("#token", "not-the-token-0123456789")
    browser.find("#signin-form button").click()
    refused = browser.text("#signin-error")
    shot(browser, artifacts, "signin")
    browser.sign_in(running_gate.url, TOKEN)
    status = browser.text("#live-status")
    assert "wrong token: use the API token ([api] token)" == refused
    assert status in ("connecting…", "streaming")
    assert [] == browser.errors()


def test_the_live_page_weighs_little_and_renders_fast(
    running_gate: RunningGate, browser: Browser, artifacts: Path
) -> None:
    """Loaded afresh, the Live page's own files (HTML, script, style) weigh under 300 KB;
    its first paint and the moment its data is drawn are measured (artifact live.json)."""
    browser.sign_in(running_gate.url, TOKEN)
    browser.get("about:blank")
    browser.get(running_gate.url + "/#/live")
    browser.wait(
        "the Live data drawn",
        lambda: browser.run("return performance.getEntriesByName('callgate-live-data').length"),
    )
    measured = browser.run(
        """
        const nav = performance.getEntriesByType('navigation')[0];
        const resources = performance.getEntriesByType('resource');
        const assets = resources.filter((r) => r.name.includes('/console/'));
        const paint = performance.getEntriesByName('first-contentful-paint')[0];
        const data = performance.getEntriesByName('callgate-live-data')[0];
        return {
          document_bytes: nav.decodedBodySize,
          asset_bytes: assets.reduce((n, r) => n + r.decodedBodySize, 0),
          assets: assets.map((r) => r.name.split('/').pop()),
          api_bytes: resources.filter((r) => r.name.includes('/v1/'))
            .reduce((n, r) => n + r.decodedBodySize, 0),
          first_contentful_paint_ms: paint ? Math.round(paint.startTime) : null,
          live_data_drawn_ms: Math.round(data.startTime),
          dom_content_loaded_ms: Math.round(nav.domContentLoadedEventEnd),
        };
        """
    )
    shot(browser, artifacts, "live")
    (artifacts / "live.json").write_text(json.dumps(measured, indent=2) + "\n")
    print(f"\nLive page: {json.dumps(measured)}")
    page_bytes = measured["document_bytes"] + measured["asset_bytes"]
    assert ["console.css", "console.js"] == sorted(measured["assets"])
    assert page_bytes < ASSETS_GOAL_BYTES, measured


def test_a_red_listed_number_is_blocked_with_its_explain_rows(
    running_gate: RunningGate, browser: Browser, artifacts: Path
) -> None:
    """Check on a red-listed number shows BLOCK listed:red, the number masked, and the
    explain rows (the list rule with its outcome, the pack's rules with their sources)."""
    running_gate.process.cli("list", "add", "red", RED)
    open_page(browser, running_gate, "check", "#check-form")
    browser.fill("#check-form [name=number]", "06 99 00 11 22")
    browser.set_value("#check-form [name=at]", AT_LOCAL)
    browser.find("#check-form button[type=submit]").click()
    verdict = browser.text("#verdict")
    rows = {
        cells[0].text: (cells[1].text, cells[3].text)
        for row in browser.find_all("#explain tbody tr")
        if (cells := row.find_elements("css selector", "td"))
    }
    masked = browser.find("#destination").text
    shot(browser, artifacts, "check")
    browser.find("#reveal").click()
    revealed = browser.text("#destination")
    assert ("BLOCK", "listed:red") == (verdict, browser.find("#reason").text)
    assert ("+33 6 99 •• •• 22", "+33 6 99 00 11 22") == (masked, revealed)
    assert "BLOCK" == rows["list:red"][0]
    assert "D223-9" in rows["hours:fr-d223-9-hours"][1]


def test_a_number_added_in_lists_is_then_blocked_by_check(
    running_gate: RunningGate, browser: Browser, artifacts: Path
) -> None:
    """Adding a number to red on the Lists page, then checking it, gives BLOCK listed:red;
    the list's size goes up by one."""
    open_page(browser, running_gate, "lists", "#lists-table tr[data-list=red]")
    before = int(browser.find("tr[data-list=red] td.entries").text.replace(",", ""))
    browser.set_value("#one-form [name=list]", "red")
    browser.fill("#one-form [name=number]", ADDED)
    browser.find("#one-form button[value=add]").click()
    result = browser.text("#one-result")
    after = browser.wait(
        "the new size",
        lambda: (
            (n := int(browser.find("tr[data-list=red] td.entries").text.replace(",", ""))) != before
            and n
        ),
    )
    shot(browser, artifacts, "lists")
    open_page(browser, running_gate, "check", "#check-form")
    browser.fill("#check-form [name=number]", ADDED)
    browser.set_value("#check-form [name=at]", AT_LOCAL)
    browser.find("#check-form button[type=submit]").click()
    checked = (browser.text("#verdict"), browser.find("#reason").text)
    assert ("1 added, 0 already listed", before + 1) == (result, after)
    assert ("BLOCK", "listed:red") == checked


def test_an_import_of_100k_numbers_shows_its_progress_to_the_final_count(
    running_gate: RunningGate, browser: Browser, artifacts: Path, tmp_path: Path
) -> None:
    """Uploading 100 000 numbers to dnc (replace) fills the progress bar to the file's
    line count and shows the final counts; the list then holds them."""
    numbers = tmp_path / "dnc.txt"
    numbers.write_text("".join(f"+3361{i:07d}\n" for i in range(100_000)))
    # The list choices are filled when the lists have loaded: wait for the one to pick.
    open_page(browser, running_gate, "lists", "#import-form [name=list] option[value=dnc]")
    browser.set_value("#import-form [name=list]", "dnc")
    browser.set_value("#import-form [name=mode]", "replace")
    browser.find("#import-form input[type=file]").send_keys(str(numbers))
    browser.find("#import-form button[type=submit]").click()
    done = browser.wait(
        "the import's final counts",
        lambda: (text := browser.find("#import-status").text).startswith("done") and text,
        within_s=120,
    )
    bar = browser.run(
        "const b = document.getElementById('import-progress'); return [b.value, b.max];"
    )
    size = browser.wait(
        "the dnc list's size",
        lambda: browser.find("tr[data-list=dnc] td.entries").text.replace(",", "") == "100000",
    )
    shot(browser, artifacts, "lists-import")
    assert (
        "done: 100,000 imported, 0 duplicates, 0 rejected, 0 skipped (100,000 lines)",
        [100_000, 100_000],
        True,
    ) == (done, bar, size)


def test_a_10k_lead_scrub_downloads_what_callgate_scrub_writes(
    running_gate: RunningGate, browser: Browser, artifacts: Path, tmp_path: Path
) -> None:
    """A 10 000-lead file scrubbed on the Scrub page shows its summary by reason, and the
    annotated CSV it downloads is the file `callgate scrub` writes for the same leads,
    column and time."""
    leads = tmp_path / "leads.csv"
    rows = [f"lead{i},+3361{i:07d},campaign" for i in range(9_990)]
    rows += [f"red{i},{RED}," for i in range(10)]
    leads.write_text("name,phone,source\n" + "\n".join(rows) + "\n")
    open_page(browser, running_gate, "scrub", "#scrub-form")
    browser.find("#scrub-form input[type=file]").send_keys(str(leads))
    browser.fill("#scrub-form [name=column]", "phone")
    browser.set_value("#scrub-form [name=at]", AT_LOCAL)
    browser.find("#scrub-form button[type=submit]").click()
    status = browser.wait(
        "the scrub's summary",
        lambda: (text := browser.find("#scrub-status").text).startswith("done") and text,
        within_s=120,
    )
    reasons = {
        el.get_attribute("data-reason"): el.text.split()[-1]
        for el in browser.find_all("#scrub-reasons div[data-reason]")
    }
    shot(browser, artifacts, "scrub")
    browser.find("#scrub-download").click()
    downloaded = browser.downloaded("leads-scrubbed.csv", within_s=60)
    expected = tmp_path / "cli.csv"
    running_gate.process.cli(
        "scrub",
        str(leads),
        "--column",
        "phone",
        "--at",
        at_with_offset(browser),
        "-o",
        str(expected),
    )
    assert "done: 10,000 leads" == status
    assert "10" == reasons["BLOCK listed:red"]
    assert expected.read_bytes() == downloaded.read_bytes()


def test_the_audit_page_finds_a_number_by_what_the_officer_types(
    running_gate: RunningGate, browser: Browser, artifacts: Path
) -> None:
    """Searching the audit trail for the number typed as dialled finds the console's own
    change to it (door console, list_add on red), and offers the range as CSV."""
    open_page(browser, running_gate, "audit", "#audit-form")
    browser.fill("#audit-form [name=number]", ADDED)
    browser.find("#audit-form button[type=submit]").click()
    browser.text("#audit-count")
    rows = [
        [cell.text for cell in row.find_elements("css selector", "td")]
        for row in browser.find_all("#audit-table tbody tr")
    ]
    export = browser.find("#audit-export").get_attribute("href")
    shot(browser, artifacts, "audit")
    assert [("console", "list_add", "red")] == [(r[1], r[3], r[4]) for r in rows]
    assert {"format=csv", "number=0611223344"} <= set(export.split("?")[1].split("&"))


def test_the_rules_page_shows_the_packs_and_their_rules(
    running_gate: RunningGate, browser: Browser, artifacts: Path
) -> None:
    """Rules names the fr pack with its version and lists its hours rule with its source."""
    open_page(browser, running_gate, "rules", "#rules tbody tr")
    packs = [row.text for row in browser.find_all("#packs tbody tr")]
    rules = "\n".join(row.text for row in browser.find_all("#rules tbody tr"))
    shot(browser, artifacts, "rules")
    assert 1 == len(packs)
    assert packs[0].startswith("fr ")
    assert "fr-d223-9-hours" in rules
    assert "Code de la consommation D223-9" in rules


class _EvilPage(BaseHTTPRequestHandler):
    """Another site: a page whose form posts to the console's API as soon as it loads."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><form id=f method=post enctype=text/plain action="
            f'"{self.target}"><input name=\'{{"numbers":["+33612000000"],"x":"\' '
            "value='\"}'></form><script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def evil_site(running_gate: RunningGate) -> Iterator[str]:
    """A page on http://localhost:<other port> (another site than 127.0.0.1)."""
    _EvilPage.target = running_gate.url + "/v1/lists/red/add"
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_cross_site_form_post_with_the_session_is_refused(
    running_gate: RunningGate, browser: Browser, evil_site: str
) -> None:
    """Signed in, a page of another site that posts a form to /v1/lists/red/add is
    refused (403) and the red list is unchanged."""

    def red_entries() -> int:
        counted = running_gate.process.cli("list", "count", "red", "--json")
        return int(json.loads(counted.stdout)["entries"])

    before = red_entries()
    browser.get(evil_site)
    answer = browser.wait(
        "the gate's answer to the form",
        lambda: "error" in (text := browser.find("body").text) and text,
    )
    assert {"error": "cross-site request refused"} == json.loads(answer)
    assert before == red_entries()


def test_without_a_token_the_console_opens_with_a_warning(
    redis_server_url: str, browser: Browser, tmp_path: Path, artifacts: Path
) -> None:
    """A gate without an API token (loopback only) opens the console without sign-in and
    says that any local user can use it."""
    with own_gate(redis_server_url, tmp_path) as gate:
        browser.get(f"{gate.url}/")
        banner = browser.text("#banner")
        shown = browser.wait("the Live page", lambda: browser.find_all("#live-table"))
        shot(browser, artifacts, "no-token")
    assert (
        "This gate has no API token: any local user can use this console and the API. "
        "Set [api] token to require one."
    ) == banner
    assert 1 == len(shown)


def test_an_abandoned_call_recorded_on_the_lists_page_counts_toward_its_campaign(
    redis_server_url: str, browser: Browser, tmp_path: Path
) -> None:
    """With the uk pack, "Record an abandoned call" with the campaign given above the lists
    starts the 72 h cool-off and counts the call toward the campaign's abandoned-call
    ceiling; without a campaign the page says which ceiling it was not counted toward."""
    with own_gate(redis_server_url, tmp_path, gate={"packs": ["uk"]}) as gate:
        open_page(
            browser,
            gate,
            "lists",
            "#lists-table tr[data-list=red]",
        )
        browser.fill("#consent-form [name=number]", "+442079460123")
        browser.find("#consent-form button[value=abandoned]").click()
        uncounted = browser.text("#consent-result")
        browser.fill("#lists-scope [name=campaign]", "spring")
        browser.run("document.getElementById('consent-result').textContent = '';")
        browser.find("#consent-form button[value=abandoned]").click()
        counted = browser.text("#consent-result")
    assert (
        "abandoned recorded: uk-abandoned-72h; not counted toward uk-ofcom-abandoned-3pct "
        "(give its campaign above)",
        "abandoned recorded: uk-abandoned-72h, uk-ofcom-abandoned-3pct",
    ) == (uncounted, counted)


def test_the_live_page_without_refusals_says_so_instead_of_collecting(
    redis_server_url: str, browser: Browser, tmp_path: Path
) -> None:
    """Once the first rates are drawn, a gate that refused no call shows an empty reasons
    chart with "no refusals in the last hour", not "collecting" (it said so for ever)."""
    with own_gate(redis_server_url, tmp_path) as gate:
        url = f"{gate.url}/#/live"

        def drawn() -> bool:
            # The page polls every 5 s; a fresh load shows the samples taken (every 10 s).
            browser.get(url)
            browser.wait("the Live charts", lambda: browser.find_all("#chart-verdicts svg"))
            return "collecting" not in browser.find("#chart-verdicts").text

        browser.wait("the first rates", drawn, within_s=40)
        reasons = browser.find("#chart-reasons").text
    assert "collecting" not in reasons
    assert "no refusals in the last hour" in reasons


def test_a_reassigned_list_can_be_imported_on_the_lists_page(
    redis_server_url: str, browser: Browser, tmp_path: Path
) -> None:
    """With the us pack, its reassigned list (lines number,disconnected_on) is offered for
    upload, as ``POST /v1/lists/reassigned/import`` takes it."""
    answers = tmp_path / "rnd-answers.csv"
    answers.write_text("+12125550123,2026-11-02\n+12125550124,2026-11-03\n")
    with own_gate(redis_server_url, tmp_path, gate={"packs": ["us"]}) as gate:
        open_page(
            browser,
            gate,
            "lists",
            "#lists-table tr[data-list=reassigned]",
        )
        offered = [
            option.get_attribute("value")
            for option in browser.find_all("#import-form [name=list] option")
        ]
        browser.set_value("#import-form [name=list]", "reassigned")
        browser.find("#import-form input[type=file]").send_keys(str(answers))
        browser.find("#import-form button[type=submit]").click()
        done = browser.wait(
            "the import's final counts",
            lambda: (text := browser.find("#import-status").text).startswith("done") and text,
        )
    assert "reassigned" in offered
    assert done.startswith("done: 2 imported,"), done


@pytest.mark.timeout(120)
def test_an_unfinished_switch_is_shown_under_its_list_on_the_lists_page(
    running_gate: RunningGate,
    browser: Browser,
    artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An import of customers in replace mode cut off while switching (a failover): the
    Lists page shows, under its row, that the switch is unfinished and what to do; once
    the list is imported again the note is gone."""
    customers = tmp_path / "crm.txt"
    customers.write_text("+33612000001\n+33612000002\n")
    command = ["--config", str(running_gate.config), "list", "import", "customers"]
    replace = [*command, str(customers), "--replace"]  # the default tenant, the page's

    async def cut_off(self: ListStore, *args: object) -> None:
        raise StoreUnavailable("Redis at test is unreachable (cut off)")

    with monkeypatch.context() as patched:
        patched.setattr(ListStore, "_switched", cut_off)
        failed = main(replace)
    browser.sign_in(running_gate.url, TOKEN)
    open_page(browser, running_gate, "lists", "#lists-table tr[data-switch=customers]")
    note = browser.text("tr[data-switch=customers] td")
    shot(browser, artifacts, "lists-switch")
    again = main(replace)
    browser.find("#lists-scope button[type=submit]").click()
    browser.wait(
        "the note gone", lambda: not browser.find_all("#lists-table tr[data-switch=customers]")
    )
    assert (2, 0) == (failed, again)
    assert note.startswith("switch unfinished"), note
    assert "1024 of 1024 slot groups decide with it" in note
    assert "import the list again in replace mode" in note


def test_a_number_in_the_trail_stays_masked_in_its_tooltip(
    redis_server_url: str, browser: Browser, tmp_path: Path
) -> None:
    """With ``privacy.hash_numbers`` off the trail holds numbers: the Audit table shows one
    masked, and the cell's tooltip does not give it away (it held the whole number)."""
    # A namespace of its own: the session's Redis holds hashed data (another keying).
    plain = {"privacy": {"hash_numbers": False}, "redis": {"deadline": "1s", "namespace": "plain"}}
    with own_gate(redis_server_url, tmp_path, **plain) as gate:
        request = urllib.request.Request(
            f"{gate.url}/v1/check",
            data=json.dumps({"number": ADDED, "record": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # a decision recorded
            added = answer.status
        open_page(browser, gate, "audit", "#audit-form")
        browser.fill("#audit-form [name=number]", ADDED)
        browser.find("#audit-form button[type=submit]").click()
        browser.text("#audit-count")
        cells = [
            row.find_elements("css selector", "td")[5]
            for row in browser.find_all("#audit-table tbody tr")
        ]
        shown = [(cell.text, cell.get_attribute("title")) for cell in cells]
    assert (200, [("+33 6 11 •• •• 44", "")]) == (added, shown)  # "": no title


MARKUP_CHANNEL = 'PJSIP/<img src=x onerror="window.callgatePwned=1">-00000001'


def agi_decision(port: int, extension: str, channel: str) -> str:
    """Play Asterisk for one FastAGI ``check`` recorded with ``channel`` (what Asterisk
    names the channel: a peer's endpoint name is in it); the CALLGATE_DECISION line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"agi_network_script: check\nagi_extension: {extension}\n"
            f"agi_channel: {channel}\nagi_callerid: 0162000000\n\n".encode()
        )
        answer = conn.makefile("rb")
        line = answer.readline().decode()
        conn.sendall(b"200 result=1\n")
    return line


def test_markup_in_a_recorded_channel_name_is_shown_as_text_on_the_audit_page(
    redis_server_url: str, browser: Browser, tmp_path: Path
) -> None:
    """A channel name holding HTML (recorded from a FastAGI request) is shown on the
    Audit page as the characters it holds: no element is made of it, no script runs."""
    with own_gate(redis_server_url, tmp_path) as gate:
        decided = agi_decision(gate.process.agi_port, "0612345678", MARKUP_CHANNEL)
        open_page(browser, gate, "audit", "#audit-form")
        browser.find("#audit-form button[type=submit]").click()
        browser.text("#audit-count")
        channels = [
            row.find_elements("css selector", "td")[11].text
            for row in browser.find_all("#audit-table tbody tr")
        ]
        images = browser.run("return document.querySelectorAll('#audit-table img').length;")
        pwned = browser.run("return window.callgatePwned === undefined;")
    assert (True, [MARKUP_CHANNEL], 0, True) == (
        decided.startswith("SET VARIABLE CALLGATE_DECISION "),
        [channel for channel in channels if channel.startswith("PJSIP/")],
        images,
        pwned,
    )
