"""Consistent Overhead Byte Stuffing (Cheshire and Baker, 1999): frames with no 0x00 inside.

Each block is a code byte ``n`` (1..255) followed by ``n - 1`` data bytes; a block with a code
below 0xFF stands for its data followed by one 0x00, except the last block of a frame (the
trailing zero is implied by the delimiter, not data). 0xFF blocks carry 254 bytes and no zero.
The encoder writes the canonical form (no empty block after a final 0xFF block); the decoder
also accepts the common variant that writes one.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COBS_BLOCK", "cobs_decode", "cobs_encode", "cobs_max_encoded"]

COBS_BLOCK: Final = 254  # data bytes in a full block (code 0xFF)


def cobs_encode(data: bytes) -> bytes:
    """The COBS encoding of ``data``: no 0x00 in it, at most ``cobs_max_encoded(len(data))`` bytes."""
    out = bytearray()
    pieces = data.split(b"\x00")
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        start = 0
        while len(piece) - start >= COBS_BLOCK:
            out.append(0xFF)
            out += piece[start : start + COBS_BLOCK]
            start += COBS_BLOCK
        rest = piece[start:]
        if rest or start == 0 or index != last:  # canonical: no empty block after a final full one
            out.append(len(rest) + 1)
            out += rest
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """The bytes ``data`` encodes, or None when it is not valid COBS (a 0x00, a block past the end)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        block = data[i + 1 : end]
        if 0 in block:
            return None
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def cobs_max_encoded(size: int) -> int:
    """The longest COBS encoding of ``size`` bytes (one code byte per started 254-byte block)."""
    return size + size // COBS_BLOCK + 1
