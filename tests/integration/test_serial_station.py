"""A serial-only station: the real agent (no broker), devices on real pseudo-terminals, the emulator.

Each device here is a thread driving the device side of the link layer over a pty master, with
the protocol messages written out by hand: the agent's serial transport is checked against the
spec (docs/protocol.md), not against our own simulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import serial
import serial.rfc2217

from provisioning.serial import LinkConfig, LinkEndpoint, MessageReceived, SendBytes
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess
from tests.integration.provisioning_line import unsealed_profiles

MODEL = "gate-controller-g2"
FAST = LinkConfig(ack_timeout_s=0.1, hello_interval_s=0.2)
WAIT_S = 30.0  # a guard against hangs, not a timing assertion


class LinkDevice:
    """The device end of one link: a file descriptor driven by a LinkEndpoint in a thread."""

    def __init__(self, fd: int, keep: tuple[Any, ...] = ()) -> None:
        self.master = fd
        self._keep = keep  # what must stay open while the device runs
        self.endpoint = LinkEndpoint(FAST)
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._perform(self.endpoint.send_message(json.dumps(message).encode(), time.monotonic()))

    def wait_for(self, kind: str, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                matching = [m for m in self.received if m["type"] == kind]
            if len(matching) >= count:
                return matching[count - 1]
            time.sleep(0.02)
        raise AssertionError(f"no {kind!r} within {WAIT_S} s; received {[m['type'] for m in self.received]}")

    def unplug(self) -> None:
        """The cable is pulled: the port disappears."""
        self._stop.set()
        self._thread.join(5)
        for item in self._keep:
            with contextlib.suppress(OSError):
                item.close() if isinstance(item, socket.socket) else os.close(item)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            data = os.read(self.master, 4096) if ready else b""
            with self._lock:
                now = time.monotonic()
                events = self.endpoint.receive_bytes(data, now) if data else []
                deadline = self.endpoint.next_deadline()
                if deadline is not None and deadline <= now:
                    events += self.endpoint.tick(now)
                self._perform(events)

    def _perform(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                os.write(self.master, event.data)
            elif isinstance(event, MessageReceived):
                self.received.append(json.loads(event.payload))


class PtyDevice(LinkDevice):
    """A device on a jig port: a pty whose slave is linked into the folder the agent watches."""

    def __init__(self, link_path: Path) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        link_path.symlink_to(os.ttyname(slave))
        self.link_path = link_path
        super().__init__(master, (master, slave))

    def unplug(self) -> None:
        super().unplug()
        self.link_path.unlink()


def register(device_id: str, message_id: str = "r-1") -> dict[str, Any]:
    return {"v": 1, "type": "register", "id": message_id, "device_id": device_id,
            "hardware_id": f"hw-{device_id}", "model": MODEL}  # fmt: skip


def activate(emulator: EmulatorProcess, key: dict[str, Any], device_id: str) -> dict[str, Any]:
    answer = httpx.post(
        emulator.url + "/_emulator/activate", json={"AuthKey": key["auth_key"], "HardwareId": f"hw-{device_id}"}
    )
    answer.raise_for_status()
    licence: dict[str, Any] = answer.json()
    return {"v": 1, "type": "result", "id": "r-2", "device_id": device_id, "hardware_id": f"hw-{device_id}",
            "model": MODEL, "attempt": key["attempt"], "ok": True, "sdk_device_id": licence["DeviceId"],
            "begin_day": licence["BeginDay"], "expired_day": licence["ExpiredDay"]}  # fmt: skip


def start_station(tmp_path: Path, emulator: EmulatorProcess, ports: list[str]) -> AgentProcess:
    config = write_config(
        tmp_path / "agent.toml",
        {
            "gateway_id": "jig-rack-1",
            "journal": str(tmp_path / "journal.sqlite3"),
            # These hand-written jig devices activate the AuthKey they read off the line: unsealed on purpose.
            "profiles": unsealed_profiles(tmp_path / "profiles"),
            "log_level": "debug",
            "cloud": {"endpoint": emulator.url, "qps": 100.0, "burst": 10},
            "mqtt": {"enabled": False},
            "upstream": {"mqtt_topic": ""},
            "http": {"listen": "", "socket": ""},
            "serial": {"ports": ports, "usb": False, "scan_interval_s": 0.2},
        },
    )
    env = dict(
        os.environ,
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
    )
    return AgentProcess(config, env=env).start()


@pytest.fixture(name="station")
def station_fixture(tmp_path: Path, emulator: EmulatorProcess) -> Iterator[tuple[Path, AgentProcess]]:
    jig = tmp_path / "jig"
    jig.mkdir()
    agent = start_station(tmp_path, emulator, [str(jig / "port-*")])
    yield jig, agent
    agent.stop()


def test_devices_on_several_ports_are_licensed_without_a_broker(
    station: tuple[Path, AgentProcess], emulator: EmulatorProcess
) -> None:
    jig, agent = station
    devices = {f"G2-{n:04d}": PtyDevice(jig / f"port-{n:02d}") for n in range(4)}  # plugged in while it runs
    try:
        for device_id, device in devices.items():
            device.send(register(device_id))
        for device_id, device in devices.items():
            key = device.wait_for("key")
            assert key["device_id"] == device_id
            device.send(activate(emulator, key, device_id))
        for device_id, device in devices.items():
            done = device.wait_for("done")
            assert done["device_id"] == device_id
            assert done["expired_day"]
    finally:
        for device in devices.values():
            device.unplug()
    audit = emulator.audit()
    assert audit["licences_consumed_total"] == len(devices), audit
    assert "serial:" in agent.log_text()


def test_a_device_unplugged_after_its_key_resumes_on_the_same_port(
    station: tuple[Path, AgentProcess], emulator: EmulatorProcess
) -> None:
    jig, agent = station
    device = PtyDevice(jig / "port-07")
    device.send(register("G2-0100"))
    key = device.wait_for("key")
    result = activate(emulator, key, "G2-0100")
    device.unplug()  # activated, but the result never left: the cable was pulled
    deadline = time.monotonic() + WAIT_S
    while "gone" not in agent.log_text():
        assert time.monotonic() < deadline, agent.log_text()
        time.sleep(0.05)
    back = PtyDevice(jig / "port-07")  # plugged in again (a new pty: as a USB reset renumbers a node)
    try:
        back.send(result)
        done = back.wait_for("done")
        back.send(register("G2-0100", "r-3"))  # a reboot: registers again, gets the stored result
        again = back.wait_for("done", 2)
    finally:
        back.unplug()
    assert done["sdk_device_id"] == result["sdk_device_id"] == again["sdk_device_id"]
    assert emulator.audit()["licences_consumed_total"] == 1


def test_hostile_bytes_and_a_bad_message_are_answered_and_the_port_keeps_serving(
    station: tuple[Path, AgentProcess], emulator: EmulatorProcess
) -> None:
    jig, _ = station
    device = PtyDevice(jig / "port-01")
    try:
        os.write(device.master, os.urandom(3000))  # noise on the line before the handshake
        device.endpoint.send_message(b'{"v": 1, "type": "register", "id": 7}', time.monotonic())
        device.send({"v": 1, "type": "register", "id": "x", "device_id": "G2-9", "hardware_id": "h", "model": "nope"})
        error = device.wait_for("error")
        assert error["code"] in {"invalid_field", "malformed"}
        unknown = device.wait_for("error", 2)
        assert unknown["code"] == "unknown_profile"
        device.send(register("G2-0200"))
        key = device.wait_for("key")
        device.send(activate(emulator, key, "G2-0200"))
        assert device.wait_for("done")["device_id"] == "G2-0200"
    finally:
        device.unplug()


def test_a_remote_jig_over_a_socket_url(tmp_path: Path, emulator: EmulatorProcess) -> None:
    """A jig behind a serial-to-Ethernet server: the agent opens ``socket://host:port`` with pyserial."""
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    agent = start_station(tmp_path, emulator, [url])
    try:
        server.settimeout(WAIT_S)
        connection, _ = server.accept()
        device = LinkDevice(connection.fileno(), (connection, server))
        try:
            device.send(register("G2-0300"))
            key = device.wait_for("key")
            device.send(activate(emulator, key, "G2-0300"))
            assert device.wait_for("done")["device_id"] == "G2-0300"
        finally:
            device.unplug()
    finally:
        agent.stop()
    assert f"port {url}: opened" in agent.log_text()


