"""Benchmark: a serial station, 32 ports at once at 115200 baud, against the bytes/baud limit.

Run ``.venv/bin/python bench/serial_station.py [--quick] [--ports 32] [--per-port 4] [--rounds 5]
[--baseline DIR] [--json-out FILE]`` (``--help`` for the rest: profiles, journal folder, no floors).

How it works
------------
Variants run side by side in one run, each on a jig of its own, every round in turn (the order
rotates so each leads in turn), so the machine's load weighs on all of them alike:

- ``agent``: this checkout's ``provisioning-agent run`` (serial only: ``[mqtt] enabled = false``,
  ``[serial] ports`` a glob over its jig's folder, journal on disk unless ``--journal-dir``);
- ``before`` (with ``--baseline DIR``): the agent of another checkout (e.g. the code before a
  change), same configuration;
- ``floor``: ``bench/_serial_floor.py``, a responder that runs the same link layer on every port
  and answers at once, with keys the benchmark minted before the round (sealed to the device as
  the protocol asks): the line, the simulated devices and the load, nothing else;
- ``floor+cloud``: the same responder making one CreateAuthKey per ``register`` on raw
  keep-alive HTTP: the floor plus the cloud's share (one emulator on the same 2 cores).

One Cloudauth emulator serves them all. Each variant's jig
(``provisioning_lab.simulator.SerialJig``: pseudo-terminals paced like UARTs at 115200 8N1, 11 520
bytes/s each way per port) and simulated devices (``SerialDevice``, the protocol's own timings)
run in ``--device-processes`` worker processes (2 by default), each with a share of the ports: the
devices of 32 ports in one interpreter would queue behind each other when 32 keys land together,
and that queue would count as wire time. Each round provisions ``per_port`` devices on every port,
one after another per port, all ports at once; a warm-up round comes first and is not counted.

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
- **reactions** (from the jig's byte trace, no line time): HELLO -> HELLO_ACK, ``register`` ->
  ``key``, ``result`` -> ``done``, from the device's frame complete on the pty to the answer's.

CPU per device: user + system CPU of the variant's process (every thread) from
``/proc/<pid>/stat`` over the round, divided by the round's devices. It includes the idle cost of
the open ports for the round's length; that idle cost alone is measured before the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import aiohttp
from _daemon_device import cpu_seconds, cpu_times
from _harness import ROOT, machine, markdown_table, median, percentile, split_evenly  # puts the checkout on sys.path
from _presign import signed_form

from provisioning.serial import Frame, FrameDecoder, FrameType, Hello, HelloAck, encode_frame
from provisioning_lab._children import child_env, terminate
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import SerialDevice, SerialJig, Timing, fleet_specs, line_rate, queue_specs
from provisioning_lab.simulator._sdk import EmulatorSdk
from provisioning_lab.simulator._serial import run_port_queue

MODEL: Final = "gate-controller-g2"  # hardware-profiles/: a serial profile, no verify call
BIZ_TYPE: Final = "GATE_G2_PILOT"  # its biz_type (the floor's keys are minted with it)
FORM_TYPE: Final = "application/x-www-form-urlencoded"
PREFIX: Final = {"agent": "A", "before": "B", "floor": "F", "floor+cloud": "C"}  # device ids differ per variant
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


class DeviceProcesses:
    """One variant's jig and simulated devices, split over worker processes (each its own jig, loop and GIL).

    The devices of 32 ports in one process queue for one interpreter: 32 keys arriving together
    are unsealed, activated and answered one after another, and that wait would count as wire
    time. Each worker holds a share of the ports (``w1-port-01``...) and runs its devices; the
    parent only deals the devices out and gathers what each measured.
    """

    def __init__(self, directory: Path, ports: int, processes: int) -> None:
        self.directory = directory
        self._shares = [n for n in split_evenly(ports, max(1, min(processes, ports))) if n]
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        context = multiprocessing.get_context("fork")  # before any thread of ours starts: see main
        for number, share in enumerate(self._shares, 1):
            parent, child = context.Pipe()
            worker = context.Process(
                target=_device_worker, args=(child, directory, share, f"w{number}-port-"), daemon=True
            )
            worker.start()
            self._workers.append((worker, parent))
        for _, connection in self._workers:
            connection.recv()  # its jig is up

    @property
    def pattern(self) -> str:
        return str(self.directory / "*port-*")

    def run_round(self, emulator_url: str, specs: list[Any], per_port: int) -> tuple[list[Any], dict[str, list[float]]]:
        start = 0
        for (_, connection), share in zip(self._workers, self._shares, strict=True):
            connection.send((emulator_url, specs[start : start + share * per_port]))
            start += share * per_port
        rows: list[Any] = []
        reactions: dict[str, list[float]] = {}
        for _, connection in self._workers:
            part_rows, part_reactions = connection.recv()
            rows += part_rows
            for kind, times in part_reactions.items():
                reactions.setdefault(kind, []).extend(times)
        return rows, reactions

    def close(self) -> None:
        for worker, connection in self._workers:
            with contextlib.suppress(OSError):
                connection.send(None)
            worker.join(10)


def _device_worker(connection: Connection, directory: Path, ports: int, prefix: str) -> None:
    with SerialJig(directory, ports, baudrate=BAUDRATE, prefix=prefix, trace=True) as jig:
        connection.send("ready")
        while (work := connection.recv()) is not None:
            emulator_url, specs = work
            devices = asyncio.run(run_round(jig, emulator_url, specs))
            connection.send(([device_row(device) for device in devices], agent_reactions(jig)))


def agent_reactions(jig: SerialJig) -> dict[str, list[float]]:
    """From the jig's trace: the agent's time from a device's frame complete on its port to its answer's.

    A device's frame is written to the pty when its last byte would arrive at line rate; the agent's
    answer is read from the pty as soon as the agent writes it. So this is the agent alone: its read
    wake-up, decoding, journal, cloud call and write, without any line time. ``hello``: a device's
    HELLO to the agent's HELLO_ACK; ``key``: ``register`` to ``key``; ``done``: ``result`` to ``done``.
    """
    found: dict[str, list[float]] = {"hello": [], "key": [], "done": []}
    for port in jig.ports:
        decoders = {True: FrameDecoder(), False: FrameDecoder()}
        last_in: float | None = None
        hello_in: float | None = None
        for when, to_agent, data in port.trace or []:
            for item in decoders[to_agent].feed(data):
                if not isinstance(item, Frame):
                    continue
                if to_agent:
                    if item.type is FrameType.HELLO:
                        hello_in = when
                    elif item.type is FrameType.DATA:
                        last_in = when
                    continue
                if item.type is FrameType.HELLO_ACK and hello_in is not None:
                    found["hello"].append(when - hello_in)
                    hello_in = None
                if item.type is not FrameType.DATA:
                    continue
                kind = json.loads(item.payload).get("type")
                if last_in is not None and kind in found:
                    found[kind].append(when - last_in)
                last_in = None
        if port.trace is not None:
            port.trace.clear()
    return found


def device_row(device: SerialDevice) -> tuple[bool, bool, float, float, float]:
    """What the parent needs of one device: licensed, resent, wire time, its ideal, its activation (seconds)."""
    log = device.wire
    if device.outcome().status != "licensed":
        return False, False, 0.0, 0.0, log.activation_s
    resent = len(log.sent) != 2 or len(log.received) != 2  # a resend or a duplicate: counted, its time kept
    spent = log.finished - log.started - log.activation_s
    return True, resent, spent, ideal_bytes(log.sent, log.received) / LINE_RATE, log.activation_s


def measure(rows: list[tuple[bool, bool, float, float, float]]) -> dict[str, Any]:
    wire, ideal, ratio, extra = [], [], [], 0
    for licensed, resent, spent, floor, _ in rows:
        if not licensed:
            continue
        extra += resent
        wire.append(spent)
        ideal.append(floor)
        ratio.append(spent / floor)
    devices = rows
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
        "activation_ms_p50": median([row[4] for row in rows]) * 1000,
    }


async def mint_keys(emulator: EmulatorProcess, specs: list[Any]) -> dict[str, str]:
    """The floor's keys for a round, minted before it starts (CreateAuthKey as the profile asks: test licences)."""
    async with aiohttp.ClientSession() as http:

        async def one(device_id: str) -> tuple[str, str]:
            form = signed_form(
                emulator, "CreateAuthKey", {"UserDeviceId": device_id, "BizType": BIZ_TYPE, "Test": "true"}
            )
            async with http.post(emulator.url + "/", data=form, headers={"Content-Type": FORM_TYPE}) as answer:
                return device_id, str((await answer.json(content_type=None))["AuthKey"])

        return dict(await asyncio.gather(*(one(spec.device_id) for spec in specs)))


