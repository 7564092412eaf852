"""Phone numbers out of free text: log lines and channel names, when numbers are hashed.

With ``privacy.hash_numbers`` a raw number must not be kept anywhere, yet it reaches text
the gate writes: an error message quoting what a caller sent (``number '069999999'``), an
Asterisk channel name (``Local/0688888888@outbound-gated-00000001;1``). ``redact`` replaces
each thing that looks like a phone number with ``#`` and a keyed 32-bit tag (BLAKE2b with
the number-hashing secret), the same for the same digits, so lines about one number still
go together without saying which number it is.

What looks like a number: a run of 7 to 15 digits, with an optional leading ``+``, or
pairs of digits separated by spaces (``06 12 34 56 78``), not inside a longer word or
hexadecimal id. Shorter runs (ports, counts, years), IP addresses and the 8-digit unique
suffix of an Asterisk channel (``-0000002a``, ``-00000001;1``) are left as they are.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["redact"]

# A channel's unique id ("-" and 8 hex digits) is kept; any other number-like run is not.
_TOKENS = re.compile(
    r"(?P<id>-[0-9a-f]{8}(?![0-9A-Za-z]))"
    r"|(?<![0-9A-Za-z+])(?:\+?\d{7,15}|\d{2}(?: \d{2}){3,6})(?![0-9A-Za-z])",
    re.ASCII,
)


def _tag(digits: str, key: bytes | None) -> str:
    if key is None:
        return "#…"
    if len(key) > 64:
        key = hashlib.blake2b(key).digest()
    return "#" + hashlib.blake2b(digits.encode(), key=key, digest_size=4).hexdigest()


def redact(text: str, key: bytes | None) -> str:
    """``text`` with every phone-number-like run replaced by ``#<tag>`` (``#…`` without a
    key); an Asterisk channel's unique id is kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group("id"):
            return match.group()
        return _tag(re.sub(r"\D", "", match.group()), key)

    return _TOKENS.sub(replace, text)
