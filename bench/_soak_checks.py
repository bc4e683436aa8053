"""The soak's verdict: the invariants of docs/reliability.md checked from three independent records.

The records are the emulator's audit view (what the cloud minted and licensed), the webhook's
deliveries (what the MES received) and the simulated devices' own outcomes (what each device
saw, including the fingerprint and arrival time of every key). None of them is the agent's
journal: the soak judges the agent by what others observed. Pure functions, no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from _soak_upstream import Delivery

from provisioning_lab.emulator._state import KEY_LIFETIME_SECONDS
from provisioning_lab.simulator import DeviceOutcome

__all__ = ["KEY_LIFETIME_S", "Invariant", "check_all", "key_ages"]

KEY_LIFETIME_S: Final = KEY_LIFETIME_SECONDS  # the service's rule: an AuthKey lives 30 minutes from mint
FINAL_REFUSAL: Final = "activation_failed"  # the error that ends a device's path until an operator acts


@dataclass(frozen=True, slots=True)
class Invariant:
    """One invariant's verdict: ``failures`` counts violations, ``devices`` names the devices."""

    name: str
    meaning: str
    checked: int  # how many things were looked at (devices, keys, reports)
    failures: int
    devices: tuple[str, ...] = ()
    details: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.failures == 0


def check_all(
    outcomes: Sequence[DeviceOutcome],
    audit: Mapping[str, Any],
    deliveries: Sequence[Delivery],
    margin_s: Mapping[str, float],
    max_attempts: Mapping[str, int] | None = None,
) -> list[Invariant]:
    """Every invariant; ``margin_s`` and ``max_attempts`` are each device's, from its hardware profile.

    The key lifetime is the emulator's own (its audit's ``key_lifetime_s``: 30 minutes unless
    ``--key-ttl`` shortened it), and ``margin_s`` must be the margin the agent applies to it.
    """
    licences = _licences_by_device(audit)
    return [
        devices_lost(outcomes, licences),
        licensed_not_done(outcomes, licences),
        failed_with_attempts_left(outcomes, max_attempts or {}),
        doubled_licences(licences),
        keys_after_deadline(outcomes, audit, margin_s),
        keys_bound(outcomes, audit),
        unreported(outcomes, deliveries),
        idempotency_keys(deliveries),
        records_agree(outcomes, licences, deliveries),
        device_violations(outcomes),
    ]


def key_ages(outcomes: Sequence[DeviceOutcome], audit: Mapping[str, Any]) -> list[float]:
    """Seconds from the cloud's mint to the device's receipt, for every key the cloud knows."""
    minted = {event["fingerprint"]: _posix(event["minted_at"]) for event in audit["key_events"]}
    return [
        arrived - minted[fingerprint]
        for outcome in outcomes
        for fingerprint, arrived in outcome.counters.key_arrivals
        if fingerprint in minted
    ]


def devices_lost(outcomes: Sequence[DeviceOutcome], licences: Mapping[str, list[Mapping[str, Any]]]) -> Invariant:
    """Every device ended ``done`` (licensed) and holds a licence at the cloud."""
    bad = sorted(o.device_id for o in outcomes if o.status != "licensed" or o.device_id not in licences)
    details = tuple(
        f"{o.device_id}: {o.status} {o.error_code} {o.detail}".strip() for o in outcomes if o.device_id in bad
    )
    return _verdict("devices lost", "device not licensed and done", len(outcomes), bad, details)


def licensed_not_done(outcomes: Sequence[DeviceOutcome], licences: Mapping[str, list[Mapping[str, Any]]]) -> Invariant:
    """No device holds a licence at the cloud while the gateway failed it: no terminal failure without the cloud."""
    bad = sorted(o.device_id for o in outcomes if o.device_id in licences and o.status != "licensed")
    details = tuple(
        f"{o.device_id}: {o.status} {o.error_code} {o.detail}".strip() for o in outcomes if o.device_id in bad
    )
    return _verdict("licensed, not done", "licence consumed at the cloud, device not done", len(outcomes), bad, details)


def failed_with_attempts_left(outcomes: Sequence[DeviceOutcome], max_attempts: Mapping[str, int]) -> Invariant:
    """A device refused for good received as many keys as its profile allows (an undelivered key is no attempt)."""
    bad: list[str] = []
    details: list[str] = []
    checked = 0
    for o in outcomes:
        if o.device_id not in max_attempts or o.status != "error" or o.error_code != FINAL_REFUSAL:
            continue
        checked += 1
        if o.counters.distinct_attempts < max_attempts[o.device_id]:
            bad.append(o.device_id)
            details.append(f"{o.device_id}: failed after {o.counters.distinct_attempts} key(s) received, "
                           f"{max_attempts[o.device_id]} allowed")  # fmt: skip
    return _verdict(
        "failed with attempts left", "final refusal before max_attempts keys arrived", checked, bad, details
    )


def doubled_licences(licences: Mapping[str, list[Mapping[str, Any]]]) -> Invariant:
    """At most one licence consumed per UserDeviceId (renewals are extensions, not counted)."""
    consumed = {
        device: sum(int(row["licences_consumed"]) - int(row["extensions"]) for row in rows)
        for device, rows in licences.items()
    }
    bad = sorted(device for device, count in consumed.items() if count > 1)
    details = tuple(f"{device}: {consumed[device]} licences" for device in bad)
    return _verdict("doubled licences", "UserDeviceId with more than one licence", len(licences), bad, details)


