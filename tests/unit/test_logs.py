"""Daemon logging: one event a line, JSON when asked."""

from __future__ import annotations

import json
import logging

from agent.logs import JsonFormatter


def test_json_lines_carry_level_logger_and_message() -> None:
    record = logging.LogRecord("agent.devices", logging.WARNING, __file__, 1, "device %r waits", ("SN-1",), None)
    event = json.loads(JsonFormatter().format(record))
    assert (event["level"], event["logger"], event["msg"]) == ("warning", "agent.devices", "device 'SN-1' waits")
    assert "\n" not in JsonFormatter().format(record)


def test_a_traceback_stays_inside_one_event() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("agent", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_under_journald_each_line_starts_with_its_priority() -> None:
    from agent.logs import JournaldFormatter

    formatter = JournaldFormatter(logging.Formatter("%(message)s"))
    warning = logging.LogRecord("agent", logging.WARNING, __file__, 1, "slow", (), None)
    debug = logging.LogRecord("agent", logging.DEBUG, __file__, 1, "detail", (), None)
    assert formatter.format(warning) == "<4>slow"
    assert formatter.format(debug) == "<7>detail"
