"""Benchmark: our Cloudauth client against the official SDK and the bare round trip, one emulator, one run.

Run ``.venv/bin/python bench/cloudauth_client.py [--quick] [--json-out FILE]``; see bench/README.md.

How it works
------------
One emulator subprocess serves every client, so its CPU never counts as the client's. A round
runs every phase (DescribeDeviceInfo at concurrency 1 and 32, CreateAuthKey at concurrency 1)
for every client; the order of the clients rotates and flips from round to round, so each one
goes first, and ours and the official SDK swap places every round. A phase warms its
connections up, then stamps wall time, this process's ``time.process_time()`` (every thread,
user + system) and the emulator's CPU (from /proc) around the timed calls. The tables show
medians over rounds; a CPU ratio is the median of the per-round ratios (paired, so a noisy
round moves both sides).

The clients:

- ``ours V1`` / ``ours V3``: ``CloudauthClient`` with an unlimited ``RateLimiter`` and its
  defaults otherwise (10 pooled connections); concurrency N is N tasks on one event loop.
- ``official SDK``: ``alibabacloud_cloudauth20190307.client.Client`` (tea, V3 signing by
  default) over plain HTTP, used synchronously: concurrency 1 in the main thread, concurrency
  32 in 32 threads sharing one client (its requests session pools 40 connections per host).
- ``ours V1 (worker)`` / ``baseline V1 (worker)``, with ``--baseline DIR``: our client from this
  checkout and from DIR (an older checkout, e.g. ``git worktree add /tmp/old <commit>``), each in
  a process of its own (``bench/_client_worker.py``) driven phase by phase, so an old and a new
  client are measured side by side in one run on equal terms.
- floors, with no client library logic: the request our V1 client sends (``POST /`` with the
  signed parameters as a form body), signed before the clock starts and sent over a raw asyncio
  socket (``raw pre-signed``) or with a bare ``httpx.AsyncClient`` (``httpx pre-signed``); and
  ``GET /_emulator/health`` over a raw socket (``raw health``: loopback HTTP plus the emulator's
  cheapest route).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import cProfile
import gc
import itertools
import json
import os
import pstats
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import httpx
from _harness import ROOT, Meter, Sample, machine, markdown_table, median, split_evenly  # puts the checkout on sys.path
from _presign import signed_form
from alibabacloud_cloudauth20190307 import models as official_models
from alibabacloud_cloudauth20190307.client import Client as OfficialSdkClient
from alibabacloud_tea_openapi.utils_models import Config as OfficialConfig

from agent.cloud import CloudauthClient, Credentials, RateLimiter, SignatureVersion
from provisioning.cloudauth import LicenceTerm
from provisioning.secret import Secret
from provisioning_lab.emulator import EmulatorProcess

DESCRIBE = "DescribeDeviceInfo"
CREATE = "CreateAuthKey"
HIGH_CONCURRENCY = 32  # the figure for the concurrent comparison
SEEDED_DEVICES = 10  # each DescribeDeviceInfo answer carries this many records (one realistic page)
BIZ_TYPE = "BENCH"
BENCH_TERM = LicenceTerm.of_years(1)
WARMUP_CALLS = 3  # per worker, untimed: opens the pooled connections and fills caches
BARRIER_TIMEOUT_SECONDS = 120.0  # a thread stuck this long means the emulator or the SDK hung
EMULATOR_SATURATED = 0.9  # the emulator serves on one core: above this share of it, it sets calls/s
CPU_RATIO_GOAL = 0.7  # the issue: our CPU per call at most 0.7x the official SDK's
LOOPBACK_GOAL_MS = 1.5  # the issue: "a loopback call in about a millisecond, not tens" (p50)
PACKAGES = (
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "sniffio",
    "aiohttp",
    "alibabacloud-cloudauth20190307",
    "alibabacloud-tea-openapi",
    "darabonba-core",
    "alibabacloud-credentials",
    "requests",
    "urllib3",
)
FORM_TYPE = "application/x-www-form-urlencoded"
FORM_HEADERS = {"content-type": FORM_TYPE}
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True, slots=True)
class Phase:
    """One measured situation: ``calls`` calls of ``action`` at ``concurrency``."""

    action: str
    concurrency: int
    calls: int

    @property
    def key(self) -> str:
        """Name used in the JSON results."""
        return f"{self.action}@c{self.concurrency}"


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to run."""

    rounds: int
    phases: tuple[Phase, ...]


