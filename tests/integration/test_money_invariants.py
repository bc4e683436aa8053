"""No terminal failure without the cloud's word: a licensed device is never failed, an undelivered key never counts.

Black-box, against a real agent, a real Mosquitto and the emulator over HTTP, with devices scripted
by hand (tests/integration/handdevice.py) so each one is put exactly where the invariant can break:

- a device on its last allowed attempt activates, reboots before reporting, registers again, gets
  the same key back, its SDK says ``AuthKeyUsed`` and it reports ``ok: false`` as docs/protocol.md
  ("After a reboot mid-activation") tells it to. The licence is consumed: the agent must read the
  cloud back and answer ``done``, report it upstream, and the cloud must count one licence;
- the same with the cloud failing while the agent reads it back: the device is told to wait, then done;
- a key minted while the broker connection is down, then lost with an agent SIGKILL, never left the
  agent: it must not count against ``max_attempts``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning_lab.emulator import ActivationError
from tests.integration.handdevice import HandDevice
from tests.integration.provisioning_line import Line, line_fixture

__all__ = ["line_fixture"]

REPORTS = "prov/v1/reports"
LAST_MODEL = "last-try-x1"  # one key per device: its first attempt is its last
TWO_MODEL = "two-tries-x1"
PROFILE = """
model = "{model}"
biz_type = "FACE_TERMINAL_X1"
transports = ["mqtt"]
[licence]
years = 1
[policy]
max_attempts = {attempts}
verify = true
[sealing]
required = true
"""
CLOUD_LATENCY_MS = 3000  # CreateAuthKey held this long: time to take the broker away under it
UNDELIVERED = re.compile(r"not delivered|undelivered|not sent")  # the agent's warning that an answer did not leave


def profiles(tmp_path: Path) -> str:
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    for model, attempts in ((LAST_MODEL, 1), (TWO_MODEL, 2)):
        (directory / f"{model}.toml").write_text(PROFILE.format(model=model, attempts=attempts), encoding="utf-8")
    return str(directory)


@pytest.fixture
def device(line: Line) -> Iterator[HandDevice]:
    hand = HandDevice(line.broker.port, "LAST-0001", LAST_MODEL).connect()
    yield hand
    hand.close()


def licensed_then_rebooted(line: Line, device: HandDevice) -> tuple[str, dict[str, object]]:
    """Register, activate, reboot before reporting, register again: the same key, which the SDK calls used."""
    key = device.answer_to(device.register())
    assert key.type == "key", str(key)
    licence = line.emulator.activate(str(device.auth_key(key.body)), device.hardware_id)
    device.reboot()
    again = device.answer_to(device.register())
    assert (again.type, again.body.get("attempt")) == ("key", key.body["attempt"]), str(again)  # the same key
    with pytest.raises(ActivationError) as used:
        line.emulator.activate(str(device.auth_key(again.body)), device.hardware_id)
    assert used.value.code == "AuthKeyUsed"
    return str(key.body["attempt"]), licence


def assert_licensed_once_and_reported(line: Line, device: HandDevice, licence: dict[str, object]) -> None:
    devices = line.emulator.audit()["devices"]
    assert [(row["UserDeviceId"], row["licences_consumed"]) for row in devices] == [(device.device_id, 1)]
    watcher = line.watchers[0]
    assert watcher.wait_for(lambda: any(r.get("device_id") == device.device_id for r in watcher.on(REPORTS)))
    assert {r["sdk_device_id"] for r in watcher.on(REPORTS)} == {licence["DeviceId"]}


def test_a_device_on_its_last_attempt_that_rebooted_mid_activation_ends_done(
    line: Line, device: HandDevice, tmp_path: Path
) -> None:
    line.start_agent(profiles=profiles(tmp_path))
    line.watch(REPORTS)
    attempt, licence = licensed_then_rebooted(line, device)

    answer = device.answer_to(device.result_failed(attempt, "AuthKeyUsed", "initWithToken: key already used"))
    final = device.follow(answer, line.emulator)  # done, or "register again" then done: never a refusal

    assert final.type == "done", str(final)
    assert (final.body["sdk_device_id"], final.body["expired_day"]) == (licence["DeviceId"], licence["ExpiredDay"])
    assert line.emulator.audit()["keys"]["minted"] == 1  # read back, not re-keyed
    assert_licensed_once_and_reported(line, device, licence)


def test_the_cloud_failing_during_the_read_back_makes_the_device_wait_then_done(
    line: Line, device: HandDevice, tmp_path: Path
) -> None:
    line.start_agent(profiles=profiles(tmp_path))
    line.watch(REPORTS)
    attempt, licence = licensed_then_rebooted(line, device)

    line.emulator.set_faults(errors={"ServiceUnavailable": 1.0})
    answer = device.answer_to(device.result_failed(attempt, "AuthKeyUsed", "initWithToken: key already used"))
    assert answer.type == "wait", str(answer)  # the cloud has not spoken: no verdict yet
    assert answer.body["reason"] == "cloud_unavailable"
    line.emulator.set_faults()
    final = device.follow(answer, line.emulator)

    assert final.type == "done", str(final)
    assert final.body["sdk_device_id"] == licence["DeviceId"]
    assert_licensed_once_and_reported(line, device, licence)


@pytest.mark.timeout(180)
def test_a_key_that_never_left_the_agent_is_not_an_attempt(line: Line, tmp_path: Path) -> None:
    agent = line.start_agent(profiles=profiles(tmp_path))
    line.watch(REPORTS)
    device = HandDevice(line.broker.port, "TWO-0001", TWO_MODEL).connect()
    try:
        line.emulator.set_faults(latency_ms=CLOUD_LATENCY_MS)
        first = device.register()
        assert device.wait_for(lambda: line.emulator.audit()["api_calls"].get("CreateAuthKey", 0) >= 1)
        device.mark_unsubscribed()
        line.broker.kill()  # CreateAuthKey is in flight: its answer finds no broker to push through
        assert device.wait_for(lambda: line.emulator.audit()["keys"]["minted"] == 1)
        assert device.wait_for(lambda: bool(UNDELIVERED.search(agent.log_text()))), agent.log_text()
        agent.kill()  # and the key, held only in memory, is lost
        line.emulator.set_faults()
        line.broker.start()
        line.start_agent(profiles=profiles(tmp_path))
        device.wait_subscribed()
        assert device.answered(first) == []  # the first key never reached the device

        key = device.answer_to(device.register())
        assert key.type == "key", key.body  # one key delivered so far, one lost
        refused = device.answer_to(device.result_failed(key.body["attempt"], "SdkInitFailed", "camera not ready"))
        assert (refused.type, refused.body.get("code")) == ("error", "activation_failed"), str(refused)
        assert refused.body["retry"] is True, str(refused)  # only one of its two attempts was ever delivered
        final = device.follow(refused, line.emulator)

        assert final.type == "done", str(final)
        audit = line.emulator.audit()
        assert audit["keys"]["minted"] == 3
        assert [(row["UserDeviceId"], row["licences_consumed"]) for row in audit["devices"]] == [("TWO-0001", 1)]
    finally:
        device.close()


def test_the_scripted_device_on_the_happy_path_is_licensed_once_and_reported(
    line: Line, device: HandDevice, tmp_path: Path
) -> None:
    """The scripted device itself: on the happy path it is licensed once and reported."""
    line.start_agent(profiles=profiles(tmp_path))
    line.watch(REPORTS)
    final = device.follow(device.answer_to(device.register()), line.emulator)
    assert final.type == "done", str(final)
    licence = {"DeviceId": final.body["sdk_device_id"]}
    assert_licensed_once_and_reported(line, device, licence)
