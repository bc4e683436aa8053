"""The serial link over real pseudo-terminals opened with pyserial, through a relay that can add noise.

Topology: ``Station A -- pyserial -- pty A || relay || pty B -- pyserial -- Station B``. Each station is one
:class:`LinkEndpoint` driven by a thread that owns its port (what the daemon's serial transport will do); the
relay copies bytes between the two pty masters and injects bit flips, drops, duplicates, cuts and garbage.
A pty has no baud rate, so "line rate" garbage is paced by the relay at 115200 8N1 (11 520 bytes/s).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import serial

from provisioning.serial import (
    MAX_ENCODED,
    DropReason,
    Event,
    Failed,
    FailureReason,
    Frame,
    FrameDecoder,
    FrameType,
    LinkConfig,
    LinkEndpoint,
    LinkState,
    LinkUp,
    MessageAcked,
    MessageDropped,
    MessageReceived,
    SendBytes,
)
from provisioning_lab.simulator import Noise as LineNoise

LINE_RATE = 115200 // 10  # bytes/s at 115200 8N1
FAST = LinkConfig(ack_timeout_s=0.1, hello_interval_s=0.2)  # test pace; the protocol's defaults are 0.5 s and 1 s
FLOOD_S = 1.5  # how long a flood test floods
WAIT_S = 20.0  # the longest any exchange below may take before the test fails


@dataclass
class Pty:
    """One pseudo-terminal: the relay works the master, a station opens the slave by name."""

    master: int
    slave: int  # held open so the master never reads EIO between opens
    name: str

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_pty() -> Pty:
    master, slave = os.openpty()
    tty.setraw(slave)  # every byte passes untouched: no echo, no CR/LF mapping, no ^C, no XON/XOFF
    return Pty(master, slave, os.ttyname(slave))


class Station:
    """One endpoint on a real port, pumped by a thread that owns the port."""

    def __init__(self, port_name: str, config: LinkConfig, name: str) -> None:
        self.port = serial.Serial(port_name, baudrate=115200, timeout=0.005)
        self.endpoint = LinkEndpoint(config)
        self.events: list[Event] = []
        self.max_buffered = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"station-{name}", daemon=True)
        self._thread.start()

    def send(self, payload: bytes) -> None:
        with self._lock:
            self._perform(self.endpoint.send_message(payload, time.monotonic()))

    def of(self, kind: type[Event]) -> list[Event]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def received(self) -> list[bytes]:
        return [e.payload for e in self.of(MessageReceived)]  # type: ignore[union-attr]

    def wait_for(self, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out; events: {self.events[-10:]}"
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.port.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self.port.read(4096)
            with self._lock:
                now = time.monotonic()
                events = self.endpoint.receive_bytes(data, now) if data else []
                deadline = self.endpoint.next_deadline()
                if deadline is not None and deadline <= now:
                    events += self.endpoint.tick(now)
                self._perform(events)
                self.max_buffered = max(self.max_buffered, self.endpoint.buffered)

    def _perform(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                self.port.write(event.data)
            else:
                self.events.append(event)


@dataclass(frozen=True)
class Noise(LineNoise):
    """The jig's line damage (``cut`` per read here), plus garbage before anything is forwarded."""

    lead_garbage_s: float = 0.0  # garbage at line rate, and nothing forwarded, for this long at the start


