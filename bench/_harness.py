"""Shared pieces of the benchmarks: the repository on ``sys.path``, CPU meters, statistics, the machine, tables.

Importing this module puts the repository root first on ``sys.path``, so a benchmark run as
``.venv/bin/python bench/NAME.py`` imports ``agent`` and ``provisioning`` from this checkout
whether or not the project is installed in the venv.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "lab", ROOT):  # the lab distribution's package lives in lab/
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

__all__ = [
    "ROOT",
    "Meter",
    "Sample",
    "log",
    "machine",
    "markdown_table",
    "median",
    "percentile",
    "split_evenly",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat counts CPU time in these


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed phase: ``calls`` calls at ``concurrency``, with the CPU both processes spent on them."""

    calls: int
    concurrency: int
    wall_s: float
    cpu_s: float  # time.process_time() of this (client) process, every thread, user + system
    peer_cpu_s: float  # CPU of the server process over the same interval (/proc, 10 ms resolution)
    latencies_ns: tuple[int, ...]

    @property
    def calls_per_s(self) -> float:
        """Throughput over the timed interval."""
        return self.calls / self.wall_s

    @property
    def cpu_per_call_ms(self) -> float:
        """Client CPU per call, in milliseconds."""
        return self.cpu_s / self.calls * 1e3

    @property
    def peer_cpu_per_call_ms(self) -> float:
        """Server CPU per call, in milliseconds."""
        return self.peer_cpu_s / self.calls * 1e3

    @property
    def peer_busy(self) -> float:
        """Fraction of one core the server used (1.0 = a single-threaded server is saturated)."""
        return self.peer_cpu_s / self.wall_s

    @property
    def client_busy(self) -> float:
        """Cores' worth of CPU the client process used."""
        return self.cpu_s / self.wall_s

    def latency_ms(self, fraction: float) -> float:
        """The ``fraction`` percentile of per-call latency, in milliseconds."""
        return percentile(self.latencies_ns, fraction) / 1e6

    def summary(self) -> dict[str, float]:
        """The figures kept in the JSON results."""
        return {
            "calls": self.calls,
            "concurrency": self.concurrency,
            "wall_s": round(self.wall_s, 6),
            "calls_per_s": round(self.calls_per_s, 1),
            "cpu_per_call_ms": round(self.cpu_per_call_ms, 4),
            "emulator_cpu_per_call_ms": round(self.peer_cpu_per_call_ms, 4),
            "emulator_busy": round(self.peer_busy, 3),
            "client_busy": round(self.client_busy, 3),
            "p50_ms": round(self.latency_ms(0.50), 4),
            "p90_ms": round(self.latency_ms(0.90), 4),
            "p99_ms": round(self.latency_ms(0.99), 4),
        }


class Meter:
    """Stamps wall time, this process's CPU and a peer process's CPU around a timed phase."""

    def __init__(self, peer_pid: int | None) -> None:
        self._peer_stat = Path(f"/proc/{peer_pid}/stat") if peer_pid is not None else None

    def start(self) -> tuple[float, float, float]:
        """Stamps to hand back to :meth:`stop`."""
        return time.perf_counter(), time.process_time(), self._peer_cpu()

    def stop(self, started: tuple[float, float, float], concurrency: int, latencies_ns: Sequence[int]) -> Sample:
        """Close the phase started at ``started``; one latency per call."""
        wall, cpu, peer = time.perf_counter(), time.process_time(), self._peer_cpu()
        return Sample(
            calls=len(latencies_ns),
            concurrency=concurrency,
            wall_s=wall - started[0],
            cpu_s=cpu - started[1],
            peer_cpu_s=peer - started[2],
            latencies_ns=tuple(latencies_ns),
        )

    def _peer_cpu(self) -> float:
        if self._peer_stat is None:
            return 0.0
        # Fields after the parenthesised command name: state is [0], utime [11], stime [12].
        fields = self._peer_stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def log(text: str) -> None:
    """Progress, on stderr (stdout carries the results)."""
    print(text, file=sys.stderr, flush=True)


def percentile(values: Sequence[int] | Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return float(ordered[rank - 1])


def median(values: Iterable[float]) -> float:
    """Median of a non-empty iterable."""
    return float(statistics.median(list(values)))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; columns after the first are right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(packages: Sequence[str]) -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU model, Python, package versions, commit."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg": _loadavg(),
        "implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in packages},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "worktree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()
