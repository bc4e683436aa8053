"""A burst of devices larger than the line holds: what the agent cannot serve yet waits as bytes, not as tasks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.daemon import _service as service_module
from provisioning_lab.broker import MosquittoBroker
from provisioning_lab.emulator import EmulatorProcess
from tests.integration.handdevice import HandDevice
from tests.integration.provisioning_line import MODEL, in_process_agent

GUARD_SECONDS = 60.0  # a guard against hangs, not a timing assertion


async def test_a_burst_beyond_the_handlers_waits_in_the_backlog_and_is_answered(
    tmp_path: Path, mqtt_broker: MosquittoBroker, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One device in flight, one queued, two spare handlers: twelve registers at once never make more than
    four handlers, and every device is still answered (the rest are told when to come back)."""
    monkeypatch.setattr(service_module, "SPARE_HANDLERS", 2)
    agent = in_process_agent(tmp_path, mqtt_broker, emulator, monkeypatch, limits={"max_in_flight": 1, "max_queued": 1})
    most = 0
    spawn = agent._spawn

    def counted_spawn(*args: object) -> asyncio.Task[None]:
        nonlocal most
        handler = spawn(*args)  # type: ignore[arg-type]
        most = max(most, len(agent._handlers))
        return handler

    agent._spawn = counted_spawn  # type: ignore[method-assign]
    emulator.set_faults(latency_ms=1500)  # the first device holds the only cloud slot meanwhile
    devices = [HandDevice(mqtt_broker.port, f"SN-BURST-{n:02d}", MODEL) for n in range(12)]
    stop, ready = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(agent.run(stop, on_ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), GUARD_SECONDS)
        for device in devices:
            await asyncio.to_thread(device.connect)
        ids = [device.register() for device in devices]
        for device, rid in zip(devices, ids, strict=True):
            await asyncio.to_thread(device.answer_to, rid, GUARD_SECONDS)
    finally:
        stop.set()
        await asyncio.wait_for(serving, GUARD_SECONDS)
        for device in devices:
            device.close()
    assert most <= 4  # in flight + queued + spare
    kinds = sorted(device.answers[0].type for device in devices)
    assert kinds.count("wait") >= 10  # all but the two the line held
