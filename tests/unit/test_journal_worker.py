"""The journal's worker thread: calls that queue up share one commit, each stays atomic, all are durable."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agent.journal import Journal, JournalWorker
from provisioning.workflow import DeviceRecord, State, build_report

T0 = 1_800_000_000.0


def pushed(device_id: str) -> DeviceRecord:
    return DeviceRecord(device_id, f"hw-{device_id}", "m", "t", State.PUSHED, attempts=1, attempt="0" * 16)


async def hold_the_thread(worker: JournalWorker) -> tuple[threading.Event, asyncio.Future[bool]]:
    """A call that occupies the journal thread until the returned gate is set; returns once it runs."""
    started, gate = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return gate.wait(5.0)

    blocker = asyncio.ensure_future(worker.run(block))
    assert await asyncio.to_thread(started.wait, 5.0)
    return gate, blocker


async def test_calls_queued_together_share_a_commit_and_all_are_durable(tmp_path: Path) -> None:
    worker = JournalWorker(Journal.open(tmp_path / "j.sqlite3"))
    gate, blocker = await hold_the_thread(worker)  # the others queue up behind it
    puts = [asyncio.ensure_future(worker.run(worker.journal.put, pushed(f"d{n}"))) for n in range(50)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(blocker, *puts)
    assert worker.calls == 51
    assert worker.batches == 2  # the blocker alone, then the fifty together
    worker.close()
    reopened = Journal.open(tmp_path / "j.sqlite3")
    assert sorted(record.device_id for record in reopened.unfinished()) == sorted(f"d{n}" for n in range(50))


async def test_a_failing_call_is_undone_alone_and_its_caller_gets_the_error(tmp_path: Path) -> None:
    worker = JournalWorker(Journal.open(tmp_path / "j.sqlite3"))
    gate, blocker = await hold_the_thread(worker)
    record = DeviceRecord("bad", "hw", "m", "t", State.ACTIVATED, attempts=1, attempt="a" * 16,
                          sdk_device_id="wd.x", begin_day="20261123", expired_day="20271122")  # fmt: skip
    report = build_report(record, gateway_id="gw", biz_type="B", term="1y", now=T0) | {"unserialisable": {1, 2}}
    before = asyncio.ensure_future(worker.run(worker.journal.put, pushed("before")))
    failing = asyncio.ensure_future(worker.run(worker.journal.complete, record, report, now=T0))
    after = asyncio.ensure_future(worker.run(worker.journal.put, pushed("after")))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(blocker, before, after)
    with pytest.raises(TypeError):
        await failing
    assert worker.batches == 2
    worker.close()
    reopened = Journal.open(tmp_path / "j.sqlite3")
    assert reopened.get("bad") is None  # its record and its outbox row were rolled back together
    assert reopened.due_reports(now=T0 + 1, limit=10) == []
    assert {r.device_id for r in reopened.unfinished()} == {"before", "after"}


async def test_get_reads_on_the_callers_thread_and_sees_every_write_that_returned(tmp_path: Path) -> None:
    worker = JournalWorker(Journal.open(tmp_path / "j.sqlite3"))
    assert worker.get("d1") is None
    await worker.run(worker.journal.put, pushed("d1"))
    assert worker.get("d1") == pushed("d1")
    gate, blocker = await hold_the_thread(worker)  # the writer is busy...
    assert worker.get("d1") == pushed("d1")  # ...and a read does not wait for it:
    assert not blocker.done()  # had it waited, the writer's call would have run out first
    gate.set()
    await blocker
    worker.close()


def synchronous_level(journal: Journal) -> int:
    """The connection's ``PRAGMA synchronous`` now: 2 = FULL (fsync at every commit), 1 = NORMAL."""
    return int(journal._db.execute("PRAGMA synchronous").fetchone()[0])  # the setting under test


async def test_bookkeeping_alone_commits_without_fsync_and_with_a_durable_call_shares_its_fsync(
    tmp_path: Path,
) -> None:
    worker = JournalWorker(Journal.open(tmp_path / "j.sqlite3"))
    journal = worker.journal
    assert await worker.run_bookkeeping(synchronous_level, journal) == 1  # alone: NORMAL
    assert await worker.run(synchronous_level, journal) == 2
    gate, blocker = await hold_the_thread(worker)
    lazy = asyncio.ensure_future(worker.run_bookkeeping(synchronous_level, journal))
    durable = asyncio.ensure_future(worker.run(worker.journal.put, pushed("d1")))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(blocker, durable)
    assert await lazy == 2  # queued with a durable call: the batch is durable
    assert synchronous_level(journal) == 2  # and the connection is back to FULL after a lazy batch
    worker.close()


async def test_a_device_alone_writes_on_the_loop_and_otherwise_on_the_journal_thread(tmp_path: Path) -> None:
    alone = [True]
    worker = JournalWorker(Journal.open(tmp_path / "j.sqlite3"), alone=lambda: alone[0])
    loop_thread = threading.get_ident()

    def where_and_how(journal: Journal) -> tuple[int, int]:
        return threading.get_ident(), synchronous_level(journal)

    assert await worker.run(where_and_how, worker.journal) == (loop_thread, 2)  # inline, and durable
    assert await worker.run_small_bookkeeping(where_and_how, worker.journal) == (loop_thread, 1)  # no fsync
    thread, level = await worker.run_bookkeeping(where_and_how, worker.journal)  # never on the loop
    assert (thread != loop_thread, level) == (True, 1)
    await worker.run(worker.journal.put, pushed("d1"))
    assert worker.get("d1") is not None
    alone[0] = False
    thread, level = await worker.run(where_and_how, worker.journal)
    assert (thread != loop_thread, level) == (True, 2)
    gate, blocker = await hold_the_thread(worker)  # the thread is busy: even a lone device queues behind it
    alone[0] = True
    queued = asyncio.ensure_future(worker.run(where_and_how, worker.journal))
    await asyncio.sleep(0.05)
    assert not queued.done()
    gate.set()
    await blocker
    assert (await queued)[0] != loop_thread
    worker.close()
