"""``journal migrate``: a gateway's SQLite journal copied into the shared ledger (docs/cluster.md).

Everything the journal holds moves: device records (a device licensed before the migration is
``done`` when it registers again, whichever gateway it reaches), the admission charges (quotas
and work-order ceilings count them), the outbox (reports not yet delivered are delivered from
the ledger) and the audit trail. The trail cannot keep its hashes: each entry is numbered and
chained again after the ledger's last one. A ``migrated`` entry heads the copied entries and
names the source file and its head (last seq and hash), so the old chain stays checkable on its
own (``audit verify --journal OLD --anchor SEQ:HASH``) and is bound to the new one.

The copy is one transaction: all of it or nothing. It refuses a journal an agent still has open
(the journal lock), a source trail that is broken, and a ledger that already holds data of that
gateway or one of its devices; a second run of the same migration does nothing and says so.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.journal import _lock as journal_lock
from agent.journal._protocol import JournalError
from agent.journal._sqlite import Journal
from provisioning.audit import AuditEntry

__all__ = ["Migration", "migrate"]


@dataclass(frozen=True, slots=True)
class Migration:
    """What a migration did (``done`` False: this journal was migrated into the ledger before)."""

    source: str
    target: str
    gateway_id: str
    done: bool
    records: int
    charges: int
    reports: int
    entries: int
    source_head: tuple[int, str]
    head_seq: int  # the ``migrated`` entry's seq in the ledger (0 when nothing was done)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "gateway_id": self.gateway_id, "done": self.done,
                "records": self.records, "charges": self.charges, "reports": self.reports, "entries": self.entries,
                "source_head_seq": self.source_head[0], "source_head_hash": self.source_head[1],
                "head_seq": self.head_seq}  # fmt: skip


def migrate(source: Path, target: str, *, gateway_id: str) -> Migration:
    """Copy the journal at ``source`` into the ledger at ``target`` as gateway ``gateway_id``."""
    if not source.exists():
        raise JournalError(f"journal {source} does not exist (give --journal, or --config naming the agent's)")
    held = journal_lock.try_exclusive(source)
    if held is None:
        raise JournalError(f"an agent has journal {source} open: stop it first (systemctl stop provisioning-agent)")
    try:
        return _copy(source, target, gateway_id)
    finally:
        journal_lock.release(held)


def _copy(source: Path, target: str, gateway_id: str) -> Migration:
    journal = Journal.open_readonly(source)
    try:
        records = journal.all_records()
        charges = journal.charges_since(0.0)
        order_totals = journal.charges_per_order()
        rows, broken = journal.verify_audit()
    finally:
        journal.close()
    if broken is not None:
        raise JournalError(
            f"journal {source}: its audit trail is broken at seq {broken.seq} ({broken.kind}: {broken.reason}); "
            "a migration would vouch for it: investigate first (docs/audit.md)"
        )
    entries = [AuditEntry.from_dict(json.loads(row.text)) for row in rows]
    head = (rows[-1].row, rows[-1].hash) if rows else (0, "")
    reports = _reports(source)
    from agent.journal._postgres import PostgresJournal  # psycopg is an optional extra

    ledger = PostgresJournal.open(target, gateway_id=gateway_id)
    try:
        entry = ledger.import_journal(source=str(source), records=records, charges=charges,
                                      order_totals=order_totals, reports=reports,
                                      entries=entries, source_head=head, now=time.time())  # fmt: skip
    finally:
        ledger.close()
    return Migration(str(source), ledger.where, gateway_id, entry is not None, len(records), len(charges),
                     len(reports), len(entries), head, entry.seq if entry is not None else 0)  # fmt: skip


def _reports(source: Path) -> list[tuple[Any, ...]]:
    """The outbox as it stands, delivered reports included (the station view and the MES's history)."""
    connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        return connection.execute(
            "SELECT device_id, idempotency_key, payload, created_at, attempts, next_attempt_at, delivered_at, "
            "last_error FROM outbox ORDER BY id"
        ).fetchall()
    except sqlite3.Error as exc:
        raise JournalError(f"journal {source}: {exc}") from exc
    finally:
        connection.close()
