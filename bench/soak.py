"""Soak with chaos: a whole provisioning line under the faults a factory gives it, then the invariants.

One command (``make soak``, or ``.venv/bin/python bench/soak.py``) runs, on this machine:

- the Cloudauth emulator with 100 ms latency and a QPS cap (the agent's ``cloud.qps`` below it);
- a persistent Mosquitto (``max_queued_messages 10000``, ``set_tcp_nodelay true``), restarted
  (SIGTERM, so it saves its sessions and queued messages) several times;
- the agent as a real process, SIGKILLed at random instants and restarted on the same journal;
- a window of 30 % cloud errors (InternalError, ServiceUnavailable, Throttling.User) with the
  QPS cap halved, set and lifted at run time through the emulator's ``/_emulator/faults``;
- a webhook (the MES) that records every report and is taken away for a while;
- simulated devices arriving over the run: MQTT devices in waves (half MQTT 5, half 3.1.1, a few
  misbehaving), and serial devices on a jig of paced pseudo-terminals, one after another per port
  as an operator plugs the next board (``--serial-share``; the agent opens the jig's ports);
- last-attempt devices (a model with ``max_attempts = 1``) that activate, die before reporting,
  reboot, get the same key back, see ``AuthKeyUsed`` and report it: each must still end ``done``.

Then the short-TTL phase, a second line whose keys live ``--key-ttl`` seconds (the emulator's
``--key-ttl`` and the agent's ``[cloud] key_lifetime_s``), so that the chaos reaches their
deadlines: the agent SIGSTOPped and SIGKILLed for longer than a key's life, the broker gone as
long (keys pushed meanwhile never leave the agent), with last-attempt, late and failing devices.

Afterwards the invariants are checked from the emulator's audit, the webhook's records and the
devices' outcomes (``_soak_checks.py``). A table goes to stdout, every figure to a JSON file;
exit 0 when every invariant holds, 1 when one fails (naming the devices), 2 when the line could
not be set up. Results are recorded by hand in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from _harness import ROOT, machine, markdown_table  # puts the checkout on sys.path
from _soak_checks import Invariant, check_all, key_ages
from _soak_upstream import WebhookReceiver

from agent.profiles import load_profiles
from provisioning_lab.agentprocess import AgentProcess, AgentStartError, write_config
from provisioning_lab.broker import MosquittoBroker, MosquittoNotFound
from provisioning_lab.emulator import EmulatorProcess
from provisioning_lab.postgres import PostgresServer
from provisioning_lab.simulator import (
    SERIAL_PROTOCOL,
    Behaviour,
    DeviceOutcome,
    DeviceSpec,
    FleetReport,
    SerialJig,
    Timing,
    queue_specs,
    run_fleet,
)

PROFILES: Final = ROOT / "hardware-profiles"
MODEL: Final = "face-terminal-x1"  # the MQTT devices' profile
SERIAL_MODEL: Final = "gate-controller-g2"  # the serial devices' profile (a jig-rack model)
LAST_MODEL: Final = "face-terminal-x1-last-try"  # the X1 with max_attempts = 1: its first key is its last
SERVICE_KEY_LIFETIME_S: Final = 1800  # the profiles' margins are written for the service's 30-minute keys
TTL_MISBEHAVING: Final = {  # the short-TTL line: devices whose timing meets a key's deadline
    Behaviour.LATE: 0.1,
    Behaviour.FAIL_ONCE: 0.1,
    Behaviour.DUPLICATE: 0.05,
}
TTL_LAST_ATTEMPT_SHARE: Final = 0.1  # ... and last-attempt devices that die mid-activation
TTL_CHAOS_PAST_S: Final = 5.0  # each outage of the short-TTL line outlasts a key's life by this much
LATENCY_MS: Final = 100.0  # a realistic round trip to the Cloudauth region from a factory
QPS_CAP: Final = 20.0  # the emulated account's limit
AGENT_QPS: Final = 16.0  # the agent keeps under the cap (docs/cloudauth-client.md), leaving room for others
FAULT_ERRORS: Final = {"InternalError": 0.1, "ServiceUnavailable": 0.1, "Throttling.User": 0.1}  # 30 % in all
FAULT_QPS_CAP: Final = QPS_CAP / 2  # ... and the account throttled below the agent's own rate
BROKER_QUEUE: Final = 10_000  # max_queued_messages, as docs/operations.md advises
MISBEHAVING: Final = {  # fraction of the fleet; every one of them must still end licensed
    Behaviour.DUPLICATE: 0.03,
    Behaviour.RE_REGISTER: 0.02,
    Behaviour.DIE_MID_ACTIVATION: 0.02,
    Behaviour.FAIL_ONCE: 0.02,
    Behaviour.GARBAGE: 0.01,
}
SERIAL_MISBEHAVING: Final = (Behaviour.DUPLICATE, Behaviour.DIE_MID_ACTIVATION, Behaviour.FAIL_ONCE)  # a UART board's
SNAPSHOT: Final = (
    "agent",
    "provisioning",
    "lab",
    "hardware-profiles",
    "bench",
)  # the code a run uses, copied at its start
LEDGER_LEASE_S: Final = 5.0  # --ledger: a killed agent's devices are taken over this late
WAVE_EVERY_S: Final = 5.0  # devices arrive in a wave this often
KILL_DOWNTIME_S: Final = (0.0, 2.0)  # the agent stays dead this long (uniform) before its restart
START_ATTEMPTS: Final = 3  # a restart that does not become ready is tried again (the broker may be restarting)
REPORT_WAIT_S: Final = 420.0  # after an outage the drainer's backoff reaches minutes (MAX_BACKOFF_S 300)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the soak will do, and when (seconds from the start of the run, just before the first agent start)."""

    devices: int
    serial_devices: int  # of ``devices``, on the jig
    serial_ports: int
    arrival_s: float  # devices arrive over this long
    kill_at: tuple[float, ...]
    kill_downtime_s: tuple[float, ...]  # how long the agent stays dead after each kill
    broker_restart_at: tuple[float, ...]
    fault_window: tuple[float, float]
    upstream_outage: tuple[float, float]
    time_scale: float  # device protocol timeouts x this (1 = the protocol's own)
    deadline_s: float  # a device not done this long after it arrived is lost
    seed: int
    last_attempt_devices: int = 0  # of the MQTT devices, on LAST_MODEL, dying mid-activation and rebooting
    phases: tuple[str, ...] = ("main", "ttl")
    key_ttl_s: float = 30.0  # the short-TTL line's key life
    ttl_devices: int = 0
    ttl_arrival_s: float = 90.0
    ttl_stop_at: float = 0.0  # SIGSTOP of the agent for key_ttl_s + TTL_CHAOS_PAST_S
    ttl_kill_at: float = 0.0  # SIGKILL, dark as long
    ttl_broker_down_at: float = 0.0  # broker stopped as long
    ledger: bool = False  # two agents on one PostgreSQL ledger instead of one on its SQLite journal


