"""The systemd files in systemd/: the unit's required directives, its companions, and .ci/systemd-check.

The directive tests read the files and need nothing installed. The check tests run the real
``systemd-analyze`` (verify, and security --offline for the exposure figure) and are
skipped, with the reason, only where it is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from agent.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "provisioning-agent.service"
SYSUSERS = SYSTEMD / "provisioning-agent.sysusers.conf"
TMPFILES = SYSTEMD / "provisioning-agent.tmpfiles.conf"
EXAMPLE = SYSTEMD / "agent.toml.example"
CHECK = ROOT / ".ci" / "systemd-check"
MAX_EXPOSURE = 2.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: apt-get install systemd)"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (continuation lines are not used in our files)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


@pytest.fixture(scope="module")
def unit_section() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Unit"]


def words(values: list[str]) -> list[str]:
    return [word for value in values for word in value.split()]


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


# --- the unit's directives -------------------------------------------------------------------


def test_lifecycle_is_notify_with_watchdog_and_restart(service: dict[str, list[str]]) -> None:
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert 0 < seconds(service["WatchdogSec"][-1]) <= 60
    assert service["Restart"] == ["on-failure"]
    assert "3" in words(service["RestartPreventExitStatus"]), "a configuration error (exit 3) must not loop"
    assert seconds(service["TimeoutStopSec"][-1]) >= 30, "SIGTERM drains devices in flight"
    assert service["ExecReload"] == ["kill -HUP $MAINPID"]
    (exec_start,) = service["ExecStart"]
    assert exec_start == (
        "/opt/provisioning-agent/venv/bin/provisioning-agent run --config /etc/provisioning-agent/agent.toml"
    )


def test_directories_and_credentials(service: dict[str, list[str]]) -> None:
    assert service["StateDirectory"] == ["provisioning-agent"]
    assert service["ConfigurationDirectory"] == ["provisioning-agent"]
    (credential,) = service["LoadCredential"]
    assert credential.startswith("cloudauth:/"), "the agent reads $CREDENTIALS_DIRECTORY/cloudauth"
    assert service["UMask"] == ["0077"]
    assert service["LimitCORE"] == ["0"], "a core dump could hold the AccessKey"
    assert service["RuntimeDirectory"] == ["provisioning-agent"], "the status socket's folder"
    assert int(service["LimitNOFILE"][0]) >= 4096, "room for the status server's cap next to everything else"


def test_identity_and_serial_access(service: dict[str, list[str]], unit_section: dict[str, list[str]]) -> None:
    assert service["User"] == ["provisioning-agent"]
    assert service["SupplementaryGroups"] == ["dialout provisioning-operators"]
    assert service["DevicePolicy"] == ["closed"]
    assert "char-ttyUSB rw" in service["DeviceAllow"]
    assert "char-ttyACM rw" in service["DeviceAllow"]
    assert service["PrivateDevices"] == ["no"], "PrivateDevices=yes would hide the serial adapters"
    # DeviceAllow=char-* is resolved from /proc/devices at start: the drivers must be loaded first.
    for module in ("usbserial", "cdc_acm"):
        assert f"modprobe@{module}.service" in words(unit_section["Wants"])
        assert f"modprobe@{module}.service" in words(unit_section["After"])


def test_hardening(service: dict[str, list[str]]) -> None:
    expected = {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service[key] == [value], key
    assert sorted(words(service["RestrictAddressFamilies"])) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert "@system-service" in service["SystemCallFilter"]
    assert "~@privileged @resources" in service["SystemCallFilter"]


def test_every_directive_is_explained() -> None:
    """Each directive, or the group of directives it belongs to, has a comment just above it."""
    unexplained = []
    previous = "comment"
    for number, raw in enumerate(UNIT.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            previous = "comment"
        elif not line or line.startswith("["):
            previous = "blank"
        else:
            if previous == "blank" and not line.startswith(("Description=", "WantedBy=")):
                unexplained.append(f"{number}: {line}")
            previous = "directive" if previous != "blank" else "blank"
    assert not unexplained, "directives without a comment above them:\n" + "\n".join(unexplained)


# --- companions -------------------------------------------------------------------------------


def test_sysusers_creates_the_service_user() -> None:
    entries = [line.split() for line in SYSUSERS.read_text(encoding="utf-8").splitlines() if line[:1] not in "#\n"]
    entries = [entry for entry in entries if entry]
    assert [entry[:2] for entry in entries] == [["u", "provisioning-agent"], ["g", "provisioning-operators"]]


def test_tmpfiles_creates_the_state_directory_for_the_service_user_only() -> None:
    lines = [line.split() for line in TMPFILES.read_text(encoding="utf-8").splitlines() if line[:1] not in "#\n"]
    by_path = {fields[1]: fields for fields in lines if fields}
    assert by_path["/var/lib/provisioning-agent"][:5] == [
        "d", "/var/lib/provisioning-agent", "0700", "provisioning-agent", "provisioning-agent",
    ]  # fmt: skip
    assert by_path["/etc/provisioning-agent"][2:5] == ["0755", "root", "root"]


def test_example_configuration_loads_and_matches_the_unit(service: dict[str, list[str]]) -> None:
    config = load_config(EXAMPLE, environ={})
    state = f"/var/lib/{service['StateDirectory'][0]}/"
    configuration = f"/etc/{service['ConfigurationDirectory'][0]}/"
    assert config.journal.path.startswith(state), "the journal must live in the unit's StateDirectory"
    assert config.profiles.startswith(configuration)
    assert config.cloud.credentials_file == "", "under systemd the AccessKey comes from LoadCredential="
    assert config.http.listen == "127.0.0.1:9464"
    assert service["ExecStart"][0].endswith(f"--config {configuration}agent.toml")


# --- .ci/systemd-check ------------------------------------------------------------------------


def run_check(unit: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SYSTEMD_CHECK_UNIT", None)
    if unit is not None:
        env["SYSTEMD_CHECK_UNIT"] = str(unit)
    return subprocess.run([str(CHECK)], capture_output=True, text=True, env=env, timeout=120, check=False)


def exposure_of(output: str) -> float:
    match = re.search(r"exposure (\d+(?:\.\d+)?) \(systemd", output)
    assert match, output
    return float(match.group(1))


@pytest.fixture(scope="module")
def check_result() -> subprocess.CompletedProcess[str]:
    return run_check()


@needs_systemd_analyze
def test_check_passes(check_result: subprocess.CompletedProcess[str]) -> None:
    output = check_result.stdout + check_result.stderr
    assert check_result.returncode == 0, output
    assert "verify systemd/provisioning-agent.service: ok" in output


@needs_systemd_analyze
def test_exposure_within_goal(check_result: subprocess.CompletedProcess[str]) -> None:
    output = check_result.stdout + check_result.stderr
    if "security skipped" in output:
        pytest.skip("systemd-analyze has no --offline (systemd < 250): " + output)
    assert exposure_of(output) <= MAX_EXPOSURE, output


@needs_systemd_analyze
def test_check_fails_on_a_misspelt_directive(tmp_path: Path) -> None:
    broken = tmp_path / UNIT.name
    broken.write_text(UNIT.read_text(encoding="utf-8").replace("\nNoNewPrivileges=yes", "\nNoNewPrivilege=yes"))
    result = run_check(broken)
    assert result.returncode != 0
    assert "Unknown key 'NoNewPrivilege'" in result.stderr


@needs_systemd_analyze
def test_check_fails_when_exposure_is_above_the_goal(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    head, _, tail = text.partition("# --- Hardening")
    unhardened = tmp_path / UNIT.name
    unhardened.write_text(head + "[Install]" + tail.partition("[Install]")[2])
    result = run_check(unhardened)
    assert result.returncode != 0, result.stdout
    if "security skipped" not in result.stdout:
        assert exposure_of(result.stdout + result.stderr) > MAX_EXPOSURE
        assert "is above 2.0" in result.stderr


def test_check_skips_without_systemd_analyze(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname",):
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).symlink_to(found)
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, str(CHECK)], capture_output=True, text=True, env={"PATH": str(bindir)}, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "skipped: systemd-analyze not installed" in result.stdout
