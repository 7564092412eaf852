"""The FastAGI server: Asterisk asks, the gate decides, channel variables answer.

Dialplan: ``AGI(agi://127.0.0.1:4573/check?tenant=acme&campaign=spring&class=campaign)``
(parameters may also be passed as AGI arguments: ``AGI(agi://…/check,number=${EXTEN})``).
Routes:

- ``check``  decide the call to ``number`` (default: the request's extension) and set
  ``CALLGATE_RESULT`` (ALLOW/BLOCK/DEFER/ERROR), ``CALLGATE_REASON``, ``CALLGATE_RULE``,
  ``CALLGATE_RETRY_AFTER`` (seconds, DEFER only), ``CALLGATE_E164`` and ``CALLGATE_CAUSE``
  (suggested Q.850 hangup cause: 21 BLOCK, 34 DEFER, 0 ALLOW).
- ``optout`` put ``number`` on the tenant's red list (``list=`` to name another block
  list); sets ``CALLGATE_RESULT`` to OK or ERROR. The very next attempt sees it.

Guarantees (model: aiosmtpd's ``_handle_client``): headers are read under a deadline with
a line-length and line-count limit; a peer that closes early, sends garbage or stalls is
dropped without affecting other connections; values written back are from a fixed safe
alphabet, so a crafted number cannot inject AGI commands; ``CancelledError`` is never
swallowed; ``stop()`` stops accepting, then waits for in-flight requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote

from agi._wire import AgiChannel, AgiHangup
from gate.config import IDENT_RE
from gate.errors import GateError, InputError
from gate.lists import ListAdmin
from gate.model import Attempt, Decision, TrafficClass
from gate.service import Gate

__all__ = ["AgiRequest", "AgiServer", "parse_request"]

log = logging.getLogger("callgate.agi")

MAX_LINE_BYTES = 4096
MAX_HEADER_LINES = 128
COMMAND_TIMEOUT_S = 5.0
STOP_GRACE_S = 10.0
_PARAMS = frozenset({"number", "tenant", "campaign", "trunk", "class", "caller_id", "list"})
_SAFE = re.compile(r"[^A-Za-z0-9_.:+\-]")


@dataclass(frozen=True, slots=True)
class AgiRequest:
    """The parts of a FastAGI request the gate uses."""

    route: str
    params: Mapping[str, str] = field(default_factory=dict)
    extension: str = ""
    caller_id: str = ""
    channel: str = ""


class BadRequest(InputError):
    """The request names an unknown route or parameter, or a malformed value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_request(headers: Mapping[str, str]) -> AgiRequest:
    """Build an ``AgiRequest`` from the ``agi_*`` headers, or raise ``BadRequest``."""
    script = headers.get("agi_network_script", "")
    route, _, query = script.partition("?")
    pairs = [p for p in query.split("&") if p]
    index = 1
    while f"agi_arg_{index}" in headers and index <= MAX_HEADER_LINES:
        if headers[f"agi_arg_{index}"]:
            pairs.append(headers[f"agi_arg_{index}"])
        index += 1
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        # unquote, not unquote_plus: "+33…" must keep its plus sign.
        name, value = unquote(name).strip(), unquote(value).strip()
        if not sep or name not in _PARAMS:
            raise BadRequest(
                f"bad_request:{_safe(name) or 'parameter'}",
                f"unknown or malformed parameter {pair!r}",
            )
        params[name] = value
    caller_id = headers.get("agi_callerid", "")
    return AgiRequest(
        route=route.strip("/"),
        params=params,
        extension=headers.get("agi_extension", ""),
        caller_id="" if caller_id == "unknown" else caller_id,
        channel=headers.get("agi_channel", ""),
    )


def _safe(value: str) -> str:
    """A value safe inside ``SET VARIABLE … "…"``: no quote, backslash, space or newline."""
    return _SAFE.sub("_", value)[:80]


def _ident(request: AgiRequest, name: str, default: str) -> str:
    # An empty value means "not given": dialplan subroutines pass ${ARGn} through as is.
    value = request.params.get(name) or default
    if value and not IDENT_RE.match(value):
        raise BadRequest(f"bad_request:{name}", f"{name}={value!r} is not a valid identifier")
    return value


def build_attempt(request: AgiRequest, default_tenant: str, now: datetime) -> Attempt:
    """The attempt a ``check`` request describes."""
    try:
        traffic_class = TrafficClass(request.params.get("class") or TrafficClass.CAMPAIGN.value)
    except ValueError:
        raise BadRequest("bad_request:class", "class must be campaign or manual") from None
    return Attempt(
        dialled=request.params.get("number") or request.extension,
        now=now,
        tenant=_ident(request, "tenant", default_tenant),
        campaign=_ident(request, "campaign", ""),
        trunk=_ident(request, "trunk", ""),
        caller_id=request.params.get("caller_id") or request.caller_id,
        traffic_class=traffic_class,
        channel=request.channel,
    )


