"""The serial frame codec: COBS, CRC, layout, the streaming decoder, and the spec's test vectors."""

from __future__ import annotations

import pathlib
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.serial import (
    MAX_ENCODED,
    MAX_PAYLOAD,
    MAX_WIRE,
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
from provisioning.serial._cobs import cobs_decode, cobs_encode, cobs_max_encoded
from provisioning.serial._frames import MAX_BODY

DOC = pathlib.Path(__file__).parents[2] / "docs" / "protocol.md"

# The spec's test vectors (docs/protocol.md, "Serial link"); test_doc_vectors checks the document says the same.
REGISTER = b'{"v":1,"type":"register","id":"r1","device_id":"SN1","hardware_id":"ab12","model":"m1"}'
VECTORS = {
    "HELLO": (
        Frame(FrameType.HELLO, 0, Hello(1, 1, 4096, 0x12345678).to_bytes()),
        "00 03 01 01 02 08 03 01 01 0a 10 78 56 34 12 fa 57 84 de 00",
    ),
    "HELLO_ACK": (
        Frame(FrameType.HELLO_ACK, 0, HelloAck(Hello(1, 1, 4096, 0x9ABCDEF0), 0x12345678, 1).to_bytes()),
        "00 03 01 02 02 0d 03 01 01 0f 10 f0 de bc 9a 78 56 34 12 01 59 ce fa 14 00",
    ),
    "DATA": (
        Frame(FrameType.DATA, 0, REGISTER),
        "00 03 01 03 02 57 5c 7b 22 76 22 3a 31 2c 22 74 79 70 65 22 3a 22 72 65 67 69 73 74 65 72 22 2c 22 69 64 "
        "22 3a 22 72 31 22 2c 22 64 65 76 69 63 65 5f 69 64 22 3a 22 53 4e 31 22 2c 22 68 61 72 64 77 61 72 65 5f "
        "69 64 22 3a 22 61 62 31 32 22 2c 22 6d 6f 64 65 6c 22 3a 22 6d 31 22 7d 88 d7 5d b9 00",
    ),
    "ACK": (Frame(FrameType.ACK, 0), "00 03 01 04 01 01 05 fa 49 20 74 00"),
}

seeds = st.integers(0, 2**64 - 1)  # bulk inputs come from random.Random(seed): hypothesis drives, Random is fast
small_frames = st.builds(Frame, st.sampled_from(FrameType), st.integers(0, 255), st.binary(max_size=40))


def fast(examples: int) -> settings:
    """Many examples, no deadline (CI machines vary), no example database in the work tree."""
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_all(data: bytes) -> list[Frame | FrameError]:
    return FrameDecoder().feed(data)


# -- COBS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [  # the examples of the COBS article (Wikipedia), which firmware COBS libraries reproduce
        ("00", "01 01"),
        ("00 00", "01 01 01"),
        ("00 11 00", "01 02 11 01"),
        ("11 22 00 33", "03 11 22 02 33"),
        ("11 22 33 44", "05 11 22 33 44"),
        ("11 00 00 00", "02 11 01 01 01"),
        ("", "01"),
    ],
)
def test_cobs_known_encodings(raw: str, encoded: str) -> None:
    assert cobs_encode(bytes.fromhex(raw)) == bytes.fromhex(encoded)
    assert cobs_decode(bytes.fromhex(encoded)) == bytes.fromhex(raw)


def test_cobs_full_blocks() -> None:
    run = bytes(range(1, 255))  # 254 non-zero bytes: one 0xFF block, no empty block after it
    assert cobs_encode(run) == b"\xff" + run
    assert cobs_encode(b"\x00" + run + b"\xff") == b"\x01\xff" + run + b"\x02\xff"
    assert cobs_decode(b"\xff" + run + b"\x01") == run  # the variant some encoders write
    assert cobs_encode(run + b"\x00") == b"\xff" + run + b"\x01\x01"


@pytest.mark.parametrize("bad", ["02", "05 11 22", "03 11 00 22", "00", "ff 01"])
def test_cobs_rejects(bad: str) -> None:
    assert cobs_decode(bytes.fromhex(bad)) is None


