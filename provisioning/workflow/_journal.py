"""The gateway's journal: device records and the upstream outbox in one SQLite file (WAL).

Every write commits with ``synchronous=FULL`` before it returns, so what the workflow
journals survives a power cut. An activation and its upstream report are written in one
transaction: a device is never activated without a report waiting to go out.

The connection is used from one thread at a time (the runtime gives the journal a
dedicated worker thread); a lock guards it anyway.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from provisioning.workflow._state import DeviceRecord, State

__all__ = ["SCHEMA_VERSION", "Journal", "JournalError", "OutboxRow"]

SCHEMA_VERSION: Final = 1
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
}
_COLUMNS: Final = tuple(field.name for field in fields(DeviceRecord))
_UNFINISHED: Final = (State.MINTING.value, State.PUSHED.value, State.UNSURE.value)
# Column names are our own constants, never input.
_SELECT_RECORDS: Final = f"SELECT {', '.join(_COLUMNS)} FROM devices"  # noqa: S608


class JournalError(Exception):
    """The journal cannot be opened or written (disk full, corrupt file, newer schema)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One report waiting for delivery."""

    id: int
    device_id: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int


class Journal:
    """Durable device records and outbox; open with :meth:`open`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating and migrating) the journal at ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            journal = cls(connection, path)
            journal._migrate()
            connection.execute("BEGIN IMMEDIATE")  # can we write? (a file restored as another user cannot)
            connection.execute("ROLLBACK")
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"journal {path}: {exc}") from exc
        return journal

    @classmethod
    def open_readonly(cls, path: Path) -> Journal:
        """Open an existing journal for reading only (export, status): safe beside a running agent."""
        if not path.exists():
            raise JournalError(f"journal {path} does not exist")
        try:
            connection = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            (version,) = connection.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {path}: {exc}") from exc
        if version != SCHEMA_VERSION:
            raise JournalError(f"journal {path} has schema {version}; this agent reads schema {SCHEMA_VERSION}")
        return cls(connection, path)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    # -- devices ----------------------------------------------------------------------------

    def get(self, device_id: str) -> DeviceRecord | None:
        """The record of a device, or None."""
        with self._lock:
            row = self._db.execute(_SELECT_RECORDS + " WHERE device_id = ?", (device_id,)).fetchone()
        return _record(row) if row else None

    def put(self, record: DeviceRecord) -> None:
        """Insert or replace a record, durably."""
        with self._transaction() as db:
            _upsert(db, record)

    def delete(self, device_id: str) -> None:
        """Forget a device that never received a key."""
        with self._transaction() as db:
            db.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))

    def complete(self, record: DeviceRecord, report: dict[str, Any], *, now: float) -> None:
        """Store an activated record and queue its report, in one transaction."""
        with self._transaction() as db:
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

    def all_records(self) -> list[DeviceRecord]:
        """Every record, oldest first (export, tests)."""
        with self._lock:
            rows = self._db.execute(_SELECT_RECORDS + " ORDER BY updated_at").fetchall()
        return [_record(row) for row in rows]

    # -- outbox -----------------------------------------------------------------------------

    def due_reports(self, *, now: float, limit: int) -> list[OutboxRow]:
        """Undelivered reports due now, at most one per device (the oldest: order is kept per device)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.id, o.device_id, o.idempotency_key, o.payload, o.attempts FROM outbox o "
                "WHERE o.delivered_at IS NULL AND o.next_attempt_at <= ? AND o.id = ("
                "  SELECT MIN(id) FROM outbox p WHERE p.device_id = o.device_id AND p.delivered_at IS NULL) "
                "ORDER BY o.id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [OutboxRow(row[0], row[1], row[2], json.loads(row[3]), row[4]) for row in rows]

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

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
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
