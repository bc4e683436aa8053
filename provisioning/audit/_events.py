"""Which audit entries a journaled state change implies (the journal writes them in the same transaction).

How a key's life maps onto the device record's transitions (provisioning/workflow/_records.py)::

    minted     any -> pushed with a new attempt             (key_minted: journaled before the push)
    consumed   any -> activated                              (the device's result, a read-back, an adoption)
    abandoned  pushed/unsure -> minting                      reconciled_unused: the cloud has no licence
               pushed/unsure -> failed                       given_up (or activation_failed from a result)
               pushed -> unsure after a failed activation    activation_failed
               (the daemon, at start-up)                     unpushed: the key was lost before any push

``pushed`` is appended by the daemon at each push. An attempt is abandoned at most once; a
result that is only overdue is not an abandonment yet (the device may still use the key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from provisioning.audit._chain import DetailValue

if TYPE_CHECKING:  # the workflow's journal imports this module: no import cycle at run time
    from provisioning.workflow._records import DeviceRecord

__all__ = ["ACTIVATION_FAILED_PREFIX", "ImpliedEntry", "implied_entries"]

# State values (provisioning.workflow.State is a StrEnum: its members equal these strings).
_PUSHED, _UNSURE, _MINTING, _ACTIVATED, _FAILED = "pushed", "unsure", "minting", "activated", "failed"

# decide_result's failure reasons start with this; an overdue result's ("no result ...") does not.
ACTIVATION_FAILED_PREFIX: Final = "activation failed"
_OPEN: Final = (_PUSHED, _UNSURE)


@dataclass(frozen=True, slots=True)
class ImpliedEntry:
    """An entry to append: the record supplies device, model and time."""

    event: str
    attempt: str
    key_fingerprint: str
    detail: dict[str, DetailValue] = field(default_factory=dict)


def implied_entries(
    old: DeviceRecord | None,
    new: DeviceRecord,
    *,
    closed: Callable[[str], bool],
    pushed: Callable[[str], bool],
    consumed_detail: dict[str, DetailValue] | None = None,
) -> list[ImpliedEntry]:
    """The entries the change ``old`` -> ``new`` implies; ``closed``/``pushed`` ask the trail about an attempt."""
    entries: list[ImpliedEntry] = []
    if new.state == _ACTIVATED and (old is None or old.state != _ACTIVATED):
        same_attempt = old is not None and old.attempt == new.attempt
        detail: dict[str, DetailValue] = {
            "sdk_device_id": new.sdk_device_id,
            "begin_day": new.begin_day,
            "expired_day": new.expired_day,
            "reconciled": new.reconciled,
            "adopted": not same_attempt,  # a key another agent (or a forgotten attempt) issued
        }
        fingerprint = new.key_fingerprint if same_attempt else ""
        entries.append(ImpliedEntry("consumed", new.attempt, fingerprint, detail | (consumed_detail or {})))
        return entries
    if old is not None and old.attempt and old.state in _OPEN and not closed(old.attempt):
        reason = _abandon_reason(old, new)
        if reason:
            detail = {"reason": reason, "error": new.error, "was_pushed": pushed(old.attempt)}
            entries.append(ImpliedEntry("abandoned", old.attempt, old.key_fingerprint, detail))
    if new.state == _PUSHED and new.attempt and (old is None or old.attempt != new.attempt):
        detail = {"attempt_no": new.attempts, "result_due": int(new.result_due)}
        entries.append(ImpliedEntry("minted", new.attempt, new.key_fingerprint, detail))
    return entries


def _abandon_reason(old: DeviceRecord, new: DeviceRecord) -> str:
    if new.attempt != old.attempt:
        return "superseded"  # a new key without the old attempt's end journaled first: never by this workflow
    if new.state == _MINTING:
        return "reconciled_unused"
    if new.state == _FAILED:
        return "activation_failed" if new.error.startswith(ACTIVATION_FAILED_PREFIX) else "given_up"
    if old.state == _PUSHED and new.state == _UNSURE and new.error.startswith(ACTIVATION_FAILED_PREFIX):
        return "activation_failed"
    return ""
