"""Admission end to end: a real agent, a real Mosquitto, the emulator over HTTP, raw and simulated devices.

Each test tries to get a key it must not get (invariant 5 of docs/reliability.md) and counts what the
cloud minted from the emulator's own audit view, never from the agent's word.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning.protocol import Register, device_cert_bytes, register_signed_bytes
from provisioning_lab._ports import free_port
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, PROFILES, Line, Watcher, line_fixture

__all__ = ["line_fixture"]  # the fixture, imported so pytest finds it here

CA_MODEL = "face-terminal-ca"
# The raw devices below register without seal_pub (admission is under test here, sealing in
# test_sealing.py): their profiles opt out of sealing explicitly.
X1_PROFILE = (
    (Path(PROFILES) / f"{MODEL}.toml").read_text(encoding="utf-8").replace("\nrequired = true", "\nrequired = false")
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def profiles(tmp_path: Path, admission: str, *, ca_admission: str = "") -> str:
    """A profile folder: the X1 profile with an [admission] table (and a second model when asked)."""
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "x1.toml").write_text(X1_PROFILE + "\n[admission]\n" + admission + "\n", encoding="utf-8")
    if ca_admission:
        text = X1_PROFILE.replace(f'model = "{MODEL}"', f'model = "{CA_MODEL}"') + "\n[admission]\n" + ca_admission
        (folder / "ca.toml").write_text(text + "\n", encoding="utf-8")
    return str(folder)


class Devices:
    """Raw devices on one MQTT client: registers out, every answer in."""

    def __init__(self, line: Line) -> None:
        self.watcher: Watcher = line.watch("prov/v1/dev/+/down")

    def register(self, device_id: str, model: str = MODEL, **members: str) -> None:
        body = {"v": 1, "type": "register", "id": f"r-{device_id}", "device_id": device_id,
                "hardware_id": f"hw-{device_id}", "model": model, **members}  # fmt: skip
        self.watcher.publish(f"prov/v1/dev/{device_id}/up", json.dumps(body).encode())

    def answers(self, device_id: str) -> list[dict[str, Any]]:
        return self.watcher.on(f"prov/v1/dev/{device_id}/down")

    def wait_answered(self, device_ids: list[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        assert self.watcher.wait_for(lambda: all(self.answers(d) for d in device_ids), timeout), [
            d for d in device_ids if not self.answers(d)
        ]
        return {d: self.answers(d)[0] for d in device_ids}


def signed_members(
    device: Ed25519PrivateKey, device_id: str, model: str, ca: Ed25519PrivateKey | None = None
) -> dict[str, str]:
    """sig (and device_key, device_cert) exactly as docs/protocol.md defines them."""
    register = Register(f"r-{device_id}", device_id, f"hw-{device_id}", model)
    members = {"sig": b64(device.sign(register_signed_bytes(register)))}
    if ca is not None:
        members["device_key"] = b64(raw(device))
        members["device_cert"] = b64(ca.sign(device_cert_bytes(device_id, raw(device))))
    return members


def minted_for(line: Line) -> list[str]:
    """Who the cloud minted keys for, from the emulator's audit view."""
    return [event["UserDeviceId"] for event in line.emulator.audit()["key_events"]]


def create_auth_key_calls(line: Line) -> int:
    return int(line.emulator.audit()["api_calls"].get("CreateAuthKey", 0))


def test_a_device_not_on_the_allow_list_is_refused_and_nothing_is_minted_for_it(line: Line, tmp_path: Path) -> None:
    port = free_port()
    agent = line.start_agent(profiles=profiles(tmp_path, 'allow = ["FT-*"]'), http={"listen": f"127.0.0.1:{port}"})
    devices = Devices(line)
    devices.register("XX-0001")
    devices.register("FT-0001")
    answers = devices.wait_answered(["XX-0001", "FT-0001"])
    refused = answers["XX-0001"]
    assert (refused["type"], refused["code"], refused["retry"]) == ("error", "not_admitted", False)
    assert refused["message"].startswith("not_on_allow_list: ")
    assert answers["FT-0001"]["type"] == "key"
    assert minted_for(line) == ["FT-0001"]
    assert create_auth_key_calls(line) == 1
    counters = line.status(port)["counters"]
    assert counters["refused_not_admitted"] == 1
    assert counters["not_admitted_not_on_allow_list"] == 1
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'provisioning_admission_refusals_total{reason="not_on_allow_list"} 1.0' in metrics
    assert "not admitted: not_on_allow_list" in agent.log_text()


def test_a_work_order_dropped_while_the_agent_runs_admits_its_devices(line: Line, tmp_path: Path) -> None:
    orders = tmp_path / "orders"
    orders.mkdir()
    port = free_port()
    line.start_agent(
        profiles=profiles(tmp_path, "work_orders = true"),
        admission={"work_orders_dir": str(orders), "poll_interval_s": 0.2},
        http={"listen": f"127.0.0.1:{port}"},
    )
    devices = Devices(line)
    devices.register("EARLY-1")
    assert devices.wait_answered(["EARLY-1"])["EARLY-1"]["message"].startswith("no_work_order: ")
    specs = fleet_specs(4, model=MODEL, id_prefix="WO")
    rows = "".join(f"WO-77,{MODEL},{spec.device_id},4\n" for spec in specs)
    (orders / "wo-77.csv.part").write_text("order,model,device_id,ceiling\n" + rows, encoding="utf-8")
    (orders / "wo-77.csv.part").rename(orders / "wo-77.csv")  # as docs/admission.md asks the MES to write
    (orders / "broken.csv").write_text("order,model\n", encoding="utf-8")  # logged and ignored
    assert devices.watcher.wait_for(lambda: len(line.status(port)["admission"]["work_orders"]) == 1, timeout=30)
    report = line.fleet(specs)
    assert {d.device_id for d in report.devices if d.status == "licensed"} == {s.device_id for s in specs}
    assert sorted(minted_for(line)) == sorted(s.device_id for s in specs)
    admission = line.status(port)["admission"]
    assert [(o["order"], o["used"], o["ceiling"]) for o in admission["work_orders"]] == [("WO-77", 4, 4)]
    assert any("broken.csv:1: header lacks column(s) device_id" in e for e in admission["work_order_errors"])


