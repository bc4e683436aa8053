"""The ``cloud`` CLI as an operator runs it: real processes against the emulator over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from provisioning_lab.emulator import EmulatorProcess


def run(
    emulator: EmulatorProcess,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: int | None = 0,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "CREDENTIALS_DIRECTORY"))}
    environ.update(
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        CLOUDAUTH_ENDPOINT=emulator.url,
        COLUMNS="200",
    )
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "agent", "cloud", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=60,
    )
    if check is not None:
        assert result.returncode == check, result.stderr + result.stdout
    return result


def run_json(emulator: EmulatorProcess, *args: str, **kw: Any) -> Any:
    return json.loads(run(emulator, *args, "--json", **kw).stdout)


def days_from_now(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).strftime("%Y%m%d")


def license_devices(emulator: EmulatorProcess, count: int, *, years: str = "1", prefix: str = "dev") -> list[str]:
    ids = []
    for number in range(count):
        key = run_json(
            emulator, "authkey", "--years", years, "--user-device-id", f"{prefix}-{number}", "--biz-type", "LINE_A"
        )
        ids.append(emulator.activate(key["AuthKey"], f"hw-{prefix}-{number}")["DeviceId"])
    return ids


def test_help_everywhere() -> None:
    for command in ([], ["authkey"], ["devices"], ["modify"], ["renew"], ["sdk"]):
        result = subprocess.run(
            [sys.executable, "-m", "agent", "cloud", *command, "--help"], capture_output=True, text=True, check=True
        )
        assert "usage:" in result.stdout


def test_authkey_prints_the_key_and_its_life(emulator: EmulatorProcess) -> None:
    result = run(emulator, "authkey", "--test", "--user-device-id", "3iJ1AY$oHcu7mC69")
    key = result.stdout.strip()
    assert key.startswith("auth.")
    assert "single use" in result.stderr
    assert key not in result.stderr  # only the fingerprint goes to the human channel
    assert emulator.audit()["keys"]["minted"] == 1


def test_devices_table_and_json(emulator: EmulatorProcess) -> None:
    ids = license_devices(emulator, 3)
    rows = run_json(emulator, "devices", "--biz-type", "LINE_A", "--page-size", "2")
    assert sorted(row["DeviceId"] for row in rows) == sorted(ids)
    table = run(emulator, "devices", "--user-device-id", "dev-1").stdout
    assert ids[1] in table
    assert "1 device(s)" in table


def test_modify_renames_and_extends_with_the_guard(emulator: EmulatorProcess) -> None:
    (device_id,) = license_devices(emulator, 1)
    (row,) = run_json(emulator, "devices", "--device-id", device_id)
    renamed = run_json(emulator, "modify", "--device-id", device_id, "--biz-type", "LINE_B")
    assert renamed["BizType"] == "LINE_B"
    extended = run_json(
        emulator, "modify", "--device-id", device_id, "--years", "2", "--expired-day", row["ExpiredDay"]
    )
    assert extended["ExpiredDay"] > row["ExpiredDay"]
    again = run(
        emulator,
        "modify",
        "--device-id",
        device_id,
        "--years",
        "2",
        "--expired-day",
        row["ExpiredDay"],
        "--json",
        check=4,
    )
    assert "ExpiredDay" in json.loads(again.stdout)["error"]["code"]


def test_renew_dry_run_then_real_then_rerun(emulator: EmulatorProcess, tmp_path: Path) -> None:
    license_devices(emulator, 4, years="1")
    license_devices(emulator, 2, years="5", prefix="later")
    window = ("--expired-start-day", "20000101", "--expired-end-day", days_from_now(400))

    dry = run_json(emulator, "renew", *window, "--years", "1", "--dry-run", cwd=tmp_path)
    assert dry["devices"] == 4
    assert all(row["Status"].startswith("would extend") for row in dry["results"])
    assert emulator.audit()["licences_consumed_total"] == 6

    done = run_json(emulator, "renew", *window, "--years", "1", cwd=tmp_path)
    assert {row["Status"] for row in done["results"]} == {"extended"}
    assert emulator.audit()["licences_consumed_total"] == 10

    # The extended licences have left the window; a rerun finds nothing more to do.
    rerun = run_json(emulator, "renew", *window, "--years", "1", cwd=tmp_path)
    assert rerun["devices"] == 0
    assert emulator.audit()["licences_consumed_total"] == 10


def test_renew_killed_midway_resumes_without_double_extension(emulator: EmulatorProcess, tmp_path: Path) -> None:
    license_devices(emulator, 8, years="1")
    window = ("--expired-start-day", "20000101", "--expired-end-day", days_from_now(400))
    journal = tmp_path / "renew.jsonl"
    emulator.set_faults(latency_ms=150)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    environ.update(
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        CLOUDAUTH_ENDPOINT=emulator.url,
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "cloud",
            "renew",
            *window,
            "--years",
            "1",
            "--concurrency",
            "1",
            "--journal",
            str(journal),
            "--json",
        ],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(row["extensions"] for row in emulator.audit()["devices"]) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    emulator.set_faults(latency_ms=0)
    extended_before = sum(row["extensions"] for row in emulator.audit()["devices"])
    assert 3 <= extended_before < 8

    rerun = run_json(
        emulator,
        "renew",
        "--expired-start-day",
        "20000101",
        "--expired-end-day",
        "99991231",
        "--years",
        "1",
        "--journal",
        str(journal),
    )
    statuses = [row["Status"] for row in rerun["results"]]
    assert sum(status.startswith("skipped: already extended") for status in statuses) >= extended_before - 1
    audit = emulator.audit()
    assert [row["extensions"] for row in audit["devices"]] == [1] * 8
    assert audit["licences_consumed_total"] == 16


def test_sdk_build_is_polled_and_downloaded(emulator: EmulatorProcess, tmp_path: Path) -> None:
    result = run_json(
        emulator,
        "sdk",
        "--app-url",
        "https://apps.example.com/face.apk",
        "--platform",
        "android",
        "--output",
        str(tmp_path),
        "--wait",
        "30",
    )
    path = Path(result["Path"])
    assert path.parent == tmp_path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result["Sha256"]
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()
    resumed = run_json(emulator, "sdk", "--task-id", result["TaskId"], "--output", str(tmp_path / "again"))
    assert resumed["Sha256"] == result["Sha256"]


def test_exit_codes_mean_something(emulator: EmulatorProcess, tmp_path: Path) -> None:
    no_creds = run(
        emulator,
        "devices",
        check=3,
        env={"ALIBABA_CLOUD_ACCESS_KEY_ID": "", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ""},
        cwd=tmp_path,
    )
    assert "no Cloudauth AccessKey found" in no_creds.stderr
    bad_years = run(emulator, "authkey", "--years", "101", check=2)
    assert "from 1 to 100" in bad_years.stderr
    wrong = run(emulator, "devices", check=4, env={"ALIBABA_CLOUD_ACCESS_KEY_SECRET": "wrong"})
    assert "SignatureDoesNotMatch" in wrong.stderr
    assert emulator.access_key_id not in wrong.stderr
    unreachable = run(emulator, "devices", "--timeout", "1", check=5, env={"CLOUDAUTH_ENDPOINT": "http://127.0.0.1:9"})
    assert "retry later" in unreachable.stderr
    usage = subprocess.run([sys.executable, "-m", "agent", "cloud", "authkey"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_loose_credentials_file_is_refused(emulator: EmulatorProcess, tmp_path: Path) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text(f'access_key_id = "{emulator.access_key_id}"\naccess_key_secret = "{emulator.access_key_secret}"\n')
    path.chmod(0o644)
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ""}
    refused = run(emulator, "devices", "--credentials-file", str(path), check=3, env=env)
    assert "chmod 600" in refused.stderr
    path.chmod(0o600)
    assert run_json(emulator, "devices", "--credentials-file", str(path), env=env) == []
