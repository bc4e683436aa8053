"""The key deadline under chaos: keys that live 20 seconds, so a test reaches their end.

The emulator runs with ``--key-ttl 20s`` and the agent with the same ``[cloud] key_lifetime_s``.
Each test puts a key past its life at a point where the agent could still send it: waiting in
the broker's queue for a device that went offline, in the agent's memory while the agent is
SIGSTOPped (during CreateAuthKey, or with a device's register waiting), and across an agent
restart. Then, judged from what the devices received and the emulator's audit:

- no key reaches a device after the cloud's expiry, except one the broker held for an MQTT 3.1.1
  session (that protocol has no message expiry), and that one says so: its ``expires_at`` has passed;
- no device ever activates with an expired key (the emulator answered no ``AuthKeyExpired``);
- each device still ends ``done``, licensed exactly once.

Keys travel unsealed here (profile ``[sealing] required = false``) so the test can fingerprint
each key a device received and find it in the emulator's audit, even after a device's reboot.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from provisioning.secret import Secret
from provisioning_lab.agentprocess import AgentProcess
from provisioning_lab.emulator import EmulatorProcess
from tests.broker import MosquittoBroker
from tests.integration.handdevice import Answer, HandDevice, expires_at
from tests.integration.provisioning_line import Line

KEY_TTL_S = 20  # the emulator's --key-ttl and the agent's key_lifetime_s
# The core computes a key's deadline from when CreateAuthKey answered, not from when it was asked: an
# answer that waited (a SIGSTOP, a slow network) makes an old key look fresh.
MODEL = "deadline-x1"
PROFILE = f"""
model = "{MODEL}"
biz_type = "FACE_TERMINAL_X1"
transports = ["mqtt"]
[licence]
years = 1
[timeouts]
activate_within_s = 900    # scaled to the 20 s key life: 10 s
key_safety_margin_s = 300  # scaled: 3.3 s
[policy]
max_attempts = 3
verify = true
[sealing]
required = false
"""
CLOUD = {"key_lifetime_s": KEY_TTL_S, "read_timeout_s": 120.0}  # no read timeout fires across a SIGSTOP
MINT_LATENCY_MS = 1500  # CreateAuthKey held this long: time to stop the agent or drop the device under it
PAST_EXPIRY_S = 1.0  # how far past the cloud's expiry the chaos lasts


@pytest.fixture(scope="module")
def short_lived_cloud() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(["--key-ttl", f"{KEY_TTL_S}s"]) as emulator:
        yield emulator


@pytest.fixture(name="line")
def ttl_line_fixture(
    tmp_path: Path, mqtt_broker: MosquittoBroker, short_lived_cloud: EmulatorProcess
) -> Iterator[Line]:
    short_lived_cloud.reset()
    provisioning_line = Line(tmp_path, mqtt_broker, short_lived_cloud)
    yield provisioning_line
    provisioning_line.close()


def start_agent(line: Line, tmp_path: Path) -> AgentProcess:
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    (directory / f"{MODEL}.toml").write_text(PROFILE, encoding="utf-8")
    return line.start_agent(profiles=str(directory), cloud=CLOUD)


def device_on(line: Line, device_id: str, protocol: str = "5") -> HandDevice:
    return HandDevice(line.broker.port, device_id, MODEL, protocol=protocol, seal=False).connect()


def cloud_expiry(line: Line, device_id: str, nth: int = 0) -> float:
    """When the ``nth`` key the cloud minted for ``device_id`` expires (POSIX seconds)."""
    events = [e for e in line.emulator.audit()["key_events"] if e["UserDeviceId"] == device_id]
    return _posix(events[nth]["expires_at"])


def wait_until(moment: float) -> None:
    """Let wall time pass ``moment``: the chaos under test is time itself."""
    while time.time() < moment:
        time.sleep(min(0.2, max(0.0, moment - time.time())))


def minting(line: Line) -> bool:
    return line.emulator.audit()["api_calls"].get("CreateAuthKey", 0) >= 1


def assert_deadlines_kept(line: Line, devices: list[HandDevice], *, broker_may_hold: bool = False) -> None:
    """No key arrived after its cloud expiry (but one an MQTT 3.1.1 session held, marked stale), none was used late."""
    audit = line.emulator.audit()
    minted = {event["fingerprint"]: event for event in audit["key_events"]}
    late: list[str] = []
    for device in devices:
        for answer in device.of_type("key"):
            event = minted[Secret(answer.body["auth_key"]).fingerprint()]
            assert event["UserDeviceId"] == device.device_id
            expiry = _posix(event["expires_at"])
            if answer.at >= expiry and not (broker_may_hold and answer.at >= expires_at(answer.body)):
                stated = answer.body["expires_at"]
                late.append(f"{device.device_id}: attempt {answer.body['attempt']} arrived "
                            f"{answer.at - expiry:.1f} s after the cloud's expiry (expires_at {stated})")  # fmt: skip
    assert late == []
    assert audit["errors"].get("AuthKeyExpired", 0) == 0  # no device was handed a key it could not use
    licences = {row["UserDeviceId"]: row["licences_consumed"] for row in audit["devices"]}
    assert licences == {device.device_id: 1 for device in devices}


def finish(line: Line, device: HandDevice, answer: Answer) -> None:
    final = device.follow(answer, line.emulator)
    assert final.type == "done", str(final)


@pytest.mark.timeout(120)
def test_a_key_message_states_the_configured_key_life(line: Line, tmp_path: Path) -> None:
    start_agent(line, tmp_path)
    device = device_on(line, "TTL-STATED")
    try:
        key = device.answer_to(device.register())
        assert key.type == "key", str(key)
        expiry = cloud_expiry(line, device.device_id)
        assert expires_at(key.body) <= expiry  # the deadline a device with a clock trusts is the real one
        assert key.body["activate_within_s"] <= KEY_TTL_S
        finish(line, device, key)
    finally:
        device.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_key_that_expires_in_the_brokers_queue_is_never_used(line: Line, tmp_path: Path, protocol: str) -> None:
    start_agent(line, tmp_path)
    device = device_on(line, f"TTL-QUEUED-{protocol}", protocol)
    try:
        line.emulator.set_faults(latency_ms=MINT_LATENCY_MS)
        device.register(wait=True)
        device.disconnect()  # offline with its session kept: the key is queued for it at the broker
        assert device.wait_for(lambda: line.emulator.audit()["keys"]["minted"] == 1)
        line.emulator.set_faults()
        wait_until(cloud_expiry(line, device.device_id) + PAST_EXPIRY_S)
        device.connect()  # the session resumes: MQTT 5 has dropped the key, 3.1.1 delivers it stale

        finish(line, device, device.answer_to(device.register()))
        assert_deadlines_kept(line, [device], broker_may_hold=protocol == "3.1.1")
    finally:
        device.close()


@pytest.mark.timeout(120)
def test_a_key_minted_while_the_agent_is_stopped_is_not_pushed_late(line: Line, tmp_path: Path) -> None:
    agent = start_agent(line, tmp_path)
    device = device_on(line, "TTL-SIGSTOP-MINT")
    try:
        line.emulator.set_faults(latency_ms=MINT_LATENCY_MS)
        first = device.register()
        assert device.wait_for(lambda: minting(line))
        os.kill(agent.pid, signal.SIGSTOP)  # CreateAuthKey in flight; its answer waits in the socket
        try:
            assert device.wait_for(lambda: line.emulator.audit()["keys"]["minted"] == 1)
            line.emulator.set_faults()
            wait_until(cloud_expiry(line, device.device_id) + PAST_EXPIRY_S)
        finally:
            os.kill(agent.pid, signal.SIGCONT)

        finish(line, device, device.ask(device.register_message(first), time.monotonic() + 60))
        assert_deadlines_kept(line, [device])
    finally:
        device.close()


@pytest.mark.timeout(120)
def test_a_held_key_is_not_resent_after_a_sigstop_past_its_deadline(line: Line, tmp_path: Path) -> None:
    agent = start_agent(line, tmp_path)
    device = device_on(line, "TTL-SIGSTOP-HELD")
    try:
        key = device.answer_to(device.register())
        assert key.type == "key", str(key)
        device.reboot()  # never used it
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            wait_until(cloud_expiry(line, device.device_id) + PAST_EXPIRY_S)
            again = device.register()  # waits at the broker, then in the agent's socket, for the SIGCONT
        finally:
            os.kill(agent.pid, signal.SIGCONT)

        finish(line, device, device.ask(device.register_message(again), time.monotonic() + 60))
        assert_deadlines_kept(line, [device])
    finally:
        device.close()


@pytest.mark.timeout(120)
def test_no_key_is_resent_after_a_restart_past_its_deadline(line: Line, tmp_path: Path) -> None:
    agent = start_agent(line, tmp_path)
    device = device_on(line, "TTL-RESTART")
    try:
        key = device.answer_to(device.register())
        assert key.type == "key", str(key)
        device.reboot()  # never used it
        agent.kill()
        wait_until(cloud_expiry(line, device.device_id) + PAST_EXPIRY_S)
        start_agent(line, tmp_path)

        finish(line, device, device.answer_to(device.register()))
        assert_deadlines_kept(line, [device])
        attempts = [answer.body["attempt"] for answer in device.of_type("key")]
        assert attempts[0] not in attempts[1:]  # the lost key never came back
    finally:
        device.close()


def _posix(stamp: str) -> float:
    """``2026-01-01T00:00:00.000Z`` (the emulator audit's form) as POSIX seconds."""
    return datetime.fromisoformat(stamp).timestamp()
