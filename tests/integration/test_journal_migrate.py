"""``journal migrate``: a gateway's SQLite journal into the shared ledger, with a real agent, Mosquitto, the emulator.

One agent licenses devices on its SQLite journal and stops; the command copies the journal into
a PostgreSQL ledger; then ``audit verify`` and ``export`` on the ledger show the migrated
devices, and a device licensed before the migration that registers again with an agent on the
ledger is told ``done`` with no key minted.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.journal import Journal, JournalError
from agent.journal import _lock as journal_lock
from agent.journal._postgres import PostgresJournal
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, Line, line_fixture

__all__ = ["line_fixture"]

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def cli(line: Line, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=line.env,
                          timeout=60, check=False)  # fmt: skip


def test_a_migrated_journal_verifies_exports_and_answers_its_licensed_devices_done_without_a_mint(
    line: Line, ledger_url: str
) -> None:
    journal = line.tmp_path / "gw1.sqlite3"
    agent = line.start_agent("gw1")
    specs = fleet_specs(4, model=MODEL, id_prefix="MG", seal=True)
    report = line.fleet(specs, deadline_s=60)
    assert {o.status for o in report.devices} == {"licensed"}
    config = str(line.tmp_path / "gw1.toml")

    refused = cli(line, "journal", "migrate", "--to", ledger_url, "--config", config)
    assert refused.returncode == 3, refused.stderr  # the agent still has the journal open
    assert "stop it first" in refused.stderr
    agent.stop()

    done = cli(line, "journal", "migrate", "--to", ledger_url, "--config", config, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["done"], result["gateway_id"], result["records"], result["charges"]) == (True, "gw1", 4, 4)
    again = cli(line, "journal", "migrate", "--to", ledger_url, "--config", config)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout

    # The ledger's trail verifies whole: the 'migrated' head names the file and its head, the copies follow.
    verified = cli(line, "audit", "verify", "--journal", ledger_url, "--json")
    assert verified.returncode == 0, verified.stderr
    reader = PostgresJournal.open_readonly(ledger_url)
    try:
        entries = [json.loads(row.text) for row in reader.audit_rows()]
        states = {r.device_id: r.state.value for r in reader.all_records()}
        charged = len(reader.charges_since(0.0))
    finally:
        reader.close()
    head = entries[0]
    assert head["event"] == "migrated"
    assert head["detail"]["source"] == str(journal)
    assert (head["detail"]["source_head_seq"], head["detail"]["entries"]) == (
        result["source_head_seq"],
        len(entries) - 1,
    )
    old = Journal.open_readonly(journal)
    try:
        old_rows = old.audit_rows()
    finally:
        old.close()
    assert head["detail"]["source_head_hash"] == old_rows[-1].hash
    assert [(e["event"], e["device_id"], e["attempt"]) for e in entries[1:]] == [
        (e["event"], e["device_id"], e["attempt"]) for e in (json.loads(r.text) for r in old_rows)
    ]
    assert states == {spec.device_id: "activated" for spec in specs}
    assert charged == 4
    anchored = cli(line, "audit", "verify", "--journal", str(journal), "--anchor",
                   f"{result['source_head_seq']}:{result['source_head_hash']}")  # fmt: skip
    assert anchored.returncode == 0, anchored.stderr

    # export on the ledger, as the gateway's configuration now names it
    on_ledger = line.config("gw1", journal={"url": ledger_url, "lease_s": 3.0})
    exported = cli(line, "export", "--config", str(on_ledger), "--format", "json")
    assert exported.returncode == 0, exported.stderr
    assert {d["device_id"] for d in json.loads(exported.stdout)["devices"]} == {spec.device_id for spec in specs}

    # A device licensed before the migration registers again, reaching an agent on the ledger: done, no mint.
    mints_before = len(line.emulator.audit()["key_events"])
    line.start_agent("gw1", journal={"url": ledger_url, "lease_s": 3.0})
    device = specs[0].device_id
    down = line.watch(f"prov/v1/dev/{device}/down")
    seal_pub = base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    body: dict[str, Any] = {"v": 1, "type": "register", "id": "again-1", "device_id": device,
                            "hardware_id": f"hw-{device}", "model": MODEL, "seal_pub": seal_pub}  # fmt: skip
    down.publish(f"prov/v1/dev/{device}/up", json.dumps(body).encode())
    assert down.wait_for(lambda: bool(down.on(f"prov/v1/dev/{device}/down")), timeout=30)
    (answer,) = down.on(f"prov/v1/dev/{device}/down")
    assert (answer["type"], answer["re"]) == ("done", "again-1"), answer
    assert len(line.emulator.audit()["key_events"]) == mints_before


def test_a_ledger_that_has_the_gateway_or_its_devices_already_is_refused_and_nothing_is_copied(
    tmp_path: Path, ledger_url: str
) -> None:
    from provisioning.workflow import DeviceRecord, State

    def journal_with(path: Path, *devices: str) -> Path:
        journal = Journal.open(path, gateway_id="gwX")
        for device in devices:
            journal.put(DeviceRecord(device, f"hw-{device}", MODEL, device, State.MINTING, updated_at=1.0))
        journal.close()
        return path

    first = journal_with(tmp_path / "a.sqlite3", "D1", "D2")
    second = journal_with(tmp_path / "b.sqlite3", "D2", "D3")
    from agent.journal._migrate import migrate

    assert migrate(first, ledger_url, gateway_id="gw-a").done
    with pytest.raises(JournalError, match="D2 \\(by gw-a\\)"):
        migrate(second, ledger_url, gateway_id="gw-b")
    with pytest.raises(JournalError, match="migrated into this ledger already"):
        migrate(second, ledger_url, gateway_id="gw-a")
    reader = PostgresJournal.open_readonly(ledger_url)
    try:
        assert sorted(r.device_id for r in reader.all_records()) == ["D1", "D2"]
        assert reader.verify_audit()[1] is None
    finally:
        reader.close()


def test_an_agent_does_not_start_on_a_journal_being_migrated(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    Journal.open(path, gateway_id="gw1").close()
    held = journal_lock.try_exclusive(path)
    assert held is not None
    try:
        with pytest.raises(JournalError, match="being migrated"):
            Journal.open(path, gateway_id="gw1")
    finally:
        journal_lock.release(held)
    Journal.open(path, gateway_id="gw1").close()


def test_a_work_orders_total_moves_whole_even_with_charges_archived_by_retention(
    tmp_path: Path, ledger_url: str
) -> None:
    """The ceiling counts every key ever charged: the migrated total adds to the line's, archived charges included."""
    import sqlite3

    from agent.journal._migrate import migrate
    from provisioning.admission import Mint

    def journal_with(path: Path, gateway: str, *devices: str) -> Path:
        journal = Journal.open(path, gateway_id=gateway)
        for device in devices:
            journal.charge(Mint(device, MODEL, "WO-7", at=1.0))
        journal.close()
        return path

    migrate(journal_with(tmp_path / "a.sqlite3", "gw-a", "A1", "A2"), ledger_url, gateway_id="gw-a")
    second = journal_with(tmp_path / "b.sqlite3", "gw-b", "B1", "B2", "B3")
    with sqlite3.connect(second) as db:  # what retention does to an old charge: archived, the total kept
        db.execute("DELETE FROM admission_charges WHERE device_id = 'B1'")
    migrate(second, ledger_url, gateway_id="gw-b")
    reader = PostgresJournal.open_readonly(ledger_url)
    try:
        assert reader.charges_per_order() == {"WO-7": 5}
    finally:
        reader.close()
