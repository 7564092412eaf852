"""The admin API over real HTTP (gate/api.py), against the real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from openapi_spec_validator import validate

from gate.config.loader import ApiConfig, HttpConfig
from gate.core.errors import ConfigError
from gate.ops.api import MAX_BATCH
from gate.ops.console import ASSETS
from gate.ops.http import HttpServer
from gate.ops.metrics import Metrics
from gate.service import Gate
from gate.store.client import Store
from tests.conftest import SAMPLE_CONFIG, make_config
from tests.ops.conftest import LISTS, Served, serve
from tests.ops.test_api_routes import upload

LISTED = "+33699001122"
UNLISTED = "+33612345678"
WHEN = "2026-12-01T10:30:00+01:00"  # a Tuesday inside the fr pack's calling hours


async def test_a_request_without_the_token_is_401(served: Served) -> None:
    """No Authorization header: 401 with a JSON error, nothing decided."""
    status, body = await served.post("/v1/check", {"number": UNLISTED}, auth=False)
    assert (401, "missing or wrong bearer token (Authorization header)") == (
        status,
        body["error"],
    )


async def test_a_request_with_a_wrong_token_is_401(served: Served) -> None:
    """A wrong bearer token is refused like a missing one."""
    url = served.url + "/v1/lists/red"
    async with served.session.get(url, headers={"Authorization": "Bearer nope"}) as response:
        status, challenge = response.status, response.headers["WWW-Authenticate"]
    assert (401, 'Bearer realm="callgate"') == (status, challenge)


@pytest.mark.parametrize("number", ["112", "15", "17"])
async def test_an_emergency_number_for_a_block_list_is_422(served: Served, number: str) -> None:
    """Emergency numbers can never be put on a block list: 422, and the list stays empty."""
    status, body = await served.post("/v1/lists/red/add", {"numbers": [UNLISTED, number]})
    _, info = await served.get("/v1/lists/red")
    assert (422, 0) == (status, info["entries"])
    assert "emergency" in body["error"]


async def test_check_evaluates_without_recording_unless_asked(served: Served) -> None:
    """Five plain checks all ALLOW; with record, the fifth within 30 days is a DEFER cap."""
    plain = [await served.post("/v1/check", {"number": UNLISTED}) for _ in range(5)]
    recorded = [
        await served.post("/v1/check", {"number": UNLISTED, "record": True}) for _ in range(5)
    ]
    assert ["ALLOW"] * 5 == [body["verdict"] for _, body in plain]
    assert ["allowed"] * 4 + ["cap:fr-4-per-30d"] == [body["reason"] for _, body in recorded]


@pytest.mark.parametrize("offset", [timedelta(days=63), timedelta(days=-31), timedelta(seconds=-9)])
async def test_a_recorded_check_at_another_time_is_400_and_counts_nothing(
    served: Served, offset: timedelta
) -> None:
    """``record`` with an ``at`` more than 5 s from now: 400 naming ``at``; the four real
    attempts already counted stay counted."""
    for _ in range(4):
        await served.post("/v1/check", {"number": UNLISTED, "record": True})
    at = (datetime.now(UTC) + offset).isoformat()
    status, body = await served.post("/v1/check", {"number": UNLISTED, "record": True, "at": at})
    _, after = await served.post("/v1/check", {"number": UNLISTED})
    assert (400, True) == (status, body["error"].startswith("at: a recorded attempt happens now"))
    assert "cap:fr-4-per-30d" == after["reason"]


async def test_check_answers_the_decision_with_its_explanation(served: Served) -> None:
    """The body has the CLI's --json fields, the config version and, with explain, rules."""
    status, body = await served.post("/v1/check", {"number": "06 12 34 56 78", "explain": True})
    assert 200 == status
    rules = body.pop("rules")
    assert {
        "verdict": "ALLOW",
        "reason": "allowed",
        "rule": "",
        "retry_after_s": None,
        "destination": UNLISTED,
        "shadow": [],
        "config_version": "v1",
    } == body
    assert "list:red" in [row["rule"] for row in rules]


