"""Identifiers the emulated service mints: AuthKeys, DeviceIds, TaskIds, RequestIds, fingerprints."""

from __future__ import annotations

import hashlib
import secrets
import string
import uuid

__all__ = [
    "BASE62",
    "FINGERPRINT_HEX_CHARS",
    "base62",
    "fingerprint",
    "new_auth_key",
    "new_device_id",
    "new_request_id",
    "new_task_id",
]

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
FINGERPRINT_HEX_CHARS = 12  # enough to tell keys apart in an audit, useless to an attacker


def base62(length: int) -> str:
    """``length`` random base62 characters from the OS CSPRNG (AuthKeys are bearer secrets)."""
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_auth_key() -> str:
    """An AuthKey shaped like the service's: ``auth.`` + 22 base62 + ``-`` + 5 base62."""
    return f"auth.{base62(22)}-{base62(5)}"


def new_device_id() -> str:
    """A DeviceId shaped like the service's: ``wd.`` + 22 base62 + ``-`` + 5 base62."""
    return f"wd.{base62(22)}-{base62(5)}"


def new_task_id() -> str:
    """A CreateVerifySDK task id (the real format is undocumented)."""
    return base62(24)


def new_request_id() -> str:
    """An uppercase UUID4, as the gateway's RequestId."""
    return str(uuid.uuid4()).upper()


def fingerprint(secret: str) -> str:
    """First 12 hex characters of the SHA-256 of a secret: what audits and logs show instead."""
    return hashlib.sha256(secret.encode()).hexdigest()[:FINGERPRINT_HEX_CHARS]
