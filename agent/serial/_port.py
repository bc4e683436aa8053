"""One serial port driven by the event loop: its link layer (provisioning.serial.LinkEndpoint) and its I/O.

How it works
------------
A port with a file descriptor (a tty, a pty, ``socket://``) is read and written on the event
loop itself: the loop wakes when bytes arrive (``add_reader``), the link's timers are one
``call_later`` handle re-armed at ``next_deadline()``, and writes go straight to the
non-blocking descriptor. A frame costs one ``read`` and no thread hand-off, so an answer leaves
the moment the device service hands it over, even while the loop is busy with other ports.

A port stays independent of the others: nothing on it blocks. A device that stops reading
fills the kernel's buffer, then a bounded backlog (``BACKLOG_MAX``); past that, whole writes are
dropped with a warning and the link's retransmissions fail it as a dead line.

Opening (which can block: an ``rfc2217://`` negotiation, a TCP connect) runs in a worker
thread. A port without a descriptor (``rfc2217://`` reads through pyserial's own thread) keeps
a small poller thread for its I/O only; its link still runs on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import serial

from agent.serial._discovery import PortCandidate
from provisioning.serial import (
    DropReason,
    Event,
    LinkBusy,
    LinkConfig,
    LinkEndpoint,
    MessageDropped,
    MessageTooLarge,
    SendBytes,
)

__all__ = ["PortClosed", "PortEvent", "PortWorker"]

log = logging.getLogger("agent.serial")

URL_POLL_S: Final = 0.02  # ports without a file descriptor (some pyserial URLs) are polled this often
WRITE_TIMEOUT_S: Final = 2.0  # such a port's blocking write waits no longer than this for a device that stopped reading
READ_SIZE: Final = 4096  # one read takes what is there; a UART at 115200 delivers ~12 bytes a millisecond
BACKLOG_MAX: Final = 16384  # bytes waiting for a device that stopped reading: four of the largest frames


@dataclass(frozen=True, slots=True)
class PortClosed:
    """The port is gone (unplugged, I/O error) or could not be opened; ``opened`` says which."""

    reason: str
    opened: bool


PortEvent = Event | PortClosed
EventSink = Callable[["PortWorker", PortEvent], None]  # runs on the event loop


class PortWorker:
    """One open port and its link endpoint, on the event loop (see the module docstring)."""

    def __init__(
        self, candidate: PortCandidate, link: LinkConfig, loop: asyncio.AbstractEventLoop, sink: EventSink
    ) -> None:
        self.candidate = candidate
        self.endpoint = LinkEndpoint(link)
        self._loop = loop
        self._sink = sink
        self._port: serial.SerialBase | None = None
        self._fd: int | None = None  # None: the poller thread does the I/O
        self._backlog = bytearray()  # written bytes the descriptor had no room for yet
        self._backlog_warned = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._poll_out: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._closing = threading.Event()  # stop asked, or the port failed
        self._closed = threading.Event()  # the port is closed (or never opened)
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        """Open the port in a worker thread; the link starts on the loop once it is open (call on the loop)."""
        opening = self._loop.run_in_executor(None, self._open)
        opening.add_done_callback(self._opened)

    def send(self, payload: bytes, expires_at: float | None) -> None:
        """Queue a message for the device (``expires_at`` on the monotonic clock); call on the loop."""
        if self._closing.is_set():
            self._later(MessageDropped(payload, DropReason.LINK_FAILED))
            return
        now = time.monotonic()
        events: list[Event]
        if expires_at is not None and expires_at <= now:
            events = [MessageDropped(payload, DropReason.EXPIRED)]
        else:
            try:
                events = self.endpoint.send_message(payload, now, expires_at=expires_at)
            except (LinkBusy, MessageTooLarge) as exc:
                log.warning("port %s: message not sent: %s", self.candidate.identity, exc)
                events = [MessageDropped(payload, DropReason.LINK_FAILED)]
        for event in events:  # the caller is inside the transport: its events come after it returns
            if isinstance(event, SendBytes):
                self._write(event.data)
            else:
                self._later(event)
        self._arm()

    def stop(self, timeout: float = 3.0) -> None:
        """Close the port; from another thread, wait up to ``timeout`` for it to be closed."""
        self._closing.set()
        if self._on_loop_thread() or not self._loop.is_running():
            self._shut()
            return
        try:
            self._loop.call_soon_threadsafe(self._shut)
        except RuntimeError:  # the loop closed meanwhile
            self._shut()
        self._closed.wait(timeout)

    @property
    def alive(self) -> bool:
        return not self._closed.is_set()

    # -- opening and closing (on the loop unless said) ---------------------------------------------

    def _open(self) -> serial.SerialBase:  # in a worker thread
        return serial.serial_for_url(self.candidate.url, baudrate=self.candidate.baudrate, timeout=0)

    def _opened(self, opening: asyncio.Future[serial.SerialBase]) -> None:
        if opening.cancelled():
            self._closed.set()
            return
        failure = opening.exception()
        if failure is not None:  # whatever a driver or URL handler raises, the port is unusable
            self._closed.set()
            if not self._closing.is_set():
                self._closing.set()
                self._sink(self, PortClosed(f"cannot open: {failure}", opened=False))
            return
        port = opening.result()
        self._port = port
        if self._closing.is_set():  # stopped while it was opening
            self._shut()
            return
        try:
            fd: int | None = port.fileno()  # device nodes and socket:// can be watched by the loop
        except (OSError, AttributeError):  # rfc2217:// reads through pyserial's own thread: poll it
            fd = None
        try:
            if fd is None:
                self._start_poller(port)
            else:
                os.set_blocking(fd, False)
                self._fd = fd
                self._loop.add_reader(fd, self._readable)
        except Exception as exc:  # noqa: BLE001 - a port the loop cannot watch is unusable like one that failed
            self._fail(exc)
            return
        self._handle(self.endpoint.tick(time.monotonic()))  # the first HELLO

    def _shut(self) -> None:
        self._closing.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, None
        if self._fd is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
                self._loop.remove_writer(self._fd)
            self._fd = None
            if self._port is not None:
                with contextlib.suppress(Exception):
                    self._port.close()
            self._closed.set()
        elif self._port is None or not self._poller_running:
            if self._port is not None:
                with contextlib.suppress(Exception):
                    self._port.close()
            self._closed.set()
        # else: the poller thread closes its port and sets _closed within URL_POLL_S

    def _fail(self, exc: BaseException | str) -> None:
        """The port failed under us: close it and tell the transport once."""
        if self._closing.is_set():
            self._shut()
            return
        if isinstance(exc, BaseException) and not isinstance(exc, serial.SerialException | OSError):
            log.error("port %s: unexpected failure", self.candidate.identity, exc_info=exc)
        reason = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
        self._shut()
        self._later(PortClosed(reason, opened=True))  # may be inside send(): the transport hears it after

    # -- I/O on the loop ---------------------------------------------------------------------------

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the tty hung up (unplugged)
            self._fail(exc)
            return
        if not data:  # readable but empty: the other end is gone
            self._fail("the port reports data but returned none (unplugged?)")
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        if self._closing.is_set():
            return
        try:
            events = self.endpoint.receive_bytes(data, time.monotonic())
        except Exception as exc:  # a bug in the link layer ends this port only  # noqa: BLE001
            self._fail(exc)
            return
        self._handle(events)

    def _write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            if self._poller_running:
                self._poll_out.put(data)
            return
        if self._backlog:
            self._queue_write(data)
            return
        try:
            written = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            self._fail(exc)
            return
        if written < len(data):
            self._queue_write(data[written:])
            self._loop.add_writer(fd, self._writable)

    def _queue_write(self, data: bytes) -> None:
        if len(self._backlog) + len(data) > BACKLOG_MAX:  # whole writes only: a frame is sent entire or not at all
            if not self._backlog_warned:
                self._backlog_warned = True
                log.warning("port %s: writes dropped; the device is not reading", self.candidate.identity)
            return
        self._backlog += data

    def _writable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            written = os.write(fd, self._backlog)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._backlog[:written]
        if not self._backlog:
            self._backlog_warned = False
            self._loop.remove_writer(fd)

    # -- the link ------------------------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                self._write(event.data)
            else:
                self._sink(self, event)
            if self._closing.is_set():
                return
        self._arm()

    def _arm(self) -> None:
        """Keep a timer no later than the link's next deadline.

        A timer already set earlier stays (it wakes, finds nothing due and re-arms): a DATA sets
        its retransmission deadline and its ACK clears it within milliseconds, and cancelling and
        making a timer for each would cost more than one spare wake-up per ``ack_timeout_s``.
        """
        if self._closing.is_set():
            return
        deadline = self.endpoint.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_later(deadline - time.monotonic(), self._tick)

    def _tick(self) -> None:
        self._timer, self._timer_at = None, None
        now = time.monotonic()
        deadline = self.endpoint.next_deadline()
        if deadline is not None and deadline <= now:
            self._handle(self.endpoint.tick(now))
        else:
            self._arm()  # early (the deadline moved, or the loop's clock resolution): at the deadline, if any

    def _later(self, event: PortEvent) -> None:
        self._loop.call_soon(self._sink, self, event)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    # -- ports without a descriptor: a poller thread does their I/O ---------------------------------

    @property
    def _poller_running(self) -> bool:
        return self._poller is not None and self._poller.is_alive()

    def _start_poller(self, port: serial.SerialBase) -> None:
        port.timeout = URL_POLL_S  # once: on rfc2217:// every change is sent to the remote server
        try:
            port.write_timeout = WRITE_TIMEOUT_S
        except NotImplementedError:  # rfc2217:// has none (and keeps refusing until it is unset)
            port.write_timeout = None
        self._poller = threading.Thread(
            target=self._poll, args=(port,), name=f"serial {self.candidate.identity}", daemon=True
        )
        self._poller.start()

    def _poll(self, port: serial.SerialBase) -> None:  # in the poller thread
        try:
            while not self._closing.is_set():
                data = bytes(port.read(READ_SIZE))  # waits up to URL_POLL_S
                if data:
                    self._loop.call_soon_threadsafe(self._received, data)
                while True:
                    try:
                        out = self._poll_out.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        port.write(out)
                    except serial.SerialTimeoutException:  # the device stopped reading: the link retransmits
                        log.warning("port %s: write timed out; the device is not reading", self.candidate.identity)
        except Exception as exc:  # unplugged, I/O error, or a driver bug: it ends this port only  # noqa: BLE001
            if not self._closing.is_set():
                with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                    self._loop.call_soon_threadsafe(self._fail, exc)
        finally:
            with contextlib.suppress(Exception):
                port.close()
            self._closed.set()
