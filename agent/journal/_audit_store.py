"""The trail's table in the journal's SQLite file; every function runs inside the caller's transaction.

The journal appends an entry in the same transaction as the state change that implies it, so
a crash leaves both or neither. ``event``, ``device_id`` and ``attempt`` are copies of the
hashed text for queries; :func:`read_rows` hands the verifier the text itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Final

from provisioning.audit._chain import GENESIS_HASH, AuditEntry, DetailValue, StoredEntry, canonical_bytes, chain_hash

__all__ = ["AUDIT_SCHEMA", "append", "closed", "has_event", "read_rows"]

AUDIT_SCHEMA: Final = """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, event TEXT NOT NULL, device_id TEXT NOT NULL, attempt TEXT NOT NULL,
        entry TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    CREATE INDEX audit_attempt ON audit(device_id, attempt);
"""


def append(
    db: sqlite3.Connection,
    *,
    at: str,
    event: str,
    device_id: str,
    model: str,
    attempt: str,
    key_fingerprint: str,
    gateway_id: str,
    detail: Mapping[str, DetailValue],
) -> AuditEntry:
    """Chain one entry after the last one (the caller holds a write transaction)."""
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    entry = AuditEntry(seq, at, event, device_id, model, attempt, key_fingerprint, gateway_id, dict(detail))
    canonical = canonical_bytes(entry)
    db.execute(
        "INSERT INTO audit (seq, event, device_id, attempt, entry, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, event, device_id, attempt, canonical.decode("utf-8"), prev_hash, chain_hash(prev_hash, canonical)),
    )
    return entry


def closed(db: sqlite3.Connection, device_id: str, attempt: str) -> bool:
    """The attempt already has its consumed or abandoned entry."""
    row = db.execute(
        "SELECT 1 FROM audit WHERE device_id = ? AND attempt = ? AND event IN ('consumed', 'abandoned') LIMIT 1",
        (device_id, attempt),
    ).fetchone()
    return row is not None


def has_event(db: sqlite3.Connection, device_id: str, attempt: str, event: str) -> bool:
    """The attempt has an entry of this kind (``pushed``: its key was handed to a transport)."""
    row = db.execute(
        "SELECT 1 FROM audit WHERE device_id = ? AND attempt = ? AND event = ? LIMIT 1", (device_id, attempt, event)
    ).fetchone()
    return row is not None


def read_rows(db: sqlite3.Connection) -> list[StoredEntry]:
    """Every row in seq order, as stored."""
    rows = db.execute("SELECT seq, entry, prev_hash, hash FROM audit ORDER BY seq").fetchall()
    return [StoredEntry(row[0], row[1], row[2], row[3]) for row in rows]