async def test_an_opt_out_reaches_the_next_check_and_removal_lifts_it(served: Served) -> None:
    """Added to red: the next check is BLOCK listed:red; removed: ALLOW again."""
    added = await served.post("/v1/lists/red/add", {"numbers": [LISTED, "0699001122"]})
    blocked = await served.post("/v1/check", {"number": LISTED})
    removed = await served.post("/v1/lists/red/remove", {"numbers": [LISTED]})
    allowed = await served.post("/v1/check", {"number": LISTED})
    assert (200, {"added": 1, "already_listed": 1}) == added
    assert "listed:red" == blocked[1]["reason"]
    assert (200, {"removed": 1, "not_listed": 0}) == removed
    assert "ALLOW" == allowed[1]["verdict"]


async def test_list_info_reports_the_entries(served: Served) -> None:
    """GET /v1/lists/red: its kind, scope and entry count for the tenant."""
    await served.post("/v1/lists/red/add", {"numbers": [LISTED, UNLISTED], "tenant": "acme"})
    status, info = await served.get("/v1/lists/red?tenant=acme")
    assert (200, "red", "block", "tenant", 2) == (
        status,
        info["name"],
        info["kind"],
        info["scope"],
        info["entries"],
    )


async def test_an_unknown_list_is_404(served: Served) -> None:
    """A list that is not in the config: 404 naming it."""
    status, body = await served.post("/v1/lists/nope/add", {"numbers": [LISTED]})
    assert (404, "list 'nope' is not in the config or its packs") == (status, body["error"])


async def test_consent_is_recorded_and_revocation_red_lists(served: Served) -> None:
    """A consent is recorded; revoked, it is removed and the number goes on red."""
    recorded = await served.post("/v1/consents", {"numbers": [UNLISTED], "granted_at": WHEN})
    _, before = await served.get("/v1/lists/consent")
    revoked = await served.post("/v1/consents/revoke", {"numbers": [UNLISTED]})
    _, after = await served.get("/v1/lists/consent")
    check = await served.post("/v1/check", {"number": UNLISTED})
    assert (200, {"recorded": 1, "updated": 0}) == recorded
    assert (200, {"revoked": 1, "red_listed": 1}) == revoked
    assert (1, 0, "listed:red") == (before["entries"], after["entries"], check[1]["reason"])


async def test_a_consent_for_a_block_list_is_400(served: Served) -> None:
    """Consents go to consent lists only."""
    status, body = await served.post("/v1/consents", {"numbers": [UNLISTED], "list": "red"})
    assert (400, "list: 'red' is not a consent list") == (status, body["error"])


async def test_a_consent_granted_in_the_future_is_400_and_not_recorded(served: Served) -> None:
    """granted_at a day ahead of the clock has not happened (decide.lua reads only the
    expiry: it would count at once): 400 naming granted_at, nothing recorded."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    granted = {"numbers": [UNLISTED], "granted_at": tomorrow.isoformat()}
    status, body = await served.post("/v1/consents", granted)
    _, info = await served.get("/v1/lists/consent")
    assert (400, True, True, 0) == (
        status,
        body["error"].startswith(f"granted_at {tomorrow.isoformat()}: later than the gate's clock"),
        body["error"].endswith("give the time it was given, or none for now"),
        info["entries"],
    )


async def test_a_consent_expiring_at_or_before_its_grant_is_400_and_not_recorded(
    served: Served,
) -> None:
    """An expiry at or before the grant (a consent void from the start): 400 naming
    expires and granted_at, nothing recorded."""
    consent = {"numbers": [UNLISTED], "granted_at": WHEN, "expires": "2026-12-01T09:30:00Z"}
    status, body = await served.post("/v1/consents", consent)
    _, info = await served.get("/v1/lists/consent")
    assert (
        400,
        "expires 2026-12-01T09:30:00+00:00: not after granted_at 2026-12-01T10:30:00+01:00; "
        "a consent lapses after it is given: give a later expires, or none for a consent "
        "that does not lapse",
        0,
    ) == (status, body["error"], info["entries"])


async def test_a_consent_file_dated_in_the_future_is_400_before_it_is_read(
    served: Served,
) -> None:
    """An upload into a consent list records its consents as given at refreshed_at: one a
    day ahead of the clock is 400 naming refreshed_at (no 200, no stream), none imported."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    path = f"/v1/lists/consent/import?refreshed_at={quote(tomorrow.isoformat())}"
    status, body, _ = await upload(served, path, b"0612345678\n")
    assert isinstance(body, dict)
    _, info = await served.get("/v1/lists/consent")
    assert (400, True, 0) == (
        status,
        body["error"].startswith(
            f"refreshed_at {tomorrow.isoformat()}: later than the gate's clock"
        ),
        info["entries"],
    )


