"""The demo without a broker: the cloud side of each device's path, through the emulator.

Each simulated device gets a key, activates with it at the emulator, and its licence is
read back; one device registers again (no second licence), one licence is renewed, and the
SDK is built. Used by ``provisioning-lab demo`` when Mosquitto is not installed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from agent.cli._exit import ExitCode
from agent.cli._output import print_table
from agent.cloud import CloudauthClient, Credentials, RateLimiter
from provisioning.cloudauth import CloudauthError, LicenceTerm, RetryPolicy
from provisioning.secret import Secret
from provisioning_lab.emulator import EmulatorProcess

__all__ = ["run_cloud_only"]

DEMO_QPS = 20.0  # the emulator's throttling cap in the demo; our limiter stays just under it
DEMO_FAULTS = {"ServiceUnavailable": 0.2, "InternalError": 0.05}  # what a bad day at the cloud looks like


@dataclass
class _Device:
    serial: str
    hardware_id: str
    device_id: str = ""
    expired_day: str = ""
    outcome: str = "pending"


def run_cloud_only(count: int, console: Console) -> int:
    """License ``count`` devices through the emulator without a broker; 0 when each holds one licence."""
    with EmulatorProcess(
        ["--sdk-delay", "1"],
        access_key_id="demo-id",
        access_key_secret="demo-secret",  # noqa: S106 - demo account
    ) as emulator:
        console.print(f"emulator listening on {emulator.url}")
        emulator.set_faults(errors=DEMO_FAULTS, qps_cap=DEMO_QPS)
        console.print(f"injected faults: {DEMO_FAULTS}, throttling above {DEMO_QPS:.0f} calls/s")
        devices = [_Device(f"SN-{number:04d}", f"hw-{number:04d}") for number in range(count)]
        try:
            asyncio.run(_provision_all(emulator, devices, console))
        except CloudauthError as exc:
            console.print(f"[red]demo failed[/]: {exc}")
            return ExitCode.FAILED
        emulator.set_faults(errors={}, qps_cap=None)
        audit = emulator.audit()

    rows = [
        {"Serial": d.serial, "DeviceId": d.device_id, "ExpiredDay": d.expired_day, "Outcome": d.outcome}
        for d in devices
    ]
    print_table(rows, ("Serial", "DeviceId", "ExpiredDay", "Outcome"), title="devices")
    licences = {row["UserDeviceId"]: row["licences_consumed"] - row["extensions"] for row in audit["devices"]}
    exactly_once = all(licences.get(d.serial) == 1 for d in devices)
    print_table(
        [
            {"what": "devices licensed", "value": sum(1 for d in devices if d.device_id)},
            {"what": "devices holding exactly one activation licence", "value": sum(v == 1 for v in licences.values())},
            {"what": "keys minted / used", "value": f"{audit['keys']['minted']} / {audit['keys']['used']}"},
            {"what": "cloud errors absorbed by retries", "value": sum(audit["errors"].values())},
        ],
        ("what", "value"),
        title="summary (from the emulator's audit view)",
    )
    if exactly_once:
        console.print("[green]every device holds exactly one licence[/]")
        return ExitCode.OK
    console.print("[red]a device does not hold exactly one licence[/]")
    return ExitCode.FAILED


async def _provision_all(emulator: EmulatorProcess, devices: list[_Device], console: Console) -> None:
    credentials = Credentials(emulator.access_key_id, Secret(emulator.access_key_secret))
    retry = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=1.0)
    limiter = RateLimiter(qps=DEMO_QPS * 0.9, burst=2)
    async with CloudauthClient(credentials, endpoint=emulator.url, retry=retry, rate_limiter=limiter) as cloud:
        with Progress(TextColumn("licensing"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
            task = progress.add_task("licensing", total=len(devices))

            async def provision(device: _Device) -> None:
                key = await cloud.create_auth_key(
                    term=LicenceTerm.of_years(1), user_device_id=device.serial, biz_type="DEMO_LINE"
                )
                # The device's SDK activates with the key (the daemon pushes it over MQTT or serial).
                activation = await asyncio.to_thread(emulator.activate, key.key.reveal(), device.hardware_id)
                (record,) = (await cloud.describe_device_info(device_id=activation["DeviceId"])).devices
                device.device_id, device.expired_day = record.device_id, record.expired_day
                device.outcome = "licensed"
                progress.advance(task)

            async with asyncio.TaskGroup() as group:
                for device in devices:
                    group.create_task(provision(device), name=f"provision-{device.serial}")

        # A device that registers again (reflashed, rebooted) re-activates without a second licence.
        again = devices[0]
        key = await cloud.create_auth_key(term=LicenceTerm.of_years(1), user_device_id=again.serial)
        repeat = await asyncio.to_thread(emulator.activate, key.key.reveal(), again.hardware_id)
        console.print(
            f"{again.serial} activated again: same DeviceId {repeat['DeviceId'] == again.device_id}, "
            f"no second licence (Reactivated={repeat['Reactivated']})"
        )

        renewed = devices[1]
        result = await cloud.modify_device_info(renewed.device_id, extend_years=1, expired_day=renewed.expired_day)
        console.print(f"{renewed.serial} renewed: {renewed.expired_day} -> {result.expired_day}")
        renewed.expired_day, renewed.outcome = result.expired_day, "licensed, renewed"

        task_id = await cloud.create_verify_sdk("https://apps.example.com/face-terminal.apk", platform="android")
        while not (status := await cloud.describe_verify_sdk(task_id)).ready:  # noqa: ASYNC110 - polling the cloud
            await asyncio.sleep(0.5)
        console.print(f"SDK build {task_id} ready at {status.sdk_url}")
