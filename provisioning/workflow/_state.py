"""The per-device workflow: what to do with a registration or a result, given the journal's record.

How it works
------------
A device's record moves through these states (the journal stores the record; this module
only decides)::

    (none) --register--> minting --key minted--> pushed --result ok--> activated
                            |                       |  \\--result failed--> unsure --register--> (reconcile)
                            |                       \\--deadline passed--> unsure
                            \\--cloud said no------> failed (terminal, operator)
    unsure --register--> reconcile: licensed? -> activated (reconciled) ; else -> minting
    pushed --register, key still held in memory--> the same key again
    pushed --register, key gone (restart)--------> reconcile, as unsure
    activated --register or duplicate result--> done again (never a second key)

Every decision is a pure function of (record, message, profile policy, now). The runtime
journals what a decision says *before* performing the side effect that depends on it: the
intent to mint before CreateAuthKey, the attempt (key fingerprint, deadlines) before the
key is pushed, the activation and its upstream report in one transaction before ``done``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Final

from provisioning.protocol import Register, Result

__all__ = [
    "AUTH_KEY_LIFETIME_S",
    "Decision",
    "DeviceRecord",
    "Policy",
    "State",
    "after_mint_failure",
    "after_reconcile",
    "decide_register",
    "decide_result",
    "key_minted",
    "key_push_deadline",
    "result_overdue",
]

AUTH_KEY_LIFETIME_S: Final = 30 * 60  # CreateAuthKey: a key is valid for 30 minutes (API reference)


class State(enum.StrEnum):
    """Where a device is on its path; stored in the journal by value."""

    MINTING = "minting"  # intent journaled; CreateAuthKey may be in flight
    PUSHED = "pushed"  # a key went (or is going) to the device; waiting for its result
    UNSURE = "unsure"  # an attempt ended without a clear answer: reconcile with the cloud first
    ACTIVATED = "activated"  # licensed; result and upstream report journaled
    FAILED = "failed"  # terminal until an operator re-provisions the device


@dataclass(frozen=True, slots=True)
class Policy:
    """What a hardware profile says about one device's path."""

    activate_within_s: int = 120  # the device must report a result this long after the key
    max_attempts: int = 3  # keys a device may receive before an operator must look
    key_safety_margin_s: int = 300  # never push a key within this margin of its 30-minute life


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device in the journal. Never holds an AuthKey, only its fingerprint."""

    device_id: str
    hardware_id: str
    model: str
    tid: str
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

    def replace(self, **changes: object) -> DeviceRecord:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the runtime must do next.

    ``action`` is one of: ``done`` (answer with the stored result), ``mint`` (journal
    ``record`` as the intent, then mint and push), ``resend_key`` (push the key held in
    memory again), ``reconcile`` (ask the cloud whether the device is licensed, then
    :func:`after_reconcile`), ``wait`` (answer wait/in_progress), ``complete`` (journal
    ``record`` with its report, then answer done), ``adopt`` (a result of a key another agent
    issued: confirm with the cloud, then complete), ``retry_later`` (journal ``record`` if
    any, answer an error the device may retry), ``reject`` (answer ``error_code``; terminal).
    """

    action: str
    record: DeviceRecord | None = None
    error_code: str = ""
    message: str = ""


def key_push_deadline(record: DeviceRecord, policy: Policy) -> float:
    """The last instant a key minted for ``record`` may still be pushed."""
    return record.minted_at + AUTH_KEY_LIFETIME_S - policy.key_safety_margin_s


def decide_register(
    record: DeviceRecord | None,
    message: Register,
    *,
    tid: str,
    policy: Policy,
    now: float,
    key_in_memory: bool,
) -> Decision:
    """A registration arrived; ``key_in_memory`` says this process still holds the current attempt's key."""
    if record is None:
        fresh = DeviceRecord(message.device_id, message.hardware_id, message.model, tid, State.MINTING, updated_at=now)
        return Decision("mint", fresh)
    if record.hardware_id != message.hardware_id:
        return Decision(
            "reject",
            error_code="not_admitted",
            message=f"device_id {message.device_id!r} is already registered with another hardware_id; "
            "an operator must re-provision it",
        )
    record = record.replace(tid=tid)
    if record.state is State.ACTIVATED:
        return Decision("done", record)
    if record.state is State.FAILED:
        return Decision("reject", record, "activation_failed", record.error or "an operator must re-provision")
    if record.state is State.MINTING:
        # Minting now (same process) or a crash between intent and key: the runtime knows which.
        return Decision("wait" if key_in_memory else "reconcile", record)
    pushed_and_waiting = record.state is State.PUSHED and now < record.result_due
    if pushed_and_waiting and key_in_memory and now < key_push_deadline(record, policy):
        return Decision("resend_key", record)
    return Decision("reconcile", record)  # pushed but the key is gone or late, or unsure


