"""The admin API (``/v1/…``): what dialers, CRMs and compliance officers automate.

Routes (``OPERATIONS`` below; ``GET /openapi.json`` describes them, generated from the
same list and the models of gate/ops/models.py):

- ``POST /v1/check``                 decide one call (``record``: count it if allowed)
- ``POST /v1/scrub``                 evaluate up to ``MAX_BATCH`` numbers (never counted)
- ``GET  /v1/lists/{list}``          a list's entries and metadata, typed
- ``POST /v1/lists/{list}/add``      add numbers (an opt-out reaches the next decision)
- ``POST /v1/lists/{list}/remove``   remove numbers
- ``POST /v1/lists/{list}/import``   upload a list file (the formats and modes of
  ``callgate list import``); answers progress, rejected lines and the result as JSON Lines
- ``POST /v1/consents``              record prior consents
- ``POST /v1/consents/revoke``       consent withdrawn: remove it everywhere, red-list
- ``POST /v1/events/{event}``        ``refusal``, ``abandoned`` or ``answered``: start the
                                     cool-off, count toward a campaign's abandoned-call ceiling
- ``POST /v1/reload``                re-read the config file (``callgate reload``)
- ``GET  /v1/audit``                 search the audit trail (a number, a time range…),
  streamed as JSON Lines or CSV

Guarantees:
- Not for web pages: a request whose ``Host`` or ``Origin`` is not the gate's own (a
  loopback name, ``http.host``, or ``api.allowed_hosts``) or that a browser marks
  cross-site is 403 (DNS rebinding, cross-site requests); a POST must say
  ``Content-Type: application/json`` (an upload: its file type), 415 otherwise, so no
  HTML form or "simple" cross-origin request can reach a handler; no CORS header is
  ever sent.
- With a token configured, every ``/v1/`` request without ``Authorization: Bearer
  <token>`` (compared in constant time; bytes that are not UTF-8 are a wrong token, as
  are such a cookie or CSRF token) or a console session's cookie gets 401; a
  request authenticated by the cookie that changes anything must also carry the
  session's ``X-CSRF-Token`` (403 otherwise; gate/ops/sessions.py). ``/v1/session``
  (sign in, and whether this browser is signed in) needs neither.
- Every ``GET`` route answers ``HEAD`` too, through the same guard and checks: the
  status and headers of the ``GET``, no body (a stream ends once its headers are out).
- A change made through the console (a request authenticated by a session) is told to
  ``on_action`` once it succeeded, which records it in the audit trail with door
  ``console``.
- Input is validated by the models before anything is written (400 naming the field;
  413 past ``MAX_BATCH``); numbers that cannot be used are 422, and so is an emergency or
  protected number offered to a block list; a query parameter the route does not read
  is a 400 naming it and those it reads (``?tenent=acme`` never passes for a filter);
  an unknown list is 404; Redis unreachable is 503. Every error body is
  ``{"error": "…"}``; a bug is a logged 500.
- A read the client waits on never hangs on a stopped or frozen Redis: a list's info, and
  each read of an audit search (one batch of the streams, so a long export is never cut
  as a whole), wait at most ``READ_WAIT_S`` (gate/store/client.py), then 503. Imports
  keep the admin connections' long timeout.
- An answer never passes for whole when it is not: a search that fails once its 200 is
  out (Redis stopped, frozen or gone mid-export) ends with a line saying so
  (``{"error": "incomplete: …"}`` in JSON Lines, the row ``error,incomplete: …`` in CSV;
  gate/ops/search.py ``incomplete``), then the connection is closed without the body's
  end (HTTP/1.1: no last chunk, so curl and aiohttp report an error; HTTP/1.0: reset).
  Any other error after an answer began is cut the same way (logged), never followed
  by a second answer on the wire.
- An upload is spooled to a private temporary file as it arrives (bounded memory, at
  most ``MAX_UPLOAD_BYTES``, and as many once decompressed: a gzip or zip bomb is a 400
  after one pass over that many bytes) and imported in a worker thread with its own Redis
  connection, so decisions are not held up by parsing; a client that goes away stops
  the import (a ``replace`` then leaves the live list untouched). Errors about the file
  name it "the upload", never by the temporary file it was spooled to.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import ipaddress
import logging
import socket
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import HttpVersion11, web

from gate.core.engine import record_time_error
from gate.core.errors import (
    ConfigError,
    GateError,
    InputError,
    NumberError,
    ProtectedNumberError,
    StoreError,
    Wording,
    WorkerError,
)
from gate.core.model import Attempt, Verdict
from gate.core.rules import ListRule
from gate.lists.admin import EVENTS, ImportSummary, ListAdmin, unrecorded
from gate.lists.formats import Batch, Rejected, count_lines, open_lines, read_batches
from gate.lists.progress import importer
from gate.ops import search
from gate.ops._openapi import Operation, openapi
from gate.ops.models import (
    MAX_BATCH,
    AuditFormat,
    AuditQuery,
    AuditRecord,
    CheckRequest,
    ConsentRequest,
    ConsentResponse,
    DecisionOut,
    EventRequest,
    EventResponse,
    ImportEvent,
    ImportQuery,
    ListAddResponse,
    ListChange,
    ListInfo,
    ListQuery,
    ListRemoveResponse,
    ReloadFailed,
    ReloadResponse,
    RequestError,
    RevokeRequest,
    RevokeResponse,
    ScrubRequest,
    ScrubResponse,
    ScrubResult,
    VerdictCounts,
    check_query,
    decision_out,
    json_of,
    list_info,
    parse_body,
    parse_query,
    retry_seconds,
    rule_outcomes,
)
from gate.ops.reload import Reloader
from gate.ops.sessions import COOKIE, CSRF_HEADER, Action, Session, Sessions, secret_bytes
from gate.ops.wording import API_WORDING, CONSOLE_WORDING
from gate.service import Gate
from gate.store.client import Store

__all__ = [
    "BODY_IDLE_S",
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "MAX_UPLOAD_BYTES",
    "NDJSON",
    "UPLOAD",
    "UPLOAD_TYPES",
    "ActionRecorder",
    "AdminApi",
    "Handler",
    "HostGuard",
    "RequestError",
    "error_middleware",
    "json_response",
    "read_body",
    "session_of",
    "spool",
    "wording_of",
]

log = logging.getLogger("callgate.http")

# The largest list file an upload may carry (the US registry, uncompressed, is ~3 GB).
MAX_UPLOAD_BYTES = 8 * 1024**3
# The largest other body: 10 000 numbers of up to 32 characters in JSON, with room to spare.
MAX_BODY_BYTES = 2 * 1024 * 1024
# A request body during which nothing arrives for this long is refused (408): a slow link
# that keeps sending (a large list over a poor line) is never cut, a stalled client does
# not hold its connection and the handler forever.
BODY_IDLE_S = 60.0
# Numbers scrubbed concurrently: enough to hide the Redis round trip, few enough to leave
# the connection pool to live calls.
SCRUB_CONCURRENCY = 32
# Rejected lines an upload reports one by one (all are counted in the result).
MAX_REJECTS_SHOWN = 1000
PROGRESS_EVERY_S = 0.5
JSON = "application/json"
NDJSON = "application/x-ndjson"
UPLOAD_TYPES = (
    "text/csv",
    "text/tab-separated-values",
    "application/octet-stream",
    "application/gzip",
    "application/zip",
)
_IDENT_PATH = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
# How errors about an uploaded file name it (never by the temporary file it is spooled to).
UPLOAD = "the upload"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Told of each change a console session made: the session, the peer's address, the change.
ActionRecorder = Callable[[Session, str, Action], None]
# The console session that authenticated the request being handled (set by the guard
# middleware, read by its handler: the same task, whatever aiohttp's version).
_SESSION: ContextVar[Session | None] = ContextVar("callgate_session", default=None)


# The words a request's errors are said in: the console's for a request its session
# authenticated (set by the guard middleware), else the API's (gate/ops/wording.py).
_WORDING: web.RequestKey[Wording] = web.RequestKey("callgate_wording")


def session_of(_request: web.Request) -> Session | None:
    """The console session that authenticated ``request`` (None: a token, or none)."""
    return _SESSION.get()


def wording_of(request: web.Request) -> Wording:
    """How ``request``'s errors name options: the console's labels for a request of a
    console session, the API's parameters for any other."""
    wording: Wording = request.get(_WORDING, API_WORDING)
    return wording


