"""Daemon logging: one event a line, JSON when asked."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.logs import JsonFormatter, setup_logging, stderr_is_journald


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


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


def test_under_journald_lines_carry_no_timestamp_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "stderr").open("w+") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        setup_logging("info", "text")
        logging.getLogger("agent").warning("broker unreachable")
        stream.seek(0)
        assert stream.read() == "<4>WARNING agent: broker unreachable\n"  # journald adds the time


def test_a_journal_stream_that_is_not_our_stderr_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell started from a unit inherits JOURNAL_STREAM; its redirected stderr is a file, not the journal."""
    with (tmp_path / "stderr").open("w+") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
        assert not stderr_is_journald()
        setup_logging("info", "text")
        logging.getLogger("agent").warning("broker unreachable")
        stream.seek(0)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING agent: broker unreachable\n", stream.read())
