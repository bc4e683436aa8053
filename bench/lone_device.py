"""Benchmark: devices one at a time, the agent against a naive script and the bare round trip, in one run.

Run ``.venv/bin/python bench/lone_device.py [--devices 200] [--profile FILE] [--json-out FILE]``.

How it works
------------
On a real line devices arrive one at a time, so the agent pays its fixed costs per device
alone. One Mosquitto and one Cloudauth emulator (no latency, no cap) serve four variants, each
a separate process answering the same device on its own topic root:

- ``agent``: ``provisioning-agent run`` with its journal on this machine's disk (durable);
- ``agent_tmpfs``: a second agent whose journal is on /dev/shm (fsync free): what the disk costs;
- ``naive``: ``bench/naive_provisioner.py``, paho + the official SDK, one CreateAuthKey per
  device, no journal;
- ``bare``: an MQTT echo (``_daemon_echo.py``) for both messages plus a pre-signed
  CreateAuthKey on a raw keep-alive socket, sent by the timed device itself: the round trip
  with no provisioner at all.

The profile is ``gate-controller-g2`` (``verify = false``: one cloud call per device, as the
naive script makes; test licences; sealing off as in bench/daemon.py). Each device is a
hand-driven paho client (``_daemon_device.TimedClient``) timed from publishing ``register`` to
receiving ``done``, its SDK step (``POST /_emulator/activate``) the same in every variant. The
devices go in rounds of ``devices / ROUNDS``, the variants' order rotating and flipping every
round; a variant's CPU is its process's user + system time over its devices in that round.

``--profile FILE`` runs the disk agent under cProfile (CPU time of the event loop's thread) and
writes its stats to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter_ns
from typing import Any, Final

from _daemon_device import RawHttp, TimedClient, cpu_seconds, message_id
from _harness import ROOT, log, machine, markdown_table, median, percentile
from _presign import signed_form
from daemon import BROKER_CONFIG, ECHO_ROOT, TMPFS_DIR, EchoProcess, Line, filesystem

from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess

try:
    from provisioning_lab.broker import MosquittoBroker
except ImportError:  # the helper's older home
    from tests.broker import MosquittoBroker  # type: ignore[no-redef,unused-ignore]

MODEL: Final = "gate-controller-g2"  # verify = false, test licences
BIZ_TYPE: Final = "GATE_G2_PILOT"
ROOTS: Final = {
    "agent": "lone/v1",
    "agent_tmpfs": "lone-tmpfs/v1",
    "naive": "lone-naive/v1",
    "baseline": "lone-base/v1",
}
ROUNDS: Final = 8
DEVICES: Final = 200
FAST_QPS: Final = 1000.0  # the agent's cloud.qps: far above one device at a time
FAST_BURST: Final = 50
CPU_RATIO_GOAL: Final = 1.2
ADDED_LATENCY_GOAL_MS: Final = 1.5
TICKS: Final = os.sysconf("SC_CLK_TCK")
PROFILED: Final = (
    "import cProfile, runpy, time\n"
    "profiler = cProfile.Profile(time.thread_time)\n"
    "profiler.enable()\n"
    "try:\n"
    "    runpy.run_module('agent', run_name='__main__')\n"
    "finally:\n"
    "    profiler.disable()\n"
    "    profiler.dump_stats({out!r})\n"
)
PACKAGES: Final = ("paho-mqtt", "alibabacloud-cloudauth20190307", "alibabacloud-tea-openapi")


class NaiveProcess:
    """``naive_provisioner.py`` as a child process."""

    def __init__(self, line: Line) -> None:
        script = Path(__file__).with_name("naive_provisioner.py")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(script),
                "--port",
                str(line.broker.port),
                "--endpoint",
                line.emulator.endpoint,
                "--root",
                ROOTS["naive"],
                "--biz-type",
                BIZ_TYPE,
                "--test",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=line.env,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the naive provisioner did not start")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_agent(
    line: Line, name: str, root: str, journal_dir: Path, profile: Path | None, code: Path | None = None
) -> AgentProcess:
    """An agent on ``root`` that never waits for its rate limiter; under cProfile when ``profile``; from
    the checkout ``code`` when given."""
    values: dict[str, Any] = {
        "gateway_id": name,
        "journal": str(line.journal(name, journal_dir)),
        "profiles": line.unsealed_profiles(),
        "log_level": "info",
        "cloud": {"endpoint": line.emulator.url, "qps": FAST_QPS, "burst": FAST_BURST},
        "mqtt": {"host": line.broker.host, "port": line.broker.port, "topic_root": root},
        "http": {"listen": "", "socket": ""},
    }
    config = write_config(line.workdir / f"{name}.toml", values)
    launcher: tuple[str, ...] = ("-m", "agent")
    if profile is not None:  # the event loop's thread, in CPU time (wall time would count the waits)
        launcher = ("-c", PROFILED.format(out=str(profile)))
    if code is not None:  # that checkout's packages first on sys.path, then the agent's __main__
        launcher = (
            "-c",
            f"import sys, runpy; sys.path[:0] = [{str(code)!r}]; runpy.run_module('agent', run_name='__main__')",
        )
    return AgentProcess(config, env=line.env, launcher=launcher).start()


class Devices:
    """One timed device per call, through a variant; (register->key, register->done) in ns."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.activation = RawHttp(line.emulator.url)  # the device's SDK step, the same in every variant
        self.cloud = RawHttp(line.emulator.url)  # the bare round trip's CreateAuthKey

    def close(self) -> None:
        self.activation.close()
        self.cloud.close()

    def through(self, variant: str, device_id: str) -> tuple[int, int]:
        hardware_id = f"hw-{device_id}"
        bare = variant == "bare"
        root = f"{ECHO_ROOT}/{device_id}" if bare else f"{ROOTS[variant]}/dev/{device_id}"
        create = (
            signed_form(
                self.line.emulator, "CreateAuthKey", {"UserDeviceId": device_id, "BizType": BIZ_TYPE, "Test": "true"}
            )
            if bare
            else b""
        )
        client = TimedClient(self.line.broker.host, self.line.broker.port, device_id, f"{root}/down")
        try:
            t0 = perf_counter_ns()
            answer = json.loads(client.exchange(f"{root}/up", _register(device_id, hardware_id)))
            if bare:
                answer = {
                    "auth_key": self.cloud.post("/", create, "application/x-www-form-urlencoded")["AuthKey"],
                    "attempt": "0" * 16,
                }
            elif answer.get("type") != "key":
                raise RuntimeError(f"{variant}: expected a key, got {answer!r}")
            t1 = perf_counter_ns()
            licence = self.activation.post(
                "/_emulator/activate",
                json.dumps({"AuthKey": answer["auth_key"], "HardwareId": hardware_id}).encode(),
                "application/json",
            )
            done = json.loads(
                client.exchange(f"{root}/up", _result(device_id, hardware_id, answer["attempt"], licence))
            )
            t2 = perf_counter_ns()
        finally:
            client.close()
        if done.get("type") not in ("done", "result"):  # the echo sends the result back
            raise RuntimeError(f"{variant}: expected done, got {done!r}")
        return t1 - t0, t2 - t0


