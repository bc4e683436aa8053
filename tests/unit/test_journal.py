"""The SQLite journal: durable records, activation and report in one transaction, ordered outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.journal import Journal, JournalError
from provisioning.workflow import DeviceRecord, State, build_report

T0 = 1_800_000_000.0


def activated(device_id: str, *, day: str = "20261123") -> DeviceRecord:
    return DeviceRecord(device_id, f"hw-{device_id}", "m", "t", State.ACTIVATED, attempts=1, attempt="a" * 16,
                        sdk_device_id=f"wd.{device_id}", begin_day=day, expired_day="20271122")  # fmt: skip


def test_records_survive_reopening(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    record = DeviceRecord("3iJ1AY$oHcu7mC69", "hw", "m", "t", State.PUSHED, attempts=1, attempt="0" * 16)
    journal.put(record)
    journal.close()
    reopened = Journal.open(tmp_path / "j.sqlite3")
    assert reopened.get("3iJ1AY$oHcu7mC69") == record
    assert reopened.unfinished() == [record]
    assert reopened.counts() == {"pushed": 1}


def test_activation_and_report_are_one_transaction(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    record = activated("d1")
    report = build_report(record, gateway_id="gw", biz_type="B", term="1y", now=T0)
    journal.complete(record, report, now=T0)
    assert journal.get("d1") == record
    (row,) = journal.due_reports(now=T0, limit=10)
    assert row.payload == report
    assert row.idempotency_key == report["idempotency_key"]

    broken = activated("d2")
    with pytest.raises(JournalError):
        journal.complete(broken, {"no": "idempotency key"} | {"idempotency_key": None}, now=T0)  # NOT NULL fails
    assert journal.get("d2") is None  # the record did not land without its report


def test_outbox_keeps_order_per_device(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    for device, day in (("a", "20261101"), ("b", "20261101"), ("a", "20261102")):
        record = activated(device, day=day)
        journal.complete(record, build_report(record, gateway_id="g", biz_type="B", term="1y", now=T0), now=T0)
    due = journal.due_reports(now=T0, limit=10)
    assert [(row.device_id, row.payload["begin_day"]) for row in due] == [("a", "20261101"), ("b", "20261101")]
    journal.mark_retry(due[0].id, next_attempt_at=T0 + 60, error="upstream down")
    assert [row.device_id for row in journal.due_reports(now=T0, limit=10)] == ["b"]  # a's second waits for its first
    journal.mark_delivered(due[0].id, now=T0 + 61)
    assert [row.payload["begin_day"] for row in journal.due_reports(now=T0 + 61, limit=10) if row.device_id == "a"] == [
        "20261102"
    ]
    assert journal.outbox_depth() == 2


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match="newer than this agent"):
        Journal.open(path)


def test_an_unwritable_place_is_a_journal_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(JournalError, match=str(blocker)):
        Journal.open(blocker / "j.sqlite3")


def test_report_never_carries_the_key_fingerprint(tmp_path: Path) -> None:
    record = activated("d").replace(key_fingerprint="abcdef123456")
    report = build_report(record, gateway_id="g", biz_type="B", term="1y", now=T0)
    assert "abcdef123456" not in str(report)


def test_a_journal_this_user_cannot_write_is_refused_at_open(tmp_path: Path) -> None:
    import os

    path = tmp_path / "j.sqlite3"
    Journal.open(path).close()
    path.chmod(0o444)
    try:
        if os.access(path, os.W_OK):  # root ignores file modes: make the directory read-only instead
            pytest.skip("running as root: file modes do not stop writes")
        with pytest.raises(JournalError, match="readonly"):
            Journal.open(path)
    finally:
        path.chmod(0o644)
