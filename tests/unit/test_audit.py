"""The audit trail: entries follow the journal's state changes, the chain verifies, every tamper kind is named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.journal import Journal
from provisioning.audit import (
    GENESIS_HASH,
    AuditEntry,
    StoredEntry,
    canonical_bytes,
    chain_hash,
    reconcile,
    verify_chain,
)
from provisioning.cloudauth import DeviceInfo
from provisioning.protocol import Register, Result
from provisioning.secret import Secret
from provisioning.workflow import (
    DeviceRecord,
    Policy,
    after_reconcile,
    build_report,
    decide_register,
    decide_result,
    key_minted,
    result_overdue,
)

T0 = 1_800_000_000.0
POLICY = Policy(activate_within_s=120, max_attempts=2)
KEY = Secret("AUTHKEY-never-in-the-trail-0123456789")


def register(device_id: str) -> Register:
    return Register("r1", device_id, f"hw-{device_id}", "m")


def mint(journal: Journal, device_id: str, now: float, attempt: str) -> DeviceRecord:
    """What the daemon journals for one key: the intent, then the attempt."""
    record = journal.get(device_id)
    decision = decide_register(record, register(device_id), tid="t", policy=POLICY, now=now, key_in_memory=False)
    if decision.action == "mint":
        intent = decision.record
    else:  # an earlier attempt is open: the cloud said unused, so a new key
        assert record is not None
        intent = after_reconcile(record, None, policy=POLICY, now=now).record
    assert intent is not None
    journal.put(intent)
    pushed = key_minted(intent, attempt=attempt, fingerprint=KEY.fingerprint(), policy=POLICY, now=now)
    journal.put(pushed)
    return pushed


def activate(journal: Journal, record: DeviceRecord, now: float) -> DeviceRecord:
    result = Result("r2", record.device_id, record.attempt, True, f"wd.{record.device_id}", "20261123", "20271122")
    decision = decide_result(record, result, policy=POLICY, now=now)
    assert decision.action == "complete"
    assert decision.record is not None
    report = build_report(decision.record, gateway_id="gw", biz_type="BIZ", term="1y", now=now)
    journal.complete(decision.record, report, now=now)
    return decision.record


def entries(journal: Journal) -> list[dict[str, object]]:
    return [json.loads(row.text) for row in journal.audit_rows()]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / "j.sqlite3", gateway_id="gw")


def test_minted_pushed_consumed_chain_and_verify(journal: Journal) -> None:
    pushed = mint(journal, "d1", T0, "a" * 16)
    journal.record_push(pushed, now=T0 + 1, detail={"re": "r1"})
    journal.record_push(pushed, now=T0 + 2, detail={"re": "r1b"})
    activate(journal, pushed, T0 + 5)
    got = entries(journal)
    assert [e["detail"]["resend"] for e in got[1:3]] == [False, True]  # type: ignore[index]
    del got[2]
    assert [(e["seq"], e["event"], e["attempt"]) for e in got] == [
        (1, "minted", "a" * 16), (2, "pushed", "a" * 16), (4, "consumed", "a" * 16)]  # fmt: skip
    assert all(e["key_fingerprint"] == KEY.fingerprint() and e["gateway_id"] == "gw" for e in got)
    assert got[2]["detail"] == {"sdk_device_id": "wd.d1", "begin_day": "20261123", "expired_day": "20271122",
                                "reconciled": False, "adopted": False, "biz_type": "BIZ", "term": "1y"}  # fmt: skip
    assert got[0]["at"] == "2027-01-15T08:00:00.000Z"
    rows, broken = journal.verify_audit()
    assert broken is None
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].hash
    assert rows[3].hash == chain_hash(rows[2].hash, AuditEntry.from_dict(got[2]))
    raw = journal.path.read_bytes() + b"".join(p.read_bytes() for p in journal.path.parent.glob("j.sqlite3-*"))
    assert KEY.reveal().encode() not in raw


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    entry = AuditEntry(1, "2027-01-15T08:00:00.000Z", "minted", "设备/1", "m", "a", "f", "gw", {"b": 1, "a": True})
    assert (
        canonical_bytes(entry)
        == (
            '{"at":"2027-01-15T08:00:00.000Z","attempt":"a","detail":{"a":true,"b":1},"device_id":"设备/1",'
            '"event":"minted","gateway_id":"gw","key_fingerprint":"f","model":"m","seq":1}'
        ).encode()
    )


def test_abandonments_each_attempt_once_with_its_reason(journal: Journal) -> None:
    # Attempt 1: the result is overdue (not yet abandoned), then the cloud says unused.
    first = mint(journal, "d1", T0, "1" * 16)
    unsure = result_overdue(first, T0 + 200)
    assert unsure is not None
    journal.put(unsure)
    assert [e["event"] for e in entries(journal)] == ["minted"]
    # Attempt 2 (the last allowed): the device reports failure -> given up with activation_failed.
    second = mint(journal, "d1", T0 + 300, "2" * 16)
    failed = decide_result(second, Result("r", "d1", "2" * 16, False, error="sdk_error"), policy=POLICY, now=T0 + 301)
    assert failed.record is not None
    journal.put(failed.record)
    journal.put(failed.record)  # the same state again: nothing new
    abandoned = [(e["attempt"], e["detail"]) for e in entries(journal) if e["event"] == "abandoned"]
    assert [(attempt, d["reason"]) for attempt, d in abandoned] == [  # type: ignore[index]
        ("1" * 16, "reconciled_unused"), ("2" * 16, "activation_failed")]  # fmt: skip
    assert journal.verify_audit()[1] is None


def test_a_failed_activation_with_attempts_left_and_given_up(journal: Journal) -> None:
    lenient = Policy(max_attempts=1)
    record = mint(journal, "d2", T0, "3" * 16)
    retry = decide_result(record, Result("r", "d2", "3" * 16, False, error="e"), policy=POLICY, now=T0 + 1)
    assert retry.action == "retry_later"
    assert retry.record is not None
    journal.put(retry.record)  # pushed -> unsure after a failed activation: abandoned now
    gave_up = after_reconcile(retry.record, None, policy=lenient, now=T0 + 2)  # same attempt: not again
    assert gave_up.record is not None
    journal.put(gave_up.record)
    events = [(e["event"], e["detail"].get("reason")) for e in entries(journal)]  # type: ignore[attr-defined]
    assert events == [("minted", None), ("abandoned", "activation_failed")]
    other = mint(journal, "d3", T0, "4" * 16)
    unsure = result_overdue(other, T0 + 500)
    assert unsure is not None
    journal.put(unsure)
    ended = after_reconcile(unsure, None, policy=lenient, now=T0 + 501).record
    assert ended is not None
    journal.put(ended)
    assert entries(journal)[-1]["detail"]["reason"] == "given_up"  # type: ignore[index]


def test_keys_lost_unpushed_in_a_restart_are_abandoned_once(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3", gateway_id="gw")
    lost = mint(journal, "lost", T0, "5" * 16)
    sent = mint(journal, "sent", T0, "6" * 16)
    journal.audit("pushed", sent, now=T0, detail={})
    journal.close()
    reopened = Journal.open(tmp_path / "j.sqlite3", gateway_id="gw")
    (entry,) = reopened.abandon_unpushed(now=T0 + 10)
    assert (entry.device_id, entry.attempt, entry.detail["reason"]) == ("lost", lost.attempt, "unpushed")
    assert reopened.abandon_unpushed(now=T0 + 20) == []


def test_a_result_for_a_key_another_agent_issued_is_consumed_as_adopted(journal: Journal) -> None:
    result = Result("r", "d9", "7" * 16, True, "wd.d9", "20261123", "20271122", hardware_id="hw", model="m")
    decision = decide_result(None, result, policy=POLICY, now=T0)
    assert decision.action == "adopt"
    assert decision.record is not None
    journal.complete(decision.record, build_report(decision.record, gateway_id="gw", biz_type="B", term="1y",
                                                   now=T0), now=T0)  # fmt: skip
    (entry,) = entries(journal)
    assert entry["event"] == "consumed"
    assert entry["key_fingerprint"] == ""
    assert entry["detail"]["adopted"] is True  # type: ignore[index]


# -- tampering ----------------------------------------------------------------------------------


def trail_of(tmp_path: Path, devices: int = 3) -> Journal:
    journal = Journal.open(tmp_path / "j.sqlite3", gateway_id="gw")
    for number in range(devices):
        record = mint(journal, f"d{number}", T0 + number, f"{number:016x}")
        journal.record_push(record, now=T0 + number, detail={})
        activate(journal, record, T0 + number + 1)
    assert len(journal.audit_rows()) == devices * 3
    return journal


def tamper(journal: Journal, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    """Change the file behind the agent's back, as someone with write access to it could."""
    db = sqlite3.connect(journal.path)
    with db:
        for statement in statements:
            sql, parameters = (statement, ()) if isinstance(statement, str) else statement
            db.execute(sql, parameters)
    db.close()


