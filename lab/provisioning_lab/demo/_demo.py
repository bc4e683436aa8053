"""``provisioning-lab demo``: the embedded default behind ``make demo``.

A whole provisioning line on this machine, no account needed: the Cloudauth emulator
(with cloud faults injected), a Mosquitto broker, the agent daemon, and simulated devices
(some misbehaving) over MQTT and, on a jig of pseudo-terminals paced like 115200-baud UARTs,
over serial. Midway the agent is killed with SIGKILL and restarted, as a power cut
would. The demo ends with a table and exits 0 only when the emulator's audit shows every
device holding exactly one licence and the upstream topic received every device's report.

Its work directory stays (the agent's configuration, journal and log, the broker's log) and
the demo ends with commands to try on it; ``--hold`` keeps the line running afterwards so the
station view can be looked at.

Without Mosquitto, it says so and runs the cloud side of the path only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from agent.cli._exit import ExitCode
from agent.cli._output import print_table
from agent.mqtt import MqttConnection, MqttSettings
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.broker import MosquittoBroker, MosquittoNotFound
from provisioning_lab.demo._cloud import run_cloud_only
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import (
    SERIAL_PROTOCOL,
    Behaviour,
    FleetReport,
    SerialJig,
    Timing,
    fleet_specs,
    queue_specs,
    run_fleet,
)

__all__ = ["add_parser"]

PROFILES: Final = Path(__file__).resolve().parents[3] / "hardware-profiles"  # the repository's
DEMO_FAULTS: Final = {"ServiceUnavailable": 0.15, "InternalError": 0.05}  # a bad day at the cloud
DEMO_QPS_CAP: Final = 40.0  # the emulated account's limit; the agent keeps under it
REPORTS_TOPIC: Final = "prov/v1/reports"
REPORT_WAIT_S: Final = 30.0  # the upstream drainer delivers within a second; generous for a loaded machine
SERIAL_MODEL: Final = "gate-controller-g2"  # the profile provisioned over serial
SERIAL_PORTS: Final = 4  # jig ports; each takes its devices one after another
SERIAL_SCAN_S: Final = 0.5  # the demo agent looks for new ports this often
SERIAL_PREFIX: Final = "JIG"
MISBEHAVING: Final = {
    Behaviour.GARBAGE: 2,
    Behaviour.RE_REGISTER: 2,
    Behaviour.DUPLICATE: 2,
    Behaviour.FAIL_ONCE: 2,
    Behaviour.DIE_MID_ACTIVATION: 2,
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    demo = commands.add_parser(
        "demo",
        help="run the embedded demo (emulated cloud, broker, agent, simulated devices; no account needed)",
        description="Run a provisioning line on this machine: the Cloudauth emulator with injected faults, "
        "a Mosquitto broker, the agent (killed and restarted midway) and simulated devices. Exit 0 only "
        "when every device holds exactly one licence and was reported upstream.",
    )
    demo.add_argument("--devices", type=int, default=40, help="simulated devices (default %(default)s)")
    demo.add_argument("--no-faults", action="store_true", help="no injected cloud faults")
    demo.add_argument("--no-crash", action="store_true", help="do not kill the agent midway")
    demo.add_argument(
        "--serial-devices", type=int, default=8, help="devices on the serial jig's ports (default %(default)s)"
    )
    demo.add_argument("--workdir", type=Path, help="keep everything here (default: a new provisioning-demo-* "
                      "directory in the system's temporary directory)")  # fmt: skip
    demo.add_argument(
        "--hold", action="store_true", help="after the summary, keep the line running (station view) until Ctrl-C"
    )
    demo.set_defaults(handler=_run)


@dataclass
class _Upstream:
    """The MES's side: every report that reached the upstream topic."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: int = 0
    expected: int = -1  # set once the fleet is done
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, report: dict[str, Any]) -> None:
        self.received += 1
        self.keys.setdefault(report["idempotency_key"], report)
        self.check()

    def check(self) -> None:
        if 0 <= self.expected <= len(self.keys):
            self.complete.set()


def _run(args: argparse.Namespace) -> int:
    console = Console(highlight=False, soft_wrap=True)  # paths and commands stay whole under a pipe or tee
    if args.devices < 1 or args.serial_devices < 0:
        console.print("error: --devices must be at least 1 and --serial-devices at least 0")
        return ExitCode.USAGE
    console.print("[bold]provisioning-lab demo[/]: a provisioning line on this machine, no account needed")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="provisioning-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"work directory (kept): {workdir}")
    try:
        broker = MosquittoBroker(workdir / "broker").start()
    except MosquittoNotFound as exc:
        console.print(f"[yellow]{exc}[/]")
        console.print("Without a broker the demo shows the cloud side of each device's path only.")
        return run_cloud_only(args.devices, console)
    try:
        with (
            EmulatorProcess(["--sdk-delay", "1"], access_key_id="demo-id", access_key_secret="demo-secret") as emu,  # noqa: S106
            SerialJig(workdir / "jig", SERIAL_PORTS if args.serial_devices else 0) as jig,
        ):
            code = asyncio.run(_line(args, workdir, broker, emu, jig, console))
            if args.hold:
                _hold(workdir, emu, console)
    finally:
        broker.stop()
    _what_next(workdir, console)
    return code