def keys_after_deadline(
    outcomes: Sequence[DeviceOutcome], audit: Mapping[str, Any], margin_s: Mapping[str, float]
) -> Invariant:
    """Every key reached its device before mint + the key's lifetime - the profile's safety margin."""
    lifetime = float(audit.get("key_lifetime_s", KEY_LIFETIME_S))
    minted = {event["fingerprint"]: _posix(event["minted_at"]) for event in audit["key_events"]}
    bad: list[str] = []
    details: list[str] = []
    checked = 0
    for outcome in outcomes:
        for fingerprint, arrived in outcome.counters.key_arrivals:
            checked += 1
            mint = minted.get(fingerprint)
            if mint is None:
                bad.append(outcome.device_id)
                details.append(f"{outcome.device_id}: key {fingerprint} was never minted by the cloud")
                continue
            deadline = mint + lifetime - margin_s[outcome.device_id]
            if arrived > deadline:
                bad.append(outcome.device_id)
                details.append(f"{outcome.device_id}: key {fingerprint} arrived {arrived - deadline:.1f} s late")
    meaning = f"key received after mint + {lifetime:g} s - margin"
    return _verdict("keys after deadline", meaning, checked, bad, details)


def keys_bound(outcomes: Sequence[DeviceOutcome], audit: Mapping[str, Any]) -> Invariant:
    """Each key went to one device only, the device it was minted for (its UserDeviceId)."""
    minted_for = {event["fingerprint"]: event.get("UserDeviceId") for event in audit["key_events"]}
    holders: dict[str, set[str]] = defaultdict(set)
    for outcome in outcomes:
        for fingerprint, _ in outcome.counters.key_arrivals:
            holders[fingerprint].add(outcome.device_id)
    bad: list[str] = []
    details: list[str] = []
    for fingerprint, devices in holders.items():
        owner = minted_for.get(fingerprint)
        strangers = sorted(devices - {owner}) if owner else []
        if len(devices) > 1 or strangers:
            bad += sorted(devices)
            details.append(f"key {fingerprint} minted for {owner} went to {sorted(devices)}")
    return _verdict("keys not bound", "key pushed to another device or to several", len(holders), bad, details)


def unreported(outcomes: Sequence[DeviceOutcome], deliveries: Sequence[Delivery]) -> Invariant:
    """Every device reached the webhook at least once."""
    reported = {delivery.device_id for delivery in deliveries}
    bad = sorted(o.device_id for o in outcomes if o.device_id not in reported)
    return _verdict("not reported", "device without a report at the webhook", len(outcomes), bad)


def idempotency_keys(deliveries: Sequence[Delivery]) -> Invariant:
    """One distinct idempotency key per device (repeats of it allowed), header and body equal."""
    keys: dict[str, set[str]] = defaultdict(set)
    mismatched: set[str] = set()
    for delivery in deliveries:
        keys[delivery.device_id].add(delivery.body_key)
        if delivery.header_key != delivery.body_key:
            mismatched.add(delivery.device_id)
    several = {device for device, seen in keys.items() if len(seen) > 1}
    bad = sorted(several | mismatched)
    details = tuple(f"{device}: keys {sorted(keys[device])}" for device in sorted(several))
    details += tuple(f"{device}: Idempotency-Key header differs from the body" for device in sorted(mismatched))
    return _verdict("idempotency keys", "device with several keys, or header != body", len(keys), bad, details)


def records_agree(
    outcomes: Sequence[DeviceOutcome],
    licences: Mapping[str, list[Mapping[str, Any]]],
    deliveries: Sequence[Delivery],
) -> Invariant:
    """The device's ``done``, the cloud's licence and every report name the same DeviceId."""
    reported: dict[str, set[str]] = defaultdict(set)
    for delivery in deliveries:
        reported[delivery.device_id].add(delivery.sdk_device_id)
    bad: list[str] = []
    details: list[str] = []
    for outcome in outcomes:
        cloud = {str(row["DeviceId"]) for row in licences.get(outcome.device_id, [])}
        if outcome.status != "licensed" or not cloud:
            continue  # already counted as lost
        seen = {outcome.sdk_device_id} | reported.get(outcome.device_id, set())
        if seen != cloud:
            bad.append(outcome.device_id)
            details.append(f"{outcome.device_id}: cloud {sorted(cloud)}, device/reports {sorted(seen)}")
    return _verdict("records disagree", "done, cloud and report name different DeviceIds", len(outcomes), bad, details)


def device_violations(outcomes: Sequence[DeviceOutcome]) -> Invariant:
    """Promises the devices saw broken (a key after done, a different done, an expired key)."""
    bad = sorted(o.device_id for o in outcomes if o.counters.violations)
    details = tuple(f"{o.device_id}: {'; '.join(o.counters.violations)}" for o in outcomes if o.counters.violations)
    return _verdict("device violations", "protocol promise broken, as the device saw it", len(outcomes), bad, details)


def _licences_by_device(audit: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    by_device: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in audit["devices"]:
        by_device[str(row["UserDeviceId"])].append(row)
    return dict(by_device)


def _verdict(name: str, meaning: str, checked: int, devices: Iterable[str], details: Iterable[str] = ()) -> Invariant:
    failing = list(devices)
    return Invariant(name, meaning, checked, len(failing), tuple(sorted(set(failing))), tuple(details))


def _posix(stamp: str) -> float:
    """``2026-01-01T00:00:00.000Z`` (the audit's form) as POSIX seconds."""
    return datetime.fromisoformat(stamp).timestamp()
