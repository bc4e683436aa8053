"""The gateway's journal: device records and the upstream outbox in one SQLite file (WAL).

Every write commits with ``synchronous=FULL`` before it returns, so what the workflow
journals survives a power cut. An activation and its upstream report are written in one
transaction: a device is never activated without a report waiting to go out.

The connection is used from one thread at a time (the runtime gives the journal a
dedicated worker thread); a lock guards it anyway.

The audit trail (provisioning.audit) lives in the same file: :meth:`Journal.put` and
:meth:`Journal.complete` append the entries a state change implies (key minted, consumed,
abandoned) in the transaction that journals the change, so neither exists without the other.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from agent.journal import _audit_store as audit_store
from agent.journal import _lock as journal_lock
from agent.journal._archive import ArchiveWriter
from agent.journal._permissions import access_hint, share_with_operators
from agent.journal._protocol import Fence, JournalError, OutboxRow, RecentReport
from provisioning.admission import ChargeLimit, Mint
from provisioning.audit import AuditEntry, ChainBreak, StoredEntry, format_at, implied_entries, verify_chain
from provisioning.audit._chain import GENESIS_HASH, DetailValue
from provisioning.workflow import DeviceRecord, State

__all__ = ["SCHEMA_VERSION", "Journal", "JournalError", "OutboxRow", "PruneBatch", "RecentReport"]

SCHEMA_VERSION: Final = 5
STREAM_ROWS: Final = 1000  # rows read at once by a stream (export): memory per stream, not per journal
BUSY_TIMEOUT_MS: Final = 5000  # another process (status/export) may hold a read lock briefly

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY, hardware_id TEXT NOT NULL, model TEXT NOT NULL, tid TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL, attempt TEXT NOT NULL, key_fingerprint TEXT NOT NULL,
        minted_at REAL NOT NULL, result_due REAL NOT NULL, sdk_device_id TEXT NOT NULL, begin_day TEXT NOT NULL,
        expired_day TEXT NOT NULL, reconciled INTEGER NOT NULL, error TEXT NOT NULL, updated_at REAL NOT NULL
    );
    CREATE INDEX devices_state ON devices(state);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
        payload TEXT NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL, delivered_at REAL, last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX outbox_pending ON outbox(delivered_at, next_attempt_at);
    """,
    2: audit_store.AUDIT_SCHEMA,
    # Keys charged to the admission quotas (provisioning.admission), written before CreateAuthKey.
    3: """
    CREATE TABLE admission_charges (
        id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, model TEXT NOT NULL,
        work_order TEXT NOT NULL, at REAL NOT NULL
    );
    CREATE INDEX admission_charges_at ON admission_charges(at);
    CREATE INDEX admission_charges_order ON admission_charges(work_order);
    """,
    # Keys counted against max_attempts only once delivered; charges keyed on the sender too. Rows
    # written before count as delivered (as they were counted then).
    4: """
    ALTER TABLE devices ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN delivered_attempt TEXT NOT NULL DEFAULT '';
    UPDATE devices SET delivered = attempts, delivered_attempt = attempt;
    ALTER TABLE admission_charges ADD COLUMN sender TEXT NOT NULL DEFAULT '';
    """,
    # Costs that stay flat as the journal grows: the outbox's pending rows in partial indexes (the
    # drainer's query no longer scans the delivered ones or compares every pending row with every other).
    5: """
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_due ON outbox(next_attempt_at, id) WHERE delivered_at IS NULL;
    CREATE INDEX outbox_device_pending ON outbox(device_id, id) WHERE delivered_at IS NULL;
    DROP INDEX devices_state;
    CREATE INDEX devices_state_updated ON devices(state, updated_at);
    CREATE TABLE order_charges (work_order TEXT PRIMARY KEY, charged INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO order_charges SELECT work_order, COUNT(*) FROM admission_charges WHERE work_order != ''
        GROUP BY work_order;
    CREATE TABLE audit_checkpoint (
        one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL
    );  -- the last audit entry moved to an archive: the journal's trail continues from it
    """,
}
_COLUMNS: Final = tuple(field.name for field in fields(DeviceRecord))
_UNFINISHED: Final = (State.MINTING.value, State.PUSHED.value, State.UNSURE.value)
# Column names are our own constants, never input.
_SELECT_RECORDS: Final = f"SELECT {', '.join(_COLUMNS)} FROM devices"  # noqa: S608
_REPORT_FIELDS: Final = ("id", "device_id", "idempotency_key", "payload", "created_at", "attempts",
                         "next_attempt_at", "delivered_at", "last_error")  # fmt: skip
