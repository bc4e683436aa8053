"""The shared ledger against a real PostgreSQL: fencing, global limits, one audit chain, outbox claims.

Several ``PostgresJournal`` sessions stand for several agents (each one connection, as an
agent's journal thread has). The three-agent tests with real agent processes are in
test_cluster.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from agent.journal import Fence, Fenced, JournalStore, LedgerUnavailable, LimitReached
from agent.journal._postgres import PostgresJournal
from provisioning.admission import ChargeLimit, Mint
from provisioning.workflow import DeviceRecord, State

pytestmark = pytest.mark.timeout(120)

LEASE_S = 3.0


@pytest.fixture
def agents(ledger_url: str) -> Iterator[list[PostgresJournal]]:
    journals = [PostgresJournal.open(ledger_url, gateway_id=f"gw{n}", lease_s=LEASE_S) for n in (1, 2, 3)]
    yield journals
    for journal in journals:
        journal.close()


def record(device_id: str, state: State = State.MINTING, **changes: object) -> DeviceRecord:
    return DeviceRecord(
        device_id, f"hw-{device_id}", "face-terminal-x1", device_id, state, updated_at=time.time()
    ).replace(**changes)


def pushed(device_id: str, attempt: str) -> DeviceRecord:
    now = time.time()
    return record(device_id, State.PUSHED, attempts=1, attempt=attempt, key_fingerprint="f" * 16, minted_at=now,
                  result_due=now + 60)  # fmt: skip


def test_the_postgres_journal_is_a_journal_store(agents: list[PostgresJournal]) -> None:
    store: JournalStore = agents[0]  # mypy checks the protocol; this checks the flag the runtime reads
    assert store.shared is True
    assert "@" in store.where
    assert "***" not in store.where


def test_a_second_agent_cannot_write_a_device_whose_lease_another_holds(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    fence = Fence("D1", None)
    first.put(record("D1"), fence=fence)
    assert fence.token == 1
    assert fence.held(time.monotonic())
    with pytest.raises(Fenced, match="gw1 holds its lease") as refused:
        second.put(record("D1"), fence=Fence("D1", first.get("D1")))
    assert 0 < refused.value.retry_after_s <= LEASE_S
    first.put(record("D1", error="still mine"), fence=fence)  # the holder writes on
    assert first.get("D1") == second.get("D1")


def test_a_lease_that_lapsed_is_taken_over_and_the_old_holder_is_fenced(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    stale = Fence("D2", None)
    first.put(record("D2"), fence=stale)
    time.sleep(LEASE_S + 0.2)  # first is "paused" past its lease
    fresh = Fence("D2", first.get("D2"))
    second.put(pushed("D2", "a2"), fence=fresh)
    assert fresh.token == stale.token + 1  # the fencing token only grows
    with pytest.raises(Fenced, match="moved to gw2"):
        first.put(pushed("D2", "a1"), fence=stale)
    with pytest.raises(Fenced):
        first.record_push(pushed("D2", "a1"), now=time.time(), detail={"re": "r"}, fence=stale)
    assert second.get("D2").attempt == "a2"  # type: ignore[union-attr]
    assert not second.attempt_pushed("D2", "a1")


def test_a_flow_decided_on_a_record_that_changed_since_takes_no_lease(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    first.put(record("D3"))
    seen = first.get("D3")
    second.put(pushed("D3", "a9"))  # another agent served it in between
    with pytest.raises(Fenced, match="changed since"):
        first.put(record("D3", error="stale decision"), fence=Fence("D3", seen))
    assert first.get("D3").attempt == "a9"  # type: ignore[union-attr]


def test_a_failed_write_leaves_the_fence_as_it_was(agents: list[PostgresJournal]) -> None:
    first, _, _ = agents
    fence = Fence("D4", None)
    order = ChargeLimit("work_order_exhausted", "order", "WO-1", 0, 0, "spent")
    with pytest.raises(LimitReached):
        first.put(record("D4"), fence=fence, charge=Mint("D4", "m", "WO-1", time.time()), limits=[order])
    assert fence.token == 0  # the lease was not taken (rolled back with the write)
    first.put(record("D4"), fence=fence)
    assert fence.token == 1


def test_a_work_order_ceiling_holds_across_agents_charging_at_once(ledger_url: str) -> None:
    ceiling = 5
    limit = ChargeLimit("work_order_exhausted", "order", "WO-7", 0, ceiling, "spent")
    sessions = [PostgresJournal.open(ledger_url, gateway_id=f"gw{n}") for n in range(6)]
    granted: list[str] = []
    refused: list[str] = []
    start = threading.Barrier(len(sessions))

    def agent(journal: PostgresJournal, n: int) -> None:
        start.wait()
        for i in range(6):
            device = f"D-{n}-{i}"
            try:
                journal.put(record(device), charge=Mint(device, "m", "WO-7", time.time(), sender=device),
                            limits=[limit], fence=Fence(device, None))  # fmt: skip
                granted.append(device)
            except LimitReached as exc:
                refused.append(exc.limit.reason)

    threads = [threading.Thread(target=agent, args=(journal, n)) for n, journal in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == ceiling
    assert refused == ["work_order_exhausted"] * (36 - ceiling)
    assert sessions[0].charges_per_order() == {"WO-7": ceiling}
    for journal in sessions:
        journal.close()


def test_a_quota_window_refusal_says_when_to_come_back(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    hour = ChargeLimit("quota_hour", "line", "", 3600, 2, "this line has used its 2 key(s) of the last hour")
    now = time.time()
    first.put(record("Q1"), charge=Mint("Q1", "m", "", now - 600), limits=[hour])
    second.put(record("Q2"), charge=Mint("Q2", "m", "", now), limits=[hour])
    with pytest.raises(LimitReached) as refused:
        first.put(record("Q3"), charge=Mint("Q3", "m", "", now), limits=[hour])
    assert 2990 <= refused.value.retry_after_s <= 3001  # the oldest charge leaves the window in ~50 minutes


def test_the_audit_trail_is_one_chain_across_agents_writing_at_once(agents: list[PostgresJournal]) -> None:
    start = threading.Barrier(len(agents))

    def agent(journal: PostgresJournal) -> None:
        start.wait()
        for i in range(15):
            device = f"{journal.gateway_id}-{i}"
            journal.put(pushed(device, f"a{i}"), pushed={"re": "r", "transport": "mqtt", "sealed": True},
                        fence=Fence(device, None))  # fmt: skip

    threads = [threading.Thread(target=agent, args=(journal,)) for journal in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows, broken = agents[0].verify_audit()
    assert broken is None
    assert [row.row for row in rows] == list(range(1, 3 * 15 * 2 + 1))  # minted + pushed per device, no gap
    writers = {row.text.split('"gateway_id":"')[1].split('"')[0] for row in rows}
    assert writers == {"gw1", "gw2", "gw3"}


def test_each_report_is_taken_by_one_agent_only(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    now = time.time()
    for i in range(6):
        activated = record(f"R{i}", State.ACTIVATED, sdk_device_id=f"sdk{i}", attempt=f"a{i}")
        first.complete(activated, {"idempotency_key": f"k{i}", "biz_type": "b", "term": "t"}, now=now)
    taken_by_first = first.due_reports(now=now, limit=4)
    taken_by_second = second.due_reports(now=now, limit=4)
    assert len(taken_by_first) == 4
    assert len(taken_by_second) == 2
    assert not {r.id for r in taken_by_first} & {r.id for r in taken_by_second}
    assert first.due_reports(now=now, limit=10) == []  # claimed: nobody takes them again ...
    assert len(second.due_reports(now=now + 61, limit=10)) == 6  # ... until a dead drainer's claim lapses


def test_custody_tells_other_agents_who_holds_a_key_while_it_is_renewed(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    fence = Fence("K1", None)
    first.put(pushed("K1", "a1"), fence=fence)
    first.record_push(pushed("K1", "a1"), now=time.time(), detail={"re": "r"}, fence=fence)
    holder, left = second.key_custodian("K1", "a1")
    assert holder == "gw1"
    assert 0 < left <= LEASE_S
    assert first.key_custodian("K1", "a1") == ("", 0.0)  # one's own custody is not "elsewhere"
    assert second.key_custodian("K1", "another-attempt") == ("", 0.0)
    time.sleep(LEASE_S * 0.6)
    assert first.renew([fence], ["K1"]) == set()
    time.sleep(LEASE_S * 0.6)
    assert second.key_custodian("K1", "a1")[0] == "gw1"  # renewed: still held after the first lease's end
    time.sleep(LEASE_S + 0.2)
    assert second.key_custodian("K1", "a1") == ("", 0.0)  # not renewed (the holder died): free


def test_renewal_reports_a_lease_that_moved(agents: list[PostgresJournal]) -> None:
    first, second, _ = agents
    fence = Fence("L1", None)
    first.put(record("L1"), fence=fence)
    time.sleep(LEASE_S + 0.2)
    second.put(record("L1", error="taken over"), fence=Fence("L1", first.get("L1")))
    assert first.renew([fence], []) == {"L1"}


def test_the_schema_is_created_once_by_agents_starting_together(ledger_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one(n: int) -> None:
        start.wait()
        try:
            PostgresJournal.open(ledger_url, gateway_id=f"gw{n}").close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reader = PostgresJournal.open_readonly(ledger_url)
    assert reader.audit_rows() == []
    reader.close()


def test_a_batch_whose_connection_died_inside_fails_whole_and_its_charge_is_not_taken_for_written(
    agents: list[PostgresJournal], ledger_url: str
) -> None:
    # As the journal thread runs a batch: each call's error goes to its own caller, the batch commits the rest.
    # The server ends the session after the charge was written in the batch but before its COMMIT: the
    # charge was never committed, so the batch must fail (no key may be minted on its word).
    import psycopg

    first = agents[0]
    limit = ChargeLimit("work_order_exhausted", "order", "WO-9", 0, 5, "spent")

    def batch_cut_after_the_charge() -> None:
        with first.batch():
            first.put(record("B1"), charge=Mint("B1", "m", "WO-9", time.time(), sender="B1"), limits=[limit],
                      fence=Fence("B1", None))  # fmt: skip
            with psycopg.connect(ledger_url, autocommit=True) as admin:  # waits until the session is gone
                admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                              "WHERE application_name = 'provisioning-agent gw1'")  # fmt: skip
            with pytest.raises(LedgerUnavailable):
                first.get("B1")

    with pytest.raises(LedgerUnavailable, match="commit was confirmed"):
        batch_cut_after_the_charge()
    assert agents[1].charges_per_order() == {}
    assert agents[1].get("B1") is None
    first.put(record("B2"), fence=Fence("B2", None))  # the next call connects again
    assert agents[1].get("B2") is not None
