"""The attack line: the shipped broker, the emulator, the real agent, honest devices and attackers over TLS.

The broker runs ``systemd/mosquitto/provisioning.conf`` and ``acl`` exactly as shipped
(:class:`tests.broker.ShippedBroker`): the agent on the mTLS listener with a certificate whose CN is
its ACL user, every device on the TLS listener with username = its topic id and a password of its
own, the MES with its own login. The agent is a real ``provisioning-agent run`` process; the cloud
is the emulator over HTTP, which is also where an attacker tries to activate what it got.

Every attack test ends with :meth:`AttackLine.assert_unharmed`: no key usable by the attacker, no
licence spent for the attacker, the honest devices served at once, no secret in any log, endpoint or
the journal, the agent alive with bounded memory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from provisioning.protocol import Register, device_cert_bytes, register_signed_bytes
from provisioning.sealing import SealedKey, SealingError, open_sealed_key
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import ActivationError, EmulatorProcess
from tests.broker import Pki, ShippedBroker

__all__ = [
    "AGENT_USER",
    "DEVICE_PATIENCE_S",
    "GUARD_S",
    "MES_USER",
    "MODEL",
    "PROFILES_DIR",
    "AttackLine",
    "Attacker",
    "Identity",
    "MqttDevice",
    "Outcome",
    "b64",
    "memory_kb",
    "profile_text",
    "work_order",
]

AGENT_USER: Final = "provisioning-agent"  # the CN of the agent's certificate, its ACL user
MES_USER: Final = "mes"
MODEL: Final = "face-terminal-x1"
PROFILES_DIR: Final = Path(__file__).parents[2] / "hardware-profiles"
GUARD_S: Final = 20.0  # a guard against hangs, not a timing assertion
# docs/protocol.md: a device resends a register that got no answer within 10 s. An honest device that
# needs longer than that (or is told to wait) has been delayed by the attack.
DEVICE_PATIENCE_S: Final = 10.0
# The agent's peak RSS may grow this much over a test (a 128 MB publish once took it to 529 MB).
RSS_GROWTH_BOUND_KB: Final = 48 * 1024
# An agent still busy with an attack's backlog when the test ends need not drain it (its own drain is 20 s).
STOP_GRACE_S: Final = 3.0


def memory_kb(pid: int) -> dict[str, int]:
    """A process's VmRSS and VmHWM (its peak RSS) in kB, from /proc."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def profile_text(model: str = MODEL, *, admission: str = "", sealing: str = "") -> str:
    """The X1 hardware profile as shipped but for its model name, its [sealing] table (``sealing``
    replaces it; empty: the loader's default) and an [admission] table."""
    text = (PROFILES_DIR / f"{MODEL}.toml").read_text(encoding="utf-8")
    text = re.sub(r"^\[sealing\]\n(?:[^\[\n].*\n|\n)*", "", text, flags=re.MULTILINE).rstrip() + "\n"
    text = text.replace(f'model = "{MODEL}"', f'model = "{model}"').replace('"FACE_TERMINAL_X1"', f'"{model.upper()}"')
    if sealing:
        text += f"\n[sealing]\n{sealing}\n"
    if admission:
        text += f"\n[admission]\n{admission}\n"
    return text


def work_order(folder: Path, *devices: Identity) -> Path:
    """A work order listing ``devices`` with their identity keys (docs/admission.md)."""
    folder.mkdir(exist_ok=True)
    rows = ["order,model,device_id,device_key"]
    rows += [f"WO-1,{d.model},{d.device_id},{b64(d.public_key)}" for d in devices]
    path = folder / "wo-1.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@dataclass