class Floor:
    """bench/_serial_floor.py on a jig's ports: a responder that does only the line's work (and the cloud call)."""

    def __init__(self, jig: DeviceProcesses, env: dict[str, str], emulator_url: str | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_serial_floor.py")), jig.pattern,
             str(BAUDRATE), *([emulator_url] if emulator_url else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(env),
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdin is not None
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        if self._stdout.readline().strip() != "ready":
            raise RuntimeError("the floor responder did not start")

    @property
    def pid(self) -> int:
        return self.process.pid

    def give(self, keys: dict[str, str]) -> None:
        self._stdin.write(json.dumps(keys) + "\n")
        self._stdin.flush()
        if self._stdout.readline().strip() != "ok":
            raise RuntimeError("the floor responder did not take the keys")

    def close(self) -> None:
        self._stdin.close()
        terminate(self.process, 5.0)


def agent_config(
    work: Path, jig: DeviceProcesses, emulator: EmulatorProcess, name: str, journal_dir: Path | None
) -> Path:
    return write_config(
        work / f"{name}.toml",
        {
            "gateway_id": f"bench-serial-{name}",
            "journal": str((journal_dir or work) / f"serial-bench-{os.getpid()}-{name}.sqlite3"),
            "profiles": str(ROOT / "hardware-profiles"),
            "log_level": "warning",
            "cloud": {"endpoint": emulator.url, "qps": 1000.0, "burst": 100},
            "mqtt": {"enabled": False},
            "upstream": {"mqtt_topic": ""},
            "http": {"listen": "", "socket": ""},
            "serial": {"ports": [jig.pattern], "usb": False, "baudrate": BAUDRATE},
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", type=int, default=32)
    parser.add_argument("--per-port", type=int, default=4, help="devices one after another on each port per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 devices per port")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--journal-dir",
        type=Path,
        help="put the agents' journals there (e.g. /dev/shm: no fsync cost) to see its share",
    )
    parser.add_argument("--baseline", type=Path, help="also run the agent of this checkout (the code before a change)")
    parser.add_argument("--no-floor", action="store_true", help="leave out the floor responder")
    parser.add_argument("--py-spy", type=Path, help="sample the agent with py-spy over the rounds (raw format, --gil)")
    parser.add_argument("--cprofile", type=Path, help="run the agent under cProfile (its loop) and save the stats")
    parser.add_argument("--device-processes", type=int, default=2, help="processes the simulated devices run in")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_port = 2, 2
    work = Path(tempfile.mkdtemp(prefix="serial-bench-"))
    names = ["agent", *(["before"] if args.baseline else []), *([] if args.no_floor else ["floor", "floor+cloud"])]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    env = dict(os.environ, ALIBABA_CLOUD_ACCESS_KEY_ID="bench", ALIBABA_CLOUD_ACCESS_KEY_SECRET="bench-secret")  # noqa: S106
    with contextlib.ExitStack() as stack:
        jigs: dict[str, DeviceProcesses] = {}
        for name in names:  # forked first, while this process has no thread yet
            jigs[name] = DeviceProcesses(work / name, args.ports, args.device_processes)
            stack.callback(jigs[name].close)
        emulator = stack.enter_context(EmulatorProcess(access_key_id="bench", access_key_secret="bench-secret"))  # noqa: S106
        pids: dict[str, int] = {}
        floors: dict[str, Floor] = {}
        for name in names:
            jig = jigs[name]
            if name.startswith("floor"):
                floor = floors[name] = Floor(jig, env, emulator.url if name == "floor+cloud" else None)
                stack.callback(floor.close)
                pids[name] = floor.pid
                continue
            launcher: tuple[str, ...] = ("-m", "agent")
            if name == "before":
                launcher = ("-c", _FROM_CHECKOUT.format(root=str(args.baseline.resolve())))
            elif args.cprofile:
                launcher = ("-m", "cProfile", "-o", str(args.cprofile), "-m", "agent")
            config = agent_config(work, jig, emulator, name, args.journal_dir)
            pids[name] = stack.enter_context(AgentProcess(config, env=env, launcher=launcher)).pid
        time.sleep(2.0)  # the agents' first scan opens every port
        idle_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(IDLE_S)
        idle = {name: (cpu_seconds(pid) - idle_before[name]) / IDLE_S * 1000 for name, pid in pids.items()}
        print(f"idle: {json.dumps({k: round(v, 1) for k, v in idle.items()})} ms CPU/s, {args.ports} ports open",
              file=sys.stderr)  # fmt: skip
        sampler = start_py_spy(pids["agent"], args.py_spy) if args.py_spy else None
        for number in range(args.rounds + 1):
            for name in names[number % len(names) :] + names[: number % len(names)]:  # each variant leads in turn
                specs = fleet_specs(args.ports * args.per_port, model=MODEL, id_prefix=f"{PREFIX[name]}{number}")
                if name == "floor":
                    floors[name].give(asyncio.run(mint_keys(emulator, specs)))
                times_before, wall_before = cpu_times(pids[name]), time.monotonic()
                devices, reactions = jigs[name].run_round(emulator.url, specs, args.per_port)
                wall = time.monotonic() - wall_before
                (user_after, system_after), (user_before, system_before) = cpu_times(pids[name]), times_before
                system = system_after - system_before
                cpu = user_after - user_before + system
                figures = measure(devices)
                figures |= {f"agent_{kind}_ms_p50": median(times) * 1000 for kind, times in reactions.items() if times}
                figures |= {"wall_s": wall, "devices_per_s": len(devices) / wall,
                            "agent_cpu_ms_per_device": cpu * 1000 / len(devices),
                            "agent_system_ms_per_device": system * 1000 / len(devices)}  # fmt: skip
                label = "warm-up" if number == 0 else f"round {number}"
                print(f"{name} {label}: {json.dumps({k: round(v, 3) for k, v in figures.items()})}", file=sys.stderr)
                if number:
                    rounds[name].append(figures)
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(30)
        audit = emulator.audit()
    licences = [row["licences_consumed"] for row in audit["devices"]]
    summary = {name: {k: median(r[k] for r in rs if k in r) for k in rs[0]} for name, rs in rounds.items()}
    options = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    report = {"machine": machine(["pyserial", "aiohttp"]), "args": options, "idle_cpu_ms_per_s": idle,
              "rounds": rounds, "median": summary, "one_licence_each": all(n == 1 for n in licences)}  # fmt: skip
    print(render(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


# The agent of another checkout: its directory first on sys.path, then ``python -m agent``.
_FROM_CHECKOUT = "import runpy, sys; sys.path.insert(0, {root!r}); runpy.run_module('agent', run_name='__main__')"


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (every thread, only while it holds the GIL) until SIGINT."""
    binary = shutil.which("py-spy") or os.environ.get("PY_SPY")
    if binary is None:
        raise SystemExit("--py-spy: py-spy is not on PATH (or set PY_SPY to its path)")
    return subprocess.Popen(
        [binary, "record", "-p", str(pid), "-r", "250", "--gil", "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
    )


def render(report: dict[str, Any]) -> str:
    header = ["variant", "round", "devices", "wall s", "devices/s", "wire ms p50", "wire ms p90", "ideal ms p50",
              "ratio p50", "ratio p90", "ratio max", "with resends", "HELLO->HELLO_ACK ms", "register->key ms",
              "result->done ms", "CPU ms/device"]  # fmt: skip
    rows = []
    for name, rounds in report["rounds"].items():
        for index, figures in enumerate([*rounds, report["median"][name]]):
            rows.append([
                name, "median" if index == len(rounds) else str(index + 1),
                f"{figures['devices']:.0f}", f"{figures['wall_s']:.1f}", f"{figures['devices_per_s']:.1f}",
                f"{figures['wire_ms_p50']:.0f}", f"{figures['wire_ms_p90']:.0f}", f"{figures['ideal_ms_p50']:.0f}",
                f"{figures['ratio_p50']:.2f}x", f"{figures['ratio_p90']:.2f}x", f"{figures['ratio_max']:.2f}x",
                f"{figures['exchanges_with_resends']:.0f}", f"{figures.get('agent_hello_ms_p50', 0):.1f}",
                f"{figures.get('agent_key_ms_p50', 0):.1f}",
                f"{figures.get('agent_done_ms_p50', 0):.1f}", f"{figures['agent_cpu_ms_per_device']:.1f}",
            ])  # fmt: skip
    m = report["machine"]
    idle = ", ".join(f"{name} {value:.1f}" for name, value in report["idle_cpu_ms_per_s"].items())
    lines = [
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, kernel {m['kernel']}, "
        f"load {m['loadavg']}, commit {m['commit']}{' (dirty)' if m['worktree_dirty'] else ''}",
        f"idle CPU with {report['args']['ports']} ports open (ms/s): {idle}",
        f"one licence per device (emulator audit): {report['one_licence_each']}",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
