"""A serial jig on this machine: pseudo-terminals that look like USB-UART ports, paced like a real UART.

How it works
------------
``SerialJig(directory, ports=N)`` opens N pseudo-terminals and links each slave into
``directory`` as ``port-01`` ... ``port-NN`` (what an agent's ``[serial] ports`` glob finds). The
jig works the masters, the device side; the agent opens the links, the line side.

A pty moves bytes instantly. One thread (the jig's pump) makes each port behave like a UART at
``baudrate`` 8N1 in both directions: bytes written by a device leave the master only when the
last of them would have arrived at line rate (10 bits a byte), and bytes the agent writes reach
the device the same way. Bytes are scheduled in pieces that end at a 0x00 delimiter (a whole
frame at a time), so a receiver sees each frame complete exactly when its last byte lands, at a
cost of one wake-up per frame rather than per byte. ``baudrate=0`` turns pacing off.

``Noise`` damages the bytes of a port in both directions (bit flips, drops, duplicates, cut runs)
and can fill the line's idle time toward the agent with random bytes: at line rate when paced,
as fast as the pty takes them when not (a flood).

``unplug`` removes the link and closes the pty (the agent's open port hangs up: the port
vanished); ``replug`` opens a new pty under the same name; ``add_port`` plugs one more. A device
attached to a port (``attach``) stays attached through unplug and replug: its bytes are lost while
the port is gone, as they are when a cable is pulled. Every method is thread-safe.

``trace=True`` keeps every port's bytes with the time they crossed the pty (``JigPort.trace``), so
a benchmark can tell the agent's reaction time from the line's.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import random
import selectors
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from provisioning.serial import BITS_PER_BYTE, DEFAULT_BAUDRATE

__all__ = ["DEFAULT_PREFIX", "JigPort", "Noise", "SerialJig", "line_rate"]

DEFAULT_PREFIX: Final = "port-"
READ_SIZE: Final = 65536  # one read from a master; a pty holds less
FLOOD_CHUNK: Final = 4096  # one write of an unpaced flood
FLOOD_CHUNKS: Final = 16  # writes per pump turn at most, so other ports get their turn
BACKLOG_MAX: Final = 65536  # bytes toward the agent waiting for room in the pty; more is lost (nobody reads)
IDLE_TICK_S: Final = 0.01  # how often line-rate idle garbage is topped up (and the pump's longest sleep)

Consumer = Callable[[bytes], None]


def line_rate(baudrate: int) -> float:
    """Bytes per second at ``baudrate`` 8N1 (115200 -> 11520)."""
    return baudrate / BITS_PER_BYTE


@dataclass(frozen=True, slots=True)
class Noise:
    """What a port's line does to its bytes, in both directions (rates are per byte, ``cut`` per piece)."""

    flip: float = 0.0  # flip one bit of a byte
    drop: float = 0.0  # lose a byte
    dup: float = 0.0  # send a byte twice
    cut: float = 0.0  # lose a run of up to 64 bytes (a truncated frame)
    idle_garbage: bool = False  # random bytes toward the agent whenever the device is silent

    def __post_init__(self) -> None:
        if not all(0.0 <= p <= 1.0 for p in (self.flip, self.drop, self.dup, self.cut)):
            raise ValueError("noise rates must be within 0..1")
        if self.flip + self.drop + self.dup > 1.0:
            raise ValueError("flip + drop + dup must not exceed 1")

    @property
    def damages(self) -> bool:
        """Some bytes get damaged."""
        return bool(self.flip or self.drop or self.dup or self.cut)

    def apply(self, data: bytes, rnd: random.Random) -> bytes:
        """``data`` as the line delivers it."""
        if self.flip or self.drop or self.dup:
            out = bytearray()
            for byte in data:
                roll = rnd.random()
                if roll < self.flip:
                    out.append(byte ^ (1 << rnd.randrange(8)))
                elif roll < self.flip + self.drop:
                    pass
                elif roll < self.flip + self.drop + self.dup:
                    out += bytes((byte, byte))
                else:
                    out.append(byte)
            data = bytes(out)
        if data and self.cut and rnd.random() < self.cut:
            start = rnd.randrange(len(data))
            data = data[:start] + data[start + rnd.randint(1, 64) :]
        return data


@dataclass(slots=True)
class PortStats:
    """Bytes through one port since the jig started (all plug cycles)."""

    to_agent: int = 0  # written to the master (device frames and garbage)
    from_agent: int = 0  # read from the master
    garbage: int = 0  # of to_agent: idle garbage
    lost: int = 0  # bytes nobody could take: the port was unplugged, or nobody read 64 KB of backlog
    plugs: int = 0


