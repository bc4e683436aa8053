"""Secrets stay secret (docs/reliability.md, invariant 6): everything the agent wrote, searched for every secret.

A real agent at ``log_level = "debug"`` provisions a fleet over MQTT (some devices misbehaving,
so error paths run too) through a password-protected broker and devices on a serial jig,
reporting over MQTT and to an https:// webhook (a private CA) with a bearer token, every report
signed with an HMAC key.
Then every byte the agent produced is searched: its stdout and stderr, every row of every table
of its journal and the raw ``-wal``/``-shm`` files, every report (MQTT and webhook bodies), the
retained status, ``/status`` and ``/metrics``. The secrets: the AccessKey secret, every AuthKey
the emulator minted (read from the emulator's own state file), the MQTT password, the webhook
token, the report HMAC key and the status token, each also searched hex- and base64-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import secrets
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import write_config
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import Behaviour, SerialDevice, SerialJig, fleet_specs, queue_specs
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._serial import run_port_queue
from tests.broker import MosquittoBroker, make_pki
from tests.integration.provisioning_line import FAST, MODEL, PROFILES, Line, Watcher

GUARD_S = 60.0  # a guard against hangs, not a timing assertion
SERIAL_MODEL = "gate-controller-g2"  # hardware-profiles/: the profile provisioned over serial
AGENT_USER = "provisioning-agent"

BrokerFactory = Callable[..., MosquittoBroker]


class WebhookRecorder(http.server.ThreadingHTTPServer):
    """An MES webhook on loopback that keeps every request's headers and body."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                recorder.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(201)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, name="webhook", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/reports"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def private_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def encodings(secret: str) -> list[bytes]:
    """The secret as written, and hex/base64 encoded (a leak that was merely re-encoded is still a leak)."""
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def journal_rows(path: Path) -> list[str]:
    """Every row of every table in the journal, each as its repr (bytes columns included)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in connection.execute("select name from sqlite_master where type = 'table'")]
        assert tables, "the journal has no tables"
        return [f"{table}: {row!r}" for table in tables for row in connection.execute(f"select * from {table}")]  # noqa: S608 - names from sqlite_master
    finally:
        connection.close()


def run_serial_devices(emulator_url: str, jig: SerialJig, count: int) -> list[SerialDevice]:
    """``count`` simulated devices on the jig's ports (one after another per port); each device's outcome."""

    async def main() -> list[SerialDevice]:
        queues = queue_specs(jig.ports, fleet_specs(count, model=SERIAL_MODEL, id_prefix="UART"))
        lanes: list[list[SerialDevice]] = [[] for _ in queues]
        deadline = asyncio.get_running_loop().time() + GUARD_S
        async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as group:
            sdk = EmulatorSdk(emulator_url, http)
            for queue, lane in zip(queues, lanes, strict=True):
                group.create_task(run_port_queue(queue, sdk, FAST, deadline, lane))
        return [device for lane in lanes for device in lane]

    return asyncio.run(main())


def licensed(devices: Sequence[SerialDevice]) -> set[str]:
    return {device.spec.device_id for device in devices if device.outcome().status == "licensed"}


@pytest.fixture(name="hygiene_emulator")
def hygiene_emulator_fixture(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator of our own: a long random AccessKey secret and a state file holding every key it minted."""
    emulator = EmulatorProcess(
        ["--sdk-delay", "0"],
        access_key_id="hygiene-id",
        access_key_secret="AKS-" + secrets.token_urlsafe(24),
        state_file=tmp_path / "emulator-state.json",
    )
    with emulator:
        yield emulator


@pytest.fixture(name="jig")
def jig_fixture(tmp_path: Path) -> Iterator[SerialJig]:
    """Two pty ports: serial devices (tid ``serial:...``) go through the same agent."""
    with SerialJig(tmp_path / "jig", 2) as jig:
        yield jig