FULL_PLAN = Plan(5, (Phase(DESCRIBE, 1, 1000), Phase(DESCRIBE, HIGH_CONCURRENCY, 3200), Phase(CREATE, 1, 200)))
QUICK_PLAN = Plan(2, (Phase(DESCRIBE, 1, 150), Phase(DESCRIBE, HIGH_CONCURRENCY, 320), Phase(CREATE, 1, 50)))

AsyncCall = Callable[[], Awaitable[object]]


# -- the clients under test -----------------------------------------------------------------------


class Subject(abc.ABC):
    """A client under test: measures phases against the emulator."""

    name: str
    actions: frozenset[str] = frozenset({DESCRIBE, CREATE})

    @abc.abstractmethod
    def measure(self, phase: Phase) -> Sample:
        """Warm up, then time ``phase.calls`` calls."""

    def check(self) -> int:
        """One DescribeDeviceInfo; the number of devices the answer holds (must be SEEDED_DEVICES)."""
        return SEEDED_DEVICES

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class OurClient(Subject):
    """``provisioning.cloudauth.CloudauthClient`` on the benchmark's event loop."""

    def __init__(
        self, runner: asyncio.Runner, meter: Meter, emulator: EmulatorProcess, signature: SignatureVersion
    ) -> None:
        self.name = f"ours {signature.upper()}"
        self._runner = runner
        self._meter = meter
        self._client = CloudauthClient(
            Credentials(emulator.access_key_id, Secret(emulator.access_key_secret)),
            endpoint=emulator.url,
            signature=signature,
            rate_limiter=RateLimiter(qps=None),
        )

    def measure(self, phase: Phase) -> Sample:
        call = self._describe if phase.action == DESCRIBE else self._create
        return self._runner.run(drive_async([call] * phase.concurrency, phase.calls, self._meter))

    def check(self) -> int:
        page = self._runner.run(self._client.describe_device_info(biz_type=BIZ_TYPE))
        return len(page.devices)

    def close(self) -> None:
        self._runner.run(self._client.aclose())

    async def _describe(self) -> object:
        return await self._client.describe_device_info(biz_type=BIZ_TYPE)

    async def _create(self) -> object:
        return await self._client.create_auth_key(term=BENCH_TERM, user_device_id="SN-BENCH", biz_type=BIZ_TYPE)


class OfficialClient(Subject):
    """The official tea SDK, synchronous, shared by the threads at concurrency > 1."""

    name = "official SDK (V3)"

    def __init__(self, meter: Meter, emulator: EmulatorProcess) -> None:
        self._meter = meter
        config = OfficialConfig(
            access_key_id=emulator.access_key_id,
            access_key_secret=emulator.access_key_secret,
            endpoint=emulator.endpoint,  # host:port; the scheme comes from protocol
            protocol="http",
        )
        self._client = OfficialSdkClient(config)

    def measure(self, phase: Phase) -> Sample:
        call = self._describe if phase.action == DESCRIBE else self._create
        return drive_threads(call, phase.concurrency, phase.calls, self._meter)

    def check(self) -> int:
        return len(self._describe().body.device_info_list.device_info)

    def _describe(self) -> Any:
        return self._client.describe_device_info(official_models.DescribeDeviceInfoRequest(biz_type=BIZ_TYPE))

    def _create(self) -> Any:
        request = official_models.CreateAuthKeyRequest(
            auth_years=1, test=False, user_device_id="SN-BENCH", biz_type=BIZ_TYPE
        )
        return self._client.create_auth_key(request)