class JigPort:
    """One port of the jig: a pty whose slave is linked as ``path``; a device attaches to its master side."""

    def __init__(self, jig: SerialJig, number: int, path: Path, noise: Noise, seed: int) -> None:
        self.number = number
        self.path = path
        self.noise = noise  # may be replaced at any time; applies to bytes from then on
        self.stats = PortStats()
        self._jig = jig
        self._rnd = random.Random(seed)
        self._master = -1
        self._slave = -1
        self._pty_name = ""
        self._generation = 0
        self._consumer: Consumer | None = None
        self._tx_busy = 0.0  # when the line toward the agent is next free
        self._rx_busy = 0.0  # when the line toward the device is next free
        self._garbage_at = 0.0
        self._backlog = bytearray()  # toward the agent, waiting for room in the pty
        self.trace: list[tuple[float, bool, bytes]] | None = None  # (when, toward the agent, bytes) when tracing

    @property
    def label(self) -> str:
        """The port's name as the agent sees it (the link's path)."""
        return str(self.path)

    @property
    def plugged(self) -> bool:
        """The port exists (its pty is open and linked)."""
        return self._master >= 0

    @property
    def pty_name(self) -> str:
        """The current pty slave (``/dev/pts/N``), empty while unplugged."""
        return self._pty_name

    def attach(self, consumer: Consumer | None) -> None:
        """Deliver the bytes the agent writes to ``consumer`` (called on the jig's thread); None detaches."""
        with self._jig.lock:
            self._consumer = consumer

    def write(self, data: bytes) -> None:
        """Send ``data`` toward the agent, through the line's pacing and noise."""
        self._jig.send(self, data)

    def unplug(self) -> None:
        """The port vanishes: its link is removed and its pty closed."""
        self._jig.unplug(self)

    def replug(self) -> None:
        """The port comes back under the same name (a new pty)."""
        self._jig.replug(self)


