"""Retention: finished devices' trail, reports and charges archived, then pruned; the trail still verifies."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from agent.journal import Journal
from agent.journal._archive import ArchiveWriter, archive_audit_rows, archive_path, read_archive
from provisioning.admission import Mint
from provisioning.workflow import DeviceRecord, State, build_report

DAY = 86_400.0
T0 = 1_800_000_000.0


def provision(journal: Journal, device_id: str, at: float) -> None:
    """A device's whole path: minted (charged), pushed, activated with its report delivered."""
    minting = DeviceRecord(device_id, f"hw-{device_id}", "m", "t", State.PUSHED, attempts=1, delivered=1,
                           attempt=f"{abs(hash(device_id)):016x}"[:16], key_fingerprint="f" * 16, minted_at=at,
                           result_due=at + 60, updated_at=at)  # fmt: skip
    journal.put(minting, charge=Mint(device_id, "m", "WO-1", at))
    journal.record_push(minting, now=at, detail={"transport": "mqtt"})
    done = minting.replace(state=State.ACTIVATED, sdk_device_id=f"wd.{device_id}", begin_day="20270115",
                           expired_day="20280114", updated_at=at + 1)  # fmt: skip
    journal.complete(done, build_report(done, gateway_id="g", biz_type="B", term="1y", now=at + 1), now=at + 1)
    (row,) = [r for r in journal.due_reports(now=at + 2, limit=1000) if r.device_id == device_id]
    journal.mark_delivered(row.id, now=at + 2)


def prune_all(journal: Journal, before: float) -> Path:
    span = journal.prune_span(before=before)
    assert span is not None
    writer = ArchiveWriter(archive_path(journal.path, *span))
    while journal.prune_batch(before=before, archive=writer, limit=7):
        pass
    return writer.path


def test_old_finished_devices_move_to_an_archive_and_the_trail_still_verifies(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3", gateway_id="gw")
    for n in range(20):
        provision(journal, f"old{n}", T0 + n)
    inflight = DeviceRecord(
        "busy", "hw-busy", "m", "t", State.MINTING, attempts=0, attempt="b" * 16, updated_at=T0 + 50
    )
    journal.put(inflight)
    for n in range(5):
        provision(journal, f"new{n}", T0 + 40 * DAY + n)
    entries_before = len(journal.audit_rows())
    archive = prune_all(journal, before=T0 + 30 * DAY)

    assert archive.name == "journal.sqlite3.archive-20270115-20270214.jsonl.gz"
    assert archive.stat().st_mode & 0o777 == 0o640
    kinds = [line["kind"] for line in read_archive(archive)]
    assert kinds.count("report") == 20
    assert kinds.count("charge") == 20
    archived = archive_audit_rows([archive])
    assert [row.row for row in archived] == list(range(1, len(archived) + 1))
    # the in-flight device's entry (seq 61 onwards) and everything after it stay
    assert len(archived) + len(journal.audit_rows()) == entries_before
    assert journal.verify_audit()[1] is None
    assert journal.audit_start() == (archived[-1].row, archived[-1].hash)
    # records stay (a device that comes back is answered from its record), counts and ceilings too
    old = journal.get("old3")
    assert old is not None
    assert old.state is State.ACTIVATED
    assert journal.charges_per_order() == {"WO-1": 25}
    assert journal.outbox_depth() == 0
    assert len(journal.recent_reports(100)) == 5
    assert journal.prune_span(before=T0 + 30 * DAY) is None or prune_all(journal, T0 + 30 * DAY)
    journal.close()


def test_the_newest_entry_stays_so_the_next_one_chains_to_it(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.sqlite3", gateway_id="gw")
    for n in range(4):
        provision(journal, f"old{n}", T0 + n)
    last = journal.audit_rows()[-1]
    prune_all(journal, before=T0 + 30 * DAY)  # everything is old and finished
    assert journal.audit_rows() == [last]
    provision(journal, "next", T0 + 31 * DAY)
    rows, broken = journal.verify_audit()
    assert broken is None
    assert [row.row for row in rows] == list(range(last.row, last.row + 4))


def run_verify(journal: Path, *archives: Path) -> subprocess.CompletedProcess[str]:
    extra = ["--archive", *map(str, archives)] if archives else []
    return subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", "--journal", str(journal), "--json", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_audit_verify_checks_archive_and_journal_as_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal.open(path, gateway_id="gw")
    for n in range(10):
        provision(journal, f"d{n}", T0 + n)
    provision(journal, "late", T0 + 40 * DAY)
    archive = prune_all(journal, before=T0 + 30 * DAY)
    journal.close()

    alone = run_verify(path)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["intact"] is True
    whole = run_verify(path, archive)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert json.loads(whole.stdout)["entries"] == 33

    lines = [json.loads(line) for line in gzip.decompress(archive.read_bytes()).decode().splitlines()]
    audit = next(line for line in lines if line["kind"] == "audit" and line["seq"] == 4)
    audit["entry"] = audit["entry"].replace('"gw"', '"evil"')
    tampered = tmp_path / "tampered.jsonl.gz"
    tampered.write_bytes(gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode()))
    broken = run_verify(path, tampered)
    assert broken.returncode == 6, broken.stdout + broken.stderr
    assert json.loads(broken.stdout)["break"]["seq"] == 4

    short = tmp_path / "short.jsonl.gz"  # an archive missing its last entries does not reach the checkpoint
    short.write_bytes(
        gzip.compress("".join(json.dumps(line) + "\n" for line in lines if line.get("seq") != 30).encode())
    )
    assert run_verify(path, short).returncode == 6


def test_a_torn_last_member_is_ignored_and_its_rows_are_archived_again(tmp_path: Path) -> None:
    archive = tmp_path / "a.jsonl.gz"
    writer = ArchiveWriter(archive)
    writer.append([{"kind": "audit", "seq": 1, "entry": "{}", "prev_hash": "0", "hash": "h1"}])
    whole = archive.read_bytes()
    writer.append([{"kind": "audit", "seq": 2, "entry": "{}", "prev_hash": "h1", "hash": "h2"}])
    archive.write_bytes(archive.read_bytes()[: len(whole) + 10])  # a crash while writing the second member
    assert [row.row for row in archive_audit_rows([archive])] == [1]
    writer = ArchiveWriter(archive)  # the next run, after the restart
    writer.append([{"kind": "audit", "seq": 1, "entry": "{}", "prev_hash": "0", "hash": "h1"}])  # written again
    assert [row.row for row in archive_audit_rows([archive, archive])] == [1]


def test_the_agents_retention_task_prunes_through_the_journal_thread(tmp_path: Path) -> None:
    import asyncio

    from agent.daemon._retention import Retention
    from agent.journal import JournalWorker

    journal = Journal.open(tmp_path / "journal.sqlite3", gateway_id="gw")
    for n in range(30):
        provision(journal, f"d{n}", T0 + n)

    async def run() -> int:
        worker = JournalWorker(journal)
        try:
            retention = Retention(worker, journal, 30, clock=lambda: T0 + 31 * DAY)
            return await retention.prune() + await retention.prune()  # the second finds nothing left
        finally:
            worker.close()  # closes the journal too

    moved = asyncio.run(run())
    journal = Journal.open(tmp_path / "journal.sqlite3")
    assert moved == 30 + 30 + 3 * 30 - 1  # reports, charges, all entries but the newest
    (archive,) = tmp_path.glob("journal.sqlite3.archive-*.jsonl.gz")
    assert sum(1 for _ in read_archive(archive)) == moved
    assert journal.verify_audit()[1] is None
