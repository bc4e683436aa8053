"""Serial devices end to end: the real agent process, the emulator over HTTP, simulated devices on a pty jig.

The devices are the simulator's (lab/provisioning_lab/simulator/_serial.py): the same device machine as the MQTT
fleet, over the link layer, on pseudo-terminals the agent finds through its ``[serial] ports``
glob. Each test tries to break an invariant of docs/reliability.md on a serial line: one licence per device,
no key used after its deadline, nothing lost across unplugs and crashes, bad bytes answered
without stalling the other ports. The jig paces every port at 115200 8N1 unless a test says not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from provisioning_lab.agentprocess import AgentProcess
from provisioning_lab.simulator import JigPort, Noise, PortQueue, SerialDevice, SerialJig, fleet_specs, queue_specs
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._serial import run_port_queue
from tests.integration.provisioning_line import FAST, Line, line_fixture

__all__ = ["line_fixture"]  # the fixture, imported so pytest finds it here

MODEL = "gate-controller-g2"  # hardware-profiles/: the profile provisioned over serial
KEY_SAFETY_MARGIN_S = 600  # that profile's [timeouts] key_safety_margin_s
KEY_LIFE_S = 30 * 60
DEADLINE_S = 90.0  # the devices' own deadline; pytest's timeout is the backstop
SCAN_S = 0.2  # the agent looks for new ports this often in these tests


def serial_section(*patterns: Path | str) -> dict[str, Any]:
    return {"ports": [str(p) for p in patterns], "usb": False, "scan_interval_s": SCAN_S}


def run_devices(line: Line, queues: Sequence[PortQueue], deadline_s: float = DEADLINE_S) -> list[SerialDevice]:
    """Run every queue's devices (one after another per port, ports at once); the devices, finished or not."""

    async def main() -> list[SerialDevice]:
        devices: list[list[SerialDevice]] = [[] for _ in queues]
        deadline = asyncio.get_running_loop().time() + deadline_s
        async with aiohttp.ClientSession() as http:
            sdk = EmulatorSdk(line.emulator.url, http)
            async with asyncio.TaskGroup() as group:
                for queue, lane in zip(queues, devices, strict=True):
                    group.create_task(run_port_queue(queue, sdk, FAST, deadline, lane))
        return [device for lane in devices for device in lane]

    return asyncio.run(main())


def in_background(work: Callable[[], list[SerialDevice]]) -> tuple[threading.Thread, list[list[SerialDevice]]]:
    result: list[list[SerialDevice]] = []
    thread = threading.Thread(target=lambda: result.append(work()), name="serial-devices")
    thread.start()
    return thread, result


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_licensed_once(line: Line, devices: Sequence[SerialDevice]) -> None:
    """Every device licensed, one licence each in the emulator's audit, no key used after its deadline."""
    outcomes = {device.spec.device_id: device.outcome() for device in devices}
    assert {name: o.status for name, o in outcomes.items()} == dict.fromkeys(outcomes, "licensed")
    audit = line.emulator.audit()
    licences = {row["UserDeviceId"]: row["licences_consumed"] - row["extensions"] for row in audit["devices"]}
    assert licences == dict.fromkeys(outcomes, 1)
    for event in audit["key_events"]:
        if event["used_at"] is not None:
            lived = _instant(event["used_at"]) - _instant(event["minted_at"])
            assert lived <= KEY_LIFE_S - KEY_SAFETY_MARGIN_S, event["fingerprint"]
    assert sum(o.counters.keys_used_after_expiry for o in outcomes.values()) == 0
    assert all(o.counters.violations == [] for o in outcomes.values())
    for name, outcome in outcomes.items():  # the done each device got is the licence the cloud holds
        row = next(r for r in audit["devices"] if r["UserDeviceId"] == name)
        assert outcome.sdk_device_id == row["DeviceId"]


def _instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(name="jig")
def jig_fixture(tmp_path: Path) -> Iterator[SerialJig]:
    with SerialJig(tmp_path / "jig", 8) as jig:
        yield jig


