"""Sealing an AuthKey to one device: X25519 + HKDF-SHA256 + AES-256-GCM (docs/protocol.md, "Key sealing").

How it works
------------
The device makes a fresh X25519 key pair for a registration and sends its public half as the
register's ``seal_pub``. For every ``key`` message the agent:

1. makes a fresh ephemeral X25519 key pair ``(esk, epk)``;
2. ``shared = X25519(esk, seal_pub)`` (an all-zero result, from a low-order ``seal_pub``, is refused);
3. ``aes_key = HKDF-SHA256(ikm=shared, salt=epk || seal_pub, info=HKDF_INFO, length=32)``;
4. ``nonce`` = 12 random bytes;
5. ``ct = AES-256-GCM-Seal(aes_key, nonce, plaintext=auth_key as UTF-8, aad=sealing_aad(...))``
   (the ciphertext followed by the 16-byte tag), where the associated data is
   ``b"prov/v1/sealed-key\\n" + device_id + b"\\n" + attempt + b"\\n" + re`` (each UTF-8).

The device repeats 2 and 3 with its private key and ``epk`` and opens 5. The salt carries both
public keys so the AES key belongs to this one exchange (as HPKE's KEM context does); the AAD
binds the ciphertext to the device, the attempt and the register it answers, so a sealed key
moved to another device, attempt or request fails to open. A fresh ephemeral key per seal makes
every AES key single-use, so a random nonce can never repeat under one key.

``seal_auth_key`` is what the agent calls; ``seal_auth_key_with`` takes the ephemeral private key
and the nonce from the caller, for the documented test vectors only. ``open_sealed_key`` is the
device's side (the simulator, the tests, and a reference for firmware).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re as regex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from provisioning.secret import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# cryptography is imported on first use, not with the module: a daemon whose devices never ask
# for sealing keeps its ~7 MB of resident memory free.

__all__ = [
    "HKDF_INFO",
    "NONCE_BYTES",
    "PUBLIC_KEY_BYTES",
    "SEAL_ALG",
    "TAG_BYTES",
    "SealedKey",
    "SealingError",
    "check_seal_pub",
    "open_sealed_key",
    "seal_auth_key",
    "seal_auth_key_with",
    "sealing_aad",
    "strict_b64decode",
]

SEAL_ALG: Final = "X25519-HKDF-SHA256-A256GCM"
PUBLIC_KEY_BYTES: Final = 32  # X25519 public and private keys
NONCE_BYTES: Final = 12  # the GCM nonce size every MCU library supports
TAG_BYTES: Final = 16  # full-length GCM tag
AES_KEY_BYTES: Final = 32  # AES-256
HKDF_INFO: Final = b"prov/v1 sealed auth_key"
AAD_LABEL: Final = b"prov/v1/sealed-key\n"
MAX_CT_BYTES: Final = 1024  # an AuthKey is ~33 characters; anything near this is not one

_B64: Final = regex.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@functools.cache
def _probe() -> X25519PrivateKey:
    """Any clamped scalar is a multiple of the cofactor 8, so it maps exactly the low-order points to zero."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


class SealingError(ValueError):
    """A key that cannot be sealed or opened: a bad public key, a wrong key, or tampered bytes.

    The message never contains the AuthKey or any private or derived key.
    """


@dataclass(frozen=True, slots=True)
class SealedKey:
    """An AuthKey sealed to one device: the agent's ephemeral public key, the nonce, ciphertext || tag."""

    epk: bytes
    nonce: bytes
    ct: bytes

    def to_wire(self) -> dict[str, str]:
        """The ``sealed_key`` member of a ``key`` message."""
        return {
            "alg": SEAL_ALG,
            "epk": base64.b64encode(self.epk).decode("ascii"),
            "nonce": base64.b64encode(self.nonce).decode("ascii"),
            "ct": base64.b64encode(self.ct).decode("ascii"),
        }

    @classmethod
    def from_wire(cls, value: Any) -> SealedKey:
        """Read a ``sealed_key`` member (a device's side); :class:`SealingError` names what is wrong."""
        if not isinstance(value, dict):
            raise SealingError("'sealed_key' must be an object")
        if value.get("alg") != SEAL_ALG:
            raise SealingError(f"'sealed_key.alg' must be {SEAL_ALG!r}")
        epk = strict_b64decode(value.get("epk"), "sealed_key.epk")
        nonce = strict_b64decode(value.get("nonce"), "sealed_key.nonce")
        ct = strict_b64decode(value.get("ct"), "sealed_key.ct")
        if len(epk) != PUBLIC_KEY_BYTES:
            raise SealingError(f"'sealed_key.epk' must be {PUBLIC_KEY_BYTES} bytes, not {len(epk)}")
        if len(nonce) != NONCE_BYTES:
            raise SealingError(f"'sealed_key.nonce' must be {NONCE_BYTES} bytes, not {len(nonce)}")
        if not TAG_BYTES < len(ct) <= MAX_CT_BYTES:
            raise SealingError(f"'sealed_key.ct' must be {TAG_BYTES + 1} to {MAX_CT_BYTES} bytes, not {len(ct)}")
        return cls(epk, nonce, ct)


