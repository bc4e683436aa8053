"""A device written by hand from docs/protocol.md: one paho client, its own topic id, every answer recorded.

Tests drive it step by step (register, reboot, report a result) to put a real agent into the
exact situation they want, where the simulator would decide for itself. It follows the
document: client id = topic id, a persistent session, QoS 1 both ways, subscribe before the
first publish, a fresh X25519 key pair for every register id when it seals, and it opens a
sealed key with the pair of the register the key answers. ``follow`` carries the protocol
on from an answer (wait, retryable error, key, done) until ``done`` or a final error.
"""

from __future__ import annotations

import base64
import calendar
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from provisioning.sealing import SealedKey, open_sealed_key
from provisioning_lab.emulator import ActivationError, EmulatorProcess

__all__ = ["Answer", "HandDevice", "expires_at", "new_id"]

SESSION_EXPIRY_S = 3600  # docs/protocol.md: a persistent session, expiry >= 1 hour on MQTT 5
ANSWER_TIMEOUT_S = 30.0  # an answer on a loaded 2-core machine; the agent answers in milliseconds
RESEND_S = 5.0  # an unanswered message is sent again (the protocol's 10 s, halved for tests)
PAUSE_S = 0.5  # a device's pause before it acts on wait/retry (the protocol's retry_after_s, cut short)


@dataclass(frozen=True, slots=True)
class Answer:
    """One message from the down topic and when it arrived (POSIX seconds)."""

    at: float
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.body.get("type"))

    def __str__(self) -> str:  # assertion messages name what the agent said, in full
        return json.dumps(self.body, ensure_ascii=False)


@dataclass(slots=True)
class _Life:
    """What a reboot forgets."""

    seal_keys: dict[str, X25519PrivateKey] = field(default_factory=dict)  # register id -> its key pair


