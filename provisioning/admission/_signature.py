"""Ed25519 checks of a device's identity: its key, its factory certificate, its signed registration."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from provisioning.protocol import ED25519_KEY_BYTES, ED25519_SIGNATURE_BYTES

# cryptography is imported on first use: a line without device signatures keeps its ~7 MB free.

__all__ = ["decode_public_key", "parse_public_keys", "verify"]

# DER SubjectPublicKeyInfo of an Ed25519 key is this prefix and the raw 32 bytes (RFC 8410):
# what `openssl pkey -pubout -outform DER | base64` prints, accepted beside the raw form.
_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
_PEM_BLOCK: Final = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``data`` (malformed input: False)."""
    if len(public_key) != ED25519_KEY_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def decode_public_key(text: str) -> bytes:
    """A base64 Ed25519 public key (raw 32 bytes, or DER SubjectPublicKeyInfo); ValueError says why not."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if len(raw) == len(_SPKI_PREFIX) + ED25519_KEY_BYTES and raw.startswith(_SPKI_PREFIX):
        raw = raw[len(_SPKI_PREFIX) :]
    if len(raw) != ED25519_KEY_BYTES:
        raise ValueError(f"is {len(raw)} bytes; an Ed25519 public key is {ED25519_KEY_BYTES} (or 44 as DER)")
    return raw


def parse_public_keys(text: str) -> list[bytes]:
    """Ed25519 public keys from a file: PEM blocks and/or one base64 key a line; ValueError names the line."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: list[bytes] = []
    for block in _PEM_BLOCK.findall(text):
        try:
            key = load_pem_public_key(block.encode("ascii"))
        except ValueError as exc:
            raise ValueError(f"a PEM block is not a public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"a PEM block holds a {type(key).__name__}, not an Ed25519 public key")  # noqa: TRY004 - bad file content, not a caller's type error
        keys.append(key.public_bytes_raw())
    rest = _PEM_BLOCK.sub(lambda match: "\n" * match.group(0).count("\n"), text)
    for number, line in enumerate(rest.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                keys.append(decode_public_key(line))
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return keys