def test_an_edited_entry_is_named(tmp_path: Path) -> None:
    journal = trail_of(tmp_path)
    tamper(journal, "UPDATE audit SET entry = replace(entry, 'wd.d1', 'wd.dX') WHERE seq = 6")
    broken = journal.verify_audit()[1]
    assert broken is not None
    assert (broken.seq, broken.kind) == (6, "edited")


def test_an_edited_entry_with_a_recomputed_own_hash_breaks_the_next_link(tmp_path: Path) -> None:
    journal = trail_of(tmp_path)
    row = journal.audit_rows()[4]
    forged = AuditEntry.from_dict(json.loads(row.text) | {"device_id": "dX"})
    text = canonical_bytes(forged).decode()
    tamper(journal, ("UPDATE audit SET entry = ?, hash = ? WHERE seq = 5", (text, chain_hash(row.prev_hash, forged))))
    broken = journal.verify_audit()[1]
    assert broken is not None
    assert (broken.seq, broken.kind) == (5, "edited")


def test_a_deleted_entry_is_named(tmp_path: Path) -> None:
    journal = trail_of(tmp_path)
    tamper(journal, "DELETE FROM audit WHERE seq = 4")
    broken = journal.verify_audit()[1]
    assert broken is not None
    assert (broken.seq, broken.kind) == (5, "deleted")
    assert "entries 4 are missing" in broken.reason


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    journal = trail_of(tmp_path)
    tamper(journal, "UPDATE audit SET seq = -1 WHERE seq = 3", "UPDATE audit SET seq = 3 WHERE seq = 4",
           "UPDATE audit SET seq = 4 WHERE seq = -1")  # fmt: skip
    broken = journal.verify_audit()[1]
    assert broken is not None
    assert (broken.seq, broken.kind) == (3, "reordered")


