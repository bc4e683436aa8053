"""What a simulated device is (``DeviceSpec``), how it misbehaves (``Behaviour``) and its clock (``Timing``)."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Final, Literal

from provisioning.protocol import is_valid_tid

__all__ = [
    "COMEBACK_DELAY_S",
    "GARBAGE_ANSWER_TIMEOUT_S",
    "INTERNAL_RETRY_S",
    "LATE_BY_S",
    "REGISTER_BACKOFF_MAX_S",
    "REGISTER_TIMEOUT_S",
    "RESULT_TIMEOUT_S",
    "Behaviour",
    "DeviceSpec",
    "MqttProtocol",
    "Timing",
    "derive_tid",
]

# The device-side timeouts of docs/protocol.md ("Timeouts and retries"), before Timing.time_scale.
REGISTER_TIMEOUT_S: Final = 10.0  # no answer to register within 10 s: resend it
REGISTER_BACKOFF_MAX_S: Final = 60.0  # ... doubling the wait each time, at most 60 s
RESULT_TIMEOUT_S: Final = 10.0  # no done within 10 s after result: resend the same result
INTERNAL_RETRY_S: Final = 60.0  # error `internal` (retry: true): "register again after a minute"
# Ours, not the protocol's:
GARBAGE_ANSWER_TIMEOUT_S: Final = 10.0  # how long a garbage message waits for its error before the next one
COMEBACK_DELAY_S: Final = 5.0  # a device that died reboots and reconnects after this long
LATE_BY_S: Final = 5.0  # a `late` device reports this long after activate_within_s (real seconds, never scaled)

MqttProtocol = Literal["3.1.1", "5"]
_PROTOCOLS: Final = ("3.1.1", "5")
_TID_HASH_CHARS: Final = 16  # 64 bits of sha256: no collision in any fleet we simulate


class Behaviour(enum.StrEnum):
    """How a simulated device behaves; everything but ``normal`` is a misbehaviour on demand."""

    NORMAL = "normal"
    DIE_MID_ACTIVATION = "die_mid_activation"  # activates with the key, then dies before sending the result
    GARBAGE = "garbage"  # sends malformed messages first (records the errors), then proceeds normally
    RE_REGISTER = "re_register"  # after done, registers again and expects the same done
    LATE = "late"  # holds its result past activate_within_s
    FAIL_ONCE = "fail_once"  # reports its first activation as failed, then registers again
    DUPLICATE = "duplicate"  # sends every message twice


def derive_tid(device_id: str) -> str:
    """The device id when it is a valid topic id, else ``d-`` and 16 hex characters of its SHA-256."""
    if is_valid_tid(device_id):
        return device_id
    return "d-" + hashlib.sha256(device_id.encode()).hexdigest()[:_TID_HASH_CHARS]


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One simulated device: its identity, its MQTT client id/topic id, and how it behaves."""

    device_id: str
    hardware_id: str
    model: str
    tid: str = ""  # empty: derive_tid(device_id)
    behaviour: Behaviour = Behaviour.NORMAL
    protocol: MqttProtocol = "5"
    comeback: bool = False  # die_mid_activation only: reboot after dying and register again as a normal device
    seal: bool = True  # send seal_pub with every register and accept only a sealed key (docs/protocol.md)
    fw: str = "sim-1.0"

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        if not self.tid:
            object.__setattr__(self, "tid", derive_tid(self.device_id))
        if not is_valid_tid(self.tid):
            raise ValueError(f"tid {self.tid!r} is not a valid topic id (docs/protocol.md, 'Topic id')")
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {_PROTOCOLS}, not {self.protocol!r}")
        object.__setattr__(self, "behaviour", Behaviour(self.behaviour))


@dataclass(frozen=True, slots=True)
class Timing:
    """The device's durations: the protocol's, multiplied by ``time_scale`` so tests run fast."""

    time_scale: float = 1.0
    late_by_s: float = LATE_BY_S

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError("time_scale must be > 0")
        if self.late_by_s < 0:
            raise ValueError("late_by_s must be >= 0")

    def scaled(self, seconds: float) -> float:
        """``seconds`` of protocol time in real seconds."""
        return seconds * self.time_scale
