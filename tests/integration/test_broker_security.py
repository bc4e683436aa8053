"""Broker security end to end: a real Mosquitto with mTLS, passwords and the shipped ACL, the real agent.

The broker is set up as ``systemd/mosquitto/provisioning.conf`` sets up a line: the agent on an
mTLS listener (its certificate's CN is its ACL user), devices with a username/password each
(username = topic id, client id forced to it), ``allow_anonymous false``, and the ACL file
``systemd/mosquitto/acl`` exactly as shipped. One test starts Mosquitto from the shipped
configuration file itself.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from provisioning_lab._ports import free_port
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import fleet_specs
from tests.broker import SHIPPED_MOSQUITTO, MosquittoBroker, Pki, ShippedBroker, make_pki
from tests.integration.provisioning_line import MODEL, Line

SHIPPED = SHIPPED_MOSQUITTO
AGENT_USER = "provisioning-agent"  # the CN of the agent's certificate, the ACL's user
MES_USER = "mes"
GUARD_S = 30.0  # a guard against hangs, not a timing assertion

BrokerFactory = Callable[..., MosquittoBroker]


def device_passwords(tids: list[str]) -> dict[str, str]:
    return {tid: secrets.token_urlsafe(16) for tid in tids}


@pytest.fixture(name="pki")
def pki_fixture(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", client_name=AGENT_USER)


class SecureLine(Line):
    """A line whose broker wants passwords from devices and a certificate from the agent."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, emulator: EmulatorProcess, pki: Pki) -> None:
        super().__init__(tmp_path, broker, emulator)
        self.pki = pki
        self.passwords = dict(broker.passwords)

    def mtls(self, **overrides: Any) -> dict[str, Any]:
        """The agent's [mqtt] section for the mTLS listener."""
        pki = self.pki
        files = {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        return {"port": self.broker.tls_port, **files, **overrides}


@pytest.fixture(name="secure_line")
def secure_line_fixture(
    tmp_path: Path, broker_factory: BrokerFactory, emulator: EmulatorProcess, pki: Pki
) -> Iterator[SecureLine]:
    tids = [f"SEC-{number:05d}" for number in range(6)] + ["EVE-A", "VICTIM-C"]
    broker = broker_factory(
        allow_anonymous=False,
        passwords=device_passwords(tids) | {MES_USER: secrets.token_urlsafe(16)},
        acl=(SHIPPED / "acl").read_text(),
        tls=pki.broker_tls(require_certificate=True, use_identity_as_username=True),
        use_username_as_clientid=True,
    )
    line = SecureLine(tmp_path, broker, emulator, pki)
    yield line
    line.close()


def register(device_id: str, message_id: str = "r-1") -> bytes:
    """A register as sealing firmware sends it (the shipped profiles require seal_pub)."""
    fields = {"v": 1, "type": "register", "id": message_id, "device_id": device_id, "hardware_id": "hw-" + device_id}
    seal_pub = base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    return json.dumps(fields | {"model": MODEL, "seal_pub": seal_pub}).encode()


def run_agent(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


# -- (a) the agent over mTLS provisions devices that log in with passwords ------------------------


def test_agent_over_mtls_licenses_devices_that_log_in_with_passwords(secure_line: SecureLine) -> None:
    line = secure_line
    line.start_agent(mqtt=line.mtls())
    mes = line.watch("prov/v1/reports", username=MES_USER, password=line.passwords[MES_USER])
    specs = fleet_specs(6, model=MODEL, id_prefix="SEC")
    report = line.fleet(specs, passwords=line.passwords)
    ids = {spec.device_id for spec in specs}
    assert {device.device_id for device in report.devices if device.status == "licensed"} == ids
    audit = line.emulator.audit()
    assert audit["keys"]["minted"] == len(ids)
    assert mes.wait_for(lambda: {r["device_id"] for r in mes.on("prov/v1/reports")} == ids)
    log = line.broker.log_text()
    assert f"u'{AGENT_USER}'" in log  # the agent's identity came from its certificate
    assert "u'SEC-00000'" in log  # the device logged in with its own username


# -- (b) a device reads and writes only its own topics --------------------------------------------


def test_a_device_cannot_read_or_write_another_devices_topics(secure_line: SecureLine) -> None:
    line = secure_line
    agent = line.start_agent(mqtt=line.mtls())
    # Device A (EVE-A) is compromised: it tries to read every other device's down topic ...
    eve = line.watch(
        "prov/v1/dev/SEC-00000/down", "prov/v1/dev/+/down", username="EVE-A", password=line.passwords["EVE-A"]
    )
    assert eve.connack is not None
    assert not eve.connack.is_failure
    # ... and to register in the name of device C (whose key would then go to C's down topic, or be
    # wasted: a licence spent on a device the line never built).
    eve.publish("prov/v1/dev/VICTIM-C/up", register("VICTIM-C"))
    specs = fleet_specs(6, model=MODEL, id_prefix="SEC")
    report = line.fleet(specs, passwords=line.passwords)
    assert all(device.status == "licensed" for device in report.devices)
    # The channel itself works: what A publishes on its own up topic is answered on its own down.
    eve.publish("prov/v1/dev/EVE-A/up", register("EVE-A"))
    assert eve.wait_for(lambda: len(eve.on("prov/v1/dev/EVE-A/down")) >= 1, timeout=GUARD_S)
    overheard = [topic for topic, _ in eve.messages if topic != "prov/v1/dev/EVE-A/down"]
    assert overheard == []  # six devices got keys and done messages: A saw none of them
    assert line.emulator.audit()["keys"]["minted"] == len(specs) + 1  # the fleet and A; no key for C
    assert "VICTIM-C" not in agent.log_text()  # the agent never saw C's forged register


# -- (c) the agent refuses unusable files at start-up, naming file and key ------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("ca_file", "missing"),
        ("cert_file", "missing"),
        ("key_file", "missing"),
        ("ca_file", "garbage"),
        ("cert_file", "garbage"),
        ("key_file", "unreadable"),
        ("key_file", "loose"),
        ("password_file", "loose"),
        ("webhook_secret_file", "loose"),
    ],
)
def test_the_agent_refuses_unusable_secret_files_at_start(
    secure_line: SecureLine, tmp_path: Path, key: str, problem: str
) -> None:
    line = secure_line
    bad = tmp_path / f"bad-{key}"
    if problem == "garbage":
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    elif problem == "unreadable":
        bad.write_bytes(line.pki.client_key.read_bytes())
        bad.chmod(0o000)
        if os.access(bad, os.R_OK):
            pytest.skip("running as root: file modes do not stop reads (the mode check below still applies)")
    elif problem == "loose":
        source = line.pki.client_key if key == "key_file" else None
        bad.write_bytes(source.read_bytes() if source else b"s3cret-" + secrets.token_bytes(4).hex().encode())
        bad.chmod(0o640 if key != "webhook_secret_file" else 0o604)
    mqtt, upstream = line.mtls(), {}
    if key == "password_file":
        mqtt |= {"username": AGENT_USER, key: str(bad)}
    elif key == "webhook_secret_file":
        upstream = {"webhook_url": "http://127.0.0.1:9/reports", key: str(bad)}
    else:
        mqtt[key] = str(bad)
    section = "upstream" if upstream else "mqtt"
    config = line.config(mqtt=mqtt, upstream=upstream)
    result = run_agent(config, line.env)
    assert result.returncode == 3, result.stderr
    assert f"{config}: key {section}.{key}:" in result.stderr
    assert str(bad) in result.stderr
    if problem == "loose":
        assert f"chmod 600 {bad}" in result.stderr
    assert "Traceback" not in result.stderr
    assert line.emulator.audit()["keys"]["minted"] == 0


