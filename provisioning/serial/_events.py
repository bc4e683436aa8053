"""What a :class:`~provisioning.serial.LinkEndpoint` returns: the events, and the reasons they carry."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DropReason",
    "Event",
    "Failed",
    "FailureReason",
    "LinkUp",
    "MessageAcked",
    "MessageDropped",
    "MessageReceived",
    "SendBytes",
]


class FailureReason(enum.StrEnum):
    """Why the link reported a failure."""

    NO_ANSWER = "no_answer"  # HELLOs unanswered: no peer, a dead peer, or a wrong baud rate
    NO_ACK = "no_ack"  # a DATA frame was never acknowledged: the peer died or the line is too noisy
    VERSION_MISMATCH = "version_mismatch"  # no link version in common: a person must update one side

    @property
    def retryable(self) -> bool:
        """A later attempt may succeed without anyone acting (the endpoint keeps trying anyway)."""
        return self is not FailureReason.VERSION_MISMATCH


class DropReason(enum.StrEnum):
    """Why a queued message will not be delivered."""

    LINK_FAILED = "link_failed"  # the link failed (Failed event); the peer may or may not have it
    PEER_RESTARTED = "peer_restarted"  # it was in flight when the peer restarted; the peer may or may not have it
    EXPIRED = "expired"  # its expiry passed before it was acknowledged
    TOO_LARGE_FOR_PEER = "too_large_for_peer"  # longer than the limit the peer declared in its HELLO


@dataclass(frozen=True, slots=True)
class SendBytes:
    """Write these bytes to the port, in order with every other SendBytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The handshake completed (again, with a new ``peer_session``, after the peer restarted)."""

    version: int
    max_payload: int  # the smaller of both sides' limits: the largest DATA payload either way
    peer_session: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A protocol message from the peer, intact, delivered once."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class MessageAcked:
    """The peer acknowledged this message of ours."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """This message of ours will not be sent (again); ``reason`` says whether the peer may have it."""

    payload: bytes
    reason: DropReason


@dataclass(frozen=True, slots=True)
class Failed:
    """The link failed or cannot come up; the endpoint goes on trying (HELLO every interval)."""

    reason: FailureReason
    detail: str


Event = SendBytes | LinkUp | MessageReceived | MessageAcked | MessageDropped | Failed