def test_signatures_good_and_bad_in_both_modes(line: Line, tmp_path: Path) -> None:
    orders = tmp_path / "orders"
    orders.mkdir()
    device, impostor, ca, rogue_ca = (Ed25519PrivateKey.generate() for _ in range(4))
    (orders / "wo.csv").write_text(
        f"order,model,device_id,device_key\nWO-S,{MODEL},SIG-1,{b64(raw(device))}\nWO-S,{MODEL},SIG-2,{b64(raw(device))}\n"
    )
    line.start_agent(
        profiles=profiles(tmp_path, 'work_orders = true\nsignature = "work_order"',
                          ca_admission=f'signature = "factory_ca"\nca_keys = ["{b64(raw(ca))}"]'),
        admission={"work_orders_dir": str(orders)},
    )  # fmt: skip
    devices = Devices(line)
    devices.register("SIG-1", **signed_members(device, "SIG-1", MODEL))
    devices.register("SIG-2", **signed_members(impostor, "SIG-2", MODEL))  # listed, but not its key
    devices.register("SIG-3")  # listed nowhere
    devices.register("CA-1", CA_MODEL, **signed_members(device, "CA-1", CA_MODEL, ca))
    devices.register("CA-2", CA_MODEL, **signed_members(device, "CA-2", CA_MODEL, rogue_ca))
    forged = signed_members(device, "CA-3", CA_MODEL, ca) | {"sig": signed_members(impostor, "CA-3", CA_MODEL)["sig"]}
    devices.register("CA-3", CA_MODEL, **forged)
    devices.register("CA-4", CA_MODEL)
    answers = devices.wait_answered(["SIG-1", "SIG-2", "SIG-3", "CA-1", "CA-2", "CA-3", "CA-4"])
    outcome = {d: a["type"] if a["type"] == "key" else a["message"].split(":")[0] for d, a in answers.items()}
    assert outcome == {
        "SIG-1": "key",
        "SIG-2": "bad_signature",
        "SIG-3": "no_work_order",
        "CA-1": "key",
        "CA-2": "untrusted_device_key",
        "CA-3": "bad_signature",
        "CA-4": "signature_required",
    }
    assert all(a["code"] == "not_admitted" and a["retry"] is False for a in answers.values() if a["type"] == "error")
    assert sorted(minted_for(line)) == ["CA-1", "SIG-1"]


def test_a_flood_of_registrations_never_exceeds_the_hourly_quota(line: Line, tmp_path: Path) -> None:
    quota = 10  # one profile: the line's quota is all its own (with several, each model has its share)
    line.start_agent(profiles=profiles(tmp_path, ""), admission={"per_hour": quota})
    devices = Devices(line)
    ids = [f"FLOOD-{n:03d}" for n in range(60)]
    for _ in range(2):  # every device sends its register twice, all at once
        for device_id in ids:
            devices.register(device_id)

    def settled(device_id: str) -> bool:  # a key or a refusal (a resend may first be told wait/in_progress)
        return any(a["type"] in ("key", "error") for a in devices.answers(device_id))

    assert devices.watcher.wait_for(lambda: all(settled(d) for d in ids), timeout=60)
    assert create_auth_key_calls(line) == quota
    assert len(set(minted_for(line))) == quota
    keyed = {d for d in ids if any(a["type"] == "key" for a in devices.answers(d))}
    assert keyed == set(minted_for(line))
    for device_id in set(ids) - keyed:
        errors = [a for a in devices.answers(device_id) if a["type"] == "error"]
        assert errors
        for answer in errors:
            assert answer["code"] == "not_admitted"
            assert answer["message"].startswith("quota_hour: this line has used its 10 key(s) of the last hour")
            assert answer["retry"] is True
    time.sleep(1.0)  # any late second key would show up now
    assert create_auth_key_calls(line) == quota


def test_quota_use_survives_a_kill_9(line: Line, tmp_path: Path) -> None:
    quota = 5
    port = free_port()
    admission, http = {"per_hour": quota}, {"listen": f"127.0.0.1:{port}"}
    one_model = profiles(tmp_path, "")
    line.start_agent(profiles=one_model, admission=admission, http=http)
    devices = Devices(line)
    first = [f"K-{n}" for n in range(quota)]
    for device_id in first:
        devices.register(device_id)
    assert all(a["type"] == "key" for a in devices.wait_answered(first).values())
    line.agents[-1].kill()
    line.start_agent(profiles=one_model, admission=admission, http=http)
    assert line.status(port)["admission"]["quota"]["line"]["hour"] == {"used": quota, "limit": quota}
    later = [f"L-{n}" for n in range(5)]
    for device_id in later:
        devices.register(device_id)
    answers = devices.wait_answered(later)
    assert {a["message"].split(":")[0] for a in answers.values()} == {"quota_hour"}
    assert create_auth_key_calls(line) == quota