def after_reconcile(
    record: DeviceRecord, licensed: tuple[str, str, str] | None, *, policy: Policy, now: float
) -> Decision:
    """The cloud answered: ``licensed`` is (DeviceId, BeginDay, ExpiredDay) of a live licence, or None."""
    if licensed is not None:
        sdk_device_id, begin_day, expired_day = licensed
        activated = record.replace(
            state=State.ACTIVATED,
            sdk_device_id=sdk_device_id,
            begin_day=begin_day,
            expired_day=expired_day,
            reconciled=True,
            error="",
            updated_at=now,
        )
        return Decision("complete", activated)
    if record.attempts >= policy.max_attempts:
        failed = record.replace(
            state=State.FAILED, error=f"no licence after {record.attempts} key(s); re-provision", updated_at=now
        )
        return Decision("reject", failed, "activation_failed", failed.error)
    return Decision("mint", record.replace(state=State.MINTING, updated_at=now))


def decide_result(record: DeviceRecord | None, message: Result, *, policy: Policy, now: float) -> Decision:
    """A device reported the outcome of an activation."""
    if record is None or message.attempt != record.attempt:
        if record is not None and record.state is State.ACTIVATED:
            return Decision("done", record)  # a stale duplicate from an earlier attempt
        if message.ok:
            # Another agent of the cluster issued this key (shared subscriptions route each message
            # to any agent): adopt the result once the cloud confirms the licence.
            return Decision("adopt", _adopted(record, message, now))
        if record is not None and record.state is State.FAILED:
            return Decision("reject", record, "activation_failed", record.error or "an operator must re-provision")
        return Decision("retry_later", record, "activation_failed",
                        f"activation failed: {message.error}; register again for a new key")  # fmt: skip
    if record.state is State.ACTIVATED:
        return Decision("done", record)  # a resend: same answer
    if record.state not in (State.PUSHED, State.UNSURE):
        return Decision("reject", record, "unknown_attempt", f"no key attempt is open for {message.device_id!r}")
    if message.ok:
        activated = record.replace(
            state=State.ACTIVATED,
            sdk_device_id=message.sdk_device_id,
            begin_day=message.begin_day,
            expired_day=message.expired_day,
            reconciled=False,
            error="",
            updated_at=now,
        )
        return Decision("complete", activated)
    reason = f"activation failed: {message.error}" + (f" ({message.detail})" if message.detail else "")
    if record.attempts >= policy.max_attempts:
        failed = record.replace(state=State.FAILED, error=reason, updated_at=now)
        return Decision("reject", failed, "activation_failed", f"{reason}; no attempts left, an operator must look")
    unsure = record.replace(state=State.UNSURE, error=reason, updated_at=now)
    return Decision("retry_later", unsure, "activation_failed", f"{reason}; register again for a new key")


def _adopted(record: DeviceRecord | None, message: Result, now: float) -> DeviceRecord:
    """The record an agent keeps for a result of a key it did not issue."""
    base = record or DeviceRecord(message.device_id, message.hardware_id, message.model, "", State.PUSHED)
    return base.replace(
        hardware_id=base.hardware_id or message.hardware_id,
        model=base.model or message.model,
        state=State.ACTIVATED,
        attempt=message.attempt,
        sdk_device_id=message.sdk_device_id,
        begin_day=message.begin_day,
        expired_day=message.expired_day,
        reconciled=False,
        error="",
        updated_at=now,
    )


def result_overdue(record: DeviceRecord, now: float) -> DeviceRecord | None:
    """A pushed attempt whose result did not come in time becomes unsure (None when not overdue)."""
    if record.state is State.PUSHED and now >= record.result_due:
        return record.replace(state=State.UNSURE, error="no result before the deadline", updated_at=now)
    return None


def key_minted(record: DeviceRecord, *, attempt: str, fingerprint: str, policy: Policy, now: float) -> DeviceRecord:
    """The cloud answered with a key: the attempt to journal before the key is pushed."""
    return record.replace(
        state=State.PUSHED,
        attempts=record.attempts + 1,
        attempt=attempt,
        key_fingerprint=fingerprint,
        minted_at=now,
        result_due=now + policy.activate_within_s,
        error="",
        updated_at=now,
    )


def after_mint_failure(record: DeviceRecord, reason: str, *, now: float) -> DeviceRecord | None:
    """Minting failed: forget a device that never got a key (None), else reconcile on its next register.

    A failed or ambiguous CreateAuthKey leaves at most an unused key at the cloud, which expires
    in 30 minutes and spends nothing; only a device that already held a key needs a read-back.
    """
    if record.attempts == 0:
        return None
    return record.replace(state=State.UNSURE, error=reason, updated_at=now)
