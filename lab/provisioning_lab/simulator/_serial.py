"""Simulated devices on serial ports: the device machine (``_machine``) over the serial link layer.

How it works
------------
A device's firmware here is three parts, each reused as is: the protocol decisions
(:class:`~provisioning_lab.simulator._machine.DeviceMachine`, shared with the MQTT devices), the link layer
(:class:`provisioning.serial.LinkEndpoint`, the same sans-I/O machine the agent runs on its side)
and the SDK step against the emulator (:class:`~provisioning_lab.simulator._sdk.EmulatorSdk`). This module
only moves bytes and time between them, on the fleet's event loop:

    port bytes --> LinkEndpoint.receive_bytes --> ACKs out at once; MessageReceived --> machine.receive
    machine Publish --> LinkEndpoint.send_message --> DATA frames --> port
    link timers (HELLO, retransmission) run in a pump task; the machine's timer in the device task

A device starts talking (``machine.start``) once its link is up, as an MQTT device waits for its
SUBACK. ``Die`` reboots the device: a new link session (the agent sees a restarted peer), then
``machine.revive``. A ``PortQueue`` provisions devices one after another on one port, as an operator
at a jig plugs the next board when one is done.

Ports are anything with ``attach(consumer)``, ``write(bytes)`` and a ``label``: a
:class:`~provisioning_lab.simulator._jig.JigPort` (a paced pty of a
:class:`~provisioning_lab.simulator._jig.SerialJig`),
or a :class:`UrlPort` (any pyserial URL or device path, e.g. one end of a socat pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

import serial

from provisioning.serial import (
    DEFAULT_BAUDRATE,
    Event,
    Failed,
    LinkBusy,
    LinkConfig,
    LinkEndpoint,
    LinkUp,
    MessageDropped,
    MessageReceived,
    MessageTooLarge,
    SendBytes,
)
from provisioning_lab.simulator._driver import MachineDriver
from provisioning_lab.simulator._jig import JigPort
from provisioning_lab.simulator._machine import Activate, Command, Die, Publish, SetTimer
from provisioning_lab.simulator._outcome import DeviceOutcome
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._spec import COMEBACK_DELAY_S, DeviceSpec, Timing

__all__ = [
    "SERIAL_PROTOCOL",
    "PortQueue",
    "SerialDevice",
    "SerialPort",
    "UrlPort",
    "WireLog",
    "queue_specs",
    "run_port_queue",
]

SERIAL_PROTOCOL: Final = "serial"  # DeviceOutcome.protocol of a serial device
SWAP_S: Final = 0.0  # between two devices on one port: an operator's swap takes seconds; tests need none
URL_READ_TIMEOUT_S: Final = 0.01  # a UrlPort's reader thread checks for a stop this often

log = logging.getLogger(__name__)

Consumer = Callable[[bytes], None]


class SerialPort(Protocol):
    """Where a device's UART is wired: bytes out, bytes in (delivered on any thread)."""

    @property
    def label(self) -> str:
        """The port's name for reports."""
        ...

    def attach(self, consumer: Consumer | None) -> None:
        """Deliver incoming bytes to ``consumer``; None detaches."""

    def write(self, data: bytes) -> None:
        """Send bytes toward the agent."""


@dataclass(slots=True)
class WireLog:
    """When a device's exchange happened on the wire, for benchmarks (monotonic seconds, payload bytes)."""

    started: float = 0.0  # the device was powered on (its first HELLO)
    link_up: float = 0.0
    finished: float = 0.0  # the machine stopped (after `done`)
    activation_s: float = 0.0  # time spent in the SDK step (not on the wire)
    sent: list[bytes] = field(default_factory=list)  # DATA payloads handed to the link, in order
    received: list[bytes] = field(default_factory=list)  # DATA payloads delivered by the link, in order
    sent_at: list[float] = field(default_factory=list)  # when each of ``sent`` was handed to the link
    received_at: list[float] = field(default_factory=list)  # when each of ``received`` was delivered
    hellos_sent: int = 0
    link_failures: int = 0
    retransmissions: int = 0
    crc_errors: int = 0


