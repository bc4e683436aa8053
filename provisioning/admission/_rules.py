"""A hardware profile's admission rules (its ``[admission]`` table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["IDENTITY_MODES", "SIGNATURE_MODES", "IdentityMode", "Rules", "SignatureMode"]

SignatureMode = Literal["none", "work_order", "factory_ca"]
SIGNATURE_MODES: Final[tuple[SignatureMode, ...]] = get_args(SignatureMode)
# Who an MQTT register may speak for: "topic", only the device whose id is its topic id (the broker
# login on a secured broker) or that a work order maps to it; "claimed", any id it claims.
IdentityMode = Literal["topic", "claimed"]
IDENTITY_MODES: Final[tuple[IdentityMode, ...]] = get_args(IdentityMode)


@dataclass(frozen=True, slots=True)
class Rules:
    """Who of one model may get a key; the defaults admit every device of the model (subject to the line's quotas)."""

    allow: tuple[str, ...] = ()  # fnmatch patterns of device_id (case-sensitive)
    work_orders: bool = False  # devices listed in a work order for this model are admitted
    signature: SignatureMode = "none"
    ca_keys: tuple[bytes, ...] = ()  # factory CA public keys, raw Ed25519 (32 bytes each)
    per_hour: int = 0  # keys this model may get in any rolling hour on this gateway; 0: no profile limit
    per_day: int = 0  # ... in any rolling 24 hours
    identity: IdentityMode = "topic"
    line_share: int = 1  # this model's weight in the line's quota: that part is reserved for it (0: none)

    @property
    def allow_list(self) -> bool:
        """Whether only listed devices are admitted (by a pattern or a work order)."""
        return bool(self.allow) or self.work_orders
