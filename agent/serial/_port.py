"""One serial port, owned by one thread that drives the link layer (provisioning.serial.LinkEndpoint).

A thread per port keeps ports independent: a port whose writes block (a device that stopped
reading) or whose driver misbehaves holds up only its own thread. The thread sleeps in
``select`` on the port and a wake-up pipe until bytes arrive, a message is queued for the
device, or the link's next timer is due; whatever the link reports goes to the event loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import select
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

IDLE_WAKE_S: Final = 0.5  # the longest the thread sleeps with nothing to do (a stop is noticed this fast)
URL_POLL_S: Final = 0.02  # ports without a file descriptor (some pyserial URLs) are polled this often
WRITE_TIMEOUT_S: Final = 2.0  # a device that stops reading blocks its port no longer than this per write
READ_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class PortClosed:
    """The port is gone (unplugged, I/O error) or could not be opened; ``opened`` says which."""

    reason: str
    opened: bool


PortEvent = Event | PortClosed
EventSink = Callable[["PortWorker", PortEvent], None]  # runs on the event loop


class PortWorker:
    """The thread that owns one open port and its link endpoint."""

    def __init__(
        self, candidate: PortCandidate, link: LinkConfig, loop: asyncio.AbstractEventLoop, sink: EventSink
    ) -> None:
        self.candidate = candidate
        self.endpoint = LinkEndpoint(link)
        self._loop = loop
        self._sink = sink
        self._outbox: queue.SimpleQueue[tuple[bytes, float | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"serial {candidate.identity}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, payload: bytes, expires_at: float | None) -> None:
        """Queue a message for the device (``expires_at`` on the monotonic clock); safe from any thread."""
        self._outbox.put((payload, expires_at))
        self._wake()

    def stop(self, timeout: float = 3.0) -> None:
        """Close the port and end the thread."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already wakes the thread
            os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        try:
            port = serial.serial_for_url(self.candidate.url, baudrate=self.candidate.baudrate, timeout=0)
        except Exception as exc:  # noqa: BLE001 - whatever a driver or URL handler raises, the port is unusable
            self._emit(PortClosed(f"cannot open: {exc}", opened=False))
            return
        try:
            port.write_timeout = WRITE_TIMEOUT_S
        except NotImplementedError:  # rfc2217:// has none (and keeps refusing until it is unset)
            port.write_timeout = None
        try:
            self._pump(port)
        except Exception as exc:  # unplugged, I/O error, or a driver bug: it ends this port only
            if not self._stop.is_set():
                if not isinstance(exc, serial.SerialException | OSError):
                    log.exception("port %s: unexpected failure", self.candidate.identity)
                self._emit(PortClosed(str(exc) or type(exc).__name__, opened=True))
        finally:
            with contextlib.suppress(Exception):
                port.close()

    def _pump(self, port: serial.SerialBase) -> None:
        try:
            fd: int | None = port.fileno()  # device nodes and socket:// can be waited on with select
        except (OSError, AttributeError):  # rfc2217:// reads through pyserial's own thread: poll it
            fd = None
            port.timeout = URL_POLL_S  # once: on rfc2217:// every change is sent to the remote server
        endpoint = self.endpoint
        self._perform(port, endpoint.tick(time.monotonic()))  # the first HELLO
        while not self._stop.is_set():
            deadline = endpoint.next_deadline()
            wait = IDLE_WAKE_S if deadline is None else min(IDLE_WAKE_S, max(0.0, deadline - time.monotonic()))
            data = self._wait_and_read(port, fd, wait)
            now = time.monotonic()
            events: list[Event] = endpoint.receive_bytes(data, now) if data else []
            events += self._take_outbox(now)
            deadline = endpoint.next_deadline()
            if deadline is not None and deadline <= now:
                events += endpoint.tick(now)
            self._perform(port, events)

    def _wait_and_read(self, port: serial.SerialBase, fd: int | None, wait: float) -> bytes:
        if fd is None:
            return bytes(port.read(READ_SIZE))  # waits up to URL_POLL_S
        ready, _, _ = select.select([fd, self._wake_r], [], [], wait)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if fd in ready:
            data = bytes(port.read(READ_SIZE))
            if not data:  # readable but empty: the other end is gone (pyserial raises on most ports itself)
                raise serial.SerialException("the port reports data but returned none (unplugged?)")
            return data
        return b""

    def _take_outbox(self, now: float) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                payload, expires_at = self._outbox.get_nowait()
            except queue.Empty:
                return events
            if expires_at is not None and expires_at <= now:
                events.append(MessageDropped(payload, DropReason.EXPIRED))
                continue
            try:
                events += self.endpoint.send_message(payload, now, expires_at=expires_at)
            except (LinkBusy, MessageTooLarge) as exc:
                log.warning("port %s: message not sent: %s", self.candidate.identity, exc)
                events.append(MessageDropped(payload, DropReason.LINK_FAILED))

    def _perform(self, port: serial.SerialBase, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, SendBytes):
                try:
                    port.write(event.data)
                except serial.SerialTimeoutException:  # the device stopped reading: the link retransmits
                    log.warning("port %s: write timed out; the device is not reading", self.candidate.identity)
            else:
                self._emit(event)

    def _emit(self, event: PortEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._sink, self, event)
