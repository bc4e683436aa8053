"""The device simulator against a real Mosquitto, the real emulator and a scripted responder.

The agent daemon is not in these tests: ``Responder`` stands in for it. It is a plain paho
client that reads what devices publish with the agent's codec (``provisioning.protocol``),
answers ``key``/``wait``/``error``/``done`` as docs/protocol.md describes, mints real keys on
the emulator, and records everything it got so tests can check what the devices sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from provisioning.protocol import (
    Done,
    ErrorReply,
    Key,
    ProtocolError,
    Register,
    Result,
    Wait,
    decode_device_message,
    encode,
)
from provisioning.secret import Secret
from provisioning_lab._ports import free_port
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import Behaviour, DeviceSpec, FleetReport, Timing, fleet_specs, run_fleet
from provisioning_lab.simulator._cli import add_parser
from provisioning_lab.simulator._wire import GARBAGE_EXPECTED_CODES, format_instant
from tests.conftest import SignedRequests

FAST = Timing(time_scale=0.05, late_by_s=0.3)  # protocol timeouts of 10 s become 0.5 s
DEADLINE_S = 20.0  # a single-device test that is not done by then is stuck
KEY_LIFE_S = 25 * 60  # what the responder promises in expires_at (the emulator's keys live 30 minutes)
SETTLE_S = 5.0  # how long a test waits for the responder to see messages still in flight
BROKER_START_S = 10.0  # mosquitto listens within ~20 ms; a loaded runner gets slack


@dataclass
class Seen:
    """One message the responder received."""

    tid: str
    payload: bytes
    message: Register | Result | None
    error: str = ""  # the protocol error code the responder answered, if it refused the message
    late: bool = False  # a result that came after activate_within_s


@dataclass
class _Device:
    keys: dict[str, bytes] = field(default_factory=dict)  # register id -> key message sent for it
    deadlines: dict[str, float] = field(default_factory=dict)  # attempt -> monotonic instant of its deadline
    done: Done | None = None


class Responder:
    """A scripted stand-in for the agent (see the module docstring); its knobs script misbehaviour."""

    def __init__(
        self,
        broker: MosquittoBroker,
        signed: SignedRequests,
        *,
        topic_root: str = "prov/v1",
        activate_within_s: int = 120,
        waits: int = 0,
        drop_registers: int = 0,
        drop_results: int = 0,
        expired_keys: int = 0,
        rekey_after_done: bool = False,
        known_models: tuple[str, ...] = ("face-terminal-x1",),
    ) -> None:
        self.signed = signed
        self.topic_root = topic_root
        self.activate_within_s = activate_within_s
        self.rekey_after_done = rekey_after_done
        self.known_models = known_models
        self.seen: list[Seen] = []
        self.failures: list[str] = []
        self._budget = {"waits": waits, "drop_registers": drop_registers, "drop_results": drop_results}
        self._budget["expired_keys"] = expired_keys
        self._spent: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._devices: dict[str, _Device] = defaultdict(_Device)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="responder", protocol=MQTTProtocolVersion.MQTTv5)
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.connect(broker.host, broker.port)
        client.subscribe(f"{topic_root}/dev/+/up", qos=1)
        client.loop_start()
        assert self._subscribed.wait(10), "responder: no SUBACK"
        self.client = client

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- what tests look at -------------------------------------------------------------------------

    def of(self, device_id: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.message is not None and s.message.device_id == device_id]

    def registers(self, device_id: str) -> list[Register]:
        return [s.message for s in self.of(device_id) if isinstance(s.message, Register)]

    def results(self, device_id: str) -> list[Seen]:
        return [s for s in self.of(device_id) if isinstance(s.message, Result)]

    def wait_until(self, condition: Callable[[], bool]) -> None:
        """Let messages still in flight arrive (devices do not wait for answers to their last ones)."""
        deadline = time.monotonic() + SETTLE_S
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- the script ---------------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._handle(message.topic.split("/")[-2], bytes(message.payload))
        except Exception as exc:  # a failing responder must fail the test, not kill paho's thread
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def _handle(self, tid: str, payload: bytes) -> None:
        try:
            decoded = decode_device_message(payload)
        except ProtocolError as exc:
            self._record(Seen(tid, payload, None, error=exc.code))
            self._send(tid, ErrorReply(exc.re_id, exc.device_id, exc.code, exc.message, retry=False))
            return
        seen = Seen(tid, payload, decoded)
        self._record(seen)
        device = self._devices[decoded.device_id]
        if isinstance(decoded, Register):
            self._on_register(tid, decoded, device, seen)
        else:
            self._on_result(tid, decoded, device, seen)

    def _on_register(self, tid: str, register: Register, device: _Device, seen: Seen) -> None:
        if register.model not in self.known_models:
            seen.error = "unknown_profile"
            self._send(tid, ErrorReply(register.id, register.device_id, "unknown_profile", "no profile", retry=False))
            return
        if device.done is not None and not self.rekey_after_done:
            done = device.done
            self._send(tid, Done(register.id, done.device_id, done.sdk_device_id, done.begin_day, done.expired_day))
            return
        if self._spend(register.device_id, "drop_registers"):
            return
        if self._spend(register.device_id, "waits"):
            self._send(tid, Wait(register.id, register.device_id, "queued", retry_after_s=1))
            return
        if register.id not in device.keys:
            auth_key = self.signed.call("CreateAuthKey", AuthYears="1", UserDeviceId=register.device_id)["AuthKey"]
            attempt = secrets.token_hex(8)
            expires = time.time() + (-60 if self._spend(register.device_id, "expired_keys") else KEY_LIFE_S)
            key = Key(
                register.id,
                register.device_id,
                attempt,
                Secret(auth_key),
                format_instant(expires),
                self.activate_within_s,
            )
            device.keys[register.id] = encode(key)
            device.deadlines[attempt] = time.monotonic() + self.activate_within_s
        self._publish(tid, device.keys[register.id])

    def _on_result(self, tid: str, result: Result, device: _Device, seen: Seen) -> None:
        deadline = device.deadlines.get(result.attempt)
        if deadline is None:
            seen.error = "unknown_attempt"
            self._send(tid, ErrorReply(result.id, result.device_id, "unknown_attempt", "not ours", retry=False))
            return
        seen.late = time.monotonic() > deadline
        if self._spend(result.device_id, "drop_results"):
            return
        if not result.ok:
            reply = ErrorReply(result.id, result.device_id, "activation_failed", result.error, retry=True)
            self._send(tid, reply)
            return
        device.done = Done(result.id, result.device_id, result.sdk_device_id, result.begin_day, result.expired_day)
        self._send(tid, device.done)

    def _spend(self, device_id: str, budget: str) -> bool:
        spent = self._spent[device_id]
        if spent[budget] < self._budget[budget]:
            spent[budget] += 1
            return True
        return False

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _send(self, tid: str, message: Key | Done | Wait | ErrorReply) -> None:
        self._publish(tid, encode(message))

    def _publish(self, tid: str, payload: bytes) -> None:
        self.client.publish(f"{self.topic_root}/dev/{tid}/down", payload, qos=1)


class MosquittoBroker:
    """A minimal real Mosquitto on a free loopback port: anonymous, no persistence."""

    host = "127.0.0.1"

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")
        assert binary is not None, "mosquitto not found"
        self.process = subprocess.Popen([binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + BROKER_START_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "mosquitto exited"
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real Mosquitto on a free loopback port."""
    running = MosquittoBroker(tmp_path)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def responder_factory(broker: MosquittoBroker, signed: SignedRequests) -> Iterator[Callable[..., Responder]]:
    started: list[Responder] = []

    def start(**options: Any) -> Responder:
        responder = Responder(broker, signed, **options)
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.close()
        assert not responder.failures, responder.failures


