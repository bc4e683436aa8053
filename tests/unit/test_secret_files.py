"""Secret files are private (one shared check), and no config, client or error object shows a secret.

Tests run as root in CI: root reads any file, so these tests check modes, never readability.
"""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from typing import Any

import pytest

from agent.brokerauth import broker_credentials
from agent.cloud import CloudauthClient, load_credentials_file
from agent.config import ConfigError, load_config
from agent.daemon._upstream import WebhookSink
from agent.mqtt import MqttConnection, MqttSettings
from agent.secretfile import SecretFileError, check_private_file, read_secret_text
from provisioning.cloudauth import CredentialsError
from provisioning.secret import Secret
from provisioning_lab.agentprocess import write_config
from tests.broker import make_pki

PASSWORD = "mqtt-pw-7f3a9c"
TOKEN = "webhook-token-51be"
ACCESS_SECRET = "access-secret-c0ffee"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_files_pass(tmp_path: Path, mode: int) -> None:
    check_private_file(private(tmp_path / "s", "x", mode))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610, 0o601])
def test_any_group_or_other_bit_is_refused(tmp_path: Path, mode: int) -> None:
    path = private(tmp_path / "s", "secret-value", mode)
    with pytest.raises(SecretFileError, match=rf"mode {mode:04o}\); run: chmod 600 {path}") as caught:
        check_private_file(path)
    assert caught.value.path == path
    assert "secret-value" not in str(caught.value)


def test_missing_and_non_regular_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match=rf"{tmp_path / 'absent'}: No such file"):
        check_private_file(tmp_path / "absent")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="is not a regular file"):
        check_private_file(tmp_path / "dir")


def test_read_secret_text_strips_and_checks(tmp_path: Path) -> None:
    assert read_secret_text(private(tmp_path / "s", f"  {PASSWORD}\n")) == PASSWORD
    with pytest.raises(SecretFileError, match="chmod 600"):
        read_secret_text(private(tmp_path / "loose", PASSWORD, 0o644))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + PASSWORD.encode())
    binary.chmod(0o600)
    with pytest.raises(SecretFileError, match="not UTF-8") as caught:
        read_secret_text(binary)
    assert PASSWORD not in str(caught.value)


def test_the_credentials_loader_uses_the_same_check(tmp_path: Path) -> None:
    path = private(tmp_path / "c.toml", f'access_key_id = "i"\naccess_key_secret = "{ACCESS_SECRET}"\n', 0o640)
    with pytest.raises(CredentialsError, match=rf"credentials file {path} is readable by group or others \(mode 0640"):
        load_credentials_file(path)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("mqtt", "password_file"),
        ("mqtt", "key_file"),
        ("upstream", "webhook_secret_file"),
        ("cloud", "credentials_file"),
    ],
)
def test_config_refuses_loose_secret_files_naming_file_and_key(tmp_path: Path, section: str, key: str) -> None:
    loose = private(tmp_path / "secret", "x", 0o640)
    config = write_config(tmp_path / "agent.toml", {"gateway_id": "g", section: {key: str(loose)}})
    with pytest.raises(ConfigError, match=rf"{config}: key {section}\.{key}: {loose} is readable by group or others"):
        load_config(config, environ={})
    loose.chmod(0o600)
    load_config(config, environ={})


def test_broker_credentials_reads_the_password_and_checks_tls_files(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    password_file = private(tmp_path / "pw", PASSWORD + "\n")
    mqtt: dict[str, Any] = {"username": "gw", "password_file": str(password_file), "ca_file": str(pki.ca_file)}
    mqtt |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    config = load_config(write_config(tmp_path / "a.toml", {"gateway_id": "g", "mqtt": mqtt}), environ={})
    password, tls = broker_credentials(config)
    assert password == Secret(PASSWORD)
    assert tls is not None
    assert tls.key_file == pki.client_key
    # A private key that does not belong to the certificate: named with its key, at start-up.
    mismatched = mqtt | {"key_file": str(pki.server_key)}
    config = load_config(write_config(tmp_path / "b.toml", {"gateway_id": "g", "mqtt": mismatched}), environ={})
    with pytest.raises(ConfigError, match=r"b\.toml: key mqtt\.cert_file: TLS cert_file .* / key_file .*server\.key"):
        broker_credentials(config)
    no_user = {"password_file": str(password_file)}
    config = load_config(write_config(tmp_path / "c.toml", {"gateway_id": "g", "mqtt": no_user}), environ={})
    with pytest.raises(ConfigError, match=r"key mqtt\.username: a password_file needs a username"):
        broker_credentials(config)


async def test_reprs_and_errors_never_show_a_secret(tmp_path: Path) -> None:
    password_file = private(tmp_path / "pw", PASSWORD)
    token_file = private(tmp_path / "token", TOKEN)
    credentials = private(
        tmp_path / "c.toml", f'access_key_id = "LTAIexample12"\naccess_key_secret = "{ACCESS_SECRET}"\n'
    )
    values = {
        "gateway_id": "g",
        "cloud": {"credentials_file": str(credentials)},
        "mqtt": {"username": "gw", "password_file": str(password_file)},
        "upstream": {"webhook_url": "https://127.0.0.1:9/r", "webhook_secret_file": str(token_file)},
    }
    config = load_config(write_config(tmp_path / "a.toml", values), environ={})
    password, _ = broker_credentials(config)
    settings = MqttSettings(host="127.0.0.1", port=1, client_id="gw", username="gw", password=password)
    connection = MqttConnection(settings, [])
    access_key = load_credentials_file(credentials)
    cloud = CloudauthClient(access_key, endpoint="http://127.0.0.1:9")
    sink = WebhookSink("https://127.0.0.1:9/r", timeout_s=1, token_file=str(token_file))
    try:
        failure = await _connect_error(connection)
        shown = [repr(config), str(config), repr(settings), repr(connection), repr(cloud), repr(access_key)]
        shown += [repr(vars(sink)), repr(sink._token), repr(password), f"{password}", str(password), failure]
        for text in shown:
            for secret in (PASSWORD, TOKEN, ACCESS_SECRET):
                assert secret not in text, text
    finally:
        await connection.aclose()
        await sink.aclose()
        await cloud.aclose()


async def _connect_error(connection: MqttConnection) -> str:
    """The formatted traceback of a failed connect (port 1: refused)."""
    try:
        async with asyncio.timeout(10):
            await connection.connect()
    except Exception:
        return traceback.format_exc()
    raise AssertionError("connecting to port 1 succeeded")
