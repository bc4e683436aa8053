"""Benchmark: what the agent costs as its journal grows (0 to 1M devices), and what pruning it costs.

Run ``.venv/bin/python bench/growth.py [--quick] [--json-out FILE]``; see bench/README.md.

How it works
------------
For each size N (0, 10k, 100k, 1M; ``--quick``: 0, 10k, 50k) a journal is written in bulk with
SQL (N activated devices with their delivered report, their charge and three chained audit
entries, the rows the agent itself writes), then:

- **bytes per device**: the file's size (after a checkpoint) / N;
- **start-up**: a fresh process opens the journal and runs the queries the daemon runs before
  it serves (unfinished devices, unpushed keys, the last day's charges, the work-order totals);
  the best of three, Python's start included;
- **export**: ``provisioning-agent export`` of every device, and with ``--since`` today (5,000
  devices, a day's line, are dated today), to /dev/null: wall time and the process's peak RSS;
- **per device**: the agent runs on the journal and devices come one at a time; agent CPU per
  device and register->done latency.

Then **retention**: a journal of the largest size (at most 100k) with every device dated 40 days
back, and the agent on it with ``retain_days = 30``. Devices come one at a time from its start;
its retention task starts a minute later and prunes everything: the prune's wall time (first
archive write to its log line), the devices' latency during it and outside it, and the bytes per
device left (after a VACUUM; the agent itself reuses the freed pages instead).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from _daemon_device import cpu_seconds
from _harness import ROOT, log, machine, markdown_table, median, percentile  # puts the checkout on sys.path
from daemon import TOPIC_ROOT, LatencyBench, LatencyRun, Line

from agent.daemon._retention import FIRST_RUN_S
from agent.journal import Journal
from agent.journal._archive import read_archive
from provisioning.audit import AuditEntry, canonical_bytes, chain_hash, format_at
from provisioning.audit._chain import GENESIS_HASH
from provisioning.workflow import DeviceRecord, State, build_report
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess

try:
    from provisioning_lab.broker import MosquittoBroker
except ImportError:
    from tests.broker import MosquittoBroker  # type: ignore[no-redef,unused-ignore]

FULL_SIZES: Final = (0, 10_000, 100_000, 1_000_000)
QUICK_SIZES: Final = (0, 10_000, 50_000)
FULL_DEVICES: Final = 200  # lone devices per size through the agent
QUICK_DEVICES: Final = 40
DAY_S: Final = 86_400.0
TODAY_DEVICES: Final = 5_000  # a day's line: the charges of the last day are read at start-up (the quotas' window)
CHUNK: Final = 20_000  # rows written per transaction while filling
PACKAGES: Final = ("paho-mqtt", "aiohttp", "httpx")
STARTUP_SCRIPT: Final = """
import sys, time
t = time.perf_counter()
from agent.journal import Journal
j = Journal.open(__import__("pathlib").Path(sys.argv[1]))
j.unfinished(); j.abandon_unpushed(now=time.time()); j.charges_since(time.time() - 86400); j.charges_per_order()
print(time.perf_counter() - t)
"""


def fill(path: Path, size: int, *, now: float, age_s: float = 0.0) -> None:
    """``size`` finished devices as the agent writes them; TODAY_DEVICES dated today, the rest over 90 days."""
    Journal.open(path).close()  # the schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    columns = ("device_id", "hardware_id", "model", "tid", "state", "attempts", "attempt", "key_fingerprint",
               "minted_at", "result_due", "sdk_device_id", "begin_day", "expired_day", "reconciled", "error",
               "updated_at", "delivered", "delivered_attempt")  # fmt: skip
    prev, seq = GENESIS_HASH, 0
    for start in range(0, size, CHUNK):
        devices, reports, charges, audit = [], [], [], []
        for n in range(start, min(size, start + CHUNK)):
            at = now - age_s - (0 if n < TODAY_DEVICES else (n % 89 + 1) * DAY_S + 3600)
            device_id, attempt = f"G{n:08d}", f"{n:016x}"
            record = DeviceRecord(device_id, f"hw-{device_id}", "face-terminal-x1", device_id, State.ACTIVATED,
                                  attempts=1, attempt=attempt, key_fingerprint="f" * 16, minted_at=at,
                                  result_due=at + 120, sdk_device_id=f"wd.{device_id}", begin_day="20261206",
                                  expired_day="20271205", updated_at=at, delivered=1,
                                  delivered_attempt=attempt)  # fmt: skip
            devices.append(tuple(getattr(record, c) if c != "state" else "activated" for c in columns))
            report = build_report(record, gateway_id="bench", biz_type="FACE_TERMINAL_X1", term="1y", now=at)
            reports.append((device_id, report["idempotency_key"], json.dumps(report), at, at, at))
            charges.append((device_id, "face-terminal-x1", "", at, device_id))
            for event in ("minted", "pushed", "consumed"):
                seq += 1
                entry = AuditEntry(seq, format_at(at), event, device_id, "face-terminal-x1", attempt, "f" * 16,
                                   "bench", {"transport": "mqtt"})  # fmt: skip
                text = canonical_bytes(entry)
                digest = chain_hash(prev, text)
                audit.append((seq, event, device_id, attempt, text.decode(), prev, digest))
                prev = digest
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO devices ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", devices)  # noqa: S608
        db.executemany(
            "INSERT INTO outbox (device_id, idempotency_key, payload, created_at, next_attempt_at, delivered_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            reports,
        )
        db.executemany(
            "INSERT INTO admission_charges (device_id, model, work_order, at, sender) VALUES (?, ?, ?, ?, ?)", charges
        )
        db.executemany(
            "INSERT INTO audit (seq, event, device_id, attempt, entry, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            audit,
        )
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of a command, under /usr/bin/time: the RSS of a child
    forked from this (large) process would count the pages it shared with it before its exec."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv], capture_output=True, env=env,
                              text=True, check=False)  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{argv[2:4]} failed ({done.returncode}): {done.stderr[-500:]}")
        return wall, int(rss.read().split()[-1]) / 1024, done.stdout


def export_costs(line: Line, journal: Path) -> dict[str, float]:
    config = write_config(line.workdir / "export.toml", {"gateway_id": "bench", "journal": str(journal)})
    env = dict(line.env) | {"PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "agent", "export", "--config", str(config), "--output", "/dev/null"]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    all_s, all_mb, _ = run_measured(base, env)
    today_s, today_mb, _ = run_measured([*base, "--since", today], env)
    startup = min(float(run_measured([sys.executable, "-c", STARTUP_SCRIPT, str(journal)], env)[2]) for _ in range(3))
    return {"export_s": all_s, "export_mb": all_mb, "since_s": today_s, "since_mb": today_mb, "startup_s": startup}


def start_agent(line: Line, name: str, journal: Path, *, retain_days: int = 0) -> AgentProcess:
    values: dict[str, Any] = {
        "gateway_id": name,
        "journal": {"path": str(journal), "retain_days": retain_days},
        "profiles": line.unsealed_profiles(),
        "log_level": "info" if retain_days else "warning",
        "cloud": {"endpoint": line.emulator.url, "qps": 1000.0, "burst": 50},
        "mqtt": {"host": line.broker.host, "port": line.broker.port, "topic_root": TOPIC_ROOT},
        "http": {"listen": f"127.0.0.1:{free_port()}", "socket": ""},
        "upstream": {"mqtt_topic": ""},
    }
    return AgentProcess(write_config(line.workdir / f"{name}.toml", values), env=line.env).start()


def per_device(line: Line, journal: Path, count: int, tag: str) -> dict[str, Any]:
    agent = start_agent(line, f"growth{tag}", journal)
    bench = LatencyBench(line)
    run = LatencyRun("agent")
    try:
        bench._agent_device(TOPIC_ROOT, f"W{tag}", None)
        cpu0 = cpu_seconds(agent.pid)
        for n in range(count):
            bench._agent_device(TOPIC_ROOT, f"P{tag}-{n:04d}", run)
        cpu = cpu_seconds(agent.pid) - cpu0
    finally:
        line.stop_agent(agent)
        bench.close()
    latencies = sorted(v / 1e6 for v in run.steps["total"])
    return {"cpu_ms": cpu / count * 1e3, "p50_ms": median(latencies), "p95_ms": percentile(latencies, 0.95)}


def retention_cost(line: Line, size: int, count: int) -> dict[str, Any]:
    """The agent's own retention prunes ``size`` old devices while devices come one at a time."""
    journal = line.workdir / "retention.sqlite3"
    fill(journal, size, now=time.time(), age_s=40 * DAY_S)
    agent = start_agent(line, "retention", journal, retain_days=30)
    bench = LatencyBench(line)
    timed: list[tuple[float, int]] = []  # (when a device started, its register->done ns)
    started = ended = 0.0
    try:
        deadline = time.monotonic() + FIRST_RUN_S + 60 + size / 20  # a busy line prunes slowly: it waits for gaps
        n = 0
        while time.monotonic() < deadline:
            run = LatencyRun("agent")
            at = time.monotonic()
            bench._agent_device(TOPIC_ROOT, f"R{n:05d}", run)
            timed.append((at, run.steps["total"][0]))
            n += 1
            if not started and list(line.workdir.glob("retention.sqlite3.archive-*")):
                started = time.monotonic()
            if started and not ended and "retention: " in agent.log_text():
                ended = time.monotonic()
                deadline = min(deadline, ended + 0.01)
        for m in range(count):
            run = LatencyRun("agent")
            bench._agent_device(TOPIC_ROOT, f"S{m:05d}", run)
            timed.append((time.monotonic(), run.steps["total"][0]))
    finally:
        line.stop_agent(agent)
        bench.close()
    if not ended:
        raise RuntimeError("the agent's retention did not finish in time: " + agent.log_text()[-2000:])
    (archive,) = line.workdir.glob("retention.sqlite3.archive-*")
    moved = sum(1 for _ in read_archive(archive))
    db = sqlite3.connect(journal)
    db.execute("VACUUM")  # what the file would shrink to; the agent reuses the freed pages instead
    db.close()
    during = sorted(ns / 1e6 for at, ns in timed if started <= at <= ended)
    outside = sorted(ns / 1e6 for at, ns in timed if not started <= at <= ended)
    return {
        "devices": size, "moved": moved, "prune_s": ended - started, "archive_mb": archive.stat().st_size / 2**20,
        "bytes_after": journal.stat().st_size / size, "devices_during": len(during),
        "during_p50": median(during) if during else 0.0, "during_p95": percentile(during, 0.95) if during else 0.0,
        "after_p50": median(outside), "after_p95": percentile(outside, 0.95),
    }  # fmt: skip


