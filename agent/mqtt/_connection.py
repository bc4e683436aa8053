"""One MQTT connection for asyncio: lifecycle, reconnect policy, inbound queue, publishes.

How it works
------------
paho-mqtt 2.x does the protocol; ``agent.mqtt._bridge`` drives its socket from the event loop,
so every paho callback below runs on the event-loop thread and this state has one writer.

Lifecycle (``ConnectionState``)::

    IDLE --connect()--> CONNECTING --CONNACK + SUBACK--> CONNECTED
    CONNECTING --first attempt fails--> IDLE            (connect() raises; the caller decides)
    CONNECTING --first attempt cannot reach the broker, connect(wait_for_broker=True)--> DISCONNECTED
    CONNECTED --socket error, keepalive, broker DISCONNECT--> DISCONNECTED
    DISCONNECTED --backoff with jitter--> CONNECTING --fails--> DISCONNECTED (backoff doubles)
    any --aclose()--> CLOSED

This connection is the one owner of reconnecting: its callers never loop on ``connect()``. A
caller that must wait for a broker that is not up yet (the daemon at boot) says so with
``wait_for_broker``; the waits follow the same schedule as reconnects
(``provisioning.pacing.Backoff``).

Every attempt subscribes again, whatever the broker says about the session.

Inbound: a message larger than ``max_packet_size`` is dropped unread (MQTT 5 brokers never send
one: the limit goes out in CONNECT). A QoS 1 message is acknowledged (PUBACK) when the consumer takes it from the queue,
so a message still queued when the process dies is redelivered by the broker (persistent
session); when a session resumes, queued copies of what the broker resends are dropped. The
queue holds ``MESSAGE_QUEUE_SIZE`` messages; MQTT 5 advertises that number as Receive Maximum,
so the broker never has more unacknowledged messages out to us, and when the queue is full
anyway (QoS 0 floods, MQTT 3.1.1 brokers) we stop reading the socket until the consumer
catches up: backpressure reaches the broker over TCP, nothing is dropped.

Outbound: ``publish`` refuses at once when not connected. A QoS 1 publish resolves on its
PUBACK; if the connection breaks first it raises ``MqttConnectionLost`` and the message is
dropped from paho's resend queue, so nothing we gave up on is sent after a reconnect (an
AuthKey must never arrive late). The caller decides whether to publish again. At most
``min(MAX_INFLIGHT, the broker's Receive Maximum)`` publishes await their PUBACK at once; the
others wait first in, first out, and each freed slot wakes exactly one of them (one event waking
every waiter cost 77 % of the agent's CPU with thousands of devices waiting on a throttled cloud).
A slot handed to a waiter that is cancelled before it runs goes to the next one: none is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, cast

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.mqtt import _paho
from agent.mqtt._bridge import SocketBridge
from agent.mqtt._errors import (
    MqttClosed,
    MqttConnectionLost,
    MqttError,
    MqttNotConnected,
    MqttPublishRefused,
    MqttRetryableError,
    MqttSubscribeRefused,
    MqttUnavailable,
)
from agent.mqtt._settings import MAX_UINT32, ConnectionState, InboundMessage, MqttSettings
from agent.mqtt._topics import is_valid_topic_filter, is_valid_topic_name
from provisioning.pacing import Backoff

__all__ = [
    "BACKOFF_JITTER",
    "CONNACK_TIMEOUT_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "DISCONNECT_TIMEOUT_SECONDS",
    "MAX_INFLIGHT",
    "MESSAGE_QUEUE_SIZE",
    "MqttConnection",
]

logger = logging.getLogger("agent.mqtt")
paho_logger = logging.getLogger("agent.mqtt.paho")

# Received and not yet taken; MQTT 5 advertises it as Receive Maximum. A burst of a line's registrations
# fits: what does not, the broker queues for us, and Mosquitto's default max_queued_messages (1000) drops
# beyond that. With 100 here, 2,000 devices registering at once lost hundreds of registrations (resent
# only after the device's timeout); messages are a few hundred bytes, so 1000 costs well under a megabyte.
MESSAGE_QUEUE_SIZE: Final = 1000
# QoS 1 publishes awaiting PUBACK at once (paho's own default); an MQTT 5 broker's Receive Maximum can lower it.
MAX_INFLIGHT: Final = 20
# DNS + TCP + TLS handshake to a broker on the LAN take milliseconds; 10 s only bounds a black hole.
CONNECT_TIMEOUT_SECONDS: Final = 10.0
# Mosquitto answers CONNECT and SUBSCRIBE in under a millisecond; a wedged broker is given up on after this.
CONNACK_TIMEOUT_SECONDS: Final = 10.0
# aclose() waits this long for DISCONNECT to be written before it closes the socket anyway.
DISCONNECT_TIMEOUT_SECONDS: Final = 2.0
# Each reconnect delay is drawn from [delay * (1 - jitter), delay]: agents restarted by one broker
# restart must not come back in lockstep.
BACKOFF_JITTER: Final = 0.5
_MAX_BACKOFF_DOUBLINGS: Final = 32  # 2**32 x any sane min delay is past any max delay: a refusal waits the longest
_UNSPECIFIED: Final = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A queued message and what acknowledging it needs (QoS 1 only, and only on the socket it came on)."""

    message: InboundMessage
    mid: int | None
    generation: int


