"""The simulator's serial jig (lab/provisioning_lab/simulator/_jig.py) over real pseudo-terminals, and its pure parts.

The far side of each port is opened the way the agent opens it: pyserial on the link in the jig's
folder. Timing is only ever checked from below (the jig must never deliver faster than the line
rate); a loaded machine can only make things slower.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from provisioning.serial import Frame, FrameDecoder, FrameType, encode_frame
from provisioning_lab.simulator import Noise, SerialJig, line_rate, queue_specs
from provisioning_lab.simulator._jig import _pieces
from provisioning_lab.simulator._serial import PortQueue
from provisioning_lab.simulator._serial_cli import _noise, add_serial_arguments, wants_serial
from provisioning_lab.simulator._spec import DeviceSpec

WAIT_S = 10.0


class Far:
    """The agent's side of a port: pyserial on the jig's link, reading in a thread."""

    def __init__(self, path: Path) -> None:
        self.port = serial.Serial(str(path), baudrate=115200, timeout=0.01)
        self.data = bytearray()
        self.arrivals: list[tuple[float, int]] = []  # (when, total bytes so far)
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="far", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.port.read(65536)
            except (serial.SerialException, OSError) as exc:
                self.error = exc
                return
            if chunk:
                self.data += chunk
                self.arrivals.append((time.monotonic(), len(self.data)))

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.data) < count and self.error is None:
            assert time.monotonic() < deadline, f"got {len(self.data)} of {count} bytes"
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.port.close()


class Near:
    """The device's side: attached to a jig port, collecting what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()

    def __call__(self, chunk: bytes) -> None:
        with self.lock:
            self.data += chunk

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.data) < count:
            assert time.monotonic() < deadline, f"got {len(self.data)} of {count} bytes"
            time.sleep(0.005)


@pytest.fixture(name="jig")
def jig_fixture(tmp_path: Path) -> Iterator[SerialJig]:
    with SerialJig(tmp_path / "jig", 3) as jig:
        yield jig


def frames(count: int, size: int) -> bytes:
    return b"".join(encode_frame(Frame(FrameType.DATA, i, bytes([0x41 + i % 26]) * size)) for i in range(count))


# -- ports, links, both directions ------------------------------------------------------------------


def test_ports_are_linked_into_the_folder_and_carry_bytes_both_ways(jig: SerialJig, tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "jig").iterdir()) == ["port-01", "port-02", "port-03"]
    port = jig.port(2)
    assert port.path.resolve() == Path(port.pty_name)
    far, near = Far(port.path), Near()
    port.attach(near)
    try:
        out = frames(3, 100)
        port.write(out)
        far.wait_for(len(out))
        assert bytes(far.data) == out
        back = frames(2, 50)
        far.port.write(back)
        near.wait_for(len(back))
        assert bytes(near.data) == back
        assert (port.stats.to_agent, port.stats.from_agent) == (len(out), len(back))
    finally:
        far.close()


def test_the_line_is_never_faster_than_115200_8n1_either_way(jig: SerialJig) -> None:
    port = jig.port(1)
    far, near = Far(port.path), Near()
    port.attach(near)
    try:
        out = frames(8, 500)  # 8 frames, ~4 KB: 0.35 s at 11 520 bytes/s
        started = time.monotonic()
        port.write(out)
        far.wait_for(len(out))
        assert time.monotonic() - started >= len(out) / line_rate(115200) - 0.01
        # each frame arrives whole, no earlier than its last byte would on a UART
        for when, total in far.arrivals:
            assert when - started >= total / line_rate(115200) - 0.01
        assert FrameDecoder().feed(bytes(far.data)) == [
            Frame(FrameType.DATA, i, bytes([0x41 + i]) * 500) for i in range(8)
        ]
        back = frames(4, 500)
        started = time.monotonic()
        far.port.write(back)
        near.wait_for(len(back))
        assert time.monotonic() - started >= len(back) / line_rate(115200) - 0.01
    finally:
        far.close()


def test_an_unpaced_jig_delivers_at_once(tmp_path: Path) -> None:
    with SerialJig(tmp_path / "fast", 1, baudrate=0) as jig:
        far = Far(jig.port(1).path)
        try:
            out = frames(20, 1000)  # 1.8 s at 115200; unpaced it is only as slow as the machine
            jig.port(1).write(out)
            far.wait_for(len(out))
            assert bytes(far.data) == out
        finally:
            far.close()


# -- hotplug ------------------------------------------------------------------------------------------


def test_unplug_hangs_up_the_open_port_and_replug_brings_it_back_under_the_same_name(jig: SerialJig) -> None:
    port = jig.port(3)
    first_pty = port.pty_name
    far = Far(port.path)
    try:
        port.unplug()
        assert not port.path.is_symlink()
        assert not port.plugged
        assert port.pty_name == ""
        deadline = time.monotonic() + WAIT_S
        while far.error is None:  # the agent's read fails: the port vanished
            assert time.monotonic() < deadline
            time.sleep(0.01)
        port.write(b"\x00lost\x00")
        assert port.stats.lost == 6
    finally:
        far.close()
    port.replug()
    assert port.path.resolve() == Path(port.pty_name)
    assert port.stats.plugs == 2
    far = Far(port.path)
    try:
        port.write(b"\x00back\x00")
        far.wait_for(6)
        assert bytes(far.data) == b"\x00back\x00"
    finally:
        far.close()
    assert first_pty  # a pty existed before; its number may be reused


