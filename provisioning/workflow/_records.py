"""A device's record in the journal, its states, and the policy of its hardware profile.

How a record moves (the flows of ``_line`` decide; the journal stores)::

    (none) --register--> minting --key minted--> pushed --result ok--> activated
                            |                       |  \\--result failed--> unsure
                            |                       \\--deadline passed--> unsure
                            \\--cloud failed, no key yet--> (forgotten)
    unsure/pushed-without-its-key --register--> read back from the cloud:
        licensed -> activated (reconciled)
        no licence, keys delivered < max_attempts -> minting (a new attempt)
        no licence, keys delivered >= max_attempts -> failed (the cloud's word, never before it)
    failed --result ok that the cloud confirms--> activated (adopted)

``attempts`` counts keys minted for the device (the audit trail numbers them); ``delivered``
counts keys that left the agent (the broker took the PUBLISH, the jig's device acknowledged the
frame): only those count against the profile's ``max_attempts``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["AUTH_KEY_LIFETIME_S", "DeviceRecord", "Policy", "State", "key_push_deadline"]

AUTH_KEY_LIFETIME_S: Final = 30 * 60  # CreateAuthKey: a key is valid for 30 minutes (API reference)


class State(enum.StrEnum):
    """Where a device is on its path; stored in the journal by value."""

    MINTING = "minting"  # intent journaled; CreateAuthKey may be in flight
    PUSHED = "pushed"  # a key went (or is going) to the device; waiting for its result
    UNSURE = "unsure"  # an attempt ended without a clear answer: read the cloud back first
    ACTIVATED = "activated"  # licensed; result and upstream report journaled
    FAILED = "failed"  # the cloud confirmed no licence after max_attempts delivered keys


@dataclass(frozen=True, slots=True)
class Policy:
    """What a hardware profile says about one device's path (seconds for a 30-minute key)."""

    activate_within_s: int = 120  # the device must report a result this long after the key
    max_attempts: int = 3  # keys delivered to a device before an operator must look
    key_safety_margin_s: int = 300  # never push a key within this margin of its lifetime
    key_lifetime_s: int = AUTH_KEY_LIFETIME_S  # how long the cloud's keys live

    def for_key_lifetime(self, key_lifetime_s: int) -> Policy:
        """This policy for keys that live ``key_lifetime_s``: the margin and the activation window scale with it.

        Profiles are written for the service's 30 minutes; a test cloud with 20-second keys gets
        the same proportions (a 300 s margin becomes 3.3 s), never less than one second.
        """
        if key_lifetime_s == self.key_lifetime_s:
            return self
        ratio = key_lifetime_s / self.key_lifetime_s
        return dataclasses.replace(
            self,
            activate_within_s=max(1, round(self.activate_within_s * ratio)),
            key_safety_margin_s=max(1, round(self.key_safety_margin_s * ratio)),
            key_lifetime_s=key_lifetime_s,
        )


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device in the journal. Never holds an AuthKey, only its fingerprint."""

    device_id: str
    hardware_id: str
    model: str
    tid: str  # the topic id the current attempt's key is bound to (and the device's last address)
    state: State
    attempts: int = 0  # keys minted for this device so far
    attempt: str = ""  # id of the current key attempt (16 hex)
    key_fingerprint: str = ""
    minted_at: float = 0.0  # epoch seconds the current key was minted
    result_due: float = 0.0  # epoch seconds by which the device must report
    sdk_device_id: str = ""
    begin_day: str = ""
    expired_day: str = ""
    reconciled: bool = False  # the activation was read back from the cloud, not reported by the device
    error: str = ""  # the reason of the last failure, for operators
    updated_at: float = 0.0
    delivered: int = 0  # keys that left the agent: what max_attempts counts
    delivered_attempt: str = ""  # the last attempt counted in ``delivered`` (a resend is not counted again)

    def replace(self, **changes: object) -> DeviceRecord:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def counted_delivered(self) -> DeviceRecord:
        """This record with its current attempt counted as delivered (once per attempt)."""
        if not self.attempt or self.delivered_attempt == self.attempt:
            return self
        return self.replace(delivered=self.delivered + 1, delivered_attempt=self.attempt)


def key_push_deadline(record: DeviceRecord, policy: Policy) -> float:
    """The last instant a key minted for ``record`` may still be pushed."""
    return record.minted_at + policy.key_lifetime_s - policy.key_safety_margin_s
