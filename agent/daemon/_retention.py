"""Retention: finished devices' audit entries, reports and charges move to an archive, then leave the journal.

Runs only with ``[journal] retain_days`` set (SQLite). Once an hour (and a minute after the
start) it takes what is older than the retention in small batches: each is read on the
journal's thread, written to the archive (and fsynced) on another, then deleted on the
journal's thread, both as bookkeeping (no fsync of their own). Between batches it pauses and
waits for a moment with no device in flight (at most a second, so a busy line is pruned too):
a device arriving meanwhile waits for at most one short read or delete (the cost is measured
in docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from agent.journal import Journal, JournalWorker
from agent.journal._archive import ArchiveWriter, archive_path
from agent.journal._permissions import share_with_operators

__all__ = ["Retention"]

log = logging.getLogger("agent.retention")

DAY_S: Final = 86_400
FIRST_RUN_S: Final = 60.0  # after the start: resuming devices and the backlog come first
INTERVAL_S: Final = 3600.0  # a day's devices leave in 24 runs: each one small
PRUNE_BATCH: Final = 50  # rows of each kind per batch: one holds the journal thread for a few milliseconds
PAUSE_S: Final = 0.05  # between batches: devices' writes go first
MAX_DEFER_S: Final = 1.0  # a batch waits for a moment with no device in flight at most this long (a busy line)


class Retention:
    """Prunes the journal ``worker`` drives, keeping ``retain_days`` days."""

    def __init__(
        self,
        worker: JournalWorker,
        journal: Journal,
        retain_days: int,
        *,
        clock: Callable[[], float] = time.time,
        idle: Callable[[], bool] = lambda: True,
    ) -> None:
        self._worker, self._journal, self._days, self._clock = worker, journal, retain_days, clock
        self._idle = idle  # no device in flight now
        self.pruned = 0  # rows moved to archives since the start

    async def run(self) -> None:
        """Prune now and then, until cancelled."""
        await asyncio.sleep(FIRST_RUN_S)
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("retention: pruning failed; the journal keeps everything until the next run")
            await asyncio.sleep(INTERVAL_S)

    async def prune(self) -> int:
        """One run: every batch older than the retention, archived first; the rows moved."""
        before = self._clock() - self._days * DAY_S
        span = await self._worker.run_bookkeeping(self._journal.prune_span, before=before)
        if span is None:
            return 0
        archive = ArchiveWriter(archive_path(self._journal.path, *span))
        moved = 0
        while True:
            await self._wait_for_a_quiet_moment()
            batch = await self._worker.run_bookkeeping(self._journal.prunable, before=before, limit=PRUNE_BATCH)
            if batch is None:
                break
            await asyncio.to_thread(archive.append, batch.lines)  # durable before the delete; off the journal's thread
            moved += await self._worker.run_bookkeeping(self._journal.prune, batch)
            await asyncio.sleep(PAUSE_S)
        if moved:
            share_with_operators([archive.path])
            log.info("retention: %d rows older than %d days moved to %s", moved, self._days, archive.path)
        self.pruned += moved
        return moved

    async def _wait_for_a_quiet_moment(self) -> None:
        """Wait (a little) for a moment with no device in flight: a batch then delays nobody."""
        waited = 0.0
        while not self._idle() and waited < MAX_DEFER_S:
            await asyncio.sleep(PAUSE_S)
            waited += PAUSE_S