async def fleet(
    broker: MosquittoBroker,
    emulator: EmulatorProcess,
    specs: list[DeviceSpec],
    *,
    timing: Timing = FAST,
    deadline_s: float = DEADLINE_S,
    **options: Any,
) -> FleetReport:
    return await run_fleet(
        specs,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        emulator_url=emulator.url,
        deadline_s=deadline_s,
        timing=timing,
        **options,
    )


def device(behaviour: Behaviour = Behaviour.NORMAL, **options: Any) -> DeviceSpec:
    """A device that takes keys in the clear: the responder does not seal (the agent's sealing has its own tests)."""
    return DeviceSpec(
        device_id=options.pop("device_id", "SN-0001"),
        hardware_id=options.pop("hardware_id", "hw-0001"),
        model=options.pop("model", "face-terminal-x1"),
        behaviour=behaviour,
        seal=options.pop("seal", False),
        **options,
    )


def licences(emulator: EmulatorProcess) -> int:
    total: int = emulator.audit()["licences_consumed_total"]
    return total


# -- the normal path ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_normal_device_is_licensed_once(
    protocol: str, broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(protocol=protocol)])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed", outcome
    audit = emulator.audit()
    assert audit["licences_consumed_total"] == 1
    [cloud_device] = audit["devices"]
    assert (outcome.sdk_device_id, outcome.begin_day, outcome.expired_day) == (
        cloud_device["DeviceId"],
        cloud_device["BeginDay"],
        cloud_device["ExpiredDay"],
    )
    assert cloud_device["HardwareId"] == "hw-0001"
    kinds = [type(s.message).__name__ for s in responder.of("SN-0001")]
    assert kinds == ["Register", "Result"]
    [result] = responder.results("SN-0001")
    assert isinstance(result.message, Result)
    assert result.message.ok
    assert not result.late
    counters = outcome.counters
    assert (counters.keys_received, counters.distinct_attempts, counters.keys_used_after_expiry) == (1, 1, 0)
    assert (counters.messages_sent, counters.messages_received, counters.violations) == (2, 2, [])
    assert report.counts() == {"licensed": 1, "error": 0, "died": 0, "timeout": 0}


