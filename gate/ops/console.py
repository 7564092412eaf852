"""The web console: ``/`` of the HTTP listener, a page over the ``/v1`` API.

Why a small hand-written page: the console is an API client (the browser calls ``/v1``
with the session cookie; nothing here renders data), so the server side is static files,
sign-in and the audit of console changes. Three files (``static/``: ``index.html``,
``console.js``, ``console.css``; about 60 KB, no framework, charts drawn as SVG) ship in
the wheel as package data: no CDN, no build step, no Node toolchain to run or test it,
and what is committed is what the browser runs. Server-rendered pages (or htmx) would
have needed a second, HTML rendition of every API answer; a framework bundle would have
needed a build and been ten times the weight.

Routes: ``GET /`` (the page), ``GET /console/{file}`` (its script and style), and
``/v1/session`` (``POST`` sign in with the API token, ``GET`` whether this browser is
signed in, ``DELETE`` sign out; gate/ops/sessions.py).

Guarantees:
- The page and its files are refused (403) for a foreign ``Host``, like the API, and so
  is a request a browser marks cross-site, but for a link followed to the page; they are
  sent with a Content-Security-Policy that allows only this origin's script, style and
  connections (no inline script, no other site, no framing) and ``nosniff``.
- Every change made through the console is kept in the audit trail (gate/ops/audit.py
  ``AuditLog``, the writer of the records that do not come from a decision script) with
  door ``console``: ``reason`` is what was done (``list_add``, ``list_remove``,
  ``list_import:<mode>``, ``consent``, ``consent_revoke``, ``refusal``, ``abandoned``,
  ``reload``, ``sign_in``, ``sign_out``), ``rule`` what it was done to (the list, the
  cool-off rules, the config version), ``number`` each number as the trail names it (one
  record per number), ``counters`` an import's counts, ``channel``
  ``console/<session>@<address>``, ``verdict`` empty (not a decision).
"""

from __future__ import annotations

import hashlib
import logging
import time
from importlib import resources

from aiohttp import web

from gate.core.errors import InputError
from gate.core.evidence import FIELDS
from gate.ops import search
from gate.ops._openapi import Operation
from gate.ops.api import Handler, HostGuard, json_response, read_body
from gate.ops.audit import AuditLog
from gate.ops.models import SessionOut, SessionRequest, parse_body
from gate.ops.sessions import COOKIE, Action, Session, Sessions, SignInRefused
from gate.service import Gate

__all__ = ["ASSETS", "Console", "ConsoleAudit"]

log = logging.getLogger("callgate.http")

# The files of the page: URL path → (package file, content type).
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class ConsoleAudit:
    """Keeps each change made through the console in the audit trail."""

    def __init__(self, gate: Gate, audit: AuditLog | None) -> None:
        self.gate = gate
        self.audit = audit

    def records(
        self, session: Session, peer: str, action: Action
    ) -> list[tuple[dict[str, str], int]]:
        """The audit records of ``action`` (pure but for the clock and the number tags)."""
        base = dict.fromkeys(FIELDS, "")
        base.update(
            ts=str(int(time.time() * 1000)),
            reason=action.name,
            rule=action.target,
            door="console",
            tenant=action.tenant,
            campaign=action.campaign,
            channel=f"console/{session.label}@{peer}",
            config=self.gate.version,
            counters=",".join(f"{k}={v}" for k, v in action.counts.items()),
            latency_us="0",
            redis_us="0",
        )
        if not action.numbers:
            return [(base, 0)]
        out = []
        for number in action.numbers:
            try:
                named = search.number_key(number, self.gate)
            except InputError:
                # Refused before anything changed: not recorded by a handler.
                out.append(({**base, "number": ""}, 0))
                continue
            # In the number's own group stream, where `audit why` and the API look.
            out.append(({**base, "number": named.name}, named.group))
        return out

    def record(self, session: Session, peer: str, action: Action) -> None:
        records = self.records(session, peer, action)
        log.info(
            "console: session %s: %s %s (%d record(s))",
            session.label,
            action.name,
            action.target,
            len(records),
        )
        if self.audit is None:
            return  # [audit] enabled = false: the log line is all there is
        for record, group in records:
            self.audit.append(record, group)


