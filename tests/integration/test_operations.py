"""Running on a gateway: sd_notify over a real notify socket, SIGHUP reload, SIGTERM drain, /metrics /health /status."""

from __future__ import annotations

import base64
import csv
import http.server
import io
import json
import os
import re
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
    document = json.loads(result.stdout)
    assert document["schema"] == "status/1"
    assert document["counters"]["activated"] == 2
    assert document["station"]["shift"]["licensed"] == 2
    table = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--url", url, "--token-file", token],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # piped: TSV tables, one row a line, whole values per column; the titles went to stderr
    blocks = [block.splitlines() for block in table.stdout.split("what\tvalue\n")[1:]]
    overview = dict(line.split("\t") for line in blocks[0] if line.count("\t") == 1)
    assert overview["licensed"] == "2"
    assert overview["broker"].startswith("ok: connected to 127.0.0.1:")
    assert overview["cloud"] == "ok: AccessKey accepted"
    recent = table.stdout.split("at\tdevice\tmodel\tlicence\texpires\tstage\n")[1].splitlines()
    assert sorted(row.split("\t")[1] for row in recent) == ["SIM-00000", "SIM-00001"]
    assert all(row.split("\t")[5] == "reported" for row in recent)
    assert "last licensed" in table.stderr
    no_token = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--url", url, "--token-file", "/nonexistent", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert no_token.returncode == 3
    assert "needs its status token (HTTP 401), and /nonexistent does not exist" in no_token.stderr
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
        document = json.loads(result.stdout)
        assert (document["schema"], document["gateway_id"]) == ("export/1", "gw1")
        rows = document["devices"]
        assert {row["device_id"] for row in rows} == {spec.device_id for spec in specs}
        assert all(row["sdk_device_id"].startswith("wd.") for row in rows)
        assert all(row["reconciled"] is False for row in rows)
    else:
        assert result.stdout.startswith('"device_id","sdk_device_id",')  # every cell quoted (CSV injection)
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert list(rows[0])[:2] == ["device_id", "sdk_device_id"]
        assert len(rows) == 3
        assert {row["reconciled"] for row in rows} == {"false"}  # not Python's False
        since = subprocess.run(
            [sys.executable, "-m", "agent", "export", "--config", str(config), "--since", "2999-01-01"],
            capture_output=True, text=True, env=line.env, timeout=30,
        )  # fmt: skip
        assert since.stdout.splitlines()[1:] == []
        wrong = subprocess.run(
            [sys.executable, "-m", "agent", "export", "--config", str(config), "--since", "1/11/2026"],
            capture_output=True, text=True, env=line.env, timeout=30,
        )  # fmt: skip
        assert wrong.returncode == 2
        assert "--since: not a day: '1/11/2026' (write YYYY-MM-DD" in wrong.stderr


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


def test_a_rejected_access_key_turns_health_503_and_says_so_at_start(
    line: Line, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A rotated secret: the agent serves (devices wait), but /health, the status line and the log say why."""
    notify = NotifySocket(tmp_path / "notify.sock")
    request.addfinalizer(notify.close)
    port = free_port()
    agent = line.start_agent(
        env={"ALIBABA_CLOUD_ACCESS_KEY_SECRET": "rotated-yesterday", "NOTIFY_SOCKET": str(notify.path)},
        http={"listen": f"127.0.0.1:{port}"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and httpx.get(f"{base}/health").status_code == 200:
        time.sleep(0.1)
    health = httpx.get(f"{base}/health")
    assert health.status_code == 503
    assert health.json()["reason"].startswith("the cloud rejects the AccessKey (SignatureDoesNotMatch)")
    assert any("STATUS=CLOUD REJECTS THE ACCESSKEY (SignatureDoesNotMatch)" in m
               for m in notify.collect("CLOUD REJECTS", timeout=10))  # fmt: skip
    log = agent.log_text()
    assert "rejects the AccessKey" in log
    assert "put the current AccessKey in the credential" in log
    assert "rotated-yesterday" not in log
    station = line.status(port)["station"]
    assert station["lights"]["cloud"]["state"] == "down"
    assert line.emulator.audit()["keys"]["minted"] == 0  # the check spends nothing
    notify.close()


def test_start_up_logs_the_version_and_every_listen_address(line: Line) -> None:
    port = free_port()
    agent = line.start_agent(http={"listen": f"127.0.0.1:{port}"})
    log = agent.log_text()
    assert re.search(r"provisioning-agent \S+ starting: configuration \S+gw1.toml, gateway gw1", log)
    assert f"listening on http://127.0.0.1:{port}: / (station view), /status, /health, /metrics" in log
    assert _wait_for_log(agent, "accepts the AccessKey")  # the start-up check, before any device
    assert re.search(r"the cloud http://127.0.0.1:\d+ accepts the AccessKey \(clocks \d+ s apart\)", agent.log_text())


def test_the_station_page_is_served_on_slash(line: Line) -> None:
    port = free_port()
    line.start_agent(http={"listen": f"127.0.0.1:{port}"})
    page = httpx.get(f"http://127.0.0.1:{port}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Provisioning station</title>" in page.text
    assert "http://" not in page.text.split("<script>")[1]
    assert "https://" not in page.text


def test_status_against_an_agent_that_wants_a_token_it_cannot_have(tmp_path: Path) -> None:
    """The token file exists but this user may not read it (or it is wrong): exit 3 with the reason, not a trace."""

    class WantsToken(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.headers.get("Authorization") == "Bearer good" else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WantsToken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "status.token"
    token.write_text("wrong\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'gateway_id = "t"\n[http]\nlisten = "127.0.0.1:{server.server_address[1]}"\n'
                      f'token_file = "{token}"\n')  # fmt: skip
    try:
        refused = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(config)],
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        assert refused.returncode == 3
        assert "refused the status token (HTTP 401)" in refused.stderr
        assert "what to do: run as root, or as a member of group provisioning-operators" in refused.stderr
        assert "Traceback" not in refused.stderr
        token.write_text("good\n")
        web = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(config), "--web"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert web.stdout.strip() == f"http://127.0.0.1:{server.server_address[1]}/#token=good"
    finally:
        server.shutdown()
        server.server_close()
