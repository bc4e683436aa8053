"""Fuzzing the serial link: FrameDecoder (COBS + CRC-32 frames) and LinkEndpoint (handshake, stop-and-wait).

Hostile bytes arrive in any split at any time: valid frames of every type, frames crafted with a
good CRC and bad contents, damaged copies (bit flips, truncation, dropped and duplicated bytes),
garbage between delimiters, runs longer than any frame. The decoder answers exactly what a plain
split at 0x00 says it should; the endpoint never raises, never delivers a damaged frame or the same
DATA twice, and its memory stays bounded however many bytes arrive. Device messages (hostile
mutants of valid ones) carried over a noisy line reach the decoder of docs/protocol.md intact.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.protocol import ErrorReply, encode
from provisioning.serial import (
    MAX_ENCODED,
    MAX_PAYLOAD,
    Event,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameType,
    Hello,
    HelloAck,
    LinkBusy,
    LinkConfig,
    LinkEndpoint,
    MessageReceived,
    MessageTooLarge,
    SendBytes,
    encode_frame,
)
from provisioning.serial._cobs import cobs_encode
from tests.fuzz.hostile import FUZZ_SCALE, check_decode, fuzz_settings, mutate, random_message

SEEDS = st.integers(0, 2**64 - 1)  # hypothesis picks the seed (reproducible), random.Random makes the bulk fast
LINK_TARGET = 20_000 * FUZZ_SCALE  # device messages carried and decoded; with test_fuzz_messages.py over 100,000
MEMORY_BOUND = 2 * 1024 * 1024  # bytes: the decoder holds at most MAX_ENCODED; the rest is one chunk and its events
GARBAGE_BYTES = 10 * 1024 * 1024


# -- frames, good and bad ---------------------------------------------------------------------------


def raw_frame(version: int, type_: int, seq: int, payload: bytes, *, length: int | None = None) -> bytes:
    """Wire bytes with a correct CRC around any header: frames encode_frame refuses to build."""
    body = struct.pack("<BBBH", version, type_, seq, len(payload) if length is None else length) + payload
    body += struct.pack("<I", zlib.crc32(body))
    return b"\x00" + cobs_encode(body) + b"\x00"


def random_hello(rng: random.Random) -> Hello:
    if rng.random() < 0.7:
        return Hello(1, 1, rng.choice((1024, 2048, 4096)), rng.getrandbits(32))
    return Hello(rng.randrange(256), rng.randrange(256), rng.randrange(65536), rng.getrandbits(32))


def device_payload(rng: random.Random) -> bytes:
    """A DATA payload: a mutant of a valid device message (cut to a frame), or arbitrary bytes."""
    if rng.random() < 0.8:
        return mutate(rng, random_message(rng)).payload[:MAX_PAYLOAD]
    return rng.randbytes(rng.choice((0, 1, 16, 300, MAX_PAYLOAD)))


def valid_frame(rng: random.Random, *, echo: int | None = None) -> Frame:
    """A frame of any type that passes every frame-layer check (its payload may still be nonsense)."""
    kind = rng.choice(list(FrameType))
    if kind is FrameType.HELLO:
        payload = random_hello(rng).to_bytes() if rng.random() < 0.9 else rng.randbytes(rng.randrange(16))
        return Frame(kind, 0, payload)
    if kind is FrameType.HELLO_ACK:
        session = echo if echo is not None and rng.random() < 0.6 else rng.getrandbits(32)
        return Frame(kind, 0, HelloAck(random_hello(rng), session, rng.choice((0, 1, 1, 2))).to_bytes())
    if kind is FrameType.DATA:
        return Frame(kind, rng.choice((0, 1, 2, rng.randrange(256))), device_payload(rng))
    return Frame(kind, rng.choice((0, 1, 2, rng.randrange(256))))


def crafted_error(rng: random.Random) -> tuple[bytes, FrameErrorKind]:
    """Bytes between delimiters that are not a frame, and the error the decoder owes them."""
    choice = rng.randrange(7)
    if choice == 0:
        return raw_frame(rng.choice((0, 2, 255)), 3, 0, b"{}"), FrameErrorKind.BAD_VERSION
    if choice == 1:
        return raw_frame(1, rng.choice((0, 5, 0x80, 0xFF)), 0, b""), FrameErrorKind.UNKNOWN_TYPE
    if choice == 2:
        payload = rng.randbytes(rng.randrange(40))
        wrong = rng.choice([n for n in (0, 1, len(payload) + 1, 65535) if n != len(payload)])
        return raw_frame(1, 3, 0, payload, length=wrong), FrameErrorKind.BAD_LENGTH
    if choice == 3:
        return b"\x00" + cobs_encode(rng.randbytes(rng.randint(1, 8))) + b"\x00", FrameErrorKind.TOO_SHORT
    if choice == 4:  # a good CRC around a body longer than any frame: COBS fits the buffer, the body does not
        return raw_frame(1, 3, 0, bytes(rng.randint(MAX_PAYLOAD + 1, MAX_PAYLOAD + 14))), FrameErrorKind.TOO_LONG
    if choice == 5:  # the same, far too long for the buffer: dropped as it streams by
        return raw_frame(1, 3, 0, rng.randbytes(rng.randint(4200, 9000))), FrameErrorKind.TOO_LONG
    return b"\x00" + bytes([rng.randint(3, 255)]) + b"\x01" + b"\x00", FrameErrorKind.BAD_COBS  # a block past the end


def damage(rng: random.Random, data: bytes) -> bytes:
    """What a noisy line or a broken device does to a frame's bytes."""
    out = bytearray(data)
    op = rng.randrange(6)
    if op == 0:
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del out[rng.randint(1, len(out) - 1) :]  # truncated: the next frame's delimiter ends it
    elif op == 2:
        at = rng.randrange(len(out))
        del out[at : at + rng.randint(1, 8)]
    elif op == 3:
        at = rng.randrange(len(out))
        out[at:at] = out[at : at + rng.randint(1, 16)]  # a short run sent twice
    elif op == 4:
        out[rng.randrange(len(out)) :] = out[rng.randrange(len(out)) :]  # spliced with its own tail
    else:
        out.insert(rng.randrange(len(out)), rng.randrange(256))
    return bytes(out)


