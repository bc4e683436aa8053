"""docs/protocol.md's error table, row by row, against the real agent over MQTT.

The test reads the error table and the table of refusal reasons from the document (as the
sealing and serial tests read their vectors), and for every row sends the message that row
describes to a real agent and checks the answer: an ``error`` with the row's ``code`` (and,
for ``not_admitted``, the row's reason first in the message) and the row's ``retry`` flag. A
row without a case here fails, and so does a case without a row (and a code or refusal reason
of the agent's that the document lacks): the document and the agent cannot drift apart unnoticed.

One agent serves every row (models for each admission rule, a work-order folder, quotas per
model); a second one, on its own topic root, has the flood guards that would otherwise stop
the other rows. Devices are scripted by hand (tests/integration/handdevice.py), each with a
fresh topic id equal to its device id.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning.admission import REASONS
from provisioning.protocol import ErrorCode, Register, device_cert_bytes, register_signed_bytes
from provisioning_lab.agentprocess import AgentProcess
from provisioning_lab.broker import MosquittoBroker
from provisioning_lab.emulator import EmulatorProcess
from tests.integration.handdevice import Answer, HandDevice, new_id
from tests.integration.provisioning_line import Line
from tests.integration.test_serial_station import WAIT_S, LinkDevice

PROTOCOL = Path(__file__).parents[2] / "docs" / "protocol.md"
FLOOD_ROOT = "confb/v1"  # the second agent's topic root
DEVICE_PER_MINUTE = 3  # the second agent's per-sender limit
MQTT_PER_SECOND = 2  # the second agent's per-transport limit
KEYS_PER_LOGIN_HOUR = 1  # the second agent's keys per topic id
CA = Ed25519PrivateKey.generate()  # the factory CA of model conf-ca
OTHER_CA = Ed25519PrivateKey.generate()
CA_KEY = base64.b64encode(CA.public_key().public_bytes_raw()).decode()
ATTEMPT = "0123456789abcdef"

PROFILE = """
model = "{model}"
biz_type = "CONFORMANCE"
transports = {transports}
[licence]
years = 1
[policy]
max_attempts = {attempts}
[sealing]
required = true
{admission}
"""
MODELS: dict[str, dict[str, Any]] = {
    "conf-open": {},
    "conf-last": {"attempts": 1},
    "conf-serial": {"transports": '["serial"]'},
    "conf-allow": {"admission": '[admission]\nallow = ["ALLOWED-*"]'},
    "conf-order": {"admission": "[admission]\nwork_orders = true"},
    "conf-ca": {"admission": f'[admission]\nsignature = "factory_ca"\nca_keys = ["{CA_KEY}"]'},
    "conf-hour": {"admission": "[admission]\nper_hour = 1"},
    "conf-day": {"admission": "[admission]\nper_day = 1"},
    "conf-claimed": {"admission": '[admission]\nidentity = "claimed"'},  # any topic id may claim a device
}  # fmt: skip
WORK_ORDER = "order,model,device_id,ceiling\nWO-CONF,conf-order,ORDER-1,1\nWO-CONF,conf-order,ORDER-2,1\n"


# -- the document ---------------------------------------------------------------------------------


def table_after(heading: str) -> list[tuple[str, str]]:
    """The first two columns of the first table after ``heading`` in docs/protocol.md, backticks removed."""
    lines = PROTOCOL.read_text(encoding="utf-8").split("\n" + heading + "\n", 1)[1].splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("|"))
    rows: list[tuple[str, str]] = []
    for line in lines[start + 2 :]:  # after the header and its |---| line
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[1]))
    return rows


ERROR_ROWS = table_after("### error (agent to device)")
REASON_ROWS = table_after("#### Refusal reasons (`not_admitted`)")
RETRY = {"yes": True, "no": False}


# -- the line ---------------------------------------------------------------------------------------


@dataclass
class Conformance:
    """The running line and the devices the cases made."""

    line: Line
    agent: AgentProcess
    tmp_path: Path
    flood_agent: AgentProcess | None = None
    devices: list[HandDevice] = field(default_factory=list)

    def device(self, device_id: str, model: str = "conf-open", *, root: str = "prov/v1", tid: str = "") -> HandDevice:
        hand = HandDevice(self.line.broker.port, device_id, model, root=root, tid=tid).connect()
        self.devices.append(hand)
        return hand

    def flood(self) -> None:
        """Start the second agent (flood guards on) the first time a case needs it."""
        if self.flood_agent is None:
            admission = {"device_per_minute": DEVICE_PER_MINUTE, "mqtt_per_second": MQTT_PER_SECOND,
                         "keys_per_login_hour": KEYS_PER_LOGIN_HOUR}  # fmt: skip
            self.flood_agent = self.line.start_agent(
                "conf-b", profiles=str(self.tmp_path / "profiles"), mqtt={"topic_root": FLOOD_ROOT}, admission=admission
            )


@pytest.fixture(scope="module")
def conformance(tmp_path_factory: pytest.TempPathFactory, emulator_process: EmulatorProcess) -> Iterator[Conformance]:
    tmp_path = tmp_path_factory.mktemp("conformance")
    emulator_process.reset()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for model, values in MODELS.items():
        text = PROFILE.format(model=model, **{"transports": '["mqtt"]', "attempts": 2, "admission": ""} | values)
        (profiles / f"{model}.toml").write_text(text, encoding="utf-8")
    orders = tmp_path / "orders"
    orders.mkdir()
    (orders / "wo-conf.csv").write_text(WORK_ORDER, encoding="utf-8")
    with MosquittoBroker(tmp_path / "broker") as broker:
        line = Line(tmp_path, broker, emulator_process)
        agent = line.start_agent(profiles=str(profiles), admission={"work_orders_dir": str(orders)})
        conformance = Conformance(line, agent, tmp_path)
        yield conformance
        for device in conformance.devices:
            device.close()
        line.close()


# -- the cases: one per documented row -------------------------------------------------------------

Case = Callable[[Conformance], Answer]


def raw(payload: bytes) -> Case:
    """A message the decoder refuses: sent as bytes by a fresh device; the first answer."""

    def case(conf: Conformance) -> Answer:
        device = conf.device(f"RAW-{new_id()}")
        device.send(payload)
        assert device.wait_for(lambda: bool(device.answers)), "no answer"
        return device.answers[0]

    return case


def register_as(device_id: str, model: str = "conf-open") -> Case:
    def case(conf: Conformance) -> Answer:
        device = conf.device(device_id, model)
        return device.answer_to(device.register())

    return case


def keyed_then(device_id: str, model: str, then: Case) -> Case:
    """A first device of ``model`` gets its key (using a quota or a ceiling); then the row's message."""

    def case(conf: Conformance) -> Answer:
        assert register_as(device_id, model)(conf).type == "key"
        return then(conf)

    return case