@fast(300)
@given(st.binary(max_size=600))
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= cobs_max_encoded(len(data))
    assert cobs_decode(encoded) == data


@fast(500)
@given(seeds)
def test_cobs_round_trip_bulk(seed: int) -> None:
    """20 inputs per example, zero-heavy and zero-free shapes included."""
    rnd = random.Random(seed)
    for _ in range(20):
        size = rnd.choice([rnd.randrange(10), rnd.randrange(1200), 254, 255, 508])
        data = rnd.randbytes(size).translate(
            rnd.choice([*_ALPHABETS, _alphabet(b"\x01"), _alphabet(bytes(range(1, 256)))])
        )
        encoded = cobs_encode(data)
        assert 0 not in encoded
        assert len(encoded) <= cobs_max_encoded(len(data))
        assert cobs_decode(encoded) == data


# -- CRC and layout ---------------------------------------------------------------------------------


def test_crc32_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926


@pytest.mark.parametrize("name", list(VECTORS))
def test_vectors(name: str) -> None:
    frame, wire = VECTORS[name]
    assert encode_frame(frame).hex(" ") == wire
    assert _decode_all(bytes.fromhex(wire)) == [frame]


def test_doc_vectors() -> None:
    """docs/protocol.md shows the same bytes as the code produces, under a heading naming each frame."""
    section = DOC.read_text(encoding="utf-8").split("## Serial link", 1)[1]
    for name, (_, wire) in VECTORS.items():
        match = re.search(rf"\*\*{name}\*\*.*?```\n([0-9a-f \n]+)```", section, re.DOTALL)
        assert match is not None, f"no {name} vector in the spec"
        assert match.group(1).split() == wire.split(), name


def test_vector_payloads_parse() -> None:
    hello = Hello.from_bytes(VECTORS["HELLO"][0].payload)
    ack = HelloAck.from_bytes(VECTORS["HELLO_ACK"][0].payload)
    assert hello == Hello(1, 1, 4096, 0x12345678)
    assert ack is not None
    assert (ack.hello.session, ack.echo, ack.version) == (0x9ABCDEF0, 0x12345678, 1)


def test_hello_limits() -> None:
    assert Hello.from_bytes(Hello(1, 1, 4096, 7).to_bytes() + b"future") == Hello(1, 1, 4096, 7)
    assert Hello.from_bytes(Hello(1, 1, 4096, 7).to_bytes()[:-1]) is None
    assert Hello.from_bytes(Hello(2, 1, 4096, 7).to_bytes()) is None  # min above max
    assert Hello.from_bytes(Hello(0, 1, 4096, 7).to_bytes()) is None
    assert Hello.from_bytes(Hello(1, 1, 100, 7).to_bytes()) is None  # below MIN_PAYLOAD
    assert HelloAck.from_bytes(b"\x01" * 12) is None


def test_encode_refuses() -> None:
    with pytest.raises(ValueError, match="at most 4096"):
        encode_frame(Frame(FrameType.DATA, 0, bytes(MAX_PAYLOAD + 1)))
    with pytest.raises(ValueError, match="seq"):
        encode_frame(Frame(FrameType.DATA, 256))


def test_largest_frame() -> None:
    worst = encode_frame(Frame(FrameType.DATA, 255, b"\xff" * MAX_PAYLOAD))  # no zeros: most COBS blocks
    assert len(worst) <= MAX_WIRE
    assert MAX_BODY == 4105
    assert MAX_ENCODED == 4122
    assert _decode_all(worst) == [Frame(FrameType.DATA, 255, b"\xff" * MAX_PAYLOAD)]


# -- the decoder ------------------------------------------------------------------------------------


def _body(frame_bytes: bytes) -> bytes:
    """The decoded body of one encoded frame."""
    body = cobs_decode(frame_bytes.strip(b"\x00"))
    assert body is not None
    return body


def _wire(body: bytes) -> bytes:
    return b"\x00" + cobs_encode(body) + b"\x00"


