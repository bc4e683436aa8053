"""Running on a gateway: sd_notify over a real notify socket, SIGHUP reload, SIGTERM drain, /metrics /health /status."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess
from provisioning_lab.simulator import fleet_specs
from tests.integration.provisioning_line import MODEL, PROFILES, Line, line_fixture

__all__ = ["line_fixture"]


class NotifySocket:
    """What systemd listens on: a datagram socket; collects every notification."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.05)
        self.messages: list[str] = []

    def collect(self, until: str, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(until in m for m in self.messages):
            try:
                self.messages.append(self._socket.recv(4096).decode())
            except TimeoutError:
                continue
        return self.messages

    def close(self) -> None:
        self._socket.close()


def test_sd_notify_ready_status_watchdog_and_stopping(line: Line, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = line.start_agent(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    messages = notify.collect("READY=1")
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=0 licensed, 0 in flight, cloud ok" in ready
    assert len([m for m in notify.collect("WATCHDOG=1", timeout=5) if m == "WATCHDOG=1"]) >= 1
    specs = fleet_specs(3, model=MODEL)
    line.fleet(specs)
    notify.collect("STATUS=3 licensed")
    assert agent.stop() == 0
    assert any(m == "STOPPING=1" for m in notify.collect("STOPPING=1", timeout=5))
    notify.close()


def test_sighup_reloads_profiles_and_refuses_a_broken_set(line: Line, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    shutil.copytree(PROFILES, profiles)
    agent = line.start_agent(profiles=str(profiles))
    new_model = 'model = "kiosk-k7"\nbiz_type = "KIOSK"\n[licence]\nyears = 2\n'
    (profiles / "kiosk-k7.toml").write_text(new_model)
    pid = agent.pid
    os.kill(pid, signal.SIGHUP)
    assert _wait_for_log(agent, "reloaded 3 profile(s)")
    assert {d.status for d in line.fleet(fleet_specs(2, model="kiosk-k7")).devices} == {"licensed"}

    (profiles / "broken.toml").write_text('model = "x"\nbiz_type = "B"\n[licence]\nyears = 0\n')
    os.kill(pid, signal.SIGHUP)
    assert _wait_for_log(agent, "reload refused, keeping the 3 profile(s) in use")
    assert "broken.toml: key licence.years" in agent.log_text()
    assert {d.status for d in line.fleet(fleet_specs(2, model="kiosk-k7", id_prefix="K2")).devices} == {"licensed"}
    assert agent.running()


def _wait_for_log(agent: AgentProcess, text: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in agent.log_text():
            return True
        time.sleep(0.05)
    return False


def test_metrics_health_and_status_endpoints(line: Line) -> None:
    port = free_port()
    agent = line.start_agent(http={"listen": f"127.0.0.1:{port}"})
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/health").json() == {"ok": True, "reason": "serving"}
    line.fleet(fleet_specs(4, model=MODEL, misbehave={"garbage": 1}))
    metrics = httpx.get(f"{base}/metrics").text
    assert 'provisioning_devices_activated_total{model="face-terminal-x1"} 4.0' in metrics
    assert 'provisioning_events_total{event="keys_minted"} 4.0' in metrics
    assert 'provisioning_events_total{event="refused_malformed"}' in metrics
    assert 'provisioning_cloud_calls_total{action="CreateAuthKey",outcome="ok"} 4.0' in metrics
    assert 'provisioning_step_seconds_count{step="activation"} 4.0' in metrics
    assert "provisioning_broker_connected 1.0" in metrics
    refused = httpx.get(f"{base}/status", trust_env=False)
    assert refused.status_code == 401  # /status is for the token's holders
    assert "in_flight" not in refused.text
    status = line.status(port)
    assert status["counters"]["activated"] == 4
    assert status["broker_connected"] is True
    assert status["in_flight"] == []
    assert any("malformed" in error for error in status["last_errors"])
    line.broker.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(f"{base}/health").status_code == 200:
        time.sleep(0.1)
    unhealthy = httpx.get(f"{base}/health")
    assert unhealthy.status_code == 503
    assert "broker" in unhealthy.json()["reason"]
    line.broker.start()
    assert agent.running()


def test_status_command_reads_a_running_agent(line: Line) -> None:
    port = free_port()
    line.start_agent(http={"listen": f"127.0.0.1:{port}"})
    line.fleet(fleet_specs(2, model=MODEL))
    url, token = f"http://127.0.0.1:{port}", str(line.tmp_path / "status.token")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--url", url, "--token-file", token, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counters"]["activated"] == 2
    table = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--url", url, "--token-file", token],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "activated" in table.stdout
    no_token = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--url", url, "--token-file", "/nonexistent", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert no_token.returncode == 3
    assert "needs the agent's status token" in no_token.stderr
    down = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 5
    assert "not running" in down.stderr


def test_status_command_prefers_the_unix_socket(line: Line) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:  # AF_UNIX paths are short
        sock = Path(folder) / "status.sock"
        port = free_port()
        line.start_agent(http={"listen": f"127.0.0.1:{port}", "socket": str(sock)})
        line.fleet(fleet_specs(1, model=MODEL))
        assert sock.stat().st_mode & 0o777 == 0o660
        config = line.tmp_path / "gw1.toml"
        (line.tmp_path / "status.token").unlink()  # the socket alone must do
        result = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            env=line.env,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["counters"]["activated"] == 1
        line.stop()
        assert not sock.exists()  # removed on a clean stop


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_lists_provisioned_devices(line: Line, fmt: str) -> None:
    agent = line.start_agent()
    specs = fleet_specs(3, model=MODEL)
    line.fleet(specs)
    agent.stop()
    config = line.tmp_path / "gw1.toml"
    result = subprocess.run(
        [sys.executable, "-m", "agent", "export", "--config", str(config), "--format", fmt],
        capture_output=True,
        text=True,
        env=line.env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for spec in specs:
        assert spec.device_id in result.stdout
    if fmt == "json":
        rows = json.loads(result.stdout)
        assert {row["device_id"] for row in rows} == {spec.device_id for spec in specs}
        assert all(row["sdk_device_id"].startswith("wd.") for row in rows)
    else:
        header, *lines = result.stdout.strip().splitlines()
        assert header.startswith("device_id,")
        assert len(lines) == 3


def test_sigterm_lets_a_device_in_flight_finish(line: Line) -> None:
    agent = line.start_agent()
    watcher = line.watch("prov/v1/dev/+/down")
    line.emulator.set_faults(latency_ms=1500)
    seal_pub = base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    register = {"v": 1, "type": "register", "id": "r1", "device_id": "SN-DRAIN", "hardware_id": "hw-d", "model": MODEL}
    watcher.publish("prov/v1/dev/SN-DRAIN/up", json.dumps(register | {"seal_pub": seal_pub}).encode())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and line.emulator.audit()["api_calls"].get("CreateAuthKey", 0) < 1:
        time.sleep(0.02)
    assert agent.stop() == 0  # SIGTERM while CreateAuthKey is on the wire
    assert "1 in flight get" in agent.log_text()
    keys = [m for _, m in watcher.messages if m.get("type") == "key" and m.get("device_id") == "SN-DRAIN"]
    assert len(keys) == 1  # the device in flight got its key before the agent left


def test_the_agent_waits_for_a_broker_that_boots_after_it(line: Line) -> None:
    """The MQTT connection retries by itself; the agent becomes ready once the broker is up."""
    line.broker.stop()
    agent = AgentProcess(line.config(), env=line.env)
    line.agents.append(agent)
    starting = threading.Thread(target=agent.start, name="agent-start")
    starting.start()
    assert _wait_for_log(agent, "cannot connect to broker", timeout=30)
    assert not agent.log_text().count("ready")  # still waiting
    line.broker.start()
    starting.join(60)
    assert agent.running()
    report = line.fleet(fleet_specs(1, model=MODEL))
    assert [device.status for device in report.devices] == ["licensed"]


def test_a_taken_status_port_is_a_clear_configuration_error(line: Line) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = line.config(http={"listen": f"127.0.0.1:{port}"})
        result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                capture_output=True, text=True, env=line.env, timeout=60)  # fmt: skip
    assert result.returncode == 3
    assert f"http.listen 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
