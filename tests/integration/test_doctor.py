"""``provisioning-agent doctor`` as an operator runs it: a real broker, the emulator over HTTP, real files.

Each test breaks one thing a gateway meets (a rotated secret, a wrong broker password, a broker
that is not there, a clock off by minutes, a broken configuration) and checks that doctor names
it, says what to do, and exits with the documented code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.doctor._readiness import check_certificates
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import write_config
from provisioning_lab.emulator import EmulatorProcess
from tests.broker import MosquittoBroker, Pki

PROFILES = str(Path(__file__).parents[2] / "hardware-profiles")
BrokerFactory = Any


def agent_config(tmp_path: Path, emulator: EmulatorProcess, **sections: dict[str, Any]) -> Path:
    values: dict[str, Any] = {
        "gateway_id": "doc-line",
        "journal": str(tmp_path / "state" / "journal.sqlite3"),
        "profiles": PROFILES,
        "cloud": {"endpoint": emulator.url},
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
    }
    for section, table in sections.items():
        values[section] = {**values.get(section, {}), **table}
    return write_config(tmp_path / "agent.toml", values)


def doctor(config: Path, emulator: EmulatorProcess, *, secret: str | None = None) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "CREDENTIALS_DIRECTORY"))}
    env.update(ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
               ALIBABA_CLOUD_ACCESS_KEY_SECRET=secret or emulator.access_key_secret)  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "agent", "doctor", "--config", str(config), "--json"],
                            capture_output=True, text=True, env=env, timeout=90)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "doctor/1"
    text = subprocess.run([sys.executable, "-m", "agent", "doctor", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=90).stdout  # fmt: skip
    return result.returncode, report, text


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name]
    return found


def test_a_good_gateway_passes_every_online_check(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                                  emulator: EmulatorProcess) -> None:  # fmt: skip
    config = agent_config(tmp_path, emulator, mqtt={"port": mqtt_broker.port})
    code, report, text = doctor(config, emulator)
    assert code == 0, text
    assert check(report, "broker login")["status"] == "ok"
    assert f"127.0.0.1:{mqtt_broker.port} accepted the login" in check(report, "broker login")["message"]
    assert check(report, "cloud AccessKey")["status"] == "ok"
    assert check(report, "clock")["status"] == "ok"
    assert check(report, "config file")["status"] == "ok"
    assert {c["status"] for c in report["checks"] if c["group"] == "configuration"} == {"ok"}
    # no licence spent, no key minted: the probe is read-only
    assert emulator.audit()["keys"]["minted"] == 0
    assert emulator.audit()["api_calls"] == {"DescribeDeviceInfo": 2}  # one per doctor run
    # the people's form: one line per check, marks and fixes
    assert "√ broker login:" in text
    assert "‼ broker TLS:" in text
    assert "fix: secure the broker" in text
    assert "0 error(s)" in text


def test_a_rotated_secret_is_named_apart_from_a_network_problem(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                                                emulator: EmulatorProcess) -> None:  # fmt: skip
    config = agent_config(tmp_path, emulator, mqtt={"port": mqtt_broker.port})
    code, report, text = doctor(config, emulator, secret="rotated-last-week")
    assert code == 3
    cloud = check(report, "cloud AccessKey")
    assert cloud["status"] == "error"
    assert "rejects the AccessKey: SignatureDoesNotMatch" in cloud["message"]
    assert "wrong or was rotated" in cloud["fix"]
    assert not cloud["retryable"]
    assert "rotated-last-week" not in text + json.dumps(report)
    assert emulator.access_key_id not in cloud["message"]  # the service's echo is redacted

    unreachable = agent_config(
        tmp_path,
        emulator,
        mqtt={"port": mqtt_broker.port},
        cloud={"endpoint": f"http://127.0.0.1:{free_port()}", "connect_timeout_s": 2.0},
    )
    code, report, _ = doctor(unreachable, emulator)
    assert code == 5  # only the cloud is out of reach: retry later, nothing to fix in the set-up
    cloud = check(report, "cloud AccessKey")
    assert (cloud["status"], cloud["retryable"]) == ("error", True)
    assert "not reached" in cloud["message"]
    assert check(report, "clock")["status"] == "skipped"


def test_broker_login_good_wrong_password_and_unreachable(tmp_path: Path, broker_factory: BrokerFactory,
                                                          emulator: EmulatorProcess) -> None:  # fmt: skip
    broker = broker_factory(allow_anonymous=False, passwords={"gateway": "right-password"})
    password = tmp_path / "mqtt-password"
    password.write_text("wrong-password\n")
    password.chmod(0o600)
    mqtt = {"port": broker.port, "username": "gateway", "password_file": str(password)}
    code, report, text = doctor(agent_config(tmp_path, emulator, mqtt=mqtt), emulator)
    assert code == 3
    login = check(report, "broker login")
    assert login["status"] == "error"
    assert "refused the login" in login["message"]
    assert "Not authorized" in login["message"]
    assert "mqtt.username, mqtt.password_file" in login["fix"]
    assert "wrong-password" not in text

    password.write_text("right-password\n")
    code, report, _ = doctor(agent_config(tmp_path, emulator, mqtt=mqtt), emulator)
    assert check(report, "broker login")["status"] == "ok"
    assert "user gateway" in check(report, "broker login")["message"]
    assert code == 0

    broker.stop()
    code, report, _ = doctor(agent_config(tmp_path, emulator, mqtt=mqtt), emulator)
    login = check(report, "broker login")
    assert (login["status"], login["retryable"]) == ("error", True)
    assert code == 5


def test_broker_over_tls_and_certificate_expiry(tmp_path: Path, broker_factory: BrokerFactory, mqtt_pki: Pki,
                                                emulator: EmulatorProcess) -> None:  # fmt: skip
    broker = broker_factory(tls=mqtt_pki.broker_tls(require_certificate=True))
    key = tmp_path / "client.key"
    key.write_bytes(mqtt_pki.client_key.read_bytes())
    key.chmod(0o600)
    mqtt = {"port": broker.tls_port, "ca_file": str(mqtt_pki.ca_file), "cert_file": str(mqtt_pki.client_cert),
            "key_file": str(key)}  # fmt: skip
    code, report, _ = doctor(agent_config(tmp_path, emulator, mqtt=mqtt), emulator)
    assert code == 0
    assert "TLS with the client certificate" in check(report, "broker login")["message"]
    assert check(report, "broker TLS")["status"] == "ok"
    # the test CA signs certificates valid for one day: doctor warns well before they run out
    expiring = check(report, "mqtt.cert_file")
    assert expiring["status"] == "warning"
    assert "0 day(s) left" in expiring["message"]
    config = load_config(tmp_path / "agent.toml")
    (expired, _) = check_certificates(config, now=datetime.now(UTC) + timedelta(days=3))
    assert (expired.status, expired.name) == ("error", "mqtt.ca_file")
    assert "expired" in expired.message


@pytest.mark.parametrize(("skew_s", "status", "code"), [(5 * 60, "warning", 0), (20 * 60, "error", 3)])
def test_a_skewed_clock_is_seen_in_the_clouds_date(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                                   emulator: EmulatorProcess, skew_s: int, status: str,
                                                   code: int) -> None:  # fmt: skip
    emulator.set_clock_skew(-skew_s)  # the cloud runs behind: our clock is ahead of it
    exit_code, report, _ = doctor(agent_config(tmp_path, emulator, mqtt={"port": mqtt_broker.port}), emulator)
    assert exit_code == code
    clock = check(report, "clock")
    assert clock["status"] == status
    assert skew_s - 2 <= int(clock["message"].split()[0]) <= skew_s + 2
    assert "ahead of the cloud's clock" in clock["message"]
    if status == "error":  # beyond 15 minutes the cloud refuses the signature itself
        assert "InvalidTimeStamp.Expired" in check(report, "cloud AccessKey")["message"]
        assert "clock" in check(report, "cloud AccessKey")["fix"]


def test_every_configuration_problem_at_once(tmp_path: Path, emulator: EmulatorProcess) -> None:
    empty_profiles = tmp_path / "no-profiles"
    empty_profiles.mkdir()
    config = agent_config(tmp_path, emulator, mqtt={"password_file": str(tmp_path / "missing-password")})
    code, report, text = doctor(config, emulator)
    assert code == 3
    assert check(report, "config file")["status"] == "error"
    assert "mqtt.password_file" in check(report, "config file")["message"]
    assert "× config file:" in text

    config = write_config(tmp_path / "agent.toml", {
        "gateway_id": "doc-line", "journal": str(tmp_path / "j.sqlite3"), "profiles": str(empty_profiles),
        "cloud": {"endpoint": emulator.url}, "mqtt": {"port": free_port()},
    })  # fmt: skip
    code, report, _ = doctor(config, emulator, secret="wrong")
    errors = {c["name"] for c in report["checks"] if c["status"] == "error"}
    assert {"hardware profiles", "broker login", "cloud AccessKey"} <= errors  # all of them, in one run
    assert code == 3


@pytest.mark.slow
def test_a_shared_ledger_is_checked_where_it_lives_and_its_password_never_shown(
    tmp_path: Path, emulator: EmulatorProcess, ledger_url: str
) -> None:
    """With ``[journal] url`` the check opens the ledger (not a local file) and names it without its password."""
    secret_url = ledger_url.replace("://ledger@", "://ledger:s3cret-pw@", 1)
    assert secret_url != ledger_url, ledger_url  # trust on loopback: the password is sent but not needed
    config = agent_config(tmp_path, emulator)
    text = config.read_text().replace(f'journal = "{tmp_path / "state" / "journal.sqlite3"}"\n', "")
    config.write_text(text + f'\n[journal]\nurl = "{secret_url}"\n', encoding="utf-8")

    _, report, human = doctor(config, emulator)  # an empty database: no ledger schema yet
    assert check(report, "journal")["status"] == "error"
    assert "has schema 0" in check(report, "journal")["message"]
    assert check(report, "journal storage")["status"] == "ok"
    assert not {c["name"] for c in report["checks"]} & {"disk space", "journal permissions"}
    assert "s3cret-pw" not in json.dumps(report) + human
    assert ":***@" in check(report, "journal")["message"]

    from agent.journal import open_url

    open_url(ledger_url, gateway_id="doc-line").close()  # an agent's first start creates the schema
    _, report, human = doctor(config, emulator)
    assert check(report, "journal")["status"] == "ok", check(report, "journal")
    assert "opens (schema current)" in check(report, "journal")["message"]
    assert "s3cret-pw" not in json.dumps(report) + human
