"""Renewing licences in bulk without ever extending one twice.

How it works
------------
A renewal run walks the devices whose licence expires in a window and extends each by N
years. A journal (JSON lines, fsynced) records an *intent* before each ModifyDeviceInfo
and the *outcome* after. A rerun after an interruption reads it back: a device whose
current expiry is already past the intent's old expiry plus the one-week guard was
extended (by this run, its interrupted predecessor, or someone else) and is skipped.
The service's own guard (ExpiredDay must match the record within a week) backs this up.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from provisioning.cloudauth import GUARD_DAYS, DeviceInfo, RequestError, extended_past_guard, parse_day

__all__ = ["GUARD_DAYS", "RenewalDecision", "RenewalEntry", "RenewalJournal", "decide"]

Outcome = Literal["intent", "extended", "failed"]


@dataclass(frozen=True, slots=True)
class RenewalEntry:
    """One journal line."""

    device_id: str
    from_day: str
    years: int
    outcome: Outcome
    to_day: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RenewalDecision:
    """What to do with one device: ``extend`` from ``expired_day``, or ``skip`` with a reason."""

    action: Literal["extend", "skip"]
    reason: str = ""


class RenewalJournal:
    """Append-only JSON-lines file; each line is flushed and fsynced before the next call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._latest: dict[str, RenewalEntry] = {}
        if path.exists():
            self._load()

    def latest(self, device_id: str) -> RenewalEntry | None:
        """The last thing recorded for a device."""
        return self._latest.get(device_id)

    def record(self, entry: RenewalEntry) -> None:
        """Append durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._latest[entry.device_id] = entry

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = RenewalEntry(**json.loads(line))
            except (ValueError, TypeError):
                # A torn last line from a crash mid-write is expected; anything else is not ours.
                if number == len(lines):
                    continue
                raise ValueError(f"renewal journal {self.path} line {number} is not a journal entry") from None
            self._latest[entry.device_id] = entry


def decide(device: DeviceInfo, previous: RenewalEntry | None) -> RenewalDecision:
    """Extend, unless the journal shows this device was already extended past its recorded expiry."""
    if previous is None:
        return RenewalDecision("extend")
    try:
        current = parse_day("ExpiredDay", device.expired_day)
        before = parse_day("ExpiredDay", previous.from_day)
    except RequestError:
        return RenewalDecision("skip", f"unreadable expiry {device.expired_day!r}")
    if extended_past_guard(current, before):
        return RenewalDecision("skip", f"already extended from {previous.from_day} to {device.expired_day}")
    return RenewalDecision("extend")