def failed_activation(device_id: str, model: str) -> Case:
    """A device gets its key, its SDK fails (the cloud holds no licence for it), it reports ok: false."""

    def case(conf: Conformance) -> Answer:
        device = conf.device(device_id, model)
        key = device.answer_to(device.register())
        assert key.type == "key", str(key)
        return device.answer_to(device.result_failed(key.body["attempt"], "SdkInitFailed", "camera not ready"))

    return case


def unknown_attempt(conf: Conformance) -> Answer:
    device = conf.device("NEVER-KEYED-1")
    return device.answer_to(device.result_failed(ATTEMPT, "SdkInitFailed", "a key this device never got"))


def cloud_rejected(conf: Conformance) -> Answer:
    conf.line.emulator.set_faults(errors={"Forbidden.RAM": 1.0})
    try:
        return register_as("REJECTED-1")(conf)
    finally:
        conf.line.emulator.set_faults()


def internal(conf: Conformance) -> Answer:
    """The journal's device table becomes unreadable under the agent (a damaged store), then comes back."""
    journal = sqlite3.connect(conf.tmp_path / "gw1.sqlite3", timeout=10)
    journal.execute("ALTER TABLE devices RENAME TO devices_unreadable")
    journal.commit()
    try:
        return register_as("INTERNAL-1")(conf)
    finally:
        journal.execute("ALTER TABLE devices_unreadable RENAME TO devices")
        journal.commit()
        journal.close()


def signed(device_id: str, *, ca: Ed25519PrivateKey = CA, signer: Ed25519PrivateKey | None = None) -> Case:
    """A register of model conf-ca with a device key certified by ``ca``, signed by ``signer`` (default: that key)."""

    def case(conf: Conformance) -> Answer:
        device = conf.device(device_id, "conf-ca")
        identity = Ed25519PrivateKey.generate()
        key = identity.public_key().public_bytes_raw()
        body = device.register_message(new_id())
        register = Register(body["id"], device_id, device.hardware_id, "conf-ca", seal_pub_b64=body["seal_pub"])
        body |= {
            "device_key": b64(key),
            "device_cert": b64(ca.sign(device_cert_bytes(device_id, key))),
            "sig": b64((signer or identity).sign(register_signed_bytes(register))),
        }
        device.send(body)
        return device.answer_to(body["id"])

    return case


