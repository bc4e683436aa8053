"""A flood of hostile messages from several MQTT clients at once, against the real agent, while a line works.

Each client publishes mutants of valid device messages (tests/fuzz/hostile.py) on its own topic
as fast as the broker takes them. The agent must answer every one it receives (the broker
never hands it one larger than its MQTT Maximum Packet Size) with an error whose code is the
one the decoder gives that payload (or, for a message that decodes, a specific refusal: the model
has no profile, the attempt is unknown...), quote the id whenever it could be read, never fail
internally, never mint a key for them, and keep licensing the normal devices on the same line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.daemon._service import ANSWERED_MESSAGE_BYTES
from provisioning.protocol import ProtocolError, decode_device_message
from provisioning.serial import (
    MAX_PAYLOAD,
    Frame,
    FrameType,
    LinkConfig,
    LinkEndpoint,
    LinkState,
    MessageReceived,
    SendBytes,
    encode_frame,
)
from provisioning_lab.simulator import SerialDevice, SerialJig, fleet_specs, queue_specs
from provisioning_lab.simulator._jig import JigPort
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._serial import run_port_queue
from tests.fuzz.hostile import mutate, random_message, readable_ids
from tests.integration.provisioning_line import FAST, MODEL, Line, line_fixture

__all__ = ["line_fixture"]  # the fixture, imported so pytest finds it here

CLIENTS = 4
PER_CLIENT = 750  # 3000 hostile messages in all
# Unanswered messages per client: 4 x 100 stays under Mosquitto's max_queued_messages (1000 per session by
# default), beyond which the broker drops QoS 1 messages before the agent ever sees them.
WINDOW = 100
# Codes for messages that decode but that no profile or journal entry on this line can serve.
REFUSALS = {
    "unknown_profile",
    "not_admitted",
    "unknown_attempt",
    "activation_failed",
    "invalid_field",
    "wait in_progress",
}


def decoder_answer(payload: bytes) -> str | None:
    """The code the decoder gives ``payload``; None when it decodes (the agent's answer then depends on the line)."""
    try:
        decode_device_message(payload)
    except ProtocolError as exc:
        return exc.code
    return None


def check_answers(payloads: list[bytes], answers: list[dict[str, Any]]) -> None:
    """Each readable id quoted back as often as it was sent, with the decoder's code or a specific refusal.

    The agent serves messages concurrently, so answers are matched by the id they quote, not by order.
    """
    by_re: dict[str | None, list[str]] = {}
    for answer in answers:  # an error's code, or a wait's reason (a device id already being served: in_progress)
        by_re.setdefault(answer["re"], []).append(answer.get("code") or f"wait {answer.get('reason')}")
    expected: dict[str | None, list[str | None]] = {}
    for payload in payloads:
        expected.setdefault(readable_ids(payload)[0], []).append(decoder_answer(payload))
    assert Counter({k: len(v) for k, v in by_re.items()}) == Counter({k: len(v) for k, v in expected.items()})
    for re_id, codes in expected.items():
        if re_id is None or len(codes) > 1:
            continue  # several messages share this id (or none could be read): the order of handling decides
        [code], [answered] = codes, by_re[re_id]
        # A refused message gets exactly the decoder's code; one that decodes gets a specific refusal.
        assert answered == code if code is not None else answered in REFUSALS, (re_id, code, answered)


def flood(port: int, tid: str, payloads: list[bytes], answered: Callable[[], int], errors: list[BaseException]) -> None:
    """Publish at QoS 1 as fast as the answers come back, at most WINDOW unanswered at a time."""
    try:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=tid, protocol=MQTTProtocolVersion.MQTTv5)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            for start in range(0, len(payloads), WINDOW):
                infos = [client.publish(f"prov/v1/dev/{tid}/up", p, qos=1) for p in payloads[start : start + WINDOW]]
                for info in infos:
                    info.wait_for_publish(60)
                deadline = time.monotonic() + 60
                while answered() < start + len(infos) and time.monotonic() < deadline:
                    time.sleep(0.02)
        finally:
            client.disconnect()
            client.loop_stop()
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.timeout(300)  # 3000 messages and a fleet on a loaded 2-core machine
def test_a_hostile_flood_is_answered_and_the_line_keeps_working(line: Line) -> None:
    agent = line.start_agent()
    watcher = line.watch("prov/v1/dev/+/down")
    rng = random.Random(5)
    plans: dict[str, list[bytes]] = {}
    for client in range(CLIENTS):
        mutants = (mutate(rng, random_message(rng)).payload for _ in range(PER_CLIENT))
        # Larger ones never reach the agent, whose MQTT Maximum Packet Size the broker honours (tests/attack).
        plans[f"hostile-{client}"] = [payload for payload in mutants if len(payload) <= ANSWERED_MESSAGE_BYTES]
    errors: list[BaseException] = []

    def answers(tid: str) -> list[dict[str, Any]]:
        return watcher.on(f"prov/v1/dev/{tid}/down")

    def count_answers(tid: str) -> int:
        return len(answers(tid))

    threads = [
        threading.Thread(
            target=flood,
            args=(line.broker.port, tid, payloads, functools.partial(count_answers, tid), errors),
            name=f"flood-{tid}",
        )
        for tid, payloads in plans.items()
    ]
    for thread in threads:
        thread.start()
    specs = fleet_specs(5, model=MODEL)
    report = line.fleet(specs, deadline_s=120.0)  # normal devices, registering while the flood runs
    for thread in threads:
        thread.join()
    assert errors == []
    assert {d.device_id for d in report.devices if d.status == "licensed"} == {s.device_id for s in specs}
    complete = watcher.wait_for(lambda: all(len(answers(tid)) >= len(plan) for tid, plan in plans.items()), 120.0)
    assert complete, ({tid: len(answers(tid)) for tid in plans}, agent.running(), agent.log_text()[-3000:])
    seen: Counter[str] = Counter()
    for tid, payloads in plans.items():
        got = answers(tid)
        seen.update(answer.get("code", "") for answer in got)
        assert len(got) == len(payloads), "every message gets exactly one answer"
        assert {answer["type"] for answer in got} <= {"error", "wait"}
        assert not [a for a in got if a.get("code") == "internal"], "the agent failed on a hostile message"
        check_answers(payloads, got)
    assert {"malformed", "too_large", "unsupported_version", "unknown_type", "invalid_field", "unknown_profile"} <= set(
        seen
    ), seen  # the flood reached every kind of refusal
    assert line.emulator.audit()["keys"]["minted"] == len(specs)  # no key for any hostile message
    assert agent.running()
    log = agent.log_text()
    assert "unexpected failure" not in log
    assert "Traceback" not in log