class Console:
    """The page, its files and sign-in, for one gate."""

    def __init__(
        self, gate: Gate, sessions: Sessions, guard: HostGuard, audit: ConsoleAudit
    ) -> None:
        self.gate = gate
        self.sessions = sessions
        self.guard = guard
        self.audit = audit
        package = resources.files("gate.ops") / "static"
        self.assets: dict[str, tuple[bytes, str, str]] = {}
        for path, (name, content_type) in ASSETS.items():
            body = (package / name).read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            self.assets[path] = (body, content_type, etag)

    def add_routes(self, app: web.Application) -> None:
        for path in self.assets:
            app.router.add_get(path, self._asset)

    def operations(self) -> list[tuple[Operation, Handler]]:
        return [
            (
                Operation(
                    "POST",
                    "/v1/session",
                    "signIn",
                    "Sign in to the console: the API token for a session cookie",
                    description="Sets the `callgate_session` cookie (HttpOnly, "
                    "SameSite=Strict). Requests with it need no bearer token; those that "
                    "change anything send the answer's `csrf` as X-CSRF-Token.",
                    body=SessionRequest,
                    responses={200: SessionOut},
                    errors=(400, 401, 403, 415, 429),
                    auth=False,
                ),
                self._sign_in,
            ),
            (
                Operation(
                    "GET",
                    "/v1/session",
                    "getSession",
                    "Whether this browser is signed in to the console",
                    responses={200: SessionOut},
                    errors=(403,),
                    auth=False,
                ),
                self._session,
            ),
            (
                Operation(
                    "DELETE",
                    "/v1/session",
                    "signOut",
                    "Sign out of the console (the session ends)",
                    responses={200: SessionOut},
                    errors=(401, 403),
                ),
                self._sign_out,
            ),
        ]

    async def _asset(self, request: web.Request) -> web.Response:
        # A link from another site opens the page (a top-level navigation: the page changes
        # nothing, and frame-ancestors 'none' keeps it out of frames); its files, like the
        # API, are for this origin's own requests.
        navigation = (
            request.path == "/"
            and request.headers.get("Sec-Fetch-Mode") == "navigate"
            and request.headers.get("Sec-Fetch-Dest") == "document"
        )
        why = self.guard.foreign(request) if navigation else self.guard.refusal(request)
        if why is not None:
            return web.Response(status=403, text=why + "\n", headers=HEADERS)
        body, content_type, etag = self.assets[request.path]
        headers = {**HEADERS, "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = content_type
        return web.Response(body=body, headers=headers)

    def _out(self, session: Session | None) -> SessionOut:
        config = self.gate.config
        return SessionOut(
            signed_in=session is not None,
            token_required=self.sessions.token_required,
            session=None if session is None else session.label,
            csrf=None if session is None else session.csrf,
            expires_at=None if session is None else session.expires_at,
            config_version=self.gate.version,
            hashed=config.hash_numbers,
            default_region=config.policy.default_region,
            default_tenant=config.default_tenant,
            tenants=sorted({config.default_tenant, *config.policy.tenants}),
        )

    async def _sign_in(self, request: web.Request) -> web.Response:
        body: SessionRequest = parse_body(SessionRequest, await read_body(request))
        peer = request.remote or ""
        try:
            value, session = self.sessions.sign_in(body.token, peer)
        except SignInRefused as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        self.audit.record(session, peer, Action("sign_in"))
        response = json_response(self._out(session))
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self.sessions.lifetime_s),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def _session(self, request: web.Request) -> web.Response:
        return json_response(self._out(self.sessions.find(request.cookies.get(COOKIE))))

    async def _sign_out(self, request: web.Request) -> web.Response:
        session = self.sessions.sign_out(request.cookies.get(COOKIE))
        if session is not None:
            self.audit.record(session, request.remote or "", Action("sign_out"))
        response = json_response(self._out(None))
        response.del_cookie(COOKIE, path="/")
        return response
