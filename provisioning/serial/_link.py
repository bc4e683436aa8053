"""One side of one serial link as a sans-I/O state machine: bytes and the time in, events out.

How it works
------------
The driver owns the port and the clock. It feeds what it reads and the current time in, writes
every ``SendBytes`` out in order, and calls ``tick`` whenever ``next_deadline`` passes::

    receive_bytes(data, now) -> events      bytes read from the port (any split, garbage included)
    send_message(payload, now) -> events    queue one protocol message (JSON, <= 4096 bytes)
    tick(now) -> events                     timers: HELLO, retransmission, expiry; call once to start
    next_deadline() -> float | None         when tick wants to run next

    SendBytes(data)  LinkUp(version, ...)  MessageReceived(payload)  MessageAcked(payload)
    MessageDropped(payload, reason)  Failed(reason, detail)

Both ends run the same machine; there is no master. States::

    CONNECTING --HELLO from a new peer session (answered with HELLO_ACK)-------> UP
    CONNECTING --HELLO_ACK echoing our session------------------------------> UP
    UP --HELLO from a new peer session (the peer restarted)-------------------> UP (numbering reset)
    UP --DATA unacknowledged after max_tries----------------------> Failed(no_ack), CONNECTING (new session)
    CONNECTING --hello_tries HELLOs unanswered----------------> Failed(no_answer) once, HELLO goes on
    any --no link version in common------------------------> Failed(version_mismatch) once, CONNECTING

CONNECTING sends a HELLO every ``hello_interval_s``. Every start (and every restart after a
failure) picks a new random session: a HELLO carrying a session already known is a resend and
is answered again without touching the link, a new one means the peer (re)started, so both
sides restart numbering (tx seq 0, nothing received yet).

UP is stop-and-wait in each direction: one DATA in flight, resent every
``ack_timeout_s`` + its airtime until an ACK with its seq arrives. A DATA whose seq equals the
last one delivered is a resend (our ACK was lost): acknowledged again, not delivered twice.
Anything else is new, so a sender may skip a seq (an expired message) without stalling.
Every ``send_message`` ends in exactly one ``MessageAcked`` or ``MessageDropped``: messages
arrive at most once, in order, and exactly once while the link stays up.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from provisioning.serial._errors import LinkBusy, MessageTooLarge
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
    MAX_PAYLOAD,
    MIN_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    FrameType,
    Hello,
    HelloAck,
    encode_frame,
)

__all__ = [
    "ACK_TIMEOUT_S",
    "BITS_PER_BYTE",
    "DATA_MAX_TRIES",
    "DEFAULT_BAUDRATE",
    "HELLO_INTERVAL_S",
    "HELLO_TRIES",
    "MAX_QUEUED",
    "MESSAGE_TTL_S",
    "LinkConfig",
    "LinkEndpoint",
    "LinkState",
    "LinkStats",
    "random_session",
]

DEFAULT_BAUDRATE: Final = 115200  # 8N1; every USB-UART bridge and MCU UART runs it error-free at common clocks
BITS_PER_BYTE: Final = 10  # 8N1 on the wire: start bit, 8 data bits, stop bit
ACK_TIMEOUT_S: Final = 0.5  # beyond airtime: a busy MCU main loop, a flash write, USB-serial latency (FTDI 16 ms)
DATA_MAX_TRIES: Final = 10  # a line losing half its frames fails falsely 1 in 1000; ~5-9 s, under the device's 10 s
HELLO_INTERVAL_S: Final = 1.0  # a booting peer hears us within a second; ~20 bytes/s on an idle port
HELLO_TRIES: Final = 5  # 5 s of silence (past any boot banner) before a port reports that nobody answers
MESSAGE_TTL_S: Final = 60.0  # a message queued longer is stale: the device's backoff (<= 60 s) has asked again
MAX_QUEUED: Final = 8  # messages waiting per link, in flight included; one device has few answers outstanding

_ACK_WIRE: Final = len(encode_frame(Frame(FrameType.ACK, 0)))  # 12 bytes


class LinkState(enum.Enum):
    """Where the link is (see the module docstring)."""

    CONNECTING = "connecting"  # sending HELLO until a peer answers
    UP = "up"  # versions agreed; DATA flows both ways


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Timing and limits of one endpoint; the defaults are the protocol's (docs/protocol.md)."""

    baudrate: int = DEFAULT_BAUDRATE
    ack_timeout_s: float = ACK_TIMEOUT_S
    max_tries: int = DATA_MAX_TRIES
    hello_interval_s: float = HELLO_INTERVAL_S
    hello_tries: int = HELLO_TRIES
    message_ttl_s: float = MESSAGE_TTL_S
    max_queued: int = MAX_QUEUED
    max_payload: int = MAX_PAYLOAD  # the largest DATA payload this side accepts (declared in HELLO)
    min_version: int = LINK_VERSION
    max_version: int = LINK_VERSION

    def __post_init__(self) -> None:
        if self.baudrate <= 0 or self.ack_timeout_s <= 0 or self.hello_interval_s <= 0 or self.message_ttl_s <= 0:
            raise ValueError("baud rate and durations must be positive")
        if self.max_tries < 1 or self.hello_tries < 1 or self.max_queued < 1:
            raise ValueError("max_tries, hello_tries and max_queued must be at least 1")
        if not MIN_PAYLOAD <= self.max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be within {MIN_PAYLOAD}..{MAX_PAYLOAD}")
        if not 1 <= self.min_version <= self.max_version <= 0xFF:
            raise ValueError("versions must satisfy 1 <= min_version <= max_version <= 255")

    def airtime_s(self, size: int) -> float:
        """Seconds ``size`` bytes take on the wire."""
        return size * BITS_PER_BYTE / self.baudrate


