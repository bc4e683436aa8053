"""A provisioning line for end-to-end tests: broker, emulator, agent processes, MQTT watchers, fleets."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import load_config
from agent.daemon import ProvisioningAgent
from agent.profiles import load_profiles
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import DEFAULT_CONCURRENCY, FleetReport, Timing, run_fleet
from tests.broker import MosquittoBroker

__all__ = ["FAST", "MODEL", "PROFILES", "Line", "Watcher", "line_fixture", "unsealed_profiles"]

PROFILES = str(Path(__file__).parents[2] / "hardware-profiles")
MODEL = "face-terminal-x1"
FAST = Timing(time_scale=0.05)  # device-side timeouts (10 s register resend) scaled to test speed


def unsealed_profiles(directory: Path) -> str:
    """The shipped profiles with ``[sealing] required = false`` (the explicit opt-in), in ``directory``.

    For tests whose raw devices take keys in the clear on purpose: they read the AuthKey off the
    wire, or test something else than sealing with hand-written registers.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for shipped in Path(PROFILES).glob("*.toml"):
        text = shipped.read_text(encoding="utf-8")
        assert "\nrequired = true" in text, shipped
        (directory / shipped.name).write_text(text.replace("\nrequired = true", "\nrequired = false"))
    return str(directory)


class Watcher:
    """A plain MQTT client recording every message on some topics (reports, status, device answers)."""

    def __init__(self, port: int, *topics: str, username: str | None = None, password: str | None = None) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.connack: Any = None  # the broker's CONNACK reason (a broker with passwords may refuse us)
        self.granted: list[Any] = []  # SUBACK reasons, one per topic
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watcher-{random.getrandbits(32):x}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.connect("127.0.0.1", port)
        for topic in topics:
            self._client.subscribe(topic, qos=1)
        self._client.loop_start()
        if not self.wait_for(lambda: self.subscribed(len(topics)), timeout=10):
            raise RuntimeError(f"the broker did not acknowledge the subscriptions to {topics}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = reason

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        with self._lock:
            self.granted.extend(reasons)

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = {"raw": message.payload.decode("utf-8", "replace")}
        with self._lock:
            self.messages.append((message.topic, payload))

    def subscribed(self, count: int) -> bool:
        """The broker acknowledged ``count`` subscriptions (SUBACK), so nothing published after is missed."""
        with self._lock:
            return len(self.granted) >= count

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [payload for name, payload in self.messages if name == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1).wait_for_publish(5)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()


class Line:
    """One provisioning line: broker, emulator, agent configuration; agents started on demand."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, emulator: EmulatorProcess) -> None:
        self.tmp_path, self.broker, self.emulator = tmp_path, broker, emulator
        self.agents: list[AgentProcess] = []
        self.watchers: list[Watcher] = []
        self.env = dict(
            os.environ,
            ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        )

    def config(self, name: str = "gw1", profiles: str = PROFILES, **sections: dict[str, Any]) -> Path:
        values: dict[str, Any] = {
            "gateway_id": name,
            "journal": str(self.tmp_path / f"{name}.sqlite3"),
            "profiles": profiles,
            "log_level": "debug",
            "cloud": {"endpoint": self.emulator.url, "qps": 200.0, "burst": 20},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port},
            # several agents at once: no fixed port (tests that need it set one), no shared Unix socket
            "http": {"listen": "", "socket": ""},
        }
        for section, table in sections.items():
            base = values.get(section, {})
            values[section] = {**(base if isinstance(base, dict) else {"path": base}), **table}
        return write_config(self.tmp_path / f"{name}.toml", values)

    def start_agent(
        self,
        name: str = "gw1",
        env: dict[str, str] | None = None,
        profiles: str = PROFILES,
        launcher: tuple[str, ...] = ("-m", "agent"),
        **sections: dict[str, Any],
    ) -> AgentProcess:
        config = self.config(name, profiles, **sections)
        agent = AgentProcess(config, env={**self.env, **(env or {})}, launcher=launcher).start()
        self.agents.append(agent)
        return agent

    def status(self, port: int) -> dict[str, Any]:
        """An agent's /status over HTTP, with the token it made beside its journal."""
        token = (self.tmp_path / "status.token").read_text().strip()
        answer = httpx.get(
            f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"}, timeout=5, trust_env=False
        )
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        return document

    def fleet(
        self,
        specs: list[Any],
        deadline_s: float = 60.0,
        passwords: dict[str, str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> FleetReport:
        """Run ``specs`` as devices; ``concurrency``: at most this many at once (default: the simulator's)."""
        return asyncio.run(
            run_fleet(
                specs,
                mqtt_host="127.0.0.1",
                mqtt_port=self.broker.port,
                emulator_url=self.emulator.url,
                deadline_s=deadline_s,
                timing=FAST,
                mqtt_passwords=passwords,
                concurrency=concurrency,
            )
        )

    def watch(self, *topics: str, username: str | None = None, password: str | None = None) -> Watcher:
        watcher = Watcher(self.broker.port, *topics, username=username, password=password)
        self.watchers.append(watcher)
        return watcher

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    def close(self) -> None:
        self.stop()
        for watcher in self.watchers:
            watcher.close()


def in_process_agent(
    tmp_path: Path,
    broker: MosquittoBroker,
    emulator: EmulatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    **sections: dict[str, Any],
) -> ProvisioningAgent:
    """The daemon in this process (its parts reachable by the test), on the broker and the emulator."""
    values: dict[str, Any] = {
        "gateway_id": "gw1",
        "journal": str(tmp_path / "journal.sqlite3"),
        "profiles": PROFILES,
        "cloud": {"endpoint": emulator.url},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "http": {"listen": "", "socket": ""},
        **sections,
    }
    config = write_config(tmp_path / "agent.toml", values)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", emulator.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", emulator.access_key_secret)
    return ProvisioningAgent(load_config(config, environ=dict(os.environ)), load_profiles(Path(PROFILES)))


@pytest.fixture(name="line")
def line_fixture(tmp_path: Path, mqtt_broker: MosquittoBroker, emulator: EmulatorProcess) -> Iterator[Line]:
    provisioning_line = Line(tmp_path, mqtt_broker, emulator)
    yield provisioning_line
    provisioning_line.close()
