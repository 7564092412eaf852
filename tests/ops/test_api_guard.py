"""The admin API refuses web pages and hostile bodies (gate/ops/api.py, gate/ops/models.py)."""

from __future__ import annotations

from typing import Any, get_args

import aiohttp
import pytest

from gate.config.loader import ApiConfig, HttpConfig
from gate.lists.formats import FORMATS
from gate.ops.http import HttpServer
from gate.ops.metrics import Metrics
from gate.ops.models import ImportQuery
from gate.service import Gate
from tests.ops.conftest import AUTH, Served

LISTED = "+33699001122"


async def raw_post(
    served: Served, path: str, data: bytes | str, headers: dict[str, str]
) -> tuple[int, Any]:
    async with served.session.post(served.url + path, data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def red_entries(served: Served) -> int:
    _, info = await served.get("/v1/lists/red")
    return int(info["entries"])


async def test_a_cross_site_text_plain_post_changes_nothing(served: Served) -> None:
    """The form-style POST a web page can send (text/plain, no token needed on loopback):
    415, and the opt-out it tried to remove stays."""
    await served.post("/v1/lists/red/add", {"numbers": [LISTED]})
    status, body = await raw_post(
        served,
        "/v1/lists/red/remove",
        '{"numbers": ["+33699001122"]}',
        {**AUTH, "Content-Type": "text/plain"},
    )
    assert (415, "Content-Type 'text/plain': send application/json") == (status, body["error"])
    assert 1 == await red_entries(served)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        (
            {"Host": "evil.example:9473"},
            "Host 'evil.example:9473' is not this gate's; add it to api.allowed_hosts if it "
            "is a name of this server",
        ),
        (
            {"Origin": "http://evil.example"},
            "cross-origin request from 'http://evil.example' refused",
        ),
        ({"Origin": "null"}, "cross-origin request from 'null' refused"),
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site request refused"),
    ],
)
async def test_a_foreign_host_or_origin_is_403(
    served: Served, headers: dict[str, str], error: str
) -> None:
    """DNS rebinding (a foreign Host) and cross-origin requests are refused before anything
    runs, even with a JSON body."""
    await served.post("/v1/lists/red/add", {"numbers": [LISTED]})
    status, body = await raw_post(
        served,
        "/v1/lists/red/remove",
        '{"numbers": ["+33699001122"]}',
        {**AUTH, "Content-Type": "application/json", **headers},
    )
    assert (403, error) == (status, body["error"])
    assert 1 == await red_entries(served)


async def test_loopback_names_and_same_origin_are_served(served: Served) -> None:
    """Host localhost:port with a same-origin Origin is the gate's own: served."""
    port = served.server.port
    headers = {
        **AUTH,
        "Content-Type": "application/json",
        "Host": f"localhost:{port}",
        "Origin": f"http://localhost:{port}",
        "Sec-Fetch-Site": "same-origin",
    }
    status, body = await raw_post(
        served, "/v1/lists/red/add", '{"numbers": ["+33699001122"]}', headers
    )
    assert (200, {"added": 1, "already_listed": 0}) == (status, body)


async def test_an_allowed_host_name_is_served(http_gate: Gate) -> None:
    """A name in api.allowed_hosts is accepted as Host; others still are not."""
    server = HttpServer(
        http_gate,
        Metrics(),
        HttpConfig(host="127.0.0.1", port=0),
        ApiConfig(token=None, allowed_hosts=("gate.example",)),
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.port}/v1/lists/red"
            async with session.get(url, headers={"Host": "gate.example"}) as ok:
                allowed = ok.status
            async with session.get(url, headers={"Host": "other.example"}) as refused:
                foreign = refused.status
    finally:
        await server.stop()
    assert (200, 403) == (allowed, foreign)


async def test_no_cors_header_is_ever_sent(served: Served) -> None:
    """A preflight gets no Access-Control-Allow-* header, so a browser never sends the
    request it asks about."""
    headers = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with served.session.options(served.url + "/v1/check", headers=headers) as response:
        cors = [h for h in response.headers if h.lower().startswith("access-control-")]
        status = response.status
    assert (True, []) == (status >= 400, cors)


async def test_a_wrong_method_is_405_saying_which_to_use(served: Served) -> None:
    """A route called with a method it does not take answers 405 with the ``Allow`` header
    (RFC 9110 15.5.6) and says which methods to use."""
    async with served.session.get(served.url + "/v1/check", headers=AUTH) as response:
        answer = (response.status, response.headers.get("Allow"), await response.json())
    assert (405, "POST", {"error": "GET /v1/check: not allowed; use POST"}) == answer


async def test_deeply_nested_json_is_400_not_500(served: Served) -> None:
    """A body of 100 000 '[' is refused as not JSON (no RecursionError, no 500)."""
    status, body = await raw_post(
        served, "/v1/check", "[" * 100_000, {**AUTH, "Content-Type": "application/json"}
    )
    assert 400 == status
    assert body["error"].startswith("the body is not JSON (recursion limit exceeded")


@pytest.mark.parametrize(
    ("path", "content_type", "encoding"),
    [
        ("/v1/lists/red/remove", "application/json", "gzip"),
        ("/v1/lists/red/import", "text/csv", "gzip"),
        ("/v1/scrub/file", "text/csv", "deflate"),
    ],
)
async def test_a_body_that_is_not_in_its_content_encoding_is_400_not_500(
    served: Served, path: str, content_type: str, encoding: str
) -> None:
    """A body sent with ``Content-Encoding: gzip`` (or deflate) whose bytes are not
    (aiohttp's parser refuses them while the handler reads): a 400 naming the encoding
    and what to do, not a 500; the opt-out it tried to remove stays."""
    await served.post("/v1/lists/red/add", {"numbers": [LISTED]})
    headers = {**AUTH, "Content-Type": content_type, "Content-Encoding": encoding}
    status, body = await raw_post(served, path, b"\x1f\x8bnot gzip at all", headers)
    assert (
        400,
        f"the request body cannot be read (Can not decode content-encoding: {encoding}): "
        "send it again without a Content-Encoding, or with the one its bytes are in",
    ) == (status, body["error"])
    assert 1 == await red_entries(served)


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2300-01-01T00:00:00Z"]
)
async def test_a_time_out_of_range_is_400_not_500(served: Served, when: str) -> None:
    """at far in the future or past is refused naming the field (no OverflowError)."""
    status, body = await served.post("/v1/check", {"number": LISTED, "at": when})
    assert (400, f"at: {when!r} is not a time between 2000 and 2200") == (status, body["error"])


async def test_a_number_sent_as_a_json_number_is_refused(served: Served) -> None:
    """Strict types: a JSON number is not a phone number string (nothing is coerced)."""
    status, body = await served.post("/v1/lists/red/add", {"numbers": [612345678]})
    assert (400, "numbers[0]: expected a string, got 612345678") == (status, body["error"])


def test_the_upload_formats_are_the_import_formats() -> None:
    """The API's import formats are exactly those of `callgate list import`."""
    assert set(FORMATS) == set(get_args(ImportQuery.model_fields["format"].annotation))
