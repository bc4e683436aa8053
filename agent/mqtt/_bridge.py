"""paho-mqtt's network loop driven by an asyncio event loop (the technique of aiomqtt 2.x).

paho runs no thread of its own here. Its socket is registered with the event loop
(``add_reader`` always, ``add_writer`` while paho has bytes queued) and its ``loop_read`` /
``loop_write`` / ``loop_misc`` are called from the loop, so every paho callback runs on the
event-loop thread. The one blocking step, ``connect()`` (DNS, TCP, TLS handshake, queueing
CONNECT), runs in a short-lived thread named ``mqtt-connect[<name>]``; the socket callbacks it
triggers are passed to the loop with ``call_soon_threadsafe``, and the thread is joined before
:meth:`SocketBridge.open` returns, even when the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["MISC_INTERVAL_SECONDS", "SocketBridge"]

logger = logging.getLogger("agent.mqtt")

# paho's keepalive bookkeeping (PINGREQ when idle, PINGRESP deadline) has one-second resolution.
MISC_INTERVAL_SECONDS: Final = 1.0


class SocketBridge:
    """Drives one paho client from the running event loop.

    ``on_broken(reason)`` is called when the bridge itself must drop the connection (paho raised
    out of its loop); ordinary socket errors reach the owner through paho's ``on_disconnect``.
    """

    def __init__(self, client: paho.Client, name: str, on_broken: Callable[[str], None]) -> None:
        self._client = client
        self._name = name
        self._on_broken = on_broken
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._fd: int | None = None
        self._writing = False  # paho has bytes queued
        self._writer_registered = False  # ... that did not fit in the socket: waiting for it to drain
        self._flush_scheduled = False
        self.eager_writes = False
        """Set once CONNACK came: packets are written at the end of the loop iteration (see _set_writing)."""
        self._closed = False
        self._keepalive: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None  # the attempt thread's result
        self.reading_paused = False
        self.generation = 0
        """Bumped for every socket: what came on one socket is acknowledged on that socket only."""
        self.socket_closed = asyncio.Event()

    @property
    def fd(self) -> int | None:
        """The registered socket's file descriptor, None when there is no socket."""
        return self._fd

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop (the one whose thread calls everything but the attempt thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def start_keepalive(self) -> None:
        """Start the task that runs paho's ``loop_misc`` every second (PINGREQ, PINGRESP deadline)."""
        if self._keepalive is None:
            loop = self._running_loop()
            self._keepalive = loop.create_task(self._keepalive_loop(), name=f"mqtt-keepalive[{self._name}]")

    async def open(self, connect: Callable[[], object]) -> None:
        """Run paho's blocking ``connect`` in a named thread; its exception is re-raised here.

        If the caller is cancelled, the thread (bounded by paho's connect timeout) is still waited
        for, so no socket it opens outlives the attempt.
        """
        loop = self._running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                connect()
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, translated there
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle, error)

        thread = threading.Thread(target=run, name=f"mqtt-connect[{self._name}]", daemon=True)
        self._connecting = done
        thread.start()
        try:
            await _wait_uncancelled(done)
        finally:
            thread.join()  # it has handed its result over and is returning
            self._connecting = None

    async def close(self) -> None:
        """Stop the keepalive timer, let an attempt thread finish, close the socket; idempotent."""
        self._closed = True
        try:
            if self._keepalive is not None:
                await _cancel_and_wait(self._keepalive)
            if self._connecting is not None:  # an attempt runs in another task: its thread must finish
                await asyncio.wait([self._connecting])
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket without telling paho's on_disconnect (an attempt failed, or closing)."""
        if self._client.socket() is not None:
            # paho has no public abort: disconnect() only queues a DISCONNECT behind a possibly stuck socket
            self._client._sock_close()
        self._unregister()

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure: the consumer is behind)."""
        if self.reading_paused or self._fd is None or self._loop is None:
            return
        self._loop.remove_reader(self._fd)
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Read the socket again, starting with bytes the TLS layer may already hold."""
        self.reading_paused = False
        if self._fd is not None and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._loop.call_soon(self._on_readable)

    # -- paho's socket callbacks (event-loop thread, or the attempt thread) ------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # paho leaves Nagle on: a PUBACK or a small PUBLISH would wait ~40 ms for the peer's delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._call_on_loop(self._register, sock.fileno())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_on_loop(self._unregister)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_on_loop(self._set_writing, True)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._call_on_loop(self._set_writing, False)

    # -- helpers ------------------------------------------------------------------------------------

    def _call_on_loop(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function`` now on the loop's thread, else soon on the loop (from the attempt thread)."""
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            function(*args)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed
                self._loop.call_soon_threadsafe(function, *args)

    def _register(self, fd: int) -> None:
        loop = self._running_loop()
        if self._closed:
            self.abort()  # an attempt thread finished after close(): nobody will use this socket
            return
        self.generation += 1
        self._fd = fd
        self.reading_paused = False
        self.socket_closed.clear()
        loop.add_reader(fd, self._on_readable)
        if self._writing:
            loop.add_writer(fd, self._on_writable)
            self._writer_registered = True

    def _unregister(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        self._writing = self._writer_registered = False
        self.reading_paused = False
        self.socket_closed.set()

    def _set_writing(self, writing: bool) -> None:
        if writing == self._writing:
            return
        self._writing = writing
        if self._fd is None or self._loop is None:
            return
        if writing and not self.eager_writes:
            # CONNECT waits for the socket to be writable, as paho's own loop does: written any
            # sooner, it can reach a broker still judging the TLS client certificate, which then
            # resets the connection and the client never reads the alert that says why.
            self._watch_writable()
        elif writing:
            # Write at the end of this loop iteration, not after the next select: the bytes nearly
            # always fit in the socket at once, which saves the writer's registration (two epoll_ctl
            # calls) and a loop iteration for every packet paho queues.
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        elif self._writer_registered:
            self._loop.remove_writer(self._fd)
            self._writer_registered = False

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._writing or self._fd is None or self._loop is None:
            return
        self._guarded(self._client.loop_write)
        if self._writing and not self._writer_registered:  # the socket is full
            self._watch_writable()

    def _watch_writable(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writer_registered = True

    def _on_readable(self) -> None:
        client = self._client
        result = self._guarded(client.loop_read)
        # TLS keeps decrypted bytes the selector cannot see: read them before waiting for the fd again
        while result == MQTTErrorCode.MQTT_ERR_SUCCESS and not self.reading_paused and _tls_pending(client) > 0:
            result = self._guarded(client.loop_read)

    def _on_writable(self) -> None:
        self._guarded(self._client.loop_write)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_SECONDS)
            if self._fd is not None:
                self._guarded(self._client.loop_misc)

    def _guarded(self, step: Callable[[], MQTTErrorCode]) -> MQTTErrorCode:
        """Run one paho step; an exception out of paho (a bug, not the network) drops the connection."""
        try:
            return step()
        except Exception:  # paho raised from inside its loop: the connection cannot be trusted
            logger.exception("MQTT %s: paho-mqtt failed; dropping the connection", self._name)
            if self._client.socket() is not None:
                self.abort()
                self._on_broken("internal error in paho-mqtt (see the log)")
            return MQTTErrorCode.MQTT_ERR_UNKNOWN

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the socket bridge is not attached to an event loop")
        return self._loop


def _tls_pending(client: paho.Client) -> int:
    sock = client.socket()
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


async def _wait_uncancelled(done: asyncio.Future[None]) -> None:
    """Await ``done``; if cancelled, still wait for it (a thread cannot be interrupted), then re-raise."""
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError as exc:
            if done.done():
                raise
            cancelled = exc
            continue
        except BaseException:
            if cancelled is not None:
                raise cancelled from None
            raise
        if cancelled is not None:
            raise cancelled
        return


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to finish, without swallowing a cancellation of the caller."""
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
