"""USB discovery end to end: a profile's VID:PID opens the adapter's port, renumbering keeps its identity.

The USB listing (``serial.tools.list_ports``) is the one thing that cannot be real here: it is
replaced by a list whose device nodes are real pseudo-terminals, so everything after the
listing (matching, opening, the link, the device's messages, the port vanishing) is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import SerialConfig
from agent.profiles import load_profiles
from agent.serial import SerialTransport, UsbPort
from tests.integration.test_serial_station import LinkDevice, register

PROFILES = Path(__file__).parents[2] / "hardware-profiles"
WAIT_S = 20.0  # a guard against hangs, not a timing assertion


class Adapter:
    """A USB-UART adapter: a pty whose slave node the fake listing reports with a VID:PID."""

    def __init__(self, vid: int, pid: int, serial_number: str | None = None) -> None:
        master, slave = os.openpty()
        self.node = os.ttyname(slave)
        self.usb = UsbPort(self.node, vid, pid, serial_number)
        self.device = LinkDevice(master, (master, slave))


async def wait_until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_profiles_usb_adapter_is_opened_and_its_messages_reach_the_agent(tmp_path: Path) -> None:
    listed: list[UsbPort] = []
    received: list[tuple[str, dict[str, object]]] = []
    by_path = tmp_path / "by-path"
    by_path.mkdir()
    config = SerialConfig(ports=[], usb=True, scan_interval_s=0.05, by_path_dir=str(by_path))
    transport = SerialTransport(
        config,
        load_profiles(PROFILES),  # gate-controller-g2 lists 0403:6001:JIG-* and 10c4:ea60:JIG-*
        lambda tid, payload: received.append((tid, json.loads(payload))),
        list_usb=lambda: list(listed),
        usb_relist_s=0.0,  # the fake listing changes without /dev changing: list at every scan
    )
    ftdi, other = Adapter(0x0403, 0x6001, "JIG-07"), Adapter(0x0403, 0x6001, "FT4ZX0")  # a jig's, a console cable
    (by_path / "pci-0000:00:14.0-usb-0:2:1.0-port0").symlink_to(ftdi.node)
    scanning = asyncio.create_task(transport.run())
    try:
        listed += [ftdi.usb, other.usb]  # plugged in while the agent runs
        await wait_until(lambda: transport.open_ports == 1, "the jig adapter was not opened")
        ftdi.device.send(register("G2-0500"))
        await wait_until(lambda: received, "the register never reached the agent")
        [(tid, message)] = received
        assert tid == "serial:by-path_pci-0000:00:14.0-usb-0:2:1.0-port0"
        assert message["device_id"] == "G2-0500"
        [port] = transport.status()
        assert port["source"] == "usb 0403:6001:JIG-* (gate-controller-g2)"  # the console cable was left alone
        assert port["state"] == "up"
        assert port["device_id"] == "G2-0500"
        listed.clear()  # unplugged: the node goes away
        ftdi.device.unplug()
        await wait_until(lambda: transport.status()[0]["state"] == "gone", "the vanished port was not noticed")
        assert transport.open_ports == 0
    finally:
        scanning.cancel()
        await asyncio.gather(scanning, return_exceptions=True)
        other.device.unplug()
