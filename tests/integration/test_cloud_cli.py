"""The ``cloud`` CLI as an operator runs it: real processes against the emulator over HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shlex
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
        assert key["schema"] == "cloud-authkey/1"
        ids.append(emulator.activate(key["auth_key"], f"hw-{prefix}-{number}")["DeviceId"])
    return ids


def test_help_everywhere() -> None:
    for command in ([], ["authkey"], ["devices"], ["modify"], ["renew"], ["sdk"]):
        result = subprocess.run(
            [sys.executable, "-m", "agent", "cloud", *command, "--help"], capture_output=True, text=True, check=True
        )
        assert "usage:" in result.stdout
        assert "examples:\n  provisioning-agent cloud" in result.stdout
        assert "exit codes:\n  0" in result.stdout


def test_authkey_prints_the_key_and_its_life(emulator: EmulatorProcess) -> None:
    result = run(emulator, "authkey", "--test", "--user-device-id", "3iJ1AY$oHcu7mC69")
    key = result.stdout.strip()
    assert key.startswith("auth.")
    assert "single use" in result.stderr
    assert key not in result.stderr  # only the fingerprint goes to the human channel
    assert emulator.audit()["keys"]["minted"] == 1


def test_devices_table_and_json(emulator: EmulatorProcess) -> None:
    ids = license_devices(emulator, 3)
    listed = run_json(emulator, "devices", "--biz-type", "LINE_A", "--page-size", "2")
    assert (listed["schema"], listed["count"]) == ("cloud-devices/1", 3)
    rows = listed["devices"]
    assert sorted(row["device_id"] for row in rows) == sorted(ids)
    assert set(rows[0]) == {"device_id", "user_device_id", "biz_type", "begin_day", "expired_day"}
    table = run(emulator, "devices", "--user-device-id", "dev-1")
    assert ids[1] in table.stdout
    assert "1 device(s)" in table.stderr  # the title: for people, not for the pipe


def test_piped_tables_are_one_row_a_line_split_by_tabs(emulator: EmulatorProcess) -> None:
    """`cloud devices | cut -f1` sees whole DeviceIds, whatever the terminal's width (the pipe has none)."""
    long_id = "SN-" + "x" * 60  # the longest UserDeviceId the service takes, wider than any 80-column wrap
    key = run_json(emulator, "authkey", "--years", "1", "--user-device-id", long_id, "--biz-type", "LINE A\tB")
    device_id = emulator.activate(key["auth_key"], "hw-long")["DeviceId"]
    license_devices(emulator, 2)
    piped = run(emulator, "devices", env={"COLUMNS": "40"}).stdout
    header, *rows = piped.splitlines()
    assert header.split("\t") == ["DeviceId", "UserDeviceId", "BizType", "BeginDay", "ExpiredDay"]
    assert len(rows) == 3
    table = {row.split("\t")[0]: row.split("\t") for row in rows}
    assert all(len(fields) == 5 for fields in table.values())
    assert table[device_id][1] == long_id
    assert table[device_id][2] == "LINE A B"  # a tab inside a value cannot split a column


