"""Thousands of devices on one MQTT connection, following docs/protocol.md's resend rules: cheap to run.

``bench/waiting.py`` measures the agent while 1k-10k devices wait on a throttled cloud; a
simulated device per connection (``provisioning_lab.simulator``) would spend more CPU than the
agent and skew the figure. Here one paho client publishes on every device's ``up`` topic and
subscribes to ``+/down`` (the benchmark's broker has no ACL), a timer heap on one thread
resends what the protocol says to resend, and one thread does the activations (the emulator's
SDK step over a keep-alive socket). Each device:

- registers; with no answer, registers again after 10 s, doubling up to 60 s;
- on ``wait``: registers again after ``retry_after_s`` (``in_progress`` too: nothing came);
- on ``key``: activates, sends ``result`` (resent on the same schedule until ``done``);
- on ``done``: stops. On ``error``: registers again after 60 s if ``retry``, else stops.
"""

from __future__ import annotations

import heapq
import itertools
import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as paho
from _daemon_device import ExchangeError, RawHttp
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["Fleet"]

FIRST_RESEND_S: Final = 10.0  # docs/protocol.md, "Backoff"
MAX_RESEND_S: Final = 60.0
ERROR_RETRY_S: Final = 60.0  # an error with retry: true (docs/protocol.md, "internal")
PUBLISH_WINDOW: Final = 1000  # QoS 1 publishes in flight on the fleet's one connection


@dataclass(slots=True)
class _Device:
    device_id: str
    generation: int = 0  # bumped by every answer: a timer armed before it is stale
    backoff: float = FIRST_RESEND_S
    result: bytes = b""  # the result message to resend, once a key came
    attempt: str = ""  # the attempt of the last key taken
    done: bool = False


@dataclass
class FleetLog:
    """What the fleet saw, stamped with ``time.monotonic()``."""

    registers: list[float] = field(default_factory=list)
    keys: list[float] = field(default_factory=list)
    dones: list[float] = field(default_factory=list)
    waits: list[tuple[float, str, int]] = field(default_factory=list)  # (when, reason, retry_after_s)
    errors: list[str] = field(default_factory=list)


class Fleet:
    """``count`` devices ``<prefix>00000``... on ``root``; ``start()`` registers them all at once."""

    def __init__(
        self, host: str, port: int, emulator_url: str, *, root: str, model: str, prefix: str, count: int
    ) -> None:
        self.log = FleetLog()
        self._root, self._model = root, model
        self._devices = {f"{prefix}{n:05d}": _Device(f"{prefix}{n:05d}") for n in range(count)}
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, str, int]] = []  # (due, tie, device_id, generation)
        self._tie = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._activations: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._http = RawHttp(emulator_url)
        self._stop = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-{prefix}", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.max_inflight_messages_set(PUBLISH_WINDOW)
        client.on_message = self._on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect(host, port, keepalive=60)
        client.subscribe(f"{root}/dev/+/down", qos=1)
        client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the fleet could not subscribe")
        self._client = client
        self._threads = [
            threading.Thread(target=self._run_timers, name="fleet-timers", daemon=True),
            threading.Thread(target=self._run_activations, name="fleet-activations", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def start(self) -> None:
        """Every device registers now."""
        for device_id in list(self._devices):
            self._register(device_id)

    def done(self) -> int:
        """Devices that got ``done``."""
        with self._lock:
            return sum(device.done for device in self._devices.values())

    def close(self) -> None:
        """Stop resending, disconnect."""
        with self._lock:
            self._stop = True
            self._wake.notify()
        self._activations.put(None)
        for thread in self._threads:
            thread.join(10)
        self._client.disconnect()
        self._client.loop_stop()
        self._http.close()

    # -- the protocol's device side ---------------------------------------------------------------

    def _register(self, device_id: str) -> None:
        message = {
            "v": 1,
            "type": "register",
            "id": secrets.token_hex(8),
            "device_id": device_id,
            "hardware_id": f"hw-{device_id}",
            "model": self._model,
            "fw": "bench-1",
        }
        self._publish(device_id, json.dumps(message).encode())
        with self._lock:
            device = self._devices[device_id]
            self.log.registers.append(time.monotonic())
            self._arm(device, device.backoff)
            device.backoff = min(MAX_RESEND_S, device.backoff * 2)

    def _publish(self, device_id: str, payload: bytes) -> None:
        self._client.publish(f"{self._root}/dev/{device_id}/up", payload, qos=1)

    def _arm(self, device: _Device, after: float) -> None:
        """Resend after ``after`` seconds unless an answer comes first (lock held)."""
        heapq.heappush(self._timers, (time.monotonic() + after, next(self._tie), device.device_id, device.generation))
        self._wake.notify()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        answer = json.loads(message.payload)
        kind = answer.get("type")
        with self._lock:
            device = self._devices.get(str(answer.get("device_id")))
            if device is None or device.done:
                return
            device.generation += 1
            if kind == "wait":
                retry = int(answer["retry_after_s"])
                self.log.waits.append((now, str(answer["reason"]), retry))
                device.backoff = FIRST_RESEND_S
                self._arm(device, retry)
            elif kind == "key":
                if answer["attempt"] != device.attempt:  # the same key again (a resend) is used once
                    self.log.keys.append(now)  # a CreateAuthKey (a resent key cost none)
                    device.attempt = answer["attempt"]
                    self._activations.put((device.device_id, answer))
                elif device.result:
                    self._arm(device, device.backoff)  # keep resending the result already sent
            elif kind == "done":
                self.log.dones.append(now)
                device.done = True
            elif kind == "error":
                self.log.errors.append(str(answer.get("code")))
                if answer.get("retry"):
                    device.result = b""
                    self._arm(device, ERROR_RETRY_S)
                else:
                    device.done = True

    def _run_activations(self) -> None:
        while (job := self._activations.get()) is not None:
            device_id, key = job
            hardware_id = f"hw-{device_id}"
            body = json.dumps({"AuthKey": key["auth_key"], "HardwareId": hardware_id}).encode()
            try:
                licence = self._http.post("/_emulator/activate", body, "application/json")
            except ExchangeError as exc:  # e.g. a key expired while the device waited: it registers again
                with self._lock:
                    self.log.errors.append(f"activation: {exc}")
                    device = self._devices[device_id]
                    device.result, device.attempt = b"", ""
                    self._arm(device, ERROR_RETRY_S)
                continue
            result = {
                "v": 1,
                "type": "result",
                "id": secrets.token_hex(8),
                "device_id": device_id,
                "hardware_id": hardware_id,
                "model": self._model,
                "attempt": key["attempt"],
                "ok": True,
                "sdk_device_id": licence["DeviceId"],
                "begin_day": licence["BeginDay"],
                "expired_day": licence["ExpiredDay"],
            }
            payload = json.dumps(result).encode()
            with self._lock:
                device = self._devices[device_id]
                device.result = payload
                device.backoff = FIRST_RESEND_S
                self._arm(device, device.backoff)
            self._publish(device_id, payload)

    def _run_timers(self) -> None:
        while True:
            with self._lock:
                while not self._stop and (not self._timers or self._timers[0][0] > time.monotonic()):
                    self._wake.wait(self._timers[0][0] - time.monotonic() if self._timers else None)
                if self._stop:
                    return
                _, _, device_id, generation = heapq.heappop(self._timers)
                device = self._devices[device_id]
                if device.done or generation != device.generation:
                    continue
                result = device.result
                if result:
                    self._arm(device, device.backoff)
                    device.backoff = min(MAX_RESEND_S, device.backoff * 2)
            if result:
                self._publish(device_id, result)
            else:
                self._register(device_id)
