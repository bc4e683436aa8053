"""Logging for the daemon: one event a line, to stderr (journald adds time and unit), text or JSON."""

from __future__ import annotations

import json
import logging
import sys
from typing import Final

__all__ = ["JsonFormatter", "setup_logging"]

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


def setup_logging(level: str, log_format: str) -> None:
    """Configure the root logger once, for the daemon."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
