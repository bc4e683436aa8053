"""``provisioning-lab simulate``: a fleet of simulated devices against a gateway's broker."""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent.cli._exit import ExitCode
from agent.cli._output import print_table, stderr_console
from provisioning_lab.simulator._fleet import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEADLINE_S,
    DEFAULT_MODEL,
    DEFAULT_TOPIC_ROOT,
    fleet_specs,
    run_fleet,
)
from provisioning_lab.simulator._outcome import STATUSES, FleetReport
from provisioning_lab.simulator._serial_cli import add_serial_arguments, describe, serial_queues, wants_serial
from provisioning_lab.simulator._spec import LATE_BY_S, Behaviour, Timing

__all__ = ["add_parser", "run"]

FAILURES_LISTED = 20  # normal devices not licensed, listed by name under the table


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``simulate`` sub-command on the top-level sub-parsers."""
    parser = commands.add_parser(
        "simulate",
        help="run simulated devices against a gateway (load tests, protocol checks)",
        description=(
            "Start N simulated devices, each its own MQTT connection, that register with the gateway, "
            "activate the key they get through the Cloudauth emulator, and report. Some misbehave on "
            "demand. With --serial-dir, devices also come over a jig of pseudo-terminals paced like UARTs. "
            "Exit 0 when every normal device ends licensed. See docs/simulator.md."
        ),
    )
    parser.add_argument(
        "--mqtt", type=_host_port, metavar="HOST:PORT", help="the gateway's broker (without it: serial devices only)"
    )
    parser.add_argument("--emulator", required=True, metavar="URL", help="the Cloudauth emulator's base URL")
    parser.add_argument("--devices", type=_positive_int, default=10, metavar="N", help="devices (default %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hardware profile model (default %(default)s)")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version (default %(default)s)")
    parser.add_argument(
        "--misbehave",
        action="append",
        type=_misbehaviour,
        default=[],
        metavar="BEHAVIOUR=COUNT",
        help="COUNT of the devices misbehave: " + ", ".join(b for b in Behaviour if b is not Behaviour.NORMAL),
    )
    parser.add_argument("--comeback", action="store_true", help="die_mid_activation devices reboot and register again")
    parser.add_argument(
        "--seal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="devices send seal_pub and accept only sealed keys (docs/protocol.md); --no-seal: old firmware that "
        "takes keys in the clear (its profile needs [sealing] required = false) (default: seal)",
    )
    parser.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, help="topic root (default %(default)s)")
    parser.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        metavar="F",
        help="multiply the protocol's device timeouts and retry delays by F (default %(default)s)",
    )
    parser.add_argument(
        "--late-by",
        type=_non_negative_float,
        default=LATE_BY_S,
        metavar="SECONDS",
        help="late devices report this long after activate_within_s (default %(default)s)",
    )
    parser.add_argument(
        "--deadline",
        type=_positive_float,
        default=DEFAULT_DEADLINE_S,
        metavar="SECONDS",
        help="give up on devices not finished by then (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="devices online at once (default %(default)s)",
    )
    parser.add_argument("--id-prefix", default="SIM", help="device ids are PREFIX-00000... (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    add_serial_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the fleet and print the report; 0 when every normal device is licensed."""
    misbehave: dict[Behaviour, int] = {}
    for behaviour, count in args.misbehave:
        misbehave[behaviour] = misbehave.get(behaviour, 0) + count
    if args.mqtt is None and not wants_serial(args):
        print("simulate: give --mqtt HOST:PORT, --serial-dir DIR or --serial-url URL", file=sys.stderr)
        return ExitCode.USAGE
    try:
        specs = (
            []
            if args.mqtt is None
            else fleet_specs(
                args.devices,
                model=args.model,
                protocol=args.protocol,
                misbehave=misbehave,
                id_prefix=args.id_prefix,
                comeback=args.comeback,
                seal=args.seal,
            )
        )
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    host, port = args.mqtt or ("", 0)
    if specs:
        stderr_console.print(f"simulating {len(specs)} devices against mqtt://{host}:{port} ({args.topic_root})")
    with serial_queues(args) as queues:
        if queues:
            devices = sum(len(queue.specs) for queue in queues)
            stderr_console.print(f"simulating {devices} serial devices on {describe(args)}")
        report = asyncio.run(
            run_fleet(
                specs,
                mqtt_host=host,
                mqtt_port=port,
                emulator_url=args.emulator,
                topic_root=args.topic_root,
                concurrency=args.concurrency,
                deadline_s=args.deadline,
                timing=Timing(time_scale=args.time_scale, late_by_s=args.late_by),
                serial=queues,
            )
        )
    if args.json:
        print(report.to_json())
    else:
        _print_report(report)
    return ExitCode.OK if report.normal_all_licensed else ExitCode.FAILED


def _print_report(report: FleetReport) -> None:
    rows = [
        {"behaviour": behaviour, "devices": sum(counts.values()), **counts}
        for behaviour, counts in sorted(report.counts_by_behaviour().items())
    ]
    rows.append({"behaviour": "all", "devices": len(report.devices), **report.counts()})
    print_table(
        rows, ["behaviour", "devices", *STATUSES], title=f"{len(report.devices)} devices, {report.elapsed_s:.1f} s"
    )
    totals = report.totals()
    print(", ".join(f"{name} {value}" for name, value in totals.items()))
    failed = [d for d in report.devices if d.behaviour is Behaviour.NORMAL and d.status != "licensed"]
    for device in failed[:FAILURES_LISTED]:
        print(f"not licensed: {device.device_id} {device.status} {device.error_code} {device.detail}".rstrip())
    if len(failed) > FAILURES_LISTED:
        print(f"... and {len(failed) - FAILURES_LISTED} more")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def _misbehaviour(text: str) -> tuple[Behaviour, int]:
    name, sep, count = text.partition("=")
    try:
        behaviour = Behaviour(name)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown behaviour {name!r}") from None
    if not sep or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected BEHAVIOUR=COUNT, not {text!r}")
    return behaviour, int(count)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, not {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