class MqttConnection:
    """An MQTT connection that reconnects by itself; ``async with`` connects and closes.

    ``subscriptions`` are ``(topic filter, QoS)`` pairs, QoS 0 or 1, subscribed on every
    (re)connect. Filters may be ``$share/<group>/<filter>`` shared subscriptions.
    """

    def __init__(self, settings: MqttSettings, subscriptions: Sequence[tuple[str, int]]) -> None:
        for topic_filter, qos in subscriptions:
            if not is_valid_topic_filter(topic_filter):
                raise ValueError(f"invalid topic filter {topic_filter!r}")
            if qos not in (0, 1):
                raise ValueError(f"subscription QoS must be 0 or 1, not {qos!r} ({topic_filter!r})")
        self._settings = settings
        self._backoff = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay, BACKOFF_JITTER)
        self._subscriptions = tuple(subscriptions)
        self._v5 = settings.protocol == "5"
        self._client = _paho.build_paho_client(settings)
        self._client.connect_timeout = CONNECT_TIMEOUT_SECONDS
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        # A logger, not on_log: paho formats every packet's debug line for on_log; through a
        # logger, only the lines someone will see (that was 3 % of the agent's CPU per device).
        self._client.enable_logger(cast(logging.Logger, _PahoLog(self._on_paho_log)))
        self._bridge = SocketBridge(self._client, settings.client_id, self._on_broken)
        self._tls_ready = False

        self._state = ConnectionState.IDLE
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[_Delivery] = collections.deque()
        self._inbox_changed = asyncio.Event()
        # QoS 1 publishes sent and not yet acknowledged, by packet id; an entry leaves on PUBACK or
        # disconnect (not when its caller stops waiting: the packet is still in flight)
        self._pending_publishes: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._send_window = MAX_INFLIGHT
        # QoS 1 publishers waiting for a slot, oldest first; a granted slot is counted until its
        # publisher runs, so a newcomer cannot take it in between
        self._window_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._slots_granted = 0
        self._connack: asyncio.Future[bool] | None = None
        self._suback: tuple[int, asyncio.Future[list[ReasonCode]]] | None = None
        self._lost = asyncio.Event()
        self._paho_error: str | None = None
        self._watchers: set[asyncio.Queue[ConnectionState]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self.last_error: MqttError | None = None
        """The latest failure (refused, unreachable, lost), None once connected again: for status pages."""
        self.reconnects = 0
        """Successful reconnects after the first connection: for metrics."""

    # -- public API --------------------------------------------------------------------------

    @property
    def settings(self) -> MqttSettings:
        """The settings this connection was made with."""
        return self._settings

    @property
    def state(self) -> ConnectionState:
        """Where the connection is now."""
        return self._state

    @property
    def connected(self) -> bool:
        """True when CONNACK and every SUBACK have arrived and the socket is up."""
        return self._state is ConnectionState.CONNECTED

    @property
    def queued(self) -> int:
        """Messages received and waiting for the consumer (a gauge for metrics)."""
        return len(self._inbox)

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes sent and awaiting their PUBACK (a gauge for metrics)."""
        return len(self._pending_publishes)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def connect(self, *, wait_for_broker: bool = False) -> None:
        """Connect and subscribe once; from then on reconnect by ourselves until ``aclose()``.

        Raises MqttConnectError (credentials, TLS files, client id) or MqttSubscribeRefused when a
        person must fix something. A broker that cannot be reached raises MqttUnavailable (the
        connection can be connected again), unless ``wait_for_broker``: then attempts go on, on the
        reconnect schedule, until one succeeds, a person must fix something, or the call is cancelled.
        """
        if self._closed():
            raise MqttClosed("the MQTT connection is closed")
        if self._state is not ConnectionState.IDLE:
            raise RuntimeError(f"connect() while {self._state.value}")
        self._loop = asyncio.get_running_loop()
        if self._settings.tls is not None and not self._tls_ready:
            self._client.tls_set_context(_paho.build_ssl_context(self._settings.tls))
            self._client.tls_insecure_set(self._settings.tls.insecure)
            self._tls_ready = True
        self._bridge.attach(self._loop)
        try:
            try:
                await self._attempt()
            except MqttRetryableError as exc:
                if not wait_for_broker:
                    raise
                self.last_error = exc
                self._note_failed_attempt(str(exc), 0, logging.WARNING)
                await self._attempt_until_connected(failures=0, refusals_raise=True)
        except BaseException as exc:
            if not self._closed():
                self._set_state(ConnectionState.IDLE, f"first attempt failed: {exc}")
            raise
        self._bridge.start_keepalive()
        self._supervisor = self._loop.create_task(self._supervise(), name=f"mqtt-reconnect[{self._settings.client_id}]")

    def messages(self) -> AsyncIterator[InboundMessage]:
        """Messages from every subscription, across reconnects, until ``aclose()`` ends the iteration.

        Taking a QoS 1 message from this iterator acknowledges it to the broker. Several
        iterators share one queue (each message goes to one of them).
        """
        return self._iterate_messages()

    def state_changes(self) -> AsyncIterator[ConnectionState]:
        """The current state, then every change, ending after CLOSED."""
        return self._iterate_states()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        message_expiry: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Publish; for QoS 1, return when the broker's PUBACK arrives.

        ``message_expiry`` (seconds), ``response_topic``, ``correlation_data`` and
        ``user_properties`` are MQTT 5 properties, left out on MQTT 3.1.1. Raises
        MqttNotConnected at once when disconnected (nothing sent), MqttConnectionLost when the
        connection broke before the PUBACK (the broker may have the message), MqttPublishRefused
        when an MQTT 5 broker refuses it, MqttClosed after ``aclose()``.
        """
        if not is_valid_topic_name(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        if qos not in (0, 1):
            raise ValueError(f"publish QoS must be 0 or 1, not {qos!r}")
        if message_expiry is not None and not 0 < message_expiry <= MAX_UINT32:
            raise ValueError(f"message_expiry {message_expiry} is out of range")
        loop = self._check_can_publish()
        if qos == 1 and (self._window_waiters or self._free_slots() <= 0):
            await self._wait_for_slot(loop)
            try:
                loop = self._check_can_publish()
            except MqttError:
                self._grant_slots()  # the slot goes unused: the next waiter (if any) may still send
                raise
        properties = None
        if self._v5:
            properties = _paho.publish_properties(
                message_expiry=message_expiry,
                response_topic=response_topic,
                correlation_data=correlation_data,
                user_properties=user_properties,
            )
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._grant_slots()
            raise MqttNotConnected(f"MQTT publish to {topic!r} not sent: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        done: asyncio.Future[None] = loop.create_future()
        self._pending_publishes[info.mid] = (topic, done)
        await done

    async def aclose(self) -> None:
        """Disconnect cleanly (the broker discards the will), stop every task and thread; idempotent."""
        if self._closed():
            return
        was_connected = self._state is ConnectionState.CONNECTED
        self._set_state(ConnectionState.CLOSED, "aclose()")
        self._fail_waiters(MqttClosed("the MQTT connection was closed"))
        self._inbox_changed.set()
        try:
            if self._supervisor is not None and not self._supervisor.done():
                self._supervisor.cancel()
                await asyncio.wait([self._supervisor])
            if was_connected and self._bridge.fd is not None and self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DISCONNECT_TIMEOUT_SECONDS):
                        await self._bridge.socket_closed.wait()
        finally:
            await self._bridge.close()

    def __repr__(self) -> str:
        return (
            f"<MqttConnection client_id={self._settings.client_id!r} broker={self._settings.broker}"
            f" state={self._state.value}>"
        )

    # -- attempts and the reconnect policy ---------------------------------------------------

    async def _attempt(self) -> None:
        """One connection attempt: open, CONNECT, CONNACK, SUBSCRIBE, SUBACK; the socket is closed on failure."""
        loop = self._running_loop()
        settings = self._settings
        self._set_state(ConnectionState.CONNECTING, "opening the socket")
        self._client.drop_out_messages()  # never resend what a caller was told was lost
        self._bridge.eager_writes = False
        self._paho_error = None
        self._connack = loop.create_future()
        clean_start: paho.CleanStartOption = settings.clean_start if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
        properties = _paho.connect_properties(settings, MESSAGE_QUEUE_SIZE)

        def connect() -> None:
            self._client.connect(
                settings.host, settings.port, settings.keepalive, clean_start=clean_start, properties=properties
            )

        try:
            try:
                await self._bridge.open(connect)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise _paho.open_error(exc, settings) from exc
            async with asyncio.timeout(CONNACK_TIMEOUT_SECONDS):
                session_present = await self._connack
                self._bridge.eager_writes = True
                await self._subscribe_all()
        except BaseException as exc:
            self._bridge.abort()
            if isinstance(exc, TimeoutError):
                silent = f"broker {settings.broker} did not answer CONNECT/SUBSCRIBE"
                raise MqttUnavailable(f"{silent} within {CONNACK_TIMEOUT_SECONDS:.0f} s") from exc
            raise
        finally:
            for future in (self._connack, None if self._suback is None else self._suback[1]):
                if future is not None and future.done() and not future.cancelled():
                    future.exception()  # failed (aclose, lost socket) before this attempt awaited it: consumed here
            self._connack = None
            self._suback = None
        self.last_error = None
        protocol = "MQTT 5" if self._v5 else "MQTT 3.1.1"
        session = "session resumed" if session_present else "new session"
        self._set_state(ConnectionState.CONNECTED, f"{protocol}, {session}")
        self._apply_backpressure()  # a session's backlog may have filled the queue during the attempt

    async def _subscribe_all(self) -> None:
        """Subscribe to every filter in one SUBSCRIBE; MqttSubscribeRefused if the broker refuses one."""
        if not self._subscriptions:
            return
        loop = self._running_loop()
        topics: list[tuple[str, Any]]
        if self._v5:
            topics = [(topic_filter, SubscribeOptions(qos=qos)) for topic_filter, qos in self._subscriptions]
        else:
            topics = list(self._subscriptions)
        result, mid = self._client.subscribe(topics)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise MqttUnavailable(f"MQTT subscribe not sent: {paho.error_string(result)}")
        suback: asyncio.Future[list[ReasonCode]] = loop.create_future()
        self._suback = (mid, suback)
        reasons = await suback
        for (topic_filter, _), reason in zip(self._subscriptions, reasons, strict=False):
            if reason.is_failure:
                text = _paho.reason_text(reason)
                raise MqttSubscribeRefused(
                    f"broker {self._settings.broker} refused the subscription {topic_filter!r}: {text}; check its ACL",
                    topic_filter=topic_filter,
                    reason=reason.getName(),
                )

    async def _supervise(self) -> None:
        """Wait for a lost connection, then reconnect with capped exponential backoff and jitter."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            await self._attempt_until_connected(failures=0, refusals_raise=False)
            self.reconnects += 1

    async def _attempt_until_connected(self, *, failures: int, refusals_raise: bool) -> None:
        """Attempts on the backoff schedule until one succeeds; a refusal raises or slows down to the longest wait."""
        while True:
            await asyncio.sleep(self._backoff.delay(failures, random.random()))
            try:
                await self._attempt()
            except MqttError as exc:
                if refusals_raise and not exc.retryable:
                    raise
                self.last_error = exc
                # a person must fix a refusal: retrying fast cannot help and floods the broker's log
                failures = _MAX_BACKOFF_DOUBLINGS if not exc.retryable else failures + 1
                level = logging.WARNING if exc.retryable else logging.ERROR
                self._note_failed_attempt(str(exc), failures, level)
            except Exception as exc:  # a bug must not end reconnecting: log it, retry on the backoff
                logger.exception("MQTT %s: connection attempt failed unexpectedly", self._settings.client_id)
                failures += 1
                self._note_failed_attempt(f"{type(exc).__name__}: {exc}", failures, logging.ERROR)
            else:
                return

    def _note_failed_attempt(self, why: str, failures: int, level: int) -> None:
        delay = self._backoff.ceiling(failures)
        self._set_state(ConnectionState.DISCONNECTED, f"{why}; next attempt within {delay:.1f} s", level)

    # -- inbound queue and state watchers ----------------------------------------------------

    async def _iterate_messages(self) -> AsyncIterator[InboundMessage]:
        while True:
            while not self._inbox:
                if self._closed():
                    return
                self._inbox_changed.clear()
                await self._inbox_changed.wait()
            if self._closed():
                return  # unacknowledged messages stay with the broker
            delivery = self._inbox.popleft()
            same_socket = delivery.generation == self._bridge.generation and self._bridge.fd is not None
            if delivery.mid is not None and same_socket:
                self._client.ack(delivery.mid, 1)
            if self._bridge.reading_paused and len(self._inbox) < MESSAGE_QUEUE_SIZE:
                self._bridge.resume_reading()
            yield delivery.message

    async def _iterate_states(self) -> AsyncIterator[ConnectionState]:
        changes: asyncio.Queue[ConnectionState] = asyncio.Queue()
        changes.put_nowait(self._state)
        self._watchers.add(changes)
        try:
            while True:
                state = await changes.get()
                yield state
                if state is ConnectionState.CLOSED:
                    return
        finally:
            self._watchers.discard(changes)

    def _set_state(self, state: ConnectionState, detail: str, level: int = logging.INFO) -> None:
        """Enter ``state``: one log line, and every watcher hears of it. CLOSED is final."""
        if state is self._state or self._closed():
            return
        self._state = state
        logger.log(level, "MQTT %s@%s %s: %s", self._settings.client_id, self._settings.broker, state.value, detail)
        for watcher in self._watchers:
            watcher.put_nowait(state)

    # -- paho callbacks (event-loop thread) --------------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode, properties: Any
    ) -> None:
        connack = self._connack
        if connack is None or connack.done():
            return
        if reason.is_failure:
            connack.set_exception(_paho.connack_error(reason, self._settings))
            return
        # paho 2.x ignores the broker's Receive Maximum; exceeding it is a protocol error (0x93)
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self._send_window = min(MAX_INFLIGHT, receive_maximum) if isinstance(receive_maximum, int) else MAX_INFLIGHT
        self._grant_slots()
        if flags.session_present:
            # the broker resends every unacknowledged QoS 1 message of a resumed session: keep one copy
            current = self._bridge.generation
            fresh = [d for d in self._inbox if d.mid is None or d.generation == current]
            if len(fresh) != len(self._inbox):
                self._inbox = collections.deque(fresh)
        connack.set_result(flags.session_present)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            why = f"the broker sent DISCONNECT: {_paho.reason_text(reason)}"
        elif reason.getName() == "Keep alive timeout":
            why = "keepalive timeout (no answer from the broker)"
        else:
            why = self._paho_error or "the broker closed the connection"
        self._paho_error = None
        lost = MqttConnectionLost(f"MQTT connection to {self._settings.broker} lost: {why}")
        self._fail_publishes(lost)
        refused = _paho.closed_before_connack(why, self._settings)
        for future in (self._connack, None if self._suback is None else self._suback[1]):
            if future is not None and not future.done():
                future.set_exception(refused)
        if self._state is ConnectionState.CONNECTED:
            self.last_error = lost
            delay = self._backoff.ceiling(0)
            self._set_state(ConnectionState.DISCONNECTED, f"{why}; reconnecting within {delay:.1f} s")
            self._lost.set()

    def _on_broken(self, why: str) -> None:
        """The bridge dropped the socket itself: handled like any lost connection."""
        self._paho_error = why
        flags = paho.DisconnectFlags(is_disconnect_packet_from_server=False)
        self._on_disconnect(self._client, None, flags, _UNSPECIFIED, None)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        if self._suback is not None and self._suback[0] == mid and not self._suback[1].done():
            self._suback[1].set_result(reasons)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        limit = self._settings.max_packet_size
        if limit is not None and len(message.payload) > limit:
            # MQTT 3.1.1 cannot tell the broker our limit: drop it here, before a copy is queued or decoded.
            logger.warning("MQTT %s: dropped a message of %d bytes: larger than max_packet_size %d",
                           self._settings.client_id, len(message.payload), limit)  # fmt: skip
            if message.qos == 1:
                client.ack(message.mid, 1)
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            logger.warning("MQTT %s: dropped a message whose topic is not UTF-8", self._settings.client_id)
            if message.qos == 1:
                client.ack(message.mid, 1)  # never redeliver what can never be read
            return
        inbound = InboundMessage(
            topic=topic,
            payload=bytes(message.payload),
            qos=message.qos,
            retain=bool(message.retain),
            properties=_paho.inbound_properties(message.properties if self._v5 else None),
        )
        self._inbox.append(_Delivery(inbound, message.mid if message.qos == 1 else None, self._bridge.generation))
        self._inbox_changed.set()
        self._apply_backpressure()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        entry = self._pending_publishes.pop(mid, None)
        if entry is not None:
            self._grant_slots()
        if entry is None or entry[1].done():
            return  # QoS 0, or the caller stopped waiting
        topic, done = entry
        if reason.is_failure:
            text = _paho.reason_text(reason)
            done.set_exception(
                MqttPublishRefused(
                    f"broker {self._settings.broker} refused the publish to {topic!r}: {text}; check its ACL",
                    topic=topic,
                    reason=reason.getName(),
                    reason_code=reason.value,
                )
            )
        else:
            done.set_result(None)

    def _on_paho_log(self, level: int, fmt: str, args: tuple[object, ...]) -> None:
        if level >= logging.ERROR:
            self._paho_error = fmt % args  # the cause behind paho's generic "Unspecified error" disconnects
        if paho_logger.isEnabledFor(logging.DEBUG):
            paho_logger.debug("%s: %s", self._settings.client_id, fmt % args)

    # -- helpers ------------------------------------------------------------------------------

    def _apply_backpressure(self) -> None:
        """Stop reading while the queue is full, but never while connecting: the SUBACK that ends an
        attempt may sit behind the messages a persistent session delivers first, and nobody takes
        messages before connect() returns."""
        if self._state is not ConnectionState.CONNECTED or self._bridge.reading_paused:
            return
        if len(self._inbox) >= MESSAGE_QUEUE_SIZE:
            self._bridge.pause_reading()
            logger.warning(
                "MQTT %s: %d messages wait for the consumer; reading paused (the broker holds the rest)",
                self._settings.client_id,
                len(self._inbox),
            )

    def _check_can_publish(self) -> asyncio.AbstractEventLoop:
        if self._closed():
            raise MqttClosed("the MQTT connection is closed")
        if self._state is not ConnectionState.CONNECTED or self._loop is None:
            raise MqttNotConnected(f"MQTT connection to {self._settings.broker} is {self._state.value}")
        return self._loop

    def _closed(self) -> bool:
        """A method, not an inline test: the state changes across awaits, which narrowing does not see."""
        return self._state is ConnectionState.CLOSED

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the MQTT connection was never connected")
        return self._loop

    def _fail_publishes(self, error: MqttError) -> None:
        """Every publish awaiting PUBACK fails with ``error``, every one waiting for a slot with "not sent"."""
        pending, self._pending_publishes = self._pending_publishes, {}
        for _, done in pending.values():
            if not done.done():
                done.set_exception(error)
        unsent = error if isinstance(error, MqttClosed) else MqttNotConnected(f"{error} (before this publish was sent)")
        waiters, self._window_waiters = self._window_waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(unsent)

    # -- the send window: first in, first out --------------------------------------------------

    def _free_slots(self) -> int:
        return self._send_window - len(self._pending_publishes) - self._slots_granted

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue behind earlier publishers until ``_grant_slots`` hands this one a slot."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._window_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._slots_granted -= 1  # granted, then cancelled before it ran: the slot passes on
                self._grant_slots()
            else:
                with contextlib.suppress(ValueError):
                    self._window_waiters.remove(waiter)
            raise
        self._slots_granted -= 1

    def _grant_slots(self) -> None:
        """Wake the oldest waiters, one per free slot (never all of them: each would only wait again)."""
        while self._window_waiters and self._free_slots() > 0:
            waiter = self._window_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._slots_granted += 1

    def _fail_waiters(self, error: MqttError) -> None:
        self._fail_publishes(error)
        for future in (self._connack, None if self._suback is None else self._suback[1]):
            if future is not None and not future.done():
                future.set_exception(error)


class _PahoLog:
    """What paho's ``enable_logger`` needs: a ``log(level, fmt, *args)`` that formats nothing it will not show."""

    def __init__(self, sink: Callable[[int, str, tuple[object, ...]], None]) -> None:
        self._sink = sink

    def log(self, level: int, fmt: str, *args: object) -> None:
        self._sink(level, fmt, args)
