"""Log formats (gate/logs.py): one record per line, fields a shipper can parse."""

from __future__ import annotations

import json
import logging
import sys

from gate.ops.logs import JsonFormatter, LogfmtFormatter

WHEN = 1_780_000_000.25  # 2026-05-28T20:26:40.250Z


def record(message: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    made = logging.LogRecord("callgate.agi", logging.WARNING, "x.py", 1, message, (), info)
    made.created = WHEN
    return made


def test_logfmt_quotes_values_with_spaces_and_escapes_quotes() -> None:
    """ts, level, logger and msg as key=value; a message with spaces and quotes is quoted."""
    line = LogfmtFormatter().format(record('store "down" now'))
    expected = (
        'ts=2026-05-28T20:26:40.250Z level=warning logger=callgate.agi msg="store \\"down\\" now"'
    )
    assert expected == line


def test_json_is_one_object_per_line() -> None:
    """A JSON record parses back to its four fields."""
    line = JsonFormatter().format(record("gate up"))
    assert {
        "ts": "2026-05-28T20:26:40.250Z",
        "level": "warning",
        "logger": "callgate.agi",
        "msg": "gate up",
    } == json.loads(line)


def test_a_traceback_stays_on_the_record_line() -> None:
    """An exception goes into an exc field; logfmt and JSON records stay one line."""
    lines = [f.format(record("failed", exc=True)) for f in (LogfmtFormatter(), JsonFormatter())]
    assert [1, 1] == [len(line.splitlines()) for line in lines]
    assert "ValueError: boom" in json.loads(lines[1])["exc"]