async def _line(
    args: argparse.Namespace,
    workdir: Path,
    broker: MosquittoBroker,
    emulator: EmulatorProcess,
    jig: SerialJig,
    console: Console,
) -> int:
    console.print(f"Cloudauth emulator on {emulator.url}; Mosquitto on {broker.host}:{broker.port}")
    if not args.no_faults:
        emulator.set_faults(errors=DEMO_FAULTS, qps_cap=DEMO_QPS_CAP)
        console.print(f"cloud faults injected: {DEMO_FAULTS}; throttling above {DEMO_QPS_CAP:.0f} calls/s")
    config = write_config(
        workdir / "agent.toml",
        {
            "gateway_id": "demo-line",
            "journal": str(workdir / "journal.sqlite3"),
            "profiles": str(PROFILES),
            "cloud": {"endpoint": emulator.url, "qps": DEMO_QPS_CAP * 0.8, "burst": 4},
            "mqtt": {"host": broker.host, "port": broker.port},
            "upstream": {"mqtt_topic": REPORTS_TOPIC},
            # not 9464 nor its socket: a real agent may run on this machine
            "http": {"listen": f"127.0.0.1:{free_port()}", "socket": "", "token_file": str(workdir / "status.token")},
            "serial": {"ports": [str(workdir / "jig" / "port-*")], "usb": False, "scan_interval_s": SERIAL_SCAN_S},
        },
    )
    env = dict(os.environ, ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
               ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret)  # fmt: skip
    upstream = _Upstream()
    watcher = MqttConnection(MqttSettings(host=broker.host, port=broker.port, client_id="demo-mes"),
                             [(REPORTS_TOPIC, 1)])  # fmt: skip
    await watcher.connect()
    collecting = asyncio.create_task(_collect(watcher, upstream), name="demo-upstream")
    log_file = workdir / "agent.log"
    agent = AgentProcess(config, env=env, log_file=log_file).start()
    console.print(f"agent running (pid {agent.pid}, log {log_file}); {args.devices} devices registering, some "
                  "misbehaving")  # fmt: skip
    listen = f"127.0.0.1:{_listen_port(config)}"
    console.print(f"station view: http://{listen}/  or, in another terminal: {_command('provisioning-agent')} status "
                  f"--watch --config {shlex.quote(str(config))}")  # fmt: skip
    specs = fleet_specs(args.devices, model="face-terminal-x1", misbehave=_misbehaving(args.devices), comeback=True)
    serial_specs = fleet_specs(args.serial_devices, model=SERIAL_MODEL, id_prefix=SERIAL_PREFIX)
    if serial_specs:
        console.print(
            f"{len(serial_specs)} devices on a serial jig: {len(jig.ports)} pty ports at {jig.baudrate} baud "
            f"({jig.directory}/port-*), one after another on each port"
        )
    total = len(specs) + len(serial_specs)
    started = time.monotonic()
    fleet = asyncio.create_task(
        run_fleet(
            specs,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            emulator_url=emulator.url,
            deadline_s=180,
            timing=Timing(time_scale=0.1),
            serial=queue_specs(jig.ports, serial_specs) if serial_specs else (),
        ),
        name="demo-fleet",
    )
    restarts = 0
    with console.status("devices at work") as status:
        while not fleet.done():
            audit = await asyncio.to_thread(emulator.audit)
            used = audit["keys"]["used"]
            on_serial = sum(
                1
                for event in audit["key_events"]
                if event["used_at"] and str(event["UserDeviceId"]).startswith(SERIAL_PREFIX + "-")
            )
            status.update(
                f"devices at work: {used}/{total} activated ({used - on_serial} over MQTT, "
                f"{on_serial}/{len(serial_specs)} on the serial jig)"
            )
            if not args.no_crash and restarts == 0 and used >= total // 3:
                agent.kill()
                console.print(f"[red]agent killed with SIGKILL[/] after {used} activations; restarting it")
                agent = AgentProcess(config, env=env, log_file=log_file).start()
                restarts += 1
            await asyncio.sleep(0.1)
    report = fleet.result()
    elapsed = time.monotonic() - started
    emulator.set_faults()
    upstream.expected = len({d.device_id for d in report.devices if d.status == "licensed"})
    upstream.check()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(upstream.complete.wait(), timeout=REPORT_WAIT_S)
    agent.stop()
    collecting.cancel()
    await watcher.aclose()
    return _summary(console, report, emulator.audit(), upstream, restarts, elapsed)


def _listen_port(config: Path) -> int:
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("listen = "):
            return int(line.rsplit(":", 1)[1].strip('"'))
    raise ValueError(f"{config}: no http listen address")


