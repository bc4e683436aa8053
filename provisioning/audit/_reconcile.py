"""Comparing the trail with the cloud's licence records (DescribeDeviceInfo): what a person must look at.

- orphaned: the cloud holds a licence (DeviceId) that no ``consumed`` entry names: a key was
  used by someone the gateway never saw activate (a leaked or hand-minted key, another line);
- doubled: one UserDeviceId holds more than one licence (DeviceId): money spent twice;
- unknown: a ``consumed`` entry names a DeviceId the cloud does not have for that device
  (a device that lied about its activation, or a licence deleted at the cloud);
- open: keys minted whose attempt never ended in the trail (informational: the cloud decides).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioning.audit._chain import AuditEntry
from provisioning.cloudauth import DeviceInfo

__all__ = ["Findings", "reconcile"]


@dataclass(slots=True)
class Findings:
    """The outcome of :func:`reconcile`; ``clean`` when nothing needs a person."""

    orphaned: list[dict[str, Any]] = field(default_factory=list)
    doubled: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    open_attempts: list[dict[str, Any]] = field(default_factory=list)
    licences_checked: int = 0
    consumed_checked: int = 0

    @property
    def clean(self) -> bool:
        """No orphaned, doubled or unknown licence."""
        return not (self.orphaned or self.doubled or self.unknown)

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "clean": self.clean,
            "licences_checked": self.licences_checked,
            "consumed_checked": self.consumed_checked,
            "orphaned": self.orphaned,
            "doubled": self.doubled,
            "unknown": self.unknown,
            "open_attempts": self.open_attempts,
        }


def reconcile(entries: Iterable[AuditEntry], licences: Sequence[DeviceInfo], *, biz_types: set[str]) -> Findings:
    """Compare; ``licences`` are the cloud's records in scope, ``biz_types`` that scope (empty: every one)."""
    consumed: dict[str, set[str]] = defaultdict(set)  # device_id -> DeviceIds the trail saw consumed
    consumed_entries: list[AuditEntry] = []
    minted: dict[tuple[str, str], AuditEntry] = {}
    ended: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.event == "consumed":
            consumed[entry.device_id].add(str(entry.detail.get("sdk_device_id", "")))
            consumed_entries.append(entry)
            ended.add((entry.device_id, entry.attempt))
        elif entry.event == "abandoned":
            ended.add((entry.device_id, entry.attempt))
        elif entry.event == "minted":
            minted[(entry.device_id, entry.attempt)] = entry
    by_device: dict[str, list[DeviceInfo]] = defaultdict(list)
    for licence in licences:
        by_device[licence.user_device_id].append(licence)
    findings = Findings(licences_checked=len(licences))
    for licence in licences:
        if licence.device_id not in consumed.get(licence.user_device_id, set()):
            findings.orphaned.append(_licence(licence) | {"why": _orphan_why(licence, consumed)})
    for device_id, held in sorted(by_device.items()):
        if len({licence.device_id for licence in held}) > 1:
            findings.doubled.append({"UserDeviceId": device_id, "DeviceIds": sorted(lic.device_id for lic in held),
                                     "in_trail": sorted(consumed.get(device_id, set()))})  # fmt: skip
    in_scope = [e for e in consumed_entries if not biz_types or e.detail.get("biz_type", "") in biz_types | {""}]
    findings.consumed_checked = len(in_scope)
    for entry in in_scope:
        sdk_device_id = str(entry.detail.get("sdk_device_id", ""))
        if not any(lic.device_id == sdk_device_id for lic in by_device.get(entry.device_id, [])):
            findings.unknown.append({"UserDeviceId": entry.device_id, "DeviceId": sdk_device_id, "seq": entry.seq,
                                     "gateway_id": entry.gateway_id, "at": entry.at})  # fmt: skip
    for key, entry in minted.items():
        if key not in ended:
            findings.open_attempts.append({"UserDeviceId": entry.device_id, "attempt": entry.attempt,
                                           "key_fingerprint": entry.key_fingerprint, "minted_at": entry.at,
                                           "seq": entry.seq})  # fmt: skip
    return findings


def _licence(licence: DeviceInfo) -> dict[str, Any]:
    return {"DeviceId": licence.device_id, "UserDeviceId": licence.user_device_id, "BizType": licence.biz_type,
            "BeginDay": licence.begin_day, "ExpiredDay": licence.expired_day}  # fmt: skip


def _orphan_why(licence: DeviceInfo, consumed: dict[str, set[str]]) -> str:
    if licence.user_device_id in consumed:
        return "the trail records another licence for this device"
    return "no key for this device was ever seen consumed"