# -- (d) a wrong CA or a wrong password: a clear error and exit 3 (no restart loop) ---------------


def test_a_broker_certificate_from_another_ca_stops_the_start(secure_line: SecureLine, tmp_path: Path) -> None:
    line = secure_line
    stranger = make_pki(tmp_path / "other-ca", client_name=AGENT_USER)
    config = line.config(mqtt=line.mtls(ca_file=str(stranger.ca_file)))
    result = run_agent(config, line.env)
    assert result.returncode == 3, result.stderr
    assert f"does not verify against ca_file {stranger.ca_file}" in result.stderr
    assert f"check mqtt.ca_file in {config}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_agent_certificate_from_another_ca_stops_the_start(secure_line: SecureLine, tmp_path: Path) -> None:
    line = secure_line
    stranger = make_pki(tmp_path / "other-ca", client_name=AGENT_USER)
    mqtt = line.mtls(cert_file=str(stranger.client_cert), key_file=str(stranger.client_key))
    result = run_agent(line.config(mqtt=mqtt), line.env)
    assert result.returncode == 3, result.stderr
    assert f"rejected the TLS client credentials (cert_file {stranger.client_cert})" in result.stderr
    assert "check mqtt.cert_file" in result.stderr


def test_a_wrong_password_stops_the_start(secure_line: SecureLine, tmp_path: Path) -> None:
    line = secure_line
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("not-the-password\n")
    password_file.chmod(0o600)
    mqtt = {"port": line.broker.port, "username": "SEC-00000", "password_file": str(password_file)}
    config = line.config(mqtt=mqtt)
    result = run_agent(config, line.env)
    assert result.returncode == 3, result.stderr
    assert "refused the connection: Not authorized" in result.stderr
    assert f"check mqtt.username, mqtt.password_file (or the client certificate) in {config}" in result.stderr
    assert "not-the-password" not in result.stderr


