"""Three agents on one PostgreSQL ledger: real agent processes, one Mosquitto (shared subscription), the emulator.

Every count is taken from the emulator (what the cloud minted and licensed) and from the
shared ledger, never from the agents' word. Each test breaks one thing: a work order shared by
three agents, an agent killed mid-burst, the database stopped mid-burst, an agent paused
between journaling a key and pushing it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.journal._postgres import PostgresJournal
from provisioning_lab.agentprocess import AgentProcess
from provisioning_lab.netns import NetnsUnavailable, NetworkNamespace, unavailable_reason
from provisioning_lab.postgres import PostgresServer
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, PROFILES, Line, line_fixture

__all__ = ["line_fixture"]

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

LEASE_S = 3.0  # short leases: a takeover in seconds, not the production 15
X1_PROFILE = (Path(PROFILES) / f"{MODEL}.toml").read_text(encoding="utf-8")


def profiles(tmp_path: Path, admission: str = "") -> str:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / "x1.toml").write_text(X1_PROFILE + "\n[admission]\n" + admission + "\n", encoding="utf-8")
    return str(folder)


def work_order(tmp_path: Path, devices: list[str], ceiling: int) -> str:
    folder = tmp_path / "orders"
    folder.mkdir(exist_ok=True)
    rows = "".join(f"WO-1,{MODEL},{device},{ceiling}\n" for device in devices)
    (folder / "wo-1.csv").write_text("order,model,device_id,ceiling\n" + rows, encoding="utf-8")
    return str(folder)


def start_cluster(line: Line, url: str, folder: str, orders: str = "", count: int = 3) -> list[AgentProcess]:
    admission = {"work_orders_dir": orders, "poll_interval_s": 0.5} if orders else {}
    return [
        line.start_agent(
            f"gw{n}",
            profiles=folder,
            mqtt={"shared_group": "line"},
            journal={"url": url, "lease_s": LEASE_S},
            admission=admission,
        )
        for n in range(1, count + 1)
    ]


def minted(line: Line) -> Counter[str]:
    return Counter(event["UserDeviceId"] for event in line.emulator.audit()["key_events"])


def ledger_state(url: str) -> tuple[dict[str, str], bool, int]:
    """Device states, whether the audit chain is intact, and reports queued, from the shared ledger."""
    reader = PostgresJournal.open_readonly(url)
    try:
        states = {r.device_id: r.state.value for r in reader.all_records()}
        _, broken = reader.verify_audit()
        reports = reader.outbox_depth()
    finally:
        reader.close()
    return states, broken is None, reports


def test_a_work_order_split_across_three_agents_never_licenses_more_than_its_ceiling(
    line: Line, ledger_url: str, tmp_path: Path
) -> None:
    specs = fleet_specs(24, model=MODEL, id_prefix="WO", seal=True)
    ceiling = 16  # 24 devices listed, 16 keys allowed: 8 must be refused whatever agent they reach
    orders = work_order(tmp_path, [spec.device_id for spec in specs], ceiling)
    start_cluster(line, ledger_url, profiles(tmp_path, "work_orders = true"), orders)
    report = line.fleet(specs, deadline_s=120)
    statuses = Counter(outcome.status for outcome in report.devices)
    refused = [o for o in report.devices if o.status == "error"]
    assert all(o.error_code == "not_admitted" and "work_order_exhausted" in o.detail for o in refused), refused
    keys = minted(line)
    assert sum(keys.values()) == ceiling  # every key minted was charged: none past the ceiling
    assert max(keys.values()) == 1
    states, intact, _ = ledger_state(ledger_url)
    # Every key reached its device. On a starved machine a device that waited too long for its key
    # asks again and, the ceiling spent, is refused: its key stays pushed and unused (never two).
    gave_up = {device for device, state in states.items() if state == "pushed"}
    unfinished = {device: states.get(device) for device in keys if states.get(device) != "activated"}
    assert statuses["licensed"] + len(gave_up) == ceiling, (statuses, unfinished)
    assert Counter(states.values())["activated"] == statuses["licensed"]
    assert gave_up <= {o.device_id for o in refused}
    assert intact


def test_killing_an_agent_mid_burst_loses_nothing_and_licenses_no_device_twice(
    line: Line, ledger_url: str, tmp_path: Path
) -> None:
    agents = start_cluster(line, ledger_url, profiles(tmp_path))
    reports = line.watch("prov/v1/reports")
    specs = fleet_specs(30, model=MODEL, id_prefix="KL", seal=True)

    def kill_mid_burst() -> None:
        deadline = time.monotonic() + 30
        while sum(minted(line).values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        agents[1].kill()

    killer = threading.Thread(target=kill_mid_burst)
    killer.start()
    report = line.fleet(specs, deadline_s=150)
    killer.join()
    assert not agents[1].running()
    statuses = Counter(outcome.status for outcome in report.devices)
    assert statuses["licensed"] == len(specs), [o for o in report.devices if o.status != "licensed"]
    states, intact, _ = ledger_state(ledger_url)
    assert set(states.values()) == {"activated"}
    assert intact
    # Every activation has its report: delivered by a survivor, the dead agent's claims included.
    wanted = {spec.device_id for spec in specs}
    got = lambda: {r.get("device_id") for r in reports.on("prov/v1/reports")}  # noqa: E731
    assert reports.wait_for(lambda: wanted <= got(), timeout=90), sorted(wanted - got())


def test_the_database_stopped_mid_burst_breaks_no_limit_and_every_device_finishes_after(
    line: Line, ledger_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    specs = fleet_specs(18, model=MODEL, id_prefix="PT", seal=True)
    ceiling = 12
    orders = work_order(tmp_path, [spec.device_id for spec in specs], ceiling)
    agents = start_cluster(line, ledger_url, profiles(tmp_path, "work_orders = true"), orders)
    down = line.watch("prov/v1/dev/+/down")

    def outage() -> None:
        deadline = time.monotonic() + 30
        while sum(minted(line).values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        postgres_server.stop()
        minted_at_cut = sum(minted(line).values())
        waits = lambda: [m for _, m in down.messages if m.get("reason") == "ledger_unavailable"]  # noqa: E731
        down.wait_for(lambda: len(waits()) >= 3, timeout=20)
        time.sleep(1.0)
        # Without the ledger no charge can be written, so nothing more is minted (a mint in flight may finish).
        assert sum(minted(line).values()) <= minted_at_cut + 3
        postgres_server.start()

    cut = threading.Thread(target=outage)
    cut.start()
    # Four devices at a time: the keys caught by the outage between their mint and their journaling (charged,
    # never pushed) are at most the four in flight, so the ceiling leaves room to license devices after it.
    report = line.fleet(specs, deadline_s=180, concurrency=4)
    cut.join()
    assert any(m.get("reason") == "ledger_unavailable" for _, m in down.messages)
    # A device caught between its mint and the journaling of its key by the outage keeps its charge (the key
    # exists) and is read back and minted again after: the ceiling counts keys, so fewer devices than 12 may
    # be licensed. What must hold: no key past the ceiling, and every device licensed or told the order is spent.
    assert sum(minted(line).values()) <= ceiling
    assert max(minted(line).values()) <= 2
    unfinished = [(o.device_id, o.error_code, o.detail) for o in report.devices if o.status != "licensed"]
    assert all(code == "not_admitted" and "work_order_exhausted" in detail for _, code, detail in unfinished), (
        unfinished
    )
    reader = PostgresJournal.open_readonly(ledger_url)
    try:
        assert reader.charges_per_order() == {"WO-1": sum(minted(line).values())}  # every key minted was charged
        _, broken = reader.verify_audit()
    finally:
        reader.close()
    assert broken is None
    after = [m for _, m in down.messages if m.get("type") == "done"]
    assert after, "no device was licensed once the ledger was back"
    assert all(agent.running() for agent in agents)


def test_an_agent_paused_before_its_push_pushes_nothing_once_its_lease_moved(
    line: Line, ledger_url: str, tmp_path: Path
) -> None:
    folder = profiles(tmp_path)
    sections: dict[str, Any] = {"mqtt": {"shared_group": "line"}, "journal": {"url": ledger_url, "lease_s": LEASE_S}}
    paused = line.start_agent("gwA", profiles=folder, launcher=("-m", "provisioning_lab.chaos",
                              "--stop-before-push", "STOP-1", "--"), **sections)  # fmt: skip
    device = line.watch("prov/v1/dev/STOP-1/down")

    seal_pub = base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()

    def register(n: int) -> None:  # as sealing firmware sends it: the shipped profile requires seal_pub
        body = {"v": 1, "type": "register", "id": f"r-{n}", "device_id": "STOP-1", "hardware_id": "hw-STOP-1",
                "model": MODEL, "seal_pub": seal_pub}  # fmt: skip
        device.publish("prov/v1/dev/STOP-1/up", json.dumps(body).encode())

    register(0)
    assert wait_stopped(paused.pid), paused.log_text()  # A minted a key and stopped before pushing it
    assert minted(line)["STOP-1"] == 1
    line.start_agent("gwB", profiles=folder, **sections)
    time.sleep(LEASE_S + 0.5)  # A's lease lapses while it sleeps
    keys = lambda: [m for m in device.on("prov/v1/dev/STOP-1/down") if m.get("type") == "key"]  # noqa: E731
    for n in range(1, 12):  # the shared subscription hands every other message to the stopped A
        register(n)
        if device.wait_for(lambda: bool(keys()), timeout=3):
            break
    assert len(keys()) == 1, device.on("prov/v1/dev/STOP-1/down")
    fresh = keys()[0]["attempt"]
    os.kill(paused.pid, signal.SIGCONT)
    device.wait_for(lambda: "lost its lease" in paused.log_text() or "lease moved" in paused.log_text(), timeout=15)
    time.sleep(1.0)
    attempts = {m["attempt"] for m in keys()}
    assert attempts == {fresh}, f"a stale key was pushed: {attempts}\n{paused.log_text()}"
    reader = PostgresJournal.open_readonly(ledger_url)
    try:
        rows, broken = reader.verify_audit()
    finally:
        reader.close()
    assert broken is None
    trail = [json.loads(row.text) for row in rows if json.loads(row.text)["device_id"] == "STOP-1"]
    stale = {e["attempt"] for e in trail if e["event"] == "minted" and e["gateway_id"] == "gwA"}
    assert len(stale) == 1
    (stale_attempt,) = stale
    events = [(e["event"], e["detail"].get("was_pushed")) for e in trail if e["attempt"] == stale_attempt]
    assert ("pushed", None) not in events
    assert events[0] == ("minted", None)
    assert any(event == "abandoned" and was_pushed is False for event, was_pushed in events), events
    assert [e["event"] for e in trail if e["attempt"] == fresh][:2] == ["minted", "pushed"]


def wait_stopped(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "T":
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def _wake_stopped_agents(line: Line) -> Any:
    """A stopped agent cannot be stopped with SIGTERM: wake it first."""
    yield
    for agent in line.agents:
        if agent.running():
            os.kill(agent.pid, signal.SIGCONT)


def test_one_agent_cut_off_the_ledger_breaks_no_limit_while_the_others_keep_licensing(
    line: Line, ledger_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """gw3 runs on a host of its own (a network namespace); mid-burst a blackhole route on that host drops every
    packet to the ledger, and only to the ledger: gw3 keeps its broker and its cloud, gw1 and gw2 keep everything."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        host = NetworkNamespace.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"no network namespace here: {exc}")
    try:
        _partition_of_one_agent(line, ledger_url, postgres_server, tmp_path, host)
    finally:
        host.close()


