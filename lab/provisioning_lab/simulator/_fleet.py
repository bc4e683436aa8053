"""Run many simulated devices at once against one gateway's broker and one emulated cloud."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Final

import aiohttp

from provisioning_lab.simulator._device import DeviceEnv, SimulatedDevice
from provisioning_lab.simulator._outcome import FleetReport
from provisioning_lab.simulator._sdk import ACTIVATIONS_IN_FLIGHT, EmulatorSdk
from provisioning_lab.simulator._serial import PortQueue, SerialDevice, run_port_queue
from provisioning_lab.simulator._spec import Behaviour, DeviceSpec, MqttProtocol, Timing

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MODEL",
    "DEFAULT_TOPIC_ROOT",
    "fleet_specs",
    "run_fleet",
]

DEFAULT_TOPIC_ROOT: Final = "prov/v1"  # docs/protocol.md
DEFAULT_CONCURRENCY: Final = 1000  # devices online at once: a large line's shift, one connection each
DEFAULT_DEADLINE_S: Final = 600.0  # a fleet still unlicensed after ten minutes is stuck, not slow
DEFAULT_MODEL: Final = "face-terminal-x1"  # hardware-profiles/face-terminal-x1.toml


async def run_fleet(
    specs: Sequence[DeviceSpec],
    *,
    mqtt_host: str = "",
    mqtt_port: int = 0,
    emulator_url: str,
    topic_root: str = DEFAULT_TOPIC_ROOT,
    concurrency: int = DEFAULT_CONCURRENCY,
    deadline_s: float = DEFAULT_DEADLINE_S,
    timing: Timing | None = None,
    mqtt_passwords: Mapping[str, str] | None = None,
    serial: Sequence[PortQueue] = (),
) -> FleetReport:
    """Run every device concurrently until all finish or ``deadline_s`` passes; their outcomes.

    ``specs`` are MQTT devices (they need ``mqtt_host``); each of ``serial`` is a port whose devices
    go one after another. The report lists the MQTT devices, then each port's devices in turn.

    ``mqtt_passwords`` (by tid): devices log in with username = tid and that password.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not deadline_s > 0:
        raise ValueError("deadline_s must be > 0")
    tids = [spec.tid for spec in specs]
    if len(set(tids)) != len(tids):
        raise ValueError("two devices share a tid (MQTT client id): they would disconnect each other")
    if specs and not mqtt_host:
        raise ValueError("MQTT devices need mqtt_host")
    labels = [queue.port.label for queue in serial]
    if len(set(labels)) != len(labels):
        raise ValueError("two serial queues share a port: one device per port at a time")
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + deadline_s
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=ACTIVATIONS_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as http:
        sdk = EmulatorSdk(emulator_url, http)
        env = DeviceEnv(mqtt_host, mqtt_port, topic_root.rstrip("/"), sdk, timing or Timing(), mqtt_passwords)
        devices = [SimulatedDevice(spec, env) for spec in specs]
        lanes: list[list[SerialDevice]] = [[] for _ in serial]
        async with asyncio.TaskGroup() as group:
            for device in devices:
                group.create_task(_run_one(device, gate, deadline), name=f"device-{device.spec.tid}")
            for queue, lane in zip(serial, lanes, strict=True):
                group.create_task(
                    run_port_queue(queue, sdk, env.timing, deadline, lane), name=f"port-{queue.port.label}"
                )
    outcomes = [device.outcome() for device in devices] + [device.outcome() for lane in lanes for device in lane]
    return FleetReport(tuple(outcomes), loop.time() - started)


def fleet_specs(
    count: int,
    *,
    model: str = DEFAULT_MODEL,
    protocol: MqttProtocol = "5",
    misbehave: Mapping[Behaviour, int] | None = None,
    id_prefix: str = "SIM",
    comeback: bool = False,
    seal: bool = True,
) -> list[DeviceSpec]:
    """``count`` devices ``{id_prefix}-00000``...: the misbehaving ones first, the rest normal."""
    behaviours = [behaviour for behaviour, n in (misbehave or {}).items() for _ in range(n)]
    if len(behaviours) > count:
        raise ValueError(f"{len(behaviours)} misbehaving devices asked for, but only {count} devices")
    behaviours += [Behaviour.NORMAL] * (count - len(behaviours))
    return [
        DeviceSpec(
            device_id=f"{id_prefix}-{number:05d}",
            hardware_id=f"hw-{id_prefix}-{number:05d}",
            model=model,
            behaviour=behaviour,
            protocol=protocol,
            comeback=comeback and behaviour is Behaviour.DIE_MID_ACTIVATION,
            seal=seal,
        )
        for number, behaviour in enumerate(behaviours)
    ]


async def _run_one(device: SimulatedDevice, gate: asyncio.Semaphore, deadline: float) -> None:
    try:
        async with asyncio.timeout_at(deadline), gate:
            await device.run()
    except TimeoutError:
        device.expire()
