"""One port on the event loop (agent.serial.PortWorker) against a real pty: it never blocks the loop.

The device end is a LinkEndpoint driven by the test itself, so the test decides when the device
reads: a device that stops reading must cost its own port a bounded buffer and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from collections.abc import Callable, Iterator

import pytest

from agent.serial import PortCandidate, PortClosed, PortWorker
from agent.serial._port import PortEvent
from provisioning.serial import LinkConfig, LinkEndpoint, LinkUp, MessageAcked, SendBytes

WAIT_S = 20.0  # a guard against hangs, not a timing assertion
BAUDRATE = 4_000_000  # a 4 kB frame every ~12 ms: the pty fills quickly when nobody reads
LINK = LinkConfig(baudrate=BAUDRATE, ack_timeout_s=0.002, max_tries=1_000_000)  # resend fast, never give up


class Device:
    """The device end of a pty pair, read only when the test says so."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.endpoint = LinkEndpoint(LINK)

    @property
    def path(self) -> str:
        return os.ttyname(self.slave)

    def pump(self) -> None:
        """Read what the agent wrote and answer it (ACKs, HELLO_ACK)."""
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                break
            for event in self.endpoint.receive_bytes(data, time.monotonic()):
                if isinstance(event, SendBytes):
                    os.write(self.master, event.data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture(name="devices")
def devices_fixture() -> Iterator[Callable[[], Device]]:
    made: list[Device] = []

    def make() -> Device:
        made.append(Device())
        return made[-1]

    yield make
    for device in made:
        device.close()


async def until(check: Callable[[], object], what: str, device: Device | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        if device is not None:
            device.pump()
        await asyncio.sleep(0.005)


def start(device: Device, name: str, events: list[PortEvent]) -> PortWorker:
    candidate = PortCandidate(name, device.path, BAUDRATE, "path")
    worker = PortWorker(candidate, LINK, asyncio.get_running_loop(), lambda _, event: events.append(event))
    worker.start()
    return worker


async def test_a_device_that_stops_reading_holds_up_only_its_own_port(
    devices: Callable[[], Device], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.serial")
    stuck_device, other_device = devices(), devices()
    stuck_events: list[PortEvent] = []
    other_events: list[PortEvent] = []
    stuck = start(stuck_device, "stuck", stuck_events)
    try:
        await until(lambda: any(isinstance(e, LinkUp) for e in stuck_events), "no link on the port", stuck_device)
        stuck.send(b'{"pad":"' + b"x" * 4000 + b'"}', None)  # resent every ~12 ms; the device never reads it
        await until(lambda: "the device is not reading" in caplog.text, "the writes never backed up")
        other = start(other_device, "other", other_events)  # the loop still serves every other port
        try:
            await until(lambda: any(isinstance(e, LinkUp) for e in other_events), "the loop stalled", other_device)
        finally:
            other.stop()
        assert not any(isinstance(e, MessageAcked) for e in stuck_events)
        await until(  # the device reads again: the backlog drains and the message is acknowledged
            lambda: any(isinstance(e, MessageAcked) for e in stuck_events), "never acknowledged", stuck_device
        )
        assert not any(isinstance(e, PortClosed) for e in stuck_events)
    finally:
        stuck.stop()
    assert not stuck.alive


async def test_stop_from_another_thread_closes_the_port(devices: Callable[[], Device]) -> None:
    device = devices()
    events: list[PortEvent] = []
    worker = start(device, "port", events)
    await until(lambda: any(isinstance(e, LinkUp) for e in events), "no link on the port", device)
    await asyncio.to_thread(worker.stop)  # as the daemon's exit stack does
    assert not worker.alive
    assert not any(isinstance(e, PortClosed) for e in events)  # a stop we asked for is not a failure


async def test_a_port_that_hangs_up_is_reported_gone(devices: Callable[[], Device]) -> None:
    device = devices()
    events: list[PortEvent] = []
    worker = start(device, "port", events)
    await until(lambda: any(isinstance(e, LinkUp) for e in events), "no link on the port", device)
    os.close(device.master)  # the cable is pulled: the tty hangs up
    device.master = -1
    await until(lambda: any(isinstance(e, PortClosed) for e in events), "the hang-up went unnoticed")
    [closed] = [e for e in events if isinstance(e, PortClosed)]
    assert closed.opened
    assert not worker.alive