def test_an_inserted_entry_is_named(tmp_path: Path) -> None:
    journal = trail_of(tmp_path)
    rows = journal.audit_rows()
    # Make room after seq 3 and forge a well-chained entry there: the original 4 then follows 3, not the forgery.
    moves: list[str | tuple[str, tuple[object, ...]]] = []
    moves += [("UPDATE audit SET seq = ? WHERE seq = ?", (row.row + 100, row.row)) for row in rows[3:]]
    moves += [("UPDATE audit SET seq = ? WHERE seq = ?", (row.row + 1, row.row + 100)) for row in rows[3:]]
    forged = AuditEntry(4, "2027-01-15T08:00:00.000Z", "consumed", "ghost", "m", "x", "", "gw", {})
    values = (canonical_bytes(forged).decode(), rows[2].hash, chain_hash(rows[2].hash, forged))
    moves.append(("INSERT INTO audit VALUES (4, 'consumed', 'ghost', 'x', ?, ?, ?)", values))
    tamper(journal, *moves)
    broken = journal.verify_audit()[1]
    assert broken is not None
    assert (broken.seq, broken.kind) == (4, "inserted")


def test_an_inserted_entry_that_does_not_chain_is_named(tmp_path: Path) -> None:
    rows = [StoredEntry(1, "{}", GENESIS_HASH, "0" * 64)]
    first = AuditEntry(1, "t", "minted", "d", "m", "a", "f", "gw", {})
    good = StoredEntry(1, canonical_bytes(first).decode(), GENESIS_HASH, chain_hash(GENESIS_HASH, first))
    stranger = StoredEntry(2, '{"junk": 1}', good.hash, "f" * 64)
    second = AuditEntry(2, "t", "pushed", "d", "m", "a", "f", "gw", {})
    after = StoredEntry(3, canonical_bytes(second).decode(), good.hash, chain_hash(good.hash, second))
    broken = verify_chain([good, stranger, after])
    assert broken is not None
    assert (broken.seq, broken.kind) == (2, "inserted")
    assert verify_chain([good]) is None
    assert verify_chain([]) is None
    assert verify_chain(rows) is not None


# -- reconciliation -----------------------------------------------------------------------------


def consumed(seq: int, device_id: str, sdk_device_id: str) -> AuditEntry:
    return AuditEntry(seq, "t", "consumed", device_id, "m", "a", "f", "gw",
                      {"sdk_device_id": sdk_device_id, "biz_type": "B"})  # fmt: skip


def test_reconcile_finds_orphaned_doubled_and_unknown_licences() -> None:
    trail = [
        consumed(1, "ok", "wd.ok"),
        consumed(2, "twice", "wd.t1"),
        consumed(3, "gone", "wd.gone"),
        AuditEntry(4, "t", "minted", "open", "m", "o", "f", "gw", {}),
    ]
    cloud = [
        DeviceInfo("wd.ok", "ok", "B", "20261123", "20271122"),
        DeviceInfo("wd.t1", "twice", "B", "20261123", "20271122"),
        DeviceInfo("wd.t2", "twice", "B", "20261124", "20271123"),
        DeviceInfo("wd.stray", "stranger", "B", "20261123", "20271122"),
    ]
    findings = reconcile(trail, cloud, biz_types={"B"})
    assert not findings.clean
    assert sorted(o["DeviceId"] for o in findings.orphaned) == ["wd.stray", "wd.t2"]
    assert [d["UserDeviceId"] for d in findings.doubled] == ["twice"]
    assert [u["UserDeviceId"] for u in findings.unknown] == ["gone"]
    assert [o["UserDeviceId"] for o in findings.open_attempts] == ["open"]
    assert reconcile(trail[:1], cloud[:1], biz_types=set()).clean