def _partition_of_one_agent(
    line: Line, ledger_url: str, postgres_server: PostgresServer, tmp_path: Path, host: NetworkNamespace
) -> None:
    specs = fleet_specs(36, model=MODEL, id_prefix="NS", seal=True)
    ceiling = 26
    orders = work_order(tmp_path, [spec.device_id for spec in specs], ceiling)
    folder = profiles(tmp_path, "work_orders = true")
    admission = {"work_orders_dir": orders, "poll_interval_s": 0.5}
    journal = {"url": ledger_url, "lease_s": LEASE_S}
    for n in (1, 2):
        line.start_agent(f"gw{n}", profiles=folder, mqtt={"shared_group": "line"}, journal=journal, admission=admission)
    emulator = urlsplit(line.emulator.url)
    through = urlsplit(ledger_url)._replace(
        netloc=f"ledger@{host.ledger_address}:{host.forward(postgres_server.port, ledger=True)}"
    )
    cut_off = line.start_agent(
        "gw3",
        profiles=folder,
        launcher=host.launcher(),
        mqtt={"shared_group": "line", "host": host.address, "port": host.forward(line.broker.port)},
        cloud={"endpoint": f"http://{host.address}:{host.forward(emulator.port or 80)}"},
        journal={"url": urlunsplit(through), "lease_s": LEASE_S},
        admission=admission,
    )
    down = line.watch("prov/v1/dev/+/down")
    seen: dict[str, int] = {}

    def consumed() -> int:  # activations journaled: only an agent that reaches the ledger writes them
        reader = PostgresJournal.open_readonly(ledger_url)
        try:
            return reader.counts().get("activated", 0)
        finally:
            reader.close()

    def partition() -> None:
        deadline = time.monotonic() + 60
        while consumed() < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        host.cut_ledger()
        seen["at_cut"] = consumed()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            "waits: ledger" in cut_off.log_text() and consumed() >= seen["at_cut"] + 3
        ):
            time.sleep(0.2)
        seen["at_heal"] = consumed()
        host.heal_ledger()

    cut = threading.Thread(target=partition)
    cut.start()
    report = line.fleet(specs, deadline_s=180, concurrency=8)  # few keys in flight at the cut: room left after
    cut.join()
    assert not host.cut
    # The cut agent told its devices to wait, and the other two licensed devices while it could not.
    assert "waits: ledger" in cut_off.log_text(), cut_off.log_text()
    assert any(m.get("reason") == "ledger_unavailable" for _, m in down.messages)
    assert seen["at_heal"] >= seen["at_cut"] + 3, seen
    # No global limit broken: every key minted was charged (a charge whose COMMIT answer was lost in the cut
    # stays counted: charges may exceed keys, never the reverse), and no key past the ceiling.
    keys = minted(line)
    reader = PostgresJournal.open_readonly(ledger_url)
    try:
        charged = reader.charges_per_order().get("WO-1", 0)
        states = {r.device_id: r.state.value for r in reader.all_records()}
        _, broken = reader.verify_audit()
    finally:
        reader.close()
    assert sum(keys.values()) <= charged <= ceiling, (keys, charged)
    assert broken is None
    # Everything finished after the heal: each device licensed once, or told the order is spent.
    licensed = [o.device_id for o in report.devices if o.status == "licensed"]
    unfinished = [(o.device_id, o.error_code, o.detail) for o in report.devices if o.status != "licensed"]
    assert all(code == "not_admitted" and "work_order_exhausted" in detail for _, code, detail in unfinished), (
        unfinished
    )
    assert all(states.get(device) == "activated" for device in licensed)
    licences = Counter(
        d["UserDeviceId"] for d in line.emulator.audit()["devices"] for _ in range(d["licences_consumed"])
    )
    assert set(licences) == set(licensed)
    assert max(licences.values()) == 1
    assert cut_off.running()
