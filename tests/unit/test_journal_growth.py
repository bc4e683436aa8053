"""The SQLite journal as it grows: the outbox's pending-row queries, the 4 -> 5 migration."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from agent.journal import Journal
from agent.journal._sqlite import _MIGRATIONS, SCHEMA_VERSION
from provisioning.workflow import DeviceRecord, State, build_report

T0 = 1_800_000_000.0

# The query schema 4 ran (a correlated MIN per candidate row): the semantics the new one must keep.
OLD_DUE = (
    "SELECT o.id FROM outbox o WHERE o.delivered_at IS NULL AND o.next_attempt_at <= ? AND o.id = ("
    "  SELECT MIN(id) FROM outbox p WHERE p.device_id = o.device_id AND p.delivered_at IS NULL) ORDER BY o.id"
)


def activated(device_id: str, n: int) -> DeviceRecord:
    return DeviceRecord(device_id, f"hw-{device_id}", "m", "t", State.ACTIVATED, attempts=1, attempt=f"{n:016x}",
                        sdk_device_id=f"wd.{device_id}", begin_day="20261123", expired_day="20271122")  # fmt: skip


def fill(journal: Journal, rng: random.Random, reports: int) -> None:
    """Reports spread over a few devices, some delivered, the rest due at scattered times."""
    for n in range(reports):
        record = activated(f"d{rng.randrange(25)}", n)
        journal.complete(record, build_report(record, gateway_id="g", biz_type="B", term="1y", now=T0), now=T0)
    with journal.batch():
        for (row_id,) in journal._db.execute("SELECT id FROM outbox").fetchall():
            if rng.random() < 0.3:
                journal.mark_delivered(row_id, now=T0)
            else:
                journal.mark_retry(row_id, next_attempt_at=T0 + rng.randrange(-50, 50), error="sink away")


def test_due_reports_are_the_oldest_pending_report_of_each_device_as_before(tmp_path: Path) -> None:
    rng = random.Random(15)
    journal = Journal.open(tmp_path / "j.sqlite3")
    fill(journal, rng, 300)
    for now in (T0 - 60, T0 - 10, T0, T0 + 10, T0 + 60):
        expected = [row_id for (row_id,) in journal._db.execute(OLD_DUE, (now,)).fetchall()]
        assert [row.id for row in journal.due_reports(now=now, limit=1000)] == expected
        some = journal.due_reports(now=now, limit=5)  # a batch: a subset of the same rows, in id order
        assert len(some) == min(5, len(expected))
        assert {row.id for row in some} <= set(expected)
        assert [row.id for row in some] == sorted(row.id for row in some)


def test_a_batch_takes_the_most_overdue_first(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    for n, device in enumerate(("a", "b", "c")):
        record = activated(device, n)
        journal.complete(record, build_report(record, gateway_id="g", biz_type="B", term="1y", now=T0), now=T0)
    first, _, _ = journal.due_reports(now=T0, limit=3)
    journal.mark_retry(first.id, next_attempt_at=T0 + 5, error="x")  # a failed one waits its turn ...
    assert [row.device_id for row in journal.due_reports(now=T0 + 5, limit=2)] == ["b", "c"]  # ... behind older dues


def test_the_pending_queries_read_partial_indexes(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    plans = {
        sql: " ".join(str(step[3]) for step in journal._db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
        for sql, args in (
            ("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL", ()),
            ("SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL", ()),
        )
    }
    assert all("outbox_due" in plan for plan in plans.values()), plans


def test_a_schema_4_journal_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with sqlite3.connect(path, isolation_level=None) as db:
        for version in range(1, 5):
            db.executescript(f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version}; COMMIT;")
        for n, order in enumerate(("WO-1", "WO-1", "", "WO-2")):
            db.execute("INSERT INTO admission_charges (device_id, model, work_order, at) VALUES (?, 'm', ?, ?)",
                       (f"c{n}", order, T0))  # fmt: skip
        for n, (device, delivered) in enumerate((("a", T0), ("a", None), ("a", None), ("b", None))):
            db.execute(
                "INSERT INTO outbox (device_id, idempotency_key, payload, created_at, next_attempt_at, delivered_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device, f"k{n}", f'{{"n": {n}}}', T0, T0, delivered),
            )
    db.close()
    journal = Journal.open(path)
    assert journal._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (5,)
    indexes = {name for (name,) in journal._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"outbox_due", "outbox_device_pending"} <= indexes
    assert "outbox_pending" not in indexes
    assert [row.payload["n"] for row in journal.due_reports(now=T0, limit=10)] == [1, 3]
    assert journal.outbox_depth() == 3
    assert journal.next_report_due() == T0
    assert journal.charges_per_order() == {"WO-1": 2, "WO-2": 1}


def test_records_stream_filtered_in_sql(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    for n in range(2500):  # more than one fetch of STREAM_ROWS
        state = State.ACTIVATED if n % 5 else State.FAILED
        journal.put(activated(f"d{n:05d}", n).replace(state=state, updated_at=T0 + n))
    stream = journal.records(state=State.ACTIVATED, since=T0 + 1000, until=T0 + 2000)
    assert not isinstance(stream, list)
    got = [record.device_id for record in stream]
    assert got == [f"d{n:05d}" for n in range(1000, 2000) if n % 5]
    assert len(journal.all_records()) == 2500
    plan = " ".join(str(step[3]) for step in journal._db.execute(
        "EXPLAIN QUERY PLAN SELECT device_id FROM devices WHERE state = 'activated' AND updated_at >= 0 "
        "ORDER BY updated_at"))  # fmt: skip
    assert "devices_state_updated" in plan
    assert "TEMP B-TREE" not in plan  # no sort of every row


def test_the_export_document_is_written_one_device_at_a_time_as_json_dump_would(tmp_path: Path) -> None:
    import io
    import json

    from agent.cli._ops import _write_json

    for rows in ([], [{"device_id": "a", "n": 1}], [{"device_id": "a", "n": 1}, {"device_id": "b", "ü": True}]):
        out = io.StringIO()
        counted = _write_json(iter(rows), "gw", out)
        document = {"schema": "export/1", "gateway_id": "gw", "devices": rows}
        assert out.getvalue() == json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        assert len(counted) == len(rows)


def test_work_order_counts_are_kept_beside_the_charges(tmp_path: Path) -> None:
    from provisioning.admission import Mint

    journal = Journal.open(tmp_path / "j.sqlite3")
    ids = [journal.charge(Mint(f"d{n}", "m", "WO-1" if n < 3 else "", T0 + n)) for n in range(5)]
    assert journal.charges_per_order() == {"WO-1": 3}
    journal.uncharge(ids[0])
    journal.uncharge(ids[4])
    assert journal.charges_per_order() == {"WO-1": 2}
    plan = " ".join(str(s[3]) for s in journal._db.execute("EXPLAIN QUERY PLAN SELECT * FROM order_charges"))
    assert "admission_charges" not in plan
