"""A simulated device: its state machine (``_machine``) driven over a real MQTT link and the SDK."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from provisioning_lab.simulator._driver import MachineDriver
from provisioning_lab.simulator._machine import Activate, Command, Die, Publish, SetTimer
from provisioning_lab.simulator._mqtt import LinkError, MqttLink
from provisioning_lab.simulator._outcome import DeviceOutcome
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._spec import COMEBACK_DELAY_S, DeviceSpec, Timing

__all__ = ["DeviceEnv", "SimulatedDevice", "down_topic", "up_topic"]

CONNECT_RETRY_MIN_S: Final = 1.0  # a device that cannot reach the broker tries again after this (scaled) ...
CONNECT_RETRY_MAX_S: Final = 30.0  # ... doubling up to this (scaled)

log = logging.getLogger(__name__)


def up_topic(topic_root: str, tid: str) -> str:
    """Where a device publishes."""
    return f"{topic_root}/dev/{tid}/up"


def down_topic(topic_root: str, tid: str) -> str:
    """Where a device listens."""
    return f"{topic_root}/dev/{tid}/down"


@dataclass(frozen=True, slots=True)
class DeviceEnv:
    """What a device reaches: the broker, the topic root, the SDK's cloud, and its clock settings."""

    mqtt_host: str
    mqtt_port: int
    topic_root: str
    sdk: EmulatorSdk
    timing: Timing
    passwords: Mapping[str, str] | None = None  # by tid: log in as username <tid> (a broker with an ACL)


class SimulatedDevice(MachineDriver):
    """One device from power-on to its outcome."""

    def __init__(self, spec: DeviceSpec, env: DeviceEnv) -> None:
        super().__init__(spec, env.timing)
        self._env = env
        self._up = up_topic(env.topic_root, spec.tid)
        self._down = down_topic(env.topic_root, spec.tid)
        self._link: MqttLink | None = None
        self._link_error = ""

    async def run(self) -> None:
        """Connect, go through the exchange, disconnect; returns when the device is finished."""
        try:
            await self._connect()
            await self._drive()
        finally:
            link, self._link = self._link, None
            if link is not None:
                await link.aclose()

    def expire(self) -> None:
        """The deadline passed; record a timeout unless the device finished."""
        detail = f"never connected: {self._link_error}" if self._link_error and self._link is None else ""
        self.machine.expire(detail)

    def outcome(self) -> DeviceOutcome:
        """How the device ended (or where it is)."""
        return self.machine.outcome()

    async def _perform(self, command: Command) -> list[Command]:
        match command:
            case Publish(payload):
                if self._link is not None:
                    self._link.publish(self._up, payload)
            case SetTimer(delay):
                self._timer_at = None if delay is None else asyncio.get_running_loop().time() + delay
            case Activate(auth_key, hardware_id):
                started = time.time()
                result = await self._env.sdk.activate(auth_key, hardware_id)
                return self.machine.activated(result, started, time.time())
            case Die():
                log.debug("%s dies", self.spec.tid)
                link, self._link = self._link, None
                if link is not None:
                    link.abort()
                if not self.machine.finished:  # comeback: the device reboots
                    await asyncio.sleep(self._env.timing.scaled(COMEBACK_DELAY_S))
                    await self._connect()
                    return self.machine.revive(time.time())
        return []

    async def _connect(self) -> None:
        """Connect and subscribe, retrying with backoff until it works (or the deadline cancels us)."""
        delay = CONNECT_RETRY_MIN_S
        while True:
            inbox: asyncio.Queue[bytes] = asyncio.Queue()
            password = None if self._env.passwords is None else self._env.passwords.get(self.spec.tid)
            link = MqttLink(
                client_id=self.spec.tid,
                host=self._env.mqtt_host,
                port=self._env.mqtt_port,
                protocol=self.spec.protocol,
                on_message=inbox.put_nowait,
                username=None if password is None else self.spec.tid,
                password=password,
            )
            try:
                await link.open(self._down)
            except LinkError as exc:
                link.abort()
                self._link_error = str(exc)
                log.debug("%s: %s", self.spec.tid, exc)
                await asyncio.sleep(self._env.timing.scaled(delay))
                delay = min(delay * 2, CONNECT_RETRY_MAX_S)
                continue
            except BaseException:
                link.abort()
                raise
            self._link, self._inbox, self._timer_at, self._link_error = link, inbox, None, ""
            return
