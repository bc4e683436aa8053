"""Benchmark: draining a backlog of upstream reports while devices keep provisioning.

Run ``.venv/bin/python bench/backlog.py [--quick] [--json-out FILE]``; see bench/README.md.

How it works
------------
For each backlog size P (1k, 5k, 10k; ``--quick``: 200, 1k):

1. **Fill.** A fresh journal gets P activated devices whose reports were never delivered (the
   webhook was away), written in bulk through the journal's own API (``Journal.complete`` in one
   group commit), all due now: the worst case for the drainer's query.
2. **Query, old and new, on a copy.** The file is copied twice; one copy is taken back to schema
   4's outbox indexes. On each, one ``due_reports(limit=50)`` call is timed, and on the new one a
   whole drain without the network (take a batch, mark each delivered, again). The old drain is
   run only where it ends in reasonable time and estimated from its first call otherwise (its
   cost per call falls with the square of what is left, so a drain is about calls/3 first calls).
3. **Drain.** The agent starts on the journal with a webhook that answers at once; the drain is
   the time from the first report delivered to the P-th. Meanwhile devices come one at a time
   (register -> key -> activate -> result -> done, as ``bench/daemon.py`` times them); after the
   drain as many more devices are timed with no backlog: their register->done latency side by
   side, and the agent's CPU over the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from _daemon_device import cpu_seconds
from _harness import log, machine, markdown_table, median, percentile  # puts the checkout on sys.path
from _soak_upstream import WebhookReceiver
from daemon import TOPIC_ROOT, LatencyBench, LatencyRun, Line

from agent.journal import Journal
from provisioning.workflow import DeviceRecord, State, build_report
from provisioning_lab._ports import free_port
from provisioning_lab.agentprocess import AgentProcess, write_config
from provisioning_lab.emulator import EmulatorProcess

try:
    from provisioning_lab.broker import MosquittoBroker
except ImportError:  # the helper's older home
    from tests.broker import MosquittoBroker  # type: ignore[no-redef,unused-ignore]

FULL_SIZES: Final = (1_000, 5_000, 10_000)
QUICK_SIZES: Final = (200, 1_000)
BATCH: Final = 50  # the drainer's batch (agent/daemon/_upstream.py)
OLD_DRAIN_UP_TO: Final = 1_000  # the old query's whole drain is run up to this backlog, estimated above it
BASELINE_DEVICES: Final = 20  # devices timed with no backlog, after the drain
DRAIN_TIMEOUT_S: Final = 900.0
GOAL_DRAIN_S: Final = 30.0  # 10k pending reports
SCHEMA_4_OUTBOX: Final = (  # the outbox indexes before schema 5, to run the old query as it ran
    "DROP INDEX outbox_due; DROP INDEX outbox_device_pending; "
    "CREATE INDEX outbox_pending ON outbox(delivered_at, next_attempt_at);"
)
OLD_DUE: Final = (
    "SELECT o.id, o.device_id, o.idempotency_key, o.payload, o.attempts FROM outbox o "
    "WHERE o.delivered_at IS NULL AND o.next_attempt_at <= ? AND o.id = ("
    "  SELECT MIN(id) FROM outbox p WHERE p.device_id = o.device_id AND p.delivered_at IS NULL) "
    "ORDER BY o.id LIMIT ?"
)
PACKAGES: Final = ("paho-mqtt", "aiohttp", "httpx")


def fill(path: Path, pending: int, *, now: float, prefix: str = "B") -> None:
    """``pending`` activated devices with their reports undelivered and due at ``now``."""
    journal = Journal.open(path, gateway_id="bench")
    try:
        with journal.batch():
            for n in range(pending):
                device_id = f"{prefix}{n:07d}"
                record = DeviceRecord(device_id, f"hw-{device_id}", "face-terminal-x1", device_id, State.ACTIVATED,
                                      attempts=1, delivered=1, attempt=f"{n:016x}", key_fingerprint="f" * 16,
                                      minted_at=now, sdk_device_id=f"wd.{device_id}", begin_day="20261206",
                                      expired_day="20271205", updated_at=now)  # fmt: skip
                report = build_report(record, gateway_id="bench", biz_type="FACE_TERMINAL_X1", term="1y", now=now)
                journal.complete(record, report, now=now)
    finally:
        journal.close()


def query_costs(path: Path, pending: int, now: float) -> dict[str, float]:
    """One batch call, old and new, and a whole drain without the network, each on its own copy."""
    new_copy, old_copy = path.with_suffix(".new"), path.with_suffix(".old")
    shutil.copy(path, new_copy)
    shutil.copy(path, old_copy)
    journal = Journal.open(new_copy)
    started = time.perf_counter()
    journal.due_reports(now=now, limit=BATCH)
    new_call = time.perf_counter() - started
    started = time.perf_counter()
    while rows := journal.due_reports(now=now, limit=BATCH):
        with journal.batch(durable=False):
            for row in rows:
                journal.mark_delivered(row.id, now=now)
    new_drain = time.perf_counter() - started
    journal.close()
    db = sqlite3.connect(old_copy, isolation_level=None)
    db.executescript(SCHEMA_4_OUTBOX)
    db.execute("PRAGMA synchronous = NORMAL")
    started = time.perf_counter()
    db.execute(OLD_DUE, (now, BATCH)).fetchall()
    old_call = time.perf_counter() - started
    old_drain, estimated = 0.0, pending > OLD_DRAIN_UP_TO
    if estimated:
        old_drain = old_call * (pending / BATCH) / 3
    else:
        started = time.perf_counter()
        while rows := db.execute(OLD_DUE, (now, BATCH)).fetchall():
            db.execute("BEGIN")
            db.executemany("UPDATE outbox SET delivered_at = ? WHERE id = ?", [(now, row[0]) for row in rows])
            db.execute("COMMIT")
        old_drain = time.perf_counter() - started
    db.close()
    new_copy.unlink()
    old_copy.unlink()
    return {"new_call_ms": new_call * 1e3, "old_call_ms": old_call * 1e3, "new_drain_s": new_drain,
            "old_drain_s": old_drain, "old_drain_estimated": float(estimated)}  # fmt: skip


class Sink:
    """The webhook (an aiohttp MES stand-in) on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.receiver: WebhookReceiver | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="webhook", daemon=True)
        self.thread.start()
        self.receiver = self._call(self._make())
        self._call(self.receiver.start())

    async def _make(self) -> WebhookReceiver:
        return WebhookReceiver()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def times(self) -> list[float]:
        """When each report arrived (POSIX seconds), in order."""
        assert self.receiver is not None
        return [delivery.received_at for delivery in list(self.receiver.deliveries)]

    def close(self) -> None:
        assert self.receiver is not None
        self._call(self.receiver.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_agent(line: Line, name: str, webhook: str) -> AgentProcess:
    """The agent on ``line``'s broker and emulator, reports to ``webhook`` only."""
    values: dict[str, Any] = {
        "gateway_id": name,
        "journal": str(line.journal(name)),
        "profiles": line.unsealed_profiles(),
        "log_level": "warning",
        "cloud": {"endpoint": line.emulator.url, "qps": 1000.0, "burst": 50},
        "mqtt": {"host": line.broker.host, "port": line.broker.port, "topic_root": TOPIC_ROOT},
        "http": {"listen": f"127.0.0.1:{free_port()}", "socket": ""},
        "upstream": {"mqtt_topic": "", "webhook_url": webhook},
    }
    return AgentProcess(write_config(line.workdir / f"{name}.toml", values), env=line.env).start()


def drain(line: Line, pending: int, round_no: int) -> dict[str, Any]:
    """The agent drains ``pending`` reports while devices come one at a time; then devices with no backlog."""
    name = f"backlog{pending}"
    fill(line.journal(name), pending, now=time.time())
    sink = Sink()
    bench = LatencyBench(line)
    during, after = LatencyRun("during"), LatencyRun("after")
    agent = start_agent(line, name, sink.receiver.url if sink.receiver else "")
    try:
        assert agent.pid is not None
        cpu0 = cpu_seconds(agent.pid)
        deadline, index = time.monotonic() + DRAIN_TIMEOUT_S, 0
        while len(sink.times()) < pending and time.monotonic() < deadline:
            bench._agent_device(TOPIC_ROOT, f"D{round_no}-{pending}-{index:05d}", during)
            index += 1
        while len(sink.times()) < pending + index and time.monotonic() < deadline:
            time.sleep(0.05)  # the devices' own reports, and the backlog's tail
        arrived = sink.times()
        drain_cpu = cpu_seconds(agent.pid) - cpu0
        for n in range(BASELINE_DEVICES):
            bench._agent_device(TOPIC_ROOT, f"A{round_no}-{pending}-{n:05d}", after)
    finally:
        line.stop_agent(agent)
        bench.close()
        sink.close()
    if len(arrived) < pending:
        raise RuntimeError(f"only {len(arrived)} of {pending} reports arrived in {DRAIN_TIMEOUT_S:.0f} s")
    drain_s = arrived[pending - 1] - arrived[0]
    return {"pending": pending, "drain_s": drain_s, "reports_per_s": pending / drain_s if drain_s else 0.0,
            "agent_cpu_s": drain_cpu, "devices_during": len(during.steps["total"]),
            "during_ms": sorted(v / 1e6 for v in during.steps["total"]),
            "after_ms": sorted(v / 1e6 for v in after.steps["total"])}  # fmt: skip


def report(results: dict[str, Any]) -> str:
    """The Markdown tables."""
    rows = []
    for size in results["sizes"]:
        query, run = results["query"][str(size)], results["drain"][str(size)]
        old = f"{run_or_est(query)}"
        rows.append([
            f"{size:,}", f"{query['old_call_ms']:.1f}", f"{query['new_call_ms']:.2f}", old,
            f"{query['new_drain_s']:.2f}", f"{run['drain_s']:.1f}", f"{run['drain_s'] / size * 1e3:.2f}",
            f"{run['agent_cpu_s'] / size * 1e3:.2f}", str(run["devices_during"]),
            f"{median(run['during_ms']):.1f} / {percentile(run['during_ms'], 0.95):.1f}",
            f"{median(run['after_ms']):.1f} / {percentile(run['after_ms'], 0.95):.1f}",
        ])  # fmt: skip
    table = markdown_table(
        ["pending", "old call ms", "new call ms", "old drain s (journal only)", "new drain s (journal only)",
         "agent drain s", "s per 1k", "agent CPU ms/report", "devices during", "latency during p50/p95 ms",
         "latency after p50/p95 ms"],
        rows,
    )  # fmt: skip
    return f"{table}\n\nCommand: `{results['command']}`; load average at start {results['loadavg_start']}.\n"


def run_or_est(query: dict[str, float]) -> str:
    value = f"{query['old_drain_s']:.1f}"
    return f"~{value} (est.)" if query["old_drain_estimated"] else value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draining a backlog of upstream reports while devices provision.")
    parser.add_argument("--quick", action="store_true", help="backlogs of 200 and 1,000 reports")
    parser.add_argument("--json-out", type=Path, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    command = ".venv/bin/python bench/backlog.py" + (" --quick" if args.quick else "")
    results: dict[str, Any] = {"sizes": list(sizes), "command": command, "loadavg_start": machine(())["loadavg"],
                               "query": {}, "drain": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        workdir = Path(tmp)
        with (
            MosquittoBroker(workdir / "broker", extra_config=("set_tcp_nodelay true",)) as broker,
            EmulatorProcess(access_key_id="bench-id", access_key_secret="bench-secret") as emulator,  # noqa: S106
        ):
            line = Line(workdir, broker, emulator)
            for round_no, size in enumerate(sizes):
                copy = workdir / f"query{size}.sqlite3"
                fill(copy, size, now=time.time())
                results["query"][str(size)] = query = query_costs(copy, size, time.time() + 1)
                log(f"{size}: one call old {query['old_call_ms']:.1f} ms, new {query['new_call_ms']:.2f} ms; "
                    f"journal-only drain old {run_or_est(query)} s, new {query['new_drain_s']:.2f} s")  # fmt: skip
                results["drain"][str(size)] = run = drain(line, size, round_no)
                log(f"{size}: agent drained in {run['drain_s']:.1f} s ({run['devices_during']} devices meanwhile, "
                    f"p50 {median(run['during_ms']):.1f} ms vs {median(run['after_ms']):.1f} ms after)")  # fmt: skip
    results["machine"] = machine(PACKAGES)
    print(report(results))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
