"""A hardware profile's admission rules (its ``[admission]`` table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["IDENTITY_MODES", "SIGNATURE_MODES", "Identity", "Rules", "SignatureMode"]

SignatureMode = Literal["none", "work_order", "factory_ca"]
SIGNATURE_MODES: Final[tuple[SignatureMode, ...]] = get_args(SignatureMode)
# Over MQTT, "topic": a device id is admitted only on its own topic id (or one a work order maps it
# to); "claimed": any id on any topic (the old behaviour, an explicit opt-in).
Identity = Literal["topic", "claimed"]
IDENTITY_MODES: Final[tuple[Identity, ...]] = get_args(Identity)


@dataclass(frozen=True, slots=True)
class Rules:
    """Who of one model may get a key; the defaults admit every device of the model (subject to the line's quotas)."""

    allow: tuple[str, ...] = ()  # fnmatch patterns of device_id (case-sensitive)
    work_orders: bool = False  # devices listed in a work order for this model are admitted
    signature: SignatureMode = "none"
    ca_keys: tuple[bytes, ...] = ()  # factory CA public keys, raw Ed25519 (32 bytes each)
    per_hour: int = 0  # keys this model may get in any rolling hour on this gateway; 0: no profile limit
    per_day: int = 0  # ... in any rolling 24 hours
    identity: Identity = "topic"  # who may claim a device id over MQTT (see Identity)

    @property
    def allow_list(self) -> bool:
        """Whether only listed devices are admitted (by a pattern or a work order)."""
        return bool(self.allow) or self.work_orders