def json_response(model: Any, status: int = 200) -> web.Response:
    """A model as the JSON body of a response."""
    return web.Response(body=json_of(model), status=status, content_type=JSON)


def _status(error: GateError) -> int:
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, ProtectedNumberError | NumberError | ConfigError):
        return 422
    if isinstance(error, StoreError | WorkerError):
        return 503
    return 400


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# Sent with every answer of the API (/v1/ and /openapi.json): JSON, the audit exports
# (CSV, JSON Lines), event streams and errors. A browser opening one (a link to an export,
# an error page) must not sniff it into HTML nor run or frame anything from it; the
# console's own pages have their policy (gate/ops/console.py ``HEADERS``).
API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


async def _api_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Add ``API_HEADERS`` to an API answer as its headers go out (on_response_prepare:
    every answer, a stream's and an error's included), leaving a header a handler set."""
    if not (request.path.startswith("/v1/") or request.path == "/openapi.json"):
        return
    for name, value in API_HEADERS.items():
        if name == "Content-Security-Policy" and response.content_type == "text/html":
            continue
        response.headers.setdefault(name, value)


def _client_gone(request: web.Request) -> bool:
    """The client hung up: its connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _answer_begun(request: web.Request) -> bool:
    """Bytes of an answer already went out: no other answer (no error status) can follow."""
    return request.writer.output_size > 0