def report(results: dict[str, Any]) -> str:
    rows = []
    for size in results["sizes"]:
        r = results["growth"][str(size)]
        rows.append([f"{size:,}", f"{r['cpu_ms']:.2f}", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}",
                     f"{r['export_s']:.2f} / {r['export_mb']:.0f}", f"{r['since_s']:.2f} / {r['since_mb']:.0f}",
                     f"{r['startup_s'] * 1e3:.0f}", f"{r['bytes_per_device']:.0f}" if size else "-"])  # fmt: skip
    table = markdown_table(["journal devices", "agent CPU ms/device", "latency p50/p95 ms", "export all s / MB RSS",
                            "export --since today s / MB", "start-up ms", "bytes/device"], rows)  # fmt: skip
    p = results["retention"]
    prune = markdown_table(
        ["finished devices pruned", "rows moved", "prune s", "archive MB", "bytes/device after (VACUUM)",
         "devices during", "latency during p50/p95 ms", "latency after p50/p95 ms"],
        [[f"{p['devices']:,}", f"{p['moved']:,}", f"{p['prune_s']:.1f}", f"{p['archive_mb']:.1f}",
          f"{p['bytes_after']:.0f}", str(p["devices_during"]), f"{p['during_p50']:.1f} / {p['during_p95']:.1f}",
          f"{p['after_p50']:.1f} / {p['after_p95']:.1f}"]],
    )  # fmt: skip
    return f"{table}\n\n{prune}\n\nCommand: `{results['command']}`; load average at start {results['loadavg_start']}.\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The agent's costs as its journal grows, and pruning it.")
    parser.add_argument("--quick", action="store_true", help="journals of 0, 10k and 50k devices")
    parser.add_argument("--json-out", type=Path, help="also write every figure as JSON")
    parser.add_argument("--retention-only", action="store_true", help="only the retention figures")
    parser.add_argument(
        "--retention-size", type=int, help="old devices to prune (default: the largest size, at most 100k)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    count = QUICK_DEVICES if args.quick else FULL_DEVICES
    command = ".venv/bin/python bench/growth.py" + (" --quick" if args.quick else "")
    results: dict[str, Any] = {"sizes": list(sizes), "command": command, "loadavg_start": machine(())["loadavg"],
                               "growth": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        workdir = Path(tmp)
        with (
            MosquittoBroker(workdir / "broker", extra_config=("set_tcp_nodelay true",)) as broker,
            EmulatorProcess(access_key_id="bench-id", access_key_secret="bench-secret") as emulator,  # noqa: S106
        ):
            line = Line(workdir, broker, emulator)
            for size in () if args.retention_only else sizes:
                journal = workdir / f"g{size}.sqlite3"
                started = time.perf_counter()
                fill(journal, size, now=time.time())
                log(f"{size}: filled in {time.perf_counter() - started:.1f} s")
                figures: dict[str, Any] = {"bytes_per_device": journal.stat().st_size / size if size else 0.0}
                figures |= export_costs(line, journal)
                figures |= per_device(line, journal, count, str(size))
                results["growth"][str(size)] = figures
                log(f"{size}: {figures}")
                journal.unlink()
            largest = args.retention_size or min(max(sizes), 100_000)
            results["retention"] = retention_cost(line, largest, count)
            log(f"retention: {results['retention']}")
            shutil.rmtree(workdir / "profiles", ignore_errors=True)
    results["machine"] = machine(PACKAGES)
    print(report(results) if not args.retention_only else json.dumps(results["retention"], indent=1))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
