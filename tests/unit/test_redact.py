"""Phone numbers out of log lines and channel names (gate/core/redact.py, gate/ops/logs.py)."""

from __future__ import annotations

import io
import logging

import pytest

from gate.core.redact import redact
from gate.ops.logs import JsonFormatter, NumberRedactor

KEY = b"k" * 32


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("Local/0688888888@outbound-gated-00000001;1", "-00000001;1", "0688888888"),
        ("optout refused: number '069999999'", "optout refused: number '#", "069999999"),
        ("tel:+33612345678", "tel:#", "33612345678"),
        ("called 06 12 34 56 78 twice", " twice", "06 12 34 56 78"),
        ("PJSIP/0612345678-0000002a", "-0000002a", "0612345678"),
        ("Local/06.12.34.56.78@outbound-gated-0000002a;1", "@outbound-gated-0000002a;1", "56.78"),
        ("Local/06-12-34-56-78@x-00000001;1", "@x-00000001;1", "56-78"),
        ("Local/\uff10\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18@x", "@x", "\uff17"),
        ("number '\u0660\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668'", "'#", "\u0667"),
        ("called 06\u00a012\u00a034\u00a056\u00a078 twice", " twice", "56\u00a078"),
        ("tel:+33-6-12-34-56-78;x", "tel:#", "56-78"),
        ("PJSIP/0612345678-00000001", "-00000001", "0612345678"),
        ("number '+49-30-12345678'", "'#", "12345678"),
    ],
)
def test_numbers_become_tags(text: str, kept: str, gone: str) -> None:
    """Each number-like run is replaced; a channel's unique id stays."""
    redacted = redact(text, KEY)
    assert (True, False) == (kept in redacted, gone in redacted)


@pytest.mark.parametrize(
    "text",
    [
        "FastAGI on agi://127.0.0.1:4573/check",
        "PJSIP/carrier-a-0000002a",
        "reloaded: config version fab010cc2afc (was 0a1b2c3d4e5f)",
        "2026-12-01T10:30:00+01:00 pid 12345, 200 decisions",
        "PJSIP/200-00000001;1 from 192.168.100.200:5060 at 2026-12-01 10:30:00",
    ],
)
def test_what_is_not_a_number_is_kept(text: str) -> None:
    """Addresses, ports, hex ids, times and small counts are not numbers to hide."""
    assert text == redact(text, KEY)


def test_the_same_number_gets_the_same_tag_and_no_key_hides_it_too() -> None:
    """Keyed tags let lines about one number go together; without a key, #… ."""
    one, two = redact("a 0612345678", KEY), redact("b 0612345678", KEY)
    assert (one[2:], "a #…") == (two[2:], redact("a 0612345678", None))


def test_a_number_written_another_way_gets_the_same_tag() -> None:
    """Dots, dashes, no-break spaces or other digits: the tag is of the ASCII digits."""
    written = [
        "0612345678",
        "06.12.34.56.78",
        "06-12-34-56-78",
        "\uff10\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",
    ]
    assert {redact("0612345678", KEY)} == {redact(text, KEY) for text in written}


def test_a_log_record_and_its_traceback_lose_their_numbers() -> None:
    """Through the redacting handler, neither the message nor the exc field keeps it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(NumberRedactor(KEY))
    log = logging.getLogger("callgate.test-redact")
    log.propagate = False
    log.addHandler(handler)
    try:
        try:
            raise ValueError("number '0699999999' is not valid")
        except ValueError:
            log.exception("channel %s refused", "Local/0688888888@x-00000001;1")
    finally:
        log.removeHandler(handler)
    written = stream.getvalue()
    assert ("0699999999" in written, "0688888888" in written, "#" in written) == (
        False,
        False,
        True,
    )