def test_decoder_errors() -> None:
    good = _body(encode_frame(Frame(FrameType.DATA, 3, b"hi")))
    with_crc = bytearray(good)
    cases = {
        FrameErrorKind.BAD_COBS: b"\x00\x05\x11\x22\x00",
        FrameErrorKind.TOO_SHORT: _wire(b"\x01\x03\x00\x00"),
        FrameErrorKind.BAD_CRC: _wire(good[:-1] + bytes([good[-1] ^ 1])),
    }
    for kind, header in [
        (FrameErrorKind.BAD_VERSION, b"\x02\x03\x03\x02\x00"),
        (FrameErrorKind.UNKNOWN_TYPE, b"\x01\x09\x03\x02\x00"),
        (FrameErrorKind.BAD_LENGTH, b"\x01\x03\x03\x05\x00"),
    ]:
        with_crc[:5] = header
        body = bytes(with_crc[:-4])
        cases[kind] = _wire(body + crc32(body).to_bytes(4, "little"))
    for kind, wire in cases.items():
        assert _decode_all(wire) == [FrameError(kind, len(wire.strip(b"\x00")))], kind


def test_decoder_too_long_streams_by() -> None:
    decoder = FrameDecoder()
    out: list[Frame | FrameError] = []
    for _ in range(100):  # 100 x 1000 bytes, no delimiter
        out += decoder.feed(b"\x55" * 1000)
        assert decoder.buffered <= MAX_ENCODED
    assert out == [FrameError(FrameErrorKind.TOO_LONG, 5000)]
    frame = Frame(FrameType.ACK, 9)
    assert decoder.feed(encode_frame(frame)) == [frame]  # the leading 00 ends the run
    assert decoder.buffered == 0


def test_decoder_oversized_body() -> None:
    payload = (b"\x41" * 99 + b"\x00") * 41  # 4100 bytes; zeros keep the COBS overhead at one byte
    body = b"\x01\x03\x00" + len(payload).to_bytes(2, "little") + payload
    wire = _wire(body + crc32(body).to_bytes(4, "little"))
    assert len(wire) - 2 <= MAX_ENCODED  # fits the buffer, but says more than a frame may carry
    assert _decode_all(wire) == [FrameError(FrameErrorKind.TOO_LONG, len(wire) - 2)]


def test_decoder_resynchronises() -> None:
    frame = Frame(FrameType.DATA, 7, b'{"v":1}')
    banner = b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x13\r\n"  # an ESP32 boot banner
    *errors, last = _decode_all(banner + encode_frame(frame))  # the frame's leading 00 ends the banner
    assert last == frame
    assert all(isinstance(item, FrameError) for item in errors)
    assert _decode_all(b"\x00" * 50 + encode_frame(frame) + b"\x00" * 50) == [frame]  # empty frames are ignored
    out = _decode_all(b"\x01\x02\x00" + encode_frame(frame))
    assert out == [FrameError(FrameErrorKind.BAD_COBS, 2), frame]


@fast(300)
@given(st.lists(small_frames, min_size=1, max_size=4), st.lists(st.integers(1, 64), min_size=1))
def test_round_trip_any_split(items: list[Frame], steps: list[int]) -> None:
    wire = b"".join(encode_frame(f) for f in items)
    decoder = FrameDecoder()
    out: list[Frame | FrameError] = []
    i = 0
    while i < len(wire):
        step = steps[i % len(steps)]
        out += decoder.feed(wire[i : i + step])
        i += step
    assert out == items
    assert decoder.buffered == 0


@fast(500)
@given(seeds)
def test_round_trip_bulk(seed: int) -> None:
    """10 streams of 1-4 frames per example, up to the largest, fed in random splits."""
    rnd = random.Random(seed)
    for _ in range(10):
        items = [_random_frame(rnd) for _ in range(rnd.randint(1, 4))]
        wire = b"".join(encode_frame(f) for f in items)
        decoder = FrameDecoder()
        out: list[Frame | FrameError] = []
        i = 0
        while i < len(wire):
            step = rnd.choice([1, 2, 7, 64, 700, 5000])
            out += decoder.feed(wire[i : i + step])
            i += step
        assert out == items
        assert decoder.buffered == 0


