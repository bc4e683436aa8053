"""Errors of the serial link core.

Only caller mistakes and back-pressure are exceptions; what the line and the peer do (noise,
silence, a restart) arrives as events (``Failed``, ``MessageDropped``)::

    SerialLinkError         root; ``retryable`` says which half an error is in
    ├── MessageTooLarge     a payload over 4096 bytes or over the peer's declared limit (a person fixes the sender)
    └── LinkBusy            the send queue is full; nothing was queued (retry once messages are acknowledged)
"""

from __future__ import annotations

__all__ = ["LinkBusy", "MessageTooLarge", "SerialLinkError"]


class SerialLinkError(Exception):
    """Root of every error the serial link core raises."""

    retryable = False


class MessageTooLarge(SerialLinkError, ValueError):
    """The payload does not fit in one DATA frame the peer accepts."""


class LinkBusy(SerialLinkError):
    """Too many messages already wait for the link; this one was not queued."""

    retryable = True