def identity_mismatch(conf: Conformance) -> Answer:
    device = conf.device("VICTIM-1", tid="IMPOSTOR-1")  # registers another device's id on its own topic
    return device.answer_to(device.register())


def bound_elsewhere(conf: Conformance) -> Answer:
    """A key is out to BOUND-1's topic; the same device id registers from another (a model that allows claims)."""
    assert register_as("BOUND-1", "conf-claimed")(conf).type == "key"
    other = conf.device("BOUND-1", "conf-claimed", tid="BOUND-1-ELSEWHERE")
    return other.answer_to(other.register())


def quota_sender(conf: Conformance) -> Answer:
    """The second agent issues one key per topic id an hour: a second key for the same sender is refused."""
    conf.flood()
    device = conf.device("SENDER-1", root=FLOOD_ROOT)
    key = device.answer_to(device.register())
    assert key.type == "key", str(key)
    failed = device.answer_to(device.result_failed(key.body["attempt"], "SdkInitFailed", "camera not ready"))
    assert (failed.body.get("code"), failed.body.get("retry")) == ("activation_failed", True), str(failed)
    return device.answer_to(device.register())


def rate_limited_device(conf: Conformance) -> Answer:
    conf.flood()
    device = conf.device("CHATTY-1", root=FLOOD_ROOT)
    for _ in range(DEVICE_PER_MINUTE):
        device.answer_to(device.register())
    return device.answer_to(device.register())