class WorkerClient(Subject):
    """Our client from ``tree`` in a process of its own (bench/_client_worker.py), driven phase by phase."""

    def __init__(self, name: str, tree: Path, emulator: EmulatorProcess, signature: SignatureVersion) -> None:
        self.name = name
        self._process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_client_worker.py"), str(tree), emulator.url,
             emulator.access_key_id, emulator.access_key_secret, signature, str(emulator.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def measure(self, phase: Phase) -> Sample:
        answer = self._ask({"action": phase.action, "concurrency": phase.concurrency, "calls": phase.calls})
        return Sample(
            calls=answer["calls"],
            concurrency=answer["concurrency"],
            wall_s=answer["wall_s"],
            cpu_s=answer["cpu_s"],
            peer_cpu_s=answer["peer_cpu_s"],
            latencies_ns=tuple(answer["latencies_ns"]),
        )

    def check(self) -> int:
        return int(self._ask({"check": True})["devices"])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.write(json.dumps({"quit": True}) + "\n")
            self._process.stdin.close()
        self._process.wait(30)

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker ended (exit {self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


class Floor(Subject):
    """A floor under the clients: requests prepared before the clock starts, on the benchmark's event loop."""

    def __init__(self, runner: asyncio.Runner, meter: Meter, emulator: EmulatorProcess) -> None:
        self._runner = runner
        self._meter = meter
        self._emulator = emulator

    def measure(self, phase: Phase) -> Sample:
        return self._runner.run(self._measure(phase))

    @abc.abstractmethod
    async def _measure(self, phase: Phase) -> Sample:
        """Warm up, then time ``phase.calls`` calls."""

    async def _drive_raw(self, phase: Phase, requests: Iterator[bytes]) -> Sample:
        """Send ``requests`` over ``phase.concurrency`` raw keep-alive connections."""
        connections = [await RawConnection.open(self._emulator.endpoint) for _ in range(phase.concurrency)]
        try:
            return await drive_async([_sender(c, requests) for c in connections], phase.calls, self._meter)
        finally:
            for connection in connections:
                await connection.close()


class RawPreSigned(Floor):
    """The call our client makes, signed before the clock starts, sent over a raw keep-alive socket."""

    name = "floor: raw pre-signed"

    async def _measure(self, phase: Phase) -> Sample:
        forms = presigned_forms(self._emulator, phase.action, _with_warmup(phase))
        requests = [_raw_request("POST", "/", self._emulator.endpoint, form) for form in forms]
        return await self._drive_raw(phase, iter(requests))


class HttpxPreSigned(Floor):
    """The same pre-signed call with a bare ``httpx.AsyncClient``: the HTTP library's own cost."""

    name = "floor: httpx pre-signed"

    async def _measure(self, phase: Phase) -> Sample:
        forms = iter(presigned_forms(self._emulator, phase.action, _with_warmup(phase)))
        url = self._emulator.url + "/"
        # The pool size our client uses by default, so the difference is our code, not the pool.
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

            async def call() -> None:
                response = await client.post(url, content=next(forms), headers=FORM_HEADERS)
                if response.status_code != 200:
                    raise RuntimeError(f"emulator answered {response.status_code}: {response.text}")

            return await drive_async([call] * phase.concurrency, phase.calls, self._meter)


class RawHealth(Floor):
    """``GET /_emulator/health`` over a raw keep-alive socket: loopback HTTP plus the emulator's least work."""

    name = "floor: raw health"
    actions = frozenset({DESCRIBE})  # shown next to DescribeDeviceInfo as the floor under it

    async def _measure(self, phase: Phase) -> Sample:
        request = _raw_request("GET", "/_emulator/health", self._emulator.endpoint)
        return await self._drive_raw(phase, itertools.repeat(request))


# -- drivers --------------------------------------------------------------------------------------


async def drive_async(workers: Sequence[AsyncCall], calls: int, meter: Meter) -> Sample:
    """Run ``calls`` calls spread over one task per worker; time them after a warm-up."""

    async def repeat(call: AsyncCall, count: int, latencies: list[int] | None) -> None:
        for _ in range(count):
            started = perf_counter_ns()
            await call()
            if latencies is not None:
                latencies.append(perf_counter_ns() - started)

    async with asyncio.TaskGroup() as warmup:
        for index, call in enumerate(workers):
            warmup.create_task(repeat(call, WARMUP_CALLS, None), name=f"warmup-{index}")
    gc.collect()
    latencies: list[int] = []
    started = meter.start()
    async with asyncio.TaskGroup() as group:
        for index, (call, count) in enumerate(zip(workers, split_evenly(calls, len(workers)), strict=True)):
            group.create_task(repeat(call, count, latencies), name=f"worker-{index}")
    return meter.stop(started, len(workers), latencies)


def drive_threads(call: Callable[[], object], concurrency: int, calls: int, meter: Meter) -> Sample:
    """Run ``calls`` blocking calls: in this thread at concurrency 1, else one thread per worker."""
    if concurrency == 1:
        for _ in range(WARMUP_CALLS):
            call()
        gc.collect()
        latencies: list[int] = []
        started = meter.start()
        for _ in range(calls):
            began = perf_counter_ns()
            call()
            latencies.append(perf_counter_ns() - began)
        return meter.stop(started, 1, latencies)

    ready = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)

    def worker(count: int) -> list[int]:
        try:
            for _ in range(WARMUP_CALLS):
                call()
        except BaseException:
            ready.abort()
            raise
        ready.wait(BARRIER_TIMEOUT_SECONDS)
        go.wait(BARRIER_TIMEOUT_SECONDS)
        mine: list[int] = []
        for _ in range(count):
            began = perf_counter_ns()
            call()
            mine.append(perf_counter_ns() - began)
        return mine

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="official-sdk") as pool:
        futures = [pool.submit(worker, count) for count in split_evenly(calls, concurrency)]
        try:
            ready.wait(BARRIER_TIMEOUT_SECONDS)
        except threading.BrokenBarrierError:
            for future in futures:
                future.result()  # raises the worker's own error
            raise
        gc.collect()
        started = meter.start()
        go.wait(BARRIER_TIMEOUT_SECONDS)
        per_thread = [future.result() for future in futures]
        return meter.stop(started, concurrency, [value for values in per_thread for value in values])


# -- raw HTTP for the floors ----------------------------------------------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection: write a prepared request, read one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, endpoint: str) -> RawConnection:
        host, _, port = endpoint.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> bytes:
        """Send ``request``; the answer's body (``RuntimeError`` unless the status is 200)."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        if head[9:12] != b"200":
            status_line = head.partition(b"\r\n")[0]
            raise RuntimeError(f"emulator answered {status_line!r}: {body[:200]!r}")
        return body

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def _sender(connection: RawConnection, requests: Iterator[bytes]) -> AsyncCall:
    async def send() -> bytes:
        return await connection.exchange(next(requests))

    return send


def _raw_request(method: str, path: str, host: str, form: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if form is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: {FORM_TYPE}\r\nContent-Length: {len(form)}\r\n\r\n").encode() + form


def _with_warmup(phase: Phase) -> int:
    return phase.calls + WARMUP_CALLS * phase.concurrency


def presigned_forms(emulator: EmulatorProcess, action: str, count: int) -> list[bytes]:
    """``count`` V1 form bodies as our client signs and sends them (a fresh nonce each)."""
    business = (
        {"BizType": BIZ_TYPE}
        if action == DESCRIBE
        else {"UserDeviceId": "SN-BENCH", "BizType": BIZ_TYPE, "Test": "false", "AuthYears": "1"}
    )
    return [signed_form(emulator, action, business) for _ in range(count)]


# -- the run --------------------------------------------------------------------------------------

Results = dict[str, dict[str, list[Sample]]]  # subject name -> phase key -> one sample per round


def prepare_round(runner: asyncio.Runner, emulator: EmulatorProcess) -> None:
    """Empty the account (keys, nonces, counters), then license SEEDED_DEVICES devices."""
    emulator.reset()
    keys = runner.run(_mint_keys(emulator))
    for index, key in enumerate(keys):
        emulator.activate(key, f"hw-bench-{index:04d}")


async def _mint_keys(emulator: EmulatorProcess) -> list[str]:
    credentials = Credentials(emulator.access_key_id, Secret(emulator.access_key_secret))
    async with CloudauthClient(credentials, endpoint=emulator.url, rate_limiter=RateLimiter(qps=None)) as client:
        keys = []
        for index in range(SEEDED_DEVICES):
            key = await client.create_auth_key(term=BENCH_TERM, user_device_id=f"SN-{index:04d}", biz_type=BIZ_TYPE)
            keys.append(key.key.reveal())
        return keys


def round_order(subjects: Sequence[Subject], round_index: int) -> list[Subject]:
    """Rotate by half the round number and reverse every other round: each pair swaps places each round."""
    shift = (round_index // 2) % len(subjects)
    order = [*subjects[shift:], *subjects[:shift]]
    return order[::-1] if round_index % 2 else order


def run_rounds(plan: Plan, runner: asyncio.Runner, emulator: EmulatorProcess, subjects: Sequence[Subject]) -> Results:
    """Every phase of every subject, ``plan.rounds`` times, interleaved."""
    results: Results = {subject.name: {} for subject in subjects}
    for round_index in range(plan.rounds):
        prepare_round(runner, emulator)
        order = round_order(subjects, round_index)
        for subject in order:
            seen = subject.check()
            if seen != SEEDED_DEVICES:
                raise RuntimeError(f"{subject.name} saw {seen} devices, expected {SEEDED_DEVICES}")
        for phase in plan.phases:
            for subject in order:
                if phase.action not in subject.actions:
                    continue
                _progress(f"round {round_index + 1}/{plan.rounds}: {phase.key} {subject.name}")
                sample = subject.measure(phase)
                results[subject.name].setdefault(phase.key, []).append(sample)
        errors = emulator.audit().get("errors", {})
        if errors:
            raise RuntimeError(f"the emulator refused calls during round {round_index + 1}: {errors}")
    return results


def build_subjects(
    runner: asyncio.Runner, meter: Meter, emulator: EmulatorProcess, baseline: Path | None = None
) -> list[Subject]:
    """Ours first (and, with a baseline, ours and the baseline in workers), then the official SDK, then the floors."""
    workers: list[Subject] = []
    if baseline is not None:
        workers = [
            WorkerClient("ours V1 (worker)", ROOT, emulator, "v1"),
            WorkerClient("baseline V1 (worker)", baseline, emulator, "v1"),
        ]
    return [
        OurClient(runner, meter, emulator, "v1"),
        OurClient(runner, meter, emulator, "v3"),
        *workers,
        OfficialClient(meter, emulator),
        RawPreSigned(runner, meter, emulator),
        HttpxPreSigned(runner, meter, emulator),
        RawHealth(runner, meter, emulator),
    ]


# -- the report -----------------------------------------------------------------------------------


def summarize(plan: Plan, results: Results, official: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per subject and phase: medians over rounds, and the median per-round CPU ratio to ``official``."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, phases in results.items():
        summary[name] = {}
        for phase in plan.phases:
            samples = phases.get(phase.key)
            if not samples:
                continue
            rounds = [sample.summary() for sample in samples]
            figures = {field: round(median(r[field] for r in rounds), 4) for field in rounds[0]}
            reference = results[official].get(phase.key)
            if reference:
                ratios = [s.cpu_per_call_ms / o.cpu_per_call_ms for s, o in zip(samples, reference, strict=True)]
                figures["cpu_vs_official"] = round(median(ratios), 3)
                figures["cpu_vs_official_min"] = round(min(ratios), 3)
                figures["cpu_vs_official_max"] = round(max(ratios), 3)
            summary[name][phase.key] = figures
    return summary


def goals(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured figure and whether it is met."""
    checks: list[dict[str, Any]] = []
    for name in ("ours V1", "ours V3"):
        for concurrency in (1, HIGH_CONCURRENCY):
            ratio = summary[name][f"{DESCRIBE}@c{concurrency}"]["cpu_vs_official"]
            checks.append(
                {
                    "goal": f"{name}: CPU per call <= {CPU_RATIO_GOAL}x official at concurrency {concurrency}",
                    "measured": ratio,
                    "met": ratio <= CPU_RATIO_GOAL,
                }
            )
        p50 = summary[name][f"{DESCRIBE}@c1"]["p50_ms"]
        checks.append(
            {
                "goal": f"{name}: loopback call p50 <= {LOOPBACK_GOAL_MS} ms",
                "measured": p50,
                "met": p50 <= LOOPBACK_GOAL_MS,
            }
        )
    return checks


def render(plan: Plan, summary: Mapping[str, Mapping[str, Mapping[str, float]]], env: Mapping[str, Any]) -> str:
    """The Markdown report printed on stdout."""
    out = [
        f"## Cloudauth client benchmark ({plan.rounds} rounds, medians)",
        "",
        f"{env['nproc']} x {env['cpu_model']}, Python {env['python']}, commit {env['commit'] or '?'}"
        + (" (uncommitted changes)" if env["worktree_dirty"] else "")
        + f"; sniffio {env['packages']['sniffio']}; load average before the run {env['loadavg']}.",
        "CPU vs official: median of the per-round ratios (lowest-highest round).",
    ]
    c1, c32, create = (phase.key for phase in plan.phases)
    calls = {phase.key: phase.calls for phase in plan.phases}

    def fmt(value: float, digits: int = 3) -> str:
        return f"{value:.{digits}f}"

    def ratio(figures: Mapping[str, float]) -> str:
        if "cpu_vs_official" not in figures or plan.rounds == 1:
            return f"{figures['cpu_vs_official']:.2f}x" if "cpu_vs_official" in figures else ""
        low, high = figures["cpu_vs_official_min"], figures["cpu_vs_official_max"]
        return f"{figures['cpu_vs_official']:.2f}x ({low:.2f}-{high:.2f})"

    rows = [
        [
            name,
            *(fmt(f[field]) for field in ("p50_ms", "p90_ms", "p99_ms")),
            fmt(f["calls_per_s"], 0),
            fmt(f["cpu_per_call_ms"]),
            ratio(f),
            fmt(f["emulator_cpu_per_call_ms"]),
        ]
        for name, phases in summary.items()
        if (f := phases.get(c1))
    ]
    out += ["", f"### {DESCRIBE}, concurrency 1 ({calls[c1]} calls a round)", ""]
    out.append(
        markdown_table(
            [
                "client",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "calls/s",
                "client CPU ms/call",
                "CPU vs official",
                "emulator CPU ms/call",
            ],
            rows,
        )
    )
    rows = [
        [
            name,
            fmt(f["calls_per_s"], 0),
            fmt(f["p50_ms"]),
            fmt(f["p99_ms"]),
            fmt(f["cpu_per_call_ms"]),
            ratio(f),
            fmt(f["client_busy"], 2),
            f"{f['emulator_busy']:.0%}",
            fmt(f["emulator_cpu_per_call_ms"]),
        ]
        for name, phases in summary.items()
        if (f := phases.get(c32))
    ]
    out += ["", f"### {DESCRIBE}, concurrency {HIGH_CONCURRENCY} ({calls[c32]} calls a round)", ""]
    out.append(
        markdown_table(
            [
                "client",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "client CPU ms/call",
                "CPU vs official",
                "client cores busy",
                "emulator busy (of 1 core)",
                "emulator CPU ms/call",
            ],
            rows,
        )
    )
    rows = [
        [name, fmt(f["p50_ms"]), fmt(f["p90_ms"]), fmt(f["p99_ms"]), fmt(f["cpu_per_call_ms"]), ratio(f)]
        for name, phases in summary.items()
        if (f := phases.get(create))
    ]
    out += ["", f"### {CREATE}, concurrency 1 ({calls[create]} calls a round)", ""]
    out.append(markdown_table(["client", "p50 ms", "p90 ms", "p99 ms", "client CPU ms/call", "CPU vs official"], rows))

    floor = summary["floor: raw pre-signed"]
    out += ["", "### Against the bare round trip (raw pre-signed DescribeDeviceInfo)", ""]
    for name in ("ours V1", "ours V3", "official SDK (V3)"):
        mine = summary[name]
        out.append(
            f"- {name}: adds {mine[c1]['p50_ms'] - floor[c1]['p50_ms']:.3f} ms to the p50 at concurrency 1; "
            f"client CPU {mine[c1]['cpu_per_call_ms'] / floor[c1]['cpu_per_call_ms']:.1f}x the floor's at c=1, "
            f"{mine[c32]['cpu_per_call_ms'] / floor[c32]['cpu_per_call_ms']:.1f}x at c={HIGH_CONCURRENCY}"
        )
    if "baseline V1 (worker)" in summary:
        new, old = summary["ours V1 (worker)"], summary["baseline V1 (worker)"]
        out += ["", "### This checkout against the baseline (V1, each in a worker process)", ""]
        for phase in plan.phases:
            mine, theirs = new[phase.key], old[phase.key]
            out.append(
                f"- {phase.key}: CPU {mine['cpu_per_call_ms']:.3f} ms/call against {theirs['cpu_per_call_ms']:.3f}"
                f" ({mine['cpu_per_call_ms'] / theirs['cpu_per_call_ms']:.2f}x), p50 {mine['p50_ms']:.3f} ms"
                f" against {theirs['p50_ms']:.3f}; vs official {mine.get('cpu_vs_official', 0):.2f}x"
                f" against {theirs.get('cpu_vs_official', 0):.2f}x"
            )
    out += ["", f"### Is the emulator the bottleneck at concurrency {HIGH_CONCURRENCY}?", ""]
    capacity = floor[c32]["calls_per_s"] / max(floor[c32]["emulator_busy"], 1e-9)
    out.append(
        f"- The emulator's capacity for this call is about {capacity:.0f} calls/s (the raw pre-signed floor made"
        f" {floor[c32]['calls_per_s']:.0f} calls/s with the emulator {floor[c32]['emulator_busy']:.0%} busy)."
    )
    for name, phases in summary.items():
        f = phases[c32]
        if name.startswith("floor"):
            continue
        if f["emulator_busy"] >= EMULATOR_SATURATED:
            limit = "the emulator"
        elif f["client_busy"] >= EMULATOR_SATURATED:
            limit = "the client's own CPU (one core: one event loop, or the GIL for threads)"
        elif f["client_busy"] + f["emulator_busy"] >= EMULATOR_SATURATED * env["nproc"]:
            limit = "the machine's cores"
        else:
            limit = "neither process saturated (other load on the machine?)"
        out.append(
            f"- {name}: {f['calls_per_s']:.0f} calls/s, client {f['client_busy']:.2f} cores busy, emulator"
            f" {f['emulator_busy']:.0%} of its core, {f['client_busy'] + f['emulator_busy']:.2f} of"
            f" {env['nproc']} cores in all: limited by {limit}."
        )
    out += ["", "### Goals", ""]
    out += [
        f"- {'MET' if check['met'] else 'NOT MET'}: {check['goal']} (measured {check['measured']})"
        for check in goals(summary)
    ]
    return "\n".join(out)


# -- entry point ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast sanity run (2 short rounds)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write every figure as JSON")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure our client from another checkout (DIR), and this one, each in a worker process",
    )
    parser.add_argument(
        "--profile",
        type=int,
        choices=(1, HIGH_CONCURRENCY),
        metavar="CONCURRENCY",
        help="instead of comparing, profile our V1 client (cProfile) at this concurrency and print the top functions",
    )
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        plan = Plan(args.rounds, plan.phases)
    removed = [name for name in PROXY_VARIABLES if os.environ.pop(name, None) is not None]
    if removed:
        _progress(f"ignoring {', '.join(removed)}: loopback calls must not go through a proxy")
    env = machine(PACKAGES)
    with EmulatorProcess() as emulator, asyncio.Runner() as runner:
        meter = Meter(emulator.pid)
        if args.profile is not None:
            return profile(runner, meter, emulator, plan, args.profile)
        subjects = build_subjects(runner, meter, emulator, args.baseline)
        try:
            results = run_rounds(plan, runner, emulator, subjects)
        finally:
            for subject in subjects:
                subject.close()
    summary = summarize(plan, results, OfficialClient.name)
    if args.json_out is not None:
        document = {
            "benchmark": "cloudauth_client",
            "command": " ".join([_relative(Path(sys.executable)), *sys.argv]),
            "machine": env,
            "plan": {"rounds": plan.rounds, "phases": [phase.key + f" x{phase.calls}" for phase in plan.phases]},
            "summary": summary,
            "goals": goals(summary),
            "rounds": {
                name: {key: [sample.summary() for sample in samples] for key, samples in phases.items()}
                for name, phases in results.items()
            },
        }
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    print(render(plan, summary, env))
    return 0


def profile(runner: asyncio.Runner, meter: Meter, emulator: EmulatorProcess, plan: Plan, concurrency: int) -> int:
    """cProfile our V1 client over one DescribeDeviceInfo phase; print the hottest functions."""
    prepare_round(runner, emulator)
    client = OurClient(runner, meter, emulator, "v1")
    phase = next(p for p in plan.phases if p.action == DESCRIBE and p.concurrency == concurrency)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        sample = client.measure(phase)
        profiler.disable()
    finally:
        client.close()
    print(f"# {phase.calls} {DESCRIBE} calls at concurrency {concurrency}: {sample.cpu_per_call_ms:.3f} ms CPU/call")
    print("# (under cProfile: absolute times are inflated; read the shares)")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return 0


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (``.venv/bin/python``), else as given."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
