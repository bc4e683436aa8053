"""Why a device is not admitted: a reason code for machines and a sentence for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["REASONS", "RETRYABLE", "Reason", "Refusal"]

Reason = Literal[
    "wrong_transport",
    "identity_mismatch",
    "bound_elsewhere",
    "not_on_allow_list",
    "no_work_order",
    "work_order_exhausted",
    "signature_required",
    "bad_signature",
    "untrusted_device_key",
    "quota_hour",
    "quota_day",
    "quota_sender",
    "rate_limited_device",
    "rate_limited_transport",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
# Time alone lifts these; every other reason needs a person (a work order, a key, a profile).
RETRYABLE: Final[frozenset[Reason]] = frozenset(
    {"bound_elsewhere", "quota_hour", "quota_day", "quota_sender", "rate_limited_device", "rate_limited_transport"}
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A device that gets no key, and why."""

    reason: Reason
    message: str  # one sentence for the device's log and the operator's
    retry_after_s: int = 0  # quota and rate reasons: when trying again can succeed (0: unknown or never)

    @property
    def retry(self) -> bool:
        """Whether the device may register again later without anyone changing anything."""
        return self.reason in RETRYABLE

    def text(self) -> str:
        """The error message sent to the device: the reason first, so firmware can match on it."""
        after = f"; retry in {self.retry_after_s} s" if self.retry_after_s else ""
        return f"{self.reason}: {self.message}{after}"
