"""Every GET route answers HEAD: the same guard and status, no body (gate/ops/api.py
``AdminApi.add_routes``, the audit search, gate/ops/live.py ``follow_events``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gate.config.loader import AuditConfig
from gate.ops.audit import AuditLog
from tests.ops.conftest import AUTH, Served
from tests.ops.test_api_query import get_paths
from tests.ops.test_http_raw import WAIT_S, session_of


@pytest.fixture
async def audited(served: Served) -> AsyncIterator[Served]:
    """``served`` keeping the evidence of recorded decisions, with one recorded."""
    audit = AuditLog(served.gate.store.admin_client, "callgate", AuditConfig())
    served.gate.observers.append(audit)
    audit.start()
    await served.post("/v1/check", {"number": "+33612345678", "record": True})
    await audit.close()  # flushed
    audit.start()
    yield served
    served.gate.observers.remove(audit)
    await audit.close()


async def test_every_get_route_answers_head_with_the_status_and_type_of_get(
    audited: Served,
) -> None:
    """HEAD on each GET route (the API's, health, metrics, the console's files): the
    status and Content-Type of its GET, and no body; not 405."""
    paths = get_paths(audited)
    got, headed = {}, {}
    for path in paths:
        async with audited.session.get(audited.url + path, headers=AUTH) as response:
            got[path] = (response.status, response.content_type)
        async with audited.session.head(audited.url + path, headers=AUTH) as response:
            headed[path] = (response.status, response.content_type, await response.read())
    assert len(paths) >= 12
    assert {path: (*answer, b"") for path, answer in got.items()} == headed


async def head_raw(served: Served, path: str, headers: str = "") -> bytes:
    """The whole answer to ``HEAD path`` on a connection of its own (closed after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    try:
        writer.write(
            f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"{headers}\r\n".encode()
        )
        return await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "path",
    ["/v1/audit", "/v1/audit?format=csv", "/v1/audit?since=2000-01-01T00:00:00Z&limit=1",
     "/v1/audit?verdict=DEFER&format=csv", "/v1/audit/follow", "/v1/lists/red", "/healthz"],
)  # fmt: skip
async def test_head_on_a_stream_sends_its_headers_and_ends(audited: Served, path: str) -> None:
    """HEAD on the audit search (with and without records) and on the endless audit feed:
    the status line and headers, then nothing (no body bytes, no chunked framing), and the
    answer ends at once."""
    answer = await head_raw(audited, path, f"Authorization: {AUTH['Authorization']}\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert (b"HTTP/1.1 200 OK", b"") == (head.split(b"\r\n")[0], body)
    assert b"transfer-encoding" not in head.lower()


async def test_head_goes_through_the_same_guard_as_get(served: Served) -> None:
    """Without the token: 401 with WWW-Authenticate; with a console session's cookie (no
    CSRF token, as a GET): 200; a foreign Host: 403; /v1/session needs no token."""
    unauthorised = await head_raw(served, "/v1/rules")
    cookie, _ = await session_of(served)
    signed_in = await head_raw(served, "/v1/rules", f"Cookie: callgate_session={cookie}\r\n")
    async with served.session.head(
        served.url + "/v1/rules", headers={**AUTH, "Host": "evil.example"}
    ) as response:
        foreign = response.status
    async with served.session.head(served.url + "/v1/session") as response:
        session = response.status
    assert unauthorised.startswith(b"HTTP/1.1 401 ")
    assert b'www-authenticate: bearer realm="callgate"' in unauthorised.lower()
    assert signed_in.startswith(b"HTTP/1.1 200 ")
    assert (403, 200) == (foreign, session)