def _register(device_id: str, hardware_id: str) -> bytes:
    message = {
        "v": 1,
        "type": "register",
        "id": message_id(),
        "device_id": device_id,
        "hardware_id": hardware_id,
        "model": MODEL,
        "fw": "bench-1",
    }
    return json.dumps(message).encode()


def _result(device_id: str, hardware_id: str, attempt: str, licence: dict[str, Any]) -> bytes:
    message = {
        "v": 1,
        "type": "result",
        "id": message_id(),
        "device_id": device_id,
        "hardware_id": hardware_id,
        "model": MODEL,
        "attempt": attempt,
        "ok": True,
        "sdk_device_id": licence["DeviceId"],
        "begin_day": licence["BeginDay"],
        "expired_day": licence["ExpiredDay"],
    }
    return json.dumps(message).encode()


def run(line: Line, devices: int, profile: Path | None, baseline: Path | None) -> dict[str, Any]:
    """Every variant, round by round; per variant the latencies and the CPU of its process."""
    tmpfs = Path(tempfile.mkdtemp(prefix="bench-lone-", dir=TMPFS_DIR))
    agent = start_agent(line, "gw-lone", ROOTS["agent"], line.workdir, profile)
    agent_tmpfs = start_agent(line, "gw-lone-tmpfs", ROOTS["agent_tmpfs"], tmpfs, None)
    agents = [agent, agent_tmpfs]
    if baseline is not None:
        agents.append(start_agent(line, "gw-lone-base", ROOTS["baseline"], line.workdir, None, baseline))
    naive = NaiveProcess(line)
    echo = EchoProcess(line.broker.port)
    pids: dict[str, int | None] = {"agent": agent.pid, "agent_tmpfs": agent_tmpfs.pid, "naive": naive.pid, "bare": None}
    if baseline is not None:
        pids["baseline"] = agents[2].pid
    variants = tuple(pids)
    figures: dict[str, dict[str, list[float]]] = {v: {"key": [], "done": [], "cpu_ms": []} for v in variants}
    threads: dict[str, dict[str, float]] = {}
    bench = Devices(line)
    try:
        for variant in variants:  # one untimed device each: connections open, code paths warm
            bench.through(variant, f"WARM-{variant[:1].upper()}{len(variant)}")
        per_round = max(1, devices // ROUNDS)
        for round_no in range(ROUNDS):
            shift = round_no % len(variants)
            order = list(variants[shift:] + variants[:shift])
            if round_no % 2:
                order.reverse()
            for variant in order:
                pid = pids[variant]
                cpu0 = cpu_seconds(pid) if pid else 0.0
                by_thread0 = thread_cpu(pid) if pid else {}
                for index in range(per_round):
                    key_ns, done_ns = bench.through(
                        variant, f"L{variant[:1].upper()}{len(variant)}-{round_no}-{index:03d}"
                    )
                    figures[variant]["key"].append(key_ns / 1e6)
                    figures[variant]["done"].append(done_ns / 1e6)
                if pid:
                    figures[variant]["cpu_ms"].append((cpu_seconds(pid) - cpu0) / per_round * 1e3)
                    for name, seconds in thread_cpu(pid).items():
                        spent = threads.setdefault(variant, {})
                        spent[name] = spent.get(name, 0.0) + seconds - by_thread0.get(name, 0.0)
            log(
                f"round {round_no + 1}/{ROUNDS}: p50 done "
                + ", ".join(f"{v} {median(figures[v]['done'][-per_round:]):.2f} ms" for v in variants)
            )
    finally:
        bench.close()
        echo.stop()
        naive.stop()
        for each in reversed(agents):
            line.stop_agent(each)
    total = per_round * ROUNDS
    thread_ms = {
        v: {name: round(s / total * 1e3, 3) for name, s in spent.items() if s > 0} for v, spent in threads.items()
    }
    return {
        "per_round": per_round,
        "figures": figures,
        "threads_ms_per_device": thread_ms,
        "journal_fs": filesystem(line.workdir),
    }


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the main thread (the event loop) and of all the others together."""
    spent = {"loop": 0.0, "other threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        spent["loop" if task.name == str(pid) else "other threads"] += (int(fields[11]) + int(fields[12])) / TICKS
    return spent


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per variant: p50/p90 latency, CPU per device; the ratios and differences the goals name."""
    figures = result["figures"]
    out: dict[str, Any] = {}
    for variant, data in figures.items():
        out[variant] = {
            "key_p50_ms": round(percentile(data["key"], 0.5), 3),
            "done_p50_ms": round(percentile(data["done"], 0.5), 3),
            "done_p90_ms": round(percentile(data["done"], 0.9), 3),
            # every round has as many devices: the mean of the rounds is the CPU over all devices / devices
            "cpu_ms_per_device": round(sum(data["cpu_ms"]) / len(data["cpu_ms"]), 3) if data["cpu_ms"] else None,
        }
    # /proc counts CPU in 10 ms ticks: a round's figure is coarse, the sum over all rounds is not
    out["cpu_agent_over_naive"] = round(sum(figures["agent"]["cpu_ms"]) / sum(figures["naive"]["cpu_ms"]), 3)
    out["cpu_tmpfs_over_naive"] = round(sum(figures["agent_tmpfs"]["cpu_ms"]) / sum(figures["naive"]["cpu_ms"]), 3)
    done = {v: out[v]["done_p50_ms"] for v in figures}
    out["latency_agent_over_naive"] = round(done["agent"] / done["naive"], 3)
    out["added_over_naive_ms"] = round(done["agent"] - done["naive"], 3)
    out["added_over_bare_ms"] = round(done["agent"] - done["bare"], 3)
    out["added_over_bare_tmpfs_ms"] = round(done["agent_tmpfs"] - done["bare"], 3)
    out["naive_over_bare_ms"] = round(done["naive"] - done["bare"], 3)
    if "baseline" in figures:
        out["cpu_baseline_over_naive"] = round(sum(figures["baseline"]["cpu_ms"]) / sum(figures["naive"]["cpu_ms"]), 3)
        out["added_over_bare_baseline_ms"] = round(done["baseline"] - done["bare"], 3)
    return out


def report(summary: dict[str, Any], env: dict[str, Any], command: str, result: dict[str, Any]) -> str:
    rows = [
        [
            v,
            f"{summary[v]['key_p50_ms']:.2f}",
            f"{summary[v]['done_p50_ms']:.2f}",
            f"{summary[v]['done_p90_ms']:.2f}",
            "-" if summary[v]["cpu_ms_per_device"] is None else f"{summary[v]['cpu_ms_per_device']:.2f}",
        ]
        for v in result["figures"]
    ]
    header = ["variant", "register->key p50 ms", "register->done p50 ms", "p90 ms", "CPU ms/device"]
    lines = [
        f"`{command}`",
        "",
        f"{env['nproc']} cores ({env['cpu_model']}), Python {env['python']}, load {env['loadavg']} at the end, "
        f"commit {env['commit']}; journal on {result['journal_fs']}",
        "",
        markdown_table(header, rows),
        "",
        f"- agent CPU / naive: {summary['cpu_agent_over_naive']} over all devices "
        f"({summary['cpu_tmpfs_over_naive']} with the journal on tmpfs); goal <= {CPU_RATIO_GOAL}",
        f"- latency agent / naive: {summary['latency_agent_over_naive']} (+{summary['added_over_naive_ms']} ms)",
        f"- added over the bare round trip: {summary['added_over_bare_ms']} ms p50 (journal on disk), "
        f"{summary['added_over_bare_tmpfs_ms']} ms (tmpfs); the naive script adds {summary['naive_over_bare_ms']} ms; "
        f"goal <= {ADDED_LATENCY_GOAL_MS} ms",
        f"- agent CPU by thread, ms/device: {result['threads_ms_per_device'].get('agent')}",
    ]
    if "cpu_baseline_over_naive" in summary:
        lines.append(
            f"- baseline (another checkout, journal on disk): CPU / naive {summary['cpu_baseline_over_naive']}, "
            f"added over bare {summary['added_over_bare_baseline_ms']} ms; by thread "
            f"{result['threads_ms_per_device'].get('baseline')}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Devices one at a time: agent, naive script, bare round trip.")
    parser.add_argument("--devices", type=int, default=DEVICES, help="devices per variant (default 200)")
    parser.add_argument("--profile", type=Path, help="cProfile the disk agent into this file")
    parser.add_argument("--baseline", type=Path, help="also the agent from this checkout (journal on disk)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-lone-") as temp:
        workdir = Path(temp)
        (workdir / "broker").mkdir()
        with (
            MosquittoBroker(workdir / "broker", extra_config=BROKER_CONFIG) as broker,
            EmulatorProcess(access_key_id="bench-id", access_key_secret="bench-secret") as emulator,  # noqa: S106
        ):
            line = Line(workdir, broker, emulator)
            result = run(line, args.devices, args.profile.resolve() if args.profile else None, args.baseline)
    summary = summarize(result)
    env = machine(PACKAGES)
    command = "bench/lone_device.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(report(summary, env, command.strip(), result))
    if args.profile is not None:
        _print_profile(args.profile)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"machine": env, "summary": summary, **result}, indent=1, default=str))
    return 0


def _print_profile(path: Path) -> None:
    """The agent's hottest functions, on stderr."""
    for _ in range(50):  # cProfile writes its file as the agent exits
        if path.exists():
            break
        time.sleep(0.1)
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(35)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