async def test_device_id_that_is_not_a_topic_id_gets_a_hashed_tid(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory(topic_root="line-a/prov")
    spec = device(device_id="序列号 0001/A")
    assert spec.tid.startswith("d-")
    assert len(spec.tid) == 18

    report = await fleet(broker, emulator, [spec], topic_root="line-a/prov")

    assert report.outcome("序列号 0001/A").status == "licensed"
    assert {seen.tid for seen in responder.of("序列号 0001/A")} == {spec.tid}


async def test_wait_then_register_again(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory(waits=2)
    report = await fleet(broker, emulator, [device()])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    assert outcome.counters.waits_received == 2
    registers = responder.registers("SN-0001")
    assert len(registers) == 3
    assert len({r.id for r in registers}) == 1


async def test_unanswered_register_and_result_are_resent_unchanged(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory(drop_registers=2, drop_results=1)
    report = await fleet(broker, emulator, [device()])

    assert report.outcome("SN-0001").status == "licensed"
    registers = responder.registers("SN-0001")
    assert len(registers) == 3
    assert len({r.payload for r in responder.of("SN-0001")[:3]}) == 1
    results = responder.results("SN-0001")
    assert len(results) == 2
    assert results[0].payload == results[1].payload
    assert licences(emulator) == 1


async def test_error_without_retry_stops_the_device(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(model="face-terminal-x9")])

    outcome = report.outcome("SN-0001")
    assert (outcome.status, outcome.error_code) == ("error", "unknown_profile")
    assert len(responder.registers("SN-0001")) == 1
    assert licences(emulator) == 0


async def test_expired_key_is_never_used(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory(expired_keys=1)
    report = await fleet(broker, emulator, [device()])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    counters = outcome.counters
    assert (counters.keys_received, counters.keys_expired_on_arrival, counters.keys_used_after_expiry) == (2, 1, 0)
    assert counters.activations == 1
    assert len(counters.violations) == 1
    first, second = responder.results("SN-0001")
    assert isinstance(first.message, Result)
    assert not first.message.ok
    assert first.message.error == "AuthKeyExpired"
    assert isinstance(second.message, Result)
    assert second.message.ok
    assert emulator.audit()["keys"]["used"] == 1


# -- misbehaviours --------------------------------------------------------------------------------


async def test_garbage_gets_error_codes_then_proceeds(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    spec = device(Behaviour.GARBAGE)
    report = await fleet(broker, emulator, [spec])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    assert outcome.counters.error_codes == list(GARBAGE_EXPECTED_CODES)
    refused = [seen for seen in responder.seen if seen.tid == spec.tid and seen.error]
    assert [seen.error for seen in refused] == list(GARBAGE_EXPECTED_CODES)
    assert max(len(seen.payload) for seen in refused) > 4096
    assert licences(emulator) == 1


async def test_die_mid_activation_never_sends_a_result(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(Behaviour.DIE_MID_ACTIVATION)])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "died"
    assert (outcome.counters.deaths, outcome.counters.activations) == (1, 1)
    assert len(responder.registers("SN-0001")) == 1
    assert responder.results("SN-0001") == []
    assert licences(emulator) == 1  # the cloud activated it: the agent must reconcile, not mint again blindly


async def test_die_mid_activation_with_comeback_registers_again(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(Behaviour.DIE_MID_ACTIVATION, comeback=True)])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    assert (outcome.counters.deaths, outcome.counters.registrations, outcome.counters.activations) == (1, 2, 2)
    first, second = responder.registers("SN-0001")
    assert first.id != second.id
    [result] = responder.results("SN-0001")
    assert isinstance(result.message, Result)
    assert result.message.ok
    assert licences(emulator) == 1  # the second activation re-pulled the same licence


async def test_re_register_gets_the_same_done_and_no_second_key(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(Behaviour.RE_REGISTER)])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    assert (outcome.counters.keys_received, outcome.counters.violations) == (1, [])
    assert len(responder.registers("SN-0001")) == 2
    assert licences(emulator) == 1


async def test_re_register_catches_an_agent_that_sends_a_second_key(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder_factory(rekey_after_done=True)  # a broken agent
    report = await fleet(broker, emulator, [device(Behaviour.RE_REGISTER)], deadline_s=2.0)

    outcome = report.outcome("SN-0001")
    assert outcome.counters.distinct_attempts == 2  # the broken agent keeps resending its second key
    assert outcome.counters.activations == 1
    assert any("after done" in violation for violation in outcome.counters.violations)
    assert licences(emulator) == 1


async def test_late_result_arrives_after_the_deadline(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory(activate_within_s=1)
    report = await fleet(broker, emulator, [device(Behaviour.LATE)])

    assert report.outcome("SN-0001").status == "licensed"
    [result] = responder.results("SN-0001")
    assert result.late


async def test_fail_once_reports_failure_then_registers_again(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(Behaviour.FAIL_ONCE)])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    assert (outcome.counters.distinct_attempts, outcome.counters.activations) == (2, 1)
    assert outcome.counters.error_codes == ["activation_failed"]  # retry: true, answered by registering again
    kinds = [(type(s.message).__name__, getattr(s.message, "ok", None)) for s in responder.of("SN-0001")]
    assert kinds == [("Register", None), ("Result", False), ("Register", None), ("Result", True)]
    assert licences(emulator) == 1


async def test_duplicate_sends_every_message_twice(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder = responder_factory()
    report = await fleet(broker, emulator, [device(Behaviour.DUPLICATE)])

    outcome = report.outcome("SN-0001")
    assert outcome.status == "licensed"
    responder.wait_until(lambda: len(responder.of("SN-0001")) >= 4)
    payloads = [seen.payload for seen in responder.of("SN-0001")]
    assert len(payloads) == 4
    assert payloads[0] == payloads[1]
    assert payloads[2] == payloads[3]
    assert outcome.counters.distinct_attempts == 1
    assert outcome.counters.activations == 1
    assert licences(emulator) == 1


# -- deadlines and the fleet ----------------------------------------------------------------------


async def test_device_reconnects_after_a_broker_restart(
    broker: MosquittoBroker, emulator: EmulatorProcess, signed: SignedRequests
) -> None:
    running = asyncio.create_task(fleet(broker, emulator, [device()]))
    await asyncio.sleep(0.3)  # usually connected and registering by now; if not, it keeps trying to connect
    await asyncio.to_thread(broker.restart)  # no persistence: the broker forgets the session and subscription
    responder = Responder(broker, signed)
    try:
        report = await running
    finally:
        responder.close()

    assert report.outcome("SN-0001").status == "licensed"
    assert licences(emulator) == 1


async def test_unanswered_device_times_out(broker: MosquittoBroker, emulator: EmulatorProcess) -> None:
    report = await fleet(broker, emulator, [device()], deadline_s=1.0)

    outcome = report.outcome("SN-0001")
    assert outcome.status == "timeout"
    assert "registering" in outcome.detail
    assert not report.normal_all_licensed


async def test_unreachable_broker_times_out(emulator: EmulatorProcess) -> None:
    report = await run_fleet(
        [device()],
        mqtt_host="127.0.0.1",
        mqtt_port=free_port(),
        emulator_url=emulator.url,
        deadline_s=1.0,
        timing=FAST,
    )

    outcome = report.outcome("SN-0001")
    assert outcome.status == "timeout"
    assert "never connected" in outcome.detail


async def test_two_hundred_devices_at_once(
    broker: MosquittoBroker, emulator: EmulatorProcess, responder_factory: Callable[..., Responder]
) -> None:
    responder_factory(activate_within_s=2)
    misbehave: dict[Behaviour, int] = {behaviour: 3 for behaviour in Behaviour if behaviour is not Behaviour.NORMAL}
    specs = fleet_specs(100, protocol="5", misbehave=misbehave, id_prefix="A", comeback=True, seal=False)
    specs += fleet_specs(100, protocol="3.1.1", id_prefix="B", seal=False)
    report = await fleet(broker, emulator, specs, timing=Timing(time_scale=0.2, late_by_s=0.3), deadline_s=60)

    assert report.counts() == {"licensed": 200, "error": 0, "died": 0, "timeout": 0}, report.to_json()[:2000]
    assert report.normal_all_licensed
    totals = report.totals()
    assert totals["keys_used_after_expiry"] == 0
    assert totals["violations"] == 0
    assert licences(emulator) == 200
    body = json.loads(report.to_json())
    assert body["devices_total"] == 200
    assert len(body["devices"]) == 200


# -- the command line -----------------------------------------------------------------------------


def _simulate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="provisioning-agent")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *argv])
    code: int = args.handler(args)
    return code