# -- many ports ---------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_eight_ports_at_once_two_devices_each_one_licence_each_reported(line: Line, jig: SerialJig) -> None:
    line.start_agent(serial=serial_section(jig.directory / "port-*"))
    watcher = line.watch("prov/v1/reports")
    specs = fleet_specs(16, model=MODEL, id_prefix="JIG")
    devices = run_devices(line, queue_specs(jig.ports, specs))
    assert_licensed_once(line, devices)
    assert {d.outcome().tid for d in devices} == {port.label for port in jig.ports}
    assert all(d.wire.finished > d.wire.link_up > 0 for d in devices)
    ids = {spec.device_id for spec in specs}
    assert watcher.wait_for(lambda: {r["device_id"] for r in watcher.on("prov/v1/reports")} >= ids)


# -- hotplug ------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_port_that_appears_while_the_agent_runs_is_opened(line: Line, tmp_path: Path) -> None:
    with SerialJig(tmp_path / "late", 0) as jig:
        agent = line.start_agent(serial=serial_section(jig.directory / "port-*"))
        time.sleep(3 * SCAN_S)  # the agent has looked and found nothing
        port = jig.add_port()
        devices = run_devices(line, queue_specs([port], fleet_specs(2, model=MODEL, id_prefix="LATE")))
        assert_licensed_once(line, devices)
        assert f"{port.label}: opened" in agent.log_text()


class UnplugOnKey:
    """A jig port that vanishes just after the device got its key, and comes back ``away_s`` later."""

    def __init__(self, port: JigPort, away_s: float) -> None:
        self.port, self.away_s = port, away_s
        self.unplugged = threading.Event()
        self._consumer: Callable[[bytes], None] | None = None

    @property
    def label(self) -> str:
        return self.port.label

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def attach(self, consumer: Callable[[bytes], None] | None) -> None:
        self._consumer = consumer
        self.port.attach(None if consumer is None else self._deliver)

    def _deliver(self, data: bytes) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer(data)
        if b'"type":"key"' in data.replace(b" ", b"") and not self.unplugged.is_set():
            self.unplugged.set()
            self.port.unplug()  # the device activates with the port gone: its result is lost on the way
            threading.Timer(self.away_s, self.port.replug).start()


@pytest.mark.timeout(180)
def test_a_port_vanishing_mid_device_resumes_from_the_journal_with_one_licence(line: Line, jig: SerialJig) -> None:
    agent = line.start_agent(serial=serial_section(jig.directory / "port-*"))
    flaky = UnplugOnKey(jig.port(1), away_s=1.0)
    queues = [PortQueue(flaky, tuple(fleet_specs(1, model=MODEL, id_prefix="GONE")))]
    queues += queue_specs(jig.ports[1:4], fleet_specs(6, model=MODEL, id_prefix="STAY"))
    devices = run_devices(line, queues)
    assert flaky.unplugged.is_set()
    assert_licensed_once(line, devices)
    assert line.emulator.audit()["keys"]["minted"] == 7  # the device that lost its port got no second key
    gone = devices[0].outcome()
    assert gone.counters.distinct_attempts == 1
    assert jig.port(1).stats.plugs == 2
    assert "is gone" in agent.log_text() or "gone:" in agent.log_text()


# -- bad lines ----------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_noisy_line_completes_and_bad_frames_fail_the_crc(line: Line, tmp_path: Path) -> None:
    noise = Noise(flip=3e-4, drop=1e-4, dup=1e-4, cut=0.05)  # about one frame in five damaged
    with SerialJig(tmp_path / "noisy", 4, noise=noise, seed=7) as jig:
        line.start_agent(serial=serial_section(jig.directory / "port-*"))
        devices = run_devices(line, queue_specs(jig.ports, fleet_specs(8, model=MODEL, id_prefix="NOISE")))
        assert_licensed_once(line, devices)
        assert sum(d.wire.crc_errors for d in devices) + sum(d.wire.retransmissions for d in devices) > 0
        assert sum(d.wire.retransmissions for d in devices) > 0


