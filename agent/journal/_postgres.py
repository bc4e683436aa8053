"""The shared ledger: the journal in PostgreSQL, for several agents on one line (docs/cluster.md).

How it works
------------
The same records, outbox, charges and audit trail as the SQLite journal, in one database that
every agent of the line writes. What one process guaranteed by being alone is made explicit:

- **Leases and fencing tokens.** A flow's first write for a device takes the device's lease
  (``leases`` row: holder, token, expiry by the database's clock), but only if the lease is
  free or lapsed and the device's record is still the one the flow decided on; the token goes
  up by one at every take. Every later write of that flow must show the same token (``SELECT
  ... FOR UPDATE NOWAIT`` on the lease row, in the write's transaction) and renews the lease;
  a moved token raises :class:`Fenced`. The daemon renews the leases of long flows in bulk.
- **Key custody.** The write that records a key's push also records which agent holds the
  key; while that agent keeps renewing it, another agent tells the device to wait instead of
  minting a second key.
- **One lock for money and the trail.** A write that charges a key or appends to the audit
  trail first takes one transaction-scoped advisory lock (``LEDGER_LOCK``). Under it the
  charge is counted against every global limit (line, model, sender, work order) and the trail's
  next entry is chained to the last one, so the trail is one chain in one total order and no
  two agents can both take the last key of a quota. The lock is held to the COMMIT: writes of
  the whole cluster that touch money or the trail are serialised (measured in
  docs/performance.md); reads and lease renewals never take it.
- **Durable**: every write commits with ``synchronous_commit`` as the server sets it (on, and
  on a standby too when the database is replicated: docs/cluster.md); outbox bookkeeping
  commits with it off.

Every psycopg error is translated at this boundary: connection trouble to
:class:`LedgerUnavailable` (a retry later can succeed), the rest to :class:`JournalError`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors

from agent.journal._protocol import (
    DEFAULT_LEASE_S,
    Fence,
    Fenced,
    JournalError,
    LedgerUnavailable,
    LimitReached,
    OutboxRow,
    RecentReport,
    clock_margin,
    redact_url,
)
from provisioning.admission import ChargeLimit, Mint
from provisioning.audit import AuditEntry, ChainBreak, StoredEntry, format_at, implied_entries, verify_chain
from provisioning.audit._chain import GENESIS_HASH, DetailValue, canonical_bytes, chain_hash
from provisioning.workflow import DeviceRecord, State

__all__ = ["LEDGER_SCHEMA_VERSION", "PostgresJournal"]

# The ledger's own numbering: 1 held what SQLite schema 4 holds, plus leases; 2 = SQLite schema 5.
LEDGER_SCHEMA_VERSION: Final = 2
LEDGER_LOCK: Final = 0x70726F76_6C656467  # "provledg": charges and audit appends, cluster-wide
MIGRATION_LOCK: Final = 0x70726F76_6D696772  # "provmigr": one agent migrates, the others wait
STREAM_ROWS: Final = 1000  # rows fetched at once by a stream (export): memory per stream, not per ledger
REPORT_CLAIM_S: Final = 60.0  # a report taken by one agent's drainer is left to it this long
CONNECT_TIMEOUT_S: Final = 5  # a ledger that does not answer a connect in this long is unavailable
# A silent network (no RST, no answer) is noticed within about this long (libpq tcp_user_timeout and keepalives).
TCP_USER_TIMEOUT_MS: Final = 10_000
SESSION_OPTIONS: Final = (
    "-c idle_in_transaction_session_timeout=10000"  # a paused (SIGSTOP) agent frees its locks within 10 s
    " -c lock_timeout=5000"  # never wait long behind another agent's lock
    " -c statement_timeout=30000"  # a runaway query fails instead of holding the line
)

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY, hardware_id TEXT NOT NULL, model TEXT NOT NULL, tid TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL, attempt TEXT NOT NULL, key_fingerprint TEXT NOT NULL,
        minted_at DOUBLE PRECISION NOT NULL, result_due DOUBLE PRECISION NOT NULL, sdk_device_id TEXT NOT NULL,
        begin_day TEXT NOT NULL, expired_day TEXT NOT NULL, reconciled BOOLEAN NOT NULL, error TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, delivered INTEGER NOT NULL, delivered_attempt TEXT NOT NULL,
        gateway_id TEXT NOT NULL  -- the agent that wrote the record last
    );
    CREATE INDEX devices_state ON devices(state);
    CREATE INDEX devices_unfinished ON devices(gateway_id) WHERE state IN ('minting', 'pushed', 'unsure');
    CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL, delivered_at DOUBLE PRECISION, last_error TEXT NOT NULL DEFAULT '',
        gateway_id TEXT NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox(next_attempt_at) WHERE delivered_at IS NULL;
    CREATE INDEX outbox_device ON outbox(device_id) WHERE delivered_at IS NULL;
    CREATE TABLE admission_charges (
        id BIGSERIAL PRIMARY KEY, device_id TEXT NOT NULL, model TEXT NOT NULL, work_order TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL, sender TEXT NOT NULL, gateway_id TEXT NOT NULL
    );
    CREATE INDEX admission_charges_at ON admission_charges(at);
    CREATE INDEX admission_charges_model ON admission_charges(model, at);
    CREATE INDEX admission_charges_sender ON admission_charges(sender, at);
    CREATE INDEX admission_charges_order ON admission_charges(work_order);
    CREATE TABLE audit (
        seq BIGINT PRIMARY KEY, event TEXT NOT NULL, device_id TEXT NOT NULL, attempt TEXT NOT NULL,
        gateway_id TEXT NOT NULL, entry TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
    );
    CREATE INDEX audit_attempt ON audit(device_id, attempt);
    CREATE TABLE leases (
        device_id TEXT PRIMARY KEY, holder TEXT NOT NULL, token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,  -- the database's clock, epoch seconds
        custodian TEXT NOT NULL DEFAULT '', custody_attempt TEXT NOT NULL DEFAULT '',
        custody_until DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX leases_custodian ON leases(custodian) WHERE custodian != '';
    """,
    # Costs that stay flat as the ledger grows (as SQLite schema 5): pending reports in due order and
    # per device, each in a partial index the drainer's claim walks without comparing pending rows pairwise.
    2: """
    DROP INDEX outbox_pending;
    DROP INDEX outbox_device;
    CREATE INDEX outbox_due ON outbox(next_attempt_at, id) WHERE delivered_at IS NULL;
    CREATE INDEX outbox_device_pending ON outbox(device_id, id) WHERE delivered_at IS NULL;
    DROP INDEX devices_state;
    CREATE INDEX devices_state_updated ON devices(state, updated_at);
    CREATE TABLE order_charges (work_order TEXT PRIMARY KEY, charged BIGINT NOT NULL);
    INSERT INTO order_charges SELECT work_order, COUNT(*) FROM admission_charges WHERE work_order != ''
        GROUP BY work_order;
    """,
}
_COLUMNS: Final = tuple(field.name for field in fields(DeviceRecord))
_UNFINISHED: Final = [State.MINTING.value, State.PUSHED.value, State.UNSURE.value]
_SELECT_RECORDS: Final = f"SELECT {', '.join(_COLUMNS)} FROM devices"  # noqa: S608 - our own column names
_MINTED_HERE: Final = (  # open attempts whose key this agent minted
    " d WHERE state = ANY(%s) AND attempt != '' AND EXISTS (SELECT 1 FROM audit a WHERE a.device_id = d.device_id "
    "AND a.attempt = d.attempt AND a.event = 'minted' AND a.gateway_id = %s)"
)
# Pending rows in due order (outbox_due), each the oldest of its device (outbox_device_pending).
_CLAIM_REPORTS: Final = (
    "UPDATE outbox SET next_attempt_at = %s WHERE id IN ("
    "  SELECT o.id FROM outbox o WHERE o.delivered_at IS NULL AND o.next_attempt_at <= %s AND NOT EXISTS ("
    "    SELECT 1 FROM outbox p WHERE p.device_id = o.device_id AND p.delivered_at IS NULL AND p.id < o.id) "
    "  ORDER BY o.next_attempt_at, o.id LIMIT %s FOR UPDATE SKIP LOCKED) "
    "RETURNING id, device_id, idempotency_key, payload, attempts"
)
_NOW: Final = "extract(epoch FROM clock_timestamp())"  # the database's clock: one for every agent
_UPSERT: Final = (
    f"INSERT INTO devices ({', '.join(_COLUMNS)}, gateway_id) VALUES ({', '.join('%s' for _ in _COLUMNS)}, %s) "  # noqa: S608
    f"ON CONFLICT (device_id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in (*_COLUMNS[1:], "gateway_id"))
)


