"""Log lines that logged values cannot forge; the JSON format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from broadcaster.logsetup import JsonFormatter, TextFormatter, escape_controls, setup_logging


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("broadcaster.x", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


FORGERIES = [
    "kiosk\n2026-12-04T10:00:00.000Z ERROR   broadcaster.app: forged",
    "kiosk\r\nERROR forged",
    "kiosk\x1b[2Kforged",
    "kiosk\u2028forged",
    "kiosk\x85forged",
    "kiosk\x00forged",
]


@pytest.mark.parametrize("value", FORGERIES)
def test_text_format_keeps_a_hostile_value_on_one_line(value):
    line = TextFormatter().format(_record("endpoint %s joined zones %s", value, value))
    assert len(line.splitlines()) == 1
    assert "forged" in line and " INFO    broadcaster.x: endpoint kiosk\\" in line


def test_tracebacks_are_indented_under_their_record():
    try:
        raise ValueError("bad id 'x\nERROR forged'")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "broadcaster.x", logging.ERROR, __file__, 1, "failed for %s", ("a\nb",), sys.exc_info()
        )
    out = TextFormatter().format(record).split("\n")
    assert "\\n" in out[0]
    assert len(out) > 2 and all(line.startswith("    ") for line in out[1:])


def test_escape_controls_leaves_ordinary_text_alone():
    text = "Zug nach Zürich, Gleis 3 — 12:40 (IC 2735) 東京"
    assert escape_controls(text) == text
    assert escape_controls("a\tb\nc") == "a\\tb\\nc"


@pytest.mark.parametrize("value", FORGERIES)
def test_json_format_is_one_object_per_line(value):
    line = JsonFormatter().format(
        _record("announcement %s said %r", "a1", value, endpoint_id=value, zones=["hall"])
    )
    assert "\n" not in line and "\u2028" not in line and "\r" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "broadcaster.x"
    assert entry["message"] == f"announcement a1 said {value!r}"
    assert entry["endpoint_id"] == value and entry["zones"] == ["hall"]
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_json_format_survives_a_lone_surrogate_and_odd_extras():
    line = JsonFormatter().format(_record("text %s", "\ud800", thing=object()))
    entry = json.loads(line)
    assert entry["message"] == "text \ud800" and entry["thing"].startswith("<object")


def test_setup_logging_json_writes_json_lines():
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    setup_logging("INFO", "json", stream=stream)
    try:
        logging.getLogger("broadcaster.test").warning("endpoint %s gone", "e\n1")
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "broadcaster"]:
            root.removeHandler(handler)
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["message"] == "endpoint e\n1 gone"
