"""Logging for the daemon: one event a line, to stderr, text or JSON.

Under systemd, stderr is a journald stream (``JOURNAL_STREAM`` names it): journald stamps each
line with the time and the unit, so text lines carry no timestamp of their own (it would show
twice in ``journalctl``), and each starts with its syslog priority (``<4>``) so that
``journalctl -p warning`` works. JSON lines keep their ``ts`` member: it is part of the event.

Repeated warnings are rate-limited (:class:`RepeatLimiter`): a hostile device can make the agent
refuse hundreds of messages a second, and a line for each would fill the disk and bury every
other line. Of one kind of line (the same logger and message template) at WARNING or above, the
first ``REPEAT_BURST`` in a window of ``REPEAT_WINDOW_S`` are written; the next one is replaced by a
notice that lines like it are being left out, and when the window is over one summary line says
how many were. Counters in /status and /metrics still count every event.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Final

__all__ = [
    "JournaldFormatter",
    "JsonFormatter",
    "RepeatLimiter",
    "flush_suppressed",
    "setup_logging",
    "stderr_is_journald",
]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNALD_TEXT_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"  # journald adds the time
# A line's story (a device refused, a port failing) is told by its first lines; 10 a minute of one
# kind is about 1 kB a minute where a flood would write megabytes.
REPEAT_BURST: Final = 10
REPEAT_WINDOW_S: Final = 60.0
REPEAT_MIN_LEVEL: Final = logging.WARNING  # INFO lines are one per device step and never repeat in a flood
MAX_KINDS_TRACKED: Final = 1024  # kinds are message templates (code, not data); more means f-string logging
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


@dataclass(slots=True)
class _Kind:
    """One kind of line in its current window."""

    started: float
    written: int = 1
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """A handler filter: at most ``burst`` lines of one kind (logger + template) a window; the rest counted.

    Summaries go to ``handler`` (set when the filter is added to it); :meth:`flush` writes the
    summaries of windows that are over (the daemon calls it every second, and at exit).
    """

    def __init__(
        self,
        *,
        burst: int = REPEAT_BURST,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self.handler: logging.Handler | None = None
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._lock = threading.Lock()  # serial port threads and the journal thread log too

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < REPEAT_MIN_LEVEL or getattr(record, "repeat_note", False):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        notes: list[logging.LogRecord] = []
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or now - kind.started >= self.window_s:
                if kind is not None and kind.suppressed:
                    notes.append(self._summary(key, kind))
                if kind is None and len(self._kinds) >= MAX_KINDS_TRACKED:
                    self._forget_expired(now)
                    if len(self._kinds) >= MAX_KINDS_TRACKED:
                        return True  # not tracked: written as it is
                self._kinds[key] = _Kind(now)
                passed = True
            elif kind.written < self.burst:
                kind.written += 1
                passed = True
            else:
                kind.suppressed += 1
                passed = False
                if kind.suppressed == 1:
                    notes.append(self._note(key, record.levelno, "%d lines like this in %.0f s: further ones are "
                                            "suppressed until the window is over (%r)",
                                            (self.burst, self.window_s, key[1])))  # fmt: skip
        self._emit(notes)
        return passed

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of every window that is over (every window, with ``force``: at exit)."""
        now = self._clock()
        with self._lock:
            done = [key for key, kind in self._kinds.items() if force or now - kind.started >= self.window_s]
            notes = [self._summary(key, self._kinds[key]) for key in done if self._kinds[key].suppressed]
            for key in done:
                del self._kinds[key]
        self._emit(notes)

    def _summary(self, key: tuple[str, str], kind: _Kind) -> logging.LogRecord:
        text = "suppressed %d similar line(s) in the last %.0f s (%r)"
        return self._note(key, REPEAT_MIN_LEVEL, text, (kind.suppressed, self.window_s, key[1]))

    @staticmethod
    def _note(key: tuple[str, str], level: int, text: str, args: tuple[object, ...]) -> logging.LogRecord:
        record = logging.LogRecord(key[0], level, __file__, 0, text, args, None)
        record.repeat_note = True
        return record

    def _forget_expired(self, now: float) -> None:
        for key in [
            k for k, kind in self._kinds.items() if now - kind.started >= self.window_s and not kind.suppressed
        ]:
            del self._kinds[key]

    def _emit(self, notes: list[logging.LogRecord]) -> None:
        if self.handler is not None:
            for note in notes:
                self.handler.handle(note)


_limiter: RepeatLimiter | None = None


def flush_suppressed(*, force: bool = False) -> None:
    """Write the summaries of repeated lines whose window is over (the daemon calls it every second)."""
    if _limiter is not None:
        _limiter.flush(force=force)


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
    global _limiter  # one root logger, one limiter for it
    handler = logging.StreamHandler(sys.stderr)
    journald = stderr_is_journald()
    text = JOURNALD_TEXT_FORMAT if journald else TEXT_FORMAT
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else logging.Formatter(text)
    if journald:
        formatter = JournaldFormatter(formatter)
    handler.setFormatter(formatter)
    _limiter = RepeatLimiter()
    _limiter.handler = handler
    handler.addFilter(_limiter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