def test_add_port_plugs_the_next_number(jig: SerialJig) -> None:
    port = jig.add_port()
    assert (port.number, port.path.name, port.path.is_symlink()) == (4, "port-04", True)


# -- noise --------------------------------------------------------------------------------------------


def test_noise_damages_bytes_both_ways(jig: SerialJig) -> None:
    port = jig.port(1)
    port.noise = Noise(flip=0.5)
    far, near = Far(port.path), Near()
    port.attach(near)
    try:
        out = bytes(range(1, 256)) * 4
        port.write(out)
        far.wait_for(len(out))
        assert len(far.data) == len(out)
        assert bytes(far.data) != out
        far.port.write(out)
        near.wait_for(len(out))
        assert bytes(near.data) != out
    finally:
        far.close()


def test_idle_garbage_fills_the_line_at_line_rate_and_frames_still_pass(jig: SerialJig) -> None:
    port = jig.port(2)
    far = Far(port.path)
    try:
        started = time.monotonic()
        port.noise = Noise(idle_garbage=True)
        time.sleep(0.5)
        frame = encode_frame(Frame(FrameType.DATA, 7, b"through the garbage"))
        port.write(frame)
        time.sleep(0.3)
        port.noise = Noise()
        elapsed = time.monotonic() - started
        far.wait_for(port.stats.to_agent)
        assert port.stats.garbage > 0.3 * line_rate(115200)
        assert port.stats.garbage <= elapsed * line_rate(115200) + 1  # never more than the line carries
        decoded = [item for item in FrameDecoder().feed(bytes(far.data)) if isinstance(item, Frame)]
        assert Frame(FrameType.DATA, 7, b"through the garbage") in decoded
    finally:
        far.close()


def test_unpaced_idle_garbage_floods(tmp_path: Path) -> None:
    with SerialJig(tmp_path / "flood", 1, baudrate=0, noise=Noise(idle_garbage=True)) as jig:
        far = Far(jig.port(1).path)
        try:
            time.sleep(0.5)
            jig.port(1).noise = Noise()
            assert jig.port(1).stats.garbage > 2 * 0.5 * line_rate(115200)  # faster than any UART
        finally:
            far.close()


def test_noise_apply_each_kind() -> None:
    rnd = random.Random(5)
    data = bytes(range(1, 201))
    flipped = Noise(flip=1.0).apply(data, rnd)
    assert len(flipped) == len(data)
    assert all(bin(a ^ b).count("1") == 1 for a, b in zip(data, flipped, strict=True))
    assert Noise(drop=1.0).apply(data, rnd) == b""
    assert Noise(dup=1.0).apply(data, rnd) == bytes(b for b in data for _ in range(2))
    cut = Noise(cut=1.0).apply(data, rnd)
    assert len(data) - 64 <= len(cut) < len(data)
    assert Noise().apply(data, rnd) == data
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        Noise(flip=2.0)
    with pytest.raises(ValueError, match="must not exceed 1"):
        Noise(flip=0.6, drop=0.6)


def test_pieces_end_at_frame_delimiters() -> None:
    ack = encode_frame(Frame(FrameType.ACK, 0))
    data = ack + ack + b"\x00\x00\x00" + b"tail"
    pieces = _pieces(data)
    assert b"".join(pieces) == data
    assert pieces == [ack, ack, b"\x00\x00\x00tail"]
    assert _pieces(bytes(10)) == [bytes(10)]


def test_jig_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="baudrate"):
        SerialJig(tmp_path, 1, baudrate=-1)
    with pytest.raises(ValueError, match="ports"):
        SerialJig(tmp_path, -1)


def test_queue_specs_deals_devices_round_robin(jig: SerialJig) -> None:
    specs = [DeviceSpec(f"D{i}", f"hw{i}", "m") for i in range(7)]
    queues = queue_specs(jig.ports, specs)
    assert [[s.device_id for s in q.specs] for q in queues] == [["D0", "D3", "D6"], ["D1", "D4"], ["D2", "D5"]]
    assert [q.port for q in queues] == jig.ports
    with pytest.raises(ValueError, match="no ports"):
        queue_specs([], specs)
    with pytest.raises(ValueError, match="swap_s"):
        PortQueue(jig.port(1), (), swap_s=-1)


def test_closing_the_jig_removes_every_link(tmp_path: Path) -> None:
    jig = SerialJig(tmp_path / "gone", 2)
    jig.close()
    assert list((tmp_path / "gone").iterdir()) == []
    assert all(not port.plugged for port in jig.ports)
    assert os.path.isdir(tmp_path / "gone")


def test_simulate_serial_options_parse_and_refuse_bad_input() -> None:
    assert _noise("flip=3e-4,cut=0.05,garbage=1") == Noise(flip=3e-4, cut=0.05, idle_garbage=True)
    for bad in ("flip", "flip=2", "hum=0.1", "flip=0.7,drop=0.7"):
        with pytest.raises(argparse.ArgumentTypeError):
            _noise(bad)
    parser = argparse.ArgumentParser()
    add_serial_arguments(parser)
    assert not wants_serial(parser.parse_args([]))
    args = parser.parse_args(["--serial-dir", "/tmp/x", "--baudrate", "0", "--replug"])
    assert wants_serial(args)
    assert (args.baudrate, args.replug, args.serial_ports) == (0, True, 4)


def test_simulate_without_any_transport_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "provisioning_lab", "simulate", "--emulator", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--serial-dir" in done.stderr
