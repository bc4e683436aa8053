"""Serial link frames (docs/protocol.md, "Serial link"): layout, CRC, COBS, and a streaming decoder.

How it works
------------
A frame's *body* is a 5-byte header, the payload and a CRC-32, little-endian throughout::

    offset  size  field
    0       1     version   link version (1); HELLO and HELLO_ACK always say 1
    1       1     type      HELLO 0x01, HELLO_ACK 0x02, DATA 0x03, ACK 0x04
    2       1     seq       DATA: 0..255, +1 per new message; ACK: the DATA seq it answers; else 0
    3       2     length    payload bytes, 0..4096
    5       n     payload   DATA: one protocol message (JSON); HELLO/HELLO_ACK: see below; ACK: empty
    5+n     4     crc       CRC-32/ISO-HDLC of bytes 0..5+n-1

On the wire a frame is ``00 COBS(body) 00``. COBS removes every 0x00 from the body, so 0x00
only ever marks a frame boundary: a receiver that loses its place (noise, a reboot, a boot
banner) is back in step at the next 0x00, and empty frames (``00 00``) are ignored.

:class:`FrameDecoder` keeps only the encoded bytes since the last 0x00, at most
:data:`MAX_ENCODED`; a longer run is dropped as it streams by (one ``TOO_LONG`` error), so
garbage of any length costs bounded memory. Checks run in this order: COBS, size, CRC, version,
type, length, so noise shows up as ``BAD_CRC`` rather than as an unknown version.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from provisioning.protocol import MAX_MESSAGE_BYTES
from provisioning.serial._cobs import cobs_decode, cobs_encode, cobs_max_encoded

__all__ = [
    "CRC_SIZE",
    "HEADER_SIZE",
    "HELLO_ACK_SIZE",
    "HELLO_SIZE",
    "LINK_VERSION",
    "MAX_BODY",
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "MAX_WIRE",
    "MIN_PAYLOAD",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameErrorKind",
    "FrameType",
    "Hello",
    "HelloAck",
    "crc32",
    "encode_frame",
]

LINK_VERSION: Final = 1  # the only link version this code speaks
MAX_PAYLOAD: Final = MAX_MESSAGE_BYTES  # one DATA frame carries one whole protocol message, 4096 bytes at most
MIN_PAYLOAD: Final = 1024  # the smallest receive limit a HELLO may declare: every common answer fits, a key is ~300 B
HEADER_SIZE: Final = 5  # version, type, seq, length (u16)
CRC_SIZE: Final = 4  # CRC-32
MAX_BODY: Final = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 4105: the decoded frame an MCU buffers
MAX_ENCODED: Final = cobs_max_encoded(MAX_BODY)  # 4122: the decoder's buffer bound
MAX_WIRE: Final = MAX_ENCODED + 2  # 4124: with both 0x00 delimiters, 358 ms at 115200 baud

_HEADER = struct.Struct("<BBBH")
_CRC = struct.Struct("<I")
_HELLO = struct.Struct("<BBHI")  # min_version, max_version, max_payload, session
_HELLO_ACK = struct.Struct("<BBHIIB")  # the answerer's HELLO fields, then echo (the HELLO's session), version
HELLO_SIZE: Final = _HELLO.size  # 8
HELLO_ACK_SIZE: Final = _HELLO_ACK.size  # 13


class FrameType(enum.IntEnum):
    """The frame's ``type`` byte."""

    HELLO = 0x01  # "I (re)started": supported versions, receive limit, session
    HELLO_ACK = 0x02  # the answer to a HELLO: the answerer's own fields and the chosen version
    DATA = 0x03  # one protocol message
    ACK = 0x04  # the DATA with this seq arrived intact


class FrameErrorKind(enum.StrEnum):
    """Why bytes between two 0x00 delimiters are not a frame."""

    TOO_LONG = "too_long"  # longer than the largest frame: dropped as it streamed by
    BAD_COBS = "bad_cobs"  # a COBS block runs past the delimiter
    TOO_SHORT = "too_short"  # shorter than a header and a CRC
    BAD_CRC = "bad_crc"  # the CRC does not match: noise
    BAD_VERSION = "bad_version"  # the CRC matches but the version is not 1
    UNKNOWN_TYPE = "unknown_type"  # the CRC matches but the type is not one of ours
    BAD_LENGTH = "bad_length"  # the length field disagrees with the bytes received


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded (or to be encoded) frame."""

    type: FrameType
    seq: int
    payload: bytes = b""
    version: int = LINK_VERSION


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that were dropped, and why; ``size`` is how many encoded bytes (at least) it covered."""

    kind: FrameErrorKind
    size: int