def rate_limited_transport(conf: Conformance) -> Answer:
    conf.flood()
    devices = [conf.device(f"BURST-{n}", root=FLOOD_ROOT) for n in range(MQTT_PER_SECOND * 3)]
    ids = [device.register() for device in devices]
    answers = [device.answer_to(message_id) for device, message_id in zip(devices, ids, strict=True)]
    refused = [a for a in answers if a.body.get("code") == "not_admitted"]
    assert refused, [str(a) for a in answers]
    return refused[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


REGISTER = {"v": 1, "type": "register", "id": "r-raw", "device_id": "RAW", "hardware_id": "hw", "model": "conf-open"}
RAW_PAYLOADS = {
    "malformed": b"this is not JSON",
    "too_large": json.dumps({**REGISTER, "padding": "x" * 5000}).encode(),
    "unsupported_version": json.dumps({**REGISTER, "v": 2}).encode(),
    "unknown_type": json.dumps({**REGISTER, "type": "reboot"}).encode(),
    "invalid_field": json.dumps({**REGISTER, "device_id": 12345}).encode(),
}
CASES: dict[str, Case] = {
    **{code: raw(payload) for code, payload in RAW_PAYLOADS.items()},
    "unknown_profile": register_as("TOASTER-1", "toaster-9000"),
    "unknown_attempt": unknown_attempt,
    "activation_failed/retry": failed_activation("SDK-FAILS-1", "conf-open"),
    "activation_failed/final": failed_activation("SDK-FAILS-2", "conf-last"),
    "cloud_rejected": cloud_rejected,
    "internal": internal,
    "not_admitted/wrong_transport": register_as("JIG-ONLY-1", "conf-serial"),
    "not_admitted/identity_mismatch": identity_mismatch,
    "not_admitted/bound_elsewhere": bound_elsewhere,
    "not_admitted/quota_sender": quota_sender,
    "not_admitted/not_on_allow_list": register_as("STRANGER-1", "conf-allow"),
    "not_admitted/no_work_order": register_as("UNORDERED-1", "conf-order"),
    "not_admitted/work_order_exhausted": keyed_then("ORDER-1", "conf-order", register_as("ORDER-2", "conf-order")),
    "not_admitted/signature_required": register_as("UNSIGNED-1", "conf-ca"),
    "not_admitted/bad_signature": signed("FORGED-1", signer=Ed25519PrivateKey.generate()),
    "not_admitted/untrusted_device_key": signed("OTHER-CA-1", ca=OTHER_CA),
    "not_admitted/quota_hour": keyed_then("HOUR-1", "conf-hour", register_as("HOUR-2", "conf-hour")),
    "not_admitted/quota_day": keyed_then("DAY-1", "conf-day", register_as("DAY-2", "conf-day")),
    "not_admitted/rate_limited_device": rate_limited_device,
    "not_admitted/rate_limited_transport": rate_limited_transport,
}
NEEDS_CORE: dict[str, str] = {}  # documented rows the agent does not answer yet: case name -> why


def documented_rows() -> list[Any]:
    """One (case name, code, retry) per documented row; a yes/no row has a case for each flag."""
    rows: list[tuple[str, str, bool]] = []
    for code, retry in ERROR_ROWS:
        if code == "not_admitted":
            rows += [(f"not_admitted/{reason}", code, RETRY[flag]) for reason, flag in REASON_ROWS]
        elif retry == "yes/no":
            rows += [(f"{code}/retry", code, True), (f"{code}/final", code, False)]
        else:
            rows.append((code, code, RETRY[retry]))
    return [
        pytest.param(*row, id=row[0], marks=[pytest.mark.xfail(strict=True, reason=NEEDS_CORE[row[0]])])
        if row[0] in NEEDS_CORE
        else pytest.param(*row, id=row[0])
        for row in rows
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("case", "code", "retry"), documented_rows())
def test_each_documented_error_is_answered_as_documented(
    conformance: Conformance, case: str, code: str, retry: bool
) -> None:
    assert case in CASES, f"docs/protocol.md documents {case}, but this test has no case sending it"
    answer = CASES[case](conformance)
    assert (answer.type, answer.body.get("code")) == ("error", code), str(answer)
    assert answer.body["retry"] is retry, str(answer)
    if code == "not_admitted":
        reason = case.split("/", 1)[1]
        assert answer.body["message"].startswith(f"{reason}: "), str(answer)


def test_every_case_and_every_code_is_documented() -> None:
    documented = {code for code, _ in ERROR_ROWS}
    assert documented == set(get_args(ErrorCode))  # the agent's codes, no more, no fewer
    assert {reason for reason, _ in REASON_ROWS} == set(REASONS)
    named = {values[0] for param in documented_rows() for values in [param.values]}
    assert set(CASES) == named
    assert all(retry in ("yes", "no", "yes/no") for _, retry in ERROR_ROWS + REASON_ROWS)


SERIAL_ROWS = ("malformed", "unsupported_version", "unknown_type", "invalid_field", "unknown_profile")


class SerialDevice(LinkDevice):
    """A jig port's device that can also send bytes that are not a valid message."""

    def send_bytes(self, payload: bytes) -> dict[str, Any]:
        """Send ``payload`` as one DATA frame; the answer that follows."""
        before = len(self.received)
        with self._lock:
            self._perform(self.endpoint.send_message(payload, time.monotonic()))
        deadline = time.monotonic() + WAIT_S
        while len(self.received) == before:
            assert time.monotonic() < deadline, f"no answer to {payload[:60]!r}"
            time.sleep(0.02)
        return self.received[before]


@pytest.mark.timeout(120)
def test_the_rows_a_serial_device_can_meet_are_answered_the_same_over_serial(
    conformance: Conformance, tmp_path: Path
) -> None:
    """Over a jig port (a pty), the decoder's rows, an unknown model, and a model not provisioned over serial."""
    jig = tmp_path / "jig"
    jig.mkdir()
    station = conformance.line.start_agent(
        "conf-serial-station",
        profiles=str(conformance.tmp_path / "profiles"),
        mqtt={"enabled": False},
        upstream={"mqtt_topic": ""},
        serial={"ports": [str(jig / "port-*")], "usb": False, "scan_interval_s": 0.2},
    )
    master, slave = os.openpty()
    tty.setraw(slave)
    (jig / "port-01").symlink_to(os.ttyname(slave))
    device = SerialDevice(master, (master, slave))
    try:
        documented = dict(ERROR_ROWS)
        for code in SERIAL_ROWS:
            payload = RAW_PAYLOADS.get(code) or json.dumps({**REGISTER, "model": "toaster-9000"}).encode()
            answer = device.send_bytes(payload)
            assert (answer["code"], answer["retry"]) == (code, RETRY[documented[code]]), answer
        refused = device.send_bytes(json.dumps({**REGISTER, "device_id": "JIG-MQTT-ONLY"}).encode())
        assert (refused["code"], refused["retry"]) == ("not_admitted", False), refused
        assert refused["message"].startswith("wrong_transport: "), refused
    finally:
        device.unplug()
        station.stop()


def test_a_burst_for_an_unknown_model_is_refused_every_time_never_told_to_wait(conformance: Conformance) -> None:
    """A device resending its register in a burst: no key is coming, so no answer may say one is (wait in_progress)."""
    device = conformance.device("BURSTY-TOASTER-1", "toaster-9000")
    ids = [device.register() for _ in range(20)]
    answers = [device.answer_to(message_id) for message_id in ids]
    assert {(a.type, a.body.get("code")) for a in answers} == {("error", "unknown_profile")}, [str(a) for a in answers]
