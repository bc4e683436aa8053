"""Benchmark: the provisioning daemon end to end over MQTT, against the bare round trip, in one run.

Run ``.venv/bin/python bench/daemon.py [--quick] [--json-out FILE]``; see bench/README.md.

How it works
------------
One Mosquitto, one Cloudauth emulator and the agent (``provisioning-agent run``) are separate
processes on loopback; the agent's CPU and memory are read from /proc. Devices use the
``face-terminal-x1`` profile (``verify = true``), so every device costs the agent two cloud calls:
CreateAuthKey, then DescribeDeviceInfo to check the reported licence.

1. **Rounds** (emulator without latency or cap, agent ``cloud.qps`` 1000, burst 50). Each round:
   - *CPU*: a batch of simulated devices (``provisioning_lab.simulator.run_fleet``, all at once) goes
     through the agent; its CPU (user + system, every thread) over the batch / devices.
   - *latency*: devices one at a time, timed from publishing ``register`` to receiving ``done``
     by a hand-driven paho client (``_daemon_device.TimedClient``), in four variants whose order
     rotates every round: ``agent``; ``agent_tmpfs`` (a second agent on another topic root with
     its journal on /dev/shm, where fsync is free); ``bare`` (the same two MQTT round trips
     through the same broker to an echo process, ``_daemon_echo.py``, plus the agent's cloud
     calls as raw HTTP on a keep-alive socket: CreateAuthKey pre-signed, DescribeDeviceInfo
     signed inline); ``direct`` (the echo plus the same calls through our ``CloudauthClient``).
     The device's activation (``POST /_emulator/activate``, raw HTTP) is the same in all four.
2. **Throughput**: the emulator adds 100 ms to every call and throttles above Q calls/s; the
   agent's ``cloud.qps`` is Q (what an operator sets); N devices register at once, three times:
   Mosquitto's default queue (``max_queued_messages`` 1000) with device timeouts x15, an
   unlimited queue, and the protocol's own timeouts. Cloud calls are timed from the agent's
   answers (a ``key`` per CreateAuthKey, a ``done`` per DescribeDeviceInfo) seen by a watcher on
   the devices' down topics, which also follows Mosquitto's dropped-messages counter; the steady
   rate is taken between the 10th and the 90th percentile ``done`` (ramp-up and tail excluded).
3. **RSS in flight**: ``limits.max_in_flight`` = N and the emulator holds every call for
   minutes, so N devices sit inside the agent at once (intent journaled, slot held, cloud call
   pending); RSS is sampled once the journal holds all N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Final

import paho.mqtt.client as paho
from _daemon_device import (
    ExchangeError,
    RawHttp,
    TimedClient,
    cpu_seconds,
    cpu_times,
    memory_kib,
    message_id,
    rss_kib,
)
from _harness import ROOT, log, machine, markdown_table, median, percentile  # puts the checkout on sys.path
from _presign import signed_form
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.cloud import CloudauthClient, Credentials, RateLimiter
from provisioning.cloudauth import LicenceTerm
from provisioning.secret import Secret
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.simulator import FleetReport, Timing, fleet_specs, run_fleet

try:
    from provisioning_lab.broker import MosquittoBroker
except ImportError:  # the helper's older home
    from tests.broker import MosquittoBroker  # type: ignore[no-redef,unused-ignore]

MODEL: Final = "face-terminal-x1"  # hardware-profiles/face-terminal-x1.toml: verify = true
BIZ_TYPE: Final = "FACE_TERMINAL_X1"  # that profile's biz_type (the bare calls send what the agent sends)
CALLS_PER_DEVICE: Final = 2  # CreateAuthKey + DescribeDeviceInfo (verify)
TOPIC_ROOT: Final = "prov/v1"
TMPFS_ROOT: Final = "bench-tmpfs/v1"  # the second agent's topic root (journal on tmpfs)
TMPFS_DIR: Final = Path("/dev/shm")  # noqa: S108 - a private mkdtemp inside; fsync is free there
ECHO_ROOT: Final = "bench/echo"
FORM_TYPE: Final = "application/x-www-form-urlencoded"
FAST_QPS: Final = 1000.0  # agent cloud.qps in the rounds: far above what the devices ask
FAST_BURST: Final = 50
THROUGHPUT_QPS: Final = 40.0  # Q, cloud calls/s: 2,000 devices x 2 calls / 40 = 100 s
THROUGHPUT_LATENCY_MS: Final = 100.0
THROUGHPUT_BURST: Final = 5  # the configuration's default
THROUGHPUT_TIME_SCALE: Final = 15.0  # device timeouts x15: register resent after 150 s, past the ~100 s of the run
HOLD_TIME_SCALE: Final = 30.0  # devices held in the agent for the RSS figure never resend
STEADY_FROM, STEADY_TO = 0.10, 0.90  # the steady part of a throughput run, by share of devices done
IDLE_GAP_S: Final = 1.0  # no cloud call for this long in a throughput run: the agent had nothing to do
INFLIGHT_LATENCY_MS: Final = 600_000.0  # calls held this long: nobody leaves the agent while RSS is sampled
INFLIGHT_READ_TIMEOUT_S: Final = 900.0  # the agent must not time the held calls out meanwhile
IDLE_SETTLE_S: Final = 3.0  # after ready, before the idle figures
IDLE_CPU_S: Final = 10.0  # idle CPU measured over this long (sweeper, status, keepalive)
RSS_SAMPLES: Final = 5
CPU_GOAL_MS: Final = 2.0
ADDED_LATENCY_GOAL_MS: Final = 3.0
THROUGHPUT_GOAL: Final = 0.97
RSS_IDLE_GOAL_MB: Final = 40.0
RSS_INFLIGHT_GOAL_MB: Final = 80.0
VARIANTS: Final = ("agent", "agent_tmpfs", "direct", "bare")
STEPS: Final = ("total", "register_key", "activate", "result_done")
BROKER_CONFIG: Final = ("set_tcp_nodelay true", "sys_interval 1")  # Nagle off (see README); $SYS counters each second
UNLIMITED_QUEUE: Final = ("max_queued_messages 0",)  # the default, 1000, drops a 2,000-device burst
PACKAGES: Final = ("paho-mqtt", "aiohttp", "httpx", "prometheus-client")


@dataclass(frozen=True)
class Sizes:
    """How much a run does."""

    rounds: int
    fleet: int  # devices per round, all at once, for the CPU figure
    latency: int  # devices per round and variant, one at a time
    throughput: int  # devices queued at once against the cap
    inflight: int  # devices held in the agent for the RSS figure


FULL: Final = Sizes(rounds=8, fleet=200, latency=25, throughput=2000, inflight=1000)
QUICK: Final = Sizes(rounds=2, fleet=40, latency=6, throughput=300, inflight=200)


# -- the line: broker, emulator, agents ----------------------------------------------------------


class Line:
    """One Mosquitto and one emulator; agents started on demand with a fresh journal each."""

    def __init__(self, workdir: Path, broker: MosquittoBroker, emulator: EmulatorProcess) -> None:
        self.workdir, self.broker, self.emulator = workdir, broker, emulator
        self.env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.env |= {
            "ALIBABA_CLOUD_ACCESS_KEY_ID": emulator.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": emulator.access_key_secret,
        }

    def journal(self, name: str, directory: Path | None = None) -> Path:
        """Where agent ``name`` keeps its journal."""
        return (directory or self.workdir) / f"{name}.sqlite3"

    def start_agent(
        self,
        name: str,
        cloud: dict[str, Any],
        limits: dict[str, Any] | None = None,
        *,
        topic_root: str = TOPIC_ROOT,
        journal_dir: Path | None = None,
    ) -> AgentProcess:
        """Start an agent with these ``[cloud]`` and ``[limits]`` settings (defaults otherwise)."""
        values: dict[str, Any] = {
            "gateway_id": name,
            "journal": str(self.journal(name, journal_dir)),
            "profiles": self.unsealed_profiles(),
            "log_level": "info",
            "cloud": {"endpoint": self.emulator.url, **cloud},
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "topic_root": topic_root},
            "http": {
                "listen": f"127.0.0.1:{free_port()}",
                "socket": "",
            },  # /metrics on, as by default; one port per agent
        }
        if limits:
            values["limits"] = limits
        return AgentProcess(write_config(self.workdir / f"{name}.toml", values), env=self.env).start()

    def unsealed_profiles(self) -> str:
        """The shipped profiles with ``[sealing] required = false``: the benchmark's raw devices take keys in
        the clear, as in every earlier run of it, so its figures stay comparable (sealing is its own cost)."""
        folder = self.workdir / "profiles"
        folder.mkdir(exist_ok=True)
        for shipped in (ROOT / "hardware-profiles").glob("*.toml"):
            text = shipped.read_text(encoding="utf-8").replace("\nrequired = true", "\nrequired = false")
            (folder / shipped.name).write_text(text, encoding="utf-8")
        return str(folder)

    def stop_agent(self, agent: AgentProcess, timeout: float = 15.0) -> None:
        """Stop ``agent`` and end its persistent MQTT session, which would otherwise queue (and, past
        Mosquitto's ``max_queued_messages``, drop) every later device message for an agent that is gone."""
        agent.stop(timeout)
        client_id = f"provisioning-agent-{agent.config_file.stem}"  # the config file is named after gateway_id
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.connect(self.broker.host, self.broker.port, clean_start=True)  # session expiry 0: gone on disconnect
        client.loop(1.0)
        client.disconnect()

    async def fleet(self, specs: Sequence[Any], *, time_scale: float, deadline_s: float) -> FleetReport:
        """Run simulated devices against the agent until all are done."""
        return await run_fleet(
            specs,
            mqtt_host=self.broker.host,
            mqtt_port=self.broker.port,
            emulator_url=self.emulator.url,
            concurrency=len(specs),
            deadline_s=deadline_s,
            timing=Timing(time_scale=time_scale),
        )


class EchoProcess:
    """``_daemon_echo.py`` as a child process."""

    def __init__(self, port: int) -> None:
        script = Path(__file__).with_name("_daemon_echo.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port), "--root", ECHO_ROOT],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the echo responder did not start")

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def settle_all_licensed(report: FleetReport, what: str) -> None:
    """Fail loudly when a device did not end licensed: the figures would be meaningless."""
    counts = report.counts()
    if counts["licensed"] != len(report.devices):
        raise RuntimeError(f"{what}: not every device was licensed: {counts}")


# -- phase 1: rounds -------------------------------------------------------------------------------


@dataclass
class CpuRound:
    """One batch of devices through the agent."""

    devices: int
    wall_s: float
    agent_cpu_s: float
    agent_user_s: float
    agent_sys_s: float
    emulator_cpu_s: float
    broker_cpu_s: float

    @property
    def agent_ms_per_device(self) -> float:
        return self.agent_cpu_s / self.devices * 1e3


@dataclass
class LatencyRun:
    """One variant's devices in one round: per step, one duration per device (ns)."""

    variant: str
    steps: dict[str, list[int]] = field(default_factory=lambda: {step: [] for step in STEPS})
    agent_cpu_s: float = 0.0
    wall_s: float = 0.0

    def add(self, t0: int, t1: int, t2: int, t3: int) -> None:
        self.steps["total"].append(t3 - t0)
        self.steps["register_key"].append(t1 - t0)
        self.steps["activate"].append(t2 - t1)
        self.steps["result_done"].append(t3 - t2)

    def ms(self, step: str, fraction: float) -> float:
        return percentile(self.steps[step], fraction) / 1e6


class LatencyBench:
    """Devices one at a time through the agent, and the bare and direct comparisons."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.activation = RawHttp(line.emulator.url)  # the device's SDK step, the same in every variant
        self.cloud = RawHttp(line.emulator.url)  # the bare floor's cloud calls
        self.runner = asyncio.Runner()
        credentials = Credentials(line.emulator.access_key_id, Secret(line.emulator.access_key_secret))
        self.client = CloudauthClient(credentials, endpoint=line.emulator.url, rate_limiter=RateLimiter(qps=None))

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.close()
        self.activation.close()
        self.cloud.close()

    def run(self, variant: str, round_no: int, count: int, agent_pid: int) -> LatencyRun:
        """``count`` devices (plus one untimed warm-up) through ``variant``; ``agent_pid``'s CPU meanwhile."""
        run = LatencyRun(variant)
        one: Callable[[str, LatencyRun | None], None] = {
            "agent": lambda device_id, into: self._agent_device(TOPIC_ROOT, device_id, into),
            "agent_tmpfs": lambda device_id, into: self._agent_device(TMPFS_ROOT, device_id, into),
            "bare": self._bare_device,
            "direct": self._direct_device,
        }[variant]
        tag = "".join(part[0] for part in variant.split("_")).upper()
        one(f"W{tag}{round_no}-warm", None)
        cpu0, wall0 = cpu_seconds(agent_pid), time.perf_counter()
        for index in range(count):
            one(f"L{tag}{round_no}-{index:03d}", run)
        run.wall_s, run.agent_cpu_s = time.perf_counter() - wall0, cpu_seconds(agent_pid) - cpu0
        return run

    def _activate(self, auth_key: str, hardware_id: str) -> dict[str, Any]:
        body = json.dumps({"AuthKey": auth_key, "HardwareId": hardware_id}).encode()
        return self.activation.post("/_emulator/activate", body, "application/json")

    def _agent_device(self, root: str, device_id: str, run: LatencyRun | None) -> None:
        up, down = f"{root}/dev/{device_id}/up", f"{root}/dev/{device_id}/down"
        hardware_id = f"hw-{device_id}"
        client = TimedClient(self.line.broker.host, self.line.broker.port, device_id, down)
        try:
            register = _register(device_id, hardware_id)
            t0 = perf_counter_ns()
            key = _expect(client.exchange(up, register), "key")
            t1 = perf_counter_ns()
            licence = self._activate(key["auth_key"], hardware_id)
            t2 = perf_counter_ns()
            _expect(client.exchange(up, _result(device_id, hardware_id, key["attempt"], licence)), "done")
            t3 = perf_counter_ns()
        finally:
            client.close()
        if run is not None:
            run.add(t0, t1, t2, t3)

    def _bare_device(self, device_id: str, run: LatencyRun | None) -> None:
        up, down = f"{ECHO_ROOT}/{device_id}/up", f"{ECHO_ROOT}/{device_id}/down"
        hardware_id = f"hw-{device_id}"
        emulator = self.line.emulator
        create = signed_form(
            emulator,
            "CreateAuthKey",
            {"UserDeviceId": device_id, "BizType": BIZ_TYPE, "Test": "false", "AuthYears": "1"},
        )
        client = TimedClient(self.line.broker.host, self.line.broker.port, device_id, down)
        try:
            register = _register(device_id, hardware_id)
            t0 = perf_counter_ns()
            client.exchange(up, register)
            auth_key = self.cloud.post("/", create, FORM_TYPE)["AuthKey"]
            t1 = perf_counter_ns()
            licence = self._activate(auth_key, hardware_id)
            t2 = perf_counter_ns()
            client.exchange(up, _result(device_id, hardware_id, "0" * 16, licence))
            describe = signed_form(emulator, "DescribeDeviceInfo", {"DeviceId": licence["DeviceId"]})
            self.cloud.post("/", describe, FORM_TYPE)
            t3 = perf_counter_ns()
        finally:
            client.close()
        if run is not None:
            run.add(t0, t1, t2, t3)

    def _direct_device(self, device_id: str, run: LatencyRun | None) -> None:
        up, down = f"{ECHO_ROOT}/{device_id}/up", f"{ECHO_ROOT}/{device_id}/down"
        hardware_id = f"hw-{device_id}"
        term = LicenceTerm.of_years(1)
        client = TimedClient(self.line.broker.host, self.line.broker.port, device_id, down)
        try:
            register = _register(device_id, hardware_id)
            t0 = perf_counter_ns()
            client.exchange(up, register)
            key = self.runner.run(self.client.create_auth_key(term=term, user_device_id=device_id, biz_type=BIZ_TYPE))
            t1 = perf_counter_ns()
            licence = self._activate(key.key.reveal(), hardware_id)
            t2 = perf_counter_ns()
            client.exchange(up, _result(device_id, hardware_id, "0" * 16, licence))
            page = self.runner.run(self.client.describe_device_info(device_id=licence["DeviceId"]))
            t3 = perf_counter_ns()
        finally:
            client.close()
        if not page.devices:
            raise ExchangeError(f"{device_id}: DescribeDeviceInfo found no licence")
        if run is not None:
            run.add(t0, t1, t2, t3)


def _register(device_id: str, hardware_id: str) -> bytes:
    message = {"v": 1, "type": "register", "id": message_id(), "device_id": device_id,
               "hardware_id": hardware_id, "model": MODEL, "fw": "bench-1"}  # fmt: skip
    return json.dumps(message).encode()


def _result(device_id: str, hardware_id: str, attempt: str, licence: dict[str, Any]) -> bytes:
    message = {"v": 1, "type": "result", "id": message_id(), "device_id": device_id, "hardware_id": hardware_id,
               "model": MODEL, "attempt": attempt, "ok": True, "sdk_device_id": licence["DeviceId"],
               "begin_day": licence["BeginDay"], "expired_day": licence["ExpiredDay"]}  # fmt: skip
    return json.dumps(message).encode()


def _expect(payload: bytes, kind: str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(payload)
    if message.get("type") != kind:
        raise ExchangeError(f"expected {kind!r}, the agent answered {message!r}")
    return message


def run_rounds(
    line: Line, sizes: Sizes, agent: AgentProcess, tmpfs_agent: AgentProcess
) -> tuple[list[CpuRound], list[dict[str, LatencyRun]]]:
    """Every round: the CPU batch, then the latency variants in a rotating order."""
    broker_pid, emulator_pid = line.broker.pid, line.emulator.pid
    assert broker_pid is not None
    assert emulator_pid is not None
    cpu_rounds: list[CpuRound] = []
    latency_rounds: list[dict[str, LatencyRun]] = []
    bench = LatencyBench(line)
    try:
        for round_no in range(sizes.rounds):
            specs = fleet_specs(sizes.fleet, model=MODEL, id_prefix=f"CPU{round_no}")
            stamps = (time.perf_counter(), cpu_seconds(emulator_pid), cpu_seconds(broker_pid))
            agent0 = cpu_times(agent.pid)
            report = asyncio.run(line.fleet(specs, time_scale=1.0, deadline_s=300.0))
            agent1 = cpu_times(agent.pid)
            cpu = CpuRound(
                devices=len(specs),
                wall_s=time.perf_counter() - stamps[0],
                agent_cpu_s=sum(agent1) - sum(agent0),
                agent_user_s=agent1[0] - agent0[0],
                agent_sys_s=agent1[1] - agent0[1],
                emulator_cpu_s=cpu_seconds(emulator_pid) - stamps[1],
                broker_cpu_s=cpu_seconds(broker_pid) - stamps[2],
            )
            settle_all_licensed(report, f"round {round_no} CPU batch")
            cpu_rounds.append(cpu)
            shift = round_no % len(VARIANTS)
            order = list(VARIANTS[shift:] + VARIANTS[:shift])
            if round_no % 2:
                order.reverse()
            runs = {
                variant: bench.run(
                    variant, round_no, sizes.latency, tmpfs_agent.pid if variant == "agent_tmpfs" else agent.pid
                )
                for variant in order
            }
            latency_rounds.append(runs)
            log(
                f"round {round_no + 1}/{sizes.rounds}: agent CPU {cpu.agent_ms_per_device:.2f} ms/device "
                f"({cpu.devices} devices in {cpu.wall_s:.1f} s); p50 "
                + ", ".join(f"{v} {runs[v].ms('total', 0.5):.2f} ms" for v in VARIANTS)
                + f" (order {' '.join(order)})"
            )
    finally:
        bench.close()
    return cpu_rounds, latency_rounds


# -- phase 2: throughput against the cap ---------------------------------------------------------


DROPPED_TOPIC: Final = "$SYS/broker/publish/messages/dropped"  # Mosquitto: QoS 1 messages dropped, queue full


class DownWatcher:
    """Stamps every agent answer on the devices' down topics, and follows Mosquitto's dropped-messages
    counter (retained, refreshed every ``sys_interval``); a paho thread of its own."""

    def __init__(self, host: str, port: int) -> None:
        self.events: list[tuple[float, str]] = []
        self.dropped: list[int] = []
        self._lock = threading.Lock()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-watcher", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.on_message = self._on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect(host, port)
        client.subscribe([(f"{TOPIC_ROOT}/dev/+/down", 0), (DROPPED_TOPIC, 0)])
        client.loop_start()
        deadline = time.monotonic() + 10
        while not (subscribed.is_set() and self.dropped) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not subscribed.is_set():
            raise RuntimeError("the watcher could not subscribe")
        self._client = client

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if message.topic == DROPPED_TOPIC:
            with self._lock:
                self.dropped.append(int(message.payload))
            return
        try:
            kind = str(json.loads(message.payload).get("type"))
        except ValueError:
            kind = "unreadable"
        with self._lock:
            self.events.append((now, kind))

    def times(self, kind: str) -> list[float]:
        with self._lock:
            return sorted(t for t, k in self.events if k == kind)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Sampler:
    """Samples a process's RSS every ``interval`` seconds on a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.samples: list[int] = []
        self._pid, self._interval = pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append(rss_kib(self._pid))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def run_throughput(line: Line, devices: int, time_scale: float, label: str) -> dict[str, Any]:
    """N devices at once against an emulator capped at Q calls/s with 100 ms latency."""
    emulator = line.emulator
    emulator.reset()
    agent = line.start_agent(
        f"gw-throughput-{label}",
        {"qps": THROUGHPUT_QPS, "burst": THROUGHPUT_BURST},
        {"max_queued": max(2000, devices)},
    )
    try:
        emulator.set_faults(latency_ms=THROUGHPUT_LATENCY_MS, qps_cap=THROUGHPUT_QPS)
        watcher = DownWatcher(line.broker.host, line.broker.port)
        sampler = Sampler(agent.pid)
        specs = fleet_specs(devices, model=MODEL, id_prefix=f"T{label[0].upper()}")
        cpu0, started = cpu_seconds(agent.pid), time.monotonic()
        report = asyncio.run(line.fleet(specs, time_scale=time_scale, deadline_s=1800.0))
        wall, agent_cpu = time.monotonic() - started, cpu_seconds(agent.pid) - cpu0
        time.sleep(1.5)  # the watcher's last messages; Mosquitto's $SYS counters (sys_interval 1)
        dropped = watcher.dropped[-1] - watcher.dropped[0] if watcher.dropped else -1
        sampler.close()
        watcher.close()
        memory = memory_kib(agent.pid)
        audit = emulator.audit()
        emulator.set_faults()
    finally:
        line.stop_agent(agent)
    settle_all_licensed(report, f"throughput run {label}")
    keys, dones = watcher.times("key"), watcher.times("done")
    events = sorted(keys + dones)
    others = {k for _, k in watcher.events} - {"key", "done"}
    start, end = percentile(dones, STEADY_FROM), percentile(dones, STEADY_TO)
    width = end - start
    in_window = sum(1 for t in events if start <= t <= end)
    done_in_window = sum(1 for t in dones if start <= t <= end)
    first, last = events[0], events[-1]
    gaps = [b - a for a, b in itertools.pairwise(events) if b - a > IDLE_GAP_S]
    serving = last - first - sum(gaps)
    totals = report.totals()
    return {
        "label": label,
        "devices": devices,
        "broker": " ".join(line.broker.extra_config),
        "qps_cap": THROUGHPUT_QPS,
        "latency_ms": THROUGHPUT_LATENCY_MS,
        "agent_qps": THROUGHPUT_QPS,
        "agent_burst": THROUGHPUT_BURST,
        "time_scale": time_scale,
        "steady_window_s": round(width, 3),
        "steady_calls_per_s": round(in_window / width, 3),
        "steady_ratio": round(in_window / width / THROUGHPUT_QPS, 4),
        "steady_devices_per_s": round(done_in_window / width, 3),
        "whole_calls_per_s": round(len(events) / (last - first), 3),
        "whole_span_s": round(last - first, 3),
        "idle_gaps_s": [round(gap, 3) for gap in gaps],
        "serving_calls_per_s": round(len(events) / serving, 3),
        "serving_ratio": round(len(events) / serving / THROUGHPUT_QPS, 4),
        "fleet_wall_s": round(wall, 3),
        "first_key_after_s": round(first - started, 3),
        "keys_seen": len(keys),
        "dones_seen": len(dones),
        "other_answers": {kind: len(watcher.times(kind)) for kind in sorted(others)},
        "broker_dropped": dropped,
        "extra_device_messages": totals.get("messages_sent", 0) - 2 * devices,
        "api_calls": audit["api_calls"],
        "api_calls_per_device": round(sum(audit["api_calls"].values()) / devices, 4),
        "emulator_errors": audit["errors"],
        "fleet_totals": totals,
        "agent_cpu_s": round(agent_cpu, 3),
        "agent_cpu_ms_per_device": round(agent_cpu / devices * 1e3, 4),
        "agent_busy": round(agent_cpu / wall, 4),
        "rss_max_kib": max(sampler.samples, default=0),
        "vm_hwm_kib": memory.get("VmHWM", 0),
    }


# -- phase 3: RSS with devices in flight --------------------------------------------------------


class BackgroundFleet:
    """Simulated devices on an event loop of their own thread, cancelled on demand."""

    def __init__(self, line: Line, specs: Sequence[Any]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet", daemon=True)
        self._thread.start()
        self._task: asyncio.Task[Any] | None = None
        self._future = asyncio.run_coroutine_threadsafe(self._run(line, specs), self._loop)

    async def _run(self, line: Line, specs: Sequence[Any]) -> FleetReport | None:
        self._task = asyncio.current_task()
        try:
            return await line.fleet(specs, time_scale=HOLD_TIME_SCALE, deadline_s=1800.0)
        except asyncio.CancelledError:
            return None

    def cancel(self) -> None:
        """Stop every device (politely) and the loop."""
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._future.result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def journal_rows(path: Path) -> int:
    """Device records in an agent's journal (read-only; WAL lets us read beside the writer)."""
    if not path.exists():
        return 0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        (count,) = connection.execute("SELECT count(*) FROM devices").fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()
    return int(count)


def run_inflight(line: Line, devices: int) -> dict[str, Any]:
    """RSS of an agent holding ``devices`` devices at once."""
    emulator = line.emulator
    emulator.reset()
    name = "gw-inflight"
    agent = line.start_agent(
        name,
        {"qps": FAST_QPS, "burst": FAST_BURST, "read_timeout_s": INFLIGHT_READ_TIMEOUT_S},
        {"max_in_flight": devices, "max_queued": devices},
    )
    try:
        time.sleep(IDLE_SETTLE_S)
        idle = rss_kib(agent.pid)
        emulator.set_faults(latency_ms=INFLIGHT_LATENCY_MS)
        fleet = BackgroundFleet(line, fleet_specs(devices, model=MODEL, id_prefix="HOLD"))
        started = time.monotonic()
        try:
            reached = 0
            while time.monotonic() - started < 120:
                reached = journal_rows(line.journal(name))
                if reached >= devices:
                    break
                time.sleep(0.2)
            filled_after = time.monotonic() - started
            time.sleep(2.0)  # every handler past its journal write and into its cloud call
            samples = []
            for _ in range(RSS_SAMPLES):
                samples.append(rss_kib(agent.pid))
                time.sleep(0.5)
            memory = memory_kib(agent.pid)
            threads = len(list(Path(f"/proc/{agent.pid}/task").iterdir()))
            calls = emulator.audit()["api_calls"]
        finally:
            fleet.cancel()
    finally:
        line.stop_agent(agent, timeout=5)
        emulator.reset()
    return {
        "devices": devices,
        "in_journal": reached,
        "filled_after_s": round(filled_after, 3),
        "rss_idle_kib": idle,
        "rss_kib_samples": samples,
        "rss_kib": int(median(samples)),
        "vm_hwm_kib": memory.get("VmHWM", 0),
        "memory_kib": memory,
        "threads": threads,
        "calls_reaching_emulator": calls,
    }


# -- the report ------------------------------------------------------------------------------------


def idle_figures(agent: AgentProcess) -> dict[str, Any]:
    """RSS (and its parts) and CPU rate of an agent doing nothing."""
    time.sleep(IDLE_SETTLE_S)
    memory = memory_kib(agent.pid)
    cpu0, wall0 = cpu_seconds(agent.pid), time.perf_counter()
    time.sleep(IDLE_CPU_S)
    cpu_rate = (cpu_seconds(agent.pid) - cpu0) / (time.perf_counter() - wall0)
    return {"rss_kib": memory["VmRSS"], "memory_kib": memory, "cpu_ms_per_s": cpu_rate * 1e3}


def ranged(values: Sequence[float], digits: int = 2) -> str:
    """``median (min-max)``."""
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _mb(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _p50_ms(steps: dict[str, list[int]], step: str, fraction: float = 0.5) -> float:
    return percentile(steps[step], fraction) / 1e6


def report(results: dict[str, Any]) -> str:
    """The Markdown for docs/performance.md."""
    out: list[str] = []
    info = results["machine"]
    out += [
        "### Machine and command",
        "",
        markdown_table(
            ["", ""],
            [
                [
                    "CPU",
                    f"{info['nproc']} x {info['cpu_model']} (kernel {info['kernel']}), shared: load average "
                    f"{results['loadavg_start']} at the start, {info['loadavg']} at the end",
                ],
                ["Python", info["python"]],
                ["packages", ", ".join(f"{k} {v}" for k, v in info["packages"].items())],
                ["broker", f"{results['mosquitto']}, `{'`, `'.join(BROKER_CONFIG)}`"],
                ["journal", results["journal_fs"]],
                ["code", f"commit `{info['commit']}`{' (dirty tree)' if info['worktree_dirty'] else ''}"],
                ["command", f"`{results['command']}` ({results['elapsed_s']:.0f} s)"],
            ],
        ),
        "",
    ]
    cpu: list[dict[str, float]] = results["cpu_rounds"]
    per_device = [r["agent_ms_per_device"] for r in cpu]
    idle = results["idle"]
    out += [
        f"#### Agent CPU per device ({len(cpu)} rounds of {cpu[0]['devices']} devices at once)",
        "",
        markdown_table(
            ["figure", "median (min-max over rounds)"],
            [
                ["agent CPU ms/device (user + system)", ranged(per_device, 3)],
                ["... user", ranged([r["agent_user_s"] / r["devices"] * 1e3 for r in cpu], 3)],
                ["... system", ranged([r["agent_sys_s"] / r["devices"] * 1e3 for r in cpu], 3)],
                ["devices/s", ranged([r["devices"] / r["wall_s"] for r in cpu], 1)],
                ["emulator CPU ms/device", ranged([r["emulator_cpu_s"] / r["devices"] * 1e3 for r in cpu], 3)],
                ["broker CPU ms/device", ranged([r["broker_cpu_s"] / r["devices"] * 1e3 for r in cpu], 3)],
                ["agent idle CPU ms/s (sweeper, status, keepalive)", f"{idle['cpu_ms_per_s']:.2f}"],
            ],
        ),
        "",
    ]
    rounds: list[dict[str, dict[str, Any]]] = results["latency_rounds"]

    def p(variant: str, step: str, fraction: float) -> float:
        return median(_p50_ms(r[variant]["steps"], step, fraction) for r in rounds)

    rows = [
        [variant]
        + [f"{p(variant, 'total', q):.3f}" for q in (0.5, 0.9)]
        + [f"{p(variant, step, 0.5):.3f}" for step in STEPS[1:]]
        for variant in VARIANTS
    ]

    def paired(variant: str, step: str) -> list[float]:
        return [_p50_ms(r[variant]["steps"], step) - _p50_ms(r["bare"]["steps"], step) for r in rounds]

    added = paired("agent", "total")
    seq_cpu = [r["agent"]["agent_cpu_s"] / len(r["agent"]["steps"]["total"]) * 1e3 for r in rounds]
    out += [
        f"#### Device-visible latency, register to done ({len(rounds)} rounds of "
        f"{len(rounds[0]['agent']['steps']['total'])} devices one at a time per variant; ms, medians over rounds)",
        "",
        markdown_table(["variant", "p50", "p90", "register->key p50", "activation p50", "result->done p50"], rows),
        "",
        f"- added by the agent over bare, p50 paired per round: **{ranged(added, 3)} ms**; "
        f"register->key {ranged(paired('agent', 'register_key'), 3)}, "
        f"result->done {ranged(paired('agent', 'result_done'), 3)}",
        f"- of which the journal's fsyncs (agent - agent_tmpfs): "
        f"{ranged([a - b for a, b in zip(added, paired('agent_tmpfs', 'total'), strict=True)], 3)} ms",
        f"- our CloudauthClient instead of raw HTTP (direct - bare): {ranged(paired('direct', 'total'), 3)} ms",
        f"- agent CPU per device when devices come one at a time: {ranged(seq_cpu, 3)} ms",
        "",
    ]
    runs: dict[str, dict[str, Any]] = results["throughput"]
    first = next(iter(runs.values()))

    def column(run: dict[str, Any]) -> list[str]:
        totals = run["fleet_totals"]
        return [
            ("unlimited" if "max_queued_messages 0" in run["broker"] else "1000 (default)")
            + (", protocol's" if run["time_scale"] == 1 else f", protocol's x{run['time_scale']:g}"),
            f"**{run['steady_ratio']:.3f} Q** ({run['steady_calls_per_s']:.2f}/s over {run['steady_window_s']:.1f} s)",
            f"{run['steady_devices_per_s']:.2f}",
            f"{run['serving_ratio']:.3f} Q",
            f"{run['whole_calls_per_s'] / run['qps_cap']:.3f} Q over {run['whole_span_s']:.1f} s"
            + (f" (idle gaps {', '.join(f'{gap:.1f}' for gap in run['idle_gaps_s'])} s)" if run["idle_gaps_s"] else ""),
            str(run["broker_dropped"]) if run["broker_dropped"] >= 0 else "n/a (counter not published)",
            f"{run['extra_device_messages']} ({totals.get('waits_received', 0)} `wait` answers)",
            f"{run['api_calls_per_device']:.3f}, errors: {run['emulator_errors'] or 'none'}",
            f"{run['agent_cpu_ms_per_device']:.3f} ms/device, {run['agent_busy'] * 100:.1f} % of a core",
            f"{_mb(run['vm_hwm_kib'])} MB",
        ]

    names = [
        "Mosquitto `max_queued_messages`, device timeouts",
        "cloud calls/s, steady part (10th-90th percentile `done`)",
        "devices/s, steady part",
        "cloud calls/s while the agent had work (idle gaps > 1 s removed)",
        "cloud calls/s, first key to last done",
        "registrations dropped by Mosquitto ($SYS)",
        "device resends",
        "cloud calls per device (emulator audit)",
        "agent CPU",
        "agent peak RSS",
    ]
    table = [[name, *(column(run)[index] for run in runs.values())] for index, name in enumerate(names)]
    out += [
        f"#### Throughput: {first['devices']} devices queued, emulator cap Q = {first['qps_cap']:.0f} calls/s with "
        f"{first['latency_ms']:.0f} ms latency, agent `cloud.qps` = Q",
        "",
        markdown_table(["", *runs], table),
        "",
    ]
    inflight = results["inflight"]
    idle_memory, held_memory = idle["memory_kib"], inflight["memory_kib"]
    out += [
        "#### Memory",
        "",
        markdown_table(
            ["state", "RSS MB", "private (RssAnon) MB", "shared libraries (RssFile) MB", "PSS MB"],
            [
                ["idle, after start"] + [_mb(idle_memory[k]) for k in ("VmRSS", "RssAnon", "RssFile", "Pss")],
                ["idle, after the rounds", _mb(results["idle_after_kib"]), "", "", ""],
                [
                    f"{inflight['in_journal']} devices in flight (median of {RSS_SAMPLES} samples)",
                    _mb(inflight["rss_kib"]),
                ]
                + [_mb(held_memory[k]) for k in ("RssAnon", "RssFile", "Pss")],
            ],
        ),
        "",
    ]
    cpu_ms = median(per_device)
    added_ms = median(added)
    idle_mb, held_mb = idle["rss_kib"] / 1024, inflight["rss_kib"] / 1024
    out += [
        "#### Goals",
        "",
        markdown_table(
            ["goal", "measured", "met?"],
            [
                [f"agent CPU per device <= {CPU_GOAL_MS:g} ms", f"{cpu_ms:.3f} ms", yes(cpu_ms <= CPU_GOAL_MS)],
                [
                    f"added latency per device <= {ADDED_LATENCY_GOAL_MS:g} ms (p50)",
                    f"{added_ms:.3f} ms",
                    yes(added_ms <= ADDED_LATENCY_GOAL_MS),
                ],
                *(
                    [
                        f"throughput >= {THROUGHPUT_GOAL} Q, {label}",
                        f"{run['steady_ratio']:.3f} Q steady, {run['whole_calls_per_s'] / run['qps_cap']:.3f} Q "
                        f"first key to last done",
                        yes(run["steady_ratio"] >= THROUGHPUT_GOAL)
                        + (
                            ""
                            if run["whole_calls_per_s"] / run["qps_cap"] >= THROUGHPUT_GOAL
                            else " (steady part only)"
                        ),
                    ]
                    for label, run in runs.items()
                ),
                [f"RSS idle <= {RSS_IDLE_GOAL_MB:g} MB", f"{idle_mb:.1f} MB", yes(idle_mb <= RSS_IDLE_GOAL_MB)],
                [
                    f"RSS with {inflight['in_journal']} in flight <= {RSS_INFLIGHT_GOAL_MB:g} MB",
                    f"{held_mb:.1f} MB",
                    yes(held_mb <= RSS_INFLIGHT_GOAL_MB),
                ],
            ],
        ),
    ]
    return "\n".join(out) + "\n"


def mosquitto_version(binary: str) -> str:
    done = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else "mosquitto"


def filesystem(path: Path) -> str:
    done = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=10, check=False)
    lines = done.stdout.splitlines()
    if len(lines) < 2:
        return str(path)
    parts = lines[1].split()
    return f"SQLite WAL, synchronous=FULL, on {parts[1]} ({parts[0]}) under {path}"


@contextmanager
def phase(name: str) -> Iterator[None]:
    started = time.monotonic()
    log(f"-- {name}")
    yield
    log(f"   {name}: {time.monotonic() - started:.1f} s")


def serialise_rounds(rounds: list[dict[str, LatencyRun]]) -> list[dict[str, Any]]:
    return [
        {variant: {"steps": run.steps, "agent_cpu_s": run.agent_cpu_s, "wall_s": run.wall_s}
         for variant, run in runs.items()}
        for runs in rounds
    ]  # fmt: skip


THROUGHPUT_RUNS: Final = (  # label, unlimited broker queue, device time scale
    ("as_set_up", False, THROUGHPUT_TIME_SCALE),
    ("unlimited_queue", True, THROUGHPUT_TIME_SCALE),
    ("protocol_timing", False, 1.0),
)


def run_rounds_phase(line: Line, sizes: Sizes, results: dict[str, Any]) -> None:
    """Idle figures, then the rounds, with the main agent and the tmpfs-journal agent side by side."""
    if not TMPFS_DIR.is_dir():
        raise SystemExit(f"{TMPFS_DIR} is missing: the benchmark keeps one agent's journal on tmpfs")
    with contextlib.ExitStack() as stack:  # whatever started is stopped, even when a later start fails
        shm = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-daemon-", dir=TMPFS_DIR))
        echo = EchoProcess(line.broker.port)
        stack.callback(echo.stop)
        agent = line.start_agent("gw-rounds", {"qps": FAST_QPS, "burst": FAST_BURST})
        stack.callback(line.stop_agent, agent)
        tmpfs_agent = line.start_agent(
            "gw-tmpfs", {"qps": FAST_QPS, "burst": FAST_BURST}, topic_root=TMPFS_ROOT, journal_dir=Path(shm)
        )
        stack.callback(line.stop_agent, tmpfs_agent)
        results["idle"] = idle_figures(agent)
        log(f"idle: RSS {results['idle']['rss_kib'] / 1024:.1f} MB, CPU {results['idle']['cpu_ms_per_s']:.2f} ms/s")
        cpu_rounds, latency_rounds = run_rounds(line, sizes, agent, tmpfs_agent)
        time.sleep(IDLE_SETTLE_S)
        results["idle_after_kib"] = rss_kib(agent.pid)
    results["cpu_rounds"] = [asdict(r) | {"agent_ms_per_device": r.agent_ms_per_device} for r in cpu_rounds]
    results["latency_rounds"] = serialise_rounds(latency_rounds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The provisioning daemon end to end against the bare round trip.")
    parser.add_argument("--quick", action="store_true", help="a small sanity run (about a minute and a half)")
    parser.add_argument("--json-out", type=Path, help="also write every figure, every round, as JSON")
    parser.add_argument("--from-json", type=Path, help="print the report of an earlier run's --json-out; run nothing")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        print(report(json.loads(args.from_json.read_text())))
        return 0
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    command = ".venv/bin/python bench/daemon.py" + (" --quick" if args.quick else "")
    results: dict[str, Any] = {"sizes": asdict(sizes), "command": command, "loadavg_start": machine(())["loadavg"]}
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as temp:
        workdir = Path(temp)
        for name in ("broker", "broker-unlimited"):
            (workdir / name).mkdir()
        with (
            MosquittoBroker(workdir / "broker", extra_config=BROKER_CONFIG) as broker,
            MosquittoBroker(workdir / "broker-unlimited", extra_config=BROKER_CONFIG + UNLIMITED_QUEUE) as unlimited,
            EmulatorProcess(access_key_id="bench-id", access_key_secret="bench-secret") as emulator,  # noqa: S106
        ):
            line = Line(workdir, broker, emulator)
            with phase("rounds: CPU per device and latency"):
                run_rounds_phase(line, sizes, results)
            results["throughput"] = {}
            for label, unlimited_queue, time_scale in THROUGHPUT_RUNS:
                with phase(f"throughput {label}: {sizes.throughput} devices, Q = {THROUGHPUT_QPS:g} calls/s"):
                    where = Line(workdir, unlimited, emulator) if unlimited_queue else line
                    tput = run_throughput(where, sizes.throughput, time_scale, label)
                    results["throughput"][label] = tput
                    log(
                        f"steady {tput['steady_calls_per_s']:.2f} calls/s = {tput['steady_ratio']:.3f} Q; "
                        f"{tput['broker_dropped']} dropped by the broker; gaps {tput['idle_gaps_s']}"
                    )
            with phase(f"RSS with {sizes.inflight} devices in flight"):
                results["inflight"] = run_inflight(line, sizes.inflight)
                log(f"RSS {results['inflight']['rss_kib'] / 1024:.1f} MB with {results['inflight']['in_journal']}")
            results["mosquitto"] = mosquitto_version(_mosquitto_binary())
            results["journal_fs"] = filesystem(workdir)
    results["elapsed_s"] = time.monotonic() - started
    results["machine"] = machine(PACKAGES)
    print(report(results))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=1, default=str))
    return 0


def _mosquitto_binary() -> str:
    try:
        from provisioning_lab.broker import find_mosquitto
    except ImportError:
        return "mosquitto"
    return find_mosquitto()


if __name__ == "__main__":
    sys.exit(main())
