"""Benchmark: 1k, 5k and 10k devices waiting on a cloud capped at 2 calls a second.

Run ``.venv/bin/python bench/waiting.py [--quick] [--baseline DIR] [--json-out FILE]``.

How it works
------------
One Mosquitto, one Cloudauth emulator that adds 100 ms to every call and throttles above
``CAP_QPS`` calls a second, and the agent (``provisioning-agent run``, ``cloud.qps`` = the cap,
as an operator sets it; limits at their defaults: 32 in flight, 2,000 queued in process). N
devices (``_waiting_fleet.Fleet``: all on one MQTT connection in this process, so the figures
are the agent's) register at once with the ``face-terminal-x1`` profile (two cloud calls per
device: CreateAuthKey, then DescribeDeviceInfo to verify). After a warm-up that absorbs the
burst, a window measures the steady state:

- *throughput*: cloud calls the agent completed in the window (a ``key`` answer per
  CreateAuthKey, a ``done`` per DescribeDeviceInfo), per second, over the cap;
- *agent CPU*: user + system of every thread over the window, in % of one core;
- *RSS*: the largest sample in the window, and the peak (VmHWM) since the start, burst included;
- what the waiting devices were told: registers per second reaching the agent, and the spread
  of the ``queued`` come-back times.

``--baseline DIR`` runs, side by side in the same run, the agent from another checkout (e.g.
``git worktree add --detach /tmp/before main``) for each N, in alternating order.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from _daemon_device import cpu_seconds, memory_kib, rss_kib
from _harness import log, machine, markdown_table, median
from _waiting_fleet import Fleet
from daemon import BROKER_CONFIG, MODEL, TOPIC_ROOT, UNLIMITED_QUEUE, Line

from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess

try:
    from provisioning_lab.broker import MosquittoBroker
except ImportError:  # the helper's older home
    from tests.broker import MosquittoBroker  # type: ignore[no-redef,unused-ignore]

CAP_QPS: Final = 2.0  # the cloud's cap, and the agent's cloud.qps
CAP_BURST: Final = 2  # the emulator's bucket holds max(1, cap) calls: a larger agent burst is throttled
LATENCY_MS: Final = 100.0
CALLS_PER_DEVICE: Final = 2
SIZES: Final = (1000, 5000, 10_000)
QUICK_SIZES: Final = (1000,)
WARMUP_S: Final = 20.0  # the burst of N registers answered, the in-process queue filled
WARMUP_PER_1K_S: Final = 2.0
WINDOW_S: Final = 60.0
QUICK_WINDOW_S: Final = 20.0
RSS_EVERY_S: Final = 1.0
THROUGHPUT_GOAL: Final = 0.97
CPU_GOAL_PCT: Final = 5.0
RSS_GOAL_MB: Final = 80.0
PACKAGES: Final = ("paho-mqtt", "aiohttp", "httpx")


@dataclass
class Run:
    """One agent with N devices waiting."""

    variant: str
    devices: int
    window_s: float
    calls: int
    agent_cpu_s: float
    burst_cpu_s: float
    rss_max_kib: int
    hwm_kib: int
    registers: int
    come_back: list[int]
    errors: int

    @property
    def ratio(self) -> float:
        return self.calls / self.window_s / CAP_QPS

    @property
    def cpu_pct(self) -> float:
        return self.agent_cpu_s / self.window_s * 100

    def summary(self) -> dict[str, Any]:
        spread = sorted(self.come_back)
        return {
            "variant": self.variant,
            "devices": self.devices,
            "window_s": round(self.window_s, 2),
            "calls": self.calls,
            "throughput_over_cap": round(self.ratio, 3),
            "agent_cpu_pct": round(self.cpu_pct, 2),
            "burst_cpu_s": round(self.burst_cpu_s, 2),
            "rss_max_mb": round(self.rss_max_kib / 1024, 1),
            "rss_peak_mb": round(self.hwm_kib / 1024, 1),
            "registers_per_s": round(self.registers / self.window_s, 2),
            "queued_waits": len(spread),
            "come_back_s_min_median_max": [spread[0], median(spread), spread[-1]] if spread else [],
            "errors": self.errors,
        }


def start_agent(line: Line, name: str, baseline: Path | None) -> AgentProcess:
    """An agent at the cap's rate with the default limits; from ``baseline``'s code when given."""
    values: dict[str, Any] = {
        "gateway_id": name,
        "journal": str(line.journal(name)),
        "profiles": line.unsealed_profiles(),
        "log_level": "info",
        "cloud": {"endpoint": line.emulator.url, "qps": CAP_QPS, "burst": CAP_BURST},
        "mqtt": {"host": line.broker.host, "port": line.broker.port, "topic_root": TOPIC_ROOT},
        "http": {"listen": "", "socket": ""},
    }
    config = write_config(line.workdir / f"{name}.toml", values)
    launcher: tuple[str, ...] = ("-m", "agent")
    if baseline is not None:  # that checkout's packages first on sys.path, then the agent's __main__
        code = f"import sys, runpy; sys.path[:0] = [{str(baseline)!r}]; runpy.run_module('agent', run_name='__main__')"
        launcher = ("-c", code)
    return AgentProcess(config, env=line.env, launcher=launcher).start()


def run_one(line: Line, variant: str, devices: int, window_s: float, baseline: Path | None, tag: str) -> Run:
    """N devices at once; the steady state measured over ``window_s`` after the warm-up."""
    agent = start_agent(line, f"gw-wait-{tag}", baseline)
    fleet = None
    try:
        fleet = Fleet(
            line.broker.host,
            line.broker.port,
            line.emulator.url,
            root=TOPIC_ROOT,
            model=MODEL,
            prefix=tag.upper(),
            count=devices,
        )
        cpu0 = cpu_seconds(agent.pid)
        fleet.start()
        time.sleep(WARMUP_S + WARMUP_PER_1K_S * devices / 1000)
        cpu1, started = cpu_seconds(agent.pid), time.monotonic()
        samples: list[int] = []
        while time.monotonic() - started < window_s:
            samples.append(rss_kib(agent.pid))
            time.sleep(RSS_EVERY_S)
        cpu2, ended = cpu_seconds(agent.pid), time.monotonic()
        hwm = memory_kib(agent.pid)["VmHWM"]
        events = fleet.log
        calls = sum(started <= t < ended for t in events.keys) + sum(started <= t < ended for t in events.dones)
        registers = sum(started <= t < ended for t in events.registers)
        come_back = [retry for _, reason, retry in events.waits if reason == "queued"]
        return Run(
            variant,
            devices,
            ended - started,
            calls,
            cpu2 - cpu1,
            cpu1 - cpu0,
            max(samples),
            hwm,
            registers,
            come_back,
            len(events.errors),
        )
    finally:
        if fleet is not None:
            fleet.close()
        line.stop_agent(agent)


def report(runs: list[Run], env: dict[str, Any], command: str) -> str:
    """The Markdown results."""
    rows = []
    for run in runs:
        summary = run.summary()
        spread = summary["come_back_s_min_median_max"]
        rows.append(
            [
                f"{run.devices:,}",
                run.variant,
                f"{run.ratio:.3f}",
                f"{run.cpu_pct:.1f} %",
                f"{summary['rss_max_mb']:.0f} / {summary['rss_peak_mb']:.0f} MB",
                f"{summary['registers_per_s']:.1f}",
                "/".join(f"{value:.0f}" for value in spread) if spread else "-",
                f"{run.burst_cpu_s:.1f} s",
            ]
        )
    header = [
        "waiting",
        "agent",
        "throughput / cap",
        "agent CPU",
        "RSS window / peak",
        "registers/s",
        "come back min/median/max s",
        "burst CPU",
    ]
    goals = (
        f"goals: throughput >= {THROUGHPUT_GOAL} of the cap, CPU <= {CPU_GOAL_PCT:.0f} %, RSS <= {RSS_GOAL_MB:.0f} MB"
    )
    machine_line = (
        f"{env['nproc']} cores ({env['cpu_model']}), Python {env['python']}, load {env['loadavg']} "
        f"at the start, commit {env['commit']}"
    )
    return "\n".join([f"`{command}`", "", machine_line, "", markdown_table(header, rows), "", goals])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Devices waiting on a cloud capped at 2 calls/s.")
    parser.add_argument("--quick", action="store_true", help="1k devices, a 20 s window")
    parser.add_argument("--sizes", type=int, nargs="+", help="device counts (default 1000 5000 10000)")
    parser.add_argument("--window", type=float, help="seconds measured per run")
    parser.add_argument("--baseline", type=Path, help="another checkout's agent, run side by side")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    window_s = args.window or (QUICK_WINDOW_S if args.quick else WINDOW_S)
    env = machine(PACKAGES)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-waiting-") as tmp:
        workdir = Path(tmp)
        (workdir / "broker").mkdir()
        with (
            MosquittoBroker(workdir / "broker", extra_config=BROKER_CONFIG + UNLIMITED_QUEUE) as broker,
            EmulatorProcess(access_key_id="bench-id", access_key_secret="bench-secret") as emulator,  # noqa: S106
        ):
            line = Line(workdir, broker, emulator)
            emulator.set_faults(latency_ms=LATENCY_MS, qps_cap=CAP_QPS)
            for index, devices in enumerate(sizes):
                variants: list[tuple[str, Path | None]] = [("this", None)]
                if args.baseline is not None:
                    variants.append(("baseline", args.baseline))
                    if index % 2:
                        variants.reverse()
                for variant, code in variants:
                    tag = f"w{variant[0]}{index}"
                    log(f"{devices} devices, agent {variant} ...")
                    run = run_one(line, variant, devices, window_s, code, tag)
                    log(f"  {json.dumps(run.summary())}")
                    runs.append(run)
    command = "bench/waiting.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report(runs, env, command.strip()))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"machine": env, "runs": [run.summary() for run in runs]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
