"""Log output that values from endpoints and callers cannot forge.

Endpoint ids, hello fields, announcement texts, reasons, zone and template names
reach log messages. In the text format every control character in a message is
escaped (a newline becomes ``\\n``) and any further line of a record (a traceback)
is indented, so a line that starts at column 0 is always a record this process
wrote. The JSON format writes one object per line (``ensure_ascii``), with the
time in UTC ISO 8601, the level, the logger, the message and any structured
extras given with ``extra=``.

Requests aiohttp cannot parse (an over-long request line or header, a bad
Content-Length) are answered 400 by aiohttp, which logs them at ERROR with a
traceback; :func:`quiet_bad_requests` turns those into one WARNING line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "escape_controls",
    "quiet_bad_requests",
    "setup_logging",
]

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape; one line."""
    return _CONTROLS.sub(_escape_one, text)


def _utc_iso(created: float) -> str:
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message``, time in UTC, the message on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_iso(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        # Only a traceback or stack can add lines; they are indented under the record.
        return super().format(record).replace("\n", "\n    ")


#: Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: no raw control, separator or lone surrogate reaches the stream.
        return json.dumps(entry, ensure_ascii=True, default=repr)


class _BadRequestFilter(logging.Filter):
    """aiohttp's "Error handling request" for unparsable requests: one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "bad HTTP request from %s answered %s: %s"
            record.args = (remote, exc.code, str(exc.message)[:200])
            record.exc_info = record.exc_text = None
        return True


_QUIET = _BadRequestFilter()
_HANDLER_NAME = "broadcaster"


def quiet_bad_requests() -> None:
    """Install the filter on aiohttp's server logger (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)


def setup_logging(
    level: str, fmt: Literal["text", "json"] = "text", stream: TextIO | None = None
) -> None:
    """Send every record to ``stream`` (stderr) in ``fmt``; replaces earlier handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    quiet_bad_requests()