@pytest.fixture
async def fr_served(redis_url: str) -> AsyncIterator[Served]:
    """The API on a config with the fr pack (which has the refusal cool-off)."""
    packs = {
        "default_region": "FR",
        "packs": ["fr"],
        "packs_dir": str(SAMPLE_CONFIG.parent / "packs"),
    }
    store = Store(redis_url, deadline_s=1.0)
    gate = Gate(make_config({"gate": packs, "lists": LISTS}, base=Path("/")), store, "fr1")
    running = await serve(gate)
    yield running
    await running.session.close()
    await running.server.stop()
    await store.close()


async def test_a_refusal_starts_the_packs_cool_off(fr_served: Served) -> None:
    """POST /v1/events/refusal answers the fr cool-off rule now holding the number."""
    status, body = await fr_served.post("/v1/events/refusal", {"number": UNLISTED})
    assert (200, {"event": "refusal", "rules": ["fr-d223-9-refusal"], "uncounted": []}) == (
        status,
        body,
    )


async def test_a_refusal_without_a_cool_off_rule_is_422(served: Served) -> None:
    """Without a pack that has a cool-off, nothing is recorded: 422."""
    status, body = await served.post("/v1/events/refusal", {"number": UNLISTED})
    assert 422 == status
    assert "nothing recorded" in body["error"]


async def test_scrub_evaluates_a_batch_without_counting(served: Served) -> None:
    """A scrub answers each number in order and counts nothing against the cap."""
    await served.post("/v1/lists/red/add", {"numbers": [LISTED]})
    numbers = [LISTED, UNLISTED, "0899123456", "abc"] + [UNLISTED] * 8
    status, body = await served.post("/v1/scrub", {"numbers": numbers})
    recorded = [
        await served.post("/v1/check", {"number": UNLISTED, "record": True}) for _ in range(4)
    ]
    assert 200 == status
    assert ["listed:red", "allowed", "number_type:premium", "invalid_number"] == [
        row["reason"] for row in body["results"][:4]
    ]
    assert {"ALLOW": 9, "BLOCK": 3, "DEFER": 0} == body["counts"]
    assert ["ALLOW"] * 4 == [b["verdict"] for _, b in recorded]


