"""The serial link (docs/protocol.md, "Serial link"): device protocol messages over a UART, sans-I/O.

Frames are COBS-encoded between 0x00 delimiters and checked by CRC-32 (:mod:`._frames`); a
:class:`LinkEndpoint` runs the handshake and stop-and-wait retransmission for one side of one
link (:mod:`._link`). Neither touches a port or a clock: the caller passes bytes and the time in
and writes out the bytes that come back.
"""

from provisioning.serial._errors import LinkBusy, MessageTooLarge, SerialLinkError
from provisioning.serial._events import (
    DropReason,
    Event,
    Failed,
    FailureReason,
    LinkUp,
    MessageAcked,
    MessageDropped,
    MessageReceived,
    SendBytes,
)
from provisioning.serial._frames import (
    LINK_VERSION,
    MAX_ENCODED,
    MAX_PAYLOAD,
    MAX_WIRE,
    MIN_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameType,
    Hello,
    HelloAck,
    crc32,
    encode_frame,
)
from provisioning.serial._link import (
    ACK_TIMEOUT_S,
    BITS_PER_BYTE,
    DATA_MAX_TRIES,
    DEFAULT_BAUDRATE,
    HELLO_INTERVAL_S,
    HELLO_TRIES,
    MAX_QUEUED,
    MESSAGE_TTL_S,
    LinkConfig,
    LinkEndpoint,
    LinkState,
    LinkStats,
)

__all__ = [
    "ACK_TIMEOUT_S",
    "BITS_PER_BYTE",
    "DATA_MAX_TRIES",
    "DEFAULT_BAUDRATE",
    "HELLO_INTERVAL_S",
    "HELLO_TRIES",
    "LINK_VERSION",
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "MAX_QUEUED",
    "MAX_WIRE",
    "MESSAGE_TTL_S",
    "MIN_PAYLOAD",
    "DropReason",
    "Event",
    "Failed",
    "FailureReason",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameErrorKind",
    "FrameType",
    "Hello",
    "HelloAck",
    "LinkBusy",
    "LinkConfig",
    "LinkEndpoint",
    "LinkState",
    "LinkStats",
    "LinkUp",
    "MessageAcked",
    "MessageDropped",
    "MessageReceived",
    "MessageTooLarge",
    "SendBytes",
    "SerialLinkError",
    "crc32",
    "encode_frame",
]