@dataclass(frozen=True, slots=True)
class Hello:
    """The payload of a HELLO: what the sender speaks and accepts, and who it is this time."""

    min_version: int
    max_version: int
    max_payload: int  # the largest DATA payload the sender accepts
    session: int  # random u32, new at every (re)start of the sender's link

    def to_bytes(self) -> bytes:
        """The 8-byte payload."""
        return _HELLO.pack(self.min_version, self.max_version, self.max_payload, self.session)

    @classmethod
    def from_bytes(cls, payload: bytes) -> Hello | None:
        """Parse a HELLO payload; None when it is malformed (extra trailing bytes are ignored)."""
        if len(payload) < _HELLO.size:
            return None
        hello = cls(*_HELLO.unpack_from(payload))
        return hello if hello.is_valid() else None

    def is_valid(self) -> bool:
        """Versions in order and non-zero, and a receive limit within the protocol's bounds."""
        return 1 <= self.min_version <= self.max_version and MIN_PAYLOAD <= self.max_payload <= MAX_PAYLOAD


@dataclass(frozen=True, slots=True)
class HelloAck:
    """The payload of a HELLO_ACK: the answerer's HELLO fields, the session answered, the chosen version."""

    hello: Hello  # the answerer's own versions, limit and session
    echo: int  # the session of the HELLO this answers
    version: int  # the chosen version; 0 when the two sides have none in common

    def to_bytes(self) -> bytes:
        """The 13-byte payload."""
        h = self.hello
        return _HELLO_ACK.pack(h.min_version, h.max_version, h.max_payload, h.session, self.echo, self.version)

    @classmethod
    def from_bytes(cls, payload: bytes) -> HelloAck | None:
        """Parse a HELLO_ACK payload; None when it is malformed (extra trailing bytes are ignored)."""
        if len(payload) < _HELLO_ACK.size:
            return None
        min_v, max_v, max_payload, session, echo, version = _HELLO_ACK.unpack_from(payload)
        hello = Hello(min_v, max_v, max_payload, session)
        return cls(hello, echo, version) if hello.is_valid() else None


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (zlib, Ethernet): poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of ``frame``: ``00 COBS(header payload crc) 00``."""
    if not 0 <= frame.seq <= 0xFF:
        raise ValueError(f"seq {frame.seq} is not a byte")
    if not 0 <= frame.version <= 0xFF:
        raise ValueError(f"version {frame.version} is not a byte")
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload is {len(frame.payload)} bytes; a frame carries at most {MAX_PAYLOAD}")
    body = _HEADER.pack(frame.version, frame.type, frame.seq, len(frame.payload)) + frame.payload
    body += _CRC.pack(crc32(body))
    return b"\x00" + cobs_encode(body) + b"\x00"


class FrameDecoder:
    """Bytes in, frames and errors out; resynchronises at every 0x00 and never holds more than MAX_ENCODED."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long run: drop everything up to the next 0x00

    @property
    def buffered(self) -> int:
        """Encoded bytes held, waiting for their delimiter (never more than MAX_ENCODED)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Take bytes as they arrive (any split); return what completed, in order."""
        out: list[Frame | FrameError] = []
        start, n = 0, len(data)
        while start < n:
            end = data.find(0, start)
            if end < 0:
                self._take(data[start:], out)
                break
            self._take(data[start:end], out)
            if self._discarding:
                self._discarding = False
            elif self._buffer:
                out.append(_parse(bytes(self._buffer)))
                self._buffer.clear()
            start = end + 1
        return out

    def _take(self, chunk: bytes, out: list[Frame | FrameError]) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buffer) + len(chunk) > MAX_ENCODED:
            out.append(FrameError(FrameErrorKind.TOO_LONG, len(self._buffer) + len(chunk)))
            self._buffer.clear()
            self._discarding = True
            return
        self._buffer += chunk


def _parse(encoded: bytes) -> Frame | FrameError:
    size = len(encoded)
    body = cobs_decode(encoded)
    if body is None:
        return FrameError(FrameErrorKind.BAD_COBS, size)
    if len(body) < HEADER_SIZE + CRC_SIZE:
        return FrameError(FrameErrorKind.TOO_SHORT, size)
    if len(body) > MAX_BODY:
        return FrameError(FrameErrorKind.TOO_LONG, size)
    (crc,) = _CRC.unpack_from(body, len(body) - CRC_SIZE)
    if crc32(body[:-CRC_SIZE]) != crc:
        return FrameError(FrameErrorKind.BAD_CRC, size)
    version, type_, seq, length = _HEADER.unpack_from(body)
    if version != LINK_VERSION:
        return FrameError(FrameErrorKind.BAD_VERSION, size)
    if type_ not in _TYPES:
        return FrameError(FrameErrorKind.UNKNOWN_TYPE, size)
    payload = body[HEADER_SIZE:-CRC_SIZE]
    if length != len(payload):
        return FrameError(FrameErrorKind.BAD_LENGTH, size)
    return Frame(FrameType(type_), seq, payload, version)


_TYPES: Final = frozenset(int(t) for t in FrameType)
