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
from provisioning.protocol import Key, Register, Result
from provisioning.workflow import DeviceRecord, State
from tests.unit.flowkit import MODEL, T0, Harness, profile


def register(device_id: str, rid: str = "r1") -> Register:
    return Register(rid, device_id, f"hw-{device_id}", MODEL)


def mint(line: Harness, device_id: str, rid: str = "r1") -> Key:
    """A register through the line's flow: the intent, the key, its first push."""
    keys = [m for m in line.register(device_id, register(device_id, rid)) if isinstance(m, Key)]
    assert len(keys) == 1
    return keys[0]


def report(line: Harness, key: Key, *, ok: bool = True, error: str = "sdk_error") -> None:
    if ok:
        line.cloud.activate(key.device_id)
        outcome = Result("r2", key.device_id, key.attempt, True, f"wd.{key.device_id}", "20261123", "20271122")
    else:
        outcome = Result("r2", key.device_id, key.attempt, False, error=error)
    line.result(key.device_id, outcome)


def entries(journal: Journal) -> list[dict[str, object]]:
    return [json.loads(row.text) for row in journal.audit_rows()]


@pytest.fixture
def line(tmp_path: Path) -> Harness:
    return Harness(tmp_path, [profile(max_attempts=2)])


def test_minted_pushed_consumed_chain_and_verify(line: Harness) -> None:
    key = mint(line, "d1")
    line.now += 1
    again = [m for m in line.register("d1", register("d1", "r1b")) if isinstance(m, Key)]
    assert again[0].attempt == key.attempt
    line.now += 4
    report(line, key)
    got = entries(line.journal)
    assert [e["detail"]["resend"] for e in got[1:3]] == [False, True]  # type: ignore[index]
    del got[2]
    assert [(e["seq"], e["event"], e["attempt"]) for e in got] == [
        (1, "minted", key.attempt), (2, "pushed", key.attempt), (4, "consumed", key.attempt)]  # fmt: skip
    fingerprint = line.record("d1").key_fingerprint
    assert all(e["key_fingerprint"] == fingerprint and e["gateway_id"] == "gw" for e in got)
    assert got[2]["detail"] == {"sdk_device_id": "wd.d1", "begin_day": "20261123", "expired_day": "20271122",
                                "reconciled": False, "adopted": False, "biz_type": "BIZ", "term": "1y"}  # fmt: skip
    assert got[0]["at"] == "2027-01-15T08:00:00.000Z"
    rows, broken = line.journal.verify_audit()
    assert broken is None
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].hash
    assert rows[3].hash == chain_hash(rows[2].hash, AuditEntry.from_dict(got[2]))
    path = line.journal.path
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in path.parent.glob(path.name + "-*"))
    assert line.cloud.keys[0][1].encode() not in raw


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    entry = AuditEntry(1, "2027-01-15T08:00:00.000Z", "minted", "设备/1", "m", "a", "f", "gw", {"b": 1, "a": True})
    assert (
        canonical_bytes(entry)
        == (
            '{"at":"2027-01-15T08:00:00.000Z","attempt":"a","detail":{"a":true,"b":1},"device_id":"设备/1",'
            '"event":"minted","gateway_id":"gw","key_fingerprint":"f","model":"m","seq":1}'
        ).encode()
    )


def test_abandonments_each_attempt_once_with_its_reason(line: Harness) -> None:
    # Attempt 1: the result is overdue (not yet abandoned), then the cloud says unused and a new key goes out.
    first = mint(line, "d1")
    line.now += 200
    line.drive(line.line.overdue_flow("d1", line.journal.get("d1")))
    assert [e["event"] for e in entries(line.journal)] == ["minted", "pushed"]
    second = mint(line, "d1", "r3")
    # Attempt 2 (the last allowed): the device reports failure, the cloud confirms no licence: given up.
    report(line, second, ok=False)
    report(line, second, ok=False)  # the same failure again: nothing new
    abandoned = [(e["attempt"], e["detail"]) for e in entries(line.journal) if e["event"] == "abandoned"]
    assert [(attempt, d["reason"]) for attempt, d in abandoned] == [  # type: ignore[index]
        (first.attempt, "reconciled_unused"), (second.attempt, "activation_failed")]  # fmt: skip
    assert line.journal.verify_audit()[1] is None


def test_a_failed_activation_with_attempts_left_then_given_up(tmp_path: Path) -> None:
    line = Harness(tmp_path, [profile(max_attempts=1)])
    other = Harness(tmp_path / "other", [profile(max_attempts=1)])
    key = mint(line, "d2")
    line.line.profiles[MODEL] = profile(max_attempts=2)  # attempts left: the failure only makes it unsure
    report(line, key, ok=False, error="e")
    line.line.profiles[MODEL] = profile(max_attempts=1)
    line.register("d2", register("d2", "r5"))  # read back: no licence, none left: failed (same attempt: not again)
    events = [(e["event"], e["detail"].get("reason")) for e in entries(line.journal)]  # type: ignore[attr-defined]
    assert events == [("minted", None), ("pushed", None), ("abandoned", "activation_failed")]
    mint(other, "d3")
    other.now += 500
    other.drive(other.line.overdue_flow("d3", other.journal.get("d3")))
    other.register("d3", register("d3", "r6"))
    assert entries(other.journal)[-1]["detail"]["reason"] == "given_up"  # type: ignore[index]


def test_keys_lost_unpushed_in_a_restart_are_abandoned_once(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3", gateway_id="gw")
    lost = DeviceRecord("lost", "hw", "m", "t", State.PUSHED, attempts=1, attempt="5" * 16, key_fingerprint="f",
                        minted_at=T0, result_due=T0 + 120, updated_at=T0)  # fmt: skip
    sent = lost.replace(device_id="sent", attempt="6" * 16)
    journal.put(lost)
    journal.put(sent)
    journal.audit("pushed", sent, now=T0, detail={})
    journal.close()
    reopened = Journal.open(tmp_path / "j.sqlite3", gateway_id="gw")
    (entry,) = reopened.abandon_unpushed(now=T0 + 10)
    assert (entry.device_id, entry.attempt, entry.detail["reason"]) == ("lost", lost.attempt, "unpushed")
    assert reopened.abandon_unpushed(now=T0 + 20) == []


def test_a_result_for_a_key_another_agent_issued_is_consumed_as_adopted(line: Harness) -> None:
    line.cloud.activate("d9")
    result = Result("r", "d9", "7" * 16, True, "wd.d9", "20261123", "20271122", hardware_id="hw-d9", model=MODEL)
    line.result("d9", result)
    (entry,) = entries(line.journal)
    assert entry["event"] == "consumed"
    assert entry["key_fingerprint"] == ""
    assert entry["detail"]["adopted"] is True  # type: ignore[index]


# -- tampering ----------------------------------------------------------------------------------


def trail_of(tmp_path: Path, devices: int = 3) -> Journal:
    line = Harness(tmp_path)
    for number in range(devices):
        key = mint(line, f"d{number}")
        line.now += 1
        report(line, key)
    assert len(line.journal.audit_rows()) == devices * 3
    return line.journal


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