def test_a_password_changed_while_running_is_an_error_retried_not_an_exit(
    secure_line: SecureLine, tmp_path: Path
) -> None:
    line = secure_line
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(line.passwords["SEC-00000"])
    password_file.chmod(0o600)
    # Logged in as a device (a password login): its ACL does not cover the agent's subscription.
    line.broker.acl = None
    line.broker.restart()
    port = free_port()
    agent = line.start_agent(
        mqtt={"port": line.broker.port, "username": "SEC-00000", "password_file": str(password_file)},
        http={"listen": f"127.0.0.1:{port}"},
    )
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    line.broker.passwords["SEC-00000"] = "rotated-on-the-broker"
    line.broker.restart()
    deadline = time.monotonic() + GUARD_S
    while "refused the connection: Not authorized" not in agent.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = agent.log_text()
    assert "ERROR" in log
    assert "refused the connection: Not authorized" in log
    assert agent.running()  # it waits at the longest backoff for the broker or the operator
    health = httpx.get(f"http://127.0.0.1:{port}/health")
    assert health.status_code == 503
    assert health.json()["reason"].startswith("the MQTT broker refuses the login:")
    assert "Not authorized" in health.json()["reason"]
    broker_light = line.status(port)["station"]["lights"]["broker"]
    assert broker_light["state"] == "down"


# -- the shipped Mosquitto configuration itself ----------------------------------------------------


def connect(port: int, pki: Pki, *, cert: bool, username: str | None = None, password: str | None = None) -> str:
    """Connect once over TLS; the CONNACK reason, or the TLS error's class when the handshake fails."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=paho.MQTTv5)
    client.tls_set(
        ca_certs=str(pki.ca_file),
        certfile=str(pki.client_cert) if cert else None,
        keyfile=str(pki.client_key) if cert else None,
    )
    if username is not None:
        client.username_pw_set(username, password)
    outcome: list[str] = []
    client.on_connect = lambda c, u, flags, reason, p: outcome.append(str(reason))
    try:
        client.connect("127.0.0.1", port)
        deadline = time.monotonic() + GUARD_S
        while not outcome and time.monotonic() < deadline and client.loop(0.1) == paho.MQTT_ERR_SUCCESS:
            pass
    except (ssl.SSLError, OSError) as exc:
        outcome.append(type(exc).__name__)
    finally:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
    return outcome[0] if outcome else "closed"


def test_the_shipped_mosquitto_configuration_enforces_certificates_and_passwords(tmp_path: Path, pki: Pki) -> None:
    passwords = {"SEC-00000": secrets.token_urlsafe(16)}
    broker = ShippedBroker(tmp_path / "shipped", pki, passwords)
    with broker:
        agent_port, device_port = broker.tls_port, broker.port
        assert connect(agent_port, pki, cert=True) == "Success"  # the agent: certificate only
        assert connect(agent_port, pki, cert=False) != "Success"  # no certificate: refused
        assert connect(device_port, pki, cert=False, username="SEC-00000", password=passwords["SEC-00000"]) == "Success"
        assert connect(device_port, pki, cert=False, username="SEC-00000", password="wrong") == "Not authorized"
        assert connect(device_port, pki, cert=False) == "Not authorized"  # allow_anonymous false
    assert f"u'{AGENT_USER}'" in broker.log_text()


def test_the_protocol_docs_acl_snippet_is_the_shipped_acl() -> None:
    protocol = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    start = protocol.index("**Broker ACL**")
    block = protocol[protocol.index("```", start) + 3 : protocol.index("```", protocol.index("```", start) + 3)]
    documented = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
    shipped = {" ".join(line.split()) for line in (SHIPPED / "acl").read_text().splitlines()}
    assert len(documented) >= 7
    assert [line for line in documented if line not in shipped] == []