def _hold(workdir: Path, emulator: EmulatorProcess, console: Console) -> None:
    """Run the agent again on the same line and wait for Ctrl-C: the station view stays up to be looked at."""
    config = workdir / "agent.toml"
    env = dict(os.environ, ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
               ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret)  # fmt: skip
    agent = AgentProcess(config, env=env, log_file=workdir / "agent.log").start()
    console.print(f"\n[bold]holding the line[/]: station view on http://127.0.0.1:{_listen_port(config)}/, or "
                  f"{_command('provisioning-agent')} status --watch --config {shlex.quote(str(config))}; "
                  "Ctrl-C ends")  # fmt: skip
    try:
        while agent.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()


def _command(name: str) -> str:
    """``name`` when it is on PATH, else this venv's copy (``make demo`` does not put .venv/bin on PATH)."""
    beside = Path(sys.executable).parent / name
    return name if shutil.which(name) or not beside.exists() else shlex.quote(str(beside))


def _what_next(workdir: Path, console: Console) -> None:
    config = shlex.quote(str(workdir / "agent.toml"))
    agent, lab = _command("provisioning-agent"), _command("provisioning-lab")
    console.print(f"\n[bold]what to try next[/] (everything is in {workdir}):")
    for command, what in (
        (f"{agent} export --config {config}", "the licensed devices, from the agent's journal (CSV)"),
        (f"{agent} audit verify --config {config}", "the AuthKey audit trail's hash chain"),
        (f"less {shlex.quote(str(workdir / 'agent.log'))}", "what the agent logged, kill and restart included"),
        (f"{lab} demo --hold", "the same line, then kept running: open the station view it prints"),
        (f"{lab} demo --devices 200 --no-faults", "a bigger, calmer line"),
    ):
        console.print(f"  {command}\n      {what}", markup=False)
    console.print("  docs: docs/operations.md (running a gateway, the station view), docs/simulator.md", markup=False)


async def _collect(connection: MqttConnection, upstream: _Upstream) -> None:
    async for message in connection.messages():
        upstream.add(json.loads(message.payload))


def _misbehaving(count: int) -> dict[Behaviour, int]:
    budget = count // 2
    chosen: dict[Behaviour, int] = {}
    for behaviour, wanted in MISBEHAVING.items():
        take = min(wanted, budget)
        if take:
            chosen[behaviour] = take
            budget -= take
    return chosen


def _summary(
    console: Console,
    report: FleetReport,
    audit: dict[str, Any],
    upstream: _Upstream,
    restarts: int,
    elapsed: float,
) -> int:
    licences = {row["UserDeviceId"]: row["licences_consumed"] - row["extensions"] for row in audit["devices"]}
    reported = {r["device_id"] for r in upstream.keys.values()}
    rows = [
        {"Device": d.device_id, "Via": Path(d.tid).name if d.protocol == SERIAL_PROTOCOL else f"mqtt {d.protocol}",
         "Behaviour": str(d.behaviour), "Outcome": d.status, "Keys": d.counters.keys_received,
         "ExpiredDay": d.expired_day, "Licences": licences.get(d.device_id, 0),
         "Reported": "yes" if d.device_id in reported else "no"}
        for d in report.devices
    ]  # fmt: skip
    print_table(rows, ("Device", "Via", "Behaviour", "Outcome", "Keys", "ExpiredDay", "Licences", "Reported"),
                title="devices")  # fmt: skip
    totals = report.totals()
    exactly_once = all(licences.get(d.device_id) == 1 for d in report.devices)
    all_reported = reported == {d.device_id for d in report.devices}
    print_table(
        [
            {"what": "devices licensed", "value": f"{report.counts()['licensed']} / {len(report.devices)}"},
            {"what": "of them on the serial jig", "value": sum(
                d.status == "licensed" for d in report.devices if d.protocol == SERIAL_PROTOCOL)},
            {"what": "devices holding exactly one licence (audit)", "value": sum(v == 1 for v in licences.values())},
            {"what": "keys minted / used", "value": f"{audit['keys']['minted']} / {audit['keys']['used']}"},
            {"what": "keys used after their deadline", "value": totals["keys_used_after_expiry"]},
            {"what": "reports upstream (distinct / received)", "value": f"{len(upstream.keys)} / {upstream.received}"},
            {"what": "cloud errors absorbed", "value": sum(audit["errors"].values())},
            {"what": "agent killed and restarted", "value": restarts},
            {"what": "wall time", "value": f"{elapsed:.1f} s"},
        ],
        ("what", "value"),
        title="summary",
    )  # fmt: skip
    if exactly_once and all_reported and totals["keys_used_after_expiry"] == 0:
        console.print("[green]every device holds exactly one licence and was reported upstream[/]")
        return ExitCode.OK
    console.print("[red]the line did not finish cleanly: see the tables above[/]")
    return ExitCode.FAILED
