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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(clock: Clock, burst: int = 3) -> tuple[logging.Logger, list[str]]:
    """A logger whose handler keeps its lines, behind a RepeatLimiter."""
    from agent.logs import RepeatLimiter

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    handler = Keep()
    limiter = RepeatLimiter(burst=burst, window_s=60.0, clock=clock)
    limiter.handler = handler
    handler.addFilter(limiter)
    logger = logging.getLogger(f"test.repeat.{id(lines)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.limiter = limiter  # type: ignore[attr-defined]
    return logger, lines


def test_a_flood_of_one_warning_is_cut_to_a_burst_a_notice_and_a_summary() -> None:
    clock = Clock()
    logger, lines = limited(clock)
    for n in range(500):
        logger.warning("tid %s: refused message: %s", f"serial:port-{n}", "invalid_field")
    assert len(lines) == 4  # three lines, then the notice
    assert lines[:3] == [
        f"WARNING {logger.name}: tid serial:port-{n}: refused message: invalid_field" for n in range(3)
    ]
    assert "further ones are suppressed" in lines[3]
    assert "'tid %s: refused message: %s'" in lines[3]  # the template only: never the flood's own text
    clock.now += 30
    logger.limiter.flush()  # type: ignore[attr-defined]
    assert len(lines) == 4  # the window is not over
    clock.now += 31
    logger.limiter.flush()  # type: ignore[attr-defined]
    assert (
        lines[4]
        == f"WARNING {logger.name}: suppressed 497 similar line(s) in the last 60 s ('tid %s: refused message: %s')"
    )
    logger.warning("tid %s: refused message: %s", "serial:port-x", "malformed")
    assert lines[5].endswith("tid serial:port-x: refused message: malformed")  # a new window writes again


def test_other_kinds_and_info_lines_are_not_held_back_by_a_flood() -> None:
    clock = Clock()
    logger, lines = limited(clock, burst=2)
    for _ in range(50):
        logger.warning("flood %d", 1)
        logger.info("device %s: key minted", "SN-1")
    logger.error("journal: %s", "disk full")
    assert sum("key minted" in line for line in lines) == 50
    assert lines[-1] == f"ERROR {logger.name}: journal: disk full"


def test_a_new_window_reports_what_the_last_one_left_out_before_its_first_line() -> None:
    clock = Clock()
    logger, lines = limited(clock, burst=1)
    for _ in range(5):
        logger.warning("same %s", "x")
    clock.now += 61
    logger.warning("same %s", "y")
    assert lines[-2].endswith("suppressed 4 similar line(s) in the last 60 s ('same %s')")
    assert lines[-1].endswith("same y")


def test_flush_at_exit_reports_every_open_window() -> None:
    clock = Clock()
    logger, lines = limited(clock, burst=1)
    logger.warning("same")
    logger.warning("same")
    logger.limiter.flush(force=True)  # type: ignore[attr-defined]
    assert lines[-1].endswith("suppressed 1 similar line(s) in the last 60 s ('same')")