@pytest.mark.timeout(180)
def test_a_device_that_never_answers_leaves_the_other_ports_alone(line: Line, jig: SerialJig) -> None:
    agent = line.start_agent(serial=serial_section(jig.directory / "port-*"))
    silent = jig.port(8)  # plugged, but nothing on it ever answers
    devices = run_devices(line, queue_specs(jig.ports[:7], fleet_specs(14, model=MODEL, id_prefix="BUSY")))
    assert_licensed_once(line, devices)
    wait_until(lambda: f"port {silent.label}: no_answer" in agent.log_text())
    assert silent.stats.from_agent > 0  # the agent kept calling (HELLO) on the silent port
    assert all(f"port {p.label}: no_answer" not in agent.log_text() for p in jig.ports[:7])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("baudrate", [0, 115200], ids=["flood-unpaced", "garbage-at-line-rate"])
def test_garbage_on_one_port_does_not_stall_the_others(line: Line, tmp_path: Path, baudrate: int) -> None:
    with (
        SerialJig(tmp_path / "clean", 6) as clean,
        SerialJig(tmp_path / "dirty", 1, baudrate=baudrate, noise=Noise(idle_garbage=True), seed=3) as dirty,
    ):
        agent = line.start_agent(serial=serial_section(clean.directory / "port-*", dirty.directory / "port-*"))
        devices = run_devices(line, queue_specs(clean.ports, fleet_specs(12, model=MODEL, id_prefix="CLEAN")))
        assert_licensed_once(line, devices)
        garbage = dirty.port(1).stats.garbage
        assert garbage > 0
        dirty.port(1).noise = Noise()  # the garbage stops; a device on that port is served like any other
        late = run_devices(line, queue_specs(dirty.ports, fleet_specs(1, model=MODEL, id_prefix="AFTER")))
        assert_licensed_once(line, devices + late)
        assert agent.running()


# -- crashes ------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_kill_9_mid_device_restart_resumes_with_one_licence_each(line: Line, jig: SerialJig) -> None:
    config = line.config(serial=serial_section(jig.directory / "port-*"))
    first = AgentProcess(config, env=line.env).start()
    line.agents.append(first)
    specs = fleet_specs(24, model=MODEL, id_prefix="KILL")
    runner, result = in_background(lambda: run_devices(line, queue_specs(jig.ports, specs), deadline_s=150))
    try:
        wait_until(lambda: line.emulator.audit()["keys"]["minted"] >= 6, timeout=60)
        first.kill()  # mid-device on several ports: keys minted, pushed, in activation
        killed_at = line.emulator.audit()["keys"]
        second = AgentProcess(config, env=line.env).start()
        line.agents.append(second)
    finally:
        runner.join(200)
    (devices,) = result
    assert_licensed_once(line, devices)
    assert killed_at["minted"] < len(specs)  # the kill happened mid-run, not after it
    keys = line.emulator.audit()["keys"]
    assert keys["used"] == len(specs)
    # A key minted before the kill is not kept (keys are never stored): a device caught mid-way may get a fresh
    # one after the restart, and the first expires unused. One device per port is in flight at a time.
    assert keys["minted"] <= len(specs) + len(jig.ports)


@pytest.mark.timeout(120)
def test_simulate_command_drives_serial_devices_over_its_own_jig(line: Line, tmp_path: Path) -> None:
    folder = tmp_path / "cli-jig"
    line.start_agent(serial=serial_section(folder / "port-*"))
    command = [sys.executable, "-m", "provisioning_lab", "simulate", "--emulator", line.emulator.url, "--json",
               "--serial-dir", str(folder), "--serial-ports", "3", "--serial-devices", "5",
               "--time-scale", "0.05", "--deadline", "60"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"]["licensed"] == 5
    assert {d["protocol"] for d in report["devices"]} == {"serial"}
    assert {d["tid"] for d in report["devices"]} == {str(folder / f"port-0{n}") for n in (1, 2, 3)}
    with contextlib.suppress(FileNotFoundError):
        assert list(folder.iterdir()) == []  # the jig removed its links
