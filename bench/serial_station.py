"""Benchmark: a serial station, 32 ports at once at 115200 baud, against the bytes/baud limit.

Run ``.venv/bin/python bench/serial_station.py [--quick] [--ports 32] [--per-port 4] [--rounds 5] [--json-out FILE]``.

How it works
------------
One Cloudauth emulator and the agent (``provisioning-agent run``, serial only: ``[mqtt] enabled =
false``, ``[serial] ports`` a glob over the jig's folder) are separate processes on loopback. The
benchmark process holds the jig (``provisioning_lab.simulator.SerialJig``: N pseudo-terminals paced like UARTs
at 115200 8N1, 11 520 bytes/s each way per port) and the simulated devices
(``provisioning_lab.simulator.SerialDevice``, the protocol's own timings). Each round provisions
``per_port`` devices on every port, one after another per port, all ports at once; a warm-up round
comes first (ports opened, imports and caches warm) and is not counted.

Per device:

- **wire time**: from the device's power-on (its first HELLO) to the moment it holds ``done``,
  minus the time it spent in the SDK's activation call (not the line's doing). It includes the
  agent's reaction time to every frame and its CreateAuthKey call to the emulator on loopback.
- **ideal**: the bytes the exchange needs on the wire, in the order it needs them, at 11 520
  bytes/s: HELLO (20 bytes) -> HELLO_ACK (25) -> register DATA -> ACK (12) + key DATA -> ACK ->
  result DATA -> ACK + done DATA. Each DATA frame is measured from the device's real payloads
  (``encode_frame``: 0x00, COBS(5-byte header, JSON, CRC-32), 0x00). Frames of the two directions
  could overlap only where nothing depends on them; the sequence above is a chain (each frame waits
  for the one before it), so the sum is the floor. The final ACK of ``done`` is after the device
  holds it and is not counted.
- **ratio**: wire time / ideal, per device; the goal is <= 1.2.

Agent CPU per device: user + system CPU of the agent process (every thread) from
``/proc/<pid>/stat`` over the round, divided by the round's devices. It includes the idle cost of
32 open ports (HELLO timers, port threads) for the round's length; that idle cost alone is
measured before the rounds with no device on the ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
from _daemon_device import cpu_seconds
from _harness import ROOT, machine, markdown_table, median, percentile  # puts the checkout on sys.path

from provisioning.serial import Frame, FrameDecoder, FrameType, Hello, HelloAck, encode_frame
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import SerialDevice, SerialJig, Timing, fleet_specs, line_rate, queue_specs
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._serial import run_port_queue

MODEL: Final = "gate-controller-g2"  # hardware-profiles/: a serial profile, no verify call
BAUDRATE: Final = 115200
LINE_RATE: Final = line_rate(BAUDRATE)  # 8N1: 10 bits a byte
ROUND_DEADLINE_S: Final = 300.0
IDLE_S: Final = 5.0  # how long the idle cost of the open ports is measured
_HELLO: Final = len(encode_frame(Frame(FrameType.HELLO, 0, Hello(1, 1, 4096, 0x12345678).to_bytes())))
_HELLO_ACK: Final = len(
    encode_frame(Frame(FrameType.HELLO_ACK, 0, HelloAck(Hello(1, 1, 4096, 0x9ABCDEF0), 0x12345678, 1).to_bytes()))
)
_ACK: Final = len(encode_frame(Frame(FrameType.ACK, 0)))


def ideal_bytes(sent: Sequence[bytes], received: Sequence[bytes]) -> int:
    """The chain HELLO, HELLO_ACK, then each DATA with the ACK the next step waits for (see the docstring)."""
    register, result = sent[0], sent[-1]
    key, done = received[0], received[-1]

    def data(payload: bytes, seq: int) -> int:
        return len(encode_frame(Frame(FrameType.DATA, seq, payload)))

    return _HELLO + _HELLO_ACK + data(register, 0) + _ACK + data(key, 0) + _ACK + data(result, 1) + _ACK + data(done, 1)


async def run_round(jig: SerialJig, emulator_url: str, specs: list[Any]) -> list[SerialDevice]:
    lanes: list[list[SerialDevice]] = [[] for _ in jig.ports]
    deadline = asyncio.get_running_loop().time() + ROUND_DEADLINE_S
    async with aiohttp.ClientSession() as http:
        sdk = EmulatorSdk(emulator_url, http)
        async with asyncio.TaskGroup() as group:
            for queue, lane in zip(queue_specs(jig.ports, specs), lanes, strict=True):
                group.create_task(run_port_queue(queue, sdk, Timing(), deadline, lane))
    return [device for lane in lanes for device in lane]


def agent_reactions(jig: SerialJig) -> dict[str, list[float]]:
    """From the jig's trace: the agent's time from a device's DATA frame complete on its port to its answer's.

    A device's frame is written to the pty when its last byte would arrive at line rate; the agent's
    answer is read from the pty as soon as the agent writes it. So this is the agent alone: its read
    wake-up, decoding, journal, cloud call and write, without any line time.
    """
    found: dict[str, list[float]] = {"key": [], "done": []}
    for port in jig.ports:
        decoders = {True: FrameDecoder(), False: FrameDecoder()}
        last_in: float | None = None
        for when, to_agent, data in port.trace or []:
            for item in decoders[to_agent].feed(data):
                if not isinstance(item, Frame) or item.type is not FrameType.DATA:
                    continue
                if to_agent:
                    last_in = when
                    continue
                kind = json.loads(item.payload).get("type")
                if last_in is not None and kind in found:
                    found[kind].append(when - last_in)
                last_in = None
        if port.trace is not None:
            port.trace.clear()
    return found


def measure(devices: list[SerialDevice]) -> dict[str, Any]:
    wire, ideal, ratio, extra = [], [], [], 0
    for device in devices:
        log = device.wire
        if device.outcome().status != "licensed":
            continue
        if len(log.sent) != 2 or len(log.received) != 2:
            extra += 1  # a resend or a duplicate: counted, and its wire time kept
        spent = log.finished - log.started - log.activation_s
        floor = ideal_bytes(log.sent, log.received) / LINE_RATE
        wire.append(spent)
        ideal.append(floor)
        ratio.append(spent / floor)
    return {
        "licensed": len(wire),
        "devices": len(devices),
        "exchanges_with_resends": extra,
        "wire_ms_p50": median(wire) * 1000,
        "wire_ms_p90": percentile(wire, 0.9) * 1000,
        "ideal_ms_p50": median(ideal) * 1000,
        "ratio_p50": median(ratio),
        "ratio_p90": percentile(ratio, 0.9),
        "ratio_max": max(ratio),
        "activation_ms_p50": median([d.wire.activation_s for d in devices]) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", type=int, default=32)
    parser.add_argument("--per-port", type=int, default=4, help="devices one after another on each port per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 devices per port")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--journal-dir", type=Path, help="put the agent's journal there (e.g. /dev/shm: fsync is free) to see its share"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_port = 2, 2
    work = Path(tempfile.mkdtemp(prefix="serial-bench-"))
    rounds: list[dict[str, Any]] = []
    with (
        EmulatorProcess(access_key_id="bench", access_key_secret="bench-secret") as emulator,  # noqa: S106
        SerialJig(work / "jig", args.ports, baudrate=BAUDRATE, trace=True) as jig,
    ):
        config = write_config(
            work / "agent.toml",
            {
                "gateway_id": "bench-serial",
                "journal": str((args.journal_dir or work) / f"serial-bench-{os.getpid()}.sqlite3"),
                "profiles": str(ROOT / "hardware-profiles"),
                "log_level": "warning",
                "cloud": {"endpoint": emulator.url, "qps": 1000.0, "burst": 100},
                "mqtt": {"enabled": False},
                "upstream": {"mqtt_topic": ""},
                "http": {"listen": "", "socket": ""},
                "serial": {"ports": [str(jig.directory / "port-*")], "usb": False, "baudrate": BAUDRATE},
            },
        )
        env = dict(os.environ, ALIBABA_CLOUD_ACCESS_KEY_ID="bench", ALIBABA_CLOUD_ACCESS_KEY_SECRET="bench-secret")  # noqa: S106
        with AgentProcess(config, env=env) as agent:
            time.sleep(2.0)  # the agent's first scan opens every port
            idle_cpu = cpu_seconds(agent.pid)
            time.sleep(IDLE_S)
            idle_cpu_per_s = (cpu_seconds(agent.pid) - idle_cpu) / IDLE_S
            print(f"idle: {idle_cpu_per_s * 1000:.1f} ms CPU/s with {args.ports} ports open", file=sys.stderr)
            for number in range(args.rounds + 1):
                specs = fleet_specs(args.ports * args.per_port, model=MODEL, id_prefix=f"B{number}")
                cpu_before, wall_before = cpu_seconds(agent.pid), time.monotonic()
                devices = asyncio.run(run_round(jig, emulator.url, specs))
                wall = time.monotonic() - wall_before
                cpu = cpu_seconds(agent.pid) - cpu_before
                figures = measure(devices)
                reactions = agent_reactions(jig)
                figures |= {f"agent_{kind}_ms_p50": median(times) * 1000 for kind, times in reactions.items() if times}
                figures |= {"wall_s": wall, "devices_per_s": len(devices) / wall,
                            "agent_cpu_ms_per_device": cpu * 1000 / len(devices)}  # fmt: skip
                label = "warm-up" if number == 0 else f"round {number}"
                print(f"{label}: {json.dumps({k: round(v, 3) for k, v in figures.items()})}", file=sys.stderr)
                if number:
                    rounds.append(figures)
        audit = emulator.audit()
    licences = [row["licences_consumed"] for row in audit["devices"]]
    summary = {name: median(r[name] for r in rounds if name in r) for name in rounds[0]}
    options = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    report = {"machine": machine(["pyserial", "aiohttp"]), "args": options,
              "idle_agent_cpu_ms_per_s": idle_cpu_per_s * 1000, "rounds": rounds, "median": summary,
              "one_licence_each": all(n == 1 for n in licences)}  # fmt: skip
    print(render(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


def render(report: dict[str, Any]) -> str:
    rows = []
    for index, figures in enumerate([*report["rounds"], report["median"]]):
        rows.append([
            "median" if index == len(report["rounds"]) else str(index + 1),
            f"{figures['devices']:.0f}", f"{figures['wall_s']:.1f}", f"{figures['devices_per_s']:.1f}",
            f"{figures['wire_ms_p50']:.0f}", f"{figures['wire_ms_p90']:.0f}", f"{figures['ideal_ms_p50']:.0f}",
            f"{figures['ratio_p50']:.2f}x", f"{figures['ratio_p90']:.2f}x", f"{figures['ratio_max']:.2f}x",
            f"{figures['exchanges_with_resends']:.0f}", f"{figures.get('agent_key_ms_p50', 0):.1f}",
            f"{figures.get('agent_done_ms_p50', 0):.1f}", f"{figures['agent_cpu_ms_per_device']:.1f}",
        ])  # fmt: skip
    header = ["round", "devices", "wall s", "devices/s", "wire ms p50", "wire ms p90", "ideal ms p50",
              "ratio p50", "ratio p90", "ratio max", "with resends", "agent register->key ms",
              "agent result->done ms", "agent CPU ms/device"]  # fmt: skip
    m = report["machine"]
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, kernel {m['kernel']}, "
        f"load {m['loadavg']}, commit {m['commit']}{' (dirty)' if m['worktree_dirty'] else ''}",
        f"idle agent with {report['args']['ports']} ports open: {report['idle_agent_cpu_ms_per_s']:.1f} ms CPU/s",
        f"one licence per device (emulator audit): {report['one_licence_each']}",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
