"""The daemon end to end: a real agent process, a real Mosquitto, the emulator over HTTP, simulated devices.

Each test tries to break an invariant of docs/reliability.md: one licence per device, keys fresh and
bound, nothing lost, bad input answered, secrets kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from agent.journal import Journal
from provisioning.workflow import State
from provisioning_lab.agentprocess import write_config
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import DeviceSpec, FleetReport, fleet_specs
from tests.integration.provisioning_line import MODEL, Line, line_fixture, unsealed_profiles

__all__ = ["line_fixture"]  # the fixture, imported so pytest finds it here


def assert_one_licence_each(emulator: EmulatorProcess, device_ids: set[str]) -> None:
    audit = emulator.audit()
    by_device = {row["UserDeviceId"]: row for row in audit["devices"]}
    assert set(by_device) == device_ids
    licences = {name: row["licences_consumed"] - row["extensions"] for name, row in by_device.items()}
    doubled = {name: count for name, count in licences.items() if count != 1}
    assert doubled == {}


def licensed_ids(report: FleetReport) -> set[str]:
    return {device.device_id for device in report.devices if device.status == "licensed"}


def test_a_fleet_is_licensed_exactly_once_and_reported(line: Line, tmp_path: Path) -> None:
    # Ids as factories use them: the API reference's own example, and one a topic cannot carry: a work
    # order maps that one to the topic id (broker login) it registers from (identity = "topic").
    utf8 = DeviceSpec("设备/0001 #1", "hw-utf8", MODEL)
    orders = tmp_path / "orders"
    orders.mkdir()
    (orders / "wo.csv").write_text(f"order,model,device_id,topic_id\nWO-1,{MODEL},{utf8.device_id},{utf8.tid}\n")
    line.start_agent(admission={"work_orders_dir": str(orders)})
    watcher = line.watch("prov/v1/reports")
    specs = fleet_specs(40, model=MODEL, misbehave={"garbage": 3, "re_register": 3, "duplicate": 3})
    specs += fleet_specs(20, model=MODEL, protocol="3.1.1", id_prefix="V311")
    specs += [DeviceSpec("3iJ1AY$oHcu7mC69", "hw-seed", MODEL), utf8]
    report = line.fleet(specs)
    ids = {spec.device_id for spec in specs}
    assert licensed_ids(report) == ids
    assert report.totals()["keys_used_after_expiry"] == 0
    assert report.totals()["violations"] == 0
    assert_one_licence_each(line.emulator, ids)
    assert line.emulator.audit()["keys"]["minted"] == len(ids)  # repeats and duplicates never minted again
    assert watcher.wait_for(lambda: len(watcher.on("prov/v1/reports")) >= len(ids))
    reports = watcher.on("prov/v1/reports")
    assert {r["device_id"] for r in reports} == ids
    assert len({r["idempotency_key"] for r in reports}) == len(ids)
    assert all(r["schema"] == "provisioning-report/1" for r in reports)


@pytest.mark.timeout(240)  # a whole line on a loaded 2-core machine; the fleet's own deadline ends it first
def test_two_agents_share_the_devices_without_double_licences(line: Line) -> None:
    shared = {"mqtt": {"shared_group": "line-agents"}}
    line.start_agent("gw-a", **shared)
    line.start_agent("gw-b", **shared)
    specs = fleet_specs(60, model=MODEL, misbehave={"duplicate": 10})
    report = line.fleet(specs)
    ids = {spec.device_id for spec in specs}
    assert licensed_ids(report) == ids
    assert_one_licence_each(line.emulator, ids)
    line.stop()
    served = [Journal.open(line.tmp_path / f"{name}.sqlite3").counts().get("activated", 0) for name in ("gw-a", "gw-b")]
    assert all(count > 0 for count in served), served  # both agents took a share
    assert sum(served) >= len(ids)


@pytest.mark.timeout(240)  # a whole line on a loaded 2-core machine; the fleet's own deadline ends it first
def test_broker_restart_mid_run(line: Line) -> None:
    line.start_agent()
    specs = fleet_specs(60, model=MODEL)
    result: list[FleetReport] = []
    runner = threading.Thread(target=lambda: result.append(line.fleet(specs, deadline_s=90)))
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and line.emulator.audit()["keys"]["used"] < 10:
        time.sleep(0.02)
    line.broker.restart()
    runner.join(120)
    (report,) = result
    ids = {spec.device_id for spec in specs}
    assert licensed_ids(report) == ids
    assert_one_licence_each(line.emulator, ids)


@pytest.mark.timeout(240)  # a whole line on a loaded 2-core machine; the fleet's own deadline ends it first
def test_cloud_outage_is_announced_then_recovered(line: Line) -> None:
    line.start_agent()
    watcher = line.watch("prov/v1/gw/gw1/status")
    line.emulator.set_faults(errors={"ServiceUnavailable": 1.0})
    specs = fleet_specs(10, model=MODEL)
    result: list[FleetReport] = []
    runner = threading.Thread(target=lambda: result.append(line.fleet(specs, deadline_s=90)))
    runner.start()
    assert watcher.wait_for(lambda: any(s.get("cloud") == "unavailable" for s in watcher.on("prov/v1/gw/gw1/status")))
    assert line.emulator.audit()["keys"]["minted"] == 0
    line.emulator.set_faults(errors={"Throttling.User": 0.2}, qps_cap=15)
    runner.join(120)
    (report,) = result
    ids = {spec.device_id for spec in specs}
    assert licensed_ids(report) == ids
    assert report.totals()["waits_received"] > 0  # devices were told to wait, not left guessing
    assert_one_licence_each(line.emulator, ids)
    assert watcher.wait_for(lambda: watcher.on("prov/v1/gw/gw1/status")[-1].get("cloud") == "ok")


class Webhook:
    """A real HTTP consumer of reports that can be down; counts each idempotency key."""

    def __init__(self, expected: int) -> None:
        self.keys: list[str] = []
        self.expected = expected
        self.all_received = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert request.headers["Idempotency-Key"] == body["idempotency_key"]
        self.keys.append(body["idempotency_key"])
        if len(set(self.keys)) >= self.expected:
            self.all_received.set()
        return web.Response(status=201)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/reports", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def test_upstream_down_for_a_while_loses_nothing(line: Line) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    line.start_agent(upstream={"mqtt_topic": "", "webhook_url": f"http://127.0.0.1:{port}/reports"})
    specs = fleet_specs(15, model=MODEL)
    report = line.fleet(specs)
    ids = {spec.device_id for spec in specs}
    assert licensed_ids(report) == ids  # devices are done although the MES is down

    webhook = Webhook(expected=len(ids))

    async def serve_until_all_delivered() -> None:
        await webhook.start(port)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(webhook.all_received.wait(), timeout=60)
        await asyncio.sleep(0.5)  # anything delivered twice would arrive now
        await webhook.stop()

    asyncio.run(serve_until_all_delivered())
    assert len(set(webhook.keys)) == len(ids)
    assert len(webhook.keys) == len(ids)  # and each only once: delivered reports leave the outbox
    line.stop()
    journal = Journal.open(line.tmp_path / "gw1.sqlite3")
    assert journal.outbox_depth() == 0


HOSTILE: list[tuple[bytes, str]] = [
    (b"not json at all", "malformed"),
    (b"\xff\xfe\xfa", "malformed"),
    (b"[1, 2, 3]", "malformed"),
    (json.dumps({"v": 1, "type": "register", "id": "x" * 5000}).encode(), "too_large"),
    (json.dumps({"v": 2, "type": "register", "id": "r"}).encode(), "unsupported_version"),
    (json.dumps({"v": 1, "type": "reboot", "id": "r", "device_id": "d"}).encode(), "unknown_type"),
    (json.dumps({"v": 1, "type": "register", "id": "r", "device_id": "d"}).encode(), "invalid_field"),
    (
        json.dumps(
            {"v": 1, "type": "register", "id": "r", "device_id": "d\u0000x", "hardware_id": "h", "model": MODEL}
        ).encode(),
        "invalid_field",
    ),
    (
        json.dumps(
            {"v": 1, "type": "register", "id": "r", "device_id": "d", "hardware_id": "h", "model": "toaster-9000"}
        ).encode(),
        "unknown_profile",
    ),
    (
        json.dumps(
            {
                "v": 1,
                "type": "result",
                "id": "r",
                "device_id": "nobody",
                "hardware_id": "h",
                "model": MODEL,
                "attempt": "0123456789abcdef",
                "ok": True,
                "sdk_device_id": "wd.x",
                "begin_day": "20260101",
                "expired_day": "20270101",
            }
        ).encode(),
        "not_admitted",  # identity_mismatch: this topic id may not speak for "nobody" (no cloud call made)
    ),
]


def test_hostile_messages_are_answered_and_the_line_keeps_working(line: Line) -> None:
    agent = line.start_agent()
    watcher = line.watch("prov/v1/dev/hostile/down")
    for payload, _ in HOSTILE:
        watcher.publish("prov/v1/dev/hostile/up", payload)
    watcher.publish("prov/v1/dev/bad tid $/up", b"{}")  # not a topic id the agent answers: ignored
    assert watcher.wait_for(lambda: len(watcher.on("prov/v1/dev/hostile/down")) >= len(HOSTILE))
    answers = watcher.on("prov/v1/dev/hostile/down")
    assert [a["code"] for a in answers] == [code for _, code in HOSTILE]
    assert all(a["type"] == "error" and a["message"] for a in answers)
    assert line.emulator.audit()["keys"]["minted"] == 0
    specs = fleet_specs(5, model=MODEL)
    assert licensed_ids(line.fleet(specs)) == {spec.device_id for spec in specs}
    assert agent.running()
    assert "refused message" in agent.log_text()


@pytest.mark.timeout(240)  # a whole line on a loaded 2-core machine; the fleet's own deadline ends it first
def test_kill_9_at_random_moments_never_doubles_a_licence_or_loses_a_device(line: Line) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    watcher = line.watch("prov/v1/reports")
    line.start_agent()
    specs = fleet_specs(120, model=MODEL, misbehave={"duplicate": 10, "re_register": 10})
    result: list[FleetReport] = []
    runner = threading.Thread(target=lambda: result.append(line.fleet(specs, deadline_s=150)))
    runner.start()
    kills = 0
    while runner.is_alive() and kills < 5:
        time.sleep(rng.uniform(0.05, 0.6))
        line.agents[-1].kill()
        kills += 1
        line.start_agent()
    runner.join(200)
    (report,) = result
    ids = {spec.device_id for spec in specs}
    assert kills >= 1
    assert licensed_ids(report) == ids, report.counts()
    assert report.totals()["keys_used_after_expiry"] == 0
    assert report.totals()["keys_expired_on_arrival"] == 0
    assert_one_licence_each(line.emulator, ids)
    assert watcher.wait_for(lambda: {r["device_id"] for r in watcher.on("prov/v1/reports")} == ids, timeout=60)
    line.stop()
    journal = Journal.open(line.tmp_path / "gw1.sqlite3")
    assert {r.device_id for r in journal.all_records() if r.state is State.ACTIVATED} == ids
    assert journal.outbox_depth() == 0


def test_secrets_never_reach_the_log_the_journal_or_reports(line: Line) -> None:
    """Unsealed on purpose: the AuthKeys cross the broker in the clear, so the test can look for them."""
    agent = line.start_agent(profiles=unsealed_profiles(line.tmp_path / "unsealed"))
    watcher = line.watch("prov/v1/reports", "prov/v1/dev/+/down")
    specs = fleet_specs(8, model=MODEL, seal=False)
    assert licensed_ids(line.fleet(specs)) == {spec.device_id for spec in specs}
    keys = [payload["auth_key"] for _, payload in watcher.messages if payload.get("type") == "key"]
    assert len(keys) >= len(specs)
    assert watcher.wait_for(lambda: len(watcher.on("prov/v1/reports")) >= len(specs))
    log = agent.log_text()
    agent.stop()
    journal_bytes = b"".join(p.read_bytes() for p in line.tmp_path.glob("gw1.sqlite3*"))
    reports = json.dumps(watcher.on("prov/v1/reports"))
    for secret in [*keys, line.emulator.access_key_secret]:
        assert secret not in log
        assert secret.encode() not in journal_bytes
        assert secret not in reports


def test_configuration_errors_stop_the_start_with_exit_3(line: Line, tmp_path: Path) -> None:
    bad = line.config(mqtt={"port": 70000})
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=line.env,
        timeout=30,
    )
    assert result.returncode == 3
    assert f"{bad}: key mqtt.port" in result.stderr
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "x.toml").write_text('model = "x"\nbiz_type = "B"\n[licence]\nyears = 0\n')
    config = write_config(tmp_path / "p.toml", {"gateway_id": "g", "profiles": str(profiles)})
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=line.env,
        timeout=30,
    )
    assert result.returncode == 3
    assert "x.toml: key licence.years" in result.stderr
