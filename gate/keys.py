"""Redis key names and number tokens, computed without I/O.

Guarantees:
- Every key starts with ``{<namespace>}:`` so all keys one decision touches share one
  Redis Cluster hash slot (Lua scripts on Cluster may only touch one slot).
- Numbers at rest are tokens: by default the first 64 bits of HMAC-SHA256(secret, E.164),
  hex-encoded, so a dump of Redis reveals no number (CNIL expects hashed red lists);
  with ``hash_numbers = false`` the token is the E.164 string itself. Two different
  numbers share a hashed token with probability about n / 2**64 per lookup against a
  list of n entries (5e-13 at 10 million): such a collision can only ever block.
"""

from __future__ import annotations

import hashlib
import hmac

from gate.rules import CapRule, CooloffRule, ListRule

__all__ = ["Keyspace"]

_TOKEN_BYTES = 8


class Keyspace:
    """Names keys and tokens for one namespace and one hashing choice."""

    __slots__ = ("_prefix", "_secret", "hashed")

    def __init__(self, namespace: str, secret: bytes | None) -> None:
        self._prefix = "{" + namespace + "}:"
        self._secret = secret
        self.hashed = secret is not None

    def token(self, e164: str) -> str:
        """The form in which ``e164`` is stored in lists and counter keys."""
        if self._secret is None:
            return e164
        digest = hmac.new(self._secret, e164.encode(), hashlib.sha256).digest()
        return digest[:_TOKEN_BYTES].hex()

    def list_key(self, rule: ListRule, tenant: str, campaign: str) -> str | None:
        """The SET holding ``rule``'s entries for this tenant/campaign (None: not applicable)."""
        base = f"{self._prefix}list:{rule.name}"
        if rule.scope == "global":
            return base
        if rule.scope == "tenant":
            return f"{base}:t:{tenant}"
        return f"{base}:c:{tenant}:{campaign}" if campaign else None

    def cap_key(self, rule: CapRule, tenant: str, campaign: str, token: str) -> str | None:
        """The attempt log of ``rule`` for one destination (None: not applicable)."""
        base = f"{self._prefix}cap:{rule.id}"
        if rule.scope == "global":
            return f"{base}:{token}"
        if rule.scope == "tenant":
            return f"{base}:t:{tenant}:{token}"
        return f"{base}:c:{tenant}:{campaign}:{token}" if campaign else None

    def meta_key(self, rule: ListRule, tenant: str, campaign: str) -> str | None:
        """The HASH of a list's metadata (refreshed_at, count, source…); None: not applicable."""
        key = self.list_key(rule, tenant, campaign)
        return None if key is None else key.replace(":list:", ":meta:", 1)

    def cooloff_key(self, rule: CooloffRule, tenant: str, token: str) -> str:
        """Holds the time (ms) of the number's last ``rule.event``; expires with the period."""
        base = f"{self._prefix}cool:{rule.id}"
        return f"{base}:{token}" if rule.scope == "global" else f"{base}:t:{tenant}:{token}"

    def cps_key(self, trunk: str) -> str:
        """The one-second attempt log of a trunk."""
        return f"{self._prefix}cps:{trunk}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this namespace."""
        return self._prefix.replace("{", "\\{").replace("}", "\\}") + "*"