@fast(300)
@given(st.binary(max_size=400), st.integers(1, 500))
def test_decoder_survives_garbage(data: bytes, chunk: int) -> None:
    """Any bytes, any split: no exception, the buffer stays bounded, only errors (no frame) come out."""
    decoder = FrameDecoder()
    for i in range(0, len(data), chunk):
        assert not any(isinstance(item, Frame) for item in decoder.feed(data[i : i + chunk]))
        assert decoder.buffered <= MAX_ENCODED


@fast(1000)
@given(seeds)
def test_decoder_survives_garbage_bulk(seed: int) -> None:
    """50 garbage inputs per example, up to 20 kB each (long runs, zero floods, cut frames), through one decoder."""
    rnd = random.Random(seed)
    decoder = FrameDecoder()
    for _ in range(50):
        data = _random_garbage(rnd)
        chunk = rnd.choice([1, 5, 100] if len(data) < 200 else [100, 4096, 30000])
        for i in range(0, len(data), chunk):
            # A random frame passes CRC-32 with chance 2**-32: none in any sane run.
            assert not any(isinstance(item, Frame) for item in decoder.feed(data[i : i + chunk]))
            assert decoder.buffered <= MAX_ENCODED


@fast(1000)
@given(seeds)
def test_corruption_never_yields_a_new_frame(seed: int) -> None:
    """Bit flips, drops, duplication, truncation, insertion: what decodes is one of the frames sent, never another."""
    rnd = random.Random(seed)
    for _ in range(20):
        items = [_random_frame(rnd) for _ in range(rnd.randint(1, 3))]
        wire = _corrupt(b"".join(encode_frame(f) for f in items), rnd)
        for item in _decode_all(wire):
            if isinstance(item, Frame):
                assert item in items