@dataclass
class _SocketWriter:
    sock: socket.socket

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


class PtySerial(serial.Serial):
    """A pty opened with pyserial: a pty has no modem lines, so their ioctls are answered here."""

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


class Rfc2217Server:
    """A serial-to-Ethernet server speaking RFC 2217 (pyserial's PortManager) in front of a pty."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        self.port = PtySerial(os.ttyname(slave), timeout=0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(WAIT_S)
        connection, _ = self.listener.accept()
        writer = _SocketWriter(connection)  # PortManager answers telnet options through .write()
        manager = serial.rfc2217.PortManager(self.port, writer)  # type: ignore[arg-type] # duck-typed in pyserial
        while not self._stop.is_set():
            ready, _, _ = select.select([connection.fileno(), self.port.fileno()], [], [], 0.05)
            if connection.fileno() in ready:
                data = connection.recv(4096)
                if not data:
                    break
                self.port.write(b"".join(manager.filter(data)))
            if self.port.fileno() in ready:
                connection.sendall(b"".join(manager.escape(self.port.read(4096))))
        connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.port.close()
        self.listener.close()
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_a_remote_jig_over_rfc2217(tmp_path: Path, emulator: EmulatorProcess) -> None:
    """A jig behind an RFC 2217 server (telnet with serial-port control): the agent opens ``rfc2217://``."""
    server = Rfc2217Server()
    agent = start_station(tmp_path, emulator, [server.url])
    device = LinkDevice(server.master)
    try:
        device.send(register("G2-0400"))
        key = device.wait_for("key")
        device.send(activate(emulator, key, "G2-0400"))
        assert device.wait_for("done")["device_id"] == "G2-0400"
    finally:
        device.unplug()
        agent.stop()
        server.close()
    assert f"port {server.url}: opened" in agent.log_text()