class HandDevice:
    """A device on the broker at ``port``; ``connect`` before use, ``close`` after."""

    def __init__(
        self,
        port: int,
        device_id: str,
        model: str,
        *,
        hardware_id: str = "",
        tid: str = "",
        protocol: str = "5",
        seal: bool = True,
        root: str = "prov/v1",
    ) -> None:
        self.device_id, self.model = device_id, model
        self.hardware_id = hardware_id or f"hw-{device_id}"
        self.tid = tid or device_id
        self.up, self.down = f"{root}/dev/{self.tid}/up", f"{root}/dev/{self.tid}/down"
        self.seal = seal
        self.answers: list[Answer] = []
        self._life = _Life()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._port = port
        self._v5 = protocol == "5"
        self._client: paho.Client | None = None

    # -- connection --------------------------------------------------------------------------------

    def connect(self) -> HandDevice:
        """Connect (a new MQTT client, as after a power cycle) with a persistent session; wait for the SUBACK."""
        self._subscribed.clear()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.tid,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        client.reconnect_delay_set(0.2, 1.0)  # back soon after a broker restart
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect("127.0.0.1", self._port, keepalive=30, clean_start=False, properties=properties)
        else:  # 3.1.1: clean_session=False, set on the client
            client.connect("127.0.0.1", self._port, keepalive=30)
        client.loop_start()
        self._client = client
        assert self._subscribed.wait(ANSWER_TIMEOUT_S), f"{self.tid}: never subscribed"
        return self

    def wait_subscribed(self, timeout: float = ANSWER_TIMEOUT_S) -> None:
        """After a broker restart: wait until paho reconnected and the subscription is back."""
        assert self._subscribed.wait(timeout), f"{self.tid}: not subscribed again within {timeout} s"

    def disconnect(self) -> None:
        """A clean DISCONNECT: the broker keeps the session and queues what comes meanwhile."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
            sock = client.socket()
            if sock is not None:
                sock.close()

    close = disconnect

    def reboot(self) -> None:
        """Forget everything a reboot forgets (key pairs, which register ids were ours)."""
        self._life = _Life()

    # -- messages ----------------------------------------------------------------------------------

    def register(self, message_id: str = "", *, wait: bool = False) -> str:
        """Send a register (a new id and, when sealing, a new key pair unless ``message_id`` is a resend)."""
        body = self.register_message(message_id or new_id())
        self.send(body, wait=wait)
        return str(body["id"])

    def result_ok(self, attempt: str, licence: dict[str, Any], message_id: str = "") -> str:
        """Report an activation that worked, with the licence the SDK shows."""
        message_id = message_id or new_id()
        self.send(self._result(message_id, attempt, ok=True, sdk_device_id=licence["DeviceId"],
                               begin_day=licence["BeginDay"], expired_day=licence["ExpiredDay"]))  # fmt: skip
        return message_id

    def result_failed(self, attempt: str, error: str, detail: str = "", message_id: str = "") -> str:
        """Report an activation that failed with the SDK's ``error``."""
        message_id = message_id or new_id()
        self.send(self._result(message_id, attempt, ok=False, error=error, detail=detail))
        return message_id

    def send(self, body: dict[str, Any] | bytes, *, wait: bool = False) -> None:
        """Publish on the up topic at QoS 1 (queued by paho while the broker is away); ``wait``: for the PUBACK."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert self._client is not None, f"{self.tid}: not connected"
        sent = self._client.publish(self.up, payload, qos=1)
        if wait:
            sent.wait_for_publish(ANSWER_TIMEOUT_S)

    def auth_key(self, key: dict[str, Any]) -> str | None:
        """The AuthKey of a ``key`` message, opened when sealed; None when it answers a register of another life."""
        if "sealed_key" not in key:
            return str(key["auth_key"])
        private = self._life.seal_keys.get(key["re"])
        if private is None:
            return None
        sealed = SealedKey.from_wire(key["sealed_key"])
        opened = open_sealed_key(sealed, private, device_id=self.device_id, attempt=key["attempt"], re=key["re"])
        return opened.reveal()

    # -- answers -----------------------------------------------------------------------------------

    def answered(self, re: str) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.body.get("re") == re]

    def of_type(self, kind: str) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.type == kind]

    def answer_to(self, re: str, timeout: float = ANSWER_TIMEOUT_S) -> Answer:
        """The first answer whose ``re`` is ``re``."""
        assert self.wait_for(lambda: bool(self.answered(re)), timeout), f"{self.tid}: no answer to {re}"
        return self.answered(re)[0]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = ANSWER_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def follow(self, answer: Answer, emulator: EmulatorProcess, *, timeout: float = 90.0) -> Answer:
        """Carry the protocol on from ``answer`` until ``done`` or an error with ``retry: false``; that answer.

        A ``key`` is activated at the emulator and reported, unless its ``expires_at`` has passed
        (reported ``AuthKeyExpired`` unused, as a device with a clock does); a ``wait`` answering a
        result is followed by the same result, any other ``wait`` or retryable error by a new
        register. A message left unanswered is sent again. Pauses are short (the agent treats an
        early resend as any other), so tests do not sit out ``retry_after_s``.
        """
        deadline = time.monotonic() + timeout
        result: dict[str, Any] | None = None
        while answer.type != "done" and not (answer.type == "error" and not answer.body["retry"]):
            assert time.monotonic() < deadline, f"{self.tid}: no done within {timeout} s; last {answer}"
            if answer.type == "key":
                result = self._use_key(answer, emulator)
                message: dict[str, Any] = result
            elif answer.type == "wait" and result is not None and answer.body["re"] == result["id"]:
                time.sleep(PAUSE_S)
                message = result
            else:  # a wait for a register, or a retryable error: register again
                time.sleep(PAUSE_S)
                result = None
                message = self.register_message(new_id())
            answer = self.ask(message, deadline)
        return answer

    def ask(self, message: dict[str, Any], deadline: float) -> Answer:
        """Send ``message`` and again every RESEND_S until an answer to it arrives (or ``deadline``)."""
        while True:
            self.send(message)
            until = min(deadline, time.monotonic() + RESEND_S)
            if self.wait_for(lambda: bool(self.answered(message["id"])), max(0.0, until - time.monotonic())):
                return self.answered(message["id"])[-1]
            assert time.monotonic() < deadline, f"{self.tid}: no answer to {message['id']}"

    # -- helpers -----------------------------------------------------------------------------------

    def register_message(self, message_id: str) -> dict[str, Any]:
        """The register with ``message_id`` (a new key pair for a new id when sealing; the same for a resend)."""
        body: dict[str, Any] = {"v": 1, "type": "register", "id": message_id, "device_id": self.device_id,
                                "hardware_id": self.hardware_id, "model": self.model, "fw": "hand-1"}  # fmt: skip
        if self.seal:
            private = self._life.seal_keys.setdefault(message_id, X25519PrivateKey.generate())
            body["seal_pub"] = base64.b64encode(private.public_key().public_bytes_raw()).decode()
        return body

    def _use_key(self, key: Answer, emulator: EmulatorProcess) -> dict[str, Any]:
        """Activate with the key (unless it is past its expires_at) and build the result to report."""
        attempt = key.body["attempt"]
        if time.time() >= expires_at(key.body):
            return self._result(new_id(), attempt, ok=False, error="AuthKeyExpired", detail="expires_at passed; unused")
        auth_key = self.auth_key(key.body)
        assert auth_key is not None, f"{self.tid}: a key for a register of another life: {key}"
        try:
            licence = emulator.activate(auth_key, self.hardware_id)
        except ActivationError as exc:
            return self._result(new_id(), attempt, ok=False, error=exc.code, detail=exc.message[:200])
        return self._result(new_id(), attempt, ok=True, sdk_device_id=licence["DeviceId"],
                            begin_day=licence["BeginDay"], expired_day=licence["ExpiredDay"])  # fmt: skip

    def _result(self, message_id: str, attempt: str, *, ok: bool, **members: str) -> dict[str, Any]:
        identity = {"device_id": self.device_id, "hardware_id": self.hardware_id, "model": self.model}
        return {"v": 1, "type": "result", "id": message_id, **identity, "attempt": attempt, "ok": ok, **members}

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.down, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            body = {"raw": message.payload.decode("utf-8", "replace")}
        with self._lock:
            self.answers.append(Answer(time.time(), body))

    def mark_unsubscribed(self) -> None:
        """Before a broker restart: ``wait_subscribed`` then waits for the new subscription."""
        self._subscribed.clear()


def expires_at(key: dict[str, Any]) -> float:
    """A key message's ``expires_at`` (``YYYY-MM-DDThh:mm:ssZ``) as POSIX seconds."""
    return calendar.timegm(time.strptime(key["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))


def new_id() -> str:
    """A message id no other message of any life used."""
    return "h-" + secrets.token_hex(6)
