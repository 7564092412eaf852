"""The values a decision is made of: an attempt in, a decision out.

All frozen; adapters (AGI, ARI, CLI) build an ``Attempt`` from their payload before any
logic sees it, and render a ``Decision`` back. Reason codes are stable strings that
dialplans, dashboards and audits may match on:

- ``allowed``                          every rule passed
- ``emergency``                        emergency/protected number (manual: ALLOW, campaign: BLOCK)
- ``short_number``                     other short code (manual: ALLOW)
- ``invalid_number``                   the dialled string is not a valid number
- ``number_type:<type>``               e.g. ``number_type:premium`` for campaign traffic
- ``listed:<list>``                    on a block list
- ``cap:<rule>``                       frequency cap reached (DEFER with retry_after_s)
- ``cps:<trunk>``                      trunk calls-per-second cap reached (DEFER)
- ``no_consent:<rule>``                 consent required and absent or expired (BLOCK)
- ``refusal:<rule>``, ``abandoned:<rule>``  cool-off after a refusal / abandoned call (DEFER)
- ``stale_list:<list>``                a list the law requires fresh is too old (DEFER)
- ``outside_hours:<rule>``             outside the callee's legal calling hours (DEFER)
- ``caller_id:<why>``                  masked, invalid, forbidden range, not authorised (BLOCK)
- ``store_unavailable``                Redis down or too slow: the configured fail mode
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

__all__ = ["IDENT_RE", "Attempt", "Decision", "TrafficClass", "Verdict"]

# Tenants, campaigns, trunks, lists and rule ids: 1-64 of A-Z a-z 0-9 _ . -
IDENT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Verdict(enum.StrEnum):
    """What Asterisk should do with the call."""

    ALLOW = "ALLOW"
    BLOCK = "BLOCK"
    DEFER = "DEFER"


class TrafficClass(enum.StrEnum):
    """Who dials: a dialer/campaign (automated) or an agent by hand (manual)."""

    CAMPAIGN = "campaign"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One outbound call about to leave, as the gate sees it.

    ``now`` is timezone-aware; the core never reads the clock itself.
    """

    dialled: str
    now: datetime
    tenant: str = "default"
    campaign: str = ""
    trunk: str = ""
    # The presented caller ID ("" = masked). None: not known to the asker (a CLI check or a
    # scrub without one); caller-ID rules are then reported as not checked.
    caller_id: str | None = None
    traffic_class: TrafficClass = TrafficClass.CAMPAIGN
    channel: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer: a verdict, a stable reason code, the rule that decided it.

    ``retry_after_s`` is set for DEFER only: seconds from the attempt's ``now`` until
    the call may be tried again. ``e164`` is empty when the dialled string was not a
    valid number (short codes keep their digits).
    """

    verdict: Verdict
    reason: str
    rule: str
    e164: str = ""
    retry_after_s: float | None = None
    # Reasons of shadow rules that would have refused the call (reported, not enforced).
    shadow: tuple[str, ...] = ()

    @property
    def hangup_cause(self) -> int:
        """Suggested Q.850 cause for rejecting the channel (0 when it may go).

        21 "call rejected" for BLOCK (SIP 403 on a PJSIP trunk); 34 "no circuit/channel
        available" for DEFER, which SIP maps to 503 and dialers read as "retry later".
        """
        if self.verdict is Verdict.BLOCK:
            return 21
        if self.verdict is Verdict.DEFER:
            return 34
        return 0
