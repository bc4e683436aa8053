"""The executor (agent/daemon/_devices.py) on its own: a real journal thread, the emulator over HTTP.

Only the transport is a function here (it records what would be sent and says whether it
left); the MQTT and serial transports have their own tests, and the whole daemon is tested
end to end in test_daemon.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.cloud import CloudauthClient, Credentials
from agent.daemon import DeviceService
from agent.journal import Journal, JournalWorker
from provisioning.admission import Admission, LineLimits
from provisioning.protocol import AgentMessage, ErrorReply, Key, Wait, encode
from provisioning.secret import Secret
from provisioning.workflow import Line, State
from provisioning.workflow._waiting import MIN_COME_BACK_S
from provisioning_lab.emulator import EmulatorProcess
from tests.unit.flowkit import MODEL, profile

GUARD_SECONDS = 10.0


class Devices:
    """The transport as a function: what each topic id was sent, and whether it left."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, AgentMessage]] = []
        self.delivers = True

    async def reply(self, tid: str, message: AgentMessage, expiry_s: int | None, confirm: bool) -> bool:
        self.sent.append((tid, message))
        return self.delivers

    def to(self, tid: str) -> list[AgentMessage]:
        return [message for to, message in self.sent if to == tid]


def register(device_id: str, rid: str = "r1") -> bytes:
    body = {
        "v": 1,
        "type": "register",
        "id": rid,
        "device_id": device_id,
        "hardware_id": f"hw-{device_id}",
        "model": MODEL,
    }
    return json.dumps(body).encode()


def result_of(key: Key, licence: dict[str, str]) -> bytes:
    body = {
        "v": 1,
        "type": "result",
        "id": "r2",
        "device_id": key.device_id,
        "hardware_id": f"hw-{key.device_id}",
        "model": MODEL,
        "attempt": key.attempt,
        "ok": True,
        "sdk_device_id": licence["DeviceId"],
        "begin_day": licence["BeginDay"],
        "expired_day": licence["ExpiredDay"],
    }
    return json.dumps(body).encode()


class Rig:
    def __init__(self, service: DeviceService, devices: Devices, worker: JournalWorker, cloud: CloudauthClient):
        self.service, self.devices, self.worker, self.cloud = service, devices, worker, cloud


