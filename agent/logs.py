"""Logging for the daemon: one event a line, to stderr (journald adds time and unit), text or JSON."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Final

__all__ = ["JournaldFormatter", "JsonFormatter", "setup_logging"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
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


def setup_logging(level: str, log_format: str) -> None:
    """Configure the root logger once, for the daemon; under systemd, lines carry their priority."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    if os.environ.get("JOURNAL_STREAM"):  # stderr is connected to journald
        formatter = JournaldFormatter(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
