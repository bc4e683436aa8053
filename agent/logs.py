"""Logging for the daemon: one event a line, to stderr, text or JSON.

Under systemd, stderr is a journald stream (``JOURNAL_STREAM`` names it): journald stamps each
line with the time and the unit, so text lines carry no timestamp of their own (it would show
twice in ``journalctl``), and each starts with its syslog priority (``<4>``) so that
``journalctl -p warning`` works. JSON lines keep their ``ts`` member: it is part of the event.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Final

__all__ = ["JournaldFormatter", "JsonFormatter", "setup_logging", "stderr_is_journald"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNALD_TEXT_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"  # journald adds the time
_QUIET_LIBRARIES: Final = ("asyncio", "aiohttp.access")  # their DEBUG lines drown the agent's own


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg"}`` plus ``exc`` when there is a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


class JournaldFormatter(logging.Formatter):
    """Prefixes each line with its syslog priority (``<4>``) so ``journalctl -p warning`` works."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{self._inner.format(record)}"


_SYSLOG_PRIORITY: Final = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journald(environ: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> bool:
    """stderr is the journald stream systemd gave us (``JOURNAL_STREAM=<dev>:<inode>`` of that very file)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):  # a replaced stderr without a file descriptor
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def setup_logging(level: str, log_format: str) -> None:
    """Configure the root logger once, for the daemon; under journald, no own timestamp and a priority prefix."""
    handler = logging.StreamHandler(sys.stderr)
    journald = stderr_is_journald()
    text = JOURNALD_TEXT_FORMAT if journald else TEXT_FORMAT
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else logging.Formatter(text)
    if journald:
        formatter = JournaldFormatter(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
