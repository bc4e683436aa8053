"""One device's MQTT connection: a paho client driven by the asyncio event loop, no thread per device.

How it works
------------
paho's external-loop API does the protocol; asyncio does the waiting. paho announces its socket
through callbacks and we hand it to the event loop's selector: readable calls ``loop_read``,
writable (registered only while paho has bytes queued) calls ``loop_write``, and one small task per
connection calls ``loop_misc`` every second for keepalive pings. A thousand devices are then a
thousand sockets in one selector and a thousand sleeping tasks, on one thread (as aiomqtt does).

The one blocking call is the TCP connect inside ``Client.connect``/``reconnect``; it runs in a
worker thread, and the socket callbacks it triggers there are passed to the loop thread with
``call_soon_threadsafe``. Every other paho call happens on the loop thread.

The session is persistent as docs/protocol.md asks (clean session 0 / clean start 0 with a session
expiry of an hour on MQTT 5), so paho re-sends unacknowledged QoS 1 messages after a reconnect and
the broker keeps the subscription and queues what the agent sends while the device is away.
A connection lost by accident is re-established with backoff; ``abort`` drops it the way a crashing
process does (no DISCONNECT), ``aclose`` ends it politely.

Why not the agent's own ``agent.mqtt.MqttConnection``: the simulator is the test oracle of the
agent's MQTT transport. A device written on the same bridge would share its bugs (a lost PUBACK,
a session not resumed, a message taken twice) and the tests would pass with the transport broken.
It stays independent on purpose, as a device maker's firmware is (docs/simulator.md, "Independent
of the agent").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning_lab.simulator._spec import MqttProtocol

__all__ = ["ConnectFailed", "LinkError", "MqttLink", "SubscribeRefused"]

CONNECT_TIMEOUT_S: Final = 10.0  # TCP connect plus CONNACK from a broker on the line's network
SUBSCRIBE_TIMEOUT_S: Final = 10.0  # SUBACK
CLOSE_TIMEOUT_S: Final = 2.0  # flushing DISCONNECT before the socket is closed regardless
KEEPALIVE_S: Final = 60  # PINGREQ interval when idle; the broker drops us after 1.5x without traffic
SESSION_EXPIRY_S: Final = 3600  # docs/protocol.md: session expiry >= 1 hour on MQTT 5
MISC_INTERVAL_S: Final = 1.0  # paho's loop_misc granularity (keepalive bookkeeping)
RECONNECT_MIN_S: Final = 1.0  # first retry after losing the connection
RECONNECT_MAX_S: Final = 30.0  # ... doubling up to this, so a restarted broker is not stampeded

_PROTOCOLS: Final = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
_QOS: Final = 1  # docs/protocol.md: QoS 1 for everything


class LinkError(Exception):
    """The MQTT connection could not be made or kept; trying again later may work."""


class ConnectFailed(LinkError):
    """No connection: TCP refused or timed out, or the broker refused the CONNECT."""


class SubscribeRefused(LinkError):
    """The broker refused the subscription to the down topic (an ACL, usually)."""


class MqttLink:
    """A device's MQTT connection, its persistent session and its down-topic subscription."""

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        protocol: MqttProtocol,
        on_message: Callable[[bytes], None],
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._client_id = client_id
        self._on_payload = on_message
        version = _PROTOCOLS[protocol]
        clean_session = None if version is MQTTProtocolVersion.MQTTv5 else False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=version,
            reconnect_on_failure=False,
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._v5 = version is MQTTProtocolVersion.MQTTv5
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._connack: asyncio.Future[None] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._disconnected: asyncio.Future[None] | None = None
        self._topic = ""
        self._misc_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False  # aclose/abort called: no more reconnects
        self._dropped = False  # the socket is gone for good: a connect finishing late is closed at once

    # -- public ---------------------------------------------------------------------------------------

    async def open(self, down_topic: str) -> None:
        """Connect, wait for CONNACK, subscribe to ``down_topic`` (QoS 1) and wait for SUBACK."""
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        self._connack = loop.create_future()
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if self._v5:
                    await asyncio.to_thread(
                        self._client.connect,
                        self._host,
                        self._port,
                        KEEPALIVE_S,
                        clean_start=False,
                        properties=properties,
                    )
                else:
                    await asyncio.to_thread(self._client.connect, self._host, self._port, KEEPALIVE_S)
                self._misc_task = loop.create_task(self._misc(), name=f"mqtt-misc-{self._client_id}")
                await self._connack
        except TimeoutError:
            raise ConnectFailed(f"no CONNACK from {self._host}:{self._port} within {CONNECT_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}: {exc}") from exc
        self._topic = down_topic
        await self._subscribe()

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1, no retain; while disconnected paho keeps it and sends it on reconnect."""
        self._client.publish(topic, payload, qos=_QOS, retain=False)

    async def aclose(self) -> None:
        """Send DISCONNECT (the session stays on the broker) and release everything."""
        if self._closing:
            return
        self._closing = True
        self._cancel_tasks()
        if self._loop is not None and self._client.is_connected():
            self._disconnected = self._loop.create_future()
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._disconnected
        self._drop_socket()

    def abort(self) -> None:
        """Drop the connection the way a dying process does: close the socket, no DISCONNECT."""
        self._closing = True
        self._cancel_tasks()
        self._drop_socket()

    # -- paho callbacks (loop thread, except socket callbacks during a connect) ----------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        waiter = self._connack
        if waiter is not None and not waiter.done():
            if reason.is_failure:
                waiter.set_exception(ConnectFailed(f"broker refused the connection: {reason}"))
            else:
                waiter.set_result(None)
        elif not reason.is_failure and not flags.session_present and self._topic:
            client.subscribe(self._topic, qos=_QOS)  # the broker lost our session: subscribe again

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectFailed(f"connection closed before CONNACK: {reason}"))
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        established = waiter is not None and waiter.done() and waiter.exception() is None
        if established and not self._closing and self._loop is not None and self._reconnect_task is None:
            self._reconnect_task = self._loop.create_task(self._reconnect(), name=f"mqtt-reconnect-{self._client_id}")

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        waiter = self._subacks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reasons)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self._topic:
            self._on_payload(bytes(message.payload))

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch, sock)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, sock)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._on_loop(self._loop.remove_writer, sock)

    # -- helpers -------------------------------------------------------------------------------------

    def _on_loop(self, function: Callable[..., object], *args: Any) -> None:
        """Run ``function`` now on the loop thread, or hand it over from the connect worker."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            function(*args)
        else:
            loop.call_soon_threadsafe(function, *args)

    def _watch(self, sock: Any) -> None:
        if self._dropped or self._loop is None:
            sock.close()  # a connect that finished after we gave up on it
            return
        self._loop.add_reader(sock, self._client.loop_read)

    def _want_write(self, sock: Any) -> None:
        if not self._dropped and self._loop is not None and sock.fileno() >= 0:
            self._loop.add_writer(sock, self._client.loop_write)

    def _unwatch(self, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    async def _subscribe(self) -> None:
        if self._loop is None:  # pragma: no cover - open() sets it first
            raise RuntimeError("not connected")
        waiter: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        _, mid = self._client.subscribe(self._topic, qos=_QOS)
        if mid is None:
            raise SubscribeRefused("SUBSCRIBE could not be sent")
        self._subacks[mid] = waiter
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                reasons = await waiter
        except TimeoutError:
            raise SubscribeRefused(f"no SUBACK within {SUBSCRIBE_TIMEOUT_S:.0f} s") from None
        if not reasons or reasons[0].is_failure:
            raise SubscribeRefused(f"broker refused the subscription to {self._topic}: {reasons}")

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            self._client.loop_misc()

    async def _reconnect(self) -> None:
        delay = RECONNECT_MIN_S
        try:
            while not self._closing:
                await asyncio.sleep(delay)
                try:
                    await asyncio.to_thread(self._client.reconnect)
                except OSError:
                    delay = min(delay * 2, RECONNECT_MAX_S)
                except RuntimeError:
                    return  # the event loop is shutting down (its executor refuses work): stop trying
                else:
                    return  # CONNACK (or a new loss) arrives through the callbacks
        finally:
            self._reconnect_task = None

    def _cancel_tasks(self) -> None:
        for task in (self._misc_task, self._reconnect_task):
            if task is not None:
                task.cancel()
        self._misc_task = self._reconnect_task = None

    def _drop_socket(self) -> None:
        """Close whatever socket is left and detach from paho, whose ``__del__`` closes it again."""
        self._dropped = True
        client = self._client
        client.on_socket_open = client.on_socket_close = None
        client.on_socket_register_write = client.on_socket_unregister_write = None
        sock = client.socket()
        if sock is not None:
            self._unwatch(sock)
            sock.close()
