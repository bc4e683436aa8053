"""The emulator as a program: start-up line, flags, signals, exit codes and the ``--state`` file."""

from __future__ import annotations

import email.utils
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.cli._exit import ExitCode
from provisioning_lab.emulator import ActivationError, EmulatorProcess, EmulatorStartError
from tests.conftest import SignedRequests


def signed_for(process: EmulatorProcess) -> SignedRequests:
    return SignedRequests(process.url, process.access_key_id, process.access_key_secret)


def test_state_survives_a_restart_and_a_crash(tmp_path: Path) -> None:
    state_file = tmp_path / "cloud.json"
    with EmulatorProcess(state_file=state_file, access_key_id="k1", access_key_secret="s1") as first:
        api = signed_for(first)
        licence = first.activate(api.call("CreateAuthKey", AuthYears="2", UserDeviceId="u-1")["AuthKey"], "hw-1")
        unused_key = api.call("CreateAuthKey", Test="true")["AuthKey"]
        first.advance_clock(60)
        api.http.close()
    saved = json.loads(state_file.read_text())
    assert saved["format"] == 1
    assert state_file.stat().st_mode & 0o777 == 0o600

    second = EmulatorProcess(state_file=state_file, access_key_id="k1", access_key_secret="s1").start()
    try:
        api = signed_for(second)
        page = api.call("DescribeDeviceInfo")
        assert page["DeviceInfoList"]["DeviceInfo"][0]["DeviceId"] == licence["DeviceId"]
        audit = second.audit()
        assert audit["keys"]["minted"] == 2
        assert audit["licences_consumed_total"] == 1
        assert httpx.get(f"{second.url}/_emulator/clock").json()["offset_seconds"] == 60
        again = second.activate(api.call("CreateAuthKey", AuthYears="1")["AuthKey"], "hw-1")
        assert again["Reactivated"] is True
        second.activate(unused_key, "hw-2")  # a key minted before the restart is still good
        api.http.close()
        second.kill()  # SIGKILL: every change was already on disk
    finally:
        second.stop()

    with EmulatorProcess(state_file=state_file, access_key_id="k1", access_key_secret="s1") as third:
        audit = third.audit()
        assert audit["licences_consumed_total"] == 2
        assert [device["HardwareId"] for device in audit["devices"]] == ["hw-1", "hw-2"]
        assert audit["api_calls"] == {}  # counters belong to a process, the account to the file
        third.reset()
    assert json.loads(state_file.read_text())["devices"] == []


def test_start_up_flags_set_the_initial_faults() -> None:
    flags = ["--latency-ms", "5", "--error-rate", "Throttling.User=0.25", "--error-rate", "InternalError=0.1"]
    flags += ["--qps-cap", "7", "--drop-rate", "0.1", "--drop-after-rate", "0.2", "--seed", "3"]
    with EmulatorProcess(flags) as process:
        assert process.faults() == {
            "latency_ms": 5.0,
            "errors": {"Throttling.User": 0.25, "InternalError": 0.1},
            "qps_cap": 7.0,
            "drop_rate": 0.1,
            "drop_after_rate": 0.2,
        }