def _abort_answer(request: web.Request) -> None:
    """End an answer already under way so that no client takes it for whole: the
    connection is closed without the body's end. Over HTTP/1.1 the chunked body's last
    (empty) chunk is never sent, and what was written is delivered first (curl exits 18,
    aiohttp raises ``ClientPayloadError``). An HTTP/1.0 body ends where the connection
    closes, so a close would pass for its end: the connection is reset instead (RST)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if request.version < HttpVersion11:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER on, 0 s: close() resets the connection (RFC 9293 3.6: abort).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()


def _cut_short(request: web.Request, why: str) -> web.Response:
    """An error after an answer began: logged, the connection closed without the answer's
    end (``_abort_answer``); the response returned is never sent."""
    log.warning(
        "HTTP %s %s: failed after its answer began (%s); connection closed without the "
        "answer's end",
        request.method,
        request.path,
        why,
    )
    _abort_answer(request)
    return web.Response(status=500, reason="Answer Cut Short")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as ``{"error": "…"}`` with its status; a bug is a logged 500. A client
    that hung up mid-request (its upload cut, or its answer no longer wanted) is one INFO
    line, and no answer is written to it. An error once an answer began (a stream's 200
    is out) never sends a second answer into it: the connection is closed without the
    answer's end (``_abort_answer``), so that it cannot pass for whole. Cancellation
    always goes through."""
    try:
        return await handler(request)
    except GateError as exc:
        if _answer_begun(request):
            return _cut_short(request, exc.worded(wording_of(request)))
        return _error(_status(exc), exc.worded(wording_of(request)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if _answer_begun(request):
            return _cut_short(request, f"{exc.status} {exc.reason}")
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            response = _error(405, f"{request.method} {request.path}: not allowed; use {allowed}")
            response.headers["Allow"] = allowed  # RFC 9110 15.5.6: a 405 must name them
            return response
        return _error(exc.status, exc.reason)
    except Exception as exc:
        # aiohttp raises ConnectionResetError (ClientConnectionResetError from 3.10) on a
        # read or write after the peer closed; elsewhere it would be a bug.
        if isinstance(exc, ConnectionResetError) and _client_gone(request):
            log.info("HTTP %s %s: the client went away (%s)", request.method, request.path, exc)
            # Never sent: aiohttp finds the transport closed and ends the request quietly.
            return web.Response(status=499, reason="Client Closed Request")
        log.exception("HTTP %s %s failed", request.method, request.path)
        if _answer_begun(request):
            return _cut_short(request, "internal error")
        return _error(500, "internal error (see the callgate log)")


def _host_of(value: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:9473`` → ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostGuard:
    """Which ``Host`` and ``Origin`` values are the gate's own."""

    def __init__(self, listen_host: str, allowed: Sequence[str] = ()) -> None:
        names = {name.lower() for name in allowed}
        if listen_host not in ("", "0.0.0.0", "::"):
            names.add(listen_host.lower())
        self.names = frozenset(names)

    def allows(self, host: str) -> bool:
        return _is_loopback(host) or host in self.names

    def refusal(self, request: web.Request) -> str | None:
        """Why ``request`` may not reach the API (None: it may)."""
        if (why := self.foreign(request)) is not None:
            return why
        if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
            return "cross-site request refused"
        return None

    def foreign(self, request: web.Request) -> str | None:
        """Why ``request``'s ``Host`` or ``Origin`` is not the gate's own (None: they are)."""
        host = request.headers.get("Host")
        if host is not None and not self.allows(_host_of(host)):
            return (
                f"Host {host!r} is not this gate's; add it to api.allowed_hosts if it "
                "is a name of this server"
            )
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not self.allows(
                (parts.hostname or "").lower()
            ):
                return f"cross-origin request from {origin!r} refused"
        return None


def _query_checked(op: Operation, handler: Handler) -> Handler:
    """``handler``, first refusing (400) a query parameter ``op`` does not read: once the
    guard let the request through (a caller without the token learns nothing), before
    anything is read or written."""

    async def checked(request: web.Request) -> web.StreamResponse:
        check_query(op.query, request.query)
        return await handler(request)

    return checked


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


class AdminApi:
    """The ``/v1/`` handlers for one gate, and their descriptions."""

    def __init__(
        self,
        gate: Gate,
        token: str | None,
        reloader: Reloader | None,
        guard: HostGuard | None = None,
        described: Sequence[Operation] = (),
        sessions: Sessions | None = None,
        extra: Sequence[tuple[Operation, Handler]] = (),
        on_action: ActionRecorder | None = None,
    ) -> None:
        self.gate = gate
        self.token = token
        self.reloader = reloader
        self.guard = guard or HostGuard("127.0.0.1")
        self.sessions = sessions
        self.on_action = on_action
        self._routes: list[tuple[Operation, Handler]] = [*self._operations(), *extra]
        self._uploads = {(op.method, op.path): op.uploads for op, _ in self._routes if op.uploads}
        spec_op = Operation(
            "GET",
            "/openapi.json",
            "getOpenApi",
            "This description (OpenAPI 3.1); no token needed",
            errors=(403,),
            auth=False,
        )
        self.spec = openapi([*described, spec_op, *(op for op, _ in self._routes)])

    def _operations(self) -> list[tuple[Operation, Handler]]:
        list_param = {"list": _IDENT_PATH}
        return [
            (
                Operation(
                    "POST",
                    "/v1/check",
                    "check",
                    "Decide one call as the gate would",
                    body=CheckRequest,
                    responses={200: DecisionOut},
                ),
                self._check,
            ),
            (
                Operation(
                    "POST",
                    "/v1/scrub",
                    "scrub",
                    f"Evaluate up to {MAX_BATCH} numbers (nothing is counted)",
                    body=ScrubRequest,
                    responses={200: ScrubResponse},
                    errors=(400, 401, 403, 413, 415, 503),
                ),
                self._scrub,
            ),
            (
                Operation(
                    "GET",
                    "/v1/lists/{list}",
                    "getList",
                    "A list's entries and metadata",
                    query=ListQuery,
                    path_params=list_param,
                    responses={200: ListInfo},
                    errors=(400, 401, 403, 404, 503),
                ),
                self._list_info,
            ),
            (
                Operation(
                    "POST",
                    "/v1/lists/{list}/add",
                    "addToList",
                    "Add numbers to a list (an opt-out reaches the next decision)",
                    body=ListChange,
                    path_params=list_param,
                    responses={200: ListAddResponse},
                    errors=(400, 401, 403, 404, 413, 415, 422, 503),
                ),
                self._list_add,
            ),
            (
                Operation(
                    "POST",
                    "/v1/lists/{list}/remove",
                    "removeFromList",
                    "Remove numbers from a list",
                    body=ListChange,
                    path_params=list_param,
                    responses={200: ListRemoveResponse},
                    errors=(400, 401, 403, 404, 413, 415, 422, 503),
                ),
                self._list_remove,
            ),
            (
                Operation(
                    "POST",
                    "/v1/lists/{list}/import",
                    "importList",
                    "Import an uploaded list file, with progress",
                    description="The body is the file (plain, gzip or zip; UTF-8). The "
                    "answer is JSON Lines: `progress` events while it runs, a `rejected` "
                    f"event for each of the first {MAX_REJECTS_SHOWN} rejected lines, then "
                    "`done` with the counts, or `error` (a `replace` that fails leaves the "
                    "live list untouched).",
                    query=ImportQuery,
                    path_params=list_param,
                    streams={NDJSON: ImportEvent},
                    uploads=UPLOAD_TYPES,
                    errors=(400, 401, 403, 404, 413, 415, 503),
                ),
                self._list_import,
            ),
            (
                Operation(
                    "POST",
                    "/v1/consents",
                    "recordConsents",
                    "Record prior consents",
                    body=ConsentRequest,
                    responses={200: ConsentResponse},
                    errors=(400, 401, 403, 404, 413, 415, 422, 503),
                ),
                self._consent,
            ),
            (
                Operation(
                    "POST",
                    "/v1/consents/revoke",
                    "revokeConsents",
                    "Consent withdrawn: remove it everywhere and red-list the numbers",
                    body=RevokeRequest,
                    responses={200: RevokeResponse},
                    errors=(400, 401, 403, 404, 413, 415, 422, 503),
                ),
                self._revoke,
            ),
            (
                Operation(
                    "POST",
                    "/v1/events/{event}",
                    "recordEvent",
                    "The callee refused, or the call was abandoned or answered: start the "
                    "cool-off, count the call toward its campaign's abandoned-call ceiling",
                    body=EventRequest,
                    path_params={"event": {"type": "string", "enum": list(EVENTS)}},
                    responses={200: EventResponse},
                    errors=(400, 401, 403, 404, 415, 422, 503),
                ),
                self._event,
            ),
            (
                Operation(
                    "POST",
                    "/v1/reload",
                    "reload",
                    "Re-read the config file and its packs (callgate reload)",
                    responses={200: ReloadResponse, 422: ReloadFailed},
                    errors=(401, 403, 404, 415),
                ),
                self._reload,
            ),
            (
                Operation(
                    "GET",
                    "/v1/audit",
                    "searchAudit",
                    "Search the audit trail, oldest first, streamed",
                    description="All decisions about a number (`number`), in a time range "
                    "(`since`, `until`), of a tenant, campaign or verdict; as JSON Lines "
                    "(one AuditRecord per line) or CSV (any text cell, such as a tenant, "
                    "campaign, reason or caller ID, starting with =, +, -, @, tab or CR is "
                    "prefixed with ' : a spreadsheet shows it as text instead of running it "
                    "as a formula; a plain +number such as +33612345678 is kept).",
                    query=AuditQuery,
                    streams={NDJSON: AuditRecord, "text/csv": None},
                    errors=(400, 401, 403, 503),
                ),
                self._audit,
            ),
        ]

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._guard)
        app.on_response_prepare.append(_api_headers)
        app.router.add_get("/openapi.json", self._openapi)
        for op, handler in self._routes:
            checked = _query_checked(op, handler)
            app.router.add_route(op.method, op.path, checked)
            if op.method == "GET":
                # RFC 9110 9.3.2: what serves GET serves HEAD (monitors and load
                # balancers probe with it): the same handler, guard and status, no body.
                app.router.add_route("HEAD", op.path, checked)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (request.path.startswith("/v1/") or request.path == "/openapi.json"):
            return await handler(request)
        if (why := self.guard.refusal(request)) is not None:
            return _error(403, why)
        if request.path == "/openapi.json":
            return await handler(request)
        reset = _SESSION.set(None)
        try:
            return await self._authorised(request, handler)
        finally:
            _SESSION.reset(reset)

    async def _authorised(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        signing_in = request.path == "/v1/session" and request.method in ("GET", "HEAD", "POST")
        if not signing_in and (refused := self._authenticate(request)) is not None:
            return refused
        if request.method == "POST":
            route = request.match_info.route.resource
            uploads = self._uploads.get(("POST", route.canonical if route is not None else ""), ())
            accepted = uploads or (JSON,)
            if _media_type(request) not in accepted:
                return _error(
                    415,
                    f"Content-Type {_media_type(request) or 'none'!r}: send "
                    f"{' or '.join(accepted)}",
                )
        if self.gate.precondition is not None and not signing_in:
            # The store not yet known to be this gate's (gate/runtime.py ``KeyingWatch``):
            # nothing is read or written there before it is (StoreError: a 503).
            try:
                await self.gate.precondition()
            except InputError as exc:
                return _error(503, exc.worded(wording_of(request)))
        return await handler(request)

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """None if ``request`` may proceed: a right bearer token, a live session (with its
        CSRF token for a change), or neither when no token is configured."""
        cookie = request.cookies.get(COOKIE)
        if "Authorization" not in request.headers and cookie and self.sessions is not None:
            session = self.sessions.find(cookie)
            if session is None:
                return _error(401, "the console session has expired: sign in again")
            if request.method not in ("GET", "HEAD") and not Sessions.csrf_ok(
                session, request.headers.get(CSRF_HEADER)
            ):
                return _error(403, f"missing or wrong {CSRF_HEADER} header for this session")
            _SESSION.set(session)
            request[_WORDING] = CONSOLE_WORDING
            return None
        if self.token is None:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            secret_bytes(given.strip()), secret_bytes(self.token)
        ):
            response = _error(401, "missing or wrong bearer token (Authorization header)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="callgate"'
            return response
        return None

    def _acted(self, request: web.Request, action: Action) -> None:
        """Tell ``on_action`` of a change a console session made."""
        session = session_of(request)
        if session is not None and self.on_action is not None:
            self.on_action(session, request.remote or "", action)

    async def _openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(self.spec)

    async def _body(self, request: web.Request, model: type[Any]) -> Any:
        return parse_body(model, await read_body(request))

    def _attempt(
        self, body: CheckRequest | ScrubRequest, number: str, clock: datetime | None = None
    ) -> Attempt:
        return Attempt(
            dialled=number,
            now=body.at or clock or datetime.now(UTC),
            tenant=body.tenant or self.gate.config.default_tenant,
            campaign=body.campaign or "",
            trunk=body.trunk or "",
            caller_id=body.caller_id,
            traffic_class=body.traffic_class,
        )

    async def _check(self, request: web.Request) -> web.Response:
        body: CheckRequest = await self._body(request, CheckRequest)
        clock = datetime.now(UTC)
        attempt = self._attempt(body, body.number, clock)
        if body.record and (why := record_time_error(attempt.now, clock)):
            raise RequestError(400, f"at: {why}")
        version = self.gate.version
        evaluation = await self.gate.evaluate(attempt, record=body.record, door="api")
        rules = rule_outcomes(evaluation.rules) if body.explain else None
        return json_response(decision_out(evaluation.decision, version, rules))

    async def _scrub(self, request: web.Request) -> web.Response:
        body: ScrubRequest = await self._body(request, ScrubRequest)
        template = self._attempt(body, "")
        version = self.gate.version
        limit = asyncio.Semaphore(SCRUB_CONCURRENCY)

        async def one(number: str) -> ScrubResult:
            attempt = Attempt(
                dialled=number,
                now=template.now,
                tenant=template.tenant,
                campaign=template.campaign,
                trunk=template.trunk,
                caller_id=template.caller_id,
                traffic_class=template.traffic_class,
            )
            async with limit:
                decision = (await self.gate.evaluate(attempt, record=False, door="scrub")).decision
            return ScrubResult(
                number=number,
                verdict=decision.verdict,
                reason=decision.reason,
                rule=decision.rule,
                retry_after_s=retry_seconds(decision.retry_after_s),
                destination=decision.e164 or None,
            )

        results = await asyncio.gather(*(one(n) for n in body.numbers))
        counts = {verdict.value: 0 for verdict in Verdict}
        for row in results:
            counts[row.verdict.value] += 1
        return json_response(
            ScrubResponse(results=results, counts=VerdictCounts(**counts), config_version=version)
        )

    def _list_name(self, request: web.Request) -> str:
        name = request.match_info["list"]
        if self.gate.config.policy.list_rule(name) is None:
            raise RequestError(404, f"list {name!r} is not in the config or its packs")
        return name

    async def _list_info(self, request: web.Request) -> web.Response:
        name = self._list_name(request)
        query = parse_query(ListQuery, request.query)
        admin = ListAdmin.of(self.gate)
        tenant = query.tenant or self.gate.config.default_tenant
        async with self.gate.store.answer_within():
            raw = await admin.info(name, tenant, query.campaign or "")
        return json_response(list_info(raw, tenant, query.campaign))

    async def _list_change(self, request: web.Request, add: bool) -> web.Response:
        name = self._list_name(request)
        body: ListChange = await self._body(request, ListChange)
        tenant = body.tenant or self.gate.config.default_tenant
        campaign = body.campaign or ""
        admin = ListAdmin.of(self.gate)
        action = Action(
            "list_add" if add else "list_remove", name, tenant, campaign, tuple(body.numbers)
        )
        if add:
            added = await admin.add(name, body.numbers, tenant, campaign)
            log.info("API: %d number(s) added to list %s for tenant %s", added, name, tenant)
            self._acted(request, action)
            return json_response(
                ListAddResponse(added=added, already_listed=len(body.numbers) - added)
            )
        removed = await admin.remove(name, body.numbers, tenant, campaign)
        log.info("API: %d number(s) removed from list %s for tenant %s", removed, name, tenant)
        self._acted(request, action)
        return json_response(
            ListRemoveResponse(removed=removed, not_listed=len(body.numbers) - removed)
        )

    async def _list_add(self, request: web.Request) -> web.Response:
        return await self._list_change(request, add=True)

    async def _list_remove(self, request: web.Request) -> web.Response:
        return await self._list_change(request, add=False)

    async def _list_import(self, request: web.Request) -> web.StreamResponse:
        name = self._list_name(request)
        query = parse_query(ImportQuery, request.query)
        admin = ListAdmin.of(self.gate)
        tenant = query.tenant or self.gate.config.default_tenant
        campaign = query.campaign or ""
        rule = admin.rule(name)
        admin.key(name, tenant, campaign)  # a per-campaign list without a campaign: 400
        admin.check_refreshed_at(name, query.refreshed_at)  # dated later than the clock: 400
        keep = frozenset(v.strip() for v in (query.keep or "").split(",") if v.strip())
        with tempfile.TemporaryDirectory(prefix="callgate-upload-") as spool_dir:
            path = Path(spool_dir) / "upload"
            await spool(request, path)
            total = await asyncio.to_thread(count_lines, path, UPLOAD, MAX_UPLOAD_BYTES)
            # A bad format or option fails here, before the 200 is sent.
            await asyncio.to_thread(_probe, path, rule, admin.policy.default_region, query, keep)
            response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await response.prepare(request)
            job = _UploadImport(
                self.gate, name, tenant, campaign, query, path, total, keep, wording_of(request)
            )
            await job.run(response)
            if job.summary is not None:
                counts = job.summary
                self._acted(
                    request,
                    Action(
                        f"list_import:{query.mode.value}",
                        name,
                        tenant,
                        campaign,
                        counts={
                            "imported": counts.imported,
                            "duplicates": counts.duplicates,
                            "rejected": counts.rejected,
                            "skipped": counts.skipped,
                        },
                    ),
                )
            await response.write_eof()
            return response

    async def _consent(self, request: web.Request) -> web.Response:
        body: ConsentRequest = await self._body(request, ConsentRequest)
        rule = self.gate.config.policy.list_rule(body.list_name)
        if rule is None:
            raise RequestError(404, f"list {body.list_name!r} is not in the config or its packs")
        if rule.kind != "consent":
            raise RequestError(400, f"list: {body.list_name!r} is not a consent list")
        admin = ListAdmin.of(self.gate)
        tenant = body.tenant or self.gate.config.default_tenant
        added = await admin.add(
            body.list_name,
            body.numbers,
            tenant,
            body.campaign or "",
            now=body.granted_at,
            expires=body.expires,
        )
        self._acted(
            request,
            Action("consent", body.list_name, tenant, body.campaign or "", tuple(body.numbers)),
        )
        return json_response(ConsentResponse(recorded=added, updated=len(body.numbers) - added))

    async def _revoke(self, request: web.Request) -> web.Response:
        body: RevokeRequest = await self._body(request, RevokeRequest)
        if self.gate.config.policy.list_rule(body.red_list) is None:
            raise RequestError(404, f"list {body.red_list!r} is not in the config or its packs")
        tenant = body.tenant or self.gate.config.default_tenant
        added = await ListAdmin.of(self.gate).revoke(
            body.numbers, tenant, body.campaign or "", body.red_list
        )
        self._acted(
            request,
            Action(
                "consent_revoke", body.red_list, tenant, body.campaign or "", tuple(body.numbers)
            ),
        )
        return json_response(RevokeResponse(revoked=len(body.numbers), red_listed=added))

    async def _event(self, request: web.Request) -> web.Response:
        event = request.match_info["event"]
        if event not in EVENTS:
            raise RequestError(404, f"unknown event {event!r}; use {', '.join(EVENTS)}")
        body: EventRequest = await self._body(request, EventRequest)
        tenant = body.tenant or self.gate.config.default_tenant
        campaign = body.campaign or ""
        at = body.at or datetime.now(UTC)
        record = await ListAdmin.of(self.gate).record_event(
            event, body.number, tenant, at, None, campaign
        )
        why = unrecorded(event, body.number, record)
        if why is not None:
            raise RequestError(422, why.worded(wording_of(request)))
        self._acted(
            request,
            Action(event, ",".join(record.rules), tenant, campaign, numbers=(body.number,)),
        )
        return json_response(
            EventResponse(event=event, rules=record.rules, uncounted=record.uncounted)  # type: ignore[arg-type]
        )

    async def _reload(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        if body.strip() not in (b"", b"{}"):
            raise RequestError(400, "reload takes no fields: send {} or nothing")
        if self.reloader is None:
            raise RequestError(404, "this server has no config file to reload")
        try:
            result = await self.reloader.reload()
        except ConfigError as exc:
            return json_response(
                ReloadFailed(error=str(exc), config_version=self.gate.version), status=422
            )
        self._acted(request, Action("reload", result.version))
        return json_response(
            ReloadResponse(
                config_version=result.version, previous=result.previous, changed=result.changed
            )
        )

    async def _audit(self, request: web.Request) -> web.StreamResponse:
        query = parse_query(AuditQuery, request.query)
        search.check_filter(query.since, query.until)
        number = search.number_key(query.number, self.gate) if query.number else None
        records = search.search(
            self.gate.store.admin_client,
            self.gate.config.redis.namespace,
            since=query.since,
            until=query.until,
            number=number,
            tenant=query.tenant,
            campaign=query.campaign,
            verdict=query.verdict.value if query.verdict else None,
            limit=query.limit,
            read_wait=self.gate.store.answer_within,
        )
        as_csv = query.format is AuditFormat.CSV
        response = web.StreamResponse(
            headers={"Content-Type": "text/csv; charset=utf-8" if as_csv else NDJSON}
        )
        given = 0
        try:
            async for record in search.translated(records, self.gate.store.where):
                if not response.prepared:
                    await response.prepare(request)
                    if request.method == "HEAD":
                        return response  # GET's status and headers; nothing more is read
                    if as_csv:
                        await response.write(_csv_line(search.CSV_HEADER))
                line = _csv_line(search.csv_row(record)) if as_csv else json_of(record) + b"\n"
                await response.write(line)
                given += 1
        except GateError as exc:
            if not response.prepared:
                raise  # nothing sent yet: its status (503) and {"error": …}
            # The 200 is out: the answer says it is incomplete, then ends without its end.
            why = search.incomplete(given, exc)
            log.warning("API audit search cut short: %s", why)
            end = _csv_line(search.error_row(why)) if as_csv else search.error_line(why)
            await response.write(end)
            _abort_answer(request)
            return response
        if not response.prepared:
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            if as_csv:
                await response.write(_csv_line(search.CSV_HEADER))
        await response.write_eof()
        return response


def _csv_line(row: Sequence[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(row)
    return out.getvalue().encode()


def _probe(
    path: Path, rule: ListRule, region: str, query: ImportQuery, keep: frozenset[str]
) -> None:
    """Read the first line as the import will (header, format options)."""
    if rule.kind == "reassigned":
        if query.format != "lines" or query.column or keep or query.mode.value == "replace":
            raise InputError(
                f"list {rule.name!r} is a reassigned list: its file has lines "
                "number,disconnected_on (no format, column, keep or replace)"
            )
        return
    lines = open_lines(path, name=UPLOAD)
    try:
        next(read_batches(lines, rule, region, query.format, query.column, keep, 1), None)
    finally:
        lines.close()


def _unreadable_body(exc: web.RequestPayloadError) -> str:
    """The one line of a request body aiohttp could not decode (its cause's message, e.g.
    "Can not decode content-encoding: gzip")."""
    cause = exc.__cause__
    detail = " ".join(str(getattr(cause, "message", None) or exc).split())
    return (
        f"the request body cannot be read ({detail}): send it again without a "
        "Content-Encoding, or with the one its bytes are in"
    )


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; 408 once nothing has come for ``BODY_IDLE_S``; 400
    if it cannot be decoded (corrupt data under its ``Content-Encoding``)."""
    for _ in range(1 << 62):  # bounded by the body: readany() returns b"" at its end
        try:
            async with asyncio.timeout(BODY_IDLE_S):
                chunk = await request.content.readany()
        except TimeoutError:
            raise RequestError(
                408, f"the request body stalled: nothing came for {BODY_IDLE_S:g} s"
            ) from None
        except web.RequestPayloadError as exc:
            # Bytes that are not what the request's Content-Encoding says (corrupt gzip
            # or deflate data): aiohttp's payload parser refused them.
            raise RequestError(400, _unreadable_body(exc)) from None
        if not chunk:
            return
        yield chunk


async def read_body(request: web.Request) -> bytes:
    """The whole request body (at most ``MAX_BODY_BYTES``: 413 past it; 408 if it stalls
    for ``BODY_IDLE_S``)."""
    body = bytearray()
    async for chunk in _body_chunks(request):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


async def spool(request: web.Request, path: Path) -> None:
    """The request body into ``path`` (0600), chunk by chunk; 413 past the bound, 408 if it
    stalls for ``BODY_IDLE_S``, 503 if the server's disk cannot hold it (full, or a file
    size limit)."""
    size = 0
    try:
        with path.open("xb") as spool:  # in a private directory (0700)
            async for chunk in _body_chunks(request):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise RequestError(413, f"the upload is larger than {MAX_UPLOAD_BYTES} bytes")
                spool.write(chunk)
    except OSError as exc:
        if isinstance(exc, ConnectionError):  # the client went away: error_middleware's
            raise
        raise RequestError(
            503,
            f"the upload cannot be kept on the server's disk ({exc.strerror or exc}): free "
            "space where callgate keeps temporary files (TMPDIR), then send it again",
        ) from exc
    if size == 0:
        raise RequestError(400, "the upload is empty: send the list file as the body")


class _UploadImport:
    """One uploaded file imported in a worker thread, its events sent as they happen."""

    def __init__(
        self,
        gate: Gate,
        name: str,
        tenant: str,
        campaign: str,
        query: ImportQuery,
        path: Path,
        total: int,
        keep: frozenset[str],
        wording: Wording,
    ) -> None:
        self.gate, self.name, self.tenant, self.campaign = gate, name, tenant, campaign
        self.query, self.path, self.total, self.keep = query, path, total, keep
        self.wording = wording
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[ImportEvent | None] = asyncio.Queue()
        self.stop = threading.Event()
        self.lines = 0
        self.rejects_shown = 0
        self._shown = 0.0  # when the last progress event was sent (monotonic)
        self.summary: ImportSummary | None = None

    def _event(self, **fields: Any) -> ImportEvent:
        values: dict[str, Any] = {
            "line": None,
            "why": None,
            "imported": None,
            "duplicates": None,
            "rejected": None,
            "skipped": None,
            "lines": self.lines,
            "total": self.total,
        }
        values.update(fields)
        return ImportEvent(**values)

    def _send(self, event: ImportEvent | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def run(self, response: web.StreamResponse) -> None:
        worker = asyncio.create_task(asyncio.to_thread(self._work))
        try:
            for _ in range(10**12):  # bounded by the import: the worker sends None last
                event = await self.events.get()
                if event is None:
                    break
                await response.write(json_of(event) + b"\n")
        except BaseException:
            self.stop.set()  # the client went away (or the server stops): stop the import
            raise
        finally:
            await asyncio.shield(worker)

    def _work(self) -> None:
        try:
            summary = self.summary = asyncio.run(self._import())
            self._send(
                self._event(
                    event="done",
                    imported=summary.imported,
                    duplicates=summary.duplicates,
                    rejected=summary.rejected,
                    skipped=summary.skipped,
                )
            )
        except GateError as exc:
            self._send(self._event(event="error", why=exc.worded(self.wording)))
        except Exception as exc:  # a bug must still end the answer
            log.exception("API import of list %s failed", self.name)
            self._send(self._event(event="error", why=f"internal error: {type(exc).__name__}"))
        finally:
            self._send(None)

    async def _import(self) -> ImportSummary:
        active = self.gate.active
        store = Store.open(self.gate.store.settings)
        try:
            admin = ListAdmin(active.config.policy, active.keyspace, store)
            rule = admin.rule(self.name)
            meta = {"source": "upload", "importer": f"api@{importer().split('@')[-1]}"}
            if rule.kind == "reassigned":
                return await admin.import_disconnects(
                    self.name,
                    self._lines(open_lines(self.path, name=UPLOAD)),
                    self.tenant,
                    self.campaign,
                    self._rejected,
                    refreshed_at=self.query.refreshed_at,
                    meta=meta,
                    mode=self.query.mode.value,
                    on_lines=self._read,
                )
            batches = read_batches(
                open_lines(self.path, name=UPLOAD),
                rule,
                active.config.policy.default_region,
                self.query.format,
                self.query.column,
                self.keep,
            )
            return await admin.import_batches(
                self.name,
                self._counted(batches),
                self.tenant,
                self.campaign,
                self._rejected,
                refreshed_at=self.query.refreshed_at,
                meta=meta,
                mode=self.query.mode.value,
                expected=self.total,
                allow_empty=self.query.allow_empty,
            )
        finally:
            await store.close()

    def _counted(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            self._read(batch.lines)
            yield batch
        self._send(self._event(event="progress"))

    def _lines(self, lines: Iterator[str]) -> Iterator[str]:
        """A reassigned list's lines, stopped when the client goes away."""
        for line in lines:
            if self.stop.is_set():
                raise InputError("import stopped: the client went away")
            yield line
        self._send(self._event(event="progress"))

    def _read(self, lines: int) -> None:
        """``lines`` more were read: a progress event now and then."""
        if self.stop.is_set():
            raise InputError("import stopped: the client went away")
        self.lines += lines
        if time.monotonic() - self._shown >= PROGRESS_EVERY_S:
            self._shown = time.monotonic()
            self._send(self._event(event="progress"))

    def _rejected(self, entry: Rejected) -> None:
        if self.rejects_shown < MAX_REJECTS_SHOWN:
            self.rejects_shown += 1
            self._send(self._event(event="rejected", line=entry.line_no, why=entry.why))
