"""Door-independent call parameters: what a dialplan passes, turned into an ``Attempt``.

Both doors take the same ``key=value`` parameters (FastAGI query/arguments, Stasis
arguments): ``number``, ``tenant``, ``campaign``, ``trunk``, ``class``, ``caller_id``, ``list``.
An empty value means "not given" (dialplan subroutines pass ``${ARGn}`` through as is).
Both doors also answer the same way: one channel variable, ``CALLGATE_DECISION``, holding
``RESULT|REASON|RULE|RETRY_AFTER|E164|CAUSE`` (``answer_value`` writes it; the dialplan's
``callgate-unpack`` subroutine splits it into ``CALLGATE_RESULT``, ``CALLGATE_REASON``,
``CALLGATE_RULE``, ``CALLGATE_RETRY_AFTER``, ``CALLGATE_E164`` and ``CALLGATE_CAUSE``).

Guarantees: unknown names, malformed identifiers and a parameter given twice with
different values raise ``BadRequest`` with a stable code (``bad_request:<name>``); values
are URI-decoded (the dialplan passes ``${URIENCODE(...)}``, so a crafted number can add no
argument of its own); every field written back to Asterisk passes through ``safe_value``,
so a crafted number can never inject dialplan or AGI syntax nor an extra ``|`` field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import unquote

from gate.core.errors import InputError
from gate.core.model import IDENT_RE, Attempt, Decision, TrafficClass

__all__ = [
    "DECISION_FIELDS",
    "DECISION_VARIABLE",
    "BadRequest",
    "answer_value",
    "attempt_from_params",
    "decision_value",
    "error_value",
    "ident_param",
    "parse_pairs",
    "printable",
    "retry_seconds",
    "safe_value",
    "seconds_text",
]

DECISION_VARIABLE = "CALLGATE_DECISION"
#: The variables ``CALLGATE_DECISION`` carries, in its field order.
DECISION_FIELDS = (
    "CALLGATE_RESULT",
    "CALLGATE_REASON",
    "CALLGATE_RULE",
    "CALLGATE_RETRY_AFTER",
    "CALLGATE_E164",
    "CALLGATE_CAUSE",
)
PARAMS = frozenset({"number", "tenant", "campaign", "trunk", "class", "caller_id", "list"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:+\-]")
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: what a terminal
# or a log reader could take for a line break or an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_VALUE = 80


class BadRequest(InputError):
    """A request names an unknown route or parameter, or carries a malformed value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def retry_seconds(retry_after_s: float | None) -> int | None:
    """Whole seconds, rounded up (a retry a fraction early would be refused again)."""
    return None if retry_after_s is None else math.ceil(retry_after_s)


def seconds_text(seconds: float) -> str:
    """``2592000``, ``0.04``: plain decimal seconds, never exponent form (dialplan math)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def printable(text: str) -> str:
    """``text`` with control characters written as escapes (``\\r``, ``\\x1b``): what a
    peer sent may be logged or kept, never forge a log line or drive a terminal."""
    if text.isprintable():  # the common case: every character _CONTROL matches is not
        return text
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def safe_value(value: str) -> str:
    """``value`` reduced to ``A-Z a-z 0-9 _ . : + -`` (others become ``_``), at most 80 chars."""
    return _UNSAFE.sub("_", value)[:_MAX_VALUE]


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["tenant=acme", "number=%2B33…"]`` → ``{"tenant": "acme", "number": "+33…"}``.

    A parameter given twice with different values is refused (``bad_request:<name>``):
    neither copy can be trusted (a crafted number that adds a ``number=`` of its own).
    """
    params: dict[str, str] = {}
    for pair in pairs:
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        # unquote, not unquote_plus: "+33…" must keep its plus sign.
        name, value = unquote(name).strip(), unquote(value).strip()
        if not sep or name not in PARAMS:
            raise BadRequest(
                f"bad_request:{safe_value(name) or 'parameter'}",
                f"unknown or malformed parameter {pair!r}",
            )
        if params.get(name, value) != value:
            raise BadRequest(f"bad_request:{name}", f"parameter {name!r} given twice")
        params[name] = value
    return params


def ident_param(params: Mapping[str, str], name: str, default: str) -> str:
    """An identifier parameter (tenant, campaign, trunk, list), or ``default`` if empty."""
    value = params.get(name) or default
    if value and not IDENT_RE.fullmatch(value):
        raise BadRequest(f"bad_request:{name}", f"{name}={value!r} is not a valid identifier")
    return value


def attempt_from_params(
    params: Mapping[str, str],
    *,
    number: str,
    caller_id: str,
    channel: str,
    default_tenant: str,
    now: datetime,
) -> Attempt:
    """The attempt that ``params`` describe; ``number`` etc. are the door's own defaults."""
    try:
        traffic_class = TrafficClass(params.get("class") or TrafficClass.CAMPAIGN.value)
    except ValueError:
        raise BadRequest("bad_request:class", "class must be campaign or manual") from None
    return Attempt(
        dialled=params.get("number") or number,
        now=now,
        tenant=ident_param(params, "tenant", default_tenant),
        campaign=ident_param(params, "campaign", ""),
        trunk=ident_param(params, "trunk", ""),
        # As the door's headers are: a parameter is decoded after they were escaped. The
        # padding is stripped first, as the CLI's and the API's caller ID is stripped by
        # the engine: escaped, "anonymous\t" (ARI's caller number) was an invalid number.
        caller_id=printable((params.get("caller_id") or caller_id).strip()),
        traffic_class=traffic_class,
        channel=channel,
    )


def answer_value(
    result: str,
    reason: str,
    *,
    rule: str = "",
    retry_after_s: float | None = None,
    e164: str = "",
    cause: int = 0,
) -> str:
    """The ``CALLGATE_DECISION`` value: ``RESULT|REASON|RULE|RETRY_AFTER|E164|CAUSE``.

    The one writer of a door's answer (both doors, every route). Each field is reduced to
    ``safe_value``'s alphabet, which has no ``|``; ``RETRY_AFTER`` is plain decimal seconds
    (empty when there is none) and ``CAUSE`` the suggested Q.850 hangup cause.
    """
    retry = "" if retry_after_s is None else seconds_text(retry_after_s)
    fields = (result, reason, rule, retry, e164, str(cause))
    return "|".join(safe_value(field) for field in fields)


def decision_value(decision: Decision) -> str:
    """A decision as ``CALLGATE_DECISION``: ``DEFER|cap:x|cap:x|2592000|+33612345678|34``."""
    return answer_value(
        decision.verdict.value,
        decision.reason,
        rule=decision.rule,
        retry_after_s=decision.retry_after_s,
        e164=decision.e164,
        cause=decision.hangup_cause,
    )


def error_value(code: str) -> str:
    """A request the door could not serve: ``ERROR|bad_request:tenant||||0``."""
    return answer_value("ERROR", code)