def sealing_aad(device_id: str, attempt: str, re: str) -> bytes:
    """The associated data: label, device id, attempt and the register's id, separated by newlines."""
    return AAD_LABEL + "\n".join((device_id, attempt, re)).encode("utf-8")


def seal_auth_key(auth_key: Secret, seal_pub: bytes, *, device_id: str, attempt: str, re: str) -> SealedKey:
    """Seal ``auth_key`` to the device's ``seal_pub`` with a fresh ephemeral key and a random nonce."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ephemeral = X25519PrivateKey.generate()
    return _seal(auth_key, seal_pub, ephemeral, os.urandom(NONCE_BYTES), device_id, attempt, re)


def seal_auth_key_with(
    auth_key: Secret,
    seal_pub: bytes,
    *,
    device_id: str,
    attempt: str,
    re: str,
    ephemeral_private: bytes,
    nonce: bytes,
) -> SealedKey:
    """Deterministic sealing for test vectors: the caller supplies the ephemeral private key and the nonce."""
    if len(ephemeral_private) != PUBLIC_KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise SealingError(f"an ephemeral key is {PUBLIC_KEY_BYTES} bytes and a nonce {NONCE_BYTES} bytes")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_private)
    return _seal(auth_key, seal_pub, ephemeral, nonce, device_id, attempt, re)


def open_sealed_key(
    sealed: SealedKey, device_private: X25519PrivateKey, *, device_id: str, attempt: str, re: str
) -> Secret:
    """The device's side: recover the AuthKey, or :class:`SealingError` (wrong key, tampered, other AAD)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    seal_pub = device_private.public_key().public_bytes_raw()
    shared = _exchange(device_private, sealed.epk, "sealed_key.epk")
    aes_key = _derive(shared, sealed.epk, seal_pub)
    try:
        plain = AESGCM(aes_key).decrypt(sealed.nonce, sealed.ct, sealing_aad(device_id, attempt, re))
    except InvalidTag:
        raise SealingError("the sealed key does not open: wrong device key, altered bytes or another request") from None
    except ValueError as exc:  # a nonce of the wrong size
        raise SealingError(f"the sealed key is malformed: {exc}") from None
    try:
        return Secret(plain.decode("utf-8"))
    except UnicodeDecodeError:
        raise SealingError("the sealed key opened to bytes that are not UTF-8") from None


def check_seal_pub(seal_pub: bytes) -> None:
    """Refuse a ``seal_pub`` that is not 32 bytes or is a low-order point (it would give an all-zero secret)."""
    _exchange(_probe(), seal_pub, "seal_pub")


def strict_b64decode(text: object, name: str) -> bytes:
    """Standard base64 with padding, canonical (no stray bits): the only form the protocol accepts."""
    if not isinstance(text, str):
        raise SealingError(f"'{name}' must be a base64 string")
    if not _B64.fullmatch(text):
        raise SealingError(f"'{name}' must be standard base64 with padding")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SealingError(f"'{name}' must be standard base64 with padding") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise SealingError(f"'{name}' is not canonical base64 (unused bits must be zero)")
    return raw


def _seal(
    auth_key: Secret, seal_pub: bytes, ephemeral: X25519PrivateKey, nonce: bytes, device_id: str, attempt: str, re: str
) -> SealedKey:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    shared = _exchange(ephemeral, seal_pub, "seal_pub")
    epk = ephemeral.public_key().public_bytes_raw()
    aes_key = _derive(shared, epk, seal_pub)
    ct = AESGCM(aes_key).encrypt(nonce, auth_key.reveal().encode("utf-8"), sealing_aad(device_id, attempt, re))
    return SealedKey(epk, nonce, ct)


def _exchange(private: X25519PrivateKey, public: bytes, name: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    if len(public) != PUBLIC_KEY_BYTES:
        raise SealingError(f"'{name}' must be {PUBLIC_KEY_BYTES} bytes, not {len(public)}")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # cryptography refuses an all-zero shared secret
        raise SealingError(f"'{name}' is a low-order X25519 point, not a usable public key") from None


def _derive(shared: bytes, epk: bytes, seal_pub: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=AES_KEY_BYTES, salt=epk + seal_pub, info=HKDF_INFO).derive(shared)
