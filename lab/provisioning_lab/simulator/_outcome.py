"""What each simulated device ended with, and the fleet's summary."""

from __future__ import annotations

import json
from collections import Counter as _Tally
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from provisioning_lab.simulator._spec import Behaviour

__all__ = ["Counters", "DeviceOutcome", "FleetReport", "Status"]

Status = Literal["licensed", "error", "died", "timeout"]
STATUSES: tuple[Status, ...] = ("licensed", "error", "died", "timeout")


@dataclass(slots=True)
class Counters:
    """What a device saw and did over its whole run (all its lives)."""

    keys_received: int = 0
    keys_used_after_expiry: int = 0  # SDK calls started after the key's expires_at: must stay 0
    keys_expired_on_arrival: int = 0  # keys that came already expired (the agent promises never to send one)
    keys_ignored: int = 0  # keys for a new attempt while another attempt's result was still outstanding
    keys_sealed: int = 0  # sealed keys opened (devices with DeviceSpec.seal)
    attempts: list[str] = field(default_factory=list)  # distinct `attempt` values of the keys received
    registrations: int = 0  # distinct register ids (a resend reuses its id)
    activations: int = 0  # SDK activation calls
    messages_sent: int = 0
    messages_received: int = 0
    invalid_received: int = 0  # unreadable, another device's, or a version we do not speak
    waits_received: int = 0
    error_codes: list[str] = field(default_factory=list)  # every `error` code received, in order
    deaths: int = 0
    violations: list[str] = field(default_factory=list)  # protocol promises the agent broke
    # (AuthKey fingerprint, POSIX time) of every key received: checked against the cloud's mint time
    key_arrivals: list[tuple[str, float]] = field(default_factory=list)

    @property
    def distinct_attempts(self) -> int:
        """How many different attempts this device was given a key for."""
        return len(self.attempts)

    def snapshot(self) -> Counters:
        """An independent copy."""
        copy = replace(self)
        copy.attempts, copy.error_codes = list(self.attempts), list(self.error_codes)
        copy.violations, copy.key_arrivals = list(self.violations), list(self.key_arrivals)
        return copy


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    """How one device ended."""

    device_id: str
    tid: str
    behaviour: Behaviour
    protocol: str
    status: Status
    sdk_device_id: str = ""
    begin_day: str = ""
    expired_day: str = ""
    error_code: str = ""  # status "error": the code that stopped the device
    detail: str = ""  # a line for people: the error message, why it timed out
    counters: Counters = field(default_factory=Counters)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        body = asdict(self)
        body["behaviour"] = str(self.behaviour)
        body["counters"]["distinct_attempts"] = self.counters.distinct_attempts
        return body


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Every device's outcome and the summary counts."""

    devices: tuple[DeviceOutcome, ...]
    elapsed_s: float

    def counts(self) -> dict[str, int]:
        """Devices per status (every status present, zeros included)."""
        tally = _Tally(device.status for device in self.devices)
        return {status: tally[status] for status in STATUSES}

    def counts_by_behaviour(self) -> dict[str, dict[str, int]]:
        """Devices per status for each behaviour present."""
        table: dict[str, dict[str, int]] = {}
        for device in self.devices:
            row = table.setdefault(str(device.behaviour), dict.fromkeys(STATUSES, 0))
            row[device.status] += 1
        return table

    def totals(self) -> dict[str, int]:
        """Counters summed over the fleet."""
        total = _Tally[str]()
        for device in self.devices:
            c = device.counters
            total.update(
                keys_received=c.keys_received,
                keys_used_after_expiry=c.keys_used_after_expiry,
                keys_expired_on_arrival=c.keys_expired_on_arrival,
                keys_ignored=c.keys_ignored,
                keys_sealed=c.keys_sealed,
                distinct_attempts=c.distinct_attempts,
                registrations=c.registrations,
                activations=c.activations,
                messages_sent=c.messages_sent,
                messages_received=c.messages_received,
                invalid_received=c.invalid_received,
                waits_received=c.waits_received,
                errors_received=len(c.error_codes),
                deaths=c.deaths,
                violations=len(c.violations),
            )
        return dict(total)

    @property
    def normal_all_licensed(self) -> bool:
        """Every ``normal`` device ended licensed (the CLI's success criterion)."""
        return all(device.status == "licensed" for device in self.devices if device.behaviour is Behaviour.NORMAL)

    def outcome(self, device_id: str) -> DeviceOutcome:
        """The outcome of one device; KeyError if it was not in the fleet."""
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise KeyError(device_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: summary first, then every device."""
        return {
            "devices_total": len(self.devices),
            "elapsed_s": round(self.elapsed_s, 3),
            "counts": self.counts(),
            "by_behaviour": self.counts_by_behaviour(),
            "totals": self.totals(),
            "normal_all_licensed": self.normal_all_licensed,
            "devices": [device.to_dict() for device in self.devices],
        }

    def to_json(self) -> str:
        """One JSON document."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)