@pytest.mark.timeout(180)  # a whole line on a loaded 2-core machine; the devices' own deadlines end it first
def test_no_secret_reaches_anything_the_agent_wrote(
    tmp_path: Path, broker_factory: BrokerFactory, hygiene_emulator: EmulatorProcess, jig: SerialJig
) -> None:
    emulator = hygiene_emulator
    mqtt_password = "MQP-" + secrets.token_urlsafe(18)
    webhook_token = "WHT-" + secrets.token_urlsafe(18)
    hmac_key = "HMK-" + secrets.token_urlsafe(32)
    broker = broker_factory(passwords={AGENT_USER: mqtt_password})  # devices and watchers stay anonymous
    pki = make_pki(tmp_path / "mes-pki")
    mes_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    mes_tls.load_cert_chain(pki.server_cert, pki.server_key)
    webhook = WebhookRecorder(mes_tls)
    http_port = free_port()
    journal = tmp_path / "gw1.sqlite3"
    config = write_config(
        tmp_path / "gw1.toml",
        {
            "gateway_id": "gw1",
            "journal": str(journal),
            "profiles": PROFILES,
            "log_level": "debug",
            "cloud": {"endpoint": emulator.url, "qps": 200.0, "burst": 20},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "username": AGENT_USER,
                "password_file": str(private_file(tmp_path / "mqtt-password", mqtt_password)),
            },
            "upstream": {
                "mqtt_topic": "prov/v1/reports",
                "webhook_url": webhook.url,
                "webhook_secret_file": str(private_file(tmp_path / "webhook-token", webhook_token)),
                "webhook_ca_file": str(pki.ca_file),
                "sign": "hmac-sha256",
                "sign_key_file": str(private_file(tmp_path / "report-hmac", hmac_key)),
            },
            "http": {"listen": f"127.0.0.1:{http_port}", "socket": ""},
            "serial": {"ports": [str(jig.directory / "port-*")], "usb": False, "scan_interval_s": 0.2},
        },
    )
    env = dict(
        os.environ,
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        PYTHONPATH=str(Path(__file__).parents[2]),
    )
    stdout_path, stderr_path = tmp_path / "agent.stdout", tmp_path / "agent.stderr"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)], stdout=stdout, stderr=stderr, env=env
        )
    watcher = Watcher(broker.port, "prov/v1/reports")
    try:
        deadline = time.monotonic() + GUARD_S
        while b"ready" not in stdout_path.read_bytes():
            assert agent.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, "the agent did not become ready"
            time.sleep(0.05)

        specs = fleet_specs(
            12,
            model=MODEL,
            misbehave={Behaviour.GARBAGE: 2, Behaviour.FAIL_ONCE: 2, Behaviour.RE_REGISTER: 2, Behaviour.DUPLICATE: 2},
        )
        line = Line(tmp_path, broker, emulator)
        report = line.fleet(specs)
        ids = {spec.device_id for spec in specs}
        assert {device.device_id for device in report.devices if device.status == "licensed"} == ids
        serial_devices = run_serial_devices(emulator.url, jig, 4)
        assert licensed(serial_devices) == {device.spec.device_id for device in serial_devices}
        ids |= licensed(serial_devices)
        assert watcher.wait_for(lambda: {r["device_id"] for r in watcher.on("prov/v1/reports")} == ids)
        assert watcher.wait_for(
            lambda: len({json.loads(body)["device_id"] for _, body in webhook.requests}) == len(ids)
        )
        assert all(headers["authorization"] == f"Bearer {webhook_token}" for headers, _ in webhook.requests)
        assert all(json.loads(body)["signature"]["alg"] == "hmac-sha256" for _, body in webhook.requests)

        retained = Watcher(broker.port, "prov/v1/gw/gw1/status")
        assert retained.wait_for(lambda: bool(retained.on("prov/v1/gw/gw1/status")))
        retained.close()
        status_token = (tmp_path / "status.token").read_text().strip()  # made by the agent beside its journal
        authorised = {"Authorization": f"Bearer {status_token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10, trust_env=False) as client:
            endpoints = [client.get(path, headers=authorised).content for path in ("/status", "/metrics", "/health")]
            assert b"in_flight" in endpoints[0]  # the token opened /status
        live_files = [path.read_bytes() for path in sorted(tmp_path.glob("gw1.sqlite3*"))]
    finally:
        agent.terminate()
        agent.wait(30)
        watcher.close()
        webhook.close()
    assert agent.returncode == 0

    state = json.loads(emulator.state_file.read_text())  # type: ignore[union-attr]  # set by the fixture
    auth_keys = [record["key"] for record in state["keys"]]
    assert len(auth_keys) >= len(ids)  # fail_once devices got a second key
    secrets_handled = {
        "AccessKey secret": emulator.access_key_secret,
        "MQTT password": mqtt_password,
        "webhook token": webhook_token,
        "report HMAC key": hmac_key,
        "status token": status_token,
    } | {f"AuthKey #{number}": key for number, key in enumerate(auth_keys)}

    places: dict[str, bytes] = {
        "agent stdout": stdout_path.read_bytes(),
        "agent stderr (its log)": stderr_path.read_bytes(),
        "journal rows": "\n".join(journal_rows(journal)).encode(),
        "journal files while running": b"".join(live_files),
        "journal files after stop": b"".join(path.read_bytes() for path in sorted(tmp_path.glob("gw1.sqlite3*"))),
        "MQTT reports": json.dumps(watcher.on("prov/v1/reports")).encode(),
        "webhook bodies": b"\n".join(body for _, body in webhook.requests),
        "retained status": json.dumps(retained.messages).encode(),
        "/status, /metrics, /health": b"\n".join(endpoints),
    }
    assert b"DEBUG" in places["agent stderr (its log)"]  # the search covered debug logging
    assert b"auth." not in b"".join(places.values())  # no AuthKey-shaped text at all, even one the emulator lost
    leaks = [
        f"{name} in {place}"
        for name, secret in secrets_handled.items()
        for place, content in places.items()
        if any(form in content for form in encodings(secret))
    ]
    assert leaks == []