class Identity:
    """An honest device: its ids and its Ed25519 identity key (certified by ``ca`` when given)."""

    device_id: str
    model: str = MODEL
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    ca: Ed25519PrivateKey | None = None
    hardware: str = ""  # the hardware_id it reports; default hw-<device_id>

    @property
    def hardware_id(self) -> str:
        return self.hardware or f"hw-{self.device_id}"

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    def register(self, message_id: str, *, seal: X25519PrivateKey | None, signed: bool = True) -> dict[str, Any]:
        """A register as docs/protocol.md defines it, signed by the identity key (and certified) when asked."""
        seal_text = b64(seal.public_key().public_bytes_raw()) if seal is not None else ""
        body: dict[str, Any] = {"v": 1, "type": "register", "id": message_id, "device_id": self.device_id,
                                "hardware_id": self.hardware_id, "model": self.model}  # fmt: skip
        if seal_text:
            body["seal_pub"] = seal_text
        if signed:
            register = Register(message_id, self.device_id, self.hardware_id, self.model, seal_pub_b64=seal_text)
            body["sig"] = b64(self.key.sign(register_signed_bytes(register)))
            if self.ca is not None:
                body["device_key"] = b64(self.public_key)
                body["device_cert"] = b64(self.ca.sign(device_cert_bytes(self.device_id, self.public_key)))
        return body


