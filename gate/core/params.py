"""Door-independent call parameters: what a dialplan passes, turned into an ``Attempt``.

Both doors take the same ``key=value`` parameters (FastAGI query/arguments, Stasis
arguments): ``number``, ``tenant``, ``campaign``, ``trunk``, ``class``, ``caller_id``, ``list``.
An empty value means "not given" (dialplan subroutines pass ``${ARGn}`` through as is).
Guarantees: unknown names and malformed identifiers raise ``BadRequest`` with a stable
code (``bad_request:<name>``); values written back to Asterisk pass through ``safe_value``,
so a crafted number can never inject dialplan or AGI syntax.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import unquote

from gate.core.errors import InputError
from gate.core.model import IDENT_RE, Attempt, Decision, TrafficClass

__all__ = [
    "BadRequest",
    "attempt_from_params",
    "decision_fields",
    "ident_param",
    "parse_pairs",
    "safe_value",
    "seconds_text",
]

PARAMS = frozenset({"number", "tenant", "campaign", "trunk", "class", "caller_id", "list"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:+\-]")
_MAX_VALUE = 80


class BadRequest(InputError):
    """A request names an unknown route or parameter, or carries a malformed value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def seconds_text(seconds: float) -> str:
    """``2592000``, ``0.04``: plain decimal seconds, never exponent form (dialplan math)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def safe_value(value: str) -> str:
    """``value`` reduced to ``A-Z a-z 0-9 _ . : + -`` (others become ``_``), at most 80 chars."""
    return _UNSAFE.sub("_", value)[:_MAX_VALUE]


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["tenant=acme", "number=%2B33…"]`` → ``{"tenant": "acme", "number": "+33…"}``."""
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
        params[name] = value
    return params


def ident_param(params: Mapping[str, str], name: str, default: str) -> str:
    """An identifier parameter (tenant, campaign, trunk, list), or ``default`` if empty."""
    value = params.get(name) or default
    if value and not IDENT_RE.match(value):
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
        caller_id=params.get("caller_id") or caller_id,
        traffic_class=traffic_class,
        channel=channel,
    )


def decision_fields(decision: Decision) -> list[tuple[str, str]]:
    """The ``CALLGATE_*`` variables of a decision, ``CALLGATE_RESULT`` last, values safe."""
    retry = "" if decision.retry_after_s is None else seconds_text(decision.retry_after_s)
    fields = [
        ("CALLGATE_REASON", decision.reason),
        ("CALLGATE_RULE", decision.rule),
        ("CALLGATE_RETRY_AFTER", retry),
        ("CALLGATE_E164", decision.e164),
        ("CALLGATE_CAUSE", str(decision.hangup_cause)),
        # Last, so a dialplan that sees a result also sees everything else.
        ("CALLGATE_RESULT", decision.verdict.value),
    ]
    return [(name, safe_value(value)) for name, value in fields]