def test_cli_runs_a_fleet_and_prints_json(
    broker: MosquittoBroker,
    emulator: EmulatorProcess,
    responder_factory: Callable[..., Responder],
    capsys: pytest.CaptureFixture[str],
) -> None:
    responder_factory()
    argv = ["--mqtt", f"{broker.host}:{broker.port}", "--emulator", emulator.url, "--devices", "5"]
    options = ["--misbehave", "garbage=1", "--protocol", "3.1.1", "--time-scale", "0.05", "--json", "--no-seal"]
    code = _simulate([*argv, *options])

    assert code == 0
    body = json.loads(capsys.readouterr().out)
    assert body["counts"]["licensed"] == 5
    assert body["by_behaviour"]["garbage"]["licensed"] == 1
    assert {d["protocol"] for d in body["devices"]} == {"3.1.1"}


def test_cli_table_and_failure_exit(
    broker: MosquittoBroker, emulator: EmulatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--mqtt", f"{broker.host}:{broker.port}", "--emulator", emulator.url, "--devices", "2"]
    code = _simulate([*argv, "--time-scale", "0.05", "--deadline", "0.5"])  # no responder: nobody answers

    assert code == 1
    out = capsys.readouterr().out
    assert "timeout" in out
    assert "not licensed: SIM-00000 timeout" in out


def test_cli_refuses_more_misbehaving_devices_than_devices(
    emulator: EmulatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _simulate(["--mqtt", "127.0.0.1:1", "--emulator", emulator.url, "--devices", "1", "--misbehave", "late=2"])
    assert code == 2
    assert "only 1 devices" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--mqtt", "nohost"], "expected HOST:PORT"),
        (["--mqtt", "h:1", "--misbehave", "sleepy=1"], "unknown behaviour 'sleepy'"),
        (["--mqtt", "h:1", "--misbehave", "late"], "expected BEHAVIOUR=COUNT"),
        (["--mqtt", "h:1", "--devices", "0"], "expected a positive integer"),
        (["--mqtt", "h:1", "--time-scale", "0"], "expected a number > 0"),
    ],
)
def test_cli_rejects_bad_flags(flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _simulate([*flags, "--emulator", "http://127.0.0.1:1"])
    assert complaint in capsys.readouterr().err