def garbage(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randint(1, 64))  # a boot banner, line noise
    if choice == 1:
        return b"\x00" * rng.randint(1, 4)  # empty frames
    if choice == 2:
        return bytes(rng.randint(1, 255) for _ in range(rng.randint(1, 32)))  # no delimiter at all
    return b"\x5a" * rng.randint(MAX_ENCODED - 2, 3 * MAX_ENCODED)  # a run longer than any frame


# -- the decoder against a reference split ----------------------------------------------------------


@dataclass
class Stream:
    """A byte stream and what a split at every 0x00 says the decoder must make of it."""

    data: bytearray = field(default_factory=bytearray)
    frames: dict[bytes, Frame] = field(default_factory=dict)  # COBS of a valid body -> the frame
    errors: dict[bytes, FrameErrorKind] = field(default_factory=dict)  # crafted segments -> their error

    def add(self, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.45:
            frame = valid_frame(rng)
            wire = encode_frame(frame)
            self.frames[wire[1:-1]] = frame
            self.data += wire if rng.random() < 0.7 else damage(rng, wire)
        elif roll < 0.65:
            wire, kind = crafted_error(rng)
            self.errors[wire[1:-1]] = kind
            self.data += wire
        else:
            self.data += garbage(rng)

    def expected(self) -> tuple[list[Frame | FrameErrorKind | None], int]:
        """Per segment: its frame, its error kind, or None (some error); and the bytes left buffered."""
        *segments, last = bytes(self.data).split(b"\x00")
        out: list[Frame | FrameErrorKind | None] = []
        for segment in segments:
            if not segment:
                continue  # an empty frame is ignored
            if segment in self.frames:
                out.append(self.frames[segment])
            elif len(segment) > MAX_ENCODED:
                out.append(FrameErrorKind.TOO_LONG)
            else:
                out.append(self.errors.get(segment))
        if len(last) > MAX_ENCODED:
            out.append(FrameErrorKind.TOO_LONG)  # reported when the run overflowed, not at its end
        return out, len(last) if len(last) <= MAX_ENCODED else 0


def feed_in_pieces(rng: random.Random, decoder: FrameDecoder, data: bytes) -> list[Frame | FrameError]:
    out: list[Frame | FrameError] = []
    at = 0
    while at < len(data):
        size = rng.choice((1, 7, 64, 1000, 5000))
        out += decoder.feed(data[at : at + size])
        assert decoder.buffered <= MAX_ENCODED
        at += size
    return out


def check_against_split(stream: Stream, got: list[Frame | FrameError], decoder: FrameDecoder) -> None:
    want, buffered = stream.expected()
    assert len(got) == len(want)
    for item, expected in zip(got, want, strict=True):
        if isinstance(expected, Frame):
            assert item == expected
        else:
            assert isinstance(item, FrameError), f"damaged bytes decoded as {item}"
            assert expected in (None, item.kind), (expected, item.kind)
    assert decoder.buffered == buffered


@fuzz_settings(400, timedelta(seconds=2))
@given(st.lists(st.builds(Frame, st.sampled_from(FrameType), st.integers(0, 255), st.binary(max_size=300))),
       st.randoms(use_true_random=False))  # fmt: skip
def test_frame_decoder_structured(frames: list[Frame], rng: random.Random) -> None:
    """Hypothesis-built frames, some damaged, with garbage between, in random pieces."""
    stream = Stream()
    for frame in frames:
        wire = encode_frame(frame)
        stream.frames[wire[1:-1]] = frame
        stream.data += damage(rng, wire) if rng.random() < 0.3 else wire
        if rng.random() < 0.3:
            stream.data += garbage(rng)
    decoder = FrameDecoder()
    check_against_split(stream, feed_in_pieces(rng, decoder, bytes(stream.data)), decoder)


@pytest.mark.timeout(120 * FUZZ_SCALE)
def test_frame_decoder_bulk() -> None:
    """Every frame type, crafted bad frames, damaged copies, garbage and over-long runs, in random pieces."""
    counted = [0]

    @fuzz_settings(60, timedelta(seconds=20))
    @given(SEEDS)
    def run(seed: int) -> None:
        rng = random.Random(seed)
        stream = Stream()
        for _ in range(150):
            stream.add(rng)
        decoder = FrameDecoder()
        check_against_split(stream, feed_in_pieces(rng, decoder, bytes(stream.data)), decoder)
        counted[0] += 150

    run()
    assert counted[0] >= 60 * 150 * FUZZ_SCALE


# -- LinkEndpoint ----------------------------------------------------------------------------------


def emitted_frames(events: list[Event]) -> list[Frame]:
    """The frames an endpoint wrote: always whole, valid frames, never anything else."""
    items = FrameDecoder().feed(b"".join(e.data for e in events if isinstance(e, SendBytes)))
    assert all(isinstance(item, Frame) for item in items), items
    return [item for item in items if isinstance(item, Frame)]


@dataclass
class HostilePeer:
    """What a hostile device has fed the gateway so far, and what the gateway must not do about it."""

    gateway: LinkEndpoint
    oracle: FrameDecoder = field(default_factory=FrameDecoder)  # the same bytes, to know which frames completed
    last_delivered: int | None = None  # seq of the DATA delivered last since the last handshake frame
    handshakes: int = 0  # intact HELLO/HELLO_ACK frames fed: without one the link cannot be up
    delivered: int = 0

    def feed(self, data: bytes, now: float) -> None:
        events = self.gateway.receive_bytes(data, now)
        intact = [item for item in self.oracle.feed(data) if isinstance(item, Frame)]
        data_frames = [f for f in intact if f.type is FrameType.DATA]
        sent = emitted_frames(events)
        acks = [f.seq for f in sent if f.type is FrameType.ACK]
        assert len(acks) <= len(data_frames), "an ACK for a frame that did not arrive intact"
        assert {f.type for f in sent} <= {FrameType.ACK, FrameType.HELLO_ACK, FrameType.DATA}
        received = [e.payload for e in events if isinstance(e, MessageReceived)]
        unmatched = list(received)
        for frame in intact:  # attribute each delivery to the next intact DATA frame that may deliver it
            if frame.type in (FrameType.HELLO, FrameType.HELLO_ACK):
                self.handshakes += 1
                self.last_delivered = None  # a handshake may restart the numbering
            elif frame.type is FrameType.DATA and unmatched[:1] == [frame.payload] and frame.seq != self.last_delivered:
                # (the same seq as the last delivery, with no handshake between, is a repeat: never delivered)
                assert self.handshakes, "delivered a message before any handshake frame arrived"
                assert frame.seq in acks, "delivered without acknowledging"
                unmatched.pop(0)
                self.last_delivered = frame.seq
        assert not unmatched, "delivered a damaged frame's payload, or the same DATA twice"
        for payload in received:
            check_decode(payload)  # what the daemon does next with it: an answer, never an exception
        self.delivered += len(received)
        assert self.gateway.buffered <= MAX_ENCODED
        assert self.gateway.pending <= self.gateway.config.max_queued


def hostile_chunks(rng: random.Random, gateway: LinkEndpoint) -> Iterator[bytes]:
    """Frames of every kind, in pieces: sometimes one whole frame per read, sometimes a split or a batch."""
    last_data = b""
    while True:
        roll = rng.random()
        if roll < 0.5:
            frame = valid_frame(rng, echo=gateway.session)
            wire = encode_frame(frame)
            if frame.type is FrameType.DATA:
                last_data = wire
        elif roll < 0.6 and last_data:
            wire = last_data  # the same DATA again: a lost ACK, or a replay
        elif roll < 0.75:
            wire = damage(rng, encode_frame(valid_frame(rng, echo=gateway.session)))
        elif roll < 0.85:
            wire, _ = crafted_error(rng)
        else:
            wire = garbage(rng)
        if rng.random() < 0.7:
            yield wire
        else:
            at = rng.randrange(len(wire) + 1)
            yield wire[:at]
            yield wire[at:]


@pytest.mark.timeout(120 * FUZZ_SCALE)
def test_link_endpoint_against_a_hostile_peer() -> None:
    """Any frames at any time, timers running, the gateway sending: no exception, no damaged or double delivery."""
    totals = [0, 0]

    @fuzz_settings(60, timedelta(seconds=20))
    @given(SEEDS)
    def run(seed: int) -> None:
        rng = random.Random(seed)
        config = LinkConfig(max_payload=rng.choice((1024, 4096)))
        peer = HostilePeer(LinkEndpoint(config, new_session=lambda: rng.getrandbits(32)))
        now = 0.0
        chunks = hostile_chunks(rng, peer.gateway)
        for _ in range(300):
            peer.feed(next(chunks), now)
            now += rng.choice((0.0, 0.0, 0.001, 0.3, 1.1, 61.0))
            if rng.random() < 0.5:
                emitted_frames(peer.gateway.tick(now))
            if rng.random() < 0.1:
                try_send(peer.gateway, rng, now)
            totals[0] += 1
        totals[1] += peer.delivered

    run()
    assert totals[0] >= 60 * 300 * FUZZ_SCALE
    assert totals[1] >= 1000 * FUZZ_SCALE, "the hostile peer rarely got a message through: the fuzz is too weak"


def try_send(endpoint: LinkEndpoint, rng: random.Random, now: float) -> None:
    """The gateway answering: only the two documented refusals may come back."""
    payload = rng.randbytes(rng.choice((10, 300, 2000, 4096, 4097)))
    limit = endpoint.max_payload or MAX_PAYLOAD
    busy = endpoint.pending >= endpoint.config.max_queued
    try:
        emitted_frames(endpoint.send_message(payload, now))
    except MessageTooLarge:
        assert len(payload) > limit
    except LinkBusy:
        assert busy
    else:
        assert len(payload) <= limit
        assert not busy


# -- device messages over a noisy line --------------------------------------------------------------


@dataclass
class Wire:
    """One direction of a UART that damages some writes: FIFO, so nothing arrives out of order."""

    rng: random.Random
    noise: float
    pending: bytearray = field(default_factory=bytearray)

    def write(self, data: bytes) -> None:
        roll = self.rng.random()
        if roll >= self.noise:
            self.pending += data
        elif roll < self.noise * 0.2:
            pass  # lost whole
        elif roll < self.noise * 0.4:
            self.pending += data + data  # written twice in a row
        elif roll < self.noise * 0.6:
            self.pending += garbage(self.rng)[:64] + data
        else:
            self.pending += damage(self.rng, data)

    def read(self) -> bytes:
        size = len(self.pending) if self.rng.random() < 0.8 else self.rng.choice((1, 13, 200))  # split reads too
        data = bytes(self.pending[:size])
        del self.pending[:size]
        return data


@dataclass
class Side:
    endpoint: LinkEndpoint
    sent: dict[bytes, int] = field(default_factory=dict)  # payload -> its position in the sending order
    received: list[bytes] = field(default_factory=list)

    def handle(self, events: list[Event], out: Wire, on_message: Callable[[bytes], None]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                out.write(event.data)
            elif isinstance(event, MessageReceived):
                self.received.append(event.payload)
                on_message(event.payload)


def check_delivery(sender: Side, receiver: Side) -> None:
    """Only what was sent, intact, each at most once, in the order sent."""
    order = [sender.sent[payload] for payload in receiver.received]  # KeyError: a damaged payload got through
    assert order == sorted(set(order)), "a message was delivered twice or out of order"


@pytest.mark.timeout(180 * FUZZ_SCALE)
def test_device_messages_over_a_noisy_line() -> None:
    """Mutants of valid device messages, device to gateway over a damaging line; each delivered one is decoded."""
    totals = [0, 0]

    @fuzz_settings(LINK_TARGET // 250, timedelta(seconds=30))
    @given(SEEDS)
    def run(seed: int) -> None:
        rng = random.Random(seed)
        gateway = Side(LinkEndpoint(LinkConfig(), new_session=lambda: rng.getrandbits(32)))
        device = Side(LinkEndpoint(LinkConfig(), new_session=lambda: rng.getrandbits(32)))
        to_gateway, to_device = Wire(rng, rng.choice((0.0, 0.05, 0.3))), Wire(rng, rng.choice((0.0, 0.05, 0.3)))
        plan: list[tuple[bytes, str | None]] = []
        while len(plan) < 300:
            mutant = mutate(rng, random_message(rng))
            if len(mutant.payload) <= MAX_PAYLOAD and mutant.payload not in device.sent:
                device.sent[mutant.payload] = len(plan)
                plan.append((mutant.payload, mutant.expect))
        expect = dict(plan)

        def answer(payload: bytes) -> None:  # the gateway decodes and answers every message, as the daemon does
            code = check_decode(payload, expect[payload])
            reply = encode(ErrorReply(None, None, "malformed", f"answer {len(gateway.received)}: {code}"))
            gateway.sent[reply] = len(gateway.sent)
            try:
                gateway.handle(gateway.endpoint.send_message(reply, now), to_device, lambda _: None)
            except LinkBusy:
                del gateway.sent[reply]  # documented back-pressure: the daemon logs and drops it

        now, queued = 0.0, 0
        for _ in range(5000):
            while queued < len(plan) and device.endpoint.pending < device.endpoint.config.max_queued:
                device.handle(device.endpoint.send_message(plan[queued][0], now), to_gateway, lambda _: None)
                queued += 1
            gateway.handle(gateway.endpoint.receive_bytes(to_gateway.read(), now), to_device, answer)
            device.handle(device.endpoint.receive_bytes(to_device.read(), now), to_gateway, lambda _: None)
            now += rng.choice((0.0, 0.01, 0.05, 0.6))
            for side, out, on_message in ((gateway, to_device, answer), (device, to_gateway, lambda _: None)):
                deadline = side.endpoint.next_deadline()
                if deadline is not None and deadline <= now:
                    side.handle(side.endpoint.tick(now), out, on_message)
            if queued == len(plan) and device.endpoint.pending == 0 and not to_gateway.pending:
                break
        check_delivery(device, gateway)
        check_delivery(gateway, device)
        totals[0] += len(gateway.received)
        totals[1] += len(plan)

    run()
    assert totals[0] >= LINK_TARGET, f"{totals[0]} of {totals[1]} device messages delivered and decoded"


# -- bounded memory ----------------------------------------------------------------------------------


def peak_while(feed: Callable[[bytes, float], object], chunks: Iterator[bytes]) -> tuple[int, int]:
    """Traced peak allocation while ``feed`` takes every chunk; and the bytes fed."""
    fed, now = 0, 0.0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for chunk in chunks:
            feed(chunk, now)
            fed += len(chunk)
            now += 0.05
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, fed


def random_garbage(seed: int, total: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(total // 65536):
        yield rng.randbytes(65536)


def without_delimiters(total: int) -> Iterator[bytes]:
    for _ in range(total // 65536):
        yield b"\x5a" * 65536


def frame_flood(seed: int, total: int) -> Iterator[bytes]:
    """Valid frames only: HELLOs of ever new sessions (each a reset) and DATA with fresh seqs (each delivered)."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        chunk = bytearray()
        while len(chunk) < 65536:
            if rng.random() < 0.2:
                chunk += encode_frame(Frame(FrameType.HELLO, 0, Hello(1, 1, 4096, rng.getrandbits(32)).to_bytes()))
            else:
                chunk += encode_frame(Frame(FrameType.DATA, rng.randrange(256), rng.randbytes(rng.randint(1, 1024))))
        sent += len(chunk)
        yield bytes(chunk)


@pytest.mark.timeout(180 * FUZZ_SCALE)
@pytest.mark.parametrize("target", ["decoder", "endpoint"])
def test_memory_stays_bounded(target: str) -> None:
    """10 MB of garbage, 2 MB without a delimiter, 2 MB of valid frames: peak memory stays under the bound."""
    if target == "decoder":
        decoder = FrameDecoder()

        def feed(data: bytes, now: float) -> object:
            items = decoder.feed(data)
            assert decoder.buffered <= MAX_ENCODED
            return items
    else:
        endpoint = LinkEndpoint(new_session=lambda: 7)

        def feed(data: bytes, now: float) -> object:
            events = endpoint.receive_bytes(data, now)
            endpoint.tick(now)
            assert endpoint.buffered <= MAX_ENCODED
            return events

    for name, chunks, size in (
        ("random garbage", random_garbage(1, GARBAGE_BYTES * FUZZ_SCALE), GARBAGE_BYTES),
        ("no delimiter", without_delimiters(2 * 1024 * 1024 * FUZZ_SCALE), 2 * 1024 * 1024),
        ("valid frames", frame_flood(2, 2 * 1024 * 1024 * FUZZ_SCALE), 2 * 1024 * 1024),
    ):
        peak, fed = peak_while(feed, chunks)
        assert fed >= size * FUZZ_SCALE
        assert peak < MEMORY_BOUND, f"{name}: peak {peak} bytes after {fed} bytes fed"
