"""Signed upstream reports: the documented test vectors, verification as an MES does it, key files refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.config import ConfigError, load_config, report_signer
from provisioning.reportsig import (
    ReportSignatureError,
    ReportSigner,
    canonical_report_bytes,
    header_value,
    load_signer,
    parse_header,
    verify_report,
)

DOCS = Path(__file__).parents[2] / "docs" / "upstream.md"

# The test vectors of docs/upstream.md ("Test vectors"): change them only together with the docs.
REPORT: dict[str, Any] = {
    "schema": "provisioning-report/1",
    "idempotency_key": "pr1-cd5676d31173310f868b539154d31074",
    "gateway_id": "line-1",
    "device_id": "3iJ1AY$oHcu7mC69",
    "hardware_id": "a1b2c3d4e5f6",
    "model": "face-terminal-x1",
    "sdk_device_id": "wd.6ziUffspAeW5FVYbaqmexR-1qwNjM",
    "begin_day": "20261123",
    "expired_day": "20271122",
    "biz_type": "FACE_TERMINAL_X1",
    "term": "1y",
    "attempts": 1,
    "reconciled": False,
    "activated_at": "2026-11-23T13:28:48Z",
}
CANONICAL = (
    b'{"activated_at":"2026-11-23T13:28:48Z","attempts":1,"begin_day":"20261123","biz_type":"FACE_TERMINAL_X1",'
    b'"device_id":"3iJ1AY$oHcu7mC69","expired_day":"20271122","gateway_id":"line-1","hardware_id":"a1b2c3d4e5f6",'
    b'"idempotency_key":"pr1-cd5676d31173310f868b539154d31074","model":"face-terminal-x1","reconciled":false,'
    b'"schema":"provisioning-report/1","sdk_device_id":"wd.6ziUffspAeW5FVYbaqmexR-1qwNjM","term":"1y"}'
)
HMAC_SECRET = b"test-vector-secret-0123456789abcdef"
HMAC_SIGNATURE = "sf/cI9KCO4CWRPL9rBNPkrDCtr92o3UZM1DKYHGL4wM="
ED25519_SEED = bytes(range(32))
ED25519_PUBLIC_HEX = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
ED25519_SIGNATURE = "53DgllteEzjoLmJzseP9gdEwTjyb2EPpW5lJh6zLx20QQNkMEqQrDBvQeoNfAGSdhHbqYRdalhKPzm37hqlFDA=="
KEY_ID = "line-1-2026"


def ed25519_pem() -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def test_canonical_bytes_vector() -> None:
    assert canonical_report_bytes(REPORT) == CANONICAL
    assert canonical_report_bytes(REPORT | {"signature": {"alg": "x"}}) == CANONICAL  # the member is left out


def test_hmac_vector_and_plain_hmac_agree() -> None:
    signed = load_signer("hmac-sha256", KEY_ID, HMAC_SECRET + b"\n").sign(REPORT)
    assert signed["signature"] == {"alg": "hmac-sha256", "key_id": KEY_ID, "value": HMAC_SIGNATURE}
    expected = hmac.new(HMAC_SECRET, CANONICAL, hashlib.sha256).digest()
    assert base64.b64decode(HMAC_SIGNATURE) == expected
    assert verify_report(signed, key=HMAC_SECRET)["key_id"] == KEY_ID


def test_ed25519_vector_and_plain_cryptography_agree() -> None:
    signer = load_signer("ed25519", KEY_ID, ed25519_pem())
    signed = signer.sign(REPORT)
    assert signed["signature"] == {"alg": "ed25519", "key_id": KEY_ID, "value": ED25519_SIGNATURE}
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(ED25519_PUBLIC_HEX))
    public.verify(base64.b64decode(ED25519_SIGNATURE), CANONICAL)  # raises when wrong
    assert verify_report(json.loads(json.dumps(signed)), key=public)["alg"] == "ed25519"
    assert "PRIVATE" not in repr(signer)
    assert str(ED25519_SEED) not in repr(signer)


def test_the_docs_carry_the_same_vectors_and_their_snippet_verifies() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for value in (HMAC_SIGNATURE, ED25519_SIGNATURE, ED25519_PUBLIC_HEX, HMAC_SECRET.decode(), CANONICAL.decode()):
        assert value in text
    snippet = re.search(r"```python\n(.*?)```", text, re.S)
    assert snippet is not None
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - the documented snippet, run as an MES would
    signed = json.loads(json.dumps(load_signer("hmac-sha256", KEY_ID, HMAC_SECRET).sign(REPORT)))
    assert namespace["verify_hmac"](signed, HMAC_SECRET) is True
    signed["term"] = "100y"
    assert namespace["verify_hmac"](signed, HMAC_SECRET) is False
    ed_signed = json.loads(json.dumps(load_signer("ed25519", KEY_ID, ed25519_pem()).sign(REPORT)))
    assert namespace["verify_ed25519"](ed_signed, bytes.fromhex(ED25519_PUBLIC_HEX)) is True
    ed_signed["device_id"] = "someone-else"
    assert namespace["verify_ed25519"](ed_signed, bytes.fromhex(ED25519_PUBLIC_HEX)) is False


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_a_changed_report_or_another_key_does_not_verify(alg: str) -> None:
    signer: ReportSigner
    key: bytes | Ed25519PublicKey
    other: bytes | Ed25519PublicKey
    if alg == "hmac-sha256":
        signer, key, other = ReportSigner("hmac-sha256", KEY_ID, secret=HMAC_SECRET), HMAC_SECRET, b"x" * 32
    else:
        private = Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
        signer, key, other = ReportSigner("ed25519", KEY_ID, private=private), private.public_key(), (
            Ed25519PrivateKey.generate().public_key())  # fmt: skip
    signed = signer.sign(REPORT)
    verify_report(signed, key=key)
    with pytest.raises(ReportSignatureError, match="does not match"):
        verify_report(signed | {"expired_day": "21261122"}, key=key)
    with pytest.raises(ReportSignatureError, match="does not match"):
        verify_report(signed, key=other)
    with pytest.raises(ReportSignatureError, match="no signature"):
        verify_report(REPORT, key=key)
    header = header_value(signed["signature"])
    assert parse_header(header) == signed["signature"]
    verify_report(REPORT | {"signature": parse_header(header)}, key=key)


def test_unusable_keys_are_refused() -> None:
    with pytest.raises(ReportSignatureError, match="at least 32 bytes"):
        load_signer("hmac-sha256", KEY_ID, b"short")
    with pytest.raises(ReportSignatureError, match="not an unencrypted PEM"):
        load_signer("ed25519", KEY_ID, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    ec = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ReportSignatureError, match="not an Ed25519 private key"):
        load_signer("ed25519", KEY_ID, ec)
    with pytest.raises(ReportSignatureError, match="key id"):
        load_signer("hmac-sha256", "has space", HMAC_SECRET)


# -- configuration ------------------------------------------------------------------------------


def config_with(tmp_path: Path, key_file: Path | str, sign: str = "ed25519", key_id: str = "") -> Path:
    path = tmp_path / "agent.toml"
    extra = f'sign_key_id = "{key_id}"\n' if key_id else ""
    path.write_text(f'gateway_id = "line-1"\n[upstream]\nsign = "{sign}"\nsign_key_file = "{key_file}"\n{extra}')
    return path


def test_a_private_key_file_gives_a_signer_named_after_the_gateway(tmp_path: Path) -> None:
    key = tmp_path / "report.pem"
    key.write_bytes(ed25519_pem())
    key.chmod(0o600)
    signer = report_signer(load_config(config_with(tmp_path, key), environ={}))
    assert signer is not None
    assert (signer.alg, signer.key_id) == ("ed25519", "line-1")
    assert report_signer(load_config(config_with(tmp_path, key, "none"), environ={})) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_open_to_group_or_others_stops_the_start(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "report.key"
    key.write_bytes(HMAC_SECRET)
    key.chmod(mode)
    config = config_with(tmp_path, key, "hmac-sha256")
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})
    message = str(caught.value)
    assert f"{config}: key upstream.sign_key_file" in message
    assert str(key) in message
    assert "group or others" in message


@pytest.mark.parametrize(
    ("make", "sign", "expected"),
    [
        (lambda p: p / "missing.key", "hmac-sha256", "No such file"),
        (lambda p: p, "hmac-sha256", "not a regular file"),  # a directory: nothing to read
        (lambda p: p / "short.key", "hmac-sha256", "at least 32 bytes"),
        (lambda p: p / "short.key", "ed25519", "not an unencrypted PEM"),
    ],
)
def test_unreadable_or_unusable_key_files_stop_the_start(tmp_path: Path, make: Any, sign: str, expected: str) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    short.chmod(0o600)
    config = config_with(tmp_path, make(tmp_path), sign)
    with pytest.raises(ConfigError, match=r"key upstream\.sign_key_file") as caught:
        load_config(config, environ={})
    assert expected in str(caught.value)
    assert str(config) in str(caught.value)


def test_sign_without_a_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('gateway_id = "line-1"\n[upstream]\nsign = "hmac-sha256"\n')
    with pytest.raises(ConfigError, match=r"key upstream.sign_key_file: is required"):
        load_config(path, environ={})
    path.write_text('gateway_id = "line-1"\n[upstream]\nsign = "rsa"\n')
    with pytest.raises(ConfigError, match=r"key upstream\.sign: must be one of"):
        load_config(path, environ={})
