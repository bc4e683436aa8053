"""The shared ledger as it grows: the drainer's claim on pending reports, the 1 -> 2 migration."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import psycopg
import pytest

from agent.journal._postgres import _MIGRATIONS, LEDGER_SCHEMA_VERSION, PostgresJournal
from provisioning.workflow import DeviceRecord, State

pytestmark = pytest.mark.timeout(120)

# The claim schema 1 ran (a correlated MIN per candidate row), without the UPDATE: the semantics to keep.
OLD_DUE = (
    "SELECT o.id FROM outbox o WHERE o.delivered_at IS NULL AND o.next_attempt_at <= %s AND o.id = ("
    "  SELECT MIN(id) FROM outbox p WHERE p.device_id = o.device_id AND p.delivered_at IS NULL) ORDER BY o.id"
)


@pytest.fixture
def agents(ledger_url: str) -> Iterator[list[PostgresJournal]]:
    journals = [PostgresJournal.open(ledger_url, gateway_id=f"gw{n}") for n in (1, 2)]
    yield journals
    for journal in journals:
        journal.close()


def activated(device_id: str, n: int) -> DeviceRecord:
    return DeviceRecord(device_id, f"hw-{device_id}", "m", device_id, State.ACTIVATED, attempts=1,
                        attempt=f"{n:016x}", sdk_device_id=f"wd.{device_id}", updated_at=time.time())  # fmt: skip


def test_claims_are_the_oldest_pending_report_of_each_device_as_before(
    ledger_url: str, agents: list[PostgresJournal]
) -> None:
    first, second = agents
    rng = random.Random(15)
    now = time.time()
    for n in range(200):
        first.complete(activated(f"d{rng.randrange(20)}", n), {"idempotency_key": f"k{n}"}, now=now)
    with psycopg.connect(ledger_url, autocommit=True) as db:
        delivered = 0
        for (row_id,) in db.execute("SELECT id FROM outbox").fetchall():
            if rng.random() < 0.3:
                delivered += 1
                db.execute("UPDATE outbox SET delivered_at = %s WHERE id = %s", (now, row_id))
            else:
                db.execute(
                    "UPDATE outbox SET next_attempt_at = %s WHERE id = %s", (now + rng.randrange(-50, 50), row_id)
                )
        expected = [row_id for (row_id,) in db.execute(OLD_DUE, (now,)).fetchall()]
        plan = "\n".join(str(r[0]) for r in db.execute(
            "EXPLAIN SELECT o.id FROM outbox o WHERE o.delivered_at IS NULL AND o.next_attempt_at <= 0 AND NOT EXISTS "
            "(SELECT 1 FROM outbox p WHERE p.device_id = o.device_id AND p.delivered_at IS NULL AND p.id < o.id) "
            "ORDER BY o.next_attempt_at, o.id LIMIT 50").fetchall())  # fmt: skip
    assert "outbox_due" in plan, plan
    taken = first.due_reports(now=now, limit=7) + second.due_reports(now=now, limit=1000)
    assert sorted(row.id for row in taken) == expected  # between them, exactly the old rows, each once
    assert first.due_reports(now=now, limit=1000) == []  # all claimed
    assert first.outbox_depth() == 200 - delivered
    assert first.next_report_due() is not None


def test_a_schema_1_ledger_is_migrated_with_its_rows(ledger_url: str) -> None:
    with psycopg.connect(ledger_url, autocommit=True) as db:
        db.execute("CREATE TABLE ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(_MIGRATIONS[1].encode())
        db.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
        for n, (device, delivered) in enumerate((("a", 1.0), ("a", None), ("a", None), ("b", None))):
            db.execute(
                "INSERT INTO outbox (device_id, idempotency_key, payload, created_at, next_attempt_at, delivered_at, "
                "gateway_id) VALUES (%s, %s, %s, 1, 1, %s, 'gw0')",
                (device, f"k{n}", f'{{"n": {n}}}', delivered),
            )
    journal = PostgresJournal.open(ledger_url, gateway_id="gw1")
    try:
        assert LEDGER_SCHEMA_VERSION == 2
        with psycopg.connect(ledger_url, autocommit=True) as db:
            assert db.execute("SELECT value FROM ledger_meta").fetchall() == [("2",)]
            indexes = {name for (name,) in db.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'outbox'")}
        assert {"outbox_due", "outbox_device_pending"} <= indexes
        assert not {"outbox_pending", "outbox_device"} & indexes
        assert [row.payload["n"] for row in journal.due_reports(now=2.0, limit=10)] == [1, 3]
    finally:
        journal.close()
    PostgresJournal.open_readonly(ledger_url).close()  # a reader accepts the migrated ledger


def test_export_streams_and_the_work_order_ceiling_reads_its_count(agents: list[PostgresJournal]) -> None:
    from agent.journal import LimitReached
    from provisioning.admission import ChargeLimit, Mint

    first, _ = agents
    base = time.time()
    for n in range(1200):
        first.put(
            activated(f"e{n:05d}", n).replace(updated_at=base + n, state=State.ACTIVATED if n % 4 else State.FAILED)
        )
    stream = first.records(state=State.ACTIVATED, since=base + 100, until=base + 1100)
    assert [r.device_id for r in stream] == [f"e{n:05d}" for n in range(100, 1100) if n % 4]
    ceiling = ChargeLimit("work_order_exhausted", "order", "WO-9", 0, 2, "spent")
    charged = [
        first.put(activated(f"w{n}", n), charge=Mint(f"w{n}", "m", "WO-9", base), limits=[ceiling]) for n in (1, 2)
    ]
    with pytest.raises(LimitReached):
        first.put(activated("w3", 3), charge=Mint("w3", "m", "WO-9", base), limits=[ceiling])
    first.uncharge(charged[0])
    assert first.charges_per_order() == {"WO-9": 1}
    first.put(activated("w3", 3), charge=Mint("w3", "m", "WO-9", base), limits=[ceiling])  # room again
