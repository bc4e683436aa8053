"""The journal's own thread: SQLite calls never run on the event loop, and writes share their fsyncs.

Calls queue up while the thread waits for the disk. The thread then takes every queued call
at once and runs them in one transaction (``Journal.batch``: each call in its own savepoint),
so thirty-two devices that register together cost one fsync, not thirty-two in a row. No
caller hears back before the COMMIT is durable, so "journaled before the side effect" holds.

Reading one device's record is the exception: :meth:`JournalWorker.fetch` reads through a
second connection. On SQLite it reads on the caller's thread: in WAL mode a reader never waits
for the writer, a primary-key lookup takes tens of microseconds, and a hand-off to the thread
costs ten times that in CPU. On a shared ledger (PostgreSQL) a read is a network round trip
that may hang while the network does, so it runs in a worker thread instead, as do lease
renewals (:meth:`aside`). Either way it sees every write whose ``run`` has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar

from agent.journal._protocol import JournalStore, RecentReport
from provisioning.workflow import DeviceRecord

__all__ = ["JournalWorker"]

P = ParamSpec("P")
T = TypeVar("T")

MAX_BATCH: Final = 256  # calls in one group commit at most (bounds the time a batch holds the write lock)


@dataclass(slots=True)
class _Call:
    function: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    durable: bool = True
    outcome: tuple[bool, Any] = (False, None)  # (ok, result or exception)


class JournalWorker:
    """Runs journal methods on a dedicated thread, grouping the calls that queue up into one commit."""

    def __init__(self, journal: JournalStore, *, alone: Callable[[], bool] = lambda: False) -> None:
        self.journal = journal
        self.shared = journal.shared
        self._alone = alone  # True while the caller is the only device in flight (see run)
        self._outstanding = 0  # calls handed to the thread and not yet settled
        self._reader = journal.reader()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="journal", daemon=True)
        self._thread.start()
        self.batches = 0  # group commits done (for benchmarks)
        self.calls = 0

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await worker.run(journal.put, record)``: the result once it is durable.

        When the thread is idle and ``alone()`` says no other device is in flight, the call runs
        here and now instead: there is no commit to share, and the two hand-offs between threads
        cost more latency (~150 us on a small gateway) than the write itself apart from its fsync.
        """
        if self._inline():
            return self._run_inline(lambda: function(*args, **kwargs), durable=True)
        return await self._hand_off(lambda: function(*args, **kwargs), durable=True)

    async def run_bookkeeping(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run`, for writes that are redone when lost: committed without waiting for the disk.

        A batch of such calls alone costs no fsync; queued with any :meth:`run` call, it shares that
        call's durable commit. Safe against a crash of the process; a power cut may undo it. Always
        on the journal thread: some take time that grows with the journal (the outbox, pruning).
        """
        return await self._hand_off(lambda: function(*args, **kwargs), durable=False)

    async def run_small_bookkeeping(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """:meth:`run_bookkeeping` for one device's row (a counter), made here and now on the terms of
        :meth:`run`: a commit without fsync costs tens of microseconds, the two hand-offs more in CPU."""
        if self._inline():
            return self._run_inline(lambda: function(*args, **kwargs), durable=False)
        return await self._hand_off(lambda: function(*args, **kwargs), durable=False)

    def _inline(self) -> bool:
        return self._outstanding == 0 and not self.shared and self._alone()

    def _run_inline(self, function: Callable[[], T], *, durable: bool) -> T:
        with self.journal.batch(durable=durable):
            result = function()
        self.batches += 1
        self.calls += 1
        return result

    async def _hand_off(self, function: Callable[[], T], *, durable: bool) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._outstanding += 1
        self._calls.put(_Call(function, future, loop, durable=durable))
        return await future

    def _settle(self, call: _Call) -> None:
        """On the loop, once the thread is done with ``call`` (even when its caller stopped waiting)."""
        self._outstanding -= 1
        if call.future.done():  # the caller was cancelled
            return
        ok, value = call.outcome
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)

    def get(self, device_id: str) -> DeviceRecord | None:
        """A device's committed record, read here and now (a local journal only: see :meth:`fetch`)."""
        return self._reader.get(device_id)

    async def fetch(self, device_id: str) -> DeviceRecord | None:
        """A device's committed record: read here (SQLite), or in a thread (a shared ledger's round trip)."""
        if not self.shared:
            return self._reader.get(device_id)
        return await asyncio.to_thread(self._reader.get, device_id)

    async def aside(self, function: Callable[[JournalStore], T]) -> T:
        """``function(reader)`` on the reading connection, off the loop on a shared ledger (renewals, custody)."""
        if not self.shared:
            return function(self._reader)
        return await asyncio.to_thread(function, self._reader)

    def recent_reports(self, limit: int) -> list[RecentReport]:
        """The newest activation reports, read here and now like :meth:`get` (the station view)."""
        return self._reader.recent_reports(limit)

    def close(self) -> None:
        """Finish queued calls, then close the journal."""
        self._calls.put(None)
        self._thread.join()
        self._reader.close()
        self.journal.close()

    def _serve(self) -> None:
        while True:
            first = self._calls.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is None:
                    stop = True
                    break
                batch.append(call)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Call]) -> None:
        try:
            with self.journal.batch(durable=any(call.durable for call in batch)):
                for call in batch:
                    try:
                        call.outcome = (True, call.function())
                    except Exception as exc:  # noqa: BLE001 - handed to the caller, whose call it was
                        call.outcome = (False, exc)
        except Exception as exc:  # noqa: BLE001 - the COMMIT failed: nothing of the batch is durable
            for call in batch:
                call.outcome = (False, exc)
        self.batches += 1
        self.calls += len(batch)
        for call in batch:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                call.loop.call_soon_threadsafe(self._settle, call)