async def test_a_scrub_beyond_the_bound_is_413(served: Served) -> None:
    """More than MAX_BATCH numbers in one request: 413, nothing evaluated."""
    status, body = await served.post("/v1/scrub", {"numbers": [UNLISTED] * (MAX_BATCH + 1)})
    assert (413, f"numbers: {MAX_BATCH + 1} numbers; at most {MAX_BATCH} per request") == (
        status,
        body["error"],
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"number": 612345678}, "number: expected a string, got 612345678"),
        ({}, "number: is required"),
        ({"number": UNLISTED, "colour": "red"}, "colour: unknown field"),
        ({"number": UNLISTED, "tenant": "a b"}, "tenant: 'a b' must be 1-64 of A-Z a-z 0-9 _ . -"),
        (
            {"number": UNLISTED, "at": "tomorrow"},
            "at: 'tomorrow' is not an RFC 3339 date-time with an offset "
            "(e.g. 2026-12-01T10:30:00+01:00)",
        ),
        (
            {"number": UNLISTED, "at": "2026-12-01T10:30:00"},
            "at: '2026-12-01T10:30:00' is not an RFC 3339 date-time with an offset "
            "(e.g. 2026-12-01T10:30:00+01:00)",
        ),
        (
            {"number": UNLISTED, "at": "2026-12-01T10:30:00Z\n"},
            "at: '2026-12-01T10:30:00Z\\n' is not an RFC 3339 date-time with an offset "
            "(e.g. 2026-12-01T10:30:00+01:00)",
        ),
        (
            {"number": UNLISTED, "class": "robot"},
            "class: must be 'campaign' or 'manual', got 'robot'",
        ),
        ({"number": UNLISTED, "record": "yes"}, "record: expected true or false, got 'yes'"),
        ({"number": UNLISTED, "record": 1}, "record: expected true or false, got 1"),
        ([UNLISTED], "the body must be a JSON object, got ['+33612345678']"),
    ],
)
async def test_bad_input_is_400_naming_the_field(served: Served, body: object, error: str) -> None:
    """Each malformed check body is refused with 400 and one line naming the field."""
    assert (400, {"error": error}) == await served.post("/v1/check", body)


async def test_openapi_describes_every_route_the_server_serves(served: Served) -> None:
    """/openapi.json is OpenAPI 3.1 and has an operation for each route and method served
    (but the console's page and its files, which are not the API)."""
    status, spec = await served.get("/openapi.json")
    served_routes = {
        (r.method.lower(), r.resource.canonical)
        for r in served.server.app.router.routes()
        if r.resource is not None and r.method != "HEAD" and r.resource.canonical not in ASSETS
    }
    described = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert (200, "3.1.0") == (status, spec["openapi"])
    assert served_routes == described


async def test_openapi_passes_the_spec_validator(served: Served) -> None:
    """The generated description is a valid OpenAPI 3.1 document (openapi-spec-validator)."""
    _, spec = await served.get("/openapi.json")
    validate(spec)


async def test_every_operation_is_named_and_every_object_is_closed(served: Served) -> None:
    """Each operation has a unique operationId; every object schema with properties says
    additionalProperties: false; every JSON answer has a schema of its own (no bare object)."""
    _, spec = await served.get("/openapi.json")
    operations = [op for item in spec["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    objects = [s for s in spec["components"]["schemas"].values() if "properties" in s]
    open_objects = [s["title"] for s in objects if s.get("additionalProperties") is not False]
    bare = [
        (op["operationId"], status)
        for op in operations
        for status, answer in op["responses"].items()
        for media in answer.get("content", {}).values()
        if media["schema"] in ({}, {"type": "object"})
    ]
    assert (len(ids), [], []) == (len(set(ids)), open_objects, bare)


async def test_the_api_refuses_to_start_on_all_interfaces_without_a_token(
    http_gate: Gate,
) -> None:
    """HttpServer on 0.0.0.0 without a token raises ConfigError before listening."""
    server = HttpServer(http_gate, Metrics(), HttpConfig(host="0.0.0.0", port=0), ApiConfig())
    with pytest.raises(ConfigError, match="without a token"):
        await server.start()


def test_the_config_refuses_a_non_loopback_listener_without_a_token() -> None:
    """[http] host = "0.0.0.0" without api.token is a config error naming api.token."""
    with pytest.raises(ConfigError, match=r"^test\.toml: api\.token: is required when http\.host"):
        make_config({"http": {"host": "0.0.0.0"}})


def test_a_non_loopback_listener_with_a_token_is_accepted() -> None:
    """With a token of 16+ characters, any address may be configured."""
    config = make_config({"http": {"host": "0.0.0.0"}, "api": {"token": "x" * 16}})
    assert ("0.0.0.0", "x" * 16) == (config.http.host, config.api.token)
