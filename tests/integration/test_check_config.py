"""``check-config`` and ``run`` as an operator meets them: every error at once (exit 3), then the warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GOOD_PROFILE = 'model = "m1"\nbiz_type = "B"\ntransports = ["mqtt"]\n[licence]\nyears = 1\n[sealing]\nrequired = true\n'


@pytest.fixture
def station(tmp_path: Path) -> Path:
    """A gateway's files: credentials (mode 600) and a profile directory with one good profile."""
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('access_key_id = "id"\naccess_key_secret = "secret"\n')
    credentials.chmod(0o600)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "m1.toml").write_text(GOOD_PROFILE)
    return tmp_path


def config(station: Path, extra: str = "") -> Path:
    path = station / "agent.toml"
    path.write_text(
        f'gateway_id = "g"\njournal = "{station / "j.sqlite3"}"\nprofiles = "{station / "profiles"}"\n'
        f'{extra}\n[cloud]\ncredentials_file = "{station / "credentials.toml"}"\n'
    )
    return path


def agent(command: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONING_AGENT_", "ALIBABA_CLOUD_"))}
    return subprocess.run(
        [sys.executable, "-m", "agent", command, "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def errors(stderr: str) -> list[str]:
    return [line.removeprefix("configuration error: ") for line in stderr.splitlines() if "error: " in line]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_three_mistakes_are_three_errors_and_exit_3(station: Path, command: str) -> None:
    path = config(station, '[mqtt]\nkeepalive_s = -1\nhots = "broker"\n[limits]\nmax_in_flight = 0\n')
    result = agent(command, path)
    assert result.returncode == 3
    assert errors(result.stderr) == [
        f"{path}: key mqtt.keepalive_s: must be an integer from 1 to 65535, got -1",
        f"{path}: key mqtt.hots: unknown key; did you mean mqtt.host?",
        f"{path}: key limits.max_in_flight: must be an integer from 1 to 10000, got 0",
    ]
    assert "ready" not in result.stdout


def test_profile_errors_come_with_the_configuration_errors(station: Path) -> None:
    (station / "profiles" / "x.toml").write_text('model = "x"\nbiz_type = "B"\n[licence]\nyears = 0\n')
    path = config(station, "[mqtt]\nport = 0\n")
    result = agent("check-config", path)
    assert result.returncode == 3
    assert errors(result.stderr) == [
        f"{path}: key mqtt.port: must be an integer from 1 to 65535, got 0",
        f"{station / 'profiles' / 'x.toml'}: key licence.years: must be an integer from 1 to 100, got 0",
    ]


def test_warnings_alone_pass_and_come_after_the_errors(station: Path) -> None:
    (station / "profiles" / "old.toml").write_text(
        'model = "old"\nbiz_type = "B"\n[licence]\nyears = 1\n[sealing]\nrequired = false\n'
        '[admission]\nidentity = "claimed"\n'
    )
    path = config(station)
    result = agent("check-config", path)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    old = station / "profiles" / "old.toml"
    assert [line.split(": key ")[0] for line in warnings] == [f"configuration warning: {old}"] * 2
    assert "key sealing.required: false" in warnings[0]
    assert 'key admission.identity: "claimed" with signature = "none"' in warnings[1]
    assert "ok; gateway g; profiles: m1, old" in result.stdout

    path = config(station, '[http]\nlisten = "nowhere"\n')
    lines = agent("check-config", path).stderr.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["configuration error"] + ["configuration warning"] * 2
