"""Benchmark: the shared PostgreSQL ledger against the SQLite journal, one agent and three, side by side.

Run ``.venv/bin/python bench/ledger.py [--quick] [--devices 150] [--rounds 3] [--json-out FILE]``.

How it works
------------
One Cloudauth emulator (no added latency, no QPS cap: the journal, not the cloud, is measured),
one Mosquitto and one PostgreSQL (``provisioning_lab.postgres``, ``fsync`` on, as the SQLite
journal's ``synchronous = FULL``) are started once. Four arms run in every round, in an order
that rotates from round to round so that background noise falls on each in turn:

- ``sqlite x1``: one agent on its SQLite journal;
- ``postgres x1``: one agent on the ledger;
- ``sqlite x3``: three agents on one broker (``[mqtt] shared_group``), each with its own SQLite
  journal (what a line could do before the ledger: nothing shared, limits per agent);
- ``postgres x3``: three agents sharing the ledger (leases, global limits, one audit chain).

Each arm starts its agents (fresh journals; the ledger's tables dropped), runs ``--devices``
simulated MQTT devices at once (unsealed profiles, as ``bench/daemon.py``: sealing is its own
cost) until every one is licensed, and stops the agents. Figures per arm and round:

- **devices/s**: devices / wall time from the first register to the last ``done``;
- **agent CPU per device**: user + system CPU of every agent process (all threads, from
  ``/proc``), summed, over the fleet, divided by the devices;
- **PostgreSQL CPU per device**: the same for the server and its backends (the ledger arms).

The report gives the median of the rounds and the ratios PostgreSQL / SQLite at one and three
agents. Timed on whatever else the machine runs: the report prints the load average.
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

import paho.mqtt.client as paho
from _daemon_device import cpu_seconds
from _harness import ROOT, machine, markdown_table, median  # puts the checkout on sys.path
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.broker import MosquittoBroker
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.postgres import PostgresServer
from provisioning_lab.simulator import Timing, fleet_specs, run_fleet

MODEL: Final = "face-terminal-x1"
ARMS: Final = (("sqlite", 1), ("postgres", 1), ("sqlite", 3), ("postgres", 3))
FLEET_DEADLINE_S: Final = 600.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    devices, rounds = (40, 1) if args.quick else (args.devices, args.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    os.chdir(workdir)  # `python -m agent` puts its cwd first on sys.path
    samples: list[dict[str, Any]] = []
    with (
        EmulatorProcess(["--sdk-delay", "0"]) as emulator,
        MosquittoBroker(workdir / "broker") as broker,
        PostgresServer(workdir / "pg", fsync=True) as postgres,
    ):
        bench = Bench(workdir, emulator, broker, postgres)
        bench.profiles()
        for number in range(rounds + 1):  # round 0 warms up (imports, caches, the server's files) and is dropped
            order = ARMS[number % len(ARMS) :] + ARMS[: number % len(ARMS)]
            for backend, agents in order if number % 2 == 0 else tuple(reversed(order)):
                sample = bench.arm(backend, agents, devices if number else max(10, devices // 4), number)
                print(f"round {number} {backend} x{agents}: {sample['devices_per_s']:.1f} devices/s, "
                      f"{sample['agent_cpu_ms']:.2f} ms agent CPU per device", file=sys.stderr)  # fmt: skip
                if number:
                    samples.append(sample)
    result = {"machine": machine(["psycopg"]), "devices": devices, "rounds": rounds, "samples": samples,
              "summary": summarise(samples)}  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


class Bench:
    """The shared pieces, and one arm's run."""

    def __init__(self, workdir: Path, emulator: EmulatorProcess, broker: MosquittoBroker, postgres: PostgresServer):
        self.workdir, self.emulator, self.broker, self.postgres = workdir, emulator, broker, postgres
        self.env = dict(os.environ, ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
                        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret)  # fmt: skip

    def profiles(self) -> None:
        folder = self.workdir / "profiles"
        folder.mkdir(exist_ok=True)
        for shipped in (ROOT / "hardware-profiles").glob("*.toml"):
            text = shipped.read_text(encoding="utf-8").replace("\nrequired = true", "\nrequired = false")
            (folder / shipped.name).write_text(text, encoding="utf-8")

    def arm(self, backend: str, count: int, devices: int, number: int) -> dict[str, Any]:
        if backend == "postgres":
            _reset_ledger(self.postgres.url)
        label = f"{backend[0]}{count}r{number}"
        agents = [self._start(f"gw-{label}-{n}", backend) for n in range(count)]
        try:
            specs = fleet_specs(devices, model=MODEL, id_prefix=f"L{label.upper()}", seal=False)
            cpu0 = sum(cpu_seconds(agent.pid) for agent in agents)
            pg0 = _tree_cpu(self.postgres.pid)
            started = time.monotonic()
            report = asyncio.run(run_fleet(specs, mqtt_host=self.broker.host, mqtt_port=self.broker.port,
                                           emulator_url=self.emulator.url, concurrency=len(specs),
                                           deadline_s=FLEET_DEADLINE_S, timing=Timing(time_scale=0.05)))  # fmt: skip
            wall = time.monotonic() - started
            cpu = sum(cpu_seconds(agent.pid) for agent in agents) - cpu0
            pg = _tree_cpu(self.postgres.pid) - pg0
        finally:
            for agent in agents:
                self._stop(agent)
        licensed = report.counts().get("licensed", 0)
        if licensed != devices:
            raise RuntimeError(f"{backend} x{count}: {licensed} of {devices} devices licensed")
        return {"backend": backend, "agents": count, "round": number, "devices": devices, "wall_s": round(wall, 3),
                "devices_per_s": devices / wall, "agent_cpu_ms": cpu / devices * 1e3,
                "postgres_cpu_ms": pg / devices * 1e3 if backend == "postgres" else 0.0}  # fmt: skip

    def _start(self, name: str, backend: str) -> AgentProcess:
        journal: dict[str, Any] = (
            {"url": self.postgres.url} if backend == "postgres" else {"path": str(self.workdir / f"{name}.sqlite3")}
        )
        values: dict[str, Any] = {
            "gateway_id": name,
            "journal": journal,
            "profiles": str(self.workdir / "profiles"),
            "log_level": "warning",
            "cloud": {"endpoint": self.emulator.url, "qps": 1000.0, "burst": 500},
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "shared_group": "bench"},
            "limits": {"max_queued": 5000},
            "http": {"listen": "", "socket": ""},
        }
        return AgentProcess(write_config(self.workdir / f"{name}.toml", values), env=self.env).start()

    def _stop(self, agent: AgentProcess) -> None:
        """Stop it and end its persistent session (else the broker queues the next arm's messages for it)."""
        agent.stop(15.0)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"provisioning-agent-{agent.config_file.stem}",
                             protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        client.connect(self.broker.host, self.broker.port, clean_start=True)
        client.loop(1.0)
        client.disconnect()


