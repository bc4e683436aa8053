"""A string that never shows itself: AccessKey secrets, security tokens and AuthKeys."""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

__all__ = ["Secret"]

_MASK: Final = "********"


class Secret:
    """Holds a secret value; ``repr``, ``str`` and formatting print a mask, never the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plaintext, for the one place that must send it (a signer, a device push)."""
        return self._value

    def fingerprint(self) -> str:
        """First 12 hex characters of SHA-256: safe to log and store, enough to match records."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Secret({_MASK})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled")