def decision_variables(decision: Decision) -> list[tuple[str, str]]:
    """The channel variables that carry a decision to the dialplan."""
    retry = "" if decision.retry_after_s is None else f"{decision.retry_after_s:g}"
    return [
        ("CALLGATE_REASON", decision.reason),
        ("CALLGATE_RULE", decision.rule),
        ("CALLGATE_RETRY_AFTER", retry),
        ("CALLGATE_E164", decision.e164),
        ("CALLGATE_CAUSE", str(decision.hangup_cause)),
        # Last, so a dialplan that sees a result also sees everything else.
        ("CALLGATE_RESULT", decision.verdict.value),
    ]


class AgiServer:
    """Serves the ``check`` and ``optout`` FastAGI routes for one ``Gate``."""

    def __init__(self, gate: Gate, host: str, port: int, header_timeout_s: float) -> None:
        self.gate = gate
        self.host, self.requested_port = host, port
        self.header_timeout_s = header_timeout_s
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.lists = ListAdmin(gate.config.policy, gate.keyspace, gate.store)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.requested_port, limit=MAX_LINE_BYTES
        )

    async def stop(self) -> None:
        """Stop accepting; let in-flight requests finish (bounded), then cancel the rest."""
        if self._server is None:
            return
        self._server.close()
        if self._clients:
            _, pending = await asyncio.wait(set(self._clients), timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except Exception:  # a bug in one request must not take the server down
            log.exception("FastAGI request failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_headers(self, reader: asyncio.StreamReader) -> dict[str, str] | None:
        """The request headers, or None if the peer closed, stalled or sent garbage."""
        headers: dict[str, str] = {}
        try:
            async with asyncio.timeout(self.header_timeout_s):
                for _ in range(MAX_HEADER_LINES):
                    raw = await reader.readline()
                    if not raw:
                        return None  # EOF before the blank line: a probe or a dead peer
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        return headers
                    name, sep, value = line.partition(": ")
                    if sep:
                        headers[name] = value
        except (TimeoutError, ValueError, ConnectionError) as exc:
            log.warning(
                "FastAGI: dropped a request whose headers were unreadable (%s)", type(exc).__name__
            )
            return None
        log.warning("FastAGI: dropped a request with more than %d header lines", MAX_HEADER_LINES)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await self._read_headers(reader)
        if headers is None:
            return
        channel = AgiChannel(reader, writer, headers, COMMAND_TIMEOUT_S)
        try:
            variables = await self._answer(headers)
            for name, value in variables:
                await channel.set_variable(name, _safe(value))
        except (AgiHangup, TimeoutError, ConnectionError) as exc:
            log.info(
                "FastAGI: channel %s went away during the dialogue (%s)",
                headers.get("agi_channel", "?"),
                type(exc).__name__,
            )

    async def _answer(self, headers: Mapping[str, str]) -> list[tuple[str, str]]:
        """Decide (or opt out) and return the variables to set."""
        try:
            request = parse_request(headers)
            if request.route == "check":
                attempt = build_attempt(request, self.gate.config.default_tenant, datetime.now(UTC))
                return decision_variables(await self.gate.decide(attempt))
            if request.route == "optout":
                return await self._optout(request)
            raise BadRequest("bad_request:route", f"unknown route {request.route!r}")
        except BadRequest as exc:
            log.warning("FastAGI: %s", exc)
            return [("CALLGATE_REASON", exc.code), ("CALLGATE_RESULT", "ERROR")]

    async def _optout(self, request: AgiRequest) -> list[tuple[str, str]]:
        number = request.params.get("number") or request.extension
        tenant = _ident(request, "tenant", self.gate.config.default_tenant)
        list_name = _ident(request, "list", "red")
        try:
            rule = self.lists.rule(list_name)
            if rule.kind != "block":
                raise InputError(f"list {list_name!r} is not a block list")
            await self.lists.add(list_name, [number], tenant, _ident(request, "campaign", ""))
        except GateError as exc:
            log.warning("FastAGI optout refused: %s", exc)
            return [
                ("CALLGATE_REASON", f"optout_failed:{type(exc).__name__}"),
                ("CALLGATE_RESULT", "ERROR"),
            ]
        log.info("FastAGI optout: a number was added to list %s for tenant %s", list_name, tenant)
        return [("CALLGATE_REASON", f"listed:{list_name}"), ("CALLGATE_RESULT", "OK")]
