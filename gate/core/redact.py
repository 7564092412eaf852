"""Phone numbers out of free text: log lines and channel names, when numbers are hashed.

With ``privacy.hash_numbers`` a raw number must not be kept anywhere, yet it reaches text
the gate writes: an error message quoting what a caller sent (``number '069999999'``), an
Asterisk channel name (``Local/0688888888@outbound-gated-00000001;1``). ``redact`` replaces
each thing that looks like a phone number with ``#`` and a keyed 32-bit tag (BLAKE2b with
the number-hashing secret), the same for the same digits, so lines about one number still
go together without saying which number it is.

What looks like a number: whatever ``classify`` (gate/core/numbers.py) could read as one,
written the ways it accepts: an optional leading ``+``, then groups of decimal digits of
any script (ASCII, full-width, Arabic-Indic...), the groups separated by one
space, tab, no-break space, dot or dash (``06.12.34.56.78``, ``+33-6-12-34-56-78``), 7
digits or more in all, not inside a longer word or hexadecimal id. The tag is of the
digits folded to ASCII: the same number written two ways gets the same tag. A redaction
that hides too much is preferred to one that lets a number through.

Left as they are: shorter runs (ports, counts, years), IPv4 addresses, ISO dates
(``2026-12-01``) and the 8-hex-digit unique suffix of an Asterisk channel (``-0000002a``,
``-00000001;1``), so the channel stays recognisable. When such a suffix ends a run of
digit groups, the run before it is judged alone if it is a number on its own (7 digits or
more: ``PJSIP/0612345678-00000001`` keeps ``-00000001``) or an endpoint after the
technology's ``/`` (``PJSIP/200-00000001`` is kept whole); otherwise the suffix may be
the end of a number (``+49-30-12345678``) and the whole run is hidden.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["redact"]

_MIN_DIGITS = 7
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Between two digit groups: a space, tab, no-break spaces, a dot or a dash (ASCII or not).
_SEPARATOR = "[ \t.\\-\u00a0\u2007\u202f\u2010\u2011\u2012\u2013]"
_TOKENS = re.compile(
    # A channel's unique id ("-" and 8 hex digits) is kept; so are IPv4 addresses and dates.
    r"(?P<id>-[0-9a-f]{8}(?![0-9A-Za-z]))"
    rf"|(?P<ip>(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.[0-9]))"
    r"|(?P<date>(?<![\w.+-])[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?![0-9]))"
    # Anything else number-like: digit groups, any script's decimal digits.
    rf"|(?<![^\W_]|\+)\+?\d+(?:{_SEPARATOR}\d+)*(?![^\W_])"
)
# A run's last group that may be a channel's unique id.
_ID_TAIL = re.compile(r"-[0-9a-f]{8}\Z")


def _digits(text: str) -> str:
    """The decimal digits of ``text``, folded to ASCII."""
    return "".join(str(unicodedata.decimal(ch)) for ch in text if ch.isdecimal())


def _tag(digits: str, key: bytes | None) -> str:
    if key is None:
        return "#…"
    if len(key) > 64:
        key = hashlib.blake2b(key).digest()
    return "#" + hashlib.blake2b(digits.encode(), key=key, digest_size=4).hexdigest()


def redact(text: str, key: bytes | None) -> str:
    """``text`` with every phone-number-like run replaced by ``#<tag>`` (``#…`` without a
    key); an Asterisk channel's unique id, IPv4 addresses and dates are kept."""

    def replace(match: re.Match[str]) -> str:
        run = match.group()
        if match.lastgroup is not None:  # an id, an address, a date
            return run
        if (tail := _ID_TAIL.search(run)) is not None:
            head = _digits(run[: tail.start()])
            if len(head) >= _MIN_DIGITS:
                return _tag(head, key) + tail.group()
            if match.start() > 0 and text[match.start() - 1] == "/":
                return run  # an endpoint and its channel id: PJSIP/200-00000001
        digits = _digits(run)
        return _tag(digits, key) if len(digits) >= _MIN_DIGITS else run

    return _TOKENS.sub(replace, text)