@dataclass
class Relay:
    """Copies bytes between two pty masters in both directions, through ``noise``."""

    a: Pty
    b: Pty
    noise: Noise
    seed: int = 1
    cut_off: threading.Event = field(default_factory=threading.Event)  # set: the line carries nothing
    garbage_sent: list[int] = field(default_factory=lambda: [0, 0])
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index, (src, dst) in enumerate([(self.a.master, self.b.master), (self.b.master, self.a.master)]):
            rnd = random.Random(self.seed * 2 + index)
            thread = threading.Thread(target=self._copy, args=(src, dst, rnd, index), name=f"relay-{index}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _copy(self, src: int, dst: int, rnd: random.Random, index: int) -> None:
        started = last = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select([src], [], [], 0.005)
            now = time.monotonic()
            data = os.read(src, 4096) if ready else b""
            leading = now - started < self.noise.lead_garbage_s
            data = b"" if leading or self.cut_off.is_set() else self.noise.apply(data, rnd)
            if (leading or self.noise.idle_garbage) and not data:
                garbage = rnd.randbytes(max(1, int((now - last) * LINE_RATE)))
                self.garbage_sent[index] += len(garbage)
                data = garbage
            last = now
            while data:
                written = os.write(dst, data)
                data = data[written:]


@dataclass
class Line:
    a: Station
    b: Station
    relay: Relay


@contextlib.contextmanager
def line(noise: Noise, config: LinkConfig = FAST, *, cut_off: bool = False) -> Iterator[Line]:
    """Two stations on two ptys joined by a relay (``cut_off``: carrying nothing); everything closed afterwards."""
    ptys = [open_pty(), open_pty()]
    relay = Relay(ptys[0], ptys[1], noise)
    if cut_off:
        relay.cut_off.set()
    stations: list[Station] = []
    try:
        relay.start()
        stations.append(Station(ptys[0].name, config, "a"))
        stations.append(Station(ptys[1].name, config, "b"))
        yield Line(stations[0], stations[1], relay)
    finally:
        for station in stations:
            station.close()
        relay.stop()
        for pty in ptys:
            pty.close()


def messages(tag: str, count: int, size: int) -> list[bytes]:
    return [(f'{{"v":1,"type":"register","id":"{tag}-{i}","pad":"' + "x" * size + '"}').encode() for i in range(count)]


def exchange(ln: Line, to_b: list[bytes], to_a: list[bytes]) -> None:
    """Send both lists at once (as fast as the queues take them); wait until each side has the other's."""
    for a_msg, b_msg in zip(to_b, to_a, strict=True):
        for station, payload in ((ln.a, a_msg), (ln.b, b_msg)):
            while station.endpoint.pending >= station.endpoint.config.max_queued:
                time.sleep(0.002)
            station.send(payload)
    ln.b.wait_for(lambda: len(ln.b.received()) >= len(to_b) or bool(ln.a.of(Failed)))
    ln.a.wait_for(lambda: len(ln.a.received()) >= len(to_a) or bool(ln.b.of(Failed)))
    ln.a.wait_for(lambda: ln.a.endpoint.pending == 0 and ln.b.endpoint.pending == 0)


# -- tests ------------------------------------------------------------------------------------------


def test_clean_line() -> None:
    with line(Noise()) as ln:
        ln.a.wait_for(lambda: ln.a.endpoint.state is LinkState.UP and ln.b.endpoint.state is LinkState.UP)
        to_b = [*messages("a", 30, 200), b"x" * 4096]
        to_a = [*messages("b", 30, 50), b"y" * 4096]
        exchange(ln, to_b, to_a)
        assert (ln.b.received(), ln.a.received()) == (to_b, to_a)
        assert [e.payload for e in ln.a.of(MessageAcked)] == to_b  # type: ignore[union-attr]
        assert ln.a.of(Failed) == ln.b.of(Failed) == []
        assert ln.a.endpoint.stats.crc_errors == ln.b.endpoint.stats.crc_errors == 0


def test_noisy_line() -> None:
    """Bit flips, drops, duplicates and cut frames: every message arrives once, in order; bad frames fail the CRC."""
    noise = Noise(flip=3e-4, drop=1e-4, dup=1e-4, cut=0.03)  # about one frame in five damaged
    with line(noise) as ln:
        to_b, to_a = messages("a", 40, 300), messages("b", 40, 120)
        exchange(ln, to_b, to_a)
        assert ln.a.of(Failed) == ln.b.of(Failed) == []
        assert (ln.b.received(), ln.a.received()) == (to_b, to_a)
        stats = [ln.a.endpoint.stats, ln.b.endpoint.stats]
        assert sum(s.crc_errors for s in stats) > 0
        assert sum(s.retransmissions for s in stats) > 0
        assert sum(sum(s.framing_errors.values()) for s in stats) > 0


def test_device_that_never_answers() -> None:
    """HELLOs go unanswered: one clear failure after hello_tries, HELLO goes on, the message waits (then expires)."""
    config = LinkConfig(ack_timeout_s=0.1, hello_interval_s=0.2, message_ttl_s=2.0)
    started = time.monotonic()
    with line(Noise(), config, cut_off=True) as ln:  # nothing reaches the far side: it never hears a thing
        ln.a.send(b'{"v":1}')
        ln.a.wait_for(lambda: bool(ln.a.of(Failed)))
        assert time.monotonic() - started == pytest.approx(5 * 0.2, abs=0.3)
        assert ln.a.of(Failed) == [Failed(FailureReason.NO_ANSWER, "no answer to 5 HELLOs in 1 s")]
        ln.a.wait_for(lambda: bool(ln.a.of(MessageDropped)))
        assert ln.a.of(MessageDropped) == [MessageDropped(b'{"v":1}', DropReason.EXPIRED)]
        assert len(ln.a.of(Failed)) == 1
        assert ln.b.received() == []


def test_device_goes_silent_then_comes_back() -> None:
    """A peer that stops answering mid-link: the retries run out, a clear failure; the line back, the link too."""
    with line(Noise()) as ln:
        ln.a.wait_for(lambda: len(ln.a.of(LinkUp)) == 1 and len(ln.b.of(LinkUp)) == 1)
        ln.relay.cut_off.set()
        started = time.monotonic()
        ln.a.send(b"lost")
        ln.a.send(b"queued")
        ln.a.wait_for(lambda: bool(ln.a.of(Failed)))
        assert 10 * 0.1 < time.monotonic() - started < 10 * 0.1 + 0.6  # ten tries of 0.1 s plus airtime
        assert ln.a.of(Failed) == [Failed(FailureReason.NO_ACK, "DATA seq 0 unacknowledged after 10 tries")]
        assert ln.a.of(MessageDropped) == [
            MessageDropped(b"lost", DropReason.LINK_FAILED),
            MessageDropped(b"queued", DropReason.LINK_FAILED),
        ]
        assert ln.a.endpoint.state is LinkState.CONNECTING
        ln.relay.cut_off.clear()
        ln.a.wait_for(lambda: len(ln.a.of(LinkUp)) == 2)
        ln.a.send(b"after")
        ln.b.wait_for(lambda: ln.b.received() == [b"after"])


def test_garbage_at_start() -> None:
    """Line-rate garbage while both sides boot (banners, noise, a wrong baud rate), then all is well."""
    with line(Noise(lead_garbage_s=0.7)) as ln:  # shorter than the 5 HELLOs (1 s) that would report no answer
        ln.a.send(b"first")
        ln.b.send(b"first too")
        ln.b.wait_for(lambda: ln.b.received() == [b"first"])
        ln.a.wait_for(lambda: ln.a.received() == [b"first too"])
        assert min(ln.relay.garbage_sent) > 0.5 * LINE_RATE
        assert ln.a.endpoint.stats.bytes_received > 0.5 * LINE_RATE
        assert ln.a.of(Failed) == ln.b.of(Failed) == []


def test_garbage_at_full_line_rate_between_frames() -> None:
    """Random bytes fill every idle moment of both directions at line rate: frames still get through, in order."""
    with line(Noise(idle_garbage=True)) as ln:
        started = time.monotonic()
        to_b, to_a = messages("a", 30, 200), messages("b", 30, 200)
        for part in range(3):  # in bursts with pauses, the way a device talks: the garbage owns the line between
            exchange(ln, to_b[part * 10 : part * 10 + 10], to_a[part * 10 : part * 10 + 10])
            time.sleep(0.4)
        elapsed = time.monotonic() - started
        assert (ln.b.received(), ln.a.received()) == (to_b, to_a)
        assert min(ln.relay.garbage_sent) > 0.5 * LINE_RATE * elapsed
        assert max(ln.a.max_buffered, ln.b.max_buffered) <= MAX_ENCODED
        assert sum(ln.a.endpoint.stats.framing_errors.values()) + ln.a.endpoint.stats.crc_errors > 0


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param(lambda rnd, n: rnd.randbytes(n), id="random"),
        pytest.param(lambda rnd, n: bytes(n), id="zeros"),
        pytest.param(lambda rnd, n: b"\xff" * n, id="no-delimiter"),
    ],
)
def test_flood_does_not_stall_the_endpoint(pattern: Callable[[random.Random, int], bytes]) -> None:
    """A peer that floods the port as fast as the pty takes it: HELLO stays on time, memory stays bounded."""
    pty = open_pty()
    station = Station(pty.name, FAST, "flooded")
    stop = threading.Event()
    sent = [0]
    hellos: list[float] = []

    def flood() -> None:
        rnd = random.Random(3)
        while not stop.is_set():
            _, ready, _ = select.select([], [pty.master], [], 0.01)
            if ready:
                sent[0] += os.write(pty.master, pattern(rnd, 4096))

    def listen() -> None:
        decoder = FrameDecoder()
        while not stop.is_set():
            ready, _, _ = select.select([pty.master], [], [], 0.01)
            if ready:
                for item in decoder.feed(os.read(pty.master, 4096)):
                    if isinstance(item, Frame) and item.type is FrameType.HELLO:
                        hellos.append(time.monotonic())

    threads = [threading.Thread(target=flood, name="flood"), threading.Thread(target=listen, name="listen")]
    try:
        for thread in threads:
            thread.start()
        time.sleep(FLOOD_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        station.close()
        pty.close()
    assert sent[0] > 10 * LINE_RATE * FLOOD_S  # ten times the line rate, at least
    assert station.endpoint.stats.bytes_received > 10 * LINE_RATE * FLOOD_S
    assert station.max_buffered <= MAX_ENCODED
    assert len(hellos) >= FLOOD_S / 0.2 - 2  # one every 0.2 s
    assert max(later - earlier for earlier, later in itertools.pairwise(hellos)) < 0.5