class SerialJig:
    """N pty ports linked into a folder, paced at ``baudrate`` and damaged by ``noise`` (see the module docstring)."""

    def __init__(
        self,
        directory: Path | str,
        ports: int,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        noise: Noise | None = None,
        prefix: str = DEFAULT_PREFIX,
        seed: int = 1,
        trace: bool = False,
    ) -> None:
        if ports < 0:
            raise ValueError("ports must be >= 0")
        if baudrate < 0:
            raise ValueError("baudrate must be >= 0 (0: no pacing)")
        self.directory = Path(directory)
        self.baudrate = baudrate
        self.lock = threading.RLock()
        self.ports: list[JigPort] = []
        self._prefix = prefix
        self._noise = noise or Noise()
        self._seed = seed
        self._trace = trace  # keep every port's bytes with their times (benchmarks: the agent's reaction time)
        self._width = max(2, len(str(ports)))
        self._rate = line_rate(baudrate) if baudrate else 0.0
        self._heap: list[tuple[float, int, JigPort, int, bool, bytes]] = []
        self._order = itertools.count()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="serial-jig", daemon=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._closed = False
        for _ in range(ports):
            self.add_port()
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def port(self, number: int) -> JigPort:
        """Port ``number`` (1-based, as in its name)."""
        return self.ports[number - 1]

    def add_port(self) -> JigPort:
        """Plug one more port (the next number); returns it."""
        with self.lock:
            number = len(self.ports) + 1
            path = self.directory / f"{self._prefix}{number:0{self._width}d}"
            port = JigPort(self, number, path, self._noise, self._seed * 1000 + number)
            port.trace = [] if self._trace else None
            self.ports.append(port)
            self._plug(port)
        return port

    def unplug(self, port: JigPort) -> None:
        """Remove ``port``'s link and close its pty; bytes in flight are lost."""
        with self.lock:
            if not port.plugged:
                return
            with contextlib.suppress(FileNotFoundError):
                port.path.unlink()
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(port._master)
            for fd in (port._master, port._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
            port._master = port._slave = -1
            port._pty_name = ""
            port.stats.lost += len(port._backlog)
            port._backlog.clear()
            port._generation += 1
        self._wake()

    def replug(self, port: JigPort) -> None:
        """Plug ``port`` again under its name, on a new pty."""
        with self.lock:
            if not port.plugged:
                self._plug(port)
        self._wake()

    def send(self, port: JigPort, data: bytes) -> None:
        """Queue ``data`` from the device side of ``port`` toward the agent (paced, damaged)."""
        with self.lock:
            if not port.plugged:
                port.stats.lost += len(data)
                return
            now = time.monotonic()
            port._tx_busy = self._schedule(port, data, now, port._tx_busy, to_agent=True)
        self._wake()

    def close(self) -> None:
        """Stop the pump and remove every port."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        for port in self.ports:
            self.unplug(port)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the pump ------------------------------------------------------------------------------------

    def _plug(self, port: JigPort) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # every byte passes untouched: no echo, no CR/LF mapping, no XON/XOFF
        os.set_blocking(master, False)
        name = os.ttyname(slave)
        staging = port.path.with_name(port.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        staging.symlink_to(name)
        staging.replace(port.path)  # atomic: a scanner never sees a half-made link
        port._master, port._slave, port._pty_name = master, slave, name
        port._generation += 1
        port._tx_busy = port._rx_busy = port._garbage_at = time.monotonic()
        port.stats.plugs += 1
        self._selector.register(master, selectors.EVENT_READ, port)

    def _schedule(self, port: JigPort, data: bytes, now: float, busy: float, *, to_agent: bool) -> float:
        """Queue ``data`` one way through the line; returns when that direction is free again."""
        noise = port.noise
        if noise.damages:
            data = noise.apply(data, port._rnd)
        if not data:
            return busy
        if not self._rate:
            heapq.heappush(self._heap, (now, next(self._order), port, port._generation, to_agent, data))
            return now
        at = max(now, busy)
        for piece in _pieces(data):
            at += len(piece) / self._rate
            heapq.heappush(self._heap, (at, next(self._order), port, port._generation, to_agent, piece))
        return at

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                timeout = IDLE_TICK_S
                if self._heap:
                    timeout = min(timeout, max(0.0, self._heap[0][0] - time.monotonic()))
            ready = self._selector.select(timeout)
            deliveries: list[tuple[Consumer, bytes]] = []
            with self.lock:
                now = time.monotonic()
                for key, mask in ready:
                    if key.fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    if mask & selectors.EVENT_READ:
                        self._read(key.data, now)
                    if mask & selectors.EVENT_WRITE:
                        self._flush(key.data)
                while self._heap and self._heap[0][0] <= now:
                    _, _, port, generation, to_agent, data = heapq.heappop(self._heap)
                    if generation != port._generation:
                        port.stats.lost += len(data)
                    elif to_agent:
                        self._write(port, data)
                    elif port._consumer is not None:
                        deliveries.append((port._consumer, data))
                for port in self.ports:
                    if port.plugged and port.noise.idle_garbage:
                        self._garbage(port, now)
            for consumer, data in deliveries:
                consumer(data)

    def _read(self, port: JigPort, now: float) -> None:
        try:
            data = os.read(port._master, READ_SIZE)
        except (BlockingIOError, OSError):
            return
        port.stats.from_agent += len(data)
        if port.trace is not None and data:
            port.trace.append((now, False, data))
        port._rx_busy = self._schedule(port, data, now, port._rx_busy, to_agent=False)

    def _write(self, port: JigPort, data: bytes) -> None:
        room = BACKLOG_MAX - len(port._backlog)
        port._backlog += data[:room]
        port.stats.lost += max(0, len(data) - room)  # nobody reads the port: the bytes are gone, as on a real line
        self._flush(port)

    def _flush(self, port: JigPort) -> None:
        if not port.plugged:
            return
        try:
            written = os.write(port._master, port._backlog) if port._backlog else 0
        except (BlockingIOError, OSError):
            written = 0
        if port.trace is not None and written:
            port.trace.append((time.monotonic(), True, bytes(port._backlog[:written])))
        del port._backlog[:written]
        port.stats.to_agent += written
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if port._backlog else 0)
        if self._selector.get_key(port._master).events != events:
            self._selector.modify(port._master, events, port)

    def _garbage(self, port: JigPort, now: float) -> None:
        if not self._rate:
            for _ in range(FLOOD_CHUNKS):  # as fast as the pty takes it; EVENT_WRITE says when there is room
                if port._backlog:
                    break
                port.stats.garbage += FLOOD_CHUNK
                self._write(port, port._rnd.randbytes(FLOOD_CHUNK))
            return
        since = max(port._tx_busy, port._garbage_at)
        count = int((now - since) * self._rate)
        if count >= 1:
            port.stats.garbage += count
            self._write(port, port._rnd.randbytes(count))
            port._garbage_at = port._tx_busy = since + count / self._rate

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\x00")


def _pieces(data: bytes) -> list[bytes]:
    """``data`` split after each 0x00, runs of bare delimiters joined to what follows (a frame is one piece)."""
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = data.find(b"\x00", start)
        end = len(data) if end < 0 else end + 1
        if pieces and not pieces[-1].strip(b"\x00"):
            pieces[-1] += data[start:end]
        else:
            pieces.append(data[start:end])
        start = end
    return pieces
