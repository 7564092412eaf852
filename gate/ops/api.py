"""The admin API (``/v1/…``): what dialers and CRMs automate, over JSON and a bearer token.

Routes (``GET /openapi.json`` describes them in full):

- ``POST /v1/check``                 decide one call (``record``: count it if allowed)
- ``POST /v1/scrub``                 evaluate up to ``MAX_BATCH`` numbers (never counted)
- ``GET  /v1/lists/{list}``          entries and metadata of a list
- ``POST /v1/lists/{list}/add``      add numbers (an opt-out reaches the next decision)
- ``POST /v1/lists/{list}/remove``   remove numbers
- ``POST /v1/consents``              record prior consents
- ``POST /v1/consents/revoke``       consent withdrawn: remove it everywhere, red-list
- ``POST /v1/events/{event}``        ``refusal`` or ``abandoned``: start the cool-off
- ``POST /v1/reload``                re-read the config file (``callgate reload``)

Guarantees:
- With a token configured, every ``/v1/`` request without ``Authorization: Bearer
  <token>`` gets 401 (compared in constant time).
- Input is validated before anything is written: unknown fields, wrong types, bad
  identifiers or dates are 400; numbers that cannot be used are 422, and so is an
  emergency or protected number offered to a block list (``ProtectedNumberError``); an
  unknown list is 404; Redis unreachable is 503. Every error body is ``{"error": "…"}``.
- Batches hold at most ``MAX_BATCH`` numbers (413 beyond).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gate.core.engine import record_time_error
from gate.core.errors import (
    ConfigError,
    GateError,
    InputError,
    NumberError,
    ProtectedNumberError,
    StoreError,
)
from gate.core.model import IDENT_RE, Attempt, TrafficClass
from gate.lists.admin import ListAdmin
from gate.ops._openapi import openapi
from gate.ops.reload import Reloader
from gate.service import Evaluation, Gate

__all__ = ["MAX_BATCH", "AdminApi", "RequestError", "decision_json", "error_middleware"]

log = logging.getLogger("callgate.http")

MAX_BATCH = 10_000
MAX_NUMBER_CHARS = 32
# Numbers scrubbed concurrently: enough to hide the Redis round trip, few enough to leave
# the connection pool to live calls.
SCRUB_CONCURRENCY = 32

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestError(InputError):
    """A request the API refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status(error: GateError) -> int:
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, ProtectedNumberError | NumberError | ConfigError):
        return 422
    if isinstance(error, StoreError):
        return 503
    return 400


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as ``{"error": "…"}`` with its status; a bug is a logged 500."""
    try:
        return await handler(request)
    except GateError as exc:
        return _error(_status(exc), str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(500, "internal error (see the callgate log)")


class Fields:
    """Typed access to a JSON object (a body or a query), with 400s naming the field."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.seen: set[str] = set()

    @classmethod
    async def of(cls, request: web.Request) -> Fields:
        try:
            data = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise RequestError(400, "the body must be a JSON object")
        return cls(data)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(name)
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) and kind is not bool:
            raise RequestError(400, f"{name}: expected {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise RequestError(400, f"{name}: expected {_kind_name(kind)}, got {value!r}")
        return value

    def required(self, name: str) -> str:
        value = self.get(name, str)
        if not value:
            raise RequestError(400, f"{name}: is required")
        if len(value) > MAX_NUMBER_CHARS:
            raise RequestError(400, f"{name}: longer than {MAX_NUMBER_CHARS} characters")
        return str(value)

    def ident(self, name: str, default: str) -> str:
        value = self.get(name, str) or default
        if value and not IDENT_RE.match(value):
            raise RequestError(400, f"{name}: {value!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        return str(value)

    def flag(self, name: str) -> bool:
        return bool(self.get(name, bool, False))

    def when(self, name: str) -> datetime | None:
        value = self.get(name, str)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise RequestError(
                400, f"{name}: {value!r} is not ISO-8601 (e.g. 2026-12-01T10:30+01:00)"
            ) from None
        if parsed.tzinfo is None:
            raise RequestError(400, f"{name}: {value!r} has no UTC offset")
        return parsed

    def numbers(self, name: str = "numbers") -> list[str]:
        values = self.get(name, list)
        if not values:
            raise RequestError(400, f"{name}: expected a non-empty list of numbers")
        if len(values) > MAX_BATCH:
            raise RequestError(
                413, f"{name}: {len(values)} numbers; at most {MAX_BATCH} per request"
            )
        for index, value in enumerate(values):
            if not isinstance(value, str) or not value or len(value) > MAX_NUMBER_CHARS:
                raise RequestError(
                    400, f"{name}[{index}]: expected a number as a string, got {value!r}"
                )
        return [str(v) for v in values]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise RequestError(400, f"{unknown[0]}: unknown field")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", list: "a list", int: "an integer"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def decision_json(evaluation: Evaluation, explain: bool, version: str) -> dict[str, Any]:
    """A decision as the API returns it (the CLI's ``--json`` fields and the version)."""
    decision = evaluation.decision
    body: dict[str, Any] = {
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "rule": decision.rule,
        "retry_after_s": decision.retry_after_s,
        "e164": decision.e164,
        "shadow": list(decision.shadow),
        "config_version": version,
    }
    if explain:
        body["rules"] = [
            {"rule": r.rule, "outcome": r.outcome, "detail": r.detail, "source": r.source}
            for r in evaluation.rules
        ]
    return body


class AdminApi:
    """The ``/v1/`` handlers for one gate."""

    def __init__(self, gate: Gate, token: str | None, reloader: Reloader | None) -> None:
        self.gate = gate
        self.token = token
        self.reloader = reloader

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._auth)
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_post("/v1/check", self._check)
        app.router.add_post("/v1/scrub", self._scrub)
        app.router.add_get("/v1/lists/{list}", self._list_info)
        app.router.add_post("/v1/lists/{list}/add", self._list_add)
        app.router.add_post("/v1/lists/{list}/remove", self._list_remove)
        app.router.add_post("/v1/consents", self._consent)
        app.router.add_post("/v1/consents/revoke", self._revoke)
        app.router.add_post("/v1/events/{event}", self._event)
        app.router.add_post("/v1/reload", self._reload)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None and request.path.startswith("/v1/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                response = _error(401, "missing or wrong bearer token (Authorization header)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="callgate"'
                return response
        return await handler(request)

    async def _openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi(MAX_BATCH))

    def _attempt(self, fields: Fields, number: str, now: datetime) -> Attempt:
        config = self.gate.config
        try:
            traffic_class = TrafficClass(fields.get("class", str, TrafficClass.CAMPAIGN.value))
        except ValueError:
            raise RequestError(400, "class: must be campaign or manual") from None
        caller_id = fields.get("caller_id", str)
        if caller_id is not None and len(caller_id) > MAX_NUMBER_CHARS:
            raise RequestError(400, f"caller_id: longer than {MAX_NUMBER_CHARS} characters")
        return Attempt(
            dialled=number,
            now=fields.when("at") or now,
            tenant=fields.ident("tenant", config.default_tenant),
            campaign=fields.ident("campaign", ""),
            trunk=fields.ident("trunk", ""),
            caller_id=caller_id,
            traffic_class=traffic_class,
        )

    async def _check(self, request: web.Request) -> web.Response:
        fields = await Fields.of(request)
        clock = datetime.now(UTC)
        attempt = self._attempt(fields, fields.required("number"), clock)
        record, explain = fields.flag("record"), fields.flag("explain")
        if record and (why := record_time_error(attempt.now, clock)):
            raise RequestError(400, f"at: {why}")
        fields.done()
        version = self.gate.version
        evaluation = await self.gate.evaluate(attempt, record=record, door="api")
        return web.json_response(decision_json(evaluation, explain, version))

    async def _scrub(self, request: web.Request) -> web.Response:
        fields = await Fields.of(request)
        numbers = fields.numbers()
        template = self._attempt(fields, "", datetime.now(UTC))
        fields.done()
        version = self.gate.version
        limit = asyncio.Semaphore(SCRUB_CONCURRENCY)

        async def one(number: str) -> dict[str, Any]:
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
            return {
                "number": number,
                "verdict": decision.verdict.value,
                "reason": decision.reason,
                "rule": decision.rule,
                "retry_after_s": decision.retry_after_s,
                "e164": decision.e164,
            }

        results = await asyncio.gather(*(one(n) for n in numbers))
        counts = {"ALLOW": 0, "BLOCK": 0, "DEFER": 0}
        for row in results:
            counts[row["verdict"]] += 1
        return web.json_response({"results": results, "counts": counts, "config_version": version})

    def _list_name(self, request: web.Request) -> str:
        name = request.match_info["list"]
        if self.gate.config.policy.list_rule(name) is None:
            raise RequestError(404, f"list {name!r} is not in the config or its packs")
        return name

    async def _list_info(self, request: web.Request) -> web.Response:
        name = self._list_name(request)
        query = Fields(dict(request.query))
        tenant = query.ident("tenant", self.gate.config.default_tenant)
        campaign = query.ident("campaign", "")
        query.done()
        info: dict[str, Any] = dict(await ListAdmin.of(self.gate).info(name, tenant, campaign))
        refreshed = str(info.get("refreshed_at", ""))
        if refreshed.isdigit():
            info["refreshed_at"] = datetime.fromtimestamp(int(refreshed) / 1000, UTC).isoformat()
        if str(info.get("entries", "")).isdigit():
            info["entries"] = int(info["entries"])
        return web.json_response(info)

    async def _list_change(self, request: web.Request, add: bool) -> web.Response:
        name = self._list_name(request)
        fields = await Fields.of(request)
        numbers = fields.numbers()
        tenant = fields.ident("tenant", self.gate.config.default_tenant)
        campaign = fields.ident("campaign", "")
        fields.done()
        admin = ListAdmin.of(self.gate)
        if add:
            added = await admin.add(name, numbers, tenant, campaign)
            log.info("API: %d number(s) added to list %s for tenant %s", added, name, tenant)
            return web.json_response({"added": added, "already_listed": len(numbers) - added})
        removed = await admin.remove(name, numbers, tenant, campaign)
        log.info("API: %d number(s) removed from list %s for tenant %s", removed, name, tenant)
        return web.json_response({"removed": removed, "not_listed": len(numbers) - removed})

    async def _list_add(self, request: web.Request) -> web.Response:
        return await self._list_change(request, add=True)

    async def _list_remove(self, request: web.Request) -> web.Response:
        return await self._list_change(request, add=False)

    async def _consent(self, request: web.Request) -> web.Response:
        fields = await Fields.of(request)
        numbers = fields.numbers()
        name = fields.ident("list", "consent")
        tenant = fields.ident("tenant", self.gate.config.default_tenant)
        campaign = fields.ident("campaign", "")
        granted, expires = fields.when("granted_at"), fields.when("expires")
        fields.done()
        rule = self.gate.config.policy.list_rule(name)
        if rule is None:
            raise RequestError(404, f"list {name!r} is not in the config or its packs")
        if rule.kind != "consent":
            raise RequestError(400, f"list: {name!r} is not a consent list")
        admin = ListAdmin.of(self.gate)
        added = await admin.add(name, numbers, tenant, campaign, now=granted, expires=expires)
        return web.json_response({"recorded": added, "updated": len(numbers) - added})

    async def _revoke(self, request: web.Request) -> web.Response:
        fields = await Fields.of(request)
        numbers = fields.numbers()
        red_list = fields.ident("red_list", "red")
        tenant = fields.ident("tenant", self.gate.config.default_tenant)
        campaign = fields.ident("campaign", "")
        fields.done()
        if self.gate.config.policy.list_rule(red_list) is None:
            raise RequestError(404, f"list {red_list!r} is not in the config or its packs")
        added = await ListAdmin.of(self.gate).revoke(numbers, tenant, campaign, red_list)
        return web.json_response({"revoked": len(numbers), "red_listed": added})

    async def _event(self, request: web.Request) -> web.Response:
        event = request.match_info["event"]
        if event not in ("refusal", "abandoned"):
            raise RequestError(404, f"unknown event {event!r}; use refusal or abandoned")
        fields = await Fields.of(request)
        number = fields.required("number")
        tenant = fields.ident("tenant", self.gate.config.default_tenant)
        at = fields.when("at") or datetime.now(UTC)
        fields.done()
        rules = await ListAdmin.of(self.gate).record_event(event, number, tenant, at)
        if not rules:
            raise RequestError(
                422,
                f"no enabled pack has a cool-off after a {event} for {number!r}; nothing recorded",
            )
        return web.json_response({"event": event, "rules": rules})

    async def _reload(self, _request: web.Request) -> web.Response:
        if self.reloader is None:
            raise RequestError(404, "this server has no config file to reload")
        try:
            result = await self.reloader.reload()
        except ConfigError as exc:
            return web.json_response(
                {"error": str(exc), "config_version": self.gate.version}, status=422
            )
        return web.json_response(
            {
                "config_version": result.version,
                "previous": result.previous,
                "changed": result.changed,
            }
        )