@pytest.fixture
async def rig(tmp_path: Path, emulator: EmulatorProcess, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    limits: tuple[int, ...] = getattr(request, "param", (8, 100))
    cloud_qps = float(limits[2]) if len(limits) > 2 else None  # params: (in flight, queued[, the cloud QPS])
    worker = JournalWorker(Journal.open(tmp_path / "journal.sqlite3", gateway_id="gw"))
    credentials = Credentials(emulator.access_key_id, Secret(emulator.access_key_secret))
    cloud = CloudauthClient(credentials, endpoint=emulator.url)
    devices = Devices()
    line = Line(gateway_id="gw", profiles={MODEL: profile()}, admission=Admission(LineLimits()), cloud_qps=cloud_qps)
    service = DeviceService(
        line=line,
        cloud=cloud,
        journal=worker,
        reply=devices.reply,
        on_report=lambda: None,
        max_in_flight=limits[0],
        max_queued=limits[1],
    )
    yield Rig(service, devices, worker, cloud)
    await cloud.aclose()
    worker.close()


async def test_a_register_and_its_result_through_the_executor(rig: Rig, emulator: EmulatorProcess) -> None:
    await rig.service.handle("SN-1", register("SN-1"))
    (key,) = rig.devices.to("SN-1")
    assert isinstance(key, Key)
    record = rig.worker.get("SN-1")
    assert record is not None
    assert (record.state, record.delivered) == (State.PUSHED, 1)
    licence = emulator.activate(json.loads(encode(key))["auth_key"], "hw-SN-1")
    await rig.service.handle("SN-1", result_of(key, licence))
    assert [type(m).__name__ for m in rig.devices.to("SN-1")] == ["Key", "Done"]
    record = rig.worker.get("SN-1")
    assert record is not None
    assert record.state is State.ACTIVATED
    assert rig.worker.journal.outbox_depth() == 1
    assert emulator.audit()["keys"]["minted"] == 1


@pytest.mark.parametrize("rig", [(1, 0)], indirect=True)
async def test_beyond_the_queue_a_device_is_told_its_turn_and_nothing_is_journaled(
    rig: Rig, emulator: EmulatorProcess
) -> None:
    emulator.set_faults(latency_ms=800)
    slow = asyncio.create_task(rig.service.handle("SN-1", register("SN-1")))
    await asyncio.sleep(0.2)  # SN-1 holds the only cloud slot
    await rig.service.handle("SN-2", register("SN-2"))
    (wait,) = rig.devices.to("SN-2")
    assert isinstance(wait, Wait)
    assert wait.reason == "queued"
    assert wait.retry_after_s >= 5
    assert rig.worker.get("SN-2") is None
    await slow
    assert isinstance(rig.devices.to("SN-1")[0], Key)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a guard against hangs, not a timing assertion)."""
    async with asyncio.timeout(GUARD_SECONDS):
        while not condition():  # noqa: ASYNC110 - the executor has no event for these states
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("rig", [(1, 2, 2)], indirect=True)
async def test_devices_waiting_on_a_slow_cloud_are_spread_out_and_cost_no_journal_write(
    rig: Rig, emulator: EmulatorProcess
) -> None:
    """A 2 QPS cloud: each device beyond the queue is told its own turn, about 1/2 s after the one before
    (not all "in 5 s"), and neither those registers nor a resend from a device queued in process write
    to the journal: no transaction, so no fsync."""
    emulator.set_faults(latency_ms=3000)
    served = asyncio.create_task(rig.service.handle("SN-0", register("SN-0")))
    await until(lambda: rig.worker.get("SN-0") is not None)  # SN-0 holds the only slot: its intent is journaled
    queued = [asyncio.create_task(rig.service.handle(f"SN-Q{n}", register(f"SN-Q{n}"))) for n in range(2)]
    await until(lambda: rig.service.status.waiting == 2)  # the in-process queue is full
    batches, calls = rig.worker.batches, rig.worker.calls
    turned_away = 30
    for n in range(turned_away):
        await rig.service.handle(f"SN-{n + 1}", register(f"SN-{n + 1}"))
    await rig.service.handle("SN-Q0", register("SN-Q0", "r1-again"))  # a resend while it waits in process
    assert (rig.worker.batches, rig.worker.calls) == (batches, calls)
    waits = [rig.devices.to(f"SN-{n + 1}")[0] for n in range(turned_away)]
    assert all(isinstance(wait, Wait) and wait.reason == "queued" for wait in waits)
    seconds = [wait.retry_after_s for wait in waits if isinstance(wait, Wait)]
    assert seconds == sorted(seconds)
    assert seconds[0] == MIN_COME_BACK_S
    assert seconds[-1] >= turned_away / 2  # the 30th comes back after the 2 queued and 29 others, at 2 a second
    (in_progress,) = rig.devices.to("SN-Q0")
    assert isinstance(in_progress, Wait)
    assert in_progress.reason == "in_progress"
    assert not any(rig.worker.get(f"SN-{n + 1}") for n in range(turned_away))
    for task in (served, *queued):
        task.cancel()
    await asyncio.gather(served, *queued, return_exceptions=True)


async def test_a_register_the_cloud_refuses_costs_its_intent_and_one_write_to_undo_it(
    rig: Rig, emulator: EmulatorProcess
) -> None:
    """The intent and its charge are journaled before CreateAuthKey; the refusal deletes the intent and
    gives the charge back in one transaction (they were two)."""
    emulator.set_faults(errors={"Forbidden.Bench": 1.0})  # a 400 no retry can fix: refused at once
    batches = rig.worker.batches
    await rig.service.handle("SN-1", register("SN-1"))
    (answer,) = rig.devices.to("SN-1")
    assert isinstance(answer, ErrorReply)
    assert answer.code == "cloud_rejected"
    assert rig.worker.batches - batches == 2  # the intent, then the undo
    assert rig.worker.get("SN-1") is None
    assert rig.worker.journal.charges_since(0.0) == []


async def test_a_register_for_a_device_being_served_hears_in_progress(rig: Rig, emulator: EmulatorProcess) -> None:
    emulator.set_faults(latency_ms=500)
    first = asyncio.create_task(rig.service.handle("SN-1", register("SN-1")))
    await asyncio.sleep(0.1)
    await rig.service.handle("SN-1", register("SN-1", "r1-again"))
    await first
    kinds = [type(m).__name__ for m in rig.devices.to("SN-1")]
    assert kinds == ["Wait", "Key"]
    assert emulator.audit()["keys"]["minted"] == 1


@pytest.mark.parametrize("rig", [(1, 100)], indirect=True)
async def test_a_failing_flow_answers_internal_and_gives_its_cloud_slot_back(rig: Rig) -> None:
    real_put = rig.worker.journal.put
    calls = 0

    def put_failing_once(*args: object, **kwargs: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return real_put(*args, **kwargs)  # type: ignore[arg-type]

    rig.worker.journal.put = put_failing_once  # type: ignore[method-assign]
    await rig.service.handle("SN-1", register("SN-1"))
    (answer,) = rig.devices.to("SN-1")
    assert isinstance(answer, ErrorReply)
    assert (answer.code, answer.retry) == ("internal", True)
    await asyncio.wait_for(rig.service.handle("SN-2", register("SN-2")), 10)  # the only slot came back
    assert isinstance(rig.devices.to("SN-2")[0], Key)


async def test_a_key_that_did_not_leave_is_not_counted(rig: Rig) -> None:
    rig.devices.delivers = False
    await rig.service.handle("SN-1", register("SN-1"))
    record = rig.worker.get("SN-1")
    assert record is not None
    assert (record.attempts, record.delivered) == (1, 0)
    assert rig.service.status.counters.get("keys_not_delivered") == 1
