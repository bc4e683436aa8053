"""The audit trail and signed reports end to end: a real agent (killed with SIGKILL midway), Mosquitto, the emulator.

The trail must verify after the crash, hold a ``minted`` entry for every key the cloud saw
used, name an edited row, and `audit reconcile` must find a licence the agent never served.
Reports must verify with the gateway's key on both sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning.reportsig import HEADER, parse_header, verify_report
from provisioning_lab._ports import free_port
from provisioning_lab.simulator import Behaviour, FleetReport, fleet_specs
from tests.conftest import SignedRequests
from tests.integration.provisioning_line import MODEL, Line, line_fixture

__all__ = ["line_fixture"]  # the fixture, imported so pytest finds it here

BIZ_TYPE = "FACE_TERMINAL_X1"  # hardware-profiles/face-terminal-x1.toml


class Webhook:
    """A real HTTP consumer keeping every report body and its signature header."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        self.received.append((await request.json(), request.headers.get(HEADER, "")))
        return web.Response(status=201)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/reports", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.contextmanager
def serving(webhook: Webhook) -> Iterator[None]:
    """The webhook on its own event loop thread while the test drives the line."""
    webhook.port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(webhook.start(), loop).result(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(webhook.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def cli(line: Line, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(line.env, CLOUDAUTH_ENDPOINT=line.emulator.url)
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # fmt: skip


def private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def trail(journal: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return [json.loads(text) for (text,) in db.execute("SELECT entry FROM audit ORDER BY seq")]
    finally:
        db.close()


def test_trail_survives_kill_9_verifies_names_an_edit_and_reconcile_finds_an_orphan(
    line: Line, signed: SignedRequests
) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    key_file = private_file(line.tmp_path / "report.pem", pem)
    webhook = Webhook()
    journal = line.tmp_path / "gw1.sqlite3"
    watcher = line.watch("prov/v1/reports")
    specs = fleet_specs(
        30, model=MODEL, misbehave={Behaviour.RE_REGISTER: 3, Behaviour.DUPLICATE: 3, Behaviour.FAIL_ONCE: 2}
    )
    ids = {spec.device_id for spec in specs}
    with serving(webhook):
        upstream = {"sign": "ed25519", "sign_key_file": str(key_file), "sign_key_id": "gw1-2026",
                    "webhook_url": f"http://127.0.0.1:{webhook.port}/reports"}  # fmt: skip
        line.start_agent(upstream=upstream)
        result: list[FleetReport] = []
        runner = threading.Thread(target=lambda: result.append(line.fleet(specs, deadline_s=120)))
        runner.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and line.emulator.audit()["keys"]["used"] < 8:
            time.sleep(0.02)
        line.agents[-1].kill()  # SIGKILL mid-run
        line.start_agent(upstream=upstream)
        runner.join(150)
        (report,) = result
        assert {d.device_id for d in report.devices if d.status == "licensed"} == ids
        assert watcher.wait_for(lambda: {r["device_id"] for r in watcher.on("prov/v1/reports")} == ids, timeout=60)
        assert watcher.wait_for(lambda: {b["device_id"] for b, _ in webhook.received} == ids, timeout=60)
    line.stop()

    # Reports verify with the gateway's public key, on MQTT and on the webhook (body and header).
    public = key.public_key()
    for mqtt_report in watcher.on("prov/v1/reports"):
        assert verify_report(mqtt_report, key=public)["key_id"] == "gw1-2026"
    for body, header in webhook.received:
        verify_report(body, key=public)
        assert parse_header(header) == body["signature"]

    # The chain verifies after the crash; every key the cloud saw used was minted in the trail.
    verified = cli(line, "audit", "verify", "--journal", str(journal), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    document = json.loads(verified.stdout)
    assert document["intact"] is True
    entries = trail(journal)
    minted = {e["key_fingerprint"] for e in entries if e["event"] == "minted"}
    used = {k["fingerprint"] for k in line.emulator.audit()["key_events"] if k["outcome"] == "activated"}
    assert used <= minted
    assert {e["device_id"] for e in entries if e["event"] == "consumed"} == ids
    pushed = {(e["device_id"], e["attempt"]) for e in entries if e["event"] == "pushed"}
    consumed = {(e["device_id"], e["attempt"]) for e in entries if e["event"] == "consumed"}
    assert consumed <= pushed  # no key was consumed that the trail did not see leave
    # Every key the trail saw minted ended in it: consumed, or abandoned (the fail_once devices' first keys).
    ends = {(e["device_id"], e["attempt"]) for e in entries if e["event"] in ("consumed", "abandoned")}
    assert {(e["device_id"], e["attempt"]) for e in entries if e["event"] == "minted"} <= ends
    failing = {spec.device_id for spec in specs if spec.behaviour is Behaviour.FAIL_ONCE}
    assert failing <= {e["device_id"] for e in entries if e["event"] == "abandoned"}
    assert line.emulator.access_key_secret not in json.dumps(entries)

    # Export is JSON lines carrying the chain.
    exported = cli(line, "audit", "export", "--journal", str(journal))
    assert exported.returncode == 0
    lines = [json.loads(text) for text in exported.stdout.splitlines()]
    assert [item["seq"] for item in lines] == list(range(1, len(entries) + 1))
    assert lines[-1]["hash"] == document["head"]["hash"]

    # Reconcile: clean, then a licence activated behind the agent's back is an orphan.
    clean = cli(line, "audit", "reconcile", "--journal", str(journal), "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["licences_checked"] == len(ids)
    signed.licence("hw-stranger", line.emulator, UserDeviceId="NEVER-SERVED-1", BizType=BIZ_TYPE)
    found = cli(line, "audit", "reconcile", "--journal", str(journal), "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    findings = json.loads(found.stdout)
    assert findings["schema"] == "audit-reconcile/1"
    assert [o["user_device_id"] for o in findings["orphaned"]] == ["NEVER-SERVED-1"]
    assert findings["doubled"] == []
    assert findings["unknown"] == []

    # A licence renamed to another BizType is still the one the trail consumed, not an unknown one;
    # and reconcile connects as the agent does: the endpoint from --config, no flag, no variable.
    moved = next(str(e["detail"]["sdk_device_id"]) for e in entries if e["event"] == "consumed")
    signed.call("ModifyDeviceInfo", DeviceId=moved, BizType="LINE_B")
    env = {k: v for k, v in line.env.items() if k != "CLOUDAUTH_ENDPOINT"}
    config = line.tmp_path / "gw1.toml"
    again = subprocess.run([sys.executable, "-m", "agent", "audit", "reconcile", "--config", str(config), "--json"],
                           capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip
    assert again.returncode == 1, again.stdout + again.stderr  # the stranger's orphan, nothing else
    findings = json.loads(again.stdout)
    assert findings["unknown"] == []
    assert [o["user_device_id"] for o in findings["orphaned"]] == ["NEVER-SERVED-1"]

    # Editing one row in the SQLite file breaks the chain there, and verify names the row.
    target = len(entries) // 2
    db = sqlite3.connect(journal)
    with db:
        db.execute("UPDATE audit SET entry = replace(entry, '\"model\":', '\"model\": ') WHERE seq = ?", (target,))
    db.close()
    broken = cli(line, "audit", "verify", "--journal", str(journal))
    assert broken.returncode == 6
    assert f"BROKEN at seq {target}: edited" in broken.stdout


def test_hmac_signed_webhook_reports_verify_with_the_shared_secret(line: Line) -> None:
    secret = b"shared-with-the-mes-0123456789abcdef"
    key_file = private_file(line.tmp_path / "report.key", secret + b"\n")
    webhook = Webhook()
    specs = fleet_specs(5, model=MODEL)
    ids = {spec.device_id for spec in specs}
    with serving(webhook):
        upstream = {"mqtt_topic": "", "sign": "hmac-sha256", "sign_key_file": str(key_file),
                    "webhook_url": f"http://127.0.0.1:{webhook.port}/reports"}  # fmt: skip
        line.start_agent(upstream=upstream)
        assert {d.device_id for d in line.fleet(specs).devices if d.status == "licensed"} == ids
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(webhook.received) < len(specs):
            time.sleep(0.05)
    assert {body["device_id"] for body, _ in webhook.received} == {s.device_id for s in specs}
    for body, header in webhook.received:
        assert verify_report(body, key=secret)["key_id"] == "gw1"  # default key id: the gateway id
        assert parse_header(header) == body["signature"]
        report_file = line.tmp_path / "one.json"
        report_file.write_text(json.dumps(body))
        assert cli(line, "report", "verify", str(report_file), "--key", str(key_file)).returncode == 0
        report_file.write_text(json.dumps(body | {"term": "100y"}))
        refused = cli(line, "report", "verify", str(report_file), "--key", str(key_file))
        assert refused.returncode == 1
        assert "NOT VALID" in refused.stdout


def test_a_world_readable_signing_key_stops_the_agent_with_exit_3(line: Line) -> None:
    key_file = line.tmp_path / "open.key"
    key_file.write_bytes(b"x" * 40)
    key_file.chmod(0o644)
    config = line.config(upstream={"sign": "hmac-sha256", "sign_key_file": str(key_file)})
    result = cli(line, "run", "--config", str(config))
    assert result.returncode == 3
    assert f"{config}: key upstream.sign_key_file" in result.stderr
    assert str(key_file) in result.stderr
