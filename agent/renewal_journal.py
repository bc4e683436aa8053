"""The renewal journal: an append-only JSON-lines file, one fsynced line per intent or outcome."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from provisioning.renewal import RenewalEntry

__all__ = ["RenewalJournal"]


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