@dataclass(slots=True)
class Timeline:
    """What happened when, for the result file."""

    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        at = time.monotonic() - self.started
        self.events.append((round(at, 2), what))
        print(f"[{at:7.1f} s] {what}", file=sys.stderr, flush=True)

    def now(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True, slots=True)
class Line:
    """The running pieces the chaos acts on (``--ledger``: two agents and the ledger they share)."""

    emulator: EmulatorProcess
    broker: MosquittoBroker
    agents: tuple[AgentProcess, ...]
    webhook: WebhookReceiver
    jig: SerialJig | None
    workdir: Path
    ledger: PostgresServer | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # which agent the chaos hits

    def victim(self) -> AgentProcess:
        """The agent the next kill or stop hits (one at random when there are several)."""
        return self.agents[0] if len(self.agents) == 1 else self.rng.choice(self.agents)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if not args.from_snapshot:
        return _run_from_snapshot(argv, args.workdir)
    plan = make_plan(args)
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir=args.workdir)).resolve()
    out = Path(args.json_out).resolve() if args.json_out else workdir / "soak-result.json"
    os.chdir(workdir)  # `python -m agent` puts its cwd first on sys.path: nothing there but the run's files
    print(f"soak: {plan.devices} + {plan.ttl_devices} devices, work directory {workdir}", file=sys.stderr)
    try:
        result = asyncio.run(run_phases(plan, workdir))
    except (MosquittoNotFound, AgentStartError) as exc:
        print(f"soak: the line could not be set up: {exc}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(summary(result))
    print(f"\nresult file: {out}")
    return 0 if result["ok"] else 1


async def run_phases(plan: Plan, workdir: Path) -> dict[str, Any]:
    """The main line, then the short-TTL line (each when asked); one result, ok when both hold."""
    result: dict[str, Any] = {"ok": True, "plan": asdict(plan)}
    if "main" in plan.phases:
        result |= await run_soak(plan, workdir)
    if "ttl" in plan.phases and plan.ttl_devices:
        ttl = await run_ttl_phase(plan, workdir / "ttl")
        result["ttl_phase"] = ttl
        result["ok"] = result["ok"] and ttl["ok"]
    return result


def _run_from_snapshot(argv: list[str], parent: str | None) -> int:
    """Run the soak from a copy of the code taken now.

    The agent is restarted twenty times; each start imports the code on disk. A working tree
    edited during the run (a branch switch, a colleague's half-done change) would otherwise be
    soaked in pieces, and its failures blamed on the agent.
    """
    snapshot = Path(tempfile.mkdtemp(prefix="soak-code-", dir=parent))
    for name in SNAPSHOT:
        shutil.copytree(ROOT / name, snapshot / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    source = {"from": str(ROOT), **{k: v for k, v in machine([]).items() if k in ("commit", "worktree_dirty")}}
    (snapshot / "SOURCE.json").write_text(json.dumps(source) + "\n")
    print(f"soak: code copied to {snapshot}", file=sys.stderr)
    return subprocess.call([sys.executable, str(snapshot / "bench" / "soak.py"), "--from-snapshot", *argv])


def make_plan(args: argparse.Namespace) -> Plan:
    """Random instants for the kills and restarts, fixed windows for the faults and the outage."""
    rng = random.Random(args.seed)
    arrival = float(args.arrival_s)
    kills = sorted(rng.uniform(0.03 * arrival, arrival) for _ in range(args.kills))
    restarts = [arrival * (i + 0.5) / args.broker_restarts + rng.uniform(-2, 2) for i in range(args.broker_restarts)]
    serial = round(args.devices * args.serial_share)
    ttl_arrival = float(args.ttl_arrival_s)
    return Plan(
        devices=args.devices,
        serial_devices=serial,
        serial_ports=min(args.serial_ports, serial),
        arrival_s=arrival,
        kill_at=tuple(round(t, 2) for t in kills),
        kill_downtime_s=tuple(round(rng.uniform(*KILL_DOWNTIME_S), 2) for _ in kills),
        broker_restart_at=tuple(round(max(1.0, t), 2) for t in restarts),
        fault_window=(round(0.30 * arrival, 2), round(0.55 * arrival, 2)),
        upstream_outage=(round(0.45 * arrival, 2), round(0.75 * arrival, 2)),
        time_scale=args.time_scale,
        deadline_s=args.deadline_s,
        seed=args.seed,
        last_attempt_devices=round((args.devices - serial) * args.last_attempt_share),
        phases=("main", "ttl") if args.phase == "all" else (args.phase,),
        key_ttl_s=args.key_ttl,
        ttl_devices=args.ttl_devices,
        ttl_arrival_s=ttl_arrival,
        ttl_stop_at=round(rng.uniform(0.15, 0.3) * ttl_arrival, 2),
        ttl_kill_at=round(rng.uniform(0.45, 0.55) * ttl_arrival, 2),
        ttl_broker_down_at=round(rng.uniform(0.7, 0.8) * ttl_arrival, 2),
        ledger=args.ledger,
    )


def mqtt_fleet(plan: Plan) -> list[DeviceSpec]:
    """The MQTT devices: misbehaving ones spread at random through the waves, protocols alternating."""
    count = plan.devices - plan.serial_devices
    return _fleet("SOAK", count, MISBEHAVING, plan.last_attempt_devices, random.Random(plan.seed))


def ttl_fleet(plan: Plan) -> list[DeviceSpec]:
    """The short-TTL line's devices: late, failing once, duplicating, and last-attempt ones that die mid-activation."""
    last = round(plan.ttl_devices * TTL_LAST_ATTEMPT_SHARE)
    return _fleet("TTL", plan.ttl_devices, TTL_MISBEHAVING, last, random.Random(plan.seed + 2))


def _fleet(
    prefix: str, count: int, shares: dict[Behaviour, float], last_attempt: int, rng: random.Random
) -> list[DeviceSpec]:
    """``count`` MQTT devices; ``last_attempt`` of them on LAST_MODEL, dying after activating and rebooting."""
    behaviours = [(MODEL, b) for b in _behaviours(count - last_attempt, shares, rng)]
    behaviours += [(LAST_MODEL, Behaviour.DIE_MID_ACTIVATION)] * last_attempt
    rng.shuffle(behaviours)
    return [
        DeviceSpec(
            device_id=f"{prefix}-{'L-' if model == LAST_MODEL else ''}{n:05d}",
            hardware_id=f"hw-{prefix.lower()}-{n:05d}",
            model=model,
            behaviour=behaviour,
            protocol="5" if n % 2 == 0 else "3.1.1",
            comeback=behaviour is Behaviour.DIE_MID_ACTIVATION,
        )
        for n, (model, behaviour) in enumerate(behaviours)
    ]


def serial_fleet(plan: Plan) -> list[DeviceSpec]:
    """The serial devices, misbehaving in the ways a board on a UART can."""
    shares = {behaviour: MISBEHAVING[behaviour] for behaviour in SERIAL_MISBEHAVING}
    behaviours = _behaviours(plan.serial_devices, shares, random.Random(plan.seed + 1))
    return [
        DeviceSpec(
            device_id=f"SOAK-S-{n:05d}",
            hardware_id=f"hw-soak-s-{n:05d}",
            model=SERIAL_MODEL,
            behaviour=behaviour,
            comeback=behaviour is Behaviour.DIE_MID_ACTIVATION,
        )
        for n, behaviour in enumerate(behaviours)
    ]


def _behaviours(count: int, shares: dict[Behaviour, float], rng: random.Random) -> list[Behaviour]:
    behaviours = [b for b, share in shares.items() for _ in range(round(share * count))]
    behaviours += [Behaviour.NORMAL] * (count - len(behaviours))
    rng.shuffle(behaviours)
    return behaviours


def write_profiles(directory: Path) -> Path:
    """The shipped profiles and LAST_MODEL (the X1 with max_attempts = 1), in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for profile in PROFILES.glob("*.toml"):
        shutil.copy(profile, directory / profile.name)
    x1 = (PROFILES / f"{MODEL}.toml").read_text(encoding="utf-8")
    last = re.sub(r"(?m)^max_attempts = \d+", "max_attempts = 1", x1.replace(f'"{MODEL}"', f'"{LAST_MODEL}"', 1))
    if last.count("max_attempts = 1") != 1 or LAST_MODEL not in last:
        raise RuntimeError(f"{PROFILES / MODEL}.toml changed shape: cannot derive {LAST_MODEL} from it")
    (directory / f"{LAST_MODEL}.toml").write_text(last, encoding="utf-8")
    return directory


async def run_soak(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Set the line up, run the fleet under chaos, wait for the reports, judge."""
    emulator_args = ["--latency-ms", str(LATENCY_MS), "--qps-cap", str(QPS_CAP), "--seed", str(plan.seed)]
    emulator_args += ["--sdk-delay", "0"]
    broker = MosquittoBroker(workdir / "broker", persistence=True, extra_config=[f"max_queued_messages {BROKER_QUEUE}"])
    specs, serial_specs = mqtt_fleet(plan), serial_fleet(plan)
    jig = SerialJig(workdir / "jig", plan.serial_ports, seed=plan.seed)
    profiles = write_profiles(workdir / "profiles")
    with EmulatorProcess(emulator_args) as emulator, broker, jig, _ledger(plan, workdir) as ledger:
        webhook = WebhookReceiver()
        await webhook.start()
        agents = _agents(plan, workdir, emulator, broker, webhook, jig, profiles, ledger)
        line = Line(emulator, broker, agents, webhook, jig, workdir, ledger, random.Random(plan.seed))
        timeline = Timeline()
        try:
            for agent in agents:
                await asyncio.to_thread(agent.start)
            timeline.note(f"{_agents_word(line)} ready; devices start arriving")
            reports = await _run_under_chaos(plan, line, specs, serial_specs, timeline)
            await _await_reports(line, reports, timeline)
        finally:
            await _stop_all(line)
            await webhook.stop()
        audit = emulator.audit()
        trail = _ledger_trail(line)
    return _result(plan, specs + serial_specs, reports, audit, line, timeline, profiles, trail)


async def _run_under_chaos(
    plan: Plan, line: Line, specs: list[DeviceSpec], serial_specs: list[DeviceSpec], timeline: Timeline
) -> list[FleetReport]:
    """The waves of devices, the jig, and the four kinds of chaos, each on its own schedule."""
    async with asyncio.TaskGroup() as group:
        waves = group.create_task(_arrive(plan, line, specs, timeline), name="devices")
        jig = group.create_task(_on_the_jig(plan, line, serial_specs, timeline), name="jig")
        group.create_task(_kills(plan, line, timeline), name="kills")
        group.create_task(
            _at_each(plan.broker_restart_at, timeline, lambda: _restart_broker(line, timeline)), name="broker"
        )
        group.create_task(_fault_window(plan, line, timeline), name="faults")
        group.create_task(_upstream_outage(plan, line, timeline), name="upstream")
    return [*waves.result(), jig.result()]


async def _arrive(plan: Plan, line: Line, specs: list[DeviceSpec], timeline: Timeline) -> list[FleetReport]:
    """Waves of devices every WAVE_EVERY_S over the arrival window, each run to its end."""
    waves = max(1, int(plan.arrival_s // WAVE_EVERY_S) + 1)
    size = -(-len(specs) // waves)
    timing = Timing(time_scale=plan.time_scale)

    async def wave(number: int, members: list[DeviceSpec]) -> FleetReport:
        await _sleep_until(timeline, number * WAVE_EVERY_S)
        return await run_fleet(
            members,
            mqtt_host=line.broker.host,
            mqtt_port=line.broker.port,
            emulator_url=line.emulator.url,
            deadline_s=plan.deadline_s,
            timing=timing,
        )

    tasks = [wave(n, specs[n * size : (n + 1) * size]) for n in range(waves) if specs[n * size : (n + 1) * size]]
    reports = await asyncio.gather(*tasks)
    timeline.note(f"every device finished ({len(specs)} in {len(tasks)} waves)")
    return list(reports)


async def _on_the_jig(plan: Plan, line: Line, specs: list[DeviceSpec], timeline: Timeline) -> FleetReport:
    """Serial devices one after another per port, the swaps spread over the arrival window."""
    if not specs or line.jig is None:
        return FleetReport((), 0.0)
    per_port = -(-len(specs) // len(line.jig.ports))
    queues = queue_specs(line.jig.ports, specs, swap_s=plan.arrival_s / per_port)
    report = await run_fleet(
        [], emulator_url=line.emulator.url, serial=queues, deadline_s=plan.deadline_s, timing=Timing(plan.time_scale)
    )
    timeline.note(f"every serial device finished ({len(specs)} on {len(queues)} ports)")
    return report


async def run_ttl_phase(plan: Plan, workdir: Path) -> dict[str, Any]:
    """The short-TTL line: keys live ``key_ttl_s``; every outage outlasts them; then the same invariants."""
    profiles = write_profiles(workdir / "profiles")  # creates workdir too
    emulator_args = ["--latency-ms", str(LATENCY_MS), "--qps-cap", str(QPS_CAP), "--seed", str(plan.seed)]
    emulator_args += ["--sdk-delay", "0", "--key-ttl", f"{plan.key_ttl_s:g}s"]
    broker = MosquittoBroker(workdir / "broker", persistence=True, extra_config=[f"max_queued_messages {BROKER_QUEUE}"])
    specs = ttl_fleet(plan)
    with EmulatorProcess(emulator_args) as emulator, broker, _ledger(plan, workdir) as ledger:
        webhook = WebhookReceiver()
        await webhook.start()
        agents = _agents(plan, workdir, emulator, broker, webhook, None, profiles, ledger, plan.key_ttl_s)
        line = Line(emulator, broker, agents, webhook, None, workdir, ledger, random.Random(plan.seed + 1))
        timeline = Timeline()
        try:
            for agent in agents:
                await asyncio.to_thread(agent.start)
            timeline.note(f"short-TTL line ready (keys live {plan.key_ttl_s:g} s); devices start arriving")
            reports = await _ttl_under_chaos(plan, line, specs, timeline)
            await _await_reports(line, reports, timeline)
        finally:
            await _stop_all(line)
            await webhook.stop()
        audit = emulator.audit()
        trail = _ledger_trail(line)
    outcomes = [o for report in reports for o in report.devices]
    invariants = _judge(outcomes, specs, audit, line, profiles, trail)
    return {
        "ok": all(invariant.ok for invariant in invariants),
        "key_ttl_s": plan.key_ttl_s,
        "duration_s": round(timeline.now(), 1),
        "chaos": _chaos_counts(timeline),
        "figures": {**_figures(outcomes, audit, line.webhook), "agent_log": _log_levels(workdir)},
        "invariants": [asdict(invariant) for invariant in invariants],
        "timeline": timeline.events,
        "devices": [_device_row(o) for o in outcomes],
        "workdir": str(workdir),
    }


async def _ttl_under_chaos(plan: Plan, line: Line, specs: list[DeviceSpec], timeline: Timeline) -> list[FleetReport]:
    """Waves of devices over ttl_arrival_s; a SIGSTOP, a SIGKILL and a broker outage, each longer than a key's life."""
    async with asyncio.TaskGroup() as group:
        waves = group.create_task(_arrive(replace(plan, arrival_s=plan.ttl_arrival_s), line, specs, timeline))
        group.create_task(_ttl_chaos(plan, line, timeline), name="ttl-chaos")
    return waves.result()


async def _ttl_chaos(plan: Plan, line: Line, timeline: Timeline) -> None:
    """One after another (an instant that passed during the previous outage comes at its end)."""
    outage = plan.key_ttl_s + TTL_CHAOS_PAST_S
    await _sleep_until(timeline, plan.ttl_stop_at)
    await _stop_agent(line, timeline, outage)
    await _sleep_until(timeline, plan.ttl_kill_at)
    await _kill_agent(line, timeline, outage)
    await _sleep_until(timeline, plan.ttl_broker_down_at)
    await _broker_away(line, timeline, outage)


async def _stop_agent(line: Line, timeline: Timeline, seconds: float) -> None:
    """SIGSTOP: the agent frozen (a VM paused, a debugger, swap), keys in its memory aging; then SIGCONT."""
    agent = line.victim()
    os.kill(agent.pid, signal.SIGSTOP)
    timeline.note(f"agent SIGSTOPped for {seconds:g} s" + _which(line, agent))
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
        timeline.note("agent SIGCONTinued")


async def _broker_away(line: Line, timeline: Timeline, seconds: float) -> None:
    """The broker stopped (SIGTERM, sessions saved) for longer than a key lives: pushes meanwhile never leave."""
    await asyncio.to_thread(line.broker.stop)
    timeline.note(f"broker stopped for {seconds:g} s")
    await asyncio.sleep(seconds)
    await asyncio.to_thread(line.broker.start)
    timeline.note("broker back")


async def _at_each(instants: Sequence[float], timeline: Timeline, action: Callable[[], Awaitable[None]]) -> None:
    for instant in instants:
        await _sleep_until(timeline, instant)
        await action()


async def _kills(plan: Plan, line: Line, timeline: Timeline) -> None:
    for instant, downtime in zip(plan.kill_at, plan.kill_downtime_s, strict=True):
        await _sleep_until(timeline, instant)
        await _kill_agent(line, timeline, downtime)


async def _kill_agent(line: Line, timeline: Timeline, downtime: float) -> None:
    """SIGKILL, a moment of darkness, then a restart on the same journal (the other agent, if any, serves on)."""
    agent = line.victim()
    agent.kill()
    _save_log(line, agent, "killed")
    timeline.note("agent SIGKILLed" + _which(line, agent))
    await asyncio.sleep(downtime)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            await asyncio.to_thread(agent.start)
        except AgentStartError:
            _save_log(line, agent, f"start attempt {attempt} failed")
            timeline.note(f"agent restart attempt {attempt} failed")
            if attempt == START_ATTEMPTS:
                raise
        else:
            timeline.note("agent restarted")
            return


async def _restart_broker(line: Line, timeline: Timeline) -> None:
    timeline.note("broker restarting (SIGTERM: persistence saved)")
    await asyncio.to_thread(line.broker.restart)
    timeline.note("broker back")


async def _fault_window(plan: Plan, line: Line, timeline: Timeline) -> None:
    """30 % errors and a halved QPS cap for a while; the emulator takes them at run time."""
    await _sleep_until(timeline, plan.fault_window[0])
    await asyncio.to_thread(line.emulator.set_faults, latency_ms=LATENCY_MS, qps_cap=FAULT_QPS_CAP, errors=FAULT_ERRORS)
    timeline.note(f"cloud faults on: {FAULT_ERRORS}, qps_cap {FAULT_QPS_CAP}")
    await _sleep_until(timeline, plan.fault_window[1])
    await asyncio.to_thread(line.emulator.set_faults, latency_ms=LATENCY_MS, qps_cap=QPS_CAP)
    timeline.note("cloud faults off")


async def _upstream_outage(plan: Plan, line: Line, timeline: Timeline) -> None:
    await _sleep_until(timeline, plan.upstream_outage[0])
    await line.webhook.stop()
    timeline.note("webhook taken away")
    await _sleep_until(timeline, plan.upstream_outage[1])
    await line.webhook.start()
    timeline.note("webhook back")


async def _await_reports(line: Line, reports: list[FleetReport], timeline: Timeline) -> None:
    """Wait until every licensed device reached the webhook (or REPORT_WAIT_S passed)."""
    expected = {o.device_id for report in reports for o in report.devices if o.status == "licensed"}
    missing = len(await line.webhook.wait_for(expected, REPORT_WAIT_S))
    timeline.note(f"reports: {len(expected) - missing} of {len(expected)} licensed devices reported")


async def _sleep_until(timeline: Timeline, instant: float) -> None:
    await asyncio.sleep(max(0.0, instant - timeline.now()))


def _agents(
    plan: Plan,
    workdir: Path,
    emulator: EmulatorProcess,
    broker: MosquittoBroker,
    webhook: WebhookReceiver,
    jig: SerialJig | None,
    profiles: Path,
    ledger: PostgresServer | None,
    key_lifetime_s: float = SERVICE_KEY_LIFETIME_S,
) -> tuple[AgentProcess, ...]:
    """One agent on its SQLite journal; with ``--ledger``, two on the ledger (the first also serves the jig)."""
    if ledger is None:
        config = _agent_config(workdir, emulator, broker, webhook, jig, profiles, key_lifetime_s)
        return (AgentProcess(config, env=_agent_env(emulator)),)
    shared = {"url": ledger.url, "lease_s": LEDGER_LEASE_S}
    configs = [
        _agent_config(workdir, emulator, broker, webhook, jig if n == 1 else None, profiles, key_lifetime_s,
                      name=f"soak-{n}", journal=shared)
        for n in (1, 2)
    ]  # fmt: skip
    return tuple(AgentProcess(config, env=_agent_env(emulator)) for config in configs)


def _agent_config(
    workdir: Path,
    emulator: EmulatorProcess,
    broker: MosquittoBroker,
    webhook: WebhookReceiver,
    jig: SerialJig | None,
    profiles: Path,
    key_lifetime_s: float = SERVICE_KEY_LIFETIME_S,
    *,
    name: str = "soak",
    journal: dict[str, Any] | None = None,
) -> Path:
    values: dict[str, Any] = {
        "gateway_id": name,
        "journal": journal if journal is not None else str(workdir / "journal.sqlite3"),
        "profiles": str(profiles),
        "log_level": "info",
        "cloud": {"endpoint": emulator.url, "qps": AGENT_QPS, "burst": 4, "key_lifetime_s": int(key_lifetime_s)},
        "mqtt": {"host": broker.host, "port": broker.port, **({"shared_group": "soak"} if journal else {})},
        "upstream": {"mqtt_topic": "", "webhook_url": webhook.url, "webhook_timeout_s": 5.0},
        "http": {"listen": "", "socket": ""},
        "serial": {"ports": [str(jig.directory / "port-*")], "usb": False, "scan_interval_s": 0.5}
        if jig is not None
        else {"usb": False},
    }
    return write_config(workdir / ("agent.toml" if name == "soak" else f"{name}.toml"), values)


@contextlib.contextmanager
def _ledger(plan: Plan, workdir: Path) -> Iterator[PostgresServer | None]:
    """The shared ledger's PostgreSQL (``--ledger``), started for the phase and stopped after it."""
    if not plan.ledger:
        yield None
        return
    with PostgresServer(workdir / "postgres", fsync=True) as server:
        yield server


def _ledger_trail(line: Line) -> tuple[int, str] | None:
    """The ledger's audit chain at the end: (entries, "" when intact, else where it breaks); None without one."""
    if line.ledger is None:
        return None
    from agent.journal._postgres import PostgresJournal

    reader = PostgresJournal.open_readonly(line.ledger.url)
    try:
        rows, broken = reader.verify_audit()
    finally:
        reader.close()
    return len(rows), "" if broken is None else f"seq {broken.seq}: {broken.kind}: {broken.reason}"


async def _stop_all(line: Line) -> None:
    for agent in line.agents:
        _save_log(line, agent, "final life")
        await asyncio.to_thread(agent.stop)


def _agents_word(line: Line) -> str:
    return "agent" if len(line.agents) == 1 else f"{len(line.agents)} agents on the ledger"


def _which(line: Line, agent: AgentProcess) -> str:
    return "" if len(line.agents) == 1 else f" ({agent.config_file.stem})"


def _agent_env(emulator: EmulatorProcess) -> dict[str, str]:
    return dict(
        os.environ,
        ALIBABA_CLOUD_ACCESS_KEY_ID=emulator.access_key_id,
        ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator.access_key_secret,
    )


def _save_log(line: Line, agent: AgentProcess, why: str) -> None:
    """Append the agent's in-memory log of this life to its log file (it is cleared on the next start)."""
    name = "agent.log" if len(line.agents) == 1 else f"agent-{agent.config_file.stem}.log"
    with (line.workdir / name).open("a", encoding="utf-8") as log:
        log.write(f"===== agent life ends: {why} at {time.strftime('%H:%M:%S')} =====\n")
        log.write(agent.log_text() + "\n")


def _result(
    plan: Plan,
    specs: list[DeviceSpec],
    reports: list[FleetReport],
    audit: dict[str, Any],
    line: Line,
    timeline: Timeline,
    profiles: Path,
    trail: tuple[int, str] | None = None,
) -> dict[str, Any]:
    outcomes: list[DeviceOutcome] = [o for report in reports for o in report.devices]
    invariants = _judge(outcomes, specs, audit, line, profiles, trail)
    return {
        "ok": all(invariant.ok for invariant in invariants),
        "plan": asdict(plan),
        "duration_s": round(timeline.now(), 1),
        "chaos": _chaos_counts(timeline),
        "figures": {**_figures(outcomes, audit, line.webhook), "agent_log": _log_levels(line.workdir)},
        "invariants": [asdict(invariant) for invariant in invariants],
        "timeline": timeline.events,
        "devices": [_device_row(o) for o in outcomes],
        "workdir": str(line.workdir),
        "machine": machine(["aiohttp", "paho-mqtt", "httpx"]),
        "code": _code_source(),
    }


def _judge(
    outcomes: list[DeviceOutcome],
    specs: list[DeviceSpec],
    audit: dict[str, Any],
    line: Line,
    profiles: Path,
    trail: tuple[int, str] | None = None,
) -> list[Invariant]:
    """check_all with each device's margin (scaled to the emulator's key lifetime, as the agent scales it);
    on the ledger also its audit chain, which both agents wrote."""
    scale = float(audit.get("key_lifetime_s", SERVICE_KEY_LIFETIME_S)) / SERVICE_KEY_LIFETIME_S
    policies = {p.model: p.policy for p in load_profiles(profiles).values()}
    margin_s = {spec.device_id: policies[spec.model].key_safety_margin_s * scale for spec in specs}
    attempts = {spec.device_id: policies[spec.model].max_attempts for spec in specs}
    invariants = check_all(outcomes, audit, line.webhook.deliveries, margin_s, attempts)
    if trail is not None:
        entries, broken = trail
        invariants.append(Invariant("ledger audit chain intact", "the ledger's one audit trail, written by every "
                                    "agent, verifies whole", entries, 1 if broken else 0, (),
                                    (broken,) if broken else ()))  # fmt: skip
    return invariants


def _code_source() -> dict[str, Any]:
    """Where the snapshot this run used was taken from (commit, and whether the tree had changes)."""
    source = ROOT / "SOURCE.json"
    recorded: dict[str, Any] = json.loads(source.read_text()) if source.exists() else {}
    import agent  # the package the agents were started from: the snapshot's, not the working tree's

    return {"snapshot": str(ROOT), "agent_package": str(Path(agent.__file__ or "").parent), **recorded}


def _log_levels(workdir: Path) -> dict[str, int]:
    """WARNING and ERROR lines over the agents' lives (an ERROR is worth reading even when invariants hold)."""
    levels: Counter[str] = Counter()
    for log in sorted(workdir.glob("agent*.log")):
        for entry in log.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = entry.split(" ", 3)
            if len(fields) > 2 and fields[2] in ("WARNING", "ERROR", "CRITICAL"):
                levels[fields[2]] += 1
    return dict(levels)


def _chaos_counts(timeline: Timeline) -> dict[str, int]:
    words = Counter(what.split(" (")[0] for _, what in timeline.events)  # "agent SIGKILLed (soak-2)": an agent kill
    return {
        "agent_kills": words["agent SIGKILLed"],
        "agent_restarts": words["agent restarted"],
        "agent_stops": words["agent SIGCONTinued"],
        "broker_restarts": words["broker back"],
        "fault_windows": words["cloud faults off"],
        "upstream_outages": words["webhook back"],
    }


def _figures(outcomes: list[DeviceOutcome], audit: dict[str, Any], webhook: WebhookReceiver) -> dict[str, Any]:
    statuses = Counter(o.status for o in outcomes)
    totals: Counter[str] = Counter()
    for o in outcomes:
        totals.update(keys_received=o.counters.keys_received, registrations=o.counters.registrations)
        totals.update(waits=o.counters.waits_received, deaths=o.counters.deaths, activations=o.counters.activations)
    keys = Counter(d.body_key for d in webhook.deliveries)
    ages = sorted(key_ages(outcomes, audit)) or [0.0]
    return {
        "devices": len(outcomes),
        "statuses": dict(statuses),
        "by_behaviour": dict(Counter(str(o.behaviour) for o in outcomes)),
        "by_transport": dict(
            Counter("serial" if o.protocol == SERIAL_PROTOCOL else f"mqtt {o.protocol}" for o in outcomes)
        ),
        "device_totals": dict(totals),
        "cloud_keys": audit["keys"],
        "key_age_at_arrival_s": {"median": round(ages[len(ages) // 2], 2), "max": round(ages[-1], 2)},
        "cloud_licences": audit["licences_consumed_total"],
        "cloud_api_calls": audit["api_calls"],
        "cloud_errors": audit["errors"],
        "webhook_deliveries": len(webhook.deliveries),
        "webhook_distinct_keys": len(keys),
        "webhook_repeats": sum(n - 1 for n in keys.values()),
        "webhook_reconciled": sum(1 for d in webhook.deliveries if d.reconciled),
        "webhook_refused": webhook.refused,
    }


def _device_row(outcome: DeviceOutcome) -> dict[str, Any]:
    """One device in the result file: enough to follow up a failure without the work directory."""
    c = outcome.counters
    return {
        "device_id": outcome.device_id,
        "transport": outcome.protocol,
        "behaviour": str(outcome.behaviour),
        "status": outcome.status,
        "detail": outcome.detail,
        "keys_received": c.keys_received,
        "activations": c.activations,
        "registrations": c.registrations,
        "waits": c.waits_received,
        "errors": c.error_codes,
    }


def summary(result: dict[str, Any]) -> str:
    """The people's view: per line, what was done, then one row per invariant."""
    lines: list[str] = []
    if "figures" in result:
        lines += ["## main line", "", *_phase_summary(result), ""]
    if "ttl_phase" in result:
        ttl = result["ttl_phase"]
        lines += [f"## short-TTL line (keys live {ttl['key_ttl_s']:g} s)", "", *_phase_summary(ttl), ""]
    lines.append("ALL INVARIANTS HOLD" if result["ok"] else "INVARIANT FAILED")
    return "\n".join(lines)


def _phase_summary(result: dict[str, Any]) -> list[str]:
    figures, chaos = result["figures"], result["chaos"]
    done = [
        ("devices", f"{figures['devices']} {figures['statuses']}"),
        ("by transport", str(figures["by_transport"])),
        ("duration", f"{result['duration_s']} s"),
        ("agent SIGKILLs / restarts", f"{chaos['agent_kills']} / {chaos['agent_restarts']}"),
        ("agent SIGSTOPs", str(chaos["agent_stops"])),
        ("broker restarts", str(chaos["broker_restarts"])),
        ("cloud fault windows", str(chaos["fault_windows"])),
        ("webhook outages", str(chaos["upstream_outages"])),
        ("keys minted / used", f"{figures['cloud_keys']['minted']} / {figures['cloud_keys']['used']}"),
        (
            "key age at arrival: median / max",
            f"{figures['key_age_at_arrival_s']['median']} / {figures['key_age_at_arrival_s']['max']} s",
        ),
        ("cloud errors answered", str(sum(figures["cloud_errors"].values()))),
        ("webhook deliveries / repeats", f"{figures['webhook_deliveries']} / {figures['webhook_repeats']}"),
        (
            "agent log warnings / errors",
            f"{figures['agent_log'].get('WARNING', 0)} / {figures['agent_log'].get('ERROR', 0)}",
        ),
    ]
    lines = [markdown_table(["run", "value"], done), ""]
    rows = [_invariant_row(Invariant(**row)) for row in result["invariants"]]
    lines.append(markdown_table(["invariant", "checked", "failures", "devices"], rows))
    for row in result["invariants"]:
        lines += [f"  {row['name']}: {detail}" for detail in row["details"][:20]]
    return lines


def _invariant_row(invariant: Invariant) -> list[str]:
    named = ", ".join(invariant.devices[:10]) + (" ..." if len(invariant.devices) > 10 else "")
    return [invariant.name, str(invariant.checked), str(invariant.failures), named or "-"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices (default %(default)s)")
    parser.add_argument("--kills", type=int, default=20, help="agent SIGKILLs (default %(default)s)")
    parser.add_argument("--broker-restarts", type=int, default=5, help="Mosquitto restarts (default %(default)s)")
    parser.add_argument("--serial-share", type=float, default=0.1, help="share of the devices on the jig")
    parser.add_argument("--serial-ports", type=int, default=8, help="jig ports (default %(default)s)")
    parser.add_argument("--arrival-s", type=float, default=240.0, help="devices arrive over this long (s)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="device protocol timeouts x this")
    parser.add_argument("--deadline-s", type=float, default=1200.0, help="a device not done by then is lost")
    parser.add_argument("--seed", type=int, default=1, help="randomness of the plan and the emulator's faults")
    parser.add_argument(
        "--last-attempt-share",
        type=float,
        default=0.02,
        help="share of the MQTT devices on a max_attempts = 1 model "
        "that die after activating and reboot (default %(default)s)",
    )
    parser.add_argument("--phase", choices=("all", "main", "ttl"), default="all", help="which lines to run")
    parser.add_argument("--key-ttl", type=float, default=30.0, help="the short-TTL line's key life, s (default 30)")
    parser.add_argument("--ttl-devices", type=int, default=150, help="devices on the short-TTL line (0: none)")
    parser.add_argument("--ttl-arrival-s", type=float, default=150.0, help="they arrive over this long (s)")
    parser.add_argument("--ledger", action="store_true", help="two agents on one PostgreSQL ledger (docs/cluster.md) "
                        "instead of one on its SQLite journal; the chaos hits one agent at a time")  # fmt: skip
    parser.add_argument("--json-out", default="", help="result file (default: soak-result.json in the work dir)")
    parser.add_argument("--workdir", default=None, help="parent of the run's work directories (default: tmp)")
    parser.add_argument("--from-snapshot", action="store_true", help=argparse.SUPPRESS)  # set by the re-exec
    return parser


if __name__ == "__main__":
    sys.exit(main())
