"""Key sealing end to end: a real agent, a real Mosquitto, the emulator over HTTP, devices that seal.

A profile with ``[sealing] required = true`` licenses devices that send ``seal_pub`` with keys
sealed to them, refuses a device without it before any key is minted, and no AuthKey ever
crosses the broker in the clear. The emulator keeps its own database in a file here, so the test
knows every AuthKey the cloud issued and can look for each one on the wire and in the log.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from provisioning.sealing import SealedKey, SealingError, open_sealed_key
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import Behaviour, DeviceSpec, fleet_specs
from tests.broker import MosquittoBroker
from tests.integration.provisioning_line import MODEL, PROFILES, Line

SEALED_MODEL = "face-terminal-x1-sealed"
SEALED_PROFILE = f"""
model = "{SEALED_MODEL}"
biz_type = "FACE_TERMINAL_X1"
[licence]
years = 1
[sealing]
required = true
"""
AUTH_KEY_SHAPE = re.compile(r"auth\.[0-9A-Za-z]{22}-")  # what the emulator mints (docs/emulator.md)
DOWN = "prov/v1/dev/+/down"
STATUS = "prov/v1/gw/gw1/status"


@pytest.fixture(name="sealing_line")
def sealing_line_fixture(tmp_path: Path, mqtt_broker: MosquittoBroker) -> Iterator[Line]:
    """A line whose emulator keeps its state (every AuthKey it minted, in plaintext) in a file."""
    with EmulatorProcess(state_file=tmp_path / "cloud.json") as emulator:
        line = Line(tmp_path, mqtt_broker, emulator)
        yield line
        line.close()


def profiles_dir(tmp_path: Path) -> str:
    """The shipped X1 profile with sealing made optional (the explicit opt-in) and a sealed twin that requires it."""
    directory = tmp_path / "profiles"
    directory.mkdir()
    shipped = Path(PROFILES) / "face-terminal-x1.toml"
    text = shipped.read_text(encoding="utf-8")
    assert "\nrequired = true" in text
    (directory / shipped.name).write_text(text.replace("\nrequired = true", "\nrequired = false"), encoding="utf-8")
    (directory / "sealed.toml").write_text(SEALED_PROFILE, encoding="utf-8")
    return str(directory)


def issued_keys(tmp_path: Path) -> list[str]:
    """Every AuthKey the emulated cloud minted."""
    state = json.loads((tmp_path / "cloud.json").read_text(encoding="utf-8"))
    return [record["key"] for record in state["keys"]]


def register(message_id: str, device_id: str, seal: X25519PrivateKey) -> bytes:
    seal_pub = base64.b64encode(seal.public_key().public_bytes_raw()).decode()
    return json.dumps(
        {"v": 1, "type": "register", "id": message_id, "device_id": device_id, "hardware_id": f"hw-{device_id}",
         "model": SEALED_MODEL, "seal_pub": seal_pub}
    ).encode()  # fmt: skip


def test_sealed_profile_licenses_with_sealed_keys_refuses_unsealed_and_never_shows_a_key(
    sealing_line: Line, tmp_path: Path
) -> None:
    line = sealing_line
    agent = line.start_agent(profiles=profiles_dir(tmp_path))
    watcher = line.watch(DOWN, STATUS)
    sealed = fleet_specs(
        10, model=SEALED_MODEL, seal=True, misbehave={Behaviour.DUPLICATE: 2, Behaviour.RE_REGISTER: 2}
    )
    optional = fleet_specs(3, model=MODEL, seal=True, id_prefix="OPT")  # not required, but the device asks
    unsealed = DeviceSpec("UNSEALED-1", "hw-unsealed-1", SEALED_MODEL, seal=False)
    report = line.fleet([*sealed, *optional, unsealed])

    ids = {spec.device_id for spec in [*sealed, *optional]}
    assert {d.device_id for d in report.devices if d.status == "licensed"} == ids
    refused = report.outcome("UNSEALED-1")
    assert (refused.status, refused.error_code) == ("error", "invalid_field")
    assert "seal_pub" in refused.detail
    assert "requires sealed keys" in refused.detail
    assert report.totals()["violations"] == 0
    assert report.totals()["keys_sealed"] >= len(ids)  # every device opened its key itself
    audit = line.emulator.audit()
    assert {row["UserDeviceId"] for row in audit["devices"]} == ids  # the refused device got no licence ...
    assert audit["keys"]["minted"] == len(ids)  # ... and no key was minted for it

    keys = [payload for topic, payload in watcher.messages if topic != STATUS and payload.get("type") == "key"]
    assert len(keys) >= len(ids)
    assert all("auth_key" not in key and key["sealed_key"]["alg"] == "X25519-HKDF-SHA256-A256GCM" for key in keys)
    assert watcher.wait_for(lambda: watcher.on(STATUS)[-1]["counters"].get("keys_sealed", 0) >= len(ids))
    assert watcher.on(STATUS)[-1]["counters"].get("refused_invalid_field", 0) >= 1

    secrets = issued_keys(tmp_path)
    assert len(secrets) == len(ids)
    down = [json.dumps(payload, ensure_ascii=False) for topic, payload in watcher.messages if topic != STATUS]
    assert not [text for text in down if AUTH_KEY_SHAPE.search(text)]
    log = agent.log_text()
    for secret in secrets:
        assert not [text for text in down if secret in text]
        assert secret not in log


def test_a_rebooted_device_gets_the_same_key_sealed_to_its_new_key_pair(sealing_line: Line, tmp_path: Path) -> None:
    """A hand-written device (the protocol document's steps): register, reboot, register again, activate."""
    line = sealing_line
    line.start_agent(profiles=profiles_dir(tmp_path))
    device_id, up, down = "REBOOT-1", "prov/v1/dev/REBOOT-1/up", "prov/v1/dev/REBOOT-1/down"
    spy = line.watch(down)
    before, after = X25519PrivateKey.generate(), X25519PrivateKey.generate()

    def key_for(message_id: str) -> dict[str, Any]:
        assert spy.wait_for(lambda: any(m.get("re") == message_id for m in spy.on(down)))
        [key] = [m for m in spy.on(down) if m.get("re") == message_id]
        assert key["type"] == "key", key
        return key

    spy.publish(up, register("r-boot-1", device_id, before))
    first = key_for("r-boot-1")
    spy.publish(up, register("r-boot-2", device_id, after))  # rebooted: a new id and a new key pair
    second = key_for("r-boot-2")

    assert second["attempt"] == first["attempt"]  # the same key, not a new licence
    assert second["sealed_key"]["epk"] != first["sealed_key"]["epk"]
    bound = {"device_id": device_id, "attempt": first["attempt"]}
    old = open_sealed_key(SealedKey.from_wire(first["sealed_key"]), before, re="r-boot-1", **bound)
    new = open_sealed_key(SealedKey.from_wire(second["sealed_key"]), after, re="r-boot-2", **bound)
    assert new == old
    with pytest.raises(SealingError, match="does not open"):  # the lost key pair cannot read the resend
        open_sealed_key(SealedKey.from_wire(second["sealed_key"]), before, re="r-boot-2", **bound)
    assert line.emulator.audit()["keys"]["minted"] == 1

    licence = line.emulator.activate(new.reveal(), f"hw-{device_id}")
    result = {"v": 1, "type": "result", "id": "r-boot-3", "device_id": device_id, "hardware_id": f"hw-{device_id}",
              "model": SEALED_MODEL, "attempt": first["attempt"], "ok": True, "sdk_device_id": licence["DeviceId"],
              "begin_day": licence["BeginDay"], "expired_day": licence["ExpiredDay"]}  # fmt: skip
    spy.publish(up, json.dumps(result).encode())
    assert spy.wait_for(lambda: any(m.get("type") == "done" for m in spy.on(down)))
    assert [m["sdk_device_id"] for m in spy.on(down) if m["type"] == "done"] == [licence["DeviceId"]]
