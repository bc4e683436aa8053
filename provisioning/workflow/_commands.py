"""What the workflow asks the runtime to do (commands), and what the runtime answers (outcomes).

A flow (``_line``) is a generator: it yields a command, the runtime performs it and sends back
its outcome, and the flow decides the next step. Every command is one frozen class; the
runtime handles them with ``match`` (exhaustive under mypy). Commands that answer nothing get
``None`` back.

Ordering the runtime must keep: a command's side effect is complete (durable, for the journal
commands) before its outcome is sent back, so "journaled before the key leaves" holds by
construction: ``Save(..., pushed=...)`` always comes before ``PushKey``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

from provisioning.admission import Mint
from provisioning.audit import DetailValue
from provisioning.cloudauth import DeviceInfo, LicenceTerm
from provisioning.protocol import AgentMessage, Key
from provisioning.secret import Secret
from provisioning.workflow._records import DeviceRecord

__all__ = [
    "ChargeRefused",
    "CloudFailure",
    "CloudFailureKind",
    "Command",
    "Complete",
    "Delivery",
    "EndCloudTurn",
    "Flow",
    "Forget",
    "Licences",
    "MintKey",
    "Minted",
    "Note",
    "Outcome",
    "PushKey",
    "ReadDevice",
    "ReadLicences",
    "RecordPush",
    "Save",
    "SaveBookkeeping",
    "Saved",
    "Send",
    "TakeCloudTurn",
    "Turn",
    "Uncharge",
]

# -- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Answer the device at ``tid`` (a transport failure is logged; the device asks again)."""

    tid: str
    message: AgentMessage


@dataclass(frozen=True, slots=True)
class PushKey:
    """Send a key to ``tid``, no later than ``expiry_s`` from now; answered with :class:`Delivery`."""

    tid: str
    message: Key
    expiry_s: int


@dataclass(frozen=True, slots=True)
class Save:
    """Journal ``record`` durably; with ``charge``, count a key against the quotas in the same
    transaction; with ``pushed``, also append the ``pushed`` audit entry of its first push.
    Answered with :class:`Saved`, or :class:`ChargeRefused` when a shared ledger's global limit
    refuses the charge (a single gateway's journal never does)."""

    record: DeviceRecord
    charge: Mint | None = None
    pushed: dict[str, DetailValue] | None = None


@dataclass(frozen=True, slots=True)
class SaveBookkeeping:
    """Journal ``record`` without waiting for the disk: a power cut may undo it, in the device's favour."""

    record: DeviceRecord


@dataclass(frozen=True, slots=True)
class RecordPush:
    """Append a ``pushed`` audit entry for a resend of ``record``'s key, durably, before it leaves."""

    record: DeviceRecord
    detail: dict[str, DetailValue]


@dataclass(frozen=True, slots=True)
class Complete:
    """Journal the activation and queue its upstream report in one transaction."""

    record: DeviceRecord
    report: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete the record of a device that never received a key; give back ``refund`` in the same write.

    One transaction, not an :class:`Uncharge` then a delete: a register the cloud refused costs
    its intent and this, two durable writes instead of three.
    """

    device_id: str
    refund: Mint | None = None


@dataclass(frozen=True, slots=True)
class Uncharge:
    """Give back a quota charge: no key was minted for it."""

    charge: Mint


@dataclass(frozen=True, slots=True)
class TakeCloudTurn:
    """Wait for one of the line's cloud slots (bounded queue); answered with :class:`Turn`."""


@dataclass(frozen=True, slots=True)
class EndCloudTurn:
    """Give the slot back (the runtime also does when the flow ends)."""


@dataclass(frozen=True, slots=True)
class MintKey:
    """CreateAuthKey; answered with :class:`Minted` or :class:`CloudFailure`."""

    device_id: str
    term: LicenceTerm
    biz_type: str


@dataclass(frozen=True, slots=True)
class ReadLicences:
    """DescribeDeviceInfo by UserDeviceId; answered with :class:`Licences` or :class:`CloudFailure`."""

    device_id: str


@dataclass(frozen=True, slots=True)
class ReadDevice:
    """DescribeDeviceInfo by the SDK's DeviceId; answered with :class:`Licences` or :class:`CloudFailure`."""

    sdk_device_id: str


@dataclass(frozen=True, slots=True)
class Note:
    """Count ``event`` (status counters and metrics) and log ``text`` when there is one."""

    event: str
    text: str = ""
    level: int = logging.INFO


Command = (
    Send
    | PushKey
    | Save
    | SaveBookkeeping
    | RecordPush
    | Complete
    | Forget
    | Uncharge
    | TakeCloudTurn
    | EndCloudTurn
    | MintKey
    | ReadLicences
    | ReadDevice
    | Note
)

# -- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """Whether the key left the agent for sure (PUBACK, or the serial peer's ACK)."""

    delivered: bool


@dataclass(frozen=True, slots=True)
class Saved:
    """The write is durable; ``row_id`` is the charge's row when one was written."""

    row_id: int = 0


@dataclass(frozen=True, slots=True)
class ChargeRefused:
    """A shared ledger refused the charge: a global limit was reached by another gateway first."""

    reason: Literal["quota_hour", "quota_day", "quota_sender", "work_order_exhausted"]
    message: str
    retry_after_s: int = 0


@dataclass(frozen=True, slots=True)
class Turn:
    """A cloud slot is held (``granted``), or the queue is full and the device must come back:
    ``position`` is how many devices are ahead of it."""

    granted: bool
    position: int = 0


@dataclass(frozen=True, slots=True)
class Minted:
    """CreateAuthKey's key (a secret: never logged, never journaled)."""

    key: Secret


@dataclass(frozen=True, slots=True)
class Licences:
    """The cloud's records for a DescribeDeviceInfo query."""

    rows: tuple[DeviceInfo, ...] = field(default_factory=tuple)


CloudFailureKind = Literal["not_sent", "maybe_processed", "throttled", "unavailable", "rejected"]


@dataclass(frozen=True, slots=True)
class CloudFailure:
    """A cloud call failed. ``not_sent``: certainly no effect; ``maybe_processed``: it may have
    taken effect (a key may exist); ``throttled``/``unavailable``: a retry later can succeed;
    ``rejected``: a person must act (credentials, quota, parameters)."""

    kind: CloudFailureKind
    code: str
    text: str
    retry_after_s: float | None = None


Outcome = Delivery | Saved | ChargeRefused | Turn | Minted | Licences | CloudFailure | None

Flow = Generator[Command, Outcome, None]
