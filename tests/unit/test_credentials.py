"""The credentials chain: explicit, environment, file, systemd; and nothing secret in reprs."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest

from agent.cloud import load_credentials_file, resolve_credentials
from provisioning.cloudauth import CredentialsError

SECRET = "s3cr3t-value-never-shown"


def write_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_explicit_wins_over_environment() -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "env-id", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "env-secret"}
    creds = resolve_credentials(access_key_id="cfg-id", access_key_secret=SECRET, environ=env, default_files=())
    assert creds.access_key_id == "cfg-id"
    assert creds.access_key_secret.reveal() == SECRET
    assert creds.source == "explicit configuration"


def test_environment_with_sts_token() -> None:
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "env-id",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": " env-secret\n",
        "ALIBABA_CLOUD_SECURITY_TOKEN": "tok",
    }
    creds = resolve_credentials(environ=env, default_files=())
    assert (creds.access_key_id, creds.access_key_secret.reveal()) == ("env-id", "env-secret")
    assert creds.security_token is not None
    assert creds.security_token.reveal() == "tok"
    assert creds.source == "environment"


def test_half_an_environment_key_is_named() -> None:
    with pytest.raises(CredentialsError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"):
        resolve_credentials(environ={"ALIBABA_CLOUD_ACCESS_KEY_ID": "x"}, default_files=())


def test_file_then_systemd_credentials(tmp_path: Path) -> None:
    body = f'access_key_id = "file-id"\naccess_key_secret = "{SECRET}"\n'
    default = write_file(tmp_path / "credentials.toml", body)
    assert resolve_credentials(environ={}, default_files=[default]).source == f"file {default}"

    systemd_dir = tmp_path / "creds"
    systemd_dir.mkdir()
    write_file(systemd_dir / "cloudauth", body.replace("file-id", "systemd-id"), 0o400)
    creds = resolve_credentials(environ={"CREDENTIALS_DIRECTORY": str(systemd_dir)}, default_files=[tmp_path / "no"])
    assert creds.access_key_id == "systemd-id"
    assert creds.source == "systemd credential cloudauth"


def test_missing_credentials_names_every_place(tmp_path: Path) -> None:
    absent = tmp_path / "absent.toml"
    with pytest.raises(CredentialsError) as caught:
        resolve_credentials(environ={}, default_files=[absent])
    message = str(caught.value)
    for place in ("explicit configuration", "ALIBABA_CLOUD_ACCESS_KEY_ID", str(absent), "CREDENTIALS_DIRECTORY"):
        assert place in message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_loose_permissions_are_refused(tmp_path: Path, mode: int) -> None:
    path = write_file(tmp_path / "c.toml", f'access_key_id = "i"\naccess_key_secret = "{SECRET}"\n', mode)
    with pytest.raises(CredentialsError, match=f"chmod 600 {path}"):
        load_credentials_file(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('access_key_id = "i"\n', "key access_key_secret is missing"),
        ('access_key_id = "i"\naccess_key_secret = 5\n', "key access_key_secret must be a non-empty string"),
        (f'access_key_id = "i"\naccess_key_secret = "{SECRET}"\nregion = "x"\n', "unknown key region"),
        (f'access_key_id = "i"\naccess_key_secret = "{SECRET}\n', "not valid TOML"),
    ],
)
def test_bad_file_names_file_and_key_without_leaking(tmp_path: Path, text: str, problem: str) -> None:
    path = write_file(tmp_path / "c.toml", text)
    with pytest.raises(CredentialsError) as caught:
        load_credentials_file(path)
    assert problem in str(caught.value)
    assert str(path) in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_reprs_never_show_the_secret() -> None:
    creds = resolve_credentials(access_key_id="LTAI5tExampleId", access_key_secret=SECRET, security_token="tok-1")
    for text in (repr(creds), str(creds), f"{creds}", repr(creds.access_key_secret), f"{creds.access_key_secret}"):
        assert SECRET not in text
        assert "tok-1" not in text
        assert "LTAI5tExampleId" not in text


def test_an_unreadable_default_file_falls_through_to_systemd_credentials(tmp_path: Path) -> None:
    locked = write_file(tmp_path / "credentials.toml", 'access_key_id = "file"\naccess_key_secret = "x"\n', 0o000)
    systemd_dir = tmp_path / "creds"
    systemd_dir.mkdir()
    write_file(systemd_dir / "cloudauth", f'access_key_id = "systemd-id"\naccess_key_secret = "{SECRET}"\n', 0o400)
    if os.access(locked, os.R_OK):
        pytest.skip("running as root: file modes do not stop reads")
    creds = resolve_credentials(environ={"CREDENTIALS_DIRECTORY": str(systemd_dir)}, default_files=[locked])
    assert creds.access_key_id == "systemd-id"
