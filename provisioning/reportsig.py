"""Signed upstream reports: HMAC-SHA256 with a shared secret, or Ed25519 with the gateway's key (docs/upstream.md).

The signature covers the report's *canonical bytes*: the report without its ``signature``
member, serialised with sorted keys, no whitespace and UTF-8 without escaping non-ASCII
(``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``; for this schema, whose
values are strings, integers and booleans, that is RFC 8785 JCS). The MQTT sink and the webhook
carry the same signed report; the webhook repeats the signature in the
``X-Report-Signature`` header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography is imported when a signature is made or checked, not with the module: an agent that
# does not sign its reports keeps its ~7 MB of resident memory free.

__all__ = [
    "ALGORITHMS",
    "HEADER",
    "MIN_HMAC_SECRET_BYTES",
    "SIGNATURE_MEMBER",
    "ReportSignatureError",
    "ReportSigner",
    "canonical_report_bytes",
    "header_value",
    "load_signer",
    "parse_header",
    "public_key_pem",
    "verify_report",
]

Algorithm = Literal["hmac-sha256", "ed25519"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("hmac-sha256", "ed25519")
SIGNATURE_MEMBER: Final = "signature"
HEADER: Final = "X-Report-Signature"
MIN_HMAC_SECRET_BYTES: Final = 32  # RFC 2104: a key shorter than the hash output weakens HMAC-SHA256
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fits the header without quoting


class ReportSignatureError(ValueError):
    """A key cannot be used, or a report's signature is missing, malformed or wrong."""


class ReportSigner:
    """Signs reports with one key; never shows the key (repr, str)."""

    __slots__ = ("_hmac", "_private", "alg", "key_id")

    def __init__(self, alg: Algorithm, key_id: str, *, secret: bytes = b"", private: Ed25519PrivateKey | None = None):
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ReportSignatureError(f"key id {key_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if alg == "hmac-sha256" and len(secret) < MIN_HMAC_SECRET_BYTES:
            raise ReportSignatureError(f"an HMAC-SHA256 secret needs at least {MIN_HMAC_SECRET_BYTES} bytes")
        if alg == "ed25519" and private is None:
            raise ReportSignatureError("an Ed25519 signer needs a private key")
        self.alg, self.key_id, self._hmac, self._private = alg, key_id, secret, private

    def signature(self, report: Mapping[str, Any]) -> dict[str, str]:
        """The ``signature`` member for ``report``."""
        message = canonical_report_bytes(report)
        if self._private is not None:
            raw = self._private.sign(message)
        else:
            raw = hmac.new(self._hmac, message, hashlib.sha256).digest()
        return {"alg": self.alg, "key_id": self.key_id, "value": base64.b64encode(raw).decode("ascii")}

    def sign(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``report`` with its ``signature`` member (a stale one is replaced)."""
        body = {name: value for name, value in report.items() if name != SIGNATURE_MEMBER}
        return body | {SIGNATURE_MEMBER: self.signature(body)}

    def public_key(self) -> Ed25519PublicKey | None:
        """The Ed25519 public key an MES verifies with (None for HMAC)."""
        return self._private.public_key() if self._private is not None else None

    def __repr__(self) -> str:
        return f"ReportSigner({self.alg}, key_id={self.key_id!r})"


def canonical_report_bytes(report: Mapping[str, Any]) -> bytes:
    """The signed bytes: the report without ``signature``, sorted keys, no whitespace, UTF-8."""
    body = {name: value for name, value in report.items() if name != SIGNATURE_MEMBER}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_signer(alg: Algorithm, key_id: str, material: bytes) -> ReportSigner:
    """A signer from a key file's bytes: the HMAC secret (surrounding whitespace dropped) or an Ed25519 PEM."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if alg == "hmac-sha256":
        return ReportSigner(alg, key_id, secret=material.strip())
    try:
        private = serialization.load_pem_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ReportSignatureError(f"not an unencrypted PEM private key ({type(exc).__name__})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ReportSignatureError(f"not an Ed25519 private key (found {type(private).__name__})")
    return ReportSigner(alg, key_id, private=private)


def header_value(signature: Mapping[str, str]) -> str:
    """``alg=ed25519; key_id=line-1; sig=<base64>``: the webhook's :data:`HEADER`."""
    return f"alg={signature['alg']}; key_id={signature['key_id']}; sig={signature['value']}"


def parse_header(value: str) -> dict[str, str]:
    """The ``signature`` member a :func:`header_value` carries; :class:`ReportSignatureError` when malformed."""
    parts = dict(part.strip().partition("=")[::2] for part in value.split(";"))
    if set(parts) != {"alg", "key_id", "sig"}:
        raise ReportSignatureError(f"{HEADER} must be 'alg=...; key_id=...; sig=...'")
    return {"alg": parts["alg"], "key_id": parts["key_id"], "value": parts["sig"]}


def verify_report(report: Mapping[str, Any], *, key: bytes | Ed25519PublicKey) -> dict[str, str]:
    """Check a signed report with the HMAC secret or the Ed25519 public key; its signature member, if good."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    signature = report.get(SIGNATURE_MEMBER)
    if not isinstance(signature, dict) or not all(isinstance(signature.get(n), str) for n in ("alg", "value")):
        raise ReportSignatureError("the report has no signature member {alg, key_id, value}")
    try:
        raw = base64.b64decode(signature["value"], validate=True)
    except binascii.Error:
        raise ReportSignatureError("the signature value is not base64") from None
    message = canonical_report_bytes(report)
    if signature["alg"] == "hmac-sha256" and isinstance(key, bytes):
        if not hmac.compare_digest(raw, hmac.new(key.strip(), message, hashlib.sha256).digest()):
            raise ReportSignatureError(
                "HMAC-SHA256 signature does not match: the report was changed or the key differs"
            )
    elif signature["alg"] == "ed25519" and isinstance(key, Ed25519PublicKey):
        try:
            key.verify(raw, message)
        except InvalidSignature:
            reason = "Ed25519 signature does not match: the report was changed or the key differs"
            raise ReportSignatureError(reason) from None
    else:
        raise ReportSignatureError(f"signature alg {signature['alg']!r} does not fit the key given")
    return dict(signature)


def public_key_pem(key: Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM, what an MES stores."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