def test_key_ttl_flag_shortens_the_life_of_every_key() -> None:
    with EmulatorProcess(["--key-ttl", "20s"]) as process:
        requests = signed_for(process)
        fresh = requests.call("CreateAuthKey", AuthYears="1")["AuthKey"]
        stale = requests.call("CreateAuthKey", AuthYears="1")["AuthKey"]
        process.activate(fresh, "hw-fresh")  # within its 20 s
        process.advance_clock(21)
        with pytest.raises(ActivationError) as caught:
            process.activate(stale, "hw-stale")
        requests.http.close()
        assert caught.value.code == "AuthKeyExpired"
        assert "20 seconds" in caught.value.message
        audit = process.audit()
    assert audit["key_lifetime_s"] == 20
    assert audit["keys"] == {"minted": 2, "used": 1, "expired_unused": 1, "outstanding": 0}


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioning_lab", "emulator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--access-key", "no-colon"],
        ["--error-rate", "Throttling.User=2"],
        ["--error-rate", "Throttling.User"],
        ["--port", "70000"],
        ["--key-ttl", "0s"],
        ["--key-ttl", "soon"],
    ],
)
def test_bad_flags_are_usage_errors(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == ExitCode.USAGE
    assert result.stdout == ""


def test_semantic_flag_errors_are_usage_errors() -> None:
    result = run_cli("--error-rate", "A=0.7", "--error-rate", "B=0.7")
    assert result.returncode == ExitCode.USAGE
    assert "at most 1" in result.stderr


def test_corrupt_state_file_is_a_config_error(tmp_path: Path) -> None:
    state_file = tmp_path / "broken.json"
    state_file.write_text('{"format": 1, "keys": "oops"}')
    result = run_cli("--state", str(state_file))
    assert result.returncode == ExitCode.CONFIG
    assert "state" in result.stderr
    with pytest.raises(EmulatorStartError, match="cannot load or write the state file"):
        EmulatorProcess(state_file=state_file).start()
    unwritable = run_cli("--state", str(tmp_path / "no-such-dir" / "state.json"))
    assert unwritable.returncode == ExitCode.CONFIG


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_one_url_line_demo_key_notice_verbose_log_and_clean_stop(signum: signal.Signals) -> None:
    command = [sys.executable, "-m", "provisioning_lab", "emulator", "--verbose"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ").strip()
        api = SignedRequests(url, "emulator-id", "emulator-secret")
        key = api.call("CreateAuthKey", Test="true")["AuthKey"]
        api.http.close()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert stdout == ""  # exactly one line on stdout
    assert "demo pair emulator-id:emulator-secret" in stderr
    assert "CreateAuthKey" in stderr
    assert key not in stderr  # logs show fingerprints only
    assert "minted key " in stderr


def test_busy_port_is_a_config_error(emulator: EmulatorProcess) -> None:
    port = emulator.url.rsplit(":", 1)[1]
    result = run_cli("--port", port)
    assert result.returncode == ExitCode.CONFIG
    assert "cannot listen" in result.stderr


def test_process_handle_lifecycle() -> None:
    process = EmulatorProcess(["--sdk-delay", "0"])
    with pytest.raises(RuntimeError):
        _ = process.url
    assert process.stop() is None
    with process:
        assert process.pid is not None
        assert process.endpoint.startswith("127.0.0.1:")
        with pytest.raises(RuntimeError, match="already running"):
            process.start()
    assert process.pid is None
    with pytest.raises(RuntimeError):
        process.audit()
    process.start()  # a stopped handle starts a fresh process
    try:
        assert process.health() == {"status": "ok"}
    finally:
        assert process.stop() == 0


def test_clock_skew_moves_the_date_header_and_the_timestamp_check(emulator: EmulatorProcess) -> None:
    """The knob doctor's clock check is tested with: a service whose wall clock is off from ours."""
    with EmulatorProcess(["--clock-skew", "-1200"]) as skewed:  # the service 20 minutes behind us
        api = SignedRequests(skewed.url, skewed.access_key_id, skewed.access_key_secret)
        refused = api.v1("DescribeDeviceInfo", {"PageSize": "1"})
        assert refused.status_code == 400
        assert refused.json()["Code"] == "InvalidTimeStamp.Expired"  # our timestamp is 20 minutes ahead of it
        served = email.utils.parsedate_to_datetime(refused.headers["date"]).timestamp()
        assert 1190 <= time.time() - served <= 1210
        api.http.close()
    # the admin route does the same on a running emulator, and reset puts it back
    emulator.set_clock_skew(300)
    api = SignedRequests(emulator.url, emulator.access_key_id, emulator.access_key_secret)
    answer = api.v1("DescribeDeviceInfo", {"PageSize": "1"})
    assert answer.status_code == 200  # 5 minutes is within the 15 the service allows
    assert 290 <= email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp() - time.time() <= 310
    emulator.reset()
    again = api.v1("DescribeDeviceInfo", {"PageSize": "1"})
    assert abs(email.utils.parsedate_to_datetime(again.headers["date"]).timestamp() - time.time()) <= 5
    api.http.close()