def _reset_ledger(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its children (the postmaster and its backends)."""
    if pid is None:
        return 0.0
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += cpu_seconds(int(entry.name))
    return total


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for backend, count in ARMS:
        mine = [s for s in samples if s["backend"] == backend and s["agents"] == count]
        out[f"{backend} x{count}"] = {
            "devices_per_s": median(s["devices_per_s"] for s in mine),
            "agent_cpu_ms": median(s["agent_cpu_ms"] for s in mine),
            "postgres_cpu_ms": median(s["postgres_cpu_ms"] for s in mine),
        }
    return out


def report(result: dict[str, Any]) -> str:
    summary = result["summary"]
    rows = []
    for count in (1, 3):
        lite, pg = summary[f"sqlite x{count}"], summary[f"postgres x{count}"]
        rows.append([f"{count}", f"{lite['devices_per_s']:.1f}", f"{pg['devices_per_s']:.1f}",
                     f"{pg['devices_per_s'] / lite['devices_per_s']:.2f}", f"{lite['agent_cpu_ms']:.2f}",
                     f"{pg['agent_cpu_ms']:.2f}", f"{pg['agent_cpu_ms'] / lite['agent_cpu_ms']:.2f}",
                     f"{pg['postgres_cpu_ms']:.2f}"])  # fmt: skip
    header = ["agents", "SQLite devices/s", "PostgreSQL devices/s", "ratio", "SQLite agent CPU ms/device",
              "PostgreSQL agent CPU ms/device", "ratio", "PostgreSQL server CPU ms/device"]  # fmt: skip
    where = result["machine"]
    cores = f"{where.get('nproc', '')} cores ({where.get('cpu_model', '')})"
    return (f"{result['devices']} devices per arm, median of {result['rounds']} round(s); machine: {cores}, "
            f"load average {where.get('loadavg', '')}\n\n" + markdown_table(header, rows))  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=150, help="devices per arm and round (default 150)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3; a warm-up comes first)")
    parser.add_argument("--quick", action="store_true", help="40 devices, one round: a sanity run")
    parser.add_argument("--json-out", help="also write every figure as JSON here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