class MqttDevice:
    """One MQTT client logged in as ``tid`` on the devices' TLS listener; records every answer on its down topic."""

    def __init__(
        self,
        broker: ShippedBroker,
        tid: str,
        password: str,
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.tid = tid
        self.up, self.down = f"prov/v1/dev/{tid}/up", f"prov/v1/dev/{tid}/down"
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.connack: Any = None
        self.granted: list[Any] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        # No reconnecting: a client the broker hangs up on stays down (and leaves no half-open socket behind).
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=tid, protocol=protocol, reconnect_on_failure=False
        )
        self._client.tls_set(ca_certs=str(broker.pki.ca_file))
        self._client.username_pw_set(tid, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not self._connected.wait(GUARD_S):
            raise AssertionError(f"{tid}: no CONNACK from the broker")
        if not self.connack.is_failure and not self._subscribed.wait(GUARD_S):  # our down topic
            raise AssertionError(f"{tid}: no SUBACK for {self.down}")

    def subscribe(self, *topics: str) -> list[Any]:
        """Subscribe and wait for the SUBACK; the broker's reason codes."""
        self._subscribed.clear()
        with self._lock:
            before = len(self.granted)
        self._client.subscribe([(topic, 1) for topic in topics])
        if not self._subscribed.wait(GUARD_S):
            raise AssertionError(f"{self.tid}: no SUBACK")
        with self._lock:
            return self.granted[before:]

    def publish(self, message: Mapping[str, Any] | bytes, topic: str | None = None) -> Any:
        """Publish at QoS 1 on our up topic (or ``topic``) and wait for the PUBACK; paho's MessageInfo."""
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        info = self._client.publish(topic or self.up, payload, qos=1)
        info.wait_for_publish(GUARD_S)
        return info

    def publish_nowait(self, payload: bytes) -> None:
        """Publish at QoS 1 without waiting for the PUBACK (which an oversized publish never gets)."""
        self._client.publish(self.up, payload, qos=1)

    def publish_many(self, messages: Iterable[Mapping[str, Any]]) -> None:
        """Publish a burst at QoS 1, then wait for every PUBACK."""
        infos = [self._client.publish(self.up, json.dumps(m).encode(), qos=1) for m in messages]
        for info in infos:
            info.wait_for_publish(GUARD_S)

    def answers(self, topic: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [payload for name, payload in self.messages if name == (topic or self.down)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = GUARD_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def settle(self, quiet_s: float = 1.0, timeout: float = GUARD_S) -> int:
        """Wait until no message has arrived for ``quiet_s`` (the agent answered or dropped what it got);
        the number of messages received on every topic."""
        deadline = time.monotonic() + timeout
        count, since = len(self.messages), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
            time.sleep(0.05)
            if (now := len(self.messages)) != count:
                count, since = now, time.monotonic()
        return count

    def wait_answer(self, re: str, timeout: float = GUARD_S) -> dict[str, Any] | None:
        """The first answer quoting ``re`` (None after ``timeout``)."""
        self.wait_for(lambda: any(a.get("re") == re for a in self.answers()), timeout)
        return next((a for a in self.answers() if a.get("re") == re), None)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        # The MQTT socket and the socket pair loop_start() made; paho itself closes them only when the
        # client is garbage-collected, which a reference cycle may delay past the test (a ResourceWarning).
        self._client._reset_sockets()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = reason
        if not reason.is_failure:
            client.subscribe(self.down, qos=1)
        self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        with self._lock:
            self.granted.extend(reasons)
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = {"raw": message.payload[:200].decode("utf-8", "replace")}
        with self._lock:
            self.messages.append((message.topic, payload))


@dataclass
class Outcome:
    """How an honest device fared: its answers, how long until ``done``, the key it used."""

    device_id: str
    hardware_id: str
    answers: list[dict[str, Any]]
    elapsed_s: float
    done: dict[str, Any] | None
    auth_key: str | None


class Attacker:
    """Someone with a device login of its own (a rogue device, a stolen login) and hardware to activate keys on."""

    def __init__(self, device: MqttDevice, hardware_id: str) -> None:
        self.device = device
        self.hardware_id = hardware_id
        self._seals: dict[str, X25519PrivateKey] = {}  # register id -> the seal key it sent
        self.activated: list[dict[str, Any]] = []

    def register(
        self, device_id: str, hardware_id: str, model: str = MODEL, *, message_id: str = "", **members: Any
    ) -> str:
        """An unsigned register with the attacker's own seal_pub (unless ``seal_pub`` is given); its id."""
        message_id = message_id or f"x-{secrets.token_hex(4)}"
        seal = X25519PrivateKey.generate()
        self._seals[message_id] = seal
        body = {"v": 1, "type": "register", "id": message_id, "device_id": device_id, "hardware_id": hardware_id,
                "model": model, "seal_pub": b64(seal.public_key().public_bytes_raw()), **members}  # fmt: skip
        self.device.publish({k: v for k, v in body.items() if v is not None})
        return message_id

    def auth_keys(self) -> list[str]:
        """Every AuthKey that reached the attacker's down topic, opened when sealed to one of its seal keys."""
        found = []
        for answer in self.device.answers():
            if answer.get("type") != "key":
                continue
            if "auth_key" in answer:
                found.append(str(answer["auth_key"]))
                continue
            seal = self._seals.get(str(answer.get("re")))
            if seal is None:
                continue
            try:
                sealed = SealedKey.from_wire(answer["sealed_key"])
                found.append(open_key(sealed, seal, answer))
            except (SealingError, KeyError):
                continue
        return found

    def activate_all(self, emulator: EmulatorProcess) -> list[dict[str, Any]]:
        """Try every key it holds on its own hardware (as the device SDK would); the licences that worked."""
        for key in self.auth_keys():
            with contextlib.suppress(ActivationError):  # used, expired or unknown: nothing gained
                self.activated.append(emulator.activate(key, self.hardware_id))
        return self.activated


class AttackLine:
    """Broker, emulator, agent and clients of one attack test; everything is stopped by :meth:`close`."""

    def __init__(self, tmp_path: Path, pki: Pki, emulator: EmulatorProcess, tids: Iterable[str]) -> None:
        self.tmp_path, self.pki, self.emulator = tmp_path, pki, emulator
        self.passwords = {tid: secrets.token_urlsafe(16) for tid in tids}
        self.passwords[MES_USER] = secrets.token_urlsafe(16)
        self.broker = ShippedBroker(tmp_path / "broker", pki, self.passwords).start()
        self.agent: AgentProcess | None = None
        self.http_port = 0
        self.clients: list[MqttDevice] = []
        self.seen_keys: set[str] = set()  # every AuthKey an honest device received: none may leak
        self._baseline_hwm_kb = 0
        self.env = dict(
            os.environ,
            ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
            ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
        )

    # -- the agent -------------------------------------------------------------------------------

    def profiles(self, **files: str) -> Path:
        """A hardware-profile folder: ``name=toml text`` per file."""
        folder = self.tmp_path / "profiles"
        folder.mkdir(exist_ok=True)
        for name, text in files.items():
            (folder / f"{name}.toml").write_text(text, encoding="utf-8")
        return folder

    def config(self, profiles: Path, **sections: dict[str, Any]) -> Path:
        pki = self.pki
        self.http_port = free_port()
        values: dict[str, Any] = {
            "gateway_id": "gw1",
            "journal": str(self.tmp_path / "journal.sqlite3"),
            "profiles": str(profiles),
            "log_level": "info",
            "cloud": {"endpoint": self.emulator.url, "qps": 200.0, "burst": 20},
            "mqtt": {
                "host": "127.0.0.1",
                "port": self.broker.tls_port,
                "ca_file": str(pki.ca_file),
                "cert_file": str(pki.client_cert),
                "key_file": str(pki.client_key),
            },
            # No socket (a real agent's may be in /run); the status token beside the journal.
            "http": {"listen": f"127.0.0.1:{self.http_port}", "socket": ""},
        }
        for section, table in sections.items():
            values[section] = {**values.get(section, {}), **table}
        return write_config(self.tmp_path / "agent.toml", values)

    def start_agent(self, profiles: Path, **sections: dict[str, Any]) -> AgentProcess:
        self.agent = AgentProcess(self.config(profiles, **sections), env=self.env).start()
        self._baseline_hwm_kb = self.memory_kb()["VmHWM"]
        return self.agent

    def endpoint(self, path: str) -> httpx.Response:
        """GET one of the agent's HTTP endpoints (``/status``, ``/metrics``, ``/health``), as an operator
        with the status token would (the private pages need it)."""
        token = (self.tmp_path / "status.token").read_text(encoding="ascii").strip()
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(f"http://127.0.0.1:{self.http_port}{path}", headers=headers, timeout=GUARD_S)

    def memory_kb(self) -> dict[str, int]:
        """The agent's VmRSS and VmHWM (peak RSS) in kB."""
        assert self.agent is not None
        return memory_kb(self.agent.pid)

    # -- clients ---------------------------------------------------------------------------------

    def device(self, tid: str, *, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5) -> MqttDevice:
        client = MqttDevice(self.broker, tid, self.passwords[tid], protocol=protocol)
        self.clients.append(client)
        return client

    def attacker(self, tid: str) -> Attacker:
        return Attacker(self.device(tid), hardware_id=f"hw-attacker-{tid}")

    def provision(self, identity: Identity, client: MqttDevice | None = None, *, message_id: str = "") -> Outcome:
        """An honest device's whole path: sealed and signed register, key, activation, result, done."""
        client = client or self.device(identity.device_id)
        message_id = message_id or f"r-{secrets.token_hex(4)}"
        seal = X25519PrivateKey.generate()
        started = time.monotonic()
        client.publish(identity.register(message_id, seal=seal))
        answer = client.wait_answer(message_id, DEVICE_PATIENCE_S)
        auth_key = None
        if answer is not None and answer.get("type") == "key":
            auth_key = self.open_key(answer, seal)
            self.report(client, identity, answer, auth_key)
            client.wait_for(lambda: any(a.get("type") == "done" for a in client.answers()), DEVICE_PATIENCE_S)
        done = next((a for a in client.answers() if a.get("type") == "done"), None)
        return Outcome(
            identity.device_id, identity.hardware_id, client.answers(), time.monotonic() - started, done, auth_key
        )

    def open_key(self, answer: Mapping[str, Any], seal: X25519PrivateKey) -> str:
        """An honest device opens its sealed key (and the test remembers it as a secret that must not leak)."""
        key = open_key(SealedKey.from_wire(answer["sealed_key"]), seal, answer)
        self.seen_keys.add(key)
        return key

    def report(self, client: MqttDevice, identity: Identity, key: Mapping[str, Any], auth_key: str) -> dict[str, Any]:
        """Activate ``auth_key`` on the device's hardware and send the result; the result sent."""
        result: dict[str, Any] = {"v": 1, "type": "result", "id": f"s-{secrets.token_hex(4)}",
                                  "device_id": identity.device_id, "hardware_id": identity.hardware_id,
                                  "model": identity.model, "attempt": key["attempt"]}  # fmt: skip
        try:
            licence = self.emulator.activate(auth_key, identity.hardware_id)
        except ActivationError as exc:
            result |= {"ok": False, "error": exc.code}
        else:
            result |= {"ok": True, "sdk_device_id": licence["DeviceId"], "begin_day": licence["BeginDay"],
                       "expired_day": licence["ExpiredDay"]}  # fmt: skip
        client.publish(result)
        return result

    # -- the end of every attack -----------------------------------------------------------------

    def assert_unharmed(
        self, *, attackers: Iterable[Attacker], served: Iterable[Outcome], attacker_licences: int = 0
    ) -> None:
        """What every attack must leave: see the module docstring."""
        attackers, served = list(attackers), list(served)
        for attacker in attackers:  # it tries whatever it got on its own hardware
            attacker.activate_all(self.emulator)
        audit = self.emulator.audit()
        theirs = {a.hardware_id for a in attackers}
        spent = [d for d in audit["devices"] if d["HardwareId"] in theirs]
        assert len(spent) <= attacker_licences, f"licence(s) spent for the attacker: {spent}"
        for outcome in served:
            kinds = [(a.get("type"), a.get("code") or a.get("reason")) for a in outcome.answers]
            assert outcome.done is not None, f"honest device {outcome.device_id} was not served: {kinds}"
            assert not [k for k in kinds if k[0] in ("wait", "error")], f"{outcome.device_id} was put off: {kinds}"
            assert outcome.elapsed_s < DEVICE_PATIENCE_S, f"{outcome.device_id} waited {outcome.elapsed_s:.1f} s"
            licence = [d for d in audit["devices"] if d["HardwareId"] == outcome.hardware_id]
            assert [d["DeviceId"] for d in licence] == [outcome.done["sdk_device_id"]]
        self.assert_no_secret_shown(extra={key for attacker in attackers for key in attacker.auth_keys()})
        self.assert_agent_healthy()

    def assert_no_secret_shown(self, extra: Iterable[str] = ()) -> None:
        """No AuthKey, AccessKey secret or password in the agent's log or endpoints, the broker's log, the journal."""
        assert self.agent is not None
        hidden = self.seen_keys | set(extra) | set(self.passwords.values()) | {self.emulator.access_key_secret}
        hidden |= {self.pki.client_key.read_text().splitlines()[1]}  # a line of the agent's TLS private key
        places = {"agent log": self.agent.log_text(), "broker log": self.broker.log_text()}
        for path in ("/status", "/metrics", "/health"):
            places[path] = self.endpoint(path).text
        for journal in self.tmp_path.glob("journal.sqlite3*"):
            places[journal.name] = journal.read_bytes().decode("latin-1")
        shown = {(secret[:6] + "...", where) for secret in hidden for where, text in places.items() if secret in text}
        assert not shown, f"secrets shown: {sorted(shown)}"

    def assert_agent_healthy(self) -> None:
        assert self.agent is not None
        assert self.agent.running(), f"the agent died; log:\n{self.agent.log_text()[-3000:]}"
        grown = self.memory_kb()["VmHWM"] - self._baseline_hwm_kb
        assert grown < RSS_GROWTH_BOUND_KB, f"the agent's peak RSS grew by {grown} kB"
        log = self.agent.log_text()
        assert "Traceback" not in log
        assert "unexpected failure" not in log

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.agent is not None:
            self.agent.stop(timeout=STOP_GRACE_S)
        self.broker.stop()


def open_key(sealed: SealedKey, seal: X25519PrivateKey, key: Mapping[str, Any]) -> str:
    """Open a ``key`` message's sealed AuthKey with the device's seal key (docs/protocol.md, "Key sealing")."""
    opened = open_sealed_key(sealed, seal, device_id=key["device_id"], attempt=key["attempt"], re=key["re"])
    return opened.reveal()
