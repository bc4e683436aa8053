"""docs/protocol.md's shell device, run as written: mosquitto_rr, jq and curl against the real agent.

The script is read from the document (section "A device in shell") and run by ``sh`` with the
real Mosquitto client binaries, on an open broker over MQTT 5 and 3.1.1, and on a broker set up
as shipped (passwords, the client id forced to the login, ``systemd/mosquitto/acl``), where a
device that opened a second connection under its login would throw the first off the broker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.provisioning_line import Line, line_fixture
from tests.integration.test_broker_security import SecureLine, pki_fixture, secure_line_fixture

__all__ = ["line_fixture", "pki_fixture", "secure_line_fixture"]

PROTOCOL = Path(__file__).parents[2] / "docs" / "protocol.md"
TOOLS = ("mosquitto_rr", "jq", "curl")
BENCH_MODEL = "bench-x1"
BENCH_PROFILE = f"""
model = "{BENCH_MODEL}"
biz_type = "BENCH"
transports = ["mqtt"]
[licence]
test = true
[sealing]
required = false   # the shell cannot open sealed keys: a deliberate bench profile
"""
LICENSED = re.compile(r"^licensed: (wd\.\S+) until (\d{8})$")
RUN_TIMEOUT_S = 60.0  # a guard against a hang; the script finishes in about a second

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS), reason=f"needs {', '.join(TOOLS)} (Debian: mosquitto-clients)"
)


def shell_device_script() -> str:
    """The sh block of the section "A device in shell", exactly as published."""
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text.split("\n## A device in shell\n", 1)[1].split("\n## ", 1)[0]
    (script,) = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return script


def profiles(tmp_path: Path) -> str:
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    (directory / f"{BENCH_MODEL}.toml").write_text(BENCH_PROFILE, encoding="utf-8")
    return str(directory)


def run_device(line: Line, tmp_path: Path, tid: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "shell-device.sh"
    script.write_text(shell_device_script(), encoding="utf-8")
    variables = {"TID": tid, "HW": f"hw-{tid}", "MODEL": BENCH_MODEL, "EMULATOR": line.emulator.url,
                 "PORT": str(line.broker.port), **env}  # fmt: skip
    return subprocess.run(
        ["sh", str(script)],
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def licensed(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    assert result.returncode == 0, result.stderr
    match = LICENSED.match(result.stdout.strip())
    assert match, result.stdout
    return match.group(1), match.group(2)


@pytest.mark.parametrize("version", ["5", "311"])
def test_the_documented_shell_device_is_licensed_once(line: Line, tmp_path: Path, version: str) -> None:
    line.start_agent(profiles=profiles(tmp_path))
    tid = f"SHELL-{version}"
    first = licensed(run_device(line, tmp_path, tid, MQTT_VERSION=version))
    again = licensed(run_device(line, tmp_path, tid, MQTT_VERSION=version))  # rebooted: the same done

    assert again == first
    audit = line.emulator.audit()
    assert [(row["UserDeviceId"], row["DeviceId"], row["licences_consumed"]) for row in audit["devices"]] == [
        (tid, first[0], 1)
    ]
    assert audit["keys"]["minted"] == 1


def test_the_shell_device_on_the_shipped_broker_logs_in_as_its_topic_id(
    secure_line: SecureLine, tmp_path: Path
) -> None:
    line = secure_line
    line.start_agent(profiles=profiles(tmp_path), mqtt=line.mtls())
    tid = "SEC-00001"
    options = f"-u {tid} -P {line.passwords[tid]}"
    sdk_device_id, _ = licensed(run_device(line, tmp_path, tid, MQTT_OPTS=options))

    assert [row["DeviceId"] for row in line.emulator.audit()["devices"]] == [sdk_device_id]