_CHARGE_FIELDS: Final = ("id", "device_id", "model", "work_order", "at", "sender")
# Pending rows in due order (index outbox_due), kept when no older pending row of the same device
# exists (one probe of outbox_device_pending).
_DUE_REPORTS: Final = (
    "SELECT o.id, o.device_id, o.idempotency_key, o.payload, o.attempts FROM outbox o INDEXED BY outbox_due "
    "WHERE o.delivered_at IS NULL AND o.next_attempt_at <= ? AND NOT EXISTS ("
    "  SELECT 1 FROM outbox p INDEXED BY outbox_device_pending "
    "  WHERE p.device_id = o.device_id AND p.delivered_at IS NULL AND p.id < o.id) "
    "ORDER BY o.next_attempt_at, o.id LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class PruneBatch:
    """Rows retention moves out of the journal: their archive lines, and what :meth:`Journal.prune` deletes."""

    lines: list[dict[str, Any]]
    checkpoint: tuple[int, str] | None  # the last audit entry moved (seq, hash); entries up to it go
    reports: tuple[int, ...]
    charges: tuple[int, ...]


class Journal:
    """Durable device records and outbox; open with :meth:`open`.

    A local journal (``shared`` False): this agent is its only writer, so the fences, limits and
    custody of :class:`~agent.journal.JournalStore` are kept in memory by the daemon and ignored here.
    """

    shared = False

    def __init__(self, connection: sqlite3.Connection, path: Path, gateway_id: str = "") -> None:
        self._db = connection
        self._lock = threading.RLock()  # re-entered by the methods run inside batch()
        self._in_batch = False
        self.path = path
        self.where = str(path)
        self.gateway_id = gateway_id  # written into every audit entry
        self._writer_lock: int | None = None  # the shared journal lock while open for writing (_lock)

    @classmethod
    def open(cls, path: Path, *, gateway_id: str = "") -> Journal:
        """Open (creating and migrating) the journal at ``path``; ``gateway_id`` signs its audit entries."""
        journal: Journal | None = None
        try:
            created = None if path.parent.exists() else path.parent
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            journal = cls(connection, path, gateway_id)
            journal._writer_lock = journal_lock.hold_shared(path)
            if journal._writer_lock is None:
                connection.close()
                raise JournalError(
                    f"journal {path} is being migrated into a shared ledger (provisioning-agent journal migrate); "
                    "once it is done, run the agent on the ledger it names"
                )
            journal._migrate()
            connection.execute("BEGIN IMMEDIATE")  # can we write? (a file restored as another user cannot)
            connection.execute("ROLLBACK")
        except (OSError, sqlite3.Error) as exc:
            if journal is not None:
                journal_lock.release(journal._writer_lock)
            raise JournalError(f"journal {path}: {exc}") from exc
        # -wal and -shm exist now (WAL mode, connection open): operators may read all three
        share_with_operators(_files_of(path), created_directory=created)
        return journal

    @classmethod
    def open_readonly(cls, path: Path) -> Journal:
        """Open an existing journal for reading only (export, status): safe beside a running agent.

        Needs read access to the journal and, while the agent runs, to its ``-wal`` and ``-shm``.
        With the agent stopped those two are gone and a reader that may not create them (an
        operator: the directory is the agent's) opens the file as immutable, which is exact when
        there is no ``-wal`` (everything is in the main file).
        """
        try:
            if not path.exists():
                raise JournalError(f"journal {path} does not exist (check --journal or the config's journal key)")
            wal_present = Path(f"{path}-wal").exists()
            with path.open("rb"):
                pass
        except PermissionError:
            raise JournalError(f"journal {path}: permission denied; {access_hint()}") from None
        except OSError as exc:
            raise JournalError(f"journal {path}: cannot read ({exc.strerror or exc})") from None
        try:
            connection = _connect_readonly(path, immutable=False)
        except sqlite3.Error as exc:
            if wal_present or not _is_readonly_refusal(exc):
                hint = f"; {access_hint()}" if _is_readonly_refusal(exc) or "unable to open" in str(exc) else ""
                raise JournalError(f"journal {path}: {exc}{hint}") from exc
            try:
                connection = _connect_readonly(path, immutable=True)
            except sqlite3.Error as again:
                raise JournalError(f"journal {path}: {again}") from again
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            connection.close()
            raise JournalError(f"journal {path} has schema {version}; this agent reads schema {SCHEMA_VERSION}")
        return cls(connection, path)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
            journal_lock.release(self._writer_lock)
            self._writer_lock = None

    def reader(self) -> Journal:
        """A read-only twin on a connection of its own (reads never wait for the writer in WAL mode)."""
        return Journal.open_readonly(self.path)

    # -- devices ----------------------------------------------------------------------------

    def get(self, device_id: str) -> DeviceRecord | None:
        """The record of a device, or None."""
        with self._lock:
            row = self._db.execute(_SELECT_RECORDS + " WHERE device_id = ?", (device_id,)).fetchone()
        return _record(row) if row else None

    def put(
        self,
        record: DeviceRecord,
        *,
        charge: Mint | None = None,
        pushed: dict[str, DetailValue] | None = None,
        fence: Fence | None = None,  # one writer: no lease to check
        limits: Sequence[ChargeLimit] = (),  # the in-memory admission is authoritative here
    ) -> int:
        """Insert or replace a record, durably; in the same transaction (one fsync, not two or three) also
        count a key against the quotas (``charge``; returns the charge's row id) and record the first
        push of the record's key (``pushed``: the entry's detail)."""
        with self._transaction() as db:
            self._audit_change(db, record)
            _upsert(db, record)
            if pushed is not None:
                self._append_push(db, record, record.updated_at, pushed)
            return 0 if charge is None else _insert_charge(db, charge)

    def delete(self, device_id: str, *, fence: Fence | None = None) -> None:
        """Forget a device that never received a key."""
        with self._transaction() as db:
            db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))

    def complete(self, record: DeviceRecord, report: dict[str, Any], *, now: float, fence: Fence | None = None) -> None:
        """Store an activated record and queue its report, in one transaction."""
        with self._transaction() as db:
            consumed: dict[str, DetailValue] = {"biz_type": str(report.get("biz_type", "")),
                                                "term": str(report.get("term", ""))}  # fmt: skip
            self._audit_change(db, record, consumed)
            _upsert(db, record)
            db.execute(
                "INSERT INTO outbox (device_id, idempotency_key, payload, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.device_id, report["idempotency_key"], json.dumps(report, ensure_ascii=False), now, now),
            )

    def unfinished(self) -> list[DeviceRecord]:
        """Devices between registration and a final state: what a restart resumes."""
        with self._lock:
            rows = self._db.execute(_SELECT_RECORDS + " WHERE state IN (?, ?, ?)", _UNFINISHED).fetchall()
        return [_record(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Devices by state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM devices GROUP BY state").fetchall()
        return dict(rows)

    def recent_reports(self, limit: int) -> list[RecentReport]:
        """The newest ``limit`` activation reports, newest first (by row id: no scan, whatever the size)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT device_id, payload, created_at, delivered_at FROM outbox ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [RecentReport(str(r[0]), json.loads(r[1]), float(r[2]), r[3]) for r in rows]

    def all_records(self) -> list[DeviceRecord]:
        """Every record, oldest first (tests; export streams :meth:`records`)."""
        return list(self.records())

    def records(
        self, *, state: State | None = None, since: float | None = None, until: float | None = None
    ) -> Iterator[DeviceRecord]:
        """Records (in ``state``, last written in [``since``, ``until``)), oldest first, read as they are used:
        memory stays flat whatever the journal's size. One snapshot for the whole iteration."""
        where, params = _record_filter(state, since, until, "?")
        with self._lock:
            cursor = self._db.execute(_SELECT_RECORDS + where + " ORDER BY updated_at", params)
        try:
            while True:
                with self._lock:
                    rows = cursor.fetchmany(STREAM_ROWS)
                if not rows:
                    return
                yield from map(_record, rows)
        finally:
            cursor.close()

    # -- outbox -----------------------------------------------------------------------------

    def due_reports(self, *, now: float, limit: int) -> list[OutboxRow]:
        """Undelivered reports due now, at most one per device (the oldest: order is kept per device).

        The most overdue first; each candidate costs one probe of the pending rows of its own
        device, so a batch costs O(limit log pending), not O(pending²).
        """
        with self._lock:
            rows = self._db.execute(_DUE_REPORTS, (now, limit)).fetchall()
        return sorted((OutboxRow(row[0], row[1], row[2], json.loads(row[3]), row[4]) for row in rows),
                      key=lambda row: row.id)  # fmt: skip

    def mark_delivered(self, row_id: int, *, now: float) -> None:
        """A sink acknowledged the report."""
        with self._transaction() as db:
            db.execute("UPDATE outbox SET delivered_at = ? WHERE id = ?", (now, row_id))

    def mark_retry(self, row_id: int, *, next_attempt_at: float, error: str) -> None:
        """Delivery failed; try again at ``next_attempt_at``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (next_attempt_at, error[:500], row_id),
            )

    def outbox_depth(self) -> int:
        """Reports not yet delivered."""
        with self._lock:
            (depth,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return int(depth)

    def next_report_due(self) -> float | None:
        """When the earliest undelivered report is due, or None."""
        with self._lock:
            (due,) = self._db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return float(due) if due is not None else None

    # -- admission charges (quota use survives a crash) -------------------------------------

    def charge(self, mint: Mint) -> int:
        """Count a key against the quotas, durably, before it is minted; returns the row id."""
        with self._transaction() as db:
            return _insert_charge(db, mint)

    def uncharge(self, row_id: int) -> None:
        """Give a charge back: no key was minted for it."""
        with self._transaction() as db:
            row = db.execute("SELECT work_order FROM admission_charges WHERE id = ?", (row_id,)).fetchone()
            db.execute("DELETE FROM admission_charges WHERE id = ?", (row_id,))
            if row is not None and row[0]:
                db.execute("UPDATE order_charges SET charged = charged - 1 WHERE work_order = ?", (row[0],))

    def charges_since(self, since: float) -> list[Mint]:
        """Charges at or after ``since``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device_id, model, work_order, at, sender FROM admission_charges WHERE at >= ? ORDER BY at",
                (since,),
            ).fetchall()
        return [Mint(str(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[0]), str(r[5])) for r in rows]

    def charges_per_order(self) -> dict[str, int]:
        """Keys ever charged to each work order."""
        with self._lock:
            rows = self._db.execute("SELECT work_order, charged FROM order_charges").fetchall()
        return {str(order): int(count) for order, count in rows}

    # -- audit trail ------------------------------------------------------------------------

    def audit(self, event: str, record: DeviceRecord, *, now: float, detail: dict[str, DetailValue]) -> AuditEntry:
        """Append an entry no state change implies (``pushed``, ``abandoned`` of a key lost unpushed)."""
        with self._transaction() as db:
            return self._append(db, event, record, record.attempt, record.key_fingerprint, now, detail)

    def record_push(
        self,
        record: DeviceRecord,
        *,
        now: float,
        detail: dict[str, DetailValue],
        fence: Fence | None = None,
    ) -> AuditEntry:
        """Append ``pushed`` for the record's attempt (``resend`` says whether it was pushed before)."""
        with self._transaction() as db:
            return self._append_push(db, record, now, detail)

    def _append_push(
        self, db: sqlite3.Connection, record: DeviceRecord, now: float, detail: dict[str, DetailValue]
    ) -> AuditEntry:
        resend = audit_store.has_event(db, record.device_id, record.attempt, "pushed")
        return self._append(db, "pushed", record, record.attempt, record.key_fingerprint, now,
                            detail | {"resend": resend})  # fmt: skip

    def abandon_unpushed(self, *, now: float) -> list[AuditEntry]:
        """At start-up: open attempts whose key never got a ``pushed`` entry lost it unused; record that."""
        entries = []
        with self._transaction() as db:
            rows = db.execute(_SELECT_RECORDS + " WHERE state IN (?, ?) AND attempt != ''", _UNFINISHED[1:]).fetchall()
            for record in map(_record, rows):
                pushed = audit_store.has_event(db, record.device_id, record.attempt, "pushed")
                minted = audit_store.has_event(db, record.device_id, record.attempt, "minted")  # not a pre-trail one
                if pushed or not minted or audit_store.closed(db, record.device_id, record.attempt):
                    continue
                detail: dict[str, DetailValue] = {"reason": "unpushed", "error": "key lost before its first push",
                                                  "was_pushed": False}  # fmt: skip
                entries.append(self._append(db, "abandoned", record, record.attempt, record.key_fingerprint, now,
                                            detail))  # fmt: skip
        return entries

    def attempt_pushed(self, device_id: str, attempt: str) -> bool:
        """The trail has a ``pushed`` entry for this attempt."""
        with self._lock:
            return audit_store.has_event(self._db, device_id, attempt, "pushed")

    def attempt_closed(self, device_id: str, attempt: str) -> bool:
        """The trail has a ``consumed`` or ``abandoned`` entry for this attempt."""
        with self._lock:
            return audit_store.closed(self._db, device_id, attempt)

    def audit_rows(self) -> list[StoredEntry]:
        """The trail as stored, in seq order (one consistent snapshot)."""
        with self._lock:
            return audit_store.read_rows(self._db)

    def audit_start(self) -> tuple[int, str]:
        """The entry the stored trail continues from: (0, genesis), or the last one pruned to an archive."""
        with self._lock:
            row = self._db.execute("SELECT seq, hash FROM audit_checkpoint").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def verify_audit(self) -> tuple[list[StoredEntry], ChainBreak | None]:
        """The rows and the first break of the chain (None when intact), from the prune checkpoint on."""
        with self._lock:  # one snapshot of checkpoint and rows
            self._db.execute("BEGIN")
            try:
                start, rows = self.audit_start(), self.audit_rows()
            finally:
                self._db.execute("COMMIT")
        return rows, verify_chain(rows, start=start)

    # -- retention (docs/operations.md, "Retention") -----------------------------------------

    def prune_span(self, *, before: float) -> tuple[float, float] | None:
        """When the oldest prunable row was written, and ``before``; None when nothing is older."""
        with self._lock:
            oldest = [
                value
                for (value,) in (
                    self._db.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone() or (None,),
                    self._db.execute("SELECT MIN(at) FROM admission_charges").fetchone(),
                )
                if value is not None and value < before
            ]
        first = self._audit_oldest()
        if first is not None and first < before:
            oldest.append(first)
        return (min(oldest), before) if oldest else None

    def prune_batch(self, *, before: float, archive: ArchiveWriter, limit: int) -> int:
        """Archive, then prune, one batch (:meth:`prunable`, ``archive``, :meth:`prune`); the rows moved (0: done)."""
        batch = self.prunable(before=before, limit=limit)
        if batch is None:
            return 0
        archive.append(batch.lines)
        return self.prune(batch)

    def prunable(self, *, before: float, limit: int) -> PruneBatch | None:
        """At most ``limit`` rows of each kind written before ``before`` that may leave the journal; None: none.

        The audit trail's oldest entries (a prefix of the chain, so one checkpoint continues it),
        delivered reports and quota charges; nothing of a device in flight or with a report to
        send. Device records stay: a device that comes back is answered from its record, never
        licensed twice. Those rows never change, so the batch can be archived (off the journal's
        thread) before :meth:`prune` deletes it.
        """
        with self._transaction() as db:
            entries = self._prunable_entries(db, before, limit)
            reports = db.execute(
                "SELECT id, device_id, idempotency_key, payload, created_at, attempts, next_attempt_at, delivered_at, "
                "last_error FROM outbox WHERE delivered_at IS NOT NULL AND created_at < ? ORDER BY id LIMIT ?",
                (before, limit),
            ).fetchall()
            charges = db.execute(
                "SELECT id, device_id, model, work_order, at, sender FROM admission_charges WHERE at < ? "
                "ORDER BY at LIMIT ?",
                (before, limit),
            ).fetchall()
        if not (entries or reports or charges):
            return None
        lines = (
            [{"kind": "audit", "seq": r[0], "entry": r[1], "prev_hash": r[2], "hash": r[3]} for r in entries]
            + [dict(zip(_REPORT_FIELDS, r, strict=True)) | {"kind": "report"} for r in reports]
            + [dict(zip(_CHARGE_FIELDS, r, strict=True)) | {"kind": "charge"} for r in charges]
        )
        checkpoint = (int(entries[-1][0]), str(entries[-1][3])) if entries else None
        return PruneBatch(lines, checkpoint, tuple(r[0] for r in reports), tuple(r[0] for r in charges))

    def prune(self, batch: PruneBatch) -> int:
        """Delete a batch :meth:`prunable` chose, once it is archived; the rows deleted."""
        with self._transaction() as db:
            if batch.checkpoint is not None:
                db.execute("DELETE FROM audit WHERE seq <= ?", (batch.checkpoint[0],))
                db.execute(
                    "INSERT INTO audit_checkpoint (one, seq, hash) VALUES (1, ?, ?) "
                    "ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    batch.checkpoint,
                )
            db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id in batch.reports])
            db.executemany("DELETE FROM admission_charges WHERE id = ?", [(row_id,) for row_id in batch.charges])
        return len(batch.lines)

    def _prunable_entries(self, db: sqlite3.Connection, before: float, limit: int) -> list[tuple[Any, ...]]:
        """The oldest entries, in seq order, up to the first one that is recent or belongs to a device
        still in flight or with a report to send (its trail is still read by the workflow); never the
        newest entry (the next one is chained to it)."""
        (bound,) = db.execute(
            "SELECT MIN(seq) FROM ("  # CROSS JOIN: SQLite's word for "this order" (the few first, then audit)
            "  SELECT MIN(a.seq) AS seq FROM devices d CROSS JOIN audit a ON a.device_id = d.device_id "
            "  WHERE d.state IN (?, ?, ?) "
            "  UNION ALL SELECT MIN(a.seq) FROM outbox o CROSS JOIN audit a ON a.device_id = o.device_id "
            "  WHERE o.delivered_at IS NULL)",
            _UNFINISHED,
        ).fetchone()
        (last,) = db.execute("SELECT MAX(seq) FROM audit").fetchone()  # stays: the next entry chains to it
        cutoff = format_at(before)
        taken = []
        for row in db.execute("SELECT seq, entry, prev_hash, hash FROM audit ORDER BY seq LIMIT ?", (limit,)):
            if row[0] >= min(last, bound if bound is not None else last) or _entry_at(row[1]) >= cutoff:
                break
            taken.append(row)
        return taken

    def _audit_oldest(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT entry FROM audit ORDER BY seq LIMIT 1").fetchone()
        if row is None:
            return None
        at = _entry_at(row[0])
        try:
            return datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return None

    def _audit_change(
        self, db: sqlite3.Connection, record: DeviceRecord, consumed: dict[str, DetailValue] | None = None
    ) -> None:
        row = db.execute(_SELECT_RECORDS + " WHERE device_id = ?", (record.device_id,)).fetchone()
        implied = implied_entries(
            _record(row) if row else None,
            record,
            closed=lambda attempt: audit_store.closed(db, record.device_id, attempt),
            pushed=lambda attempt: audit_store.has_event(db, record.device_id, attempt, "pushed"),
            consumed_detail=consumed,
        )
        for entry in implied:
            self._append(db, entry.event, record, entry.attempt, entry.key_fingerprint, record.updated_at, entry.detail)

    def _append(
        self,
        db: sqlite3.Connection,
        event: str,
        record: DeviceRecord,
        attempt: str,
        fingerprint: str,
        now: float,
        detail: dict[str, DetailValue],
    ) -> AuditEntry:
        return audit_store.append(
            db, at=format_at(now), event=event, device_id=record.device_id, model=record.model, attempt=attempt,
            key_fingerprint=fingerprint, gateway_id=self.gateway_id, detail=detail,
        )  # fmt: skip

    # -- leases and custody: one agent, nothing shared ---------------------------------------

    def renew(self, fences: Sequence[Fence], custody: Sequence[str]) -> set[str]:
        """Every lease is this agent's own: none is lost."""
        return set()

    def key_custodian(self, device_id: str, attempt: str) -> tuple[str, float]:
        """No other agent holds keys."""
        return "", 0.0

    def claim(self, fence: Fence) -> None:
        """Nothing to claim: one agent writes this journal (its per-device lock serves one flow at a time)."""

    def release(self, fence: Fence) -> None:
        """Nothing to release."""

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[None]:
        """Group commit: every call made inside is durable at one COMMIT (one fsync) when the block ends.

        Each call still runs in its own savepoint, so one that fails leaves the others intact.
        Nothing done inside may be acted on (a key pushed, an answer sent) before the block ends.

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL`` for this
        transaction): it survives a crash of the process but maybe not a power cut, and the next
        durable commit makes it durable too. Only for writes that are redone when lost, such as
        marking a report delivered (a report sent again is deduplicated by its idempotency key).
        """
        with self._lock:
            try:
                if not durable:
                    self._db.execute("PRAGMA synchronous = NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                self._in_batch = True
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._in_batch = False
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._in_batch:  # part of a group commit: undo only this call's writes on failure
                try:
                    self._db.execute("SAVEPOINT call")
                    try:
                        yield self._db
                    except BaseException:
                        self._db.execute("ROLLBACK TO call")
                        raise
                    finally:
                        self._db.execute("RELEASE call")
                except sqlite3.Error as exc:
                    raise JournalError(f"journal {self.path}: {exc}") from exc
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema {version}, newer than this agent's {SCHEMA_VERSION}; upgrade the agent"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._db.executescript(f"BEGIN IMMEDIATE; {_MIGRATIONS[target]} PRAGMA user_version = {target}; COMMIT;")


def _files_of(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def _connect_readonly(path: Path, *, immutable: bool) -> sqlite3.Connection:
    """A read-only connection that has read the schema version (so a refusal shows here, not later)."""
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA user_version").fetchone()
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # reads a page: WAL set-up happens here
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def _is_readonly_refusal(exc: sqlite3.Error) -> bool:
    """SQLite could not set up WAL reading because it may not create ``-shm``/``-wal`` here."""
    text = str(exc)
    return "readonly database" in text or "unable to open database file" in text


def _upsert(db: sqlite3.Connection, record: DeviceRecord) -> None:
    values = [getattr(record, name) for name in _COLUMNS]
    values[_COLUMNS.index("state")] = record.state.value
    values[_COLUMNS.index("reconciled")] = int(record.reconciled)
    placeholders = ", ".join("?" for _ in _COLUMNS)
    db.execute(f"INSERT OR REPLACE INTO devices ({', '.join(_COLUMNS)}) VALUES ({placeholders})", values)  # noqa: S608


def _record(row: tuple[Any, ...]) -> DeviceRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["state"] = State(values["state"])
    values["reconciled"] = bool(values["reconciled"])
    return DeviceRecord(**values)


def _entry_at(text: str) -> str:
    """An audit entry's ``at`` (ISO UTC, fixed width: compares as text); "" when unreadable."""
    try:
        value = json.loads(text)
    except ValueError:
        return ""
    at = value.get("at") if isinstance(value, dict) else None
    return at if isinstance(at, str) else ""


def _record_filter(
    state: State | None, since: float | None, until: float | None, mark: str
) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (index devices_state_updated) and its parameters; ``mark`` is the driver's placeholder."""
    conditions: list[str] = []
    params: list[Any] = []
    for condition, value in (
        ("state = ", state.value if state else None),
        ("updated_at >= ", since),
        ("updated_at < ", until),
    ):
        if value is not None:
            conditions.append(condition + mark)
            params.append(value)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), tuple(params)


def _insert_charge(db: sqlite3.Connection, mint: Mint) -> int:
    cursor = db.execute(
        "INSERT INTO admission_charges (device_id, model, work_order, at, sender) VALUES (?, ?, ?, ?, ?)",
        (mint.device_id, mint.model, mint.work_order, mint.at, mint.sender),
    )
    if mint.work_order:  # the ceiling's count, kept beside the charges (read at start-up, never summed)
        db.execute(
            "INSERT INTO order_charges (work_order, charged) VALUES (?, 1) "
            "ON CONFLICT (work_order) DO UPDATE SET charged = charged + 1",
            (mint.work_order,),
        )
    return int(cursor.lastrowid or 0)