class PostgresJournal:
    """The journal of :class:`~agent.journal.JournalStore` in a PostgreSQL database shared by several agents."""

    shared = True

    def __init__(self, url: str, *, gateway_id: str = "", lease_s: float = DEFAULT_LEASE_S, readonly: bool = False):
        self.url = url
        self.where = redact_url(url)
        self.gateway_id = gateway_id
        self.lease_s = lease_s
        self.readonly = readonly
        self._lock = threading.RLock()
        self._in_batch = False
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None

    @classmethod
    def open(cls, url: str, *, gateway_id: str = "", lease_s: float = DEFAULT_LEASE_S) -> PostgresJournal:
        """Connect (creating and migrating the schema under a lock, once for all agents)."""
        journal = cls(url, gateway_id=gateway_id, lease_s=lease_s)
        journal._connection()
        journal._migrate()
        return journal

    @classmethod
    def open_readonly(cls, url: str) -> PostgresJournal:
        """A read-only session (export, audit, status): safe beside running agents."""
        journal = cls(url, readonly=True)
        journal._check_version()
        return journal

    def reader(self) -> PostgresJournal:
        """A second session for reads, lease renewals and custody (never queued behind the writer's batches)."""
        twin = PostgresJournal(self.url, gateway_id=self.gateway_id, lease_s=self.lease_s)
        twin._connection()
        return twin

    def close(self) -> None:
        """Close the session."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- devices ----------------------------------------------------------------------------

    def get(self, device_id: str) -> DeviceRecord | None:
        """The record of a device, or None."""
        with self._read() as db:
            row = db.execute(_SELECT_RECORDS + " WHERE device_id = %s", (device_id,)).fetchone()
        return _record(row) if row else None

    def put(
        self,
        record: DeviceRecord,
        *,
        charge: Mint | None = None,
        pushed: dict[str, DetailValue] | None = None,
        fence: Fence | None = None,
        limits: Sequence[ChargeLimit] = (),
    ) -> int:
        """Write a record durably under ``fence``; with ``charge``, count it against ``limits`` first (under
        the ledger lock) and write it; with ``pushed``, append the push and take the key's custody."""
        with self._fenced(fence, record.device_id) as db:
            self._lock_ledger(db)
            if charge is not None:
                _check_limits(db, charge, limits)
            self._audit_change(db, record)
            self._upsert(db, record)
            if pushed is not None:
                self._append_push(db, record, record.updated_at, pushed)
                self._take_custody(db, record)
            return 0 if charge is None else self._insert_charge(db, charge)

    def delete(self, device_id: str, *, fence: Fence | None = None) -> None:
        """Forget a device that never received a key."""
        with self._fenced(fence, device_id) as db:
            db.execute("DELETE FROM devices WHERE device_id = %s", (device_id,))

    def complete(self, record: DeviceRecord, report: dict[str, Any], *, now: float, fence: Fence | None = None) -> None:
        """Store an activated record and queue its report, in one transaction."""
        with self._fenced(fence, record.device_id) as db:
            self._lock_ledger(db)
            consumed: dict[str, DetailValue] = {"biz_type": str(report.get("biz_type", "")),
                                                "term": str(report.get("term", ""))}  # fmt: skip
            self._audit_change(db, record, consumed)
            self._upsert(db, record)
            db.execute(
                "INSERT INTO outbox (device_id, idempotency_key, payload, created_at, next_attempt_at, gateway_id) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (record.device_id, report["idempotency_key"], json.dumps(report, ensure_ascii=False), now, now,
                 self.gateway_id),
            )  # fmt: skip

    def unfinished(self) -> list[DeviceRecord]:
        """This agent's devices between registration and a final state (others resume their own)."""
        with self._read() as db:
            rows = db.execute(
                _SELECT_RECORDS + " WHERE state = ANY(%s) AND gateway_id = %s", (_UNFINISHED, self.gateway_id)
            ).fetchall()
        return [_record(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Devices by state (the whole line)."""
        with self._read() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM devices GROUP BY state").fetchall()
        return {str(state): int(count) for state, count in rows}

    def all_records(self) -> list[DeviceRecord]:
        """Every record of the line, oldest first (tests; export streams :meth:`records`)."""
        return list(self.records())

    def records(
        self, *, state: State | None = None, since: float | None = None, until: float | None = None
    ) -> Iterator[DeviceRecord]:
        """Records of the line (in ``state``, last written in [``since``, ``until``)), oldest first, through a
        server-side cursor: memory stays flat whatever the ledger's size. One snapshot for the whole iteration."""
        conditions: list[str] = []
        params: list[Any] = []
        for condition, value in (("state = %s", state.value if state else None), ("updated_at >= %s", since),
                                 ("updated_at < %s", until)):  # fmt: skip
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        with self._read() as db, db.cursor(name="records") as cursor:
            cursor.itersize = STREAM_ROWS
            cursor.execute(_SELECT_RECORDS + where + " ORDER BY updated_at", params)
            yield from map(_record, cursor)

    def recent_reports(self, limit: int) -> list[RecentReport]:
        """The newest ``limit`` activation reports of the line, newest first (the station view)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT device_id, payload, created_at, delivered_at FROM outbox ORDER BY id DESC LIMIT %s", (limit,)
            ).fetchall()
        return [RecentReport(str(r[0]), json.loads(r[1]), float(r[2]), r[3]) for r in rows]

    # -- outbox -----------------------------------------------------------------------------

    def due_reports(self, *, now: float, limit: int) -> list[OutboxRow]:
        """Take (for REPORT_CLAIM_S) undelivered reports due now, the oldest per device; no other agent gets them.

        The most overdue first; each candidate costs one probe of its device's pending rows (O(limit log
        pending) a batch). A row another agent is taking is skipped, not waited for.
        """
        with self._transaction() as db:
            rows = db.execute(_CLAIM_REPORTS, (now + REPORT_CLAIM_S, now, limit)).fetchall()
        return sorted((OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows), key=lambda r: r.id)

    def mark_delivered(self, row_id: int, *, now: float) -> None:
        """A sink acknowledged the report."""
        with self._transaction() as db:
            db.execute("UPDATE outbox SET delivered_at = %s WHERE id = %s", (now, row_id))

    def mark_retry(self, row_id: int, *, next_attempt_at: float, error: str) -> None:
        """Delivery failed; try again at ``next_attempt_at``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = %s, last_error = %s WHERE id = %s",
                (next_attempt_at, error[:500], row_id),
            )

    def outbox_depth(self) -> int:
        """Reports of the line not yet delivered."""
        with self._read() as db:
            row = db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return int(row[0]) if row else 0

    def next_report_due(self) -> float | None:
        """When the earliest undelivered report is due (or its claim ends), or None."""
        with self._read() as db:
            row = db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    # -- admission charges ------------------------------------------------------------------

    def charge(self, mint: Mint) -> int:
        """Count a key against the quotas, durably (no limit checked: tests and migrations)."""
        with self._transaction() as db:
            self._lock_ledger(db)
            return self._insert_charge(db, mint)

    def uncharge(self, row_id: int) -> None:
        """Give a charge back: no key was minted for it."""
        with self._transaction() as db:
            row = db.execute("DELETE FROM admission_charges WHERE id = %s RETURNING work_order", (row_id,)).fetchone()
            if row is not None and row[0]:
                db.execute("UPDATE order_charges SET charged = charged - 1 WHERE work_order = %s", (row[0],))

    def charges_since(self, since: float) -> list[Mint]:
        """Every agent's charges at or after ``since``, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id, device_id, model, work_order, at, sender FROM admission_charges WHERE at >= %s ORDER BY at",
                (since,),
            ).fetchall()
        return [Mint(str(r[1]), str(r[2]), str(r[3]), float(r[4]), int(r[0]), str(r[5])) for r in rows]

    def charges_per_order(self) -> dict[str, int]:
        """Keys ever charged to each work order, by every agent."""
        with self._read() as db:
            rows = db.execute("SELECT work_order, charged FROM order_charges").fetchall()
        return {str(order): int(count) for order, count in rows}

    # -- audit trail ------------------------------------------------------------------------

    def audit(self, event: str, record: DeviceRecord, *, now: float, detail: dict[str, DetailValue]) -> AuditEntry:
        """Append an entry no state change implies (``abandoned`` of a key lost unpushed or fenced)."""
        with self._transaction() as db:
            self._lock_ledger(db)
            return self._append(db, event, record, record.attempt, record.key_fingerprint, now, detail)

    def record_push(
        self, record: DeviceRecord, *, now: float, detail: dict[str, DetailValue], fence: Fence | None = None
    ) -> AuditEntry:
        """Append ``pushed`` for the record's attempt under ``fence``, and take the key's custody."""
        with self._fenced(fence, record.device_id) as db:
            self._lock_ledger(db)
            entry = self._append_push(db, record, now, detail)
            self._take_custody(db, record)
            return entry

    def abandon_unpushed(self, *, now: float) -> list[AuditEntry]:
        """At start-up: this agent's open attempts whose key never got a ``pushed`` entry lost it unused."""
        entries = []
        with self._transaction() as db:
            self._lock_ledger(db)
            rows = db.execute(
                _SELECT_RECORDS + _MINTED_HERE,
                ([State.PUSHED.value, State.UNSURE.value], self.gateway_id),
            ).fetchall()
            for record in map(_record, rows):
                if _has_event(db, record.device_id, record.attempt, "pushed") or _closed(
                    db, record.device_id, record.attempt
                ):
                    continue
                detail: dict[str, DetailValue] = {"reason": "unpushed", "error": "key lost before its first push",
                                                  "was_pushed": False}  # fmt: skip
                entries.append(self._append(db, "abandoned", record, record.attempt, record.key_fingerprint, now,
                                            detail))  # fmt: skip
        return entries

    def attempt_pushed(self, device_id: str, attempt: str) -> bool:
        """The trail has a ``pushed`` entry for this attempt."""
        with self._read() as db:
            return _has_event(db, device_id, attempt, "pushed")

    def attempt_closed(self, device_id: str, attempt: str) -> bool:
        """The trail has a ``consumed`` or ``abandoned`` entry for this attempt."""
        with self._read() as db:
            return _closed(db, device_id, attempt)

    def audit_rows(self) -> list[StoredEntry]:
        """The whole line's trail as stored, in seq order (one snapshot)."""
        with self._read() as db:
            rows = db.execute("SELECT seq, entry, prev_hash, hash FROM audit ORDER BY seq").fetchall()
        return [StoredEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def audit_start(self) -> tuple[int, str]:
        """The entry the stored trail continues from (the ledger is not pruned: the chain's start)."""
        return 0, GENESIS_HASH

    def verify_audit(self) -> tuple[list[StoredEntry], ChainBreak | None]:
        """The rows and the first break of the chain (None when intact)."""
        rows = self.audit_rows()
        return rows, verify_chain(rows)

    # -- leases and custody -----------------------------------------------------------------

    def renew(self, fences: Sequence[Fence], custody: Sequence[str]) -> set[str]:
        """Extend this agent's leases of ``fences`` and its custody of ``custody``'s keys; the device ids
        whose lease was lost (moved, or lapsed and taken). Not durable: a lost renewal only ends a lease early."""
        started = time.monotonic()
        held = [fence for fence in fences if fence.token]
        with self._transaction(durable=False) as db:
            kept = {
                str(row[0])
                for row in db.execute(
                    f"UPDATE leases l SET expires_at = {_NOW} + %s FROM unnest(%s::text[], %s::bigint[]) "  # noqa: S608
                    "AS f(device_id, token) WHERE l.device_id = f.device_id AND l.token = f.token AND l.holder = %s "
                    "RETURNING l.device_id",
                    (self.lease_s, [f.device_id for f in held], [f.token for f in held], self.gateway_id),
                ).fetchall()
            }
            if custody:
                db.execute(
                    f"UPDATE leases SET custody_until = {_NOW} + %s WHERE custodian = %s "  # noqa: S608
                    f"AND device_id = ANY(%s) AND custody_until > {_NOW}",
                    (self.lease_s, self.gateway_id, list(custody)),
                )
        deadline = started + self.lease_s - clock_margin(self.lease_s)
        for fence in held:
            if fence.device_id in kept:
                fence.deadline = max(fence.deadline, deadline)
        return {fence.device_id for fence in held} - kept

    def key_custodian(self, device_id: str, attempt: str) -> tuple[str, float]:
        """Another live agent holding the key of ``attempt`` (its id and the seconds its custody has left), or ""."""
        with self._read() as db:
            row = db.execute(
                f"SELECT custodian, custody_until - {_NOW} FROM leases WHERE device_id = %s "  # noqa: S608
                f"AND custody_attempt = %s AND custodian != %s AND custodian != '' AND custody_until > {_NOW}",
                (device_id, attempt, self.gateway_id),
            ).fetchone()
        return (str(row[0]), float(row[1])) if row else ("", 0.0)

    def claim(self, fence: Fence) -> None:
        """Take the device's lease before the flow decides anything: the cluster's one-flow-per-device lock.

        :class:`Fenced` when another live agent holds it (that agent is serving the device now), or
        when the record changed since the flow read it.
        """
        with self._fenced(fence, fence.device_id):
            pass

    def release(self, fence: Fence) -> None:
        """End a flow's lease now (not durable: lost, it lapses on its own)."""
        if not fence.token:
            return
        with self._transaction(durable=False) as db:
            db.execute(
                "UPDATE leases SET expires_at = 0 WHERE device_id = %s AND holder = %s AND token = %s",
                (fence.device_id, self.gateway_id, fence.token),
            )

    # -- migration --------------------------------------------------------------------------

    def import_journal(
        self,
        *,
        source: str,
        records: Sequence[DeviceRecord],
        charges: Sequence[Mint],
        order_totals: Mapping[str, int],
        reports: Sequence[tuple[Any, ...]],
        entries: Sequence[AuditEntry],
        source_head: tuple[int, str],
        now: float,
    ) -> AuditEntry | None:
        """Copy one gateway's journal (this session's ``gateway_id``) into the ledger, in one transaction.

        ``reports``: outbox rows as (device_id, idempotency_key, payload, created_at, attempts,
        next_attempt_at, delivered_at, last_error). The trail is re-chained after the ledger's last
        entry, headed by a ``migrated`` entry naming ``source`` and its head (seq, hash). Returns
        that entry, or None when this very journal was migrated here before (a rerun: nothing done);
        :class:`JournalError` when the gateway already has other data in the ledger, or one of its
        devices is another gateway's.
        """
        marker = f"migrated:{self.gateway_id}"
        # What makes a rerun the same migration: the file's head and what it holds (a copy of the file counts).
        identity = hashlib.sha256(json.dumps([source_head[1], len(charges), len(reports), len(entries),
                                              sorted(r.device_id for r in records)]).encode()).hexdigest()  # fmt: skip
        with self._transaction() as db:
            self._lock_ledger(db)
            row = db.execute("SELECT value FROM ledger_meta WHERE name = %s", (marker,)).fetchone()
            if row is not None:
                before = json.loads(row[0])
                if before.get("identity") == identity:
                    return None
                raise JournalError(f"gateway {self.gateway_id!r} was migrated into this ledger already, from "
                                   f"{before.get('source')} (head {before.get('source_head_seq')}); one gateway "
                                   "cannot bring a second journal")  # fmt: skip
            self._refuse_if_present(db, [record.device_id for record in records])
            head = AuditEntry(0, format_at(now), "migrated", "", "", "", "", self.gateway_id, {
                "source": source, "source_head_seq": source_head[0], "source_head_hash": source_head[1],
                "entries": len(entries), "records": len(records), "charges": len(charges), "reports": len(reports),
            })  # fmt: skip
            chained = self._chain_entries(db, [head, *entries])
            for record in records:
                self._upsert(db, record)
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO admission_charges (device_id, model, work_order, at, sender, gateway_id) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    [(c.device_id, c.model, c.work_order, c.at, c.sender, self.gateway_id) for c in charges],
                )
                # The source's totals, not a count of its charges: retention may have archived old ones.
                cursor.executemany(
                    "INSERT INTO order_charges (work_order, charged) VALUES (%s, %s) "
                    "ON CONFLICT (work_order) DO UPDATE SET charged = order_charges.charged + EXCLUDED.charged",
                    [(order, total) for order, total in order_totals.items() if order and total],
                )
                cursor.executemany(
                    "INSERT INTO outbox (device_id, idempotency_key, payload, created_at, attempts, next_attempt_at, "
                    "delivered_at, last_error, gateway_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(*report, self.gateway_id) for report in reports],
                )
            summary = {"source": source, "source_head_seq": source_head[0], "source_head_hash": source_head[1],
                       "head_seq": chained[0].seq, "identity": identity}  # fmt: skip
            db.execute("INSERT INTO ledger_meta (name, value) VALUES (%s, %s)", (marker, json.dumps(summary)))
            return chained[0]

    def _refuse_if_present(self, db: psycopg.Connection[tuple[Any, ...]], device_ids: list[str]) -> None:
        row = db.execute(
            "SELECT (SELECT COUNT(*) FROM devices WHERE gateway_id = %s) + (SELECT COUNT(*) FROM audit WHERE "
            "gateway_id = %s) + (SELECT COUNT(*) FROM admission_charges WHERE gateway_id = %s)",
            (self.gateway_id, self.gateway_id, self.gateway_id),
        ).fetchone()
        if row is not None and int(row[0]):
            raise JournalError(f"the ledger already holds data of gateway {self.gateway_id!r} (it has run on the "
                               "ledger): migrate a journal before its gateway first runs on the ledger")  # fmt: skip
        taken = db.execute(
            "SELECT device_id, gateway_id FROM devices WHERE device_id = ANY(%s) ORDER BY device_id LIMIT 5",
            (device_ids,),
        ).fetchall()
        if taken:
            names = ", ".join(f"{device} (by {gateway})" for device, gateway in taken)
            raise JournalError(f"devices of this journal are in the ledger already: {names}; nothing was copied")

    def _chain_entries(
        self, db: psycopg.Connection[tuple[Any, ...]], entries: Sequence[AuditEntry]
    ) -> list[AuditEntry]:
        """Append ``entries`` as they are (each keeps its gateway), numbered and chained after the last one."""
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev_hash = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
        rows, chained = [], []
        for entry in entries:
            seq += 1
            entry = replace(entry, seq=seq)
            canonical = canonical_bytes(entry)
            digest = chain_hash(prev_hash, canonical)
            rows.append((seq, entry.event, entry.device_id, entry.attempt, entry.gateway_id,
                         canonical.decode("utf-8"), prev_hash, digest))  # fmt: skip
            chained.append(entry)
            prev_hash = digest
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO audit (seq, event, device_id, attempt, gateway_id, entry, prev_hash, hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        return chained

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[None]:
        """Group commit: every call made inside is durable at one COMMIT; each runs in its own savepoint."""
        with self._lock:
            db = self._connection()
            try:
                with db.transaction() as transaction:
                    if not durable:
                        db.execute("SET LOCAL synchronous_commit = off")
                    self._in_batch = True
                    try:
                        yield
                    finally:
                        self._in_batch = False
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
            self._confirm(transaction)

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """One call's writes: a savepoint inside a batch, else a transaction of its own."""
        with self._lock:
            db = self._connection()
            try:
                with db.transaction() as transaction:
                    if not durable and not self._in_batch:
                        db.execute("SET LOCAL synchronous_commit = off")
                    yield db
            except psycopg.Error as exc:
                raise self._translate(exc) from exc
            self._confirm(transaction)

    def _confirm(self, transaction: psycopg.Transaction) -> None:
        """Raise unless ``transaction`` (or savepoint) is known committed.

        psycopg leaves a transaction block without a word when the connection is already gone at
        its end (the server was shut down, a call inside lost the connection and its error was
        handed to its own caller): nothing was committed, yet nothing was raised. A batch that
        ended so must fail as a whole, or a charge that never reached the disk would be taken for
        written and its key minted. A COMMIT whose answer was lost raises on its own; its outcome
        is unknown, and a charge in it stays counted if it landed (never given back on this path).
        """
        if transaction.status is not transaction.Status.COMMITTED:
            raise LedgerUnavailable(f"ledger {self.where}: the connection was lost before the commit was confirmed")

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        with self._lock:
            db = self._connection()
            try:
                if self._in_batch:
                    yield db
                else:
                    with db.transaction():
                        yield db
            except psycopg.Error as exc:
                raise self._translate(exc) from exc

    @contextmanager
    def _fenced(self, fence: Fence | None, device_id: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A write under ``fence``: the lease is checked (taken on the first write) in the write's transaction;
        the fence learns its token and deadline only if the whole call succeeds."""
        before = (fence.token, fence.deadline) if fence is not None else (0, 0.0)
        try:
            with self._transaction() as db:
                if fence is not None:
                    self._check_lease(db, fence, device_id)
                yield db
        except BaseException:
            if fence is not None:
                fence.token, fence.deadline = before
            raise

    def _check_lease(self, db: psycopg.Connection[tuple[Any, ...]], fence: Fence, device_id: str) -> None:
        started = time.monotonic()
        try:
            with db.transaction():  # NOWAIT fails inside a savepoint of its own: the call's stays usable
                row = db.execute(
                    f"SELECT holder, token, expires_at - {_NOW} FROM leases WHERE device_id = %s FOR UPDATE NOWAIT",  # noqa: S608
                    (device_id,),
                ).fetchone()
        except pg_errors.LockNotAvailable:
            raise Fenced(f"device {device_id!r}: another agent is writing it now", 1.0) from None
        holder, token, left = (str(row[0]), int(row[1]), float(row[2])) if row else ("", 0, 0.0)
        if fence.token:
            if holder != self.gateway_id or token != fence.token:
                raise Fenced(f"device {device_id!r}: its lease moved to {holder or 'nobody'} (token {token}, "
                             f"ours {fence.token})", max(0.0, left))  # fmt: skip
            db.execute(f"UPDATE leases SET expires_at = {_NOW} + %s WHERE device_id = %s", (self.lease_s, device_id))  # noqa: S608
        else:
            if row is not None and holder != self.gateway_id and left > 0:
                raise Fenced(f"device {device_id!r}: agent {holder} holds its lease", left)
            current = db.execute(_SELECT_RECORDS + " WHERE device_id = %s", (device_id,)).fetchone()
            if (_record(current) if current else None) != fence.seen:
                raise Fenced(f"device {device_id!r}: its record changed since this message was read", 1.0)
            token += 1
            db.execute(
                f"INSERT INTO leases (device_id, holder, token, expires_at) VALUES (%s, %s, %s, {_NOW} + %s) "  # noqa: S608
                "ON CONFLICT (device_id) DO UPDATE SET holder = excluded.holder, token = excluded.token, "
                "expires_at = excluded.expires_at",
                (device_id, self.gateway_id, token, self.lease_s),
            )
            fence.token = token
        fence.deadline = started + self.lease_s - clock_margin(self.lease_s)

    def _take_custody(self, db: psycopg.Connection[tuple[Any, ...]], record: DeviceRecord) -> None:
        db.execute(
            f"INSERT INTO leases (device_id, holder, token, expires_at, custodian, custody_attempt, custody_until) "  # noqa: S608
            f"VALUES (%s, '', 0, 0, %s, %s, {_NOW} + %s) ON CONFLICT (device_id) DO UPDATE SET "
            "custodian = excluded.custodian, custody_attempt = excluded.custody_attempt, "
            "custody_until = excluded.custody_until",
            (record.device_id, self.gateway_id, record.attempt, self.lease_s),
        )

    def _lock_ledger(self, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (LEDGER_LOCK,))

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._db is not None and not self._db.closed and not self._db.broken:
            return self._db
        if self._in_batch:
            raise LedgerUnavailable(f"ledger {self.where}: the connection was lost")
        if self._db is not None:
            self._db.close()
        try:
            self._db = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"provisioning-agent {self.gateway_id}"[:63],
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                tcp_user_timeout=TCP_USER_TIMEOUT_MS,
                options=SESSION_OPTIONS + (" -c default_transaction_read_only=on" if self.readonly else ""),
            )
        except psycopg.Error as exc:
            self._db = None
            raise self._translate(exc) from exc
        return self._db

    def _translate(self, exc: psycopg.Error) -> JournalError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = text.replace(self.url, self.where)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not isinstance(
            exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled
        ):
            return LedgerUnavailable(f"ledger {self.where}: {text}")
        if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled | pg_errors.DeadlockDetected):
            return LedgerUnavailable(f"ledger {self.where}: busy ({text})")
        return JournalError(f"ledger {self.where}: {text}")

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM ledger_meta WHERE name = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > LEDGER_SCHEMA_VERSION:
                raise JournalError(f"ledger {self.where} has schema {version}, newer than this agent's "
                                   f"{LEDGER_SCHEMA_VERSION}; upgrade the agent")  # fmt: skip
            for target in range(version + 1, LEDGER_SCHEMA_VERSION + 1):
                db.execute(_MIGRATIONS[target].encode())
                db.execute(
                    "INSERT INTO ledger_meta (name, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )

    def _check_version(self) -> None:
        with self._read() as db:
            exists = db.execute("SELECT to_regclass('ledger_meta')").fetchone()
            row = (
                db.execute("SELECT value FROM ledger_meta WHERE name = 'schema_version'").fetchone()
                if exists and exists[0]
                else None
            )
        version = int(row[0]) if row else 0
        if version != LEDGER_SCHEMA_VERSION:
            raise JournalError(
                f"ledger {self.where} has schema {version}; this agent reads schema {LEDGER_SCHEMA_VERSION}"
            )

    # -- writes ---------------------------------------------------------------------------------

    def _upsert(self, db: psycopg.Connection[tuple[Any, ...]], record: DeviceRecord) -> None:
        values: list[Any] = [getattr(record, name) for name in _COLUMNS]
        values[_COLUMNS.index("state")] = record.state.value
        db.execute(_UPSERT.encode(), [*values, self.gateway_id])

    def _insert_charge(self, db: psycopg.Connection[tuple[Any, ...]], mint: Mint) -> int:
        row = db.execute(
            "INSERT INTO admission_charges (device_id, model, work_order, at, sender, gateway_id) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (mint.device_id, mint.model, mint.work_order, mint.at, mint.sender, self.gateway_id),
        ).fetchone()
        if mint.work_order:  # the ceiling's count (read at start-up and per charge, never summed)
            db.execute(
                "INSERT INTO order_charges (work_order, charged) VALUES (%s, 1) "
                "ON CONFLICT (work_order) DO UPDATE SET charged = order_charges.charged + 1",
                (mint.work_order,),
            )
        return int(row[0]) if row else 0

    def _audit_change(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        record: DeviceRecord,
        consumed: dict[str, DetailValue] | None = None,
    ) -> None:
        row = db.execute(_SELECT_RECORDS + " WHERE device_id = %s", (record.device_id,)).fetchone()
        implied = implied_entries(
            _record(row) if row else None,
            record,
            closed=lambda attempt: _closed(db, record.device_id, attempt),
            pushed=lambda attempt: _has_event(db, record.device_id, attempt, "pushed"),
            consumed_detail=consumed,
        )
        for entry in implied:
            self._append(db, entry.event, record, entry.attempt, entry.key_fingerprint, record.updated_at, entry.detail)

    def _append_push(
        self, db: psycopg.Connection[tuple[Any, ...]], record: DeviceRecord, now: float, detail: dict[str, DetailValue]
    ) -> AuditEntry:
        resend = _has_event(db, record.device_id, record.attempt, "pushed")
        return self._append(db, "pushed", record, record.attempt, record.key_fingerprint, now,
                            detail | {"resend": resend})  # fmt: skip

    def _append(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        event: str,
        record: DeviceRecord,
        attempt: str,
        fingerprint: str,
        now: float,
        detail: dict[str, DetailValue],
    ) -> AuditEntry:
        """Chain one entry after the last one (the caller holds the ledger lock: one order for every agent)."""
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS_HASH)
        entry = AuditEntry(seq, format_at(now), event, record.device_id, record.model, attempt, fingerprint,
                           self.gateway_id, dict(detail))  # fmt: skip
        canonical = canonical_bytes(entry)
        db.execute(
            "INSERT INTO audit (seq, event, device_id, attempt, gateway_id, entry, prev_hash, hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (seq, event, record.device_id, attempt, self.gateway_id, canonical.decode("utf-8"), prev_hash,
             chain_hash(prev_hash, canonical)),
        )  # fmt: skip
        return entry


def _check_limits(db: psycopg.Connection[tuple[Any, ...]], mint: Mint, limits: Sequence[ChargeLimit]) -> None:
    """Raise :class:`LimitReached` when one of ``limits`` is used up by the charges already written."""
    for limit in limits:
        if limit.scope == "order":  # a ceiling over all time: its count, not a sum over every charge
            counted = db.execute("SELECT charged FROM order_charges WHERE work_order = %s", (limit.key,)).fetchone()
            if (int(counted[0]) if counted else 0) >= limit.limit:
                raise LimitReached(limit, 0)
            continue
        where, params = _scope(limit, mint.at)
        row = db.execute(f"SELECT COUNT(*), MIN(at) FROM admission_charges WHERE {where}", params).fetchone()  # noqa: S608
        used, oldest = (int(row[0]), row[1]) if row else (0, None)
        if used < limit.limit:
            continue
        retry = 0
        if limit.window_s and oldest is not None:
            retry = max(1, int(float(oldest) + limit.window_s - mint.at + 0.999))
        raise LimitReached(limit, retry)


def _scope(limit: ChargeLimit, now: float) -> tuple[str, tuple[Any, ...]]:
    window: tuple[str, tuple[Any, ...]] = ("at > %s", (now - limit.window_s,))
    match limit.scope:
        case "order":
            return "work_order = %s", (limit.key,)
        case "line":
            return window
        case "model":
            return "model = %s AND " + window[0], (limit.key, *window[1])
        case "sender":
            return "sender = %s AND " + window[0], (limit.key, *window[1])


def _closed(db: psycopg.Connection[tuple[Any, ...]], device_id: str, attempt: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM audit WHERE device_id = %s AND attempt = %s AND event IN ('consumed', 'abandoned') LIMIT 1",
        (device_id, attempt),
    ).fetchone()
    return row is not None


def _has_event(db: psycopg.Connection[tuple[Any, ...]], device_id: str, attempt: str, event: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM audit WHERE device_id = %s AND attempt = %s AND event = %s LIMIT 1", (device_id, attempt, event)
    ).fetchone()
    return row is not None


def _record(row: Sequence[Any]) -> DeviceRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["state"] = State(values["state"])
    return DeviceRecord(**values)
