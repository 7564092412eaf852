"""Log output for people (text) and for log shippers (logfmt, JSON), one record per line.

``configure_logging(config, verbose)`` replaces the root handlers: ``[logging] format``
picks ``text`` (``2026-… INFO callgate: …``), ``logfmt`` (``ts=… level=info
logger=callgate msg="…"``) or ``json`` (``{"ts": …, "level": …, "logger": …, "msg": …}``),
``[logging] stream`` stderr or stdout. Guarantees: every record is exactly one line (a
traceback goes into an ``exc`` field, newlines escaped); timestamps are UTC ISO-8601
with milliseconds. With ``redact_numbers`` (``privacy.hash_numbers``) every phone number in
a message or a traceback (a number quoted by an error, a channel name) is replaced by a
keyed tag (gate/core/redact.py) before the record is written anywhere.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gate.config.loader import LoggingConfig
from gate.core.redact import redact

__all__ = ["JsonFormatter", "LogfmtFormatter", "NumberRedactor", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_callgate_handler"


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    fields = {
        "ts": when.replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["exc"] = record.exc_text or formatter.formatException(record.exc_info)
    return fields


class NumberRedactor(logging.Filter):
    """Replaces the phone numbers of a record's message and traceback with keyed tags."""

    def __init__(self, key: bytes | None) -> None:
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.key)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.key)
        return True


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs; values with spaces, quotes or ``=`` are quoted and escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt(v)}" for k, v in _fields(record, self).items())


def _logfmt(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\r\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self), ensure_ascii=False)


def configure_logging(
    config: LoggingConfig,
    verbose: bool = False,
    redact_numbers: bool = False,
    key: bytes | None = None,
) -> None:
    """Route the root logger to one stream handler in the configured format (phone
    numbers replaced by tags keyed with ``key`` when ``redact_numbers``).

    Like ``logging.basicConfig``, it leaves alone a root logger that someone else (a host
    application, pytest) has configured; it replaces only a handler it installed before.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not getattr(h, _MARK, False)]
    if foreign:
        return
    handler = logging.StreamHandler(sys.stdout if config.stream == "stdout" else sys.stderr)
    formatter: logging.Formatter
    if config.format == "json":
        formatter = JsonFormatter()
    elif config.format == "logfmt":
        formatter = LogfmtFormatter()
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    if redact_numbers:
        handler.addFilter(NumberRedactor(key))
    setattr(handler, _MARK, True)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