@fast(500)
@given(seeds)
def test_every_single_and_double_bit_flip_is_caught(seed: int) -> None:
    """One or two flipped bits never pass.

    In a data byte CRC-32 catches them for certain (Hamming distance 4 up to 91607 bits, past the largest
    frame); a flip in a COBS code byte moves a zero or splits the frame, which the length and the CRC catch.
    """
    rnd = random.Random(seed)
    for _ in range(20):
        wire = bytearray(encode_frame(_random_frame(rnd)))
        for bit in rnd.sample(range(8, len(wire) * 8 - 8), rnd.randint(1, 2)):  # delimiters excluded
            wire[bit // 8] ^= 1 << (bit % 8)
        assert not any(isinstance(item, Frame) for item in _decode_all(bytes(wire)))


# -- the spec's MCU algorithms, transcribed ----------------------------------------------------------


def _spec_decode(stream: bytes, size: int = MAX_BODY) -> list[bytes]:
    """The byte-by-byte COBS decoder of docs/protocol.md, line for line: the bodies it hands over."""
    bodies: list[bytes] = []
    body = bytearray()
    code_left, first, skipping, last_code = 0, True, False, 0
    for b in stream:
        if b == 0:
            if not skipping and not first and code_left == 0:
                bodies.append(bytes(body))
            body.clear()
            code_left, first, skipping = 0, True, False
            continue
        if skipping:
            continue
        if code_left == 0:
            if not first and last_code != 0xFF:
                skipping = _put(body, 0, size)
            first, last_code, code_left = False, b, b - 1
        else:
            skipping = _put(body, b, size)
            code_left -= 1
    return bodies


def _put(body: bytearray, byte: int, size: int) -> bool:
    """The spec's put(): True (skip to the next 0x00) when the body is full."""
    if len(body) == size:
        return True
    body.append(byte)
    return False


def _spec_crc32(data: bytes) -> int:
    """The bitwise C routine of docs/protocol.md, with C's 32-bit unsigned arithmetic."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & (-(crc & 1) & 0xFFFFFFFF))
    return ~crc & 0xFFFFFFFF


def test_spec_decoder_limits() -> None:
    frame = encode_frame(Frame(FrameType.ACK, 1))
    assert _spec_decode(b"\x55" * 5000 + frame) == [_body(frame)]  # too long: dropped up to the frame's 00
    assert _spec_decode(b"\x00\x00" + frame + b"\x00") == [_body(frame)]  # empty frames: nothing


def test_spec_crc_routine() -> None:
    assert _spec_crc32(b"123456789") == 0xCBF43926
    assert all(_spec_crc32(data) == crc32(data) for data in [b"", b"\x00", REGISTER, bytes(range(256))])


@fast(300)
@given(seeds)
def test_spec_decoder_agrees(seed: int) -> None:
    """The firmware's byte-by-byte decoder and ours see the same frames in clean and in noisy streams."""
    rnd = random.Random(seed)
    for _ in range(5):
        items = [_random_frame(rnd) for _ in range(rnd.randint(1, 3))]
        if rnd.random() < 0.5:
            items = [f for f in items if len(f.payload) < 600]  # the spec decoder is slow in Python
        clean = b"".join(encode_frame(f) for f in items)
        assert [_body(encode_frame(f)) for f in items] == _spec_decode(clean)
        noisy = _corrupt(clean, rnd) if rnd.random() < 0.7 else _random_garbage(rnd)[:3000]
        ours = [item for item in _decode_all(noisy) if isinstance(item, Frame)]
        theirs = [b for b in _spec_decode(noisy) if len(b) >= 9 and crc32(b[:-4]) == int.from_bytes(b[-4:], "little")]
        assert [_body(encode_frame(f)) for f in ours] == theirs


# -- helpers ----------------------------------------------------------------------------------------


def _random_frame(rnd: random.Random) -> Frame:
    table = rnd.choice(_ALPHABETS)
    largest = 600 if table in _ALPHABETS[:2] else MAX_PAYLOAD  # zero-heavy payloads cost Python time per zero
    size = rnd.choice([0, 1, 2, rnd.randrange(300), rnd.randrange(largest + 1), largest])
    return Frame(rnd.choice(list(FrameType)), rnd.randrange(256), rnd.randbytes(size).translate(table))


def _alphabet(symbols: bytes) -> bytes:
    """A bytes.translate table mapping every byte onto ``symbols`` (fast random text over a small alphabet)."""
    return bytes(symbols[i % len(symbols)] for i in range(256))


_ALPHABETS = [_alphabet(b"\x00"), _alphabet(b"\x00\x01\xff"), bytes(range(256)), _alphabet(b'{"v":1,"id":"x"}')]


def _random_garbage(rnd: random.Random) -> bytes:
    shape = rnd.randrange(5)
    if shape == 0:
        return rnd.randbytes(rnd.randrange(300))
    if shape == 1:
        return rnd.randbytes(rnd.randrange(4000, 20000))  # longer than any frame
    if shape == 2:
        return rnd.randbytes(rnd.randrange(600)).translate(_alphabet(b"\x00\x01\x02\x03\xff"))
    if shape == 3:
        return rnd.randbytes(rnd.randint(1, 8)) * rnd.randint(1, 3000)  # repeated patterns, zero floods
    # A frame cut short, then noise whose first byte is not the one cut (else it, or the next input, could mend it).
    wire = encode_frame(_random_frame(rnd))
    cut = rnd.randint(2, 8)
    noise = bytearray(rnd.randbytes(rnd.randint(1, 40)))
    if noise[0] == wire[-cut]:
        noise[0] ^= 0x80
    return wire[:-cut] + bytes(noise)


def _corrupt(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.choice(["flip", "drop", "dup", "cut", "insert"])
        if not out:
            break
        i = rnd.randrange(len(out))
        if op == "flip":
            out[i] ^= 1 << rnd.randrange(8)
        elif op == "drop":
            del out[i]
        elif op == "dup":
            out[i:i] = out[i : i + rnd.randint(1, 8)]
        elif op == "cut":
            del out[i : i + rnd.randint(1, 64)]
        else:
            out[i:i] = rnd.randbytes(rnd.randint(1, 16))
    return bytes(out)
