"""The daemon's resources under one exit stack: everything is released, in order, whatever fails on the way out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.daemon import ProvisioningAgent
from provisioning_lab.broker import MosquittoBroker
from provisioning_lab.emulator import EmulatorProcess
from tests.integration.provisioning_line import in_process_agent


async def serve_until_ready_then_stop(agent: ProvisioningAgent) -> None:
    stop = asyncio.Event()
    await agent.run(stop, on_ready=stop.set)


async def test_a_resource_failing_to_close_does_not_keep_the_others_open(
    tmp_path: Path, mqtt_broker: MosquittoBroker, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = in_process_agent(tmp_path, mqtt_broker, emulator, monkeypatch)
    assert agent.mqtt is not None

    async def broken_close() -> None:
        raise OSError("the socket went away badly")

    monkeypatch.setattr(agent.mqtt, "aclose", broken_close)
    with pytest.raises(OSError, match="went away badly"):
        await serve_until_ready_then_stop(agent)
    assert not agent.journal._thread.is_alive()  # the journal's writer ends only in close(), registered before


async def test_a_clean_stop_says_offline_before_the_broker_connection_closes(
    tmp_path: Path, mqtt_broker: MosquittoBroker, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = in_process_agent(tmp_path, mqtt_broker, emulator, monkeypatch)
    assert agent.mqtt is not None
    order: list[str] = []
    publish, close = agent._publish_status, agent.mqtt.aclose

    async def recorded_publish(state: str) -> None:
        order.append(f"status {state}")
        await publish(state)

    async def recorded_close() -> None:
        order.append("broker closed")
        await close()

    agent._publish_status = recorded_publish  # type: ignore[method-assign]
    agent.mqtt.aclose = recorded_close  # type: ignore[method-assign]
    await serve_until_ready_then_stop(agent)
    assert order[-2:] == ["status offline", "broker closed"]
    assert not agent.journal._thread.is_alive()