SERIAL_MODEL = "gate-controller-g2"  # hardware-profiles/: the profile provisioned over serial
SERIAL_MESSAGES = 400
SERIAL_WINDOW = 4  # unanswered at a time: the agent's answers never wait for room in its 8-message link queue


def serial_flood(port: JigPort, payloads: list[bytes], rng: random.Random, timeout_s: float) -> list[dict[str, Any]]:
    """A hostile device on a jig port: each mutant as a DATA message, garbage and damaged frames between."""
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    port.attach(inbox.put)
    # Patient timers: under a loaded CI machine this loop may stall, and a link failure would lose answers.
    device = LinkEndpoint(LinkConfig(ack_timeout_s=2.0, max_tries=10), new_session=lambda: rng.getrandbits(32))
    answers: list[dict[str, Any]] = []
    sent = 0
    deadline = time.monotonic() + timeout_s
    events = device.tick(time.monotonic())
    while len(answers) < len(payloads) and time.monotonic() < deadline:
        for event in events:
            if isinstance(event, SendBytes):
                port.write(event.data)
            elif isinstance(event, MessageReceived):
                answers.append(json.loads(event.payload))
        now = time.monotonic()
        events = []
        while not inbox.empty():
            events += device.receive_bytes(inbox.get(), now)
        if device.state is LinkState.UP and sent < len(payloads) and sent - len(answers) < SERIAL_WINDOW:
            if rng.random() < 0.2:  # bytes between frames: noise, a damaged copy of a frame, an empty frame
                port.write(rng.choice((rng.randbytes(40), encode_frame(Frame(FrameType.DATA, 7, b"{}"))[:-3], b"\0\0")))
            events += device.send_message(payloads[sent], now)
            sent += 1
        deadline_tick = device.next_deadline()
        if deadline_tick is not None and deadline_tick <= now:
            events += device.tick(now)
        if not events:
            time.sleep(0.002)
    port.attach(None)
    return answers


@pytest.mark.timeout(240)
def test_a_hostile_serial_device_is_answered_and_the_other_ports_keep_working(line: Line, tmp_path: Path) -> None:
    """The same mutants over the serial link (framed, with noise between frames) to the real agent."""
    rng = random.Random(11)
    payloads: list[bytes] = []
    while len(payloads) < SERIAL_MESSAGES:
        payload = mutate(rng, random_message(rng)).payload
        if len(payload) <= MAX_PAYLOAD and readable_ids(payload)[0] is not None:  # one DATA frame; an id to match
            payloads.append(payload)
    with SerialJig(tmp_path / "hostile", 1, baudrate=0) as hostile, SerialJig(tmp_path / "clean", 1) as clean:
        section = {
            "ports": [str(hostile.directory / "port-*"), str(clean.directory / "port-*")],
            "usb": False,
            "scan_interval_s": 0.2,
        }
        agent = line.start_agent(serial=section)
        specs = fleet_specs(2, model=SERIAL_MODEL, id_prefix="CLEAN")

        async def normal_devices() -> list[SerialDevice]:
            lane: list[SerialDevice] = []
            async with aiohttp.ClientSession() as http:
                sdk = EmulatorSdk(line.emulator.url, http)
                deadline = asyncio.get_running_loop().time() + 120.0
                [port_queue] = queue_specs(clean.ports, specs)
                await run_port_queue(port_queue, sdk, FAST, deadline, lane)
            return lane

        normal: list[list[SerialDevice]] = []
        thread = threading.Thread(target=lambda: normal.append(asyncio.run(normal_devices())), name="clean-port")
        thread.start()
        answers = serial_flood(hostile.port(1), payloads, rng, 120.0)
        thread.join()
    assert len(answers) == len(payloads), "every message delivered over the link gets exactly one answer"
    assert {answer["type"] for answer in answers} <= {"error", "wait"}
    assert not [a for a in answers if a.get("code") == "internal"]
    check_answers(payloads, answers)
    assert [device.outcome().status for device in normal[0]] == ["licensed", "licensed"]
    assert line.emulator.audit()["keys"]["minted"] == len(specs)
    assert agent.running()
    assert "unexpected failure" not in agent.log_text()