def test_devices_as_csv(emulator: EmulatorProcess) -> None:
    ids = license_devices(emulator, 2)
    text = run(emulator, "devices", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["device_id", "user_device_id", "biz_type", "begin_day", "expired_day"]
    assert sorted(row["device_id"] for row in rows) == sorted(ids)


def test_days_are_iso_on_input_and_wrong_ones_are_named(emulator: EmulatorProcess) -> None:
    license_devices(emulator, 2)
    today = datetime.now(UTC).date()
    iso = run_json(emulator, "devices", "--expired-start-day", today.isoformat(),
                   "--expired-end-day", (today + timedelta(days=400)).isoformat())  # fmt: skip
    compact = run_json(emulator, "devices", "--expired-start-day", today.strftime("%Y%m%d"),
                       "--expired-end-day", days_from_now(400))  # fmt: skip
    assert iso["count"] == compact["count"] == 2
    wrong = run(emulator, "devices", "--expired-end-day", "31/01/2027", check=2)
    assert "argument --expired-end-day: not a day: '31/01/2027' (write YYYY-MM-DD" in wrong.stderr


def test_modify_renames_and_extends_with_the_guard(emulator: EmulatorProcess) -> None:
    (device_id,) = license_devices(emulator, 1)
    (row,) = run_json(emulator, "devices", "--device-id", device_id)["devices"]
    renamed = run_json(emulator, "modify", "--device-id", device_id, "--biz-type", "LINE_B")
    assert (renamed["schema"], renamed["biz_type"]) == ("cloud-modify/1", "LINE_B")
    iso_day = f"{row['expired_day'][:4]}-{row['expired_day'][4:6]}-{row['expired_day'][6:]}"
    extended = run_json(emulator, "modify", "--device-id", device_id, "--years", "2", "--expired-day", iso_day)
    assert extended["expired_day"] > row["expired_day"]
    again = run(
        emulator,
        "modify",
        "--device-id",
        device_id,
        "--years",
        "2",
        "--expired-day",
        row["expired_day"],  # the cloud's yyyyMMdd is accepted too
        "--json",
        check=4,
    )
    error = json.loads(again.stdout)
    assert error["schema"] == "error/1"
    assert "ExpiredDay" in error["error"]["code"]
    assert error["error"]["what_to_do"]


def test_renew_dry_run_then_real_then_rerun(emulator: EmulatorProcess, tmp_path: Path) -> None:
    license_devices(emulator, 4, years="1")
    license_devices(emulator, 2, years="5", prefix="later")
    window = ("--expired-start-day", "20000101", "--expired-end-day", days_from_now(400))

    dry = run_json(emulator, "renew", *window, "--years", "1", "--dry-run", cwd=tmp_path)
    assert (dry["schema"], dry["devices"]) == ("cloud-renew/1", 4)
    assert all(row["status"].startswith("would extend") for row in dry["results"])
    assert emulator.audit()["licences_consumed_total"] == 6

    done = run_json(emulator, "renew", *window, "--years", "1", cwd=tmp_path)
    assert {row["status"] for row in done["results"]} == {"extended"}
    # the dry run's "To" is what the extension then gave, device by device
    assert {r["device_id"]: r["to"] for r in dry["results"]} == {r["device_id"]: r["to"] for r in done["results"]}
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
    statuses = [row["status"] for row in rerun["results"]]
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
    assert result["schema"] == "cloud-sdk/1"
    path = Path(result["path"])
    assert path.parent == tmp_path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result["sha256"]
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist()
    resumed = run_json(emulator, "sdk", "--task-id", result["task_id"], "--output", str(tmp_path / "again"))
    assert resumed["sha256"] == result["sha256"]


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
    assert "what to do: the AccessKey secret is wrong or was rotated" in wrong.stderr
    assert "needs a person" not in wrong.stderr
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
    assert run_json(emulator, "devices", "--credentials-file", str(path), env=env)["devices"] == []


def cli_process(emulator: EmulatorProcess, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    environ.update(
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        CLOUDAUTH_ENDPOINT=emulator.url,
    )
    return subprocess.Popen([sys.executable, "-m", "agent", "cloud", *args], env=environ, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_ctrl_c_in_renew_says_what_was_done_and_the_command_that_resumes(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    license_devices(emulator, 6, years="1")
    emulator.set_faults(latency_ms=300)
    process = cli_process(emulator, "renew", "--expired-end-day", days_from_now(400), "--years", "1",
                          "--concurrency", "1", cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(row["extensions"] for row in emulator.audit()["devices"]) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    emulator.set_faults(latency_ms=0)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    journal = tmp_path / f"renew-any-{days_from_now(400)}-1y.jsonl"
    assert re.search(r"interrupted: [2-5] extended, 0 failed, 0 already done, [1-4] not reached", stderr), stderr
    (resume,) = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(resume.removeprefix("resume with: "))
    assert command[:3] == ["provisioning-agent", "cloud", "renew"]
    assert command[command.index("--journal") + 1] == str(journal)
    # The exact command, run from elsewhere, finishes the job without extending anything twice.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    finished = run_json(emulator, *command[2:], cwd=elsewhere)
    assert finished["failed"] == 0
    assert [row["extensions"] for row in emulator.audit()["devices"]] == [1] * 6


def test_ctrl_c_while_waiting_for_an_sdk_build_prints_the_resume_command(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    process = cli_process(emulator, "sdk", "--app-url", "https://apps.example.com/a.apk", "--output",
                          str(tmp_path / "sdk"), "--wait", "60")  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line.startswith("build task "), line
    task_id = line.split()[2].rstrip(";")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert f"the SDK build {task_id} was started and goes on at the cloud" in stderr
    assert f"resume with: provisioning-agent cloud sdk --task-id {task_id} --output {tmp_path / 'sdk'}" in stderr
