"""The journal's own thread: SQLite calls never run on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from provisioning.workflow import Journal

__all__ = ["JournalWorker"]

P = ParamSpec("P")
T = TypeVar("T")


class JournalWorker:
    """Runs journal methods one at a time on a dedicated thread (fsync waits block only that thread)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await worker.run(journal.put, record)``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def close(self) -> None:
        """Finish queued writes, then close the journal."""
        self._executor.shutdown(wait=True)
        self.journal.close()