class UrlPort:
    """A port the device opens with pyserial (a device path or URL); no pacing or noise of its own."""

    def __init__(self, url: str, baudrate: int = DEFAULT_BAUDRATE) -> None:
        self.url = url
        self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=URL_READ_TIMEOUT_S)
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"sim-serial {url}", daemon=True)
        self._thread.start()

    @property
    def label(self) -> str:
        """The URL."""
        return self.url

    def attach(self, consumer: Consumer | None) -> None:
        """Deliver bytes read to ``consumer``."""
        with self._lock:
            self._consumer = consumer

    def write(self, data: bytes) -> None:
        """Write to the port (lost if the port is gone)."""
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.write(data)

    def close(self) -> None:
        """Stop reading and close the port."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._port.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._port.read(4096)
            except (serial.SerialException, OSError):
                self._stop.wait(0.1)
                continue
            with self._lock:
                consumer = self._consumer
            if data and consumer is not None:
                consumer(data)


class SerialDevice(MachineDriver):
    """One device on a serial port, from power-on to its outcome."""

    def __init__(
        self, spec: DeviceSpec, port: SerialPort, sdk: EmulatorSdk, timing: Timing, link: LinkConfig | None = None
    ) -> None:
        super().__init__(spec, timing)
        self.port = port
        self.wire = WireLog()
        self._sdk = sdk
        self._timing = timing
        self._link_config = link or LinkConfig()
        self._endpoint = LinkEndpoint(self._link_config)
        self._link_up = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._powered = True  # False between a death and the reboot: a dead board sends nothing

    async def run(self) -> None:
        """Power on, go through the exchange, power off; returns when the device is finished."""
        loop = self._loop = asyncio.get_running_loop()
        self.wire.started = loop.time()
        pump = loop.create_task(self._pump(), name=f"serial-link-{self.spec.device_id}")
        self.port.attach(self._from_thread)
        try:
            await self._link_up.wait()
            await self._drive()
            self.wire.finished = loop.time()
        finally:
            self.port.attach(None)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    def expire(self, detail: str = "") -> None:
        """The deadline passed; record a timeout unless the device finished."""
        if not detail and not self._link_up.is_set():
            detail = f"the link on {self.port.label} never came up"
        self.machine.expire(detail)

    def outcome(self) -> DeviceOutcome:
        """How the device ended (or where it is); ``tid`` is the port, ``protocol`` is ``serial``."""
        return replace(self.machine.outcome(), tid=self.port.label, protocol=SERIAL_PROTOCOL)

    # -- the machine's side --------------------------------------------------------------------------

    async def _perform(self, command: Command) -> list[Command]:
        loop = asyncio.get_running_loop()
        match command:
            case Publish(payload):
                self._send(payload)
            case SetTimer(delay):
                self._timer_at = None if delay is None else loop.time() + delay
            case Activate(auth_key, hardware_id):
                started, wall = loop.time(), time.time()
                result = await self._sdk.activate(auth_key, hardware_id)
                self.wire.activation_s += loop.time() - started
                return self.machine.activated(result, wall, time.time())
            case Die():
                log.debug("%s dies on %s", self.spec.device_id, self.port.label)
                self._powered = False
                self.port.attach(None)
                if not self.machine.finished:  # comeback: the board reboots with a new link session
                    await asyncio.sleep(self._timing.scaled(COMEBACK_DELAY_S))
                    self._reboot_link()
                    self.port.attach(self._from_thread)
                    await self._link_up.wait()
                    return self.machine.revive(time.time())
        return []

    # -- the link's side -----------------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        try:
            events = self._endpoint.send_message(payload, self._now())
        except (LinkBusy, MessageTooLarge) as exc:
            # A full queue holds this very message already (a resend); a too-large one the agent answers over MQTT only.
            log.debug("%s: message not queued: %s", self.spec.device_id, exc)
            return
        self.wire.sent.append(payload)
        self.wire.sent_at.append(self._now())
        self._handle(events)

    def _from_thread(self, data: bytes) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the fleet is over
                loop.call_soon_threadsafe(self._on_bytes, data)

    def _on_bytes(self, data: bytes) -> None:
        self._handle(self._endpoint.receive_bytes(data, self._now()))

    async def _pump(self) -> None:
        """Run the link's timers: HELLO while connecting, retransmissions, expiry."""
        while True:
            deadline = self._endpoint.next_deadline()
            timeout = None if deadline is None or not self._powered else max(0.0, deadline - self._now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            deadline = self._endpoint.next_deadline()
            if self._powered and deadline is not None and deadline <= self._now():
                self._handle(self._endpoint.tick(self._now()))

    def _handle(self, events: list[Event]) -> None:
        if not self._powered:
            return
        for event in events:
            match event:
                case SendBytes(data):
                    self.port.write(data)
                case LinkUp():
                    if not self._link_up.is_set():
                        self.wire.link_up = self._now()
                    self._link_up.set()
                case MessageReceived(payload):
                    self.wire.received.append(payload)
                    self.wire.received_at.append(self._now())
                    self._inbox.put_nowait(payload)
                case Failed(reason, detail):
                    self.wire.link_failures += 1
                    log.debug("%s: link %s: %s", self.spec.device_id, reason, detail)
                case MessageDropped():
                    pass  # the machine's own resends recover it, as over MQTT
        stats = self._endpoint.stats
        self.wire.retransmissions, self.wire.crc_errors = stats.retransmissions, stats.crc_errors
        self._wake.set()  # the link's next deadline may have moved

    def _reboot_link(self) -> None:
        self._endpoint = LinkEndpoint(self._link_config)  # a new random session: the agent sees a restart
        self._link_up = asyncio.Event()
        self._inbox = asyncio.Queue()
        self._timer_at = None
        self._powered = True
        self._wake.set()

    def _now(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()


@dataclass(frozen=True, slots=True)
class PortQueue:
    """Devices provisioned one after another on one port (the next is plugged when one is done)."""

    port: SerialPort
    specs: tuple[DeviceSpec, ...]
    swap_s: float = SWAP_S  # pause between two devices
    replug: bool = False  # unplug the port and plug it again between devices (jig ports only)
    link: LinkConfig | None = None  # the devices' link settings; None: the protocol's

    def __post_init__(self) -> None:
        if self.swap_s < 0:
            raise ValueError("swap_s must be >= 0")
        if self.replug and not isinstance(self.port, JigPort):
            raise ValueError(f"replug needs a jig port, not {self.port.label}")


async def run_port_queue(
    queue: PortQueue, sdk: EmulatorSdk, timing: Timing, deadline: float, devices: list[SerialDevice]
) -> None:
    """Run ``queue``'s devices in turn until all finish or the loop time ``deadline`` passes.

    Each device is appended to ``devices`` as it is plugged, so its outcome is there even when the
    deadline stops the queue; devices never plugged are appended unplugged (their outcome: timeout).
    """
    pending = [SerialDevice(spec, queue.port, sdk, timing, queue.link) for spec in queue.specs]
    devices.extend(pending)
    jig_port = queue.port if queue.replug and isinstance(queue.port, JigPort) else None
    for number, device in enumerate(pending):
        try:
            async with asyncio.timeout_at(deadline):
                if number and jig_port is not None:
                    jig_port.unplug()
                    await asyncio.sleep(queue.swap_s)
                    jig_port.replug()
                elif number:
                    await asyncio.sleep(queue.swap_s)
                await device.run()
        except TimeoutError:
            for late in pending[number:]:
                late.expire("" if late is device else f"never plugged: the deadline passed on {queue.port.label}")
            return


def queue_specs(
    ports: Sequence[SerialPort],
    specs: Sequence[DeviceSpec],
    *,
    swap_s: float = SWAP_S,
    replug: bool = False,
    link: LinkConfig | None = None,
) -> list[PortQueue]:
    """Deal ``specs`` over ``ports`` round robin: device i goes to port i % len(ports)."""
    if not ports:
        raise ValueError("no ports to put the devices on")
    lanes: list[list[DeviceSpec]] = [[] for _ in ports]
    for index, spec in enumerate(specs):
        lanes[index % len(ports)].append(spec)
    return [PortQueue(port, tuple(lane), swap_s, replug, link) for port, lane in zip(ports, lanes, strict=True)]