@dataclass(slots=True)
class LinkStats:
    """Counters for the gateway's status and logs."""

    bytes_received: int = 0
    frames_received: int = 0  # frames that passed every check
    frames_sent: int = 0
    crc_errors: int = 0
    framing_errors: dict[FrameErrorKind, int] = field(default_factory=dict)  # every other decoder error
    ignored_frames: int = 0  # valid frames out of place: stale ACKs and HELLO_ACKs, DATA before the handshake
    retransmissions: int = 0
    duplicates: int = 0  # DATA received again after a lost ACK: acknowledged, not delivered twice


def random_session() -> int:
    """A random u32 session id."""
    return secrets.randbits(32)


@dataclass(slots=True)
class _Outgoing:
    payload: bytes
    expires_at: float
    seq: int = 0
    tries: int = 0
    deadline: float = 0.0


class LinkEndpoint:
    """One end of a serial link (gateway or device alike): framing, handshake, stop-and-wait ARQ."""

    def __init__(self, config: LinkConfig | None = None, *, new_session: Callable[[], int] = random_session) -> None:
        self.config = config or LinkConfig()
        self.stats = LinkStats()
        self._new_session = new_session
        self._decoder = FrameDecoder()
        self._state = LinkState.CONNECTING
        self._session = new_session() & 0xFFFFFFFF
        self._peer_session: int | None = None
        self._version = 0
        self._max_payload = 0
        self._tx_seq = 0
        self._rx_last: int | None = None
        self._inflight: _Outgoing | None = None
        self._queue: deque[_Outgoing] = deque()
        self._hello_due = -math.inf  # the first tick sends the first HELLO
        self._hello_tries = 0
        self._reported = False  # a Failed was reported since the link was last up

    @property
    def state(self) -> LinkState:
        """CONNECTING or UP."""
        return self._state

    @property
    def version(self) -> int | None:
        """The agreed link version while UP."""
        return self._version if self._state is LinkState.UP else None

    @property
    def max_payload(self) -> int | None:
        """The agreed largest DATA payload while UP."""
        return self._max_payload if self._state is LinkState.UP else None

    @property
    def session(self) -> int:
        """Our current session id (new at every restart)."""
        return self._session

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged or dropped, the one in flight included."""
        return len(self._queue) + (self._inflight is not None)

    @property
    def buffered(self) -> int:
        """Bytes the decoder holds (bounded by MAX_ENCODED)."""
        return self._decoder.buffered

    def next_deadline(self) -> float | None:
        """When ``tick`` should run next (``-inf`` before the first tick); None when no timer runs."""
        times = [item.expires_at for item in self._queue]
        if self._state is LinkState.CONNECTING:
            times.append(self._hello_due)
        elif self._inflight is not None:
            times.append(self._inflight.deadline)
        return min(times) if times else None

    def send_message(self, payload: bytes, now: float, *, expires_at: float | None = None) -> list[Event]:
        """Queue one message for the peer; it goes out when the link is up and the previous one is acknowledged."""
        limit = self._max_payload if self._state is LinkState.UP else MAX_PAYLOAD
        if len(payload) > limit:
            raise MessageTooLarge(f"message is {len(payload)} bytes; the link carries at most {limit}")
        if self.pending >= self.config.max_queued:
            raise LinkBusy(f"{self.pending} messages already wait for the link")
        deadline = now + self.config.message_ttl_s if expires_at is None else expires_at
        self._queue.append(_Outgoing(bytes(payload), deadline))
        return self._send_next(now)

    def receive_bytes(self, data: bytes, now: float) -> list[Event]:
        """Bytes read from the port; returns what they caused."""
        self.stats.bytes_received += len(data)
        events: list[Event] = []
        for item in self._decoder.feed(data):
            if isinstance(item, FrameError):
                if item.kind is FrameErrorKind.BAD_CRC:
                    self.stats.crc_errors += 1
                else:
                    self.stats.framing_errors[item.kind] = self.stats.framing_errors.get(item.kind, 0) + 1
                continue
            self.stats.frames_received += 1
            if item.type is FrameType.HELLO:
                events += self._on_hello(item, now)
            elif item.type is FrameType.HELLO_ACK:
                events += self._on_hello_ack(item, now)
            elif item.type is FrameType.DATA:
                events += self._on_data(item)
            else:
                events += self._on_ack(item, now)
        return events

    def tick(self, now: float) -> list[Event]:
        """Run the timers that are due: HELLO, retransmission or failure, expiry."""
        events = self._expire_queued(now)
        if self._state is LinkState.CONNECTING:
            if now >= self._hello_due:
                events += self._hello(now)
            return events
        inflight = self._inflight
        if inflight is None or now < inflight.deadline:
            return events
        if now >= inflight.expires_at:
            self._inflight = None
            events.append(MessageDropped(inflight.payload, DropReason.EXPIRED))
            return events + self._send_next(now)
        if inflight.tries >= self.config.max_tries:
            detail = f"DATA seq {inflight.seq} unacknowledged after {inflight.tries} tries"
            return events + self._fail(FailureReason.NO_ACK, detail, now)
        self.stats.retransmissions += 1
        return [*events, self._transmit(inflight, now)]

    # -- frames ---------------------------------------------------------------------------------

    def _on_hello(self, frame: Frame, now: float) -> list[Event]:
        hello = Hello.from_bytes(frame.payload)
        if hello is None:
            self.stats.ignored_frames += 1
            return []
        version = self._choose(hello)
        answer = SendBytes(self._frame(FrameType.HELLO_ACK, 0, HelloAck(self._hello_fields(), hello.session, version)))
        if version == 0:
            return [answer, *self._mismatch(hello, now)]
        if self._state is LinkState.UP and hello.session == self._peer_session:
            return [answer]  # a resend: our HELLO_ACK was lost or is still on its way
        return [answer, *self._up(version, hello, now)]

    def _on_hello_ack(self, frame: Frame, now: float) -> list[Event]:
        ack = HelloAck.from_bytes(frame.payload)
        if ack is None or ack.echo != self._session:
            self.stats.ignored_frames += 1  # malformed, or answers a HELLO of an earlier session
            return []
        if not self._speaks(ack.version) or not ack.hello.min_version <= ack.version <= ack.hello.max_version:
            return self._mismatch(ack.hello, now)
        if self._state is LinkState.UP and ack.hello.session == self._peer_session:
            self.stats.ignored_frames += 1  # we went up on the peer's own HELLO already
            return []
        return self._up(ack.version, ack.hello, now)

    def _on_data(self, frame: Frame) -> list[Event]:
        if self._state is not LinkState.UP or len(frame.payload) > self._max_payload:
            self.stats.ignored_frames += 1  # not acknowledged: the peer resends once we are up (or fails)
            return []
        ack = SendBytes(self._frame(FrameType.ACK, frame.seq))
        if frame.seq == self._rx_last:
            self.stats.duplicates += 1
            return [ack]
        self._rx_last = frame.seq
        return [ack, MessageReceived(frame.payload)]

    def _on_ack(self, frame: Frame, now: float) -> list[Event]:
        inflight = self._inflight
        if self._state is not LinkState.UP or inflight is None or frame.seq != inflight.seq:
            self.stats.ignored_frames += 1  # a second ACK for a resent frame, or one from before a restart
            return []
        self._inflight = None
        return [MessageAcked(inflight.payload), *self._send_next(now)]

    # -- transitions ----------------------------------------------------------------------------

    def _up(self, version: int, peer: Hello, now: float) -> list[Event]:
        events: list[Event] = []
        if self._inflight is not None:  # the peer restarted with our message in flight: it may or may not have it
            events.append(MessageDropped(self._inflight.payload, DropReason.PEER_RESTARTED))
            self._inflight = None
        self._state = LinkState.UP
        self._version = version
        self._max_payload = min(self.config.max_payload, peer.max_payload)
        self._peer_session = peer.session
        self._tx_seq = 0
        self._rx_last = None
        self._reported = False
        events.append(LinkUp(version, self._max_payload, peer.session))
        return events + self._send_next(now)

    def _mismatch(self, peer: Hello, now: float) -> list[Event]:
        events: list[Event] = []
        if self._state is LinkState.UP:  # the peer came back speaking other versions
            events += self._drop_all(DropReason.PEER_RESTARTED, queued=False)
            self._down(now)
        if not self._reported:
            self._reported = True
            ours, theirs = (self.config.min_version, self.config.max_version), (peer.min_version, peer.max_version)
            events.append(
                Failed(FailureReason.VERSION_MISMATCH, f"peer speaks link versions {_span(theirs)}, we {_span(ours)}")
            )
        return events

    def _fail(self, reason: FailureReason, detail: str, now: float) -> list[Event]:
        events: list[Event] = [Failed(reason, detail), *self._drop_all(DropReason.LINK_FAILED, queued=True)]
        self._reported = True
        self._session = self._fresh_session()
        self._down(now)
        return events + self._hello(now)

    def _down(self, now: float) -> None:
        self._state = LinkState.CONNECTING
        self._peer_session = None
        self._version = self._max_payload = 0
        self._hello_tries = 0
        self._hello_due = now + self.config.hello_interval_s

    def _hello(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self._hello_tries >= self.config.hello_tries and not self._reported:
            self._reported = True
            waited = self._hello_tries * self.config.hello_interval_s
            events.append(Failed(FailureReason.NO_ANSWER, f"no answer to {self._hello_tries} HELLOs in {waited:g} s"))
        self._hello_tries += 1
        self._hello_due = now + self.config.hello_interval_s
        events.append(SendBytes(self._frame(FrameType.HELLO, 0, self._hello_fields())))
        return events

    def _send_next(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self._state is not LinkState.UP or self._inflight is not None:
            return events
        while self._queue:
            item = self._queue.popleft()
            if now >= item.expires_at:
                events.append(MessageDropped(item.payload, DropReason.EXPIRED))
            elif len(item.payload) > self._max_payload:
                events.append(MessageDropped(item.payload, DropReason.TOO_LARGE_FOR_PEER))
            else:
                item.seq, self._tx_seq = self._tx_seq, (self._tx_seq + 1) & 0xFF
                self._inflight = item
                events.append(self._transmit(item, now))
                break
        return events

    def _transmit(self, item: _Outgoing, now: float) -> SendBytes:
        data = encode_frame(Frame(FrameType.DATA, item.seq, item.payload))
        item.tries += 1
        item.deadline = now + self.config.airtime_s(len(data) + _ACK_WIRE) + self.config.ack_timeout_s
        self.stats.frames_sent += 1
        return SendBytes(data)

    def _expire_queued(self, now: float) -> list[Event]:
        expired = [item for item in self._queue if now >= item.expires_at]
        for item in expired:
            self._queue.remove(item)
        return [MessageDropped(item.payload, DropReason.EXPIRED) for item in expired]

    def _drop_all(self, reason: DropReason, *, queued: bool) -> list[Event]:
        items = [self._inflight] if self._inflight is not None else []
        self._inflight = None
        if queued:
            items += self._queue
            self._queue.clear()
        return [MessageDropped(item.payload, reason) for item in items]

    # -- helpers --------------------------------------------------------------------------------

    def _hello_fields(self) -> Hello:
        cfg = self.config
        return Hello(cfg.min_version, cfg.max_version, cfg.max_payload, self._session)

    def _choose(self, peer: Hello) -> int:
        high = min(self.config.max_version, peer.max_version)
        return high if high >= max(self.config.min_version, peer.min_version) else 0

    def _frame(self, type_: FrameType, seq: int, body: Hello | HelloAck | None = None) -> bytes:
        if type_ is not FrameType.DATA:
            self.stats.frames_sent += 1
        return encode_frame(Frame(type_, seq, body.to_bytes() if body is not None else b""))

    def _speaks(self, version: int) -> bool:
        return self.config.min_version <= version <= self.config.max_version

    def _fresh_session(self) -> int:
        session = self._new_session() & 0xFFFFFFFF
        return session ^ 1 if session == self._session else session  # the peer must see a new session


def _span(versions: tuple[int, int]) -> str:
    low, high = versions
    return str(low) if low == high else f"{low}..{high}"
